"""What a cashier (or a manager) submits that the dialog no longer stands behind, or
types as the buttons do not expect: a refund dialog left open while another till
refunded part of the sale, a card dialog left open while another till changed the
card, a correction typed with two signs. NiceGUI's simulated user against a real
node and store; each refused with a sentence and nothing changed.
"""

from __future__ import annotations

import asyncio

import pytest
from app_fixtures import CASHIER, OWNER, CounterApp
from helpers import snapshot
from test_app_counter import CARD, member_with_card, swipe

pytestmark = pytest.mark.asyncio


async def test_a_refund_of_all_that_was_left_refunds_no_less_unseen(
        counter_app: CounterApp) -> None:
    """The dialog said ¥128.00 left to refund; another till refunded ¥100.00 of it
    meanwhile, and confirming with the box empty ("all that is left") refunded ¥28.00
    to a cashier who had read out ¥128.00. Refused with a sentence; opened again, it
    says what is left and refunds that."""
    app = counter_app
    mid = member_with_card(app, cash=50000)
    sale = app.ledger.debit(app.node_owner, mid, service="FOOT60")
    await app.login(*OWNER)
    await swipe(app)
    app.user.find(marker="refund").click()
    await app.user.should_see("还可退 ¥128.00")
    app.ledger.refund(app.node_owner, sale["id"], amount=10000, reason="另一台收银机")
    await refused_then_opened_again(app, mid, "这笔消费刚刚在别处退过一部分")
    await app.user.should_see("已退过一部分，还可退 ¥28.00")
    app.user.find(marker="refund-ok").click()
    await app.user.should_see("已退款 ¥28.00")
    assert sorted(int(e["amount"]) for e in app.ledger.history(mid)
                  if e["kind"] == "refund") == [2800, 10000]


async def refused_then_opened_again(app: CounterApp, mid: str, said: str) -> None:
    """The open refund dialog confirmed: refused with `said`, nothing changed; closed
    and opened again, for the cashier to read what it says now."""
    before = snapshot(app.ledger, [mid])
    app.user.find(marker="refund-ok").click()
    await app.user.should_see(said)
    await asyncio.sleep(0.1)
    assert snapshot(app.ledger, [mid]) == before
    app.user.find("取消").click()
    await swipe(app)
    app.user.find(marker="refund").click()


async def test_a_refund_of_an_amount_typed_is_not_held_up_by_another_tills(
        counter_app: CounterApp) -> None:
    """An amount typed is what the cashier read out: refunded if it is still left."""
    app = counter_app
    mid = member_with_card(app, cash=50000)
    sale = app.ledger.debit(app.node_owner, mid, service="FOOT60")
    await app.login(*OWNER)
    await swipe(app)
    app.user.find(marker="refund").click()
    app.user.find(marker="refund-amount").type("20")
    app.ledger.refund(app.node_owner, sale["id"], amount=10000, reason="另一台收银机")
    app.user.find(marker="refund-ok").click()
    await app.user.should_see("已退款 ¥20.00")


@pytest.mark.parametrize("typed", ["", "128"])
async def test_a_refund_keeps_no_more_for_points_than_the_dialog_said(
        counter_app: CounterApp, typed: str) -> None:
    """The dialog said nothing would be kept; the member redeemed the sale's points at
    another till meanwhile, and the refund kept their worth from the money without a
    word. Refused with a sentence; opened again, it says what is kept."""
    app = counter_app
    mid = member_with_card(app, cash=50000)
    app.ledger.debit(app.node_owner, mid, service="FOOT60")  # 128 points
    await app.login(*OWNER)
    await swipe(app)
    app.user.find(marker="refund").click()
    if typed:
        app.user.find(marker="refund-amount").type(typed)
    app.ledger.redeem_points(app.node_owner, mid, 100, "茶")
    await refused_then_opened_again(app, mid, "会员刚刚用掉了这笔消费的积分")
    await app.user.should_see("会员已用掉这笔消费的 100 积分")
    app.user.find(marker="refund-ok").click()
    await app.user.should_see("已用积分扣")


