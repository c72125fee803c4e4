"""Member self-service pages (reference_app/members_portal.py) against a real node.

NiceGUI's simulated user opens the member pages through `MembersSide`, the very
ASGI wrapper the member port serves, so the gate is the production one; the
counter's port is the app without it. One-time codes go through the node's real
gateways as DATA/node.toml configures them: the log gateway for SMS (peer.gateways,
the demo's) and SMTP to a real aiosmtpd server on 127.0.0.1. The HTTPS port is a
real uvicorn server checked with aiohttp trusting the chain's CA only, and one
headless Chromium walk-through drives the pages on a phone-sized window.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import importlib
import os
import re
import signal
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from email import message_from_bytes
from pathlib import Path

import aiohttp
import httpx
import pytest
import pytest_asyncio
from aiosmtpd.smtp import SMTP, Envelope, Session
from app_fixtures import make_store, simulation_over
from conftest import free_port
from helpers import registered_apart, sqlite_steps, sync
from nicegui import core, ui
from nicegui.testing.general import nicegui_reset_globals, prepare_simulation
from nicegui.testing.user import User
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver
from test_browser import CHROMEDRIVER, CHROMIUM, click, type_into, wait_for, xpath

from crdtledger import bookings, operations, views
from crdtledger.ledger import Ledger, owner_of
from crdtledger.model import self_service_of
from peer.chain import enrol
from peer.node import Config
from reference_app.app import build
from reference_app.i18n import money
from reference_app.members_portal import (
    MembersConfig,
    MembersSide,
    Portal,
    issue_cert,
    socket_packet_ok,
)
from reference_app.readers import ScriptedReader
from reference_app.shop import Shop

pytestmark = pytest.mark.asyncio

PHONE_A, PHONE_B = "13812345678", "13900001111"
CARD_A, CARD_B, PIN = "C10001", "C20002", "4321"
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


class Mailbox:
    """What the aiosmtpd stand-in received (an SMTP server for real, on 127.0.0.1)."""

    def __init__(self) -> None:
        self.mails: list[Envelope] = []

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.mails.append(envelope)
        return "250 OK"


@dataclass
class PortalApp:
    user: User  # the member port (through MembersSide)
    counter: httpx.AsyncClient  # the counter's port: the app without the member gate
    members: httpx.AsyncClient
    shop: Shop
    portal: Portal
    data_dir: Path
    mailbox: Mailbox
    smtp: asyncio.Server  # the aiosmtpd stand-in's listener
    owner_id: str  # the store's owner operator ("boss"), not the node's built-in one
    ids: dict[str, str] = field(default_factory=dict)

    @property
    def ledger(self) -> Ledger:
        return self.shop.ledger

    def last_sms_code(self) -> str:
        sent = self.shop.node.gateways["sms"].sent  # type: ignore[attr-defined]
        return code_in(str(sent[-1].body))

    async def ask_code(self, phone: str) -> None:
        await self.user.open("/m")
        self.user.find(marker="phone").type(phone)
        self.user.find(marker="send-code").click()
        # The answer is the same whether the phone is a member's (and the code sent) or not.
        await self.user.should_see("如果这个手机号是会员的", retries=100)
        # The message goes out in a task of its own (the answer does not wait for it).
        await asyncio.gather(*self.portal._sending)

    async def enter_code(self, code: str) -> None:
        self.user.find(marker="code").clear().type(code)
        self.user.find(marker="sign-in-phone").click()

    async def card_sign_in(self, card: str, pin: str) -> None:
        await self.user.open("/m")
        self.user.find(marker="tab-card").click()
        self.user.find(marker="card").clear().type(card)
        self.user.find(marker="pin").clear().type(pin)
        await self.sign_in_card()

    async def sign_in_card(self) -> None:
        """Click the card's sign-in and wait for its answer: the PIN is checked in a
        worker thread, so the page says so (or goes to the member's page) a moment
        later."""
        page = self.user.client
        error = self.user.find(marker="card-error").elements.pop()
        self.user.find(marker="sign-in-card").click()
        for _ in range(1000):
            if error.text or self.user.client is not page:
                return
            await asyncio.sleep(0.01)


def code_in(text: str) -> str:
    match = re.search(r"\b(\d{6})\b", text)
    assert match, text
    return match.group(1)


def write_notify(data: Path, smtp_port: int) -> None:
    (data / "node.toml").write_text(
        '[notify.sms]\nkind = "log"\n\n'
        f'[notify.email]\nkind = "smtp"\nhost = "127.0.0.1"\nport = {smtp_port}\n'
        'starttls = false\nsender = "shop@example.com"\n', encoding="utf-8")


def seed_members(data: Path) -> dict[str, str]:
    with Ledger.open(data) as ledger:
        owner = ledger.owner
        a = ledger.add_member(owner, name="张伟", phone=PHONE_A)
        ledger.issue_card(owner, a, CARD_A, pin=PIN)
        ledger.topup(owner, a, 50000)
        b = ledger.add_member(owner, name="李娜", phone=PHONE_B)
        ledger.issue_card(owner, b, CARD_B, pin=PIN)
        ledger.topup(owner, b, 9900)
        c = ledger.add_member(owner, name="王芳", phone="13700002222")
        ledger.issue_card(owner, c, "C30003")  # no PIN
        operations.run(ledger, owner, "technician.add",
                       {"code": "T01", "name": "小李", "services": "FOOT60,BODY90"})
    return {"a": a, "b": b, "c": c}


@pytest_asyncio.fixture
async def portal_app(tmp_path: Path) -> AsyncIterator[PortalApp]:
    async for app in _portal_app(tmp_path, port=False):
        yield app


async def _portal_app(tmp_path: Path, *, port: bool) -> AsyncIterator[PortalApp]:
    data, owner_id, _cashier = make_store(tmp_path)
    ids = seed_members(data)
    mailbox = Mailbox()
    loop = asyncio.get_running_loop()
    smtp = await loop.create_server(lambda: SMTP(mailbox), "127.0.0.1", 0)
    write_notify(data, smtp.sockets[0].getsockname()[1])
    members = None
    if port:
        cert, key = issue_cert(tmp_path / "chain", data, ["127.0.0.1", "localhost"])
        members = MembersConfig("127.0.0.1", 0, cert, key)
    config = Config(data, listen=("127.0.0.1", 0), api=("127.0.0.1", 0), mdns=False)
    with nicegui_reset_globals():
        os.environ["NICEGUI_USER_SIMULATION"] = "true"
        try:
            prepare_simulation()
            shop = build(config, readers=[ScriptedReader()], members=members,
                         member_pages=True)
            ui.run(storage_secret="test secret")
            async with core.app.router.lifespan_context(core.app), \
                    httpx.AsyncClient(transport=httpx.ASGITransport(MembersSide(core.app)),
                                      base_url="https://members.test") as m, \
                    httpx.AsyncClient(transport=httpx.ASGITransport(core.app),
                                      base_url="http://counter.test") as c:
                # NiceGUI's reset drops the modules that define pages, so the portal is
                # that of the module build() imported just now, not of ours.
                portal = importlib.import_module("reference_app.members_portal").portal()
                yield PortalApp(User(m), c, m, shop, portal, data, mailbox, smtp, owner_id,
                                ids)
        finally:
            simulation_over()
            smtp.close()


# --- signing in -------------------------------------------------------------------------


async def test_sign_in_with_the_code_from_the_sms_gateway_shows_own_balance(
        portal_app: PortalApp) -> None:
    app = portal_app
    await app.ask_code(PHONE_A)
    await app.user.should_see("验证码已发到 138****5678")  # masked
    sent = app.shop.node.gateways["sms"].sent  # type: ignore[attr-defined]
    assert sent[-1].to == PHONE_A and sent[-1].channel == "sms"
    await app.enter_code(app.last_sms_code())
    await app.user.should_see(marker="member-name")
    for text in ("张伟", "¥500.00", "138****5678"):
        await app.user.should_see(text)
    for text in ("李娜", "¥99.00", PHONE_A):  # another member, the whole phone: never
        await app.user.should_not_see(text)


async def test_sign_in_with_the_code_mailed_through_smtp(portal_app: PortalApp) -> None:
    app = portal_app
    app.ledger.edit_member(owner_of("SH01"), app.ids["b"], fields={"email": "lina@example.com"})
    app.shop.node.gateways.pop("sms")  # a shop with e-mail only
    await app.ask_code(PHONE_B)
    assert len(app.mailbox.mails) == 1
    mail = app.mailbox.mails[0]
    assert mail.rcpt_tos == ["lina@example.com"]
    assert isinstance(mail.content, bytes)
    body = message_from_bytes(mail.content).get_payload(decode=True)
    assert isinstance(body, bytes)
    await app.enter_code(code_in(body.decode()))
    await app.user.should_see("李娜")
    await app.user.should_see("¥99.00")
    await app.user.should_not_see("张伟")


async def test_a_gateway_failure_is_the_shops_to_read_not_the_askers(
        portal_app: PortalApp, caplog: pytest.LogCaptureFixture) -> None:
    app = portal_app
    app.ledger.edit_member(owner_of("SH01"), app.ids["b"], fields={"email": "lina@example.com"})
    gateways = app.shop.node.gateways
    gateways.pop("sms")
    app.smtp.close()  # the mail server is down
    await app.smtp.wait_closed()
    await app.ask_code(PHONE_B)  # the same answer as ever
    assert "member code to 139****1111 not sent" in caplog.text
    assert not app.mailbox.mails
    gateways.clear()  # no gateway at all: a setting, said to everyone alike
    await app.user.open("/m")
    app.user.find(marker="phone").type("13600009999")
    app.user.find(marker="send-code").click()
    await app.user.should_see("本店还没有开通验证码短信")


async def test_an_unknown_phone_is_told_the_same_and_nothing_is_sent(
        portal_app: PortalApp) -> None:
    app = portal_app
    await app.ask_code("13600009999")
    await app.user.should_see("如果这个手机号是会员的")
    assert not app.shop.node.gateways["sms"].sent  # type: ignore[attr-defined]


async def test_the_answer_to_send_me_a_code_costs_the_same_for_a_members_phone(
        portal_app: PortalApp) -> None:
    """Whether a phone is a member's is not told by the time of the answer either: the
    member's lookup and the code were made before send_code returned (241-258 SQLite
    steps for a member's phone, 13 for nobody's). Counted up to the answer, each phone
    from an address of its own; the member's codes are still sent after it."""
    app = portal_app

    def answer_steps(phone: str, address: str) -> int:
        asked = app.portal.send_code(phone, address)

        def answer() -> None:  # send_code to its answer, without yielding to the loop
            with pytest.raises(StopIteration):
                asked.send(None)
        return sqlite_steps(app.ledger, answer)

    members = [answer_steps(p, f"203.0.113.{i}")
               for i, p in enumerate((PHONE_A, PHONE_B, "13700002222"))]
    nobody = [answer_steps(p, f"198.51.100.{i}")
              for i, p in enumerate(("13600009991", "13600009992", "13600009993"))]
    assert members == nobody, (members, nobody)
    await asyncio.gather(*app.portal._sending)
    sent = app.shop.node.gateways["sms"].sent  # type: ignore[attr-defined]
    assert sorted(m.to for m in sent) == sorted((PHONE_A, PHONE_B, "13700002222"))


