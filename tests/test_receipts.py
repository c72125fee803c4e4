"""Printed receipts (peer/receipts.py) on a real TCP printer listener.

Everything is real: the ledger and its SQLite store, python-escpos rendering the
bytes, the socket to 127.0.0.1, and peer/printer_listener.py decoding what arrived
(ESC/POS commands out, GB18030 text in, the QR code's data kept). The issue asks for
port 9100; the tests take a free port each, so they never meet a real printer or
another run. Card swipes at the counter come through the ScriptedReader FAKE as in
test_app_counter.py.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from app_fixtures import BRANCH, CASHIER, CounterApp
from conftest import run_cli
from helpers import new_ledger
from test_api import BOSS_PW, serving, with_operators

from crdtledger.ledger import Ledger
from peer.api import Standalone
from peer.printer_listener import PrinterListener, Printout, decode
from peer.receipts import (
    COLUMNS,
    PrinterConfig,
    build,
    cols,
    load_config,
    print_entry,
    render,
    save_config,
)

TITLE = "悦康养生"
CARD = "C10001"


@pytest.fixture
def printer() -> Iterator[PrinterListener]:
    with PrinterListener("127.0.0.1", 0) as listener:
        yield listener


def closed_port() -> int:
    """A port of 127.0.0.1 nobody listens on: connecting is refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def use_printer(data_dir: Path, port: int, width: int = 58) -> None:
    save_config(data_dir, PrinterConfig(host="127.0.0.1", port=port, width=width, title=TITLE))


def shop(tmp_path: Path) -> tuple[Ledger, str]:
    """SH01 南京西路店 with a member who topped up 500.00 (and holds no points yet)."""
    ledger = new_ledger(tmp_path, "SH01")
    ledger.set_rule(ledger.owner, "branches", {"SH01": BRANCH})
    mid = ledger.add_member(ledger.owner, name="张伟", phone="13812345678")
    ledger.topup(ledger.owner, mid, 50000)
    return ledger, mid


def only(listener: PrinterListener, count: int = 1) -> Printout:
    got = listener.wait(count)
    assert len(got) == count, f"{len(got)} receipts arrived, expected {count}"
    return got[-1]


def test_a_receipt_printed_to_a_tcp_printer_reads_back(tmp_path: Path,
                                                        printer: PrinterListener) -> None:
    ledger, mid = shop(tmp_path)
    try:
        use_printer(ledger.storage.dir, printer.port)
        entry = ledger.debit(ledger.owner, mid, service="FOOT60", qty=2)  # 2 x 128.00
        done = asyncio.run(print_entry(ledger, entry["id"]))
    finally:
        ledger.close()
    assert done is not None and done.printed, done
    paper = only(printer)
    lines = paper.text.splitlines()
    assert lines[0].strip() == TITLE
    assert "南京西路店（SH01）" in lines[1]
    assert "消费小票" in paper.text and "张伟" in paper.text and "足疗 60 分钟 ×2" in paper.text
    assert any(x.startswith("合计（元）") and x.endswith("256.00") for x in lines)
    assert any(x.startswith("储值余额") and x.endswith("500.00 → 244.00") for x in lines)
    assert any(x.startswith("积分") and x.endswith("0 → 256") for x in lines)
    assert paper.qr == [entry["id"]]  # the QR code's data: the entry id
    assert paper.cuts == 1
    assert all(cols(x) <= COLUMNS[58] for x in lines)  # 58 mm: 32 columns


def test_widths_and_a_reprint_shows_the_balances_of_its_time(tmp_path: Path) -> None:
    ledger, mid = shop(tmp_path)
    try:
        entry = ledger.debit(ledger.owner, mid, amount=3000, pay="stored")
        first = build(ledger, entry["id"], title=TITLE)
        ledger.topup(ledger.owner, mid, 10000)  # later: the receipt does not change
        again = build(ledger, entry["id"], title=TITLE, reprint=True)
    finally:
        ledger.close()
    assert again.purses == first.purses
    cash = first.purses[0]
    assert (cash.label, cash.before, cash.after) == ("储值余额", 50000, 47000)
    for width in (58, 80):
        paper = decode(render(again, width))
        assert "（重打）" in paper.text
        assert all(cols(x) <= COLUMNS[width] for x in paper.text.splitlines())
        assert any(cols(x) == COLUMNS[width] for x in paper.text.splitlines())


