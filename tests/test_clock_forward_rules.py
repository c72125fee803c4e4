"""A lone PC's clock put forward by hand reads the rules of the day it would be had it
not been moved, as its daily limits count, until a peer vouches for it or an operator
confirms it.

A cashier alone put the PC's clock forward a week and took next week's promotion's
bonus today (3,000 fen on a 500.00 top-up), next week's price cut, level discount and
earn rate on a sale, and next week's goods price. The clock is moved as
tests/test_clock_moved_by_hand.py moves it: a FakeClock for the wall clock, a boot
clock that runs on (HybridClock.moved_by_hand). Real SQLite stores, a real node core
meeting real peers by sync sessions, and the HTTP API on 127.0.0.1 once.
"""

from __future__ import annotations

import asyncio
import time
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest
from helpers import FakeClock, new_ledger, snapshot, sync
from test_api import AMY_PW, Api, serving, with_operators
from test_clock_moved_by_hand import DAY_MS, BootClock, met

from crdtledger.core import NodeCore
from crdtledger.errors import NotCaughtUp
from crdtledger.hlc import id_time_ms
from crdtledger.ledger import Ledger
from peer.api import Standalone

PROMO = [{"name": "充500送30", "min": 50000, "bonus": 3000}]


def day_after(day: str, days: int) -> str:
    return (date.fromisoformat(day) + timedelta(days=days)).isoformat()


def put_forward(clock: FakeClock, boot: BootClock, days: int) -> None:
    """The cashier moves the PC's clock on `days` days; a minute of real time passes."""
    clock.advance_days(days)
    clock.ms += 60_000
    boot.ms += 60_000


def entry_day(ledger: Ledger, entry: dict[str, Any]) -> str:
    """The day an entry's id (its time) books it on."""
    return ledger.storage.day_of(id_time_ms(str(entry["id"])))


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()  # 2026-01-01 08:00 in Shanghai


@pytest.fixture
def boot() -> BootClock:
    return BootClock()


@pytest.fixture
def shop(tmp_path: Path, clock: FakeClock, boot: BootClock) -> Any:
    ledger = new_ledger(tmp_path, "SH01", now_ms=clock)
    ledger.clock.since_boot_ms = boot
    yield ledger
    ledger.close()


def promotion_next_week(shop: Ledger) -> tuple[str, str, str, str]:
    """The owner, a member, a cashier and today, with next week's promotion set and the
    till at work before the clock is moved."""
    o = shop.owner
    m = shop.add_member(o, name="张伟", phone="13800138000")
    cashier = shop.add_operator(o, "alice", "secret1", roles=["cashier"])
    today = shop.today()
    shop.set_rule(o, "promotions", PROMO, effective_from=day_after(today, 7))
    shop.topup(cashier, m, 10000)
    return o, m, cashier, today


def test_next_weeks_promotion_is_not_taken_on_a_clock_put_forward(
        shop: Ledger, clock: FakeClock, boot: BootClock) -> None:
    o, m, cashier, today = promotion_next_week(shop)
    put_forward(clock, boot, 7)
    e = shop.topup(cashier, m, 50000)
    assert shop.balance(m) == {"cash": 60000, "bonus": 0, "points": 0, "packages": {}}
    # The entry itself is booked by its id, on the day the clock reads: ids are not
    # changed (the daily limits and the rules only count from the unmoved day).
    assert entry_day(shop, e) == day_after(today, 7) == shop.today()
    assert shop.rules_day() == today == shop.unmoved_day()
    # A manager who checks the clock and says it is right: its day's rules then.
    shop.confirm_clock(o)
    shop.topup(cashier, m, 50000)
    assert shop.balance(m)["bonus"] == 3000


def test_put_forward_a_sale_and_set_back_next_weeks_promotion_waits(
        shop: Ledger, clock: FakeClock, boot: BootClock) -> None:
    """Put forward a week, one sale (its id next week's), set back: the furthest day
    read was next week's, and the rules held to it (rules never go back) gave next
    week's promotion today, the clock moved no more."""
    _o, m, cashier, today = promotion_next_week(shop)
    put_forward(clock, boot, 7)
    shop.debit(cashier, m, amount=100)
    clock.advance_days(-7)
    assert shop.clock.moved_by_hand() == 0 and shop.today() == today
    shop.topup(cashier, m, 50000)
    assert shop.balance(m)["bonus"] == 0 and shop.rules_day() == today


def next_process(tmp_path: Path, clock: FakeClock, boot: BootClock) -> Ledger:
    """The command line's next process on the same store (one operation a process),
    on the same boot."""
    ledger = Ledger.open(tmp_path / "sh01", now_ms=clock)
    ledger.clock.since_boot_ms = boot
    return ledger


