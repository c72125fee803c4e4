"""Bad input at the HTTP API that its other tests leave out (a probe of every route,
18th wave): a query naming a parameter twice or one the route does not take, refused
with a sentence of its own and changing nothing.
The real API on 127.0.0.1 (tests/test_api.py's server) over a real SQLite store.
"""

from __future__ import annotations

from pathlib import Path

from helpers import snapshot
from test_api import BOSS_PW, Api, drive, topped_up

from crdtledger.ledger import Ledger


def test_a_query_naming_a_parameter_twice_or_an_unknown_one_is_refused(
        tmp_path: Path) -> None:
    # Read as the first value, `?for=SH01&for=SH02` exported for SH01 and
    # `?limit=1&limit=500` listed one; a mistyped filter (`?dya=`, `?operatr=`) was
    # dropped and the unfiltered answer given as if it were the one asked for.
    async def go(ledger: Ledger, api: Api) -> None:
        boss = await api.login("boss", BOSS_PW)
        mid = await topped_up(api, boss)
        before = snapshot(ledger, [mid])
        refused = [
            (f"/members/{mid}/history?limit=1&limit=500", "limit", "twice"),
            ("/sync/export?for=SH01&for=SH02", "for", "twice"),
            ("/stock?low=true&low=false", "low", "twice"),
            ("/reports/daily?dya=2026-01-01", "dya", "day"),  # it says what it takes
            ("/audit?operatr=amy", "operatr", "operator"),
            (f"/members/{mid}/balance?x=1", '"x"', "takes no query"),
        ]
        for path, named, says in refused:
            status, body = await api.call("GET", path, token=boss)
            assert status == 400 and body["error"] == "invalid_input", (path, body)
            assert named in body["message"] and says in body["message"], (path, body)
            assert "\n" not in body["message"]
        # A write does not read its query either: its fields are its body's.
        status, body = await api.call("POST", "/debit?amount=999999",
                                      {"member": mid, "amount": 1}, token=boss)
        assert (status, body["error"]) == (400, "invalid_input"), body
        assert "amount" in body["message"]
        assert snapshot(ledger, [mid]) == before
        # What the routes take still reads as before, bare booleans too.
        for path in (f"/members/{mid}/history?limit=1", "/stock?low", "/stock?low=1&branch=SH01",
                     "/reports/daily?day=2026-01-01", f"/members/{mid}/balance"):
            status, body = await api.call("GET", path, token=boss)
            assert status == 200, (path, body)

    drive(tmp_path, go)

