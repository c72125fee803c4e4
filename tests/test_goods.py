"""Goods and stock (issue 15, part 1), on real stores: the acceptance as a new user
types it, stock that never goes below zero (concurrent sales at one branch, sales on
both sides of a partition, a hypothesis state machine of purchases, sales,
shipments, receipts and stock-takes), the sale's money and stock in one commit, gifts
for points, reports, and a forged entry lowering another branch's stock refused by
the write rules."""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import hypothesis.strategies as st
import pytest
from cluster import NodeProc, cluster, free_port, wait_for
from conftest import run_cli
from helpers import (
    Forger,
    Net,
    data_snapshot,
    full_scans,
    name_branches,
    new_ledger,
    plans,
    projections,
    snapshot,
    sync,
)
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule
from pycrdt import Doc, Map
from test_api import BOSS_PW, serving, with_operators

from crdtledger import views
from crdtledger.errors import ApprovalRequired, InvalidInput, LedgerError
from crdtledger.goods import OutOfStock, walk_in
from crdtledger.ledger import Ledger
from crdtledger.model import entry_doc
from peer.api import Standalone


def stock_rows(ledger: Ledger) -> list[tuple[str, str, str, int]]:
    return sorted(ledger.storage.conn.execute(
        "SELECT member, purse, node, amount FROM rights WHERE purse IN ('stock', 'transit')"
    ).fetchall())


# --- the acceptance, through the command line ----------------------------------------


def test_acceptance_goods_stock_sale_and_refusal_through_the_cli(tmp_path: Path) -> None:
    data = tmp_path / "sh01"
    assert run_cli("init", "--node", "SH01", data=data).code == 0
    assert run_cli("goods", "add", "--code", "G01", "--name", "精油", "--price", "88.00",
                   "--cost", "30.00", data=data).code == 0
    assert run_cli("stock", "in", "--goods", "G01", "--qty", "10", "--cost", "30.00",
                   data=data).code == 0
    sold = run_cli("sell", "--goods", "G01", "--qty", "2", "--json", data=data).json()
    assert (sold["amount"], sold["pay"], sold["member"]) == (17600, "cash", walk_in("SH01"))
    shown = run_cli("stock", "show", "--goods", "G01", "--json", data=data).json()
    assert shown == {"branch": "SH01", "qty": 8}

    with Ledger.open(data, lock=False) as ledger:
        before = snapshot(ledger)
    refused = run_cli("sell", "--goods", "G01", "--qty", "9", data=data)
    assert refused.code == 1
    line = refused.err.strip()
    assert len(line.splitlines()) == 1
    assert "精油" in line and "SH01" in line and "8 there" in line and "9 asked" in line
    with Ledger.open(data, lock=False) as ledger:
        assert snapshot(ledger) == before  # nothing changed: no debit, no stock entry
    assert run_cli("stock", "show", "--goods", "G01", "--json", data=data).json()["qty"] == 8

    # A member buys one from stored value (level discount, points), then takes a gift.
    member = run_cli("member", "add", "--name", "张伟", "--phone", "13812345678", "--json",
                     data=data).json()["member_id"]
    assert run_cli("topup", "--member", member, "--amount", "200.00", data=data).code == 0
    assert run_cli("goods", "add", "--code", "T01", "--name", "毛巾", "--price", "10.00",
                   "--points-price", "50", data=data).code == 0
    assert run_cli("stock", "in", "--goods", "T01", "--qty", "3", data=data).code == 0
    bought = run_cli("sell", "--goods", "G01", "--member", member, "--json", data=data).json()
    assert bought["pay"] == "stored" and bought["points"] > 0
    gift = run_cli("points", "gift", "--member", member, "--goods", "T01", "--json",
                   data=data).json()
    assert (gift["kind"], gift["points"]) == ("redeem", 50)
    listed = run_cli("stock", "list", "--csv", data=data)
    assert listed.code == 0
    assert "G01,精油,SH01,7," in listed.out and "T01,毛巾,SH01,2," in listed.out
    ranked = run_cli("report", "goods", "--by", "profit", "--json", data=data).json()
    assert [r["code"] for r in ranked] == ["G01"]
    assert ranked[0]["qty"] == 3 and ranked[0]["cost"] == 3 * 3000


