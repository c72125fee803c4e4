"""Bad input at the command line, alone and handed to a running node (a tester's
findings, 7 December, late evening): a JSON number of more than 4,300 digits in
`--json-body` or `--pref` was a Python traceback; refusals named a parameter as the
library does (`yuan must be ...`, `change_text ...`, `debit_id ...`), not by the
option the person typed; an amount typed in full-width digits ("１２") was refused
without the "type it as 12" that `money.parse_yuan` says, the shape check refusing it
first. Real CLI processes on real data directories; the running node is a real node."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from cluster import cluster
from conftest import CliResult, run_cli

from crdtledger import rules
from crdtledger.ledger import Ledger

LONG_NUMBER = "1" + "0" * 5000  # past int()'s 4,300 digits


def state(data: Path) -> dict[str, str]:
    """Every table of the store, as a digest each (the refused attempts' list aside)."""
    with Ledger.open(data, lock=False) as ledger:
        conn = ledger.storage.conn
        names = [n for (n,) in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' "
            "AND name NOT LIKE 'sqlite_%' AND name != 'refusals'")]
        return {t: hashlib.sha256(repr(conn.execute(
            f"SELECT * FROM {t} ORDER BY 1").fetchall()).encode()).hexdigest() for t in names}


def refused(r: CliResult) -> str:
    assert r.code == 1, (r.code, r.out, r.err)
    assert "Traceback" not in r.err, r.err
    lines = r.err.strip().splitlines()
    assert len(lines) == 1, r.err
    return lines[0]


@pytest.fixture
def shop(tmp_path: Path) -> tuple[Path, str]:
    data = tmp_path / "sh01"
    assert run_cli("init", "--node", "SH01", "--chain", "acme", data=data).code == 0
    member = run_cli("member", "add", "--name", "李雷", "--phone", "13800000001", "--json",
                     data=data).json()["member_id"]
    assert run_cli("topup", "--member", member, "--amount", "100.00", data=data).code == 0
    return data, str(member)


@pytest.mark.parametrize("argv", [
    ("rule", "set", "settings", "--json-body", f'{{"note": {LONG_NUMBER}}}'),
    ("rule", "set", "services", "--json-body", f"[-{LONG_NUMBER}]"),
    # A key misspelt: a preference it does not know is read as JSON.
    ("member", "edit", "--member", "{member}", "--pref", f"strenght={LONG_NUMBER}"),
], ids=["rule body", "negative in a list", "member pref misspelt"])
def test_a_json_number_too_long_to_read_is_refused_with_a_sentence(
        shop: tuple[Path, str], argv: tuple[str, ...]) -> None:
    data, member = shop
    before = state(data)
    said = refused(run_cli(*(a.replace("{member}", member) for a in argv), data=data))
    assert "too long" in said and "digits" not in said.split(":")[0], said
    assert state(data) == before


# (what is typed, the refusal's start) for parameters the library names otherwise.
NAMED: list[tuple[tuple[str, ...], str]] = [
    (("topup", "--member", "{member}", "--amount", "12.345"), "--amount must be"),
    (("debit", "--member", "{member}", "--amount", "1e3"), "--amount must be"),
    (("topup", "--member", "{member}", "--amount", "1" * 20), "--amount is longer than"),
    (("correct", "--member", "{member}", "--change", "NaN", "--reason", "x"),
     "--change must be"),
    (("quote", "refund", "--debit", "nope"), "--debit must be"),
    (("card", "show", "--card", "C" * 100), "--card is longer than"),
    (("rule", "set", "settings", "--json-body", "{}", "--effective-from", "2026-02-30"),
     "--effective-from must be"),
    (("member", "find", ""), "query must not be empty"),
]


