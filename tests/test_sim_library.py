"""The library changes the simulator needed for speed, checked against what they
replace: a remembered value must equal the computed one after every kind of change,
and the fast paths must answer as the slow ones do.

- `Storage.state_vectors()` and `Ledger.states_digest()` are kept until the store
  records an update (or compacts, or rolls back);
- `decode_state_vector` remembers its parses;
- a record's update is judged from its header (`writerules.writers`), and is logged
  and relayed as received, without a diff of its whole document;
- `SyncSession.receive_frames` applies a run of `recs` frames in one transaction.

Since the signed logs (f2f8a86) the tests of the old path are gone: `_skips_clocks`
and its probe (records now come in their writer's order, a gap waits), and the
choice between relaying a transaction's own update and a diff (records are relayed
as written).
"""

from __future__ import annotations

import base64
import random
from pathlib import Path
from typing import Any

import pytest
from helpers import FakeClock, Net, events, new_ledger

from crdtledger import ledger as ledger_mod
from crdtledger import storage as storage_mod
from crdtledger import trust as trust_mod
from crdtledger.errors import InsufficientFunds, LocalProtocolError, RemoteProtocolError
from crdtledger.hlc import id_time_ms
from crdtledger.ledger import Ledger
from crdtledger.log import Batch, Head, Record, head_message, record_hash
from crdtledger.sync import SyncSession, UpdatesApplied, decode_state_vector, pack, unpack
from crdtledger.trust import UntrustedSigner, load_trust
from crdtledger.writerules import writers
from peer.chain import enrol, init_chain, revoke


def raw_state_vectors(ledger: Ledger) -> dict[str, bytes]:
    """What Storage.state_vectors computed before it remembered anything."""
    return {n: bytes(sv) for n, sv in ledger.storage.conn.execute(
        "SELECT name, COALESCE((SELECT sv FROM log WHERE doc = docs.name AND sv IS NOT NULL "
        "ORDER BY seq DESC LIMIT 1), sv) FROM docs")}


def assert_fresh(ledger: Ledger) -> None:
    raw = raw_state_vectors(ledger)
    assert ledger.state_vectors() == raw
    kept = ledger.states_digest()
    ledger._digest = None  # computed again from the logs
    assert ledger.states_digest() == kept


def recorder(ledger: Ledger) -> list[Record]:
    """Every record `ledger` commits or takes, in order (what its sessions send)."""
    out: list[Record] = []
    ledger.subscribe(lambda rec, origin: out.append(rec))
    return out


def signed_at(writer: Ledger, seq: int) -> Head:
    """`writer`'s head signed at `seq` of its own log (as it was when it sent it)."""
    hash_ = writer.storage.log.hash_at(writer.node, seq)
    assert hash_ is not None
    return Head(seq, hash_, writer.trust.sign(head_message(writer.chain, writer.node, seq,
                                                           hash_)))


def batch_of(writer: Ledger, records: list[Record]) -> Batch:
    """`records` of `writer`'s own log under its head signed at the last of them."""
    return Batch(recs=records, heads={writer.node: signed_at(writer, records[-1].seq)},
                 certs={writer.node: writer.trust.cert_der})


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
    # Remote records, through a session.
    net = Net()
    net.connect(a, b)
    assert_fresh(b)
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
    assert a.states_digest() == b.states_digest()
    net.close()
    a.close()
    b.close()


def test_failed_apply_forgets_what_it_saw(tmp_path: Path) -> None:
    """An apply that fails half-way rolls back, and the remembered vectors with it:
    a file's batch (strict) whose second record does not parse, after a first that
    was applied in the same transaction."""
    a = new_ledger(tmp_path, "SH01")
    b = new_ledger(tmp_path, "SH02")
    a.add_member(a.owner, name="李雷", phone="13800000002")
    (first,) = a.lacking({})
    assert first.seq == 1
    bad = Record("SH01", 2, "rules", b"\xff\xff\xff")
    hash_ = record_hash(a.storage.log.hash_at("SH01", 1) or b"", "SH01", 2, "rules",
                        bad.data)
    head = Head(2, hash_, a.trust.sign(head_message(a.chain, "SH01", 2, hash_)))
    batch = Batch(recs=[first, bad], heads={"SH01": head}, certs={"SH01": a.trust.cert_der})
    before = b.state_vectors()
    with pytest.raises(RemoteProtocolError):
        b.apply_batch(batch, strict=True)
    assert b.state_vectors() == before == raw_state_vectors(b)
    assert b.positions() == {}
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