async def test_a_wrong_code_is_refused_then_throttled_and_a_code_works_once(
        portal_app: PortalApp) -> None:
    app = portal_app
    await app.ask_code(PHONE_A)
    right = app.last_sms_code()
    wrong = f"{(int(right) + 1) % 1_000_000:06d}"
    for _ in range(4):
        await app.enter_code(wrong)
        await app.user.should_see("验证码不对或已过期")
        await app.user.should_not_see(marker="member-name")
    await app.enter_code(right)  # four wrong tries: the code still stands
    await app.user.should_see(marker="member-name")
    app.user.find(marker="sign-out").click()
    await app.user.should_see(marker="send-code")
    app.user.find(marker="phone").type(PHONE_A)
    await app.enter_code(right)  # used once already
    await app.user.should_see("验证码不对或已过期")
    for _ in range(5):
        await app.enter_code(wrong)
    await app.user.should_see("尝试次数太多")
    await app.ask_code(PHONE_A)
    await app.enter_code(app.last_sms_code())  # locked: even a right code waits
    await app.user.should_see("尝试次数太多")
    await app.user.should_not_see(marker="member-name")


async def test_asking_for_codes_is_throttled(portal_app: PortalApp) -> None:
    app = portal_app
    for _ in range(5):
        await app.ask_code(PHONE_A)
    await app.user.open("/m")
    app.user.find(marker="phone").type(PHONE_A)
    app.user.find(marker="send-code").click()
    await app.user.should_see("验证码请求太频繁")
    assert len(app.shop.node.gateways["sms"].sent) == 5  # type: ignore[attr-defined]


async def test_codes_sent_are_capped_node_wide_and_refused_alike(
        portal_app: PortalApp, monkeypatch: pytest.MonkeyPatch) -> None:
    """The per-phone and per-address throttles do not bound a stranger with many
    addresses and a list of members' phones: each code is an SMS the shop pays for.
    Past the node's hourly cap every request is refused, a member's phone or not,
    until the hour has room. Every request taken counts alike, and the wait is in
    minutes: counting only codes sent, and to the second, told a stranger near the cap
    whether the phone just asked for was a member's."""
    app = portal_app
    module = importlib.import_module("reference_app.members_portal")
    monkeypatch.setattr(module, "CODES_PER_HOUR", 3)
    now = [1000.0]
    app.portal.clock = lambda: now[0]
    await app.portal.send_code(PHONE_A, "203.0.113.1")
    await app.portal.send_code("13700000000", "203.0.113.3")  # nobody's: counted alike
    await app.portal.send_code(PHONE_B, "203.0.113.2")
    for phone in (PHONE_A, "13700000001"):
        with pytest.raises(module.SignInRefused, match=r"太频繁.*3600 秒"):
            await app.portal.send_code(phone, "203.0.113.4")
    await asyncio.gather(*app.portal._sending)
    assert len(app.shop.node.gateways["sms"].sent) == 2  # type: ignore[attr-defined]
    now[0] += 3600.5  # the hour has room again
    await app.portal.send_code(PHONE_B, "203.0.113.5")
    await asyncio.gather(*app.portal._sending)
    assert len(app.shop.node.gateways["sms"].sent) == 3  # type: ignore[attr-defined]


