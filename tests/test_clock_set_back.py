"""What a PC's clock alone must not decide (crdtledger.commit.LedgerBase.check_clock_for,
crdtledger.core.NodeCore._decide_bookings).

A clock set back starts a new era (crdtledger.hlc) and `today` goes back with it: a
lone PC set back two days took an expired coupon, expired points, a refund past its
period and a once-a-day check-in every day again. Those wait while the clock reads
earlier than it did and nobody vouches for it (a peer, or a manager's clock.confirm);
sales, top-ups and new members go on. And a technician's branch whose clock runs
ahead, cut off or one of a lone pair, refused requests for tomorrow for good and
marked a booking still to come as a no-show: both wait until the clock is confirmed.

Real SQLite stores (helpers.new_ledger) on fake clocks; the node core driven by hand
as tests/test_books.py does; sessions as the node runs them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import FakeClock, new_ledger, sync

from crdtledger import bookings, views
from crdtledger.core import Decided, NodeCore
from crdtledger.errors import CardInactive, InsufficientFunds, NotCaughtUp
from crdtledger.ledger import Ledger
from crdtledger.sync import SyncSession

DAY_MS = 86_400_000


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()  # 2026-01-01 08:00 in Shanghai


@pytest.fixture
def shop(tmp_path: Path, clock: FakeClock) -> Iterator[Ledger]:
    ledger = new_ledger(tmp_path, "SH01", now_ms=clock)
    yield ledger
    ledger.close()


def member(ledger: Ledger) -> str:
    return ledger.add_member(ledger.owner, name="张伟", phone="13800138000")


def written(ledger: Ledger) -> int:
    return int(ledger.storage.conn.execute("SELECT COUNT(*) FROM entries").fetchone()[0])


def refused_for_the_clock(ledger: Ledger, act: Callable[[], Any]) -> str:
    """`act` is refused for the clock set back, writing nothing; the sentence."""
    before = written(ledger)
    with pytest.raises(NotCaughtUp) as got:
        act()
    assert written(ledger) == before
    said = str(got.value)
    assert "this PC's clock reads" in said and "earlier than it did" in said
    assert "another branch" in said and "crdtledger clock confirm" in said
    return said


# --- a lone PC set back: what was refused a moment before stays refused ---------------


def test_an_expired_coupon_is_not_taken_on_a_clock_set_back(shop: Ledger,
                                                            clock: FakeClock) -> None:
    m = member(shop)
    shop.topup(shop.owner, m, 10000)
    cp = shop.issue_coupon(shop.owner, m, off=500, valid_to="2026-01-02")
    clock.advance_days(3)  # 4 January
    shop.topup(shop.owner, m, 100)  # an id minted on the 4th
    clock.advance_days(-2)  # set back: reads 2 January, the coupon's last day
    assert shop.today() == "2026-01-02"
    said = refused_for_the_clock(
        shop, lambda: shop.redeem_coupon(shop.owner, cp["coupon"], spend=2000))
    assert "2 d 0 h" in said and "2026-01-04 08:00" in said
    refused_for_the_clock(shop, lambda: shop.debit(shop.owner, m, amount=2000,
                                                   coupon=cp["coupon"]))
    # A plain sale, a top-up and a new member go on.
    shop.debit(shop.owner, m, amount=1000)
    shop.topup(shop.owner, m, 1000)
    shop.add_member(shop.owner, name="李娜", phone="13800138001")
    # A coupon whose last day had not passed by the clock's furthest reading either
    # is judged alike both ways: taken.
    later = shop.issue_coupon(shop.owner, m, off=300, valid_to="2026-01-10")
    assert shop.redeem_coupon(shop.owner, later["coupon"], spend=2000)["off"] == 300
    assert shop.coupon_view(cp["coupon"])["status"] != "redeemed"


def test_a_refund_past_its_period_waits_on_a_clock_set_back(shop: Ledger,
                                                            clock: FakeClock) -> None:
    shop.set_rule(shop.owner, "refunds", {"days": 1}, effective_from="2025-01-01")
    m = member(shop)
    shop.topup(shop.owner, m, 100000)
    sale = shop.debit(shop.owner, m, amount=10000)
    clock.advance_days(3)
    assert shop.refund_closed(sale["id"])  # past the period on the 4th
    shop.topup(shop.owner, m, 100)
    clock.advance_days(-2)
    cash = shop.balance(m)["cash"]
    refused_for_the_clock(shop, lambda: shop.refund(shop.owner, sale["id"]))
    assert shop.balance(m)["cash"] == cash


def test_expired_points_are_not_spent_on_a_clock_set_back(shop: Ledger,
                                                          clock: FakeClock) -> None:
    shop.set_rule(shop.owner, "earn", {"points_per_yuan": "1", "expire_days": 1},
                  effective_from="2025-01-01")
    m = member(shop)
    shop.topup(shop.owner, m, 100000)
    shop.debit(shop.owner, m, amount=10000)  # 100 points, valid to 2 January
    clock.advance_days(3)
    with pytest.raises(InsufficientFunds):  # expired on the 4th
        shop.redeem_points(shop.owner, m, 50, gift="杯子")
    shop.topup(shop.owner, m, 100)
    clock.advance_days(-2)
    before = views.points(shop, m)
    refused_for_the_clock(shop, lambda: shop.redeem_points(shop.owner, m, 50, gift="杯子"))
    refused_for_the_clock(shop, lambda: shop.convert_points(shop.owner, m, 50))
    assert views.points(shop, m) == before  # nothing spent, nothing written off


def test_a_once_a_day_check_in_is_taken_once_however_the_clock_is_set_back(
        shop: Ledger, clock: FakeClock) -> None:
    shop.set_activity(shop.owner, "GYM", {
        "name": "晨练打卡", "from": "2025-12-31T09:00", "to": "2026-01-10T21:00",
        "points": 10, "repeat": "daily", "per_day": 1})
    m = member(shop)
    clock.advance_days(4)
    clock.ms += 2 * 3_600_000  # 5 January 10:00
    shop.checkin(shop.owner, "GYM", m)
    for _ in range(3):  # set back a day at a time, the same morning
        clock.advance_days(-1)
        refused_for_the_clock(shop, lambda: shop.checkin(shop.owner, "GYM", m))
    shop.reconcile_checkins()
    assert shop.balance(m)["points"] == 10


def test_an_expired_card_is_not_taken_on_a_clock_set_back(shop: Ledger,
                                                          clock: FakeClock) -> None:
    m = member(shop)
    shop.issue_card(shop.owner, m, "C001", expiry="2026-01-02")
    shop.topup(shop.owner, m, 10000)
    clock.advance_days(3)
    with pytest.raises(CardInactive):
        shop.use_card("C001")
    shop.topup(shop.owner, m, 100)
    clock.advance_days(-2)
    refused_for_the_clock(shop, lambda: shop.debit(shop.owner, card="C001", amount=1000))
    shop.debit(shop.owner, m, amount=1000)  # by the member, the sale goes on


# --- vouched for: by a manager today, or by the peers -----------------------------------


def ran_ahead_and_set_right(shop: Ledger, clock: FakeClock) -> tuple[str, str, str]:
    """The PC ran 2 days ahead for a while (an id minted then) and was set right: a
    coupon whose last day is today, points valid today, a sale refundable today. (member,
    coupon, sale)"""
    shop.set_rule(shop.owner, "earn", {"points_per_yuan": "1", "expire_days": 1},
                  effective_from="2025-01-01")
    shop.set_rule(shop.owner, "refunds", {"days": 1}, effective_from="2025-01-01")
    m = member(shop)
    shop.topup(shop.owner, m, 100000)
    sale = shop.debit(shop.owner, m, amount=10000)
    cp = shop.issue_coupon(shop.owner, m, off=500, valid_to="2026-01-01")
    clock.advance_days(2)
    shop.topup(shop.owner, m, 100)  # minted on a day to come
    clock.advance_days(-2)  # set right: 1 January again
    return m, cp["coupon"], sale["id"]


def go_through(shop: Ledger, m: str, coupon: str, sale: str) -> None:
    assert shop.redeem_coupon(shop.owner, coupon, spend=2000)["off"] == 500
    shop.redeem_points(shop.owner, m, 50, gift="杯子")
    shop.refund(shop.owner, sale, 1000)
    assert views.points(shop, m)["total"] < 100


def test_a_manager_confirming_the_clock_lets_them_go_on_today(shop: Ledger,
                                                              clock: FakeClock) -> None:
    m, coupon, sale = ran_ahead_and_set_right(shop, clock)
    refused_for_the_clock(shop, lambda: shop.redeem_coupon(shop.owner, coupon, spend=2000))
    refused_for_the_clock(shop, lambda: shop.redeem_points(shop.owner, m, 50, gift="杯子"))
    refused_for_the_clock(shop, lambda: shop.refund(shop.owner, sale, 1000))
    shop.confirm_clock(shop.owner)
    go_through(shop, m, coupon, sale)


def met(core: NodeCore, peer: Ledger, *, now: float) -> None:
    """`core`'s store meets `peer` on link 1 (dialled by the smaller id), a few rounds
    of real sync sessions, so the peer's clock is heard."""
    mine_id = core.ledger.node
    core.link_opened(1, peer.node, dialer=min(mine_id, peer.node), now=now)
    theirs = SyncSession(peer, expect_node=mine_id)
    theirs.start()
    mine = core.session(peer.node)
    assert mine is not None
    for _ in range(3):
        core.receive(1, theirs.data_to_send(), now)
        for frame in mine.data_to_send():
            theirs.receive(frame)