def test_a_records_header_says_what_applying_it_does(tmp_path: Path) -> None:
    """The write rules judge a record from its update's header (writers), before it is
    applied: for every record three writers commit, the header names one client, the
    writer's own, continuing at the clock a replica that took the writer's earlier
    records holds for it; applied, the record moves that clock and no other."""
    clock = FakeClock()
    ws = [new_ledger(tmp_path, f"SH0{i}", now_ms=clock) for i in range(1, 4)]
    target = new_ledger(tmp_path, "SH09", now_ms=clock)
    logs = [recorder(w) for w in ws]
    members = [(w, w.add_member(w.owner, name=f"m{i}", phone=f"1390000000{i}"))
               for i, w in enumerate(ws)]
    for k in range(40):
        clock.ms += 1000
        w, m = members[k % 3]
        w.topup(w.owner, m, 100 + k)
    rng = random.Random(7)
    pending = [list(log) for log in logs]
    checked = 0
    while any(pending):  # the writers' logs interleaved at random, each in its order
        i = rng.choice([i for i, p in enumerate(pending) if p])
        rec = pending[i].pop(0)
        w = ws[i]
        have = decode_state_vector(target.state_vectors().get(rec.doc, b"\x00"))
        header = writers(rec.data)
        assert header is not None
        count, client, start = header
        assert (count, client) == (1, w.storage.client_id), rec
        assert start == have.get(client, 0), rec
        assert target.apply_batch(batch_of(w, [rec])) == [rec]
        after = decode_state_vector(target.state_vectors()[rec.doc])
        assert after.get(client, 0) > start
        assert {c: k for c, k in after.items() if c != client} == {
            c: k for c, k in have.items() if c != client}
        checked += 1
    assert checked == sum(len(log) for log in logs) and not target.refusals
    assert writers(b"") is None
    assert writers(b"\x00\x00") == (0, 0, 0)
    for x in (*ws, target):
        x.close()


def fixed_ledger(root: Path, node: str, clock: FakeClock) -> Ledger:
    """A ledger on a fake clock. Its pycrdt client id is derived from its node id
    (writerules.client_id_for), so two runs write equal updates."""
    path = root / node.lower()
    Ledger.create(path, node)
    return Ledger.open(path, synchronous="NORMAL", now_ms=clock)


def _stream(tmp_path: Path) -> tuple[Ledger, Ledger, list[bytes]]:
    """Frames SH01's session sends to a fresh SH02 over one connection: its hello,
    then a burst of record batches (one per commit), a rights request, more."""
    clock = FakeClock()
    a = fixed_ledger(tmp_path, "SH01", clock)
    b = fixed_ledger(tmp_path, "SH02", clock)
    sa = SyncSession(a, expect_node="SH02")
    sa.start()
    frames = sa.data_to_send()
    members = []
    for i in range(3):
        members.append(a.add_member(a.owner, name=f"m{i}", phone=f"1380000010{i}"))
        frames += sa.data_to_send()
    for i, m in enumerate(members):
        a.topup(a.owner, m, 5000 + i)
        frames += sa.data_to_send()
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
    return {"sv": ledger.state_vectors(), "logs": ledger.positions(),
            "entries": conn.execute("SELECT id, body FROM entries ORDER BY id").fetchall(),
            "rights": conn.execute("SELECT * FROM rights ORDER BY 1, 2, 3").fetchall(),
            "members": conn.execute("SELECT id, body FROM members ORDER BY id").fetchall()}


def test_receive_frames_equals_receiving_one_by_one(tmp_path: Path) -> None:
    a1, b1, frames = _stream(tmp_path / "one")
    assert sum(unpack(f)["t"] == "recs" for f in frames) >= 6
    s1 = SyncSession(b1, expect_node="SH01")
    s1.start()
    for f in frames:
        s1.receive(f)
    a2, b2, frames2 = _stream(tmp_path / "batch")
    s2 = SyncSession(b2, expect_node="SH01")
    s2.start()
    s2.receive_frames(frames2)
    assert _replica(b1) == _replica(b2)
    assert _replica(b1)["entries"], "the records were applied"
    # (Not bytes_in: every run signs with a fresh key, and ECDSA signatures vary.)
    assert len(frames) == len(frames2)
    e1, e2 = events(s1), events(s2)
    assert [e for e in e1 if not isinstance(e, UpdatesApplied)] == \
        [e for e in e2 if not isinstance(e, UpdatesApplied)]
    # One event per document and frame, or per document and run of frames.
    sizes1: dict[str, int] = {}
    sizes2: dict[str, int] = {}
    for evs, sizes in ((e1, sizes1), (e2, sizes2)):
        for e in evs:
            if isinstance(e, UpdatesApplied):
                sizes[e.doc] = sizes.get(e.doc, 0) + e.size
    assert sizes1 == sizes2
    # What each sends back (state, rights reply with its transfer) is the same too.
    assert [len(f) for f in s1.data_to_send()] == [len(f) for f in s2.data_to_send()]
    for x in (a1, b1, a2, b2):
        x.close()