async def test_card_and_pin(portal_app: PortalApp) -> None:
    app = portal_app
    await app.card_sign_in(CARD_A, "0000")
    await app.user.should_see("卡号或密码不对")
    await app.card_sign_in("C99999", PIN)  # no such card: the same words
    await app.user.should_see("卡号或密码不对")
    # A card without a PIN cannot sign in; the words are a wrong PIN's (they told a
    # stranger which numbers are cards a till takes without a PIN), with the way in.
    await app.card_sign_in("C30003", "")
    await app.user.should_see("没有设密码的卡请用手机验证码登录")
    await app.card_sign_in(CARD_A, PIN)
    await app.user.should_see("¥500.00")
    await app.user.should_see("张伟")


async def test_a_wrong_pin_is_throttled(portal_app: PortalApp) -> None:
    app = portal_app
    for _ in range(5):
        await app.card_sign_in(CARD_B, "0000")
        await app.user.should_see("卡号或密码不对")
    await app.card_sign_in(CARD_B, PIN)
    await app.user.should_see("尝试次数太多")
    await app.user.should_not_see(marker="member-name")
    # The page's own lock: the node's, shared with the till, let any stranger keep a
    # member's card locked at the counter.
    assert app.ledger.use_card(CARD_B, PIN)["card_no"] == CARD_B


