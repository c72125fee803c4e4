"""The counter's bookings page (预约), driven as a cashier would, against a real node.

NiceGUI's simulated `user` (tests/app_fixtures.py): the page books a slot for a member
by phone, shows it confirmed, refuses the same slot again with a sentence, shows a
request another branch made (marked pending, then decided by this branch's node),
cancels, and refuses a cashier nothing it may do; in zh-CN and English.
"""

from __future__ import annotations

import asyncio
from datetime import date, timedelta
from pathlib import Path

import pytest
from app_fixtures import CASHIER, OWNER, CounterApp
from helpers import sync
from nicegui import ui

from crdtledger import bookings
from crdtledger.ledger import Ledger
from peer.chain import enrol

pytestmark = pytest.mark.asyncio


def tomorrow(ledger: Ledger) -> str:
    return (date.fromisoformat(ledger.today()) + timedelta(days=1)).isoformat()


def seed(app: CounterApp) -> str:
    ledger, op = app.ledger, app.node_owner
    bookings.add_technician(ledger, op, "T01", "小李", ["FOOT60", "BODY90"], "10:00-22:00")
    return ledger.add_member(op, name="王芳", phone="13812345678")


async def open_day(app: CounterApp, day: str) -> None:
    await app.user.open("/bookings")
    await app.user.should_see("为会员预约")
    picker = app.user.find(marker="booking-day").elements.pop()
    assert isinstance(picker, ui.input)
    picker.set_value(day)  # a date picker: set, not typed


async def book_at_two(app: CounterApp) -> None:
    """Book the seeded member at 14:00 on the day open."""
    app.user.find(marker="booking-member").type("13812345678")
    first = app.user.find(marker="booking-time").elements.pop()
    assert isinstance(first, ui.select)
    first.set_value("14:00")
    app.user.find(marker="booking-add").click()
    await app.user.should_see("预约成功", retries=50)


async def test_a_cashier_books_sees_it_confirmed_and_cancels(counter_app: CounterApp) -> None:
    app = counter_app
    member = seed(app)
    day = tomorrow(app.ledger)
    await app.login(*CASHIER)
    await open_day(app, day)
    await app.user.should_see("当天没有预约")
    await book_at_two(app)
    [made] = bookings.list_bookings(app.ledger, member=member)
    assert (made["status"], made["at"], made["service"]) == ("confirmed", f"{day}T14:00",
                                                             "FOOT60")
    await app.user.should_see(marker=f"booking-{made['booking']}")
    await app.user.should_see("已确认")
    await app.user.should_see("王芳 138****5678")
    # 14:00 is no longer offered; booking it anyway (a stale page) is refused.
    time_select = app.user.find(marker="booking-time").elements.pop()
    assert isinstance(time_select, ui.select)
    assert "14:00" not in time_select.options and "15:00" in time_select.options
    time_select.set_options([*time_select.options, "14:30"], value="14:30")
    app.user.find(marker="booking-add").click()
    await app.user.should_see("14:00-15:00", retries=50)
    assert len(bookings.list_bookings(app.ledger, member=member)) == 1
    # Cancel it: the page shows it cancelled, and the slot is offered again.
    app.user.find(marker=f"cancel-{made['booking']}").click()
    await app.user.should_see("预约已取消", retries=50)
    assert bookings.show(app.ledger, made["booking"])["status"] == "cancelled"
    await app.user.should_see("已取消")


async def test_a_request_from_another_branch_is_marked_then_decided(
        counter_app: CounterApp, tmp_path: Path) -> None:
    """SH02 asks for this branch's technician: this branch's node, its clock confirmed,
    confirms it on its own when it arrives, and the page lists it as made at SH02."""
    app = counter_app
    member = seed(app)
    day = tomorrow(app.ledger)
    Ledger.create(tmp_path / "sh02", "SH02", "test")
    enrol(tmp_path / "chain", tmp_path / "sh02", "SH02")  # make_store's chain
    sh02 = Ledger.open(tmp_path / "sh02")
    try:
        sync(app.ledger, sh02)
        asked = bookings.book(sh02, sh02.owner, member, "T01@SH01", "BODY90", f"{day}T16:00")
        assert asked["status"] == "pending"
        await app.login(*OWNER)
        await open_day(app, day)
        # No peer connected (the stores sync by hand here): the node decides requests
        # once its clock is confirmed (core.NodeCore._decide_bookings), as a manager
        # does today.
        app.ledger.confirm_clock(app.ledger.owner)
        sync(sh02, app.ledger)  # it arrives: the node decides at its next turn
        for _ in range(100):
            if bookings.show(app.ledger, asked["booking"])["status"] == "confirmed":
                break
            await asyncio.sleep(0.05)
        assert bookings.show(app.ledger, asked["booking"])["status"] == "confirmed"
        await app.user.should_see(marker=f"booking-{asked['booking']}", retries=50)
        await app.user.should_see("徐家汇店约的")
        sync(app.ledger, sh02)
        assert bookings.show(sh02, asked["booking"])["status"] == "confirmed"
    finally:
        sh02.close()


async def test_the_page_in_english(counter_app: CounterApp) -> None:
    app = counter_app
    seed(app)
    await app.login(*OWNER)
    await app.user.open("/bookings")
    app.user.find(marker="lang").click()
    await app.user.should_see("Book for a member", retries=50)
    await app.user.should_see("This branch's technicians")


async def test_the_second_click_of_a_double_click_books_once(counter_app: CounterApp) -> None:
    """The Book button is drawn again in place after a booking: a double click's second
    click booked the member again at the day's first free time. The form is cleared by
    its write."""
    app = counter_app
    member = seed(app)
    day = tomorrow(app.ledger)
    await app.login(*CASHIER)
    await open_day(app, day)
    await book_at_two(app)
    app.user.find(marker="booking-add").click()
    await asyncio.sleep(0.5)
    assert [b["at"][-5:] for b in bookings.list_bookings(app.ledger, member=member)] == [
        "14:00"]


@pytest.mark.parametrize("sent", ["2026-02-30", "abc", "0001-01-01", "x" * 3000])
async def test_a_day_made_up_in_the_browser_is_refused_in_chinese_and_short(
        counter_app: CounterApp, sent: str) -> None:
    """The date picker sends a whole date or nothing; a crafted socket event set the day
    to these, and the page showed the library's English after "输入有误：", the text
    sent quoted whole (a label of 3,047 characters)."""
    app = counter_app
    seed(app)
    await app.login(*CASHIER)
    await app.user.open("/bookings")
    await app.user.should_see("为会员预约")
    picker = app.user.find(marker="booking-day").elements.pop()
    assert isinstance(picker, ui.input)
    picker.value = sent  # as a socket event sets it, past the picker
    await app.user.should_see("日期不对")
    said = [m for m in app.user.notify.messages if "日期不对" in m]
    assert said and all(len(m) < 60 for m in said), said  # a few characters quoted
    assert "x" * 11 not in "".join(said)
    await app.user.should_not_see("输入有误")
    texts = [str(getattr(e, "text", "")) for e in app.user.find(ui.label).elements]
    assert max(map(len, texts)) < 200 and "x" * 11 not in "".join(texts)
    # The page still works: a real day is read.
    picker.set_value(tomorrow(app.ledger))
    await app.user.should_see("当天没有预约")
