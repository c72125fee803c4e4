"""Erasure of a member's personal data (crdtledger.erasure), on real stores.

Checked in the bytes: after an erasure, and after it reaches another branch, neither
the member's document (its update log and snapshot) nor the projections hold the old
name, phone or notes; the figures stay; the member cannot be edited back nor sold to;
and the erasure is refused, changing nothing, while the member holds stored value.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import Cli
from helpers import new_ledger, sync, tables

from crdtledger import operations
from crdtledger.errors import InvalidInput, NotFound, PermissionDenied
from crdtledger.ledger import Ledger
from crdtledger.model import member_doc

NAME, PHONE, NOTES = "欧阳娜娜", "13912345678", "对花生过敏"
SECRETS = [s.encode() for s in (NAME, PHONE, NOTES, "孕妇")]


def doc_bytes(ledger: Ledger, member: str) -> bytes:
    """What the store holds of the member's document, and every projection row."""
    conn, doc = ledger.storage.conn, member_doc(member)
    parts = [row[0] for row in conn.execute(
        "SELECT data FROM log WHERE doc = ? UNION ALL SELECT data FROM snapshots "
        "WHERE name = ?", (doc, doc))]
    for table in ("members", "cards"):
        parts += [repr(row).encode() for row in conn.execute(f"SELECT * FROM {table}")]
    return b"".join(parts)


def leaks(blob: bytes) -> list[bytes]:
    return [s for s in SECRETS if s in blob]


def member_with_data(ledger: Ledger) -> str:
    owner = ledger.owner
    mid = ledger.add_member(owner, name=NAME, phone=PHONE, notes=NOTES, birthday="1990-05-17",
                            tags=["孕妇"], prefs={"strength": "轻"}, custom={"车牌": "沪A12345"})
    ledger.edit_member(owner, mid, fields={"notes": NOTES + "，已确认"})
    return mid


def test_erasure_leaves_no_old_value_in_the_document_and_keeps_the_figures(
        tmp_path: Path) -> None:
    ledger = new_ledger(tmp_path, "SH01")
    mid = member_with_data(ledger)
    ledger.topup(ledger.owner, mid, 10_000)
    sale = ledger.debit(ledger.owner, mid, amount=10_000)
    daily = operations.run(ledger, ledger.owner, "report.daily", {})
    assert leaks(doc_bytes(ledger, mid))

    result = operations.run(ledger, ledger.owner, "member.erase", {"member": mid})

    assert result["erased"] == [mid]
    assert leaks(doc_bytes(ledger, mid)) == []
    m = ledger.member(mid)
    assert m["erased"] and m["deleted"] and m["name"] == "" and m["home"] == "SH01"
    assert not (m.get("notes") or m.get("tags") or m.get("custom") or m.get("birthday"))
    assert ledger.find_members(PHONE) == [] and ledger.find_members(NAME) == []
    # The books: the sale is still there, the day's figures unchanged.
    assert ledger.entry(sale["id"])["amount"] == 10_000
    assert operations.run(ledger, ledger.owner, "report.daily", {}) == daily
    assert ledger.balance(mid)["cash"] == 0
    # Erased for good: not edited back, not sold to, not erased twice.
    with pytest.raises(InvalidInput, match="erased"):
        ledger.edit_member(ledger.owner, mid, fields={"name": NAME})
    with pytest.raises(InvalidInput):
        ledger.topup(ledger.owner, mid, 100)
    with pytest.raises(InvalidInput, match="erased already"):
        ledger.erase_member(ledger.owner, mid)
    ledger.close()
    # Reopened from the file: still erased, still nothing of the old values.
    again = Ledger.open(tmp_path / "sh01")
    assert again.member(mid)["erased"] and leaks(doc_bytes(again, mid)) == []
    again.close()


def test_refused_while_the_member_holds_stored_value_and_nothing_changes(
        tmp_path: Path) -> None:
    ledger = new_ledger(tmp_path, "SH01")
    mid = member_with_data(ledger)
    ledger.topup(ledger.owner, mid, 5_000)
    conn = ledger.storage.conn
    before = {t: conn.execute(f"SELECT * FROM {t}").fetchall() for t in tables(ledger)}
    with pytest.raises(InvalidInput, match=r"still holds cash 50\.00: settle it first"):
        operations.run(ledger, ledger.owner, "member.erase", {"member": mid})
    after = {t: conn.execute(f"SELECT * FROM {t}").fetchall() for t in tables(ledger)}
    assert after == before
    with pytest.raises(NotFound):
        ledger.erase_member(ledger.owner, "01J5Q8ZK3T7XM.SH01")
    cashier = ledger.add_operator(ledger.owner, name="amy", password="cashier-pw-1")
    with pytest.raises(PermissionDenied):
        operations.run(ledger, cashier, "member.erase", {"member": mid})
    ledger.close()


def test_every_replica_erases_when_the_erasure_reaches_it(tmp_path: Path) -> None:
    a, b = new_ledger(tmp_path, "SH01"), new_ledger(tmp_path, "SH02")
    mid = member_with_data(a)
    sync(a, b)
    assert b.member(mid)["name"] == NAME and leaks(doc_bytes(b, mid))
    # While apart, SH02 writes more personal data into the member; SH01 erases.
    b.edit_member(b.owner, mid, fields={"notes": "孕妇 and more"})
    a.erase_member(a.owner, mid)
    sync(a, b)
    for ledger in (a, b):
        m = ledger.member(mid)
        assert m["erased"] and m["name"] == "" and not m.get("notes"), ledger.node
        assert leaks(doc_bytes(ledger, mid)) == [], ledger.node
        assert ledger.find_members(PHONE) == []
    # A third branch that joins afterwards gets the erased member, not the old one.
    c = new_ledger(tmp_path, "SH03")
    sync(a, c)
    assert c.member(mid)["erased"] and leaks(doc_bytes(c, mid)) == []
    for ledger in (a, b, c):
        ledger.close()


def test_the_command_line_erases_and_says_so(cli: Cli, tmp_path: Path) -> None:
    ledger = new_ledger(tmp_path, "SH01")
    mid = member_with_data(ledger)
    ledger.close()
    data = tmp_path / "sh01"
    assert cli("member", "erase", "--member", mid, "--json", data=data).json()["erased"] == [mid]
    shown = cli("member", "show", "--member", mid, "--json", data=data).json()
    assert shown["name"] == "" and shown["erased"]
    again = cli("member", "erase", "--member", mid, data=data)
    assert again.code != 0 and "erased already" in again.err
