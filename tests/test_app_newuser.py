"""What a new cashier's probe of the counter found (the ninth wave): a refund offered
where the library refuses it, a refund dialog showing what the debit was rather than
what is left of it, the library's English in the Chinese counter, a preview pricing a
quantity that confirming refuses, history rows named in raw English, an approval's
real reason lost, a balance misnamed, a page never shown holding the card reader.

NiceGUI's simulated user against a real node and store (tests/app_fixtures.py); card
swipes through the ScriptedReader FAKE. Another branch's records come by sync file
(test_app_shop.from_another_branch).
"""

from __future__ import annotations

import re
import threading
from pathlib import Path
from typing import Any

import pytest
from app_fixtures import CASHIER, OWNER, CounterApp
from test_app_counter import (
    CARD,
    consume_dialog_by_phone_tail,
    member_with_card,
    swipe,
    top_up_above_the_limit,
)
from test_app_shop import BARCODE, from_another_branch, with_goods

from crdtledger.ledger import Ledger
from crdtledger.model import ENTRY_KINDS
from reference_app import counter, i18n
from reference_app.i18n import money as format_money

SETTLE = 50  # should_see retries: what follows a change comes a moment later


# --- 1. a refund is offered only where it can work ----------------------------------------


@pytest.mark.asyncio
async def test_refund_is_offered_only_for_this_branchs_debits_with_something_left(
        counter_app: CounterApp, tmp_path: Path) -> None:
    """Three debits: one made at SH02 (only SH02 may refund it: the row says so), one
    of this branch refunded whole (says so), one of this branch refunded in part (the
    one refund button)."""
    app = counter_app
    mid = member_with_card(app, cash=50000)

    def sold_there(sh02: Ledger) -> None:
        sh02.debit(sh02.owner, mid, amount=5220, pay="cash")

    from_another_branch(app, tmp_path, sold_there)
    whole = app.ledger.debit(app.node_owner, mid, amount=1000)
    app.ledger.refund(app.node_owner, whole["id"])
    part = app.ledger.debit(app.node_owner, mid, amount=3000)
    app.ledger.refund(app.node_owner, part["id"], 1000)
    await app.login(*OWNER)
    await swipe(app)
    await app.user.should_see("在徐家汇店退款")
    await app.user.should_see("已全部退款")
    assert len(app.user.find(marker="refund").elements) == 1
    app.user.find(marker="refund").click()
    await app.user.should_see("已退过一部分，还可退 ¥20.00")


# --- 2. the refund dialog shows what is left ------------------------------------------------


@pytest.mark.asyncio
async def test_the_refund_dialog_shows_and_refunds_what_is_left(counter_app: CounterApp) -> None:
    """Two ¥100 refunds of ¥1,382.40 at the counter: the dialog then says ¥1,182.40 is
    left, and an empty amount refunds that."""
    app = counter_app
    mid = member_with_card(app, cash=200000)
    app.ledger.debit(app.node_owner, mid, amount=138240)
    await app.login(*OWNER)
    await swipe(app)
    for cash in ("¥717.60", "¥817.60"):  # ¥2,000.00 - ¥1,382.40 + ¥100.00 a time
        app.user.find(marker="refund").click()
        await app.user.should_see(marker="refund-left")
        app.user.find(marker="refund-amount").type("100")
        app.user.find(marker="refund-ok").click()
        await app.user.should_see(marker="balance-cash", content=cash, retries=SETTLE)
    app.user.find(marker="refund").click()
    await app.user.should_see("已退过一部分，还可退 ¥1,182.40")
    await app.user.should_see("退款金额（不填则退 ¥1,182.40）")
    app.user.find(marker="refund-ok").click()
    await app.user.should_see("已退款 ¥1,182.40")
    assert app.ledger.balance(mid)["cash"] == 200000
    await app.user.should_see("已全部退款", retries=SETTLE)
    await app.user.should_not_see(marker="refund")


# --- 3. the library's refusals in the counter's language ---------------------------------


