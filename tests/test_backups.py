"""Sealed backups (crdtledger.backups): taken while the node works, restored into a new
data directory from the chain directory, in place, or by copying the backup's file
into the data directory by hand; private on disk and unreadable off the chain.

Real chains (peer.chain) and real SQLite stores in tmp_path, umask 022 throughout.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import msgpack
import pytest
from conftest import Cli

from crdtledger.backups import (
    BACKUP_FILE,
    DB_FILE,
    KEPT_ASIDE_DAYS,
    restore,
    restore_pending,
    store_damage,
    write_backup,
)
from crdtledger.errors import (
    CorruptSyncFile,
    InvalidInput,
    RemoteProtocolError,
    StoreError,
    StoreLocked,
)
from crdtledger.ledger import Ledger
from crdtledger.seal import seal, unseal
from crdtledger.trust import Trust, load_trust
from peer.chain import enrol, init_chain

PHONE = "13812345678"
PIN = "4321"


@pytest.fixture(autouse=True)
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)  # the common default: files 0644 unless made private
    try:
        yield
    finally:
        os.umask(old)


@dataclass
class Shop:
    chain: Path | None  # None: a store without a chain CA
    data: Path
    member: str
    pin_hash: str

    def balance(self, data: Path | None = None) -> int:
        with Ledger.open(data or self.data, lock=False) as ledger:
            return int(ledger.balance(self.member)["cash"])


def make_shop(root: Path, *, enrolled: bool = True, node: str = "SH01") -> Shop:
    chain = root / "acme" if enrolled else None
    if chain is not None and not (chain / "ca.crt").exists():
        init_chain(chain)
    data = root / node.lower()
    Ledger.create(data, node, "acme" if enrolled else "trial")
    if chain is not None:
        enrol(chain, data, node)
    with Ledger.open(data) as ledger:
        member = ledger.add_member(ledger.owner, name="王芳", phone=PHONE)
        ledger.issue_card(ledger.owner, member, f"{node}-K1", pin=PIN)
        ledger.topup(ledger.owner, member, 12_345)
        (body,) = ledger.storage.conn.execute("SELECT body FROM cards").fetchone()
    pin_hash = json.loads(body)["pin"]
    # A hash, not the PIN: no field of it is the PIN. (Its salt and digest are random
    # hex, which held "4321" somewhere in one run of the suite: a substring test is
    # wrong about 1 time in 700.)
    assert pin_hash.startswith("scrypt$") and PIN not in pin_hash.split("$")
    return Shop(chain, data, member, pin_hash)


def modes(*roots: Path) -> list[str]:
    """Everything under `roots` that is not 0600 (files) or 0700 (directories)."""
    loose = []
    for root in roots:
        for p in [root, *root.rglob("*")]:
            want = 0o700 if p.is_dir() else 0o600
            if stat.S_IMODE(p.stat().st_mode) != want:
                loose.append(f"{p} {stat.S_IMODE(p.stat().st_mode):o}")
    return loose


# --- taking a backup ---------------------------------------------------------------


def test_a_backup_is_one_sealed_private_file_without_members_in_the_clear(
        tmp_path: Path) -> None:
    shop = make_shop(tmp_path)
    path = write_backup(shop.data, tmp_path / "usb" / "bk")
    assert path == tmp_path / "usb" / "bk" / BACKUP_FILE
    assert sorted(p.name for p in path.parent.iterdir()) == [BACKUP_FILE]  # no .part left
    assert modes(tmp_path / "usb" / "bk") == []
    raw = path.read_bytes()
    assert raw.startswith(b"CRDTLEDGER-SEALED backup 1\n")
    for secret in (PHONE.encode(), "王芳".encode(), shop.pin_hash.encode(),
                   (shop.data / "tls" / "node.key").read_bytes()[30:60], b"SQLite format 3"):
        assert secret not in raw
    # A backup never overwrites: not another backup, not a store.
    with pytest.raises(StoreError, match="already holds a backup"):
        write_backup(shop.data, tmp_path / "usb" / "bk")
    with pytest.raises(StoreError, match="already holds a node"):
        write_backup(shop.data, shop.data)


def test_an_open_store_backup_is_signed_but_not_secret(tmp_path: Path) -> None:
    shop = make_shop(tmp_path, enrolled=False)
    raw = write_backup(shop.data, tmp_path / "bk").read_bytes()
    assert PHONE.encode() not in raw  # encrypted, under a key derived from the chain id
    assert modes(tmp_path / "bk", shop.data / "keys") == []


# --- restoring ------------------------------------------------------------------


def test_restore_into_a_new_directory_from_the_chain_directory(tmp_path: Path) -> None:
    shop = make_shop(tmp_path)
    bk = tmp_path / "bk"
    write_backup(shop.data, bk)
    with Ledger.open(shop.data) as ledger:  # after the backup: not in it
        ledger.topup(ledger.owner, shop.member, 5)
    fresh = tmp_path / "new" / "sh01"
    # Without its keys or the chain directory, there is nothing to open it with.
    with pytest.raises(InvalidInput, match="--chain"):
        restore(bk, fresh)
    assert not fresh.exists()
    info = restore(bk, fresh, chain_dir=shop.chain)
    assert info["node"] == "SH01" and info["chain"] == "acme" and info["kept"] is None
    assert info["keys"] == "restored" and len(info["taken_at"]) == len("2026-12-01 10:02")
    assert shop.balance(fresh) == 12_345
    for f in ("node.key", "node.crt", "ca.crt", "chain.key"):
        assert (fresh / "tls" / f).read_bytes() == (shop.data / "tls" / f).read_bytes()
    assert modes(tmp_path / "new") == []
    assert sorted(p.name for p in fresh.iterdir()) == [DB_FILE, "lock", "tls"]
    with Ledger.open(fresh, lock=False) as ledger:
        assert ledger.storage.meta["restored_from"] == info["taken_at"]



def test_another_branch_holding_a_backup_cannot_take_the_branch_s_keys_from_it(
        tmp_path: Path) -> None:
    """Every branch holds the chain secret that opens a backup (a stick, an e-mail).
    SH02, given SH01's backup, restored it with a chain directory made of its own
    enrolment (ca.crt, chain.key) and a chain.json it wrote, got SH01's signing key,
    and wrote a rights transfer in SH01's name that every branch took: 400.00 served
    twice, and the fork blamed SH01. The node's keys are sealed for the chain CA: only
    the chain directory's ca.key opens them."""
    shop = make_shop(tmp_path)
    other = make_shop(tmp_path, node="SH02")
    # Its settings go with the keys, sealed alike: the gateways' passwords are in them.
    settings = b'peers = ["wss://hq.example.com:8470"]\n[notify.email]\npassword = "s3cret-smtp"\n'
    (shop.data / "node.toml").write_bytes(settings)
    bk = write_backup(shop.data, tmp_path / "bk")
    node_key = (shop.data / "tls" / "node.key").read_bytes()
    # What SH02 can make of a chain directory without head office's ca.key.
    forged = tmp_path / "forged-chain"
    forged.mkdir()
    for f in ("ca.crt", "chain.key"):
        shutil.copy(other.data / "tls" / f, forged / f)
    assert shop.chain is not None
    shutil.copy(shop.chain / "chain.json", forged / "chain.json")
    fresh = tmp_path / "evil" / "sh01"
    with pytest.raises(InvalidInput, match=r"sealed for the chain CA.*ca\.key"):
        restore(bk, fresh, chain_dir=forged)
    assert not (fresh / "tls").exists() and not (fresh / DB_FILE).exists()
    # Nor by hand: the payload, opened with the chain secret, holds no key of SH01.
    trust = Trust.for_reading("acme", (other.data / "tls" / "ca.crt").read_bytes(),
                              (other.data / "tls" / "chain.key").read_bytes())
    payload = unseal(trust, bk.read_bytes(), "backup", what="bk").payload
    assert node_key[30:60] not in payload and b"PRIVATE KEY" not in payload
    assert b"s3cret-smtp" not in payload
    # Another CA's key opens nothing either.
    init_chain(tmp_path / "other-chain")
    shutil.copy(tmp_path / "other-chain" / "ca.key", forged / "ca.key")
    with pytest.raises(InvalidInput, match="another chain CA"):
        restore(bk, fresh, chain_dir=forged)
    assert not (fresh / "tls").exists()
    # Head office's chain directory does, and in place the node's own keys do.
    assert restore(bk, fresh, chain_dir=shop.chain)["keys"] == "restored"
    assert (fresh / "tls" / "node.key").read_bytes() == node_key
    # A restored branch on a new PC finds its peers and sends its notices.
    assert (fresh / "node.toml").read_bytes() == settings
    assert restore(bk, shop.data)["keys"] == "kept"


