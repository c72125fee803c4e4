"""Bad input at the HTTP API that its other tests leave out (a probe of every route,
18th wave): a query naming a parameter twice or one the route does not take, and a
body that is not JSON, each refused with a sentence of its own and changing nothing.
The real API on 127.0.0.1 (tests/test_api.py's server) over a real SQLite store.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

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


def test_a_redemption_naming_no_gift_is_refused(tmp_path: Path) -> None:
    """A redemption with a gift of "" or spaces was taken (points gone for a gift
    nobody named), and one naming no gift at all."""
    async def go(ledger: Ledger, api: Api) -> None:
        boss = await api.login("boss", BOSS_PW)
        mid = await topped_up(api, boss)
        status, body = await api.call("POST", "/debit", {"member": mid, "yuan": "50.00"},
                                      token=boss)
        assert status == 200, body
        before = snapshot(ledger, [mid])
        for gift, says in (("", "gift is required"), ("  ", "gift is required"),
                           ("\u3000", "gift is required"), (None, "lacks gift")):
            sent = {"member": mid, "points": 5} | ({} if gift is None else {"gift": gift})
            status, body = await api.call("POST", "/points/redeem", sent, token=boss)
            assert (status, body["error"]) == (400, "invalid_input"), (gift, body)
            assert says in body["message"], (gift, body)
        assert snapshot(ledger, [mid]) == before
        status, body = await api.call("POST", "/points/redeem",
                                      {"member": mid, "points": 5, "gift": "毛巾"}, token=boss)
        assert status == 200 and body["gift"] == "毛巾", body

    drive(tmp_path, go)


def test_an_amount_with_spaces_at_its_ends_is_taken_as_at_the_command_line(
        tmp_path: Path) -> None:
    async def go(ledger: Ledger, api: Api) -> None:
        boss = await api.login("boss", BOSS_PW)
        mid = await topped_up(api, boss)
        status, body = await api.call("POST", "/topup", {"member": mid, "yuan": " 12 "},
                                      token=boss)
        assert (status, body["amount"]) == (200, 1200), body
        assert ledger.balance(mid)["cash"] == 10000 + 1200
        before = snapshot(ledger, [mid])
        status, body = await api.call("POST", "/topup", {"member": mid, "yuan": "1 2"},
                                      token=boss)
        assert (status, body["error"]) == (400, "invalid_amount"), body
        assert snapshot(ledger, [mid]) == before

    drive(tmp_path, go)


def test_a_field_sent_in_full_width_characters_says_how_to_send_it(tmp_path: Path) -> None:
    """The API said "yuan must be a yuan amount like 12.34 ..., not "１２"" of an input
    method's digits, where the command line says how to type them."""
    async def go(ledger: Ledger, api: Api) -> None:
        boss = await api.login("boss", BOSS_PW)
        mid = await topped_up(api, boss)
        before = snapshot(ledger, [mid])
        sent: list[tuple[str, str, Any, str, str]] = [
            ("POST", "/topup", {"member": mid, "yuan": "１２．５０"}, "invalid_amount",
             'yuan "１２．５０" is typed in full-width characters: send it as "12.50" '
             "(half-width)"),
            ("POST", "/corrections", {"member": mid, "purse": "cash", "change_text": "－５",
                                      "reason": "x"}, "invalid_amount",
             'change_text "－５" is typed in full-width characters: send it as "-5"'),
            ("POST", "/points/redeem", {"member": mid, "points": "５", "gift": "毛巾"},
             "invalid_amount", 'points "５" is typed in full-width characters: send it as 5 '),
            ("GET", f"/members/{mid}/history?limit=１", None, "invalid_input",
             'limit "１" is typed in full-width characters: send it as 1 (half-width)'),
        ]
        for method, path, body_sent, code, says in sent:
            status, body = await api.call(method, path, body_sent, token=boss)
            assert (status, body["error"]) == (400, code), (path, body)
            assert says in body["message"], (path, body)
        # A PIN is never said back, full-width or not; a refusal that is not the
        # field's own check stays as it was.
        status, body = await api.call("POST", f"/members/{mid}/cards",
                                      {"card_no": "C1", "pin": "１２３４"}, token=boss)
        assert status == 400 and "１２３４" not in body["message"] \
            and "1234" not in body["message"], body
        status, body = await api.call("POST", "/topup", {"member": mid, "yuan": "１２．３４５"},
                                      token=boss)
        assert status == 400 and "full-width" not in body["message"], body
        assert snapshot(ledger, [mid]) == before

    drive(tmp_path, go)


