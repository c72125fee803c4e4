"""What a cashier types or does at the counter that the buttons do not expect: a card
swiped while a top-up dialog is open, an amount with a decimal comma, a points count
in other digits, a choice emptied. NiceGUI's simulated user against a real node and
store; each refused with a sentence and nothing changed, or done for the member the
dialog names.
"""

from __future__ import annotations

import asyncio

import pytest
from app_fixtures import CASHIER, OWNER, CounterApp
from helpers import snapshot
from nicegui import ui
from test_app_counter import member_with_card, swipe
from test_app_shop import choose, stock, with_goods

pytestmark = pytest.mark.asyncio


def two_members(app: CounterApp) -> tuple[str, str]:
    ledger, owner = app.ledger, app.node_owner
    a = ledger.add_member(owner, name="张伟", phone="13812345678")
    ledger.issue_card(owner, a, "CA0001")
    b = ledger.add_member(owner, name="李娜", phone="13900001111")
    ledger.issue_card(owner, b, "CB0002")
    return a, b


async def swiped(app: CounterApp, who: tuple[str, str] = CASHIER) -> str:
    """Two members with cards; logged in as `who`, 张伟's card on the reader; 张伟."""
    a, _ = two_members(app)
    await app.login(*who)
    app.reader.insert("CA0001")
    await app.user.should_see(marker="member-name")
    return a


async def in_dialog(app: CounterApp, button: str, field: str, typed: str, ok: str) -> None:
    app.user.find(marker=button).click()
    app.user.find(marker=field).type(typed)
    app.user.find(marker=ok).click()


async def test_a_card_swiped_while_a_top_up_is_open_does_not_change_who_is_paid(
        counter_app: CounterApp) -> None:
    """The dialog for 张伟 (found by search) stays open while the next customer's card
    (no PIN) is swiped: the top-up confirmed in it went to that card's member."""
    app = counter_app
    a, b = two_members(app)
    await app.login(*CASHIER)
    app.user.find(marker="search").type("张伟")
    app.user.find(marker="search-go").click()
    await app.user.should_see(marker="member-name")
    app.user.find(marker="topup").click()
    await app.user.should_see("充值 — 张伟")
    app.user.find(marker="amount").type("100")
    app.reader.insert("CB0002")
    await app.user.should_see("李娜")
    app.user.find(marker="topup-ok").click()
    await app.user.should_see("已充值 ¥100.00")
    assert (app.ledger.balance(a)["cash"], app.ledger.balance(b)["cash"]) == (10000, 0)


@pytest.mark.parametrize("typed", ["12,34", "1,2,3", "1,,0", ",5"])
async def test_an_amount_with_a_stray_comma_is_refused(counter_app: CounterApp,
                                                        typed: str) -> None:
    """Commas were dropped: "12,34" (a decimal comma) topped up 1,234.00."""
    app = counter_app
    a = await swiped(app)
    before = snapshot(app.ledger, [a])
    await in_dialog(app, "topup", "amount", typed, "topup-ok")
    await app.user.should_see("金额不对：请输入大于零、最多两位小数的金额，例如 12.34。")
    assert snapshot(app.ledger, [a]) == before


async def test_an_amount_grouped_in_thousands_is_taken(counter_app: CounterApp) -> None:
    app = counter_app
    a = await swiped(app)
    await in_dialog(app, "topup", "amount", "1,234.50", "topup-ok")
    await app.user.should_see("已充值 ¥1,234.50")
    assert app.ledger.balance(a)["cash"] == 123450


@pytest.mark.parametrize("typed", ["¥12", "￥12", "￥ 12.00"])
async def test_an_amount_with_the_yuan_sign_is_taken(counter_app: CounterApp,
                                                      typed: str) -> None:
    """"¥12" was taken, but "￥12", the sign a Chinese input method types, was refused as
    no amount like 12.34."""
    app = counter_app
    a = await swiped(app)
    await in_dialog(app, "topup", "amount", typed, "topup-ok")
    await app.user.should_see("已充值 ¥12.00")
    assert app.ledger.balance(a)["cash"] == 1200


@pytest.mark.parametrize("typed", ["²", "１２", "٣"])
async def test_points_in_other_digits_are_refused(counter_app: CounterApp, typed: str) -> None:
    """str.isdigit() took them: "²" then failed in int() and the cashier saw nothing,
    "１２" redeemed 12 points."""
    app = counter_app
    a = await swiped(app, OWNER)
    before = snapshot(app.ledger, [a])
    await in_dialog(app, "redeem", "points", typed, "redeem-ok")
    await app.user.should_see("积分要填正整数。")
    await asyncio.sleep(0.1)
    assert snapshot(app.ledger, [a]) == before


async def test_an_emptied_quantity_box_sells_nothing(counter_app: CounterApp) -> None:
    """An emptied number box reads None; `value or 1` sold one use of a package for
    the whole price typed (the cashier was about to type 20)."""
    app = counter_app
    mid = member_with_card(app, cash=50000)
    await app.login(*CASHIER)
    await swipe(app)
    before = snapshot(app.ledger, [mid])
    app.user.find(marker="sell-package").click()
    uses = next(iter(app.user.find(marker="package-uses").elements))
    assert isinstance(uses, ui.number)
    uses.set_value(None)
    app.user.find(marker="package-price").type("300.00")
    app.user.find(marker="package-pay").elements.pop().set_value("stored")
    app.user.find(marker="package-ok").click()
    await app.user.should_see("数量要填 1 到 999 的整数")
    assert snapshot(app.ledger, [mid]) == before


@pytest.mark.parametrize("opener,field,ok,said", [
    ("sell-goods", "goods", "goods-ok", "请选择商品。"),
    ("sell-goods", "goods-pay", "goods-ok", "请选择付款方式。"),
    ("walk-in", "goods-pay", "goods-ok", "请选择付款方式。"),
    ("sell-package", "package-pay", "package-ok", "请选择付款方式。"),
    ("sell-package", "package-service", "package-ok", "请选择服务项目。"),
    ("walk-in-service", "pay", "consume-ok", "请选择付款方式。"),
    ("consume", "service", "consume-ok", "请选择服务项目。"),
])
async def test_a_choice_emptied_is_asked_for_in_chinese(counter_app: CounterApp, opener: str,
                                                       field: str, ok: str, said: str) -> None:
    """A select or radio emptied (None, as a crafted socket event sets it): the goods
    sale raised KeyError('None') looking its refusal up in the catalogue and said
    nothing; a payment went to the library as the text "None", refused in English."""
    app = counter_app
    mid = member_with_card(app, cash=50000)
    with_goods(app)
    await app.login(*CASHIER)
    await swipe(app)
    before = snapshot(app.ledger, [mid])
    app.user.find(marker=opener).click()
    await app.user.should_see(marker=ok)
    if opener == "sell-package":
        app.user.find(marker="package-price").type("300.00")
    choose(app, field, None)
    app.user.find(marker=ok).click()
    await app.user.should_see(said)
    await asyncio.sleep(0.1)
    assert snapshot(app.ledger, [mid]) == before and stock(app) == 10