def test_restore_in_place_keeps_the_replaced_store(tmp_path: Path) -> None:
    shop = make_shop(tmp_path)
    write_backup(shop.data, tmp_path / "bk")
    # (A store that wrote since the backup is not replaced: test_restore_proof.py.)
    before = (shop.data / DB_FILE).read_bytes()
    key = (shop.data / "tls" / "node.key").read_bytes()
    info = restore(tmp_path / "bk" / BACKUP_FILE, shop.data)  # a file, or its directory
    assert info["keys"] == "kept" and info["kept"]
    assert Path(info["kept"]).read_bytes() == before
    assert Path(info["kept"]).name.startswith(f"{DB_FILE}.before-restore-")
    assert shop.balance() == 12_345
    assert (shop.data / "tls" / "node.key").read_bytes() == key
    assert modes(shop.data) == []


def test_a_damaged_store_is_restored_in_place(tmp_path: Path) -> None:
    shop = make_shop(tmp_path)
    write_backup(shop.data, tmp_path / "bk")
    (shop.data / DB_FILE).write_bytes(b"not a database any more")
    restore(tmp_path / "bk", shop.data)
    assert shop.balance() == 12_345


def _crashed_and_moved_out(shop: Shop, to: Path) -> bytes:
    """A sale in the store's log when the PC loses power; then the store file moved out
    to `to` without that log (`ledger.sqlite3-wal`). Returns the log."""
    sale = ("import os, sys\nfrom crdtledger.ledger import Ledger\n"
            "ledger = Ledger.open(sys.argv[1])\n"
            "ledger.debit(ledger.owner, sys.argv[2], amount=2_345)\n"
            "os._exit(0)  # the power cut: no checkpoint, no close\n")
    subprocess.run([sys.executable, "-c", sale, str(shop.data), shop.member], check=True)
    to.mkdir()
    (shop.data / DB_FILE).rename(to / DB_FILE)
    return (shop.data / f"{DB_FILE}-wal").read_bytes()