def test_a_peer_vouching_for_the_clock_lets_them_go_on(tmp_path: Path,
                                                       clock: FakeClock) -> None:
    shop = new_ledger(tmp_path, "SH01", now_ms=clock)
    other = new_ledger(tmp_path, "SH02", now_ms=clock)  # the same, right, time
    try:
        m, coupon, sale = ran_ahead_and_set_right(shop, clock)
        core = NodeCore(shop)
        core.start(0.0)
        refused_for_the_clock(shop, lambda: shop.redeem_coupon(shop.owner, coupon,
                                                               spend=2000))
        met(core, other, now=1.0)
        assert core.clock_status()["confirmed"] and shop.clock_vouched
        go_through(shop, m, coupon, sale)
        core.link_closed(1, 2.0)  # cut off again: nobody vouches any more
        assert not shop.clock_vouched
    finally:
        shop.close()
        other.close()


# --- bookings at a technician's branch whose clock runs ahead ---------------------------


def test_a_technicians_branch_ahead_and_unconfirmed_decides_no_request_nor_no_show(
        tmp_path: Path) -> None:
    c1, c2 = FakeClock(), FakeClock()
    sh01 = new_ledger(tmp_path, "SH01", now_ms=c1)
    sh02 = new_ledger(tmp_path, "SH02", now_ms=c2)
    try:
        bookings.add_technician(sh02, sh02.owner, "T01", "小李", ["FOOT60"], "10:00-22:00")
        m = sh01.add_member(sh01.owner, name="张伟", phone="13800138000")
        for _ in range(2):
            sync(sh01, sh02)
        core = NodeCore(sh02)  # cut off: it knows SH01, nobody connected
        core.start(0.0)
        c2.advance_days(3)  # SH02's PC runs 3 days ahead
        assert core.clock_status()["confirmed"] is False
        asked = [bookings.book(sh01, sh01.owner, m, "T01", "FOOT60", f"2026-01-0{d}T14:00")
                 for d in (2, 3)]
        sync(sh01, sh02)

        def decide(now: float) -> list[Any]:
            return core.fire(("bookings",), core._timers[("bookings",)], now)

        said = [e.what for e in decide(1.0) if isinstance(e, Decided)]
        assert [s for s in said if "wait until another branch confirms" in s]
        assert [bookings.show(sh02, r["booking"])["status"] for r in asked] == [
            "pending", "pending"]
        # Said once while it waits.
        bookings.book(sh01, sh01.owner, m, "T01", "FOOT60", "2026-01-03T16:00")
        sync(sh01, sh02)
        assert not [e for e in decide(2.0)
                    if isinstance(e, Decided) and "wait" in e.what]
        # A booking made there 4 days on is no no-show by a clock 5 days ahead.
        mine = bookings.book(sh02, sh02.owner, m, "T01", "FOOT60", "2026-01-05T15:00")
        c2.advance_days(2)
        with pytest.raises(bookings.BookingRefused, match="no other branch has confirmed"):
            bookings.noshow(sh02, sh02.owner, mine["booking"])
        assert bookings.show(sh02, mine["booking"])["status"] != "no_show"
        # Set right and confirmed by a manager: the next look decides as before.
        c2.advance_days(-5)
        sh02.confirm_clock(sh02.owner)
        core.fire(("housekeeping",), core._timers[("housekeeping",)], 60.0)
        decide(60.0)
        sync(sh01, sh02)
        assert [bookings.show(sh01, r["booking"])["status"] for r in asked] == [
            "confirmed", "confirmed"]
        with pytest.raises(bookings.BookingRefused, match="has not started yet"):
            bookings.noshow(sh02, sh02.owner, mine["booking"])
    finally:
        sh01.close()
        sh02.close()


