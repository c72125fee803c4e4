"""Stores written by released formats open, upgraded, with nothing lost.

tests/fixtures/stores/format-N holds what the release of store format N wrote (made
once by tests/fixtures/stores/make.py): a head office and a branch of a test chain
that traded and synced, and what the branch reported then. Each is opened by this
program from a copy: every entry, member, balance, day's figures and log must be as
reported; it must take new writes; and a branch enrolled today must take its records,
from the store or from the sync file that release wrote, and verify them under the
heads their writers signed back then.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from conftest import Cli
from helpers import sync

from crdtledger import operations, views
from crdtledger.ledger import Ledger
from crdtledger.storage import FORMAT_VERSION, PAGE_SIZE, PROJECTION
from crdtledger.syncfile import import_file
from peer.chain import enrol

FIXTURES = sorted((Path(__file__).parent / "fixtures" / "stores").glob("format-*"))


def reported(ledger: Ledger, expected: dict[str, Any]) -> dict[str, Any]:
    """What the fixture's expected.json holds, as this program reports it now."""
    conn = ledger.storage.conn
    return {
        "format": expected["format"],
        "node": ledger.node,
        "entries": [json.loads(b) for (b,) in conn.execute(
            "SELECT body FROM entries ORDER BY id")],
        "members": {m: {"name": ledger.member(m)["name"], "balance": ledger.balance(m)}
                    for m in expected["members"]},
        # The figures reported then (a later release may report more of each day).
        "daily": {d: {k: v for k, v in views.daily_report(ledger, d, None).items()
                      if k in want} for d, want in expected["daily"].items()},
        "positions": ledger.storage.log.positions(),
    }


def test_there_is_a_fixture_of_the_current_format() -> None:
    """A release that changes the store format adds its fixture (make.py)."""
    assert f"format-{FORMAT_VERSION}" in {p.name for p in FIXTURES}


@pytest.mark.parametrize("fixture", FIXTURES, ids=lambda p: p.name)
def test_a_released_store_opens_with_everything(fixture: Path, tmp_path: Path,
                                                cli: Cli) -> None:
    copy = tmp_path / fixture.name
    shutil.copytree(fixture, copy)
    expected = json.loads((copy / "expected.json").read_text())
    with Ledger.open(copy / "sh01") as sh:
        assert sh.storage.meta["format"] == str(FORMAT_VERSION)
        # 0.2.0's with SQLite's default pages, later ones with PAGE_SIZE; a store keeps
        # the page size it was made with.
        pages = 4096 if fixture.name == "format-3" else PAGE_SIZE
        assert sh.storage.conn.execute("PRAGMA page_size").fetchone() == (pages,)
        assert reported(sh, expected) == expected
        # Its members are found by phone however it is typed (the canonical form the
        # store filled in when opened), and no branch of it has handed over.
        for m in expected["members"]:
            phone = sh.member(m)["phone"]
            assert views.member_by_phone(sh, f"+86 {phone[:3]}-{phone[3:]}") == m
        assert views.handed_over(sh) == set()
        # It goes on trading: a new member, a top-up and a sale.
        mid = operations.run(sh, sh.owner, "member.add",
                             {"name": "新会员", "phone": "13700000000"})["member_id"]
        operations.run(sh, sh.owner, "topup", {"member": mid, "yuan": "10.00"})
        operations.run(sh, sh.owner, "debit", {"member": mid, "yuan": "2.50"})
        assert sh.balance(mid)["cash"] == 750
        # A branch enrolled today takes its records and theirs, verified.
        Ledger.create(tmp_path / "sh02", "SH02", "fixture")
        enrol(copy / "chain", tmp_path / "sh02", "SH02")
        with Ledger.open(tmp_path / "sh02") as fresh:
            assert fresh.storage.conn.execute("PRAGMA page_size").fetchone() == (PAGE_SIZE,)
            sync(sh, fresh)
            assert fresh.refusals == type(fresh.refusals)()
            assert fresh.storage.log.positions() == sh.storage.log.positions()
            assert {m: fresh.balance(m) for m in expected["members"]} == {
                m: v["balance"] for m, v in expected["members"].items()}
    # A sync file of that release imports into a branch enrolled today.
    Ledger.create(tmp_path / "sh03", "SH03", "fixture")
    enrol(copy / "chain", tmp_path / "sh03", "SH03")
    with Ledger.open(tmp_path / "sh03") as fresh:
        import_file(fresh, copy / "sh01.sync")
        assert fresh.storage.log.positions() == expected["positions"]
        assert {m: fresh.balance(m) for m in expected["members"]} == {
            m: v["balance"] for m, v in expected["members"].items()}
    # And the command line reads it.
    amy = next(m for m, v in expected["members"].items() if v["name"] == "王芳")
    out = cli("balance", "--member", amy, "--json", data=copy / "sh01").json()
    assert out == expected["members"][amy]["balance"]