def test_a_printer_that_refuses_does_not_block_the_sale(tmp_path: Path) -> None:
    ledger, mid = shop(tmp_path)
    try:
        use_printer(ledger.storage.dir, closed_port())
        entry = ledger.debit(ledger.owner, mid, amount=3000, pay="stored")  # committed
        done = asyncio.run(print_entry(ledger, entry["id"]))
        assert ledger.balance(mid)["cash"] == 47000
    finally:
        ledger.close()
    assert done is not None and not done.printed
    assert "refused the connection" in done.reason


def test_no_printer_prints_nothing(tmp_path: Path) -> None:
    ledger, mid = shop(tmp_path)
    try:
        entry = ledger.debit(ledger.owner, mid, amount=3000, pay="stored")
        assert load_config(ledger.storage.dir) is None
        assert asyncio.run(print_entry(ledger, entry["id"])) is None
    finally:
        ledger.close()


def test_the_command_line_sets_the_printer_and_reprints(tmp_path: Path,
                                                       printer: PrinterListener) -> None:
    ledger, mid = shop(tmp_path)
    data = ledger.storage.dir
    entry = ledger.topup(ledger.owner, mid, 20000, pay="wechat")
    ledger.close()
    assert run_cli("printer", "show", data=data).out.startswith("no receipt printer")
    refused = run_cli("receipt", "print", "--entry", entry["id"], data=data)
    assert refused.code == 1 and "no receipt printer" in refused.err
    done = run_cli("printer", "set", "--net", f"127.0.0.1:{printer.port}", "--width", "80",
                   "--title", TITLE, "--json", data=data).json()
    assert (done["width"], done["columns"], done["port"]) == (80, 48, printer.port)
    assert run_cli("printer", "test", data=data).code == 0
    assert "打印测试" in only(printer).text
    printed = run_cli("receipt", "print", "--entry", entry["id"], "--json", data=data).json()
    assert printed["printed"] is True
    paper = only(printer, 2)
    assert "充值小票（重打）" in paper.text and "微信" in paper.text
    assert paper.qr == [entry["id"]]
    assert any(cols(x) == 48 for x in paper.text.splitlines())
    off = closed_port()
    run_cli("printer", "set", "--net", f"127.0.0.1:{off}", data=data)
    failed = run_cli("receipt", "print", "--entry", entry["id"], data=data)
    assert failed.code == 1 and "refused the connection" in failed.err
    # A header longer than a shop's name is refused and changes nothing; one written
    # into the file by hand is named with the file.
    before = (data / "printer.toml").read_bytes()
    long = run_cli("printer", "set", "--title", "店" * 41, data=data)
    assert long.code != 0 and "--title is longer than 40" in long.err, long.err
    assert (data / "printer.toml").read_bytes() == before
    (data / "printer.toml").write_text(f'host = "127.0.0.1"\ntitle = "{"店" * 41}"\n',
                                       encoding="utf-8")
    shown = run_cli("printer", "show", data=data)
    assert shown.code != 0 and "printer.toml: title is longer than 40" in shown.err, shown.err


