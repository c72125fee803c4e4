"""The refund period of a sale made on a clock put forward by hand counts from the day
it really was, not from the day its id carries.

Left since the sixteenth wave: SH01 cut off, its clock put forward 30 days, sold
200.00; set right and reconnected, it refunded that sale 20 real days later inside a
7-day period, booked on a day still to come. The period was measured from the sale
id's day, and the refund follows its sale (LedgerBase._booked_after), so it was judged
on that day too: put forward N days, a sale's period was N days longer.

The clock is moved as tests/test_clock_moved_by_hand.py moves it: a FakeClock for the
wall clock, a boot clock that runs on (HybridClock.moved_by_hand). Real SQLite stores,
a real node core meeting real peers by sync sessions.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from helpers import FakeClock, new_ledger, sync
from test_clock_forward_rules import put_forward
from test_clock_moved_by_hand import DAY_MS, HOUR_MS, BootClock, met

from crdtledger import operations
from crdtledger.core import NodeCore
from crdtledger.errors import NotCaughtUp, PermissionDenied
from crdtledger.hlc import id_time_ms

NODES = ["SH01", "SH02", "SH03"]


class Chain:
    """SH01 on a PC whose clock the cashier moves (`machine`, its boot clock `boot`),
    SH02 and SH03 on the right time (`right`); a 7-day refund period, a member with
    1,000.00 at SH01."""

    def __init__(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.right = FakeClock(1_767_225_600_000 + 2 * HOUR_MS)  # 2026-01-01 10:00 Shanghai
        self.machine = FakeClock(self.right.ms)
        # The node core's peer clocks read this machine's clock.
        monkeypatch.setattr(time, "time_ns", lambda: self.machine.ms * 1_000_000)
        self.ledgers = [new_ledger(tmp_path, n, now_ms=self.machine if n == "SH01"
                                   else self.right) for n in NODES]
        self.sh01 = self.ledgers[0]
        self.boot = BootClock()
        self.sh01.clock.since_boot_ms = self.boot
        o = self.sh01.owner
        self.sh01.set_rule(o, "branches", {n: n for n in NODES}, effective_from="2000-01-01")
        self.sh01.set_rule(o, "refunds", {"days": 7}, effective_from="2000-01-01")
        self.member = self.sh01.add_member(o, name="张伟", phone="13800138000")
        self.sh01.topup(o, self.member, 100_000)

    def sale_on_a_clock_put_forward(self, days: int = 30) -> dict[str, Any]:
        """Cut off, the cashier puts the clock forward `days` days and sells 200.00;
        then sets it right (a minute of real time each)."""
        put_forward(self.machine, self.boot, days)
        sale = self.sh01.debit(self.sh01.owner, self.member, amount=20_000)
        self.machine.advance_days(-days)
        self.machine.ms += 60_000
        self.boot.ms += 60_000
        self.right.ms += 120_000
        assert self.machine.ms == self.right.ms
        return sale

    def days_pass(self, days: float) -> None:
        """Real time passes: every clock runs on, the boot clock too (no jump)."""
        for c in (self.machine, self.right):
            c.advance_days(days)
        self.boot.ms += int(days * DAY_MS)

    def reconnect(self) -> None:
        """SH01 meets its peers again: they hear each other and vouch for its clock."""
        for other in self.ledgers[1:]:
            sync(self.sh01, other)
        core = NodeCore(self.sh01)
        core.start(0.0)
        for link, other in enumerate(self.ledgers[1:], 1):
            met(core, other, link, now=1.0)
        assert self.sh01.clock_vouched

    def day(self, ident: str) -> str:
        return self.sh01.storage.day_of(id_time_ms(ident))

    def close(self) -> None:
        for ledger in self.ledgers:
            ledger.close()


@pytest.fixture
def chain(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    c = Chain(tmp_path, monkeypatch)
    yield c
    c.close()


def test_a_sale_on_a_clock_put_forward_is_past_its_period_by_the_real_days(
        chain: Chain) -> None:
    """The brief's case: 20 real days after the sale, inside 7 by its id's day."""
    sh01 = chain.sh01
    sale = chain.sale_on_a_clock_put_forward(30)
    assert chain.day(sale["id"]) == "2026-01-31"
    # The sale says how far the clock stood put forward (every replica holds it).
    assert sale["moved"] == 30 * DAY_MS
    chain.days_pass(20)
    chain.reconnect()
    assert chain.ledgers[1].entry(sale["id"])["moved"] == 30 * DAY_MS
    before = sh01.balance(chain.member)
    said = sh01.refund_closed(sale["id"])
    assert said is not None and "2026-01-01" in said and "refund period of 7 days" in said
    for name in ("refund", "quote.refund"):
        with pytest.raises(PermissionDenied, match="2026-01-01"):
            operations.run(sh01, sh01.owner, name, {"debit_id": sale["id"]})
    assert sh01.balance(chain.member) == before
    assert sh01.storage.conn.execute(
        "SELECT COUNT(*) FROM entries WHERE kind = 'refund'").fetchone() == (0,)


def test_inside_its_real_period_it_is_refunded_on_its_own_day_as_before(
        chain: Chain) -> None:
    """Three real days later: refunded, booked after the sale (on its day), as before."""
    sh01 = chain.sh01
    sale = chain.sale_on_a_clock_put_forward(30)
    chain.days_pass(3)
    chain.reconnect()
    assert sh01.refund_closed(sale["id"]) is None
    back = operations.run(sh01, sh01.owner, "refund", {"debit_id": sale["id"]})
    assert back["id"] > sale["id"] and chain.day(back["id"]) == "2026-01-31"
    assert sh01.balance(chain.member)["cash"] == 100_000


def test_a_lone_pc_set_back_again_waits_rather_than_counting_fewer_days(
        chain: Chain) -> None:
    """Still cut off 20 days later, the cashier sets the clock back 15 days to bring the
    sale inside its period: the refund waits until a peer or a manager vouches for the
    clock (it reads earlier than it did), as other deadlines do."""
    sh01 = chain.sh01
    sale = chain.sale_on_a_clock_put_forward(30)
    chain.days_pass(20)
    sh01.debit(sh01.owner, chain.member, amount=100)  # the till at work meanwhile
    # Past by the real days, whatever the clock said since: refused at once.
    with pytest.raises(PermissionDenied, match="made on 2026-01-01"):
        sh01.refund(sh01.owner, sale["id"])
    chain.machine.advance_days(-15)
    with pytest.raises(NotCaughtUp, match="confirm"):
        sh01.refund(sh01.owner, sale["id"])
    assert sh01.storage.conn.execute(
        "SELECT COUNT(*) FROM entries WHERE kind = 'refund'").fetchone() == (0,)


def test_a_lone_pc_inside_the_real_period_refunds_once_a_manager_confirms_the_clock(
        chain: Chain) -> None:
    """Cut off still, three real days later: the PC's clock reads a month earlier than
    it booked, so the refund waits (the price of a clock put forward) until a manager
    confirms the clock; then it is refunded, on the sale's own day."""
    sh01 = chain.sh01
    sale = chain.sale_on_a_clock_put_forward(30)
    chain.days_pass(3)
    assert sh01.refund_closed(sale["id"]) is None  # the counter offers it
    with pytest.raises(NotCaughtUp, match="confirm"):
        sh01.refund(sh01.owner, sale["id"])
    sh01.confirm_clock(sh01.owner)
    back = sh01.refund(sh01.owner, sale["id"])
    assert chain.day(back["id"]) == "2026-01-31"


