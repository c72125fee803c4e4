"""The sans-I/O sync session (crdtledger.sync.SyncSession) between real ledgers.

Frames are moved by hand (tests/helpers.Net), so every test controls order,
duplication and loss exactly. A malformed frame must raise RemoteProtocolError
(or ForeignChain) and leave the node exactly as it was. Well-formed records that
cannot be verified are dropped and reported, the session going on; a verified
record that breaks a write rule is refused, kept as evidence, and its writer
blocked. Such records are forged as a dishonest branch would (tests/helpers.Forger).
"""

from __future__ import annotations

import json
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
import pytest
from helpers import (
    FakeClock,
    Forger,
    Net,
    data_snapshot,
    doc_content,
    events,
    log_rows,
    new_ledger,
    projections,
    snapshot,
    sync,
)
from pycrdt import Doc, Map, merge_updates

from crdtledger import escrow, views
from crdtledger import log as log_mod
from crdtledger import sync as sync_mod
from crdtledger.errors import (
    ForeignChain,
    LocalProtocolError,
    RemoteProtocolError,
    RightsElsewhere,
)
from crdtledger.hlc import MAX_CLOCK_SKEW_MS, HybridClock, decode
from crdtledger.ledger import Ledger
from crdtledger.log import HELD, REFUSED, Head, Record
from crdtledger.model import entry_doc, member_doc
from crdtledger.sync import (
    PROTOCOL_VERSION,
    ClockSkewSeen,
    PeerHello,
    RightsAnswered,
    RightsGranted,
    RightsRequested,
    SyncSession,
    UpdatesApplied,
    decode_state_vector,
    pack,
)


def populate(ledger: Ledger, phone: str = "13800000000", name: str = "张三") -> str:
    o = ledger.owner
    m = ledger.add_member(o, name=name, phone=phone)
    ledger.issue_card(o, m, f"C{phone[-4:]}")
    ledger.topup(o, m, 10000)
    ledger.debit(o, m, amount=1234)
    return m


def state_vectors(ledger: Ledger) -> dict[str, dict[int, int]]:
    """Decoded: Yrs orders a state vector's clients by the document's history."""
    return {n: decode_state_vector(sv) for n, sv in ledger.state_vectors().items()}


def assert_converged(*ledgers: Ledger) -> None:
    first = ledgers[0]
    for other in ledgers[1:]:
        assert state_vectors(other) == state_vectors(first)
        assert projections(other) == projections(first)
        assert doc_content(other) == doc_content(first)


# --- convergence ------------------------------------------------------------------


def test_two_ledgers_converge_both_ways(a: Ledger, b: Ledger) -> None:
    ma = populate(a, "13800000001", "甲")
    a.set_rule(a.owner, "promotions", [{"min": 100, "bonus": 1}])
    a.add_operator(a.owner, "alice", "secret1")
    mb = populate(b, "13800000002", "乙")
    net = Net()
    sa, sb = net.connect(a, b)
    assert_converged(a, b)
    assert b.balance(ma) == a.balance(ma) == {"cash": 8766, "bonus": 0, "points": 12,
                                              "packages": {}}
    assert a.member(mb)["name"] == "乙"
    assert b.rule("promotions") == [{"min": 100, "bonus": 1}]
    assert b.authenticate("alice", "secret1")
    ev_a, ev_b = events(sa), events(sb)
    assert isinstance(ev_a[0], PeerHello) and ev_a[0].node == "SH02"
    assert isinstance(ev_b[0], PeerHello) and ev_b[0].node == "SH01"
    assert any(isinstance(e, UpdatesApplied) and e.new for e in ev_b)
    # Live: later operations flow without a new round.
    e = b.topup(b.owner, ma, 500)  # the promotion reached B: bonus 1
    assert e["bonus"] == 1
    assert net.pump() > 0
    assert a.balance(ma)["cash"] == 9266 and a.balance(ma)["bonus"] == 1
    assert_converged(a, b)
    net.close()


def test_anti_entropy_between_synced_nodes_is_small(a: Ledger, b: Ledger) -> None:
    populate(a)
    populate(b, "13800000009", "乙")
    net = Net()
    sa, sb = net.connect(a, b)
    out = sa.bytes_out + sb.bytes_out
    sa.anti_entropy()
    sb.anti_entropy()
    frames = net.pump()
    spent = sa.bytes_out + sb.bytes_out - out
    assert spent < 1024, spent
    assert frames <= 4
    logs = (log_rows(a), log_rows(b))
    assert (log_rows(a), log_rows(b)) == logs
    net.close()


def test_anti_entropy_heals_a_lost_update(a: Ledger, b: Ledger) -> None:
    m = populate(a)
    net = Net()
    sa, sb = net.connect(a, b)
    a.topup(a.owner, m, 77)
    lost = sa.data_to_send()  # dropped on the floor
    assert lost
    assert b.balance(m)["cash"] != a.balance(m)["cash"]
    sb.anti_entropy()  # B starts the round; it is B that lacks something
    net.pump()
    assert b.balance(m) == a.balance(m)
    assert_converged(a, b)
    net.close()


def test_multi_hop_relay_is_bounded(tmp_path: Path) -> None:
    a, b, c = (new_ledger(tmp_path, n) for n in ("SH01", "SH02", "SH03"))
    try:
        net = Net()
        net.connect(a, b)
        net.connect(b, c)  # A and C never talk
        m = a.add_member(a.owner, name="张三", phone="13800000000")
        frames = net.pump()
        assert c.member(m)["name"] == "张三"
        assert frames <= 4  # A->B, B->C; nothing comes back
        a.topup(a.owner, m, 1000)
        assert net.pump() <= 4
        assert c.balance(m)["cash"] == 1000
        c.edit_member(c.owner, m, fields={"notes": "from C"})
        assert net.pump() <= 4
        assert a.member(m)["notes"] == "from C"
        assert net.pump() == 0  # quiet once settled
        assert_converged(a, b, c)
        # A triangle: each update arrives twice at some node, duplicates die out.
        net.connect(a, c)
        for i in range(5):
            a.topup(a.owner, m, 1 + i)
            c.debit(c.owner, m, amount=1, pay="cash")
        assert net.pump() < 100
        assert net.pump() == 0
        assert_converged(a, b, c)
        net.close()
    finally:
        for ledger in (a, b, c):
            ledger.close()


def _projection_matches_documents(ledger: Ledger) -> None:
    """Every entry and member in the documents is in the projection, as it is there."""
    conn = ledger.storage.conn
    for name, content in doc_content(ledger).items():
        if name.startswith("ledger/"):
            ids = {r[0] for r in conn.execute("SELECT id FROM entries")}
            assert set(content["entries"]) <= ids, name
        elif name.startswith("members/"):
            for mid, body in content["members"].items():
                assert ledger.member(mid)["name"] == body["name"], mid
                assert ledger.member(mid)["prefs"] == body["prefs"], mid


