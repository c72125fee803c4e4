"""Write rule amount-moved: a debit's and a transfer's `amount` is what their deltas
move (escrow probe 06, twelfth wave).

The books read a debit twice: the settlement by its deltas (stored value served,
what one branch owes another), the day report and the member's level by its `amount`
and `pay`. SH03, holding 100.00 of the member's rights legitimately, wrote a card
sale of 90,000.00 that lowered 1.00 of stored value and a stored-value sale of 0.00
that lowered 90.00: both funded everywhere, no fault; the settlement said SH01 owed
SH03 91.00 of stored value served, SH03's day report said stored-value sales 0.00 and
90,000.00 taken by card. A transfer of amount 100 billion yuan that moved 1 fen was
taken, and the audit trail showed the amount claimed.

Honest code writes one fact (payments.Payments.debit, goods.Goods.sell_goods,
Payments._transfer): stored value lowers cash and bonus by the amount together; a
till method or a package's uses (amount 0) lowers neither; a transfer moves its
amount of one purse to `to`. Every other shape is refused, its writer blocked, and
honest replicas hold nothing of it (the day report reads nothing of it).

SH01 honest, SH03 the liar (tests/helpers.Forger, its own valid key), SH02 and SH04
honest replicas: tests/test_liar_round2.World. Real stores, real apply_batch.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import FakeClock, name_branches, new_ledger, sync
from test_funding_order import funded, state
from test_liar_round2 import World

from crdtledger import views
from crdtledger.hlc import HybridClock
from crdtledger.money import MAX_AMOUNT


@pytest.fixture
def w(tmp_path: Path) -> Iterator[World]:
    world = World(tmp_path)
    world.give(10_000, world.member)  # 100.00 of the member's rights, SH01's grant
    yield world
    world.close()


def _pkg(w: World) -> str:
    """A package purse of the liar's own minting (refused before funding matters)."""
    return "pkg:" + HybridClock("SH03", now_ms=lambda: w.clock.ms).mint()


# (what, kind, deltas (as a function of the world), fields)
FORGED: list[tuple[str, str, Any, dict[str, Any]]] = [
    ("card sale of 90,000.00 lowering 1.00", "debit",
     lambda w: [["cash", "SH03", -100]], {"amount": 9_000_000, "pay": "card"}),
    ("stored sale of 0.00 lowering 90.00", "debit",
     lambda w: [["cash", "SH03", -9_000]], {"amount": 0, "pay": "stored"}),
    ("stored sale lowering less than its amount", "debit",
     lambda w: [["cash", "SH03", -3_000], ["bonus", "SH03", -1]],
     {"amount": 5_000, "pay": "stored"}),
    ("stored sale lowering more than its amount", "debit",
     lambda w: [["cash", "SH03", -5_000]], {"amount": 100, "pay": "stored"}),
    ("sale without pay lowering cash (the report reads it as cash at the till)",
     "debit", lambda w: [["cash", "SH03", -500]], {"amount": 500}),
    ("package use with an amount", "debit",
     lambda w: [[_pkg(w), "SH03", -1]], {"amount": 50_000, "pay": "package"}),
    ("package use lowering cash", "debit",
     lambda w: [[_pkg(w), "SH03", -1], ["cash", "SH03", -500]],
     {"amount": 0, "pay": "package"}),
    ("transfer of 100 billion yuan moving 1 fen", "transfer",
     lambda w: [["cash", "SH03", -1], ["cash", "SH01", 1]],
     {"amount": MAX_AMOUNT, "to": "SH01"}),
    ("transfer of 1 fen moving nothing", "transfer", lambda w: [],
     {"amount": 1, "to": "SH01"}),
    ("transfer naming SH02, moving to SH04", "transfer",
     lambda w: [["cash", "SH03", -100], ["cash", "SH04", 100]],
     {"amount": 100, "to": "SH02"}),
    ("transfer of two purses", "transfer",
     lambda w: [["cash", "SH03", -100], ["cash", "SH01", 100],
                ["points", "SH03", -100], ["points", "SH01", 100]],
     {"amount": 200, "to": "SH01"}),
]


@pytest.mark.parametrize(("what", "kind", "deltas", "fields"), FORGED,
                         ids=[f[0] for f in FORGED])
