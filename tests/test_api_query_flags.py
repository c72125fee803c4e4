"""Booleans in a query string (GET /stock?low=true), through the HTTP API served on
127.0.0.1 (tests/test_api.py's server and client).

A query's text is read as the operation's schema says: a boolean is true or false (in
any case), or 1 or 0; a bare `?low` is true, as the command line's `--low` is; any
other text is refused with a sentence. Before, the text "true" was checked against
{"type": "boolean"} as it came, so every `?low=...` was refused and the low-stock list
(库存提醒) could not be fetched.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import snapshot
from test_api import BOSS_PW, Api, drive

from crdtledger.ledger import Ledger


async def two_goods(api: Api, token: str) -> None:
    """G1 is low (2 at a threshold of 5), G2 is not (20 at 5)."""
    for code, qty in (("G1", 2), ("G2", 20)):
        status, body = await api.call("POST", "/goods", {
            "code": code, "name": f"洗发水{code}", "price": 3000, "low_stock": 5}, token=token)
        assert status == 201, body
        status, body = await api.call("POST", "/stock/in", {"goods": code, "qty": qty},
                                      token=token)
        assert status == 200, body


@pytest.mark.parametrize(("query", "codes"), [
    ("", ["G1", "G2"]),
    ("?low=true", ["G1"]), ("?low=True", ["G1"]), ("?low=TRUE", ["G1"]), ("?low=1", ["G1"]),
    ("?low", ["G1"]), ("?low=", ["G1"]),
    ("?low=false", ["G1", "G2"]), ("?low=False", ["G1", "G2"]), ("?low=0", ["G1", "G2"]),
    ("?low=true&branch=SH01", ["G1"]),
])
def test_the_low_stock_list_takes_a_boolean_in_the_query(
        tmp_path: Path, query: str, codes: list[str]) -> None:
    async def go(ledger: Ledger, api: Api) -> None:
        boss = await api.login("boss", BOSS_PW)
        await two_goods(api, boss)
        status, body = await api.call("GET", "/stock" + query, token=boss)
        assert status == 200, body
        assert sorted(r["code"] for r in body) == codes
        assert all(r["low"] for r in body if r["code"] == "G1")

    drive(tmp_path, go)


@pytest.mark.parametrize("raw", ["yes", "on", "2", "truee", "%20true", "-1", "null"])
def test_any_other_text_for_a_boolean_is_refused_with_a_sentence(
        tmp_path: Path, raw: str) -> None:
    async def go(ledger: Ledger, api: Api) -> None:
        boss = await api.login("boss", BOSS_PW)
        await two_goods(api, boss)
        before = snapshot(ledger)
        status, body = await api.call("GET", f"/stock?low={raw}", token=boss)
        assert status == 400, body
        assert body["error"] == "invalid_input"
        assert body["message"].startswith("low must be true or false (or 1 or 0), not "), body
        assert snapshot(ledger) == before

    drive(tmp_path, go)


def test_whole_numbers_in_the_query_still_read_as_before(tmp_path: Path) -> None:
    async def go(ledger: Ledger, api: Api) -> None:
        boss = await api.login("boss", BOSS_PW)
        for i in range(3):
            status, body = await api.call("POST", "/members", {
                "name": "王芳", "phone": f"1381234567{i}"}, token=boss)
            assert status == 201, body
        status, body = await api.call("GET", "/members?q=王芳&limit=2", token=boss)
        assert status == 200 and len(body) == 2, body
        status, body = await api.call("GET", "/members?q=王芳&limit=true", token=boss)
        assert status == 400 and body["message"] == 'limit must be a whole number, not "true"'

    drive(tmp_path, go)