def test_a_usb_printer_that_is_not_plugged_in_is_named(tmp_path: Path) -> None:
    """The USB path runs for real up to the bus (pyusb over libusb): no printer is
    plugged into this machine, and none can be (a USB gadget needs the kernel's
    dummy_hcd), so what is tested is that its absence is a sentence, not a crash."""
    ledger, mid = shop(tmp_path)
    data = ledger.storage.dir
    entry = ledger.topup(ledger.owner, mid, 20000, pay="cash")
    ledger.close()
    bad = run_cli("printer", "set", "--usb", "0416", data=data)
    assert bad.code != 0 and "VENDOR:PRODUCT" in bad.err
    assert run_cli("printer", "set", "--usb", "0416:5011", data=data).code == 0
    assert "USB 0416:5011" in run_cli("printer", "show", data=data).out
    tried = run_cli("printer", "test", data=data)
    assert tried.code == 1 and "no printer USB 0416:5011 is plugged into this PC" in tried.err
    failed = run_cli("receipt", "print", "--entry", entry["id"], "--json", data=data)
    assert failed.code == 1


def test_the_api_shows_and_reprints_a_receipt(tmp_path: Path, printer: PrinterListener) -> None:
    async def main() -> None:
        ledger, mid = shop(tmp_path)
        with_operators(ledger)
        entry = ledger.debit(ledger.owner, mid, amount=1000, pay="cash")
        try:
            async with serving(Standalone(ledger)) as api:
                status, body = await api.call("POST", "/login",
                                              {"operator": "boss", "password": BOSS_PW})
                token = body["token"]
                status, shown = await api.call("GET", f"/receipts/{entry['id']}", token=token)
                assert status == 200 and shown["paid_by"] == "现金" and shown["total"] == 1000
                status, out = await api.call("POST", f"/receipts/{entry['id']}/print",
                                             token=token)
                assert (status, out["printed"]) == (200, False)  # no printer set: said so
                use_printer(ledger.storage.dir, printer.port)
                status, out = await api.call("POST", f"/receipts/{entry['id']}/print",
                                             token=token)
                assert (status, out["printed"]) == (200, True)
                status, _ = await api.call("GET", "/receipts/0000000000000.SH01", token=token)
                assert status == 404
        finally:
            ledger.close()

    asyncio.run(main())
    assert only(printer).qr


# --- at the counter (NiceGUI's simulated user, a real node) ---------------------------


def member_with_card(app: CounterApp, cash: int = 50000) -> str:
    mid = app.ledger.add_member(app.node_owner, name="张伟", phone="13812345678")
    app.ledger.issue_card(app.node_owner, mid, CARD)
    app.ledger.topup(app.node_owner, mid, cash)
    return mid


async def swipe(app: CounterApp) -> None:
    app.reader.insert(CARD)
    await app.user.should_see(marker="member-name")


async def received(listener: PrinterListener, count: int) -> Printout:
    got = await asyncio.to_thread(listener.wait, count)
    assert len(got) == count, f"{len(got)} receipts arrived, expected {count}"
    return got[-1]


@pytest.mark.asyncio
async def test_the_counter_prints_a_package_sale_and_a_service(
        counter_app: CounterApp, printer: PrinterListener) -> None:
    app = counter_app
    mid = member_with_card(app)
    use_printer(app.data_dir, printer.port)
    await app.login(*CASHIER)
    await swipe(app)
    app.user.find(marker="sell-package").click()
    app.user.find(marker="package-price").type("1000.00")
    app.user.find(marker="package-ok").click()
    await app.user.should_see(marker="receipt-printed", retries=100)
    paper = await received(printer, 1)
    package = app.ledger.history(mid, limit=1)[0]
    assert package["kind"] == "package" and paper.qr == [package["id"]]
    assert "购买套餐小票" in paper.text and BRANCH in paper.text and "1000.00" in paper.text
    app.user.find(marker="consume").click()
    app.user.find(marker="consume-ok").click()
    await app.user.should_see("已消费")
    paper = await received(printer, 2)
    debit = app.ledger.history(mid, limit=1)[0]
    assert paper.qr == [debit["id"]] and "储值余额" in paper.text
    after = app.ledger.balance(mid)["cash"]
    assert any(x.startswith("储值余额") and x.endswith(f"{after // 100}.{after % 100:02d}")
               for x in paper.text.splitlines())


