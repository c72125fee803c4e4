"""The library changes the simulator needed for speed, checked against what they
replace: a remembered value must equal the computed one after every kind of change,
and the fast paths must answer as the slow ones do.

- `Storage.state_vectors()` and `Ledger.states_digest()` are kept until the store
  records an update (or compacts, or rolls back);
- `decode_state_vector` and `states_digest` remember their parses;
- `_skips_clocks` answers the usual single-writer update without its probe document;
- `SyncSession.receive_frames` applies a run of updates in one transaction.
"""

from __future__ import annotations

import json
import random
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from helpers import FakeClock, Net, doc_content, events, new_ledger, projections

from crdtledger import ledger as ledger_mod
from crdtledger import replica as replica_mod
from crdtledger import storage as storage_mod
from crdtledger.errors import InsufficientFunds, LocalProtocolError, RemoteProtocolError
from crdtledger.ledger import Ledger
from crdtledger.replica import _single_writer_start, _skips_clocks
from crdtledger.sync import (
    SyncSession,
    UpdatesApplied,
    decode_state_vector,
    pack,
    states_digest,
)


def raw_state_vectors(ledger: Ledger) -> dict[str, bytes]:
    """What Storage.state_vectors computed before it remembered anything."""
    return {n: bytes(sv) for n, sv in ledger.storage.conn.execute(
        "SELECT name, COALESCE((SELECT sv FROM log WHERE doc = docs.name AND sv IS NOT NULL "
        "ORDER BY seq DESC LIMIT 1), sv) FROM docs")}


def assert_fresh(ledger: Ledger) -> None:
    raw = raw_state_vectors(ledger)
    assert ledger.state_vectors() == raw
    assert ledger.states_digest() == states_digest(raw)