def test_a_technicians_branch_decides_once_a_peer_confirms_its_clock(tmp_path: Path) -> None:
    c1 = FakeClock()
    sh01 = new_ledger(tmp_path, "SH01", now_ms=c1)
    sh02 = new_ledger(tmp_path, "SH02", now_ms=c1)
    try:
        bookings.add_technician(sh02, sh02.owner, "T01", "小李", ["FOOT60"], "10:00-22:00")
        m = sh01.add_member(sh01.owner, name="张伟", phone="13800138000")
        for _ in range(2):
            sync(sh01, sh02)
        core = NodeCore(sh02)
        core.start(0.0)
        asked = bookings.book(sh01, sh01.owner, m, "T01", "FOOT60", "2026-01-02T14:00")
        sync(sh01, sh02)
        core.fire(("bookings",), core._timers[("bookings",)], 1.0)
        assert bookings.show(sh02, asked["booking"])["status"] == "pending"
        met(core, sh01, now=2.0)
        assert core.clock_status()["confirmed"]
        core.fire(("bookings",), core._timers[("bookings",)], 2.0)
        assert bookings.show(sh02, asked["booking"])["status"] == "confirmed"
    finally:
        sh01.close()
        sh02.close()


def test_the_counter_says_why_in_chinese(shop: Ledger, clock: FakeClock,
                                         tmp_path: Path) -> None:
    """The counter turns both refusals into sentences (reference_app.shop's refusals),
    not "操作被拒绝：" and the library's English."""
    from reference_app import shop as counter

    m = member(shop)
    cp = shop.issue_coupon(shop.owner, m, off=500, valid_to="2026-01-02")
    clock.advance_days(3)
    shop.topup(shop.owner, m, 100)
    clock.advance_days(-2)
    with pytest.raises(NotCaughtUp) as back:
        shop.redeem_coupon(shop.owner, cp["coupon"], spend=2000)
    said = counter._clock_refused(back.value)
    assert said is not None and "本机时钟比之前慢了 2天0小时" in said
    assert "2026-01-04 08:00" in said and "本机时钟已核对" in said
    noshow = bookings.BookingRefused(
        "booking 036W69PY00000.SH02 has started by this PC's clock, which no other branch "
        "has confirmed yet: a no-show waits until one connected has, or until a manager "
        "confirms the clock (crdtledger clock confirm, 本机时钟已核对)")
    assert "才能记爽约" in str(counter._clock_refused(noshow))