def test_a_refusal_names_the_option_typed(shop: tuple[Path, str]) -> None:
    data, member = shop
    before = state(data)
    for argv, start in NAMED:
        said = refused(run_cli(*(a.replace("{member}", member) for a in argv), data=data))
        assert said.startswith(f"crdtledger: {start}"), (argv, said)
    # What the ledger says of a member or a card is not a parameter's: left as it was.
    said = refused(run_cli("debit", "--member", "0000000000000.SH01", "--amount", "1.00",
                           data=data))
    assert said == "crdtledger: unknown member 0000000000000.SH01", said
    assert state(data) == before


@pytest.mark.parametrize(("typed", "meant"), [("１２", "12"), ("１２．５０", "12.50")])
def test_an_amount_typed_full_width_says_how_to_type_it(
        shop: tuple[Path, str], typed: str, meant: str) -> None:
    data, member = shop
    before = state(data)
    for argv in (("topup", "--member", member, "--amount", typed),
                 ("correct", "--member", member, "--change", typed, "--reason", "x")):
        said = refused(run_cli(*argv, data=data))
        assert f"type it as {meant}" in said and said.startswith("crdtledger: --"), said
    assert state(data) == before


def test_a_command_handed_to_a_running_node_names_the_option_too(tmp_path: Path) -> None:
    with cluster(tmp_path) as c:
        node = c.add("SH01").start()
        member = run_cli("member", "add", "--name", "韩梅梅", "--phone", "13800000002",
                         "--json", data=node.data).json()["member_id"]
        said = refused(run_cli("topup", "--member", member, "--amount", "１２",
                               data=node.data))
        assert said.startswith("crdtledger: --amount") and "type it as 12" in said, said
        said = refused(run_cli("topup", "--member", member, "--amount", "-5",
                               data=node.data))
        assert said.startswith("crdtledger: --amount must be"), said
        said = refused(run_cli("rule", "set", "settings", "--json-body",
                               f"[{LONG_NUMBER}]", data=node.data))
        assert "too long" in said, said
        r = run_cli("history", "--member", member, "--json", data=node.data)
        assert r.code == 0 and r.json() == [], r


def test_a_refusal_in_json_to_an_output_that_cannot_show_chinese_is_said(
        shop: tuple[Path, str]) -> None:
    """A script reading `--json` through a pipe of another encoding (PYTHONIOENCODING,
    a Windows code page): a refusal holding Chinese was a UnicodeEncodeError traceback,
    where a done command's output gets escapes."""
    data, member = shop
    r = run_cli("debit", "--member", member, "--service", "不存在", "--json", data=data,
                env={"PYTHONIOENCODING": "ascii"})
    said = refused(r)
    error = json.loads(r.out)
    assert error["error"] == "invalid_input" and "不存在" in error["message"], error
    assert "\\u4e0d" in said  # stderr: escaped, not a traceback
    # A done command's JSON too: an emoji was escaped as \U0001f600, which is no JSON.
    assert run_cli("member", "add", "--name", "王😀", "--phone", "13800000009",
                   data=data).code == 0
    r = run_cli("member", "find", "13800000009", "--json", data=data,
                env={"PYTHONIOENCODING": "ascii"})
    assert r.code == 0 and json.loads(r.out)[0]["name"] == "王😀", r


def test_a_redemption_naming_no_gift_is_refused(shop: tuple[Path, str]) -> None:
    """`points redeem --gift ""` (or spaces) was taken: points gone, in the history and
    the books, for a gift nobody named. And without --gift at all."""
    data, member = shop
    assert run_cli("debit", "--member", member, "--amount", "50.00", data=data).code == 0
    before = state(data)
    for gift in ("", "   ", "\u3000"):
        said = refused(run_cli("points", "redeem", "--member", member, "--points", "5",
                               "--gift", gift, data=data))
        assert said == "crdtledger: --gift is required", (gift, said)
    r = run_cli("points", "redeem", "--member", member, "--points", "5", data=data)
    assert r.code == 2 and "--gift" in r.err and "Traceback" not in r.err, r
    assert state(data) == before
    r = run_cli("points", "redeem", "--member", member, "--points", "5", "--gift", " 毛巾 ",
                "--json", data=data)
    assert r.json()["gift"] == "毛巾", r


