"""A branch with a valid certificate that lies, third round (5 December, last session):
stored value raised by entries that never add it.

A top-up or a positive correction opens a lot: value its branch collected, owed by it
to whichever branch serves it (crdtledger.settlement). A liar raised cash by any other
kind (a debit, a check-in, a refund of a sale it never made, a refund given twice):
every replica took it, no lot behind it, and the settlement served the liar's sales
of it first in, first out from the lot of the branch the member really paid. That
branch then owed the liar for value nobody paid, and served its own prepaid value
backed by nothing. Write rule value-raise refuses what no honest entry of the kind
writes; a refund waits until its debit is projected and has that much left to give
back (crdtledger.projection._backed).

SH01 is honest, SH03 the liar (tests/helpers.Forger, its own valid key), SH02 and SH04
honest replicas (test_liar_round2.World). Real stores, real apply_batch.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import sync
from test_funding_order import funded, state
from test_liar_round2 import World

from crdtledger import escrow, views


@pytest.fixture
def w(tmp_path: Path) -> Iterator[World]:
    world = World(tmp_path)
    yield world
    world.close()


def _sent(w: World, *entries: dict[str, object]) -> None:
    """Each entry its own record of the liar's: SH02 takes them a batch each, SH04 all
    in one batch (what is projected must not depend on it)."""
    recs = [w.write(e) for e in entries]
    for rec in recs:
        w.b.apply_batch(w.liar.batch([rec]))
    w.c.apply_batch(w.liar.batch(recs))


def _judged(w: World, entries: list[dict[str, object]], funded_: list[bool]) -> None:
    """The liar's `entries` sent; at both replicas which are projected, and the
    member's cash as SH01's top-up left it; both replicas alike and settled."""
    _sent(w, *entries)
    for r in (w.b, w.c):
        assert funded(r, *(str(e["id"]) for e in entries)) == funded_
        assert r.balance(w.member)["cash"] == 100_000
        assert not r.faults(), "a refund waiting for its sale is no proof of a lie"
    assert state(w.b) == state(w.c)
    _settled(w)


def _settled(w: World) -> None:
    for r in (w.b, w.c):
        assert views.settlement(r)["net"].get("SH03", 0) == 0
        assert all(b["unattributed"] == 0 for b in views.settlement(r)["branches"].values())


@pytest.mark.parametrize(("kind", "deltas", "rule"), [
    ("debit", [["cash", "SH03", 100_000]], "value-raise"),
    ("checkin", [["cash", "SH03", 100_000]], "value-raise"),
    ("reward", [["cash", "SH03", 100_000]], "value-raise"),
    ("convert", [["points", "SH03", -1], ["cash", "SH03", 100_000]], "value-raise"),
    ("exit_settle", [["cash", "SH03", 100_000]], "value-raise"),
    ("package", [["bonus", "SH03", 100_000]], "value-raise"),
    ("expiry", [["pkg:038J0000000000.SH01", "SH03", 5]], "value-raise"),
    # An entry that may add value, in another branch's rights: the member would spend
    # at SH01's till what SH01 never collected.
    ("debit", [["cash", "SH01", 100_000]], "raise-own"),
    ("topup", [["cash", "SH01", 100_000]], "raise-own"),
    ("correction", [["bonus", "SH01", 100_000]], "raise-own"),
])
def test_no_entry_adds_stored_value_but_those_that_do_in_their_writers_rights(
        w: World, kind: str, deltas: list[list[object]], rule: str) -> None:
    raise_ = w.entry(kind, w.member, deltas, amount=100_000)
    for r in (w.b, w.c):
        r.apply_batch(w.liar.batch([w.write(raise_)]) if r is w.b else
                      w.liar.batch(w.liar.records))
        assert [f["rule"] for f in r.faults()] == [rule]
        assert funded(r, raise_["id"]) == [False]
        assert r.balance(w.member)["cash"] == 100_000
        assert r.rights(w.member) == {"SH01": 100_000}
    assert state(w.b) == state(w.c)


def test_a_refund_of_a_sale_never_made_gives_nothing_back(w: World) -> None:
    """Its writer's own sale by the id it names (refund-own), but there is none: it
    waits at every replica, and the debit spending what it would give waits behind."""
    made_up = w.entry("debit", w.member, [], amount=100_000)["id"]
    refund = w.entry("refund", w.member, [["cash", "SH03", 100_000]], amount=100_000,
                     ref=made_up)
    spend = w.entry("debit", w.member, [["cash", "SH03", -100_000]], amount=100_000, pay="stored")
    _judged(w, [refund, spend], [False, False])


def test_a_sale_refunded_twice_gives_back_once(w: World) -> None:
    """The liar really holds 500.00 of the member's rights and really sells them; its
    refund of the sale is projected, a second of the same sale waits for ever, however
    the records were batched (each refund is its writer's entry of the member: one
    queue, its log's order)."""
    w.give(50_000, w.member)
    sale = w.entry("debit", w.member, [["cash", "SH03", -50_000]], amount=50_000, pay="stored")
    back = w.entry("refund", w.member, [["cash", "SH03", 50_000]], amount=50_000,
                   ref=sale["id"])
    again = w.entry("refund", w.member, [["cash", "SH03", 50_000]], amount=50_000,
                    ref=sale["id"])
    spend = w.entry("debit", w.member, [["cash", "SH03", -100_000]], amount=100_000, pay="stored")
    _judged(w, [sale, back, again, spend], [True, True, False, False])
    for r in (w.b, w.c):
        assert r.rights(w.member) == {"SH01": 50_000, "SH03": 50_000}


def test_a_refund_to_a_merged_members_survivor_waits_for_its_sale_then_goes(
        w: World) -> None:
    """Honest: SH02 sells from rights SH01 gave it, the member is merged into another,
    and SH02 refunds the sale to the survivor (another queue than the sale's). SH04
    takes SH02's log before SH01's: the sale waits for its funding, the refund for the
    sale, and both go once SH01's transfer comes (the sale projected names the
    refund's member as moved: storage's funding_moved_in)."""
    a, sh02, sh04 = w.a, w.b, w.c
    # No points earned: the merge then moves nothing of SH02's (a sweep's pair would
    # name the survivor as moved when its out is projected, and hide the case).
    a.set_rule(a.owner, "earn", {"points_per_yuan": "0", "expire_days": 365})
    sync(a, sh04)
    a.transfer_rights(a.owner, w.member, "SH02", 30_000)  # the sale's funding: SH04 late
    sync(a, sh02)
    sale = sh02.debit(sh02.owner, w.member, amount=30_000)
    merged = sh02.merge_member(sh02.owner, w.member, w.other)
    assert not merged["entries"] and not sh02.sweep_merged()
    back = sh02.refund(sh02.owner, sale["id"], 10_000)
    assert back["member"] == w.other
    sh04.apply_batch(sh02.batch([r for r in sh02.lacking(sh04.log_view())
                                 if r.node == "SH02"]))
    assert funded(sh04, sale["id"], back["id"]) == [False, False]
    sync(a, sh04)
    assert funded(sh04, sale["id"], back["id"]) == [True, True]
    sync(sh02, sh04)
    assert state(sh02) == state(sh04)


def test_fifty_small_debits_draw_no_rights_by_the_rebalancer(w: World) -> None:
    """The rebalancer moves a member's rights toward where the member shops. Weighed by
    the number of debits, a liar's fifty debits of 0.01 (of a top-up of its own) drew
    94% of the member's rights to it, unasked; weighed by what was spent, next to
    nothing."""
    w.a.debit(w.a.owner, w.member, amount=10_000)
    w.a.debit(w.a.owner, w.member, amount=20_000)
    liar = w.liar.ledger
    liar.topup(liar.owner, w.member, 100)
    for _ in range(50):
        liar.debit(liar.owner, w.member, amount=1)
    sync(liar, w.a)
    since = "0"
    weight = views.visits(w.a, w.member, since)
    assert weight == {"SH01": 30_000, "SH03": 50}
    plan = escrow.rebalance(w.a.rights(w.member), weight)
    assert sum(t.amount for t in plan if t.receiver == "SH03") < 200, plan


def test_bonus_given_back_as_cash_waits(w: World) -> None:
    """A refund gives back no more cash than its sale took: a sale of bonus refunded
    as cash (bonus a liar raised by a top-up of none, or a conversion) became cash the
    settlement served from the lot of the branch the member really paid."""
    bonus = w.entry("topup", w.member, [["bonus", "SH03", 100_000]], amount=0)
    sale = w.entry("debit", w.member, [["bonus", "SH03", -100_000]], amount=100_000, pay="stored")
    back = w.entry("refund", w.member, [["cash", "SH03", 100_000]], amount=100_000,
                   ref=sale["id"])
    spend = w.entry("debit", w.member, [["cash", "SH03", -100_000]], amount=100_000, pay="stored")
    _judged(w, [bonus, sale, back, spend], [True, True, False, False])


def test_a_sale_paid_at_the_till_draws_no_rights_by_the_rebalancer(w: World) -> None:
    """A debit paid at the till takes no stored value, so nothing judges its amount: one
    of 10,000,000.00 weighed by its amount drew all the member's rights to its writer."""
    w.a.debit(w.a.owner, w.member, amount=30_000)
    till = w.entry("debit", w.member, [], amount=1_000_000_000, pay="cash")
    w.a.apply_batch(w.liar.batch([w.write(till)]))
    assert funded(w.a, till["id"]) == [True]
    weight = views.visits(w.a, w.member, "0")
    assert weight == {"SH01": 30_000}
    assert escrow.rebalance(w.a.rights(w.member), weight) == []