# --- one commit, refusals, reports -----------------------------------------------------


@pytest.fixture
def shop(tmp_path: Path) -> Any:
    ledger = new_ledger(tmp_path, "SH01")
    owner = ledger.owner
    ledger.add_goods(owner, "G01", "精油", 8800, 3000, unit="瓶", low_stock=3)
    ledger.add_goods(owner, "T01", "毛巾", 1000, 400, points_price=50)
    yield ledger
    ledger.close()


def test_a_refused_stock_refuses_the_whole_sale(shop: Ledger) -> None:
    owner = shop.owner
    member = shop.add_member(owner, name="李雷", phone="13700000001")
    shop.topup(owner, member, 100000)
    shop.stock_in(owner, "G01", 1)
    before = snapshot(shop, [member])
    with pytest.raises(OutOfStock, match=r"精油 \(G01\) in stock at SH01: 1瓶 there, 2瓶 asked"):
        shop.sell_goods(owner, "G01", 2, member=member)
    assert snapshot(shop, [member]) == before  # the money was not taken either
    with pytest.raises(InvalidInput, match="walk-in"):
        shop.sell_goods(owner, "G01", 1, pay="stored")
    sale = shop.sell_goods(owner, "G01", 1, member=member)
    stock = shop.entry(sale["stock_entry"])
    assert (stock["kind"], stock["reason"], stock["ref"], stock["qty"]) == (
        "stock", "sale", sale["id"], 1)
    assert shop.balance(member)["cash"] == 100000 - sale["amount"]
    assert shop.stock_of("G01") == {"branch": "SH01", "qty": 0}


def test_stock_rights_never_move_as_money_does(shop: Ledger, b: Ledger) -> None:
    """Units move between branches only by shipping: no rights transfer, no
    correction, no answer to a peer's rights request."""
    owner = shop.owner
    shop.stock_in(owner, "G01", 5)
    stock_id = shop.goods_item("G01")["stock"]
    with pytest.raises(LedgerError):
        shop.transfer_rights(owner, stock_id, "SH02", 1, purse="stock")
    with pytest.raises(InvalidInput):
        shop.correct(owner, stock_id, "stock", -1, "lost")
    assert shop.grant_rights(stock_id, "stock", "SH02", 1) is None
    assert shop.stock_of("G01")["qty"] == 5


def test_a_large_stock_take_needs_another_operator(shop: Ledger) -> None:
    owner = shop.owner
    shop.add_operator(owner, "boss", BOSS_PW, ["manager"])
    shop.stock_in(owner, "G01", 100)
    shop.stock_adjust(owner, "G01", -2, "broken")  # 60.00 at cost: under the limit
    with pytest.raises(ApprovalRequired):
        shop.stock_adjust(owner, "G01", -10, "count")  # 300.00 at cost
    entry = shop.stock_adjust(owner, "G01", -10, "count", approver=("boss", BOSS_PW))
    assert entry["approver"] and shop.stock_of("G01")["qty"] == 88
    with pytest.raises(OutOfStock):
        shop.stock_adjust(owner, "G01", -89, "count", approver=("boss", BOSS_PW))


