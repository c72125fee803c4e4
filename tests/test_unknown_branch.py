"""Rights and stock go only to a branch the chain knows (issue: a transfer or a
shipment to a well-formed id that is no branch, ZZ99 for SH02, stranded the member's
money or the goods for good: only the receiver may ever lower what it holds).

Known: a branch the rule `branches` names, a writer whose signed log this store
holds, or a peer this store has synced with; never this node itself, a branch whose
certificate the chain revoked, nor one blocked here for a proven fault. On real
stores (helpers.new_ledger, helpers.sync) and through the HTTP API on 127.0.0.1;
every refusal is checked to have changed nothing (helpers.snapshot)."""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import Cli
from helpers import Forger, Net, new_ledger, snapshot, sync
from pycrdt import Doc, Map
from test_api import BOSS_PW, Api, drive

from crdtledger import bookings
from crdtledger.bookings import BookingRefused
from crdtledger.errors import InvalidInput
from crdtledger.ledger import Ledger
from crdtledger.model import entry_doc
from peer.chain import enrol, init_chain, revocations_rule, revoke

BRANCHES = {"SH01": "南京西路店", "SH02": "徐家汇店"}


def refused(ledger: Ledger, members: list[str], call: Any, match: str) -> InvalidInput:
    before = snapshot(ledger, members)
    with pytest.raises(InvalidInput, match=match) as info:
        call()
    assert snapshot(ledger, members) == before
    return info.value


def stocked(ledger: Ledger, qty: int = 5) -> str:
    ledger.add_goods(ledger.owner, "G1", "洗发水", 3000, 1000)
    ledger.stock_in(ledger.owner, "G1", qty)
    return str(ledger.goods_item("G1")["stock"])


def test_a_branch_the_rule_does_not_name_and_never_synced_is_refused(a: Ledger) -> None:
    o = a.owner
    a.set_rule(o, "branches", BRANCHES)
    m = a.add_member(o, name="王芳", phone="13812345678")
    a.topup(o, m, 10000)
    sid = stocked(a)
    err = refused(a, [m, sid], lambda: a.transfer_rights(o, m, "ZZ99", 6000),
                  "ZZ99 is not a branch of this chain")
    assert "SH02 徐家汇店" in str(err) and "rule branches" in str(err)
    assert "SH01" not in str(err).split("known here")[1].split(")")[0]  # not itself
    refused(a, [m, sid], lambda: a.ship_stock(o, "G1", 2, "ZZ99"),
            "ZZ99 is not a branch of this chain")
    assert a.rights(m) == {"SH01": 10000} and a.stock_of("G1")["qty"] == 5
    # Named by the rule: the owner has opened it, it need not have synced yet.
    a.transfer_rights(o, m, "SH02", 6000)
    a.ship_stock(o, "G1", 2, "SH02")
    assert a.rights(m) == {"SH01": 4000, "SH02": 6000}
    assert a.stock_held(a.goods_item("G1"), "transit") == {"SH02": 2}
    # The check does not hide the others: itself, and more than it holds.
    refused(a, [m], lambda: a.transfer_rights(o, m, "SH01", 10), "to itself")


