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
import re
import secrets
import stat
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO, TextIO

import portalocker

from crdtledger import platform
from crdtledger.errors import InvalidInput, StoreError

FILE_MODE = 0o600
DIR_MODE = 0o700

# What SQLite may leave next to a database file.
SQLITE_SUFFIXES = ("", "-wal", "-shm", "-journal")

# Directories held open and files made and renamed relative to them (openat,
# renameat) with O_NOFOLLOW: POSIX. Where the system has none (Windows, whose links
# need an administrator to make), the paths are used as they are.
_AT = {os.open, os.mkdir, os.rename, os.unlink, os.stat, os.link} <= os.supports_dir_fd
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
NEW_NAME_TRIES = 8  # `replacing`: random names, so a second is taken only if planted
# `link` refused by the filesystem, not by what is at the name: FAT and exFAT (most
# USB sticks, a backup's usual target) have no hard links.
_NO_LINKS = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS}


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


def replace_private(path: Path | str, data: bytes, *, overwrite: bool = True) -> None:
    """Write `data` to `path` whole or not at all (see `replacing`), so that a reader
    never sees half a file under the real name (a sync file, a backup). Only a
    regular file is replaced: `--out /dev/stdout` (a link) or a device put a file of
    every member's data in its place, and as root broke /dev/null for the machine.
    `overwrite` False: nothing at `path` is replaced, whatever appears there meanwhile."""
    path = Path(path)
    with contextlib.suppress(FileNotFoundError):
        if not stat.S_ISREG(path.lstat().st_mode):
            raise InvalidInput(f"{path} is not a regular file (a link, a device or a "
                               "directory): give the path of a new file")
    with replacing(path, overwrite=overwrite) as f:
        f.write(data)


@contextlib.contextmanager
def replacing(path: Path | str, *, under: Path | str | None = None,
              overwrite: bool = True) -> Iterator[BinaryIO]:
    """A new file (0600, open for writing and reading back) that becomes `path` when
    the block ends, renamed over it, synced; removed if the block raises.

    The checks before it (no link at `path`, none under an export's directory) were
    by path, and the write by path after them: a link planted in between, at the
    name written (`OUT.part`, opened with O_TRUNC) or as a directory on the way, sent
    every member's data over a file the node's user may write, or into a directory
    elsewhere. So the file is made under a fresh name with O_EXCL|O_NOFOLLOW, in the
    directory held open from `under` (default: `path`'s own, which is the user's
    choice) down through each directory between, each entered with O_NOFOLLOW (made
    0700 if missing), and renamed within it: a rename replaces a link at `path`, never
    follows it. Refused with a sentence when a directory on the way is a link.

    `overwrite` False (a backup, which never replaces anything): the file is linked
    to `path` instead, which fails when anything is there, however late it came (a
    check before a rename replaced a second backup made meanwhile). The new file is
    locked while it lives, so the `.part` files of `path`'s name that no one holds (an
    export killed part-way) are removed before (`_sweep_parts`)."""
    path = Path(path)
    top = Path(under) if under is not None else path.parent
    with _held_dir(top, path.parent.relative_to(top).parts) as dir_fd:
        at = {} if dir_fd is None else {"dir_fd": dir_fd}
        _sweep_parts(path, dir_fd)
        for attempt in range(NEW_NAME_TRIES):
            # A name taken (one planted, or one a sweep is removing): another, never
            # through it.
            tmp = f"{path.name}.{secrets.token_hex(4)}.part"
            where = path.parent / tmp if dir_fd is None else tmp
            try:
                fd = os.open(where, os.O_RDWR | os.O_CREAT | os.O_EXCL | _NOFOLLOW
                             | _CLOEXEC, FILE_MODE, **at)
            except FileExistsError:
                pass
            else:
                # Locked at once, so a sweep removes it only if this process is gone. A
                # sweep that took it in the moment between is removing it: another name.
                if _try_lock(fd) is not False and os.fstat(fd).st_nlink > 0:
                    break
                os.close(fd)
            if attempt == NEW_NAME_TRIES - 1:
                raise InvalidInput(f"cannot make a new file in {path.parent}: every "
                                   "name tried was taken meanwhile") from None
        try:
            with os.fdopen(fd, "w+b") as f:
                platform.fchmod(f.fileno(), FILE_MODE)  # whatever the umask
                yield f
                f.flush()
                os.fsync(f.fileno())
                if not platform.WINDOWS:  # named while still locked, so never swept
                    _publish(where, path, dir_fd, overwrite)
            if platform.WINDOWS:  # which renames no file held open
                _publish(where, path, dir_fd, overwrite)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(where, **at)
            raise


def _publish(where: Path | str, path: Path, dir_fd: int | None, overwrite: bool) -> None:
    """Give the new file `where` (relative to `dir_fd` when held) the name `path`, and
    make that survive a power cut."""
    at = {} if dir_fd is None else {"src_dir_fd": dir_fd, "dst_dir_fd": dir_fd}
    name = path if dir_fd is None else path.name
    if overwrite:
        os.replace(where, name, **at)
    elif dir_fd is None and platform.WINDOWS:
        _taken(path, os.rename, where, name)  # Windows' rename never replaces a file
    else:
        try:
            _taken(path, os.link, where, name, follow_symlinks=False, **at)
        except OSError as e:
            if e.errno not in _NO_LINKS:
                raise
            # No hard links there (a FAT stick): looked at just before the rename,
            # which is as near as such a filesystem lets one come.
            try:
                os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            except FileNotFoundError:
                os.replace(where, name, **at)
            else:
                raise _taken_error(path) from None
        else:
            os.unlink(where, dir_fd=dir_fd)
    if dir_fd is None:
        platform.sync_dir(path.parent)
    else:
        os.fsync(dir_fd)


