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
