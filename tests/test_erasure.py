"""Erasure of a member's personal data (crdtledger.erasure), on real stores.

Checked in the bytes: after an erasure, and after it reaches another branch, neither
the member's document (its update log and snapshot) nor the projections hold the old
name, phone or notes; the figures stay; the member cannot be edited back nor sold to;
and the erasure is refused, changing nothing, while the member holds stored value.
"""

from __future__ import annotations

from collections import deque
from pathlib import Path
from typing import Any

import pytest
from conftest import Cli
from helpers import FakeClock, doc_content, new_ledger, sync, tables
from hypothesis import given, settings
from hypothesis import strategies as st
from pycrdt import Array, Doc, Map, Text

from crdtledger import operations
from crdtledger.backups import restore, write_backup
from crdtledger.errors import InvalidInput, NotFound, PermissionDenied, RemoteProtocolError
from crdtledger.ledger import Ledger
from crdtledger.log import Record
from crdtledger.model import member_doc
from crdtledger.redaction import (
    NotRedactable,
    Struct,
    carries_nothing,
    encode,
    parse,
    redact,
)
from crdtledger.syncfile import export_file, import_file

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


# --- the signed records (crdtledger.redaction) -----------------------------------------


def store_bytes(ledger: Ledger) -> bytes:
    """The store's files as they are on disk (the WAL checkpointed first)."""
    ledger.storage.forget_freed()
    files = sorted(ledger.storage.dir.glob("ledger.sqlite3*"))
    assert files
    return b"".join(p.read_bytes() for p in files)


def test_erased_values_leave_the_signed_records_of_every_writer(tmp_path: Path) -> None:
    a, b = new_ledger(tmp_path, "SH01"), new_ledger(tmp_path, "SH02")
    mid = member_with_data(a)
    sync(a, b)
    b.edit_member(b.owner, mid, fields={"notes": "孕妇, seen at SH02"}, tags_add=["VIP"])
    sync(a, b)
    assert leaks(store_bytes(a)) and leaks(store_bytes(b))

    erased = a.erase_member(a.owner, mid)
    assert erased["redactions"]  # SH01's own records into the member, at once
    sync(a, b)
    # SH02 redacted its own record as soon as the erasure reached it, and said so.
    assert b.storage.conn.execute(
        "SELECT count(*) FROM entries WHERE kind = 'redaction' AND node = 'SH02'"
    ).fetchone() == (1,)
    assert b.housekeeping() == []  # nothing left for its daily pass
    sync(a, b)
    for ledger in (a, b):
        assert leaks(store_bytes(ledger)) == [], ledger.node
        assert ledger.member(mid)["erased"]
        assert ledger.refusals == deque(), ledger.refusals

    # A branch that joins later takes the redacted records: they verify under their
    # writers' signed heads, and it never holds the old values.
    c = new_ledger(tmp_path, "SH03")
    sync(b, c)
    assert c.storage.log.positions() == a.storage.log.positions()
    assert c.member(mid)["erased"] and leaks(store_bytes(c)) == []
    assert doc_content(c)[member_doc(mid)] == doc_content(a)[member_doc(mid)]
    # And so does one that joins by sync file.
    d = new_ledger(tmp_path, "SH04")
    path = tmp_path / "all.sync"
    export_file(a, path)
    import_file(d, path)
    assert d.member(mid)["erased"] and leaks(store_bytes(d)) == []
    for ledger in (a, b, c, d):
        ledger.close()


def test_a_redacted_record_is_taken_only_as_its_writer_signed_it(tmp_path: Path) -> None:
    """A relay cannot pass off other bytes as a redacted record, nor redact a record
    its writer did not: the chain then misses the signed head and nothing is taken."""
    a, c = new_ledger(tmp_path, "SH01"), new_ledger(tmp_path, "SH03")
    mid = member_with_data(a)
    a.topup(a.owner, mid, 100)
    a.debit(a.owner, mid, amount=100)
    a.erase_member(a.owner, mid)
    records = a.storage.log.records_after({"SH01": 0})
    redacted = [r for r in records if r.doc == member_doc(mid)
                and r.data == redact(r.data, mid)]
    assert redacted
    # 1. A redacted record's bytes swapped for other content-free bytes.
    first = redacted[0]
    other = bytearray(first.data)
    other[-2] ^= 1  # a GC length one off: still carries nothing, not what was signed
    forged = [Record(r.node, r.seq, r.doc, bytes(other)) if r == first else r
              for r in records]
    # 2. A money record replaced by a content-free update of the same place.
    sale = next(r for r in records if r.doc.startswith("ledger/"))
    blank = [Record(r.node, r.seq, r.doc, redact_any(r.data)) if r == sale else r
             for r in records]
    for recs in (forged, blank):
        with pytest.raises(RemoteProtocolError):
            c.apply_batch(a.batch(recs), strict=True)
        assert c.storage.log.positions() == {}
    c.apply_batch(a.batch(records), strict=True)
    assert c.member(mid)["erased"]
    a.close()
    c.close()


def redact_any(update: bytes) -> bytes:
    """Every struct of `update` as a GC struct of its length: what a forger would send
    to blank a record that is not a member's."""
    blocks, delete_set = parse(update)
    return encode([(client, clock, [Struct.gc(st.length) for st in sts])
                   for client, clock, sts in blocks], delete_set)


# --- the reader of Yjs updates --------------------------------------------------------

VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-2**53, 2**53) | st.floats(allow_nan=False)
    | st.text(max_size=20) | st.binary(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                max_size=3),
    max_leaves=8)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["map", "nested", "array", "text"]),
                          st.text(min_size=1, max_size=6), VALUES), min_size=1, max_size=6))