def test_next_weeks_promotion_waits_in_the_next_process_too(
        tmp_path: Path, clock: FakeClock, boot: BootClock) -> None:
    """Through the command line, one operation a process: put forward a week, one
    sale, and the next process, the clock still moved, gave next week's promotion
    (3,000 fen on a 500.00 top-up); the clock set back, the one after gave it again.
    The hold of the rules lived in the running process only (Rules._held_high)."""
    shop = new_ledger(tmp_path, "SH01", now_ms=clock)
    shop.clock.since_boot_ms = boot
    _o, m, cashier, today = promotion_next_week(shop)
    shop.close()
    put_forward(clock, boot, 7)
    shop = next_process(tmp_path, clock, boot)
    try:
        assert entry_day(shop, shop.debit(cashier, m, amount=100)) == day_after(today, 7)
    finally:
        shop.close()
    shop = next_process(tmp_path, clock, boot)
    try:  # still put forward
        shop.topup(cashier, m, 50000)
        assert shop.balance(m)["bonus"] == 0 and shop.rules_day() == today
    finally:
        shop.close()
    clock.advance_days(-7)
    shop = next_process(tmp_path, clock, boot)
    try:  # set back
        assert shop.today() == today
        shop.topup(cashier, m, 50000)
        assert shop.balance(m)["bonus"] == 0 and shop.rules_day() == today
    finally:
        shop.close()


def test_an_operator_confirms_a_clock_put_forward_in_the_next_process(
        tmp_path: Path, clock: FakeClock, boot: BootClock) -> None:
    """An honest owner set the clock right forward a week and sold: the next process
    reads the day it was at, as the running one does, until a manager confirms the
    clock; then that day's promotion."""
    shop = new_ledger(tmp_path, "SH01", now_ms=clock)
    shop.clock.since_boot_ms = boot
    o = shop.owner
    m = shop.add_member(o, name="张伟", phone="13800138000")
    today = shop.today()
    shop.set_rule(o, "promotions", PROMO, effective_from=day_after(today, 7))
    shop.topup(o, m, 10000)
    shop.close()
    put_forward(clock, boot, 7)
    for _ in range(2):
        shop = next_process(tmp_path, clock, boot)
        try:
            shop.topup(o, m, 50000)
            assert shop.balance(m)["bonus"] == 0 and shop.rules_day() == today
        finally:
            shop.close()
    shop = next_process(tmp_path, clock, boot)
    try:
        shop.confirm_clock(o)
    finally:
        shop.close()
    shop = next_process(tmp_path, clock, boot)
    try:
        shop.topup(o, m, 50000)
        assert shop.balance(m)["bonus"] == 3000 and shop.rules_day() == day_after(today, 7)
    finally:
        shop.close()


def test_a_clock_ahead_before_it_was_watched_still_holds_its_rules_when_set_back(
        shop: Ledger, clock: FakeClock, boot: BootClock) -> None:
    """Unchanged: a PC whose clock was two days ahead when the store first read it,
    then set back, reads the rules of the furthest day it read (as
    test_clock_moved_by_hand's clock set back, now with a boot clock)."""
    o = shop.owner
    m = shop.add_member(o, name="张伟", phone="13800138000")
    cashier = shop.add_operator(o, "alice", "secret1", roles=["cashier"])
    ahead = shop.today()
    shop.set_rule(o, "promotions", PROMO, effective_from="2000-01-01")
    shop.set_rule(o, "promotions", [], effective_from=ahead)
    shop.topup(cashier, m, 10000)
    clock.advance_days(-2)
    shop.topup(cashier, m, 50000)
    assert shop.balance(m)["bonus"] == 0 and shop.rules_day() == ahead


def test_a_sale_reads_every_rule_as_of_the_unmoved_day(
        shop: Ledger, clock: FakeClock, boot: BootClock) -> None:
    """Next week: FOOT60 cut to 64.00, every level at half price, ten points a yuan, the
    goods item at 10.00. Put forward to it, the sale, the goods sale, a package's list
    worth and the points earned are today's, and no sale mixes two days' rules."""
    o = shop.owner
    m = shop.add_member(o, name="张伟", phone="13800138000")
    cashier = shop.add_operator(o, "alice", "secret1", roles=["cashier"])
    shop.topup(o, m, 200000)
    shop.add_goods(o, "G01", "洗发水", 5000, cost=3000)
    shop.stock_in(o, "G01", 10)
    week = day_after(shop.today(), 7)
    services = dict(shop.rule("services"))
    services["FOOT60"] = dict(services["FOOT60"], price=6400)
    levels = [dict(lv, discount="0.5") for lv in shop.rule("levels")]
    goods = {"G01": dict(shop.rule("goods")["G01"], price=1000)}
    before = {"debit": shop.debit(cashier, m, service="FOOT60"),
              "sale": shop.sell_goods(cashier, "G01", member=m)}
    for kind, body in (("services", services), ("levels", levels), ("goods", goods),
                       ("earn", {"points_per_yuan": "10", "expire_days": 365})):
        shop.set_rule(o, kind, body, effective_from=week)
    put_forward(clock, boot, 7)
    debit = shop.debit(cashier, m, service="FOOT60")
    sale = shop.sell_goods(cashier, "G01", member=m)
    assert debit["amount"] == before["debit"]["amount"] == 12160  # silver, 0.95
    assert debit["points"] == before["debit"]["points"]
    assert sale["amount"] == before["sale"]["amount"] == 4750
    assert shop.catalogue()["G01"]["price"] == 5000
    assert shop.level(m)["discount"] == "0.95"
    # A package sold below its list worth is a given-away amount against today's list.
    assert shop.sell_package(cashier, m, "FOOT60", 10, 128000, pay="cash")["amount"] == 128000
    shop.confirm_clock(o)
    assert shop.debit(cashier, m, service="FOOT60")["amount"] == 3200


