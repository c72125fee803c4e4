"""What the counter and the office pages say when a member's details, a referral, a
points count or a correction are refused, and how a correction reads in the history:
in the session's language, never the library's English ("输入有误：email 'x' is not an
e-mail address"). NiceGUI's simulated user against a real node and store; the
refusals are the library's own, raised by the operation table the pages run.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from app_fixtures import CASHIER, OWNER, CounterApp
from helpers import snapshot
from test_app_counter import member_with_card, swipe

from crdtledger import operations, payments
from crdtledger.errors import InvalidInput, LedgerError

pytestmark = pytest.mark.asyncio

# An English word as the library writes them; what the cashier typed is taken out
# first (it is quoted back as typed).
ENGLISH = re.compile(r"[A-Za-z]{3,}")


def english_in(said: str, typed: str) -> list[str]:
    said = said.replace("name@example.com", "")  # how an address is written
    for value in sorted({typed, typed.strip(), typed.upper()}, key=len, reverse=True):
        if value:
            said = said.replace(value, "")
    return ENGLISH.findall(said)


# (operation, parameters, what was typed): each refused by the library, each a
# member's field as the counter's and the office's forms send it.
LONG = "张" * 201
REFUSED: list[tuple[str, dict[str, Any], str]] = [
    ("member.add", {"name": "", "phone": "13900000001"}, ""),
    ("member.add", {"name": " ", "phone": "13900000001"}, ""),
    ("member.add", {"name": LONG, "phone": "13900000001"}, LONG),
    ("member.add", {"name": "甲\n乙", "phone": "13900000001"}, "甲\n乙"),
    ("member.add", {"name": "测试", "phone": ""}, ""),
    ("member.add", {"name": "测试", "phone": "abc"}, "abc"),
    ("member.add", {"name": "测试", "phone": "12345"}, "12345"),
    ("member.add", {"name": "测试", "phone": "１３９００００００１"}, "１３９００００００１"),
    ("member.add", {"name": "测试", "phone": "1" * 21}, "1" * 21),
    ("member.add", {"name": "测试", "phone": "13812345678"}, "13812345678"),  # 张伟's
    ("member.add", {"name": "测试", "phone": "13900000001", "birthday": "2026-13-45"},
     "2026-13-45"),
    ("member.add", {"name": "测试", "phone": "13900000001", "birthday": "yesterday"},
     "yesterday"),
    ("member.add", {"name": "测试", "phone": "13900000001", "birthday": "1990-05-17x"},
     "1990-05-17x"),
    ("member.add", {"name": "测试", "phone": "13900000001", "anniversary": "02-30"}, "02-30"),
    ("member.add", {"name": "测试", "phone": "13900000001", "gender": "X"}, "X"),
    ("member.add", {"name": "测试", "phone": "13900000001", "email": "not-an-email"},
     "not-an-email"),
    ("member.add", {"name": "测试", "phone": "13900000001", "email": "a\nb@c.d"}, "a\nb@c.d"),
    ("member.add", {"name": "测试", "phone": "13900000001", "notes": "x" * 201}, "x" * 201),
    ("member.add", {"name": "测试", "phone": "13900000001", "notes": "\x1b[2J"}, "\x1b[2J"),
    ("member.add", {"name": "测试", "phone": "13900000001", "id_no": "12345"}, "12345"),
    ("member.add", {"name": "测试", "phone": "13900000001", "id_no": "110101199003070000"},
     "110101199003070000"),
    ("member.add", {"name": "测试", "phone": "13900000001", "home": "XX99"}, "XX99"),
    ("member.add", {"name": "测试", "phone": "13900000001", "prefs": {"strength": "重" * 61}},
     "重" * 61),
    ("member.add", {"name": "测试", "phone": "13900000001", "tags": ["标" * 41]}, "标" * 41),
    ("member.add", {"name": "测试", "phone": "13900000001", "lang": "fr"}, "fr"),
    ("member.add", {"name": "测试", "phone": "13900000001", "promo": "maybe"}, "maybe"),
    ("member.edit", {"name": ""}, ""),
    ("member.edit", {"phone": ""}, ""),
    ("member.edit", {"phone": "12345"}, "12345"),
    ("member.edit", {"phone": "13987654321"}, "13987654321"),  # 李娜's
    ("member.edit", {"email": "not-an-email"}, "not-an-email"),
    ("member.edit", {"birthday": "2026-02-30"}, "2026-02-30"),
    ("member.edit", {"birthday": "2099-01-01"}, "2099-01-01"),
    ("member.add", {"name": "测试", "phone": "13900000001", "birthday": "1899-12-31"},
     "1899-12-31"),
    ("member.edit", {"anniversary": "2026-02-30"}, "2026-02-30"),
    ("member.edit", {"level": "钻石"}, "钻石"),
    ("member.edit", {"notes": "x" * 201}, "x" * 201),
    ("card.issue", {"card_no": "X" * 41}, "X" * 41),
    ("card.issue", {"card_no": "卡号"}, "卡号"),
    ("card.issue", {"card_no": "CA0001"}, "CA0001"),  # 张伟's
    ("card.issue", {"card_no": "T900007", "pin": "abcd"}, "abcd"),
    ("card.issue", {"card_no": "T900007", "pin": "123456789"}, "123456789"),
    ("points.redeem", {"points": 0, "gift": "毛巾"}, "0"),
    ("points.redeem", {"points": 1, "gift": "  "}, "  "),
    ("referral.add", {"referrer": "$a"}, ""),
    ("referral.add", {"referrer": "$b"}, ""),  # 李娜 joined after 张伟
    ("exit.apply", {"reason": ""}, ""),
]


async def test_every_refusal_of_a_member_field_is_said_in_the_sessions_language(
        counter_app: CounterApp) -> None:
    """Each refusal the library words for a member's fields, run through the pages'
    Shop.refusal: a sentence of its own or of the forms every field's check shares,
    with no English but what was typed ("输入有误：email 'not-an-email' is not an
    e-mail address" reached the Chinese counter, and so did a birthday of 2026-13-45,
    a card number or name too long, points of 0)."""
    app = counter_app
    ledger, owner = app.ledger, app.node_owner
    a = ledger.add_member(owner, name="张伟", phone="13812345678")
    ledger.issue_card(owner, a, "CA0001")
    b = ledger.add_member(owner, name="李娜", phone="13987654321")
    ledger.topup(owner, a, 10000)
    wrong = []
    for name, params, typed in REFUSED:
        p = {k: ({"$a": a, "$b": b}.get(v, v) if isinstance(v, str) else v)
             for k, v in params.items()}
        if name != "member.add":
            p["member"] = a
        try:
            operations.run(ledger, owner, name, p)
        except LedgerError as e:
            said = app.shop.refusal(e)
            if english_in(said, typed):
                wrong.append((name, params, str(e), said))
        else:
            pytest.fail(f"{name} {params} was taken")
    assert not wrong, "\n".join(map(str, wrong))
    # Sentences no field above reaches from this counter's one store: a pair referring
    # each other (a merge can make one), a referrer joined by a clock ahead, a sale
    # past what an entry holds (payments.times words it).
    with pytest.raises(LedgerError) as big:
        payments.times(10**13, 2, "G01")
    for e in (big.value, InvalidInput(
            f"{b} was referred by member {a} (x.SH01): two members cannot refer each "
            "other; nothing was recorded"), InvalidInput(
            f"{b} joined on 2026-12-08 10:00, later than this branch's clock reads "
            "(2026-12-07 10:00), and cannot have referred a member joining now: check this "
            "PC's clock; nothing was recorded")):
        said = app.shop.refusal(e)
        assert not english_in(said, ""), (str(e), said)


async def test_a_birthday_past_the_calendar_is_said_in_chinese(counter_app: CounterApp) -> None:
    app = counter_app
    await app.login(*CASHIER)
    app.user.find(marker="new-member").click()
    app.user.find(marker="new-name").type("测试戊")
    app.user.find(marker="new-phone").type("13900000003")
    app.user.find(marker="new-birthday").type("2026-13-45")
    app.user.find(marker="new-member-ok").click()
    await app.user.should_see("生日不是日历上有的日子：要写成 1990-05-17 或 05-17 这样的日期。")
    assert app.ledger.find_members("13900000003") == []


async def test_a_phone_of_five_digits_is_not_a_phone(counter_app: CounterApp) -> None:
    app = counter_app
    await app.login(*CASHIER)
    app.user.find(marker="new-member").click()
    app.user.find(marker="new-name").type("测试丙")
    app.user.find(marker="new-phone").type("12345")
    app.user.find(marker="new-member-ok").click()
    await app.user.should_see("“12345” 不是手机号码。")
    assert app.ledger.find_members("测试丙") == []


async def test_an_edit_cannot_take_the_phone_off(counter_app: CounterApp) -> None:
    """The phone could be cleared on edit (required only on registering): the member
    was then found by no phone and could not sign in to the members' pages."""
    app = counter_app
    mid = member_with_card(app)
    await app.login(*CASHIER)
    await swipe(app)
    app.user.find(marker="edit").click()
    app.user.find(marker="edit-phone").clear()
    app.user.find(marker="edit-ok").click()
    await app.user.should_see("请填写手机号。")
    assert app.ledger.member(mid)["phone"] == "13812345678"
    assert [m["id"] for m in app.ledger.find_members("13812345678")] == [mid]


