"""Settlement by value served (crdtledger/settlement.py), through real ledgers on real
SQLite files synced to each other: the acceptance scenario of issue 13, refunds in
parts, corrections, bonus value, member merge, the command line, and property tests
(positions sum to zero, every branch reconciles, every replica prints the same
statement after a full sync in any order, rights transfers change nothing)."""

from __future__ import annotations

import csv
import io
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext, suppress
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import Cli
from helpers import FakeClock, name_branches, new_ledger, sync
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crdtledger import settlement, views
from crdtledger.errors import LedgerError
from crdtledger.ledger import Ledger
from crdtledger.settlement import Statement

NODES = ("SH01", "SH02", "SH03")


def add_member(ledger: Ledger, n: int = 0) -> str:
    return ledger.add_member(ledger.owner, name=f"会员{n}", phone=f"1380000{n:04d}")


def same_everywhere(*ledgers: Ledger, start: str | None = None, end: str | None = None
                    ) -> Statement:
    """The statement, which every replica given must print alike."""
    first, *rest = [views.settlement(x, start, end) for x in ledgers]
    for other in rest:
        assert other == first
    return first


def assert_sound(s: Statement) -> None:
    """What holds of any statement of an honest chain."""
    assert s["total"] == 0 == sum(s["net"].values())
    for branch, f in s["branches"].items():
        assert settlement.reconciles(f), (branch, f)
        assert f["unattributed"] == 0, (branch, f)
    assert settlement.reconciles(settlement.chain_total(s))


def figures(s: Statement, branch: str) -> dict[str, int]:
    return {k: v for k, v in s["branches"][branch].items() if v}


# --- the acceptance scenario -------------------------------------------------------


def acceptance(a: Ledger, b: Ledger) -> str:
    """A member tops up 1,000.00 at SH01; SH01 moves 500.00 of his rights to SH02."""
    m = add_member(a)
    a.topup(a.owner, m, 100000)
    sync(a, b)  # rights go only to a branch the chain knows: SH02 has synced here
    a.transfer_rights(a.owner, m, "SH02", 50000)
    sync(a, b)
    return m


def test_rights_moved_are_no_debt_value_served_is(a: Ledger, b: Ledger) -> None:
    m = acceptance(a, b)
    s = same_everywhere(a, b)
    assert s["pairs"] == [] and s["net"] == {"SH01": 0}
    # The 1,000.00 is prepaid value SH01 collected: a liability, not a debt.
    assert figures(s, "SH01") == {"collected": 100000, "unspent": 100000}

    b.debit(b.owner, m, amount=10000)
    sync(a, b)
    s = same_everywhere(a, b)
    assert s["pairs"] == [{"owes": "SH01", "to": "SH02", "amount": 10000, "served": 10000,
                           "served_back": 0}]
    assert s["net"] == {"SH01": -10000, "SH02": 10000}
    assert figures(s, "SH01") == {"collected": 100000, "served_by_others": 10000,
                                  "net": -10000, "unspent": 90000}
    assert figures(s, "SH02") == {"served_for_others": 10000, "net": 10000}
    assert_sound(s)


def test_the_command_line_prints_the_same_statement(tmp_path: Path, cli: Cli) -> None:
    a, b = new_ledger(tmp_path, "SH01"), new_ledger(tmp_path, "SH02")
    try:
        m = acceptance(a, b)
        b.debit(b.owner, m, amount=10000)
        sync(a, b)
        view = views.settlement(a)
    finally:
        a.close()
        b.close()
    for data in (tmp_path / "sh01", tmp_path / "sh02"):
        assert cli("report", "settlement", "--json", data=data).json() == view
        text = cli("report", "settlement", data=data)
        assert text.code == 0, text.err
        lines = text.out.splitlines()
        assert lines[0].startswith("SH01 owes SH02 100.00")
        assert lines[3].split() == ["SH01", "0.00", "1000.00", "0.00", "0.00", "100.00",
                                    "-100.00", "0.00", "900.00", "0.00", "0.00"]
        table = list(csv.reader(io.StringIO(cli("report", "settlement", "--csv",
                                                data=data).out)))
        assert table == settlement.csv_rows(view)
        assert table[1] == ["SH01", "SH02", "100.00", "0.00", "100.00"]
    # A period with nothing in it: no debt, nothing collected, nothing prepaid yet.
    empty = cli("report", "settlement", "--from", "2020-01-01", "--to", "2020-01-31",
                "--json", data=tmp_path / "sh01").json()
    assert empty == {"pairs": [], "branches": {}, "net": {}, "total": 0}
    bad = cli("report", "settlement", "--from", "yesterday", data=tmp_path / "sh01")
    assert bad.code == 1 and "from must be a date" in bad.err