def _one_frame_each(session: SyncSession, *operations: Callable[[], Any]) -> list[bytes]:
    """Run each operation and take what the session queued for it: one `recs` frame
    per operation, as a live session sends them when frames are shipped in between."""
    frames = []
    for op in operations:
        op()
        (frame,) = session.data_to_send()
        frames.append(frame)
    return frames


def _held(ledger: Ledger, node: str) -> int:
    return ledger.positions().get(node, 0)


def test_out_of_order_updates_converge(a: Ledger, b: Ledger) -> None:
    """Records that arrive after a gap in their writer's log wait (are not applied nor
    kept) until what precedes them comes; anti-entropy fills the gap."""
    m = populate(a)
    net = Net()
    sa, sb = net.connect(a, b)
    ops = [lambda i=i: a.topup(a.owner, m, 100 + i) for i in range(4)]
    ops.append(lambda: a.edit_member(a.owner, m, fields={"notes": "late"}))
    frames = _one_frame_each(sa, *ops)  # dependent records of one writer
    synced = _held(b, "SH01")
    for frame in reversed(frames):
        sb.receive(frame)
        _projection_matches_documents(b)  # never a document ahead of its projection
        if frame is not frames[0]:  # beyond the gap: nothing of it taken yet
            assert _held(b, "SH01") == synced
    assert _held(b, "SH01") == synced + 1  # the first came last: only it is taken
    assert not sb.failed
    sa.anti_entropy()
    sb.anti_entropy()
    net.pump()
    assert b.balance(m) == a.balance(m)
    assert b.member(m)["notes"] == "late"
    assert _held(b, "SH01") == _held(a, "SH01")
    assert_converged(a, b)
    _projection_matches_documents(b)
    net.close()


def test_member_edit_ahead_of_a_gap(a: Ledger, b: Ledger) -> None:
    """Regression (found by tests/test_machine.py): a member created and edited ahead
    of a gap in its writer's updates to that shard. Yrs integrated the edit without an
    event and without moving the state vector, so the projection kept the old name
    for good although the documents converged. Now what comes after a gap in its
    writer's log waits for the gap, and the edit is projected when it is applied."""
    net = Net()
    sa, sb = net.connect(a, b)
    created: list[str] = []
    shard: dict[str, str] = {}
    first = second = ""
    frames: list[bytes] = []
    for i in range(64):  # two members of B's in one shard (one document)
        mid = b.add_member(b.owner, name=f"M{i}", phone=f"1390000{i:04d}")
        (frame,) = sb.data_to_send()  # one frame per operation, in order
        frames.append(frame)
        created.append(mid)
        if member_doc(mid) in shard:
            first, second = shard[member_doc(mid)], mid
            break
        shard[member_doc(mid)] = mid
    assert first and second
    frames += _one_frame_each(sb, lambda: b.edit_member(
        b.owner, second, fields={"name": "Wang"}, prefs={"service": "s0"}))
    gap = created.index(first)
    # Everything except the first member's creation, then that creation last.
    for i, frame in enumerate(frames):
        if i != gap:
            sa.receive(frame)
            _projection_matches_documents(a)
    assert _held(a, "SH02") == gap  # what came after the gap waits
    sa.receive(frames[gap])
    _projection_matches_documents(a)
    sa.anti_entropy()
    sb.anti_entropy()
    net.pump()
    assert a.member(second)["name"] == "Wang"
    assert a.member(second)["prefs"] == {"service": "s0"}
    assert_converged(a, b)
    net.close()


def test_out_of_order_then_restart_before_the_gap_fills(tmp_path: Path) -> None:
    """A record that arrives ahead of its writer's earlier ones, then a restart, then
    anti-entropy: every entry counted exactly once, before and after reopening."""
    a, b = new_ledger(tmp_path, "SH01"), new_ledger(tmp_path, "SH02")
    try:
        m = populate(a)
        net = Net()
        sa, sb = net.connect(a, b)
        _first, _second, third = _one_frame_each(
            sa, *(lambda x=x: a.topup(a.owner, m, x) for x in (100, 200, 400)))
        sb.receive(third)  # arrives ahead of its writer's two earlier records
        sb.receive(third)  # and again
        _projection_matches_documents(b)
        early = b.balance(m)
        assert early["cash"] == 8766  # it waits for the gap: not counted yet
        net.close()
        b.close()
        b = Ledger.open(tmp_path / "sh02")
        assert b.balance(m) == early
        _projection_matches_documents(b)
        sync(a, b)  # anti-entropy fills the gap; nothing is counted twice
        assert b.balance(m) == a.balance(m)
        assert_converged(a, b)
        b.close()
        b = Ledger.open(tmp_path / "sh02")
        assert b.balance(m) == a.balance(m)
        _projection_matches_documents(b)
    finally:
        a.close()
        b.close()


def test_duplicated_frames_are_harmless(a: Ledger, b: Ledger) -> None:
    m = populate(a)
    net = Net()
    sa, sb = net.connect(a, b)
    a.topup(a.owner, m, 5)
    a.debit(a.owner, m, amount=3)
    frames = sa.data_to_send()
    for frame in frames:
        sb.receive(frame)
    after_once = snapshot(b, [m])
    # Every record reaches a shop twice (both hubs relay it): the second copy is
    # checked against the head held, and opens no write transaction.
    statements: list[str] = []
    b.storage.conn.set_trace_callback(statements.append)
    for frame in frames + frames:
        sb.receive(frame)
    b.storage.conn.set_trace_callback(None)
    assert not [s for s in statements if not s.lstrip().upper().startswith("SELECT")]
    assert snapshot(b, [m]) == after_once
    assert sb.data_to_send() == []  # nothing new, nothing relayed
    assert_converged(a, b)
    net.close()


def test_a_round_answer_overlapping_live_records_in_one_burst(a: Ledger, b: Ledger) -> None:
    """Frames that arrive together are applied as one batch (receive_frames). A round
    answers with every record the peer lacked when it sent its state, so records
    committed meanwhile go out twice: live, then in the answer. Both frames in one
    burst must bring the records, as they do one by one, and must not be reported as
    a log that does not continue ours."""
    m = populate(a)
    net = Net()
    sa, sb = net.connect(a, b)
    a.topup(a.owner, m, 7)
    assert sa.data_to_send()  # lost on the way: B lacks it
    sb.anti_entropy()
    for frame in sb.data_to_send():
        sa.receive(frame)  # B's hello: the digests differ, A sends its state ...
    for frame in sa.data_to_send():
        sb.receive(frame)  # ... and B replies with its own, which lacks the top-up
    *shown, reply = sb.data_to_send()  # (B's heads of the logs A holds further)
    assert msgpack.unpackb(reply)["t"] == "state"
    for frame in shown:
        sa.receive(frame)
    a.topup(a.owner, m, 5)  # two sales at A before B's reply is read: sent live
    a.debit(a.owner, m, amount=3)
    sa.receive(reply)  # the answer: the lost top-up and the two sales again
    frames = sa.data_to_send()
    assert len(frames) == 2
    sb.receive_frames(frames)
    assert b.positions() == a.positions()
    assert b.balance(m) == a.balance(m)
    assert list(b.refusals) == []
    assert_converged(a, b)
    net.close()


