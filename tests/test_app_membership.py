"""The membership pages (reference_app/membership_pages.py) as operators use them, under
NiceGUI's simulated user against a real node and store: check-in by a card swiped at
the reader (a ScriptedReader, the FAKE the counter tests drive), referrals approved at
two levels by two operators, and a member's exit and return."""

from __future__ import annotations

import threading

import pytest
from app_fixtures import CASHIER, OWNER, CounterApp, downloaded, parse_csv
from nicegui import ui

pytestmark = pytest.mark.asyncio

MANAGER = ("manager1", "manager-secret")
# Open for years either side of today: the store runs on the real clock.
ACTIVITY = {"name": "晨练打卡", "from": "2020-01-01T00:00", "to": "2099-01-01T00:00",
            "points": 10, "repeat": "daily", "per_day": 1}


def seed(app: CounterApp) -> tuple[str, str]:
    ledger, op = app.ledger, app.node_owner
    ledger.add_operator(op, *MANAGER, roles=["manager"])
    old = ledger.add_member(op, name="老王", phone="13800000001")
    new = ledger.add_member(op, name="小李", phone="13800000002")
    ledger.issue_card(op, new, "CARD-LI")
    return old, new


async def test_a_swiped_card_checks_in_once_a_day_and_the_report_exports(
        counter_app: CounterApp) -> None:
    app = counter_app
    _, new = seed(app)
    app.ledger.set_activity(app.node_owner, "MORNING", ACTIVITY)
    await app.login(*CASHIER)
    await app.user.open("/checkin")
    await app.user.should_see(marker="activity")
    app.reader.insert("CARD-LI")
    await app.user.should_see("小李", retries=50)
    await app.user.should_see("+10", retries=50)
    assert app.ledger.balance(new)["points"] == 10
    # the same card again: refused, with the sentence, and nothing written
    before = app.ledger.history(new, 10)
    app.reader.remove()
    app.reader.insert("CARD-LI")
    await app.user.should_see("already", retries=50)
    assert app.ledger.history(new, 10) == before
    # a cashier does not see reports; the owner does, and exports them
    await app.logout()
    await app.login(*OWNER)
    await app.user.open("/checkin")
    rows = [r for t in app.user.find(ui.table).elements for r in t.rows]
    assert [(r["name"], r["points"]) for r in rows] == [("小李", 10)]
    csv_rows = parse_csv(await downloaded(app, "export-attendance"))
    assert csv_rows[0][:3] == ["day", "time", "branch"] and csv_rows[1][4] == "小李"


async def test_a_card_from_the_readers_thread_checks_in_as_the_pages_operator(
        counter_app: CounterApp) -> None:
    """A PC/SC reader reports from its own thread (readers.PcscReaders), through the
    loop, with no browser request: the check-in page took no session for it, found no
    operator and wrote nothing, saying nothing (the scripted reader, called on the
    loop in the test above, carries the test's session)."""
    app = counter_app
    _, new = seed(app)
    app.ledger.set_activity(app.node_owner, "MORNING", ACTIVITY)
    await app.login(*CASHIER)
    await app.user.open("/checkin")
    await app.user.should_see(marker="activity")
    # Opened in the browser that held the reader: the check-in page holds it now.
    assert len(app.shop.listeners.holder()) == 1
    reader = threading.Thread(target=app.reader.insert, args=("CARD-LI",))
    reader.start()
    reader.join()
    await app.user.should_see("+10", retries=50)
    [checkin] = [e for e in app.ledger.history(new, 10) if e["kind"] == "checkin"]
    assert checkin["op"] == app.cashier_id


async def test_typed_check_in_refused_outside_the_window(counter_app: CounterApp) -> None:
    app = counter_app
    _, new = seed(app)
    app.ledger.set_activity(app.node_owner, "OLD", {**ACTIVITY, "to": "2021-01-01T00:00"})
    await app.login(*CASHIER)
    await app.user.open("/checkin")
    app.user.find(marker="checkin-who").type("13800000002")
    app.user.find(marker="checkin-go").click()
    await app.user.should_see("runs from", retries=50)
    assert app.ledger.balance(new)["points"] == 0