@pytest.mark.asyncio
async def test_refund_refusals_are_said_in_chinese(counter_app: CounterApp) -> None:
    """More than is left (输入有误：at most 10.00 of this debit...), and a debit refunded
    whole from another till while this dialog was open (at most 0.00...)."""
    app = counter_app
    mid = member_with_card(app, cash=50000)
    debit = app.ledger.debit(app.node_owner, mid, amount=1000)
    await app.login(*OWNER)
    await swipe(app)
    app.user.find(marker="refund").click()
    app.user.find(marker="refund-amount").type("10.01")
    app.user.find(marker="refund-ok").click()
    await app.user.should_see("这笔消费最多还能退 ¥10.00。")
    app.ledger.refund(app.node_owner, debit["id"])  # another till, meanwhile
    app.user.find(marker="refund-amount").clear()
    app.user.find(marker="refund-ok").click()
    await app.user.should_see("这笔消费已经全部退过了，不能再退。")
    await app.user.should_not_see("at most")


@pytest.mark.asyncio
async def test_a_new_members_common_mistakes_are_said_in_chinese(
        counter_app: CounterApp) -> None:
    app = counter_app
    member_with_card(app)  # card C10001 is 张伟's
    await app.login(*OWNER)
    app.user.find(marker="new-member").click()
    app.user.find(marker="new-name").type("李娜")
    app.user.find(marker="new-phone").type("13700001111")
    app.user.find(marker="new-birthday").type("1990/05/17")
    app.user.find(marker="new-member-ok").click()
    await app.user.should_see("生日要写成 1990-05-17 或 05-17 这样的日期。")
    app.user.find(marker="new-birthday").clear()
    app.user.find(marker="new-phone").clear().type("13812345678")  # 张伟's
    app.user.find(marker="new-member-ok").click()
    await app.user.should_see("手机号 13812345678 已登记给另一位会员：请先按手机号查找。")
    app.user.find(marker="new-phone").clear().type("13700001111")
    app.user.find(marker="new-card").type("C10001")
    app.user.find(marker="new-member-ok").click()
    await app.user.should_see("卡 C10001 已经发过了（属于一位会员）：请换一张卡。")
    app.user.find(marker="new-card").clear()
    app.user.find(marker="new-phone").clear().type("１３７００００１１１１")  # an input method's
    app.user.find(marker="new-member-ok").click()
    await app.user.should_see("手机号请用半角数字输入：13700001111")
    app.user.find(marker="new-phone").clear().type("abc")
    app.user.find(marker="new-member-ok").click()
    await app.user.should_see("“abc” 不是手机号码。")
    await app.user.should_not_see("输入有误")


# --- 4. a preview never prices what confirming refuses -----------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize("typed", ["1e3", "1000", "1.5", "0"])
async def test_the_consume_preview_refuses_a_quantity_confirming_refuses(
        counter_app: CounterApp, typed: str) -> None:
    app = counter_app
    await consume_dialog_by_phone_tail(app)
    app.user.find(marker="qty").clear().type(typed)
    await app.user.should_see(marker="preview", content="数量要填 1 到 999 的整数。")
    await app.user.should_not_see("¥128,000.00")
    app.user.find(marker="qty").clear().type("2")
    await app.user.should_see(marker="preview", content="应付 ¥256.00")


@pytest.mark.asyncio
async def test_the_goods_preview_refuses_a_quantity_confirming_refuses(
        counter_app: CounterApp) -> None:
    app = counter_app
    member_with_card(app, cash=50000)
    with_goods(app)
    await app.login(*OWNER)
    await swipe(app)
    app.reader.scan(BARCODE)
    app.user.find(marker="goods-qty").clear().type("1e3")
    await app.user.should_see(marker="goods-preview", content="数量要填 1 到 999 的整数。")
    await app.user.should_not_see("¥88,000.00")


# --- 5. every kind of history row has a name -----------------------------------------------

MANAGER = ("manager1", "manager-secret")
ACTIVITY = {"name": "晨练打卡", "from": "2020-01-01T00:00", "to": "2099-01-01T00:00",
            "points": 10, "repeat": "daily", "per_day": 1}