async def test_a_card_sign_in_checks_its_pin_off_the_loop(
        portal_app: PortalApp, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each card sign-in ran scrypt (36-84 ms; an unknown card a dummy of the same
    cost) on the event loop that the node, the sync and every till's page share, for
    anyone on the member port. It runs in a worker thread, as the counter's login
    does; the answers are the same, and a card reported lost while its PIN is being
    checked signs nobody in."""
    import threading

    import crdtledger.auth as auth
    import crdtledger.cards as cards

    app = portal_app
    module = importlib.import_module("reference_app.members_portal")
    loop = asyncio.get_running_loop()
    loop_thread = threading.get_ident()
    ran_in: list[int] = []
    lose: list[str] = []  # a card to report lost while its PIN is checked
    real = auth.check_secret

    def checking(secret: str, stored: str) -> bool:
        ran_in.append(threading.get_ident())
        if lose and threading.get_ident() != loop_thread:
            async def report() -> None:
                app.ledger.report_lost(owner_of("SH01"), lose.pop())
            asyncio.run_coroutine_threadsafe(report(), loop).result(10)
        return real(secret, stored)
    for m in (auth, cards, module):
        monkeypatch.setattr(m, "check_secret", checking)
    await app.card_sign_in(CARD_A, "0000")
    await app.user.should_see("卡号或密码不对")
    await app.card_sign_in("C99999", PIN)  # no such card: a dummy check, the same words
    await app.user.should_see("卡号或密码不对")
    await app.card_sign_in(CARD_A, PIN)
    await app.user.should_see(marker="member-name")
    app.user.find(marker="sign-out").click()
    await app.user.should_see(marker="send-code")
    lose.append(CARD_B)
    await app.card_sign_in(CARD_B, PIN)  # right, but lost meanwhile
    await app.user.should_see("卡号或密码不对")
    await app.user.should_not_see(marker="member-name", retries=1)
    assert app.ledger.card(CARD_B)["status"] == "lost"
    assert len(ran_in) == 4 and loop_thread not in ran_in


async def test_a_sign_in_box_set_to_no_text_is_refused_like_a_wrong_one(
        portal_app: PortalApp) -> None:
    """A hand-made socket event set a box to a list or a number: the handlers raised
    AttributeError (.strip) instead of answering."""
    app = portal_app
    await app.user.open("/m")
    app.user.find(marker="tab-card").click()
    app.user.find(marker="card").elements.pop().set_value(12345)
    app.user.find(marker="pin").elements.pop().set_value(["0000"])
    await app.sign_in_card()
    await app.user.should_see("卡号或密码不对")


async def test_what_cannot_be_a_phone_or_card_is_throttled_under_one_name(
        portal_app: PortalApp) -> None:
    """A typed phone or card number was a throttle key before its length was checked:
    a sign-in box holds what one socket.io message carries (a megabyte), and each such
    attempt from a new address was a key of its own, kept a day. What cannot be a
    phone or a card number is counted under one name, so it is still throttled."""
    app = portal_app
    module = importlib.import_module("reference_app.members_portal")
    app.portal.checks = module.LoginThrottle(clock=lambda: 1000.0)
    huge = "9" * 100_000

    async def by_phone(i: int) -> object:
        return app.portal.check_code(f"{i}{huge}", "123456", f"203.0.113.{i}")

    async def by_card(i: int) -> object:
        return await app.portal.check_card(f"C{i}{huge}", "0000", f"198.51.100.{i}")

    for attempt in (by_phone, by_card):
        for i in range(5):
            with pytest.raises(module.SignInRefused, match="不对"):
                await attempt(i)
        with pytest.raises(module.SignInRefused, match="尝试次数太多"):
            await attempt(5)  # a sixth address: the one name is locked
    # Per kind one name, and one key per address: nothing of the typed text.
    assert len(app.portal.checks) == 2 + 10


async def test_a_lost_card_is_refused(portal_app: PortalApp) -> None:
    app = portal_app
    app.ledger.report_lost(owner_of("SH01"), CARD_A)
    await app.card_sign_in(CARD_A, PIN)
    await app.user.should_see("卡号或密码不对")  # not "reported lost": to anyone asking
    await app.user.should_not_see(marker="member-name")


async def test_a_sign_in_by_card_ends_when_the_card_is_reported_lost(
        portal_app: PortalApp) -> None:
    """A thief signed in with a stolen card and its PIN kept the member's pages (and
    booked in the member's name) for the sign-in's two hours after the card was
    reported lost and replaced. A sign-in by phone code is not tied to a card."""
    app = portal_app
    await app.card_sign_in(CARD_A, PIN)
    await app.user.should_see(marker="member-name")
    app.ledger.report_lost(owner_of("SH01"), CARD_A)
    await app.user.open("/m")
    await app.user.should_see(marker="card")  # the sign-in form again
    await app.user.should_not_see(marker="member-name", retries=1)


async def test_points_with_expiry_packages_and_history(portal_app: PortalApp) -> None:
    app = portal_app
    owner = owner_of("SH01")
    a = app.ids["a"]
    for _ in range(2):  # two lots expiring the same day: one line
        operations.run(app.ledger, owner, "debit", {"member": a, "service": "FOOT60"})
    operations.run(app.ledger, owner, "package.sell",
                   {"member": a, "service": "BODY90", "uses": 5, "price": 80000})
    expires = views.points(app.ledger, a)["lots"][0]["expires"]
    until = (dt.date.fromisoformat(app.ledger.today()) + dt.timedelta(days=30)).isoformat()
    operations.run(app.ledger, owner, "coupon.issue", {"member": a, "off": 2000,
                                                      "valid_to": until})
    operations.run(app.ledger, owner, "coupon.issue", {"member": app.ids["b"], "off": 3300})
    await app.card_sign_in(CARD_A, PIN)
    await app.user.should_see(marker="member-name")
    await app.user.should_see("256 积分")
    await app.user.should_see(f"到期：{expires}")
    await app.user.should_see("剩 5 次")
    await app.user.should_see("消费 · 足疗 60 分钟 · 储值")
    await app.user.should_see("¥244.00")  # 500.00 - 2 × 128.00
    await app.user.should_see(f"有效期至 {until}")  # her coupon, and not the other's
    await app.user.should_see(marker="coupon")
    assert len(app.user.find(marker="coupon").elements) == 1


async def test_a_phone_registered_to_two_members_signs_in_neither_by_code(
        portal_app: PortalApp, tmp_path: Path) -> None:
    """One phone, two members (SH02 registered "138 1234 5678" while cut off from
    this branch, which holds 13812345678): the sign-in compares phones however they
    are typed, and a second member signed in to the first's page. The code proves
    the phone, not which member: it is refused with a sentence, and the card and
    PIN still work."""
    app = portal_app
    spaced = f"{PHONE_A[:3]} {PHONE_A[3:7]} {PHONE_A[7:]}"
    registered_apart(app.ledger, tmp_path, name="赵六", phone=spaced,
                     chain_dir=tmp_path / "chain")
    await app.ask_code(PHONE_A)
    await app.enter_code(app.last_sms_code())
    await app.user.should_see(marker="phone-error")
    said = " ".join(e.text for e in app.user.find(marker="phone-error").elements)
    assert "几位会员" in said or "several members" in said, said  # either language
    await app.user.should_not_see("张伟")
    await app.user.should_not_see("¥500.00")


async def test_a_sign_in_by_code_ends_when_the_phone_is_no_longer_the_members(
        portal_app: PortalApp) -> None:
    """A thief holding the member's stolen phone signed in with its code, and kept the
    pages (and booked in the member's name) for two hours after the shop set the
    member's new number."""
    app = portal_app
    await app.ask_code(PHONE_A)
    await app.enter_code(app.last_sms_code())
    await app.user.should_see(marker="member-name")
    app.ledger.edit_member(owner_of("SH01"), app.ids["a"], fields={"phone": "13911112222"})
    await app.user.open("/m")
    await app.user.should_see(marker="send-code")
    await app.user.should_not_see(marker="member-name", retries=1)


async def test_a_merged_duplicates_phone_is_not_the_members_once_she_has_another(
        portal_app: PortalApp, tmp_path: Path) -> None:
    """The member's duplicate, registered at another branch while apart with the same
    phone typed another way and merged into her, kept the old phone: after the shop
    set her new number, a thief with the stolen phone stayed signed in, and could sign
    in afresh by its code."""
    app = portal_app
    owner = owner_of("SH01")
    b = app.ids["b"]
    dup = registered_apart(app.ledger, tmp_path, name="李娜", phone="139-0000-1111",
                           chain_dir=tmp_path / "chain")
    operations.run(app.ledger, owner, "member.merge", {"member": dup, "into": b})
    await app.ask_code(PHONE_B)
    await app.enter_code(app.last_sms_code())
    await app.user.should_see("李娜")
    app.ledger.edit_member(owner, b, fields={"phone": "13911112222"})
    await app.user.open("/m")
    await app.user.should_see(marker="send-code")
    sent = len(app.shop.node.gateways["sms"].sent)  # type: ignore[attr-defined]
    await app.ask_code(PHONE_B)  # told as for anyone; nothing sent
    assert len(app.shop.node.gateways["sms"].sent) == sent  # type: ignore[attr-defined]


async def test_a_sign_in_ends_when_the_member_merged_into_leaves(portal_app: PortalApp) -> None:
    """Signed in as a duplicate later merged into a member who then left (退会): the
    page stayed open, the merged-away profile never being marked as left."""
    app = portal_app
    await app.ask_code("13700002222")
    await app.enter_code(app.last_sms_code())
    await app.user.should_see("王芳")
    owner = owner_of("SH01")
    operations.run(app.ledger, owner, "member.merge",
                   {"member": app.ids["c"], "into": app.ids["b"]})
    asked = operations.run(app.ledger, owner, "exit.apply",
                           {"member": app.ids["b"], "reason": "搬家"})
    operations.run(app.ledger, app.owner_id, "exit.approve",
                   {"application": asked["application"]})
    await app.user.open("/m")
    await app.user.should_see(marker="send-code")
    await app.user.should_not_see(marker="member-name", retries=1)


async def test_a_member_who_left_is_signed_out_and_gets_no_code(portal_app: PortalApp) -> None:
    app = portal_app
    c = app.ids["c"]
    await app.ask_code("13700002222")
    await app.enter_code(app.last_sms_code())
    await app.user.should_see("王芳")
    asked = operations.run(app.ledger, owner_of("SH01"), "exit.apply",
                           {"member": c, "reason": "搬家"})
    operations.run(app.ledger, app.owner_id, "exit.approve",
                   {"application": asked["application"]})  # another operator approves
    await app.user.open("/m")
    await app.user.should_see(marker="send-code")
    await app.user.should_not_see("王芳")
    sent = len(app.shop.node.gateways["sms"].sent)  # type: ignore[attr-defined]
    await app.ask_code("13700002222")  # told as for anyone; nothing sent
    assert len(app.shop.node.gateways["sms"].sent) == sent  # type: ignore[attr-defined]


async def test_check_in_at_an_activity_once(portal_app: PortalApp) -> None:
    """签到 through self-service: an activity open now (the head office's rule), once."""
    app = portal_app
    today = dt.date.fromisoformat(app.ledger.today())
    operations.run(app.ledger, owner_of("SH01"), "activity.set", {
        "code": "OPEN", "name": "开业签到", "points": 20,
        "from": f"{today - dt.timedelta(days=1)}T00:00",
        "to": f"{today + dt.timedelta(days=1)}T23:59"})
    operations.run(app.ledger, owner_of("SH01"), "activity.set", {
        "code": "LATER", "name": "春节签到", "points": 50,
        "from": f"{today + dt.timedelta(days=30)}T00:00",
        "to": f"{today + dt.timedelta(days=31)}T00:00"})
    await app.card_sign_in(CARD_A, PIN)
    await app.user.should_see("开业签到")
    await app.user.should_not_see("春节签到")  # not open yet
    app.user.find(marker="checkin").click()
    await app.user.should_see("签到成功，得 20 积分")
    await app.user.should_see(marker="checked-in")
    await app.user.should_not_see(marker="checkin")
    await app.user.should_see("签到 · 开业签到")  # in the history
    assert views.points(app.ledger, app.ids["a"])["usable"] == 20


# --- one member's pages, nobody else's ------------------------------------------------------


async def test_a_member_never_sees_another_members_data(portal_app: PortalApp) -> None:
    app = portal_app
    await app.card_sign_in(CARD_A, PIN)
    await app.user.should_see("¥500.00")
    # A crafted request naming the other member: the page reads the session only.
    for crafted in (f"/m?member={app.ids['b']}", f"/m?id={app.ids['b']}&phone={PHONE_B}"):
        await app.user.open(crafted)
        await app.user.should_see("张伟")
        await app.user.should_not_see("李娜")
        await app.user.should_not_see("¥99.00")
    # A second browser (its own cookie) signed in as the other member sees only hers.
    async with httpx.AsyncClient(transport=httpx.ASGITransport(MembersSide(core.app)),
                                 base_url="https://members.test") as other_client:
        other = User(other_client)
        await other.open("/m")
        other.find(marker="tab-card").click()
        other.find(marker="card").type(CARD_B)
        other.find(marker="pin").type(PIN)
        pages = (other.client, app.user.client)
        other.find(marker="sign-in-card").click()
        # The PIN is checked in a worker thread; meanwhile the first user's page may
        # take NiceGUI's simulated `ui.navigate` (the last User touched has it), so
        # once either moves on, the second browser opens its page itself.
        for _ in range(1000):
            if (other.client, app.user.client) != pages:
                break
            await asyncio.sleep(0.01)
        await other.open("/m")
        await other.should_see("李娜")
        await other.should_see("¥99.00")
        await other.should_not_see("张伟")
        await other.should_not_see("¥500.00")
    # And the first browser still shows its own member only.
    await app.user.open("/m")
    await app.user.should_see("张伟")
    await app.user.should_not_see("李娜")


async def test_nobody_signed_in_sees_nothing(portal_app: PortalApp) -> None:
    app = portal_app
    await app.user.open(f"/m?member={app.ids['a']}")
    await app.user.should_see(marker="send-code")
    await app.user.should_not_see("张伟")
    await app.user.should_not_see("¥500.00")


# --- appointments (crdtledger.bookings' operations, for the signed-in member) -----------------


def choose(user: User, marker: str, value: str | None = None) -> str:
    """Pick an option of the select marked `marker` (the first, if no value given)."""
    select = next(iter(user.find(marker=marker).elements))
    assert isinstance(select, ui.select)
    keys = list(select.options)  # a dict's keys, or the list's values
    assert keys, f"{marker} has no options"
    chosen = value if value is not None else str(keys[0])
    assert chosen in keys, (chosen, keys)
    select.set_value(chosen)
    return chosen


def tomorrow(ledger: Ledger) -> str:
    return (dt.date.fromisoformat(ledger.today()) + dt.timedelta(days=1)).isoformat()


async def fill_booking(app: PortalApp, technician: str = "T01@SH01") -> str:
    """Open the booking dialog and choose FOOT60 with `technician`, tomorrow, the first
    free slot; returns the slot."""
    app.user.find(marker="book").click()
    await app.user.should_see(marker="book-service")
    choose(app.user, "book-service", "FOOT60")
    choose(app.user, "book-technician", technician)
    choose(app.user, "book-day", tomorrow(app.ledger))
    return choose(app.user, "book-slot")


async def test_a_dialog_opened_again_and_again_costs_the_same(portal_app: PortalApp) -> None:
    """The member page refills one dialog for each booking: every button made for it
    added a handler to the dialog that was never removed, so each open cost more than
    the last, on the loop the tills share (a script of a signed-in member's clicks)."""
    from nicegui import ui

    app = portal_app
    await app.card_sign_in(CARD_A, PIN)
    await app.user.should_see(marker="book")
    for _ in range(20):
        app.user.find(marker="book").click()
        await app.user.should_see(marker="book-service")
        dialog = next(el for el in app.user.find(marker="book-service").elements.pop()
                      .ancestors() if isinstance(el, ui.dialog))
        dialog.close()
    assert len(dialog._change_handlers) <= 2


async def test_book_and_cancel_an_appointment(portal_app: PortalApp) -> None:
    app = portal_app
    owner = owner_of("SH01")
    # Another member's booking the same day: never on this member's page.
    theirs = operations.run(app.ledger, owner, "booking.add", {
        "member": app.ids["b"], "technician": "T01", "service": "BODY90",
        "at": f"{tomorrow(app.ledger)}T10:00"})
    await app.card_sign_in(CARD_A, PIN)
    await app.user.should_see(marker="book")
    await app.user.should_see("没有预约")
    at = await fill_booking(app)
    assert at != theirs["at"]  # the other member's slot is not free
    app.user.find(marker="book-ok").click()
    await app.user.should_see("已预约")
    mine = operations.run(app.ledger, owner, "booking.list", {"member": app.ids["a"]})
    assert [(b["at"], b["status"], b["service"]) for b in mine] == [(at, "confirmed", "FOOT60")]
    # Written by the node's self-service operator, which may book and check in only:
    # the audit trail says a member did it on these pages.
    assert mine[0]["op"] == "self@SH01"
    assert app.ledger.permissions("self@SH01") == {"booking.write", "checkin"}
    weekday = "一二三四五六日"[dt.date.fromisoformat(at[:10]).weekday()]
    await app.user.should_see(f"{at[5:10]} 周{weekday} {at[11:]} · 足疗 60 分钟")
    await app.user.should_see("已确认")
    await app.user.should_not_see("全身按摩")  # hers: BODY90
    app.user.find(marker="cancel-booking").click()
    await app.user.should_see("取消这个预约？")
    app.user.find(marker="cancel-ok").click()
    await app.user.should_see("预约已取消")
    shown = operations.run(app.ledger, owner, "booking.show", {"booking": mine[0]["booking"]})
    assert shown["status"] == "cancelled"
    assert operations.run(app.ledger, owner, "booking.show",
                          {"booking": theirs["booking"]})["status"] == "confirmed"
    await app.user.should_see("没有预约")


async def test_a_slot_taken_meanwhile_is_refused_in_the_members_words(
        portal_app: PortalApp) -> None:
    app = portal_app
    await app.card_sign_in(CARD_A, PIN)
    await app.user.should_see(marker="book")
    at = await fill_booking(app)
    operations.run(app.ledger, owner_of("SH01"), "booking.add", {  # at the counter, first
        "member": app.ids["b"], "technician": "T01", "service": "FOOT60", "at": at})
    app.user.find(marker="book-ok").click()
    await app.user.should_see("这个时间刚被约走了，请选别的时间。")
    slots = next(iter(app.user.find(marker="book-slot").elements))
    assert isinstance(slots, ui.select) and at not in slots.options
    mine = operations.run(app.ledger, owner_of("SH01"), "booking.list", {"member": app.ids["a"]})
    assert mine == []


def _english_words(text: str) -> list[str]:
    """What in a sentence on the Chinese page is English (a library's word or an id)."""
    return re.findall(r"[A-Za-z]{2,}", text)


async def test_self_service_refusals_are_said_in_the_members_language(
        portal_app: PortalApp, monkeypatch: pytest.MonkeyPatch) -> None:
    """A fourth booking to come, and a time that passed while the dialog was open,
    were refused with the library's English for a cashier after "没能完成：" on the
    Chinese page."""
    app = portal_app
    self_service = self_service_of("SH01")
    for at in ("10:00", "11:00", "12:00"):  # made on the member pages: the limit's three
        operations.run(app.ledger, self_service, "booking.add", {
            "member": app.ids["a"], "technician": "T01", "service": "FOOT60",
            "at": f"{tomorrow(app.ledger)}T{at}"})
    await app.card_sign_in(CARD_A, PIN)
    await app.user.should_see(marker="book")
    await fill_booking(app)
    app.user.find(marker="book-ok").click()
    await app.user.should_see("在这里最多可以有 3 个还没到时间的预约：请先取消一个，或联系门店。")
    error = app.user.find(marker="book-error").elements.pop().text
    assert not _english_words(error), error
    # One of them cancelled; then the time chosen passes while the dialog is open.
    app.user.find(marker="cancel-booking").click()
    await app.user.should_see("取消这个预约？")
    app.user.find(marker="cancel-ok").click()
    await app.user.should_see("预约已取消")
    at = await fill_booking(app)
    start = bookings.parse_when(app.ledger, at, None)
    clock = app.ledger.clock
    real = clock.next_ms
    monkeypatch.setattr(clock, "next_ms", lambda: max(real(), start + 60_000))
    app.user.find(marker="book-ok").click()
    await app.user.should_see("这个时间已经过了，请选以后的时间。")
    error = app.user.find(marker="book-error").elements.pop().text
    assert not _english_words(error), error


async def test_a_booking_that_has_started_is_no_longer_offered_for_cancelling(
        portal_app: PortalApp, monkeypatch: pytest.MonkeyPatch) -> None:
    """A booking whose time had passed today stayed under "My appointments" with a
    Cancel button; Cancel was then refused in English with the booking's raw id."""
    app = portal_app
    made = operations.run(app.ledger, owner_of("SH01"), "booking.add", {
        "member": app.ids["a"], "technician": "T01", "service": "FOOT60",
        "at": f"{tomorrow(app.ledger)}T10:00"})
    await app.card_sign_in(CARD_A, PIN)
    await app.user.should_see(marker="cancel-booking")  # to come: it may be cancelled
    clock = app.ledger.clock
    real = clock.next_ms
    later = int(made["start"]) + 30 * 60_000  # half an hour into the appointment
    monkeypatch.setattr(clock, "next_ms", lambda: max(real(), later))
    # The page drawn before it started: Cancel is refused in the member's words...
    app.user.find(marker="cancel-booking").click()
    await app.user.should_see("取消这个预约？")
    app.user.find(marker="cancel-ok").click()
    await app.user.should_see("这个预约已经开始了，不能再取消。有需要请联系门店。")
    said = [m for m in app.user.notify.messages if "开始" in m]
    assert said and not any(_english_words(m) for m in said), said
    # ...and then, as on any page drawn since, it is listed no more.
    await app.user.should_not_see(marker="cancel-booking")
    await app.user.open("/m")
    await app.user.should_see(marker="member-name")
    await app.user.should_not_see(marker="booking", retries=1)
    await app.user.should_not_see(marker="cancel-booking", retries=1)
    shown = operations.run(app.ledger, owner_of("SH01"), "booking.show",
                           {"booking": made["booking"]})
    assert shown["status"] == "confirmed"


async def test_a_page_left_open_past_its_sign_in_writes_nothing(
        portal_app: PortalApp, monkeypatch: pytest.MonkeyPatch) -> None:
    app = portal_app
    await app.card_sign_in(CARD_A, PIN)
    await app.user.should_see(marker="book")
    await fill_booking(app)
    # The two hours pass (or another tab signs out) while the dialog is open.
    portal_module = importlib.import_module("reference_app.members_portal")
    monkeypatch.setattr(portal_module, "signed_in", lambda: None)
    app.user.find(marker="book-ok").click()
    await app.user.should_see(marker="send-code")  # back at the sign-in
    assert operations.run(app.ledger, owner_of("SH01"), "booking.list",
                          {"member": app.ids["a"]}) == []


async def test_a_booking_at_another_branch_is_pending_until_it_decides(
        portal_app: PortalApp, tmp_path: Path) -> None:
    """The page at SH01 books 小李 T02 of SH02: pending, shown so, until SH02 hears of
    it and decides; the page then shows it confirmed by itself (it follows the store)."""
    app = portal_app
    Ledger.create(tmp_path / "sh02", "SH02", "test")
    enrol(tmp_path / "chain", tmp_path / "sh02", "SH02")
    sh02 = Ledger.open(tmp_path / "sh02")
    try:
        await app.card_sign_in(CARD_A, PIN)
        await app.user.should_see(marker="book")  # the node has started
        sync(app.ledger, sh02)  # SH02 learns the chain's rules and operators
        operations.run(sh02, owner_of("SH02"), "technician.add",
                       {"code": "T02", "name": "小王", "services": "FOOT60"})
        sync(app.ledger, sh02)
        await fill_booking(app, "T02@SH02")
        app.user.find(marker="book-ok").click()
        await app.user.should_see("小王 · 徐家汇店 · 待门店确认")
        sync(app.ledger, sh02)
        bookings.decide(sh02)  # what SH02's node does when the request reaches it
        sync(app.ledger, sh02)
        await app.user.should_see("小王 · 徐家汇店 · 已确认", retries=100)
    finally:
        sh02.close()


# --- the two ports --------------------------------------------------------------------------


OPERATOR_PATHS = ("/login", "/office", "/admin", "/reports", "/settlement", "/goods",
                  "/api", "/docs", "/openapi.json", "/health", "/_nicegui/auto/x",
                  "/_nicegui/client/x/upload/y", "/mx", "/%6Dx")


async def test_operator_paths_are_refused_on_the_member_port(portal_app: PortalApp) -> None:
    app = portal_app
    for path in OPERATOR_PATHS:
        r = await app.members.get(path)
        assert r.status_code == 404, path
        assert "client_id" not in r.text, path
    assert (await app.members.get("/m")).status_code == 200
    root = await app.members.get("/")  # the port's bare address: the member pages
    assert (root.status_code, root.headers["location"]) == (307, "/m")


async def test_member_pages_are_not_on_the_counter_port(portal_app: PortalApp) -> None:
    app = portal_app
    for path in ("/m", "/m/", "/m?x=1"):
        r = await app.counter.get(path)
        assert r.status_code == 404, path
    assert (await app.counter.get("/login")).status_code == 200


async def test_socket_packets_for_an_operator_page_are_refused(portal_app: PortalApp) -> None:
    app = portal_app
    operator_page = re.search(r"'client_id': '([0-9a-f-]+)'",
                              (await app.counter.get("/login")).text)
    member_page = re.search(r"'client_id': '([0-9a-f-]+)'", (await app.members.get("/m")).text)
    assert operator_page and member_page
    op, mine = operator_page.group(1), member_page.group(1)
    assert socket_packet_ok(f'42["event",{{"client_id":"{mine}","id":1}}]')
    assert not socket_packet_ok(f'42["event",{{"client_id":"{op}","id":1}}]')
    # An escaped key is the same key to the JSON decoder, and so to the gate.
    assert not socket_packet_ok(f'42["event",{{"client\\u005fid":"{op}"}}]')
    assert not socket_packet_ok(f'421["handshake",{{"x":[{{"client_id":"{op}"}}]}}]')
    assert not socket_packet_ok("451-[\"event\",{\"_placeholder\":true,\"num\":0}]")
    assert socket_packet_ok("2") and socket_packet_ok("3probe")
    # Through the member port: a polling POST or a socket naming the operator page.
    r = await app.members.post("/_nicegui_ws/socket.io/?EIO=4&transport=polling&sid=x",
                               content=f'42["event",{{"client_id":"{op}"}}]')
    assert r.status_code == 404
    r = await app.members.get(f"/_nicegui_ws/socket.io/?client_id={op}&EIO=4"
                              "&transport=polling")
    assert r.status_code == 404


@pytest_asyncio.fixture
async def served(tmp_path: Path) -> AsyncIterator[PortalApp]:
    async for app in _portal_app(tmp_path, port=True):
        yield app


async def test_the_member_port_is_https_with_the_chains_certificate(served: PortalApp,
                                                                     tmp_path: Path) -> None:
    app = served
    # NiceGUI runs the startup hooks (the node's, the member port's) as tasks.
    for _ in range(600):
        if app.portal.server is not None and app.portal.server.started:
            break
        await asyncio.sleep(0.05)
    assert app.portal.port
    base = f"https://127.0.0.1:{app.portal.port}"
    trust = ssl.create_default_context(cafile=str(tmp_path / "chain" / "ca.crt"))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=trust)) as http:
        async with http.get(f"{base}/m") as r:  # the name checked: the IP is in the SAN
            assert r.status == 200
            assert "client_id" in await r.text()
        for path in OPERATOR_PATHS:
            async with http.get(f"{base}{path}") as r:
                assert r.status == 404, path
    # Plain HTTP is not spoken there, and a client trusting other roots refuses it.
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.ClientError):
            async with http.get(f"http://127.0.0.1:{app.portal.port}/m") as r:
                await r.read()
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            async with http.get(f"{base}/m") as r:
                await r.read()


