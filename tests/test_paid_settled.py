"""Write rule paid-moved, for the other two kinds that carry a `paid`: a card's issue
and an exit's settlement (left since the fifteenth wave; nineteenth wave).

The books read them twice. A `card` entry: the day report's card sales read `paid`,
its receipt and the member's history `amount`, and the settlement reads no card at
all. An `exit_settle`: the settlement reads its cash deltas (a refund as value served
at its writer, so the collecting branch owes it; anything else as forfeited), the day
report's `exit_refunds` and the till by method read `paid` and `pay`, the receipt
`amount` less `paid` as given up. SH03, with its own valid key, wrote a card saying
1,000,000.00 of fees for a fee of 0 (the day report's card sales), one said paid
100.00 that also took 100.00 of the member's stored value (her balance fell, the
settlement still held it as SH01's liability), an exit refund taking 500.00 that said
0 paid out (SH01 owed SH03 500.00, SH03's till short of nothing), a forfeit saying
500.00 paid out of the till, and a refund paid "from stored value".

Honest code writes one fact (Cards.issue_card and Membership._decide_exit, the only
writers, unchanged since each kind's first version): a card moves no purse and has
`amount` = `paid` = its fee; a settlement lowers its writer's cash, bonus and points,
`amount` is the cash and bonus it lowers, `paid` the cash it lowers when it is a
refund (absent when none), nothing when it is a forfeit, `pay` the till's method.

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
from test_membership import Staff

from crdtledger import views


@pytest.fixture
def w(tmp_path: Path) -> Iterator[World]:
    world = World(tmp_path)
    world.give(50_000, world.member)  # 500.00 of the member's rights, SH01's grant
    yield world
    world.close()


CASH = [["cash", "SH03", -50_000]]
# (what, kind, deltas, fields)
FORGED: list[tuple[str, str, list[list[Any]], dict[str, Any]]] = [
    ("card of fee 0 saying 1,000,000.00 paid", "card", [],
     {"amount": 0, "paid": 100_000_000}),
    ("card said paid 100.00 also taking 100.00 of stored value", "card",
     [["cash", "SH03", -10_000]], {"amount": 10_000, "paid": 10_000}),
    ("card of 100.00 saying nothing paid", "card", [], {"amount": 10_000}),
    ("card paid from stored value", "card", [],
     {"amount": 10_000, "paid": 10_000, "pay": "stored"}),
    ("card raising its writer's points", "card", [["points", "SH03", 5_000]],
     {"amount": 0, "paid": 0}),
    ("exit refund taking 500.00 saying 0 paid", "exit_settle", CASH,
     {"amount": 50_000, "step": "refund"}),
    ("exit refund taking 500.00 saying 1,000,000.00 paid", "exit_settle", CASH,
     {"amount": 50_000, "paid": 100_000_000, "pay": "cash", "step": "refund"}),
    ("exit refund taking 500.00 saying 0.01 paid", "exit_settle", CASH,
     {"amount": 50_000, "paid": 1, "pay": "cash", "step": "refund"}),
    ("exit refund moving nothing saying 500.00 paid", "exit_settle", [],
     {"amount": 0, "paid": 50_000, "pay": "cash", "step": "refund"}),
    ("exit forfeit saying 500.00 paid out", "exit_settle", CASH,
     {"amount": 50_000, "paid": 50_000, "pay": "cash", "step": "forfeit"}),
    ("exit of another step saying 500.00 paid out", "exit_settle", CASH,
     {"amount": 50_000, "paid": 50_000, "pay": "cash", "step": "leave"}),
    ("exit refund paid from stored value", "exit_settle", CASH,
     {"amount": 50_000, "paid": 50_000, "pay": "stored", "step": "refund"}),
    ("exit refund whose amount is not what it lowers", "exit_settle", CASH,
     {"amount": 9_000_000, "paid": 50_000, "pay": "cash", "step": "refund"}),
]


@pytest.mark.parametrize(("what", "kind", "deltas", "fields"), FORGED,
                         ids=[f[0] for f in FORGED])
def test_a_paid_its_deltas_do_not_move_is_refused(
        w: World, what: str, kind: str, deltas: list[list[Any]], fields: dict[str, Any]
        ) -> None:
    before = {r.node: state(r) for r in (w.a, w.b, w.c)}
    extra = {"card": "x"} if kind == "card" else {"ref": "x"}
    forged = w.entry(kind, w.member, list(deltas), **extra, **fields)
    rec = w.write(forged)
    for r in (w.a, w.b, w.c):
        r.apply_batch(w.liar.batch([rec]))
        assert [f["rule"] for f in r.faults()] == ["paid-moved"], (r.node, what)
        assert "SH03" in r.storage.log.blocked(), r.node
        assert funded(r, forged["id"]) == [False]
        assert state(r) == before[r.node], r.node
        assert r.balance(w.member)["cash"] == 100_000
        # Refused whole: SH03's day holds nothing of it, nor does the settlement.
        day = views.daily_report(r, r.storage.day_of(w.clock.ms), "SH03")
        assert (day["card_sales"], day["exit_refunds"], day["till_by_method"]) == (0, 0, {})
        s = views.settlement(r)
        assert s["pairs"] == []
        assert sum(b["unspent"] for b in s["branches"].values()) == 200_000
    assert state(w.b) == state(w.c)


def test_a_negative_paid_is_set_aside_moving_nothing(w: World) -> None:
    """A `paid` below 0 (or not whole fen) is the schema's: set aside at every replica,
    as before, its writer not blocked, and nothing of it in any book."""
    card = w.entry("card", w.member, [], card="x", amount=0, paid=-10_000)
    settle = w.entry("exit_settle", w.member, CASH, ref="x", step="refund",
                     amount=50_000, paid=-50_000, pay="cash")
    batch = w.liar.batch([w.write(card), w.write(settle)])
    for r in (w.a, w.b, w.c):
        r.apply_batch(batch)
        assert r.faults() == []
        assert funded(r, card["id"], settle["id"]) == [False, False]
        assert r.balance(w.member)["cash"] == 100_000
        day = views.daily_report(r, r.storage.day_of(w.clock.ms))
        assert (day["card_sales"], day["exit_refunds"], day["till_by_method"]) == (0, 0, {})
        assert views.settlement(r)["pairs"] == []
    assert state(w.b) == state(w.c)


# Each entry of the liar's own, in honest shapes: (kind, deltas, fields).
HONEST: list[tuple[str, list[list[Any]], dict[str, Any]]] = [
    ("card", [], {"amount": 0, "paid": 0}),
    ("card", [], {"amount": 1_000, "paid": 1_000}),
    # a refund by a method, one without `pay` (read as cash), a forfeit, one of nothing
    ("exit_settle", [["cash", "SH03", -20_000]],
     {"amount": 20_000, "paid": 20_000, "pay": "wechat", "step": "refund"}),
    ("exit_settle", [["cash", "SH03", -10_000]],
     {"amount": 10_000, "paid": 10_000, "step": "refund"}),
    ("exit_settle", [["cash", "SH03", -5_000]], {"amount": 5_000, "step": "forfeit"}),
    ("exit_settle", [], {"amount": 0, "step": "refund"}),
]


def test_what_the_honest_writers_write_the_liar_may_write_too(w: World) -> None:
    entries = [w.entry(kind, w.member, list(deltas), **fields,
                       **({"card": "x"} if kind == "card" else {"ref": "x"}))
               for kind, deltas, fields in HONEST]
    batch = w.liar.batch([w.write(e) for e in entries])
    for r in (w.a, w.b, w.c):
        r.apply_batch(batch)
        assert r.faults() == [], r.node
        assert funded(r, *(e["id"] for e in entries)) == [True] * len(entries)
        assert r.balance(w.member)["cash"] == 100_000 - 35_000
        day = views.daily_report(r, r.storage.day_of(w.clock.ms))
        assert (day["card_sales"], day["exit_refunds"]) == (1_000, 30_000)
        assert day["till_by_method"] == {"cash": -10_000, "wechat": -20_000}
        s = views.settlement(r)
        # What was paid back at SH03 of SH01's lots, SH01 owes; the forfeit is income.
        assert [(p["owes"], p["to"], p["amount"]) for p in s["pairs"]] == [
            ("SH01", "SH03", 30_000)]
        assert s["branches"]["SH01"]["removed"] == 5_000
    assert state(w.b) == state(w.c)


def test_every_honest_card_and_exit_passes(tmp_path: Path) -> None:
    """Through the real operations at SH01, taken at SH02 without a fault, their books
    agreeing: cards with and without a fee; an exit refunded by wechat of cash, bonus
    from a promotion and points; one refunded with bonus only (no cash to pay back);
    an exit forfeited; an exit with nothing to settle; a return."""
    clock = FakeClock()
    a = new_ledger(tmp_path, "SH01", now_ms=clock)
    b = new_ledger(tmp_path, "SH02", now_ms=clock)
    try:
        name_branches(a, "SH01", "SH02")
        staff = Staff(a)
        a.set_rule(a.owner, "promotions", [{"min": 10_000, "bonus": 5_000, "name": "送50"}])
        names = ("王芳", "李娜", "张三", "赵四")
        m = [a.add_member(a.owner, name=n, phone=f"1380000000{i}")
             for i, n in enumerate(names, 1)]
        a.issue_card(a.owner, m[0], "C0001", fee=1_000)
        a.issue_card(a.owner, m[1], "C0002")
        a.topup(a.owner, m[0], 10_000, pay="wechat")  # 100.00 cash, 50.00 bonus
        a.debit(a.owner, m[0], amount=2_000)  # earns points
        a.topup(a.owner, m[1], 10_000)  # spent down to its bonus
        a.debit(a.owner, m[1], amount=10_000)
        a.topup(a.owner, m[2], 20_000)

        def leave(member: str, pay: str | None = None) -> dict[str, Any]:
            app = a.apply_exit(staff.cashier, member, "搬家")["application"]
            return a.decide_exit(staff.mgr, app, pay=pay)

        assert leave(m[0], "wechat")["paid"] == 8_000
        assert leave(m[1])["paid"] == 0
        a.set_rule(a.owner, "exit", {"stored_value": "forfeit"})
        assert leave(m[2])["forfeited"] == 25_000  # its bonus too
        leave(m[3])
        back = a.apply_exit(staff.cashier, m[3], "回来了", step="return")["application"]
        a.decide_exit(staff.mgr, back)
        sync(a, b)
        assert a.faults() == [] and b.faults() == []
        settles = views.newest_entries(b, "SH01", "exit_settle", limit=10)
        assert sorted(e["step"] for e in settles) == ["forfeit", "refund", "refund"]
        for r in (a, b):
            day = views.daily_report(r, r.today())
            assert (day["card_sales"], day["exit_refunds"]) == (1_000, 8_000)
            assert day["till_by_method"] == {"wechat": -8_000}
            s = views.settlement(r)
            assert s["branches"]["SH01"]["removed"] == 20_000
            assert all(r.balance(x)["cash"] == 0 for x in m)
    finally:
        a.close()
        b.close()
