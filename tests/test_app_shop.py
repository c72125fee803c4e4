"""The counter's shop operations (issue 15, part 3), driven as a cashier would,
against a real node and store: the member on screen following the chain, the consume
dialog starting on the member's favourite service, a scanned service code, refusals
that go once fixed, goods sold to members and walk-in customers, coupons.

Card swipes and scans come through the ScriptedReader FAKE; the node, its SQLite
store and the library's checks are real. Another branch is a second store of the
same chain, its records brought by a sync file, as a branch without a network would.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from app_fixtures import CASHIER, OWNER, CounterApp
from helpers import snapshot
from nicegui import ui
from nicegui.elements.mixins.value_element import ValueElement
from test_app_counter import CARD, member_with_a_gift, member_with_card, swipe
from test_app_office import second_store

from crdtledger import views
from crdtledger.goods import walk_in
from crdtledger.ledger import Ledger
from crdtledger.syncfile import export_file, import_file
from peer.printer_listener import PrinterListener
from peer.receipts import PrinterConfig, save_config

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


def choose(app: CounterApp, marker: str, value: str | None) -> None:
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


# --- goods: scanned, sold to a member or a walk-in customer ------------------------------

BARCODE = "6901234567892"


def with_goods(app: CounterApp, units: int = 10) -> None:
    """精油 at 88.00 (cost 30.00), `units` of it in this branch's stock."""
    app.ledger.add_goods(app.node_owner, "G01", "精油", 8800, 3000, barcode=BARCODE, unit="瓶")
    app.ledger.stock_in(app.node_owner, "G01", units)


def stock(app: CounterApp) -> int:
    return int(app.ledger.stock_of("G01")["qty"])


async def scanned_for_a_member(app: CounterApp) -> str:
    """A member with 500.00 on screen and 精油 scanned: the goods dialog open on it, its
    price read out; the member's id."""
    mid = member_with_card(app, cash=50000)
    with_goods(app)
    await app.login(*CASHIER)
    await swipe(app)
    app.reader.scan(BARCODE)
    await app.user.should_see("原价 ¥88.00，应付 ¥88.00，得 88 积分")
    return mid


async def test_a_scanned_barcode_sells_to_the_member_on_screen(counter_app: CounterApp) -> None:
    app = counter_app
    mid = await scanned_for_a_member(app)
    await app.user.should_see("本店库存 10瓶")
    app.user.find(marker="goods-ok").click()
    await app.user.should_see("已售 精油 ×1，实收 ¥88.00")
    bal = app.ledger.balance(mid)
    assert (bal["cash"], bal["points"], stock(app)) == (50000 - 8800, 88, 9)
    await app.user.should_see("商品 · 精油 · 储值")  # in the last visits


async def test_another_goods_item_changed_does_not_refuse_an_open_sale(
        counter_app: CounterApp) -> None:
    """Any change to the goods catalogue (another item added at head office, another's
    price) refused every open goods sale chain-wide; only the item sold prices it. Its
    own price changed still refuses."""
    app = counter_app
    mid = await scanned_for_a_member(app)
    app.ledger.add_goods(app.node_owner, "G77", "洗发水", 3800, 1500)
    app.user.find(marker="goods-ok").click()
    await app.user.should_see("已售 精油 ×1，实收 ¥88.00")
    app.reader.scan(BARCODE)
    await app.user.should_see("原价 ¥88.00，应付 ¥88.00，得 88 积分")
    app.ledger.add_goods(app.node_owner, "G01", "精油", 9800, 3000, barcode=BARCODE, unit="瓶")
    app.user.find(marker="goods-ok").click()
    await app.user.should_see("价格或优惠刚刚变了")
    assert app.ledger.balance(mid)["cash"] == 50000 - 8800


async def test_a_walk_in_customer_pays_at_the_till(counter_app: CounterApp) -> None:
    app = counter_app
    with_goods(app)
    await app.login(*CASHIER)
    app.user.find(marker="search").type("g01")  # no member on screen: a walk-in sale
    app.user.find(marker="search-go").click()
    await app.user.should_see("散客")
    await app.user.should_not_see("没有找到会员")
    app.user.find(marker="goods-qty").clear().type("2")
    await app.user.should_see("应付 ¥176.00（散客：原价，不积分）")
    choose(app, "goods-pay", "wechat")
    app.user.find(marker="goods-ok").click()
    await app.user.should_see("已售 精油 ×2，实收 ¥176.00")
    assert stock(app) == 8
    [sale] = [e for e in app.ledger.history(walk_in(app.ledger.node), limit=5)
              if e["kind"] == "debit"]
    assert (sale["amount"], sale["pay"], sale["goods"]) == (17600, "wechat", "G01")