async def test_idle_and_slow_connections_to_the_member_port_are_closed(
        served: PortalApp, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """uvicorn starts no timer before a request's head and asyncio waits 60 s for a
    TLS handshake: a stranger's idle connections each held a descriptor. A handshake
    never begun and a request's head that never ends are closed after their
    deadlines; a member's request is served as before."""
    app = served
    module = importlib.import_module("reference_app.members_portal")
    monkeypatch.setattr(module, "FIRST_REQUEST_S", 0.3)
    for _ in range(600):
        if app.portal.server is not None and app.portal.server.started:
            break
        await asyncio.sleep(0.05)
    assert app.portal.port
    t0 = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", app.portal.port)
    await asyncio.wait_for(reader.read(), 30)  # no handshake: closed (peer.node.HANDSHAKE_S)
    assert time.monotonic() - t0 < 20
    writer.close()
    trust = ssl.create_default_context(cafile=str(tmp_path / "chain" / "ca.crt"))
    reader, writer = await asyncio.open_connection("127.0.0.1", app.portal.port, ssl=trust)
    writer.write(b"GET /m HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # and the head never ends
    t0 = time.monotonic()
    assert await asyncio.wait_for(reader.read(), 5) == b""
    assert time.monotonic() - t0 >= 0.2
    writer.close()
    # A whole head declaring a body, the answer read, then one byte of that body: the
    # byte cancelled uvicorn's only timer, and the connection was held for good.
    reader, writer = await asyncio.open_connection("127.0.0.1", app.portal.port, ssl=trust)
    writer.write(b"GET /m HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000000\r\n\r\n")
    assert (await asyncio.wait_for(reader.read(12), 10)).startswith(b"HTTP/1.1 200")
    await asyncio.sleep(0.5)
    writer.write(b"x")
    await asyncio.wait_for(reader.read(), 10)  # the rest of the answer, then closed
    writer.close()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=trust)) as http, \
            http.get(f"https://127.0.0.1:{app.portal.port}/m") as r:
        assert r.status == 200


