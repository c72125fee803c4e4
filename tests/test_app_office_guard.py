"""The back office's write buttons run once at a time (reference_app.layout.once), as
the counter's confirm buttons do: a double click on a correction or an approval
writes once. NiceGUI's simulated user against a real node and store.

A write here takes milliseconds, so the second click of a quick double click would
often find the first done and its form cleared; the one that writes twice is the
click that comes while the first still waits for the node (fetching another branch's
rights, or a slow disk). The tests make that wait real: the node's `perform` sleeps
before it runs the write, as it does while it asks a peer for rights.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

import pytest
from app_fixtures import OWNER, CounterApp
from helpers import log_rows
from nicegui import ui
from nicegui.testing.user import User

from crdtledger.ledger import Ledger

pytestmark = pytest.mark.asyncio

T = TypeVar("T")
MANAGER = ("manager1", "manager-secret")
WAIT_S = 0.3  # the node's wait before the write: both clicks land inside it


def slow_node(app: CounterApp, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The node's writes wait WAIT_S before they run; returns the names of the writes
    begun, in order."""
    node = app.shop.node
    real = node.perform
    begun: list[str] = []

    async def perform(op: Callable[[], T], name: str | None = None) -> T:
        begun.append(name or "")
        await asyncio.sleep(WAIT_S)
        return await real(op, name)

    monkeypatch.setattr(node, "perform", perform)
    return begun


def corrections(ledger: Ledger, member: str) -> list[dict[str, Any]]:
    return [e for e in ledger.history(member) if e["kind"] == "correction"]


async def test_a_double_click_on_a_correction_corrects_once(
        counter_app: CounterApp, monkeypatch: pytest.MonkeyPatch) -> None:
    app = counter_app
    ledger = app.ledger
    mid = ledger.add_member(app.node_owner, name="王芳", phone="13812345678")
    ledger.topup(app.node_owner, mid, 50000)
    await app.login(*OWNER)
    await app.user.open("/admin/corrections")
    app.user.find(marker="corr-query").type("13812345678")
    app.user.find(marker="corr-find").click()
    app.user.find(marker="corr-pick").click()
    await app.user.should_see("储值 ¥500.00")
    app.user.find(marker="corr-change").type("-50")  # below the approval limit
    app.user.find(marker="corr-reason").type("多充了")
    begun = slow_node(app, monkeypatch)
    submit = app.user.find(marker="corr-submit")
    submit.click()
    submit.click()
    await app.user.should_see("已调账", retries=50)
    await asyncio.sleep(2 * WAIT_S)  # a second correction, had it begun, would be done
    assert begun == ["correction"]
    assert ledger.balance(mid)["cash"] == 50000 - 5000
    assert len(corrections(ledger, mid)) == 1
    # The button works again once the first is done: a second correction on purpose.
    app.user.find(marker="corr-change").type("-10")
    app.user.find(marker="corr-reason").type("再调一次")
    submit.click()
    await app.user.should_see("储值 ¥440.00", retries=50)
    assert len(corrections(ledger, mid)) == 2


async def test_a_double_click_on_an_approval_approves_once(
        counter_app: CounterApp, monkeypatch: pytest.MonkeyPatch) -> None:
    app = counter_app
    ledger, op = app.ledger, app.node_owner
    ledger.add_operator(op, *MANAGER, roles=["manager"])
    old = ledger.add_member(op, name="老王", phone="13800000001")
    new = ledger.add_member(op, name="小李", phone="13800000002")
    ledger.set_rule(op, "referral", {"reward": "points", "points": 300})
    rid = ledger.refer(op, new, old)["id"]
    await app.login(*MANAGER)
    await app.user.open("/office/referrals")
    begun = slow_node(app, monkeypatch)
    rows = log_rows(ledger)
    approve = app.user.find(marker=f"approve1-{rid}")
    approve.click()
    approve.click()
    await app.user.should_see("待二级审批", retries=50)
    await asyncio.sleep(2 * WAIT_S)
    assert begun == ["referral.approve1"], "the second click began nothing"
    assert ledger.referral_view(rid)["status"] == "approved1"
    assert log_rows(ledger) - rows == 1, "one record written"
    # The other approver's level 2 is guarded alike.
    await app.logout()
    await app.login(*OWNER)
    await app.user.open("/office/referrals")
    begun.clear()
    approve = app.user.find(marker=f"approve2-{rid}")
    approve.click()
    approve.click()
    await app.user.should_see("已发放奖励", retries=50)
    await asyncio.sleep(2 * WAIT_S)
    assert begun == ["referral.approve2"]
    assert ledger.balance(old)["points"] == 300


async def _log_out_in_another_tab(app: CounterApp) -> None:
    other = User(app.user.http_client)
    await other.open("/")
    other.find(marker="logout").click()
    await other.should_see(marker="login")


async def test_office_pages_left_open_read_nothing_once_the_session_ended(
        counter_app: CounterApp) -> None:
    """A page's parts drawn again later (a date changed, a search) read only while its
    operator may: logged out in another tab, the daily summary redrew a top-up made
    since, and the erase card's search listed members."""
    app = counter_app
    mid = app.ledger.add_member(app.node_owner, name="张伟", phone="13812345678")
    await app.login(*OWNER)
    await app.user.open("/office")
    day_field = next(el for el in app.user.find(ui.input).elements if el.value)
    today = day_field.value
    await app.user.open("/office/members")
    await app.user.should_see(marker="erase-query")
    await _log_out_in_another_tab(app)
    app.ledger.topup(app.node_owner, mid, 77700)
    app.user.find(marker="erase-query").type("张")
    app.user.find(marker="erase-find").click()
    await app.user.should_see("您没有这项操作的权限")
    await app.user.should_not_see("138****5678", retries=1)
    # The daily summary, opened while on duty, redrawn for another day after.
    await app.user.open("/office")
    await app.user.should_see(marker="login-name")  # a new page: to the login
    await app.login(*OWNER)
    await app.user.open("/office")
    day_field = next(el for el in app.user.find(ui.input).elements if el.value)
    await _log_out_in_another_tab(app)
    app.ledger.topup(app.node_owner, mid, 11100)
    day_field.set_value("2026-01-01")
    day_field.set_value(today)
    await app.user.should_see(marker="not-allowed")
    await app.user.should_not_see("888.00", retries=1)