def test_stock_takes_split_under_the_limit_still_need_an_approver(shop: Ledger) -> None:
    """One operator's stock-takes of a day without an approver count together (at the
    cost they were written at): eight adjustments of 100.00 took 80 units of 100 off
    the books where one of 110.00 needed a second person."""
    owner = shop.owner
    shop.add_operator(owner, "boss", BOSS_PW, ["manager"])
    shop.stock_in(owner, "G01", 100)  # 30.00 at cost
    shop.stock_adjust(owner, "G01", -2, "broken")  # 60.00
    shop.stock_adjust(owner, "G01", 1, "found one")  # 30.00: 90.00 today
    with pytest.raises(ApprovalRequired, match=r"after 90.00 adjusted today without one"):
        shop.stock_adjust(owner, "G01", -1, "broken")
    shop.stock_adjust(owner, "G01", -1, "broken", approver=("boss", BOSS_PW))
    with pytest.raises(ApprovalRequired):  # approved ones do not count; the rest still do
        shop.stock_adjust(owner, "G01", -1, "broken")
    assert shop.stock_of("G01")["qty"] == 98


def test_reports_never_take_stock_ids_for_members(shop: Ledger) -> None:
    owner = shop.owner
    member = shop.add_member(owner, name="韩梅梅", phone="13700000002")
    shop.topup(owner, member, 50000)
    shop.stock_in(owner, "G01", 5)
    shop.stock_in(owner, "T01", 5)
    sale = shop.sell_goods(owner, "G01", 2, member=member)
    shop.sell_goods(owner, "G01", 1, pay="wechat")
    shop.refund(owner, sale["id"], qty=1)  # a goods sale is refunded by units
    stock_ids = {g["stock"] for g in shop.catalogue().values()}
    ranked = views.ranking(shop, "members")
    assert not stock_ids & {r["member"] for r in ranked}
    statement = views.settlement(shop)
    assert statement["total"] >= 0
    day = views.daily_report(shop, shop.today(), "SH01")
    assert day["till_by_method"] == {"wechat": 8800}
    assert day["debits"] == 2
    rows = {(r["code"], r["branch"]): r for r in views.stock_levels(shop)}
    assert rows[("G01", "SH01")]["qty"] == 3 and rows[("G01", "SH01")]["low"]
    assert not rows[("T01", "SH01")]["low"]  # no threshold
    assert [r["code"] for r in views.stock_levels(shop, low_only=True)] == ["G01"]
    profit = views.goods_ranking(shop, "profit")
    back = sale["amount"] // 2  # one of its two units
    assert profit == [{"code": "G01", "name": "精油", "qty": 2,
                       "sales": sale["amount"] + 8800 - back, "cost": 6000,
                       "profit": sale["amount"] + 8800 - back - 6000}]


def test_a_stock_takes_count_reads_the_operators_adjustments_alone(shop: Ledger) -> None:
    """The count against the stock-take limit read every entry of the chain's day for
    the operator's adjustments: it reads them by an index of this branch's operators'
    corrections, package sales and stock entries now (the plan asserted, not a time)."""
    shop.stock_in(shop.owner, "G01", 100)
    reads = [steps for sql, steps in plans(shop, lambda: shop.stock_adjust(
        shop.owner, "G01", -2, "broken")) if "approver') IS NULL" in sql]
    assert reads and all(any("USING INDEX entries_limited" in s for s in steps)
                         for steps in reads), reads
    assert shop.stock_of("G01")["qty"] == 98


def test_the_stock_list_reads_the_goods_rows_alone(shop: Ledger) -> None:
    """Stock is kept as escrow rights of the items' stock ids, beside every member's
    purses: the stock list read every rights row (some 12M at 3M members) for its
    few. The plans of the statements it runs are asserted, not a time."""
    member = shop.add_member(shop.owner, name="韩梅梅", phone="13700000002")
    shop.topup(shop.owner, member, 50000)
    shop.stock_in(shop.owner, "G01", 5)
    assert full_scans(shop, lambda: views.stock_levels(shop), "rights") == []
    assert [r["qty"] for r in views.stock_levels(shop, "SH01") if r["code"] == "G01"] == [5]