# --- refunds, corrections, bonus, packages, merge ------------------------------------


@contextmanager
def branches(root: Path, *nodes: str) -> Iterator[tuple[FakeClock, list[Ledger]]]:
    """Branches sharing one hand-moved clock: periods can then be days apart."""
    clock = FakeClock()
    ledgers = [new_ledger(root, n, now_ms=clock) for n in nodes]
    try:
        yield clock, ledgers
    finally:
        for x in ledgers:
            x.close()


def test_a_refund_in_parts_gives_back_what_its_debit_took(tmp_path: Path) -> None:
    with branches(tmp_path, "SH01", "SH02") as (clock, (a, b)):
        m = add_member(a)
        a.topup(a.owner, m, 30000)  # the older lot: collected at SH01
        sync(a, b)
        clock.advance_days(0.01)
        b.topup(b.owner, m, 20000)
        sync(a, b)
        a.transfer_rights(a.owner, m, "SH02", 20000)  # SH02's rights fetch
        sync(a, b)
        day1 = b.today()
        clock.advance_days(0.01)
        debit = b.debit(b.owner, m, amount=40000)  # 300.00 of SH01's lot, 100.00 of SH02's
        sync(a, b)
        s = same_everywhere(a, b)
        assert s["pairs"][0] == {"owes": "SH01", "to": "SH02", "amount": 30000,
                                 "served": 30000, "served_back": 0}
        assert figures(s, "SH02")["served_own"] == 10000

        clock.advance_days(1)
        day2 = b.today()
        b.refund(b.owner, debit["id"], 15000)  # back: SH02's 100.00 (taken last), then 50.00
        sync(a, b)
        s = same_everywhere(a, b)
        assert s["pairs"][0]["amount"] == 25000
        assert "served_own" not in figures(s, "SH02")
        b.refund(b.owner, debit["id"], 15000)
        sync(a, b)
        s = same_everywhere(a, b)
        assert s["pairs"] == [{"owes": "SH01", "to": "SH02", "amount": 10000, "served": 10000,
                               "served_back": 0}]
        assert figures(s, "SH01")["unspent"] == 20000  # 300.00 - 300.00 + 50.00 + 150.00
        assert figures(s, "SH02")["unspent"] == 20000
        assert_sound(s)

        # Debts are booked on the day of the entry: the debit's day, then the refunds'.
        first = same_everywhere(a, b, start=day1, end=day1)
        assert first["net"] == {"SH01": -30000, "SH02": 30000}
        assert first["branches"]["SH01"]["unspent"] == 0
        second = same_everywhere(a, b, start=day2, end=day2)
        assert second["pairs"] == [{"owes": "SH02", "to": "SH01", "amount": 20000,
                                    "served": 0, "served_back": -20000}]
        assert figures(second, "SH02") == {
            "opening": 10000, "served_own": -10000, "served_for_others": -20000,
            "net": -20000, "unspent": 20000}
        for period in (first, second):
            assert_sound(period)
        assert {n: first["net"][n] + second["net"][n] for n in first["net"]} == s["net"]


def test_corrections_open_or_remove_value_and_owe_nothing(a: Ledger, b: Ledger) -> None:
    m = add_member(a)
    a.topup(a.owner, m, 10000)
    sync(a, b)
    b.correct(b.owner, m, "cash", 5000, "调整本金: paid at SH02, not booked")
    a.correct(a.owner, m, "cash", -8000, "entered twice")  # takes SH01's lot: no debt
    sync(a, b)
    s = same_everywhere(a, b)
    assert s["pairs"] == []
    assert figures(s, "SH01") == {"collected": 10000, "removed": 8000, "unspent": 2000}
    assert figures(s, "SH02") == {"collected": 5000, "unspent": 5000}
    a.transfer_rights(a.owner, m, "SH02", 2000)
    sync(a, b)
    b.debit(b.owner, m, amount=7000)  # SH01's 20.00 first (the older lot), then its own
    sync(a, b)
    s = same_everywhere(a, b)
    assert s["pairs"] == [{"owes": "SH01", "to": "SH02", "amount": 2000, "served": 2000,
                           "served_back": 0}]
    assert figures(s, "SH02") == {"collected": 5000, "served_own": 5000,
                                  "served_for_others": 2000, "net": 2000}
    assert_sound(s)