def test_receive_frames_handles_what_precedes_a_bad_frame(tmp_path: Path) -> None:
    a, b, frames = _stream(tmp_path)
    recs = [f for f in frames[1:] if unpack(f)["t"] == "recs"]
    s = SyncSession(b, expect_node="SH01")
    s.start()
    bad = pack({"t": "recs", "recs": [["SH01", 99, "nonsense", b"\x00"]], "heads": {}})
    with pytest.raises(RemoteProtocolError):
        s.receive_frames([frames[0], *recs[:4], b"not msgpack at all \xc1"])
    applied = b.state_vectors()
    assert applied and b.positions() == {"SH01": 4}, "the records before the bad frame"
    with pytest.raises(LocalProtocolError, match="failed earlier"):
        s.receive_frames(recs[4:])  # the session failed with the bad frame
    s = SyncSession(b, expect_node="SH01")
    s.start()
    s.receive(frames[0])
    with pytest.raises(RemoteProtocolError, match="malformed"):
        s.receive_frames([*recs[4:], bad])
    # What came before the malformed frame is handled, in one transaction.
    assert b.positions() == a.positions()
    assert b.state_vectors() == a.state_vectors()
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
    member = a.add_member(a.owner, name="张伟", phone="13800000009")
    for i in range(ledger_mod.SKEW_EVENTS_KEPT + 30):
        a.topup(a.owner, member, 100 + i)
    b.pull(a)
    assert b.balance(member) == a.balance(member)
    assert len(b.skew_events) == ledger_mod.SKEW_EVENTS_KEPT
    assert all(e.__traceback__ is None for e in b.skew_events)
    assert b.skew_events[-1].skew_ms > 5 * 60 * 1000
    a.close()
    b.close()


def test_a_remote_update_costs_its_own_size(tmp_path: Path) -> None:
    """sim/README.md, finding 1: apply_remote logged and relayed the diff against the
    state before the update, whose delete set Yrs builds from every block of the
    document (560 µs at 50,000 entries). A record's update is logged and relayed as
    received: no whole-document diff is taken."""
    clock = FakeClock()
    a = new_ledger(tmp_path, "SH01", now_ms=clock)
    b = new_ledger(tmp_path, "SH02", now_ms=clock)
    member = a.add_member(a.owner, name="王芳", phone="13800000001", tags=["vip"])
    for i in range(300):
        clock.ms += 1000
        a.topup(a.owner, member, 100 + i)
    b.pull(a)
    recs = recorder(a)
    # One entry, then a member edit (replacing a field deletes its old value).
    a.debit(a.owner, member, amount=50)
    a.edit_member(a.owner, member, fields={"name": "王芳芳"}, tags_remove=["vip"])
    assert len(recs) >= 2
    diffs: list[object] = []
    for rec in recs:
        doc = b.storage.doc(rec.doc).doc

        def spy(*args: Any, doc: Any = doc) -> Any:
            diffs.append(args)
            return type(doc).get_update(doc, *args)

        setattr(doc, "get_update", spy)  # noqa: B010 (an instance's method, replaced)
    for rec in recs:
        assert b.apply_batch(batch_of(a, [rec])) == [rec]
        (logged,) = b.storage.conn.execute(
            "SELECT data FROM log WHERE doc = ? ORDER BY seq DESC LIMIT 1", (rec.doc,)
        ).fetchone()
        assert logged == rec.data
    assert diffs == []
    assert b.member(member)["name"] == "王芳芳" and b.member(member)["tags"] == []
    assert b.balance(member) == a.balance(member)
    a.close()
    b.close()