def test_concurrent_sales_at_one_branch_never_oversell(tmp_path: Path) -> None:
    """Fifteen sales of one unit at once over the branch's HTTP API, for ten units:
    ten are sold, five refused naming the stock, none below zero."""
    async def main() -> tuple[list[tuple[int, Any]], int]:
        ledger = with_operators(new_ledger(tmp_path, "SH01"))
        try:
            ledger.add_goods(ledger.owner, "G01", "精油", 8800, 3000)
            ledger.stock_in(ledger.owner, "G01", 10)
            async with serving(Standalone(ledger)) as api:
                token = await api.login("boss", BOSS_PW)
                results = await asyncio.gather(*(
                    api.call("POST", "/sales", {"goods": "G01", "qty": 1, "pay": "cash"},
                             token=token) for _ in range(15)))
            return list(results), ledger.stock_of("G01")["qty"]
        finally:
            ledger.close()

    results, left = asyncio.run(main())
    assert sorted(s for s, _ in results) == [200] * 10 + [409] * 5
    assert all(b["error"] == "out_of_stock" and "精油" in b["message"]
               for s, b in results if s == 409)
    assert left == 0


def test_partitioned_branches_each_sell_only_their_own_stock(tmp_path: Path) -> None:
    a, b = new_ledger(tmp_path, "SH01"), new_ledger(tmp_path, "SH02")
    try:
        a.add_goods(a.owner, "G01", "精油", 8800, 3000)
        sync(a, b)
        a.stock_in(a.owner, "G01", 3)
        b.stock_in(b.owner, "G01", 2)
        sync(a, b)
        # Apart: each sells what it holds; the other branch's units are not theirs.
        for _ in range(3):
            a.sell_goods(a.owner, "G01", 1)
        with pytest.raises(OutOfStock, match="other branches hold SH02 2; ship it here"):
            a.sell_goods(a.owner, "G01", 1)
        b.sell_goods(b.owner, "G01", 2)
        with pytest.raises(OutOfStock):
            b.sell_goods(b.owner, "G01", 1)
        # Shipping moves units: A ships nothing it lacks, B ships to A, A receives.
        with pytest.raises(OutOfStock):
            a.ship_stock(a.owner, "G01", 1, "SH02")
        b.stock_in(b.owner, "G01", 4)
        b.ship_stock(b.owner, "G01", 3, "SH01")
        with pytest.raises(OutOfStock):  # not arrived yet: A has not heard of it
            a.receive_stock(a.owner, "G01")
        sync(a, b)
        assert a.receive_stock(a.owner, "G01")["qty"] == 3
        sync(a, b)
        assert projections(a) == projections(b)
        assert all(amount >= 0 for *_k, amount in stock_rows(a))
        assert [r for r in stock_rows(a) if r[3]] == [
            (a.goods_item("G01")["stock"], "stock", "SH01", 3),
            (a.goods_item("G01")["stock"], "stock", "SH02", 1)]
    finally:
        a.close()
        b.close()


def test_a_forged_entry_lowering_another_branchs_stock_is_refused(a: Ledger, b: Ledger
                                                                   ) -> None:
    a.add_goods(a.owner, "G01", "精油", 8800, 3000)
    a.stock_in(a.owner, "G01", 5)
    sync(a, b)
    stock_id = a.goods_item("G01")["stock"]
    own = b.stock_in(b.owner, "G01", 1)  # so B's log holds an honest stock entry
    sync(a, b)
    forger = Forger(b)
    eid = b.clock.mint()  # an id of B's, after its own entry
    forged = {**own, "id": eid, "reason": "sale", "qty": 5,
              "deltas": [["stock", "SH01", -5]]}

    def put(doc: Doc[Any]) -> None:
        doc.get("entries", type=Map)[eid] = forged

    forger.write(entry_doc(eid, a.storage.day_of), put)
    net = Net()
    sa, _sb = net.connect(a, b)
    before = data_snapshot(a)
    sa.receive(forger.frame())
    assert data_snapshot(a) == before  # refused whole (kept as evidence, not applied)
    assert [(f["node"], f["rule"]) for f in a.faults()] == [("SH02", "own-rights")]
    assert a.stock_of("G01")["qty"] == 5
    assert stock_id == b.goods_item("G01")["stock"]
    net.close()