async def test_a_sale_beyond_the_stock_is_refused_and_changes_nothing(
        counter_app: CounterApp) -> None:
    app = counter_app
    mid = member_with_card(app, cash=50000)
    with_goods(app, units=2)
    await app.login(*CASHIER)
    await swipe(app)
    app.user.find(marker="walk-in").click()  # 散客 even with a member on screen
    await app.user.should_see("散客")
    app.user.find(marker="goods-qty").clear().type("3")
    before = snapshot(app.ledger, [mid])
    app.user.find(marker="goods-ok").click()
    await app.user.should_see("精油")
    await app.user.should_see("本店只有 2瓶", retries=SETTLE)
    assert snapshot(app.ledger, [mid]) == before and stock(app) == 2
    app.user.find(marker="goods-qty").clear().type("2")  # fixed: the refusal goes
    await app.user.should_not_see("本店只有", retries=SETTLE)


# --- coupons at the counter, and the receipts of it all ---------------------------------


@pytest.fixture
def paper() -> Iterator[PrinterListener]:
    """The branch's receipt printer: a TCP listener that decodes what it gets."""
    with PrinterListener("127.0.0.1", 0) as listener:
        yield listener


async def printed(listener: PrinterListener, count: int) -> str:
    got = await asyncio.to_thread(listener.wait, count)
    assert len(got) == count, f"{len(got)} receipts arrived, expected {count}"
    return got[-1].text


async def test_a_coupon_off_a_service_with_its_receipt(counter_app: CounterApp,
                                                       paper: PrinterListener) -> None:
    app = counter_app
    mid = member_with_card(app, cash=50000)
    coupon = app.ledger.issue_coupon(app.node_owner, mid, off=1000)["coupon"]
    app.ledger.issue_coupon(app.node_owner, mid, service="HAIR")  # not for FOOT60
    save_config(app.data_dir, PrinterConfig(host="127.0.0.1", port=paper.port))
    await app.login(*CASHIER)
    await swipe(app)
    await app.user.should_see("获得优惠券 · 减 ¥10.00")  # in the last visits
    app.user.find(marker="consume").click()
    await app.user.should_see("优惠券（2 张可用）")
    choose(app, "coupon", coupon)
    await app.user.should_see("原价 ¥128.00，券减 ¥10.00，应付 ¥118.00，得 118 积分")
    app.user.find(marker="consume-ok").click()
    await app.user.should_see("已消费 足疗 60 分钟，实付 ¥118.00")
    assert app.ledger.balance(mid)["cash"] == 50000 - 11800
    assert app.ledger.coupon_view(coupon)["status"] == "redeemed"
    text = await printed(paper, 1)
    assert "优惠券" in text and "-10.00" in text and "118.00" in text, text
    # Used: the next sale lists only the one left.
    app.user.find(marker="consume").click()
    await app.user.should_see("优惠券（1 张可用）")


async def test_a_walk_in_sale_prints_a_receipt_without_a_member(
        counter_app: CounterApp, paper: PrinterListener) -> None:
    app = counter_app
    with_goods(app)
    save_config(app.data_dir, PrinterConfig(host="127.0.0.1", port=paper.port))
    await app.login(*CASHIER)
    app.user.find(marker="walk-in").click()
    choose(app, "goods-pay", "alipay")
    app.user.find(marker="goods-ok").click()
    await app.user.should_see(marker="receipt-printed", retries=SETTLE)
    text = await printed(paper, 1)
    assert "精油" in text and "88.00" in text and "支付宝" in text, text
    assert "储值余额" not in text and "积分" not in text, text  # nobody's purses


