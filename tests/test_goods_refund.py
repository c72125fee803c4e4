"""Issue 15's gaps in goods, on real stores: a goods sale refunded puts its units back
on the shelf in the same commit as the money (library, command line, HTTP API); two
head offices adding the same code before they sync converge on one stock and lose no
unit; a service sold to a walk-in customer (散客) at the till, and refunded."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from conftest import run_cli
from helpers import FakeClock, name_branches, new_ledger, projections, snapshot, sync
from test_api import BOSS_PW, serving, with_operators

from crdtledger import views
from crdtledger.errors import InvalidAmount, InvalidInput, LedgerError, NotFound, RightsElsewhere
from crdtledger.goods import OutOfStock, walk_in
from crdtledger.ledger import Ledger
from peer.api import Standalone


@pytest.fixture
def shop(tmp_path: Path) -> Any:
    ledger = new_ledger(tmp_path, "SH01")
    owner = ledger.owner
    # 33.33 a unit: three units at 95折 are 94.99, which three refunds cannot split
    # evenly; the parts must still add up to it.
    ledger.add_goods(owner, "G01", "精油", 3333, 1200, unit="瓶")
    ledger.stock_in(owner, "G01", 10)
    yield ledger
    ledger.close()


def stock_rows(ledger: Ledger) -> list[tuple[str, str, str, int]]:
    return sorted(ledger.storage.conn.execute(
        "SELECT member, purse, node, amount FROM rights WHERE purse IN ('stock', 'transit')"
    ).fetchall())


# --- 1. a goods sale refunded returns its stock ------------------------------------------


def test_a_goods_refund_returns_units_and_a_share_of_the_money(shop: Ledger) -> None:
    owner = shop.owner
    member = shop.add_member(owner, name="李雷", phone="13700000001")
    shop.topup(owner, member, 100000)
    sale = shop.sell_goods(owner, "G01", 3, member=member)
    paid = sale["amount"]
    assert paid == 9499 and sale["points"] > 0  # 99.99 at 95折
    assert shop.stock_of("G01")["qty"] == 7

    seq = shop.storage.log.tip("SH01")[0]
    first = shop.refund(owner, sale["id"], qty=1, reason="broken")
    assert shop.storage.log.tip("SH01")[0] == seq + 1  # money and units: one record
    back = shop.entry(first["stock_entry"])
    assert (back["kind"], back["reason"], back["ref"], back["qty"], back["amount"]) == (
        "stock", "refund", sale["id"], 1, 1200)
    assert (first["qty"], first["goods"], first["amount"]) == (1, "G01", 9499 // 3)
    assert shop.stock_of("G01")["qty"] == 8
    ranked = views.goods_ranking(shop, "profit")
    assert ranked == [{"code": "G01", "name": "精油", "qty": 2, "sales": paid - 3166,
                       "cost": 2400, "profit": paid - 3166 - 2400}]

    assert shop.refund_left(sale["id"]) == 2  # units, as refund takes them
    second = shop.refund(owner, sale["id"], qty=1)
    rest = shop.refund(owner, sale["id"])  # nothing given: the units left
    assert [first["amount"], second["amount"], rest["amount"]] == [3166, 3166, 3167]
    assert rest["qty"] == 1 and shop.stock_of("G01")["qty"] == 10
    assert shop.balance(member)["cash"] == 100000  # every fen back, as stored value
    assert sum(r.get("points") or 0 for r in (first, second, rest)) == sale["points"]
    assert shop.balance(member)["points"] == 0
    assert views.goods_ranking(shop, "sales") == [
        {"code": "G01", "name": "精油", "qty": 0, "sales": 0, "cost": 0, "profit": 0}]
    with pytest.raises(InvalidAmount, match="at most 0 units"):
        shop.refund(owner, sale["id"])


def test_a_walk_in_sale_refunds_at_the_till(shop: Ledger) -> None:
    owner = shop.owner
    sale = shop.sell_goods(owner, "G01", 2, pay="wechat")
    assert sale["member"] == walk_in("SH01")
    done = shop.refund(owner, sale["id"], qty=2)
    assert (done["amount"], done["deltas"]) == (6666, [])  # money back at the till
    assert shop.stock_of("G01")["qty"] == 10
    day = views.daily_report(shop, shop.today(), "SH01")
    assert day["till_by_method"] == {} and day["sales"] == 0


def test_bad_goods_refunds_are_refused_and_change_nothing(shop: Ledger, tmp_path: Path
                                                          ) -> None:
    owner = shop.owner
    sale = shop.sell_goods(owner, "G01", 2, pay="cash")
    part = shop.refund(owner, sale["id"], qty=1)
    member = shop.add_member(owner, name="韩梅梅", phone="13700000002")
    service = shop.debit(owner, member, amount=100, pay="cash")
    before = snapshot(shop)
    for qty in (0, -1, "1.5", True, 2):  # 2: one of the two is refunded already
        with pytest.raises(InvalidAmount):
            shop.refund(owner, sale["id"], qty=qty)
    with pytest.raises(InvalidInput, match="by quantity"):
        shop.refund(owner, sale["id"], 100)  # an amount of a goods sale
    with pytest.raises(NotFound):
        shop.refund(owner, "0000000000001.SH01")
    with pytest.raises(NotFound):  # a refund of a refund
        shop.refund(owner, part["id"])
    with pytest.raises(InvalidInput, match="by amount"):  # units of a plain debit
        shop.refund(owner, service["id"], qty=1)
    assert snapshot(shop) == before
    assert shop.stock_of("G01")["qty"] == 9

    # Another branch holds none of the refund's rights: refused, nothing written.
    other = new_ledger(tmp_path, "SH02")
    try:
        sync(shop, other)
        before = snapshot(other)
        with pytest.raises(RightsElsewhere):
            other.refund(other.owner, sale["id"], qty=1)
        assert snapshot(other) == before
    finally:
        other.close()


def test_goods_refund_through_the_cli_and_the_reports(tmp_path: Path) -> None:
    data = tmp_path / "sh01"
    assert run_cli("init", "--node", "SH01", data=data).code == 0
    assert run_cli("goods", "add", "--code", "G01", "--name", "精油", "--price", "88.00",
                   "--cost", "30.00", data=data).code == 0
    assert run_cli("stock", "in", "--goods", "G01", "--qty", "10", data=data).code == 0
    sold = run_cli("sell", "--goods", "G01", "--qty", "3", "--json", data=data).json()
    shown = run_cli("refund", "--debit", sold["id"], "--qty", "1", data=data)
    assert shown.code == 0 and f"refunded G01 x1: 88.00 of {sold['id']}" in shown.out
    assert run_cli("stock", "show", "--goods", "G01", "--json", data=data).json()["qty"] == 8
    for bad in ("0", "-1", "1.5", "3"):
        refused = run_cli("refund", "--debit", sold["id"], "--qty", bad, data=data)
        assert refused.code != 0 and refused.err.strip()
    amount = run_cli("refund", "--debit", sold["id"], "--amount", "1.00", data=data)
    assert amount.code == 1 and "by quantity" in amount.err
    assert run_cli("stock", "show", "--goods", "G01", "--json", data=data).json()["qty"] == 8
    ranked = run_cli("report", "goods", "--by", "profit", "--json", data=data).json()
    assert ranked == [{"code": "G01", "name": "精油", "qty": 2, "sales": 17600,
                       "cost": 6000, "profit": 11600}]
    rest = run_cli("refund", "--debit", sold["id"], "--json", data=data).json()
    assert (rest["qty"], rest["amount"]) == (2, 17600)
    assert run_cli("stock", "show", "--goods", "G01", "--json", data=data).json()["qty"] == 10


def test_goods_refund_over_the_http_api(tmp_path: Path) -> None:
    async def main() -> None:
        ledger = with_operators(new_ledger(tmp_path, "SH01"))
        try:
            ledger.add_goods(ledger.owner, "G01", "精油", 8800, 3000)
            ledger.stock_in(ledger.owner, "G01", 5)
            async with serving(Standalone(ledger)) as api:
                token = await api.login("boss", BOSS_PW)
                status, sale = await api.call("POST", "/sales", {"goods": "G01", "qty": 2,
                                                                 "pay": "cash"}, token=token)
                assert status == 200
                status, body = await api.call("POST", "/refund", {"debit_id": sale["id"],
                                                                  "qty": 3}, token=token)
                assert status == 400 and "2 units" in body["message"]
                status, body = await api.call("POST", "/refund", {"debit_id": sale["id"],
                                                                  "qty": 1}, token=token)
                assert status == 200 and (body["qty"], body["amount"]) == (1, 8800)
                assert ledger.entry(body["stock_entry"])["reason"] == "refund"
            assert ledger.stock_of("G01")["qty"] == 4
        finally:
            ledger.close()

    asyncio.run(main())


# --- 2. two head offices add the same code concurrently ------------------------------------


def test_two_head_offices_adding_one_code_converge_and_lose_no_unit(tmp_path: Path) -> None:
    a, b = new_ledger(tmp_path, "SH01"), new_ledger(tmp_path, "SH02")
    try:
        # Apart, both add G01 (each mints a stock id) and take stock in under it.
        a.add_goods(a.owner, "G01", "精油", 8800, 3000)
        b.add_goods(b.owner, "G01", "精油 (new)", 9000, 3000)
        ids = {a.goods_item("G01")["stock"], b.goods_item("G01")["stock"]}
        assert len(ids) == 2
        a.stock_in(a.owner, "G01", 5)
        b.stock_in(b.owner, "G01", 3)
        sync(a, b)
        for lg in (a, b):  # one item, one canonical stock id, every unit counted
            item = lg.goods_item("G01")
            assert (item["stock"], item["stocks"]) == (min(ids), sorted(ids))
            assert lg.stock_of("G01", "SH01")["qty"] == 5
            assert lg.stock_of("G01", "SH02")["qty"] == 3
        assert views.stock_levels(a) == views.stock_levels(b)
        assert [(r["branch"], r["qty"]) for r in views.stock_levels(a)] == [
            ("SH01", 5), ("SH02", 3)]

        # A change of the item keeps the canonical id; stock taken in goes under it.
        a.add_goods(a.owner, "G01", "精油", 8800, 3000)
        assert a.goods_item("G01")["stock"] == min(ids)
        a.stock_in(a.owner, "G01", 2)
        b.stock_in(b.owner, "G01", 1)
        # B's first units sit under its own id, its new ones under the canonical one.
        # A sale of more than either row holds there takes the canonical row first,
        # then the other: two stock entries, one record with the money, none below zero.
        seq = b.storage.log.tip("SH02")[0]
        sale = b.sell_goods(b.owner, "G01", 3)
        assert b.storage.log.tip("SH02")[0] == seq + 1
        parts = [b.entry(e) for e in sale["stock_entries"]]
        assert [(p["member"], p["qty"]) for p in parts] == [(min(ids), 1), (max(ids), 2)]
        assert b.stock_of("G01")["qty"] == 1
        with pytest.raises(OutOfStock, match="1 there, 2 asked"):
            b.sell_goods(b.owner, "G01", 2)
        a.sell_goods(a.owner, "G01", 6)
        sync(a, b)
        assert projections(a) == projections(b)
        assert all(r[3] >= 0 for r in stock_rows(a))
        assert sum(r[3] for r in stock_rows(a)) == 5 + 3 + 2 + 1 - 3 - 6
        assert a.stock_of("G01")["qty"] == 1 and a.stock_of("G01", "SH02")["qty"] == 1
        # The report counts the split sale once; its refund puts the units back.
        ranked = {r["code"]: r for r in views.goods_ranking(a, "sales")}
        assert ranked["G01"]["qty"] == 9
        assert ranked["G01"]["cost"] == 9 * 3000
        b.refund(b.owner, sale["id"], qty=3)
        assert b.stock_of("G01")["qty"] == 4
        sync(a, b)
        assert projections(a) == projections(b)
        assert views.goods_ranking(a) == views.goods_ranking(b)
        assert views.goods_ranking(a)[0]["qty"] == 6
    finally:
        a.close()
        b.close()


def test_a_branch_ships_and_receives_across_both_stock_ids(tmp_path: Path) -> None:
    a, b = new_ledger(tmp_path, "SH01"), new_ledger(tmp_path, "SH02")
    try:
        a.add_goods(a.owner, "G01", "精油", 8800, 3000)
        b.add_goods(b.owner, "G01", "精油", 8800, 3000)
        b.stock_in(b.owner, "G01", 2)  # under B's id, the larger: not the canonical one
        sync(a, b)
        b.stock_in(b.owner, "G01", 2)  # under the canonical id
        shipped = b.ship_stock(b.owner, "G01", 4, "SH01")
        assert shipped["qty"] == 4 and len(shipped["stock_entries"]) == 2
        assert b.stock_of("G01")["qty"] == 0
        sync(a, b)
        received = a.receive_stock(a.owner, "G01")
        assert received["qty"] == 4 and len(received["stock_entries"]) == 2
        assert a.stock_of("G01")["qty"] == 4
        assert a.stock_held(a.goods_item("G01"), "transit") == {}
        sync(a, b)
        assert projections(a) == projections(b)
        assert all(r[3] >= 0 for r in stock_rows(a))
    finally:
        a.close()
        b.close()


# --- 3. a service sold to a walk-in customer -------------------------------------------------


def test_a_service_sold_to_a_walk_in_customer(tmp_path: Path) -> None:
    ledger = new_ledger(tmp_path, "SH01")
    try:
        owner = ledger.owner
        price = int(ledger.rule("services")["FOOT60"]["price"])
        sold = ledger.debit(owner, service="FOOT60", pay="cash")
        assert (sold["member"], sold["amount"], sold["discount"]) == (
            walk_in("SH01"), price, "1")  # the list price: no level, no points
        assert "points" not in sold and "level" not in sold and sold["deltas"] == []
        plain = ledger.debit(owner, amount=1500, pay="alipay")
        assert plain["member"] == walk_in("SH01")
        before = snapshot(ledger)
        for pay in ("stored", "package"):
            with pytest.raises(InvalidInput, match="walk-in"):
                ledger.debit(owner, service="FOOT60", pay=pay)
        with pytest.raises(InvalidInput, match="pay must be one of"):
            ledger.debit(owner, service="FOOT60", pay="points")
        member = ledger.add_member(owner, name="李雷", phone="13700000001")
        coupon = ledger.issue_coupon(owner, member, off=1000)["coupon"]
        before = snapshot(ledger)
        with pytest.raises(InvalidInput, match="coupon"):
            ledger.debit(owner, service="FOOT60", pay="cash", coupon=coupon)
        with pytest.raises(LedgerError):
            ledger.debit(owner, service="NOPE", pay="cash")
        assert snapshot(ledger) == before
        day = views.daily_report(ledger, ledger.today(), "SH01")
        assert day["debits"] == 2 and day["till_by_method"] == {"alipay": 1500, "cash": price}
        assert {r["service"]: r["amount"] for r in views.ranking(ledger, "services")} == {
            "FOOT60": price}
        back = ledger.refund(owner, sold["id"], 2800)
        assert (back["amount"], back["deltas"]) == (2800, [])
        day = views.daily_report(ledger, ledger.today(), "SH01")
        assert day["till_by_method"] == {"alipay": 1500, "cash": price - 2800}
        assert day["sales"] == price + 1500 - 2800
        ledger.topup(owner, member, 20000, pay="cash")
        spent = ledger.debit(owner, member, amount=900)["amount"]
        # 散客 is nobody: the member ranking lists members only.
        assert [(r["member"], r["amount"]) for r in views.ranking(ledger, "members")] == [
            (member, spent)]
    finally:
        ledger.close()


def test_a_walk_in_service_through_the_cli(tmp_path: Path) -> None:
    data = tmp_path / "sh01"
    assert run_cli("init", "--node", "SH01", data=data).code == 0
    sold = run_cli("debit", "--service", "HAIR", "--pay", "cash", "--json", data=data).json()
    assert (sold["member"], sold["amount"], sold["pay"]) == (walk_in("SH01"), 6800, "cash")
    shown = run_cli("debit", "--service", "HAIR", "--pay", "wechat", data=data)
    assert shown.code == 0 and "charged HAIR x1: 68.00 (wechat)" in shown.out
    no_member = run_cli("debit", "--service", "HAIR", data=data)  # stored value: whose?
    assert no_member.code == 1 and "walk-in" in no_member.err
    back = run_cli("refund", "--debit", sold["id"], data=data)
    assert back.code == 0 and "refunded 68.00" in back.out
    day = run_cli("report", "daily", "--json", data=data).json()
    assert (day["debits"], day["till_by_method"]) == (2, {"wechat": 6800})


def test_a_walk_in_service_over_the_http_api(tmp_path: Path) -> None:
    async def main() -> None:
        ledger = with_operators(new_ledger(tmp_path, "SH01"))
        try:
            async with serving(Standalone(ledger)) as api:
                token = await api.login("boss", BOSS_PW)
                status, body = await api.call("POST", "/debit", {"service": "HAIR",
                                                                 "pay": "card"}, token=token)
                assert status == 200 and body["member"] == walk_in("SH01")
                status, refused = await api.call("POST", "/debit", {"service": "HAIR"},
                                                 token=token)
                assert status == 400 and "walk-in" in refused["message"]
                status, back = await api.call("POST", "/refund", {"debit_id": body["id"]},
                                              token=token)
                assert status == 200 and back["amount"] == 6800
        finally:
            ledger.close()

    asyncio.run(main())


def test_a_refund_counts_in_the_goods_report_of_its_own_month(tmp_path: Path) -> None:
    """January's goods report, handed to the accountant, is not rewritten by a refund
    in February; February's shows it, as its daily reports and the analytics do."""
    clock = FakeClock(1_767_225_600_000 + 2 * 3600_000)  # 2026-01-01 10:00 Shanghai
    a = new_ledger(tmp_path, "SH01", now_ms=clock)
    try:
        a.add_goods(a.owner, "G1", "shampoo", 3999, cost=2000)
        a.stock_in(a.owner, "G1", 10)
        clock.advance_days(20)
        sale = a.sell_goods(a.owner, "G1", 3, pay="cash")
        january = views.goods_ranking(a, "profit", "2026-01-01", "2026-01-31")
        assert [(g["qty"], g["sales"], g["cost"]) for g in january] == [(3, 11997, 6000)]
        clock.advance_days(20)
        a.refund(a.owner, sale["id"], qty=2)
        assert views.goods_ranking(a, "profit", "2026-01-01", "2026-01-31") == january
        february = views.goods_ranking(a, "profit", "2026-02-01", "2026-02-28")
        assert [(g["qty"], g["sales"], g["cost"], g["profit"]) for g in february] == [
            (-2, -7998, -4000, -3998)]
        assert sum(views.daily_report(a, f"2026-02-{d:02d}")["sales"]
                   for d in range(1, 29)) == -7998
        whole = views.goods_ranking(a, "profit")
        assert [(g["qty"], g["sales"], g["cost"]) for g in whole] == [(1, 3999, 2000)]
    finally:
        a.close()


