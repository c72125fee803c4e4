"""An approver's password typed at a till is a login by another door: it is throttled
as logins are (crdtledger.throttle), by the approver's name and by the operator
asking, it counts as a failed login of that name, and while that name is locked it is
refused before the password is looked at.

Each test runs a real node (peer.node.Node) with its API on 127.0.0.1. Time is the
throttles' injected clock, never a sleep; what was checked is observed through a spy
on `check_secret`.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from test_api import Api
from test_login_throttle import Clock

from crdtledger import auth
from crdtledger.ledger import Ledger
from crdtledger.throttle import LoginThrottle
from peer.chain import enrol, init_chain
from peer.node import Config, Node

PW = {"boss": "boss-secret", "mgr": "mgr-secret", "amy": "amy-secret", "bob": "bob-secret"}
ROLES = {"boss": "owner", "mgr": "manager", "amy": "cashier", "bob": "cashier"}
OVER_LIMIT = "5000.01"  # a top-up above the default approval limit


@dataclass
class Branch:
    node: Node
    api: Api
    clock: Clock

    @property
    def ledger(self) -> Ledger:
        return self.node.ledger

    async def login(self, name: str) -> str:
        return await self.api.login(name, PW[name])


def make_node(tmp_path: Path, roles: Mapping[str, str] = ROLES) -> Path:
    """The data directory of node SH01 of chain `test`, head office, with an operator
    of each name in `roles` (password PW[name]); by default boss (owner), mgr
    (manager), amy and bob (cashiers)."""
    data = tmp_path / "sh01"
    init_chain(tmp_path / "chain", "test")
    Ledger.create(data, "SH01", "test")
    enrol(tmp_path / "chain", data, "SH01", head_office=True)
    with Ledger.open(data) as ledger:
        for name, role in roles.items():
            ledger.add_operator(ledger.owner, name, PW[name], [role])
    return data


@contextlib.asynccontextmanager
async def branch(tmp_path: Path) -> AsyncIterator[Branch]:
    """Node SH01 (`make_node`) serving its API on 127.0.0.1; its throttles on `clock`."""
    data = make_node(tmp_path)
    clock = Clock()
    node = Node(Config(data, listen=("127.0.0.1", 0), api=("127.0.0.1", 0), mdns=False))
    node.logins = LoginThrottle(clock=clock)  # before start: the API takes it then
    await node.start()
    try:
        node.ledger.pins = LoginThrottle(clock=clock)
        async with aiohttp.ClientSession() as http:
            yield Branch(node, Api(http, f"http://127.0.0.1:{node.api_port}/api"), clock)
    finally:
        await node.stop()


threads: list[int] = []  # see `checked`


@pytest.fixture
def checked(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The hashes operator passwords were checked against, in order; and in
    `threads`, the threads they were checked on."""
    real = auth.check_secret
    calls: list[str] = []
    threads.clear()

    def check(secret: str, stored: str) -> bool:
        calls.append(stored)
        threads.append(threading.get_ident())
        return real(secret, stored)

    monkeypatch.setattr(auth, "check_secret", check)
    yield calls


async def member(b: Branch, token: str) -> str:
    status, body = await b.api.call("POST", "/members", {"name": "王芳", "phone": "13812345678"},
                                    token=token)
    assert status == 201, body
    return str(body["member_id"])


async def cashier_and_member(b: Branch) -> tuple[str, str]:
    """amy's token, and a member boss registered."""
    boss, amy = await b.login("boss"), await b.login("amy")
    return amy, await member(b, boss)


async def approved_topup(b: Branch, token: str, mid: str, approver: str, password: str
                         ) -> tuple[int, Any]:
    return await b.api.call("POST", "/topup", {
        "member": mid, "yuan": OVER_LIMIT,
        "approver": {"name": approver, "password": password}}, token=token)


def cash(b: Branch, mid: str) -> int:
    return int(b.ledger.balance(mid)["cash"])