def test_the_reader_reads_back_every_update_pycrdt_writes(ops: list[Any]) -> None:
    """parse/encode give back the very bytes of any update, whatever it holds (emoji
    in text count in UTF-16 units, as Yjs counts them)."""
    doc: Doc[Any] = Doc()
    updates: list[bytes] = []
    doc.observe(lambda e: updates.append(e.update))
    root = doc.get("members", type=Map)
    for kind, key, value in ops:
        if kind == "map":
            root[key] = value
        elif kind == "nested":
            root[key] = Map({"v": value, "t": Text("x😀" + key)})
        elif kind == "array":
            root[key] = Array([value, key])
        else:
            doc.get("text", type=Text).insert(0, key + "😀")
    for update in [*updates, doc.get_update()]:
        assert encode(*parse(update)) == update


def test_a_record_of_another_member_or_a_card_is_not_redacted_as_this_one() -> None:
    doc: Doc[Any] = Doc()
    updates: list[bytes] = []
    doc.observe(lambda e: updates.append(e.update))
    doc.get("members", type=Map)["M2"] = Map({"name": "x"})
    doc.get("cards", type=Map)["C1"] = Map({"member": "M1"})
    for update in updates:
        with pytest.raises(NotRedactable):
            redact(update, "M1")
    assert not carries_nothing(updates[0]) and carries_nothing(redact(updates[0], "M2"))
    with pytest.raises(NotRedactable):
        parse(updates[0] + b"\x00")


def test_a_backup_taken_before_the_erasure_loses_the_values_when_restored(
        tmp_path: Path) -> None:
    """Months later, SH02 is restored from a backup taken before the erasure: the
    restored node catches up with the chain before it sells, and the erasure and
    every writer's redaction come with it, whatever their age."""
    clock = FakeClock()
    a = new_ledger(tmp_path, "SH01", now_ms=clock)
    b = new_ledger(tmp_path, "SH02", now_ms=clock)
    mid = member_with_data(a)
    sync(a, b)
    b.edit_member(b.owner, mid, fields={"notes": "孕妇"})
    sync(a, b)
    write_backup(b.storage.dir, tmp_path / "bk")
    b.close()
    a.erase_member(a.owner, mid)
    clock.advance_days(90)
    restore(tmp_path / "bk", tmp_path / "sh02-restored")
    r = Ledger.open(tmp_path / "sh02-restored", now_ms=clock)
    assert leaks(store_bytes(r))  # the backup holds them, until it is restored and syncs
    sync(a, r)  # the erasure reaches it as it catches up with itself
    # It redacts its own record and says so, at once or, if it could not write yet,
    # at its node's next housekeeping (HOUSEKEEPING_S after `erasure_seen`).
    r.housekeeping()
    assert r.storage.conn.execute("SELECT count(*) FROM entries WHERE kind = 'redaction' "
                                  "AND node = 'SH02'").fetchone() == (1,)
    sync(a, r)
    for ledger in (a, r):
        assert leaks(store_bytes(ledger)) == [], ledger.node
    a.close()
    r.close()


def test_value_that_reaches_a_member_gone_meanwhile_is_settled_not_stranded(
        tmp_path: Path) -> None:
    """Value given to a member who was erased or has left could never be spent,
    refunded or corrected (each refused "was deleted"). A top-up written while another
    branch erased the member is settled by a correction that takes it off; a refund
    to the card of a member erased since, and a referral reward to a referrer who left,
    are refused or held back instead of stranded."""
    clock = FakeClock()
    sh, la = new_ledger(tmp_path, "SH01", now_ms=clock), new_ledger(tmp_path, "SH02", now_ms=clock)
    try:
        a = sh.add_member(sh.owner, name="张三", phone="13800138000")
        sync(sh, la)
        la.erase_member(la.owner, a)  # apart: SH02 erases, SH01 takes a top-up
        sh.topup(sh.owner, a, 5000)
        sync(sh, la)
        assert sh.balance(a)["cash"] == 5000
        with pytest.raises(InvalidInput, match="was deleted"):
            sh.correct(sh.owner, a, "cash", 100, "nothing can be added")
        sh.correct(sh.owner, a, "cash", -5000, "paid back in cash at the till")
        sync(sh, la)
        assert sh.balance(a)["cash"] == la.balance(a)["cash"] == 0
        # A refund to the card of a member erased since the sale: refused.
        b = sh.add_member(sh.owner, name="李四", phone="13900139000")
        sh.topup(sh.owner, b, 1000)
        sale = sh.debit(sh.owner, b, amount=1000)
        sh.erase_member(sh.owner, b)
        with pytest.raises(InvalidInput, match="can no longer be refunded to their card"):
            sh.refund(sh.owner, sale["id"])
        assert sh.balance(b)["cash"] == 0
        # A referral reward to a referrer who has left since: not granted.
        sh.set_rule(sh.owner, "referral", {"reward": "bonus", "bonus": 5000})
        c = sh.add_member(sh.owner, name="王五", phone="13700137000")
        new = sh.add_member(sh.owner, name="赵六", phone="13600136000")
        r = sh.refer(sh.owner, new, c)["id"]
        first, second = (sh.add_operator(sh.owner, name, f"{name}-secret", roles=["manager"])
                         for name in ("mgr1", "mgr2"))
        sh.approve_referral(first, r, 1)
        asked = sh.apply_exit(sh.owner, c, "搬家")["application"]
        sh.decide_exit(first, asked)
        sh.approve_referral(second, r, 2)
        assert sh.balance(c)["bonus"] == 0
    finally:
        sh.close()
        la.close()