def test_records_that_cannot_be_verified_are_dropped_and_reported(
        a: Ledger, b: Ledger, tmp_path: Path) -> None:
    """Records are taken only when their chain reaches a head their writer signed with
    the key this store knows for it: a stranger writing in B's name, a record altered
    on the way, records without a head, a head signed for another chain or by no
    known key are each dropped whole and reported, and the session goes on (a relay
    may pass on what it cannot check)."""
    m = populate(b, "13800000002", "乙")
    sync(a, b)  # A now knows B's key (a store without a chain CA trusts the first)
    impostor = Forger(new_ledger(tmp_path / "elsewhere", "SH02"))
    impostor.write(member_doc(m), lambda doc: doc.get("members", type=Map).__setitem__(
        m, {"name": "stolen"}))
    forger = Forger(b)
    # B's own edit of its member's name (a Map set whole is a creation or an erasure
    # only: write rule record-writer)
    rec = forger.write(member_doc(m), lambda doc: doc.get("members", type=Map)[m].__setitem__(
        "name", "changed"))
    altered = forger.batch()
    altered.recs = [Record(rec.node, rec.seq, rec.doc, rec.data.replace(b"changed", b"chanGed"))]
    headless = forger.batch()
    headless.heads = {}
    other_chain = forger.batch()
    other_chain.heads["SH02"] = Head(forger.seq, forger.tip, b.trust.sign(
        log_mod.head_message("other-chain", "SH02", forger.seq, forger.tip)))
    stranger = Forger(new_ledger(tmp_path, "SH03"))
    stranger.write("members/00", lambda doc: doc.get("members", type=Map).__setitem__(
        "0000000000001.SH03", {"name": "x"}))
    uncertified = stranger.batch()
    uncertified.certs = {}
    cases = [(impostor.batch(), "a key other than the one this store first saw"),
             (altered, "altered on the way"), (headless, "without a signed head"),
             (other_chain, "does not match what it signs"),
             (uncertified, "no certificate of node SH03")]
    s = _greet(a, "SH02")
    for batch, reason in cases:
        before = snapshot(a, [m])
        a.refusals.clear()
        s.receive(pack({"t": "recs", **batch.to_wire()}))
        assert not s.failed
        assert snapshot(a, [m]) == before
        assert [r for r in a.refusals if reason in r], (reason, list(a.refusals))
        assert a.faults() == []  # nothing proven against B: anyone could send these
    s.receive(forger.frame())  # the genuine record still comes through
    assert a.member(m)["name"] == "changed"
    for lg in (impostor.ledger, stranger.ledger):
        lg.close()


def test_session_resumed_after_restart(tmp_path: Path) -> None:
    a, b = new_ledger(tmp_path, "SH01"), new_ledger(tmp_path, "SH02")
    m = populate(a)
    sync(a, b)
    a.topup(a.owner, m, 1)
    b.close()
    b = Ledger.open(tmp_path / "sh02")
    try:
        sync(a, b)
        assert b.balance(m) == a.balance(m)
        assert_converged(a, b)
    finally:
        a.close()
        b.close()


# --- rights requests ---------------------------------------------------------------


def test_rights_request_and_grant(a: Ledger, b: Ledger) -> None:
    m = a.add_member(a.owner, name="张三", phone="13800000000")
    a.topup(a.owner, m, 10000)
    net = Net()
    sa, sb = net.connect(a, b)
    events(sa), events(sb)
    with pytest.raises(RightsElsewhere) as err:
        b.debit(b.owner, m, amount=3000)
    shortfall = err.value.shortfall
    rid = sb.request_rights(m, "cash", shortfall)
    want = escrow.grant_amount(10000, shortfall)
    assert want == 3000 + 3500  # the shortfall plus half of what the giver keeps
    # Deliver frame by frame: when B sees RightsGranted, it already holds the rights.
    seen: list[Any] = []
    while True:
        out_a, out_b = sa.data_to_send(), sb.data_to_send()
        if not out_a and not out_b:
            break
        for f in out_b:
            sa.receive(f)
        for f in out_a:
            sb.receive(f)
            for ev in events(sb):
                if isinstance(ev, RightsGranted):
                    assert b.rights(m).get("SH02") == ev.amount
                    seen.append(ev)
    assert seen == [RightsGranted(rid, "SH01", want)]
    answered = [e for e in events(sa) if isinstance(e, RightsAnswered)]
    assert answered == [RightsAnswered(rid, "SH02", m, "cash", want)]
    assert a.rights(m) == b.rights(m) == {"SH01": 10000 - want, "SH02": want}
    b.debit(b.owner, m, amount=3000)
    net.pump()
    assert a.balance(m)["cash"] == 7000
    # Nothing to spare, or an unknown member: the answer is 0, no error.
    rid2 = sb.request_rights("0000000000000.SH01", "cash", 5)
    rid3 = sb.request_rights(m, "points", 5)
    net.pump()
    got = [e for e in events(sb) if isinstance(e, RightsGranted)]
    assert got == [RightsGranted(rid2, "SH01", 0), RightsGranted(rid3, "SH01", 0)]
    net.close()


def test_a_branch_asking_for_rights_faster_than_it_sells_is_answered_none(
        tmp_path: Path) -> None:
    """A certified liar asked for every member's rights, the whole of each: 1,500
    members' 750,000.00 went in 2.5 s, to sit where only it may spend them. A giver
    answers GRANT_BURST requests of a branch at once, then GRANTS_PER_MINUTE; the
    rest are answered none, counted for the owner (status, sync page)."""
    clock = FakeClock()
    a = new_ledger(tmp_path, "SH01", now_ms=clock)
    b = new_ledger(tmp_path, "SH02", now_ms=clock)
    try:
        members = [a.add_member(a.owner, name=f"会员{i}", phone=f"1380000{i:04d}")
                   for i in range(escrow.GRANT_BURST + 10)]
        for m in members:
            a.topup(a.owner, m, 500)
        net = Net()
        _sa, sb = net.connect(a, b)
        for m in members:
            sb.request_rights(m, "cash", 2**52)
        net.pump()
        granted = [e.amount for e in events(sb) if isinstance(e, RightsGranted)]
        assert granted == [500] * escrow.GRANT_BURST + [0] * 10
        assert views.trust_status(a)["rights_refused"] == {"SH02": 10}
        assert sum(a.rights(m).get("SH01", 0) for m in members[-10:]) == 5000
        clock.ms += 60_000  # a minute later, the next requests are answered again
        for m in members[-10:]:
            sb.request_rights(m, "cash", 100)
        net.pump()
        assert [e.amount for e in events(sb) if isinstance(e, RightsGranted)] == [
            100 + 200] * 10  # the shortfall plus half of what the giver keeps
        net.close()
    finally:
        a.close()
        b.close()


