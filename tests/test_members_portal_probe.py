"""A member on the self-service pages trying to see or change what is not theirs: a
tab left open after signing out, guesses spread over many cards, one phone's code
given with another phone, another member's booking cancelled in their name, and the
pages' own operator at the counter's login. The real app and store through the
member port's gate (tests/test_members_portal.py's `portal_app`); after a refusal
the store is exactly as it was (`helpers.snapshot`).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
from helpers import snapshot
from nicegui import core
from nicegui.testing.user import User
from test_members_portal import (
    CARD_A,
    CARD_B,
    PHONE_A,
    PHONE_B,
    PIN,
    PortalApp,
    _portal_app,
    fill_booking,
    tomorrow,
)

from crdtledger import operations
from crdtledger.errors import PermissionDenied
from crdtledger.model import owner_of, self_service_of
from crdtledger.throttle import LoginThrottle
from reference_app.members_portal import MembersSide, PageLoads

pytestmark = pytest.mark.asyncio


@pytest_asyncio.fixture
async def portal(tmp_path: Path) -> AsyncIterator[PortalApp]:
    async for app in _portal_app(tmp_path, port=False):
        yield app


async def test_a_tab_left_open_after_signing_out_elsewhere_shows_and_writes_nothing_new(
        portal: PortalApp) -> None:
    app = portal
    await app.card_sign_in(CARD_A, PIN)
    await app.user.should_see("¥500.00")
    await fill_booking(app)
    # Another tab of the same browser (the same cookie) signs out.
    other = User(app.members)
    await other.open("/m")
    other.find(marker="sign-out").click()
    await other.should_see(marker="send-code")
    # A top-up made meanwhile does not reach the page left open...
    app.ledger.topup(owner_of("SH01"), app.ids["a"], 10000)
    await asyncio.sleep(0.6)  # the pages look again 0.25 s after a change
    await app.user.should_not_see("¥600.00", retries=1)
    # ...and its dialog books nothing.
    before = snapshot(app.ledger, [app.ids["a"]])
    app.user.find(marker="book-ok").click()
    await app.user.should_see(marker="send-code")
    assert snapshot(app.ledger, [app.ids["a"]]) == before


async def test_after_signing_out_the_same_browser_sees_the_sign_in_only(
        portal: PortalApp) -> None:
    app = portal
    await app.card_sign_in(CARD_A, PIN)
    await app.user.should_see("张伟")
    app.user.find(marker="sign-out").click()
    await app.user.should_see(marker="send-code")
    for crafted in ("/m", f"/m?member={app.ids['a']}"):
        await app.user.open(crafted)
        await app.user.should_see(marker="send-code")
        await app.user.should_not_see("张伟", retries=1)
        await app.user.should_not_see("¥500.00", retries=1)


async def test_guesses_spread_over_many_cards_are_throttled_by_address(
        portal: PortalApp) -> None:
    """Password spraying: one wrong PIN per card, five cards, from one address; the sixth
    attempt waits even with a right PIN of a card not tried before."""
    app = portal
    for card in (CARD_B, "C30003", "C90001", "C90002", "C90003"):
        await app.card_sign_in(card, "0000")
        await app.user.should_not_see(marker="member-name", retries=1)
    await app.card_sign_in(CARD_A, PIN)
    await app.user.should_see("尝试次数太多")
    await app.user.should_not_see(marker="member-name", retries=1)


async def test_an_own_sign_in_between_guesses_does_not_forgive_the_address(
        portal: PortalApp) -> None:
    """A stranger holding a card of their own signed in with it every four guesses:
    each sign-in forgave the address's failures, and one address tried PINs on any
    number of cards (16 of 16 checked against a limit of 5). A sign-in forgives its
    card and its own attempt on the address; a member signing in again and again from
    one address (a shop's Wi-Fi) is never locked out by it."""
    app = portal
    app.portal.checks = LoginThrottle(clock=lambda: 1000.0)  # no lock runs out meanwhile
    for _ in range(8):  # the member's own sign-ins: none of them counts against the address
        await app.card_sign_in(CARD_A, PIN)
        await app.user.should_see(marker="member-name")
        app.user.find(marker="sign-out").click()
        await app.user.should_see(marker="send-code")
    for card in ("C90001", "C90002", "C90003", "C90004"):
        await app.card_sign_in(card, "0000")
        await app.user.should_see("卡号或密码不对")
    await app.card_sign_in(CARD_A, PIN)  # the stranger's own card
    await app.user.should_see(marker="member-name")
    app.user.find(marker="sign-out").click()
    await app.user.should_see(marker="send-code")
    await app.card_sign_in("C90005", "0000")  # the address's fifth wrong PIN: locked
    await app.user.should_see("卡号或密码不对")
    await app.card_sign_in(CARD_B, "0000")
    await app.user.should_see("尝试次数太多")
    await app.card_sign_in(CARD_A, PIN)  # the own card waits too
    await app.user.should_see("尝试次数太多")
    await app.user.should_not_see(marker="member-name", retries=1)


async def test_one_phones_code_does_not_sign_in_another_phone(portal: PortalApp) -> None:
    app = portal
    await app.ask_code(PHONE_A)
    code = app.last_sms_code()
    app.user.find(marker="phone").clear().type(PHONE_B)
    await app.enter_code(code)
    await app.user.should_see("验证码不对或已过期")
    await app.user.should_not_see("李娜", retries=1)
    await app.user.should_not_see("张伟", retries=1)


async def test_the_pages_operator_cancels_or_books_for_no_other_member(
        portal: PortalApp) -> None:
    """Behind the page's own check (a booking not the member's reads as unknown), the
    library refuses the self-service operator a booking of someone else's."""
    app = portal
    theirs = operations.run(app.ledger, owner_of("SH01"), "booking.add", {
        "member": app.ids["b"], "technician": "T01", "service": "BODY90",
        "at": f"{tomorrow(app.ledger)}T10:00"})
    before = snapshot(app.ledger, [app.ids["a"], app.ids["b"]])
    with pytest.raises(PermissionDenied):
        operations.run(app.ledger, self_service_of("SH01"), "booking.cancel",
                       {"booking": theirs["booking"], "member": app.ids["a"]})
    for name, params in (("topup", {"member": app.ids["a"], "amount": 100}),
                         ("debit", {"member": app.ids["b"], "amount": 100}),
                         ("member.edit", {"member": app.ids["b"], "name": "x"})):
        with pytest.raises(PermissionDenied):
            operations.run(app.ledger, self_service_of("SH01"), name, params)
    assert snapshot(app.ledger, [app.ids["a"], app.ids["b"]]) == before


async def test_the_pages_operator_cannot_log_in_at_the_counter(portal: PortalApp) -> None:
    app = portal
    counter = User(app.counter)
    await counter.open("/login")
    counter.find(marker="login-name").type(self_service_of("SH01"))
    counter.find(marker="login-password").type("")
    counter.find(marker="login").click()
    await counter.should_see("姓名或密码不对", retries=100)
    await counter.should_not_see(marker="search", retries=1)


async def test_the_member_ports_session_cookie_is_never_sent_over_plain_http(
        portal: PortalApp) -> None:
    """The cookie says who is signed in. The counter's port is plain HTTP by default
    (127.0.0.1:8080) and a browser sends a cookie without Secure to every port of its
    host over plain HTTP, so one hop on the shop's Wi-Fi could read it and be the
    member: on the member port (HTTPS only) it is Secure whatever the counter's is."""
    async with httpx.AsyncClient(transport=httpx.ASGITransport(MembersSide(core.app)),
                                 base_url="https://members.test") as browser:
        answer = await browser.get("/m")
    cookies = answer.headers.get_list("set-cookie")
    assert cookies
    for cookie in cookies:
        flags = [f.strip().lower() for f in cookie.split(";")[1:]]
        assert "secure" in flags, cookie


async def test_page_loads_from_one_address_are_limited(portal: PortalApp) -> None:
    """A page fetched holds its client about a minute whether or not its socket ever
    opens (a signed-in member's follows every commit), so fetches in a loop from one
    address held memory and work without bound. Sixty loads a minute an address; the
    next is told to wait, in both languages; another address, and a minute later the
    same one, are served."""
    now = [0.0]
    side = MembersSide(core.app, PageLoads(limit=60, clock=lambda: now[0]))

    def browser(address: str) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.ASGITransport(side, client=(address, 4000)),
                                 base_url="https://members.test")

    async with browser("203.0.113.9") as one, browser("203.0.113.10") as other:
        codes = [(await one.get("/m")).status_code for _ in range(60)]
        refused = await one.get("/m")
        assert set(codes) == {200} and refused.status_code == 429
        assert "请一分钟后再试" in refused.text and "try again in a minute" in refused.text
        assert (await other.get("/m")).status_code == 200
        now[0] += 61
        assert (await one.get("/m")).status_code == 200
