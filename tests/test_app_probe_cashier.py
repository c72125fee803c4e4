"""A cashier (or someone who is no longer one) trying what the counter's buttons do not
offer: back-office pages opened by their address, downloads from a page left open,
a counter tab used after its session ended, and amounts and quantities no button
suggests. NiceGUI's simulated user against the real app on a real node and store;
after each refusal the store is exactly as it was (`helpers.snapshot`).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from app_fixtures import CASHIER, OWNER, CounterApp
from helpers import snapshot
from nicegui import ui
from nicegui.element import Element
from nicegui.testing.user import User
from test_app_counter import member_with_card, swipe

pytestmark = pytest.mark.asyncio

PHONE = "13812345678"  # test_app_counter.member_with_card's
MANAGER = ("manager1", "manager-secret")

# Every page a cashier's role does not open (reference_app.backoffice, admin).
OFFICE_PAGES = ["/office", "/office/ranking", "/office/goods", "/office/topups",
                "/office/settlement", "/office/movements", "/office/members", "/office/audit",
                "/office/duplicates"]
ADMIN_PAGES = ["/admin/operators", "/admin/roles", "/admin/services", "/admin/levels",
               "/admin/promotions", "/admin/branches", "/admin/payments",
               "/admin/corrections"]
# What none of those pages may hand a cashier: their controls and downloads.
CONTROLS = ["export-members", "export-movements", "export-packages", "erase-query", "erase",
            "corr-query", "corr-submit", "sync-export", "sync-import", "backup", "audit"]


async def log_out_in_another_tab(app: CounterApp) -> None:
    """Another tab of the same browser (the same session cookie, so the same session)
    logs out."""
    other = User(app.user.http_client)
    await other.open("/")
    other.find(marker="logout").click()
    await other.should_see(marker="login")


async def forced_into_the_dialog(app: CounterApp, mid: str, opener: str, marker: str,
                                 kind: type[Element], value: object,
                                 ok: str = "consume-ok") -> None:
    """Open a dialog by `opener`, set its `marker` field to `value` as a socket event
    would (past what the field offers) and confirm by `ok`: refused, the store as it
    was."""
    before = snapshot(app.ledger, [mid])
    app.user.find(marker=opener).click()
    field = next(iter(app.user.find(marker=marker).elements))
    assert isinstance(field, kind)
    field.value = value  # type: ignore[attr-defined]
    app.user.find(marker=ok).click()
    await app.user.should_see(marker="dialog-error")
    await asyncio.sleep(0.3)
    assert snapshot(app.ledger, [mid]) == before


# --- pages opened by their address ------------------------------------------------------


@pytest.mark.parametrize("path", OFFICE_PAGES + ADMIN_PAGES)
async def test_a_cashier_typing_a_back_office_address_gets_a_notice_not_the_page(
        counter_app: CounterApp, path: str) -> None:
    app = counter_app
    member_with_card(app, cash=12300)
    await app.login(*CASHIER)
    await app.user.open(path)
    await app.user.should_see("您没有打开")
    # Neither data (a member, the operators, the figures) nor a control of the page.
    for text in ("张伟", PHONE, "138****5678", "¥123.00", "123.00", OWNER[0]):
        await app.user.should_not_see(text, retries=1)
    for marker in CONTROLS:
        await app.user.should_not_see(marker=marker, retries=1)


async def test_the_sync_page_shows_a_cashier_no_file_or_backup_controls(
        counter_app: CounterApp) -> None:
    app = counter_app
    await app.login(*CASHIER)
    await app.user.open("/office/sync")
    await app.user.should_see("分店同步状态")
    for marker in ("sync-export", "sync-import", "backup"):
        await app.user.should_not_see(marker=marker, retries=1)


@pytest.mark.parametrize("path", ["/", "/office/sync", "/bookings", "/checkin",
                                  "/office/referrals", "/office/exits", *OFFICE_PAGES,
                                  *ADMIN_PAGES])
async def test_nobody_logged_in_is_sent_to_the_login(counter_app: CounterApp,
                                                     path: str) -> None:
    app = counter_app
    member_with_card(app, cash=12300)
    await app.user.open(path)
    await app.user.should_see(marker="login")
    for text in ("张伟", PHONE, "¥123.00"):
        await app.user.should_not_see(text, retries=1)


# --- a page left open after its session ended ----------------------------------------------


async def manager_on_the_sync_page(app: CounterApp) -> str:
    manager = app.ledger.add_operator(app.node_owner, *MANAGER, roles=["manager"])
    await app.login(*MANAGER)
    await app.user.open("/office/sync")
    await app.user.should_see(marker="sync-export")
    return manager


@pytest.mark.parametrize("change", [{"active": False}, {"password": "another-secret"}])
async def test_a_sync_file_from_a_page_left_open_needs_a_session_still(
        counter_app: CounterApp, change: dict[str, Any]) -> None:
    """The manager is deactivated, or their password reset (the shop's answer to a
    password that leaked): the sync page still open in their browser exports nothing.
    The library reads a missing operator as the node's owner at its console, so the
    page must not hand it one."""
    app = counter_app
    member_with_card(app, cash=12300)
    manager = await manager_on_the_sync_page(app)
    app.ledger.set_operator(app.node_owner, manager, **change)
    app.user.find(marker="sync-export").click()
    with pytest.raises(TimeoutError):
        await app.user.download.next(timeout=1.0)


async def test_a_sync_file_after_logging_out_in_another_tab_is_refused(
        counter_app: CounterApp) -> None:
    app = counter_app
    await manager_on_the_sync_page(app)
    await log_out_in_another_tab(app)
    app.user.find(marker="sync-export").click()
    with pytest.raises(TimeoutError):
        await app.user.download.next(timeout=1.0)


async def test_a_password_reset_ends_the_counter_session(counter_app: CounterApp) -> None:
    """As the API's tokens end (tests/test_sessions_end.py): a cashier whose password the
    owner reset is logged out of the counter too, not kept on until the cookie goes."""
    app = counter_app
    member_with_card(app, cash=50000)
    await app.login(*CASHIER)
    app.ledger.set_operator(app.node_owner, app.cashier_id, password="a-new-secret")
    await app.user.open("/")
    await app.user.should_see(marker="login")
    await app.user.should_not_see(marker="search", retries=1)


async def test_a_cashier_fired_and_taken_back_signs_in_again(counter_app: CounterApp) -> None:
    """A session rests on the operator's password and active flag: a cashier deactivated
    and later made active again found the till he had left open signed in, the digest
    being what it was before. A deactivation ends it for good."""
    app = counter_app
    await app.login(*CASHIER)
    app.ledger.set_operator(app.node_owner, app.cashier_id, active=False)
    app.ledger.set_operator(app.node_owner, app.cashier_id, active=True)
    await app.user.open("/")
    await app.user.should_see(marker="login")
    await app.user.should_not_see(marker="search", retries=1)


async def test_a_counter_tab_left_open_after_logging_out_sells_nothing(
        counter_app: CounterApp) -> None:
    app = counter_app
    mid = member_with_card(app, cash=50000)
    await app.login(*CASHIER)
    await swipe(app)
    await log_out_in_another_tab(app)
    before = snapshot(app.ledger, [mid])
    app.user.find(marker="consume").click()
    app.user.find(marker="consume-ok").click()
    await asyncio.sleep(0.5)
    assert snapshot(app.ledger, [mid]) == before
    await app.user.should_see(marker="login")


async def test_a_counter_tab_left_open_after_a_password_reset_sells_nothing(
        counter_app: CounterApp) -> None:
    app = counter_app
    mid = member_with_card(app, cash=50000)
    await app.login(*CASHIER)
    await swipe(app)
    app.ledger.set_operator(app.node_owner, app.cashier_id, password="a-new-secret")
    before = snapshot(app.ledger, [mid])
    app.user.find(marker="consume").click()
    app.user.find(marker="consume-ok").click()
    await asyncio.sleep(0.5)
    assert snapshot(app.ledger, [mid]) == before


async def test_a_counter_tab_left_open_after_logging_out_finds_no_member(
        counter_app: CounterApp) -> None:
    app = counter_app
    member_with_card(app, cash=50000)
    await app.login(*CASHIER)
    await log_out_in_another_tab(app)
    app.user.find(marker="search").type("5678")
    app.user.find(marker="search-go").click()
    await asyncio.sleep(0.3)
    await app.user.should_not_see(marker="member-name", retries=1)
    await app.user.should_not_see("张伟", retries=1)


# --- inputs the buttons do not offer -------------------------------------------------------


@pytest.mark.parametrize("qty", [-3, 10**30, 2**64, 1.5e300])
async def test_quantities_set_past_the_field_sell_nothing(counter_app: CounterApp,
                                                          qty: float) -> None:
    """The browser sends a quantity the field's min and max would not let a cashier
    type (the page's value set as a socket event sets it)."""
    app = counter_app
    mid = member_with_card(app, cash=50000)
    await app.login(*CASHIER)
    await swipe(app)
    await forced_into_the_dialog(app, mid, "consume", "qty", ui.number, qty)


@pytest.mark.parametrize("value", [["100.00"], {"a": 1}, 100])
async def test_an_amount_set_to_what_is_not_text_is_refused(counter_app: CounterApp,
                                                            value: object) -> None:
    """A top-up's amount box set to a list, a dict or a number by a socket event: a
    sentence, not a handler's traceback."""
    app = counter_app
    mid = member_with_card(app, cash=50000)
    await app.login(*CASHIER)
    await swipe(app)
    await forced_into_the_dialog(app, mid, "topup", "amount", ui.input, value, "topup-ok")
    await app.user.should_see("typed as text")


@pytest.mark.parametrize("method", ["stored", "package", "bogus", "", "STORED"])
async def test_a_payment_method_the_dialog_does_not_offer_is_refused(
        counter_app: CounterApp, method: str) -> None:
    """A walk-in customer's dialog offers only the till's methods; one forced into the
    radio (its value set as a socket event sets it) writes nothing."""
    app = counter_app
    mid = member_with_card(app, cash=50000)
    await app.login(*CASHIER)
    await forced_into_the_dialog(app, mid, "walk-in-service", "pay", ui.radio, method)


async def test_a_refund_larger_than_its_debit_is_refused(counter_app: CounterApp) -> None:
    app = counter_app
    mid = member_with_card(app, cash=50000)
    app.ledger.debit(app.node_owner, mid, amount=1000)
    await app.login(*OWNER)
    await swipe(app)
    before = snapshot(app.ledger, [mid])
    app.user.find(marker="refund").click()
    app.user.find(marker="refund-amount").clear().type("10.01")
    app.user.find(marker="refund-ok").click()
    await app.user.should_see(marker="dialog-error")
    await asyncio.sleep(0.3)
    assert snapshot(app.ledger, [mid]) == before


# --- the twelfth wave's counter probe ------------------------------------------------


async def test_a_correction_without_a_purse_chosen_corrects_nothing(counter_app: CounterApp
                                                                    ) -> None:
    """The purse select set to what it does not offer reads None, and the operation's
    default purse (stored value) was corrected instead, the page saying 已调账."""
    app = counter_app
    mid = member_with_card(app, cash=500_000)
    await app.login(*OWNER)
    await app.user.open("/admin/corrections")
    app.user.find(marker="corr-query").type("张伟")
    app.user.find(marker="corr-find").click()
    await asyncio.sleep(0.3)
    app.user.find(marker="corr-pick").click()
    before = snapshot(app.ledger, [mid])
    [purse] = [e for e in app.user.find(ui.select).elements
               if "points" in getattr(e, "options", {})]
    purse.value = "pkg:FOOT60"  # not offered: the select clears itself
    app.user.find(marker="corr-change").type("3")
    app.user.find(marker="corr-reason").type("找零记错")
    app.user.find(marker="corr-submit").click()
    await app.user.should_see("请选择账户")
    assert snapshot(app.ledger, [mid]) == before


async def test_deciding_ones_own_application_says_another_operator_must(
        counter_app: CounterApp) -> None:
    """The owner applied for a member's exit and clicked 批准 on it: refused, rightly,
    but the page said "you are not allowed; ask a manager" to the owner."""
    app = counter_app
    mid = member_with_card(app, cash=12_300)
    await app.login(*OWNER)
    await app.user.open("/office/exits")
    app.user.find(marker="exit-member").type(mid)
    app.user.find(marker="exit-reason").type("搬家")
    app.user.find(marker="exit-apply").click()
    await asyncio.sleep(0.5)
    application = str(app.ledger.exits()[0]["application"])
    await app.user.open("/office/exits")
    app.user.find(marker=f"exit-approve-{application}").click()
    await app.user.should_see("这一步要由另一位操作员来做")
    assert app.ledger.exits()[0]["status"] == "pending"


async def test_a_price_list_cell_set_to_nothing_is_refused_in_a_sentence(
        counter_app: CounterApp) -> None:
    """A cell set to None (by the page's socket) raised AttributeError in the save
    handler: no sentence, only a traceback in the log."""
    app = counter_app
    await app.login(*OWNER)
    await app.user.open("/admin/services")
    before = app.ledger.rule("services")
    app.user.find(marker="row-0-price").elements.pop().value = None
    app.user.find(marker="save-rules").click()
    await app.user.should_see("金额不对")
    assert app.ledger.rule("services") == before