def test_a_log_left_without_its_store_is_kept_by_a_restore(tmp_path: Path, cli: Cli) -> None:
    """The PC lost power with a sale in the store's log (ledger.sqlite3-wal), and the
    store file was moved out (damaged, or by mistake) without it: the restore deleted
    that log, the only copy of a sale the till had acknowledged. It is kept aside."""
    shop = make_shop(tmp_path)
    write_backup(shop.data, tmp_path / "bk")
    moved = tmp_path / "moved"
    wal = _crashed_and_moved_out(shop, moved)
    r = cli("restore", "--from", tmp_path / "bk", data=shop.data)
    assert r.code == 0, r.err
    assert shop.balance() == 12_345  # the backup's
    (kept,) = [p for p in shop.data.iterdir() if p.name.startswith(f"{DB_FILE}-wal")
               and p.read_bytes() == wal]
    shutil.copy(kept, moved / f"{DB_FILE}-wal")  # put back with its store, the sale is there
    with closing(sqlite3.connect(moved / DB_FILE)) as conn:
        (count,) = conn.execute("SELECT COUNT(*) FROM entries WHERE kind = 'debit'").fetchone()
    assert count == 1


def test_a_log_kept_aside_is_removed_a_month_later(tmp_path: Path) -> None:
    """A log set aside (left without its store, or beside an older copy of it) holds
    members' pages in the clear, which no erasure reaches: kept for good, unlike the
    store a restore replaces. The daily pass removes it as old as the oldest backup the
    owner keeps."""
    shop = make_shop(tmp_path)
    write_backup(shop.data, tmp_path / "bk")
    _crashed_and_moved_out(shop, tmp_path / "moved")
    restore(tmp_path / "bk", shop.data)
    assert list(shop.data.glob(f"{DB_FILE}-wal.foreign-*"))
    later = datetime.now() + timedelta(days=KEPT_ASIDE_DAYS, minutes=1)
    with Ledger.open(shop.data, now_ms=lambda: int(later.timestamp() * 1000)) as ledger:
        ledger.housekeeping()
    assert list(shop.data.glob(f"{DB_FILE}-wal.foreign-*")) == []