def test_an_amount_pasted_with_spaces_is_taken_as_the_api_and_the_counter_take_it(
        shop: tuple[Path, str]) -> None:
    """`--amount " 12 "` was refused by the shape check, though `parse_yuan` strips it
    and the counter's box took it: a person pasting " 12 " means 12.00."""
    data, member = shop
    r = run_cli("topup", "--member", member, "--amount", " 12 ", "--json", data=data)
    assert r.json()["amount"] == 1200, r
    r = run_cli("correct", "--member", member, "--purse", "cash", "--change", "\t-1.50 ",
                "--reason", "x", "--json", data=data)
    assert r.json()["amount"] == 150, r
    r = run_cli("balance", "--member", member, "--json", data=data)
    assert r.json()["cash"] == 10000 + 1200 - 150, r
    # Spaces inside an amount are no paste's: refused as before.
    before = state(data)
    for typed in ("1 2", "12 .50", "+ 12"):
        said = refused(run_cli("topup", "--member", member, "--amount", typed, data=data))
        assert said.startswith("crdtledger: --amount must be"), (typed, said)
    assert state(data) == before


def test_an_integer_option_typed_full_width_says_how_to_type_it(
        shop: tuple[Path, str]) -> None:
    """`--limit １` said "must be a whole number" without the half-width hint the amount
    options give: an integer option is converted from ASCII digits only."""
    data, member = shop
    assert run_cli("debit", "--member", member, "--amount", "50.00", data=data).code == 0
    before = state(data)
    said = refused(run_cli("history", "--member", member, "--limit", "１", data=data))
    assert said == ("crdtledger: --limit '１' is typed in full-width characters: type it "
                    "as 1 (half-width)"), said
    said = refused(run_cli("points", "redeem", "--member", member, "--points", "１０",
                           "--gift", "毛巾", data=data))
    assert said.startswith("crdtledger: --points '１０'") and "type it as 10 " in said, said
    # No hint where the half-width would be refused too: the range is said.
    said = refused(run_cli("history", "--member", member, "--limit", "０", data=data))
    assert "full-width" not in said and said.startswith("crdtledger: --limit must be"), said
    assert state(data) == before


@pytest.mark.parametrize(("kind", "body"), [
    ("levels", [{"name": "  ", "threshold": 0, "discount": "1", "points_multiplier": "1"}]),
    ("branches", {"SH01": "\u3000"}),
    # Invisible alone, or turned backwards by a direction override (every receipt and
    # report reading "\u202e店路西京南" as another name): the API's one-line names refuse
    # both, and these names are no less shown.
    ("levels", [{"name": "\u200b\u3000", "threshold": 0, "discount": "1",
                 "points_multiplier": "1"}]),
    ("branches", {"SH01": "\ufeff"}),
    ("levels", [{"name": "\u202e金卡", "threshold": 0, "discount": "1",
                 "points_multiplier": "1"}]),
    ("branches", {"SH01": "南京西路店\u2067"}),
    ("levels", [{"name": "\u3164", "threshold": 0, "discount": "1",
                 "points_multiplier": "1"}]),
    ("branches", {"SH01": "\u2800\u00ad"}),
], ids=["a level", "a branch", "a level of zero-width", "a branch of zero-width",
        "a level turned backwards", "a branch turned backwards", "a level of a filler",
        "a branch of a braille blank"])
def test_a_name_of_spaces_alone_is_refused_where_the_books_show_it(
        shop: tuple[Path, str], kind: str, body: object) -> None:
    """A level's name is written into every sale's entry, a branch's into reports and
    receipts: a name of spaces was taken, where an empty one was refused."""
    data, _member = shop
    before = state(data)
    said = refused(run_cli("rule", "set", kind, "--json-body",
                           json.dumps(body, ensure_ascii=False), data=data))
    assert "not spaces alone" in said, said
    assert state(data) == before


