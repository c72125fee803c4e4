"""The branch node's HTTP JSON API (peer/api.py), end to end.

Each test runs a real aiohttp server on 127.0.0.1, mounted at /api as the node mounts
it, and talks to it with a real aiohttp client. Behind it is a real ledger in
tmp_path and a `Standalone` host. Server, client and ledger share one event loop
thread, as in the node, so a test can read the ledger directly between calls.
Every refusal is checked to have changed nothing (`helpers.snapshot`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from helpers import name_branches, new_ledger, snapshot, sync

from crdtledger.ledger import Ledger
from crdtledger.model import BUILTIN_ROLES, PERMISSIONS
from peer.api import (
    MAX_REQUEST_LINE,
    MAX_SESSIONS_PER_OPERATOR,
    ROUTES,
    ApiHost,
    IdempotencyKeys,
    Sessions,
    Standalone,
    api_app,
)

BOSS_PW = "boss-secret"  # boss: role owner
AMY_PW = "amy-secret"  # amy: role cashier


class Api:
    """A client of one running server: `call` returns (status, decoded JSON or None)."""

    def __init__(self, http: aiohttp.ClientSession, base: str) -> None:
        self.http = http
        self.base = base
        self.last_headers: Any = None

    async def call(self, method: str, path: str, body: Any = None, *, token: str | None = None,
                   data: str | bytes | None = None, headers: dict[str, str] | None = None
                   ) -> tuple[int, Any]:
        hdrs = dict(headers or {})
        if token is not None:
            hdrs["Authorization"] = f"Bearer {token}"
        kwargs: dict[str, Any] = {"data": data} if data is not None else {}
        if body is not None:
            kwargs["json"] = body
        async with self.http.request(method, self.base + path, headers=hdrs, **kwargs) as r:
            self.last_headers = r.headers
            text = await r.text()
            if text:
                assert r.content_type == "application/json", (r.status, text)
            return r.status, json.loads(text) if text else None

    async def login(self, name: str, password: str) -> str:
        status, body = await self.call("POST", "/login", {"operator": name,
                                                          "password": password})
        assert status == 200, body
        return str(body["token"])


@contextlib.asynccontextmanager
async def serving(host: ApiHost, sessions: Sessions | None = None,
                  keys: IdempotencyKeys | None = None) -> AsyncIterator[Api]:
    """The API mounted at /api of a root application, on a free port of 127.0.0.1."""
    root = web.Application()
    root.add_subapp("/api", api_app(host, sessions=sessions, keys=keys))
    runner = web.AppRunner(root, access_log=None, max_line_size=MAX_REQUEST_LINE,
                           max_field_size=MAX_REQUEST_LINE)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        port = runner.addresses[0][1]
        async with aiohttp.ClientSession() as http:
            yield Api(http, f"http://127.0.0.1:{port}/api")
    finally:
        await runner.cleanup()


def with_operators(ledger: Ledger) -> Ledger:
    ledger.add_operator(ledger.owner, "boss", BOSS_PW, ["owner"])
    ledger.add_operator(ledger.owner, "amy", AMY_PW, ["cashier"])
    return ledger


Scenario = Callable[[Ledger, Api], Awaitable[None]]


def drive(tmp_path: Path, scenario: Scenario, sessions: Sessions | None = None) -> None:
    """Run `scenario` against node SH01 (operators boss and amy) served on 127.0.0.1."""

    async def main() -> None:
        ledger = with_operators(new_ledger(tmp_path, "SH01"))
        try:
            async with serving(Standalone(ledger), sessions) as api:
                await scenario(ledger, api)
        finally:
            ledger.close()

    asyncio.run(main())


async def new_member(api: Api, token: str, phone: str = "13812345678", **extra: Any) -> str:
    status, body = await api.call("POST", "/members", {"name": "王芳", "phone": phone, **extra},
                                  token=token)
    assert status == 201, body
    return str(body["member_id"])


async def topped_up(api: Api, token: str, yuan: str = "100.00") -> str:
    """A new member with `yuan` of stored value."""
    mid = await new_member(api, token)
    status, body = await api.call("POST", "/topup", {"member": mid, "yuan": yuan}, token=token)
    assert status == 200, body
    return mid


# --- sessions -------------------------------------------------------------------


def test_login_gives_a_token_and_the_operators_permissions(tmp_path: Path) -> None:
    async def go(ledger: Ledger, api: Api) -> None:
        status, body = await api.call("POST", "/login", {"operator": "boss",
                                                         "password": BOSS_PW})
        assert status == 200
        assert body["name"] == "boss" and body["node"] == "SH01"
        assert body["permissions"] == sorted(PERMISSIONS)
        assert body["expires_in"] == 12 * 3600
        assert body["operator"] == ledger.authenticate("boss", BOSS_PW)
        assert (await api.call("GET", "/sync/status", token=body["token"]))[0] == 200

        status, body = await api.call("POST", "/login", {"operator": "amy", "password": AMY_PW})
        assert status == 200
        assert body["permissions"] == sorted(BUILTIN_ROLES["cashier"])

    drive(tmp_path, go)


def test_wrong_passwords_and_tokens_are_refused_and_change_nothing(tmp_path: Path) -> None:
    async def go(ledger: Ledger, api: Api) -> None:
        boss = await api.login("boss", BOSS_PW)
        mid = await topped_up(api, boss)
        before = snapshot(ledger, [mid])
        for creds in ({"operator": "boss", "password": "wrong-one"},
                      {"operator": "nobody", "password": BOSS_PW},
                      {"operator": "boss", "password": ""}):
            status, body = await api.call("POST", "/login", creds)
            assert (status, body["error"]) == (401, "login_failed")
            assert body["message"] == "wrong operator name or password"

        topup = {"member": mid, "yuan": "50.00"}
        for headers in ({}, {"Authorization": "Bearer not-a-token"},
                        {"Authorization": f"Basic {boss}"}, {"Authorization": "Bearer "}):
            status, body = await api.call("POST", "/topup", topup, headers=headers)
            assert (status, body["error"]) == (401, "unauthorized")
            assert api.last_headers["WWW-Authenticate"] == "Bearer"
            assert (await api.call("GET", f"/members/{mid}/balance", headers=headers))[0] == 401
        assert snapshot(ledger, [mid]) == before

    drive(tmp_path, go)


def test_logout_and_expiry_end_a_session(tmp_path: Path) -> None:
    now = [1000.0]
    sessions = Sessions(ttl_s=60, clock=lambda: now[0])

    async def go(ledger: Ledger, api: Api) -> None:
        token = await api.login("boss", BOSS_PW)
        other = await api.login("boss", BOSS_PW)
        assert await api.call("POST", "/logout", token=token) == (204, None)
        assert (await api.call("GET", "/sync/status", token=token))[0] == 401
        assert (await api.call("GET", "/sync/status", token=other))[0] == 200  # its own
        now[0] += 59
        assert (await api.call("GET", "/sync/status", token=other))[0] == 200
        now[0] += 1
        status, body = await api.call("GET", "/sync/status", token=other)
        assert (status, body["error"]) == (401, "unauthorized")

    drive(tmp_path, go, sessions)


def test_an_operator_logging_in_in_a_loop_ends_only_its_own_oldest_sessions() -> None:
    """Past the node's MAX_SESSIONS the oldest login went, whoever's: one cashier's
    script logging in 10,000 times logged every other till out."""
    sessions = Sessions()
    boss = sessions.open("boss-id", "boss")
    first = sessions.open("amy-id", "amy")
    for _ in range(MAX_SESSIONS_PER_OPERATOR * 3):
        last = sessions.open("amy-id", "amy")
    assert sessions.get(boss) is not None
    assert sessions.get(first) is None and sessions.get(last) is not None
    assert sum(s.operator == "amy-id" for s in sessions._by_token.values()) == (
        MAX_SESSIONS_PER_OPERATOR)


# --- permissions ----------------------------------------------------------------


def test_a_cashier_without_a_permission_is_refused_and_nothing_changes(tmp_path: Path) -> None:
    async def go(ledger: Ledger, api: Api) -> None:
        boss = await api.login("boss", BOSS_PW)
        amy = await api.login("amy", AMY_PW)
        mid = await topped_up(api, boss)
        status, body = await api.call("POST", "/debit", {"member": mid, "amount": 2000},
                                      token=amy)
        assert status == 200  # a cashier may debit...
        debit_id = body["id"]
        before = snapshot(ledger, [mid])
        refused: list[tuple[str, str, Any]] = [
            ("POST", "/refund", {"debit_id": debit_id}),  # ...but not refund
            ("PATCH", f"/members/{mid}", {"deleted": True}),  # member.delete
            ("PATCH", f"/members/{mid}", {"level": "金卡"}),  # member.upgrade
            ("POST", "/topup", {"member": mid, "yuan": "5000.01"}),  # above the approval limit
            ("GET", "/reports/daily", None),
            ("GET", "/reports/settlement", None),
            ("GET", "/reports/ranking", None),
        ]
        for method, path, body in refused:
            status, answer = await api.call(method, path, body, token=amy)
            assert status == 403, (path, answer)
            assert answer["error"] in ("permission_denied", "approval_required")
            assert "amy" in answer["message"] or "approver" in answer["message"]
            assert ledger.authenticate("amy", AMY_PW) not in answer["message"]
        assert snapshot(ledger, [mid]) == before

        # The large top-up goes through with an approver's password.
        status, body = await api.call("POST", "/topup", {
            "member": mid, "yuan": "5000.01",
            "approver": {"name": "boss", "password": BOSS_PW}}, token=amy)
        assert status == 200, body
        assert body["approver"] == ledger.authenticate("boss", BOSS_PW)
        assert ledger.balance(mid)["cash"] == 10000 - 2000 + 500001

    drive(tmp_path, go)


def test_an_operator_who_serves_no_members_cannot_read_them(tmp_path: Path) -> None:
    async def go(ledger: Ledger, api: Api) -> None:
        ledger.define_role(ledger.owner, "it", ["backup", "sync"])
        ledger.add_operator(ledger.owner, "tech", "tech-secret", ["it"])
        boss = await api.login("boss", BOSS_PW)
        tech = await api.login("tech", "tech-secret")
        mid = await topped_up(api, boss)
        for path in (f"/members/{mid}", f"/members/{mid}/balance", f"/members/{mid}/history",
                     f"/members/{mid}/rights", f"/members/{mid}/level", "/members?q=5678"):
            status, body = await api.call("GET", path, token=tech)
            assert (status, body["error"]) == (403, "permission_denied"), path
        assert (await api.call("GET", "/sync/status", token=tech))[0] == 200

    drive(tmp_path, go)


# --- members and money ------------------------------------------------------------


def test_add_member_top_up_debit_and_balance(tmp_path: Path) -> None:
    async def go(ledger: Ledger, api: Api) -> None:
        amy = await api.login("amy", AMY_PW)
        mid = await new_member(api, amy, gender="F", birthday="05-17", tags=["VIP"],
                               prefs={"strength": "轻"}, custom={"来源": "大众点评"})
        status, found = await api.call("GET", "/members?q=5678", token=amy)
        assert status == 200
        assert found == [{"id": mid, "name": "王芳", "phone": "138****5678", "home": "SH01"}]

        status, m = await api.call("PATCH", f"/members/{mid}",
                                   {"notes": "喜欢安静", "tags_add": ["常客"],
                                    "tags_remove": ["VIP"]}, token=amy)
        assert status == 200, m
        assert (m["notes"], m["tags"], m["prefs"]) == ("喜欢安静", ["常客"], {"strength": "轻"})

        status, card = await api.call("POST", f"/members/{mid}/cards",
                                      {"card_no": "nfc-0001", "pin": "2468"}, token=amy)
        assert status == 201, card
        assert (card["card_no"], card["status"], card["has_pin"]) == ("NFC-0001", "active", True)

        status, done = await api.call("POST", "/topup", {"card": "NFC-0001", "pin": "2468",
                                                         "yuan": "100.00"}, token=amy)
        assert status == 200, done
        assert done["kind"] == "topup" and done["amount"] == 10000
        assert done["member"] == mid and ledger.balance(mid)["cash"] == 10000

        status, done = await api.call("POST", "/debit", {"member": mid, "amount": 3000},
                                      token=amy)
        assert status == 200, done
        assert (done["kind"], done["amount"]) == ("debit", 3000)
        assert await api.call("GET", f"/members/{mid}/balance", token=amy) == (
            200, {"cash": 7000, "bonus": 0, "points": 30, "packages": {}})

        # 128.00 of FOOT60 is more than the 70.00 left: refused, naming both figures.
        before = snapshot(ledger, [mid])
        status, body = await api.call("POST", "/debit", {"card": "nfc-0001", "pin": "2468",
                                                         "service": "FOOT60"}, token=amy)
        assert status == 409
        assert (body["error"], body["purse"], body["balance"], body["wanted"]) == (
            "insufficient_funds", "cash", 7000, 12800)
        assert "70.00" in body["message"] and "128.00" in body["message"]
        assert snapshot(ledger, [mid]) == before

        status, body = await api.call("POST", "/debit", {"member": mid, "service": "HAIR",
                                                         "qty": 1}, token=amy)
        assert status == 200, body
        assert body["service"] == "HAIR" and body["amount"] == 6800

        status, bal = await api.call("GET", f"/members/{mid}/balance", token=amy)
        assert (status, bal) == (200, ledger.balance(mid))
        assert bal["cash"] == 200
        status, hist = await api.call("GET", f"/members/{mid}/history?limit=2", token=amy)
        assert status == 200
        assert [e["kind"] for e in hist] == ["debit", "debit"]
        status, hist = await api.call("GET", f"/members/{mid}/history", token=amy)
        assert [e["kind"] for e in hist] == ["debit", "debit", "topup", "card"]
        assert await api.call("GET", f"/members/{mid}/rights", token=amy) == (
            200, {"SH01": 200})
        assert await api.call("GET", f"/members/{mid}/rights?purse=points", token=amy) == (
            200, {"SH01": 30 + 68})
        status, lvl = await api.call("GET", f"/members/{mid}/level", token=amy)
        assert (status, lvl["name"], lvl["topped"], lvl["spent"]) == (200, "普通会员", 10000,
                                                                        9800)
        status, m = await api.call("GET", f"/members/{mid}", token=amy)
        assert status == 200
        assert m["balance"] == bal and m["phone"] == "13812345678"
        assert [c["card_no"] for c in m["cards"]] == ["NFC-0001"]

        unknown = "0000000000000.SH01"
        for path in (f"/members/{unknown}", f"/members/{unknown}/balance",
                     f"/members/{unknown}/history", "/cards/NOPE"):
            status, body = await api.call("GET", path, token=amy)
            assert (status, body["error"]) == (404, "not_found"), path

    drive(tmp_path, go)


BAD_AMOUNTS: list[dict[str, Any]] = [
    {"yuan": "12.345"}, {"yuan": "-5"}, {"yuan": "0"}, {"yuan": "0.00"}, {"yuan": "1e3"},
    {"yuan": "１２"}, {"yuan": "1 2"}, {"yuan": ""}, {"yuan": 12.34}, {"yuan": 1234},
    {"amount": 0}, {"amount": -5}, {"amount": 12.5}, {"amount": 100.0}, {"amount": "100"},
    {"amount": True}, {"amount": None}, {"amount": 10**14}, {"amount": 10**400},
]


def test_bad_amounts_are_refused_and_change_nothing(tmp_path: Path) -> None:
    async def go(ledger: Ledger, api: Api) -> None:
        boss = await api.login("boss", BOSS_PW)
        mid = await topped_up(api, boss)
        status, body = await api.call("POST", "/debit", {"member": mid, "amount": 1000},
                                      token=boss)
        debit_id = body["id"]
        before = snapshot(ledger, [mid])
        for bad in BAD_AMOUNTS:
            for path, body in (("/topup", {"member": mid, **bad}),
                               ("/debit", {"member": mid, **bad}),
                               ("/refund", {"debit_id": debit_id, **bad})):
                status, answer = await api.call("POST", path, body, token=boss)
                assert (status, answer["error"]) == (400, "invalid_amount"), (path, bad, answer)
        # Both forms, or none: refused as input, not guessed at.
        for path, body in (("/topup", {"member": mid, "amount": 100, "yuan": "1.00"}),
                           ("/topup", {"member": mid}),
                           ("/debit", {"member": mid, "amount": 100, "service": "HAIR"}),
                           ("/refund", {"debit_id": debit_id, "amount": 100, "qty": 1})):
            status, answer = await api.call("POST", path, body, token=boss)
            assert (status, answer["error"]) == (400, "invalid_input"), (path, body)
            assert "one of" in answer["message"]
        assert snapshot(ledger, [mid]) == before

    drive(tmp_path, go)


def test_refund_part_then_the_rest(tmp_path: Path) -> None:
    async def go(ledger: Ledger, api: Api) -> None:
        boss = await api.login("boss", BOSS_PW)
        mid = await topped_up(api, boss)
        status, body = await api.call("POST", "/debit", {"member": mid, "yuan": "50.00"},
                                      token=boss)
        debit_id = body["id"]
        status, body = await api.call("POST", "/refund", {"debit_id": debit_id,
                                                          "yuan": "20.00", "reason": "早退"},
                                      token=boss)
        assert status == 200, body
        assert (body["kind"], body["ref"]) == ("refund", debit_id)
        assert ledger.balance(mid)["cash"] == 7000
        status, body = await api.call("POST", "/refund", {"debit_id": debit_id}, token=boss)
        assert (status, body["amount"], ledger.balance(mid)["cash"]) == (200, 3000, 10000)

        before = snapshot(ledger, [mid])
        status, body = await api.call("POST", "/refund", {"debit_id": debit_id, "amount": 1},
                                      token=boss)
        assert (status, body["error"]) == (400, "invalid_amount")
        status, body = await api.call("POST", "/refund", {"debit_id": "0000000000000.SH01"},
                                      token=boss)
        assert (status, body["error"]) == (404, "not_found")
        assert snapshot(ledger, [mid]) == before

    drive(tmp_path, go)


def test_card_loss_replacement_and_pin(tmp_path: Path) -> None:
    async def go(ledger: Ledger, api: Api) -> None:
        boss = await api.login("boss", BOSS_PW)
        mid = await topped_up(api, boss)
        await api.call("POST", f"/members/{mid}/cards", {"card_no": "C1", "pin": "1357"},
                       token=boss)
        pay = {"card": "C1", "pin": "1357", "amount": 500}

        before = snapshot(ledger, [mid])
        status, body = await api.call("POST", "/debit", {**pay, "pin": "9999"}, token=boss)
        assert (status, body["error"]) == (422, "wrong_pin")
        assert snapshot(ledger, [mid]) == before

        status, card = await api.call("POST", "/cards/c1/lost", token=boss)
        assert (status, card["status"]) == (200, "lost")
        before = snapshot(ledger, [mid])
        status, body = await api.call("POST", "/debit", pay, token=boss)
        assert (status, body["error"]) == (409, "card_lost")
        status, body = await api.call("POST", "/cards/C1/lost", token=boss)
        assert (status, body["error"]) == (400, "invalid_input")  # lost already
        assert snapshot(ledger, [mid]) == before

        assert (await api.call("POST", "/cards/C1/found", token=boss))[1]["status"] == "active"
        status, new = await api.call("POST", "/cards/C1/replace", {"new_no": "C2"}, token=boss)
        # the new card carries the old card's PIN (issue 13)
        assert (status, new["card_no"], new["member"], new["has_pin"]) == (200, "C2", mid, True)
        assert (await api.call("GET", "/cards/C1", token=boss))[1]["status"] == "replaced"
        status, body = await api.call("POST", "/debit", pay, token=boss)
        assert (status, body["error"]) == (409, "card_inactive")
        status, body = await api.call("POST", "/debit", {"card": "C2", "amount": 500},
                                      token=boss)
        assert (status, body["error"]) == (422, "wrong_pin")
        status, body = await api.call("POST", "/debit", {**pay, "card": "C2"}, token=boss)
        assert (status, body["member"]) == (200, mid)
        assert ledger.balance(mid)["cash"] == 9500  # the balance stayed
        status, card = await api.call("POST", "/cards/C2/return", token=boss)
        assert (status, card["status"]) == (200, "returned")

    drive(tmp_path, go)


def test_a_debit_whose_rights_sit_at_another_branch_names_it(tmp_path: Path) -> None:
    async def go(ledger: Ledger, api: Api) -> None:
        sh02 = new_ledger(tmp_path, "SH02")
        try:
            mid = sh02.add_member(sh02.owner, name="李雷", phone="13900000001")
            sh02.topup(sh02.owner, mid, 10000)
            sync(ledger, sh02)
        finally:
            sh02.close()
        boss = await api.login("boss", BOSS_PW)
        assert (await api.call("GET", f"/members/{mid}/balance", token=boss))[1]["cash"] == 10000
        before = snapshot(ledger, [mid])
        status, body = await api.call("POST", "/debit", {"member": mid, "yuan": "30.00"},
                                      token=boss)
        assert status == 409
        assert (body["error"], body["branch"], body["holders"]) == (
            "rights_elsewhere", "SH02", {"SH02": 10000})
        assert "SH02" in body["message"]
        assert snapshot(ledger, [mid]) == before

    drive(tmp_path, go)


# --- reports ------------------------------------------------------------------------


def test_reports(tmp_path: Path) -> None:
    async def go(ledger: Ledger, api: Api) -> None:
        boss = await api.login("boss", BOSS_PW)
        mid = await topped_up(api, boss, "300.00")
        await api.call("POST", "/debit", {"member": mid, "service": "FOOT60"}, token=boss)
        await api.call("POST", "/debit", {"member": mid, "amount": 2000}, token=boss)
        name_branches(ledger, "SH01", "SH02")  # rights go only to a branch it knows
        ledger.transfer_rights(ledger.owner, mid, "SH02", 5000)  # rights moved: no debt
        today = ledger.today()

        status, daily = await api.call("GET", "/reports/daily", token=boss)
        assert status == 200
        assert daily == {"day": today, "branch": "all", "new_members": 1, "sales": 14800,
                         "debits": 2, "refunds": 0, "topup_cash": 30000, "topups": 1,
                         "cards_sold": 0, "card_sales": 0,
                         "topup_by_method": {"cash": 30000}, "till_by_method": {},
                         "exit_refunds": 0}
        status, other = await api.call("GET", "/reports/daily?day=2020-01-01&branch=SH01",
                                       token=boss)
        assert (status, other["sales"], other["branch"]) == (200, 0, "SH01")

        status, ranking = await api.call("GET", "/reports/ranking", token=boss)
        assert status == 200
        assert ranking == [{"member": mid, "amount": 14800, "count": 2, "name": "王芳",
                            "phone": "138****5678"}]
        status, ranking = await api.call("GET", f"/reports/ranking?by=services&from={today}"
                                         f"&to={today}&limit=5", token=boss)
        assert ranking == [{"service": "FOOT60", "amount": 12800, "count": 1}]

        status, settlement = await api.call("GET", "/reports/settlement", token=boss)
        assert status == 200
        assert settlement["pairs"] == [] and settlement["total"] == 0
        # SH01 served its own member 148.00; 152.00 of what it collected is still prepaid.
        assert settlement["branches"] == {"SH01": {
            "opening": 0, "collected": 30000, "served_own": 14800, "served_for_others": 0,
            "served_by_others": 0, "net": 0, "removed": 0, "unspent": 15200,
            "bonus_served": 0, "unattributed": 0}}

        for query in ("/reports/daily?day=2026-13-01", "/reports/daily?day=20260101",
                      "/reports/settlement?from=yesterday", "/reports/ranking?by=cats",
                      "/reports/ranking?limit=0", "/reports/ranking?limit=ten",
                      "/reports/daily?branch=sh01"):
            status, body = await api.call("GET", query, token=boss)
            assert (status, body["error"]) == (400, "invalid_input"), query

    drive(tmp_path, go)


def test_sync_status_is_the_hosts(tmp_path: Path) -> None:
    async def go(ledger: Ledger, api: Api) -> None:
        amy = await api.login("amy", AMY_PW)
        assert await api.call("GET", "/sync/status", token=amy) == (
            200, {"node": "SH01", "chain": "default", "peers": [], "restored": None,
                  "another_pc": None, "faults": [], "refused": [], "clock": None,
                  "closing_differs": None,
                  "rights_refused": {}, "unfunded": {}, "revoked": False,
                  "certificate_expires": None})  # an open store: its own certificate

    drive(tmp_path, go)


# --- HTTP-level refusals and the document ---------------------------------------------


def test_malformed_requests_are_refused_as_json_and_change_nothing(tmp_path: Path) -> None:
    async def go(ledger: Ledger, api: Api) -> None:
        boss = await api.login("boss", BOSS_PW)
        mid = await topped_up(api, boss)
        before = snapshot(ledger, [mid])
        as_json = {"Content-Type": "application/json"}
        cases: list[tuple[str, str, str | bytes, dict[str, str], int, str]] = [
            ("POST", "/debit", "{bad", as_json, 400, "invalid_json"),
            ("POST", "/debit", b"\xff\xfe\x00", as_json, 400, "invalid_json"),
            ("POST", "/debit", "[" * 50_000, as_json, 400, "invalid_json"),
            ("POST", "/debit", "[]", as_json, 400, "invalid_input"),
            ("POST", "/debit", json.dumps({"member": mid, "amount": 1}),
             {"Content-Type": "text/plain"}, 415, "unsupported_media_type"),
            ("POST", "/debit", json.dumps({"member": mid, "amount": 1, "note": "x" * 70_000}),
             as_json, 413, "body_too_large"),
            ("POST", "/debit", json.dumps({"member": mid, "amount": 1, "tip": 5}), as_json,
             400, "invalid_input"),
            # A lone surrogate is valid JSON but not text: pycrdt would panic on it.
            ("POST", "/members", '{"name": "\\ud800", "phone": "13800000009"}', as_json, 400,
             "invalid_input"),
            # ... and quoted in the refusal of a field of another type, or of an unknown
            # field's name, the refusal failed to encode: a plain-text 500.
            ("POST", "/debit", '{"amount": "\\ud800"}', as_json, 400, "invalid_amount"),
            ("POST", "/topup", '{"approver": "\\ud800"}', as_json, 400, "invalid_input"),
            ("POST", "/members", '{"name": "x", "phone": "13800000009", "\\ud800": 1}',
             as_json, 400, "invalid_input"),
            ("POST", "/rules", '{"kind": "settings", "body": {"note": "\\ud800"}}', as_json,
             400, "invalid_input"),
            ("PATCH", f"/members/{mid}", "{}", as_json, 400, "invalid_input"),
            # A level none of the chain's: kept as typed, shown, counted for nothing.
            ("PATCH", f"/members/{mid}", '{"level": "../../etc/passwd"}', as_json, 400,
             "invalid_input"),
            ("GET", "/members/not-an-id", "", {}, 400, "invalid_input"),
            # A field given twice: read as the last, it topped up 500.00 for 1.00.
            ("POST", "/topup", f'{{"member": "{mid}", "amount": 100, "amount": 50000}}',
             as_json, 400, "invalid_input"),
            ("POST", "/rules", '{"kind": "settings", "body": {"a": 1, "a": 2}}', as_json,
             400, "invalid_input"),
            # A member nobody knows, well formed: refused, not "nothing was due".
            ("POST", "/points/expire", '{"member": "01J5Q8ZK3T7XM.SH01"}', as_json, 404,
             "not_found"),
            ("GET", "/nowhere", "", {}, 404, "not_found"),
            ("DELETE", f"/members/{mid}", "", {}, 405, "method_not_allowed"),
        ]
        for method, path, data, headers, want, code in cases:
            status, body = await api.call(method, path, data=data, headers=headers, token=boss)
            assert (status, body["error"]) == (want, code), (path, data[:40], body)
            assert isinstance(body["message"], str) and "\n" not in body["message"]
        assert "PATCH" in api.last_headers["Allow"]
        assert snapshot(ledger, [mid]) == before

    drive(tmp_path, go)


def test_openapi_document_lists_every_route(tmp_path: Path) -> None:
    async def go(ledger: Ledger, api: Api) -> None:
        status, doc = await api.call("GET", "/openapi.json")  # no token needed
        assert status == 200
        assert doc["openapi"].startswith("3.") and doc["servers"] == [{"url": "/api"}]
        assert doc["components"]["securitySchemes"]["bearer"] == {
            "type": "http", "scheme": "bearer", "description": "a token from POST /login"}
        listed = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
        assert listed == {(r.method, r.path) for r in ROUTES}
        for r in ROUTES:
            op = doc["paths"][r.path][r.method.lower()]
            assert str(r.status) in op["responses"]
            if r.auth:
                assert "security" not in op and {"401", "403"} <= set(op["responses"])
            else:
                assert op["security"] == []
            if r.body is not None:
                assert op["requestBody"]["content"]["application/json"]["schema"] == r.body
                assert {"400", "413", "415"} <= set(op["responses"])
        money = doc["paths"]["/debit"]["post"]["requestBody"]["content"]["application/json"]
        assert money["schema"]["properties"]["amount"]["type"] == "integer"

    drive(tmp_path, go)


def test_a_long_query_is_refused_in_json_as_documented(tmp_path: Path) -> None:
    """A query of 2,000 values (16 KB of request line, past aiohttp's own 8 KB) reaches
    the route, which refuses it as its schema says: JSON, not the server's plain text
    (schemathesis sent one)."""
    async def main() -> None:
        ledger = with_operators(new_ledger(tmp_path, "SH01"))
        try:
            async with serving(Standalone(ledger)) as api:
                token = await api.login("boss", BOSS_PW)
                code, body = await api.call("GET", "/audit?" + "limit=x&" * 2000,
                                            token=token)
                assert code == 400 and body["error"] == "invalid_input", body
        finally:
            ledger.close()

    asyncio.run(main())


def test_a_fault_of_ours_is_answered_in_json(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """An exception no handler expected (a liar's list where a member id belongs made
    a member's every edit one) was aiohttp's HTML page: now JSON as every answer, and
    the traceback in the node's log."""
    async def main() -> None:
        ledger = with_operators(new_ledger(tmp_path, "SH01"))
        try:
            async with serving(Standalone(ledger)) as api:
                token = await api.login("boss", BOSS_PW)
                mid = await topped_up(api, token)

                def broken(*_a: Any, **_k: Any) -> Any:
                    raise sqlite3.IntegrityError("UNIQUE constraint failed")

                monkeypatch.setattr(Ledger, "balance", broken)  # a fake fault, named so
                code, body = await api.call("GET", f"/members/{mid}/balance", token=token)
                assert code == 500 and body["error"] == "internal_error", body
        finally:
            ledger.close()

    asyncio.run(main())


def test_a_closing_shop_hands_its_rights_over_through_the_api(tmp_path: Path) -> None:
    """POST /rights/handover and GET /rights/held: the owner's; a cashier is refused
    (403) and a typo'd branch is refused (400), each changing nothing."""
    async def go(ledger: Ledger, api: Api) -> None:
        name_branches(ledger, "SH01", "SH02")
        boss, amy = await api.login("boss", BOSS_PW), await api.login("amy", AMY_PW)
        mid = await topped_up(api, boss, "80.00")
        held = {"node": "SH01", "members": 1, "held": {"cash": 8000}}
        assert await api.call("GET", "/rights/held", token=boss) == (200, held)
        before = snapshot(ledger, [mid])
        status, body = await api.call("POST", "/rights/handover", {"to": "SH02"}, token=amy)
        assert status == 403, body
        status, body = await api.call("POST", "/rights/handover", {"to": "SH2O"}, token=boss)
        assert status == 400 and "not a branch of this chain" in body["message"], body
        assert snapshot(ledger, [mid]) == before
        status, body = await api.call("POST", "/rights/handover", {"to": "SH02"}, token=boss)
        assert status == 200 and body == {"to": "SH02", "members": 1, "entries": 1,
                                          "moved": {"cash": 8000}}, body
        assert await api.call("GET", "/rights/held?node=SH02", token=boss) == (
            200, {"node": "SH02", "members": 1, "held": {"cash": 8000}})
        assert (await api.call("GET", "/rights/held", token=boss))[1]["held"] == {}

    drive(tmp_path, go)


def test_a_store_that_cannot_be_written_is_a_503_that_says_so(tmp_path: Path) -> None:
    """A disk found full (SQLite's own SQLITE_FULL, made here by capping the store's
    pages) answered aiohttp's bare 500 with a traceback in the log. It is a JSON 503
    naming the cause, nothing is done, and once there is room the same sale goes
    through."""
    async def go(ledger: Ledger, api: Api) -> None:
        boss = await api.login("boss", BOSS_PW)
        mid = await topped_up(api, boss)
        conn = ledger.storage.conn
        (pages,) = conn.execute("PRAGMA page_count").fetchone()
        conn.execute(f"PRAGMA max_page_count = {pages}")
        done = 0
        for _ in range(20):  # a page or two may still have room
            status, body = await api.call("POST", "/debit", {"member": mid, "amount": 100},
                                          token=boss)
            if status != 200:
                break
            done += 1
        assert status == 503, body
        assert body["error"] == "storage_unavailable" and "full" in body["message"]
        before = snapshot(ledger, [mid])
        status, body = await api.call("POST", "/debit", {"member": mid, "amount": 100},
                                      token=boss)
        assert status == 503 and snapshot(ledger, [mid]) == before
        conn.execute("PRAGMA max_page_count = 1073741823")
        status, body = await api.call("POST", "/debit", {"member": mid, "amount": 100},
                                      token=boss)
        assert status == 200, body
        assert ledger.balance(mid)["cash"] == 10000 - 100 * (done + 1)

    drive(tmp_path, go)
