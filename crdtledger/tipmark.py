"""How far this node's own log has gone, kept beside its store (DATA/ledger.tip): what
tells a store file put back by hand.

`crdtledger restore` marks the copy it puts in place, so the node catches up with
itself before it sells (crdtledger.backups, Replica.peer_caught_up). A copy put back
without it (yesterday's SQLite file from a USB stick copied over the store) carried
no mark: the node sold again, at positions of its log its peers already held, money
it had already served. Every branch then saw two histories of it and blocked it for
good, and until they did the same money was spent twice.

The store cannot tell that it is old; a small file beside it can. A peer takes this
node's records only as far as a head of its log the node signed, and a head is signed
once, as it first leaves (Replica.own_head: a session, a sync file). Just before that
the head's position and hash are written here, if further than the mark (one write
into the page cache, no fsync; readers that export write it too). A store opened
behind the mark, or holding another record at its position, is treated as restored
(Storage._put_back_by_hand; kept in the store by the lock's holder, said by readers):
it refuses to write until a peer shows it caught up, as after `crdtledger restore`.
Once it has, the mark is set to where its log then ends (Replica._end_restore):
lower, when what the lost store sent reached no branch. Sales written after the copy
that never left the PC are lost with it as with any restore; they cannot clash with
what the node writes next.

Not caught: the mark copied back with the store (a whole data directory restored
from a folder backup or a disk image), or deleted; nor a mark lowered by a reader
that exported while the node signed a further head (each writes only above what it
last read). Those end as before, in a fork every branch reports.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from crdtledger.private import FILE_MODE

TIP_FILE = "ledger.tip"
_SEQ_WIDTH = 20  # one length for a node's every mark


_OPEN = 0
for _flag in ("O_CLOEXEC", "O_NOFOLLOW", "O_NONBLOCK", "O_BINARY"):  # never wait on it
    _OPEN |= getattr(os, _flag, 0)


def read(data_dir: Path) -> tuple[str, int, bytes] | None:
    """(node, seq, hash) as last noted; None if there is no mark, or not a readable one
    (a damaged mark proves nothing either way)."""
    try:
        fd = os.open(Path(data_dir) / TIP_FILE, os.O_RDONLY | _OPEN)
        try:
            text = os.read(fd, 256).decode("ascii")
        finally:
            os.close(fd)
        seq, hash_hex, node = text.split()
        return node, int(seq), bytes.fromhex(hash_hex)
    except (OSError, UnicodeError, ValueError):
        return None


def forget(data_dir: Path) -> None:
    """A new store in `data_dir`: a mark left by an earlier one there is not its own."""
    (Path(data_dir) / TIP_FILE).unlink(missing_ok=True)


def _write_at_start(fd: int, data: bytes) -> None:
    if hasattr(os, "pwrite"):  # one system call
        os.pwrite(fd, data, 0)
    else:  # Windows
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, data)


class TipMark:
    """The mark of one store, as this process last read or wrote it."""

    def __init__(self, data_dir: Path, node: str) -> None:
        self.data_dir = Path(data_dir)
        self.node = node
        self._fd: int | None = None
        self._seq: int | None = None  # the mark's position, once read here

    def note(self, seq: int, hash_: bytes) -> None:
        """A head of the node's own log at `seq` is about to leave: the mark goes up to
        it, never down."""
        if self._seq is None:
            mark = read(self.data_dir)
            self._seq = mark[1] if mark is not None and mark[0] == self.node else -1
        if seq > self._seq:
            self.reset(seq, hash_)

    def reset(self, seq: int, hash_: bytes) -> None:
        """The mark is `seq` and `hash_`, whatever it was. A mark that cannot be
        written (a full disk, a read-only copy) is tried again at the next head: it is
        a tripwire, and the node keeps syncing without it."""
        line = f"{seq:0{_SEQ_WIDTH}d} {hash_.hex()} {self.node}\n".encode("ascii")
        try:
            if self._fd is None:
                self._fd = os.open(self.data_dir / TIP_FILE, os.O_WRONLY | os.O_CREAT | _OPEN,
                                   FILE_MODE)
                _write_at_start(self._fd, line)
                # Cut once, after the first write, not when opening: a mark of a longer
                # node id left in a reused directory would otherwise hang on after ours,
                # unreadable. Ours are all one length (and a truncate at every head, even
                # to the same size, cost 4 µs more than the write).
                os.ftruncate(self._fd, len(line))
            else:
                _write_at_start(self._fd, line)
        except OSError:
            self.close()
            self._seq = -1  # written at the next head, whatever it was
            return
        self._seq = seq

    def close(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None
