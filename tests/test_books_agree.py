"""The books say the same money everywhere: one business day of every kind of operation
at three branches (tests/helpers: real SQLite stores, synced), read back by each book
that reports the same money. Found by the books probe of the twentieth wave."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from forgery import sync_file
from helpers import FakeClock, Forger, name_branches, new_ledger, sync
from pycrdt import Doc, Map

from crdtledger import settlement, syncfile, views
from crdtledger.hlc import id_time_ms
from crdtledger.model import entry_doc
from crdtledger.payments import walk_in
from peer import receipts


def test_a_card_sold_for_a_fee_prints_the_fee_the_day_report_counts(tmp_path: Path) -> None:
    """A card issued for a fee of 10.00 printed "办卡" and no amount, no total: the
    customer paid 10.00 that the day report's card sales count (and the till took),
    and the receipt said nothing was paid. A card issued free prints no total still."""
    clock = FakeClock()
    a = new_ledger(tmp_path, "SH01", now_ms=clock)
    b = new_ledger(tmp_path, "SH02", now_ms=clock)
    try:
        name_branches(a, "SH01", "SH02")
        m = a.add_member(a.owner, name="张伟", phone="13800000001")
        a.issue_card(a.owner, m, "C0001", card_type="points", fee=1000)
        a.issue_card(a.owner, m, "C0002")
        sync(a, b)
        for ledger in (a, b):
            paid, free = sorted((e for e in ledger.history(m) if e["kind"] == "card"),
                                key=lambda e: -int(e["amount"]))
            report = views.daily_report(ledger, ledger.today())
            assert report["card_sales"] == 1000
            r = receipts.build(ledger, paid["id"])
            assert (r.title, r.total) == ("办卡", 1000)
            assert [(x.label, x.amount) for x in r.lines] == [("办卡", 1000)]
            assert "合计（元）" in receipts.text(r) and "10.00" in receipts.text(r)
            r = receipts.build(ledger, free["id"])
            assert r.total is None and [(x.label, x.amount) for x in r.lines] == [("办卡", None)]
    finally:
        a.close()
        b.close()


def test_one_day_of_every_kind_of_money_reads_the_same_in_every_book(tmp_path: Path) -> None:
    """Top-ups by two methods, sales from stored value, at the till and of goods, a
    package below half its list with an approver, refunds whole and in part, a
    correction, rights moved and spent at another branch, an exit paid back in cash
    and one forfeited: at every branch after sync the day report, each branch's
    report, the till by method, the settlement and the members' balances agree with
    each other and with what was done. A guard: it held when the probe ran."""
    clock = FakeClock(1_767_225_600_000 + 2 * 3_600_000)  # 2026-01-01 10:00 in Shanghai
    a, b, c = (new_ledger(tmp_path, n, now_ms=clock) for n in ("SH01", "SH02", "SH03"))
    stores = (a, b, c)

    def sync_all() -> None:
        for x, y in ((a, b), (a, c), (b, c)):
            sync(x, y)

    try:
        name_branches(a, "SH01", "SH02", "SH03")
        o = a.owner
        mgr = a.add_operator(o, "mgr", "secret1", ["manager"])
        a.set_rule(o, "promotions", [{"name": "充500送30", "min": 50000, "bonus": 3000}])
        a.add_goods(o, "G01", "精油", 5000, cost=2000)
        sync_all()
        m1 = a.add_member(o, name="张伟", phone="13800000001")
        m2 = b.add_member(b.owner, name="李娜", phone="13800000002")
        m5 = a.add_member(o, name="赵六", phone="13800000005")
        m6 = b.add_member(b.owner, name="孙七", phone="13800000006")
        a.topup(o, m1, 60000, pay="cash")
        a.topup(o, m1, 20000, pay="wechat")
        b.topup(b.owner, m2, 30000, pay="cash")
        a.topup(o, m5, 50000, pay="cash")
        b.topup(b.owner, m6, 20000, pay="wechat")
        a.issue_card(o, m1, "C0001", card_type="points", fee=1000)
        d1 = a.debit(o, m1, amount=12000)
        d2 = a.debit(o, m1, service="FOOT60")
        d3 = a.debit(o, m1, service="FOOT60", pay="cash")
        b.debit(b.owner, amount=8800, pay="wechat")
        a.sell_package(o, m1, "FOOT60", 10, 40000, pay="stored", approver=("mgr", "secret1"))
        b.sell_package(b.owner, m2, "FOOT60", 10, 50000, pay="cash",
                       approver=("mgr", "secret1"))
        a.stock_in(o, "G01", 20, cost=2000)
        g = a.sell_goods(o, "G01", 1, pay="cash")
        a.refund(o, d1["id"])
        a.refund(o, d2["id"], 5000)
        a.refund(o, d3["id"])
        a.refund(o, g["id"])
        a.correct(o, m1, "cash", 500, "typo")
        sync_all()
        a.transfer_rights(o, m1, "SH02", 10000)
        sync_all()
        b.debit(b.owner, m1, amount=9000)
        a.decide_exit(mgr, a.apply_exit(o, m5, "搬家")["application"], pay="cash")
        b.set_rule(b.owner, "exit", {"stored_value": "forfeit"})
        b.decide_exit(mgr, b.apply_exit(b.owner, m6, "不来了")["application"])
        sync_all()
        day = a.today()
        want = views.daily_report(a, day)
        # 600 + 300 cash topped up; 128 of a service and 500 of a package paid in
        # cash, 50 of goods; the service and the goods refunded, 500 paid back at
        # an exit. The card's fee names no method (design notes: "Card fees name no
        # method and stay out of both").
        assert want["topup_by_method"] == {"cash": 140000, "wechat": 40000}
        assert want["till_by_method"] == {"wechat": 8800}  # cash: 128+500+50-128-50-500
        assert want["exit_refunds"] == 50000 and want["card_sales"] == 91000
        for ledger in stores:
            report = views.daily_report(ledger, day)
            assert report == want, ledger.node
            for key in ("sales", "refunds", "topup_cash", "card_sales", "exit_refunds",
                        "debits", "topups", "cards_sold", "new_members"):
                assert sum(views.daily_report(ledger, day, n)[key]
                           for n in ("SH01", "SH02", "SH03")) == want[key], key
            statement = views.settlement(ledger, day, day)
            assert statement == views.settlement(a, day, day)
            assert all(settlement.reconciles(f) for f in statement["branches"].values())
            total = settlement.chain_total(statement)
            conn = ledger.storage.conn
            (held,) = conn.execute(
                "SELECT TOTAL(amount) FROM rights WHERE purse = 'cash'").fetchone()
            balances = sum(ledger.balance(m)["cash"] for m in (m1, m2, m5, m6))
            assert int(held) == balances == total["unspent"] and total["unattributed"] == 0
            assert total["collected"] == want["topup_cash"] + 500  # and the correction
            assert statement["pairs"] == [{"owes": "SH01", "to": "SH02", "amount": 9000,
                                           "served": 9000, "served_back": 0}]
    finally:
        for ledger in stores:
            ledger.close()


def test_a_sale_read_as_cash_is_refunded_off_the_cash_it_was_read_as(tmp_path: Path) -> None:
    """A debit without `pay` reads as paid in cash at the till (views._METHOD, write rule
    amount-moved), but its refund was taken off the till only when the debit named a
    method: a liar's walk-in sale of 100.00 and its refund, both taken by every
    replica, left the day's sales at 0.00 and the till holding 100.00 in cash that no
    drawer took (the books probe of the twenty-first wave)."""
    clock = FakeClock(1_767_225_600_000 + 2 * 3_600_000)
    a, liar = new_ledger(tmp_path, "SH01", now_ms=clock), new_ledger(tmp_path, "SH02",
                                                                     now_ms=clock)
    try:
        name_branches(a, "SH01", "SH02")
        sync(a, liar)
        sale, refund = liar.clock.mint(), liar.clock.mint()
        by = {"member": walk_in("SH02"), "node": "SH02", "op": "owner@SH02", "deltas": []}

        def write(d: Doc[Any]) -> None:
            entries = d.get("entries", type=Map)
            entries[sale] = {**by, "id": sale, "kind": "debit", "at": id_time_ms(sale),
                             "amount": 10000, "gross": 10000, "qty": 1}
            entries[refund] = {**by, "id": refund, "kind": "refund", "ref": sale,
                               "at": id_time_ms(refund), "amount": 10000}

        forger = Forger(liar)
        forger.write(entry_doc(sale, liar.storage.day_of), write)
        syncfile.import_file(a, sync_file(tmp_path / "liar.sync", liar.trust, forger.batch(),
                                          a.clock.wall()))
        assert not a.faults()  # taken: both are what an older build may have written
        report = views.daily_report(a, a.today())
        assert (report["sales"], report["refunds"]) == (0, 10000)
        assert report["till_by_method"] == {}
    finally:
        a.close()
        liar.close()