def test_a_backup_holding_an_edited_log_is_refused_and_changes_nothing(
        tmp_path: Path, cli: Cli) -> None:
    """A backup sealed by the branch's own key over a store whose own log was edited (a
    backup of a build before backups checked their copy, or one sealed again after an
    edit) was restored in place of the whole store without a word: every branch then
    refused the branch's log from that record on, for good. It is refused, and the data
    directory is left as it was."""
    shop = make_shop(tmp_path)
    copy = tmp_path / "copy.sqlite3"
    with closing(sqlite3.connect(shop.data / DB_FILE)) as src, \
            closing(sqlite3.connect(copy)) as dst:
        src.backup(dst)
        seq, data = dst.execute("SELECT seq, data FROM records WHERE node = 'SH01' AND doc "
                                "LIKE 'ledger/%' ORDER BY seq LIMIT 1").fetchone()
        edited = bytearray(data)
        edited[len(edited) // 2] ^= 1
        with dst:
            dst.execute("UPDATE records SET data = ? WHERE node = 'SH01' AND seq = ?",
                        (bytes(edited), seq))
        dst.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    taken = int(time.time() * 1000)
    body = {"db": copy.read_bytes(), "keys": {}, "taken_at": taken}
    (tmp_path / "bk").mkdir()
    (tmp_path / "bk" / BACKUP_FILE).write_bytes(seal(
        load_trust(shop.data, "acme", "SH01"), "backup",
        msgpack.packb(body, use_bin_type=True), taken))
    before = {p: p.read_bytes() for p in shop.data.rglob("*") if p.is_file()}
    r = cli("restore", "--from", tmp_path / "bk", data=shop.data)
    assert r.code == 1, r.out
    assert f"holds a damaged store (record {seq} of this branch's own log (SH01) was " \
        "changed" in r.err and "nothing was restored; restore an earlier backup" in r.err, r.err
    assert {p: p.read_bytes() for p in shop.data.rglob("*") if p.is_file()} == before



def test_a_restore_refused_leaves_no_directory_behind(tmp_path: Path, cli: Cli) -> None:
    """A backup of a newer release's store, refused for that, left the new directory
    it was asked into made, with a lock file in it: a refused restore makes nothing."""
    shop = make_shop(tmp_path)
    with closing(sqlite3.connect(shop.data / DB_FILE)) as conn, conn:
        conn.execute("UPDATE meta SET value = '99' WHERE key = 'format'")
    write_backup(shop.data, tmp_path / "bk")
    r = cli("restore", "--from", tmp_path / "bk", "--chain", shop.chain,
            data=tmp_path / "new-pc")
    assert r.code == 1 and "made by a newer crdtledger" in r.err, r.err
    assert not (tmp_path / "new-pc").exists()


def test_a_log_left_by_a_restore_killed_is_not_laid_over_the_next(
        tmp_path: Path, cli: Cli) -> None:
    """A restore killed while it marked its copy (`ledger.sqlite3.restoring`, its log
    beside it) left that log; the next restore wrote another backup's copy under the
    same name, and SQLite laid the old log's pages over it: a store of two branches'
    pages put in place as whole."""
    shop = make_shop(tmp_path)
    other = make_shop(tmp_path, node="SH02")
    write_backup(shop.data, tmp_path / "bk")
    copying = tmp_path / "new-pc" / f"{DB_FILE}.restoring"
    copying.parent.mkdir(mode=0o700)
    shutil.copy(other.data / DB_FILE, copying)
    conn = sqlite3.connect(copying)
    conn.execute("PRAGMA wal_autocheckpoint = 0")
    with conn:  # as _mark_restored marks it
        conn.execute("INSERT OR REPLACE INTO meta VALUES ('restored_tip', '3')")
    left = Path(f"{copying}-wal").read_bytes()  # the log as the kill left it
    conn.close()
    Path(f"{copying}-wal").write_bytes(left)
    r = cli("restore", "--from", tmp_path / "bk", "--chain", shop.chain,
            data=tmp_path / "new-pc")
    assert r.code == 0, r.err
    with closing(sqlite3.connect(tmp_path / "new-pc" / DB_FILE)) as db:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert dict(db.execute("SELECT key, value FROM meta"))["node"] == "SH01"
    assert shop.balance(tmp_path / "new-pc") == 12_345

def test_a_damaged_store_makes_no_backup(tmp_path: Path) -> None:
    """A store that opens but is malformed (a file put back beside another's log, a
    disk error) was copied page by page into a sealed backup without a word, night
    after night: the last good backup was then replaced by bad ones. The copy is
    checked first; nothing is written, and the owner is told what to do."""
    shop = make_shop(tmp_path)
    db = shop.data / DB_FILE
    pages = db.stat().st_size // 2048
    with open(db, "r+b") as f:  # a b-tree page in the middle torn
        f.seek((pages // 2) * 2048 + 8)
        f.write(b"\xff" * 600)
    with pytest.raises(StoreError, match=r"damaged.*no backup was written.*crdtledger restore"):
        write_backup(shop.data, tmp_path / "bk")
    assert not (tmp_path / "bk" / BACKUP_FILE).exists()


def test_status_says_a_store_is_damaged_and_what_to_do(tmp_path: Path, cli: Cli) -> None:
    """`crdtledger status` said nothing of a store that opens but is malformed (each
    night's backup refused it, the till went on selling from the pages it reads): it
    reads a store of up to 256 MB whole, and any with --check, and says what to do."""
    shop = make_shop(tmp_path)
    whole = cli("status", "--json", data=shop.data).json()
    assert (whole["store_checked"], whole["store_damaged"]) == (True, None)
    assert "DAMAGED" not in cli("status", data=shop.data).out
    db = shop.data / DB_FILE
    with open(db, "r+b") as f:  # as above: a b-tree page in the middle torn
        f.seek((db.stat().st_size // 2048 // 2) * 2048 + 8)
        f.write(b"\xff" * 600)
    r = cli("status", "--check", data=shop.data)
    assert r.code == 0 and re.search(r"DAMAGED store \(.+\).*backup is refused.*"
                                     r"crdtledger restore", r.out), r
    assert cli("status", "--json", data=shop.data).json()["store_damaged"]
    with open(db, "r+b") as f:  # the schema's page torn too: the store no longer opens
        f.seek(100)
        f.write(b"\xff" * 1000)
    r = cli("status", data=shop.data)  # it was refused as "unusable", saying nothing more
    assert r.code == 0 and re.search(r"cannot be opened: DAMAGED store \(.+\).*"
                                     r"crdtledger restore", r.out), r


def page_size(db: Path) -> int:
    return int.from_bytes(db.read_bytes()[16:18], "big")


@pytest.mark.parametrize("cut", ["part of a page", "a whole page", "three pages and a half"])
def test_a_store_file_cut_short_is_damaged_and_makes_no_backup(
        tmp_path: Path, cli: Cli, cut: str) -> None:
    """A store file whose last pages are missing, as a copy interrupted or a disk full
    leaves it, passed SQLite's quick check when a page was cut in part (the copy read
    it as zeros): `status` said nothing and the backup sealed it. Cut by whole pages,
    SQLite refused to read it, and the backup failed on SQLite's own error without
    saying what to do. The file is held to its own header's size and to whole pages."""
    shop = make_shop(tmp_path)
    db = shop.data / DB_FILE
    assert cli("status", "--json", data=shop.data).json()["store_damaged"] is None
    page, size = page_size(db), db.stat().st_size
    pages = size // page
    left = {"part of a page": size - 1000, "a whole page": size - page,
            "three pages and a half": size - 7 * page // 2}[cut]
    os.truncate(db, left)
    said = f"the store file is cut short: {left // page} of {pages} pages"
    with pytest.raises(StoreError, match=rf"damaged \({said}\): no backup was written.*"
                                         r"crdtledger restore"):
        write_backup(shop.data, tmp_path / "bk")
    assert not (tmp_path / "bk" / BACKUP_FILE).exists()
    r = cli("status", data=shop.data)
    assert r.code == 0 and re.search(rf"DAMAGED store \({said}\).*backup is refused.*"
                                     r"crdtledger restore", r.out), r
    assert cli("status", "--json", data=shop.data).json()["store_damaged"] == said


def test_a_released_store_with_4_kb_pages_is_whole_until_cut_short(
        tmp_path: Path, cli: Cli) -> None:
    """A store an older build made (SQLite's default 4 KB pages, not this build's) is
    read by its own page size: whole, it is not damaged; cut in part, it is."""
    fixture = Path(__file__).parent / "fixtures" / "stores" / "format-3"  # 0.2.0's
    shutil.copytree(fixture, tmp_path / "copy")
    data = tmp_path / "copy" / "sh01"
    db = data / DB_FILE
    assert page_size(db) == 4096
    assert cli("status", "--json", data=data).json()["store_damaged"] is None
    write_backup(data, tmp_path / "bk")
    pages = db.stat().st_size // 4096
    os.truncate(db, db.stat().st_size - 100)
    assert cli("status", "--json", data=data).json()["store_damaged"] == (
        f"the store file is cut short: {pages - 1} of {pages} pages")


def test_a_store_cut_short_under_an_open_log(tmp_path: Path) -> None:
    """In WAL mode the store holds more pages than its file until a checkpoint (SQLite
    reads them from the log): the file is held to its own header only, and a page it
    lacks that the log holds is not damage (a checkpoint killed after writing the
    header's new size leaves just that, and the next one writes those pages whole).
    Pages neither holds are damage, whatever the log holds besides."""
    shop = make_shop(tmp_path)
    db = shop.data / DB_FILE
    with Ledger.open(shop.data) as ledger:  # the store grows in the log, not the file
        for _ in range(30):
            ledger.topup(ledger.owner, shop.member, 100)
        conn = ledger.storage.conn
        (now,) = conn.execute("PRAGMA page_count").fetchone()
        head = bytearray(db.read_bytes()[:100])
        held = db.stat().st_size // page_size(db)
        assert now > held and int.from_bytes(head[28:32], "big") == held
        # The header of the store as the log has it, over the file's: as a growth
        # checkpoint writes page 1 first, then the pages after it.
        counter = (int.from_bytes(head[24:28], "big") + 1).to_bytes(4, "big")
        head[24:28], head[28:32], head[92:96] = counter, now.to_bytes(4, "big"), counter
        with open(db, "r+b") as f:
            f.write(head)
        assert store_damage(shop.data) is None
        write_backup(shop.data, tmp_path / "bk")
        os.truncate(db, 2 * page_size(db))  # the pages the log lacks go with the rest
        said = f"the store file is cut short: 2 of {now} pages"
        assert store_damage(shop.data) == said
        with pytest.raises(StoreError, match=rf"damaged \({said}\).*crdtledger restore"):
            write_backup(shop.data, tmp_path / "bk2")


WRITER = """
import sys, time
from pathlib import Path
from crdtledger.ledger import Ledger
data, member, stop = sys.argv[1], sys.argv[2], Path(sys.argv[3])
n = 0
with Ledger.open(data) as ledger:
    conn = ledger.storage.conn
    print("open", flush=True)
    while not stop.exists():
        ledger.topup(ledger.owner, member, 1)
        n += 1
        # A checkpoint after every write, one in three starting the log afresh.
        conn.execute("PRAGMA wal_checkpoint(%s)" % ("TRUNCATE" if n % 3 == 0 else "PASSIVE"))
print(n, flush=True)
"""


def test_the_file_check_holds_beside_a_writer_checkpointing_all_the_while(
        tmp_path: Path, cli: Cli) -> None:
    """A checkpoint that grows the store writes the header's new size before the pages
    after it, then may start the log afresh: read then, a file that is whole looks cut
    short (one reading in a few thousand did so beside this writer). `status`'s check
    and the backup's, run again and again beside a process that writes and checkpoints
    all the while, never say a store is damaged."""
    shop = make_shop(tmp_path)
    db = shop.data / DB_FILE
    stop = tmp_path / "stop"
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(shop.data), shop.member, str(stop)],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(
            [str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")])})
    try:
        assert writer.stdout is not None and writer.stdout.readline() == "open\n"
        before = db.stat().st_size
        found = [store_damage(shop.data) for _ in range(100)]
        found += [cli("status", "--json", data=shop.data).json()["store_damaged"]
                  for _ in range(3)]
        for i in range(3):
            write_backup(shop.data, tmp_path / f"bk{i}")
            found.append(store_damage(shop.data))
        time.sleep(0.2)
        grown = db.stat().st_size - before
    finally:
        stop.touch()
        out, _ = writer.communicate(timeout=60)
    assert writer.returncode == 0 and int(out) > 20, out
    assert grown > 0  # the checks ran while checkpoints grew the file
    assert found == [None] * len(found)


def test_restore_refuses_another_node_a_locked_store_and_an_altered_backup(
        tmp_path: Path) -> None:
    shop = make_shop(tmp_path)
    other = make_shop(tmp_path, node="SH02")
    bk = tmp_path / "bk"
    write_backup(shop.data, bk)
    before = sorted(other.data.iterdir())
    with pytest.raises(StoreError, match=r"holds node SH02.*of node SH01"):
        restore(bk, other.data)
    assert sorted(other.data.iterdir()) == before
    with Ledger.open(shop.data), pytest.raises(StoreLocked, match="stop it"):
        restore(bk, shop.data)
    raw = bytearray((bk / BACKUP_FILE).read_bytes())
    raw[len(raw) // 2] ^= 1
    (bk / BACKUP_FILE).write_bytes(bytes(raw))
    with pytest.raises(CorruptSyncFile, match="altered"):
        restore(bk, tmp_path / "x", chain_dir=shop.chain)
    assert not (tmp_path / "x").exists()
    (bk / BACKUP_FILE).write_bytes(bytes(raw[:1000]))
    with pytest.raises(CorruptSyncFile, match="incomplete"):
        restore(bk, tmp_path / "x", chain_dir=shop.chain)
    # Another chain's directory does not open it.
    foreign = tmp_path / "elsewhere" / "acme"
    init_chain(foreign)
    write_backup(shop.data, tmp_path / "bk2")
    with pytest.raises(RemoteProtocolError, match="not certified by chain acme"):
        restore(tmp_path / "bk2", tmp_path / "x", chain_dir=foreign)
    assert not (tmp_path / "x").exists()


def test_a_backup_copied_by_hand_is_restored_when_the_store_opens(tmp_path: Path) -> None:
    # A store without a chain CA: the backup is all a restore needs.
    shop = make_shop(tmp_path, enrolled=False)
    write_backup(shop.data, tmp_path / "bk")
    empty = tmp_path / "copied"
    empty.mkdir()
    shutil.copy(tmp_path / "bk" / BACKUP_FILE, empty)
    assert restore_pending(empty)
    assert not (empty / BACKUP_FILE).exists()
    assert [p.name for p in empty.glob(f"{BACKUP_FILE}.restored-*")]
    assert restore_pending(empty) is False  # once
    assert shop.balance(empty) == 12_345
    assert (empty / "keys" / "node.key").read_bytes() == (
        shop.data / "keys" / "node.key").read_bytes()
    assert modes(empty / "keys", empty / DB_FILE) == []
    assert restore_pending(tmp_path / "nothing-here") is False


def test_an_enrolled_backup_copied_by_hand_needs_the_node_keys(tmp_path: Path) -> None:
    shop = make_shop(tmp_path)
    write_backup(shop.data, tmp_path / "bk")
    # Into the node's own directory (its tls/ survived, its store did not): restored.
    (shop.data / DB_FILE).unlink()
    shutil.copy(tmp_path / "bk" / BACKUP_FILE, shop.data)
    assert restore_pending(shop.data)
    assert shop.balance() == 12_345
    # Into an empty directory: sealed with the chain secret, which is not there.
    empty = tmp_path / "copied"
    empty.mkdir()
    shutil.copy(tmp_path / "bk" / BACKUP_FILE, empty)
    with pytest.raises(InvalidInput, match=r"--chain.*move"):
        restore_pending(empty)
    assert (empty / BACKUP_FILE).exists() and not (empty / DB_FILE).exists()


# --- the command line ------------------------------------------------------------


def test_backup_and_restore_at_the_command_line(cli: Cli, tmp_path: Path) -> None:
    chain = tmp_path / "acme"
    assert cli("chain", "init", "--out", chain).code == 0
    data = tmp_path / "sh01"
    r = cli("init", "--node", "SH01", "--chain", chain, "--head-office", data=data)
    assert r.code == 0 and "as the head office" in r.out, r.err
    r = cli("backup", "--out", tmp_path / "bk", data=data)
    assert r.code == 0 and "encrypted" in r.out and "--chain" in r.out, r.err
    r = cli("restore", "--from", tmp_path / "bk", data=tmp_path / "new")
    assert r.code == 1 and "--chain" in r.err
    r = cli("restore", "--from", tmp_path / "bk", "--chain", chain, data=tmp_path / "new")
    assert r.code == 0, r.err
    assert r.out.startswith("restored node SH01 from the backup of ")
    assert "catch up with the chain before it sells" in r.out
    assert modes(tmp_path / "new") == []
    r = cli("init", "--node", "SH02", "--chain", "trial", "--head-office",
            data=tmp_path / "sh02")
    assert r.code == 1 and "--head-office needs a chain directory" in r.err



def test_a_backup_never_puts_the_store_in_the_clear_where_the_backup_goes(
        tmp_path: Path) -> None:
    """A backup killed while copying (30 SIGKILLs: 8 left it) left its plain copy of
    the store in a hidden folder on the stick, members' names and phones readable,
    and the next backups kept it and said "signed, and encrypted". The copy is made
    beside the store; copies killed backups left (there, or on a stick by an older
    build) are removed by the next backup once an hour old."""
    shop = make_shop(tmp_path)
    target = tmp_path / "stick"
    target.mkdir()
    killed = target / ".backup-k1ll3d"  # as an older build's killed backup left it
    killed.mkdir()
    shutil.copy(shop.data / "ledger.sqlite3", killed / "ledger.sqlite3")
    young = target / ".backup-running"  # another backup's, under way: kept
    young.mkdir()
    hour_ago = time.time() - 3700
    os.utime(killed, (hour_ago, hour_ago))
    seen: list[list[str]] = []

    def look(_step: str) -> None:  # the target's files at each step of the backup
        seen.append(sorted(str(p.relative_to(target)) for p in target.rglob("*")
                           if p.is_file() and p.read_bytes().startswith(b"SQLite format 3")))

    write_backup(shop.data, target, progress=look)
    assert seen and all(files == [] for files in seen), seen
    assert not killed.exists() and young.exists()
    assert not any(p.name.startswith(".backup-") for p in shop.data.iterdir())


def test_a_data_directory_left_by_a_restore_cut_short_says_to_restore_again(
        tmp_path: Path, cli: Cli) -> None:
    """A restore killed after the node's keys were written and before its store: the
    status said "run: crdtledger init", which refuses a directory holding a node's
    keys. A backup copied in and not yet restored says to start the node."""
    shop = make_shop(tmp_path)
    write_backup(shop.data, tmp_path / "bk")
    cut = tmp_path / "cut"
    cut.mkdir(mode=0o700)
    shutil.copytree(shop.data / "tls", cut / "tls")
    r = cli("status", data=cut)
    assert r.code == 1 and "a node's keys are there (a restore cut short?)" in r.err, r.err
    assert f"crdtledger restore --from BACKUP --data {cut} --chain CHAIN_DIR again" in r.err
    assert cli("restore", "--from", str(tmp_path / "bk"), "--chain", str(shop.chain),
               data=cut).code == 0
    assert cli("status", data=cut).code == 0
    waiting = tmp_path / "waiting"
    waiting.mkdir(mode=0o700)
    shutil.copy(tmp_path / "bk" / "ledger.backup", waiting / "ledger.backup")
    r = cli("status", data=waiting)
    # Not "start the node": without the node's keys, sealed for the chain CA in the
    # backup, `node run` said to `init`, which refuses an id the chain issued.
    assert "a backup waits there (ledger.backup), but not the node's keys" in r.err, r.err
    assert f"crdtledger restore --from {waiting / 'ledger.backup'} --data {waiting} " \
        "--chain CHAIN_DIR" in r.err
    r = cli("node", "run", data=waiting)
    assert r.code != 0 and "but not the node's keys" in r.err, r.err
    shutil.copytree(shop.data / "tls", waiting / "tls")  # in place: the node's own keys
    r = cli("status", data=waiting)
    assert "a backup waits there (ledger.backup); start the node" in r.err, r.err



def test_status_says_a_backup_waits_to_be_restored_at_the_next_start(
        tmp_path: Path, cli: Cli) -> None:
    """Another branch's backup copied into the data directory: the node refused to
    start (the store refuses it), and `status` said only "not running"."""
    shop = make_shop(tmp_path)
    other = make_shop(tmp_path, node="SH02")
    write_backup(other.data, tmp_path / "bk")
    shutil.copy(tmp_path / "bk" / BACKUP_FILE, shop.data / BACKUP_FILE)
    r = cli("node", "run", "--no-mdns", "--listen", "127.0.0.1:0", "--api", "127.0.0.1:0",
            data=shop.data)
    assert r.code != 0 and "is of node SH02" in r.err, r.err
    r = cli("status", data=shop.data)
    assert r.code == 0 and f"BACKUP waiting: {shop.data / BACKUP_FILE} is restored when " \
        "the node next starts" in r.out, r.out
    assert f"move it out of {shop.data} to start the store as it is" in r.out
    said = cli("status", "--json", data=shop.data).json()
    assert said["backup_waiting"] == str(shop.data / BACKUP_FILE)

def test_rows_deleted_by_hand_from_its_tables_are_said_by_the_store_check(
        tmp_path: Path, cli: Cli) -> None:
    """An `entries` row and a `cards` row deleted with sqlite3, the node stopped: the
    day's report went short and a refund of the sale said "no debit", and no check
    said a word (the closing attests rights, totals and logs, not these rows). The
    store check reads the documents against the tables; an honest store passes it."""
    shop = make_shop(tmp_path)
    with Ledger.open(shop.data) as ledger:
        sale = ledger.debit(ledger.owner, shop.member, amount=1_000)
    clean = cli("status", "--check", "--json", data=shop.data).json()
    assert clean["store_unprojected"] == {} and clean["store_damaged"] is None
    with Ledger.open(shop.data) as ledger, ledger.storage.transaction():
        ledger.storage.conn.execute("DELETE FROM entries WHERE id = ?", (sale["id"],))
        ledger.storage.conn.execute("DELETE FROM cards")
    r = cli("status", "--check", data=shop.data)
    assert "EDITED store: its documents hold 1 card, 1 entry its tables lack" in r.out, r.out
    said = cli("status", "--check", "--json", data=shop.data).json()
    assert said["store_unprojected"] == {"entries": 1, "cards": 1}
    # A document that does not decode is said too, not a traceback of the check.
    with Ledger.open(shop.data) as ledger:
        for name in ledger.state_vectors():
            ledger.storage.compact(name)
        with ledger.storage.transaction():
            ledger.storage.conn.execute("UPDATE snapshots SET data = x'00ff00ff' "
                                        "WHERE name LIKE 'ledger/%'")
    r = cli("status", "--check", data=shop.data)
    assert "EDITED store: 1 of its documents do not decode" in r.out, (r.out, r.err)


def test_a_record_of_its_own_log_edited_by_hand_is_damage_said_and_backed_up_never(
        tmp_path: Path, cli: Cli) -> None:
    """An amount changed inside a record of the branch's own log (the store edited by
    hand with sqlite3): it opened, sold, and every peer refused its log from that
    record on as "altered on the way", for good, said only in the peers' logs; its
    status and its backups passed it. A record the branch redacted after an erasure
    hashes otherwise too, and is no damage."""
    shop = make_shop(tmp_path)
    with Ledger.open(shop.data) as ledger:
        gone = ledger.add_member(ledger.owner, name="李雷", phone="13900000002")
        ledger.erase_member(ledger.owner, gone)
        ledger.housekeeping()  # its records redacted
        assert ledger.storage.conn.execute(
            "SELECT COUNT(*) FROM records WHERE doc LIKE 'members/%'").fetchone()[0]
    assert cli("status", "--check", "--json", data=shop.data).json()["store_damaged"] is None
    with Ledger.open(shop.data) as ledger:
        seq, data = ledger.storage.conn.execute(
            "SELECT seq, data FROM records WHERE node = 'SH01' AND doc LIKE 'ledger/%' "
            "ORDER BY seq LIMIT 1").fetchone()
        at = bytes(data).index(b"12345") if b"12345" in bytes(data) else len(data) // 2
        edited = bytes(data)[:at] + b"9" + bytes(data)[at + 1:]
        with ledger.storage.transaction():
            ledger.storage.conn.execute("UPDATE records SET data = ? WHERE node = 'SH01' "
                                        "AND seq = ?", (edited, seq))
    said = cli("status", "--json", data=shop.data).json()["store_damaged"]
    assert said.startswith(f"record {seq} of this branch's own log (SH01) was changed"), said
    with pytest.raises(StoreError, match=rf"damaged \(record {seq} of this branch's own log"):
        write_backup(shop.data, tmp_path / "bk")