def test_local_misuse_is_a_local_error(a: Ledger, b: Ledger) -> None:
    s = SyncSession(a)
    with pytest.raises(LocalProtocolError):
        s.anti_entropy()  # before start
    with pytest.raises(LocalProtocolError):
        s.receive(b"")
    s.start()
    with pytest.raises(LocalProtocolError):
        s.start()
    with pytest.raises(LocalProtocolError):
        s.request_rights("0000000000000.SH01", "cash", 1)  # before the peer said hello
    s.close()
    s.close()  # idempotent
    with pytest.raises(LocalProtocolError):
        s.receive(b"")
    # A closed session no longer forwards the ledger's updates.
    assert s.data_to_send() == []
    a.add_member(a.owner, name="x", phone="13800000000")
    assert s.data_to_send() == []


def test_clock_skew_is_reported(a: Ledger, tmp_path: Path) -> None:
    ahead = MAX_CLOCK_SKEW_MS + 120_000
    c = new_ledger(tmp_path, "SH03", now_ms=lambda: a.clock.wall() + ahead)
    try:
        m = populate(c)
        net = Net()
        sa, _ = net.connect(a, c)
        skews = [e for e in events(sa) if isinstance(e, ClockSkewSeen)]
        assert skews and skews[0].node == "SH03" and skews[0].skew_ms >= ahead - 5_000
        assert a.balance(m) == c.balance(m)  # the data is still accepted
        assert a.skew_events and a.skew_events[0].skew_ms >= ahead - 5_000
        # ... but its clock is not adopted: A's ids stay near A's time.
        e = a.topup(a.owner, m, 1)
        assert e["at"] < a.clock.wall() + 5_000
        net.close()
    finally:
        c.close()


# --- malformed frames ----------------------------------------------------------------


def _hello(ledger: Ledger, **over: Any) -> dict[str, Any]:
    msg = {"t": "hello", "chain": ledger.chain, "node": "SH02", "now": ledger.clock.wall(),
           "digest": b"\x00" * 16}
    msg.update(over)
    return msg


@pytest.fixture
def greeted(a: Ledger) -> tuple[Ledger, SyncSession, str]:
    """A ledger with data and a session that has heard a valid hello from SH02."""
    m = populate(a)
    s = SyncSession(a, expect_node="SH02")
    s.start()
    s.receive(pack(_hello(a)))
    s.data_to_send()
    events(s)
    return a, s, m


def _refused(ledger: Ledger, s: SyncSession, frame: bytes, members: list[str],
             exc: type[Exception] = RemoteProtocolError) -> Exception:
    before = snapshot(ledger, members)
    peer = s.peer
    with pytest.raises(exc) as info:
        s.receive(frame)
    assert snapshot(ledger, members) == before
    assert s.data_to_send() == []
    assert events(s) == []
    assert s.peer == peer
    return info.value


def _raw(msg: Any) -> bytes:
    return msgpack.packb(msg, use_bin_type=True)


VALID = pack({"t": "recs", "recs": [], "heads": {}})
H32 = b"\x00" * 32


def _recs(recs: Any = (), heads: Any = None, **over: Any) -> bytes:
    msg = {"t": "recs", "recs": list(recs), "heads": {} if heads is None else heads}
    msg.update(over)
    return pack(msg)


def _state(logs: Any) -> bytes:
    return pack({"t": "state", "logs": logs})


@pytest.mark.parametrize("frame", [
    b"", b"\xc1", b"\x93\x01", VALID + b"x", "not bytes", None,
    _raw([1, 2, 3]), _raw("hello"), _raw(7), _raw(None),
    _raw({"t": "hello"}),
    _raw({"v": PROTOCOL_VERSION + 1, "t": "recs", "recs": [], "heads": {}}),
    _raw({"v": 1, "t": "recs", "recs": [], "heads": {}}),
    _raw({"v": "2", "t": "recs"}), _raw({"v": True, "t": "recs"}),
    pack({"t": "bye"}), pack({"t": None}), pack({}),
    pack({"t": []}), pack({"t": {"recs": 1}}),  # no name: raised TypeError, uncaught
    # Messages of protocol version 1, in a version-2 frame.
    pack({"t": "update", "doc": "rules", "data": b"\x00\x00"}),
    pack({"t": "state", "docs": {"rules": b"\x00"}}),
    # state: each node's log position and tip.
    pack({"t": "state"}), _state([]), _state({"nope": [1, b""]}), _state({"SH01\n": [1, b""]}),
    _state({"sh01": [1, b""]}), _state({"SH01": [1]}), _state({"SH01": [1, b"", 0]}),
    _state({"SH01": "1"}), _state({"SH01": [-1, b""]}), _state({"SH01": [True, b""]}),
    _state({"SH01": [1.0, b""]}), _state({"SH01": [2**62, b""]}), _state({"SH01": [1, "tip"]}),
    _state({"SH01": [1, b"x" * 33]}),
    # recs: records, heads and certificates.
    pack({"t": "recs"}), pack({"t": "recs", "heads": {}}), pack({"t": "recs", "recs": []}),
    pack({"t": "recs", "recs": {}, "heads": {}}), pack({"t": "recs", "recs": [], "heads": []}),
    _recs(certs=[]), pack({"t": "recs", "recs": "abc", "heads": {}}),
    _recs([["SH02"]]), _recs([["SH02", 1, "rules"]]), _recs([["SH02", 1, "rules", b"", 0]]),
    _recs([[b"SH02", 1, "rules", b""]]),
    _recs([["sh02", 1, "rules", b""]]), _recs([["SH02\n", 1, "rules", b""]]),
    _recs([["SH02", 0, "rules", b""]]), _recs([["SH02", -1, "rules", b""]]),
    _recs([["SH02", True, "rules", b""]]), _recs([["SH02", 2**62, "rules", b""]]),
    _recs([["SH02", "1", "rules", b""]]), _recs([["SH02", 1, "weather", b""]]),
    _recs([["SH02", 1, "rules\n", b""]]), _recs([["SH02", 1, "operators ", b""]]),
    _recs([["SH02", 1, "ledger/２０２６-01", b""]]), _recs([["SH02", 1, 5, b""]]),
    _recs([["SH02", 1, "rules", "text"]]),
    _recs(heads={"sh02": [1, H32, b"sig"]}), _recs(heads={"SH02": [1, H32]}),
    _recs(heads={"SH02": [0, H32, b"sig"]}), _recs(heads={"SH02": [True, H32, b"sig"]}),
    _recs(heads={"SH02": [1, H32[:31], b"sig"]}), _recs(heads={"SH02": [1, "h" * 32, b"sig"]}),
    _recs(heads={"SH02": [1, H32, b"s" * 257]}), _recs(heads={"SH02": [1, H32, "sig"]}),
    _recs(heads={"SH02": "head"}), _recs(certs={"sh02": b"der"}), _recs(certs={"SH02": "der"}),
    _recs(certs={"SH02": b"d" * 16385}),
    # More writers' heads than a chain has: each was looked up and refused alone.
    _recs(heads={f"N{i:07d}": [1, H32, b"s"] for i in range(log_mod.MAX_BATCH_WRITERS + 1)}),
    pack({"t": "rrep", "id": 99, "granted": 5}),
    pack({"t": "rrep", "id": "1", "granted": 5}),
    pack({"t": "rreq", "id": 1, "member": "nobody", "purse": "cash", "amount": 5}),
    pack({"t": "rreq", "id": 1, "member": "0000000000000.SH01", "purse": "gold", "amount": 5}),
    pack({"t": "rreq", "id": 1, "member": "0000000000000.SH01", "purse": "cash", "amount": 0}),
    pack({"t": "rreq", "id": 1, "member": "0000000000000.SH01", "purse": "cash",
          "amount": 2**53}),
    pack({"t": "rreq", "id": True, "member": "0000000000000.SH01", "purse": "cash",
          "amount": 1}),
    # Whom a relayed request is for: only on a relayed one, and a node id.
    pack({"t": "rreq", "id": 1, "member": "0000000000000.SH01", "purse": "cash",
          "amount": 1, "for": "SH09"}),
    pack({"t": "rreq", "id": 1, "member": "0000000000000.SH01", "purse": "cash",
          "amount": 1, "fwd": True, "for": ["SH09"]}),
])
def test_malformed_frames_change_nothing(greeted, frame: bytes) -> None:
    a, s, m = greeted
    _refused(a, s, frame, [m])