def test_remembered_state_vectors_follow_every_change(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock()
    a = new_ledger(tmp_path, "SH01", now_ms=clock)
    b = new_ledger(tmp_path, "SH02", now_ms=clock)
    assert_fresh(a)
    member = a.add_member(a.owner, name="王芳", phone="13800000001")
    assert_fresh(a)
    a.topup(a.owner, member, 10000)
    assert_fresh(a)
    # A caller changing what it got does not change what is remembered.
    got = a.state_vectors()
    got.clear()
    assert_fresh(a)
    # A refused operation rolls back: nothing changed, and nothing stale is kept.
    before = a.state_vectors()
    with pytest.raises(InsufficientFunds):
        a.debit(a.owner, member, amount=10**6)
    assert a.state_vectors() == before
    assert_fresh(a)
    # Remote updates, through a session.
    net = Net()
    net.connect(a, b)
    assert_fresh(b)
    b.debit(b.owner, member, amount=100) if b.rights(member).get("SH02") else None
    a.debit(a.owner, member, amount=100)
    net.pump()
    assert_fresh(a)
    assert_fresh(b)
    assert a.states_digest() == b.states_digest()
    # Compaction folds the log into a snapshot: same vectors, read another way.
    monkeypatch.setattr(storage_mod, "COMPACT_AFTER", 3)
    for _ in range(4):
        a.topup(a.owner, member, 100)
        assert_fresh(a)
    (logged,) = a.storage.conn.execute("SELECT COUNT(*) FROM log").fetchone()
    assert logged < 8, "compaction should have run"
    net.pump()
    assert_fresh(b)
    net.close()
    a.close()
    b.close()


def test_failed_apply_forgets_what_it_saw(tmp_path: Path) -> None:
    """An apply that fails half-way rolls back, and the remembered vectors with it."""
    a = new_ledger(tmp_path, "SH01")
    b = new_ledger(tmp_path, "SH02")
    ups: list[tuple[str, bytes]] = []
    a.subscribe(lambda doc, u, origin: ups.append((doc, u)))
    a.add_member(a.owner, name="李雷", phone="13800000002")
    before = b.state_vectors()
    with pytest.raises(RemoteProtocolError):
        b.apply_remote([*ups, ("rules", b"\xff\xff\xff")])
    assert b.state_vectors() == before == raw_state_vectors(b)
    assert_fresh(b)
    a.close()
    b.close()


def test_decoded_state_vectors_are_fresh_copies() -> None:
    sv = b"\x02\x05\x07\x09\x03"  # client 5 at 7, client 9 at 3
    first = decode_state_vector(sv)
    assert first == {5: 7, 9: 3}
    first[5] = 0
    assert decode_state_vector(sv) == {5: 7, 9: 3}
    with pytest.raises(RemoteProtocolError):
        decode_state_vector(b"\x02\x05")


def _slow_skips(state: bytes, update: bytes, monkeypatch: pytest.MonkeyPatch) -> bool:
    with monkeypatch.context() as m:
        m.setattr(replica_mod, "_single_writer_start", lambda update: None)
        return replica_mod._skips_clocks(state, update)


def test_skip_fast_path_agrees_with_the_probe(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Updates of three writers delivered to a fourth replica in a shuffled order:
    for each, the fast answer equals the probe's."""
    rng = random.Random(7)
    clock = FakeClock()
    writers = [new_ledger(tmp_path, f"SH0{i}", now_ms=clock) for i in range(1, 4)]
    target = new_ledger(tmp_path, "SH09", now_ms=clock)
    ups: list[tuple[str, bytes]] = []
    for w in writers:
        w.subscribe(lambda doc, u, origin: ups.append((doc, u)))
    members = []
    for i, w in enumerate(writers):
        members.append((w, w.add_member(w.owner, name=f"m{i}", phone=f"1390000000{i}")))
    for k in range(40):
        clock.ms += 1000
        w, m = members[k % 3]
        w.topup(w.owner, m, 100 + k)
    single = sum(_single_writer_start(u) is not None for _, u in ups)
    assert single == len(ups), "every local commit is one writer's update"
    checked = skipped = 0
    order = list(range(len(ups)))
    rng.shuffle(order)
    for i in order:
        doc, update = ups[i]
        state = bytes(target.storage.doc(doc).doc.get_state())
        fast = _skips_clocks(state, update)
        assert fast == _slow_skips(state, update, monkeypatch), (i, doc)
        checked += 1
        skipped += fast
        if not fast:
            target.apply_remote([(doc, update)])
    assert checked == len(ups) and 0 < skipped < checked
    # Updates that do not parse as one writer's take the general path.
    assert _single_writer_start(b"") is None
    assert _single_writer_start(b"\x00\x00") is None
    assert _single_writer_start(b"\x02\x01") is None
    for w in writers:
        w.close()
    target.close()


def fixed_ledger(root: Path, node: str, client_id: int, clock: FakeClock) -> Ledger:
    """A ledger whose pycrdt client id is fixed, so that two runs write equal updates."""
    path = root / node.lower()
    Ledger.create(path, node)
    with sqlite3.connect(path / storage_mod.DB_FILE) as db:
        db.execute("UPDATE meta SET value = ? WHERE key = 'client_id'", (str(client_id),))
    return Ledger.open(path, synchronous="NORMAL", now_ms=clock)


def _stream(tmp_path: Path) -> tuple[Ledger, Ledger, list[bytes]]:
    """Frames SH01's session sends to a fresh SH02 over one connection: its hello,
    then a burst of updates, a rights request, more updates."""
    clock = FakeClock()
    a = fixed_ledger(tmp_path, "SH01", 1001, clock)
    b = fixed_ledger(tmp_path, "SH02", 2002, clock)
    sa = SyncSession(a, expect_node="SH02")
    sa.start()
    members = [a.add_member(a.owner, name=f"m{i}", phone=f"1380000010{i}") for i in range(3)]
    for i, m in enumerate(members):
        a.topup(a.owner, m, 5000 + i)
    frames = sa.data_to_send()
    sb = SyncSession(b, expect_node="SH01")
    sb.start()
    for f in sb.data_to_send():
        sa.receive(f)
    frames += sa.data_to_send()
    sa.request_rights(members[0], "cash", 100)
    for m in members:
        a.debit(a.owner, m, amount=10)
    frames += sa.data_to_send()
    sb.close()
    return a, b, frames


def _replica(ledger: Ledger) -> dict[str, Any]:
    conn = ledger.storage.conn
    return {"sv": ledger.state_vectors(),
            "entries": conn.execute("SELECT id, body FROM entries ORDER BY id").fetchall(),
            "rights": conn.execute("SELECT * FROM rights ORDER BY 1, 2, 3").fetchall(),
            "members": conn.execute("SELECT id, body FROM members ORDER BY id").fetchall()}


def test_receive_frames_equals_receiving_one_by_one(tmp_path: Path) -> None:
    a1, b1, frames = _stream(tmp_path / "one")
    s1 = SyncSession(b1, expect_node="SH01")
    s1.start()
    for f in frames:
        s1.receive(f)
    a2, b2, frames2 = _stream(tmp_path / "batch")
    s2 = SyncSession(b2, expect_node="SH01")
    s2.start()
    s2.receive_frames(frames2)
    assert _replica(b1) == _replica(b2)
    assert s1.bytes_in == s2.bytes_in
    e1, e2 = events(s1), events(s2)
    assert [type(e) for e in e1] == [type(e) for e in e2]
    assert [e for e in e1 if not isinstance(e, UpdatesApplied)] == \
        [e for e in e2 if not isinstance(e, UpdatesApplied)]
    assert [(e.doc, e.size) for e in e1 if isinstance(e, UpdatesApplied)] == \
        [(e.doc, e.size) for e in e2 if isinstance(e, UpdatesApplied)]
    # What each sends back (state, rights reply with its transfer) is the same too.
    assert [len(f) for f in s1.data_to_send()] == [len(f) for f in s2.data_to_send()]
    for x in (a1, b1, a2, b2):
        x.close()


def test_receive_frames_handles_what_precedes_a_bad_frame(tmp_path: Path) -> None:
    a, b, frames = _stream(tmp_path)
    updates = [f for f in frames[1:] if b'update' in f]
    s = SyncSession(b, expect_node="SH01")
    s.start()
    bad = pack({"t": "update", "doc": "nonsense", "data": b"\x00"})
    with pytest.raises(RemoteProtocolError):
        s.receive_frames([frames[0], *updates[:4], b"not msgpack at all \xc1"])
    applied = b.state_vectors()
    assert applied, "the updates before the bad frame were applied"
    with pytest.raises(LocalProtocolError, match="failed earlier"):
        s.receive_frames(updates[4:])  # the session failed with the bad frame
    s = SyncSession(b, expect_node="SH01")
    s.start()
    s.receive(frames[0])
    with pytest.raises(RemoteProtocolError):
        s.receive_frames([*updates[4:], bad])  # the whole run is refused with it
    assert b.state_vectors() == applied
    a.close()
    b.close()


def test_clock_skew_events_are_bounded_and_hold_no_frames(tmp_path: Path) -> None:
    """Found by the simulator's clock-skew scenario: every entry from a peer whose
    clock runs more than MAX_CLOCK_SKEW_MS ahead appended an exception, with its
    traceback (the apply's frames), to a list nobody trims: 402 per replica after
    one simulated day at 300 operations per branch."""
    ahead = FakeClock()
    ahead.ms += 10 * 60 * 1000  # ten minutes ahead: beyond the five allowed
    a = new_ledger(tmp_path, "SH01", now_ms=ahead)
    b = new_ledger(tmp_path, "SH02", now_ms=FakeClock())
    ups: list[tuple[str, bytes]] = []
    a.subscribe(lambda doc, u, origin: ups.append((doc, u)))
    member = a.add_member(a.owner, name="张伟", phone="13800000009")
    for i in range(ledger_mod.SKEW_EVENTS_KEPT + 30):
        a.topup(a.owner, member, 100 + i)
    b.apply_remote(ups)
    assert len(b.skew_events) == ledger_mod.SKEW_EVENTS_KEPT
    assert all(e.__traceback__ is None for e in b.skew_events)
    assert b.skew_events[-1].skew_ms > 5 * 60 * 1000
    a.close()
    b.close()


def test_a_transactions_own_update_is_not_what_it_integrated() -> None:
    """Why apply_remote logs and relays get_update(before), whose cost grows with the
    document (sim/README.md, finding 1), rather than the transaction's own update,
    which costs only the change: relaying the latter, a downstream replica keeps
    member tags its upstream has deleted (the deletions came in updates that could not
    be integrated yet), where the diff's full delete set passes them on. Three writers
    edit members; a replica applies their updates shuffled, then in order, refusing
    those past a gap as apply_remote does, and relays to a mirror each way."""
    from pycrdt import Doc, Map

    rng = random.Random(3)

    def doc(client: int) -> tuple[Doc[Any], list[bytes]]:
        d: Doc[Any] = Doc(client_id=client)
        d.get("members", type=Map)
        ups: list[bytes] = []
        d.observe(lambda e: ups.append(bytes(e.update)))
        return d, ups

    writers = [doc(10 + i) for i in range(3)]
    updates: list[bytes] = []
    for _ in range(200):
        d, ups = rng.choice(writers)
        members = d.get("members", type=Map)
        with d.transaction():
            key = f"m{rng.randrange(6)}"
            if key not in members:
                members[key] = Map({"name": "a", "tags": Map({})})
            else:
                members[key]["name"] = rng.choice("abcdef")
                members[key]["tags"][rng.choice("xyz")] = rng.random() < 0.5
        updates.append(ups[-1])
        if rng.random() < 0.3:
            a, b = rng.sample(writers, 2)
            n = len(a[1])
            a[0].apply_update(b[0].get_update(a[0].get_state()))
            updates.extend(a[1][n:])
    replica, own = doc(99)
    by_txn: Doc[Any] = Doc(client_id=98)
    by_diff: Doc[Any] = Doc(client_id=97)
    order = list(range(len(updates)))
    rng.shuffle(order)
    txn_behind = diff_behind = 0  # steps where only that mirror lags the replica
    for i in order[: len(order) // 2] + list(range(len(updates))):
        before = replica.get_state()
        if _skips_clocks(before, updates[i]):
            continue
        content = replica.get("members", type=Map).to_py()
        n = len(own)
        replica.apply_update(updates[i])
        if replica.get_state() != before:
            by_txn.apply_update(own[n])
            by_diff.apply_update(replica.get_update(before))
        elif replica.get("members", type=Map).to_py() != content:
            by_txn.apply_update(updates[i])
            by_diff.apply_update(updates[i])
        truth = replica.get("members", type=Map).to_py()
        txn_ok = by_txn.get("members", type=Map).to_py() == truth
        diff_ok = by_diff.get("members", type=Map).to_py() == truth
        txn_behind += diff_ok and not txn_ok
        diff_behind += txn_ok and not diff_ok
    assert txn_behind > 0 and diff_behind == 0


def test_a_remote_update_costs_its_own_size(tmp_path: Path) -> None:
    """sim/README.md, finding 1: apply_remote logged and relayed the diff against the
    state before the update, whose delete set Yrs builds from every block of the
    document (560 µs at 50,000 entries). An update that integrates whole is now
    logged and relayed as received: no whole-document diff is taken."""
    clock = FakeClock()
    a = new_ledger(tmp_path, "SH01", now_ms=clock)
    b = new_ledger(tmp_path, "SH02", now_ms=clock)
    ups: list[tuple[str, bytes]] = []
    a.subscribe(lambda doc, u, origin: ups.append((doc, u)))
    member = a.add_member(a.owner, name="王芳", phone="13800000001", tags=["vip"])
    for i in range(300):
        clock.ms += 1000
        a.topup(a.owner, member, 100 + i)
    b.apply_remote(ups)
    ups.clear()
    # One entry, then a member edit (replacing a field deletes its old value).
    a.debit(a.owner, member, amount=50)
    a.edit_member(a.owner, member, fields={"name": "王芳芳"}, tags_remove=["vip"])
    diffs: list[object] = []
    for name, _ in ups:
        doc = b.storage.doc(name).doc
        doc.get_update = lambda *args, doc=doc: diffs.append(args) or type(doc).get_update(
            doc, *args)  # type: ignore[method-assign]
    for name, update in ups:
        assert b.apply_remote([(name, update)]) == [(name, update)]
        (logged,) = b.storage.conn.execute(
            "SELECT data FROM log WHERE doc = ? ORDER BY seq DESC LIMIT 1", (name,)).fetchone()
        assert logged == update
    assert diffs == []
    assert b.member(member)["name"] == "王芳芳" and b.member(member)["tags"] == []
    assert b.balance(member) == a.balance(member)
    a.close()
    b.close()


@pytest.mark.parametrize("ids_seed", [3, 2, 7])
def test_relays_carry_what_was_held_back(tmp_path: Path, ids_seed: int) -> None:
    """What apply_remote returns (what a session relays) brings a downstream replica
    exactly where the diff against the state before each update does (what it relayed
    before), also when updates arrive out of order and Yrs holds parts back: three
    branches edit the same members and merge now and then; a replica applies their
    updates shuffled, then in order, relaying to one mirror, while another gets the
    replica's diff against its state before each update.

    Client ids are fixed per run: how Yrs orders concurrent edits, and so what it holds
    back, depends on them. With ids 2 and 7 an out-of-order edit integrates a member's
    field already deleted (sent garbage-collected) while the edit that replaced it waits
    on a dependency; Yrs panics computing the keys of that nested Map's event
    (yrs event_keys unwraps the deleted item's content). While pycrdt's wrappers
    converted every event (until cc01bed), apply_remote called that update malformed;
    LoadedDoc.watching reads the keys of root events only (and see the next test)."""
    rng = random.Random(5)
    ids = random.Random(ids_seed)
    clock = FakeClock()
    writers, (replica, relayed, diffed) = (
        [fixed_ledger(tmp_path, n, ids.randrange(1, 2**40), clock) for n in names]
        for names in (("SH01", "SH02", "SH03"), ("SH07", "SH08", "SH09")))
    ups: list[tuple[str, bytes]] = []
    for w in writers:
        w.subscribe(lambda doc, u, origin: ups.append((doc, u)))
    members = [writers[0].add_member(writers[0].owner, name=f"m{i}", phone=f"1380000020{i}")
               for i in range(3)]
    for w in writers[1:]:
        w.apply_remote(ups)
    for _ in range(120):
        clock.ms += 1000
        w = rng.choice(writers)
        w.edit_member(w.owner, rng.choice(members), fields={"notes": rng.choice("abcdef")},
                      tags_add=rng.sample("xyz", 1), tags_remove=rng.sample("uvw", 1))
        if rng.random() < 0.3:
            x, y = rng.sample(writers, 2)
            x.apply_remote([(n, y.diff(n, sv)) for n, sv in x.state_vectors().items()])
    order = list(range(len(ups)))
    rng.shuffle(order)
    as_received = as_diff = 0
    for i in order[: len(order) // 2] + order:
        name, update = ups[i]
        before = bytes(replica.storage.doc(name).doc.get_state())
        for relay, data in replica.apply_remote([(name, update)]):
            relayed.apply_remote([(relay, data)])
            diffed.apply_remote([(relay, replica.diff(relay, before))])
            as_received += data == update
            as_diff += data != update
        assert relayed.state_vectors() == diffed.state_vectors()
        assert doc_content(relayed) == doc_content(diffed)
    assert as_received > 0 and as_diff > 0, (as_received, as_diff)
    for table in ("members", "quarantine"):
        assert projections(relayed)[table] == projections(diffed)[table]
    for x in (*writers, replica, relayed, diffed):
        x.close()


def test_a_root_key_rewritten_out_of_order_is_read_from_the_document(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A root key written more than once (branches defining the same role at once)
    can reach a replica as its newest value already deleted, the value that replaced it
    held back: Yrs then panics telling the root event's keys. That is no malformed
    update: the replica projects that root's records from the document instead, and
    stays where a replica given the whole state in one piece is. Three pycrdt documents
    rewrite two roles (far more often than branches would, to meet the case)."""
    from pycrdt import Doc, Map

    rng = random.Random(8)
    docs: list[Doc[Any]] = [Doc(client_id=rng.randrange(1, 2**40)) for _ in range(3)]
    ups: list[bytes] = []
    for d in docs:
        d.observe(lambda ev: ups.append(bytes(ev.update)))
    for i in range(60):
        rng.choice(docs).get("roles", type=Map)[rng.choice("rs")] = Map(
            {"member.add": i % 2 == 0, "topup": i % 3 == 0})
        if rng.random() < 0.3:
            x, y = rng.sample(docs, 2)
            x.apply_update(y.get_update(x.get_state()))
    unsure: list[set[str]] = []
    project = Ledger._project

    def spy(self: Ledger, ld: Any, change: Any) -> None:
        unsure.append(set(change.unsure))
        project(self, ld, change)

    monkeypatch.setattr(Ledger, "_project", spy)
    replica, whole = (new_ledger(tmp_path, n) for n in ("SH07", "SH08"))
    order = list(range(len(ups)))
    rng.shuffle(order)
    for i in order[: len(order) // 2] + order:
        replica.apply_remote([("operators", ups[i])])
        projected = {k: json.loads(v) for k, v in replica.storage.conn.execute(
            "SELECT name, body FROM roles")}
        # Every role the document holds is projected as it holds it. (A role whose
        # newest value arrived deleted is missing from the document meanwhile; its
        # row keeps the value last seen, as for any record, until the rest comes.)
        roles = replica.storage.doc("operators").roots["roles"].to_py() or {}
        for name, role in roles.items():
            assert projected[name] == role
    assert {"roles"} in unsure  # Yrs panicked, and the update was taken
    full: Doc[Any] = Doc()
    for d in docs:
        full.apply_update(d.get_update())
    whole.apply_remote([("operators", bytes(full.get_update()))])
    replica.apply_remote([("operators", bytes(full.get_update(
        replica.state_vectors()["operators"])))])
    assert projections(replica)["roles"] == projections(whole)["roles"]
    replica.close()
    whole.close()


def test_an_update_found_to_skip_clocks_after_applying_is_rolled_back(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A multi-writer update (a catch-up's diff) is applied before it is checked for a
    gap in a writer's clocks, the check costing more than the apply. One that did
    skip (Yrs integrated a root-Map entry behind the gap) rolls the call back, which
    runs again checking first: the update is set aside, the call's others applied."""
    from pycrdt import merge_updates

    clock = FakeClock()
    a, b, r = (new_ledger(tmp_path, n, now_ms=clock) for n in ("SH01", "SH02", "SH09"))
    ups: dict[str, list[tuple[str, bytes]]] = {"SH01": [], "SH02": []}
    for x in (a, b):
        x.subscribe(lambda doc, u, origin, n=x.node: ups[n].append((doc, u)))
    member = a.add_member(a.owner, name="赵敏", phone="13800000031")
    b.apply_remote(ups["SH01"])
    for i in range(3):
        clock.ms += 1000
        a.topup(a.owner, member, 100 + i)
    clock.ms += 1000
    b.topup(b.owner, member, 500)
    (doc, b_topup), = ups["SH02"][-1:]
    gapped = bytes(merge_updates(ups["SH01"][3][1], b_topup))  # lacks A's second top-up
    runs: list[bool] = []
    run = Ledger._apply_remote

    def spy(self: Ledger, updates: Any, origin: object, probe_first: bool) -> Any:
        runs.append(probe_first)
        return run(self, updates, origin, probe_first)

    monkeypatch.setattr(Ledger, "_apply_remote", spy)
    r.apply_remote(ups["SH01"][:1])  # the member
    assert r.apply_remote([ups["SH01"][1], (doc, gapped)]) == [ups["SH01"][1]]
    assert runs == [False, False, True]
    assert r.balance(member)["cash"] == 100 and r.history(member)[0]["amount"] == 100
    assert raw_state_vectors(r) == r.state_vectors()
    # The gap filled, the same update goes in whole.
    r.apply_remote([ups["SH01"][2], (doc, gapped)])
    assert r.balance(member) == a.balance(member) | {"cash": 100 + 101 + 102 + 500}
    for x in (a, b, r):
        x.close()


def test_entries_projected_in_bulk_as_one_by_one(tmp_path: Path) -> None:
    """project_entries (a remote update's new entries in a few statements) leaves the
    tables exactly as entry_change does entry by entry, whatever order the entries
    come in: rights rows that net to zero included, bad entries quarantined alike."""
    from crdtledger.projection import entry_change, project_deferred, project_entries

    rng = random.Random(11)
    members = [f"037573YWGJ00{i}.SH01" for i in range(3)]
    entries: list[dict[str, Any]] = []
    held: dict[tuple[str, str], int] = {}
    for n in range(200):
        eid = f"037573YWG{n:04d}.SH0{1 + n % 3}"
        node, member = eid[14:], rng.choice(members)
        have = held.get((member, node), 0)
        kind = rng.choice(["topup", "debit", "transfer"]) if have else "topup"
        amount = rng.randint(1, have) if have else rng.randint(1, 500)
        deltas = {"topup": [["cash", node, amount]], "debit": [["cash", node, -amount]],
                  "transfer": [["cash", node, -amount], ["cash", "SH09", amount]]}[kind]
        for _purse, n_, c in deltas:
            held[(member, n_)] = held.get((member, n_), 0) + c
        entries.append({"id": eid, "kind": kind, "member": member, "node": node,
                        "op": "owner", "at": 1_767_225_600_000 + n, "amount": amount,
                        "paid": amount if kind == "topup" else 0, "deltas": deltas})
    entries.append({"id": "037573YWGZZZZ.SH01", "kind": "nonsense"})  # quarantined
    tables = ("entries", "rights", "totals", "quarantine", "deferred")
    for round_ in range(3):
        rng.shuffle(entries)
        cut = rng.randrange(len(entries))
        got = []
        for bulk in (False, True):
            ledger = new_ledger(tmp_path / f"{round_}{bulk}", "SH05")
            st = ledger.storage
            with st.transaction():
                for part in (entries[:cut], entries[cut:]):
                    if bulk:
                        project_entries(st.conn, "ledger/2026-01",
                                        [(e["id"], e) for e in part], st.day_of)
                    else:
                        for e in part:
                            entry_change(st.conn, "ledger/2026-01", e["id"], None, e,
                                         st.day_of)
                    project_deferred(st.conn, st.day_of)
            got.append({t: st.conn.execute(f"SELECT * FROM {t} ORDER BY 1, 2, 3").fetchall()
                        for t in tables})
            ledger.close()
        assert got[0] == got[1]
        assert not got[1]["deferred"] and len(got[1]["entries"]) == 200
        assert any(amount == 0 for *_, amount in got[1]["rights"])
