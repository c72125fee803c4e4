"""Files and directories readable by their owner only, whatever the umask.

The store, its WAL, backups, sync files, keys and the app's secret hold members'
data or secrets (DESIGN.md, Conventions), so every one is created 0600 and every
directory that holds them 0700. Nothing here touches the process umask: it is
process-wide, and the counter runs NiceGUI threads that create files of their own.
Instead each file is created with `os.open(..., 0o600)` and then `fchmod`ed, so a
umask that is looser (022) or stranger (0277) changes nothing.

SQLite creates `-wal`, `-shm` and `-journal` files with the permissions of the
database file itself, so a database file created here before `sqlite3.connect`
opens it (in a 0700 directory) keeps its companions private too.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from pathlib import Path
from typing import BinaryIO, TextIO

from crdtledger import platform
from crdtledger.errors import InvalidInput, StoreError

FILE_MODE = 0o600
DIR_MODE = 0o700

# What SQLite may leave next to a database file.
SQLITE_SUFFIXES = ("", "-wal", "-shm", "-journal")


def private_dir(path: Path | str) -> Path:
    """Create `path` (and any missing parents) 0700, or tighten it if it exists.

    Parents that already exist are left alone: they are the user's, not ours."""
    path = Path(path)
    if path.exists() and not path.is_dir():  # a file named as a directory: left as it is
        raise StoreError(f"{path} is a file, not a directory: name a directory (a new one "
                         "is made)")
    missing: list[Path] = []
    p = path
    while not p.exists():
        missing.append(p)
        if p.parent == p:
            break
        p = p.parent
    for d in reversed(missing):
        try:
            d.mkdir(mode=DIR_MODE)
        except FileExistsError:
            pass  # made meanwhile by someone else: tightened below if it is the target
        else:
            platform.chmod(d, DIR_MODE)  # mkdir's mode is masked by the umask
    tighten(path, DIR_MODE)
    return path


def _open_fd(path: Path | str, exclusive: bool, append: bool) -> int:
    flags = os.O_WRONLY | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
    if exclusive:
        flags |= os.O_EXCL
    elif append:
        flags |= os.O_APPEND
    else:
        flags |= os.O_TRUNC
    fd = os.open(path, flags, FILE_MODE)
    try:
        platform.fchmod(fd, FILE_MODE)  # whatever the umask, and whatever an old file had
    except BaseException:
        os.close(fd)
        raise
    return fd


def private_file_open(path: Path | str, *, exclusive: bool = False,
                      append: bool = False) -> BinaryIO:
    """Open `path` for writing bytes, created 0600 (`exclusive` refuses an existing
    file). An existing file is truncated (or appended to) and brought to 0600 too:
    a file left 0644 by an older version must not stay readable through a rewrite."""
    return os.fdopen(_open_fd(path, exclusive, append), "ab" if append else "wb")


def private_text_open(path: Path | str, *, exclusive: bool = False,
                      encoding: str = "utf-8") -> TextIO:
    """`private_file_open` for text."""
    return os.fdopen(_open_fd(path, exclusive, False), "w", encoding=encoding)


def write_private(path: Path | str, data: bytes, *, exclusive: bool = False,
                  sync: bool = False) -> None:
    """Write `data` to a file created 0600 (see `private_file_open`)."""
    with private_file_open(path, exclusive=exclusive) as f:
        f.write(data)
        if sync:
            f.flush()
            os.fsync(f.fileno())


def replace_private(path: Path | str, data: bytes) -> None:
    """Write `data` to `path` whole or not at all: 0600 into `path.part`, synced, then
    renamed over `path`, so that a reader never sees half a file under the real name
    (a sync file, a backup). The `.part` file is removed if anything fails. Only a
    regular file is replaced: `--out /dev/stdout` (a link) or a device put a file of
    every member's data in its place, and as root broke /dev/null for the machine."""
    path = Path(path)
    with contextlib.suppress(FileNotFoundError):
        if not stat.S_ISREG(path.lstat().st_mode):
            raise InvalidInput(f"{path} is not a regular file (a link, a device or a "
                               "directory): give the path of a new file")
    part = path.with_name(path.name + ".part")
    try:
        write_private(part, data, sync=True)
        os.replace(part, path)
        platform.sync_dir(path.parent)  # the rename itself survives a power cut
    except BaseException:
        if part.parent.is_dir():
            part.unlink(missing_ok=True)
        raise


def private_sqlite_file(path: Path | str) -> Path:
    """Make sure the database file exists and is 0600 before SQLite opens it.

    SQLite would create it 0644 (its default, set with fchmod, so the umask does
    not even narrow it) and its WAL and shared-memory files after it. An empty
    file is a valid new database to SQLite."""
    path = Path(path)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), FILE_MODE)
    try:
        platform.fchmod(fd, FILE_MODE)
    finally:
        os.close(fd)
    return path


def tighten_store(data_dir: Path | str, db_name: str) -> None:
    """Bring a store made before files were private (0644 database, WAL and shared
    memory, 0755 directory) to 0700/0600. Called on every open, so an old store is
    tightened the first time a new version touches it."""
    data_dir = Path(data_dir)
    tighten(data_dir, DIR_MODE)
    for suffix in SQLITE_SUFFIXES:
        tighten(data_dir / (db_name + suffix), FILE_MODE)


def tighten(path: Path, mode: int) -> None:
    """chmod `path` to `mode` if it is looser (or otherwise different).

    A path that is missing, not ours, or on a read-only filesystem is left as it
    is: a node that may read a store but not own it (a backup on a DVD, a store
    opened by root for a look) must still open it."""
    try:
        if stat.S_IMODE(os.stat(path).st_mode) != mode:
            platform.chmod(path, mode)
    except FileNotFoundError:
        pass
    except OSError as e:
        if e.errno not in (errno.EPERM, errno.EACCES, errno.EROFS):
            raise
