"""Exact money and the pycrdt number trap (DESIGN.md, "Traps found").

pycrdt stores Python ints as float64 and hands them back as floats; ints of 2**64
and above panic inside Rust (`pyo3_runtime.PanicException`, a BaseException that
`pytest.raises(InvalidAmount)` would not catch, so these tests fail loudly if a
value ever reaches pycrdt unchecked).
"""

from __future__ import annotations

import json
from decimal import Decimal

import pytest
from helpers import name_branches, new_ledger, snapshot, sync
from hypothesis import given
from hypothesis import strategies as st

from crdtledger.commit import put
from crdtledger.errors import InvalidAmount, InvalidInput
from crdtledger.model import ledger_doc, normalise, normalise_entry
from crdtledger.money import (
    MAX_AMOUNT,
    apply_rate,
    check_amount,
    check_count,
    format_yuan,
    from_crdt,
    parse_yuan,
    points_for,
)

# --- parse_yuan ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "fen"),
    [("12.34", 1234), ("12.3", 1230), ("12", 1200), (" 5.00 ", 500), ("0.01", 1),
     ("0.5", 50), ("99999999999.99", 9_999_999_999_999), ("\t7\n", 700)],
)
def test_parse_yuan_accepts(text: str, fen: int) -> None:
    got = parse_yuan(text)
    assert got == fen
    assert type(got) is int


@pytest.mark.parametrize(
    "text",
    ["12.345", "-5", "abc", "0", "0.00", "1e3", "", "   ", "12.", ".5", "１２", "١٢",
     "12.３", "+5", "1,000", "12.34.5", "NaN", "inf", "0x10", "1_000", "12 .34",
     "999999999999", "100000000000.00", "9" * 40, "12.34元"],
)
def test_parse_yuan_refuses(text: str) -> None:
    with pytest.raises(InvalidAmount):
        parse_yuan(text)


def test_parse_yuan_says_why() -> None:
    with pytest.raises(InvalidAmount, match="more than two decimals"):
        parse_yuan("12.345")
    with pytest.raises(InvalidAmount, match="above zero"):
        parse_yuan("0.00")
    # An input method's full-width digits: refused (an amount is read back as typed),
    # saying how to type it (it read "not a positive yuan amount like 12.34").
    with pytest.raises(InvalidAmount, match=r"full-width digits: type it as 12\.50"):
        parse_yuan("１２．５０")


@pytest.mark.parametrize("value", [1234, 12.34, None, b"12", Decimal("12.34"), ["12"]])
def test_parse_yuan_refuses_non_text(value: object) -> None:
    with pytest.raises(InvalidAmount):
        parse_yuan(value)  # type: ignore[arg-type]


@given(st.integers(min_value=1, max_value=9_999_999_999_999))
def test_format_then_parse_round_trip(fen: int) -> None:
    assert parse_yuan(format_yuan(fen)) == fen


@given(st.integers(min_value=0, max_value=99_999_999_999),
       st.one_of(st.none(), st.from_regex(r"\A[0-9]{1,2}\Z")))
def test_parse_then_format_round_trip(yuan: int, decimals: str | None) -> None:
    text = str(yuan) if decimals is None else f"{yuan}.{decimals}"
    fen = yuan * 100 + int((decimals or "0").ljust(2, "0"))
    if fen == 0:
        with pytest.raises(InvalidAmount):
            parse_yuan(text)
        return
    assert parse_yuan(text) == fen
    # Canonical form: always two decimals, same value.
    assert format_yuan(parse_yuan(text)) == f"{fen // 100}.{fen % 100:02d}"
    assert Decimal(format_yuan(fen)) == Decimal(text)


def test_format_yuan_negative_and_small() -> None:
    assert format_yuan(-105) == "-1.05"
    assert format_yuan(5) == "0.05"
    assert format_yuan(0) == "0.00"


# --- ranges ----------------------------------------------------------------------


@pytest.mark.parametrize("value", [2**53, 2**53 + 1, 2**63, 2**64, 2**80, MAX_AMOUNT + 1,
                                   -1, 0, True, 1.0, "5", None])