def test_two_levels_of_one_name_are_refused(shop: tuple[Path, str]) -> None:
    """Levels "金卡" and "金卡 " (or "金卡" twice) were taken: two discounts under one name
    in every sale's entry and the reports by level, and a member pinned to "金卡" got
    whichever came first."""
    data, _member = shop
    before = state(data)
    for second in ("金卡", "金卡 ", "金卡\u3000"):
        body = [{"name": "金卡", "threshold": 0, "discount": "0.9", "points_multiplier": "1"},
                {"name": second, "threshold": 100000, "discount": "0.8",
                 "points_multiplier": "1"}]
        said = refused(run_cli("rule", "set", "levels", "--json-body",
                               json.dumps(body, ensure_ascii=False), data=data))
        assert said.startswith("crdtledger: rule levels is malformed: two levels are "
                               "named 金卡;"), said
    assert state(data) == before


def test_names_in_lookalike_letters_of_another_script_are_refused(
        shop: tuple[Path, str]) -> None:
    """An operator "\u0430my" (a Cyrillic а) beside amy, and a level "V\u0406P" (a
    Cyrillic І) beside VIP, were taken: two operators, two levels, read as one on every
    receipt, in the audit trail and in the reports by level."""
    data, _member = shop
    for name in ("amy", "小王A"):
        assert run_cli("operator", "add", "--name", name, "--password", "secret1",
                       data=data).code == 0
    before = state(data)
    for name, reads_as in (("\u0430my", "amy"), ("\u0410MY", "amy"), ("小王\u0391", "小王A")):
        said = refused(run_cli("operator", "add", "--name", name, "--password", "secret1",
                               data=data))
        assert f"reads as {reads_as}'s" in said, said
    body = [{"name": "VIP", "threshold": 0, "discount": "0.9", "points_multiplier": "1"},
            {"name": "V\u0406P", "threshold": 100000, "discount": "0.8",
             "points_multiplier": "1"}]
    said = refused(run_cli("rule", "set", "levels", "--json-body",
                           json.dumps(body, ensure_ascii=False), data=data))
    assert "two levels are named V\u0406P" in said, said
    assert state(data) == before
    assert run_cli("operator", "add", "--name", "\u0410\u043d\u044f", "--password", "secret1",
                   data=data).code == 0  # Аня, in Cyrillic alone, reads as no other


def test_a_rule_text_turned_around_is_refused(shop: tuple[Path, str]) -> None:
    """A promotion, a service or the shop named "\u202e..." was taken (only the levels'
    and branches' names were judged): "\u202e送30充500" showed as its reverse on every
    counter and receipt of the chain."""
    data, _member = shop
    before = state(data)
    for kind, body in (("promotions", [{"name": "\u202e送30充500", "min": 50000,
                                        "bonus": 3000}]),
                       ("services", {"FOOT60": {"name": "足疗\u2067", "price": 12800}}),
                       ("notifications", {"shop": "\u200f老王足疗"})):
        said = refused(run_cli("rule", "set", kind, "--json-body",
                               json.dumps(body, ensure_ascii=False), data=data))
        assert "holds no direction overrides" in said, said
    assert state(data) == before


def test_a_name_turned_around_from_before_is_shown_as_it_reads(
        shop: tuple[Path, str]) -> None:
    """A member named "\u202e店路西京南" by a release before the API refused it (or a peer
    of one) read in the command line's profile, search, ranking and receipt as
    南京西路店, turned: the override went to the terminal and the printer as it was,
    as a control character no longer does."""
    data, member = shop
    with Ledger.open(data) as ledger:  # the library as such a release wrote it
        ledger.edit_member(ledger.owner, member, fields={"name": "\u202e店路西京南"})
        debit = ledger.debit(ledger.owner, member, amount=1000)["id"]
    for argv in (("member", "show", "--member", member), ("member", "find", "店路"),
                 ("report", "ranking", "--by", "members"),
                 ("receipt", "show", "--entry", debit)):
        r = run_cli(*argv, data=data)
        assert r.code == 0, (argv, r.err)
        assert "?店路西京南" in r.out and "\u202e" not in r.out, (argv, r.out)


