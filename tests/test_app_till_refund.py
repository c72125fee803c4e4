"""A refund of a sale paid at the till (wechat) goes back there, not onto the card: the
counter's 最近记录 showed it as "+¥20.00" in green with no method, as a refund onto
the card reads, though the card's balance did not move; `crdtledger history` showed
only the points it took back. NiceGUI's simulated user against a real node and
store; the real command line."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from app_fixtures import CASHIER, CounterApp
from conftest import Cli
from nicegui import ui
from test_app_counter import member_with_card, swipe
from test_cli import PHONE, new_member


def visit_rows(app: CounterApp) -> list[str]:
    """The texts of the counter's labels, as a cashier reads them."""
    return [str(lb.text) for lb in app.user.find(kind=ui.label).elements]


@pytest.mark.asyncio
async def test_a_till_refund_reads_as_money_back_by_its_method_not_onto_the_card(
        counter_app: CounterApp) -> None:
    app = counter_app
    ledger, op = app.ledger, app.node_owner
    mid = member_with_card(app, cash=50000)
    sale = ledger.debit(op, mid, service="BODY90", pay="wechat")
    ledger.refund(op, sale["id"], 2000)
    assert ledger.balance(mid)["cash"] == 50000  # the card is untouched
    await app.login(*CASHIER)
    await swipe(app)
    await app.user.should_see("退款 · 全身按摩 90 分钟 · 微信（原路退回）")
    labels = visit_rows(app)
    assert "+¥20.00" not in labels, labels  # no stored value was added
    assert "¥20.00" in labels, labels  # what went back, as a till sale's amount reads


@pytest.mark.asyncio
async def test_a_refund_onto_the_card_says_so(counter_app: CounterApp) -> None:
    app = counter_app
    ledger, op = app.ledger, app.node_owner
    mid = member_with_card(app, cash=50000)
    sale = ledger.debit(op, mid, service="BODY90")  # from stored value
    ledger.refund(op, sale["id"], 2000)
    await app.login(*CASHIER)
    await swipe(app)
    await app.user.should_see("退款 · 全身按摩 90 分钟 · 退回储值")
    assert "+¥20.00" in visit_rows(app)


def test_history_says_a_till_refund_went_back_at_the_till(
        cli: Cli, make_node: Callable[..., Path]) -> None:
    data = make_node("SH01")
    member = new_member(data, "李雷", PHONE, topup="100.00")
    sale = cli("debit", "--member", member, "--service", "BODY90", "--pay", "wechat",
               "--json", data=data).json()
    assert cli("refund", "--debit", sale["id"], "--amount", "20.00", data=data).code == 0
    lines = cli("history", "--member", member, data=data).out.splitlines()
    refund = next(line for line in lines if " refund " in line)
    assert "20.00 refunded at the till by wechat, as the sale was paid" in refund, refund
    assert "+20.00" not in refund, refund
    paid = next(line for line in lines if " debit " in line)
    assert "198.00 paid at the till" in paid and "pay wechat" in paid, paid
