"""A PC's clock moved by hand must not decide what the chain's rules and limits decide.

The owner's notices go by the chain's time the ledger books by, not this machine's
clock; rules are read as of the furthest day this store has read while its clock is
set back and nobody vouches for it; and the daily "no approver needed" limits count
from the day it would be had the clock not been put forward by hand.

Real SQLite stores (helpers.new_ledger) on fake clocks; the node core driven by hand
and real sync sessions, as tests/test_clock_set_back.py does.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from helpers import FakeClock, new_ledger, sync

from crdtledger.core import NodeCore
from crdtledger.errors import ApprovalRequired, InvalidInput, NotCaughtUp
from crdtledger.hlc import _since_boot_ms
from crdtledger.ledger import Ledger
from crdtledger.sync import SyncSession
from peer.notifier import Notifier

DAY_MS = 86_400_000
HOUR_MS = 3_600_000


def met(core: NodeCore, peer: Ledger, link: int, *, now: float) -> None:
    """`core`'s store meets `peer` on `link`, a few rounds of real sync sessions, so the
    peer's clock is heard."""
    mine_id = core.ledger.node
    core.link_opened(link, peer.node, dialer=min(mine_id, peer.node), now=now)
    theirs = SyncSession(peer, expect_node=mine_id)
    theirs.start()
    mine = core.session(peer.node)
    assert mine is not None
    for _ in range(3):
        core.receive(link, theirs.data_to_send(), now)
        for frame in mine.data_to_send():
            theirs.receive(frame)


class Kept:
    """A gateway that keeps what it is given."""

    def __init__(self) -> None:
        self.sent: list[Any] = []

    async def send(self, message: Any) -> None:
        self.sent.append(message)


class NodeStandIn:
    """What peer.notifier.Notifier reads of its node: the store and the gateways."""

    def __init__(self, ledger: Ledger, gateways: dict[str, Kept]) -> None:
        self.ledger = ledger
        self.gateways = gateways