async def test_a_socket_on_the_member_port_cannot_drive_an_operator_page(
        served: PortalApp, tmp_path: Path) -> None:
    """A real websocket to the member port that names an operator page's client id is
    closed; one naming a member page's stays open."""
    app = served
    for _ in range(600):
        if app.portal.server is not None and app.portal.server.started:
            break
        await asyncio.sleep(0.05)
    op = re.search(r"'client_id': '([0-9a-f-]+)'", (await app.counter.get("/login")).text)
    mine = re.search(r"'client_id': '([0-9a-f-]+)'", (await app.members.get("/m")).text)
    assert op and mine
    trust = ssl.create_default_context(cafile=str(tmp_path / "chain" / "ca.crt"))
    url = (f"wss://127.0.0.1:{app.portal.port}/_nicegui_ws/socket.io/?EIO=4"
           "&transport=websocket")

    async def answer(packet: str) -> str | None:
        """What the server says to `packet` (an event asking for an ack), after the
        engine.io and socket.io handshakes; None when it closes the socket instead."""
        async with aiohttp.ClientSession() as http, http.ws_connect(url, ssl=trust) as ws:
            assert (await ws.receive_str(timeout=30)).startswith("0")  # engine.io open
            await ws.send_str("40")  # socket.io connect
            assert (await ws.receive_str(timeout=30)).startswith("40")
            await ws.send_str(packet)
            while True:
                msg = await ws.receive(timeout=30)  # a hang fails; nothing is timed
                if msg.type != aiohttp.WSMsgType.TEXT:
                    return None
                if str(msg.data) != "2":  # not the server's ping
                    return str(msg.data)

    event = '421["event",{{"client_id":"{}","id":0,"type":"click","args":[]}}]'
    assert await answer(event.format(op.group(1))) is None
    reply = await answer(event.format(mine.group(1)))
    assert reply is not None and reply.startswith("431"), reply  # socket.io's ack