def test_another_branchs_stock_entry_naming_a_sale_is_none_of_that_sales(
        tmp_path: Path) -> None:
    """A sale's stock entries are its own branch's, written in its commit; its refunds'
    too (write rule refund-own). SH02 (a liar, every write rule obeyed: no deltas)
    wrote stock entries naming SH01's sale of one unit at 20 yuan, reason `sale` (5
    units at 100 billion yuan) and `refund`: the goods report then showed 6 units
    sold at that cost, the analytics export the same cost, and SH01's honest refund
    put its unit back at 16.7 billion yuan. Every reader takes only the stock
    entries the sale's own branch wrote."""
    import pyarrow.parquet as pq

    from crdtledger import analytics

    clock = FakeClock()
    a = new_ledger(tmp_path, "SH01", now_ms=clock)
    b = new_ledger(tmp_path, "SH02", now_ms=clock)
    try:
        name_branches(a, "SH01", "SH02")
        sync(a, b)
        a.add_goods(a.owner, "G1", "洗发水", 5000, 2000)
        a.stock_in(a.owner, "G1", 10)
        sale = a.sell_goods(a.owner, "G1", 1, pay="cash")
        sync(a, b)
        before = views.goods_ranking(a, "profit")
        assert [(g["qty"], g["sales"], g["cost"]) for g in before] == [(1, 5000, 2000)]
        for reason, qty in (("sale", 5), ("refund", 3)):
            e = b._entry("stock", b.clock.mint(), ref=sale["id"], reason=reason, qty=qty,
                         amount=10**13, goods="G1")
            b._commit(lambda e=e: ([b._entry_write(e)], e))  # type: ignore[misc]
        sync(a, b)
        assert b.storage.conn.execute(
            "SELECT COUNT(*) FROM entries WHERE kind = 'stock' AND node = 'SH02'"
        ).fetchone()[0] == 2  # taken in: every write rule obeyed
        for lg in (a, b):
            assert views.goods_ranking(lg, "profit") == before
        analytics.export(a, tmp_path / "an")
        rows = pq.read_table(tmp_path / "an" / "goods_sales").to_pylist()
        assert [(r["kind"], r["qty"], r["cost"]) for r in rows] == [("sale", 1, 2000)]
        back = a.refund(a.owner, sale["id"], qty=1)
        assert a.entry(back["stock_entry"])["amount"] == 2000  # the sale's unit cost
        sync(a, b)
        for lg in (a, b):
            assert [(g["qty"], g["sales"], g["cost"]) for g in views.goods_ranking(lg)] == [
                (0, 0, 0)]
        analytics.export(a, tmp_path / "an")
        rows = pq.read_table(tmp_path / "an" / "goods_sales").to_pylist()
        assert sorted((r["kind"], r["qty"], r["cost"]) for r in rows) == [
            ("refund", -1, -2000), ("sale", 1, 2000)]
    finally:
        a.close()
        b.close()
