"""Everything that differs between operating systems, in one place.

The rest of the code calls these and never `fcntl`, `msvcrt`, `os.fchmod` or
`loop.add_signal_handler` itself, so a port to another system is a change here.

* Locks: the store's directory lock (crdtledger.storage, crdtledger.backups,
  peer.local) through `portalocker`, which takes `fcntl.flock` on Linux and macOS
  (the very lock releases before 0.2.0 took with fcntl themselves, so an old and a
  new process still keep out of each other's store) and `msvcrt.locking` or
  `LockFileEx` on Windows. It locks a descriptor we opened, without truncating or
  deleting the file, so the lock file keeps holding the pid of whoever holds it.
  (`filelock`, the other candidate, opens its file with O_TRUNC before it tries the
  lock, which would wipe the holder's pid from a waiting process, and manages the
  file's life itself.)
* Permissions: POSIX modes (0600 files, 0700 directories, crdtledger.private). On
  Windows a file's access comes from the ACL it inherits from the user's profile
  directory, where a data directory belongs; `os.chmod` there only sets read-only,
  so the mode calls do nothing.
* Durability: a rename is made durable by fsyncing its directory on POSIX; Windows
  opens no directory as a file (NTFS journals the rename itself).
* Memory: glibc keeps what a process freed for its next allocations rather than
  give it back; `give_back_memory` asks it to (`malloc_trim`), after a branch
  joined a chain and dropped the history it held. Elsewhere (musl, macOS,
  Windows) it does nothing.
* Stopping: SIGINT and SIGTERM end a node cleanly (systemd sends SIGTERM); Windows
  has no loop signal handlers, and Ctrl+C (or Ctrl+Break) arrives as
  KeyboardInterrupt, which `asyncio.run` turns into the same clean stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import sys
from collections.abc import Callable
from datetime import UTC, datetime, tzinfo

import portalocker

WINDOWS = sys.platform == "win32"

_EXCLUSIVE = portalocker.LockFlags.EXCLUSIVE | portalocker.LockFlags.NON_BLOCKING


def try_lock(fd: int) -> bool:
    """Take the exclusive lock on the open file `fd` without waiting: True if taken,
    False if another process (or another descriptor) holds it. The lock lasts until
    `unlock` or until `fd` is closed (or the process dies, however it dies)."""
    try:
        portalocker.lock(fd, _EXCLUSIVE)
    except portalocker.AlreadyLocked:
        return False
    return True


def unlock(fd: int) -> None:
    portalocker.unlock(fd)


def held_elsewhere(fd: int) -> bool:
    """Whether someone else holds the lock of the file open as `fd` (tried and given
    back at once when free)."""
    if not try_lock(fd):
        return True
    unlock(fd)
    return False


def write_pid(fd: int) -> None:
    """Record this process as the lock's holder, for the message another one shows."""
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, str(os.getpid()).encode())


def read_pid(fd: int) -> str:
    """The holder's pid as `write_pid` left it ('' if unreadable: on Windows a locked
    region cannot be read by another process)."""
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        return os.read(fd, 32).decode(errors="replace").strip()
    except OSError:
        return ""


def fchmod(fd: int, mode: int) -> None:
    """`os.fchmod` where modes mean something (see the module's note on Windows)."""
    if not WINDOWS:
        os.fchmod(fd, mode)


def chmod(path: str | os.PathLike[str], mode: int) -> None:
    if not WINDOWS:
        os.chmod(path, mode)