def _entry(member: str, node: str, eid: str, **fields: Any) -> dict[str, Any]:
    entry = {"id": eid, "kind": "topup", "member": member, "node": node, "op": "x",
             "at": 1_767_225_600_000, "amount": 5, "paid": 5, "deltas": [["cash", node, 5]]}
    entry.update(fields)
    return entry


def _put(key: str, value: Any) -> Callable[[Doc[Any]], None]:
    """A forger's write: `key` of the document's `entries` set to `value`."""
    return lambda doc: doc.get("entries", type=Map).__setitem__(key, value)


def test_a_record_with_entry_garbage_is_quarantined_alike(a: Ledger, b: Ledger,
                                                         tmp_path: Path) -> None:
    """Signed records of node X whose entry (keyed by X, naming X) breaks the schema
    are applied to the document and kept apart (quarantined), identically at every
    replica; an entry lowering another node's rights breaks a write rule and is
    refused. Balances and rights are untouched either way."""
    m = populate(a)
    sync(a, b)
    before = a.balance(m), a.rights(m)
    bad: list[Callable[[str], dict[str, Any]]] = [
        lambda node: {"amount": 1.5}, lambda node: {"amount": -5},
        lambda node: {"kind": "gift"}, lambda node: {"at": 2**60},
        lambda node: {"deltas": [["cash", node, 2**60]]},
        lambda node: {"deltas": [["cash", "SH01", -5]]}]  # breaks rule own-rights
    for i, fields in enumerate(bad):
        forger = Forger(new_ledger(tmp_path, f"SH1{i}"))  # each its own node and key
        node = forger.node
        eid = HybridClock(node).mint()
        entry = _entry(m, node, eid, **fields(node))
        forger.write(entry_doc(eid, a.storage.day_of), _put(eid, entry))
        frame = forger.frame()
        for replica in (a, b):
            s = SyncSession(replica)
            s.start()
            s.receive(pack(_hello(replica, node=node)))
            s.receive(frame)
            assert not s.failed
            s.close()
        forger.ledger.close()
    for replica in (a, b):
        assert (replica.balance(m), replica.rights(m)) == before
        (n,) = replica.storage.conn.execute("SELECT COUNT(*) FROM quarantine").fetchone()
        assert n == 5
        (fault,) = replica.faults()
        assert (fault["node"], fault["rule"]) == ("SH15", "own-rights")
    assert projections(a) == projections(b)


def test_an_entry_as_a_shared_map_then_edited_in_place_is_refused_alike(
        a: Ledger, b: Ledger, tmp_path: Path) -> None:
    """Regression: an entry written as a nested Map and edited in place later was
    projected with its first value at one replica and its last at another. Now the
    first record is refused (an entry is a plain value naming its writer) and what
    follows it in that log is held, whether the records come one by one or together."""
    m = populate(a)
    sync(a, b)
    forger = Forger(new_ledger(tmp_path, "SH09"))
    eid = HybridClock("SH09").mint()
    name = entry_doc(eid, a.storage.day_of)
    first = forger.write(name, _put(eid, Map(_entry(m, "SH09", eid))))
    forger.write(name, lambda doc: doc.get("entries", type=Map)[eid].__setitem__(
        "deltas", [["cash", "SH09", 500000]]))
    a.apply_batch(forger.batch([first]))
    a.apply_batch(forger.batch())
    b.apply_batch(forger.batch())
    for replica in (a, b):
        assert replica.rights(m) == {"SH01": 8766}
        assert [(f["node"], f["seq"], f["rule"]) for f in replica.faults()] == [
            ("SH09", 1, "entry-writer")]
        assert _states(replica, "SH09") == [REFUSED, HELD]
    assert projections(a) == projections(b)
    forger.ledger.close()


def _states(ledger: Ledger, node: str) -> list[int]:
    return [s for (s,) in ledger.storage.conn.execute(
        "SELECT state FROM records WHERE node = ? ORDER BY seq", (node,))]


def _greet(ledger: Ledger, peer: str) -> SyncSession:
    """A session of `ledger` that has heard a hello from `peer`."""
    s = SyncSession(ledger)
    s.start()
    s.receive(pack(_hello(ledger, node=peer)))
    s.data_to_send()
    events(s)
    return s


def test_a_record_breaking_a_write_rule_is_refused_everywhere_alike(tmp_path: Path) -> None:
    """A branch with a valid key rewrites another's entry: the record is refused whole
    by each replica, kept as evidence (its writer signed it) and passed on, so every
    replica refuses it alike; its writer is blocked and what it writes after is held,
    not applied. No session fails: the relay did nothing wrong."""
    a, evil, c = (new_ledger(tmp_path, n) for n in ("SH01", "SH02", "SH03"))
    try:
        m = populate(a)
        sync(a, evil)
        sync(a, c)
        eid, body = a.storage.conn.execute(
            "SELECT id, body FROM entries WHERE node = 'SH01' AND kind = 'topup'").fetchone()
        forger = Forger(evil)
        rewrite = json.loads(body) | {"amount": 1, "deltas": [["cash", "SH01", 1]]}
        forger.write(entry_doc(eid, a.storage.day_of), _put(eid, rewrite))
        forger.write(member_doc(m), lambda doc: doc.get("members", type=Map).__setitem__(
            m, {"name": "stolen"}))  # harmless in itself, but after a broken rule
        net = Net()
        sa, sc = net.connect(a, c)
        before = {lg.node: data_snapshot(lg, [m]) for lg in (a, c)}
        s = _greet(a, "SH02")
        s.receive(forger.frame())
        assert not s.failed
        net.pump()  # A passes the records on to C, which judges them itself
        for replica in (a, c):
            assert data_snapshot(replica, [m]) == before[replica.node]
            assert [(f["node"], f["seq"], f["rule"]) for f in replica.faults()] == [
                ("SH02", forger.seq - 1, "entry-insert-once")]
            assert _states(replica, "SH02")[-2:] == [REFUSED, HELD]
            assert replica.positions()["SH02"] == forger.seq
        assert any("entry-insert-once" in r for r in a.refusals)
        assert not sa.failed and not sc.failed
        net.close()
    finally:
        for lg in (a, evil, c):
            lg.close()