def test_a_money_field_its_deltas_do_not_move_is_refused(
        w: World, what: str, kind: str, deltas: Any, fields: dict[str, Any]) -> None:
    forged = w.entry(kind, w.member, deltas(w), **fields)
    for r in w.refused_everywhere(forged, "amount-moved", what):
        assert r.rights(w.member) == {"SH01": 90_000, "SH03": 10_000}
        # Refused whole: SH03's day holds nothing of it.
        day = views.daily_report(r, r.storage.day_of(w.clock.ms), "SH03")
        assert (day["sales"], day["debits"], day["till_by_method"]) == (0, 0, {})
    assert state(w.b) == state(w.c)


def test_the_probes_two_sales_leave_settlement_and_day_report_agreeing(w: World) -> None:
    """The probe's pair, in one batch of two records: the first is refused, the writer
    blocked, so the second is never taken; nothing is owed, nothing sold."""
    d1 = w.entry("debit", w.member, [["cash", "SH03", -100]], amount=9_000_000, pay="card")
    d2 = w.entry("debit", w.member, [["cash", "SH03", -9_000]], amount=0, pay="stored")
    batch = w.liar.batch([w.write(d1), w.write(d2)])
    for r in (w.a, w.b, w.c):
        r.apply_batch(batch)
        assert funded(r, d1["id"], d2["id"]) == [False, False]
        assert [f["rule"] for f in r.faults()] == ["amount-moved"]
        assert r.balance(w.member)["cash"] == 100_000
        assert views.level(r, w.member)["spent"] == 0
        assert "SH03" not in views.settlement(r)["branches"]
    assert state(w.b) == state(w.c)


def test_what_the_honest_writers_write_the_liar_may_write_too(w: World) -> None:
    """The same shapes honestly put (stored value by cash and bonus, at the till, a
    transfer of what it moves, a transfer of nothing of amount 0) are taken."""
    entries = [
        w.entry("debit", w.member, [["cash", "SH03", -3_000], ["points", "SH03", 30]],
                amount=3_000, pay="stored"),
        w.entry("debit", w.member, [], amount=9_000_000, pay="card"),
        w.entry("debit", w.member, [], amount=0, pay="stored"),  # a coupon paid it whole
        w.entry("transfer", w.member, [["cash", "SH03", -2_000], ["cash", "SH01", 2_000]],
                amount=2_000, to="SH01"),
        w.entry("transfer", w.member, [], amount=0, to="SH01"),
    ]
    batch = w.liar.batch([w.write(e) for e in entries])
    for r in (w.a, w.b, w.c):
        r.apply_batch(batch)
        assert r.faults() == [], r.node
        assert funded(r, *(e["id"] for e in entries)) == [True] * len(entries)
        assert r.rights(w.member) == {"SH01": 92_000, "SH03": 5_000}
    assert state(w.b) == state(w.c)


def test_every_honest_debit_and_transfer_passes(tmp_path: Path) -> None:
    """Through the real operations at SH01, taken at SH02 without a fault: a service
    from stored value crossing from cash into bonus, an amount at the till, a walk-in
    sale, a package sold and used, a goods sale from stored value and one at the till,
    a refund, a transfer of rights."""
    clock = FakeClock()
    a = new_ledger(tmp_path, "SH01", now_ms=clock)
    b = new_ledger(tmp_path, "SH02", now_ms=clock)
    try:
        name_branches(a, "SH01", "SH02")
        a.set_rule(a.owner, "promotions", [{"min": 10_000, "bonus": 5_000, "name": "送50"}])
        m = a.add_member(a.owner, name="王芳", phone="13800000001")
        a.topup(a.owner, m, 10_000)  # 100.00 cash, 50.00 bonus
        svc = next(iter(a.rule("services")))
        a.debit(a.owner, m, amount=9_000)
        crossing = a.debit(a.owner, m, amount=3_000)  # 10.00 cash, 20.00 bonus
        assert sorted(d[0] for d in crossing["deltas"] if d[2] < 0) == ["bonus", "cash"]
        a.debit(a.owner, m, amount=123_456, pay="wechat")
        a.debit(a.owner, None, service=svc, pay="cash")  # walk-in
        a.sell_package(a.owner, m, svc, 3, 0)
        a.debit(a.owner, m, service=svc, pay="package")
        a.add_goods(a.owner, "G01", "精油", 1_000, 400)
        a.stock_in(a.owner, "G01", 5)
        a.sell_goods(a.owner, "G01", 1, m)
        a.sell_goods(a.owner, "G01", 2, pay="cash")
        a.refund(a.owner, crossing["id"], 1_500)
        a.transfer_rights(a.owner, m, "SH02", 1_000)
        sync(a, b)
        assert a.faults() == [] and b.faults() == []
        assert b.balance(m) == a.balance(m)
    finally:
        a.close()
        b.close()
