"""Two tills of one shop: a card swiped on the node's own reader (PC/SC) goes to one
page, the one holding the reader (reference_app.shop.ReaderPages). It went to every
counter page in every browser: another till's member panel switched to the swiped
member under its cashier (its next top-up went to that member), a card with a PIN
replaced the other till's half-typed dialog, and a check-in screen checked in every
member who paid."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from app_fixtures import CASHIER, OWNER, CounterApp
from nicegui import core
from nicegui.testing.user import User
from test_app_membership import ACTIVITY

pytestmark = pytest.mark.asyncio


async def login(u: User, name: str, pw: str) -> None:
    await u.open("/login")
    u.find(marker="login-name").type(name)
    u.find(marker="login-password").type(pw)
    u.find(marker="login").click()
    await u.should_see(marker="search", retries=100)


def two_members(app: CounterApp) -> tuple[str, str]:
    led, o = app.ledger, app.node_owner
    x = led.add_member(o, name="王芳", phone="13800000001")
    y = led.add_member(o, name="李娜", phone="13800000002")
    led.issue_card(o, y, "CY0001")
    led.issue_card(o, x, "CX0001", pin="1234")
    return x, y


def shown(u: User, marker: str) -> list[str]:
    try:
        return [getattr(e, "text", "") for e in u.find(marker=marker).elements]
    except AssertionError:
        return []


async def second_till(app: CounterApp, other: httpx.AsyncClient, phone: str) -> User:
    """Till 1 (the reader's): the cashier, first. Till 2 (another browser): the owner,
    serving the member of `phone`."""
    await app.login(*CASHIER)
    t2 = User(other)
    await login(t2, *OWNER)
    t2.find(marker="search").type(phone)
    t2.find(marker="search-go").click()
    await t2.should_see(marker="member-name")
    return t2


async def test_a_swipe_at_one_till_leaves_the_other_tills_member(counter_app: CounterApp
                                                                  ) -> None:
    app = counter_app
    x, y = two_members(app)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(core.app),
                                 base_url="http://test") as other:
        t2 = await second_till(app, other, "13800000001")
        await asyncio.to_thread(app.reader.insert, "CY0001")  # as the reader's thread does
        await app.user.should_see("李娜")
        await asyncio.sleep(0.3)
        assert shown(t2, "member-name") == ["王芳"]
        t2.find(marker="topup").click()
        t2.find(marker="amount").type("100")
        t2.find(marker="topup-ok").click()
        await t2.should_see("已充值 ¥100.00")
        assert (app.ledger.balance(x)["cash"], app.ledger.balance(y)["cash"]) == (10000, 0)


async def test_a_pin_card_at_one_till_keeps_the_other_tills_dialog(counter_app: CounterApp
                                                                    ) -> None:
    app = counter_app
    two_members(app)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(core.app),
                                 base_url="http://test") as other:
        t2 = await second_till(app, other, "13800000002")
        t2.find(marker="topup").click()
        t2.find(marker="amount").type("6000")
        await asyncio.to_thread(app.reader.insert, "CX0001")  # a card with a PIN
        await app.user.should_see(marker="pin")
        await asyncio.sleep(0.3)
        assert shown(t2, "amount") and not shown(t2, "pin")


async def test_a_till_takes_the_reader_by_its_button(counter_app: CounterApp) -> None:
    app = counter_app
    two_members(app)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(core.app),
                                 base_url="http://test") as other:
        t2 = await second_till(app, other, "13800000001")
        await app.user.should_not_see(marker="reader-here")  # till 1 holds it
        t2.find(marker="reader-here").click()
        await asyncio.to_thread(app.reader.insert, "CY0001")
        await t2.should_see("李娜")
        await app.user.should_see(marker="reader-here")  # told it no longer holds it
        await app.user.should_not_see("李娜")


async def test_a_swipe_to_pay_checks_nobody_in_at_another_browsers_screen(
        counter_app: CounterApp) -> None:
    app = counter_app
    _x, y = two_members(app)
    app.ledger.set_activity(app.node_owner, "MORNING", ACTIVITY)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(core.app),
                                 base_url="http://test") as other:
        await app.login(*CASHIER)  # till 1: the counter
        t2 = User(other)
        await login(t2, *OWNER)
        await t2.open("/checkin")  # a reception screen
        await t2.should_see(marker="activity")
        await asyncio.to_thread(app.reader.insert, "CY0001")  # 李娜 pays at till 1
        await app.user.should_see("李娜")
        await asyncio.sleep(0.5)
        assert [e for e in app.ledger.history(y, limit=20) if e["kind"] == "checkin"] == []
