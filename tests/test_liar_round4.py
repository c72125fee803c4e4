"""A branch with a valid certificate that lies, fourth round (5 December, evening): what
it wrote in other branches' rows that are not stored value, and times that are not its
entries' own.

- Another branch's shelf stock raised by a `stock` entry: every replica took it, and
  that branch then sold units it never had, its low-stock reminder silent.
- Another branch's points raised: that branch's to redeem, and rows pushed together
  past SQLite's integer range.
- Check-ins whose `at` lay days ahead of their ids: the once-a-day limit read `at`'s
  day and refused the member's real check-ins on each of those days.

Write rule raise-own refuses the first two (an entry raises only its writer's rows,
but for transfers, sweeps and a shipment's units in transit, no more than it takes
from its writer's stock); the schema sets aside an entry whose `at` is not its id's
time. SH01 is honest, SH03 the liar (tests/helpers.Forger), SH02 and SH04 honest
replicas (test_liar_round2.World). Real stores, real apply_batch.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import Forger, sync
from pycrdt import Map
from test_liar_round2 import World

from crdtledger import views
from crdtledger.errors import InvalidInput
from crdtledger.goods import OutOfStock
from crdtledger.model import member_doc
from peer import cli, receipts

DAY_MS = 86_400_000


@pytest.fixture
def w(tmp_path: Path) -> Iterator[World]:
    world = World(tmp_path)
    yield world
    world.close()


def _sent(w: World, *entries: dict[str, object]) -> None:
    rec = w.write(*entries)
    for r in (w.a, w.b, w.c):
        r.apply_batch(w.liar.batch([rec]))


def _synced(w: World) -> None:
    """What SH01 wrote since the world was made reaches the liar and the replicas, and
    the liar writes on from its ledger's tip."""
    for r in (w.liar.ledger, w.b, w.c):
        sync(w.a, r)
    w.liar = Forger(w.liar.ledger)


def test_a_branch_cannot_raise_another_branchs_shelf_stock(w: World) -> None:
    item = w.a.add_goods(w.a.owner, "G01", "精油", price=8800, cost=3000, low_stock=5)
    w.a.stock_in(w.a.owner, "G01", 2)
    _synced(w)
    _sent(w, w.entry("stock", item["stock"], [["stock", "SH01", 1000]], qty=1000,
                     reason="in", goods="G01"))
    for r in (w.a, w.b, w.c):
        assert [(f["node"], f["rule"]) for f in r.faults()] == [("SH03", "raise-own")]
        assert r.stock_of("G01", "SH01")["qty"] == 2
    with pytest.raises(OutOfStock):
        w.a.sell_goods(w.a.owner, "G01", qty=10)


def test_a_shipment_puts_in_transit_no_more_than_it_takes_from_its_writers_stock(
        w: World) -> None:
    item = w.a.add_goods(w.a.owner, "G01", "精油", price=8800, cost=3000)
    _synced(w)
    _sent(w, w.entry("stock", item["stock"], [["stock", "SH03", -1], ["transit", "SH01", 50]],
                     qty=50, reason="ship", goods="G01", to="SH01"))
    for r in (w.a, w.b, w.c):
        assert [f["rule"] for f in r.faults()] == ["raise-own"]
        assert r.stock_held(r.goods_item("G01"), "transit") == {}


def test_a_branch_cannot_raise_another_branchs_points(w: World) -> None:
    _synced(w)
    _sent(w, w.entry("checkin", w.member, [["points", "SH01", 10**13]], activity="X"))
    for r in (w.a, w.b, w.c):
        assert [f["rule"] for f in r.faults()] == ["raise-own"]
        assert r.rights(w.member, "points") == {}


def test_entries_dated_away_from_their_ids_do_not_use_up_a_members_check_ins(
        w: World) -> None:
    w.a.set_activity(w.a.owner, "DAILY", {"name": "每日签到", "from": "2026-01-01T00:00",
                                          "to": "2026-12-31T23:59", "points": 10,
                                          "repeat": "daily", "per_day": 1})
    _synced(w)
    lies = []
    for k in range(1, 4):
        e = w.entry("checkin", w.member, [["points", "SH03", 1]], activity="DAILY", points=1)
        e["at"] = int(e["at"]) + k * DAY_MS  # the id says now; `at` says k days on
        lies.append(e)
    _sent(w, *lies)
    w.clock.advance_days(1)
    for _day in range(3):
        for r in (w.a, w.b):
            r.checkin(r.owner, "DAILY", w.member)
        w.clock.advance_days(1)
    for r in (w.a, w.b, w.c):
        assert r.rights(w.member, "points").get("SH03", 0) == 0


