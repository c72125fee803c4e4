"""A counter tab whose session ended while one of its dialogs was open: the cashier
logged out in another tab of the same browser, or another operator logged in there
(the same PC, the next shift). Its writes are refused (Counter.on_duty); what the
page says when the cashier confirms is tested here: the tab went to the login page,
or on to the other operator's counter, without a word, and a top-up just read out
and perhaps paid for at the till was never written. NiceGUI's simulated user, two
tabs of one browser (one cookie jar), against a real node and store."""

from __future__ import annotations

import pytest
from app_fixtures import CASHIER, OWNER, CounterApp
from helpers import snapshot
from nicegui.testing.user import User
from test_app_counter import member_with_card, swipe
from test_app_counter_stale import open_dialog
from test_app_shop import with_goods
from test_app_tills import login

pytestmark = pytest.mark.asyncio

UNDONE = "刚才确认的操作没有执行：这一页的登录已经结束"


async def second_tab(app: CounterApp) -> User:
    """Another tab of the browser the cashier works in, on the counter."""
    tab = User(app.user.http_client)
    await tab.open("/")
    await tab.should_see(marker="search")
    return tab


@pytest.mark.parametrize("what", ["topup", "consume", "package"])
async def test_a_dialog_confirmed_after_a_logout_in_another_tab_says_it_was_not_done(
        counter_app: CounterApp, what: str) -> None:
    app = counter_app
    mid = member_with_card(app, cash=50000)
    await app.login(*CASHIER)
    await swipe(app)
    ok = await open_dialog(app, what)
    tab = await second_tab(app)
    tab.find(marker="logout").click()
    await tab.should_see(marker="login")
    before = snapshot(app.ledger, [mid])
    app.user.find(marker=ok).click()
    await app.user.should_see(marker="login-undone")
    await app.user.should_see(UNDONE)
    assert snapshot(app.ledger, [mid]) == before


async def test_a_dialog_confirmed_after_another_operator_logged_in_says_it_was_not_done(
        counter_app: CounterApp) -> None:
    """The next shift's owner logged in in another tab: the cashier's tab went on to the
    owner's counter, the cashier's top-up of ¥100.00 never written and nothing said."""
    app = counter_app
    mid = member_with_card(app)
    await app.login(*CASHIER)
    await swipe(app)
    ok = await open_dialog(app, "topup")
    tab = await second_tab(app)
    tab.find(marker="logout").click()
    await tab.should_see(marker="login")
    await login(tab, *OWNER)
    before = snapshot(app.ledger, [mid])
    app.user.find(marker=ok).click()
    await app.user.should_see(marker="search", retries=100)
    await app.user.should_see(UNDONE)
    assert snapshot(app.ledger, [mid]) == before


async def test_a_page_whose_session_ended_unseen_says_nothing_was_undone(
        counter_app: CounterApp) -> None:
    """A tab that goes to the login by itself (a sale elsewhere redraws it) confirmed
    nothing: the login page says no more than it did."""
    app = counter_app
    member_with_card(app)
    await app.login(*CASHIER)
    await swipe(app)
    tab = await second_tab(app)
    tab.find(marker="logout").click()
    await tab.should_see(marker="login")
    app.user.find(marker="search").type("13812345678")
    app.user.find(marker="search-go").click()
    await app.user.should_see(marker="login")
    await app.user.should_not_see(marker="login-undone")



async def open_in(tab: User, what: str) -> str:
    """`what`'s dialog opened in `tab` on the member on screen, filled in; its confirm."""
    if what == "topup":
        tab.find(marker="topup").click()
        tab.find(marker="amount").type("100")
        return "topup-ok"
    if what == "consume":
        tab.find(marker="consume").click()
        return "consume-ok"
    if what == "goods":
        tab.find(marker="sell-goods").click()
        return "goods-ok"
    if what == "redeem":
        tab.find(marker="redeem").click()
        tab.find(marker="points").type("100")
        tab.find(marker="gift").type("毛巾")
        return "redeem-ok"
    tab.find(marker="sell-package").click()
    tab.find(marker="package-price").type("300.00")
    tab.find(marker="package-pay").elements.pop().set_value("stored")
    return "package-ok"


DONE = {"topup": "已充值 ¥100.00", "consume": "已消费", "package": "已售套餐",
        "goods": "已售 精油 ×1", "redeem": "已兑换 100 积分"}


def books(app: CounterApp, member: str) -> tuple[dict[str, object], int]:
    return app.ledger.balance(member), len(app.ledger.history(member, limit=100))


@pytest.mark.parametrize("what", ["topup", "consume", "package", "goods", "redeem"])
async def test_the_same_sale_confirmed_in_two_tabs_is_done_once(
        counter_app: CounterApp, what: str) -> None:
    """One operator, two tabs of one browser, each with its dialog open on the same sale
    for the same member: both confirmed, the card took a top-up paid once at the till
    twice (or the member paid for a service twice). The second is refused with a
    sentence; opened again, it is taken (a second one meant)."""
    app = counter_app
    mid = member_with_card(app, cash=100000)
    with_goods(app)
    for _ in range(3):  # 128 points each
        app.ledger.debit(app.node_owner, mid, service="FOOT60")
    await app.login(*OWNER)  # a cashier redeems no points
    await swipe(app)
    tab = await second_tab(app)
    tab.find(marker="search").type("13812345678")
    tab.find(marker="search-go").click()
    await tab.should_see(marker="member-name")
    ok = await open_in(app.user, what)
    await open_in(tab, what)
    before = books(app, mid)
    app.user.find(marker=ok).click()
    await app.user.should_see(DONE[what])
    once = books(app, mid)
    assert once[1] == before[1] + 1
    tab.find(marker=ok).click()
    await tab.should_see("您刚刚在另一个页面给这位会员做了同样的一笔")
    assert books(app, mid) == once
    await open_in(tab, what)
    tab.find(marker=ok).click()
    await tab.should_see(DONE[what])
    assert books(app, mid)[1] == once[1] + 1


async def test_a_refund_confirmed_in_two_tabs_is_paid_back_once(
        counter_app: CounterApp) -> None:
    """¥10.00 of a sale typed in two tabs' refund dialogs: both confirmed, the member was
    paid back ¥20.00 (an amount typed stands as typed, and ¥128.00 was left)."""
    app = counter_app
    mid = member_with_card(app, cash=50000)
    app.ledger.debit(app.node_owner, mid, service="FOOT60")
    await app.login(*OWNER)
    await swipe(app)
    tab = await second_tab(app)
    tab.find(marker="search").type("13812345678")
    tab.find(marker="search-go").click()
    await tab.should_see(marker="member-name")
    for u in (app.user, tab):
        u.find(marker="refund").click()
        u.find(marker="refund-amount").type("10")
    app.user.find(marker="refund-ok").click()
    await app.user.should_see("已退款 ¥10.00")
    once = books(app, mid)
    tab.find(marker="refund-ok").click()
    await tab.should_see("您刚刚在另一个页面给这位会员做了同样的一笔")
    assert books(app, mid) == once
