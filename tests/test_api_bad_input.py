"""Bad input at the HTTP API that its other tests leave out (a probe of every route,
18th wave): a query naming a parameter twice or one the route does not take, and a
body that is not JSON, each refused with a sentence of its own and changing nothing.
The real API on 127.0.0.1 (tests/test_api.py's server) over a real SQLite store.
"""

from __future__ import annotations

import json
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


def test_a_body_that_is_not_json_is_refused_in_words_not_pythons(tmp_path: Path) -> None:
    # json.loads's own messages were passed on: "'utf-16-le' codec can't decode byte
    # 0x00 in position 2: truncated data", "maximum recursion depth exceeded while
    # decoding a JSON array from a unicode string", "Expecting value: line 1 column 1
    # (char 0)" for an empty body.
    async def go(ledger: Ledger, api: Api) -> None:
        boss = await api.login("boss", BOSS_PW)
        mid = await topped_up(api, boss)
        before = snapshot(ledger, [mid])
        as_json = {"Content-Type": "application/json"}
        cases: list[tuple[bytes, str]] = [
            (b"", "empty"),
            (b"   ", "empty"),
            (b"\xff\xfe\x00", "UTF-8"),
            (b'{"name": "\xc3"}', "UTF-8"),
            (b"[" * 50_000, "deep"),
            (b'{"name": ' + b"9" * 5000 + b"}", "digits"),
            (b'{"name": ', "line 1, column 10"),
            (b"{'name': 1}", "line 1, column 2"),
            (b'{"name": "x"} x', "line 1, column 15"),
            ('{"name": "x"}'.encode("utf-16"), "UTF-8"),  # JSON travels as UTF-8 (RFC 8259)
        ]
        for data, says in cases:
            # A route whose body is required: /debit's fields are all optional, so it
            # reads no body as {} (test_api_no_fields).
            status, body = await api.call("POST", "/members", data=data, headers=as_json,
                                          token=boss)
            assert (status, body["error"]) == (400, "invalid_json"), (data[:20], body)
            message = body["message"]
            assert message.startswith("the request body is "), (data[:20], message)
            assert says in message, (data[:20], message)
            for python in ("codec", "Expecting", "char ", "recursion", "decode"):
                assert python not in message, (data[:20], message)
        # A byte-order mark before UTF-8 JSON is read as before.
        body_bytes = b"\xef\xbb\xbf" + json.dumps({"member": mid, "amount": 1}).encode()
        status, body = await api.call("POST", "/debit", data=body_bytes, headers=as_json,
                                      token=boss)
        assert status == 200, body
        assert ledger.balance(mid)["cash"] == before[f"balance:{mid}"]["cash"] - 1

    drive(tmp_path, go)
