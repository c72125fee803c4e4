"""A stopped store's rows CHANGED with sqlite3 (the owner, or anyone with the PC), not
deleted (tests/test_backups.py has the deleted ones): a debit's amount raised in its
`entries` row was refunded as raised and the bonus sold; totals raised made a member
gold; a lost card set active paid; another branch's record flipped in `records` had
every sync file this branch wrote refused whole elsewhere, "altered on the way". The
store check (`status --check`, audit.unprojected, backups.damage) says each, the
refund reads the sale as signed, and the export refuses naming the log."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import Cli
from helpers import new_ledger

from crdtledger import audit, syncfile
from crdtledger.backups import damage
from crdtledger.errors import StoreError
from crdtledger.ledger import Ledger
from crdtledger.log import GENESIS, record_hash

PHONE = "13812345678"


def edit(data: Path, sql: str, *args: object) -> int:
    """sqlite3 on the store file, the node stopped: rows changed."""
    db = sqlite3.connect(data / "ledger.sqlite3")
    try:
        n = db.execute(sql, args).rowcount
        db.commit()
    finally:
        db.close()
    return n


def shop(root: Path) -> tuple[Path, str, str]:
    """A branch with a member who topped up 1,000.00, holds a card and bought 100.00:
    (its data directory, the member, the sale)."""
    with new_ledger(root, "SH01") as ledger:
        o = ledger.owner
        ledger.set_rule(o, "levels", [
            {"name": "普通会员", "threshold": 0, "discount": "1", "points_multiplier": "1"},
            {"name": "金卡", "threshold": 300_000, "discount": "0.5", "points_multiplier": "1"}])
        ledger.set_rule(o, "services", {"FOOT60": {"name": "足疗", "price": 10_000,
                                                   "minutes": 60}})
        member = ledger.add_member(o, name="张伟", phone=PHONE)
        ledger.topup(o, member, 100_000)
        ledger.issue_card(o, member, "C10001")
        sale = ledger.debit(o, member, amount=10_000)
        refunded = ledger.debit(o, member, amount=2_000)
        ledger.refund(o, refunded["id"], 1_000)
        data = ledger.storage.dir
    return data, member, str(sale["id"])


def test_a_debit_raised_in_its_row_is_not_refunded_as_raised(tmp_path: Path,
                                                              cli: Cli) -> None:
    data, member, sale = shop(tmp_path)
    with Ledger.open(data) as ledger:
        assert audit.unprojected(ledger) == {}  # an honest store: no word
        before = ledger.balance(member)
    assert edit(data, "UPDATE entries SET amount = 5000000, "
                "body = json_set(body, '$.amount', 5000000) WHERE id = ?", sale) == 1
    with Ledger.open(data) as ledger:
        for ask in (lambda: ledger.refund(ledger.owner, sale),
                    lambda: ledger.refund_terms(sale)):
            with pytest.raises(StoreError, match=r"EDITED store: entry .* differs from its "
                               "ledger document"):
                ask()
        assert ledger.balance(member) == before  # nothing paid back, nothing to sell
        assert audit.unprojected(ledger) == {"entries changed": [sale]}
    r = cli("status", "--check", data=data)
    assert ("EDITED store: rows of its tables differ from its documents, changed by hand: "
            "entries (1 row)") in r.out, r.out
    assert cli("status", "--check", "--json", data=data).json()["store_unprojected"] == {
        "entries changed": 1}


EDITS: dict[str, tuple[str, Callable[[Ledger, str], None] | None]] = {
    # The day report read 1 fen for the sale; the other branches 100.00.
    "entries": ("UPDATE entries SET amount = 1 WHERE kind = 'debit'", None),
    # Gold, half price at every sale.
    "totals": ("UPDATE totals SET topped = topped + 500000", None),
    # A lost card paid again.
    "cards": ("UPDATE cards SET status = 'active'",
              lambda ledger, _m: ledger.report_lost(ledger.owner, "C10001")),
    "members": ("UPDATE members SET name = '王五', phone = '13900000000'", None),
    # A service sold at 0.01.
    "rules": ("UPDATE rules SET body = replace(body, '10000', '1') WHERE kind = 'services'",
              None),
    "rights": ("UPDATE rights SET amount = amount + 100 WHERE purse = 'cash'", None),
}


@pytest.mark.parametrize("table", sorted(EDITS))
def test_a_row_changed_by_hand_is_said_by_the_store_check(tmp_path: Path, table: str) -> None:
    data, member, _sale = shop(tmp_path)
    sql, before = EDITS[table]
    if before is not None:
        with Ledger.open(data) as ledger:
            before(ledger, member)
    with Ledger.open(data) as ledger:
        assert audit.unprojected(ledger) == {}
    assert edit(data, sql) >= 1
    with Ledger.open(data) as ledger:
        found = audit.unprojected(ledger)
    assert list(found) == [f"{table} changed"], found
    # Reading is all it did: asked again, the same.
    with Ledger.open(data) as ledger:
        assert audit.unprojected(ledger) == found


def test_another_branchs_record_edited_is_said_and_never_exported(tmp_path: Path,
                                                                  cli: Cli) -> None:
    a, b, c = (new_ledger(tmp_path, n) for n in ("SH01", "SH02", "SH03"))
    m = b.add_member(b.owner, name="张伟", phone=PHONE)
    b.topup(b.owner, m, 10_000)
    syncfile.import_file(a, syncfile.export_file(b, tmp_path / "b.sync")["file"])
    a.close()
    data = tmp_path / "sh01"
    db = sqlite3.connect(data / "ledger.sqlite3")
    (pos, seq, raw), = db.execute("SELECT pos, seq, data FROM records WHERE node = 'SH02' "
                                  "ORDER BY seq DESC LIMIT 1").fetchall()
    flipped = bytearray(raw)
    flipped[len(flipped) // 2] ^= 1
    db.execute("UPDATE records SET data = ? WHERE pos = ?", (bytes(flipped), pos))
    db.commit()
    db.close()
    with Ledger.open(data) as a:
        said = damage(a.storage.conn)
        assert said is not None and f"record {seq} of branch SH02's log held here was " \
            "changed" in said, said
        with pytest.raises(StoreError, match=rf"record {seq} of SH02.s log held here was "
                           "changed .* edited by hand"):
            syncfile.export_file(a, tmp_path / "a.sync")
        assert not (tmp_path / "a.sync").exists()
        # What a branch lacks past SH02's records still goes: its own sales.
        syncfile.import_file(c, syncfile.export_file(b, tmp_path / "b2.sync")["file"])
        syncfile.export_file(c, tmp_path / "c.sync")
        syncfile.import_file(a, tmp_path / "c.sync")
        a.topup(a.owner, a.add_member(a.owner, name="李四", phone="13900000000"), 1_000)
        syncfile.import_file(c, syncfile.export_file(a, tmp_path / "a2.sync", "SH03")["file"])
    r = cli("status", "--check", data=data)
    assert "DAMAGED store (record" in r.out and "SH02's log" in r.out, r.out
    b.close()
    c.close()


def test_hashes_rewritten_with_the_record_still_miss_the_signed_head(tmp_path: Path
                                                                     ) -> None:
    """The kept hashes rewritten along with the data (one chain, consistent in
    itself): the head SH02 signed no longer matches them."""
    a, b = new_ledger(tmp_path, "SH01"), new_ledger(tmp_path, "SH02")
    m = b.add_member(b.owner, name="张伟", phone=PHONE)
    b.topup(b.owner, m, 10_000)
    syncfile.import_file(a, syncfile.export_file(b, tmp_path / "b.sync")["file"])
    conn = a.storage.conn
    rows = conn.execute("SELECT pos, seq, doc, data FROM records WHERE node = 'SH02' "
                        "ORDER BY seq").fetchall()
    prev = GENESIS
    with a.storage.transaction():
        for pos, seq, doc, raw in rows:
            data = bytes(raw)
            if seq == rows[-1][1]:
                data = data[:-1] + bytes([data[-1] ^ 1])
            prev = record_hash(prev, "SH02", seq, doc, data)
            conn.execute("UPDATE records SET data = ?, hash = ? WHERE pos = ?",
                         (data, prev, pos))
    said = damage(conn)
    assert said is not None and f"record {rows[-1][1]} of branch SH02's log" in said, said
    with pytest.raises(StoreError, match="SH02's log held here was changed"):
        syncfile.export_file(a, tmp_path / "a.sync")
    a.close()
    b.close()


def test_what_is_left_to_refund_is_read_from_the_row_and_the_refund_as_signed(
        tmp_path: Path) -> None:
    """The member's page asks what is left to refund of every sale it shows: read as
    signed, it loaded each sale's month document (22 ms and 16 MB a month at 100k
    entries) and raised EDITED for a row changed by hand, so the page failed. It reads
    the row; the refund itself reads the sale as signed and refuses the edited one."""
    data, member, sale = shop(tmp_path)
    edit(data, "UPDATE entries SET body = json_set(body, '$.amount', 5000000) WHERE id = ?",
         sale)
    with Ledger.open(data) as ledger:
        loaded = set(ledger.storage._docs)
        assert ledger.refund_left(sale) == 5_000_000  # the row's word, shown only
        assert set(ledger.storage._docs) == loaded  # no month's document loaded for it
        with pytest.raises(StoreError, match="EDITED store"):
            ledger.refund(ledger.owner, sale)
        assert ledger.balance(member)["cash"] == 89_000  # nothing paid back