@pytest.mark.asyncio
async def test_a_printer_that_is_off_does_not_stop_the_counter(
        counter_app: CounterApp, printer: PrinterListener) -> None:
    app = counter_app
    mid = member_with_card(app)
    use_printer(app.data_dir, closed_port())
    await app.login(*CASHIER)
    await swipe(app)
    app.user.find(marker="consume").click()
    app.user.find(marker="consume-ok").click()
    await app.user.should_see("已消费")  # the sale went through
    await app.user.should_see(marker="receipt-failed", retries=100)
    await app.user.should_see("小票未打印")
    assert app.ledger.balance(mid)["cash"] == 50000 - 12800
    use_printer(app.data_dir, printer.port)  # switched on: print it again
    app.user.find(marker="reprint-last").click()
    await app.user.should_see(marker="receipt-printed", retries=100)
    paper = await received(printer, 1)
    assert "消费小票（重打）" in paper.text
    assert paper.qr == [app.ledger.history(mid, limit=1)[0]["id"]]


@pytest.mark.asyncio
async def test_reprint_from_the_members_history(counter_app: CounterApp,
                                                printer: PrinterListener) -> None:
    app = counter_app
    mid = member_with_card(app)
    use_printer(app.data_dir, printer.port)
    await app.login(*CASHIER)
    await swipe(app)
    buttons = app.user.find(marker="reprint")  # one per visit shown
    visits = [e for e in app.ledger.history(mid) if e["kind"] not in ("transfer", "merge")]
    assert len(buttons.elements) == len(visits)
    buttons.click()  # the simulated user clicks the first: the newest visit, the top-up
    paper = await received(printer, 1)
    assert visits[0]["kind"] == "topup" and paper.qr == [visits[0]["id"]]
    assert "充值小票（重打）" in paper.text and "0.00 → 500.00" in paper.text


def test_every_kind_a_cashier_can_reprint_says_what_happened(tmp_path: Path) -> None:
    """Receipts read back from their entries, as a customer and an accountant read
    them: a goods refund printed as a "sale" of package uses with no money on it; a
    correction of -50.00 printed "合计 50.00" and +300 points "合计 3.00"; an exit paid
    1,000.00 in cash and forfeiting 200.00 of bonus printed "exit_settle小票 合计
    1200.00"; a coupon issued printed its 10.00 as a total paid."""
    ledger, mid = shop(tmp_path)
    o = ledger.owner
    try:
        ledger.add_goods(o, "G01", "精油", 3333, 1200, unit="瓶")
        ledger.stock_in(o, "G01", 10)
        sale = ledger.sell_goods(o, "G01", 3, member=mid)
        back = ledger.refund(o, sale["id"], qty=2, reason="broken")
        r = build(ledger, back["id"])
        assert r.title == "退款" and r.total == back["amount"] > 0
        assert [(x.label, x.amount, x.qty) for x in r.lines] == [
            ("退 精油", back["amount"], 2)]
        for purse, change in (("cash", -5000), ("points", 300)):
            r = build(ledger, ledger.correct(o, mid, purse, change, "fix")["id"])
            assert r.total == (-5000 if purse == "cash" else None), (purse, r.total)
            assert [x.amount if purse == "cash" else x.qty for x in r.lines] == [change]
        mgr = ledger.add_operator(o, "经理王", "pw-manager-123456", ["manager"])
        ledger.set_rule(o, "promotions", [{"min": 100000, "bonus": 20000,
                                           "name": "充1000送200"}])
        leaver = ledger.add_member(o, name="李雷", phone="13700000001")
        ledger.topup(o, leaver, 100000)
        view = ledger.decide_exit(mgr, ledger.apply_exit(o, leaver, "moving")["application"],
                                  pay="cash")
        (settle,) = ledger.storage.conn.execute(
            "SELECT id FROM entries WHERE kind = 'exit_settle'").fetchone()
        r = build(ledger, settle)
        assert r.title == "退会结算" and r.total == view["paid"] == 100000
        assert [x.amount for x in r.lines] == [100000, -view["forfeited"]]
        coupon = ledger.issue_coupon(o, mid, off=1000, valid_to="2099-12-31")["coupon"]
        r = build(ledger, coupon)
        assert r.title == "优惠券" and r.total is None
    finally:
        ledger.close()


