"""Which store file a write-ahead log belongs to (DATA/ledger.walstamp): what tells an
old store file copied back beside the log of a newer one.

A branch PC that crashed (a power cut, a SIGKILL) leaves `ledger.sqlite3-wal` beside
the store: committed pages not yet copied into the file. Yesterday's copy of
`ledger.sqlite3` put back by hand over the store then opened with that log, and
SQLite laid the newer pages over the older file: tables and their indexes disagreed
for good (`PRAGMA integrity_check` says so), reports were wrong, and the tip mark
(crdtledger.tipmark) matched, since the log's records were in those pages. SQLite
ties no log to its file.

Between two checkpoints SQLite writes only to the log, so the file is what the last
checkpoint left. Each time the log starts again (its header's salts change, after a
checkpoint copied all of it), the lock's holder writes a stamp into the store (meta
`wal_stamp`, one more than before) and then, beside it, the stamp and the log's salts.
A file a log belongs to holds the stamp of that log's generation (the stamping commit
checkpointed already) or the one before (not yet): any other stamp is another file.
The one before is also the stamp of every copy taken after an earlier checkpoint of
the previous generation, which lacks its later pages: so the file beside also names
how far the store's signed log had gone in the file when the log started again (the
last `records` row, read from the file alone: every document write adds one, none is
ever deleted), and a file of the stamp before that has not gone as far is another
file too.
Such a log is set aside (`ledger.sqlite3-wal.foreign-<time>`, kept for a look for 30
days: backups.drop_kept_aside) before SQLite opens the store, which then opens as the
copy it is and, being behind its tip mark, as a restored store that catches up with
itself before it sells.

Fails open: a file beside that does not name the log there (lost to a power cut, the
stamp not yet written, a store from before this check) checks nothing. Not caught: a
copy taken while a checkpoint was cut short by a reader (between two partial
checkpoints of one generation), which holds that generation's stamp with some of its
pages missing; and a copy of the generation before that lacks only commits which
wrote no document (sessions, keys, the clock's lease).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import time
from pathlib import Path

log = logging.getLogger(__name__)

STAMP_FILE = "ledger.walstamp"
_SALTS = slice(16, 24)  # the log header's two salts (sqlite.org/fileformat2.html#walformat)
_HEADER = 32
# The file beside's one line, padded: a stamp and a row of up to 20 digits each and
# the salts' 16 hex digits fit, and a line of an older build (written whole) is shorter.
_STAMP_WIDTH = 80


def _aside(wal: Path) -> Path:
    """A name of its own for a log set aside: two set aside in one second kept one (the
    second replaced the first)."""
    return wal.with_name(f"{wal.name}.foreign-{time.strftime('%Y%m%d-%H%M%S')}-"
                         f"{time.time_ns() % 1_000_000_000:09d}")


def _salts(wal: Path) -> bytes | None:
    try:
        with open(wal, "rb") as f:
            header = f.read(_HEADER)
    except OSError:
        return None
    return header[_SALTS] if len(header) == _HEADER else None


def _beside(data_dir: Path) -> tuple[int, bytes, int | None] | None:
    """The stamp, the log's salts and (since 7 December) the last `records` row the
    file held when that log started."""
    try:
        stamp, salts, *last = (data_dir / STAMP_FILE).read_text().split()
        return int(stamp), bytes.fromhex(salts), int(last[0]) if last else None
    except (OSError, ValueError):
        return None


_STATE = ("SELECT (SELECT value FROM meta WHERE key = 'wal_stamp'), "
          "(SELECT COALESCE(MAX(pos), 0) FROM records)")


def _file_state(db: Path) -> tuple[int, int] | None:
    """The stamp and the last `records` row in the store file itself, the log left out
    (`immutable`); None when the file does not read alone. A crash while a checkpoint
    copied the log into the file leaves it torn until the log is laid over it again:
    reading that as another file set the store's own log aside, and the store left
    could not open."""
    try:
        # As a URI (a data directory named with '#', '?' or '%' read another path).
        conn = sqlite3.connect(db.resolve().as_uri() + "?immutable=1", uri=True)
        try:
            stamp, pos = conn.execute(_STATE).fetchone()
        finally:
            conn.close()
    except sqlite3.DatabaseError:
        return None
    return (int(stamp) if str(stamp).isdigit() else 0), int(pos)


def set_aside_foreign(data_dir: Path, db: Path) -> Path | None:
    """Before SQLite opens `db`: a log beside it that belongs to another file is moved
    aside (with its index, `-shm`); returns where it went, None if none was."""
    wal = db.with_name(db.name + "-wal")
    salts = _salts(wal)
    beside = _beside(data_dir)
    if salts is None or beside is None or beside[1] != salts:
        return None
    state = _file_state(db)
    if state is None:
        return None
    stamp, pos = state
    # The generation before: the file as that log found it, or a later one (a
    # checkpoint of this log's first commits, the stamping one not yet among them).
    if stamp == beside[0] or (stamp == beside[0] - 1
                              and (beside[2] is None or pos >= beside[2])):
        return None
    aside = _aside(wal)
    try:
        os.replace(wal, aside)
    except FileNotFoundError:  # set aside meanwhile (a reader and a node starting at once)
        return None
    with contextlib.suppress(FileNotFoundError):
        os.remove(db.with_name(db.name + "-shm"))
    log.warning("%s is an older copy than the write-ahead log beside it (the store file "
                "was put back by hand after a crash): the log is set aside as %s, and the "
                "store opens as the copy it is", db, aside.name)
    return aside


def forget(data_dir: Path, db: Path) -> None:
    """A new store is made where `db` is not: a log, its index and a stamp left there
    (a crashed store moved out by hand without them) are no one's. The log is kept
    aside; laid over the new file, it opened as the old node."""
    wal = db.with_name(db.name + "-wal")
    if wal.exists():
        os.replace(wal, _aside(wal))
    for left in (db.with_name(db.name + "-shm"), data_dir / STAMP_FILE):
        with contextlib.suppress(FileNotFoundError):
            os.remove(left)


class WalStamp:
    """The lock's holder's side: after each commit, a log started again is stamped."""

    def __init__(self, data_dir: Path, db: Path) -> None:
        self._dir = data_dir
        self._db = db
        self._wal = db.with_name(db.name + "-wal")
        beside = _beside(data_dir)
        self._stamped = beside[1] if beside else None
        # Kept open while the store is (a read per commit, about a microsecond), and
        # closed only after SQLite's connection: closing a descriptor drops every
        # POSIX lock this process holds on that file.
        self._fd: int | None = None

    def _read_salts(self) -> bytes | None:
        if self._fd is None:
            try:
                self._fd = os.open(self._wal, os.O_RDONLY)
            except OSError:
                return None
        header = os.pread(self._fd, _HEADER, 0)
        return header[_SALTS] if len(header) == _HEADER else None

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def after_commit(self, conn: sqlite3.Connection) -> None:
        """Never raises: the commit it follows is done, whatever happens here."""
        try:
            salts = self._read_salts()
        except OSError:
            return
        if salts is None or salts == self._stamped:
            return
        # How far the file alone has gone: what the last checkpoint of the generation
        # before left, all of it (the log starts again only then). Read once a log
        # (about a thousand pages, some 90 debits: 0.2-0.8 ms, a new connection's
        # schema read most of it); an older copy of the stamp before has gone less far.
        alone = _file_state(self._db)
        if alone is None:
            # The file does not read alone (torn by a crash until a checkpoint mends
            # it): whether this log holds its stamp cannot be told. None now; the file
            # beside keeps naming the log before, which checks nothing (fails open).
            self._stamped = salts
            return
        try:
            row = conn.execute("SELECT value FROM meta WHERE key = 'wal_stamp'").fetchone()
            current = int(row[0]) if row and str(row[0]).isdigit() else 0
            if alone[0] < current:
                # This log holds its stamp already: the file beside naming it was lost
                # (a crash before it reached the disk, a disk full). Stamped again, the
                # store ran two ahead of its file, and the next crash before a
                # checkpoint set the store's own log aside, answered sales and all.
                stamp = current
            else:  # the file alone holds all the connection does: a new log
                stamp = current + 1
                conn.execute("INSERT OR REPLACE INTO meta VALUES ('wal_stamp', ?)",
                             (str(stamp),))
        except sqlite3.Error as e:  # a disk full: the next commit tries again
            log.warning("the write-ahead log's stamp was not written: %s", e)
            return
        # The log the stamp landed in: the stamp's own commit starts the log again when
        # the commit before it was copied into the file whole (a catch-up's slice, a
        # sync file's import). Naming the salts read before it, the file beside ran
        # ahead of the store a stamp a time, and a crash then set the store's own log
        # aside.
        try:
            salts = self._read_salts() or salts
        except OSError:
            return
        with contextlib.suppress(OSError):
            _write_stamp(self._dir / STAMP_FILE, f"{stamp} {salts.hex()} {alone[1]}")
        self._stamped = salts


def _write_stamp(path: Path, line: str) -> None:
    """Overwrite the file beside in place, padded to one width. Truncated and written
    again (`Path.write_text`), it took 1.8 ms a time on ext4 (up to 8 ms): ext4 writes
    a file's data out when it is closed after a truncation to nothing (`auto_da_alloc`,
    against zero-length files after a crash), and this ran once a log, some 80 debits,
    on the commit of a sale. In place, 30-55 µs. Every line is as long, so no old
    line's tail is left after a new one; a crash midway leaves the old line or the
    new (one sector), and a lost write fails open as before."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.pwrite(fd, (line.ljust(_STAMP_WIDTH - 1) + "\n").encode(), 0)
    finally:
        os.close(fd)
