"""Write rule paid-moved: a top-up's and a package sale's `paid` is what their deltas
move (liar probe 02, fifteenth wave).

The books read a top-up and a package sale twice: the settlement by their deltas
(cash collected, stored value served, owed between branches), the day report by
`paid` and `pay` (top-up cash, the till by method). SH03, with its own valid key,
wrote a top-up saying 0.01 taken by wechat that added 1,000.00 of cash (day report
0.01, settlement 1,000.00 collected, the member spent it at SH01), one saying
1,000,000.00 taken that added 0.01, and a package said paid 500.00 by wechat that
also took 500.00 of the member's stored value (the till said wechat 500.00, the
settlement SH01 owed SH03 500.00: the member paid twice in the books).

Honest code writes one fact (payments.Payments.topup, Payments.sell_package, the only
writers of either kind, every version): a top-up adds `amount` = `paid` of cash (and a
promotion's bonus) and lowers nothing; a package paid from stored value lowers cash
and bonus by its amount and has `paid` 0, one paid at the till lowers neither and has
`paid` its amount. Every other shape is refused, its writer blocked, and honest
replicas hold nothing of it.

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
from crdtledger.ledger import Ledger


@pytest.fixture
def w(tmp_path: Path) -> Iterator[World]:
    world = World(tmp_path)
    world.give(50_000, world.member)  # 500.00 of the member's rights, SH01's grant
    yield world
    world.close()


def _pkg(eid: str, uses: int) -> list[Any]:
    return [f"pkg:{eid}", "SH03", uses]


# (what, kind, deltas besides a package's own uses, fields)
FORGED: list[tuple[str, str, list[list[Any]], dict[str, Any]]] = [
    ("top-up saying 0.01 by wechat adding 1,000.00 (the probe's)", "topup",
     [["cash", "SH03", 100_000]], {"amount": 1, "paid": 1, "pay": "wechat"}),
    ("top-up saying 1,000,000.00 adding 0.01 (the probe's)", "topup",
     [["cash", "SH03", 1]], {"amount": 100_000_000, "paid": 100_000_000, "pay": "cash"}),
    ("top-up whose amount is not what it paid", "topup",
     [["cash", "SH03", 100]], {"amount": 9_000_000, "paid": 100, "pay": "cash"}),
    ("top-up without paid adding cash (the report reads 0 taken)", "topup",
     [["cash", "SH03", 50_000]], {"amount": 50_000}),
    ("top-up paid from stored value", "topup",
     [["cash", "SH03", 100]], {"amount": 100, "paid": 100, "pay": "stored"}),
    ("top-up that also lowers cash", "topup",
     [["cash", "SH03", 500], ["bonus", "SH03", 100], ["cash", "SH03", -400]],
     {"amount": 100, "paid": 100, "pay": "cash"}),
    ("package said paid by wechat lowering stored value (the probe's)", "package",
     [["cash", "SH03", -50_000]], {"amount": 50_000, "paid": 50_000, "pay": "wechat"}),
    ("package from stored value also said paid at the till", "package",
     [["cash", "SH03", -50_000]], {"amount": 50_000, "paid": 50_000, "pay": "stored"}),
    ("package from stored value lowering less than its price", "package",
     [["cash", "SH03", -100]], {"amount": 50_000, "paid": 0, "pay": "stored"}),
    ("package from stored value lowering more than its price", "package",
     [["cash", "SH03", -50_000]], {"amount": 100, "paid": 0, "pay": "stored"}),
    ("package at the till paid less than its price", "package",
     [], {"amount": 50_000, "paid": 100, "pay": "wechat"}),
    ("package without pay lowering stored value (read as cash at the till)", "package",
     [["cash", "SH03", -500]], {"amount": 500, "paid": 500}),
    ("package paid by a package's uses", "package",
     [], {"amount": 50_000, "paid": 0, "pay": "package"}),
]


@pytest.mark.parametrize(("what", "kind", "deltas", "fields"), FORGED,
                         ids=[f[0] for f in FORGED])
def test_a_paid_its_deltas_do_not_move_is_refused(
        w: World, what: str, kind: str, deltas: list[list[Any]], fields: dict[str, Any]
        ) -> None:
    forged = w.entry(kind, w.member, list(deltas), service="FOOT60", qty=10, **fields)
    if kind == "package":
        forged["deltas"].insert(0, _pkg(forged["id"], 10))
    else:
        del forged["service"], forged["qty"]
    for r in w.refused_everywhere(forged, "paid-moved", what):
        assert r.rights(w.member) == {"SH01": 50_000, "SH03": 50_000}
        # Refused whole: SH03's day holds nothing of it, nor does the settlement.
        day = views.daily_report(r, r.storage.day_of(w.clock.ms), "SH03")
        assert (day["topup_cash"], day["card_sales"], day["topup_by_method"],
                day["till_by_method"]) == (0, 0, {}, {})
        assert views.settlement(r)["pairs"] == []
    assert state(w.b) == state(w.c)


def _books(r: Ledger, day: str) -> tuple[int, int, dict[str, int]]:
    """(top-up cash of the day report, cash collected by the settlement, the till by
    method of packages and services) of `day`, at `r`, chain-wide."""
    rep = views.daily_report(r, day)
    s = views.settlement(r, day, day)
    return (rep["topup_cash"], sum(f["collected"] for f in s["branches"].values()),
            rep["till_by_method"])


def test_the_probes_three_leave_the_day_report_and_settlement_agreeing(w: World) -> None:
    """The probe's three, each in a batch with what came after it: the first is refused,
    its writer blocked, nothing else of it taken; the day report and the settlement
    agree, and nobody owes SH03 for value nobody paid."""
    day = w.a.storage.day_of(w.clock.ms)
    books = {r.node: _books(r, day) for r in (w.a, w.b, w.c)}
    cheap = w.entry("topup", w.member, [["cash", "SH03", 100_000]], amount=1, paid=1,
                    pay="wechat")
    dear = w.entry("topup", w.member, [["cash", "SH03", 1]], amount=100_000_000,
                   paid=100_000_000, pay="cash")
    twice = w.entry("package", w.member, [["cash", "SH03", -50_000]], amount=50_000,
                    paid=50_000, pay="wechat", service="FOOT60", qty=10)
    twice["deltas"].append(_pkg(twice["id"], 10))
    batch = w.liar.batch([w.write(cheap), w.write(dear), w.write(twice)])
    for r in (w.a, w.b, w.c):
        r.apply_batch(batch)
        assert funded(r, cheap["id"], dear["id"], twice["id"]) == [False] * 3
        assert [f["rule"] for f in r.faults()] == ["paid-moved"]
        assert _books(r, day) == books[r.node]
        assert r.balance(w.member)["cash"] == 100_000
        assert views.settlement(r)["pairs"] == []
    assert state(w.b) == state(w.c)


# Each entry of the liar's own, in honest shapes: (kind, deltas, fields); a package's
# own uses are added to its deltas.
HONEST: list[tuple[str, list[list[Any]], dict[str, Any]]] = [
    # a top-up with a promotion's bonus, one written before methods were recorded
    ("topup", [["cash", "SH03", 10_000], ["bonus", "SH03", 5_000]],
     {"amount": 10_000, "paid": 10_000, "pay": "wechat", "bonus": 5_000}),
    ("topup", [["cash", "SH03", 2_000]], {"amount": 2_000, "paid": 2_000}),
    # a package from stored value crossing from cash into bonus, one of 0.00
    ("package", [["cash", "SH03", -62_000], ["bonus", "SH03", -3_000]],
     {"amount": 65_000, "paid": 0, "pay": "stored"}),
    ("package", [], {"amount": 0, "paid": 0, "pay": "stored"}),
    # at the till: by a method, by cash before methods were recorded, for 0.00
    ("package", [], {"amount": 30_000, "paid": 30_000, "pay": "wechat"}),
    ("package", [], {"amount": 30_000, "paid": 30_000, "pay": "cash"}),
    ("package", [], {"amount": 0, "paid": 0, "pay": "cash"}),
]


def test_what_the_honest_writers_write_the_liar_may_write_too(w: World) -> None:
    entries = []
    for kind, deltas, fields in HONEST:
        e = w.entry(kind, w.member, list(deltas), **fields,
                    **({"service": "FOOT60", "qty": 3} if kind == "package" else {}))
        if kind == "package":
            e["deltas"].insert(0, _pkg(e["id"], 3))
        entries.append(e)
    batch = w.liar.batch([w.write(e) for e in entries])
    for r in (w.a, w.b, w.c):
        r.apply_batch(batch)
        assert r.faults() == [], r.node
        assert funded(r, *(e["id"] for e in entries)) == [True] * len(entries)
        assert r.balance(w.member)["cash"] == 100_000 + 12_000 - 62_000
        day = r.storage.day_of(w.clock.ms)
        assert _books(r, day)[:2] == (12_000, 12_000)
        assert _books(r, day)[2] == {"cash": 30_000, "wechat": 30_000}
    assert state(w.b) == state(w.c)


def test_every_honest_top_up_and_package_passes(tmp_path: Path) -> None:
    """Through the real operations at SH01, taken at SH02 without a fault, their books
    agreeing: top-ups with and without a promotion's bonus, by two methods; packages
    from stored value (crossing from cash into bonus, and of 0.00) and at the till
    (and of 0.00); a package's use and its refund by uses; a stored sale and its
    refund; a card with a fee; a member with a package merged into another."""
    clock = FakeClock()
    a = new_ledger(tmp_path, "SH01", now_ms=clock)
    b = new_ledger(tmp_path, "SH02", now_ms=clock)
    try:
        name_branches(a, "SH01", "SH02")
        a.set_rule(a.owner, "promotions", [{"min": 10_000, "bonus": 5_000, "name": "送50"}])
        m = a.add_member(a.owner, name="王芳", phone="13800000001")
        m2 = a.add_member(a.owner, name="李娜", phone="13800000002")
        svc = next(iter(a.rule("services")))
        topped = [a.topup(a.owner, m, 10_000),  # 100.00 cash, 50.00 bonus
                  a.topup(a.owner, m, 5_000, pay="wechat"),  # no promotion
                  a.topup(a.owner, m2, 20_000, pay="wechat")]
        assert topped[0]["deltas"] == [["cash", "SH01", 10_000], ["bonus", "SH01", 5_000]]
        crossing = a.sell_package(a.owner, m, svc, 3, 18_000, pay="stored")
        assert sorted(d[0] for d in crossing["deltas"] if d[2] < 0) == ["bonus", "cash"]
        a.sell_package(a.owner, m, svc, 1, 0, pay="stored")
        a.sell_package(a.owner, m, svc, 2, 12_000, pay="wechat")
        a.sell_package(a.owner, m, svc, 1, 0)
        a.sell_package(a.owner, m2, svc, 2, 5_000, pay="stored")
        used = a.debit(a.owner, m, service=svc, pay="package", package=crossing["id"])
        a.refund(a.owner, used["id"], qty=1)
        sale = a.debit(a.owner, m, amount=1_000)
        a.refund(a.owner, sale["id"], 500)
        a.issue_card(a.owner, m, "C0001", card_type="points", fee=1_000)
        a.merge_member(a.owner, m2, m)
        sync(a, b)
        assert a.faults() == [] and b.faults() == []
        assert b.balance(m) == a.balance(m)
        for r in (a, b):
            assert _books(r, r.today()) == (35_000, 35_000, {"wechat": 12_000})
    finally:
        a.close()
        b.close()


# --- cards and exit settlements ------------------------------------------------
# Write rule paid-moved, for the other two kinds that carry a `paid`: a card's issue
# and an exit's settlement (left since the fifteenth wave; nineteenth wave).
#
# The books read them twice. A `card` entry: the day report's card sales read `paid`,
# its receipt and the member's history `amount`, and the settlement reads no card at
# all. An `exit_settle`: the settlement reads its cash deltas (a refund as value served
# at its writer, so the collecting branch owes it; anything else as forfeited), the day
# report's `exit_refunds` and the till by method read `paid` and `pay`, the receipt
# `amount` less `paid` as given up. SH03, with its own valid key, wrote a card saying
# 1,000,000.00 of fees for a fee of 0 (the day report's card sales), one said paid
# 100.00 that also took 100.00 of the member's stored value (her balance fell, the
# settlement still held it as SH01's liability), an exit refund taking 500.00 that said
# 0 paid out (SH01 owed SH03 500.00, SH03's till short of nothing), a forfeit saying
# 500.00 paid out of the till, and a refund paid "from stored value".
#
# Honest code writes one fact (Cards.issue_card and Membership._decide_exit, the only
# writers, unchanged since each kind's first version): a card moves no purse and has
# `amount` = `paid` = its fee; a settlement lowers its writer's cash, bonus and points,
# `amount` is the cash and bonus it lowers, `paid` the cash it lowers when it is a
# refund (absent when none), nothing when it is a forfeit, `pay` the till's method.

CASH = [["cash", "SH03", -50_000]]
# (what, kind, deltas, fields)
FORGED_SETTLED: list[tuple[str, str, list[list[Any]], dict[str, Any]]] = [
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


@pytest.mark.parametrize(("what", "kind", "deltas", "fields"), FORGED_SETTLED,
                         ids=[f[0] for f in FORGED_SETTLED])
def test_a_cards_or_settlements_paid_its_deltas_do_not_move_is_refused(
        w: World, what: str, kind: str, deltas: list[list[Any]], fields: dict[str, Any]
        ) -> None:
    extra = {"card": "x"} if kind == "card" else {"ref": "x"}
    forged = w.entry(kind, w.member, list(deltas), **extra, **fields)
    for r in w.refused_everywhere(forged, "paid-moved", what):
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
HONEST_SETTLED: list[tuple[str, list[list[Any]], dict[str, Any]]] = [
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


def test_what_the_honest_card_and_exit_writers_write_the_liar_may_write_too(w: World) -> None:
    entries = [w.entry(kind, w.member, list(deltas), **fields,
                       **({"card": "x"} if kind == "card" else {"ref": "x"}))
               for kind, deltas, fields in HONEST_SETTLED]
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
