"""A long catch-up is applied a slice at a time, so that the node's loop keeps
answering (its peer's heartbeat) in between; frames that come meanwhile wait their
turn, and the result is the same as taking the batch at once."""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path

import pytest
from helpers import new_ledger, sync

from crdtledger import replica as replica_mod
from crdtledger import sync as sync_mod
from crdtledger.core import NodeCore, Send, SetTimer
from crdtledger.ledger import Ledger
from crdtledger.sync import SyncSession, unpack


def _writer(tmp_path: Path, n: int) -> tuple[Ledger, list[str]]:
    a = new_ledger(tmp_path, "SH01")
    members = [a.add_member(a.owner, name=f"m{i}", phone=f"138000001{i:02d}") for i in range(5)]
    for i in range(n):
        a.topup(a.owner, members[i % 5], 100 + i)
    return a, members


def test_a_batch_longer_than_a_slice_is_applied_in_slices(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    monkeypatch.setattr(sync_mod, "APPLY_SLICE", 7)
    a, members = _writer(tmp_path, 40)
    b = new_ledger(tmp_path, "SH02")
    sa, sb = SyncSession(a, expect_node="SH02"), SyncSession(b, expect_node="SH01")
    sa.start()
    sb.start()
    sb.receive_frames(sa.data_to_send())  # A's hello: B answers with its state
    sa.receive_frames(sb.data_to_send())  # A sends all it has, and its state
    frames = sa.data_to_send()
    assert any(unpack(f)["t"] == "recs" for f in frames)
    later = a.topup(a.owner, members[0], 1)  # live, behind the catch-up
    frames += sa.data_to_send()
    sb.receive_frames(frames)
    slices = 1
    while sb.busy:
        # Between slices: only whole slices are in the store, nothing is relayed yet.
        assert b.positions().get("SH01", 0) == 7 * slices
        sb.resume()
        slices += 1
    assert slices >= 6
    assert b.positions() == a.positions()
    assert b.balance(members[0]) == a.balance(members[0])
    assert any(e["id"] == later["id"] for e in b.history(members[0]))
    assert not b.faults() and not b.refusals


def test_the_core_resumes_at_the_drivers_next_turn(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sync_mod, "APPLY_SLICE", 10)
    a, members = _writer(tmp_path, 30)
    b = new_ledger(tmp_path, "SH02")
    ca, cb = NodeCore(a), NodeCore(b)
    ca.start(0.0, [])
    cb.start(0.0, [])
    out_a = ca.link_opened(1, "SH02", dialer="SH01", now=0.0)
    out_b = cb.link_opened(1, "SH01", dialer="SH01", now=0.0)
    resumed = 0
    for _ in range(200):
        to_b = [f for e in out_a if isinstance(e, Send) for f in e.frames]
        to_a = [f for e in out_b if isinstance(e, Send) for f in e.frames]
        timers = [e for e in out_b if isinstance(e, SetTimer) and e.key[0] == "resume"]
        out_a = ca.receive(1, to_a, 0.0) if to_a else []
        out_b = cb.receive(1, to_b, 0.0) if to_b else []
        for t in timers:
            resumed += 1
            out_b += cb.fire(t.key, t.token, 0.0)
        if not (to_a or to_b or timers):
            break
    assert resumed >= 2
    assert b.positions() == a.positions() and b.balance(members[1]) == a.balance(members[1])


def test_slices_end_where_taking_it_at_once_ends(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sync_mod, "APPLY_SLICE", 3)
    a, _ = _writer(tmp_path / "a", 20)
    b = new_ledger(tmp_path / "b", "SH02")
    c = new_ledger(tmp_path / "c", "SH02")
    sync(a, b)  # in slices
    c.pull(a)  # at once
    assert b.state_vectors() == c.state_vectors() and b.log_view() == c.log_view()


def _answered(a: Ledger, b: Ledger) -> tuple[SyncSession, SyncSession]:
    """A session pair whose hellos and states are exchanged: A's answer is queued."""
    sa, sb = SyncSession(a, expect_node=b.node), SyncSession(b, expect_node=a.node)
    sa.start()
    sb.start()
    sb.receive_frames(sa.data_to_send())
    sa.receive_frames(sb.data_to_send())
    return sa, sb


def test_two_answers_applied_in_turns_overlap_harmlessly(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    """A joining branch hears the same history from both hubs, each answer applied a
    slice per turn. Records one session applied between two slices of the other are
    skipped there (they raised an IntegrityError that killed the link before), and
    the head kept is the furthest, whichever session ends last."""
    monkeypatch.setattr(sync_mod, "APPLY_SLICE", 7)
    a, members = _writer(tmp_path, 40)
    b = new_ledger(tmp_path, "SH02")
    s1a, s1b = _answered(a, b)
    s1b.receive_frames(s1a.data_to_send())  # 40 records: the first slice applied
    assert s1b.busy
    for i in range(12):
        a.topup(a.owner, members[i % 5], 7)
    s2a, s2b = _answered(a, b)
    s2b.receive_frames(s2a.data_to_send())  # 52 records, the first 7 held already
    heard: list[str] = []  # each record told once, by the session that applied it
    b.subscribe(lambda rec, origin: heard.append(f"{rec.node}/{rec.seq}"))
    while s2b.busy:
        s2b.resume()
    while s1b.busy:  # every record it has left is held by now
        s1b.resume()
    assert b.positions() == a.positions()
    kept = b.storage.log.head("SH01")
    assert kept is not None and kept[0].seq == a.positions()["SH01"]
    assert sorted(heard) == sorted(set(heard)) and len(heard) == a.positions()["SH01"]
    assert b.balance(members[0]) == a.balance(members[0])
    assert not b.faults() and not b.refusals
    s1b.receive_frames(s1a.data_to_send())  # the live records queued meanwhile
    assert b.positions() == a.positions() and not b.refusals


def test_a_long_batch_is_verified_a_step_per_turn(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Verifying a million records took 4-6 s in one call: the joining node's loop
    missed its own heartbeat and the link closed, again and again. Now each turn
    verifies VERIFY_STEP records; nothing is applied before the whole is verified."""
    from crdtledger import replica

    monkeypatch.setattr(replica, "VERIFY_STEP", 10)
    monkeypatch.setattr(sync_mod, "APPLY_SLICE", 1000)
    a, members = _writer(tmp_path, 40)
    b = new_ledger(tmp_path, "SH02")
    sa, sb = _answered(a, b)
    sb.receive_frames(sa.data_to_send())
    turns = 0
    while sb.busy:
        assert b.positions().get("SH01", 0) == 0
        sb.resume()
        turns += 1
    assert turns >= 12  # 45 records: four steps of hashing, eight of ordering
    assert b.positions() == a.positions() and b.balance(members[2]) == a.balance(members[2])
    assert not b.faults() and not b.refusals


def test_a_hello_that_waited_for_a_long_batch_says_nothing_of_the_clocks(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Frames that come while a batch is applied are handled after it: minutes later
    in a 1M join, where the peer's hello then read as a clock 2 min 20 s behind. Its
    offset is its wait, so it is not taken for one."""
    from helpers import FakeClock

    from crdtledger.sync import ClockHeard, ClockSkewSeen

    monkeypatch.setattr(sync_mod, "APPLY_SLICE", 7)
    clock = FakeClock()
    a = new_ledger(tmp_path, "SH01", now_ms=clock)
    members = [a.add_member(a.owner, name=f"m{i}", phone=f"138000001{i:02d}") for i in range(5)]
    for i in range(30):
        a.topup(a.owner, members[i % 5], 100 + i)
    b = new_ledger(tmp_path, "SH02", now_ms=clock)
    sa, sb = _answered(a, b)
    while sb.next_event() is not None:
        pass
    sb.receive_frames(sa.data_to_send())
    assert sb.busy
    sa.anti_entropy()
    sb.receive_frames(sa.data_to_send())  # a hello, kept until the batch is applied
    clock.ms += 200_000
    while sb.busy:
        sb.resume()
    events = []
    while (ev := sb.next_event()) is not None:
        events.append(ev)
    assert not any(isinstance(ev, ClockHeard | ClockSkewSeen) for ev in events)
    assert sb.rounds == 2  # the round itself is answered
    sa.anti_entropy()
    sb.receive_frames(sa.data_to_send())  # a hello of now: heard
    heard = [ev for ev in iter(sb.next_event, None) if isinstance(ev, ClockHeard)]
    assert [ev.offset_ms for ev in heard] == [0]


def test_two_answers_from_two_sides_of_a_fork_are_not_spliced(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SH01 forked (a cloned disk): one hub holds one side, the other hub the other,
    and a joining branch applies both answers in turns. Where the second finds another
    record held at a position, it takes nothing more of that log: the branch's copy
    of SH01's log stays one side, never the first side's records continued by the
    other's (which the old code could not reach: it failed on the first one held)."""
    import shutil

    from crdtledger.ledger import Ledger

    monkeypatch.setattr(sync_mod, "APPLY_SLICE", 5)
    a, members = _writer(tmp_path, 10)
    a.close()
    shutil.copytree(tmp_path / "sh01", tmp_path / "clone")
    a = Ledger.open(tmp_path / "sh01")
    clone = Ledger.open(tmp_path / "clone")
    fork_at = a.positions()["SH01"] + 1
    for i in range(20):  # each side writes on from the copy, SH01's own disk further
        a.topup(a.owner, members[i % 5], 1)
        if i < 12:
            clone.topup(clone.owner, members[i % 5], 2)
    b = new_ledger(tmp_path, "SH02")
    s1a, s1b = _answered(a, b)
    s2a, s2b = _answered(clone, b)
    s1b.receive_frames(s1a.data_to_send())
    s2b.receive_frames(s2a.data_to_send())
    while s1b.busy or s2b.busy:
        for s in (s1b, s2b):
            if s.busy:
                s.resume()
    held = b.positions()["SH01"]
    assert held >= fork_at
    sides = {"a": a, "clone": clone}
    ours = [b.storage.log.hash_at("SH01", seq) for seq in range(fork_at, held + 1)]
    side = [name for name, led in sides.items()
            if ours == [led.storage.log.hash_at("SH01", seq) for seq in range(fork_at, held + 1)]]
    assert len(side) == 1, "one side of the fork, not a splice of both"
    kept = b.storage.log.head("SH01")
    assert kept is not None and kept[0].seq <= held


def test_a_history_learned_from_one_hub_is_not_relayed_to_the_other_that_holds_it(
        tmp_path: Path) -> None:
    """A joining branch, told by hub C what C holds, takes the same history from hub
    A: nothing of it goes back to C (at 1M records that relay was one batch of 317 MB,
    built in one turn, to a hub that held every record of it)."""
    a, members = _writer(tmp_path, 30)
    c = new_ledger(tmp_path, "SH03")
    sync(a, c)
    b = new_ledger(tmp_path, "SH02")
    sbc, sc = _answered(b, c)
    sc.receive_frames(sbc.data_to_send())
    # C's answer and its state are queued: B hears only the state (the answer is
    # still on the line when A's arrives).
    sbc.receive_frames([f for f in sc.data_to_send() if unpack(f)["t"] != "recs"])
    assert sbc.peer_states == c.log_view()
    sbc.data_to_send()
    sa, sb = _answered(a, b)
    sb.receive_frames(sa.data_to_send())
    while sb.busy:
        sb.resume()
    assert b.positions() == a.positions()
    assert not [f for f in sbc.data_to_send() if unpack(f)["t"] == "recs"]
    # What C does not hold still goes to it: a top-up written here after the join.
    b.topup(b.owner, members[0], 5)
    recs = [unpack(f) for f in sbc.data_to_send() if unpack(f)["t"] == "recs"]
    assert [len(m["recs"]) for m in recs] == [1]


def test_a_slice_ends_at_its_bytes_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Members imported in bulk come as records of 0.4 MB each; 128 of them in one
    slice of 4,000 records took 14 s to project. A slice also ends at
    APPLY_SLICE_BYTES of record data (one record at least)."""
    a, members = _writer(tmp_path, 30)
    b = new_ledger(tmp_path, "SH02")
    sizes = [len(r.data) for r in a.storage.log.records_after({"SH01": 0})]
    monkeypatch.setattr(sync_mod, "APPLY_SLICE", 1000)
    monkeypatch.setattr(sync_mod, "APPLY_SLICE_BYTES", max(sizes))  # a record or two
    sa, sb = _answered(a, b)
    sb.receive_frames(sa.data_to_send())
    held = [b.positions().get("SH01", 0)]
    while sb.busy:
        sb.resume()
        held.append(b.positions().get("SH01", 0))
    assert held[-1] == len(sizes) and len(held) >= len(sizes) // 2
    for lo, hi in pairwise(held):  # each slice within the bytes, or a single record
        assert hi - lo == 1 or sum(sizes[lo:hi]) <= max(sizes)
    assert b.balance(members[0]) == a.balance(members[0])


def test_listeners_are_told_of_a_long_batch_a_step_per_turn(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Told of a million records in one turn, the joining node's listeners (relays,
    the core's booking check, the node's flush) held its loop 7.6 s. Once the batch is
    applied whole, they are told NOTIFY_STEP records per turn, each record once, and
    the session is busy until the last."""
    monkeypatch.setattr(sync_mod, "APPLY_SLICE", 1000)
    monkeypatch.setattr(replica_mod, "NOTIFY_STEP", 7)
    a, members = _writer(tmp_path, 30)
    b = new_ledger(tmp_path, "SH02")
    told: list[list[int]] = []
    b.subscribe(lambda rec, origin: told[-1].append(rec.seq))
    sa, sb = _answered(a, b)
    told.append([])
    sb.receive_frames(sa.data_to_send())
    while sb.busy:
        assert b.positions() == a.positions()  # applied whole in the first turn
        told.append([])
        sb.resume()
    assert [len(t) for t in told] == [7, 7, 7, 7, 7]
    assert sorted(s for t in told for s in t) == list(range(1, 36))
    assert b.balance(members[0]) == a.balance(members[0])
    # A link lost while they are told: the rest are told as it closes, each once.
    c = new_ledger(tmp_path, "SH03")
    heard: list[int] = []
    c.subscribe(lambda rec, origin: heard.append(rec.seq))
    sa, sc = _answered(a, c)
    sc.receive_frames(sa.data_to_send())
    sc.resume()
    assert sc.busy and len(heard) == 14
    sc.close()
    assert sorted(heard) == list(range(1, 36))