async def test_the_certificate_names_its_hosts_and_is_signed_by_the_chain(tmp_path: Path) -> None:
    from cryptography import x509

    data, _o, _c = make_store(tmp_path)
    cert_path, key_path = issue_cert(tmp_path / "chain", data, ["shop.example.com", "10.0.0.5"])
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["shop.example.com"]
    assert [str(a) for a in san.get_values_for_type(x509.IPAddress)] == ["10.0.0.5"]
    ca = x509.load_pem_x509_certificate((tmp_path / "chain" / "ca.crt").read_bytes())
    cert.verify_directly_issued_by(ca)
    assert key_path.stat().st_mode & 0o077 == 0


async def test_members_flag_without_a_certificate_is_refused_with_how(tmp_path: Path) -> None:
    from crdtledger.errors import LedgerError
    from reference_app.members_portal import members_config

    data, _o, _c = make_store(tmp_path)
    with pytest.raises(LedgerError, match="members_portal --chain"):
        members_config(data, "0.0.0.0:8443", None, None)
    with pytest.raises(LedgerError, match="together"):
        members_config(data, "0.0.0.0:8443", data / "x.crt", None)
    with pytest.raises(LedgerError, match="as the member port's certificate"):
        members_config(data, "127.0.0.1:0", data / "tls" / "node.crt", data / "x.key")
    issue_cert(tmp_path / "chain", data, ["127.0.0.1"])
    taken = members_config(data, "127.0.0.1:0", None, None)  # found in DATA/tls
    assert taken.sock is not None
    try:
        port = taken.sock.getsockname()[1]
        with pytest.raises(LedgerError, match=f"cannot serve the member pages on 127.0.0.1:{port}"):
            members_config(data, f"127.0.0.1:{port}", None, None)
    finally:
        taken.sock.close()