def test_check_amount_refuses(value: object) -> None:
    with pytest.raises(InvalidAmount):
        check_amount(value)


def test_check_amount_bounds() -> None:
    assert check_amount(1) == 1
    assert check_amount(MAX_AMOUNT) == MAX_AMOUNT
    assert check_amount(0, allow_zero=True) == 0
    assert MAX_AMOUNT < 2**53


@pytest.mark.parametrize("value", [0, -3, 2**64, True, 2.0, MAX_AMOUNT + 1])
def test_check_count_refuses(value: object) -> None:
    with pytest.raises(InvalidAmount):
        check_count(value)


@pytest.mark.parametrize("value", [1.5, float("nan"), float("inf"), True, "3", 2e13, None])
def test_from_crdt_refuses_inexact(value: object) -> None:
    with pytest.raises(ValueError):
        from_crdt(value)


def test_from_crdt_exact() -> None:
    assert from_crdt(-105.0) == -105 and type(from_crdt(-105.0)) is int
    assert type(from_crdt(7)) is int


def test_normalise_nested() -> None:
    got = normalise({"a": [1.0, -2.0, {"b": 3.0}], "c": 1.5, "d": "x"})
    assert got == {"a": [1, -2, {"b": 3}], "c": 1.5, "d": "x"}
    assert [type(v) for v in got["a"][:2]] == [int, int]
    assert type(got["a"][2]["b"]) is int


# --- rounding rules --------------------------------------------------------------


@pytest.mark.parametrize(
    ("fen", "rate", "want"),
    [(5, "0.5", 3), (15, "0.1", 2), (14, "0.1", 1), (25, "0.9", 23), (12800, "0.95", 12160),
     (1, "0.5", 1), (1, "0.49", 0), (9999, "1", 9999), (333, "0.333", 111)],
)
def test_apply_rate_rounds_half_up(fen: int, rate: str, want: int) -> None:
    got = apply_rate(fen, rate)
    assert got == want
    assert type(got) is int


@pytest.mark.parametrize(
    ("fen", "per_yuan", "mult", "want"),
    [(99, "1", "1", 0), (199, "1", "1", 1), (12160, "1", "1.2", 145), (10240, "1", "2", 204),
     (100, "0.5", "1", 0), (1000, "1.5", "1.5", 22), (0, "1", "1", 0)],
)
def test_points_for_rounds_down(fen: int, per_yuan: str, mult: str, want: int) -> None:
    got = points_for(fen, per_yuan, mult)
    assert got == want
    assert type(got) is int


@given(st.integers(min_value=0, max_value=10**9),
       st.decimals(min_value=0, max_value=1, places=3, allow_nan=False))
def test_apply_rate_is_within_half_a_fen(fen: int, rate: Decimal) -> None:
    got = apply_rate(fen, str(rate))
    assert abs(Decimal(got) - Decimal(fen) * rate) <= Decimal("0.5")


# --- through the real library ------------------------------------------------------


def _assert_ints(value: object, where: str) -> None:
    """Every number in a structure is an exact int (no floats from pycrdt)."""
    if isinstance(value, dict):
        for k, v in value.items():
            _assert_ints(v, f"{where}.{k}")
    elif isinstance(value, list | tuple):
        for i, v in enumerate(value):
            _assert_ints(v, f"{where}[{i}]")
    else:
        assert not isinstance(value, float), f"{where} is a float: {value!r}"