async def test_a_phone_pasted_with_spaces_at_its_ends_is_taken(counter_app: CounterApp) -> None:
    """A phone pasted from a chat comes with spaces at its ends: registering or editing,
    it was refused as no phone number ("“ 13700002222 ” 不是手机号码。")."""
    app = counter_app
    mid = member_with_card(app)
    await app.login(*CASHIER)
    app.user.find(marker="new-member").click()
    app.user.find(marker="new-name").type("测试丁")
    app.user.find(marker="new-phone").type(" 13700002222 ")
    app.user.find(marker="new-member-ok").click()
    await app.user.should_see("已登记会员 测试丁")
    (new,) = app.ledger.find_members("测试丁")
    assert app.ledger.member(new["id"])["phone"] == "13700002222"
    await swipe(app)
    app.user.find(marker="edit").click()
    app.user.find(marker="edit-phone").clear()
    app.user.find(marker="edit-phone").type(" 13812349999\t")
    app.user.find(marker="edit-ok").click()
    await app.user.should_see("资料已保存")
    assert app.ledger.member(mid)["phone"] == "13812349999"

async def test_an_e_mail_address_refused_is_said_in_chinese(counter_app: CounterApp) -> None:
    app = counter_app
    mid = member_with_card(app)
    await app.login(*CASHIER)
    await swipe(app)
    app.user.find(marker="edit").click()
    app.user.find(marker="edit-email").type("not-an-email")
    app.user.find(marker="edit-ok").click()
    await app.user.should_see("“not-an-email” 不是邮箱地址：要写成 name@example.com 这样。")
    # An input method's full width: said how to type it, not taken.
    app.user.find(marker="edit-email").clear()
    app.user.find(marker="edit-email").type("ａｂｃ@qq.com")
    app.user.find(marker="edit-ok").click()
    await app.user.should_see("邮箱请用半角字母和符号输入：abc@qq.com")
    assert not app.ledger.member(mid).get("email")


