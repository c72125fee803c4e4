"""The counter's dialogs left open while another till or the back office changes what
they were opened on: the card swiped returned or replaced and its number issued to
someone else, or reported lost; a card issued to a member the card dialog showed with
none; the member's preferences edited, or the member merged; a booking cancelled or
its slot taken. NiceGUI's simulated user against a real node and store; each refused
with a Chinese sentence and nothing changed, or (the preferences) nothing another till
wrote undone.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from app_fixtures import CASHIER, OWNER, CounterApp
from helpers import snapshot
from test_app_bookings import book_at_two, open_day, seed, tomorrow
from test_app_counter import CARD, member_with_a_gift, member_with_card, swipe

from crdtledger import bookings

pytestmark = pytest.mark.asyncio


async def open_dialog(app: CounterApp, what: str) -> str:
    """Open `what`'s dialog on the member on screen, filled in; its confirm's marker."""
    if what == "consume":
        app.user.find(marker="consume").click()
        marker = "consume-ok"
    elif what == "topup":
        app.user.find(marker="topup").click()
        app.user.find(marker="amount").type("100")
        marker = "topup-ok"
    elif what == "package":
        app.user.find(marker="sell-package").click()
        app.user.find(marker="package-price").type("300.00")
        app.user.find(marker="package-pay").elements.pop().set_value("stored")
        marker = "package-ok"
    else:
        app.user.find(marker="redeem").click()
        app.user.find(marker="points").type("100")
        marker = "redeem-ok"
    await app.user.should_see(marker=marker)
    return marker


async def refused(app: CounterApp, marker: str, members: list[str], said: str) -> None:
    before = snapshot(app.ledger, members)
    app.user.find(marker=marker).click()
    await app.user.should_see(said)
    await app.user.should_not_see("操作被拒绝")  # the counter's own words, said as they are
    await asyncio.sleep(0.1)
    assert snapshot(app.ledger, members) == before


@pytest.mark.parametrize("how", ["returned", "replaced"])
@pytest.mark.parametrize("what", ["consume", "topup", "package", "redeem"])
async def test_a_card_number_issued_to_another_member_meanwhile_pays_for_nobody(
        counter_app: CounterApp, how: str, what: str) -> None:
    """张伟's card swiped, the dialog open; another till took the card back (退卡) or
    replaced it (补卡) and issued the number to 李娜. The library pays by whoever holds
    the number: ¥128.00 came out of 李娜's stored value, in a dialog headed 张伟."""
    app = counter_app
    mid = member_with_card(app, cash=50000)
    other = app.ledger.add_member(app.node_owner, name="李娜", phone="13900000000")
    app.ledger.topup(app.node_owner, other, 30000)
    app.ledger.correct(app.node_owner, other, "points", 500, "opening points")
    await app.login(*OWNER)
    await swipe(app)
    marker = await open_dialog(app, what)
    if how == "returned":
        app.ledger.return_card(app.node_owner, CARD)
    else:
        app.ledger.replace_card(app.node_owner, CARD, "C20002")
    app.ledger.issue_card(app.node_owner, other, CARD)
    await refused(app, marker, [mid, other], "这个卡号现在是另一位会员的")


async def test_a_card_of_a_member_merged_meanwhile_still_pays_for_her(
        counter_app: CounterApp) -> None:
    """Her card is the survivor's after a merge (decided, "Member merge"): the check
    of who holds the number refuses nothing the merge made."""
    app = counter_app
    mid = member_with_card(app, cash=50000)
    other = app.ledger.add_member(app.node_owner, name="张伟", phone="13900000000")
    await app.login(*OWNER)
    await swipe(app)
    marker = await open_dialog(app, "consume")
    app.ledger.merge_member(app.owner_id, mid, other)
    app.user.find(marker=marker).click()
    await app.user.should_see("已消费")
    assert app.ledger.history(other)[0]["kind"] == "debit"


