"""A node restored from a backup never writes at a position of its log that a peer
already holds: it catches up with itself before it sells, and refuses to sell while
it cannot (issue 12, item 4). Real SQLite stores, real sealed backups."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from helpers import new_ledger, sync

from crdtledger import views
from crdtledger.backups import restore, write_backup
from crdtledger.errors import NotCaughtUp, RightsElsewhere
from crdtledger.ledger import Ledger
from crdtledger.storage import FORMAT_VERSION


def _chain(tmp_path: Path) -> tuple[Ledger, Ledger, str]:
    a = new_ledger(tmp_path, "SH01")
    b = new_ledger(tmp_path, "SH02")
    m = a.add_member(a.owner, name="Li", phone="13800000000")
    a.topup(a.owner, m, 100_000)  # 1,000.00 paid in at SH01
    sync(a, b)
    return a, b, m


def _spend_after_backup(tmp_path: Path, a: Ledger, b: Ledger, m: str) -> Path:
    bk = tmp_path / "bk"
    write_backup(a.storage.dir, bk)
    a.debit(a.owner, m, amount=60_000)  # 600.00 served at SH01 after the backup
    a.transfer_rights(a.owner, m, "SH02", 40_000)  # the rest given to SH02
    sync(a, b)
    a.close()
    return bk


def _cash(ledger: Ledger, m: str) -> int:
    return int(views.balance(ledger.storage.conn, m)["cash"])


@pytest.mark.parametrize("how", ["command", "copied_by_hand"])
def test_restored_node_cannot_spend_again(tmp_path: Path, how: str) -> None:
    a, b, m = _chain(tmp_path)
    bk = _spend_after_backup(tmp_path, a, b, m)
    target = tmp_path / "sh01-restored"
    if how == "command":
        restore(bk, target)
    else:
        target.mkdir()
        for f in bk.iterdir():
            shutil.copy(f, target / f.name)
    r = Ledger.open(target)
    try:
        # Offline: the backup says 1,000.00 here, but it refuses to sell on it.
        assert r.restored
        with pytest.raises(NotCaughtUp, match=r"restored from a backup of .*connect to anoth"):
            r.debit(r.owner, m, amount=10_000)
        assert views.trust_status(r)["restored"]
        # Online: it first gets back from SH02 what it wrote after the backup.
        sync(r, b)
        assert r.restored is None
        # 1,000.00 in, 600.00 served: 400.00 left, all of it at SH02 now.
        assert _cash(r, m) == _cash(b, m) == 40_000
        with pytest.raises(RightsElsewhere, match="SH02"):
            r.debit(r.owner, m, amount=10_000)
        # It sells again at the right position of its log: SH02 takes it.
        r.topup(r.owner, m, 5_000)
        sync(r, b)
        assert _cash(b, m) == _cash(r, m) == 45_000
        assert b.faults() == [] and r.faults() == []
        assert r.positions() == b.positions()
    finally:
        r.close()
        b.close()


def test_a_backup_that_is_current_catches_up_at_once(tmp_path: Path) -> None:
    a, b, m = _chain(tmp_path)
    bk = tmp_path / "bk"
    write_backup(a.storage.dir, bk)
    a.close()
    target = tmp_path / "again"
    restore(bk, target)
    r = Ledger.open(target)
    try:
        assert r.restored
        sync(r, b)  # nothing to fetch: in sync, and so free to sell
        assert r.restored is None
        r.debit(r.owner, m, amount=100)
    finally:
        r.close()
        b.close()


def test_a_normal_restart_is_not_a_restore(tmp_path: Path) -> None:
    a, b, m = _chain(tmp_path)
    path = a.storage.dir
    a.close()
    a = Ledger.open(path)
    try:
        assert a.restored is None
        a.debit(a.owner, m, amount=100)
    finally:
        a.close()
        b.close()


def test_a_fork_made_on_purpose_is_reported_on_every_node(tmp_path: Path) -> None:
    """The restore check bypassed (the restored flag cleared by hand, as a cloned disk
    would be): the clone sells at positions SH02 already holds. Each replica that
    sees both sides reports the fork and blocks the forking node's further writes."""
    a, b, m = _chain(tmp_path)
    c = new_ledger(tmp_path, "SH03")
    d = new_ledger(tmp_path, "SH04")  # will hold the same side as SH02
    sync(a, c)
    bk = _spend_after_backup(tmp_path, a, b, m)
    sync(b, d)
    target = tmp_path / "clone"
    restore(bk, target)
    r = Ledger.open(target)
    try:
        with r.storage.transaction():
            r.storage.set_meta("restored_from", "")
        r.restored = None
        r.debit(r.owner, m, amount=90_000)  # spends the 600.00 again, and more
        sync(r, c)  # SH03 had only the backup's part: takes the clone's branch
        sync(b, c)  # SH02 holds the original branch: both see both sides
        for node in (b, c):
            forks = [f for f in node.faults() if f["kind"] == "fork"]
            assert forks and forks[0]["node"] == "SH01", node.node
            assert "at stake" in forks[0]["detail"]
        # Honest replicas never go below zero.
        for node in (b, c):
            assert views.balance(node.storage.conn, m)["cash"] >= 0
        # SH04 holds SH02's side: nothing differs between them but SH02's proof.
        assert not d.faults()
        sync(b, d)
        assert [f["node"] for f in d.faults()] == ["SH01"]
        # The clone learns it too, and sells no more.
        sync(r, b)
        assert [f["node"] for f in r.faults()] == ["SH01"]
        with pytest.raises(NotCaughtUp, match="two different histories"):
            r.debit(r.owner, m, amount=100)
        # Once both sides know, a round no longer sends the proof again.
        assert b.lacking(c.log_view()) == [] and b.behind(c.log_view()) == []
    finally:
        r.close()
        b.close()
        c.close()
        d.close()