def test_without_a_rule_a_branch_is_known_once_it_has_synced(tmp_path: Path) -> None:
    a, b, c = (new_ledger(tmp_path, n) for n in ("SH01", "SH02", "SH03"))
    try:
        o = a.owner
        m = a.add_member(o, name="王芳", phone="13812345678")
        a.topup(o, m, 10000)
        sid = stocked(a)
        # Knowing no other branch, a store cannot tell a typo from a branch it has not
        # met: a new chain's first rights transfer goes, files carried one way (issue
        # 2's acceptance: SH01 gives SH02 rights before it has heard from SH02). Stock
        # waits for the branch to be met.
        a.transfer_rights(o, m, "SH02", 100)
        err = refused(a, [m, sid], lambda: a.ship_stock(o, "G1", 1, "SH02"),
                      "SH02 is not a branch")
        assert "no other branch is known here" in str(err)
        # SH02 writes and syncs (its signed log is held here): now a branch not met is
        # refused, SH03 too until it syncs having written nothing yet (a brand-new
        # branch: heard from, not yet listed by the owner).
        b.add_member(b.owner, name="李雷", phone="13900000000")
        sync(a, b)
        err = refused(a, [m, sid], lambda: a.transfer_rights(o, m, "SH03", 100),
                      "SH03 is not a branch")
        assert "known here: SH02)" in str(err)
        refused(a, [m, sid], lambda: a.ship_stock(o, "G1", 1, "SH03"), "SH03 is not a branch")
        sync(a, c)
        assert "SH02" in a.storage.log.positions() and "SH03" not in a.storage.log.positions()
        a.transfer_rights(o, m, "SH03", 200)
        a.ship_stock(o, "G1", 1, "SH02")
        a.ship_stock(o, "G1", 1, "SH03")
        assert a.rights(m) == {"SH01": 9700, "SH02": 100, "SH03": 200}
        err = refused(a, [m], lambda: a.transfer_rights(o, m, "ZZ99", 100), "ZZ99")
        assert "known here: SH02, SH03)" in str(err)
        # What was given can come back: SH03 holds it and may give it back.
        sync(a, c)
        c.transfer_rights(c.owner, m, "SH01", 200)
        sync(a, c)
        assert a.rights(m) == {"SH01": 9900, "SH02": 100}
    finally:
        for lg in (a, b, c):
            lg.close()


def test_a_branch_met_already_in_step_is_known_too(tmp_path: Path) -> None:
    """SH03 catches up from SH01, then meets SH02, which holds the same logs: their
    hellos agree and no state is exchanged, yet SH02 has synced with it."""
    a, b, c = (new_ledger(tmp_path, n) for n in ("SH01", "SH02", "SH03"))
    try:
        m = a.add_member(a.owner, name="王芳", phone="13800000001")
        a.topup(a.owner, m, 10_000)
        sync(a, b)
        sync(a, c)
        sync(b, c)
        b.topup(b.owner, m, 1_000)
        b.transfer_rights(b.owner, m, "SH03", 500)
    finally:
        for x in (a, b, c):
            x.close()


def test_a_branch_blocked_for_a_proven_fault_gets_nothing(a: Ledger, b: Ledger) -> None:
    """A branch caught breaking a write rule is blocked: nothing more of its log is
    applied, so rights or units sent there could never come back."""
    a.set_rule(a.owner, "branches", BRANCHES)
    m = a.add_member(a.owner, name="王芳", phone="13812345678")
    a.topup(a.owner, m, 10000)
    sid = stocked(a)
    sync(a, b)
    own = b.stock_in(b.owner, "G1", 1)
    sync(a, b)
    a.transfer_rights(a.owner, m, "SH02", 100)  # in good standing
    forger = Forger(b)
    eid = b.clock.mint()
    forged = {**own, "id": eid, "reason": "sale", "qty": 5, "deltas": [["stock", "SH01", -5]]}

    def put(doc: Doc[Any]) -> None:
        doc.get("entries", type=Map)[eid] = forged

    forger.write(entry_doc(eid, a.storage.day_of), put)
    net = Net()
    sa, _sb = net.connect(a, b)
    sa.receive(forger.frame())
    net.close()
    assert [f["node"] for f in a.faults()] == ["SH02"]
    refused(a, [m, sid], lambda: a.transfer_rights(a.owner, m, "SH02", 100),
            "SH02 is blocked here for a proven fault")
    refused(a, [m, sid], lambda: a.ship_stock(a.owner, "G1", 1, "SH02"),
            "SH02 is blocked here")
    assert a.rights(m) == {"SH01": 9900, "SH02": 100}
    # Nor by its own rights request over a session (it was granted half of them).
    before = snapshot(a, [m, sid])
    assert a.grant_rights(m, "cash", "SH02", 5000) is None
    assert snapshot(a, [m, sid]) == before