@pytest.mark.parametrize("what", ["consume", "topup", "package", "redeem"])
async def test_a_card_reported_lost_meanwhile_pays_for_nothing(
        counter_app: CounterApp, what: str) -> None:
    """The dialog was opened by the card (its PIN given); another till reported it lost:
    confirming is refused. (A member found by phone is still served: 挂失 stops the
    card, not the account, as decided.)"""
    app = counter_app
    mid = member_with_card(app, cash=50000, pin="4321")
    app.ledger.correct(app.node_owner, mid, "points", 500, "opening points")
    await app.login(*CASHIER)
    app.reader.insert(CARD)
    await app.user.should_see(marker="pin")
    app.user.find(marker="pin").type("4321")
    app.user.find(marker="pin-ok").click()
    await app.user.should_see(marker="member-name")
    marker = await open_dialog(app, what)
    app.ledger.report_lost(app.node_owner, CARD)
    await refused(app, marker, [mid], "此卡已挂失，不能使用")


async def test_an_edit_writes_back_no_preference_it_did_not_change(
        counter_app: CounterApp) -> None:
    """The edit dialog open (a note typed), another till set the member's preferred
    strength and technician: saving wrote every preference box back as the dialog had
    read them, undoing the other till's acknowledged edit. Only what was changed here
    is written; a save of nothing changed writes nothing."""
    app = counter_app
    mid = member_with_card(app)
    await app.login(*CASHIER)
    await swipe(app)
    app.user.find(marker="edit").click()
    await app.user.should_see(marker="edit-ok")
    app.user.find(marker="edit-notes").type("喜欢安静")
    app.user.find(marker="pref-service").type("足疗")
    app.ledger.edit_member(app.node_owner, mid, prefs={"strength": "轻", "technician": "3号"},
                           fields={"phone": "13911112222"})
    app.user.find(marker="edit-ok").click()
    await app.user.should_see("资料已保存")
    m = app.ledger.member(mid)
    assert (m["notes"], m["phone"]) == ("喜欢安静", "13911112222")
    assert m["prefs"] == {"strength": "轻", "technician": "3号", "service": "足疗"}
    await app.user.should_see(marker="member-name")
    before = snapshot(app.ledger, [mid])
    app.user.find(marker="edit").click()
    await app.user.should_see(marker="edit-ok")
    app.user.find(marker="edit-ok").click()
    await app.user.should_see("资料没有改动")
    assert snapshot(app.ledger, [mid]) == before


async def test_a_booking_cancelled_elsewhere_meanwhile_is_said_in_chinese(
        counter_app: CounterApp) -> None:
    """The bookings page listed a booking with its Cancel button; another till cancelled
    it before this one's click landed: "操作被拒绝：booking 038J…SH01 is cancelled:
    nothing to cancel"."""
    app = counter_app
    member = seed(app)
    await app.login(*CASHIER)
    await open_day(app, tomorrow(app.ledger))
    await book_at_two(app)
    [made] = bookings.list_bookings(app.ledger, member=member)
    cancel = app.user.find(marker=f"cancel-{made['booking']}")  # as the page shows it
    bookings.cancel(app.ledger, app.node_owner, made["booking"])
    before = snapshot(app.ledger, [member])
    cancel.click()
    await app.user.should_see("这个预约已取消，不用再取消。")
    await app.user.should_not_see("nothing to cancel")
    assert snapshot(app.ledger, [member]) == before



async def pick_two_oclock(app: CounterApp) -> tuple[str, str, str]:
    """The bookings page with 王芳's phone typed and 14:00 picked; 李娜, who another till
    books; the day."""
    member = seed(app)
    other = app.ledger.add_member(app.node_owner, name="李娜", phone="13900000000")
    day = tomorrow(app.ledger)
    await app.login(*CASHIER)
    await open_day(app, day)
    app.user.find(marker="booking-member").type("13812345678")
    app.user.find(marker="booking-time").elements.pop().set_value("14:00")
    return member, other, day


