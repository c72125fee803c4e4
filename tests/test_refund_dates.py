"""A refund is booked on or after the sale it names, and only the sale's branch refunds
it, saying so in yuan (a tester's probes, twelfth wave).

- A lone PC ran three days ahead for an hour on 30 January and sold (booked 2 February);
  its clock put right (a new era, crdtledger.hlc), the sale was refunded the same day
  by an id dated 30 January, before its debit: January's signed closing gave the
  member 1,100.00 of cash (she never held more than 1,000.00) and -120 points, and the
  30 January report sales of -100.00 with no debit.
- At SH02, a refund of an SH01 sale said "100 of this refund balance is held at SH01
  (1833)", fen read as a count; its quote said "pays back 1.00" where the refund is
  refused."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from conftest import Cli
from helpers import FakeClock, new_ledger, sync
from test_cli import new_member

from crdtledger import closing, operations, views
from crdtledger.errors import RefundElsewhere, RightsElsewhere
from crdtledger.hlc import id_time_ms

SH = ZoneInfo("Asia/Shanghai")


def _ms(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=SH).timestamp() * 1000)


def test_a_sale_made_while_the_clock_ran_ahead_is_refunded_on_its_own_day(
        tmp_path: Path) -> None:
    clock = FakeClock(_ms("2026-01-30T10:00"))
    shop = new_ledger(tmp_path, "HZ01", now_ms=clock)
    try:
        o = shop.owner
        m = shop.add_member(o, name="李娜", phone="13800138009")
        operations.run(shop, o, "topup", {"member": m, "yuan": "1000.00", "pay": "cash"})
        clock.advance_days(3)  # the PC runs three days ahead for an hour
        sale = operations.run(shop, o, "debit", {"member": m, "yuan": "100.00",
                                                 "pay": "stored"})
        assert shop.storage.day_of(id_time_ms(sale["id"])) == "2026-02-02"
        clock.advance_days(-3)
        clock.ms += 3_600_000  # put right an hour later: still 30 January
        # The quote judges on the day the refund will be booked on, as the refund does.
        quote = operations.run(shop, o, "quote.refund", {"debit_id": sale["id"]})
        assert quote["money"] == 10_000
        back = operations.run(shop, o, "refund", {"debit_id": sale["id"]})
        assert back["id"] > sale["id"]  # after what it names, on the sale's day
        assert shop.storage.day_of(id_time_ms(back["id"])) == "2026-02-02"
        assert shop.storage.day_of(back["at"]) == "2026-02-02"
        # The next operation is booked by the right time again (a new era).
        later = operations.run(shop, o, "topup", {"member": m, "yuan": "1.00",
                                                  "pay": "cash"})
        assert shop.storage.day_of(id_time_ms(later["id"])) == "2026-01-30"
        assert later["id"] < sale["id"]

        day = views.daily_report(shop, "2026-01-30")
        assert (day["sales"], day["debits"], day["refunds"]) == (0, 0, 0)
        ahead = views.daily_report(shop, "2026-02-02")
        assert (ahead["sales"], ahead["debits"], ahead["refunds"]) == (0, 1, 10_000)

        clock.ms = _ms("2026-02-10T09:00")
        assert closing.close_due_month(shop) == "2026-01"
        january = closing.member_balances(shop, "2026-01")["total"]
        assert january["cash"] == 100_100  # the top-ups of January, nothing else
        assert january["points"] >= 0
        assert shop.balance(m)["cash"] == 100_100
    finally:
        shop.close()


def test_a_refund_at_another_branch_says_where_in_yuan_and_its_quote_alike(
        tmp_path: Path) -> None:
    a, b = new_ledger(tmp_path, "SH01"), new_ledger(tmp_path, "SH02")
    try:
        m = a.add_member(a.owner, name="张伟", phone="13800138000")
        a.topup(a.owner, m, 5_000)
        sale = a.debit(a.owner, m, amount=2_000)
        a.refund(a.owner, sale["id"], 167)
        sync(a, b)
        for name in ("refund", "quote.refund"):
            with pytest.raises(RefundElsewhere) as err:
                operations.run(b, b.owner, name, {"debit_id": sale["id"], "yuan": "1.00"})
            said = str(err.value)
            assert "made at SH01 and is refunded only there" in said, said
            assert "18.33 of it left to refund" in said, said
            assert "100 of" not in said and "(1833)" not in said, said
            # What the counter and the API's details read: a refund's, at SH01.
            assert isinstance(err.value, RightsElsewhere)
            assert (err.value.purse, err.value.branch, err.value.amount) == (
                "refund", "SH01", 1_833)
        assert b.refund_left(sale["id"]) == 1_833
    finally:
        a.close()
        b.close()


def test_a_package_refund_at_another_branch_counts_uses(tmp_path: Path) -> None:
    a, b = new_ledger(tmp_path, "SH01"), new_ledger(tmp_path, "SH02")
    try:
        m = a.add_member(a.owner, name="张伟", phone="13800138000")
        service = next(iter(a.rule("services")))
        pkg = a.sell_package(a.owner, m, service, 5, 10_000, pay="cash")
        used = a.debit(a.owner, m, service=service, qty=2, pay="package", package=pkg["id"])
        sync(a, b)
        with pytest.raises(RefundElsewhere, match=r"\(2 uses of it left to refund\)"):
            b.refund_terms(used["id"])
    finally:
        a.close()
        b.close()


def test_the_cli_says_so_for_a_refund_and_its_quote(cli: Cli, make_node: Callable[..., Path],
                                                    tmp_path: Path) -> None:
    sh01, sh02 = make_node("SH01"), make_node("SH02")
    member = new_member(sh01, "李雷", "13800138001", topup="100.00")
    sale = cli("debit", "--member", member, "--amount", "20.00", "--json", data=sh01).json()
    assert cli("refund", "--debit", sale["id"], "--amount", "1.67", data=sh01).code == 0
    assert cli("export", "--out", tmp_path / "a.sync", data=sh01).code == 0
    assert cli("import", tmp_path / "a.sync", data=sh02).code == 0
    for args in (("refund", "--debit", sale["id"], "--amount", "1.00"),
                 ("quote", "refund", "--debit", sale["id"], "--amount", "1.00")):
        r = cli(*args, data=sh02)
        assert r.code != 0, r
        assert "refunded only there" in r.err and "18.33 of it left" in r.err, r.err
        assert "pays back" not in r.out and "Traceback" not in r.err, r
    r = cli("refund", "--debit", sale["id"], "--amount", "1.00", "--json", data=sh02)
    said = json.loads(r.out)
    assert r.code != 0 and said["error"] == "rights_elsewhere" and "18.33" in said["message"]