def test_rows_summing_past_sqlites_integer_range_do_not_stop_a_members_reads(
        w: World) -> None:
    """A liar may raise its own rows without end (points by check-ins: 58 records of
    2,000 entries of eight deltas of 10**13 each take its row near 2**63, 65 s through
    apply_batch, too slow here: the rows those records leave are set directly). Summed
    with an honest row, SQLite's SUM raised "integer overflow": the member's balance,
    the member export, and the notices' daily pass (which reads that export) failed at
    every honest branch, every day. The reads now sum as TOTAL does."""
    big = 2**63 - 1 - 10**13
    with w.b.storage.conn:
        w.b.storage.conn.execute(
            "INSERT INTO rights(member, purse, node, amount) VALUES (?, 'points', 'SH03', ?)",
            (w.member, big))
        w.b.storage.conn.execute(
            "INSERT INTO rights(member, purse, node, amount) VALUES (?, 'points', 'SH01', ?)",
            (w.member, 2 * 10**13))
    assert w.b.balance(w.member)["points"] > 2**63 - 2**20
    assert [r["id"] for r in views.member_records(w.b)].count(w.member) == 1
    assert views.rights_summary(w.b, "SH03")["held"]["points"] > 2**62


def test_stock_moves_by_a_shipment_only_not_by_a_transfer(w: World) -> None:
    """Stock raised on the liar's own shelf, then moved to SH01's by a `transfer`
    (balanced, so transfer-balanced took it): SH01 sold ten units of the two it had.
    No honest version moves units by a transfer or a sweep."""
    item = w.a.add_goods(w.a.owner, "G01", "精油", price=8800, cost=3000)
    w.a.stock_in(w.a.owner, "G01", 2)
    _synced(w)
    _sent(w, w.entry("stock", item["stock"], [["stock", "SH03", 1000]], qty=1000,
                     reason="in", goods="G01"),
          w.entry("transfer", item["stock"], [["stock", "SH03", -1000], ["stock", "SH01", 1000]]))
    for r in (w.a, w.b, w.c):
        assert [f["rule"] for f in r.faults()] == ["raise-own"]
        assert r.stock_of("G01", "SH01")["qty"] == 2


def test_terminal_commands_in_a_liars_records_are_shown_not_obeyed(
        w: World, capsys: pytest.CaptureFixture[str]) -> None:
    """An entry's `op` and a member's name (member documents are any branch's to
    write) holding ESC [2J and an OSC title: `crdtledger receipt show` at an honest
    branch printed them raw, clearing the operator's terminal. Printed output is made
    printable (crdtledger.inputs.printable), as receipts sent to a printer are."""
    esc = "\x1b[2J\x1b[H\x1b]0;PWNED\x07"
    top = w.entry("topup", w.member, [["cash", "SH03", 100]], amount=100, paid=100,
                  pay="cash")
    top["op"] = esc + "x@SH03"

    def rename(d: Any) -> None:
        d.get("members", type=Map)[w.member]["name"] = esc + "王芳"

    recs = [w.write(top), w.liar.write(member_doc(w.member), rename)]
    w.b.apply_batch(w.liar.batch(recs))
    shown = receipts.text(receipts.build(w.b, top["id"]))
    assert "王芳" in shown and "\x1b" not in shown and "\x07" not in shown
    cli.emit(argparse.Namespace(), cli.Result({}, shown))
    printed = capsys.readouterr().out
    assert "王芳" in printed and "\x1b" not in printed


def test_a_purse_that_is_not_text_is_judged_not_a_crash(w: World) -> None:
    """A transfer whose delta names a list for a purse: the write rules hashed it, and
    apply_batch raised TypeError at every replica instead of refusing the record."""
    _sent(w, w.entry("transfer", w.member, [[["x"], "SH01", 5], ["cash", "SH03", -5]]))
    for r in (w.a, w.b, w.c):
        assert [f["rule"] for f in r.faults()] == ["transfer-balanced"]


def test_a_branch_reverses_only_its_own_check_ins(w: World) -> None:
    """A liar's `checkin` naming SH01's check-in in `ref` read as its reversal: SH01's
    once-a-day check-in then counted nothing, a second was paid the same day, and the
    report showed a reversal nobody made (write rule reversal-own)."""
    w.a.set_activity(w.a.owner, "DAILY", {"name": "每日签到", "from": "2026-01-01T00:00",
                                          "to": "2026-12-31T23:59", "points": 10,
                                          "repeat": "daily", "per_day": 1})
    first = w.a.checkin(w.a.owner, "DAILY", w.member)
    _synced(w)
    _sent(w, w.entry("checkin", w.member, [], ref=first["id"], points=10, activity="DAILY"))
    for r in (w.a, w.b, w.c):
        assert [f["rule"] for f in r.faults()] == ["reversal-own"]
    with pytest.raises(InvalidInput, match="1 time"):
        w.a.checkin(w.a.owner, "DAILY", w.member)
    assert [r["status"] for r in w.a.attendance("DAILY")] == ["ok"]