def test_bonus_is_served_free_and_a_package_consumes_where_it_is_sold(
        a: Ledger, b: Ledger) -> None:
    a.set_rule(a.owner, "promotions", [{"min": 100000, "bonus": 20000, "name": "充1000送200"}])
    m = add_member(a)
    a.topup(a.owner, m, 100000)  # 1,000.00 paid, 200.00 bonus
    sync(a, b)  # rights go only to a branch the chain knows: SH02 has synced here
    a.transfer_rights(a.owner, m, "SH02", 100000)
    a.transfer_rights(a.owner, m, "SH02", 15000, purse="bonus")
    sync(a, b)
    b.debit(b.owner, m, amount=90000)
    b.sell_package(b.owner, m, "FOOT60", 5, 25000, pay="stored")  # 100.00 cash, 150.00 bonus
    sync(a, b)
    s = same_everywhere(a, b)
    assert s["pairs"] == [{"owes": "SH01", "to": "SH02", "amount": 100000, "served": 100000,
                           "served_back": 0}]
    assert figures(s, "SH02") == {"served_for_others": 100000, "net": 100000,
                                  "bonus_served": 15000}
    # The 50.00 of bonus left is not principal: nothing SH01 collected is unspent.
    assert figures(s, "SH01") == {"collected": 100000, "served_by_others": 100000,
                                  "net": -100000}
    assert_sound(s)


def test_a_merged_members_value_follows_him_with_its_branch_and_age(a: Ledger, b: Ledger
                                                                   ) -> None:
    old = add_member(a, 1)
    a.topup(a.owner, old, 10000)  # the oldest lot, collected at SH01
    sync(a, b)
    survivor = add_member(b, 2)
    b.topup(b.owner, survivor, 5000)
    sync(a, b)
    a.merge_member(a.owner, old, survivor)  # SH01 sweeps the 100.00 it holds to the survivor
    a.transfer_rights(a.owner, survivor, "SH02", 10000)
    sync(a, b)
    b.debit(b.owner, survivor, amount=12000)  # the merged lot first: it is older
    sync(a, b)
    s = same_everywhere(a, b)
    assert s["pairs"] == [{"owes": "SH01", "to": "SH02", "amount": 10000, "served": 10000,
                           "served_back": 0}]
    assert figures(s, "SH02") == {"collected": 5000, "served_own": 2000,
                                  "served_for_others": 10000, "net": 10000, "unspent": 3000}
    assert_sound(s)


def test_cash_no_lot_covers_is_shown_unattributed_and_owes_nothing() -> None:
    """No honest writer spends cash no top-up paid for, but a replica reading such
    entries must still print a statement that says so rather than fail."""
    def entry(i: int, kind: str, node: str, cash: int, **more: Any) -> dict[str, Any]:
        return {"id": f"{i:013d}.{node}", "kind": kind, "node": node, "member": "M",
                "deltas": [["cash", node, cash]], **more}

    s = settlement.settle([entry(1, "topup", "SH01", 1000),
                           entry(2, "debit", "SH02", -1500),
                           entry(3, "refund", "SH02", 700, ref=f"{2:013d}.SH02")])
    # The debit took the whole lot and 500 from nowhere; its refund gave back the 500
    # first (taken last), then 200 of the lot.
    assert s["pairs"] == [{"owes": "SH01", "to": "SH02", "amount": 800, "served": 800,
                           "served_back": 0}]
    assert figures(s, "SH02") == {"served_for_others": 800, "net": 800}
    assert figures(s, "SH01") == {"collected": 1000, "served_by_others": 800, "net": -800,
                                  "unspent": 200}
    s = settlement.settle([entry(1, "debit", "SH02", -1500)])
    assert figures(s, "SH02") == {"unattributed": 1500}


