"""The counter's shop operations (issue 15, part 3), driven as a cashier would,
against a real node and store: the member on screen following the chain, the consume
dialog starting on the member's favourite service, a scanned service code, refusals
that go once fixed, goods sold to members and walk-in customers, coupons.

Card swipes and scans come through the ScriptedReader FAKE; the node, its SQLite
store and the library's checks are real. Another branch is a second store of the
same chain, its records brought by a sync file, as a branch without a network would.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from app_fixtures import CASHIER, OWNER, CounterApp
from nicegui.elements.mixins.value_element import ValueElement
from test_app_counter import CARD, member_with_card, swipe
from test_app_office import second_store

from crdtledger.ledger import Ledger
from crdtledger.syncfile import export_file, import_file

pytestmark = pytest.mark.asyncio

SETTLE = 50  # should_see/should_not_see retries: what follows a change comes a moment later


def from_another_branch(app: CounterApp, tmp_path: Path, write: object) -> None:
    """SH02 gets this branch's records, writes (`write(ledger)`), and its records come
    back by sync file: the counter hears of them as of any record a peer brings."""
    export_file(app.ledger, tmp_path / "to-sh02.crdtsync")
    other = second_store(tmp_path / "sh02", tmp_path / "chain")
    try:
        import_file(other, tmp_path / "to-sh02.crdtsync")
        assert callable(write)
        write(other)
        export_file(other, tmp_path / "from-sh02.crdtsync")
    finally:
        other.close()
    import_file(app.ledger, tmp_path / "from-sh02.crdtsync")


def choose(app: CounterApp, marker: str, value: str) -> None:
    """Pick an option of a radio or select by its value, as a click on it would."""
    client = app.user.client
    assert client is not None
    with client:
        for el in app.user.find(marker=marker).elements:
            assert isinstance(el, ValueElement)
            el.set_value(value)


# --- the member on screen follows the chain ---------------------------------------------


async def test_a_top_up_at_another_branch_shows_without_a_click(
        counter_app: CounterApp, tmp_path: Path) -> None:
    app = counter_app
    mid = member_with_card(app, cash=50000)
    await app.login(*CASHIER)
    await swipe(app)
    await app.user.should_see("¥500.00")

    def top_up(sh02: Ledger) -> None:
        sh02.topup(sh02.owner, mid, 10000)

    from_another_branch(app, tmp_path, top_up)
    # Nothing clicked, nothing searched: the panel follows the records SH02 sent.
    await app.user.should_see(marker="balance-cash", content="¥600.00", retries=SETTLE)
    await app.user.should_see("徐家汇店")  # the visit's branch in the last visits


async def test_a_card_reported_lost_elsewhere_turns_red_on_screen(
        counter_app: CounterApp) -> None:
    app = counter_app
    mid = member_with_card(app, cash=50000)
    await app.login(*CASHIER)
    await swipe(app)
    await app.user.should_not_see(marker="card-lost")
    # Written to the store from outside the page (another till's API, the shell...).
    app.ledger.report_lost(app.node_owner, CARD)
    await app.user.should_see(marker="card-lost", retries=SETTLE)
    app.ledger.debit(app.node_owner, mid, amount=1000, pay="cash")
    await app.user.should_see("¥10.00", retries=SETTLE)  # the visit paid at the till


# --- the consume dialog and scanned codes -----------------------------------------------


async def test_the_consume_dialog_starts_on_the_favourite_service(
        counter_app: CounterApp) -> None:
    app = counter_app
    mid = member_with_card(app, cash=50000)
    app.ledger.edit_member(app.node_owner, mid, prefs={"service": "全身按摩"})
    await app.login(*CASHIER)
    await swipe(app)
    app.user.find(marker="consume").click()
    await app.user.should_see("原价 ¥198.00")  # BODY90, by the name in the preferences


async def test_without_a_preference_the_most_used_service(counter_app: CounterApp) -> None:
    app = counter_app
    mid = member_with_card(app, cash=50000)
    for _ in range(2):
        app.ledger.debit(app.node_owner, mid, service="HAIR")
    app.ledger.debit(app.node_owner, mid, service="FOOT60")
    await app.login(*CASHIER)
    await swipe(app)
    app.user.find(marker="consume").click()
    await app.user.should_see("原价 ¥68.00")


async def test_a_member_with_uses_left_pays_with_the_package(counter_app: CounterApp) -> None:
    app = counter_app
    mid = member_with_card(app, cash=50000)
    app.ledger.sell_package(app.node_owner, mid, "FOOT60", 10, 100000, pay="cash")
    await app.login(*CASHIER)
    await swipe(app)
    app.user.find(marker="consume").click()
    await app.user.should_see("用套餐 1 次（剩 10 次）")
    app.user.find(marker="consume-ok").click()
    await app.user.should_see("足疗 60 分钟 ×9", retries=SETTLE)


async def test_a_service_code_typed_or_scanned_opens_its_sale(counter_app: CounterApp) -> None:
    app = counter_app
    member_with_card(app, cash=50000)
    await app.login(*CASHIER)
    # No member on screen: the code is not a member's name, and it says what to do.
    app.user.find(marker="search").type("BODY90")
    app.user.find(marker="search-go").click()
    await app.user.should_see("请先刷会员卡")
    await app.user.should_not_see("没有找到会员")
    await swipe(app)
    app.user.find(marker="search").type("body90")  # as a scanner typing into the box
    app.user.find(marker="search-go").click()
    await app.user.should_see("原价 ¥198.00")
    app.reader.scan("HAIR")  # a scanner that reports as a reader
    await app.user.should_see("原价 ¥68.00")


# --- refusals go once fixed --------------------------------------------------------------


async def test_an_amount_refusal_goes_once_the_amount_is_valid(counter_app: CounterApp) -> None:
    app = counter_app
    mid = member_with_card(app)
    await app.login(*CASHIER)
    await swipe(app)
    app.user.find(marker="topup").click()
    app.user.find(marker="amount").type("12.345")
    app.user.find(marker="topup-ok").click()
    await app.user.should_see("金额不对")
    app.user.find(marker="amount").clear().type("abc")  # changed, still wrong: it stays
    await app.user.should_see("金额不对")
    app.user.find(marker="amount").clear().type("100")
    await app.user.should_not_see("金额不对", retries=SETTLE)  # the line and the toast
    app.user.find(marker="topup-ok").click()
    await app.user.should_see("已充值 ¥100.00")
    assert app.ledger.balance(mid)["cash"] == 10000


async def test_a_refusal_goes_once_the_cashier_changes_the_sale(
        counter_app: CounterApp) -> None:
    app = counter_app
    mid = member_with_card(app, cash=1000)
    await app.login(*CASHIER)
    await swipe(app)
    app.user.find(marker="consume").click()
    app.user.find(marker="consume-ok").click()
    await app.user.should_see("余额不足")
    choose(app, "pay", "cash")  # the member pays at the till instead
    await app.user.should_not_see("余额不足", retries=SETTLE)
    app.user.find(marker="consume-ok").click()
    await app.user.should_see("已消费 足疗 60 分钟")
    assert app.ledger.balance(mid)["cash"] == 1000  # the card untouched


async def test_a_refusal_goes_when_the_dialog_closes(counter_app: CounterApp) -> None:
    app = counter_app
    member_with_card(app, cash=1000)
    await app.login(*OWNER)
    await swipe(app)
    app.user.find(marker="consume").click()
    app.user.find(marker="consume-ok").click()
    await app.user.should_see("余额不足")
    app.user.find("取消").click()
    await app.user.should_not_see("余额不足", retries=SETTLE)