Forge = Callable[[Ledger, Forger, dict[str, Any]], None]


def _other_client(a: Ledger, f: Forger, own: dict[str, Any]) -> None:
    """Structs written with the victim's own pycrdt client id."""
    doc: Doc[Any] = Doc(client_id=a.storage.client_id)
    doc.apply_update(a.storage.doc("members/00").doc.get_update())
    before = doc.get_state()
    doc.get("members", type=Map)["x"] = 1
    f.record("members/00", bytes(doc.get_update(before)))


def _two_clients(a: Ledger, f: Forger, own: dict[str, Any]) -> None:
    """One update with structs of the forger's client and of another."""
    stranger: Doc[Any] = Doc()
    stranger.get("members", type=Map)["y"] = 2
    mine = f.doc("members/00")
    before = mine.get_state()
    mine.get("members", type=Map)["x"] = 1
    f.record("members/00", merge_updates(bytes(mine.get_update(before)),
                                         bytes(stranger.get_update())))


def _skips_a_clock(a: Ledger, f: Forger, own: dict[str, Any]) -> None:
    """A struct the forger never sent, so its next record does not continue its clock."""
    eid = HybridClock(f.node).mint()
    name = entry_doc(eid, a.storage.day_of)
    f.doc(name).get("entries", type=Map)["unsent"] = 1
    f.write(name, _put(eid, _entry(own["member"], f.node, eid)))


def _fresh(a: Ledger, f: Forger, own: dict[str, Any], key: str, **fields: Any) -> None:
    """A new entry of the forger, its id minted as node `key`, with `fields`: after its
    own entry's (a fresh clock could mint that very id in the same millisecond, and the
    record would then break insert-once rather than the rule under test)."""
    eid = HybridClock(key, decode(own["id"].split(".", 1)[0])).mint()
    f.write(entry_doc(eid, a.storage.day_of),
            _put(eid, _entry(own["member"], f.node, eid) | fields))


def _theirs(a: Ledger) -> str:
    (eid,) = a.storage.conn.execute(
        "SELECT id FROM entries WHERE node = 'SH01' AND kind = 'topup'").fetchone()
    return str(eid)


def _rewrite(a: Ledger, f: Forger, eid: str, value: Any) -> None:
    def change(doc: Doc[Any]) -> None:
        if value is None:
            del doc.get("entries", type=Map)[eid]
        else:
            doc.get("entries", type=Map)[eid] = value
    f.write(entry_doc(eid, a.storage.day_of), change)


WRITE_RULES: dict[str, tuple[str, Forge]] = {
    "rewrites its own entry": ("entry-insert-once", lambda a, f, own: _rewrite(
        a, f, own["id"], {k: v for k, v in own.items() if k != "bonus"} | {"amount": 9999})),
    "deletes its own entry": ("entry-insert-once",
                              lambda a, f, own: _rewrite(a, f, own["id"], None)),
    "rewrites another's entry": ("entry-insert-once",
                                 lambda a, f, own: _rewrite(a, f, _theirs(a), {"amount": 1})),
    "deletes another's entry": ("entry-insert-once",
                                lambda a, f, own: _rewrite(a, f, _theirs(a), None)),
    "keys an entry by another": ("entry-writer",
                                 lambda a, f, own: _fresh(a, f, own, "SH01", node="SH01")),
    "names another in its entry": ("entry-writer",
                                   lambda a, f, own: _fresh(a, f, own, f.node, node="SH01")),
    "lowers another's rights": ("own-rights", lambda a, f, own: _fresh(
        a, f, own, f.node, deltas=[["cash", "SH01", -5], ["cash", f.node, 5]])),
    "writes as another's client": ("own-client", _other_client),
    "writes as two clients": ("own-client", _two_clients),
    "skips a clock": ("in-order", _skips_a_clock),
    "carries no update": ("own-client", lambda a, f, own: f.record("members/00", b"\xc1")),
}


@pytest.mark.parametrize("case", sorted(WRITE_RULES))
def test_each_write_rule_refuses_a_record_from_a_session(a: Ledger, b: Ledger,
                                                         case: str) -> None:
    """A branch with a valid key (B) writes what the write rules forbid: the record is
    refused, kept, its writer blocked; nothing else changes and the session goes on."""
    rule, forge = WRITE_RULES[case]
    m = populate(a)
    sync(a, b)
    own = b.topup(b.owner, m, 500)
    sync(a, b)
    forger = Forger(b)
    forge(a, forger, own)
    before = data_snapshot(a, [m])
    s = _greet(a, "SH02")
    s.receive(forger.frame())
    assert not s.failed
    assert data_snapshot(a, [m]) == before
    assert [(f["node"], f["seq"], f["rule"]) for f in a.faults()] == [("SH02", forger.seq, rule)]
    assert _states(a, "SH02")[-1] == REFUSED
    # B is blocked: even an honest record of it is held from now on.
    forger.write(member_doc(m), lambda doc: doc.get("members", type=Map).__setitem__(
        "0000000000001.SH02", {"name": "x"}))
    s.receive(forger.frame(forger.records[-1:]))
    assert _states(a, "SH02")[-1] == HELD
    assert data_snapshot(a, [m]) == before


@pytest.mark.parametrize("frame", [
    VALID,
    _state({}),
    pack({"t": "rrep", "id": 1, "granted": 1}),
])
def test_records_before_hello(a: Ledger, frame: bytes) -> None:
    m = populate(a)
    s = SyncSession(a)
    s.start()
    s.data_to_send()
    _refused(a, s, frame, [m])