def test_a_debit_sorted_before_the_top_up_it_spent_is_covered_by_it() -> None:
    """A branch whose clock ran ahead and was set back (hlc eras) mints ids below the
    ones it minted while ahead: a member tops up at SH01 while its clock is two days
    ahead, then is served at SH02 with the right time. The debit sorts first; the top-up
    covers it when it comes, and the books show SH01 owing SH02, nothing unattributed,
    nothing left prepaid; a refund of the debit goes back to that lot."""
    def entry(i: int, kind: str, node: str, cash: int, **more: Any) -> dict[str, Any]:
        return {"id": f"{i:013d}.{node}", "kind": kind, "node": node, "member": "M",
                "deltas": [["cash", node, cash]], **more}

    debit = entry(1, "debit", "SH02", -600)
    s = settlement.settle([debit, entry(5, "topup", "SH01", 1000)])
    assert_sound(s)
    assert s["pairs"] == [{"owes": "SH01", "to": "SH02", "amount": 600, "served": 600,
                           "served_back": 0}]
    assert figures(s, "SH01")["unspent"] == 400
    s = settlement.settle([debit, entry(5, "topup", "SH01", 1000),
                           entry(6, "refund", "SH02", 600, ref=debit["id"])])
    assert_sound(s)
    assert figures(s, "SH01") == {"collected": 1000, "unspent": 1000}
    # Covered in part: what the lot could not pay stays unattributed, and shows.
    s = settlement.settle([debit, entry(5, "topup", "SH01", 250)])
    assert figures(s, "SH02") == {"served_for_others": 250, "net": 250, "unattributed": 350}