def referred(app: CounterApp) -> tuple[str, str]:
    """老王 (card OLD-1) referred 小李 (card NEW-1): approved at both levels, his 300
    points given; 老王 checked in at 晨练打卡 (10 points)."""
    ledger, op = app.ledger, app.node_owner
    manager = ledger.add_operator(op, *MANAGER, roles=["manager"])
    old = ledger.add_member(op, name="老王", phone="13800000001")
    ledger.issue_card(op, old, "OLD-1")
    new = ledger.add_member(op, name="小李", phone="13800000002")
    ledger.issue_card(op, new, "NEW-1")
    ledger.set_rule(op, "referral", {"reward": "points", "points": 300})
    r = ledger.refer(op, new, old)
    ledger.approve_referral(manager, str(r["id"]), 1)
    ledger.approve_referral(app.owner_id, str(r["id"]), 2)
    ledger.set_activity(op, "MORNING", ACTIVITY)
    ledger.checkin(op, "MORNING", old)
    return old, new


@pytest.mark.asyncio
async def test_membership_rows_are_named_in_the_sessions_language(
        counter_app: CounterApp) -> None:
    app = counter_app
    referred(app)
    await app.login(*OWNER)
    await swipe(app, "NEW-1")
    for text in ("推荐登记", "推荐审批（一级）", "推荐审批（二级）"):
        await app.user.should_see(text)
    await app.user.should_not_see("referral")
    await app.user.should_not_see("approval")
    await swipe(app, "OLD-1")
    await app.user.should_see(marker="member-name", content="老王")
    for text in ("推荐奖励", "+300 积分", "签到 · 晨练打卡", "+10 积分"):
        await app.user.should_see(text)
    await app.user.should_not_see("reward")
    await app.user.should_not_see("checkin")
    app.user.find(marker="lang").click()
    await app.user.open("/")
    await swipe(app, "OLD-1")
    for text in ("referral reward", "+300 pts", "check-in · 晨练打卡"):
        await app.user.should_see(text)


class _Rules:
    """What _describe reads of a shop for entries without goods or a service."""

    class ledger:
        @staticmethod
        def rule(_name: str) -> dict[str, Any]:
            return {}


@pytest.mark.parametrize("lang", ["zh", "en"])
def test_every_kind_of_entry_has_a_name(monkeypatch: pytest.MonkeyPatch, lang: str) -> None:
    monkeypatch.setattr(i18n, "lang", lambda: lang)
    for kind in sorted(ENTRY_KINDS):
        said = counter._describe(_Rules, {"kind": kind})  # type: ignore[arg-type]
        # Chinese without a Latin letter; English words, not a code (exit_settle).
        assert said and not re.search("[A-Za-z]" if lang == "zh" else "_", said), said


# --- 6. an approval refused says why ------------------------------------------------------


@pytest.mark.asyncio
async def test_an_approval_refused_says_why(counter_app: CounterApp) -> None:
    """The owner tops up above the limit and types their own name as approver: they
    hold the permission, and cannot approve their own top-up; a cashier as approver
    may not approve at all."""
    app = counter_app
    mid = await top_up_above_the_limit(app, OWNER)
    app.user.find(marker="approver").type(OWNER[0])
    app.user.find(marker="approver-password").type(OWNER[1])
    app.user.find(marker="topup-ok").click()
    await app.user.should_see("boss 不能审批自己经办的这笔：请另一位有审批权限的人输入姓名和密码。")
    app.user.find(marker="approver").clear().type(CASHIER[0])
    app.user.find(marker="approver-password").type(CASHIER[1])
    app.user.find(marker="topup-ok").click()
    await app.user.should_see("cashier1 没有审批权限：请有审批权限的人输入姓名和密码。")
    assert app.ledger.balance(mid)["cash"] == 0


# --- 7. a shortfall says what its figure is -------------------------------------------------