def test_a_store_or_backup_of_a_newer_format_is_refused_before_anything_changes(
        tmp_path: Path) -> None:
    """A store a newer release made (meta `format` above this program's) is refused
    with that said, before the schema is touched: the open had added columns, indexes
    and tables first, and read-only commands did too. A backup of one is refused by
    `restore` before the working store is put aside: it had said "restored" and left
    a node that could not open."""
    import sqlite3

    from crdtledger.errors import StoreError

    a, _b, m = _chain(tmp_path)
    data = a.storage.dir
    a.close()
    newer = tmp_path / "newer"
    shutil.copytree(data, newer)
    (newer / "lock").unlink(missing_ok=True)
    conn = sqlite3.connect(newer / "ledger.sqlite3")
    conn.execute("UPDATE meta SET value = ? WHERE key = 'format'", (str(FORMAT_VERSION + 1),))
    conn.execute("DROP INDEX members_phone_canonical")
    conn.commit()

    def schema() -> list[tuple[str, str]]:
        return conn.execute("SELECT name, sql FROM sqlite_master ORDER BY name").fetchall()

    before = schema()
    newer_format = f"format {FORMAT_VERSION + 1}, made by a newer crdtledger"
    with pytest.raises(StoreError, match=newer_format):
        Ledger.open(newer)
    assert schema() == before, "the newer store was changed before it was refused"
    conn.close()
    write_backup(newer, tmp_path / "bk")
    listing = sorted(p.name for p in data.iterdir())
    with pytest.raises(StoreError, match=newer_format):
        restore(tmp_path / "bk", data)
    assert sorted(p.name for p in data.iterdir()) == listing, "nothing put aside or left"
    with Ledger.open(data) as again:  # the working store as it was
        assert _cash(again, m) == 100_000


def test_what_a_restore_put_aside_is_removed_a_month_later(tmp_path: Path) -> None:
    """The store a restore replaced is a plain SQLite file: kept beside the new one
    for good, an erased member's name and phone stayed readable in it. The daily pass
    removes it, with its companions and a backup restored from the data directory,
    once it is as old as the oldest backup the owner keeps."""
    from datetime import datetime, timedelta

    from crdtledger.backups import KEPT_ASIDE_DAYS

    a, b, m = _chain(tmp_path)
    data = a.storage.dir
    bk = _spend_after_backup(tmp_path, a, b, m)
    (data / "ledger.sqlite3").write_bytes(b"damaged")
    kept = restore(bk, data)["kept"]
    assert kept and Path(kept).exists()
    then = datetime.now()
    # A backup copied into the data directory by hand is renamed so once restored.
    hand = data / f"ledger.backup.restored-{then:%Y%m%d-%H%M%S}"
    shutil.copy(bk / "ledger.backup", hand)
    with Ledger.open(data, now_ms=lambda: int(then.timestamp() * 1000)) as again:
        again.housekeeping()
    assert Path(kept).exists() and hand.exists()
    later = then + timedelta(days=KEPT_ASIDE_DAYS, minutes=1)
    with Ledger.open(data, now_ms=lambda: int(later.timestamp() * 1000)) as again:
        again.housekeeping()
    assert [p.name for p in data.iterdir() if "restore" in p.name] == []