def test_an_entry_of_a_kind_a_newer_release_writes_is_taken_once_upgraded(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SH01 runs a newer release with an entry kind this one lacks ("award", points).
    SH02, on this release, sets it aside, and SH01's later redemption of those points
    (and a top-up behind it) wait. Once SH02 is upgraded nothing looked at them again:
    it held 0.00 and 0 points where the others held 50.00 and 100, for good. A store
    opened by a build that knows other kinds judges what it set aside again."""
    from helpers import FakeClock, new_ledger, sync

    from crdtledger import model

    known, newer = model.ENTRY_KINDS, model.ENTRY_KINDS | {"award"}

    def build(kinds: frozenset[str]) -> None:  # which release runs (one process here)
        monkeypatch.setattr(model, "ENTRY_KINDS", kinds)

    clock = FakeClock()
    a, b = new_ledger(tmp_path, "SH01", now_ms=clock), new_ledger(tmp_path, "SH02", now_ms=clock)
    a.set_rule(a.owner, "earn", {"points_per_yuan": "1", "expire_days": 365},
               effective_from="2025-01-01")
    m = a.add_member(a.owner, name="A", phone="13800138000")
    sync(a, b)
    build(newer)
    a._post(a._entry("award", m, deltas=[("points", a.node, 300)], points=300,
                     expires="2027-01-01"), {})
    build(known)
    a.redeem_points(a.owner, m, 200, "towel")
    a.topup(a.owner, m, 5000)
    sync(a, b)
    assert b.balance(m)["cash"] == 0  # set aside, the rest waiting behind it
    path = b.storage.dir
    b.close()
    build(newer)
    with Ledger.open(path, now_ms=clock) as upgraded:
        assert upgraded.balance(m) == a.balance(m)
        conn = upgraded.storage.conn
        assert conn.execute("SELECT COUNT(*) FROM quarantine").fetchone() == (0,)
        assert conn.execute("SELECT COUNT(*) FROM deferred").fetchone() == (0,)
        assert conn.execute("SELECT earned, left FROM points_lots").fetchall() == \
            a.storage.conn.execute("SELECT earned, left FROM points_lots").fetchall()
    a.close()


def test_rows_an_older_build_projected_otherwise_are_projected_again(
        tmp_path: Path) -> None:
    """A card replaced at SH01 and marked found at SH02 while apart stayed active at
    the branches that held it under the build before (a concurrent event won by its
    later id), and was refused as replaced at one that joined after; a member whose
    `merged_into` a liar had made a list could not be edited. A store that an older
    build projected (meta `projection` other than this build's) projects such rows
    again when it opens. The older build's rows are made here by hand."""
    from helpers import new_ledger

    a, b = new_ledger(tmp_path, "SH01"), new_ledger(tmp_path, "SH02")
    m = a.add_member(a.owner, name="Li", phone="13800000000")
    other = a.add_member(a.owner, name="Wang", phone="13800000001")
    a.issue_card(a.owner, m, "OLD1")
    a.report_lost(a.owner, "OLD1")
    sync(a, b)
    a.replace_card(a.owner, "OLD1", "NEW1")
    b.report_found(b.owner, "OLD1")
    sync(a, b)
    data = b.storage.dir
    a.close()
    b.close()
    with Ledger.open(data) as older:  # as the build before left it
        conn = older.storage.conn
        conn.execute("UPDATE cards SET status = 'active' WHERE card_no = 'OLD1'")
        conn.execute("UPDATE members SET body = json_set(body, '$.merged_into', "
                     "json('[\"x\"]')) WHERE id = ?", (other,))
        conn.execute("UPDATE meta SET value = '0' WHERE key = 'projection'")
    with Ledger.open(data) as upgraded:
        assert upgraded.card("OLD1")["status"] == "replaced"
        operations.run(upgraded, upgraded.owner, "member.edit",
                       {"member": other, "notes": "VIP"})
        assert upgraded.storage.meta["projection"] == PROJECTION


def test_a_store_an_older_release_wrote_in_between_gets_its_points_lots_back(
        tmp_path: Path, cli: Cli) -> None:
    """0.2.0 reads store format 3, as this release once wrote: it opened a store this
    release had written and sold without the points lots (a table it does not know),
    and back here the lots were never rebuilt: 10 points that never expired, closings
    that differed. A store of format 4 is refused by 0.2.0 (it reads 3 only); one
    that reaches this release at 3 has its lots filled anew from its entries. (0.2.0
    itself is not run here: its writes are stood in for by its format mark and the
    lots it left out.)"""
    Ledger.create(tmp_path / "sh01", "SH01", "test")
    with Ledger.open(tmp_path / "sh01") as sh:
        sh.set_rule(sh.owner, "earn", {"points_per_yuan": "1", "expire_days": 365},
                    effective_from="2025-01-01")
        m = sh.add_member(sh.owner, name="王芳", phone="13800000001")
        sh.topup(sh.owner, m, 100_000)
        sh.debit(sh.owner, m, amount=13_800)
        lots = sh.storage.conn.execute("SELECT * FROM points_lots").fetchall()
        assert lots and sh.storage.meta["format"] == "4"
        with sh.storage.transaction():  # what 0.2.0 leaves: its format, no lots
            sh.storage.conn.execute("DELETE FROM points_lots")
            sh.storage.conn.execute("UPDATE meta SET value = '3' WHERE key = 'format'")
    with Ledger.open(tmp_path / "sh01") as sh:
        assert sh.storage.meta["format"] == "4"
        assert sh.storage.conn.execute("SELECT * FROM points_lots").fetchall() == lots
