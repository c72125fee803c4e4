"""A negative cash correction in the settlement (crdtledger/settlement.py): it undoes
what its own branch put in by mistake, so it takes that branch's lots first, the
newest first, and only then the others, oldest first. Through real ledgers on real
SQLite files synced to each other, as tests/test_settlement.py."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from helpers import FakeClock, name_branches, new_ledger, sync
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_settlement import Step, World, add_member, assert_sound, figures, steps

from crdtledger import views
from crdtledger.ledger import Ledger
from crdtledger.settlement import Statement

MGR = ("mgr", "mgrpass-1")  # a manager: corrections above 100.00 need an approver


@contextmanager
def chain(*nodes: str) -> Iterator[tuple[FakeClock, list[Ledger]]]:
    """Branches on one hand-moved clock that know each other and a manager."""
    clock = FakeClock()
    with tempfile.TemporaryDirectory() as root:
        ledgers = [new_ledger(Path(root), n, now_ms=clock) for n in nodes]
        try:
            first = ledgers[0]
            name_branches(first, *nodes)
            first.add_operator(first.owner, MGR[0], MGR[1], ["manager"])
            everywhere(ledgers)
            yield clock, ledgers
        finally:
            for x in ledgers:
                x.close()


def everywhere(ledgers: list[Ledger]) -> None:
    for x in ledgers[1:]:
        sync(ledgers[0], x)
    for x in ledgers[1:]:
        sync(ledgers[0], x)


def statement(ledgers: list[Ledger]) -> Statement:
    """The statement, which every replica prints alike."""
    first, *rest = [views.settlement(x) for x in ledgers]
    for other in rest:
        assert other == first
    return first


def test_a_correction_undone_at_its_branch_leaves_nothing_to_settle() -> None:
    with chain("SH01", "SH02") as (clock, (a, b)):
        m = add_member(a)
        a.topup(a.owner, m, 100000)
        sync(a, b)
        clock.ms += 60_000
        b.correct(b.owner, m, "cash", 50000, "录错", approver=MGR)
        clock.ms += 60_000
        b.correct(b.owner, m, "cash", -50000, "撤销录错", approver=MGR)
        sync(a, b)
        s = statement([a, b])
        # SH01 holds the member's 1,000.00 and owes him all of it; SH02's mistake
        # came and went at SH02.
        assert figures(s, "SH01") == {"collected": 100000, "unspent": 100000}
        assert figures(s, "SH02") == {"collected": 50000, "removed": 50000}
        clock.ms += 60_000
        a.debit(a.owner, m, amount=100000)
        sync(a, b)
        s = statement([a, b])
        assert s["pairs"] == []
        assert figures(s, "SH01") == {"collected": 100000, "served_own": 100000}
        assert_sound(s)


def test_a_top_up_keyed_too_high_is_corrected_where_it_was_keyed() -> None:
    with chain("SH01", "SH02") as (clock, (a, b)):
        m = add_member(a)
        a.topup(a.owner, m, 100000)
        sync(a, b)
        clock.ms += 60_000
        b.topup(b.owner, m, 150000)  # keyed 1,500.00; the till took 500.00
        clock.ms += 60_000
        b.correct(b.owner, m, "cash", -100000, "充值输错", approver=MGR)
        sync(a, b)
        clock.ms += 60_000
        a.debit(a.owner, m, amount=100000)
        sync(a, b)
        s = statement([a, b])
        assert s["pairs"] == []
        assert figures(s, "SH01") == {"collected": 100000, "served_own": 100000}
        assert figures(s, "SH02") == {"collected": 150000, "removed": 100000,
                                      "unspent": 50000}
        assert a.balance(m)["cash"] == 50000  # what SH02 still owes the member
        assert_sound(s)


def test_a_correction_takes_its_branchs_newest_lot_first() -> None:
    """SH02's mistake is its newest lot: undone, the books are those of the history
    without it (an older lot of SH02 first, as FIFO spends it), which taking SH02's
    oldest lot first would not give (SH01 would serve its own lot instead)."""

    def run(mistake: bool) -> Statement:
        with chain("SH01", "SH02") as (clock, (a, b)):
            m = add_member(a)
            sync(a, b)
            b.topup(b.owner, m, 30000)
            sync(a, b)
            clock.ms += 60_000
            a.topup(a.owner, m, 100000)
            sync(a, b)
            if mistake:
                clock.ms += 60_000
                b.correct(b.owner, m, "cash", 50000, "录错", approver=MGR)
                clock.ms += 60_000
                b.correct(b.owner, m, "cash", -50000, "撤销录错", approver=MGR)
                sync(a, b)
            clock.ms += 60_000
            a.debit(a.owner, m, amount=30000)  # SH01 holds the rights to it
            sync(a, b)
            s = statement([a, b])
            assert_sound(s)
            return s

    plain, undone = run(False), run(True)
    assert plain["pairs"] == [{"owes": "SH02", "to": "SH01", "amount": 30000,
                               "served": 30000, "served_back": 0}]
    assert undone["pairs"] == plain["pairs"]
    assert undone["net"] == plain["net"]
    assert figures(undone, "SH02") == {**figures(plain, "SH02"), "collected": 80000,
                                       "removed": 50000}


def test_a_branch_with_no_lot_of_its_own_corrects_the_oldest_lots() -> None:
    with chain("SH01", "SH02", "SH03") as (clock, ledgers):
        a, b, c = ledgers
        m = add_member(a)
        everywhere(ledgers)
        a.topup(a.owner, m, 20000)  # the oldest lot
        clock.ms += 60_000
        c.topup(c.owner, m, 20000)
        everywhere(ledgers)
        a.transfer_rights(a.owner, m, "SH02", 15000)
        everywhere(ledgers)
        clock.ms += 60_000
        b.correct(b.owner, m, "cash", -5000, "多记")  # SH02 holds no lot: SH01's, oldest
        everywhere(ledgers)
        s = statement(ledgers)
        assert s["pairs"] == []
        assert figures(s, "SH01") == {"collected": 20000, "removed": 5000, "unspent": 15000}
        assert figures(s, "SH03") == {"collected": 20000, "unspent": 20000}
        assert "SH02" not in s["branches"]
        # Its own lot first, then the oldest of the others: 50.00 of its own, 100.00
        # of SH01's; SH03's lot, newer than SH01's, is not touched.
        clock.ms += 60_000
        b.topup(b.owner, m, 5000)
        clock.ms += 60_000
        b.correct(b.owner, m, "cash", -15000, "多记", approver=MGR)
        everywhere(ledgers)
        s = statement(ledgers)
        assert s["pairs"] == []
        assert figures(s, "SH01") == {"collected": 20000, "removed": 15000, "unspent": 5000}
        assert figures(s, "SH02") == {"collected": 5000, "removed": 5000}
        assert figures(s, "SH03") == {"collected": 20000, "unspent": 20000}
        assert_sound(s)


# --- properties --------------------------------------------------------------------


class Corrected(World):
    """The world of tests/test_settlement.py with a manager, a step that corrects
    cash down at a branch, and a mistake made and undone at a branch."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        first = self.ledgers[0]
        first.add_operator(first.owner, MGR[0], MGR[1], ["manager"])
        self.full_sync()

    def undone(self, i: int, m: int, n: int) -> None:
        at, member = self.ledgers[i], self.members[m % len(self.members)]
        at.correct(at.owner, member, "cash", n, "录错", approver=MGR)
        at.correct(at.owner, member, "cash", -n, "撤销录错", approver=MGR)

    def step(self, step: Step, *, synced: bool = False) -> None:
        what, i, m, n, _ = step
        if what != "correct":
            return super().step(step, synced=synced)
        # A correction down of what this branch holds: another lot's value, when the
        # branch has none of its own left.
        at, member = self.ledgers[i], self.members[m % len(self.members)]
        self.clock.ms += 1000
        own = min(n, at.rights(member, "cash").get(at.node, 0))
        if own:
            at.correct(at.owner, member, "cash", -own, "多记", approver=MGR)
        return None


