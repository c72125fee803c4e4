"""A refund of a sale whose points the member has spent since: the points cannot come
back, so their worth at the chain's conversion rate is kept from the money
(`Payments.refund_terms`). Before, a sale bought, its points converted to bonus (or
redeemed for a gift), then refunded left the bonus or the gift for nothing: ten rounds
of a 10,000.00 sale gave 1,500.00 of bonus.

Real stores on real SQLite files; a second branch syncing; the command line."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from conftest import Cli
from helpers import FakeClock, name_branches, new_ledger, sync
from test_api import AMY_PW, BOSS_PW, Api, serving, topped_up, with_operators

from crdtledger import views
from crdtledger.errors import InvalidAmount
from crdtledger.ledger import Ledger
from crdtledger.money import format_yuan
from peer.api import Standalone
from peer.printer_listener import PrinterListener
from peer.receipts import PrinterConfig, build, print_entry, save_config

GOLD = 300_000  # 3,000.00: under the top-up approval limit


@pytest.fixture
def shop(tmp_path: Path) -> Ledger:
    ledger = new_ledger(tmp_path, "SH01")
    # 1 point a yuan earned; 100 points a yuan converted: a point is worth one fen.
    ledger.set_rule(ledger.owner, "earn", {"points_per_yuan": "1", "expire_days": 365})
    yield ledger
    ledger.close()


def a_member(ledger: Ledger, phone: str = "13700000001") -> str:
    m = ledger.add_member(ledger.owner, name="王芳", phone=phone)
    ledger.topup(ledger.owner, m, GOLD)
    return m


def money(ledger: Ledger, m: str) -> int:
    bal = ledger.balance(m)
    return int(bal["cash"]) + int(bal["bonus"])


def test_buy_convert_refund_gives_nothing_for_free(shop: Ledger) -> None:
    m = a_member(shop)
    before = money(shop, m)
    for _ in range(10):
        sale = shop.debit(shop.owner, m, amount=100_000)  # 1,000.00
        earned = sale["points"]  # a point a yuan, times the member's level
        assert earned >= 1000
        shop.convert_points(shop.owner, m, earned)  # a fen a point, as bonus
        back = shop.refund(shop.owner, sale["id"])
        assert (back.get("points"), back["spent"], back["kept"], back["amount"]) == (
            None, earned, earned, 100_000 - earned)
        assert shop.refund_left(sale["id"]) == 0
    assert money(shop, m) == before
    assert shop.balance(m)["points"] == 0


def test_the_kept_worth_comes_off_the_bonus_given_back_first(shop: Ledger) -> None:
    """A sale paid 500.00 cash and 30.00 bonus, 530 points converted: the refund keeps
    5.30, off the 30.00 bonus first: 500.00 cash and 24.70 bonus come back."""
    m = shop.add_member(shop.owner, name="王芳", phone="13700000001")
    shop.topup(shop.owner, m, 50000)
    shop.correct(shop.owner, m, "bonus", 3000, "promotion")
    sale = shop.debit(shop.owner, m, amount=53000)
    shop.convert_points(shop.owner, m, 530)  # 5.30 of bonus
    back = shop.refund(shop.owner, sale["id"])
    assert sorted(back["deltas"]) == [["bonus", "SH01", 2470], ["cash", "SH01", 50000]]
    bal = shop.balance(m)
    assert (bal["cash"], bal["bonus"], bal["points"]) == (50000, 3000, 0)


def test_only_the_points_not_held_are_paid_for(shop: Ledger) -> None:
    m = a_member(shop)
    sale = shop.debit(shop.owner, m, amount=100_000)
    earned = sale["points"]
    shop.redeem_points(shop.owner, m, 300, "tea")  # 300 gone on a gift
    terms = shop.refund_terms(sale["id"])
    back = shop.refund(shop.owner, sale["id"])
    assert (back["points"], back["spent"], back["kept"], back["amount"]) == (
        earned - 300, 300, 300, 99_700)
    assert {k: terms[k] for k in ("points", "spent", "kept", "money")} == {
        "points": earned - 300, "spent": 300, "kept": 300, "money": 99_700}
    assert shop.balance(m)["points"] == 0


def test_a_refund_in_parts_pays_for_spent_points_once(shop: Ledger) -> None:
    m = a_member(shop)
    sale = shop.debit(shop.owner, m, amount=100_001)
    earned = sale["points"]
    shop.convert_points(shop.owner, m, earned)
    parts = [shop.refund(shop.owner, sale["id"], n) for n in (33_333, 33_333)]
    parts.append(shop.refund(shop.owner, sale["id"]))  # the rest
    assert sum(p["spent"] for p in parts) == earned
    assert sum(p["kept"] for p in parts) == earned
    assert sum(p["amount"] + p["kept"] for p in parts) == 100_001
    assert shop.refund_left(sale["id"]) == 0
    with pytest.raises(InvalidAmount):
        shop.refund(shop.owner, sale["id"], 1)
    assert money(shop, m) == GOLD


def test_a_sale_paid_at_the_till_gives_back_less_cash(shop: Ledger) -> None:
    m = a_member(shop)
    sale = shop.debit(shop.owner, m, amount=20_000, pay="cash")
    shop.convert_points(shop.owner, m, 200)
    back = shop.refund(shop.owner, sale["id"])
    assert (back["amount"], back["kept"]) == (19_800, 200)
    report = views.daily_report(shop, shop.today())
    assert report["refunds"] == 19_800  # what the till handed back
    assert report["sales"] == 200  # the points' worth, paid after all


def test_expired_points_are_not_paid_for(tmp_path: Path) -> None:
    clock = FakeClock()
    a = new_ledger(tmp_path, "SH01", now_ms=clock)
    try:
        a.set_rule(a.owner, "earn", {"points_per_yuan": "1", "expire_days": 30},
                   effective_from="2025-01-01")
        m = a_member(a)
        sale = a.debit(a.owner, m, amount=15_000)
        clock.advance_days(40)
        a.housekeeping()  # the 150 points written off
        assert a.balance(m)["points"] == 0
        back = a.refund(a.owner, sale["id"])
        assert (back["amount"], back.get("kept"), back.get("spent")) == (15_000, None, None)
    finally:
        a.close()


def test_a_goods_sale_refunded_by_units_adds_up(tmp_path: Path) -> None:
    a = new_ledger(tmp_path, "SH01")
    try:
        a.set_rule(a.owner, "earn", {"points_per_yuan": "1", "expire_days": 365})
        a.add_goods(a.owner, "G01", "精油", 3333, 1200, unit="瓶")
        a.stock_in(a.owner, "G01", 10)
        m = a_member(a)
        sale = a.sell_goods(a.owner, "G01", 3, member=m)
        a.convert_points(a.owner, m, sale["points"])
        parts = [a.refund(a.owner, sale["id"], qty=1) for _ in range(3)]
        assert sum(p["amount"] + (p.get("kept") or 0) for p in parts) == sale["amount"]
        assert sum(p.get("spent") or 0 for p in parts) == sale["points"]
        assert a.stock_of("G01")["qty"] == 10
        assert money(a, m) == GOLD - sum(p.get("kept") or 0 for p in parts) + (
            sale["points"] * 100 // 100)
    finally:
        a.close()


def test_another_branch_reads_the_refund_as_written(tmp_path: Path) -> None:
    a = new_ledger(tmp_path / "a", "SH01")
    b = new_ledger(tmp_path / "b", "SH02")
    try:
        a.set_rule(a.owner, "earn", {"points_per_yuan": "1", "expire_days": 365})
        m = a_member(a)
        sale = a.debit(a.owner, m, amount=50_000)
        a.convert_points(a.owner, m, 500)
        back = a.refund(a.owner, sale["id"])
        sync(a, b)
        there = b.entry(back["id"])
        assert (there["amount"], there["kept"], there["spent"]) == (49_500, 500, 500)
        assert money(b, m) == money(a, m) == GOLD
        assert b.balance(m)["points"] == 0
    finally:
        a.close()
        b.close()


def test_the_cli_says_what_was_kept(cli: Cli, tmp_path: Path) -> None:
    data = tmp_path / "sh01"
    assert cli("init", "--node", "SH01", data=data).code == 0
    m = str(cli("member", "add", "--name", "张伟", "--phone", "13812345678", "--json",
                data=data).json()["member_id"])
    assert cli("topup", "--member", m, "--amount", "300.00", data=data).code == 0
    d = cli("debit", "--member", m, "--amount", "200.00", "--json", data=data).json()
    assert cli("points", "convert", "--member", m, "--points", str(d["points"]),
               data=data).code == 0
    q = cli("quote", "refund", "--debit", d["id"], data=data)
    assert q.code == 0 and "keeping" in q.out, q.out
    quoted = cli("quote", "refund", "--debit", d["id"], "--json", data=data).json()
    r = cli("refund", "--debit", d["id"], data=data)
    assert r.code == 0
    assert "kept" in r.out and "spent" in r.out, r.out
    assert f"refunded {format_yuan(quoted['money'])}" in r.out
    assert f"pays back {format_yuan(quoted['money'])}, keeping {format_yuan(quoted['kept'])}" \
        in q.out
    bal = cli("balance", "--member", m, "--json", data=data).json()
    assert bal["cash"] + bal["bonus"] == 30000


def test_the_receipt_says_what_was_kept(tmp_path: Path) -> None:
    """Printed to a real TCP printer listener: the share refunded, the points' worth
    kept, and the total paid back."""
    with PrinterListener("127.0.0.1", 0) as printer:
        ledger = new_ledger(tmp_path, "SH01")
        try:
            save_config(ledger.storage.dir, PrinterConfig(host="127.0.0.1", port=printer.port,
                                                          width=58, title="悦康养生"))
            m = a_member(ledger)
            sale = ledger.debit(ledger.owner, m, amount=20_000)
            ledger.convert_points(ledger.owner, m, sale["points"])
            back = ledger.refund(ledger.owner, sale["id"])
            r = build(ledger, back["id"])
            assert [(x.label, x.amount) for x in r.lines] == [
                ("退款", 20_000), (f"扣已用积分 {sale['points']} 分", -back["kept"])]
            assert r.total == back["amount"] == 20_000 - back["kept"]
            done = asyncio.run(print_entry(ledger, back["id"]))
            assert done is not None and done.printed, done
            (paper,) = printer.wait(1)
            text = paper.text
        finally:
            ledger.close()
    assert f"扣已用积分 {sale['points']} 分" in text
    lines = text.splitlines()
    assert any(x.startswith("合计（元）") and x.endswith(format_yuan(back["amount"]))
               for x in lines), text


# --- the second probe: expiry, parts, expired points elsewhere ---------------------------


def test_points_spent_before_they_expired_are_paid_for(tmp_path: Path) -> None:
    """The sale's points converted on its day, then their expiry passed (written off:
    nothing left of the lot) before the refund: the expired case excused every point
    the lot lacked, so the member kept the bonus. Half converted, half expired: only
    the half spent is paid for."""
    for converted in ("all", "half"):
        clock = FakeClock()
        a = new_ledger(tmp_path / converted, "SH01", now_ms=clock)
        try:
            a.set_rule(a.owner, "earn", {"points_per_yuan": "1", "expire_days": 7},
                       effective_from="2025-01-01")
            m = a_member(a)
            before = money(a, m)
            sale = a.debit(a.owner, m, amount=100_000)
            spent = sale["points"] if converted == "all" else sale["points"] // 2
            a.convert_points(a.owner, m, spent)
            clock.advance_days(10)
            a.housekeeping()
            back = a.refund(a.owner, sale["id"])
            assert (back.get("spent"), back.get("kept")) == (spent, spent)
            assert money(a, m) == before
        finally:
            a.close()


def test_a_refund_in_many_parts_keeps_what_one_refund_would(tmp_path: Path) -> None:
    """At 150 points a yuan a point is worth 2/3 fen: a hundred parts each rounded up
    on its own kept half as much again as the points were worth."""
    a = new_ledger(tmp_path, "SH01")
    try:
        a.set_rule(a.owner, "earn", {"points_per_yuan": "1", "expire_days": 365})
        a.set_rule(a.owner, "conversion", {"points_per_yuan": "150"})
        m = a_member(a)
        sale = a.debit(a.owner, m, amount=30_000)
        a.convert_points(a.owner, m, sale["points"])
        worth = -(-sale["points"] * 100 // 150)
        parts = [a.refund(a.owner, sale["id"], 300) for _ in range(100)]
        assert sum(p.get("kept") or 0 for p in parts) == worth
        assert sum(p.get("spent") or 0 for p in parts) == sale["points"]
        assert a.refund_left(sale["id"]) == 0
    finally:
        a.close()


def test_expired_points_held_elsewhere_are_not_taken_for_spent_ones(tmp_path: Path) -> None:
    """SH02's lot of the member expired and SH02 has not written it off: the member's
    balance still counts it. A refund at SH01 of a sale whose points were converted
    asked SH02 for the rights to those expired points instead of keeping the
    converted ones' worth (and, given them, took the expired points and kept nothing).
    It takes only valid points."""
    clock = FakeClock()
    a = new_ledger(tmp_path, "SH01", now_ms=clock)
    b = new_ledger(tmp_path, "SH02", now_ms=clock)
    try:
        for led in (a, b):
            led.set_rule(led.owner, "earn", {"points_per_yuan": "1", "expire_days": 5},
                         effective_from="2025-01-01")
        name_branches(a, "SH01", "SH02")
        sync(a, b)
        m = a_member(a)
        a.transfer_rights(a.owner, m, "SH02", 100_000)
        sync(a, b)
        b.debit(b.owner, m, amount=50_000)  # points at SH02, expiring in 5 days
        sync(a, b)
        clock.advance_days(7)
        before = money(a, m)
        sale = a.debit(a.owner, m, amount=50_000)
        a.convert_points(a.owner, m, sale["points"])
        assert a.balance(m)["points"] == sale["points"]  # SH02's expired, not written off
        back = a.refund(a.owner, sale["id"])
        assert (back.get("points"), back["spent"], back["kept"]) == (
            None, sale["points"], sale["points"])
        assert money(a, m) == before
    finally:
        a.close()
        b.close()


def test_the_api_quotes_a_refund_before_it_is_made(tmp_path: Path) -> None:
    """GET /api/refund/quote on a real server: what the refund then writes; an operator
    who may not refund (a cashier, by default) may not ask, an amount that is none is
    refused, nothing is written."""

    async def scenario(ledger: Ledger, api: Api) -> None:
        amy = await api.login("amy", AMY_PW)
        token = await api.login("boss", BOSS_PW)
        mid = await topped_up(api, token, "300.00")
        status, sale = await api.call("POST", "/debit", {"member": mid, "yuan": "200.00"},
                                      token=token)
        assert status == 200, sale
        status, _ = await api.call("POST", "/points/convert",
                                   {"member": mid, "points": sale["points"]}, token=token)
        assert status == 200
        seq = ledger.storage.log.tip("SH01")[0]
        status, quote = await api.call("GET", f"/refund/quote?debit_id={sale['id']}"
                                       "&yuan=50.00", token=amy)
        assert (status, quote["error"]) == (403, "permission_denied"), quote
        status, quote = await api.call("GET", f"/refund/quote?debit_id={sale['id']}"
                                       "&yuan=50.00", token=token)
        assert status == 200, quote
        assert ledger.storage.log.tip("SH01")[0] == seq  # a quote writes nothing
        status, bad = await api.call("GET", f"/refund/quote?debit_id={sale['id']}"
                                     "&yuan=12.345", token=token)
        assert status == 400, bad
        status, done = await api.call("POST", "/refund", {"debit_id": sale["id"],
                                                          "yuan": "50.00"}, token=token)
        assert status == 200, done
        assert (quote["money"], quote["kept"], quote["spent"], quote["points"]) == (
            done["amount"], done["kept"], done["spent"], done.get("points", 0))
        assert quote["kept"] > 0 and quote["money"] + quote["kept"] == 5000

    ledger_dir = tmp_path / "api"

    async def main() -> None:
        ledger = with_operators(new_ledger(ledger_dir, "SH01"))
        ledger.set_rule(ledger.owner, "earn", {"points_per_yuan": "1", "expire_days": 365})
        try:
            async with serving(Standalone(ledger)) as api:
                await scenario(ledger, api)
        finally:
            ledger.close()

    asyncio.run(main())