# Drawn as nothing: spaces, zero-width, the soft hyphen, the Hangul filler, the braille
# blank (the last three were taken once spaces and zero-width were refused).
BLANKS = ("", "   ", "\u3000", "\u200b", " \u3000\ufeff ", "\u00ad", "\u3164", "\u2800")


def test_a_broadcast_of_a_blank_subject_or_text_is_refused(shop: tuple[Path, str]) -> None:
    """A subject or a text of spaces alone (an input method's U+3000 too) was taken: a
    blank mail to every consenting member of the segment. Refused naming the option."""
    data, member = shop
    assert run_cli("member", "edit", "--member", member, "--email", "m@example.com",
                   "--promo", "yes", data=data).code == 0
    before = state(data)
    for blank in BLANKS:
        for argv, option in ((("--subject", blank, "--text", "{name} 好"), "--subject"),
                             (("--subject", "双十二", "--text", blank), "--text")):
            said = refused(run_cli("notice", "broadcast", *argv, data=data))
            assert said.startswith(f"crdtledger: {option} "), (blank, said)
            assert "Traceback" not in said
    assert state(data) == before
    r = run_cli("notice", "broadcast", "--subject", "双十二", "--text", "{name} 好", "--json",
                data=data)
    assert r.code == 0 and r.json()["queued"] == 1, r


def test_an_activity_named_blank_is_refused_by_the_whole_rule_too(
        shop: tuple[Path, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """`rule set checkin` with a whole body took an activity named with spaces, where
    `activity set` refused it. One held as it was (written before this check) stays,
    and the chain still sets the others beside it."""
    data, _member = shop
    window = {"from": "2026-12-01T09:00", "to": "2036-12-31T21:00", "repeat": "once"}
    before = state(data)
    for blank in BLANKS:
        said = refused(run_cli("rule", "set", "checkin", "--json-body", json.dumps(
            {"A1": {"name": blank, **window}}, ensure_ascii=False), data=data))
        assert "A1: name is" in said, (blank, said)
    assert state(data) == before
    with Ledger.open(data) as ledger:
        monkeypatch.setattr(rules, "blank", lambda _text: False)  # as an older build wrote
        ledger.set_rule(ledger.owner, "checkin", {"OLD": {"name": "  ", **window}})
        monkeypatch.undo()
        ledger.set_activity(ledger.owner, "A2", {"name": "早安签到", **window})
        assert sorted(ledger.activities()) == ["A2", "OLD"]


def test_a_member_named_with_what_draws_nothing_is_refused(shop: tuple[Path, str]) -> None:
    """A member named by a Hangul filler (U+3164) alone was registered: a row of nothing
    on the counter's search, the receipts and the reports. Refused as spaces are."""
    data, _member = shop
    before = state(data)
    for blank in BLANKS[5:]:
        said = refused(run_cli("member", "add", "--name", blank, "--phone", "13800000002",
                               data=data))
        assert said.startswith("crdtledger: --name "), (blank, said)
    assert state(data) == before


def test_an_activity_named_blank_is_refused_where_it_is_set(shop: tuple[Path, str]) -> None:
    """A check-in activity's name of spaces was taken: the counter, the members' page
    and the attendance report named it with nothing. Refused by `activity set`."""
    data, _member = shop
    window = ("--from", "2026-12-01T09:00", "--to", "2036-12-31T21:00")
    before = state(data)
    for blank in BLANKS:
        said = refused(run_cli("activity", "set", "--code", "A1", "--name", blank, *window,
                               data=data))
        assert said.startswith("crdtledger: --name "), (blank, said)
    assert state(data) == before
    r = run_cli("activity", "set", "--code", "A1", "--name", " 早安签到 ", *window, data=data)
    assert r.code == 0, r
    r = run_cli("activity", "list", "--json", data=data)
    assert r.json()["A1"]["name"] == "早安签到", r