def test_amounts_read_back_exact_from_projection_and_documents(tmp_path) -> None:
    a = new_ledger(tmp_path, "SH01")
    b = new_ledger(tmp_path, "SH02")
    o = a.owner
    m = a.add_member(o, name="王芳", phone="13800000001")
    a.set_rule(o, "promotions", [{"min": 10000, "bonus": 2345, "name": "送"}])
    top = a.topup(o, m, 10001)
    deb = a.debit(o, m, amount=10105)  # cash first, then bonus: deltas -10001 and -104
    ref = a.refund(o, deb["id"], 105)
    cor = a.correct(o, m, "points", -50, "test negative points delta")
    pkg = a.sell_package(o, m, "FOOT60", 3, 0)

    assert deb["deltas"][:2] == [["cash", "SH01", -10001], ["bonus", "SH01", -104]]
    bal = a.balance(m)
    # points: 101 earned on 101.05 yuan, 1 taken back by the refund, 50 corrected away
    assert bal == {"cash": 105, "bonus": 2241, "points": 50, "packages": {pkg["id"]: 3}}
    assert ref["deltas"] == [["cash", "SH01", 105], ["points", "SH01", -1]]
    _assert_ints(bal, "balance")
    _assert_ints(a.rights(m, "bonus"), "rights")
    for e in a.history(m):
        _assert_ints(e, e["kind"])
    _assert_ints(a.level(m), "level")

    # From the document itself: pycrdt gives floats back; the model turns them exact.
    for e in (top, deb, ref, cor, pkg):
        ld = a.storage.doc(ledger_doc(a.storage.day_of(e["at"])[:7]))
        raw = ld.roots["entries"][e["id"]]
        exact = normalise_entry(e["id"], raw)
        _assert_ints(exact, "normalised")
        assert exact["deltas"] == [list(d) for d in e["deltas"]]
        assert exact["amount"] == e["amount"]
        assert json.loads(json.dumps(exact)) == exact

    # And at a replica that learned everything through sync (remote projection path).
    sync(a, b)
    assert b.balance(m) == a.balance(m)
    _assert_ints(b.balance(m), "remote balance")
    for e in b.history(m):
        _assert_ints(e, "remote " + e["kind"])
    assert [e["deltas"] for e in b.history(m)] == [e["deltas"] for e in a.history(m)]

    # And after reopening (documents replayed from the log, projections from SQLite).
    path = a.storage.dir
    a.close()
    a2 = type(a).open(path)
    assert a2.balance(m) == b.balance(m)
    _assert_ints(a2.history(m), "reopened")
    a2.close()
    b.close()


def test_large_values_and_negative_transfer_deltas_are_exact(tmp_path) -> None:
    """Values near 2**33 and the negative delta of a transfer come back exact."""
    a = new_ledger(tmp_path, "SH01")
    m = a.add_member(a.owner, name="李", phone="13800000002")
    # a chain that takes such top-ups without a second person (approvals bind the owner)
    a.set_rule(a.owner, "approval", {"topup_limit": 10**10, "correction_limit": 10_000})
    a.topup(a.owner, m, 9_007_199_254)  # large but valid
    name_branches(a, "SH01", "SH02")  # rights go only to a branch the chain knows
    a.transfer_rights(a.owner, m, "SH02", 9_007_199_000)
    r = a.rights(m)
    assert r == {"SH01": 254, "SH02": 9_007_199_000}
    assert all(type(v) is int for v in r.values())
    t = a.history(m)[0]
    assert t["deltas"] == [["cash", "SH01", -9_007_199_000], ["cash", "SH02", 9_007_199_000]]
    a.close()


@pytest.mark.parametrize("huge", [2**53, 2**63, 2**64, 2**64 + 1, 10**30])
def test_out_of_range_refused_before_pycrdt(tmp_path, huge: int) -> None:
    a = new_ledger(tmp_path, "SH01")
    o = a.owner
    m = a.add_member(o, name="赵", phone="13800000003")
    a.topup(o, m, 10_000)
    a.issue_card(o, m, "CARD1")
    before = snapshot(a, [m])
    calls = [
        lambda: a.topup(o, m, huge),
        lambda: a.topup(o, m, -huge),
        lambda: a.debit(o, m, amount=huge),
        lambda: a.debit(o, m, amount=huge, pay="cash"),
        lambda: a.debit(o, m, service="FOOT60", qty=huge, pay="cash"),
        lambda: a.correct(o, m, "cash", huge, "x"),
        lambda: a.correct(o, m, "points", -huge, "x"),
        lambda: a.transfer_rights(o, m, "SH02", huge),
        lambda: a.redeem_points(o, m, huge, "towel"),
        lambda: a.convert_points(o, m, huge),
        lambda: a.sell_package(o, m, "FOOT60", huge, 100),
        lambda: a.sell_package(o, m, "FOOT60", 1, huge),
        lambda: a.issue_card(o, m, "CARD2", fee=huge),
    ]
    for call in calls:
        with pytest.raises(InvalidAmount):
            call()
    # A rule can't smuggle such a number in either (it would reach every node).
    with pytest.raises(InvalidInput):
        a.set_rule(o, "promotions", [{"min": 1, "bonus": huge}])
    with pytest.raises(InvalidInput):
        a.set_rule(o, "services", {"BIG": {"name": "x", "price": huge}})
    assert snapshot(a, [m]) == before
    a.close()


