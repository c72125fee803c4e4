"""A page of the back office (bookings here) left open in one tab while another
operator logged in in another tab of the same browser (one PC, the next shift): the
page is its operator's, as the counter's is (Counter.on_duty). It wrote as whoever
was logged in at the click: a cashier's booking was written in the owner's name under
the cashier's header. Refused now with a sentence, nothing written; the page opened
again is the new operator's. NiceGUI's simulated user, two tabs of one cookie jar."""

from __future__ import annotations

import pytest
from app_fixtures import CASHIER, OWNER, CounterApp
from nicegui.testing.user import User
from test_app_bookings import book_at_two, open_day, seed, tomorrow
from test_app_membership import ACTIVITY
from test_app_tills import login

pytestmark = pytest.mark.asyncio


def booked_by(app: CounterApp) -> list[str]:
    """Who each booking's entry names as its operator."""
    return [str(op) for (op,) in app.ledger.storage.conn.execute(
        "SELECT op FROM entries WHERE kind = 'booking'")]


async def test_a_page_left_open_under_another_operators_login_writes_for_nobody(
        counter_app: CounterApp) -> None:
    app = counter_app
    seed(app)
    await app.login(*CASHIER)
    await open_day(app, tomorrow(app.ledger))
    tab = User(app.user.http_client)
    await tab.open("/")
    await tab.should_see(marker="search")
    tab.find(marker="logout").click()
    await tab.should_see(marker="login")
    await login(tab, *OWNER)
    assert booked_by(app) == []
    app.user.find(marker="booking-member").type("13812345678")
    app.user.find(marker="booking-time").elements.pop().set_value("14:00")
    app.user.find(marker="booking-add").click()
    await app.user.should_see("这一页的登录已经结束")
    assert booked_by(app) == []
    await open_day(app, tomorrow(app.ledger))  # opened again: the owner's page
    await book_at_two(app)
    assert booked_by(app) == [app.owner_id]


async def test_a_check_in_page_left_open_says_its_login_ended(counter_app: CounterApp) -> None:
    """The check-in page, its login ended (a logout in another tab): a member typed in
    was neither checked in nor told anything; the screen stayed as it was."""
    app = counter_app
    member = app.ledger.add_member(app.node_owner, name="王芳", phone="13800000002")
    app.ledger.set_activity(app.node_owner, "MORNING", ACTIVITY)
    await app.login(*CASHIER)
    await app.user.open("/checkin")
    await app.user.should_see(marker="checkin-who")
    tab = User(app.user.http_client)
    await tab.open("/")
    await tab.should_see(marker="search")
    tab.find(marker="logout").click()
    await tab.should_see(marker="login")
    app.user.find(marker="checkin-who").type("13800000002")
    app.user.find(marker="checkin-go").click()
    await app.user.should_see("这一页的登录已经结束")
    assert app.ledger.balance(member)["points"] == 0