async def test_zero_points_are_refused_at_the_page(counter_app: CounterApp) -> None:
    app = counter_app
    mid = member_with_card(app, cash=50000)
    app.ledger.debit(app.node_owner, mid, service="FOOT60")  # some points
    await app.login(*CASHIER)
    await swipe(app)
    before = snapshot(app.ledger, [mid])
    app.user.find(marker="redeem").click()
    app.user.find(marker="points").type("0")
    app.user.find(marker="redeem-ok").click()
    await app.user.should_see("积分要填正整数。")
    assert snapshot(app.ledger, [mid]) == before


async def test_a_correction_reads_with_its_sign_in_the_history(counter_app: CounterApp) -> None:
    """A correction taking ¥5.00 off read "¥5.00", grey, like a sale paid at the till."""
    app = counter_app
    mid = member_with_card(app, cash=50000)
    app.ledger.correct(app.node_owner, mid, "cash", -500, "多充了")
    app.ledger.correct(app.node_owner, mid, "points", 30, "补积分")
    await app.login(*OWNER)
    await swipe(app)
    await app.user.should_see("-¥5.00")
    await app.user.should_see("+30 积分")


async def test_a_correction_typed_with_three_decimals_is_told_the_signed_form(
        counter_app: CounterApp) -> None:
    """"-12.345" was told "请输入大于零…" though a negative correction is how value is
    taken away."""
    app = counter_app
    mid = member_with_card(app, cash=50000)
    await app.login(*OWNER)
    await app.user.open("/admin/corrections")
    app.user.find(marker="corr-query").type("13812345678")
    app.user.find(marker="corr-find").click()
    app.user.find(marker="corr-pick").click()
    before = snapshot(app.ledger, [mid])
    for typed in ("-12.345", "0"):
        app.user.find(marker="corr-change").clear().type(typed)
        app.user.find(marker="corr-reason").clear().type("探针")
        app.user.find(marker="corr-submit").click()
        await app.user.should_see(
            "调整金额不对：请输入不为零、最多两位小数的金额，负数为扣减，例如 -12.50 或 30。")
        await app.user.should_not_see("大于零")
    assert snapshot(app.ledger, [mid]) == before


async def test_a_referral_refused_names_the_members(counter_app: CounterApp) -> None:
    app = counter_app
    ledger, owner = app.ledger, app.node_owner
    a = ledger.add_member(owner, name="张伟", phone="13812345678")
    b = ledger.add_member(owner, name="李娜", phone="13987654321")
    ledger.add_member(owner, name="王芳", phone="13700001111")
    ledger.refer(owner, b, a)
    await app.login(*CASHIER)

    async def refer(member: str, referrer: str) -> None:
        await app.user.open("/office/referrals")
        app.user.find(marker="ref-member").type(member)
        app.user.find(marker="ref-referrer").type(referrer)
        app.user.find(marker="ref-add").click()

    await refer("13812345678", "13812345678")
    await app.user.should_see("会员不能推荐自己：请输入另一位会员作为推荐人。")
    await refer("13987654321", "13700001111")
    await app.user.should_see("李娜 已经由 张伟 推荐过了：每位会员只能登记一次推荐。")
    await refer("nobody", "13812345678")
    await app.user.should_see("找不到：与“nobody”相符的会员（请输入卡号、手机号或会员号）")
    await app.user.should_not_see("members match")
    assert len(ledger.referrals()) == 1


async def test_an_exit_without_a_member_or_a_reason_is_said_in_chinese(
        counter_app: CounterApp) -> None:
    app = counter_app
    member_with_card(app)
    await app.login(*OWNER)
    for who, said in (("", "输入有误：请输入会员的卡号、手机号或会员号。"),
                      ("13812345678", "请填写原因。")):
        await app.user.open("/office/exits")
        if who:
            app.user.find(marker="exit-member").type(who)
        app.user.find(marker="exit-apply").click()
        await app.user.should_see(said)
    assert app.ledger.exits() == []