def _taken(path: Path, call: Any, *args: Any, **kwargs: Any) -> None:
    try:
        call(*args, **kwargs)
    except FileExistsError:
        raise _taken_error(path) from None


def _taken_error(path: Path) -> StoreError:
    return StoreError(f"{path} appeared while this was being written, and is left as it "
                      "is: nothing was written; choose an empty directory")


def _try_lock(fd: int) -> bool | None:
    """The lock of a `.part` file (platform.try_lock): True taken, False held by
    another, None where the filesystem takes no locks (its files are then never
    swept: nothing can tell a dead writer's from a running one's)."""
    try:
        return platform.try_lock(fd)
    except (OSError, portalocker.LockException):
        return None


def _sweep_parts(path: Path, dir_fd: int | None) -> None:
    """Remove the `.part` files of `path`'s name in its directory that no one holds.

    An export killed part-way (SIGKILL, the power, a full disk's OOM) left its file
    under a random name nothing came back to, each a whole copy of the members' data:
    a nightly export by cron that crashed filled the disk. Every writer holds the lock
    of its `.part` file until it is named (`replacing`), and the system lets go of a
    dead process's lock however it died, so a file whose lock is free is a dead
    writer's; a lock rather than an age, which would take a slow export's file from
    under it (a minute's backup onto a slow stick, a process suspended), or a pid in
    the name, which another machine sharing the directory cannot ask about. Only
    regular files of this user named exactly `NAME.<8 hex>.part`, opened with
    O_NOFOLLOW (a link named so is left, and nothing is reached through it)."""
    pattern = re.compile(re.escape(path.name) + r"\.[0-9a-f]{8}\.part")
    try:
        with os.scandir(path.parent if dir_fd is None else dir_fd) as listing:
            names = [e.name for e in listing if pattern.fullmatch(e.name)
                     and e.is_file(follow_symlinks=False)]
    except OSError:
        return
    at = {} if dir_fd is None else {"dir_fd": dir_fd}
    for name in names:
        where = path.parent / name if dir_fd is None else name
        try:
            # O_NONBLOCK: a FIFO named so does not hang the export (it is then left).
            fd = os.open(where, os.O_RDONLY | _NOFOLLOW | _NONBLOCK | _CLOEXEC, **at)
        except OSError:
            continue
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or (hasattr(os, "geteuid")
                                                and st.st_uid != os.geteuid()):
                continue
            if _try_lock(fd) is not True:
                continue  # a running export's (or one no lock can tell)
            # Still the file locked under that name (nothing swapped in since it was
            # opened): only then is the name removed.
            now = os.stat(where, follow_symlinks=False, **at)
            if (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino):
                os.unlink(where, **at)
        except OSError:
            continue
        finally:
            os.close(fd)


def unlink_under(top: Path | str, rel: Path | str) -> None:
    """Remove `top/rel` if it is there, reaching it through no symbolic link below
    `top` (a month's directory swapped for a link removed a file elsewhere)."""
    top, rel = Path(top), Path(rel)
    if not _AT:
        (top / rel).unlink(missing_ok=True)
        return
    with contextlib.suppress(FileNotFoundError), \
            _held_dir(top, rel.parent.parts, make=False) as dir_fd:
        os.unlink(rel.name, dir_fd=dir_fd)


@contextlib.contextmanager
def _held_dir(top: Path, parts: Sequence[str], *, make: bool = True
              ) -> Iterator[int | None]:
    """A descriptor of `top/parts...`, each of `parts` entered with O_NOFOLLOW and,
    with `make`, made 0700 if missing; None where the system cannot hold directories
    (the path is then made as `private_dir` makes it)."""
    if not _AT:
        if make:
            private_dir(top.joinpath(*parts))
        yield None
        return
    fd = os.open(top, os.O_RDONLY | _DIRECTORY | _CLOEXEC)
    try:
        for n, part in enumerate(parts):
            if make:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, DIR_MODE, dir_fd=fd)
            try:
                sub = os.open(part, os.O_RDONLY | _DIRECTORY | _NOFOLLOW | _CLOEXEC,
                              dir_fd=fd)
            except OSError as e:
                if e.errno not in (errno.ELOOP, errno.ENOTDIR):
                    raise
                raise InvalidInput(
                    f"{top.joinpath(*parts[:n + 1])} is a symbolic link or a file, not a "
                    "directory: nothing is written or removed through it; remove it and "
                    "try again") from None
            os.close(fd)
            fd = sub
            if make:
                _tighten_fd(fd, DIR_MODE)
        yield fd
    finally:
        os.close(fd)


def _tighten_fd(fd: int, mode: int) -> None:
    """`tighten` for a directory held open."""
    try:
        if stat.S_IMODE(os.fstat(fd).st_mode) != mode:
            platform.fchmod(fd, mode)
    except OSError as e:
        if e.errno not in (errno.EPERM, errno.EACCES, errno.EROFS):
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