def test_a_blank_broadcast_or_activity_name_is_refused(tmp_path: Path) -> None:
    """A broadcast's subject or text, and a check-in activity's name, of spaces alone
    (U+3000 too, with zero-width characters) were taken: a blank mail to the segment,
    an activity every page named with nothing."""
    async def go(ledger: Ledger, api: Api) -> None:
        boss = await api.login("boss", BOSS_PW)
        status, body = await api.call("POST", "/members", {
            "name": "王芳", "phone": "13812345678", "email": "m@example.com",
            "promo": "yes"}, token=boss)
        assert status == 201, body
        before = snapshot(ledger)
        for blank in ("   ", "\u3000", " \u3000\ufeff "):
            for sent, field in (({"subject": blank, "text": "{name} 好"}, "subject"),
                                ({"subject": "双十二", "text": blank}, "text")):
                status, body = await api.call("POST", "/notices/broadcast", sent, token=boss)
                assert (status, body["error"]) == (400, "invalid_input"), (blank, body)
                assert body["message"].startswith(f"{field} "), (blank, body)
            status, body = await api.call("PUT", "/activities/A1", {
                "name": blank, "from": "2026-12-01T09:00", "to": "2036-12-31T21:00"},
                token=boss)
            assert (status, body["error"]) == (400, "invalid_input"), (blank, body)
            assert body["message"].startswith("name "), (blank, body)
        assert snapshot(ledger) == before
        status, body = await api.call("POST", "/notices/broadcast",
                                      {"subject": "双十二", "text": "{name} 好"}, token=boss)
        assert status == 201 and body["queued"] == 1, body

    drive(tmp_path, go)


def test_an_operator_named_as_another_only_written_otherwise_is_refused(
        tmp_path: Path) -> None:
    """"ａｍｙ" (an input method's full width), "AMY" or "a\u200bmy" beside amy was
    taken: two operators every list and the audit trail show as amy, what one did read
    as the other's."""
    async def go(ledger: Ledger, api: Api) -> None:
        boss = await api.login("boss", BOSS_PW)
        before = snapshot(ledger)
        for name in ("ａｍｙ", "AMY", "a\u200bmy", "amy\u3000"):
            status, body = await api.call("POST", "/operators", {
                "name": name, "password": "another-secret", "roles": ["cashier"]}, token=boss)
            assert (status, body["error"]) == (400, "invalid_input"), (name, body)
            assert "amy" in body["message"], (name, body)
        assert snapshot(ledger) == before
        status, body = await api.call("POST", "/operators", {
            "name": "amy2", "password": "another-secret", "roles": ["cashier"]}, token=boss)
        assert status == 201, body

    drive(tmp_path, go)


def test_an_operator_named_as_another_in_lookalike_letters_is_refused(
        tmp_path: Path) -> None:
    """"bоss" with a Cyrillic о (or "аmy" with a Cyrillic а, "ΒΟSS" in Greek capitals)
    beside boss was taken, and "οwner" with a Greek ο beside the built-in owner: two
    operators every receipt and the audit trail show as one. Chinese names, mixed
    with Latin ones, and a name wholly in Cyrillic that reads as no other, are taken."""
    async def go(ledger: Ledger, api: Api) -> None:
        boss = await api.login("boss", BOSS_PW)

        async def add(name: str) -> tuple[int, dict[str, Any]]:
            return await api.call("POST", "/operators", {
                "name": name, "password": "another-secret", "roles": ["cashier"]},
                token=boss)

        for name in ("小王A", "Наташа"):
            status, body = await add(name)
            assert status == 201, (name, body)
        before = snapshot(ledger)
        for name, reads_as in (("b\u043ess", "boss"), ("\u0430my", "amy"),
                               ("\u0392\u039fSS", "boss"), ("小王\u0410", "小王A"),
                               ("Hаташа", "Наташа"), ("\u03bfwner", "built-in")):
            status, body = await add(name)
            assert (status, body["error"]) == (400, "invalid_input"), (name, body)
            assert reads_as in body["message"], (name, body)
        assert snapshot(ledger) == before
        status, body = await add("小王B")
        assert status == 201, body

    drive(tmp_path, go)
