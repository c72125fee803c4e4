"""Files that hold members' data or secrets are the owner's only (DESIGN.md,
Conventions): every file the project writes is 0600 and every directory 0700, with
the usual umask 022 that would otherwise leave them world-readable."""

from __future__ import annotations

import os
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from crdtledger.ledger import Ledger
from crdtledger.private import private_dir, private_file_open, private_sqlite_file
from crdtledger.storage import DB_FILE
from peer.chain import revoke
from peer.cli import main
from peer.files import backup_bytes
from peer.local import write_run_file


@pytest.fixture(autouse=True)
def umask_022() -> Iterator[None]:
    # The common default, under which anything created with the default modes is 0644.
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def offenders(*roots: Path) -> list[str]:
    """Every path under `roots` (the roots included) that others could read."""
    bad = []
    for root in roots:
        for p in [root, *root.rglob("*")] if root.is_dir() else [root]:
            want = 0o700 if p.is_dir() else 0o600
            if mode(p) != want:
                bad.append(f"{p} is {mode(p):o}, not {want:o}")
    return bad


def cli(*args: str | Path) -> None:
    assert main([str(a) for a in args]) == 0, args


def test_a_node_its_chain_sync_files_and_backups_are_private(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    chain, sh01, sh02 = tmp_path / "acme", tmp_path / "nodes" / "sh01", tmp_path / "sh02"
    cli("chain", "init", "--out", chain)
    cli("init", "--node", "SH01", "--chain", chain, "--data", sh01)
    cli("init", "--node", "SH02", "--chain", chain, "--data", sh02)
    cli("init", "--node", "SH03", "--chain", "files-only", "--data", tmp_path / "sh03")
    # Parents the project created for a data directory are its too.
    assert mode(tmp_path / "nodes") == 0o700

    ledger = Ledger.open(sh01)
    try:
        member = ledger.add_member(ledger.owner, name="王芳", phone="13812345678")
        ledger.topup(ledger.owner, member, 12_345)
        # While the store is open SQLite has its WAL and shared memory next to it:
        # they take the database file's permissions.
        assert (sh01 / (DB_FILE + "-wal")).exists() and (sh01 / (DB_FILE + "-shm")).exists()
        assert offenders(sh01) == []
        sealed = backup_bytes(ledger, None)
    finally:
        ledger.close()
    # One sealed file: encrypted for the chain, no member's phone in the clear.
    assert sealed.startswith(b"CRDTLEDGER-SEALED backup 1\n") and b"13812345678" not in sealed

    sync = tmp_path / "out" / "sh01.sync"
    sync.parent.mkdir()
    cli("export", "--out", sync, "--data", sh01)
    cli("import", sync, "--data", sh02)
    cli("backup", "--out", tmp_path / "backups" / "sh01", "--data", sh01)
    revoke(chain, "SH02")  # the CA keeps its own copy of the revocation list
    write_run_file(sh01, node="SH01", host="127.0.0.1", port=8480, token="t" * 32)
    capsys.readouterr()

    assert (chain / "crl.der").exists() and (sh01 / "node.run.json").exists()
    assert (tmp_path / "backups" / "sh01" / "ledger.backup").exists()
    cli("restore", "--from", tmp_path / "backups" / "sh01", "--chain", chain,
        "--data", tmp_path / "restored" / "sh01")
    assert offenders(chain, tmp_path / "nodes", sh02, tmp_path / "sh03",
                     tmp_path / "backups", tmp_path / "restored", sync) == []
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["sh01.sync"]  # no .part


def test_an_old_world_readable_store_is_tightened_when_opened(tmp_path: Path) -> None:
    data = tmp_path / "sh01"
    Ledger.create(data, "SH01")
    # As an older version left it: 0755 directory, 0644 store, and a WAL and shared
    # memory file made after the store's mode.
    os.chmod(data, 0o755)
    for f in data.iterdir():
        os.chmod(f, 0o644)
    conn = sqlite3.connect(data / DB_FILE)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("INSERT OR REPLACE INTO meta VALUES ('probe', '1')")
    conn.commit()
    assert mode(data / (DB_FILE + "-wal")) == 0o644
    assert offenders(data) != []
    ledger = Ledger.open(data, lock=False)
    try:
        assert offenders(data) == []
    finally:
        ledger.close()
        conn.close()
    assert offenders(data) == []


def test_the_helpers_ignore_even_a_strange_umask(tmp_path: Path) -> None:
    os.umask(0o277)  # would make a 0600 request 0400 and a 0700 request 0500
    private_dir(tmp_path / "a" / "b")
    with private_file_open(tmp_path / "a" / "b" / "f") as f:
        f.write(b"x")
    private_sqlite_file(tmp_path / "a" / "db")
    existing = tmp_path / "a" / "old"
    existing.write_bytes(b"old")
    os.chmod(existing, 0o644)
    with private_file_open(existing) as f:  # a rewrite tightens, too
        f.write(b"new")
    assert offenders(tmp_path / "a") == []
