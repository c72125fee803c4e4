"""A long answer to a state goes out in slices (issue 14: a new branch joining a
chain of a million records got one frame above MAX_FRAME_BYTES, built while the
hub's loop missed its heartbeat). The receiver keeps the slices and verifies and
applies them as the one batch they are, once the last came: each log's chain only
reaches the head its writer signed at the end of the answer. Real ledgers, real
sessions (and the real driver core); the slice limits lowered so that a few dozen
records make many slices."""

from __future__ import annotations

from pathlib import Path

import msgpack
import pytest
from helpers import new_ledger

from crdtledger import platform
from crdtledger import sync as sync_mod
from crdtledger.core import NodeCore, Send, SetTimer
from crdtledger.errors import LocalProtocolError, RemoteProtocolError
from crdtledger.ledger import Ledger
from crdtledger.sync import SyncSession, pack, unpack


@pytest.fixture(autouse=True)
def small_slices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sync_mod, "SEND_SLICE_RECORDS", 6)
    monkeypatch.setattr(sync_mod, "SEND_SLICE_BYTES", 64 * 1024)


def _chain(tmp_path: Path, n: int = 30) -> tuple[Ledger, Ledger, list[str]]:
    """A hub holding two interleaved logs (its own and a branch's), n top-ups each."""
    hub, branch = new_ledger(tmp_path, "HQ01"), new_ledger(tmp_path, "SH01")
    members = [hub.add_member(hub.owner, name=f"m{i}", phone=f"138000001{i:02d}")
               for i in range(4)]
    branch.pull(hub)
    for i in range(n):
        hub.topup(hub.owner, members[i % 4], 100 + i)
        branch.topup(branch.owner, members[(i + 1) % 4], 200 + i)
        if i % 5 == 4:
            hub.pull(branch)
    hub.pull(branch)
    return hub, branch, members


def _sessions(a: Ledger, b: Ledger) -> tuple[SyncSession, SyncSession]:
    sa, sb = SyncSession(a, expect_node=b.node), SyncSession(b, expect_node=a.node)
    sa.start()
    sb.start()
    return sa, sb


def _pump(sa: SyncSession, sb: SyncSession, tamper=None, limit: int = 10_000) -> list[dict]:
    """Deliver frames both ways, a driver's turn at a time: what each has to send,
    then `resume` for a busy one. Returns the messages sa sent (as received)."""
    sent: list[dict] = []
    for _ in range(limit):
        to_b, to_a = sa.data_to_send(), sb.data_to_send()
        if tamper is not None:
            to_b = [tamper(f) for f in to_b]
        sent += [unpack(f) for f in to_b]
        if to_b:
            sb.receive_frames(to_b)
        if to_a:
            sa.receive_frames(to_a)
        busy = [s for s in (sa, sb) if s.busy]
        for s in busy:
            s.resume()
        if not (to_a or to_b or busy):
            return sent
    raise AssertionError("did not settle")


def _same(a: Ledger, b: Ledger, members: list[str]) -> None:
    assert b.state_vectors() == a.state_vectors()
    assert b.log_view() == a.log_view()
    for m in members:
        assert b.balance(m) == a.balance(m)


def test_a_join_larger_than_a_slice_converges(tmp_path: Path) -> None:
    hub, _branch, members = _chain(tmp_path)
    new = new_ledger(tmp_path, "SH09")
    sa, sb = _sessions(hub, new)
    sent = _pump(sa, sb)
    slices = [m for m in sent if m["t"] == "recs"]
    assert len(slices) >= 10
    assert all(m.get("more") for m in slices[:-1]) and "more" not in slices[-1]
    assert all(len(m["recs"]) <= 6 for m in slices)
    # Each slice carries the signed heads of the logs it holds records of.
    assert all({r[0] for r in m["recs"]} <= set(m["heads"]) for m in slices)
    _same(hub, new, members)
    assert not new.refusals and not new.faults()


def test_nothing_is_applied_before_the_last_slice_and_live_records_follow_it(
        tmp_path: Path) -> None:
    hub, _branch, members = _chain(tmp_path)
    new = new_ledger(tmp_path, "SH09")
    sa, sb = _sessions(hub, new)
    sb.receive_frames(sa.data_to_send())  # the hub's hello: the new one says its state
    sa.receive_frames(sb.data_to_send())  # the hub starts its answer
    assert sa.busy
    first = sa.data_to_send()
    assert [unpack(f)["t"] for f in first].count("recs") == 1
    # A sale at the hub while its answer goes out: it follows the answer's last slice.
    later = hub.topup(hub.owner, members[0], 7)
    sb.receive_frames(first)
    while sa.busy:
        assert new.positions() == {}  # kept, not applied: nothing proven yet
        sa.resume()
        frames = sa.data_to_send()
        kinds = [unpack(f)["t"] for f in frames]
        if sa.busy:
            assert kinds == ["recs"]
        else:  # the last slice, then the live record in its own frame
            assert kinds[0] == "recs" and "recs" in kinds[1:]
        sb.receive_frames(frames)
        while sb.busy:
            sb.resume()
    _pump(sa, sb)
    _same(hub, new, members)
    assert any(e["id"] == later["id"] for e in new.history(members[0]))