# --- a real browser on a phone-sized window ---------------------------------------------------


@dataclass
class Branch:
    data: Path
    base: str  # the member pages' origin
    log: Path
    proc: subprocess.Popen[bytes]


@pytest.fixture
def branch(tmp_path: Path) -> Iterator[Branch]:
    """SH01 as `python -m reference_app --members 127.0.0.1:PORT`, a process of its own
    with the demo's kind of SMS gateway (the log one), the certificate from its chain."""
    data, _owner, _cashier = make_store(tmp_path)
    seed_members(data)
    (data / "node.toml").write_text('[notify.sms]\nkind = "log"\n', encoding="utf-8")
    issue_cert(tmp_path / "chain", data, ["127.0.0.1"])
    port = free_port(2)
    log = tmp_path / "sh01.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "reference_app", "--data", str(data),
             "--http", f"127.0.0.1:{port}", "--listen", "127.0.0.1:0", "--api", "127.0.0.1:0",
             "--no-mdns", "--members", f"127.0.0.1:{port + 1}"],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    b = Branch(data, f"https://127.0.0.1:{port + 1}", log, proc)
    trust = ssl.create_default_context(cafile=str(tmp_path / "chain" / "ca.crt"))
    try:
        for _ in range(1200):  # up to a minute on a slow box; a hang fails
            assert proc.poll() is None, log.read_text(errors="replace")
            try:
                with urllib.request.urlopen(f"{b.base}/m", context=trust, timeout=3) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.05)
        else:
            raise AssertionError("the member port did not answer: " + log.read_text())
        yield b
    finally:
        proc.send_signal(signal.SIGTERM)  # the counter's server stops the member port too
        try:
            # uvicorn stops cleanly on SIGTERM, then raises it again: -SIGTERM.
            assert proc.wait(30) in (0, -signal.SIGTERM), log.read_text(errors="replace")[-3000:]
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def code_from_log(log: Path, phone: str) -> str | None:
    """The last code the log gateway wrote for `phone` (peer.gateways.LogGateway)."""
    lines = [ln for ln in log.read_text(errors="replace").splitlines()
             if f"sms to {phone} " in ln]
    return code_in(lines[-1]) if lines else None


@pytest.mark.slow
async def test_a_member_signs_in_books_and_cancels_in_chromium(branch: Branch,
                                                               tmp_path: Path) -> None:
    await asyncio.to_thread(_walk, branch, tmp_path)


def _walk(b: Branch, tmp_path: Path) -> None:
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.fail(f"{CHROMIUM} and {CHROMEDRIVER} are needed: ./run setup installs them")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    # The chain's CA is no root Chromium knows; the test above checks the certificate
    # against it with a real client, so here the browser is told to go on.
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--window-size=390,844",
                 "--ignore-certificate-errors",
                 f"--user-data-dir={tmp_path / 'chromium'}", "--lang=zh-CN"):
        options.add_argument(flag)
    d = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    ARTIFACTS.mkdir(exist_ok=True)

    def shot(name: str) -> None:
        assert d.save_screenshot(str(ARTIFACTS / f"members-{name}.png"))

    try:
        d.get(f"{b.base}/m")
        type_into(d, "//label[contains(., '手机号')]//input", PHONE_A, what="the sign-in page")
        shot("sign-in-zh")
        click(d, "//button[contains(., '获取验证码')]", "the send-code button")
        wait_for(d, lambda d: xpath(d, "//*[contains(text(), '验证码已发到')]"), "the code sent")
        code = wait_for(d, lambda _d: code_from_log(b.log, PHONE_A), "the code in the log")
        type_into(d, "//label[contains(., '验证码')]//input", code, Keys.ENTER, what="the code")
        cash = wait_for(d, lambda d: _tile(d, "储值余额"), "the balance")
        with Ledger.open(b.data, lock=False) as ledger:
            member = ledger.find_members(PHONE_A)[0]["id"]
            assert cash == money(int(ledger.balance(member)["cash"]))  # as the counter says
        shot("home-zh")

        click(d, "//button[contains(., '预约服务')]", "the booking button")
        _pick(d, "服务", "足疗 60 分钟")
        _pick(d, "技师", "小李")
        day = _pick(d, "日期", (dt.date.today() + dt.timedelta(days=1)).strftime("%m-%d"))
        at = _pick(d, "时间", None)
        shot("booking-zh")
        click(d, "//button[contains(., '确认预约')]", "the book button")
        wait_for(d, lambda d: xpath(d, f"//*[contains(text(), '{day} {at}') and "
                                      "contains(text(), '足疗 60 分钟')]"), "the booking listed")
        wait_for(d, lambda d: xpath(d, "//*[contains(text(), '已确认')]"), "confirmed")
        shot("booked-zh")
        with Ledger.open(b.data, lock=False) as ledger:
            booked = operations.run(ledger, owner_of("SH01"), "booking.list",
                                    {"member": member})
        assert [x["status"] for x in booked] == ["confirmed"]

        click(d, "//button[normalize-space()='English']", "the language button")
        wait_for(d, lambda d: _tile(d, "Stored value"), "the page in English")
        shot("home-en")
        click(d, "//button[normalize-space()='Cancel']", "the cancel button")
        click(d, "//button[contains(., 'Cancel it')]", "the confirmation")
        wait_for(d, lambda d: xpath(d, "//*[contains(text(), 'No appointments')]"),
                 "the booking gone")
        shot("cancelled-en")
        with Ledger.open(b.data, lock=False) as ledger:
            shown = operations.run(ledger, owner_of("SH01"), "booking.show",
                                   {"booking": booked[0]["booking"]})
        assert shown["status"] == "cancelled"
        click(d, "//button[.//i[normalize-space()='logout']]", "sign out")
        wait_for(d, lambda d: xpath(d, "//button[contains(., 'Send me a code')]"),
                 "the sign-in page in English")
        shot("sign-in-en")
    finally:
        d.quit()


def _tile(d: WebDriver, label: str) -> str:
    el = xpath(d, f"//div[normalize-space()='{label}']/following-sibling::div[1]")
    return el.text.strip() if el is not None else ""


def _pick(d: WebDriver, label: str, option: str | None) -> str:
    """Open the dialog's select labelled `label` and click an option (the first, if
    `option` is None); the option's text."""
    field_ = f"//div[contains(@class, 'q-dialog')]//label[contains(., '{label}')]"
    click(d, field_, f"the {label} select")
    item = "//div[contains(@class, 'q-menu')]//div[contains(@class, 'q-item')]"
    if option is not None:
        item += f"[contains(., '{option}')]"
    el = wait_for(d, lambda d: xpath(d, item), f"an option of {label}")
    text = str(el.text.strip())
    el.click()
    wait_for(d, lambda d: xpath(d, "//div[contains(@class, 'q-menu')]") is None,
             f"the {label} menu closed")
    return text