def test_the_daily_report_goes_by_the_chains_day_on_a_pc_running_ahead(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SH01's PC ran two days ahead and its two peers corrected it: its sales were
    booked on the right day, but its notifier read the machine's clock and sent the day
    after tomorrow's report (all zeros), and the day's own was never sent."""
    right = FakeClock(1_767_225_600_000 + 13 * HOUR_MS)  # 2026-01-01 21:00 in Shanghai
    machine = FakeClock(right.ms + 2 * DAY_MS)
    monkeypatch.setattr(time, "time_ns", lambda: machine.ms * 1_000_000)
    nodes = ["SH01", "SH02", "SH03"]
    ledgers = [new_ledger(tmp_path, n, now_ms=machine if n == "SH01" else right)
               for n in nodes]
    try:
        sh01 = ledgers[0]
        o = sh01.owner
        sh01.set_rule(o, "branches", {n: n for n in nodes}, effective_from="2000-01-01")
        sh01.set_rule(o, "notifications", {"daily": [{"branch": "SH01", "at": "21:00",
                                                      "to": ["boss@example.com"]}]},
                      effective_from="2000-01-01")
        for _ in range(2):
            for other in ledgers[1:]:
                sync(sh01, other)
        core = NodeCore(sh01)
        core.start(0.0)
        for link, other in enumerate(ledgers[1:], 1):
            met(core, other, link, now=1.0)
        assert core.clock_status()["off_ms"] == -2 * DAY_MS
        m = sh01.add_member(o, name="张伟", phone="13800138000")
        sh01.topup(o, m, 50000)
        sh01.debit(o, m, amount=12800)
        mail = Kept()
        notifier = Notifier(NodeStandIn(sh01, {"email": mail}))  # type: ignore[arg-type]
        asyncio.run(notifier.tick())
        assert [x.key for x in mail.sent] == ["daily:SH01:2026-01-01:boss@example.com"]
        assert "128.00" in mail.sent[0].body
    finally:
        for ledger in ledgers:
            ledger.close()


# --- rules read on a clock set back ---------------------------------------------------


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()  # 2026-01-01 08:00 in Shanghai


@pytest.fixture
def shop(tmp_path: Path, clock: FakeClock) -> Any:
    ledger = new_ledger(tmp_path, "SH01", now_ms=clock)
    yield ledger
    ledger.close()


def test_a_price_raised_today_holds_on_a_clock_set_back(shop: Ledger,
                                                        clock: FakeClock) -> None:
    """Head office raised FOOT60 from today; the cashier set the lone PC's clock back a
    day and sold at yesterday's price (12,160 fen against 15,010)."""
    o = shop.owner
    m = shop.add_member(o, name="张伟", phone="13800138000")
    cashier = shop.add_operator(o, "alice", "secret1", roles=["cashier"])
    shop.topup(o, m, 100000)
    services = dict(shop.rule("services"))
    services["FOOT60"] = dict(services["FOOT60"], price=15800)
    shop.set_rule(o, "services", services, effective_from=shop.today())
    today = shop.debit(cashier, m, service="FOOT60")["amount"]
    clock.advance_days(-1)
    assert shop.debit(cashier, m, service="FOOT60")["amount"] == today == 15010
    # An operator who confirms the clock says it is right: its day's rules then.
    shop.confirm_clock(o)
    assert shop.debit(cashier, m, service="FOOT60")["amount"] < today


def test_an_ended_promotion_gives_nothing_on_a_clock_set_back(shop: Ledger,
                                                              clock: FakeClock) -> None:
    """充500送30 ended today; five top-ups with the clock set back a day gave 150.00."""
    o = shop.owner
    m = shop.add_member(o, name="张伟", phone="13800138000")
    cashier = shop.add_operator(o, "alice", "secret1", roles=["cashier"])
    shop.set_rule(o, "promotions", [{"name": "充500送30", "min": 50000, "bonus": 3000}],
                  effective_from=shop.storage.day_of(clock.ms - 10 * DAY_MS))
    shop.set_rule(o, "promotions", [], effective_from=shop.today())
    clock.advance_days(-1)
    for _ in range(5):
        shop.topup(cashier, m, 50000)
    assert shop.balance(m).get("bonus", 0) == 0
    assert shop.balance(m)["cash"] == 250000


# --- daily limits on a clock put forward by hand ----------------------------------------


class BootClock:
    """The time since this PC booted, as the test says real time passes (the boot clock
    runs on while the wall clock is moved by hand)."""

    def __init__(self) -> None:
        self.ms = 3_600_000

    def __call__(self) -> int:
        return self.ms


def put_forward_a_day(clock: FakeClock, boot: BootClock) -> None:
    """The cashier moves the PC's clock on a day; a minute of real time passes."""
    clock.advance_days(1)
    boot.ms += 60_000


def a_lone_store(shop: Ledger) -> tuple[str, dict[str, str]]:
    o = shop.owner
    m = shop.add_member(o, name="张伟", phone="13800138000")
    shop.define_role(o, "auditor", ["adjust", "reports.view"])
    shop.define_role(o, "stocker", ["stock.write"])
    ops = {"cashier": shop.add_operator(o, "alice", "secret1", roles=["cashier"]),
           "auditor": shop.add_operator(o, "audrey", "secret3", roles=["auditor"]),
           "stocker": shop.add_operator(o, "stan", "secret4", roles=["stocker"])}
    shop.add_goods(o, "G01", "洗发水", 5000, cost=3000)
    shop.stock_in(o, "G01", 100)
    return m, ops


def unapproved(act: Any) -> int:
    try:
        act()
    except ApprovalRequired:
        return 0
    return 1


def test_daily_limits_hold_when_the_clock_is_put_forward_a_day_at_a_time(
        shop: Ledger, clock: FakeClock) -> None:
    """A cashier alone put the PC forward a day five times in five minutes: 2,500,000
    fen topped up without an approver (a limit of 500,000 a day), five corrections,
    five write-offs and five packages for nothing, each day's count afresh."""
    boot = BootClock()
    shop.clock.since_boot_ms = boot
    m, ops = a_lone_store(shop)
    approval = shop.rule("approval")
    limit, climit = int(approval["topup_limit"]), int(approval["correction_limit"])
    per = int(approval["stock_adjust_limit"]) // 3000
    done = {"topup": 0, "correct": 0, "stock": 0, "package": 0}
    for _ in range(5):
        done["topup"] += unapproved(lambda: shop.topup(ops["cashier"], m, limit))
        done["correct"] += unapproved(lambda: shop.correct(ops["auditor"], m, "cash", climit,
                                                           "till miscount"))
        done["stock"] += unapproved(lambda: shop.stock_adjust(ops["stocker"], "G01", -per,
                                                              "损坏"))
        done["package"] += unapproved(lambda: shop.sell_package(ops["cashier"], m, "FOOT60",
                                                                39, 0, pay="cash"))
        put_forward_a_day(clock, boot)
    assert done == {"topup": 1, "correct": 1, "stock": 1, "package": 1}
    # A manager who checks the clock and says it is right: today counts afresh.
    shop.confirm_clock(shop.owner)
    assert unapproved(lambda: shop.topup(ops["cashier"], m, limit)) == 1
    assert shop.clock.moved_ms == 0


def test_a_day_that_really_passes_starts_the_limits_afresh(shop: Ledger,
                                                           clock: FakeClock) -> None:
    boot = BootClock()
    shop.clock.since_boot_ms = boot
    m, ops = a_lone_store(shop)
    limit = int(shop.rule("approval")["topup_limit"])
    assert unapproved(lambda: shop.topup(ops["cashier"], m, limit)) == 1
    clock.advance_days(1)
    boot.ms += DAY_MS
    assert unapproved(lambda: shop.topup(ops["cashier"], m, limit)) == 1
    # Moved forward a few minutes only (NTP, a till's drift put right): nothing moved.
    clock.ms += 90_000
    assert shop.unmoved_day() == shop.today() and shop.clock.moved_ms == 0


def test_once_a_day_check_ins_and_next_weeks_coupon_on_a_clock_put_forward(
        shop: Ledger, clock: FakeClock) -> None:
    """Ten once-a-day check-ins in one sitting, a day forward each; and a coupon valid
    from next week redeemed today, the clock put forward to it (then back a little,
    still ahead of the real day)."""
    boot = BootClock()
    shop.clock.since_boot_ms = boot
    o = shop.owner
    m = shop.add_member(o, name="张伟", phone="13800138000")
    cashier = shop.add_operator(o, "alice", "secret1", roles=["cashier"])
    shop.set_activity(o, "DAILY", {"name": "每日签到", "from": "2026-01-01T00:00",
                                   "to": "2026-02-01T00:00", "points": 100,
                                   "repeat": "daily", "per_day": 1})
    coupon = shop.issue_coupon(o, m, off=3000, valid_from="2026-01-08",
                               valid_to="2026-01-31")["coupon"]
    taken = 0
    for _ in range(10):
        try:
            shop.checkin(cashier, "DAILY", m)
            taken += 1
        except InvalidInput:
            pass
        put_forward_a_day(clock, boot)
    assert taken == 1 and shop.balance(m)["points"] == 100
    clock.advance_days(-3)  # 01-08: still seven days ahead of the real day
    with pytest.raises(NotCaughtUp, match="put forward by hand"):
        shop.redeem_coupon(cashier, coupon, spend=5000)


def test_the_clock_moved_is_seen_across_a_restart_on_the_same_boot(
        tmp_path: Path, clock: FakeClock) -> None:
    """The command line runs one operation a process: the clock moved between two is
    seen against what the store kept of the boot clock."""
    boot = BootClock()
    shop = new_ledger(tmp_path, "SH01", now_ms=clock)
    shop.clock.since_boot_ms = boot
    m, ops = a_lone_store(shop)
    limit = int(shop.rule("approval")["topup_limit"])
    assert unapproved(lambda: shop.topup(ops["cashier"], m, limit)) == 1
    shop.close()
    put_forward_a_day(clock, boot)
    shop = Ledger.open(tmp_path / "sh01", now_ms=clock)
    try:
        shop.clock.since_boot_ms = boot
        assert unapproved(lambda: shop.topup(ops["cashier"], m, limit)) == 0
        assert shop.clock.moved_ms == DAY_MS - 60_000  # a minute really passed
    finally:
        shop.close()


def test_this_machines_boot_clock_tells_a_clock_put_forward(tmp_path: Path) -> None:
    """The boot clock this machine keeps (CLOCK_BOOTTIME), under a wall clock that is
    this machine's, put forward a day."""
    shift = [0]
    shop = new_ledger(tmp_path, "SH01", now_ms=lambda: time.time_ns() // 1_000_000 + shift[0])
    try:
        shop.clock.since_boot_ms = _since_boot_ms
        m, ops = a_lone_store(shop)
        limit = int(shop.rule("approval")["topup_limit"])
        assert unapproved(lambda: shop.topup(ops["cashier"], m, limit)) == 1
        shift[0] = DAY_MS
        assert unapproved(lambda: shop.topup(ops["cashier"], m, limit)) == 0
        assert DAY_MS - 5000 < shop.clock.moved_ms <= DAY_MS + 5000
    finally:
        shop.close()