async def test_a_tab_left_open_after_logging_out_reprints_nothing(
        counter_app: CounterApp, paper: PrinterListener) -> None:
    """The bar's Reprint after a sale printed the member's balances again from a tab
    whose operator had logged out in another."""
    from test_app_probe_cashier import log_out_in_another_tab

    app = counter_app
    member_with_card(app, cash=50000)
    save_config(app.data_dir, PrinterConfig(host="127.0.0.1", port=paper.port))
    await app.login(*CASHIER)
    await swipe(app)
    app.user.find(marker="consume").click()
    app.user.find(marker="consume-ok").click()
    await app.user.should_see(marker="receipt-printed", retries=SETTLE)
    await printed(paper, 1)
    await log_out_in_another_tab(app)
    app.user.find(marker="reprint").click()  # in the visits listed, still on the page
    await app.user.should_see(marker="login")
    assert len(await asyncio.to_thread(paper.wait, 2, 1.0)) == 1


async def test_a_goods_gift_for_points_comes_out_of_the_stock(counter_app: CounterApp) -> None:
    app = counter_app
    mid = member_with_a_gift(app)
    await app.login(*CASHIER)
    await swipe(app)
    app.user.find(marker="redeem").click()
    choose(app, "gift-goods", "G09")
    app.user.find(marker="redeem-ok").click()
    await app.user.should_see("已兑换 毛巾，用 100 积分")
    assert app.ledger.balance(mid)["points"] == 28
    assert app.ledger.stock_of("G09")["qty"] == 2
    await app.user.should_see("积分兑换 · 毛巾")


async def test_a_scanned_coupon_opens_the_sale_with_it(counter_app: CounterApp) -> None:
    app = counter_app
    mid = member_with_card(app, cash=50000)
    coupon = app.ledger.issue_coupon(app.node_owner, mid, percent=20)["coupon"]
    await app.login(*CASHIER)
    await swipe(app)
    app.reader.scan(coupon)  # the QR code of the coupon, on paper or a phone
    await app.user.should_see("原价 ¥128.00，券减 ¥25.60，应付 ¥102.40，得 102 积分")
    app.user.find(marker="consume-ok").click()
    await app.user.should_see("实付 ¥102.40")
    app.reader.scan(coupon)  # used: the dialog says where and when
    await app.user.should_see("这张券不能用：已于")


async def test_a_coupon_off_a_goods_sale(counter_app: CounterApp, paper: PrinterListener) -> None:
    app = counter_app
    mid = member_with_card(app, cash=50000)
    with_goods(app)
    coupon = app.ledger.issue_coupon(app.node_owner, mid, off=1000)["coupon"]
    app.ledger.issue_coupon(app.node_owner, mid, service="HAIR")  # not for goods
    save_config(app.data_dir, PrinterConfig(host="127.0.0.1", port=paper.port))
    await app.login(*CASHIER)
    await swipe(app)
    app.user.find(marker="sell-goods").click()
    await app.user.should_see("优惠券（1 张可用）")
    choose(app, "coupon", coupon)
    await app.user.should_see("原价 ¥88.00，券减 ¥10.00，应付 ¥78.00，得 78 积分")
    app.user.find(marker="goods-ok").click()
    await app.user.should_see("已售 精油 ×1，实收 ¥78.00")
    assert app.ledger.balance(mid)["cash"] == 50000 - 7800 and stock(app) == 9
    text = await printed(paper, 1)
    assert "销售小票" in text and "精油" in text and "优惠券" in text and "-10.00" in text, text


async def test_a_coupon_held_at_a_branch_out_of_reach_names_it(
        counter_app: CounterApp) -> None:
    app = counter_app
    mid = member_with_card(app, cash=50000)
    coupon = app.ledger.issue_coupon(app.node_owner, mid, off=1000)["coupon"]
    # Its right to be redeemed now sits at SH02, which is not connected.
    app.ledger.transfer_rights(app.node_owner, mid, "SH02", 1, purse=f"cpn:{coupon}")
    await app.login(*CASHIER)
    await swipe(app)
    app.user.find(marker="consume").click()
    choose(app, "coupon", coupon)
    await app.user.should_see("减 ¥10.00，在徐家汇店")  # where it is, as it is picked
    before = snapshot(app.ledger, [mid])
    app.user.find(marker="consume-ok").click()
    await app.user.should_see("这张优惠券在徐家汇店（现在连不上）", retries=SETTLE)
    assert snapshot(app.ledger, [mid]) == before