def test_relays_carry_what_was_taken(tmp_path: Path) -> None:
    """What apply_batch returns (what a session relays) brings a downstream replica
    exactly where the replica is, also when a writer's records arrive out of order:
    three branches edit the same members and merge now and then; a replica takes
    their records one by one, shuffled (those past a gap in their writer's log wait
    and are taken again later), relaying what it took to a mirror.
    Records that build on another writer's not yet here wait, and are taken as
    soon as those come; no honest writer is blocked."""
    rng = random.Random(5)
    clock = FakeClock()
    ws = [fixed_ledger(tmp_path, n, clock)
          for n in ("SH01", "SH02", "SH03")]
    replica, mirror = (fixed_ledger(tmp_path, n, clock)
                       for n in ("SH07", "SH08"))
    members = [ws[0].add_member(ws[0].owner, name=f"m{i}", phone=f"1380000020{i}")
               for i in range(3)]
    for w in ws[1:]:
        w.pull(ws[0])
    for _ in range(120):
        clock.ms += 1000
        w = rng.choice(ws)
        w.edit_member(w.owner, rng.choice(members), fields={"notes": rng.choice("abcdef")},
                      tags_add=rng.sample("xyz", 1), tags_remove=rng.sample("uvw", 1))
        if rng.random() < 0.3:
            x, y = rng.sample(ws, 2)
            x.pull(y)
    own = [(w, r) for w in ws for r in w.lacking({}) if r.node == w.node]
    order = list(range(len(own)))
    rng.shuffle(order)
    taken = waited = 0
    for i in order[: len(order) // 2] + list(range(len(own))):  # then in their order
        w, rec = own[i]
        new = replica.apply_batch(batch_of(w, [rec]))
        taken += len(new)
        waited += not new and replica.positions().get(w.node, 0) < rec.seq
        if new:
            mirror.apply_batch(replica.batch(new))
        assert mirror.state_vectors() == replica.state_vectors()
        assert mirror.log_view() == replica.log_view()
    assert waited > 0 and taken == len(own)
    assert not replica.faults() and not mirror.faults()
    rows = [x.storage.conn.execute("SELECT * FROM members ORDER BY 1").fetchall()
            for x in (replica, mirror)]
    assert rows[0] == rows[1]
    for x in (*ws, replica, mirror):
        x.close()


def test_a_batch_with_a_writers_records_out_of_order_blocks_no_one(tmp_path: Path) -> None:
    """A batch holding one writer's records out of the order of its log (frames
    merged after a reordering, or a relay that shuffles them) is applied in the order
    of that log: the honest writer is not blocked, and the log's tip is its last
    record (found by the simulator, when its driver let a chained operation's frames
    overtake the frames before them)."""
    a = new_ledger(tmp_path, "SH01")
    b = new_ledger(tmp_path, "SH02")
    member = a.add_member(a.owner, name="韩梅梅", phone="13800000041")
    a.issue_card(a.owner, member, "8800000041")
    a.topup(a.owner, member, 1000)
    recs = a.lacking({})
    assert len(recs) >= 3 and recs[0].doc == recs[1].doc
    shuffled = [*recs[1:], recs[0]]
    b.apply_batch(Batch(recs=shuffled, heads={"SH01": a.own_head()},
                        certs={"SH01": a.trust.cert_der}))
    assert b.faults() == [], "an honest writer is blocked"
    assert b.storage.log.tip("SH01")[0] == recs[-1].seq
    a.topup(a.owner, member, 500)
    b.pull(a)
    assert b.balance(member) == a.balance(member)
    a.close()
    b.close()


def test_a_certificate_sent_with_records_not_taken_is_sent_again(tmp_path: Path) -> None:
    """A session sends a node's certificate once with its live records; a peer that
    lacks the writer's earlier records cannot take that first batch (its records lie
    past a gap), yet keeps the certificate it checked, and a round's answer carries
    every certificate anyway: the link converges (found by the state machine and the
    simulator). Here SH01 wrote before the link came up, and writes again before the
    first round's state arrives."""
    a = new_ledger(tmp_path, "SH01")
    b = new_ledger(tmp_path, "SH02")
    member = a.add_member(a.owner, name="李雷", phone="13800000051")
    net = Net()
    sa, sb = net.connect(a, b, pump=False)
    a.topup(a.owner, member, 1000)  # queued on the session at once, before the round
    net.pump()
    for s in (sa, sb):
        s.anti_entropy()
    net.pump()
    assert not b.refusals, list(b.refusals)
    assert b.log_view() == a.log_view()
    assert b.balance(member) == a.balance(member)
    net.close()
    a.close()
    b.close()


def test_entries_projected_in_bulk_as_one_by_one(tmp_path: Path) -> None:
    """project_entries (a remote update's new entries in a few statements) leaves the
    tables exactly as entry_change does entry by entry, whatever order the entries
    come in (each writer's in its log's order, as records are applied: the position of
    each entry's record given), rights rows that net to zero included, bad entries
    quarantined alike."""
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
            change = c if isinstance(c, int) else 0
            held[(member, str(n_))] = held.get((member, str(n_)), 0) + change
        entries.append({"id": eid, "kind": kind, "member": member, "node": node,
                        "op": "owner", "at": id_time_ms(eid), "amount": amount,
                        "paid": amount if kind == "topup" else 0, "deltas": deltas})
    entries.append({"id": "037573YWGZZZZ.SH01", "kind": "nonsense"})  # quarantined
    tables = ("entries", "rights", "totals", "quarantine", "deferred")
    seq = {e["id"]: n for n, e in enumerate(entries)}  # one record per entry
    for round_ in range(3):
        rng.shuffle(entries)
        # Writers interleave as shuffled; each writer's entries keep its log's order.
        slots: dict[str, list[int]] = {}
        for i, e in enumerate(entries):
            slots.setdefault(e["id"][14:], []).append(i)
        for i_s in slots.values():
            mine = sorted((entries[i] for i in i_s), key=lambda e: seq[e["id"]])
            for i, e in zip(i_s, mine, strict=True):
                entries[i] = e
        cut = rng.randrange(len(entries))
        got = []
        for bulk in (False, True):
            ledger = new_ledger(tmp_path / f"{round_}{bulk}", "SH05")
            st = ledger.storage
            with st.transaction():
                for part in (entries[:cut], entries[cut:]):
                    if bulk:
                        project_entries(st.conn, "ledger/2026-01",
                                        [(e["id"], e) for e in part], st.day_of,
                                        {e["id"]: (seq[e["id"]], False) for e in part})
                    else:
                        for e in part:
                            entry_change(st.conn, "ledger/2026-01", e["id"], None, e,
                                         st.day_of, seq=seq[e["id"]])
                    project_deferred(st.conn, st.day_of)
            got.append({t: st.conn.execute(f"SELECT * FROM {t} ORDER BY 1, 2, 3").fetchall()
                        for t in tables})
            ledger.close()
        assert got[0] == got[1]
        assert not got[1]["deferred"] and len(got[1]["entries"]) == 200
        assert any(amount == 0 for *_, amount in got[1]["rights"])


def test_a_remembered_signature_is_still_refused_once_its_certificate_is_revoked(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`Trust.verify` remembers the signatures it verified (process-wide, by their exact
    bytes); whether the certificate is trusted (its CA, its node, its revocation) is
    still judged on every call, and a signature that failed is never remembered."""
    monkeypatch.setattr(trust_mod, "_verified", type(trust_mod._verified)())
    init_chain(tmp_path / "simchain")
    init_chain(tmp_path / "otherchain")
    for node in ("SH01", "SH02"):
        enrol(tmp_path / "simchain", tmp_path / node, node)
    enrol(tmp_path / "otherchain", tmp_path / "X", "SH02")
    writer = load_trust(tmp_path / "SH01", "simchain", "SH01")
    reader = load_trust(tmp_path / "SH02", "simchain", "SH02")
    foreign = load_trust(tmp_path / "X", "otherchain", "SH02")
    message = head_message("simchain", "SH01", 7, b"\x01" * 32)
    sig = writer.sign(message)
    der = writer.cert_der

    reader.verify("SH01", der, message, sig)
    assert (der, message, sig) in trust_mod._verified
    reader.verify("SH01", der, message, sig)  # remembered: the same answer
    with pytest.raises(UntrustedSigner, match="SH01 was given for SH02"):
        reader.verify("SH02", der, message, sig)  # not the node the certificate names
    with pytest.raises(UntrustedSigner, match="not certified"):
        foreign.verify("SH01", der, message, sig)  # another chain's store: its own CA

    bad = sig[:-1] + bytes([sig[-1] ^ 1])
    for _ in range(2):
        with pytest.raises(UntrustedSigner, match="does not match"):
            reader.verify("SH01", der, message, bad)
    assert (der, message, bad) not in trust_mod._verified
    with pytest.raises(UntrustedSigner, match="does not match"):
        reader.verify("SH01", der, message + b"x", sig)

    crl = revoke(tmp_path / "simchain", "SH01")
    assert reader.set_revocations(base64.b64encode(crl).decode())
    with pytest.raises(UntrustedSigner, match="revoked"):
        reader.verify("SH01", der, message, sig)

    monkeypatch.setattr(trust_mod, "VERIFIED_MAX", 3)
    other = load_trust(tmp_path / "SH02", "simchain", "SH02")
    for seq in range(6):
        m = head_message("simchain", "SH01", seq, b"\x02" * 32)
        other.verify("SH01", der, m, writer.sign(m))
        assert len(trust_mod._verified) <= 3