async def test_a_slot_taken_at_another_till_is_not_swapped_for_another_time(
        counter_app: CounterApp) -> None:
    """14:00 picked; another till booked the technician at 14:00, and the page redrew
    itself with the day's first free time in the box: the click booked 王芳 at 10:00,
    which nobody chose. The box is emptied with a sentence, and nothing is booked."""
    app = counter_app
    member, other, day = await pick_two_oclock(app)
    bookings.book(app.ledger, app.node_owner, other, "T01", "FOOT60", f"{day}T14:00")
    await app.user.should_see(marker="booking-time-gone")
    await app.user.should_see("刚选的时间已被约走，请另选时间。")
    before = snapshot(app.ledger, [member])
    app.user.find(marker="booking-add").click()
    await app.user.should_see("请选择技师、服务和时间")
    assert snapshot(app.ledger, [member]) == before
    assert bookings.list_bookings(app.ledger, member=member) == []


async def test_a_slot_taken_as_the_click_lands_is_said_in_chinese(
        counter_app: CounterApp, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another till's booking of 14:00 committed just before this one's ran (before the
    page could redraw): "操作被拒绝：technician T01 (小李) is booked 14:00-15:00 that
    day: ..."."""
    app = counter_app
    member, other, day = await pick_two_oclock(app)
    perform = app.shop.node.perform

    async def booked_meanwhile(op: Any, name: str | None = None) -> Any:
        bookings.book(app.ledger, app.node_owner, other, "T01", "FOOT60", f"{day}T14:00")
        return await perform(op, name)

    monkeypatch.setattr(app.shop.node, "perform", booked_meanwhile)
    app.user.find(marker="booking-add").click()
    await app.user.should_see("技师 T01 小李 当天 14:00-15:00 已有预约：请选别的时间或技师。")
    await app.user.should_not_see("is booked")
    assert bookings.list_bookings(app.ledger, member=member) == []


async def test_an_exit_decided_in_another_tab_meanwhile_is_said_in_chinese(
        counter_app: CounterApp) -> None:
    """The exits page offered 批准 on an application another manager approved meanwhile:
    "输入有误：application 038J…SH01 was approved already, by 038J…SH01"."""
    app = counter_app
    mid = member_with_card(app, cash=50000)
    aid = app.ledger.apply_exit(app.node_owner, mid, "搬家")["application"]
    await app.login(*OWNER)
    await app.user.open("/office/exits")
    approve = app.user.find(marker=f"exit-approve-{aid}")  # as the page shows it
    other = app.ledger.add_operator(app.node_owner, "mgr2", "mgr2-secret-x", roles=["owner"])
    app.ledger.decide_exit(other, aid, pay="cash")
    before = snapshot(app.ledger, [mid])
    approve.click()
    await app.user.should_see("这份申请刚刚已经批准了（可能在别的电脑上），不用再处理。")
    await app.user.should_not_see("approved already")
    assert snapshot(app.ledger, [mid]) == before


async def test_a_referral_rejected_in_another_tab_meanwhile_is_said_in_chinese(
        counter_app: CounterApp) -> None:
    """The referrals page offered the first approval of a referral another manager
    rejected meanwhile: "输入有误：referral 038J…SH01 is rejected already"."""
    app = counter_app
    ledger, op = app.ledger, app.node_owner
    ledger.set_rule(op, "referral", {"reward": "points", "points": 300})
    old = ledger.add_member(op, name="老会员", phone="13800000001")
    new = ledger.add_member(op, name="新会员", phone="13800000002")
    rid = str(ledger.refer(op, new, old)["id"])
    await app.login(*OWNER)
    await app.user.open("/office/referrals")
    approve = app.user.find(marker=f"approve1-{rid}")  # as the page shows it
    other = ledger.add_operator(op, "mgr2", "mgr2-secret-x", roles=["owner"])
    ledger.approve_referral(other, rid, 1, reject=True, reason="不认识")
    before = snapshot(ledger, [old, new])
    approve.click()
    await app.user.should_see("这条推荐刚刚已经驳回了（可能在别的电脑上），不用再处理。")
    assert snapshot(ledger, [old, new]) == before


@pytest.mark.parametrize("how", ["returned", "replaced"])
@pytest.mark.parametrize("what", ["goods", "gift"])
async def test_goods_and_gifts_are_not_paid_by_a_card_number_issued_to_another(
        counter_app: CounterApp, how: str, what: str) -> None:
    """`Counter.held_by` in the goods and gift dialogs, as in the others: 张伟's card
    swiped and the dialog open, another till took the card back (退卡) or replaced it
    (补卡) and issued the number to 李娜. Refused; nothing moved, from either of them,
    nor off the shelf."""
    app = counter_app
    ledger = app.ledger
    mid = member_with_a_gift(app)  # 128 points, a towel of 100 points on the shelf
    ledger.add_goods(app.node_owner, "G01", "精油", 5000, 2000, unit="瓶")
    ledger.stock_in(app.node_owner, "G01", 5)
    other = ledger.add_member(app.node_owner, name="李娜", phone="13900000000")
    ledger.topup(app.node_owner, other, 30000)
    ledger.correct(app.node_owner, other, "points", 500, "opening points")
    await app.login(*OWNER)
    await swipe(app)
    if what == "goods":
        app.user.find(marker="sell-goods").click()
        app.user.find(marker="goods").elements.pop().set_value("G01")
        marker = "goods-ok"
    else:
        app.user.find(marker="redeem").click()
        app.user.find(marker="gift-goods").elements.pop().set_value("G09")
        marker = "redeem-ok"
    await app.user.should_see(marker=marker)
    if how == "returned":
        ledger.return_card(app.node_owner, CARD)
    else:
        ledger.replace_card(app.node_owner, CARD, "C20002")
    ledger.issue_card(app.node_owner, other, CARD)
    shelf = {c: ledger.stock_of(c)["qty"] for c in ("G01", "G09")}
    await refused(app, marker, [mid, other], "这个卡号现在是另一位会员的")
    assert {c: ledger.stock_of(c)["qty"] for c in ("G01", "G09")} == shelf


def active_cards(app: CounterApp, member: str) -> list[str]:
    return [str(c["card_no"]) for c in app.ledger.member(member)["cards"]
            if c["status"] in ("active", "lost")]


@pytest.mark.parametrize("before", ["none", "returned"])
async def test_a_card_issued_at_another_till_meanwhile_is_not_issued_again(
        counter_app: CounterApp, before: str) -> None:
    """The card dialog opened on a member with no card (or only a returned one), to
    issue one; another till issued her C20001 meanwhile, and this one's 发卡 gave her a
    second active card the cashier never meant to (a member may hold several, of
    several types: a deliberate one is issued from a dialog that shows the first).
    Refused with a sentence naming the card; opened again, it shows the card."""
    app = counter_app
    if before == "none":
        mid = app.ledger.add_member(app.node_owner, name="张伟", phone="13812345678")
    else:
        mid = member_with_card(app)
        app.ledger.return_card(app.node_owner, CARD)
    await app.login(*OWNER)
    app.user.find(marker="search").type("13812345678")
    app.user.find(marker="search-go").click()
    await app.user.should_see(marker="member-name")
    app.user.find(marker="card").click()
    await app.user.should_see(marker="issue-card")
    app.ledger.issue_card(app.node_owner, mid, "C20001")
    app.user.find(marker="new-card-no").type("C20002")
    await refused(app, "issue-card", [mid], "刚刚在别处发了卡 C20001")
    assert active_cards(app, mid) == ["C20001"]


async def test_a_card_issued_from_a_dialog_that_showed_none_is_issued(
        counter_app: CounterApp) -> None:
    """Nothing issued meanwhile: the dialog issues the card, as before."""
    app = counter_app
    mid = app.ledger.add_member(app.node_owner, name="张伟", phone="13812345678")
    await app.login(*OWNER)
    app.user.find(marker="search").type("13812345678")
    app.user.find(marker="search-go").click()
    await app.user.should_see(marker="member-name")
    app.user.find(marker="card").click()
    app.user.find(marker="new-card-no").type("C20002")
    app.user.find(marker="issue-card").click()
    await app.user.should_see("已发卡 C20002")
    assert active_cards(app, mid) == ["C20002"]


async def test_an_edit_of_a_member_merged_meanwhile_is_refused(
        counter_app: CounterApp) -> None:
    """The edit dialog open on 张伟 (a note typed); another till merged her into her
    other record. Saving wrote the note onto the merged record, which nothing at the
    counter shows any more (the panel and a search show the survivor): "资料已保存",
    and the note was nowhere to be seen. Refused with a sentence; opened again, the
    dialog edits the survivor."""
    app = counter_app
    mid = member_with_card(app)
    other = app.ledger.add_member(app.node_owner, name="张伟", phone="13900000000")
    await app.login(*CASHIER)
    await swipe(app)
    app.user.find(marker="edit").click()
    await app.user.should_see(marker="edit-ok")
    app.user.find(marker="edit-notes").type("喜欢安静")
    app.ledger.merge_member(app.owner_id, mid, other)
    await refused(app, "edit-ok", [mid, other], "刚刚在别处合并")
    app.user.find("取消").click()
    await swipe(app)
    app.user.find(marker="edit").click()
    app.user.find(marker="edit-notes").type("喜欢安静")
    app.user.find(marker="edit-ok").click()
    await app.user.should_see("资料已保存")
    assert app.ledger.member(other)["notes"] == "喜欢安静"


async def test_a_top_up_limit_lowered_while_its_dialog_is_open_offers_the_approver(
        counter_app: CounterApp) -> None:
    """The dialog read the limit (¥5,000.00) as it opened and hid the approver's boxes for
    ¥3,000.00; head office lowered it to ¥2,000.00 meanwhile (or a version took effect
    at midnight): the library asked for an approver the dialog gave no boxes for, and
    said "超过 ¥5,000.00" still."""
    app = counter_app
    mid = member_with_card(app)
    await app.login(*CASHIER)
    await swipe(app)
    app.user.find(marker="topup").click()
    app.user.find(marker="amount").type("3000")
    await app.user.should_see("收款 ¥3,000.00")
    await app.user.should_not_see(marker="approver")
    app.ledger.set_rule(app.node_owner, "approval",
                        {**app.ledger.rule("approval"), "topup_limit": 200000})
    app.user.find(marker="topup-ok").click()
    await app.user.should_see("需要有审批权限的人")
    assert app.ledger.balance(mid)["cash"] == 0
    await app.user.should_see("超过 ¥2,000.00，需要审批人：")
    app.user.find(marker="approver").type(OWNER[0])
    app.user.find(marker="approver-password").type(OWNER[1])
    app.user.find(marker="topup-ok").click()
    await app.user.should_see("已充值 ¥3,000.00")
    assert app.ledger.balance(mid)["cash"] == 300000


async def test_a_top_up_past_the_days_limit_together_offers_the_approver(
        counter_app: CounterApp) -> None:
    """The limit counts what this cashier topped up for the member today without an
    approver: ¥3,000.00 this morning and ¥3,000.00 now needs one. The library asked for
    it, and the dialog, whose boxes show only above ¥5,000.00, never offered them: no
    way to top up at the counter but to split the amount."""
    app = counter_app
    mid = member_with_card(app)
    app.ledger.topup(app.cashier_id, mid, 300000)
    await app.login(*CASHIER)
    await swipe(app)
    app.user.find(marker="topup").click()
    app.user.find(marker="amount").type("3000")
    await app.user.should_see("收款 ¥3,000.00")
    await app.user.should_not_see(marker="approver")
    app.user.find(marker="topup-ok").click()
    await app.user.should_see("今天未经审批的累计金额已超过限额")
    assert app.ledger.balance(mid)["cash"] == 300000
    await app.user.should_see("今天为这位会员充值的累计超过 ¥5,000.00，需要审批人：")
    app.user.find(marker="approver").type(OWNER[0])
    app.user.find(marker="approver-password").type(OWNER[1])
    app.user.find(marker="topup-ok").click()
    await app.user.should_see("已充值 ¥3,000.00")
    assert app.ledger.balance(mid)["cash"] == 600000