async def test_no_coupon_is_offered_to_an_operator_who_may_not_take_one(
        counter_app: CounterApp) -> None:
    """A role without coupon.redeem was offered the member's coupons in the service and
    the goods sale; the sale picked one for was refused (issue 6: the buttons follow
    the operator's permissions). A coupon's QR code scanned says why it is not taken."""
    app = counter_app
    mid = member_with_card(app, cash=50000)
    with_goods(app)
    app.ledger.define_role(app.node_owner, "till", ["debit", "sale", "member.add"])
    app.ledger.add_operator(app.node_owner, "till1", "till-secret-1", roles=["till"])
    coupon = app.ledger.issue_coupon(app.node_owner, mid, off=1000)["coupon"]
    await app.login("till1", "till-secret-1")
    await swipe(app)
    app.user.find(marker="consume").click()
    await app.user.should_see(marker="consume-ok")
    await app.user.should_not_see(marker="coupon")
    app.user.find(marker="sell-goods").click()
    await app.user.should_see(marker="goods-ok")
    await app.user.should_not_see(marker="coupon")
    app.user.find(marker="goods-ok").click()  # the sale itself is theirs to make
    await app.user.should_see("已售 精油 ×1，实收 ¥88.00")
    app.reader.scan(coupon)
    await app.user.should_see("您没有收优惠券的权限")
    [mine] = app.ledger.coupons(mid)
    assert mine["status"] == "available"


# --- issue 15: a goods sale refunded by units; a service sold to a walk-in customer -----

async def test_a_goods_refund_by_one_unit_puts_it_back_on_the_shelf(
        counter_app: CounterApp) -> None:
    app = counter_app
    mid = member_with_card(app, cash=50000)
    with_goods(app)
    await app.login(*OWNER)  # a cashier may not refund
    await swipe(app)
    app.reader.scan(BARCODE)
    app.user.find(marker="goods-qty").clear().type("2")
    app.user.find(marker="goods-ok").click()
    await app.user.should_see("已售 精油 ×2，实收 ¥176.00")
    assert stock(app) == 8
    await app.user.should_see("商品 · 精油 ×2 · 储值")
    app.user.find(marker="refund").click()
    # By units, not an amount (the library refuses one for goods): both left by default.
    await app.user.should_see(marker="refund-qty")
    await app.user.should_not_see(marker="refund-amount")
    [units] = app.user.find(marker="refund-qty").elements
    assert isinstance(units, ValueElement) and units.value == 2
    app.user.find(marker="refund-qty").clear().type("1")
    app.user.find(marker="refund-ok").click()
    await app.user.should_see("已退款 ¥88.00")
    assert stock(app) == 9  # the unit is back on this branch's shelf
    [refund] = [e for e in app.ledger.history(mid, limit=5) if e["kind"] == "refund"]
    assert (refund["amount"], refund["qty"], refund["goods"]) == (8800, 1, "G01")
    assert app.ledger.balance(mid)["cash"] == 50000 - 17600 + 8800


async def test_a_walk_in_service_paid_in_cash_is_in_the_days_report(
        counter_app: CounterApp) -> None:
    app = counter_app
    await app.login(*CASHIER)
    app.user.find(marker="walk-in-service").click()  # no member on screen
    await app.user.should_see("散客")
    choose(app, "service", "FOOT60")
    # Till methods only: no stored value, no package, no coupon without a member.
    [pay] = app.user.find(marker="pay").elements
    assert isinstance(pay, ui.radio)
    assert not {"stored", "package"} & set(pay.options), pay.options
    await app.user.should_not_see(marker="coupon")
    await app.user.should_see("应付 ¥128.00（散客：原价，不积分）")
    choose(app, "pay", "cash")
    app.user.find(marker="consume-ok").click()
    await app.user.should_see("已消费 足疗 60 分钟，实付 ¥128.00")
    [sale] = [e for e in app.ledger.history(walk_in(app.ledger.node), limit=5)
              if e["kind"] == "debit"]
    assert (sale["amount"], sale["pay"], sale["service"]) == (12800, "cash", "FOOT60")
    report = views.daily_report(app.ledger, app.ledger.today(), app.ledger.node)
    assert report["sales"] == 12800 and report["till_by_method"] == {"cash": 12800}