def test_the_same_as_one_frame(tmp_path: Path) -> None:
    hub, _branch, members = _chain(tmp_path)
    sliced, whole = new_ledger(tmp_path, "SH08"), new_ledger(tmp_path, "SH09")
    _pump(*_sessions(hub, sliced))
    whole.pull(hub)
    assert sliced.state_vectors() == whole.state_vectors()
    assert sliced.log_view() == whole.log_view()
    for m in members:
        assert sliced.balance(m) == whole.balance(m)


def _tamper_in_slice(index: int, node: str):
    """Alter the data of the first record of `node` in the index-th `recs` frame."""
    seen = {"recs": 0, "altered": None}

    def tamper(frame: bytes) -> bytes:
        msg = unpack(frame)
        if msg["t"] != "recs":
            return frame
        seen["recs"] += 1
        if seen["recs"] != index:
            return frame
        for rec in msg["recs"]:
            if rec[0] == node:
                rec[3] = rec[3][:-1] + bytes([rec[3][-1] ^ 1])
                seen["altered"] = rec[1]
                break
        del msg["v"]
        return pack(msg)

    return tamper, seen


def test_a_record_altered_in_a_middle_slice_is_refused_with_all_after_it(
        tmp_path: Path) -> None:
    hub, _branch, members = _chain(tmp_path)
    new = new_ledger(tmp_path, "SH09")
    tamper, seen = _tamper_in_slice(4, "SH01")
    sa, sb = _sessions(hub, new)
    _pump(sa, sb, tamper=tamper)
    assert seen["altered"] is not None and seen["altered"] > 1
    # Nothing of the altered log is applied, not even what came before the record
    # (the answer is verified whole), let alone what came after it.
    assert new.positions().get("SH01", 0) == 0
    assert any("SH01" in r and "altered" in r for r in new.refusals)
    assert not new.faults()  # an altered relay is no fault of SH01's
    # The hub's own log did not depend on it and came whole.
    assert new.positions()["HQ01"] == hub.positions()["HQ01"]
    sa.close()
    sb.close()
    # An honest round after it brings the rest.
    _pump(*_sessions(hub, new))
    _same(hub, new, members)


def test_an_answer_cut_short_applies_nothing_of_the_logs_it_cut(tmp_path: Path) -> None:
    """A dishonest relay ends the answer early (drops `more`): the records came
    chain from the receiver's tip but do not reach the heads sent, so none is taken:
    an unproven prefix is never applied."""
    hub, _branch, members = _chain(tmp_path)
    new = new_ledger(tmp_path, "SH09")
    sa, sb = _sessions(hub, new)
    sb.receive_frames(sa.data_to_send())
    sa.receive_frames(sb.data_to_send())
    frames = sa.data_to_send()
    cut = []
    for f in frames:
        msg = unpack(f)
        if msg["t"] == "recs":
            assert msg.pop("more")
            del msg["v"]
            f = pack(msg)
        cut.append(f)
    sb.receive_frames(cut)
    while sb.busy:
        sb.resume()
    assert new.positions() == {}
    sa.close()
    sb.close()
    _pump(*_sessions(hub, new))
    _same(hub, new, members)