@pytest.mark.parametrize(("over", "exc"), [
    ({"chain": "other-chain"}, ForeignChain),
    ({"node": "SH01"}, RemoteProtocolError),  # our own node id
    ({"node": "SH03"}, RemoteProtocolError),  # not the node we dialled
    ({"node": "sh02"}, RemoteProtocolError),
    ({"node": "SH02\n"}, RemoteProtocolError),
    ({"node": ""}, RemoteProtocolError),
    ({"now": "soon"}, RemoteProtocolError),
    ({"now": True}, RemoteProtocolError),
    ({"now": 1.5}, RemoteProtocolError),
    # No clock's time: past year 9999 every date the node computed failed, once two
    # peers said it (crdtledger.peerclock).
    ({"now": 2**63 - 1}, RemoteProtocolError),
    ({"now": 253_402_300_800_000}, RemoteProtocolError),
    ({"now": -2**63}, RemoteProtocolError),
    ({"now": 0}, RemoteProtocolError),
    ({"digest": "abc"}, RemoteProtocolError),
    ({"chain": None}, RemoteProtocolError),
])
def test_bad_hello_refused(a: Ledger, over: dict[str, Any], exc: type[Exception]) -> None:
    m = populate(a)
    s = SyncSession(a, expect_node="SH02")
    s.start()
    s.data_to_send()
    _refused(a, s, pack(_hello(a, **over)), [m], exc)
    assert s.peer is None
    with pytest.raises(LocalProtocolError, match="session failed earlier"):
        s.receive(pack(_hello(a)))  # not even a proper hello is heard afterwards
    assert s.peer is None


# --- a failed session (h11's ERROR state) ------------------------------------------


def _failed_session(a: Ledger, b: Ledger, bad: bytes,
                    exc: type[Exception] = RemoteProtocolError
                    ) -> tuple[SyncSession, SyncSession, Net, str]:
    """A synced pair whose A side then receives `bad` from B."""
    m = populate(a)
    net = Net()
    sa, sb = net.connect(a, b)
    events(sa)
    with pytest.raises(exc) as info:
        sa.receive(bad)
    assert sa.failed == str(info.value)
    return sa, sb, net, m


@pytest.mark.parametrize(("bad", "exc"), [
    (b"\xc1", RemoteProtocolError),
    (_recs([["SH02", 1, "weather", b"\x00\x00"]]), RemoteProtocolError),
    (pack({"t": "hello", "chain": "other-chain", "node": "SH02", "now": 0,
           "digest": b"\x00" * 16}), ForeignChain),
])
def test_a_failed_session_refuses_every_later_call(a: Ledger, b: Ledger, bad: bytes,
                                                   exc: type[Exception]) -> None:
    """After a protocol error the session says why at every call, whether or not its
    driver closed it: nothing of a broken conversation is heard or sent again."""
    sa, _sb, _net, m = _failed_session(a, b, bad, exc)
    reason = sa.failed
    assert reason
    calls = [
        lambda: sa.receive(pack(_hello(a))),
        lambda: sa.receive_frames([pack(_hello(a))]),
        sa.anti_entropy,
        lambda: sa.request_rights(m, "cash", 100),
        lambda: sa.answer_rights(1),
    ]
    for call in calls:
        with pytest.raises(LocalProtocolError, match="session failed earlier") as info:
            call()
        assert reason in str(info.value)
    assert sa.closed and sa.data_to_send() == []
    # Unsubscribed: what the ledger commits now is not queued for the broken peer.
    a.topup(a.owner, m, 100)
    assert sa.data_to_send() == []
    sa.close()  # a driver that closes it anyway: harmless
    assert sa.failed == reason


def test_a_failed_session_drops_what_it_had_queued(a: Ledger, b: Ledger) -> None:
    """Replies to the frames before the bad one, in the same batch, are not sent."""
    m = populate(a)
    sa = SyncSession(a, expect_node="SH02")
    sa.start()
    sa.data_to_send()
    with pytest.raises(RemoteProtocolError):
        sa.receive_frames([pack(_hello(a)), b"\xc1"])  # the hello's state reply is queued
    assert sa.peer == "SH02" and sa.failed
    assert sa.data_to_send() == []
    with pytest.raises(LocalProtocolError, match="session failed earlier"):
        sa.request_rights(m, "cash", 1)


def test_a_failed_batch_keeps_what_it_applied(a: Ledger, b: Ledger) -> None:
    """receive_frames applies the records before a bad frame, then fails as a whole
    session: the applied records stay, later frames are not heard."""
    populate(b, "13800000002", "乙")
    sb = SyncSession(b)
    sb.start()
    hello, *_ = sb.data_to_send()
    recs = pack({"t": "recs", **b.batch(b.lacking({})).to_wire()})
    sa = SyncSession(a)
    sa.start()
    with pytest.raises(RemoteProtocolError):
        sa.receive_frames([hello, recs, b"\xc1", recs])
    assert a.positions() == b.positions()
    assert state_vectors(a) == state_vectors(b)
    assert [e for e in events(sa) if isinstance(e, UpdatesApplied)]
    with pytest.raises(LocalProtocolError, match="session failed earlier"):
        sa.receive_frames([recs])


def test_local_misuse_does_not_fail_the_session(a: Ledger, b: Ledger) -> None:
    """Only the peer's errors break the conversation; our own refused call does not."""
    m = populate(a)
    sa, _sb = Net().connect(a, b)
    with pytest.raises(LocalProtocolError):
        sa.request_rights(m, "gold", 1)
    with pytest.raises(LocalProtocolError):
        sa.answer_rights(42)
    assert sa.failed is None and not sa.closed
    sa.anti_entropy()
    assert sa.data_to_send()


def test_hello_changing_node_mid_session(greeted) -> None:
    a, _s, m = greeted
    s2 = SyncSession(a)  # without expect_node
    s2.start()
    s2.receive(pack(_hello(a, node="SH05")))
    s2.data_to_send()
    events(s2)
    _refused(a, s2, pack(_hello(a, node="SH06")), [m])


def test_oversized_frame(greeted, monkeypatch) -> None:
    a, s, m = greeted
    frame = _recs([["SH02", 1, "rules", b"\x00\x00" + b"\x00" * 200]])
    monkeypatch.setattr(sync_mod, "MAX_FRAME_BYTES", 100)
    err = _refused(a, s, frame, [m])
    assert "exceeds" in str(err)


@pytest.mark.parametrize("shape", ["a hello padded with maps", "a bare list of maps"])
def test_a_frame_of_empty_maps_is_refused_before_it_is_built(greeted, shape: str) -> None:
    """One byte of msgpack makes an empty map, and a map costs Python 64 bytes or more:
    a certified peer's 8 MiB frame of them (8 KB on the wire, compressed) held 594 MiB
    at the node, 18 GiB at the frame limit. A frame may make a few maps and lists plus
    one per 16 bytes; past that it is refused as it is read."""
    a, s, m = greeted
    n = 1 << 20
    pad = b"\xdd" + n.to_bytes(4, "big") + b"\x80" * n
    hello = msgpack.packb(_hello(a) | {"v": sync_mod.PROTOCOL_VERSION})
    frame = (bytes([hello[0] + 1]) + hello[1:] + msgpack.packb("pad") + pad
             if shape.startswith("a hello") else pad)
    tracemalloc.start()
    try:
        err = _refused(a, s, frame, [m])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "more maps and lists than any message of its size" in str(err)
    assert peak < 20 * len(frame), peak  # was some 70 bytes a byte of frame


def test_too_many_logs_in_state(greeted, monkeypatch) -> None:
    a, s, m = greeted
    monkeypatch.setattr(sync_mod, "MAX_LOGS", 3)
    logs = {f"SH{i:02d}": [1, b""] for i in range(4)}
    _refused(a, s, _state(logs), [m])