def test_a_branch_whose_certificate_the_chain_revoked_gets_nothing(tmp_path: Path) -> None:
    """A shop closed for good (its certificate revoked): nothing it signs is taken any
    more, so it could never spend or give back what it was sent, even though the rule
    still names it and its log is held here."""
    chain_dir = tmp_path / "acme"
    init_chain(chain_dir)

    def branch(node: str, head_office: bool = False) -> Ledger:
        data = tmp_path / node.lower()
        Ledger.create(data, node, "acme")
        enrol(chain_dir, data, node, head_office=head_office)
        return Ledger.open(data, synchronous="NORMAL")

    hq, sh02 = branch("SH01", head_office=True), branch("SH02")
    try:
        o = hq.owner
        hq.set_rule(o, "branches", BRANCHES)
        m = hq.add_member(o, name="王芳", phone="13812345678")
        hq.topup(o, m, 10000)
        sid = stocked(hq)
        sync(hq, sh02)
        sh02.add_member(sh02.owner, name="李雷", phone="13900000000")
        bookings.add_technician(sh02, sh02.owner, "T01", "小李", ["FOOT60"])
        sync(hq, sh02)
        # Booked before it closed: one confirmed there, one request it never decided.
        tomorrow = date.fromisoformat(hq.today()) + timedelta(days=1)
        there = bookings.book(sh02, sh02.owner, m, "T01", "FOOT60", f"{tomorrow}T14:00")
        sync(hq, sh02)
        asked = bookings.book(hq, o, m, "T01@SH02", "FOOT60", f"{tomorrow}T16:00")
        assert (there["status"], asked["status"]) == ("confirmed", "pending")
        hq.transfer_rights(o, m, "SH02", 100)  # in good standing
        hq.set_rule(o, "revocations", revocations_rule(revoke(chain_dir, "SH02")))
        refused(hq, [m, sid], lambda: hq.transfer_rights(o, m, "SH02", 100),
                "SH02 is closed: the chain revoked its certificate")
        refused(hq, [m, sid], lambda: hq.ship_stock(o, "G1", 1, "SH02"), "SH02 is closed")
        assert hq.rights(m) == {"SH01": 9900, "SH02": 100}
        assert hq.grant_rights(m, "cash", "SH02", 5000) is None  # nor if it asks
        assert hq.rights(m) == {"SH01": 9900, "SH02": 100}
        # Nor a booking with its technician: SH02 would never decide it.
        (tech,) = bookings.technicians(hq, "SH02")
        assert tech["active"] is False and tech["closed"]
        # What was booked there is over, as every branch that knows of the revocation
        # says: nobody will serve the confirmed one nor decide the request, and the
        # shut shop's customer is not reminded of it.
        shown = {b["booking"]: (b["status"], b["reason"])
                 for b in bookings.list_bookings(hq, member=m)}
        assert shown == {there["booking"]: ("cancelled", "branch SH02 closed for good"),
                         asked["booking"]: ("refused", "branch SH02 closed for good")}
        with pytest.raises(BookingRefused, match="is cancelled: nothing to cancel"):
            bookings.cancel(hq, o, there["booking"])
        before = snapshot(hq, [m])
        with pytest.raises(BookingRefused, match="works at SH02, closed for good"):
            bookings.book(hq, o, m, "T01@SH02", "FOOT60", f"{tomorrow}T14:00")
        assert snapshot(hq, [m]) == before
    finally:
        hq.close()
        sh02.close()