@pytest.mark.asyncio
async def test_a_cashier_guessing_an_approvers_password_is_locked_out(
        tmp_path: Path, checked: list[str]) -> None:
    async with branch(tmp_path) as b:
        boss, amy, bob = await b.login("boss"), await b.login("amy"), await b.login("bob")
        mid = await member(b, boss)
        del checked[:]
        answers = [await approved_topup(b, amy, mid, "mgr", f"guess-{i}") for i in range(50)]
        assert [s for s, _ in answers[:5]] == [403] * 5
        assert {body["error"] for _, body in answers[:5]} == {"permission_denied"}
        assert [s for s, _ in answers[5:]] == [429] * 45
        status, body = answers[-1]
        assert body["error"] == "too_many_attempts"
        assert "try again in 1 s" in body["message"]
        assert b.api.last_headers["Retry-After"] == "1"
        assert len(checked) == 5  # locked: refused before the password is looked at

        # Even the right password is refused, unchecked, while the name is locked: a
        # guesser who found it learns nothing.
        status, body = await approved_topup(b, amy, mid, "mgr", PW["mgr"])
        assert (status, body["error"]) == (429, "too_many_attempts")
        # Locked by name: another cashier cannot have mgr approve either...
        assert (await approved_topup(b, bob, mid, "mgr", PW["mgr"]))[0] == 429
        # ...and by the operator asking: amy cannot try another approver's password.
        assert (await approved_topup(b, amy, mid, "boss", PW["boss"]))[0] == 429
        assert len(checked) == 5
        assert cash(b, mid) == 0

        b.clock.now += 1.01  # the lock ends
        status, body = await approved_topup(b, bob, mid, "mgr", PW["mgr"])
        assert status == 200, body
        assert cash(b, mid) == 500001


@pytest.mark.asyncio
async def test_approver_guesses_count_as_failed_logins_of_that_name(tmp_path: Path) -> None:
    async with branch(tmp_path) as b:
        amy, mid = await cashier_and_member(b)
        for i in range(5):
            assert (await approved_topup(b, amy, mid, "mgr", f"guess-{i}"))[0] == 403
        # mgr's own login is locked now, from any address, the right password too.
        status, body = await b.api.call("POST", "/login",
                                        {"operator": "mgr", "password": PW["mgr"]})
        assert (status, body["error"]) == (429, "too_many_attempts")


@pytest.mark.asyncio
async def test_an_approver_locked_at_login_cannot_approve(
        tmp_path: Path, checked: list[str]) -> None:
    async with branch(tmp_path) as b:
        amy, mid = await cashier_and_member(b)
        for i in range(5):
            status, _ = await b.api.call("POST", "/login",
                                         {"operator": "mgr", "password": f"guess-{i}"})
            assert status == 401
        del checked[:]
        status, body = await approved_topup(b, amy, mid, "mgr", PW["mgr"])
        assert (status, body["error"]) == (429, "too_many_attempts"), body
        assert checked == []
        assert cash(b, mid) == 0


@pytest.mark.asyncio
async def test_a_right_approval_forgives_earlier_typos(tmp_path: Path) -> None:
    async with branch(tmp_path) as b:
        amy, mid = await cashier_and_member(b)
        for _ in range(3):
            for i in range(4):  # four typos, then the right one: never locked
                assert (await approved_topup(b, amy, mid, "mgr", f"typo-{i}"))[0] == 403
            status, body = await approved_topup(b, amy, mid, "mgr", PW["mgr"])
            assert status == 200, body
        assert cash(b, mid) == 3 * 500001


@pytest.mark.asyncio
async def test_approver_passwords_are_checked_off_the_loop(
        tmp_path: Path, checked: list[str]) -> None:
    # As a login's: ~30 ms of scrypt on the loop would stall every till and sync.
    async with branch(tmp_path) as b:
        amy, mid = await cashier_and_member(b)
        del checked[:], threads[:]
        assert (await approved_topup(b, amy, mid, "mgr", "typo"))[0] == 403
        status, body = await approved_topup(b, amy, mid, "mgr", PW["mgr"])
        assert status == 200, body
        assert len(checked) == 2  # once each, though the operation asks for it again
        assert threading.get_ident() not in threads


def test_the_openapi_document_lists_429_where_an_approver_is_taken() -> None:
    from peer.api import openapi

    doc = openapi("/api")
    assert "429" in doc["paths"]["/topup"]["post"]["responses"]
