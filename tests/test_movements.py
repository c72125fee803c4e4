"""The movement of a period (余额变动) and the packages' unearned value (套餐未消费), read
by an accountant between two balances (crdtledger.movements): real SQLite stores,
synced, a month of a small chain closed at every branch, and the balances it gives
against the month end's (`report balances`). The command line, the API and the back
office page read the same functions: tests/test_movements_doors.py."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import FakeClock, name_branches, new_ledger, sync

from crdtledger import closing, movements
from crdtledger.errors import InvalidInput, LedgerError
from crdtledger.ledger import Ledger

DAY_MS = 86_400_000


def rows_of(report: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(r["purse"], r["branch"]): r for r in report["rows"]}


def held(ledger: Ledger, purse: str) -> int:
    (n,) = ledger.storage.conn.execute(
        "SELECT TOTAL(amount) FROM rights WHERE purse = ?", (purse,)).fetchone()
    return int(n)


@pytest.fixture
def month(tmp_path: Path) -> Iterator[tuple[Ledger, Ledger, FakeClock, dict[str, str]]]:
    """January 2026 at two branches in Shanghai: top-ups with a promotion's bonus,
    sales earning points, a refund, corrections both ways, rights moved and spent at
    the other branch, points converted, an exit forfeited, a merge; closed at both on
    8 February."""
    clock = FakeClock(1_767_225_600_000 + 2 * 3_600_000)  # 2026-01-01 10:00 in Shanghai
    a, b = new_ledger(tmp_path, "SH01", now_ms=clock), new_ledger(tmp_path, "SH02",
                                                                  now_ms=clock)
    try:
        name_branches(a, "SH01", "SH02")
        o = a.owner
        mgr = a.add_operator(o, "mgr", "secret1", ["manager"])
        a.set_rule(o, "promotions", [{"name": "充500送30", "min": 50000, "bonus": 3000}])
        a.set_rule(o, "exit", {"stored_value": "forfeit"})
        sync(a, b)
        m1 = a.add_member(o, name="张伟", phone="13800000001")
        m2 = b.add_member(b.owner, name="李娜", phone="13800000002")
        m3 = a.add_member(o, name="张伟", phone="13800000003")
        m4 = a.add_member(o, name="赵六", phone="13800000004")
        a.topup(o, m1, 60000)  # + 3000 bonus
        b.topup(b.owner, m2, 30000)
        a.topup(o, m3, 10000)
        a.topup(o, m4, 50000)  # + 3000 bonus
        d1 = a.debit(o, m1, amount=12000)  # 120 points
        a.refund(o, d1["id"], 5000)  # 50 points back
        a.correct(o, m1, "cash", 500, "typo")
        p1 = a.sell_package(o, m1, "FOOT60", 3, 25000, pay="wechat")["id"]
        p4 = a.sell_package(o, m4, "HAIR", 10, 50000, pay="cash")["id"]
        a.debit(o, m1, service="FOOT60", pay="package", package=p1)
        for _ in range(2):
            a.debit(o, m4, service="HAIR", pay="package", package=p4)
        clock.advance_days(3)
        a.convert_points(o, m1, 50)  # 0.50 of bonus
        sync(a, b)
        a.transfer_rights(o, m1, "SH02", 10000)
        sync(a, b)
        b.debit(b.owner, m1, amount=9000)  # 90 points at SH02
        b.correct(b.owner, m2, "cash", -2000, "typo")
        a.decide_exit(mgr, a.apply_exit(o, m4, "搬家")["application"])
        a.merge_member(o, m3, m1)
        sync(a, b)
        clock.advance_days(30)  # 2026-02-03: February's own
        a.topup(o, m1, 1000)
        a.debit(o, m1, service="FOOT60", pay="package", package=p1)
        clock.advance_days(5)  # 2026-02-08: January is due
        for ledger in (a, b, a, b):
            ledger.housekeeping()
            sync(a, b)
        yield a, b, clock, {"m1": m1, "m2": m2, "m3": m3, "m4": m4, "p1": p1, "p4": p4, "mgr": mgr}
    finally:
        a.close()
        b.close()


def test_a_month_moves_from_its_opening_to_the_month_ends_balances(
        month: tuple[Ledger, Ledger, FakeClock, dict[str, str]]) -> None:
    """Every line of January, at both branches alike; closing = the month end's
    balances (`report balances` and the closing's sums), each row's check 0; the
    chain's transfers and merges net zero; February opens where January closed."""
    a, b, _clock, _m = month
    assert closing.books(a)["closed_through"] == "2026-01"
    jan = movements.movement(a, "2026-01-01", "2026-01-31")
    assert jan == movements.movement(b, "2026-01-01", "2026-01-31")
    rows = rows_of(jan)
    assert all(r["check"] == 0 for r in jan["rows"])
    cash = rows[("cash", "all")]
    assert (cash["opening"], cash["topups"], cash["spent"], cash["refunds"]) == (
        0, 150000, -21000, 5000)
    assert (cash["corrected_in"], cash["corrected_out"]) == (500, -2000)
    assert cash["exits"] == -50000 and cash["transfers"] == 0 and cash["merges"] == 0
    bonus, points = rows[("bonus", "all")], rows[("points", "all")]
    assert (bonus["topups"], bonus["converted"], bonus["exits"]) == (6000, 50, -3000)
    assert (points["earned"], points["refunds"], points["converted"]) == (210, -50, -50)
    # By branch: SH01 gave 100.00 of rights to SH02, which served 90.00 of them.
    assert rows[("cash", "SH01")]["transfers"] == -10000
    assert rows[("cash", "SH02")]["transfers"] == 10000
    assert rows[("cash", "SH02")]["spent"] == -9000
    # The merge moved m3's 100.00 to m1 at SH01: net zero there too.
    assert rows[("cash", "SH01")]["merges"] == 0
    balances = closing.member_balances(a, "2026-01")
    purses = closing.books(a)["closing"]["balances"]["purses"]
    for p in movements.PURSES:
        assert rows[(p, "all")]["closing"] == balances["total"][p] == purses.get(p, 0)
        assert sum(r["closing"] for (q, n), r in rows.items() if q == p and n != "all") == (
            rows[(p, "all")]["closing"])
    feb = rows_of(movements.movement(a, "2026-02-01", None))
    for key, r in feb.items():
        assert r["opening"] == rows.get(key, {"closing": 0})["closing"], key
        assert r["check"] == 0
    for p in movements.PURSES:
        assert feb[(p, "all")]["closing"] == held(a, p)
    assert feb[("cash", "all")]["topups"] == 1000


def test_a_period_typed_backwards_or_not_a_day_is_refused(
        month: tuple[Ledger, Ledger, FakeClock, dict[str, str]]) -> None:
    a, _b, _clock, _m = month
    with pytest.raises(InvalidInput, match="reversed"):
        movements.movement(a, "2026-01-10", "2026-01-01")
    with pytest.raises(InvalidInput, match="not a date"):
        movements.movement(a, "2026-13-01", None)


def test_opening_and_movements_make_the_closing_over_random_operations(
        tmp_path: Path) -> None:
    """Seeded random days of top-ups, sales, refunds, corrections, transfers,
    conversions, merges and exits at three branches, synced at random: for random
    periods, every row's check is 0, each day closes where the next opens, and the
    last closing is the rights held now (the same at every replica once synced)."""
    rnd = random.Random(2112)
    clock = FakeClock(1_767_225_600_000 + 2 * 3_600_000)
    nodes = ("SH01", "SH02", "SH03")
    stores = [new_ledger(tmp_path, n, now_ms=clock) for n in nodes]
    try:
        name_branches(stores[0], *nodes)
        stores[0].set_rule(stores[0].owner, "promotions",
                           [{"name": "送", "min": 20000, "bonus": 1500}])
        mgr = stores[0].add_operator(stores[0].owner, "mgr", "secret1", ["manager"])
        for x in stores[1:]:
            sync(stores[0], x)
        members: list[str] = []
        debits: list[tuple[int, str]] = []
        funded: list[list[str]] = [[], [], []]
        days = []
        for _day in range(8):
            days.append(stores[0].today())
            for _ in range(20):
                i = rnd.randrange(3)
                s = stores[i]
                try:
                    what = rnd.choice(["add", "topup", "topup", "debit", "debit", "refund",
                                       "correct", "transfer", "convert", "merge", "exit"])
                    if what == "add" or not members:
                        members.append(s.add_member(s.owner, name="会员",
                                                    phone=f"139{len(members):08d}"))
                    m = rnd.choice(members)
                    if what in ("debit", "transfer", "convert") and funded[i]:
                        m = rnd.choice(funded[i])  # one this branch holds rights of
                    if what == "topup":
                        s.topup(s.owner, m, rnd.randrange(1, 40) * 1000)
                        funded[i].append(m)
                    elif what == "debit":
                        debits.append((i, s.debit(s.owner, m, amount=rnd.randrange(1, 90) * 100)
                                       ["id"]))
                    elif what == "refund" and debits:
                        j, d = rnd.choice(debits)
                        stores[j].refund(stores[j].owner, d, rnd.randrange(1, 10) * 10)
                    elif what == "correct":
                        s.correct(s.owner, m, rnd.choice(["cash", "bonus", "points"]),
                                  rnd.choice([1, -1]) * rnd.randrange(1, 50) * 10, "fix")
                    elif what == "transfer":
                        s.transfer_rights(s.owner, m, nodes[(i + 1) % 3],
                                          rnd.randrange(1, 20) * 100)
                    elif what == "convert":
                        s.convert_points(s.owner, m, 100)
                    elif what == "merge" and len(members) > 2:
                        other = rnd.choice(members)
                        if other != m:
                            s.merge_member(s.owner, other, m)
                    elif what == "exit" and rnd.random() < 0.3:
                        s.decide_exit(mgr, s.apply_exit(s.owner, m, "走")["application"])
                except LedgerError:
                    pass  # refused (no rights here, nothing to refund): changes nothing
                if rnd.random() < 0.3:
                    x, y = rnd.sample(stores, 2)
                    sync(x, y)
            clock.ms += DAY_MS
        for x, y in ((stores[0], stores[1]), (stores[1], stores[2]), (stores[0], stores[2])):
            sync(x, y)
        for _ in range(10):
            lo, hi = sorted(rnd.sample(days, 2))
            for s in stores:
                r = movements.movement(s, lo, hi)
                assert all(row["check"] == 0 for row in r["rows"]), (lo, hi)
        for s in stores:
            whole = rows_of(movements.movement(s, None, None))
            prev: dict[tuple[str, str], dict[str, Any]] = {}
            for d in days:
                today = rows_of(movements.movement(s, d, d))
                for key, r in today.items():
                    assert r["check"] == 0
                    assert r["opening"] == prev.get(key, {"closing": 0})["closing"], (d, key)
                prev = today
            for p in movements.PURSES:
                assert whole[(p, "all")]["closing"] == held(s, p)
                assert whole[(p, "all")]["transfers"] == 0 == whole[(p, "all")]["merges"]
            assert whole == rows_of(movements.movement(stores[0], None, None))
    finally:
        for s in stores:
            s.close()


def test_packages_unearned_value_ties_per_use_and_breaks_at_an_exit(
        month: tuple[Ledger, Ledger, FakeClock, dict[str, str]]) -> None:
    """Three foot massages for 250.00 (83.34, 83.33, 83.33: the remainder's fen on the
    first uses) and ten haircuts for 500.00, two of them served before their member
    left in January: the eight she left are recognised at her exit (breakage), the
    massages one a month. Both branches alike; each row ties."""
    a, b, _clock, _m = month
    jan = movements.packages(a, "2026-01-01", "2026-01-31")
    assert jan == movements.packages(b, "2026-01-01", "2026-01-31")
    rows = {r["service"]: r for r in jan["rows"]}
    assert rows["FOOT60"] == {
        "service": "FOOT60", "packages": 1, "uses_sold": 3, "opening": 0, "sold": 25000,
        "served_uses": 1, "served": 8334, "breakage_uses": 0, "breakage": 0,
        "uses_left": 2, "closing": 16666, "check": 0}
    assert rows["HAIR"] == {
        "service": "HAIR", "packages": 1, "uses_sold": 10, "opening": 0, "sold": 50000,
        "served_uses": 2, "served": 10000, "breakage_uses": 8, "breakage": 40000,
        "uses_left": 0, "closing": 0, "check": 0}
    assert rows["all"]["closing"] == 16666 and rows["all"]["sold"] == 75000
    feb = {r["service"]: r for r in movements.packages(a, "2026-02-01", None)["rows"]}
    assert (feb["FOOT60"]["opening"], feb["FOOT60"]["served"], feb["FOOT60"]["closing"]) == (
        16666, 8333, 8333)
    assert feb["HAIR"]["opening"] == 0 and feb["HAIR"]["breakage"] == 0
    # From the first entry: sold = served + breakage + unearned, to the fen.
    whole = {r["service"]: r for r in movements.packages(a)["rows"]}["all"]
    assert whole["sold"] == whole["served"] + whole["breakage"] + whole["closing"]


@pytest.mark.parametrize("amount,sold", [(25000, 3), (100, 7), (1, 3), (0, 2), (99999, 10)])
def test_a_packages_uses_sum_to_what_was_paid(amount: int, sold: int) -> None:
    each = [movements.use_value(k + 1, amount, sold) - movements.use_value(k, amount, sold)
            for k in range(sold)]
    assert sum(each) == amount == movements.use_value(sold, amount, sold)
    assert max(each) - min(each) <= 1 and each == sorted(each, reverse=True)


def test_a_member_back_after_her_exit_owes_her_uses_again(
        month: tuple[Ledger, Ledger, FakeClock, dict[str, str]]) -> None:
    """The haircuts' member comes back in February: the eight uses recognised at her
    exit in January are unearned again (a negative breakage), January's figures as
    they were, and both months tie."""
    a, _b, _clock, m = month
    mgr = m["mgr"]
    jan = movements.packages(a, "2026-01-01", "2026-01-31")
    a.decide_exit(mgr, a.apply_exit(a.owner, m["m4"], "回来了", step="return")["application"])
    assert movements.packages(a, "2026-01-01", "2026-01-31") == jan
    feb = {r["service"]: r for r in movements.packages(a, "2026-02-01", None)["rows"]}
    assert (feb["HAIR"]["opening"], feb["HAIR"]["breakage_uses"], feb["HAIR"]["breakage"],
            feb["HAIR"]["uses_left"], feb["HAIR"]["closing"], feb["HAIR"]["check"]) == (
        0, -8, -40000, 8, 40000, 0)


def test_a_periods_days_are_the_chains_days(tmp_path: Path) -> None:
    """A top-up at 23:50 on 31 January in Shanghai (15:50 UTC) is January's, one at
    00:10 on 1 February (16:10 UTC on the 31st) February's, as every report reads them."""
    clock = FakeClock(1_767_225_600_000 + 30 * DAY_MS + 15 * 3_600_000 + 50 * 60_000)
    a = new_ledger(tmp_path, "SH01", now_ms=clock)
    try:
        m = a.add_member(a.owner, name="王芳", phone="13800000001")
        a.topup(a.owner, m, 1000)
        clock.ms += 20 * 60_000
        a.topup(a.owner, m, 2000)
        jan = rows_of(movements.movement(a, "2026-01-31", "2026-01-31"))[("cash", "all")]
        feb = rows_of(movements.movement(a, "2026-02-01", "2026-02-01"))[("cash", "all")]
        assert (jan["topups"], jan["closing"]) == (1000, 1000)
        assert (feb["opening"], feb["topups"], feb["closing"]) == (1000, 2000, 3000)
    finally:
        a.close()