def test_a_refund_sorted_before_its_debit_gives_back_what_the_debit_took(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SH02 serves a member 50.00 of SH01's top-up while its clock runs three days
    ahead; its clock is put right and it refunds the service whole: the refund's id
    sorts before the debit's, as builds before refunds were booked after their sale
    wrote it (test_refund_dates), and a liar still may. Nobody owes anybody, and the
    member's 100.00 is prepaid at SH01 again, at both branches (real ledgers, real
    sync)."""
    monkeypatch.setattr(Ledger, "_booked_after", lambda _self, _ref: nullcontext())
    sh_clock, hz_clock = FakeClock(), FakeClock()
    a = new_ledger(tmp_path, "SH01", now_ms=sh_clock)
    b = new_ledger(tmp_path, "SH02", now_ms=hz_clock)
    try:
        m = add_member(a)
        add_member(b, 1)
        sync(a, b)
        a.topup(a.owner, m, 10_000)
        a.transfer_rights(a.owner, m, "SH02", 5_000)
        sync(a, b)
        hz_clock.advance_days(3)
        debit = b.debit(b.owner, m, amount=5_000)
        hz_clock.advance_days(-3)
        b.clock_vouched = True  # the peers confirm the clock put right (check_clock_for)
        refund = b.refund(b.owner, debit["id"])
        assert refund["id"] < debit["id"]
        sync(a, b)
        s = same_everywhere(a, b)
        assert_sound(s)
        assert s["pairs"] == []
        assert figures(s, "SH01") == {"collected": 10_000, "unspent": 10_000}
        assert a.balance(m)["cash"] == b.balance(m)["cash"] == 10_000
    finally:
        a.close()
        b.close()


# --- properties --------------------------------------------------------------------

# (what, branch, member, amount or fraction, other branch)
Step = tuple[str, int, int, int, int]

topup = st.tuples(st.just("topup"), st.integers(0, 2), st.integers(0, 1),
                 st.integers(1, 200000), st.just(0))
debit = st.tuples(st.just("debit"), st.integers(0, 2), st.integers(0, 1),
                  st.integers(1, 150000) | st.just(10**6), st.just(0))  # 10**6: all he has
# Top-ups first, so that most scripts have value to serve; then anything.
steps = st.builds(lambda first, then: first + then, st.lists(topup, min_size=2, max_size=3),
                  st.lists(st.one_of(
                      topup, debit, debit,
                      st.tuples(st.just("refund"), st.just(0), st.integers(0, 99),
                                st.integers(1, 100), st.just(0)),
                      st.tuples(st.just("transfer"), st.integers(0, 2), st.integers(0, 1),
                                st.integers(1, 100), st.integers(1, 2)),
                      st.tuples(st.just("sync"), st.integers(0, 2), st.just(0), st.just(0),
                                st.integers(1, 2)),
                      st.tuples(st.just("day"), st.just(0), st.just(0), st.integers(1, 30),
                                st.just(0)),
                  ), min_size=2, max_size=20))


class World:
    """Three branches on one hand-moved clock, two members, a promotion (so bonus is
    served too), and the debits written so far."""

    def __init__(self, root: Path) -> None:
        self.clock = FakeClock()
        self.ledgers = [new_ledger(root, n, now_ms=self.clock) for n in NODES]
        first = self.ledgers[0]
        first.set_rule(first.owner, "promotions", [{"min": 50000, "bonus": 8000}])
        # Rights go only to a branch the chain knows: the owner lists the three (in the
        # first full sync SH01 meets SH03 only once the two are in step, which records
        # no peer: SH03 would stay unknown at SH01 until it wrote something).
        name_branches(first, *NODES)
        self.members = [add_member(first, i) for i in range(2)]
        self.full_sync()
        self.debits: list[dict[str, Any]] = []

    def close(self) -> None:
        for x in self.ledgers:
            x.close()

    def full_sync(self, order: Sequence[int] = (0, 1, 2)) -> None:
        i, j, k = (self.ledgers[n] for n in order)
        sync(i, j)
        sync(j, k)
        sync(i, j)

    def transfer(self, giver: Ledger, to: Ledger, member: str, purse: str, amount: int
                 ) -> None:
        own = giver.rights(member, purse).get(giver.node, 0)
        if min(own, amount) > 0:
            giver.transfer_rights(giver.owner, member, to.node, min(own, amount), purse)
            sync(giver, to)

    def serve(self, at: Ledger, member: str, want: int) -> None:
        """A debit of what the member holds, up to `want`, at `at`: a branch that does
        not hold the rights asks the others, one at a time, until it does (the node's
        rights fetch; asking a peer syncs with it)."""
        for giver in [x for x in self.ledgers if x is not at] * 2:
            if not self.lacking(at, member, want):
                break
            sync(at, giver)
            for purse, n in self.lacking(at, member, want).items():
                self.transfer(giver, at, member, purse, n)
        bal = at.balance(member)
        amount = min(want, bal["cash"] + bal["bonus"])
        # Not every branch could be reached for rights: refused, as at a till.
        with suppress(LedgerError):
            if amount > 0:
                self.debits.append(at.debit(at.owner, member, amount=amount))

    @staticmethod
    def lacking(at: Ledger, member: str, want: int) -> dict[str, int]:
        """What `at` lacks of each purse's rights to serve `want` (cash first, then
        bonus, as a debit spends), as far as it knows; {} when it lacks nothing and
        knows of enough value."""
        bal = at.balance(member)
        amount = min(want, bal["cash"] + bal["bonus"])
        cash = min(amount, bal["cash"])
        need = {"cash": cash, "bonus": amount - cash}
        out = {p: n - at.rights(member, p).get(at.node, 0) for p, n in need.items()}
        out = {p: n for p, n in out.items() if n > 0}
        if amount < want:
            out.setdefault("cash", 0)  # perhaps there is more the branch has not heard of
        return out

    def step(self, step: Step, *, synced: bool = False) -> None:
        what, i, m, n, other = step
        at, member = self.ledgers[i], self.members[m % len(self.members)]
        self.clock.ms += 1000  # each step strictly later: the same order in every run
        if synced:
            self.full_sync()
        if what == "topup":
            at.topup(at.owner, member, n)
        elif what == "debit":
            self.serve(at, member, n)
        elif what == "refund" and self.debits:
            debit = self.debits[m % len(self.debits)]
            at = next(x for x in self.ledgers if x.node == debit["node"])
            refunded = sum(e["amount"] for e in at.history(debit["member"], 1000)
                           if e["kind"] == "refund" and e.get("ref") == debit["id"])
            left = debit["amount"] - refunded
            if left > 0:
                at.refund(at.owner, debit["id"], max(1, left * n // 100))
        elif what == "transfer":
            to = self.ledgers[(i + other) % 3]
            for purse in ("cash", "bonus"):
                own = at.rights(member, purse).get(at.node, 0)
                self.transfer(at, to, member, purse, own * n // 100)
        elif what == "sync":
            sync(at, self.ledgers[(i + other) % 3])
        elif what == "day":
            self.clock.advance_days(n / 24)

    def statement(self, start: str | None = None, end: str | None = None) -> Statement:
        return same_everywhere(*self.ledgers, start=start, end=end)


@contextmanager
def world() -> Iterator[World]:
    with tempfile.TemporaryDirectory() as root:
        w = World(Path(root))
        try:
            yield w
        finally:
            w.close()


# Each example opens three real stores and runs up to 23 steps: about 40-80 ms.
MODEST = settings(max_examples=50, suppress_health_check=[HealthCheck.too_slow])


@MODEST
@given(steps, st.permutations((0, 1, 2)))
def test_every_replica_prints_one_statement_that_reconciles(
        script: list[Step], order: list[int]) -> None:
    with world() as w:
        for step in script:
            w.step(step)
        w.full_sync(order)
        whole = w.statement()
        assert_sound(whole)
        # All value still prepaid is every member's cash, wherever its rights sit.
        cash = sum(w.ledgers[0].balance(m)["cash"] for m in w.members)
        assert sum(f["unspent"] for f in whole["branches"].values()) == cash
        # Periods add up: the days up to one in the middle, and the days after it.
        day_of = w.ledgers[0].storage.day_of
        middle = day_of((FakeClock().ms + w.clock.ms) // 2)
        before = w.statement(end=middle)
        after = w.statement(start=(date.fromisoformat(middle) + timedelta(days=1)).isoformat())
        for s in (before, after):
            assert_sound(s)
        for branch, f in whole["branches"].items():
            was = before["branches"].get(branch)
            now = after["branches"].get(branch)
            assert (was["unspent"] if was else 0) == (now["opening"] if now else 0)
            for k in ("collected", "served_own", "net", "removed", "bonus_served"):
                assert (was[k] if was else 0) + (now[k] if now else 0) == f[k], k


@MODEST
@given(steps, st.lists(st.tuples(st.integers(0, 21), st.integers(0, 2), st.integers(0, 1),
                                 st.integers(1, 100), st.integers(1, 2)), max_size=6))
def test_rights_transfers_that_serve_nobody_change_nothing(
        script: list[Step], extra: list[tuple[int, int, int, int, int]]) -> None:
    def run(with_extra: bool) -> Statement:
        with world() as w:
            for at, step in enumerate(script):
                for where, i, m, n, other in extra if with_extra else ():
                    if where == at:
                        w.step(("transfer", i, m, n, other), synced=True)
                w.step(step, synced=True)
            w.full_sync()
            return w.statement()

    plain = run(False)
    assert_sound(plain)
    assert run(True) == plain


def test_a_debit_covered_a_fen_at_a_time_finds_its_open_part_without_a_search(
        monkeypatch: Any) -> None:
    """A debit sorted before any lot (a clock put back, or a liar) covered by N top-ups
    of a fen each: each cover searched the debit's growing list of parts for the part
    still open (4.6 s at 16,000). Counted, not timed: no search; and the statement is
    the one the lots say (the debit served wholly from them, nothing unattributed)."""
    searches = [0]

    class Parts(list[Any]):
        def index(self, *args: Any) -> int:
            searches[0] += 1
            return super().index(*args)

    made = settlement._Taking

    class Taking(made):  # type: ignore[valid-type,misc]
        def __init__(self, server: str, parts: list[Any]) -> None:
            super().__init__(server, Parts(parts))

    monkeypatch.setattr(settlement, "_Taking", Taking)
    n = 300
    entries = [{"id": "0000000000001.0000.SH03", "kind": "debit", "node": "SH03",
                "member": "M", "deltas": [["cash", "SH03", -n]], "amount": n}]
    entries += [{"id": f"{2000000000000 + i:013d}.0000.SH01", "kind": "topup",
                 "node": "SH01", "member": "M", "deltas": [["cash", "SH01", 1]], "amount": 1}
                for i in range(n)]
    statement = settlement.settle(entries)
    assert searches == [0]
    assert statement["branches"]["SH03"]["unattributed"] == 0
    assert statement["branches"]["SH03"]["served_for_others"] == n
    assert statement["total"] == 0
