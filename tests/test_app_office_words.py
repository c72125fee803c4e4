"""The back office's rule forms, with what an owner types wrong: each refusal is one
Chinese sentence naming the box as the form labels it (not "输入有误：" and the
library's English), and the rules are as they were."""

from __future__ import annotations

import asyncio
import json

import pytest
from app_fixtures import OWNER, CounterApp
from nicegui import ui

pytestmark = pytest.mark.asyncio


def rules_held(app: CounterApp) -> str:
    """Every version of every rule, as the store holds them."""
    return json.dumps(app.ledger.storage.conn.execute(
        "SELECT id, kind, effective_from, body FROM rules ORDER BY id").fetchall())


async def saving(app: CounterApp, path: str, typed: dict[str, object], said: str,
                 save: str = "save-rules") -> None:
    """Open `path`, type into the boxes (by marker, or by label for those without
    one), save, and see `said`, the rules as they were."""
    await app.user.open(path)
    if path == "/checkin":
        app.user.find("设置签到活动（总店）").click()
    before = rules_held(app)
    for key, value in typed.items():
        boxes = [e for e in app.user.find(kind=ui.input).elements
                 if key in e._markers or e.props.get("label") == key]
        assert len(boxes) == 1, key
        boxes[0].set_value(value)
    app.user.find(marker=save).click()
    await app.user.should_see(said, retries=100)
    await asyncio.sleep(0.1)
    assert not any("输入有误" in m for m in app.user.notify.messages)
    assert rules_held(app) == before


async def test_two_levels_at_one_threshold_are_refused(counter_app: CounterApp) -> None:
    """金卡's threshold typed as 0 beside 普通会员's was saved: a member at 0 got
    whichever the list put last, so every new member had 金卡's 10% off."""
    app = counter_app
    await app.login(*OWNER)
    await saving(app, "/admin/levels", {"row-2-threshold": "0"},
                 "等级“普通会员”和“金卡”的门槛都是 ¥0.00：每个等级的门槛要不同。")
    assert [lv["threshold"] for lv in app.ledger.rule("levels")] == [0, 100000, 500000]


async def test_a_service_name_of_ten_thousand_characters_is_refused(
        counter_app: CounterApp) -> None:
    """It was saved, for every receipt and the counter's buttons at every branch."""
    app = counter_app
    await app.login(*OWNER)
    await app.user.open("/admin/services")
    code = app.user.find(marker="row-0-code").elements.pop().value
    await saving(app, "/admin/services", {"row-0-name": "长" * 10000},
                 f"项目 {code} 的名称太长了：最多 60 个字。")


async def test_two_rows_of_one_branch_are_refused(counter_app: CounterApp) -> None:
    """The second row of SH01 was saved, the first's name dropped without a word."""
    app = counter_app
    await app.login(*OWNER)
    await saving(app, "/admin/branches", {"row-1-node": "SH01"},
                 "分店号 SH01 出现了两次：每家分店只写一行。")
    assert app.ledger.rule("branches") == {"SH01": "南京西路店", "SH02": "徐家汇店"}


@pytest.mark.parametrize(("typed", "said"), [
    ({"row-1-name": ""}, "分店 SH02 的名称被清空了：名称显示在收银台、报表和结算表上。"
                         "确实要去掉这个名称，请点这一行右边的删除按钮。"),
    ({"row-1-name": "\u3000 "}, "分店 SH02 的名称被清空了：名称显示在收银台、报表和结算表上。"
                                "确实要去掉这个名称，请点这一行右边的删除按钮。"),
    ({"row-1-node": "SH03", "row-1-name": ""}, "请填写分店 SH03 的名称。"),
    ({"row-1-node": "", "row-1-name": "徐家汇店"},
     "名称“徐家汇店”没有填分店号：请填上，或删除这一行。"),
])
async def test_a_branch_name_cleared_is_said_not_dropped(
        counter_app: CounterApp, typed: dict[str, object], said: str) -> None:
    """SH02's name cleared (or its node id) was saved as SH02 without a name, "已保存" and
    not a word of it: every receipt, report and settlement then showed the bare id."""
    app = counter_app
    await app.login(*OWNER)
    await saving(app, "/admin/branches", typed, said)
    assert app.ledger.rule("branches") == {"SH01": "南京西路店", "SH02": "徐家汇店"}


async def test_a_branch_name_is_removed_by_deleting_its_row(counter_app: CounterApp) -> None:
    """Removing a closed branch's name stays possible: its row's delete button, said."""
    app = counter_app
    await app.login(*OWNER)
    await app.user.open("/admin/branches")
    assert app.user.find(marker="row-1-node").elements.pop().value == "SH02"
    app.user.find(marker="row-1-delete").click()
    app.user.find(marker="save-rules").click()
    await app.user.should_see("已保存，所有分店同步生效；已去掉分店 SH02 的名称", retries=100)
    assert app.ledger.rule("branches") == {"SH01": "南京西路店"}