# --- the state machine --------------------------------------------------------------

NODES = ("SH01", "SH02", "SH03")
node_st = st.sampled_from(NODES)
qty_st = st.integers(min_value=1, max_value=6)


class StockMachine(RuleBasedStateMachine):
    """Three branches selling one item, synced now and then (a partition otherwise):
    no stock or transit row below zero anywhere, ever; a branch's own stock is exactly
    what its acknowledged operations say (only it changes it); after a full sync the
    replicas agree and stock plus transit over all branches is what came in less what
    went out."""

    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp(prefix="crdtledger-stock-"))
        self.ms = 1_772_330_400_000
        self.ledgers = {n: new_ledger(self.tmp, n, now_ms=self._now) for n in NODES}
        hq = self.ledgers["SH01"]
        # Cost 0.00: stock-takes never need an approver (one operator's of a day count
        # together against the limit: tests of approvals are above).
        hq.add_goods(hq.owner, "G01", "精油", 8800, 0)
        # Stock goes only to a branch the chain knows: the owner lists the three (SH02
        # and SH03 meet only once in step with SH01's log, which records no peer).
        name_branches(hq, *NODES)
        self._sync_all()
        self.own = dict.fromkeys(NODES, 0)  # each branch's stock, as its operations say
        self.net_in = 0  # units in less units out, over the chain

    def _now(self) -> int:
        self.ms += 1
        return self.ms

    def _sync_all(self) -> None:
        for _ in range(2):
            for i, x in enumerate(NODES):
                for y in NODES[i + 1:]:
                    sync(self.ledgers[x], self.ledgers[y])

    def _try(self, fn: Any, *args: Any) -> dict[str, Any] | None:
        try:
            return dict(fn(*args))
        except OutOfStock:
            return None

    @rule(node=node_st, qty=qty_st)
    def stock_in(self, node: str, qty: int) -> None:
        lg = self.ledgers[node]
        lg.stock_in(lg.owner, "G01", qty)
        self.own[node] += qty
        self.net_in += qty

    @rule(node=node_st, qty=qty_st)
    def sell(self, node: str, qty: int) -> None:
        lg = self.ledgers[node]
        done = self._try(lg.sell_goods, lg.owner, "G01", qty)
        assert (done is not None) == (qty <= self.own[node])
        if done:
            self.own[node] -= qty
            self.net_in -= qty

    @rule(node=node_st, change=st.integers(min_value=-4, max_value=4).filter(bool))
    def adjust(self, node: str, change: int) -> None:
        lg = self.ledgers[node]
        done = self._try(lg.stock_adjust, lg.owner, "G01", change, "count")
        assert (done is not None) == (change > 0 or -change <= self.own[node])
        if done:
            self.own[node] += change
            self.net_in += change

    @rule(node=node_st, to=node_st, qty=qty_st)
    def ship(self, node: str, to: str, qty: int) -> None:
        if node == to:
            return
        lg = self.ledgers[node]
        done = self._try(lg.ship_stock, lg.owner, "G01", qty, to)
        assert (done is not None) == (qty <= self.own[node])
        if done:
            self.own[node] -= qty

    @rule(node=node_st)
    def receive(self, node: str) -> None:
        lg = self.ledgers[node]
        done = self._try(lg.receive_stock, lg.owner, "G01")
        if done:
            self.own[node] += done["qty"]

    @rule(x=node_st, y=node_st)
    def sync_pair(self, x: str, y: str) -> None:
        if x != y:
            sync(self.ledgers[x], self.ledgers[y])

    @invariant()
    def never_below_zero_and_own_stock_exact(self) -> None:
        for node, lg in self.ledgers.items():
            assert all(r[3] >= 0 for r in stock_rows(lg)), (node, stock_rows(lg))
            assert lg.stock_of("G01")["qty"] == self.own[node]

    def teardown(self) -> None:
        try:
            self._sync_all()
            first = self.ledgers["SH01"]
            for lg in self.ledgers.values():
                assert projections(lg) == projections(first)
            total = sum(r[3] for r in stock_rows(first))
            assert total == self.net_in
            assert {n: first.stock_of("G01", n)["qty"] for n in NODES} == self.own
        finally:
            for lg in self.ledgers.values():
                lg.close()
            shutil.rmtree(self.tmp, ignore_errors=True)