def test_debit_whose_amounts_overflow_after_multiplying_is_refused(tmp_path) -> None:
    """qty × price within check_count/check_amount but beyond MAX_AMOUNT together."""
    a = new_ledger(tmp_path, "SH01")
    o = a.owner
    m = a.add_member(o, name="钱", phone="13800000004")
    before = snapshot(a, [m])
    with pytest.raises(InvalidAmount):
        a.debit(o, m, service="BODY90", qty=MAX_AMOUNT, pay="cash")
    assert snapshot(a, [m]) == before
    a.close()


def test_conversion_beyond_max_amount_is_refused_not_quarantined(tmp_path) -> None:
    """Regression: convert_points used to write an entry whose bonus value exceeded
    MAX_AMOUNT; every replica then quarantined it, after it had been acknowledged."""
    a = new_ledger(tmp_path, "SH01")
    o = a.owner
    m = a.add_member(o, name="孙", phone="13800000005")
    a.set_rule(o, "conversion", {"points_per_yuan": 1})
    a.add_operator(o, "boss", "boss-secret", roles=["manager"])
    a.correct(o, m, "points", MAX_AMOUNT, "bulk points", approver=("boss", "boss-secret"))
    before = snapshot(a, [m])
    with pytest.raises(InvalidAmount):
        a.convert_points(o, m, MAX_AMOUNT)
    assert snapshot(a, [m]) == before
    ok = a.convert_points(o, m, 10)
    assert ok["amount"] == 1000
    assert a.balance(m)["bonus"] == 1000
    assert a.storage.conn.execute("SELECT COUNT(*) FROM quarantine").fetchone()[0] == 0
    a.close()


@pytest.mark.parametrize("rate", [1.5, "1.5", True, 2.0, " 100", "１００", "0", -3, 10**20, None])
def test_conversion_rate_must_be_whole_points(tmp_path, rate: object) -> None:
    """Points a yuan of the conversion rule: int() cut 1.5 to 1 and read true as 1 when
    converting, so a rate typed wrong converted at another rate than the one shown."""
    a = new_ledger(tmp_path, "SH01")
    before = a.rule("conversion")
    with pytest.raises(InvalidInput, match="points per yuan"):
        a.set_rule(a.owner, "conversion", {"points_per_yuan": rate})
    assert a.rule("conversion") == before
    a.close()


def test_conversion_refuses_a_malformed_rate_already_in_force(tmp_path) -> None:
    """A rate an older build let through (1.5) is refused when converting, with the
    reason, rather than cut to 1: nothing is written."""
    a = new_ledger(tmp_path, "SH01")
    o = a.owner
    m = a.add_member(o, name="周", phone="13800000006")
    a.correct(o, m, "points", 500, "bulk points")
    record = {"kind": "conversion", "effective_from": "2020-01-01", "rev": 1, "by": o,
              "body": json.dumps({"points_per_yuan": 1.5})}
    a._write(put("rules", "rules", a.clock.mint(), record))
    assert a.rule("conversion") == {"points_per_yuan": 1.5}
    before = snapshot(a, [m])
    with pytest.raises(InvalidInput, match="whole number"):
        a.convert_points(o, m, 300)
    assert snapshot(a, [m]) == before
    a.set_rule(o, "conversion", {"points_per_yuan": "150"})
    assert a.convert_points(o, m, 300)["amount"] == 200
    a.close()
