"""Backups: one sealed file (crdtledger.seal) that carries what a restore needs.

`write_backup` takes SQLite's online backup of the store (one consistent snapshot
while the node keeps working, no lock on the data directory), marks the copy as a
restored node (meta `restored_from`: the node that opens it catches up with the
chain before it writes, then takes a new epoch of its pycrdt client id), and
seals it with the node's key files into ``TARGET/ledger.backup``: signed by the node,
encrypted with the chain secret, so a lost stick leaks no phone and no PIN hash.

`restore` opens that file with whatever keys are at hand: the data directory's own
(restoring in place), else the chain directory's ``ca.crt`` and ``chain.key``
(``crdtledger restore --chain``), else none for a store without a chain CA (whose
backups anyone can read, see crdtledger.seal). It writes the key files back and the
store under its real name last, so a crash leaves the old store or the new one. A
store it replaces is kept aside, never deleted.

`restore_pending` is the same restore for a backup copied by hand into a data
directory (``DATA/ledger.backup``): the store calls it before it opens.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import sqlite3
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import msgpack
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from crdtledger import platform, walpair
from crdtledger.errors import (
    CorruptSyncFile,
    InvalidInput,
    LedgerError,
    RemoteProtocolError,
    StoreDamaged,
    StoreError,
    StoreLocked,
)
from crdtledger.hlc import id_time_ms
from crdtledger.idempotency import KEY_TTL_MS
from crdtledger.log import altered_logs
from crdtledger.private import (
    FILE_MODE,
    SQLITE_SUFFIXES,
    private_dir,
    private_file_open,
    private_sqlite_file,
    replace_private,
    write_private,
)
from crdtledger.seal import (
    MAX_SEALED_BYTES,
    open_for_ca,
    read_head,
    read_sealed,
    seal,
    seal_for_ca,
    unseal,
)
from crdtledger.trust import (
    CA_CERT,
    CERT_ERRORS,
    CHAIN_KEY,
    NODE_CERT,
    OPEN_DIR,
    TLS_DIR,
    Trust,
    UntrustedSigner,
    load_trust,
    node_of,
)

BACKUP_FILE = "ledger.backup"
DB_FILE = "ledger.sqlite3"  # crdtledger.storage.DB_FILE (the store imports this module)
LOCK_FILE = "lock"  # crdtledger.storage.LOCK_FILE
CHAIN_FILE = "chain.json"  # peer.chain.CHAIN_FILE: {"name": ..., "fingerprint": ...}
CA_KEY = "ca.key"  # peer.chain.CA_KEY: the chain CA's private key, head office's alone
SQLITE_MAGIC = b"SQLite format 3\x00"
# What to do about a damaged store: said by the backup that refuses it and by `status`.
RESTORE_DAMAGED = ("Restore from the last good backup (crdtledger restore) and let the "
                   "branch catch up from its peers")
# What a backup's key files may be called: the files of DATA/tls or DATA/keys.
KEY_PATH = re.compile(r"^(?:(tls|keys)/[A-Za-z0-9._-]{1,64}|node\.toml)\Z")
# The node's settings (peers, [counter], the [notify] gateways with their passwords):
# carried beside the keys, sealed with them for the chain CA, so a branch restored on a
# new PC finds its peers and sends its notices. Never in an open store's backup, whose
# key files anyone holding it reads (crdtledger.seal).
SETTINGS_FILE = "node.toml"
TIME_FORMAT = "%Y-%m-%d %H:%M"


# Told each step of a long backup or restore (the command line shows it: peer/progress.py).
Progress = Callable[[str], None]


def damage(conn: sqlite3.Connection, *, copied_from: sqlite3.Connection | None = None
           ) -> str | None:
    """What is wrong first in the store on `conn`, or None: its file cut short (a copy
    interrupted, a disk full: `_cut_short`), else what SQLite's quick check finds (a
    torn page, a file put back beside another's log). It reads every page: about 20 s
    a GB. `copied_from`: the store `conn` is a copy of (a backup's): a copy reads what
    its original's file lacks as zeros and is whole itself, so that file is read too.

    A file is said cut short only when two readings, one before the quick check and
    one after it and at least `CUT_SHORT_SETTLE_S` after the first, find the same:
    a running node's checkpoint writes the header's new size first and the pages
    after it (from its log, which `_cut_short` counts), and may then start its log
    afresh between the header and the log being read."""
    files = [f for f in dict.fromkeys(_main_file(c) for c in (conn, copied_from)
                                      if c is not None) if f is not None]
    started = time.monotonic()
    first = {f: _cut_short(f) for f in files}
    try:
        found = [r[0] for r in conn.execute("PRAGMA quick_check(1)")]
    except sqlite3.DatabaseError as e:
        # Only what says the file is bad: a busy or unreadable store is not damaged.
        # (An extended code: SQLITE_CORRUPT_INDEX is 779, its primary code in the low byte.)
        if (getattr(e, "sqlite_errorcode", 0) or 0) & 0xFF not in (sqlite3.SQLITE_CORRUPT,
                                                                   sqlite3.SQLITE_NOTADB):
            raise
        found = [str(e)]
    for path, seen in first.items():
        if seen is not None:
            time.sleep(max(0.0, started + CUT_SHORT_SETTLE_S - time.monotonic()))
            if _cut_short(path) == seen:
                return seen[1]
    if found != ["ok"]:
        return " ".join(" ".join(found).split())[:200]
    return _own_log_altered(conn)


def _own_log_altered(conn: sqlite3.Connection) -> str | None:
    """Whether a record of a log this store holds, its own or another branch's, was
    changed after it was written or taken (a store edited by hand): peers refuse this
    branch's own log from there on, for good, and every sync file it writes carrying
    another's ("altered on the way"), and no check here said so for another's."""
    try:
        row = conn.execute("SELECT value FROM meta WHERE key = 'node'").fetchone()
        altered = altered_logs(conn) if row else {}
    except sqlite3.OperationalError:  # not a store of ours (no such table): said elsewhere
        return None
    if not altered:
        return None
    own = str(row[0])
    if own in altered:
        return (f"record {altered[own]} of this branch's own log ({own}) was changed after "
                "it was written (the store edited by hand, or damaged): every other branch "
                "refuses its records from there on")
    node, seq = min(altered.items())
    return (f"record {seq} of branch {node}'s log held here was changed after it came (the "
            "store edited by hand, or damaged): every other branch refuses each sync file "
            "this one writes")


# How far apart the two readings of a store file cut short are (`damage`).
CUT_SHORT_SETTLE_S = 0.5
WAL_MAGIC = (0x377F0682, 0x377F0683)


def _main_file(conn: sqlite3.Connection) -> Path | None:
    """The file of the main database on `conn`; None in memory (or a temporary one)."""
    for _seq, name, file in conn.execute("PRAGMA database_list"):
        if name == "main":
            return Path(file) if file else None
    return None


def _cut_short(path: Path) -> tuple[tuple[bytes, int], str] | None:
    """Whether the SQLite file at `path` holds fewer pages than its own header says
    (the in-header size, when its version-valid-for number is the change counter) or
    a page in part (its size not a whole number of pages), a page it lacks not being
    in its log either: (the header and size read, what to say), or None.

    Only the file against its own header: in WAL mode the store holds more pages than
    the file while its log is not yet checkpointed (`PRAGMA page_count` says the
    store's size). A page the file lacks that the log holds is read from the log, and
    a checkpoint writes it whole (one is doing so while the header says more than the
    file yet holds), so it is not counted. A file that does not read, or is not
    SQLite's, is left to SQLite to say."""
    try:
        with open(path, "rb") as f:
            head = f.read(100)
            size = os.fstat(f.fileno()).st_size
    except OSError:
        return None
    if len(head) < 100 or not head.startswith(SQLITE_MAGIC):
        return None
    page = int.from_bytes(head[16:18], "big")
    page = 65536 if page == 1 else page
    if page < 512 or page & (page - 1):
        return None
    counter, pages, valid_for = (int.from_bytes(head[i:i + 4], "big") for i in (24, 28, 92))
    held, part = divmod(size, page)
    want = max(pages if pages and counter == valid_for else 0, held + (1 if part else 0))
    if want <= held:
        return None
    if set(range(held + 1, want + 1)) <= _logged_pages(Path(f"{path}-wal"), page):
        return None
    return (head, size), f"the store file is cut short: {held} of {want} pages"


def _logged_pages(wal: Path, page: int) -> frozenset[int]:
    """The pages the WAL file `wal` holds committed (frames of its present salts, up to
    its last commit; https://www.sqlite.org/fileformat2.html, "The WAL File Format"):
    none if there is none."""
    pages: set[int] = set()
    committed: frozenset[int] = frozenset()
    try:
        with open(wal, "rb") as f:
            head = f.read(32)
            if (len(head) < 32 or int.from_bytes(head[:4], "big") not in WAL_MAGIC
                    or int.from_bytes(head[8:12], "big") != page):
                return committed
            salts = head[16:24]
            while len(frame := f.read(24)) == 24 and frame[8:16] == salts:
                pages.add(int.from_bytes(frame[:4], "big"))
                if int.from_bytes(frame[4:8], "big"):  # a commit: the store's size after it
                    committed = frozenset(pages)
                f.seek(page, os.SEEK_CUR)
    except OSError:
        pass
    return committed


def store_damage(data_dir: Path) -> str | None:
    """`damage` of the store in `data_dir`, read on a connection of its own (read-only:
    beside a running node too)."""
    conn = sqlite3.connect((data_dir / DB_FILE).resolve().as_uri() + "?mode=ro", uri=True)
    try:
        return damage(conn)
    finally:
        conn.close()


def _silent(_text: str) -> None:
    pass


def write_backup(data_dir: Path, target_dir: Path, progress: Progress = _silent) -> Path:
    """Seal a consistent copy of the node in `data_dir` into ``target_dir/ledger.backup``
    (0600, in a 0700 directory) and return its path. Refuses a target that already
    holds a backup or a store: a backup never overwrites anything, nor one that
    appears there while it is written (`replace_private`, overwrite False)."""
    data_dir, target = Path(data_dir), Path(target_dir)
    out = target / BACKUP_FILE
    for held in (out, target / DB_FILE):
        if held.exists():
            raise StoreError(f"{target} already holds {'a backup' if held == out else 'a node'}"
                             "; choose an empty directory")
    db = data_dir / DB_FILE
    if not db.exists():
        raise StoreError(no_store(data_dir))
    private_dir(target)  # a backup holds every member's data, like the store
    taken_ms = int(time.time() * 1000)
    for where in (data_dir, target):
        _sweep_copies(where)
    # The plain copy is made beside the store, which holds the same in the clear, and
    # never where the sealed file goes: a backup killed while copying (SIGKILL, the
    # power) left it on the stick, every member's phone readable and no step removing
    # it, the next backups saying "signed, and encrypted".
    with tempfile.TemporaryDirectory(prefix=COPY_PREFIX, dir=data_dir) as tmp:
        copy = Path(tmp) / DB_FILE  # mkdtemp makes the directory 0700
        src = sqlite3.connect(db.resolve().as_uri() + "?mode=ro", uri=True)
        dst = sqlite3.connect(private_sqlite_file(copy))
        try:
            # One step, one read snapshot (WAL: the node keeps writing meanwhile); a
            # stepped copy would start again after every write of a busy node.
            progress(f"copying the store ({db.stat().st_size:,} bytes) while the node "
                     "keeps working")
            try:
                src.backup(dst)
            except sqlite3.DatabaseError:
                # A store SQLite does not read at all (its file cut short by whole
                # pages) is said damaged as one that copies, with what to do.
                found = damage(src)
                if found is None:
                    raise
            else:
                # A damaged store (a file put back by hand beside another's log, a disk
                # error, its file cut short) copied page by page makes a backup that
                # carries the damage on, night after night, over the last good one
                # kept. Checked on the copy, and the store's file for what the copy
                # reads as zeros.
                progress("checking the copy")
                found = damage(dst, copied_from=src)
            if found is not None:
                raise StoreDamaged(f"the store in {data_dir} is damaged ({found}): no backup "
                                   "was written, so the last good one is still whole. "
                                   f"{RESTORE_DAMAGED}", found)
            meta = dict(dst.execute("SELECT key, value FROM meta").fetchall())
            node, chain = meta["node"], meta["chain"]
            dst.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                        ("restored_from", local_time(taken_ms, meta.get("timezone"))))
            dst.commit()
            dst.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            dst.close()
            src.close()
        db_bytes = copy.read_bytes()
    # The node's identity goes with it (made now for an open store that had none yet).
    trust = load_trust(data_dir, chain, node)
    progress("signing and encrypting the copy")
    keys = _key_files(data_dir)
    ca_pem = keys.get(f"{TLS_DIR}/{CA_CERT}")
    body: dict[str, Any] = {"db": db_bytes, "keys": keys, "taken_at": taken_ms}
    if ca_pem is not None:
        with contextlib.suppress(FileNotFoundError):
            keys[SETTINGS_FILE] = (data_dir / SETTINGS_FILE).read_bytes()
        # Sealed for the chain CA too: every branch holds the chain secret that opens
        # the backup, and with these keys signs as this one (crdtledger.seal).
        body["keys"] = {}
        body["keys_for_ca"] = seal_for_ca(ca_pem, msgpack.packb(keys, use_bin_type=True),
                                          _keys_context(chain, node))
    payload = msgpack.packb(body, use_bin_type=True)
    del db_bytes
    sealed = seal(trust, "backup", payload, taken_ms)
    del payload
    progress(f"writing {len(sealed):,} bytes to {out}")
    replace_private(out, sealed, overwrite=False)
    return out


# A backup's plain copy of the store, while it is being made (`write_backup`), and how
# old one must be to be a killed backup's left behind: a backup of a store of a GB
# copies in under a minute.
COPY_PREFIX = ".backup-"
COPY_STALE_S = 3600


def _sweep_copies(where: Path) -> None:
    """Remove the plain copies killed backups left in `where`: in the data directory,
    and on a backup target, where builds before this one made them."""
    try:
        left = [p for p in where.iterdir() if p.name.startswith(COPY_PREFIX) and p.is_dir()
                and not p.is_symlink() and time.time() - p.stat().st_mtime > COPY_STALE_S]
    except OSError:
        return
    for p in left:
        for f in p.iterdir():
            if f.name.startswith(DB_FILE) and f.is_file() and not f.is_symlink():
                f.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            p.rmdir()  # only once emptied of copies: anything else there is not ours


def restore(source: Path, data_dir: Path, *, chain_dir: Path | None = None,
            lock: bool = True, progress: Progress = _silent) -> dict[str, Any]:
    """Make `data_dir` the node a backup holds; returns {node, chain, taken_at, ...}.

    `source` is a backup file or a directory holding ``ledger.backup``. A certificate
    in `data_dir` must name the backup's node. A store already in `data_dir` must be
    the same node's, and not hold more of its own log than the backup (a newer store
    is refused, never put aside for an older one); it is kept aside as
    ``ledger.sqlite3.before-restore-<time>`` with its WAL. Key files already in
    `data_dir` are kept (they are the node's current identity and opened the backup);
    missing ones are written from the backup. `lock` False: the caller holds the
    store's lock. Nothing is written unless the backup passes every check."""
    path = Path(source)
    if path.is_dir():
        path = path / BACKUP_FILE
    data_dir = Path(data_dir)
    what = f"backup {path}"
    try:
        if path.stat().st_size > MAX_SEALED_BYTES:
            raise CorruptSyncFile(f"{what} is larger than any backup")
        progress(f"reading {path} ({path.stat().st_size:,} bytes)")
        header = read_head(path, "backup", what=what)
    except FileNotFoundError:
        raise InvalidInput(f"there is no backup at {path}") from None
    except OSError as e:
        raise InvalidInput(f"cannot read {path}: {e.strerror}") from None
    here = _store_of(data_dir)
    trust = _reading_trust(header, data_dir, chain_dir, what)
    try:
        # The chain and signer its header names are judged before the rest is read:
        # another chain's backup declaring gigabytes costs its first kilobytes.
        data = read_sealed(path, "backup", trust=trust, what=what)
    except FileNotFoundError:
        raise InvalidInput(f"there is no backup at {path}") from None
    except OSError as e:
        raise InvalidInput(f"cannot read {path}: {e.strerror}") from None
    progress("checking its signature and decrypting it")
    sealed = unseal(trust, data, "backup", what=what)
    del data
    db_bytes, keys, for_ca, taken_ms = _contents(sealed.payload, what)
    if here is not None and here[0] != sealed.node:
        raise StoreError(f"{data_dir} holds node {here[0]}; {what} is of node {sealed.node}: "
                         "restore it into an empty directory")
    # The directory's own certificate is kept (it opened the backup): it must be the
    # backup's node's, whether or not a store is left beside it. Another branch's
    # would make a node that writes SH01's store under SH02's key, which no branch
    # ever takes (its directory, its store damaged, is still that branch's).
    own_cert = _own_cert(data_dir)
    own_node = node_of(own_cert) if own_cert is not None else None
    if own_cert is not None and own_node != sealed.node:
        raise StoreError(f"{data_dir} is node {own_node}'s directory (its certificate names "
                         f"it); {what} is of node {sealed.node}: restore it into node "
                         f"{sealed.node}'s directory or an empty one")
    own_identity = own_cert is not None
    if for_ca is not None and not own_identity:
        keys = _keys_from_ca(for_ca, chain_dir, trust.chain, sealed.node, what)
    with _made_for(data_dir), _locked(data_dir) if lock else contextlib.nullcontext():
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        tmp = data_dir / (DB_FILE + ".restoring")
        # A restore killed while it marked its copy left that copy's log: SQLite laid
        # it over the next copy written under this name, a store of two backups.
        for suffix in SQLITE_SUFFIXES[1:]:
            Path(f"{tmp}{suffix}").unlink(missing_ok=True)
        progress(f"writing the store of node {sealed.node} into {data_dir}")
        try:
            with private_file_open(tmp) as f:
                f.write(db_bytes)
                f.flush()
                os.fsync(f.fileno())
            del db_bytes
            meta = _meta(tmp)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        if meta is None or meta.get("node") != sealed.node or meta.get("chain") != trust.chain:
            tmp.unlink(missing_ok=True)
            raise CorruptSyncFile(f"{what} is signed by node {sealed.node} of chain "
                                  f"{trust.chain} but holds another store")
        from crdtledger.storage import refuse_newer_format  # storage imports this module

        try:
            refuse_newer_format(meta.get("format"), what)
            # A backup made before backups checked their copy, or sealed again after an
            # edit, put a damaged store (a record of its own log altered: every branch
            # refuses that log for good) in place of one that may be whole, unsaid.
            try:
                conn = sqlite3.connect(tmp.resolve().as_uri() + "?mode=ro&immutable=1",
                                       uri=True)
                try:
                    found = damage(conn)
                finally:
                    conn.close()
            except sqlite3.Error as e:
                found = str(e)
            if found is not None:
                raise CorruptSyncFile(f"{what} holds a damaged store ({found}): nothing was "
                                      "restored; restore an earlier backup")
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        enrolled = _enrolled(chain_dir, sealed.node)
        if here is not None:
            # A restored store restored again without the chain directory (the node's
            # keys, there now, open the backup): what its first restore noted still waits.
            enrolled = {**_still_enrolled(data_dir / DB_FILE), **enrolled}
        try:
            backup_tip = _mark_restored(tmp, sealed.node, what, enrolled)
        except BaseException:
            for suffix in SQLITE_SUFFIXES:
                Path(str(tmp) + suffix).unlink(missing_ok=True)
            raise
        # A readable store of this node that holds more of its own log than the backup
        # (an old backup copied over a healthy store by hand, a restore asked of the
        # wrong directory) is not replaced: what it wrote since would go aside unseen,
        # and only the branches it reached could give it back. Refused, saying how to
        # restore anyway if that store is the damaged one.
        if here is not None:  # read with its own log only (another file's: set aside)
            walpair.set_aside_foreign(data_dir, data_dir / DB_FILE)
        here_tip = _own_tip(data_dir / DB_FILE, sealed.node) if here is not None else None
        if here_tip is not None and here_tip > backup_tip:
            tmp.unlink(missing_ok=True)
            raise StoreError(
                f"{data_dir} holds node {sealed.node}'s store, and it is newer than {what}: "
                f"its own log goes to record {here_tip}, the backup's to {backup_tip}; "
                "restoring would put aside what this branch wrote since the backup, so it "
                f"is refused. If that store is damaged, move {DB_FILE} (and its -wal and "
                f"-shm files) out of {data_dir}, then restore")
        if not own_identity:
            for rel, content in keys.items():
                if rel == SETTINGS_FILE and (data_dir / rel).exists():
                    continue  # settings the owner wrote here first stay theirs
                private_dir((data_dir / rel).parent)
                write_private(data_dir / rel, content, sync=True)
        kept = None
        db = data_dir / DB_FILE
        if db.exists():
            kept = data_dir / f"{DB_FILE}.before-restore-{stamp}"
            for suffix in SQLITE_SUFFIXES[1:]:  # companions first: the store goes last
                if (data_dir / (DB_FILE + suffix)).exists():
                    os.replace(data_dir / (DB_FILE + suffix), data_dir / (kept.name + suffix))
            os.replace(db, kept)
        else:
            # A log left without its store (the store moved out after a crash, its -wal
            # forgotten) holds sales no other file may hold: kept aside, not deleted.
            walpair.forget(data_dir, db)
            (data_dir / (DB_FILE + "-journal")).unlink(missing_ok=True)
        os.replace(tmp, db)
        if path.resolve() == (data_dir / BACKUP_FILE).resolve():
            # Left there, it was a backup copied in by hand, which the store's first
            # opening restored again without the chain directory: the branches to wait
            # for (`_enrolled`) went with it, and head office's word ended the wait.
            path.rename(path.with_name(f"{BACKUP_FILE}.restored-{stamp}"))
        _sync_dir(data_dir)
    return {"node": sealed.node, "chain": trust.chain,
            "taken_at": meta.get("restored_from") or local_time(taken_ms, meta.get("timezone")),
            "taken_at_ms": taken_ms, "kept": str(kept) if kept else None,
            "keys": "kept" if own_identity else "restored" if keys else "none",
            "data": str(data_dir)}


def no_store(data_dir: Path) -> str:
    """What to say of a data directory without a store, and what to do: after a
    restore killed part-way (its keys written, not its store) `status` told the
    technician to run `init`, which refuses a directory holding a node's keys."""
    if (data_dir / BACKUP_FILE).is_file():
        if _own_cert(data_dir) is None:
            return (f"no store in {data_dir} yet: a backup waits there ({BACKUP_FILE}), "
                    "but not the node's keys, which a branch's backup holds sealed for the "
                    f"chain CA: run crdtledger restore --from {data_dir / BACKUP_FILE} "
                    f"--data {data_dir} --chain CHAIN_DIR (the chain directory with ca.key)")
        return (f"no store in {data_dir} yet: a backup waits there ({BACKUP_FILE}); start "
                "the node (crdtledger node run) to restore it")
    if any((data_dir / d).is_dir() and any((data_dir / d).iterdir()) for d in ("tls", "keys")):
        # With the chain directory again: the keys now there open the backup without it,
        # and the branches the chain enrolled, which the node must hear from before it
        # sells, were not noted (`_enrolled`).
        return (f"no store in {data_dir}, but a node's keys are there (a restore cut short?): "
                f"run crdtledger restore --from BACKUP --data {data_dir} --chain CHAIN_DIR "
                "again (the chain directory: it names the branches to hear from before "
                "selling)")
    return f"no crdtledger node in {data_dir} (run: crdtledger init)"


def restore_pending(data_dir: Path, *, lock: bool = True) -> bool:
    """Restore a backup copied by hand into the data directory (``DATA/ledger.backup``),
    in place (`restore` renames it ``ledger.backup.restored-<time>``). Returns whether one was
    restored. A backup that does not pass is refused with the reason and left where
    it is, so the store does not open as if nothing had been asked."""
    pending = Path(data_dir) / BACKUP_FILE
    if not pending.is_file():
        return False
    try:
        restore(pending, data_dir, lock=lock)
    except (LedgerError, RemoteProtocolError) as e:
        raise type(e)(f"{e} (or move {pending} out of the data directory to open the store "
                      "as it is)") from None
    return True


# What restore leaves in the data directory (the store it replaced, a backup copied
# there by hand, a log left without its store) and a log set aside beside an older
# copy of its store (crdtledger.walpair) are kept as long as a backup is (the README:
# 30 days at most), then removed by the daily pass: they are plain SQLite pages, and
# an erasure never reaches them.
KEPT_ASIDE_DAYS = 30
_KEPT_ASIDE = re.compile(rf"^(?:{re.escape(DB_FILE)}\.before-restore|"
                         rf"{re.escape(DB_FILE)}-wal\.foreign|"
                         rf"{re.escape(BACKUP_FILE)}\.restored)-(\d{{8}}-\d{{6}})")


def drop_kept_aside(data_dir: Path, now_ms: int) -> list[str]:
    """Remove what a restore put aside in `data_dir` more than KEPT_ASIDE_DAYS ago (by
    the time in its name, on this PC's clock as it was named), with its companions.
    Returns the names removed."""
    gone = []
    now = datetime.fromtimestamp(now_ms / 1000)
    for path in sorted(Path(data_dir).iterdir()):
        match = _KEPT_ASIDE.match(path.name)
        if match is None:
            continue
        try:
            made = datetime.strptime(match.group(1), "%Y%m%d-%H%M%S")
        except ValueError:
            continue
        if (now - made).days >= KEPT_ASIDE_DAYS:
            path.unlink(missing_ok=True)
            gone.append(path.name)
    return gone


# --- helpers ------------------------------------------------------------------


def local_time(ms: int, timezone: str | None) -> str:
    """A time as the shop reads it: ISO 8601 to the minute, in the store's zone."""
    try:
        zone = ZoneInfo(timezone) if timezone else None
    except (ValueError, KeyError):
        zone = None
    when = datetime.fromtimestamp(ms / 1000, zone) if zone else datetime.fromtimestamp(ms / 1000)
    return when.strftime(TIME_FORMAT)


def _key_files(data_dir: Path) -> dict[str, bytes]:
    """The node's identity: every file of DATA/tls, or else of DATA/keys."""
    for sub in (TLS_DIR, OPEN_DIR):
        d = data_dir / sub
        if (d / NODE_CERT).exists():
            return {f"{sub}/{f.name}": f.read_bytes() for f in sorted(d.iterdir())
                    if f.is_file() and KEY_PATH.match(f"{sub}/{f.name}")}
    return {}


def _own_cert(data_dir: Path) -> x509.Certificate | None:
    for sub in (TLS_DIR, OPEN_DIR):
        path = data_dir / sub / NODE_CERT
        if path.exists():
            try:
                return x509.load_pem_x509_certificate(path.read_bytes())
            except (OSError, *CERT_ERRORS) as e:
                raise StoreError(f"{path} is not a usable certificate: {e}") from None
    return None


def _store_of(data_dir: Path) -> tuple[str, str] | None:
    """(node, chain) of the store in `data_dir`, None if there is none or it does not
    read (a damaged store is a reason to restore)."""
    db = data_dir / DB_FILE
    if not db.exists():
        return None
    meta = _meta(db)
    if meta is None or "node" not in meta or "chain" not in meta:
        return None
    return meta["node"], meta["chain"]


def _meta(db: Path) -> dict[str, str] | None:
    # immutable: no shared-memory or WAL file is made beside it (the meta rows that
    # matter here, node and chain, are written once when the store is created).
    try:
        conn = sqlite3.connect(db.resolve().as_uri() + "?mode=ro&immutable=1", uri=True)
        try:
            return dict(conn.execute("SELECT key, value FROM meta").fetchall())
        finally:
            conn.close()
    except sqlite3.Error:
        return None


_OWN_TIP = "SELECT COALESCE(MAX(seq), 0) FROM records WHERE node = ?"


def _enrolled(chain_dir: Path | None, node: str) -> dict[str, list[str]]:
    """The other branches the chain's CA enrolled (`CHAIN/issued/NODE-SERIAL.crt`,
    peer.chain.enrol), each with its certificates (DER, base64): a restored node waits
    to hear from each that is not revoked (Replica.peer_caught_up judges them against
    the revocation list in force), not only from those its backup knew. A branch
    opened after the backup, which the lost PC sent sales to, was no one the restored
    store knew: head office's word that it had heard nothing since ended the wait, and
    the node sold again."""
    issued = Path(chain_dir) / "issued" if chain_dir is not None else None
    if issued is None or not issued.is_dir():
        return {}
    out: dict[str, list[str]] = {}
    for p in sorted(issued.glob("*.crt")):
        name = p.name.rsplit("-", 1)[0]
        if name == node:
            continue
        try:
            der = x509.load_pem_x509_certificate(p.read_bytes()).public_bytes(
                serialization.Encoding.DER)
        except (ValueError, OSError):
            continue  # not a certificate: nobody to wait for
        out.setdefault(name, []).append(base64.b64encode(der).decode())
    return out


def _still_enrolled(db: Path) -> dict[str, list[str]]:
    """The branches a restored store in `db` still waits to hear from (`_enrolled`)."""
    meta = _meta(db) or {}
    if not meta.get("restored_from"):
        return {}  # caught up: the list it kept says nothing more
    try:
        noted = json.loads(meta.get("restore_enrolled") or "{}")
    except ValueError:
        return {}
    return noted if isinstance(noted, dict) else {}


def put_back_marks(conn: sqlite3.Connection) -> dict[str, str]:
    """The meta a store put back (by `restore`, or a copy of its file by hand:
    storage.Storage._put_back_by_hand) is marked with when it is found so:
    `restored_seen`, when it was put back (a branch's view older than this says nothing
    of what the lost PC sent it: Replica.peer_caught_up, a sync file), never before the
    newest time the store holds (a new PC whose clock was days behind took files made
    before the restore for files made after it); and `keys_unknown_until`: idempotency
    keys are local and a copy holds none made after it, so until a key's life after
    the restore has passed, a key the store does not know is looked for among the
    entries it fetches back (crdtledger.idempotency.done_before_restore; a till's retry
    was sold again). Never cleared."""
    (newest,) = conn.execute("SELECT MAX(id) FROM entries").fetchone()
    now = int(time.time() * 1000)
    return {"restored_seen": str(max(now, id_time_ms(newest) if newest else 0)),
            "keys_unknown_until": str(now + KEY_TTL_MS)}


def _mark_restored(copy: Path, node: str, what: str, enrolled: dict[str, list[str]]
                   ) -> int:
    """Note in the restored copy where the backup's own log ends (meta `restored_tip`:
    Replica.peer_caught_up wants a branch that holds more of it than that), when it was
    put back, and the branches to hear from (`_enrolled`); return the tip. Done here,
    not when the backup is written, so a backup of any age gets it."""
    try:
        conn = sqlite3.connect(copy)
        try:
            (tip,) = conn.execute(_OWN_TIP, (node,)).fetchone()
            # A backup of a store still waiting holds who had said then that nothing
            # had come since: said before the PC it was taken from sold, it ended the
            # next restore's wait on the word of the branches left.
            marks = {"restored_tip": str(int(tip)), **put_back_marks(conn),
                     "restore_enrolled": json.dumps(enrolled), "restore_heard": "",
                     "restore_wait": ""}
            with conn:
                conn.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", marks.items())
        finally:
            conn.close()
        with open(copy, "rb+") as f:
            os.fsync(f.fileno())
    except sqlite3.Error as e:
        raise CorruptSyncFile(f"{what} holds a damaged store: {e}") from None
    return int(tip)


def _own_tip(db: Path, node: str) -> int | None:
    """How far the store `db` holds `node`'s own log; None if that does not read (a
    damaged store). Opened for writing, not immutable: its WAL must count (the store's
    lock is held, no node has it open)."""
    try:
        conn = sqlite3.connect(db.resolve().as_uri() + "?mode=rw", uri=True)
        try:
            (tip,) = conn.execute(_OWN_TIP, (node,)).fetchone()
        finally:
            conn.close()
    except sqlite3.Error:
        return None
    return int(tip)


def _reading_trust(header: dict[str, Any], data_dir: Path, chain_dir: Path | None, what: str
                   ) -> Trust:
    """The keys to open a backup with: the data directory's own, else the chain
    directory's, else (a store without a chain CA) none but the chain's name."""
    cert = _own_cert(data_dir)
    if cert is not None:
        node = node_of(cert)
        chains = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
        if node is None or not chains:
            raise StoreError(f"the certificate in {data_dir} names no node or chain")
        try:
            return load_trust(data_dir, str(chains[0].value), node)
        except UntrustedSigner as e:
            raise StoreError(str(e)) from None
    if chain_dir is not None:
        chain_dir = Path(chain_dir)
        try:
            name = json.loads((chain_dir / CHAIN_FILE).read_text(encoding="utf-8"))["name"]
            ca_pem = (chain_dir / CA_CERT).read_bytes()
            secret = (chain_dir / CHAIN_KEY).read_bytes() if (chain_dir / CHAIN_KEY).exists(
            ) else None
            return Trust.for_reading(str(name), ca_pem, secret)
        except (OSError, KeyError, *CERT_ERRORS) as e:
            raise InvalidInput(f"{chain_dir} is not a chain directory (crdtledger chain "
                               f"init): {e}") from None
    # `header` is well formed (seal.read_head), not yet trusted.
    try:
        signer = x509.load_der_x509_certificate(header["cert"])
        enrolled = signer.issuer != signer.subject
    except CERT_ERRORS:
        enrolled = False
    if enrolled:
        raise InvalidInput(
            f"{what} is of node {header['node']} of chain {header['chain']}, sealed with the "
            "chain's secret: restore it with --chain CHAIN_DIR (the chain directory), or "
            "into the node's data directory if its tls/ directory is still there")
    return Trust.for_reading(header["chain"], None, None)


def _keys_context(chain: str, node: str) -> bytes:
    return f"{chain}\x00{node}".encode()


def _keys_from_ca(for_ca: bytes, chain_dir: Path | None, chain: str, node: str, what: str
                  ) -> dict[str, bytes]:
    """The node's key files a backup holds sealed for the chain CA, opened with the
    chain directory's ca.key: a branch holding the chain secret but not the CA's key
    (any branch) cannot take another's identity from its backup."""
    ca_key = None if chain_dir is None else Path(chain_dir) / CA_KEY
    if ca_key is None or not ca_key.is_file():
        raise InvalidInput(
            f"{what} holds node {node}'s keys sealed for the chain CA: restore it with "
            f"--chain CHAIN_DIR, the chain directory holding {CA_KEY} (head office's, or "
            "its offline copy), or into the node's data directory if its tls/ directory "
            "is still there")
    try:
        pem = ca_key.read_bytes()
    except OSError as e:
        raise InvalidInput(f"cannot read {ca_key}: {e.strerror}") from None
    opened = open_for_ca(pem, for_ca, _keys_context(chain, node), what=what)
    try:
        keys = msgpack.unpackb(opened, raw=False, strict_map_key=True)
    except Exception:
        keys = None
    if not isinstance(keys, dict) or not _key_paths_ok(keys):
        raise CorruptSyncFile(f"{what}: its sealed keys are damaged")
    return keys


def _contents(payload: bytes, what: str) -> tuple[bytes, dict[str, bytes], bytes | None, int]:
    try:
        body = msgpack.unpackb(payload, raw=False, strict_map_key=True)
        db, keys, taken = body["db"], body["keys"], body["taken_at"]
        for_ca = body.get("keys_for_ca")
    except Exception:
        raise CorruptSyncFile(f"{what} does not hold a backup") from None
    if (not isinstance(db, bytes) or not db.startswith(SQLITE_MAGIC)
            or not (for_ca is None or isinstance(for_ca, bytes))
            or not isinstance(keys, dict) or not isinstance(taken, int)
            or not _key_paths_ok(keys)):
        raise CorruptSyncFile(f"{what} does not hold a backup of a crdtledger store")
    return db, keys, for_ca, taken


def _key_paths_ok(keys: dict[Any, Any]) -> bool:
    return all(isinstance(k, str) and KEY_PATH.match(k) and isinstance(v, bytes)
               for k, v in keys.items())


@contextlib.contextmanager
def _made_for(data_dir: Path) -> Iterator[None]:
    """The data directory, made if need be: one a refused restore made is removed
    again with its lock file, so a refusal leaves nothing behind. (A lock file in a
    directory that was there stays: a node starting there may hold it already.)"""
    made = not data_dir.exists()
    private_dir(data_dir)
    try:
        yield
    except BaseException:
        if made:
            with contextlib.suppress(OSError):
                (data_dir / LOCK_FILE).unlink(missing_ok=True)
                data_dir.rmdir()  # only if nothing else is in it
        raise


@contextlib.contextmanager
def _locked(data_dir: Path) -> Iterator[None]:
    """The store's own lock (crdtledger.storage): no node has the store open while
    it is replaced."""
    fd = os.open(data_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0),
                 FILE_MODE)
    try:
        platform.fchmod(fd, FILE_MODE)
        if not platform.try_lock(fd):
            raise StoreLocked(f"data directory {data_dir} is in use by a running node: stop "
                              "it before restoring")
        yield
    finally:
        os.close(fd)


def _sync_dir(path: Path) -> None:
    platform.sync_dir(path)