def test_through_the_api_a_transfer_or_shipment_to_no_branch_changes_nothing(
        tmp_path: Path) -> None:
    async def go(ledger: Ledger, api: Api) -> None:
        boss = await api.login("boss", BOSS_PW)
        status, _ = await api.call("POST", "/rules", {"kind": "branches", "body": BRANCHES},
                                   token=boss)
        assert status in (200, 201)
        status, body = await api.call("POST", "/members", {"name": "王芳",
                                                           "phone": "13812345678"}, token=boss)
        mid = body["member_id"]
        assert (await api.call("POST", "/topup", {"member": mid, "yuan": "100.00"},
                               token=boss))[0] == 200
        assert (await api.call("POST", "/goods", {"code": "G1", "name": "洗发水",
                                                  "price": 3000}, token=boss))[0] in (200, 201)
        assert (await api.call("POST", "/stock/in", {"goods": "G1", "qty": 5},
                               token=boss))[0] == 200
        sid = str(ledger.goods_item("G1")["stock"])
        before = snapshot(ledger, [mid, sid])
        status, out = await api.call("POST", "/rights/transfer", {
            "member": mid, "to": "ZZ99", "yuan": "60.00"}, token=boss)
        assert (status, out["error"]) == (400, "invalid_input"), out
        assert "ZZ99 is not a branch" in out["message"] and "SH02 徐家汇店" in out["message"]
        status, out = await api.call("POST", "/stock/ship", {"goods": "G1", "qty": 2,
                                                             "to": "ZZ99"}, token=boss)
        assert (status, out["error"]) == (400, "invalid_input"), out
        assert snapshot(ledger, [mid, sid]) == before
        # The whole 100.00 is still this branch's to spend.
        status, out = await api.call("POST", "/debit", {"member": mid, "yuan": "100.00"},
                                     token=boss)
        assert status == 200, out
        # A branch the rule names is accepted.
        status, out = await api.call("POST", "/stock/ship", {"goods": "G1", "qty": 2,
                                                             "to": "SH02"}, token=boss)
        assert status == 200, out

    drive(tmp_path, go)


def test_the_stock_of_no_branch_is_refused_not_shown_as_none(tmp_path: Path) -> None:
    """GET /goods/G1/stock?branch=XX99 answered 200 {"qty": 0} for a branch that does
    not exist, where shipping there says it is no branch: a typo read as a shelf
    holding none. A branch the rule names is shown, holding none or what it holds."""
    async def go(ledger: Ledger, api: Api) -> None:
        boss = await api.login("boss", BOSS_PW)
        status, _ = await api.call("POST", "/rules", {"kind": "branches", "body": BRANCHES},
                                   token=boss)
        assert status in (200, 201)
        stocked(ledger)
        status, out = await api.call("GET", "/goods/G1/stock?branch=XX99", token=boss)
        assert (status, out["error"]) == (400, "invalid_input"), out
        assert out["message"].startswith("XX99 is not a branch of this chain (known "
                                         "here: SH01, SH02)"), out
        assert await api.call("GET", "/goods/G1/stock?branch=SH02", token=boss) == (
            200, {"branch": "SH02", "qty": 0})
        assert await api.call("GET", "/goods/G1/stock?branch=SH01", token=boss) == (
            200, {"branch": "SH01", "qty": 5})

    drive(tmp_path, go)


def test_a_branch_named_by_its_id_is_listed_once(a: Ledger, cli: Cli, tmp_path: Path) -> None:
    """`stock ship --to XX09` said "known here: SH02 SH02" of a rule naming SH02 "SH02":
    read as two branches. A name is shown where it says more than the id."""
    a.set_rule(a.owner, "branches", {"SH02": "SH02", "SH03": "南京西路店"})
    stocked(a)
    err = refused(a, [], lambda: a.ship_stock(a.owner, "G1", 1, "XX09"),
                  "XX09 is not a branch of this chain")
    assert "(known here: SH02, SH03 南京西路店)" in str(err), err
    data = tmp_path / "cli"
    assert cli("init", "--node", "SH01", data=data).code == 0
    assert cli("rule", "set", "branches", "--json-body", '{"SH02": "SH02"}',
               data=data).code == 0
    assert cli("goods", "add", "--code", "G1", "--name", "洗发水", "--price", "30.00",
               data=data).code == 0
    assert cli("stock", "in", "--goods", "G1", "--qty", "3", data=data).code == 0
    r = cli("stock", "ship", "--goods", "G1", "--qty", "1", "--to", "XX09", data=data)
    assert r.code == 1 and "(known here: SH02):" in r.err, r