def test_too_many_records_in_a_batch(greeted, monkeypatch) -> None:
    a, s, m = greeted
    monkeypatch.setattr(log_mod, "MAX_BATCH_RECORDS", 2)
    _refused(a, s, _recs([["SH02", i, "rules", b"\x00\x00"] for i in (1, 2, 3)]), [m])


def _sent(frames: list[bytes]) -> list[dict[str, Any]]:
    return [msgpack.unpackb(f) for f in frames]


def test_valid_state_is_remembered(greeted) -> None:
    """A peer's view of the logs is remembered (for `export --for`), and answered with
    the records it lacks, under the heads that cover them."""
    a, s, _m = greeted
    held = a.positions()["SH01"]
    assert held > 1
    tip1 = a.storage.log.hash_at("SH01", 1)
    assert tip1
    s.receive(_state({"SH01": [1, tip1[:8]]}))
    assert a.storage.peer_states("SH02") == {"SH01": 1}
    (sent,) = [f for f in _sent(s.data_to_send()) if f["t"] == "recs"]
    assert [(r[0], r[1]) for r in sent["recs"]] == [("SH01", i) for i in range(2, held + 1)]
    assert sent["heads"]["SH01"][0] == held and sent["certs"]["SH01"] == a.trust.cert_der


def test_a_log_whose_tip_differs_is_sent_whole(greeted) -> None:
    """A peer at the same position of our log but with another hash there holds a fork
    of it (a restored backup, a cloned disk): it gets that whole log, so that it can
    prove the fork."""
    a, s, _m = greeted
    held = a.positions()["SH01"]
    s.receive(_state({"SH01": [held, b"\x00" * 8]}))
    (sent,) = [f for f in _sent(s.data_to_send()) if f["t"] == "recs"]
    assert [r[1] for r in sent["recs"]] == list(range(1, held + 1))


def test_decode_state_vector() -> None:
    assert decode_state_vector(b"\x00") == {}
    assert decode_state_vector(b"\x02\x01\x05\x81\x01\x07") == {1: 5, 129: 7}
    for bad in (b"", b"\x01", b"\x01\x01", b"\x00\x00", b"\x80", "x", b"\xff" * 20):
        with pytest.raises(RemoteProtocolError):
            decode_state_vector(bad)  # type: ignore[arg-type]


def test_duplicated_rights_request_grants_once(tmp_path: Path) -> None:
    """A request frame seen twice gets the same answer and moves rights once; the
    duplicated reply is ignored rather than treated as a protocol error."""
    a, b = new_ledger(tmp_path, "SH01"), new_ledger(tmp_path, "SH02")
    try:
        m = a.add_member(a.owner, name="客", phone="13800001234")
        a.topup(a.owner, m, 10000)
        net = Net()
        sa, sb = net.connect(a, b)
        sb.request_rights(m, "cash", 3000)
        (request,) = sb.data_to_send()
        sa.receive(request)
        sa.receive(request)  # duplicated on the way
        for frame in sa.data_to_send():  # transfer update, reply, reply again
            sb.receive(frame)
        net.pump()
        granted = [e for e in iter(sb.next_event, None) if isinstance(e, RightsGranted)]
        assert [g.amount for g in granted] == [3000 + (10000 - 3000) // 2]
        assert a.rights(m) == b.rights(m) == {"SH01": 3500, "SH02": 6500}
        assert len([e for e in a.history(m) if e["kind"] == "transfer"]) == 1
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize("member, purse, amount", [
    ("not-an-id", "cash", 100), (None, "cash", 100), ("M", "gold", 100),
    ("M", "cash", 0), ("M", "cash", -5), ("M", "cash", True), ("M", "cash", 2**64),
])
def test_a_bad_rights_request_is_our_error_and_never_sent(a: Ledger, b: Ledger, member: Any,
                                                          purse: Any, amount: Any) -> None:
    m = a.add_member(a.owner, name="客", phone="13800004321")
    sa, _ = Net().connect(a, b)
    with pytest.raises(LocalProtocolError, match="bad rights request"):
        sa.request_rights(m if member == "M" else member, purse, amount)
    assert sa.data_to_send() == []


def test_a_relaying_session_hands_requests_to_its_driver_once(tmp_path: Path) -> None:
    """With relay_rights, a request waits for the driver (a hub fetching from its other
    peers); a duplicate is answered once; a forwarded request is never relayed again."""
    a, b = new_ledger(tmp_path, "SH01"), new_ledger(tmp_path, "SH02")
    try:
        m = a.add_member(a.owner, name="客", phone="13800001234")
        a.topup(a.owner, m, 10000)
        net = Net()
        sa, sb = net.connect(a, b)
        sa.relay_rights = True
        rid = sb.request_rights(m, "cash", 3000)
        (request,) = sb.data_to_send()
        sa.receive(request)
        sa.receive(request)  # duplicated on the way
        asked = [e for e in iter(sa.next_event, None) if isinstance(e, RightsRequested)]
        assert asked == [RightsRequested(rid, "SH02", m, "cash", 3000)]
        assert sa.data_to_send() == [] and a.rights(m) == {"SH01": 10000}
        sa.answer_rights(rid)
        with pytest.raises(LocalProtocolError):
            sa.answer_rights(rid)
        net.pump()
        granted = [e for e in iter(sb.next_event, None) if isinstance(e, RightsGranted)]
        assert [g.amount for g in granted] == [6500]
        fwd = sb.request_rights(m, "cash", 100, forwarded=True)
        net.pump()
        assert not [e for e in iter(sa.next_event, None) if isinstance(e, RightsRequested)]
        granted = [e for e in iter(sb.next_event, None) if isinstance(e, RightsGranted)]
        assert [(g.request, g.amount) for g in granted] == [(fwd, 100 + (3500 - 100) // 2)]
    finally:
        a.close()
        b.close()


def test_a_round_started_from_both_sides_sends_each_diff_once(a: Ledger, b: Ledger) -> None:
    """Both nodes say hello at once (as on every new connection): each then sees the
    other's state twice, its own and the reply, and must not send a record twice."""
    m = a.add_member(a.owner, name="张三", phone="13800000000")
    a.topup(a.owner, m, 10000)
    sa, sb = SyncSession(a), SyncSession(b)
    sa.start()
    sb.start()
    sent: list[str] = []  # node:seq of every record A sent
    while True:
        out_a, out_b = sa.data_to_send(), sb.data_to_send()
        if not out_a and not out_b:
            break
        for frame in out_a:
            msg = msgpack.unpackb(frame)
            if msg["t"] == "recs":
                sent += [f"{r[0]}:{r[1]}" for r in msg["recs"]]
            sb.receive(frame)
        for frame in out_b:
            sa.receive(frame)
    assert sorted(sent) == sorted(set(sent)) and sent, sent
    assert len(sent) == a.positions()["SH01"]
    assert a.state_vectors() == b.state_vectors()