@pytest.mark.parametrize("meanwhile,button,said", [
    ("lost", "report-lost", "卡 C10001 现在已挂失，不能挂失"),
    ("replaced", "replace-card", "卡 C10001 现在已补换新卡，不能补卡"),
])
async def test_a_card_changed_at_another_till_meanwhile_is_said_in_chinese(
        counter_app: CounterApp, meanwhile: str, button: str, said: str) -> None:
    """The card dialog was open when another till reported the card lost or replaced
    it: the library's words reached the counter ("输入有误：card C10001 is lost;
    cannot mark it lost")."""
    app = counter_app
    mid = member_with_card(app, cash=50000)
    await app.login(*OWNER)
    await swipe(app)
    app.user.find(marker="card").click()
    app.user.find(marker="new-card-no").type("C40004")
    if meanwhile == "lost":
        app.ledger.report_lost(app.node_owner, CARD)
    else:
        app.ledger.replace_card(app.node_owner, CARD, "C30003")
    before = snapshot(app.ledger, [mid])
    app.user.find(marker=button).click()
    await app.user.should_see(said)
    await app.user.should_not_see("cannot")
    assert snapshot(app.ledger, [mid]) == before


async def test_a_loss_cancelled_at_another_till_meanwhile_is_said_in_chinese(
        counter_app: CounterApp) -> None:
    app = counter_app
    mid = member_with_card(app, cash=50000)
    app.ledger.report_lost(app.node_owner, CARD)
    await app.login(*OWNER)
    app.user.find(marker="search").type("13812345678")
    app.user.find(marker="search-go").click()
    await app.user.should_see(marker="member-name")
    app.user.find(marker="card").click()
    app.ledger.report_found(app.node_owner, CARD)
    before = snapshot(app.ledger, [mid])
    app.user.find("解除挂失").click()
    await app.user.should_see("卡 C10001 现在正常使用中，不能解除挂失")
    assert snapshot(app.ledger, [mid]) == before


@pytest.mark.parametrize("typed", ["+-5", "--5", "-+5", "++5"])
async def test_a_correction_with_two_signs_is_refused(counter_app: CounterApp,
                                                      typed: str) -> None:
    """Every sign was stripped and the first kept: "+-5" added ¥5.00, "--5" took it."""
    app = counter_app
    mid = member_with_card(app, cash=50000)
    await app.login(*OWNER)
    await app.user.open("/admin/corrections")
    app.user.find(marker="corr-query").type("13812345678")
    app.user.find(marker="corr-find").click()
    app.user.find(marker="corr-pick").click()
    before = snapshot(app.ledger, [mid])
    app.user.find(marker="corr-change").type(typed)
    app.user.find(marker="corr-reason").type("探针")
    app.user.find(marker="corr-submit").click()
    await app.user.should_see(
        "调整金额不对：请输入不为零、最多两位小数的金额，负数为扣减，例如 -12.50 或 30。")
    await asyncio.sleep(0.1)
    assert snapshot(app.ledger, [mid]) == before
    app.user.find(marker="corr-change").clear().type("- 5")  # one sign, then a space
    app.user.find(marker="corr-submit").click()
    await app.user.should_see("已调账")
    assert app.ledger.balance(mid)["cash"] == 49500


async def test_too_many_wrong_pins_say_so_not_that_the_cashier_may_not(
        counter_app: CounterApp) -> None:
    """The card's PIN locked after a run of wrong ones read "您没有这项操作的权限，请找店长"
    (the library's refusal is a PermissionDenied)."""
    app = counter_app
    mid = member_with_card(app, cash=50000, pin="1234")
    await app.login(*CASHIER)
    before = snapshot(app.ledger, [mid])
    for _ in range(5):
        app.reader.insert(CARD)
        app.user.find(marker="pin").type("0000")
        app.user.find(marker="pin-ok").click()
        await app.user.should_see("卡密码不对，请会员重新输入。")
    app.reader.insert(CARD)
    app.user.find(marker="pin").type("0000")
    app.user.find(marker="pin-ok").click()
    await app.user.should_see("卡密码错误次数太多")
    await app.user.should_not_see("您没有这项操作的权限")
    assert app.ledger.balance(mid) == before[f"balance:{mid}"]


async def test_too_many_wrong_approver_passwords_say_so(counter_app: CounterApp) -> None:
    app = counter_app
    mid = member_with_card(app)
    await app.login(*CASHIER)
    await swipe(app)
    seen = []
    for _ in range(7):
        app.user.find(marker="topup").click()
        app.user.find(marker="amount").type("6000")
        app.user.find(marker="approver").type(OWNER[0])
        app.user.find(marker="approver-password").type("wrong")
        app.user.find(marker="topup-ok").click()
        await asyncio.sleep(0.3)
        seen.append(next(iter(app.user.find(marker="dialog-error").elements)).text)
    assert "姓名或密码不对。" in seen and any("密码错误次数太多" in s for s in seen), seen
    assert not any("权限" in s for s in seen), seen
    assert app.ledger.balance(mid)["cash"] == 0
