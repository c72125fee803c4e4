"""The quick check of a replicated ledger entry agrees with the careful one.

normalise_entry takes plain well-formed entries through model._quick_entry and
everything else through model._checked_entry, which alone refuses. Replicas must
accept, refuse and normalise identically, so for any entry, well-formed or broken,
the quick check either steps aside (None) or returns exactly what the careful one
returns: equal values of the same types, keys in the same order.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from crdtledger.hlc import encode, id_time_ms
from crdtledger.model import (
    _OPTIONAL_INTS,
    _OPTIONAL_STRS,
    ENTRY_KINDS,
    InvalidRecord,
    _checked_entry,
    _quick_entry,
    normalise_entry,
)
from crdtledger.money import MAX_AMOUNT

CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
NODE_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_"


class Text(str):
    """A str subclass: the careful path keeps it as is, the quick one must step aside."""


class Count(int):
    """An int subclass, likewise."""


nodes = st.builds(lambda a, b: a + b, st.sampled_from(NODE_CHARS[:-1]),
                  st.text(NODE_CHARS, max_size=15))
stamps = st.text(CROCKFORD, min_size=13, max_size=13)
ids = st.builds(lambda s, n: f"{s}.{n}", stamps, nodes)
purses = st.one_of(st.sampled_from(["cash", "bonus", "points"]),
                   st.builds(lambda i: f"pkg:{i}", ids))


def numbers(lo: int, hi: int) -> st.SearchStrategy[Any]:
    """As pycrdt hands them back (floats, read exactly up to MAX_AMOUNT), or as
    written locally (ints)."""
    return st.one_of(st.integers(lo, hi), st.integers(lo, min(hi, MAX_AMOUNT)).map(float))


odd = st.one_of(
    st.none(), st.booleans(), st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.5, -1.0, 0.0, -0.0, 2.0**48, float(MAX_AMOUNT), float(MAX_AMOUNT + 2),
                     1e300, float("nan"), float("inf")]),
    st.integers(), st.sampled_from([0, -1, MAX_AMOUNT, MAX_AMOUNT + 1, -MAX_AMOUNT - 1,
                                    2**48, 2**48 + 1, 2**64, -(2**64)]),
    st.text(max_size=250), st.builds(Text, st.text(max_size=5)), st.builds(Count, st.integers()),
    st.sampled_from(["", "cash", "HQ", "x" * 41, "x" * 61, "x" * 201, "pkg:bad", "HQ\n"]),
    st.lists(st.integers(), max_size=3), st.tuples(st.text(max_size=3)),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2), st.binary(max_size=3),
)


@st.composite
def entries(draw: st.DrawFn) -> tuple[str, dict[Any, Any]]:
    """A well-formed entry of any kind, with any of the optional fields."""
    node = draw(nodes)
    # Its `at` is its id's time (the schema holds them equal), so its stamp one of a
    # time an `at` may hold: floats are read exactly up to MAX_AMOUNT.
    stamp = encode(draw(st.integers(0, MAX_AMOUNT)) << 16 | draw(st.integers(0, 0xFFFF)))
    key = f"{stamp}.{node}"
    at = id_time_ms(key)
    deltas = draw(st.lists(st.builds(
        lambda p, mine, other, c, up: [p, node if mine or not up else other, c if up else -c],
        purses, st.booleans(), nodes, numbers(1, MAX_AMOUNT), st.booleans()), max_size=8))
    value: dict[Any, Any] = {
        "id": key, "kind": draw(st.sampled_from(sorted(ENTRY_KINDS))), "node": node,
        "member": draw(ids), "op": draw(st.text(max_size=60)),
        "at": draw(st.sampled_from([at, float(at)])),
        "deltas": deltas,
    }
    if draw(st.booleans()):
        value["amount"] = draw(numbers(0, MAX_AMOUNT))
    for f in draw(st.lists(st.sampled_from(sorted(_OPTIONAL_INTS | _OPTIONAL_STRS)))):
        value[f] = draw(numbers(0, MAX_AMOUNT) if f in _OPTIONAL_INTS else st.text(max_size=200))
    order = draw(st.permutations(list(value)))  # pycrdt's order is not ours
    return key, {f: value[f] for f in order}


@st.composite
def broken_entries(draw: st.DrawFn) -> tuple[Any, Any]:
    """A well-formed entry with a few things wrong: odd values, fields missing or
    added, deltas reshaped, the key changed."""
    key, value = draw(entries())
    fields = ["id", "kind", "node", "member", "op", "at", "amount", "deltas",
              *sorted(_OPTIONAL_INTS | _OPTIONAL_STRS)]
    for _ in range(draw(st.integers(1, 3))):
        how = draw(st.integers(0, 6))
        f = draw(st.sampled_from(fields))
        if how == 0:
            value[f] = draw(odd)
        elif how == 1:
            value.pop(f, None)
        elif how == 2:
            value[draw(st.one_of(st.text(max_size=8), st.integers(), st.none(), st.booleans(),
                                 st.builds(Text, st.sampled_from(fields))))] = draw(odd)
        elif how == 3 and type(value.get("deltas")) is list and value["deltas"]:
            was = value["deltas"][draw(st.integers(0, len(value["deltas"]) - 1))]
            d = list(was) if isinstance(was, list | tuple) else [was]
            value["deltas"][draw(st.integers(0, len(value["deltas"]) - 1))] = d
            at = draw(st.integers(0, len(d)))
            if at < len(d):
                d[at] = draw(st.one_of(odd, nodes, purses))
            else:
                d.append(draw(odd))
        elif how == 4:
            value["deltas"] = draw(st.one_of(
                odd, st.lists(st.one_of(odd, st.tuples(purses, nodes, st.integers(1, 9))),
                              max_size=10)))
        elif how == 5:
            key = draw(st.one_of(ids, odd, st.just(f"{key}\n"), st.builds(Text, st.just(key))))
        else:
            value["node"] = draw(nodes)
    return key, value


def exact(x: Any) -> Any:
    """A value with its types and key order spelt out, so 1 and 1.0 (or a str and a
    Text) do not compare equal."""
    if isinstance(x, dict):
        return ("dict", [(exact(k), exact(v)) for k, v in x.items()])
    if isinstance(x, list | tuple):
        return (type(x).__name__, [exact(v) for v in x])
    return (type(x).__name__, repr(x))


def careful(key: Any, value: Any) -> Any:
    try:
        return exact(_checked_entry(key, value))
    except Exception as e:  # whatever the careful path raises, normalise_entry must too
        return ("raises", type(e), str(e))


def check(key: Any, value: Any) -> Any:
    want = careful(key, value)
    quick = _quick_entry(key, value)
    if quick is not None:
        assert exact(quick) == want
    try:
        got = exact(normalise_entry(key, value))
    except Exception as e:
        got = ("raises", type(e), str(e))
    assert got == want
    return quick


@settings(max_examples=200, deadline=None)
@given(entries())
def test_well_formed_entries_take_the_quick_path_to_the_same_result(
        entry: tuple[str, dict[Any, Any]]) -> None:
    key, value = entry
    assert check(key, value) is not None
    assert normalise_entry(key, value)["id"] == key


@settings(max_examples=800, deadline=None)
@given(broken_entries())
def test_broken_entries_are_refused_or_kept_as_the_careful_check_does(
        entry: tuple[Any, Any]) -> None:
    check(*entry)


KEY = "034W7S9E0G000.HQ"
# Values just inside and just outside every limit the careful check sets, and others.
BOUNDARY: list[Any] = [
    None, True, False, 0, 1, -1, 0.0, -0.0, 0.5, 1.0, -1.0, 2, MAX_AMOUNT, MAX_AMOUNT + 1,
    -MAX_AMOUNT, -MAX_AMOUNT - 1, float(MAX_AMOUNT), float(MAX_AMOUNT + 2), -float(MAX_AMOUNT),
    2**48, 2**48 + 1, 2.0**48, 2**64, float("nan"), float("inf"), -float("inf"), Count(1),
    "", "X" * 16, "X" * 17, "x" * 40, "x" * 41, "x" * 60, "x" * 61, "x" * 200, "x" * 201,
    "HQ", "SH01", "hq", "H-Q", "HQ\n", "_HQ", "cash", "bonus", "points", "CASH", "cash\n",
    f"pkg:{KEY}", "pkg:bad", Text("HQ"), Text("cash"), Text("debit"), "debit", "nope",
    KEY, f"{KEY}\n", "034w7s9e0g000.HQ", "034W7S9E0G00.HQ", Text(KEY),
    [], [1], ["cash", "HQ", 1.0], ("cash", "HQ", 1.0), {}, {"a": 1}, b"x",
]


def bases() -> list[dict[Any, Any]]:
    """Well-formed entries: numbers as floats (as pycrdt gives them) and as ints."""
    plain = {"id": KEY, "kind": "debit", "node": "HQ", "member": "034VZ4S0GA000.SH01",
             "op": "owner@HQ", "at": float(id_time_ms(KEY)), "amount": 500.0,
             "deltas": [["cash", "HQ", -500.0], ["points", "SH01", 5.0]],
             "paid": 0.0, "ref": "r", "extra": [1]}
    ints = {k: int(v) if isinstance(v, float) else v for k, v in plain.items()}
    ints["deltas"] = [["cash", "HQ", -500], ["points", "SH01", 5]]
    return [plain, ints]


def test_every_field_one_value_at_a_time() -> None:
    """Each field, each delta element and the key, set in turn to each boundary value,
    or left out: the quick check agrees with the careful one on every case."""
    fields = ["id", "kind", "node", "member", "op", "at", "amount", "deltas",
              *sorted(_OPTIONAL_INTS | _OPTIONAL_STRS)]
    for base in bases():
        assert check(KEY, base) is not None
        for f in fields:
            check(KEY, {k: v for k, v in base.items() if k != f})
            for odd_value in BOUNDARY:
                check(KEY, {**base, f: odd_value})
        for i in range(2):
            for at in range(3):
                for odd_value in BOUNDARY:
                    deltas = [list(d) for d in base["deltas"]]
                    deltas[i][at] = odd_value
                    check(KEY, {**base, "deltas": deltas})
        for key in BOUNDARY:
            check(key, base)
            if isinstance(key, str):
                check(key, {**base, "id": key})
        for n in range(10):
            check(KEY, {**base, "deltas": [["cash", "HQ", 1.0]] * n})


def test_quick_path_steps_aside_for_what_it_does_not_know() -> None:
    node = "HQ"
    key = f"034W7S9E0G000.{node}"
    base = {"id": key, "kind": "debit", "node": node, "member": "034VZ4S0GA000.HQ",
            "op": "a", "at": float(id_time_ms(key)), "deltas": [["cash", node, -5.0]]}
    assert _quick_entry(key, base) is not None
    for change in ({"node": Text(node)}, {"at": Count(id_time_ms(key))}, {"amount": True},
                   {"deltas": [["cash", "SH01", -5.0]]}, {"deltas": [["cash", node, 0.0]]},
                   {"paid": 0.5}, {"ref": "x" * 201}, {"deltas": [("cash", node, 5)]}):
        broken = {**base, **change}
        assert _quick_entry(key, broken) is None
        check(key, broken)
    try:
        normalise_entry(key, {**base, "deltas": [["cash", "SH01", -5.0]]})
    except InvalidRecord as e:
        assert str(e) == "entry from HQ lowers SH01's rights on cash"
    else:
        raise AssertionError("a decrement of another node's rights was accepted")