StockMachine.TestCase.settings = settings(
    max_examples=30, stateful_step_count=25, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
test_stock_machine = StockMachine.TestCase


def test_cli_json_of_stock_show_is_exactly_branch_and_qty(tmp_path: Path) -> None:
    data = tmp_path / "sh02"
    assert run_cli("init", "--node", "SH02", data=data).code == 0
    assert run_cli("goods", "add", "--code", "G01", "--name", "精油", "--price", "88.00",
                   data=data).code == 0
    out = run_cli("stock", "show", "--goods", "G01", "--json", data=data)
    assert json.loads(out.out) == {"branch": "SH02", "qty": 0}


def test_a_sale_travels_as_one_record(a: Ledger, b: Ledger) -> None:
    """The money and the stock of a sale are one record of the branch's log, so no
    replica ever holds one without the other."""
    a.add_goods(a.owner, "G01", "精油", 8800, 3000, points_price=10)
    a.stock_in(a.owner, "G01", 3)
    member = a.add_member(a.owner, name="李雷", phone="13700000001")
    a.topup(a.owner, member, 100000)
    seq = a.storage.log.tip("SH01")[0]
    sale = a.sell_goods(a.owner, "G01", 1, member=member)
    gift = a.gift_goods(a.owner, member, "G01")
    assert a.storage.log.tip("SH01")[0] == seq + 2
    sync(a, b)
    for e in (sale, gift):
        assert b.entry(e["id"])["kind"] in ("debit", "redeem")
        assert b.entry(e["stock_entry"])["ref"] == e["id"]
    assert b.stock_of("G01", "SH01")["qty"] == 1
    assert projections(a) == projections(b)


def test_goods_on_running_nodes_of_a_chain(tmp_path: Path) -> None:
    """The command line against running nodes (it hands the operation to the node):
    the head office writes the catalogue, a branch may not; the branch gets it by
    sync, buys stock in and sells; the head office sees the branch's stock."""
    with cluster(tmp_path) as c:
        hq_data = tmp_path / "hq"
        assert run_cli("init", "--node", "HQ", "--chain", c.chain, "--head-office",
                       data=hq_data).code == 0
        hq = NodeProc("HQ", hq_data, free_port(), free_port())
        c.nodes["HQ"] = hq
        hq.start()
        shop = c.add("SH01", peers=("HQ",)).start()
        added = hq.cli("goods", "add", "--code", "G01", "--name", "精油", "--price", "88.00",
                       "--cost", "30.00", "--json")
        assert added.json()["code"] == "G01"
        refused = shop.cli("goods", "add", "--code", "G02", "--name", "x", "--price", "1.00")
        assert refused.code == 1 and "head office" in refused.err
        wait_for(lambda: shop.cli("goods", "list", "--json").json(), what="the catalogue")
        assert shop.cli("stock", "in", "--goods", "G01", "--qty", "10").code == 0
        assert shop.cli("sell", "--goods", "G01", "--qty", "2").code == 0
        over = shop.cli("sell", "--goods", "G01", "--qty", "9")
        assert over.code == 1 and "8 there" in over.err
        assert shop.cli("stock", "show", "--goods", "G01", "--json").json() == {
            "branch": "SH01", "qty": 8}
        wait_for(lambda: hq.cli("stock", "show", "--goods", "G01", "--branch", "SH01",
                                "--json").json()["qty"] == 8, what="SH01's stock at HQ")


def test_a_coupon_comes_off_a_goods_sale_once(shop: Ledger) -> None:
    """A member's coupon taken off a goods sale is redeemed by the sale's own debit;
    presented again it is refused and neither money nor stock moves."""
    owner = shop.owner
    member = shop.add_member(owner, name="李雷", phone="13700000001")
    shop.topup(owner, member, 100000)
    shop.stock_in(owner, "G01", 5)
    coupon = shop.issue_coupon(owner, member, off=1000)["coupon"]
    sale = shop.sell_goods(owner, "G01", 1, member=member, coupon=coupon)
    assert (sale["coupon"], sale["off"], sale["amount"]) == (coupon, 1000, 8360 - 1000)  # 95折
    before = snapshot(shop, [member])
    with pytest.raises(LedgerError, match="redeemed"):
        shop.sell_goods(owner, "G01", 1, member=member, coupon=coupon)
    assert snapshot(shop, [member]) == before
    with pytest.raises(InvalidInput, match="member"):
        shop.sell_goods(owner, "G01", 1, coupon=coupon, pay="cash")
    assert shop.stock_of("G01")["qty"] == 4


def test_a_sale_or_stock_past_what_an_entry_holds_is_said_with_the_item_and_limit(
        tmp_path: Path) -> None:
    """A walk-in sale of 2 at 100,000,000,000.00 (the largest price) was refused as the
    bare "value 20000000000000 out of range": which value, and what is the most?"""
    async def go(ledger: Ledger, api: Any) -> None:
        boss = await api.login("boss", BOSS_PW)
        status, out = await api.call("POST", "/goods", {
            "code": "G01", "name": "金条", "price": 10**13, "cost": 10**12,
            "points_price": 10**13}, token=boss)
        assert status == 201, out
        assert (await api.call("POST", "/stock/in", {"goods": "G01", "qty": 10},
                               token=boss))[0] == 200
        mid = ledger.add_member(ledger.owner, name="王芳", phone="13812345678")
        before = snapshot(ledger, [mid])
        for path, body, says in (
                ("/sales", {"goods": "G01", "qty": 2, "pay": "cash"},
                 "2 x G01 at 100000000000.00 come to 200000000000.00, more than one entry "
                 "may hold (100000000000.00): take fewer at a time"),
                ("/stock/in", {"goods": "G01", "qty": 11},
                 "11 x G01 (cost) at 10000000000.00 come to 110000000000.00"),
                ("/points/gift", {"member": mid, "goods": "G01", "qty": 2},
                 "2 x G01 at 10000000000000 points come to 20000000000000 points, more "
                 "than one entry may hold (10000000000000 points)")):
            status, out = await api.call("POST", path, body, token=boss)
            assert (status, out["error"]) == (400, "invalid_amount"), (path, out)
            assert out["message"].startswith(says), (path, out)
        assert snapshot(ledger, [mid]) == before

    async def main() -> None:
        ledger = with_operators(new_ledger(tmp_path, "SH01"))
        try:
            async with serving(Standalone(ledger)) as api:
                await go(ledger, api)
        finally:
            ledger.close()

    asyncio.run(main())


def test_a_service_sold_past_what_an_entry_holds_is_said_so(tmp_path: Path) -> None:
    a = new_ledger(tmp_path, "SH01")
    try:
        a.set_rule(a.owner, "services", {"GOLD": {"name": "金疗", "price": 10**13}})
        before = snapshot(a)
        with pytest.raises(LedgerError, match=r"3 x GOLD at 100000000000.00 come to "
                           r"300000000000.00, more than one entry may hold"):
            a.debit(a.owner, service="GOLD", qty=3, pay="cash")
        assert snapshot(a) == before
    finally:
        a.close()