@pytest.mark.asyncio
async def test_a_shortfall_of_stored_value_counts_the_bonus_in_its_figure(
        counter_app: CounterApp) -> None:
    """¥202.00 stored value and ¥30.00 bonus (the tiles), ¥298.00 to pay: the figure
    the library refuses with is both together, and the sentence says so."""
    app = counter_app
    mid = member_with_card(app)
    app.ledger.set_rule(app.node_owner, "promotions", [{"min": 20200, "bonus": 3000}])
    app.ledger.topup(app.node_owner, mid, 20200)
    await app.login(*OWNER)
    await swipe(app)
    await app.user.should_see(marker="balance-bonus", content="¥30.00")
    app.user.find(marker="consume").click()
    app.user.find(marker="qty").clear().type("2")  # 2 x 足疗 60 分钟 at ¥128.00
    app.user.find(marker="consume-ok").click()
    await app.user.should_see(
        "余额不足：储值 ¥202.00 加赠送 ¥30.00，共 ¥232.00，本次需要 ¥256.00。")


# --- 8. only a page that is shown takes the card reader ------------------------------------


@pytest.mark.asyncio
async def test_a_counter_never_shown_does_not_take_the_reader(
        counter_app: CounterApp, caplog: pytest.LogCaptureFixture) -> None:
    """/ opened logged out: frame builds the counter into a container it deletes and
    sends the browser to /login. That counter registered for the reader anyway (a
    status event then reached its deleted elements: 'An element has been deleted but
    is still being used'), and could hold it: a swipe went to a page nobody sees."""
    app = counter_app
    member_with_card(app, cash=50000)
    await app.user.open("/")
    await app.user.should_see(marker="login", retries=SETTLE)
    assert list(app.shop.listeners) == []
    assert app.shop.watchers == set()
    await app.login(*OWNER)
    [page] = list(app.shop.listeners)
    assert app.shop.listeners.holds(page)
    reader = threading.Thread(target=app.reader.insert, args=(CARD,))  # PC/SC's thread
    reader.start()
    reader.join()
    await app.user.should_see(marker="member-name", content="张伟", retries=SETTLE)
    assert "deleted but is still being used" not in caplog.text


# --- a refund of a sale whose points were spent since -------------------------------------


@pytest.mark.asyncio
async def test_the_refund_dialog_says_what_is_kept_for_points_spent(
        counter_app: CounterApp) -> None:
    """A sale of ¥300.00, its points converted to bonus: the dialog says before the
    cashier confirms that their worth is kept from the refund (as the amount typed
    changes), and the toast says what was paid back and kept."""
    app = counter_app
    yuan = format_money  # as the counter shows fen: ¥1,234.50
    mid = member_with_card(app, cash=50000)
    sale = app.ledger.debit(app.node_owner, mid, amount=30000)
    earned = int(sale["points"])
    app.ledger.convert_points(app.node_owner, mid, earned)
    worth = -(-earned * 100 // 100)  # the demo chain's rate: 100 points a yuan
    await app.login(*OWNER)
    await swipe(app)
    app.user.find(marker="refund").click()
    await app.user.should_see(f"会员已用掉这笔消费的 {earned} 积分：按积分兑换价从退款中扣 "
                              f"{yuan(worth)}，实退 {yuan(30000 - worth)}")
    app.user.find(marker="refund-amount").type("100")
    part = -(-(earned * 10000 // 30000) * 100 // 100)
    await app.user.should_see(f"扣 {yuan(part)}，实退 {yuan(10000 - part)}",
                              retries=SETTLE)
    app.user.find(marker="refund-amount").clear().type("abc")  # no amount: nothing said
    await app.user.should_not_see(marker="refund-kept", retries=SETTLE)
    app.user.find(marker="refund-amount").clear()
    await app.user.should_see(marker="refund-kept", retries=SETTLE)
    app.user.find(marker="refund-ok").click()
    await app.user.should_see(f"已退款 {yuan(30000 - worth)}（已用积分扣 "
                              f"{yuan(worth)}）")
    await app.user.should_see(f"退款（已用积分扣 {yuan(worth)}）", retries=SETTLE)  # its row
    bal = app.ledger.balance(mid)
    assert bal["cash"] + bal["bonus"] == 50000 and bal["points"] == 0