def test_the_receiver_bounds_what_it_keeps(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    hub, _branch, _members = _chain(tmp_path)
    monkeypatch.setattr(sync_mod, "MAX_STAGED_BYTES", 2000)
    new = new_ledger(tmp_path, "SH09")
    sa, sb = _sessions(hub, new)
    with pytest.raises(RemoteProtocolError, match="period closing"):
        _pump(sa, sb)
    assert sb.failed and new.positions() == {}
    with pytest.raises(LocalProtocolError):
        sb.receive_frames([])


def _until_applying(sa: SyncSession, sb: SyncSession) -> None:
    """Frames both ways, `sa` sending its answer a slice per turn, until `sb` has taken
    the whole answer and applies it a slice at a time (APPLY_SLICE)."""
    for _ in range(100):
        sb.receive_frames(sa.data_to_send())
        sa.receive_frames(sb.data_to_send())
        if sa.busy:
            sa.resume()
        elif sb.busy:
            return
    raise AssertionError("the answer was never applied in slices")


def _greeted(tmp_path: Path) -> SyncSession:
    """A new branch's session with the hub, hellos exchanged: what a liar with the
    hub's certificate would talk to next."""
    hub, _branch, _members = _chain(tmp_path, n=2)
    sa, sb = _sessions(hub, new_ledger(tmp_path, "SH09"))
    sb.receive_frames(sa.data_to_send())
    return sb


def test_slices_are_bounded_by_all_they_keep_and_by_their_number(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Slices of no records but 16 KiB certificates were kept uncounted (375 MiB, the
    limit never reached), and 60,000 empty slices each re-counted all before them."""
    monkeypatch.setattr(sync_mod, "MAX_STAGED_BYTES", 100_000)
    sb = _greeted(tmp_path / "certs")
    certs = {f"X{i:015d}": bytes(16384) for i in range(3)}
    with pytest.raises(RemoteProtocolError, match="period closing"):
        for _ in range(3):
            sb.receive(pack({"t": "recs", "recs": [], "heads": {}, "certs": certs,
                             "more": True}))
    assert sb.failed
    monkeypatch.setattr(sync_mod, "MAX_STAGED_SLICES", 50)
    sb = _greeted(tmp_path / "empty")
    empty = pack({"t": "recs", "recs": [], "heads": {}, "more": True})
    with pytest.raises(RemoteProtocolError, match="50 slices"):
        sb.receive_frames([empty] * 51)
    assert sb.failed


def test_what_comes_while_an_answer_is_applied_is_bounded(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A liar that keeps its answer from finishing (the node resumes it only once its
    frames are read) sent 4 MiB frames meanwhile: every one was kept."""
    monkeypatch.setattr(sync_mod, "APPLY_SLICE", 5)
    monkeypatch.setattr(sync_mod, "MAX_BACKLOG_BYTES", 100_000)
    hub, _branch, _members = _chain(tmp_path)
    sa, sb = _sessions(hub, new_ledger(tmp_path, "SH09"))
    _until_applying(sa, sb)
    pad = pack({"t": "rrep", "id": 1, "granted": 0, "pad": bytes(40_000)})
    sb.receive(pad)
    sb.receive_frames([pad])
    with pytest.raises(RemoteProtocolError, match="while its answer was applied"):
        sb.receive(pad)
    assert sb.failed


def test_what_a_receiver_keeps_is_bounded_by_this_machines_memory() -> None:
    """A 4 GB shop PC keeps at most 512 MiB of an answer before its last slice; this
    machine (CI: 24 GB) the 2 GiB ceiling; a 1M-entry join's 317 MB fits either."""
    memory = platform.physical_memory()
    assert memory is not None and memory > 0  # Linux
    assert min(2 << 30, max(256 << 20, memory // 8)) == sync_mod.MAX_STAGED_BYTES
    assert min(2 << 30, max(256 << 20, (4 << 30) // 8)) == 512 << 20 > 317_000_000


def test_more_must_be_a_flag(tmp_path: Path) -> None:
    hub, _branch, _members = _chain(tmp_path, n=2)
    new = new_ledger(tmp_path, "SH09")
    sa, sb = _sessions(hub, new)
    sb.receive_frames(sa.data_to_send())
    sa.receive_frames(sb.data_to_send())
    bad = [msgpack.packb({**unpack(f), "more": 1}) if unpack(f)["t"] == "recs" else f
           for f in sa.data_to_send()]
    with pytest.raises(RemoteProtocolError, match="more"):
        sb.receive_frames(bad)


def test_the_core_sends_a_slice_per_turn(tmp_path: Path) -> None:
    """Through the driver's core (node and simulator): the hub's answer goes out a
    slice per `resume` timer, the new node applies it in slices as before."""
    hub, _branch, members = _chain(tmp_path)
    new = new_ledger(tmp_path, "SH09")
    ca, cb = NodeCore(hub), NodeCore(new)
    ca.start(0.0, [])
    cb.start(0.0, [])
    out_a = ca.link_opened(1, "SH09", dialer="SH09", now=0.0)
    out_b = cb.link_opened(1, "HQ01", dialer="SH09", now=0.0)
    hub_turns = 0
    for _ in range(500):
        to_b = [f for e in out_a if isinstance(e, Send) for f in e.frames]
        to_a = [f for e in out_b if isinstance(e, Send) for f in e.frames]
        assert sum(unpack(f)["t"] == "recs" for f in to_b) <= 2  # a slice (and live)
        t_a = [e for e in out_a if isinstance(e, SetTimer) and e.key[0] == "resume"]
        t_b = [e for e in out_b if isinstance(e, SetTimer) and e.key[0] == "resume"]
        out_a = ca.receive(1, to_a, 0.0) if to_a else []
        out_b = cb.receive(1, to_b, 0.0) if to_b else []
        for t in t_a:
            hub_turns += 1
            out_a += ca.fire(t.key, t.token, 0.0)
        for t in t_b:
            out_b += cb.fire(t.key, t.token, 0.0)
        if not (to_a or to_b or t_a or t_b):
            break
    assert hub_turns >= 10
    _same(hub, new, members)


def test_a_sync_file_beyond_its_limit_is_refused_with_the_limit(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file is sealed and read whole: past its bounds, writing it says which they
    are (and nothing is written), rather than a file no node can read."""
    from crdtledger import syncfile
    from crdtledger.errors import InvalidInput

    hub, _branch, _members = _chain(tmp_path, n=3)
    monkeypatch.setattr(syncfile, "MAX_BATCH_RECORDS", 5)
    with pytest.raises(InvalidInput, match="records to write: a sync file holds at most"):
        syncfile.export_file(hub, tmp_path / "all.sync")
    monkeypatch.setattr(syncfile, "MAX_BATCH_RECORDS", 1000)
    monkeypatch.setattr(syncfile, "MAX_FILE_BYTES", 1000)
    with pytest.raises(InvalidInput, match="--for NODE"):
        syncfile.export_file(hub, tmp_path / "all.sync")
    assert not (tmp_path / "all.sync").exists()


def test_a_link_lost_mid_apply_goes_on_from_what_was_applied(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The answer is applied a slice at a time (APPLY_SLICE); the heads are kept with
    the last slice. A link lost before it leaves records no kept head covers yet:
    they are passed on to nobody, and the next link brings the rest (it failed,
    saying it had no signed head to send, and the joiner redialled for ever)."""
    monkeypatch.setattr(sync_mod, "APPLY_SLICE", 5)
    hub, _branch, members = _chain(tmp_path)
    new = new_ledger(tmp_path, "SH09")
    sa, sb = _sessions(hub, new)
    _until_applying(sa, sb)
    sb.resume()  # two slices applied, then the link is lost
    sb.resume()
    held = new.positions()
    assert held and sb.busy
    sa.close()
    sb.close()
    # Another node asking the joiner now gets none of what it cannot prove.
    third = new_ledger(tmp_path, "SH07")
    third.pull(new)
    assert third.positions() == {} and not third.refusals
    _pump(*_sessions(hub, new))
    _same(hub, new, members)
    assert not new.refusals and not new.faults()
    third.pull(new)
    _same(hub, third, members)


def test_an_answer_of_few_but_large_records_is_sliced_by_bytes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Fewer records than a slice holds, more bytes: read at once, sent in slices."""
    monkeypatch.setattr(sync_mod, "SEND_SLICE_RECORDS", 10_000)
    monkeypatch.setattr(sync_mod, "SEND_SLICE_BYTES", 3000)
    hub, _branch, members = _chain(tmp_path)
    new = new_ledger(tmp_path, "SH09")
    sent = _pump(*_sessions(hub, new))
    slices = [m for m in sent if m["t"] == "recs"]
    assert len(slices) >= 5 and all(m.get("more") for m in slices[:-1])
    _same(hub, new, members)


def test_a_state_that_crossed_a_long_answer_does_not_bring_it_again(tmp_path: Path) -> None:
    """The hub's next hello goes out between the slices of its answer; the joining
    node, still keeping slices, answers it with a state that lacks everything, which
    reaches the hub after its last slice. That state brought the whole answer again
    (at 1M records, another 317 MB and minutes of verifying)."""
    hub, _branch, members = _chain(tmp_path)
    new = new_ledger(tmp_path, "SH02")
    sh, sn = _sessions(hub, new)
    sn.receive_frames(sh.data_to_send())
    sh.receive_frames(sn.data_to_send())
    line = sh.data_to_send()  # the answer's first slice
    sh.anti_entropy()  # the hub's round, between two slices
    line += sh.data_to_send()
    while sh.has_output or sh.busy:
        sh.resume()
        line += sh.data_to_send()
    assert sum(unpack(f)["t"] == "recs" for f in line) > 3
    sn.receive_frames(line)
    crossed = sn.data_to_send()
    assert any(unpack(f)["t"] == "state" for f in crossed)  # sent lacking everything
    sh.receive_frames(crossed)
    assert not [m for f in sh.data_to_send() if (m := unpack(f))["t"] == "recs" and m["recs"]]
    _pump(sh, sn)
    _same(hub, new, members)