@pytest.mark.parametrize(("path", "typed", "said"), [
    ("/admin/services", {"row-0-code": "足疗"},
     "项目代码“足疗”只能是 1 到 20 个字母、数字、_ 或 -（不能有汉字或空格）。"),
    ("/admin/services", {"row-0-name": "足疗\x1bp"},
     "规则里的文字不能有控制字符（换行、打印机或终端命令）：请重新输入。"),
    # Turned around on every counter button and receipt, as a level's name was.
    ("/admin/services", {"row-0-name": "\u202e疗足"},
     "规则里的文字不能有方向控制字符（会把后面的字倒过来显示）：请重新输入。"),
    ("/admin/payments", {"row-0-name_zh": "\u202e金现"},
     "规则里的文字不能有方向控制字符（会把后面的字倒过来显示）：请重新输入。"),
    ("/admin/services", {"row-0-price": "77", "生效日期": "2026-02-30"},
     "生效日期要写成 2026-11-23 这样的日期（半角数字）。"),
    ("/admin/levels", {"row-1-discount": "1.5"}, "折扣要在 0.01 到 1 之间。"),
    ("/admin/levels", {"row-1-discount": ""}, "折扣要填 0.95 这样的数（半角数字）。"),
    ("/admin/levels", {"row-1-name": "长" * 10000},
     "等级名称要 1 到 40 个字，不能只有空格或看不见的字符，也不能有方向控制字符。"),
    ("/admin/levels", {"row-1-points_multiplier": "0.0000001"},
     "折扣和积分倍数要写成 0.95 这样的数：最多 6 位小数。"),
    ("/admin/levels", {"积分有效天数（0 = 不过期）": "-1"},
     "“积分有效天数”要填整数（半角数字），例如 365。"),
    ("/admin/levels", {"积分有效天数（0 = 不过期）": "36501"},
     "“积分有效天数”要在 0 到 36500 之间（0 = 不过期）。"),
    ("/admin/levels", {"多少积分换 1 元": "0"}, "“多少积分换 1 元”要大于零。"),
    ("/admin/levels", {"多少积分换 1 元": "99999999"},
     "“多少积分换 1 元”要填 1 到 1000000 之间的整数。"),
    ("/admin/levels", {"每消费 1 元得积分": "1001"}, "“每消费 1 元得积分”要在 0 到 1000 之间。"),
    ("/admin/promotions", {"row-0-name": "长" * 10000, "row-0-min": "500",
                           "row-0-bonus": "30"}, "促销名称太长了：最多 40 个字。"),
    ("/admin/branches", {"row-0-node": "SH 01"},
     "分店号“SH 01”只能是 1 到 16 个大写字母、数字或 _，例如 SH01。"),
    ("/admin/branches", {"row-0-name": "\u202e店"},
     "分店 SH01 的名称要 1 到 40 个字，不能只有空格或看不见的字符，也不能有方向控制字符。"),
    ("/admin/payments", {"row-0-code": "现金"},
     "收款方式代码“现金”要以小写字母开头，只能用 1 到 16 个小写字母、数字或 _，例如 wechat。"),
    ("/admin/payments", {"row-1-code": "cash"}, "收款方式代码 cash 出现了两次：每种方式只写一行。"),
    ("/admin/payments", {"row-0-name_zh": "长" * 10000},
     "收款方式 cash 的中文名太长了：最多 40 个字。"),
])
async def test_a_malformed_rule_is_said_in_chinese(counter_app: CounterApp, path: str,
                                                   typed: dict[str, object], said: str) -> None:
    app = counter_app
    await app.login(*OWNER)
    if path == "/admin/promotions":  # a row to type into
        app.ledger.set_rule(app.node_owner, "promotions",
                            [{"name": "充500送30", "min": 50000, "bonus": 3000}])
    await saving(app, path, typed, said)


ACTIVITY = {"act-code": "OPEN", "act-name": "开业签到", "act-from": "2026-12-01T09:00",
            "act-to": "2026-12-31T21:00"}


@pytest.mark.parametrize(("typed", "said"), [
    ({"act-from": ""}, "开始时间要写成 2026-12-03T09:00 这样（半角数字，日期和时间之间用 T）。"),
    ({"act-to": "2026-12-31 21:00"},
     "结束时间要写成 2026-12-03T09:00 这样（半角数字，日期和时间之间用 T）。"),
    ({"act-from": "2026-12-31T21:00", "act-to": "2026-12-01T09:00"}, "结束时间要晚于开始时间。"),
    ({"act-from": "2026-13-01T09:00"},
     "开始时间 2026-13-01T09:00 不是日历上有的时间：要写成 2026-12-03T09:00 这样。"),
    ({"act-code": "开业"}, "活动代码只能是 1 到 20 个字母、数字、_ 或 -（不能有汉字或空格）。"),
    ({"act-code": "A" * 40}, "代码太长了：最多 20 个字。"),
    ({"act-name": "\u3000 "}, "请填写活动名称（不能只有空格）。"),  # not "姓名", a member's
])
async def test_a_malformed_activity_is_said_in_chinese(
        counter_app: CounterApp, typed: dict[str, object], said: str) -> None:
    app = counter_app
    await app.login(*OWNER)
    await saving(app, "/checkin", {**ACTIVITY, **typed}, said, save="act-save")
    assert app.ledger.activities() == {}


async def test_the_english_page_keeps_the_english(counter_app: CounterApp) -> None:
    app = counter_app
    await app.login(*OWNER)
    await app.user.open("/admin/levels")
    app.user.find(marker="lang").click()
    await saving(app, "/admin/levels", {"row-2-threshold": "0"},
                 "Levels “普通会员” and “金卡” both start at ¥0.00: give each level a "
                 "threshold of its own.")
