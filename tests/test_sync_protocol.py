"""The sans-I/O sync session (crdtledger.sync.SyncSession) between real ledgers.

Frames are moved by hand (tests/helpers.Net), so every test controls order,
duplication and loss exactly. A malformed frame must raise RemoteProtocolError
(or ForeignChain) and leave the node exactly as it was.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgpack
import pytest
from helpers import Net, doc_content, events, log_rows, new_ledger, projections, snapshot, sync
from pycrdt import Doc, Map

from crdtledger import escrow
from crdtledger import sync as sync_mod
from crdtledger.errors import (
    ForeignChain,
    LocalProtocolError,
    RemoteProtocolError,
    RightsElsewhere,
)
from crdtledger.hlc import MAX_CLOCK_SKEW_MS, HybridClock
from crdtledger.ledger import Ledger
from crdtledger.model import entry_doc, member_doc
from crdtledger.sync import (
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


def test_out_of_order_updates_converge(a: Ledger, b: Ledger) -> None:
    m = populate(a)
    net = Net()
    sa, sb = net.connect(a, b)
    for i in range(4):  # dependent updates of one document from one writer
        a.topup(a.owner, m, 100 + i)
    a.edit_member(a.owner, m, fields={"notes": "late"})
    frames = sa.data_to_send()
    assert len(frames) == 5
    for frame in reversed(frames):
        sb.receive(frame)
        _projection_matches_documents(b)  # never a document ahead of its projection
    sa.anti_entropy()
    sb.anti_entropy()
    net.pump()
    assert b.balance(m) == a.balance(m)
    assert b.member(m)["notes"] == "late"
    assert_converged(a, b)
    _projection_matches_documents(b)
    net.close()


def test_member_edit_ahead_of_a_gap(a: Ledger, b: Ledger) -> None:
    """Regression (found by tests/test_machine.py): a member created and edited ahead
    of a gap in its writer's updates to that shard. Yrs integrated the edit without an
    event and without moving the state vector, so the projection kept the old name
    for good although the documents converged."""
    net = Net()
    sa, sb = net.connect(a, b)
    created: list[str] = []
    shard: dict[str, str] = {}
    first = second = ""
    for i in range(64):  # two members of B's in one shard (one document)
        mid = b.add_member(b.owner, name=f"M{i}", phone=f"1390000{i:04d}")
        created.append(mid)
        if member_doc(mid) in shard:
            first, second = shard[member_doc(mid)], mid
            break
        shard[member_doc(mid)] = mid
    assert first and second
    b.edit_member(b.owner, second, fields={"name": "Wang"}, prefs={"service": "s0"})
    frames = sb.data_to_send()
    assert len(frames) == len(created) + 1  # one frame per operation, in order
    gap = created.index(first)
    # Everything except the first member's creation, then that creation last.
    for i, frame in enumerate(frames):
        if i != gap:
            sa.receive(frame)
            _projection_matches_documents(a)
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
    """An update that arrives ahead of its writer's earlier ones, then a restart, then
    anti-entropy: every entry counted exactly once, before and after reopening."""
    a, b = new_ledger(tmp_path, "SH01"), new_ledger(tmp_path, "SH02")
    try:
        m = populate(a)
        net = Net()
        sa, sb = net.connect(a, b)
        for amount in (100, 200, 400):
            a.topup(a.owner, m, amount)
        _first, _second, third = sa.data_to_send()
        sb.receive(third)  # arrives ahead of its writer's two earlier updates
        sb.receive(third)  # and again
        _projection_matches_documents(b)
        early = b.balance(m)
        assert early["cash"] in (8766, 8766 + 400)  # set aside, or counted once
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
    for frame in frames + frames:
        sb.receive(frame)
    assert snapshot(b, [m]) == after_once
    assert sb.data_to_send() == []  # nothing new, nothing relayed
    assert_converged(a, b)
    net.close()


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


_CLOCKS: dict[str, HybridClock] = {}


def _entry_update(member: str, node: str = "SH02", **fields: Any) -> bytes:
    """A pycrdt update, made outside any ledger, that adds one ledger entry."""
    doc = Doc()
    entries = doc.get("entries", type=Map)
    eid = _CLOCKS.setdefault(node, HybridClock(node)).mint()  # one clock: unique ids
    entry = {"id": eid, "kind": "topup", "member": member, "node": node, "op": "x",
             "at": 1_767_225_600_000, "amount": 5, "deltas": [["cash", node, 5]]}
    entry.update(fields)
    entries[eid] = entry
    return bytes(doc.get_update())


def _doc_of(update: bytes, ledger: Ledger) -> str:
    """The document the one entry of `update` belongs in (that of its id's month:
    anywhere else, the whole update is refused, tests/test_wrong_month.py)."""
    doc = Doc()
    doc.apply_update(update)
    (eid,) = doc.get("entries", type=Map).keys()
    return entry_doc(eid, ledger.storage.day_of)


VALID = pack({"t": "update", "doc": "rules", "data": b"\x00\x00"})


@pytest.mark.parametrize("frame", [
    b"", b"\xc1", b"\x93\x01", VALID + b"x", "not bytes", None,
    _raw([1, 2, 3]), _raw("hello"), _raw(7), _raw(None),
    _raw({"t": "hello"}), _raw({"v": 2, "t": "update", "doc": "rules", "data": b""}),
    _raw({"v": "1", "t": "update"}), _raw({"v": True, "t": "update"}),
    pack({"t": "bye"}), pack({"t": None}), pack({}),
    pack({"t": "state"}), pack({"t": "state", "docs": []}),
    pack({"t": "state", "docs": {"nope": b"\x00"}}),
    pack({"t": "state", "docs": {"rules\n": b"\x00"}}),
    pack({"t": "state", "docs": {"ledger/2026-13": b"\x00"}}),
    pack({"t": "state", "docs": {"rules": b"\x02\x05"}}),  # truncated state vector
    pack({"t": "state", "docs": {"rules": b"\x01\x05\x01\x00"}}),  # trailing byte
    pack({"t": "state", "docs": {"rules": b"\x01\x85"}}),
    pack({"t": "state", "docs": {"rules": "\x00"}}),
    pack({"t": "state", "docs": {"rules": 0}}),
    pack({"t": "update", "doc": "rules", "data": b"\x01\x02\x03garbage"}),
    pack({"t": "update", "doc": "rules", "data": b""}),
    pack({"t": "update", "doc": "rules", "data": "text"}),
    pack({"t": "update", "doc": "weather", "data": b"\x00\x00"}),
    pack({"t": "update", "doc": "rules\n", "data": b"\x00\x00"}),
    pack({"t": "update", "doc": "operators ", "data": b"\x00\x00"}),
    pack({"t": "update", "doc": "ledger/２０２６-01", "data": b"\x00\x00"}),
    pack({"t": "update", "doc": 5, "data": b"\x00\x00"}),
    pack({"t": "rrep", "id": 99, "granted": 5}),
    pack({"t": "rrep", "id": "1", "granted": 5}),
    pack({"t": "rreq", "id": 1, "member": "nobody", "purse": "cash", "amount": 5}),
    pack({"t": "rreq", "id": 1, "member": "0000000000000.SH01", "purse": "gold", "amount": 5}),
    pack({"t": "rreq", "id": 1, "member": "0000000000000.SH01", "purse": "cash", "amount": 0}),
    pack({"t": "rreq", "id": 1, "member": "0000000000000.SH01", "purse": "cash",
          "amount": 2**53}),
    pack({"t": "rreq", "id": True, "member": "0000000000000.SH01", "purse": "cash",
          "amount": 1}),
])
def test_malformed_frames_change_nothing(greeted, frame: bytes) -> None:
    a, s, m = greeted
    _refused(a, s, frame, [m])


def test_update_with_entry_garbage_inside_a_valid_update(greeted) -> None:
    a, s, m = greeted
    # pycrdt-valid updates whose entry breaks the schema are kept apart (quarantined),
    # identically at every replica; the balance is untouched.
    before = a.balance(m)
    for bad in (dict(amount=1.5), dict(amount=-5), dict(deltas=[["cash", "SH01", -5]]),
                dict(kind="gift"), dict(at=2**60), dict(deltas=[["cash", "SH02", 2**60]])):
        data = _entry_update(m, **bad)
        s.receive(pack({"t": "update", "doc": _doc_of(data, a), "data": data}))
    assert a.balance(m) == before
    (n,) = a.storage.conn.execute("SELECT COUNT(*) FROM quarantine").fetchone()
    assert n == 6


def test_entry_as_shared_map_edited_in_place_is_quarantined_alike(a: Ledger, b: Ledger) -> None:
    """Regression: an entry written as a nested Map and edited in place later was
    projected with its first value at one replica and its last at another."""
    m = populate(a)
    sync(a, b)
    evil = Doc()
    root = evil.get("entries", type=Map)
    ups: list[bytes] = []
    evil.observe(lambda e: ups.append(e.update))
    eid = _CLOCKS.setdefault("SH09", HybridClock("SH09")).mint()
    root[eid] = Map({"id": eid, "kind": "topup", "member": m, "node": "SH09", "op": "x",
                     "at": 1_767_225_600_000, "amount": 5, "deltas": [["cash", "SH09", 5]]})
    root[eid]["deltas"] = [["cash", "SH09", 500000]]
    name = entry_doc(eid, a.storage.day_of)
    a.apply_remote([(name, ups[0])])
    a.apply_remote([(name, ups[1])])
    b.apply_remote([(name, bytes(evil.get_update()))])
    assert a.balance(m) == b.balance(m)
    assert a.rights(m) == b.rights(m) == {"SH01": 8766}
    assert projections(a)["quarantine"] == projections(b)["quarantine"] != []


@pytest.mark.parametrize("frame", [
    pack({"t": "update", "doc": "rules", "data": b"\x00\x00"}),
    pack({"t": "state", "docs": {}}),
    pack({"t": "rrep", "id": 1, "granted": 1}),
])
def test_update_before_hello(a: Ledger, frame: bytes) -> None:
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
    (pack({"t": "update", "doc": "weather", "data": b"\x00\x00"}), RemoteProtocolError),
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
    """receive_frames applies the updates before a bad frame, then fails as a whole
    session: the applied updates stay, later frames are not heard."""
    populate(b, "13800000002", "乙")
    sb = SyncSession(b)
    sb.start()
    hello, *_ = sb.data_to_send()
    updates = [pack({"t": "update", "doc": n, "data": b.diff(n)})
               for n in sorted(b.state_vectors())]
    sa = SyncSession(a)
    sa.start()
    with pytest.raises(RemoteProtocolError):
        sa.receive_frames([hello, *updates, b"\xc1", *updates])
    assert state_vectors(a) == state_vectors(b)
    assert [e for e in events(sa) if isinstance(e, UpdatesApplied)]
    with pytest.raises(LocalProtocolError, match="session failed earlier"):
        sa.receive_frames(updates)


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
    frame = pack({"t": "update", "doc": "rules", "data": b"\x00\x00" + b"\x00" * 200})
    monkeypatch.setattr(sync_mod, "MAX_FRAME_BYTES", 100)
    err = _refused(a, s, frame, [m])
    assert "exceeds" in str(err)


def test_too_many_documents_in_state(greeted, monkeypatch) -> None:
    a, s, m = greeted
    monkeypatch.setattr(sync_mod, "MAX_DOCS", 3)
    docs = {f"members/{i:02d}": b"\x00" for i in range(4)}
    _refused(a, s, pack({"t": "state", "docs": docs}), [m])


def test_valid_state_is_remembered(greeted) -> None:
    a, s, _m = greeted
    s.receive(pack({"t": "state", "docs": {"rules": b"\x00"}}))
    assert a.storage.peer_states("SH02") == {"rules": b"\x00"}
    sent = [msgpack.unpackb(f) for f in s.data_to_send()]
    assert {f["t"] for f in sent} >= {"update"}  # everything SH02 lacks


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
    other's state twice, its own and the reply, and must not send the diff twice."""
    m = a.add_member(a.owner, name="张三", phone="13800000000")
    a.topup(a.owner, m, 10000)
    sa, sb = SyncSession(a), SyncSession(b)
    sa.start()
    sb.start()
    sent: list[str] = []
    while True:
        out_a, out_b = sa.data_to_send(), sb.data_to_send()
        if not out_a and not out_b:
            break
        for frame in out_a:
            msg = msgpack.unpackb(frame)
            if msg["t"] == "update":
                sent.append(msg["doc"])
            sb.receive(frame)
        for frame in out_b:
            sa.receive(frame)
    assert sorted(sent) == sorted(set(sent)) and sent, sent
    assert a.state_vectors() == b.state_vectors()