def test_next_weeks_activity_is_not_checked_in_at_on_a_clock_put_forward(
        shop: Ledger, clock: FakeClock, boot: BootClock) -> None:
    """An activity opening next week, its window judged by the minute the clock reads:
    put forward to it, ten members' check-ins took 100 points each."""
    o = shop.owner
    m = shop.add_member(o, name="张伟", phone="13800138000")
    cashier = shop.add_operator(o, "alice", "secret1", roles=["cashier"])
    shop.set_activity(o, "OPEN", {"name": "开业签到", "from": "2026-01-08T00:00",
                                  "to": "2026-02-01T00:00", "points": 100,
                                  "repeat": "once"})
    shop.topup(cashier, m, 10000)
    put_forward(clock, boot, 7)
    before = snapshot(shop, [m])
    with pytest.raises(NotCaughtUp, match="put forward by hand: activity OPEN opens at "
                                          "2026-01-08 00:00"):
        shop.checkin(cashier, "OPEN", m)
    assert snapshot(shop, [m]) == before
    shop.confirm_clock(o)
    shop.checkin(cashier, "OPEN", m)
    assert shop.balance(m)["points"] == 100


def test_an_honest_pc_set_right_forward_reads_its_days_rules_once_peers_vouch(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SH01's clock ran a week slow and the owner set it right: the cautious side, as
    for the limits, is that it reads the day it was at until the peers it meets say
    its clock is right; then that day's promotion."""
    right = FakeClock(1_767_225_600_000 + 5 * 3_600_000)  # 2026-01-01 13:00 Shanghai
    machine = FakeClock(right.ms - 7 * DAY_MS)
    monkeypatch.setattr(time, "time_ns", lambda: machine.ms * 1_000_000)
    nodes = ["SH01", "SH02", "SH03"]
    ledgers = [new_ledger(tmp_path, n, now_ms=machine if n == "SH01" else right)
               for n in nodes]
    try:
        sh01 = ledgers[0]
        boot = BootClock()
        sh01.clock.since_boot_ms = boot
        o = sh01.owner
        m = sh01.add_member(o, name="张伟", phone="13800138000")
        sh01.set_rule(o, "branches", {n: n for n in nodes}, effective_from="2000-01-01")
        sh01.set_rule(o, "promotions", PROMO, effective_from="2026-01-01")
        sh01.topup(o, m, 10000)  # the till at work before the clock is set right
        put_forward(machine, boot, 7)
        assert machine.ms == right.ms + 60_000
        sh01.topup(o, m, 50000)
        assert sh01.balance(m) == {"cash": 60000, "bonus": 0, "points": 0,
                                   "packages": {}}  # not vouched for yet
        for other in ledgers[1:]:
            sync(sh01, other)
        core = NodeCore(sh01)
        core.start(0.0)
        for link, other in enumerate(ledgers[1:], 1):
            met(core, other, link, now=1.0)
        assert sh01.clock_vouched
        sh01.topup(o, m, 50000)
        assert sh01.balance(m)["bonus"] == 3000
    finally:
        for ledger in ledgers:
            ledger.close()


def test_through_the_api_next_weeks_promotion_waits(tmp_path: Path) -> None:
    clock = FakeClock(time.time_ns() // 1_000_000)
    boot = BootClock()

    async def main() -> None:
        ledger = with_operators(new_ledger(tmp_path, "SH01", now_ms=clock))
        ledger.clock.since_boot_ms = boot
        try:
            ledger.set_rule(ledger.owner, "promotions", PROMO,
                            effective_from=day_after(ledger.today(), 7))
            async with serving(Standalone(ledger)) as api:
                await go(ledger, api)
        finally:
            ledger.close()

    async def go(ledger: Ledger, api: Api) -> None:
        amy = await api.login("amy", AMY_PW)
        status, body = await api.call("POST", "/members", {"name": "王芳",
                                                           "phone": "13812345678"}, token=amy)
        assert status == 201, body
        mid = body["member_id"]
        status, body = await api.call("POST", "/topup", {"member": mid, "yuan": "100.00"},
                                      token=amy)
        assert status == 200, body
        put_forward(clock, boot, 7)
        status, body = await api.call("POST", "/topup", {"member": mid, "yuan": "500.00"},
                                      token=amy)
        assert status == 200, body
        assert ledger.balance(mid) == {"cash": 60000, "bonus": 0, "points": 0,
                                       "packages": {}}

    asyncio.run(main())