def test_a_goods_sale_on_a_clock_put_forward_counts_alike(chain: Chain) -> None:
    sh01 = chain.sh01
    o = sh01.owner
    sh01.add_goods(o, "G01", "精油", 3333, 1200, unit="瓶")
    sh01.stock_in(o, "G01", 10)
    put_forward(chain.machine, chain.boot, 30)
    sale = sh01.sell_goods(o, "G01", 2, member=chain.member)
    assert sale["moved"] == 30 * DAY_MS
    chain.machine.advance_days(-30)
    chain.days_pass(10)
    chain.reconnect()
    with pytest.raises(PermissionDenied, match="made on 2026-01-01"):
        sh01.refund(o, sale["id"], qty=1)
    assert sh01.stock_of("G01")["qty"] == 8


def test_a_liars_moved_is_read_as_none(chain: Chain) -> None:
    """What no clock gives (more than the sale's own time, not a whole number) counts
    for nothing: the period from the id's day, as before."""
    sh01 = chain.sh01
    sale = sh01.debit(sh01.owner, chain.member, amount=100)
    chain.days_pass(3)
    for moved in (id_time_ms(sale["id"]) + 1, -5, "30", 2.5, None):
        assert sh01.refund_closed(sale["id"], {**sale, "moved": moved}) is None
    assert sh01.refund_closed(sale["id"], {**sale, "moved": 30 * DAY_MS}) is not None


def test_an_honest_sale_made_ahead_without_a_hand_on_the_clock_is_as_before(
        tmp_path: Path) -> None:
    """A sale whose clock was not seen being put forward (a clock of its own, no boot
    clock: the simulator's, or one moved while the PC was off) carries nothing new, and
    its period counts from its id's day, as before."""
    clock = FakeClock()
    shop = new_ledger(tmp_path, "SH01", now_ms=clock)
    try:
        o = shop.owner
        shop.set_rule(o, "refunds", {"days": 7}, effective_from="2000-01-01")
        m = shop.add_member(o, name="张伟", phone="13800138000")
        shop.topup(o, m, 100_000)
        sale = shop.debit(o, m, amount=20_000)
        assert "moved" not in sale
        clock.advance_days(7)
        assert shop.refund_closed(sale["id"]) is None
        clock.advance_days(1)
        assert shop.refund_closed(sale["id"]) is not None
    finally:
        shop.close()
