"""The back office's goods page (issue 15): 商品销量排名 and 商品利润排名 for a period,
with charts and CSV, and the stock on hand per branch with its low-stock reminder,
driven as the owner would against a real node and store."""

from __future__ import annotations

from typing import Any

import pytest
from app_fixtures import CASHIER, NODE, OWNER, CounterApp, downloaded, parse_csv
from nicegui import ui

from crdtledger import operations, views

pytestmark = pytest.mark.asyncio


def sell_goods(app: CounterApp) -> None:
    """精油 (88.00, cost 30.00, remind at 3): 4 in, 2 sold. 毛巾 (10.00, cost 4.00): 10
    in, 5 sold, 1 shipped to SH02. By units 毛巾 leads; by profit 精油 does."""
    ledger, op = app.ledger, app.node_owner
    ledger.add_goods(op, "G01", "精油", 8800, 3000, unit="瓶", low_stock=3)
    ledger.add_goods(op, "T01", "毛巾", 1000, 400)
    ledger.add_goods(op, "N01", "面膜", 2000, 800)  # never bought in, never sold
    ledger.stock_in(op, "G01", 4)
    ledger.stock_in(op, "T01", 10)
    ledger.sell_goods(op, "G01", 2, pay="cash")
    ledger.sell_goods(op, "T01", 5, pay="wechat")
    ledger.ship_stock(op, "T01", 1, "SH02")


def table(app: CounterApp, marker: str) -> list[dict[str, Any]]:
    [t] = app.user.find(marker=marker).elements
    assert isinstance(t, ui.table)
    return list(t.rows)


async def test_rankings_in_order_with_the_library_figures_and_csv(
        counter_app: CounterApp) -> None:
    app = counter_app
    sell_goods(app)
    await app.login(*OWNER)
    await app.user.open("/office/goods")
    await app.user.should_see("商品销量排名")
    await app.user.should_see("商品利润排名")
    assert [(r["rank"], r["name"], r["qty"], r["sales"]) for r in table(app, "goods-sales")] == [
        (1, "毛巾 (T01)", 5, "¥50.00"), (2, "精油 (G01)", 2, "¥176.00")]
    assert [(r["name"], r["sales"], r["cost"], r["profit"])
            for r in table(app, "goods-profit")] == [
        ("精油 (G01)", "¥176.00", "¥60.00", "¥116.00"), ("毛巾 (T01)", "¥50.00", "¥20.00",
                                                        "¥30.00")]
    # Each ranking has its chart: units sold, and profit in yuan.
    charts = [chart.options for by in ("sales", "profit")
              for chart in app.user.find(marker=f"chart-goods-{by}").elements
              if isinstance(chart, ui.echart)]
    assert [c["yAxis"]["data"] for c in charts] == [["毛巾", "精油"], ["精油", "毛巾"]]
    assert [c["series"][0]["data"] for c in charts] == [[5.0, 2.0], [116.0, 30.0]]

    # The CSVs are `crdtledger report goods --by ... --csv`'s rows, ranked.
    for by, first in (("sales", ["1", "T01", "毛巾", "5", "50.00", "20.00", "30.00"]),
                      ("profit", ["1", "G01", "精油", "2", "176.00", "60.00", "116.00"])):
        rows = parse_csv(await downloaded(app, f"export-goods-{by}"))
        assert rows[0] == ["名次", "商品代码", "商品", "销量", "销售额", "成本", "利润"]
        assert rows[1] == first
        cli = operations.TABLE["report.goods"].table
        assert cli is not None
        library = cli(views.goods_ranking(app.ledger, by))
        assert [r[1:] for r in rows[1:]] == library[1:]


async def test_stock_per_branch_with_the_low_items_marked(counter_app: CounterApp) -> None:
    app = counter_app
    sell_goods(app)
    await app.login(*OWNER)
    await app.user.open("/office/goods")
    await app.user.should_see("各分店库存")
    await app.user.should_see("库存提醒")
    await app.user.should_see("精油 南京西路店 剩 2（下限 3）")
    rows = {r["code"]: r for r in table(app, "stock")}
    assert set(rows) == {"G01", "T01"}  # 面膜 was never at any branch
    assert (rows["G01"][NODE], rows["G01"]["SH02"], rows["G01"]["low"]) == ("2", "—", [NODE])
    assert (rows["T01"][NODE], rows["T01"]["SH02"], rows["T01"]["low"]) == (
        "4", "0（在途 1）", [])
    data = parse_csv(await downloaded(app, "export-stock"))
    assert data[0][:5] == ["商品代码", "商品", "分店", "分店号", "库存"]
    cli = operations.TABLE["stock.list"].table
    assert cli is not None
    assert [[r[0], r[1], *r[3:7]] for r in data[1:]] == [
        r[:6] for r in cli(views.stock_levels(app.ledger))[1:]]
    assert data[1] == ["G01", "精油", "南京西路店", NODE, "2", "0", "3", "是"]


async def test_a_period_without_sales_says_so(counter_app: CounterApp) -> None:
    app = counter_app
    sell_goods(app)
    await app.login(*OWNER)
    await app.user.open("/office/goods")
    await app.user.should_see(marker="goods-sales")
    app.user.find(marker="goods-from").clear().type("2020-01-01")
    app.user.find(marker="goods-to").clear().type("2020-01-31")
    await app.user.should_see(marker="no-goods-sales")
    await app.user.should_see(marker="no-goods-profit")
    await app.user.should_see("这段时间没有卖出商品")
    await app.user.should_not_see(marker="goods-sales")
    # The CSV of that period has the header only.
    assert parse_csv(await downloaded(app, "export-goods-profit"))[1:] == []
    await app.user.should_see(marker="stock")  # the shelves are not a period's


async def test_the_page_reads_in_english(counter_app: CounterApp) -> None:
    app = counter_app
    sell_goods(app)
    await app.login(*OWNER)
    app.user.find(marker="lang").click()
    await app.user.open("/office/goods")
    await app.user.should_see("Goods by units sold")
    await app.user.should_see("精油 at 南京西路店: 2 (remind at 3)")
    assert table(app, "goods-sales")[0]["name"] == "毛巾 (T01)"


async def test_a_cashier_is_refused(counter_app: CounterApp) -> None:
    app = counter_app
    sell_goods(app)
    await app.login(*CASHIER)
    await app.user.should_not_see("商品报表")  # no menu entry
    await app.user.open("/office/goods")
    await app.user.should_see("您没有打开")
    for marker in ("goods-sales", "goods-profit", "stock", "export-goods-sales",
                   "export-stock"):
        await app.user.should_not_see(marker=marker)
    await app.user.should_not_see(ui.table)
