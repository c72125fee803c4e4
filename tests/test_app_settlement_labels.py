"""The settlement page's column of what a branch collected counts positive cash
corrections (调整本金 opens a lot, crdtledger.settlement) with its top-ups, while
negative ones show apart (调减本金): its label said 充值本金, top-ups alone, so a
branch's 充值本金 read more than the top-up report's for the same days. The page and
its CSV, NiceGUI's simulated user against a real node and store."""

from __future__ import annotations

import pytest
from app_fixtures import NODE, OWNER, CounterApp, downloaded, parse_csv
from nicegui import ui
from test_app_counter import member_with_card

pytestmark = pytest.mark.asyncio


async def test_the_collected_column_says_it_holds_corrections_too(
        counter_app: CounterApp) -> None:
    app = counter_app
    ledger, op = app.ledger, app.node_owner
    mid = member_with_card(app, cash=50000)
    ledger.correct(op, mid, "cash", 5000, "调整本金: paid in, not booked")
    ledger.correct(op, mid, "cash", -2000, "entered twice")
    await app.login(*OWNER)
    await app.user.open("/office/settlement")
    await app.user.should_see("对账：期初未消费 + 充值及调整本金 − 本店服务")
    [table] = app.user.find(ui.table).elements
    labels = {c["name"]: c["label"] for c in table.columns}
    assert (labels["collected"], labels["removed"]) == ("充值及调整本金", "调减本金")
    row = next(r for r in table.rows if r["branch"] == "南京西路店")
    # The top-up and the positive correction in one column, the negative one apart.
    assert (row["collected"], row["removed"]) == ("¥550.00", "¥20.00")
    statement = parse_csv(await downloaded(app, "export-settlement"))
    header = next(r for r in statement if r[:2] == ["分店", "分店号"])
    mine = next(r for r in statement if r[:2] == ["南京西路店", NODE])
    assert mine[header.index("充值及调整本金")] == "550.00"
    assert "充值本金" not in header