corrections = st.tuples(st.just("correct"), st.integers(0, 2), st.integers(0, 1),
                        st.integers(1, 100000), st.just(0))


def play(script: list[Step], undone: list[tuple[int, int, int, int]],
         order: list[int]) -> Statement:
    """The script, with mistakes undone before given steps (step, branch, member,
    amount): the statement, which every replica prints alike after a full sync in
    `order`, checked sound."""
    with tempfile.TemporaryDirectory() as root:
        w = Corrected(Path(root))
        try:
            for at, step in enumerate(script):
                for where, i, m, n in undone:
                    if where == at:
                        w.clock.ms += 1000
                        w.undone(i, m, n)
                w.step(step)
            w.full_sync(order)
            s = w.statement()
            assert_sound(s)
            cash = sum(w.ledgers[0].balance(m)["cash"] for m in w.members)
            assert sum(f["unspent"] for f in s["branches"].values()) == cash
            return s
        finally:
            w.close()


# Two runs of a world an example: fewer examples than tests/test_settlement.py's.
@settings(max_examples=20, suppress_health_check=[HealthCheck.too_slow])
@given(steps, st.lists(st.tuples(st.integers(0, 22), corrections), max_size=4),
       st.lists(st.tuples(st.integers(0, 22), st.integers(0, 2), st.integers(0, 1),
                          st.integers(1, 100000)), min_size=1, max_size=3),
       st.permutations((0, 1, 2)))
def test_a_mistake_undone_where_it_was_made_changes_no_debt(
        script: list[Step], more: list[tuple[int, Step]],
        undone: list[tuple[int, int, int, int]], order: list[int]) -> None:
    """Any script of top-ups, debits, refunds, transfers, partial syncs and
    corrections down: the statement is sound and the same on every replica whatever
    the order the entries reached them in, and a correction up undone at once at the
    same branch moves no debt."""
    for where, step in sorted(more, reverse=True):
        script = [*script[:where], step, *script[where:]]
    plain = play(script, [], order)
    with_undone = play(script, undone, [2, 1, 0])
    assert with_undone["pairs"] == plain["pairs"]
    # The branch that made the mistake shows it (collected, removed), at net 0.
    assert {b: n for b, n in with_undone["net"].items() if n} == {
        b: n for b, n in plain["net"].items() if n}
