"""Logins under attack: throttled per operator and per address, scrypt off the loop,
unknown names checked like known ones.

The API tests run a real aiohttp server on 127.0.0.1 (as tests/test_api.py does); a
second client connects from 127.0.0.2 (Linux routes all of 127/8 to lo) to be
"another address". Time is the throttle's injected clock, never a sleep, and no test
asserts on how long anything took: what matters is observed through a spy on
`check_secret` (how often it ran, on what hash, on which thread).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from app_fixtures import CASHIER, OWNER, CounterApp
from helpers import new_ledger, snapshot
from nicegui import ui
from test_api import AMY_PW, BOSS_PW, Api, serving, with_operators

from crdtledger import auth
from crdtledger.auth import DUMMY_HASH
from crdtledger.errors import PermissionDenied
from crdtledger.ledger import Ledger
from crdtledger.throttle import LoginThrottle
from peer.api import Sessions, Standalone, openapi


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Spy:
    """Every `check_secret` call: the hash it checked and the thread it ran on."""

    calls: list[tuple[str, int]] = field(default_factory=list)
    # When set, each call waits for `release` (a test holds a login mid-check).
    hold: threading.Event | None = None
    entered: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)

    @property
    def hashes(self) -> list[str]:
        return [h for h, _ in self.calls]


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> Iterator[Spy]:
    real = auth.check_secret
    s = Spy()

    def check(secret: str, stored: str) -> bool:
        s.calls.append((stored, threading.get_ident()))
        if s.hold is not None:
            s.entered.set()
            s.release.wait(timeout=30)
        return real(secret, stored)

    monkeypatch.setattr(auth, "check_secret", check)
    yield s
    s.release.set()


@pytest.fixture
def ledger(tmp_path: Path) -> Ledger:
    return with_operators(new_ledger(tmp_path / "SH01", "SH01"))


@contextlib.asynccontextmanager
async def from_address(api: Api, address: str) -> AsyncIterator[Api]:
    """A client of the same server whose connections come from `address`."""
    connector = aiohttp.TCPConnector(local_addr=(address, 0))
    async with aiohttp.ClientSession(connector=connector) as http:
        yield Api(http, api.base)


async def attempt(api: Api, name: str, password: str) -> tuple[int, Any]:
    return await api.call("POST", "/login", {"operator": name, "password": password})


def stored_hash(ledger: Ledger, name: str) -> str:
    return ledger.login_record(name).stored


# --- the API --------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_150_wrong_passwords_lock_the_name_and_address_not_others(
        ledger: Ledger, spy: Spy) -> None:
    clock = Clock()
    before = snapshot(ledger)
    async with serving(Standalone(ledger), Sessions(clock=clock)) as api:
        answers = [await attempt(api, "boss", f"guess-{i}") for i in range(150)]
        statuses = [s for s, _ in answers]
        assert statuses[:5] == [401] * 5
        assert statuses[5:] == [429] * 145
        status, body = answers[-1]
        assert body["error"] == "too_many_attempts"
        assert "try again in 1 s" in body["message"]
        assert api.last_headers["Retry-After"] == "1"
        # Only the five counted attempts had their password checked.
        assert len(spy.calls) == 5

        # During the lock even the right password is refused, unchecked: a guesser
        # who found it would learn nothing.
        assert (await attempt(api, "boss", BOSS_PW))[0] == 429
        assert len(spy.calls) == 5
        # Another operator from the attacker's address is refused too (per address)...
        assert (await attempt(api, "amy", AMY_PW))[0] == 429
        # ...but from another address, that operator logs in.
        async with from_address(api, "127.0.0.2") as other:
            status, body = await attempt(other, "amy", AMY_PW)
            assert status == 200, body
            # And the locked name stays locked from any address.
            assert (await attempt(other, "boss", BOSS_PW))[0] == 429

        clock.now += 1.01  # past the 1 s lock
        status, body = await attempt(api, "boss", BOSS_PW)
        assert status == 200, body
        # The success forgave the name and the address: a typo is a plain 401 again.
        assert (await attempt(api, "boss", "typo"))[0] == 401
    assert snapshot(ledger) == before


@pytest.mark.asyncio
async def test_the_lock_doubles_while_failures_go_on(ledger: Ledger, spy: Spy) -> None:
    clock = Clock()
    async with serving(Standalone(ledger), Sessions(clock=clock)) as api:
        for _ in range(5):
            assert (await attempt(api, "boss", "wrong"))[0] == 401
        for expected in (2, 4, 8):
            clock.now += expected / 2 + 0.01  # the previous lock has ended
            assert (await attempt(api, "boss", "wrong"))[0] == 401
            status, body = await attempt(api, "boss", "wrong")
            assert status == 429
            assert api.last_headers["Retry-After"] == str(expected)
            assert f"try again in {expected} s" in body["message"]


@pytest.mark.asyncio
async def test_unknown_and_known_names_both_run_the_slow_check(
        ledger: Ledger, spy: Spy) -> None:
    ledger.set_operator(ledger.owner, ledger.login_record("amy").operator or "",
                        active=False)
    async with serving(Standalone(ledger)) as api:
        assert (await attempt(api, "nobody", "whatever"))[0] == 401
        assert (await attempt(api, "boss", "wrong"))[0] == 401
        assert (await attempt(api, "amy", AMY_PW))[0] == 401  # disabled
    assert spy.hashes == [DUMMY_HASH, stored_hash(ledger, "boss"), DUMMY_HASH]
    assert stored_hash(ledger, "boss") != DUMMY_HASH
    # Same message for all three: the answer does not tell names apart either.


@pytest.mark.asyncio
async def test_the_check_runs_off_the_loop_and_the_node_keeps_answering(
        ledger: Ledger, spy: Spy) -> None:
    async with serving(Standalone(ledger)) as api:
        token = await api.login("boss", BOSS_PW)
        loop_thread = threading.get_ident()
        assert spy.calls[-1][1] != loop_thread

        spy.hold = threading.Event()
        pending = asyncio.create_task(attempt(api, "amy", AMY_PW))
        while not spy.entered.is_set():  # the login is inside scrypt's worker now
            await asyncio.sleep(0.001)
        status, body = await api.call("GET", "/sync/status", token=token)
        assert status == 200, body
        assert not pending.done()  # answered while the login was still being checked
        spy.release.set()
        status, body = await pending
        assert status == 200, body
        assert all(thread != loop_thread for _, thread in spy.calls)


@pytest.mark.asyncio
async def test_the_document_lists_429_at_login() -> None:
    doc = openapi("/api")
    assert "429" in doc["paths"]["/login"]["post"]["responses"]


# --- the library ------------------------------------------------------------------


@pytest.mark.asyncio
async def test_the_command_line_keeps_a_synchronous_check(ledger: Ledger, spy: Spy) -> None:
    assert ledger.authenticate("boss", BOSS_PW) == ledger.login_record("boss").operator
    with pytest.raises(PermissionDenied):
        ledger.authenticate("nobody", BOSS_PW)
    assert spy.hashes == [stored_hash(ledger, "boss"), DUMMY_HASH]


def test_the_throttle_alone() -> None:
    clock = Clock()
    t = LoginThrottle(clock=clock)
    for _ in range(5):
        assert t.begin("boss", "10.0.0.9") == 0
    assert t.begin("boss", "10.0.0.9") == 1
    assert t.wait("boss", "10.0.0.1") == 1  # the name is locked from anywhere
    assert t.wait("amy", "10.0.0.9") == 1  # and the address for any name
    assert t.wait("amy", "10.0.0.1") == 0
    # Capped at 15 minutes however long it goes on.
    for _ in range(30):
        clock.now += 901
        t.begin("boss", "10.0.0.9")
    assert t.wait("boss", "10.0.0.9") == 900
    t.succeeded("boss", "10.0.0.9")
    assert t.wait("boss", "10.0.0.9") == 0
    # A key quiet for a day is forgotten.
    for _ in range(4):
        t.begin("amy", "10.0.0.7")
    clock.now += 24 * 3600 + 1
    assert t.begin("amy", "10.0.0.7") == 0
    assert t.begin("amy", "10.0.0.7") == 0  # counting restarted from one


def test_the_throttle_remembers_a_bounded_number_of_keys() -> None:
    t = LoginThrottle(max_keys=100, clock=Clock())
    for i in range(10_000):
        t.begin(f"name-{i}", f"10.{i // 256 % 256}.{i % 256}.1")
    assert len(t) <= 100


def test_a_flood_of_made_up_keys_pushes_out_addresses_locks_before_names() -> None:
    """A stranger asked five codes for a member's phone (locked), then five each for
    made-up phones from many addresses: least recently used dropped first, the phone's
    lock went and it was sent five codes more. Unlocked keys go first, then addresses'
    locks, then names'; the table never refuses a key (that let a stranger who filled
    it lock every member out)."""
    clock = Clock()
    t = LoginThrottle(max_keys=10, clock=clock)
    for _ in range(6):
        t.begin("phone:13800000001", "10.0.0.1")
    for i in range(4):  # ten keys, every one locked
        for _ in range(6):
            t.begin(f"phone:made-up-{i}", f"10.1.0.{i}")
    assert len(t) == 10
    assert t.begin("card:real", "10.2.0.1") == 0, "a member is not locked out"
    assert t.wait("phone:13800000001", "10.0.0.9") > 0, "the member's phone is still locked"
    assert t.wait("anyone", "10.0.0.1") == 0, "the oldest address's lock went first"
    assert len(t) <= 10


def test_an_ipv6_subscriber_counts_as_one_address() -> None:
    """One subscriber holds a /64: 2**64 addresses were as many keys to fail from."""
    t = LoginThrottle(clock=Clock())
    for i in range(6):
        t.begin(f"name-{i}", f"2001:4860:1:2::{i:x}")
    assert t.wait("anyone", "2001:4860:1:2:ffff::1") > 0
    assert t.wait("anyone", "2001:4860:1:3::1") == 0
    # IPv4 clients of a dual-stack socket arrive as ::ffff:a.b.c.d: each its own, not
    # all one /64 (::/64 locked every IPv4 member out at once), nor loopback's.
    for i in range(6):
        t.begin(f"other-{i}", "::ffff:203.0.113.7")
    assert t.wait("anyone", "203.0.113.7") > 0
    assert t.wait("anyone", "::ffff:203.0.113.8") == 0
    assert t.wait("anyone", "::1") == 0


# --- the counter's login page -------------------------------------------------------------


@pytest.mark.asyncio
async def test_the_counter_login_page_is_throttled_too(counter_app: CounterApp,
                                                       spy: Spy) -> None:
    app = counter_app
    clock = Clock()
    app.shop.logins = LoginThrottle(clock=clock)
    await app.user.open("/login")

    def clear_error() -> None:  # so that the next sentence seen is the next answer's
        for element in app.user.find(marker="login-error").elements:
            assert isinstance(element, ui.label)
            element.set_text("")

    for i in range(5):
        app.user.find(marker="login-name").clear().type(OWNER[0])
        app.user.find(marker="login-password").clear().type(f"guess-{i}")
        app.user.find(marker="login").click()
        await app.user.should_see("姓名或密码不对。", retries=100)  # scrypt in a thread
        clear_error()
    assert all(thread != threading.get_ident() for _, thread in spy.calls)
    app.user.find(marker="login-password").clear().type(OWNER[1])
    app.user.find(marker="login").click()
    await app.user.should_see("登录失败次数太多，请 1 秒后再试。")
    assert len(spy.calls) == 5  # refused without checking the right password
    # Another operator from another browser address is not this lock's business.
    assert app.shop.logins.wait(CASHIER[0], "192.0.2.1") == 0
    clock.now += 1.01
    await app.login(*OWNER)