def sync_dir(path: str | os.PathLike[str]) -> None:
    """Make a rename or a new file in directory `path` survive a power cut. POSIX
    needs the directory itself fsynced; Windows cannot open a directory as a file,
    and NTFS journals its metadata, so there it does nothing."""
    if WINDOWS:
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def physical_memory() -> int | None:
    """This machine's memory in bytes; None where it cannot be read (Windows)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def raise_open_files_limit() -> int | None:
    """The process's soft limit of open files, raised to its hard limit (POSIX; None
    elsewhere): each peer, till and member page holds a descriptor, and at the usual
    soft limit (1,024) a stranger holding about a thousand idle connections to a public
    port (the sync port's TLS handshake waits 60 s; the member pages' server waits for
    a first request without a timer) left none for the tills. The limit now."""
    try:
        import resource
    except ImportError:  # Windows: no such limit per process
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 1 << 20 if hard == resource.RLIM_INFINITY else hard
    if want > soft:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def give_back_memory() -> None:
    """Return the heap's free pages to the system. After a long catch-up the node
    frees its copy of the answer and the documents it closed, and glibc would keep
    the pages for later: a branch that joined a chain of 1M entries stayed at 1.3 GB
    resident for as long as it ran."""
    if not sys.platform.startswith("linux"):
        return
    try:
        trim = ctypes.CDLL(None).malloc_trim  # glibc's; musl has none
    except (OSError, AttributeError):
        return
    trim(0)


def on_stop(loop: asyncio.AbstractEventLoop, stop: Callable[[], None]) -> None:
    """Call `stop` on the loop when the process is asked to end (SIGINT, SIGTERM)."""
    if WINDOWS:
        return  # KeyboardInterrupt instead (see the module's note)
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop)


# The journal's priorities (sd-daemon(3)): a line starting <3> is an error, and so on.
_PRIORITY = {logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4, logging.INFO: 6,
             logging.DEBUG: 7}


# What would end a log line or steer a terminal, shown escaped: text a peer chose (a
# liar's node id with line breaks in it) made lines of its own in the journal, read
# by the owner as the node's ("clock: ... run sudo date -s @0").
_UNSEEN = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7f, *range(0x80, 0xa0)) if c != 0x09}
_UNSEEN |= {0x2028: "\\u2028", 0x2029: "\\u2029"}


class _OneLine(logging.Formatter):
    """A message is one line whatever it quotes; a traceback keeps its lines. Times in
    the chain's zone once a node has told it (`log_zone`), with their UTC offset: a
    shop PC set to UTC wrote its logs eight hours off the receipts and pages."""

    zone: tzinfo | None = None  # this machine's until log_zone

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        when = datetime.fromtimestamp(record.created, self.zone or UTC)
        if self.zone is None:
            when = when.astimezone()
        return f"{when:%Y-%m-%d %H:%M:%S},{int(record.msecs):03d}{when:%z}"

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = record.message.translate(_UNSEEN)
        return super().formatMessage(record)


def log_zone(zone: tzinfo) -> None:
    """Write log times in `zone` (the chain's: crdtledger.localtime.zone) from now on."""
    _OneLine.zone = zone


def log_now() -> datetime:
    """Now as the log writes it: in the zone `log_zone` set, else this machine's."""
    zone = _OneLine.zone
    return datetime.now(zone) if zone is not None else datetime.now().astimezone()


class _JournalPrefix(_OneLine):
    def format(self, record: logging.LogRecord) -> str:
        priority = _PRIORITY.get(record.levelno, 6)
        # One entry per line: a multi-line message (a traceback) keeps its priority.
        return "\n".join(f"<{priority}>{line}" for line in super().format(record).splitlines())


def setup_logging(level: int = logging.INFO) -> None:
    """Logs an owner can read. Under systemd (which sets $JOURNAL_STREAM when the
    output goes to the journal) each line carries its level as the journal's priority
    and no time (the journal stamps it): `journalctl -u crdtledger-SH01 -p warning`
    shows only what needs a look. Elsewhere (a terminal, a file) the time and the
    level's name lead each line."""
    handler = logging.StreamHandler()
    if os.environ.get("JOURNAL_STREAM"):
        handler.setFormatter(_JournalPrefix("%(name)s: %(message)s"))
    else:
        handler.setFormatter(_OneLine("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


# --- accounts (the systemd unit's user: peer.service, Linux only) ---------------------


def owner_of(path: str | os.PathLike[str]) -> tuple[str, int]:
    """The name and uid of who owns `path` (the name is the uid where it has none)."""
    import pwd

    uid = os.stat(path).st_uid
    try:
        return pwd.getpwuid(uid).pw_name, uid
    except KeyError:
        return str(uid), uid


def account(user: str) -> tuple[int, int, str]:
    """uid, primary gid and that group's name of `user` (KeyError: no such user)."""
    import grp
    import pwd

    entry = pwd.getpwnam(user)
    try:
        group = grp.getgrgid(entry.pw_gid).gr_name
    except KeyError:
        group = str(entry.pw_gid)
    return entry.pw_uid, entry.pw_gid, group


def closed_to(path: str | os.PathLike[str], user: str) -> str | None:
    """The first directory on the way to `path` (its real path, links followed) that
    `user` may not enter, or `path` itself if it is a file that user may not run or
    read; None if the user reaches it. By the mode bits: owner, group, others."""
    import stat

    uid, gid, _ = account(user)
    groups = set(os.getgrouplist(user, gid))
    real = os.path.realpath(path)
    steps = [real]
    while (up := os.path.dirname(steps[-1])) != steps[-1]:
        steps.append(up)
    for step in reversed(steps):
        st = os.stat(step)
        need = (stat.S_IXUSR, stat.S_IXGRP, stat.S_IXOTH) if stat.S_ISDIR(st.st_mode) \
            else (stat.S_IRUSR, stat.S_IRGRP, stat.S_IROTH)
        bit = need[0] if st.st_uid == uid else need[1] if st.st_gid in groups else need[2]
        if uid != 0 and not st.st_mode & bit:
            return step
    return None


def chown_tree(path: str | os.PathLike[str], uid: int, gid: int) -> None:
    """Hand a directory and everything in it to `uid`:`gid` (symlinks themselves)."""
    os.chown(path, uid, gid, follow_symlinks=False)
    for root, dirs, files in os.walk(path):
        for name in (*dirs, *files):
            os.chown(os.path.join(root, name), uid, gid, follow_symlinks=False)