def test_a_reprint_after_a_merge_shows_the_balances_first_printed(tmp_path: Path) -> None:
    """B pays 50.00 of its 200.00; B is then merged into A (1,000.00). B's reprint
    showed the merged group's 1,200.00 -> 1,150.00, and A's own earlier sale changed
    too: a receipt shows the members that were one when it was written."""
    ledger = new_ledger(tmp_path, "SH01")
    o = ledger.owner
    try:
        a = ledger.add_member(o, name="王芳", phone="13700000002")
        ledger.topup(o, a, 100000)
        b = ledger.add_member(o, name="王芳二", phone="13700000003")
        ledger.topup(o, b, 20000)
        sales = [ledger.debit(o, b, amount=5000, pay="stored")["id"],
                 ledger.debit(o, a, amount=1000, pay="stored")["id"]]
        first = [build(ledger, s).purses for s in sales]
        ledger.merge_member(o, b, a)
        assert [build(ledger, s, reprint=True).purses for s in sales] == first
        later = ledger.debit(o, a, amount=1000, pay="stored")["id"]
        cash = build(ledger, later).purses[0]
        assert (cash.before, cash.after) == (100000 - 1000 + 15000, 100000 - 2000 + 15000)
    finally:
        ledger.close()


def test_long_names_stay_within_the_paper(tmp_path: Path) -> None:
    """A member's name of 20 characters is 40 columns of 58 mm paper's 32: it ran off
    the right margin and the printer wrapped it mid-name."""
    ledger = new_ledger(tmp_path, "SH01")
    o = ledger.owner
    try:
        op = ledger.add_operator(o, "欧阳" * 10, "pw-cashier-123456", ["cashier"])
        m = ledger.add_member(o, name="爱新觉罗" * 5, phone="13700000001")
        ledger.topup(op, m, 100000)
        r = build(ledger, ledger.debit(op, m, amount=3000, pay="stored")["id"])
        for width in (58, 80):
            paper = decode(render(r, width)).text
            assert all(cols(x) <= COLUMNS[width] for x in paper.splitlines()), width
            assert "爱新觉罗" * 2 in paper.replace("\n", "").replace(" ", "")
    finally:
        ledger.close()


def test_prints_go_through_one_thread_of_their_own(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """On the loop's default pool, a dozen prints to a printer that hung (3 s each)
    held every thread the logins check passwords in: a login took 6 s at every till.
    Prints queue on one thread of their own, and the default pool stays free."""
    import threading

    import peer.receipts as receipts

    ledger, mid = shop(tmp_path)
    save_config(ledger.storage.dir, PrinterConfig(host="127.0.0.1", port=9))
    release = threading.Event()
    threads: list[str] = []

    def hung(config: PrinterConfig, data: bytes, timeout: float = 3.0) -> receipts.Printed:
        threads.append(threading.current_thread().name)
        release.wait(10)
        return receipts.Printed(False, "hung", config.describe())

    monkeypatch.setattr(receipts, "deliver", hung)

    async def go() -> None:
        sale = ledger.debit(ledger.owner, mid, amount=100, pay="stored")["id"]
        prints = [asyncio.ensure_future(print_entry(ledger, sale, reprint=True))
                  for _ in range(12)]
        await asyncio.sleep(0.2)
        # The default pool answers at once while the printer hangs.
        assert await asyncio.wait_for(asyncio.to_thread(lambda: "free"), 5) == "free"
        release.set()
        await asyncio.gather(*prints)

    try:
        asyncio.run(go())
    finally:
        ledger.close()
    assert len(threads) == 12 and {t.split("_")[0] for t in threads} == {"receipt-printer"}