async def test_referral_two_levels_by_two_operators(counter_app: CounterApp) -> None:
    app = counter_app
    old, _ = seed(app)
    app.ledger.set_rule(app.node_owner, "referral", {"reward": "points", "points": 300})
    await app.login(*CASHIER)
    await app.user.open("/office/referrals")
    app.user.find(marker="ref-member").type("13800000002")
    app.user.find(marker="ref-referrer").type("13800000001")
    app.user.find(marker="ref-add").click()
    await app.user.should_see("待一级审批", retries=50)
    [ref] = app.ledger.referrals()
    rid = ref["referral"]
    await app.user.should_not_see(marker=f"approve1-{rid}")  # a cashier approves nothing
    await app.logout()
    await app.login(*MANAGER)
    await app.user.open("/office/referrals")
    app.user.find(marker=f"approve1-{rid}").click()
    await app.user.should_see("待二级审批", retries=50)
    # the same manager cannot give level 2: refused, nothing granted
    app.user.find(marker=f"approve2-{rid}").click()
    await app.user.should_see("请找店长", retries=50)
    assert app.ledger.referral_view(rid)["status"] == "approved1"
    await app.logout()
    await app.login(*OWNER)
    await app.user.open("/office/referrals")
    app.user.find(marker=f"approve2-{rid}").click()
    await app.user.should_see("已发放奖励", retries=50)
    assert app.ledger.balance(old)["points"] == 300


async def test_exit_approved_by_another_then_return(counter_app: CounterApp) -> None:
    app = counter_app
    _, new = seed(app)
    app.ledger.topup(app.node_owner, new, 10000)
    await app.login(*CASHIER)
    await app.user.open("/office/exits")
    app.user.find(marker="exit-member").type("13800000002")
    app.user.find(marker="exit-reason").type("搬家")
    app.user.find(marker="exit-apply").click()
    await app.user.should_see("待审核", retries=50)
    [v] = app.ledger.exits()
    aid = v["application"]
    await app.user.should_not_see(marker=f"exit-approve-{aid}")  # a cashier cannot decide
    await app.logout()
    await app.login(*MANAGER)
    await app.user.open("/office/exits")
    app.user.find(marker=f"exit-approve-{aid}").click()
    await app.user.should_see("已批准", retries=50)
    await app.user.should_see("¥100.00", retries=50)
    assert app.ledger.balance(new)["cash"] == 0
    assert app.ledger.find_members("小李") == []
    # the counter's search does not find them any more
    await app.user.open("/")
    app.user.find(marker="search").type("13800000002").trigger("keydown.enter")
    await app.user.should_not_see("小李")
    await app.user.open("/office/exits")
    app.user.find(marker=f"return-{new}").click()
    await app.user.should_see("会员回来了", retries=50)
    [back, _] = app.ledger.exits()
    assert back["step"] == "return"
    await app.logout()
    await app.login(*OWNER)
    await app.user.open("/office/exits")
    app.user.find(marker=f"exit-approve-{back['application']}").click()
    await app.user.should_see(marker="no-exited", retries=50)  # nobody has left now
    assert [m["id"] for m in app.ledger.find_members("小李")] == [new]


@pytest.mark.parametrize(("points", "per_day", "said"), [
    (2.5, 1, "积分的写法不对"), (10, 0, "每天次数要填正整数。"), (10, 1.9, "每天次数要填正整数。")])
async def test_an_activity_with_numbers_nobody_typed_is_refused(
        counter_app: CounterApp, points: float, per_day: float, said: str) -> None:
    """int() saved 2 points for 2.5 and one check-in a day for 0 or 1.9, and said saved.
    Said in Chinese (the library's English followed "输入有误：")."""
    app = counter_app
    await app.login(*OWNER)
    await app.user.open("/checkin")
    for marker, typed in (("act-code", "X"), ("act-name", "x"), ("act-from", "2026-12-01T09:00"),
                          ("act-to", "2026-12-31T21:00")):
        app.user.find(marker=marker).type(typed)
    for marker, value in (("act-points", points), ("act-per-day", per_day)):
        box = app.user.find(marker=marker).elements.pop()
        assert isinstance(box, ui.number)
        box.set_value(value)
    app.user.find(marker="act-save").click()
    await app.user.should_see(said, retries=50)
    assert "X" not in app.ledger.activities()
