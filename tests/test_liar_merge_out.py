"""A lying branch's merge "out" with no "in" (7 December, late).

SH03 (the liar) holds 300.00 of member A's rights, collected at SH01, and writes a
merge "out" of them naming C, a member A was never merged into, with no "in" naming
it. The settlement moved A's lots to C at the out alone, so C's own top-up at SH02,
spent at SH02, took SH01's lots first in, first out: SH01 owed SH02 300.00 and SH02
showed 300.00 unspent though C held nothing, and once everyone had spent everything
the chain still showed 300.00 of liability against nothing held.

An honest sweep has written each out with its in in one record since 0.3.0
(Merges._sweep_writes, LedgerBase._together); 0.2.0 wrote each as its own record, the
out alone, its in in a later record. So write rule `merge-paired` refuses an out
that no in of its record names unless the out is all its record adds (0.2.0's
shape), and the settlement moves an out's lots only when an in naming it is
projected: until then the value leaves the books as a correction's does.

World is tests/test_liar_round2.py's: SH01 honest, SH03 the liar (its own valid
key), SH02 and SH04 replicas. Real stores, real apply_batch.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import sync
from test_funding_order import funded, state
from test_liar_round2 import World

from crdtledger import views
from crdtledger.ledger import Ledger


@pytest.fixture
def w(tmp_path: Path) -> Iterator[World]:
    world = World(tmp_path)
    yield world
    world.close()


def books(w: World, r: Ledger) -> tuple[int, int, dict[str, Any]]:
    """The chain's liability (unspent, every branch), the members' cash, the statement."""
    st = views.settlement(r)
    held = sum(r.balance(m)["cash"] for m in (w.member, w.other, w.third))
    return sum(b["unspent"] for b in st["branches"].values()), held, st


def test_a_lone_out_makes_no_debt_between_branches(w: World) -> None:
    """The probe's case: the out alone in its record (0.2.0's shape, taken), then C
    tops up 1,000.00 at SH02 and spends it all there: no branch owes another, the
    value the out lowered leaves SH01's books, and the liability is what is held."""
    a, c = w.member, w.third
    w.give(30_000, a)
    out = w.entry("merge", a, [["cash", "SH03", -30_000]], to=c)
    rec = w.write(out)
    w.b.apply_batch(w.liar.batch([rec]))
    w.c.apply_batch(w.liar.batch([rec]))
    b = w.b
    assert b.faults() == [] and funded(b, out["id"]) == [True]
    assert b.balance(a)["cash"] == 70_000 and b.balance(c)["cash"] == 0
    b.topup(b.owner, c, 100_000)
    b.debit(b.owner, c, amount=100_000)
    unspent, held, st = books(w, b)
    assert st["pairs"] == [] and all(n == 0 for n in st["net"].values())
    assert st["branches"]["SH02"]["unspent"] == 0
    assert st["branches"]["SH01"]["removed"] == 30_000
    assert unspent == held == 170_000
    sync(b, w.c)
    assert views.settlement(w.c) == st


def test_a_0_2_sweep_moves_its_lots_once_its_in_is_taken(w: World) -> None:
    """0.2.0 wrote a sweep as two records, the out and then its in: between them the
    out's value is off the books (as its rights are), and once the in is taken the
    lots move to the member it names, as a sweep of one record moves them."""
    a, c = w.member, w.third
    w.give(30_000, a)
    out = w.entry("merge", a, [["cash", "SH03", -30_000]], to=c)
    into = w.entry("merge", c, [["cash", "SH03", 30_000]], ref=out["id"])
    first, second = w.write(out), w.write(into)
    w.b.apply_batch(w.liar.batch([first]))
    unspent, held, st = books(w, w.b)
    assert unspent == held == 170_000 and st["branches"]["SH01"]["removed"] == 30_000
    w.b.apply_batch(w.liar.batch([second]))
    w.c.apply_batch(w.liar.batch([first, second]))
    for r in (w.b, w.c):
        assert r.faults() == [] and funded(r, out["id"], into["id"]) == [True, True]
        unspent, held, st = books(w, r)
        assert unspent == held == 200_000 and st["branches"]["SH01"]["removed"] == 0
        assert r.balance(c)["cash"] == 30_000
    assert state(w.b) == state(w.c)


@pytest.mark.parametrize("shape", ["with-a-debit", "beside-a-pair", "two-ins-one-out"])
def test_an_out_no_in_of_its_record_names_is_refused(w: World, shape: str) -> None:
    """Since 0.3.0 an out is written with its in: a record that adds an out and
    anything else but the in naming it is refused at every replica, nothing taken."""
    a, c = w.member, w.third
    w.give(30_000, a)
    out = w.entry("merge", a, [["cash", "SH03", -20_000]], to=c)
    if shape == "with-a-debit":
        rest = [w.entry("debit", a, [["cash", "SH03", -100]], amount=100, pay="stored")]
    elif shape == "beside-a-pair":
        paired = w.entry("merge", a, [["cash", "SH03", -10_000]], to=c)
        rest = [paired, w.entry("merge", c, [["cash", "SH03", 10_000]], ref=paired["id"])]
    else:  # an in for one of two identical outs: the other one stands alone
        twin = w.entry("merge", a, [["cash", "SH03", -20_000]], to=c)
        rest = [twin, w.entry("merge", c, [["cash", "SH03", 20_000]], ref=twin["id"])]
    rec = w.write(out, *rest)
    w.b.apply_batch(w.liar.batch([rec]))
    w.c.apply_batch(w.liar.batch([rec]))
    for r in (w.b, w.c):
        assert [f["rule"] for f in r.faults()] == ["merge-paired"]
        assert funded(r, out["id"], *(e["id"] for e in rest)) == [False] * (1 + len(rest))
        assert r.balance(a)["cash"] == 100_000 and r.balance(c)["cash"] == 0
    assert state(w.b) == state(w.c)
