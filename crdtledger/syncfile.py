"""Sync files: the offline way between branches (USB stick, e-mail).

A file carries the log records (crdtledger.log) the receiving node lacks, or all of
them, with the signed heads that cover them and their signers' certificates, plus
the sender's view of the logs so the receiver can later export just what the sender
lacks. It is checked exactly as records from a session are, and taken all or
nothing: one record that cannot be verified or breaks a write rule refuses the whole
file. Importing a file twice, or one whose content arrived meanwhile over the
network, changes nothing.

The file is sealed (crdtledger.seal): signed by the writing node and encrypted with
the chain's secret, behind a clear first line with the format, so a lost stick
shows neither members' phones nor the PIN hashes to brute-force, and a file from a
store that is not enrolled in the chain, altered, truncated or from a newer version
is refused with a sentence before anything is applied. (A store without a chain CA
has no secret: its files are signed but readable, see crdtledger.trust.)
"""

from __future__ import annotations

import stat
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgpack

from crdtledger import __version__
from crdtledger.backups import RESTORE_DAMAGED
from crdtledger.errors import (
    CorruptSyncFile,
    ForeignChain,
    InvalidInput,
    RemoteProtocolError,
    StoreError,
)
from crdtledger.log import MARK_DOCS, MAX_BATCH_RECORDS, Batch, altered_logs
from crdtledger.private import replace_private
from crdtledger.seal import read_head, read_sealed, seal, unseal
from crdtledger.sync import TooManyContainers, parse_logs, unpackb_bounded, wire_logs

if TYPE_CHECKING:
    from crdtledger.ledger import Ledger

KIND = "sync"
# A sync file is sealed (signed and encrypted) whole, and read, opened and parsed
# whole in memory: about 340 MB per million ledger entries, so a file of everything
# stops near 6M entries (and 4M records, MAX_BATCH_RECORDS). Streamed sections would
# each need their own seal and a reader that applies section by section; a chain
# that large needs period closing first (benchmarks/README.md, chain), so the limit
# is said instead, when the file is written and when it is read.
MAX_FILE_BYTES = 2 * 1024**3
# Told each step of a long export or import (the command line shows it: peer/progress.py).
Progress = Callable[[str], None]


def _silent(_text: str) -> None:
    pass


_LIMIT = (f"a sync file holds at most {MAX_FILE_BYTES >> 20} MiB and {MAX_BATCH_RECORDS:,} "
          "records (about 6M ledger entries)")


def export_file(ledger: Ledger, path: Path | str, for_node: str | None = None, *,
                operator: str | None = None, progress: Progress = _silent) -> dict[str, Any]:
    """Write what `for_node` lacks (as last seen in a file or session from it), or
    everything when no node is named or nothing is known of it.

    A sync file carries every member's data, so it needs the `sync` permission;
    `operator` None is the node's owner at its own console."""
    ledger.authorise(operator or ledger.owner, "sync")
    # The file replaces an older sync file at `path` only (`_may_replace`), and never
    # the node's own store or keys.
    home, target = ledger.storage.dir.resolve(), Path(path).resolve()
    if home == target or home in target.parents:
        raise InvalidInput(f"{path} is inside this node's data directory {ledger.storage.dir}: "
                           "write the sync file elsewhere (it would replace the node's own files)")
    _may_replace(ledger, Path(path))
    known = ledger.storage.peer_states(for_node) if for_node else None
    theirs: dict[str, Any] = {n: int(s) for n, s in (known or {}).items()}
    # Only applied records travel by file: a file is taken whole or refused, and one
    # carrying a blocked node's refused record would be refused everywhere.
    progress("gathering the records " + (f"{for_node} lacks" if known is not None else
                                         "of every branch"))
    records = ledger.lacking(theirs, applied_only=True)
    progress(f"{len(records):,} records to write; signing and encrypting them")
    if len(records) > MAX_BATCH_RECORDS:
        raise InvalidInput(f"{len(records):,} records to write: {_LIMIT}; write it "
                           "for a node that holds part of it already (--for NODE)")
    # A record held here changed since (the store edited by hand): every branch would
    # refuse the file whole, blaming the way. Said here, naming the log, instead.
    since: dict[str, int] = {}
    for rec in records:
        since[rec.node] = min(since.get(rec.node, rec.seq), rec.seq)
    altered = altered_logs(ledger.storage.conn, {n: s - 1 for n, s in since.items()})
    if altered:
        node, seq = min(altered.items())
        raise StoreError(f"no file written: record {seq} of {node}'s log held here was "
                         "changed after it was written (this store was edited by hand, or "
                         "is damaged; not on the way): every branch would refuse the file "
                         f"whole. {RESTORE_DAMAGED}")
    batch = ledger.batch(records)
    body = msgpack.packb({"chain": ledger.chain, "node": ledger.node,
                          "created": ledger.clock.wall(),
                          "logs": wire_logs(ledger.log_view()), **batch.to_wire()},
                         use_bin_type=True)
    sealed = seal(ledger.trust, KIND, body, ledger.clock.wall())
    if len(sealed) > MAX_FILE_BYTES:
        raise InvalidInput(f"the file would be {len(sealed):,} bytes: {_LIMIT}; write it "
                           "for a node that holds part of it already (--for NODE)")
    path = Path(path)
    progress(f"writing {len(sealed):,} bytes to {path}")
    try:
        replace_private(path, sealed)
    except OSError as e:
        raise InvalidInput(f"cannot write {path}: {e.strerror}") from None
    return {"file": str(path), "records": len(records),
            "documents": len({r.doc for r in records} - MARK_DOCS),
            "bytes": path.stat().st_size,
            "for": for_node, "incremental": known is not None}


def _may_replace(ledger: Ledger, path: Path) -> None:
    """Refuse to put the sync file over anything but an older sync file of this chain.

    `--out chainA/ca.key` or `--out bk/ledger.backup` replaced the chain CA's key or a
    backup with a sync file, exit 0. Re-exporting to the same name (the demo, a stick's
    `hq.sync` each evening) is the one replacement that loses nothing, so the file
    there must read as one: its clear header, as the import reads it first, naming
    this chain. An empty file (mktemp's) holds nothing to lose. Links, devices and
    directories are refused by `replace_private`."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    except OSError as e:
        raise InvalidInput(f"cannot write {path}: {e.strerror}") from None
    if not stat.S_ISREG(st.st_mode) or st.st_size == 0:
        return
    try:
        chain = read_head(path, KIND, MAX_FILE_BYTES, what=str(path)).get("chain")
    except (CorruptSyncFile, OSError):
        chain = None
    if chain != ledger.trust.chain:
        raise InvalidInput(f"{path} exists and is not a sync file of this chain: the export "
                           "would replace it; give the path of a new file, or move that "
                           "file away first")


def read_file(ledger: Ledger, path: Path | str, progress: Progress = _silent
              ) -> dict[str, Any]:
    """Open, verify the seal of, and parse a sync file without applying anything."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise CorruptSyncFile(f"{path} is {size:,} bytes, larger than any sync file "
                                  f"({_LIMIT})")
        progress(f"reading {path} ({size:,} bytes)")
        # Its header's chain and signer are judged before its content is read: a
        # stranger's file declaring gigabytes is refused from its first kilobytes.
        raw = read_sealed(path, KIND, MAX_FILE_BYTES, trust=ledger.trust, what=str(path))
    except OSError as e:
        raise CorruptSyncFile(f"cannot read {path}: {e.strerror}") from None
    progress("checking its signature and decrypting it")
    sealed = unseal(ledger.trust, raw, KIND, what=str(path))
    del raw  # the file's bytes; the payload is what is parsed now
    try:
        data = unpackb_bounded(sealed.payload)
        file_chain, node = data["chain"], data["node"]
    except TooManyContainers:
        raise CorruptSyncFile(f"{path} holds more maps and lists than any sync file of its "
                              "size: it was not written by crdtledger") from None
    except Exception:
        raise CorruptSyncFile(f"{path} has a damaged body") from None
    if file_chain != ledger.chain:
        raise ForeignChain(f"{path} comes from chain {file_chain!r}, this node is in "
                           f"{ledger.chain!r}")
    if node != sealed.node:
        raise CorruptSyncFile(f"{path} is sealed by {sealed.node} but says it is from {node}")
    try:
        logs = parse_logs(data.get("logs"))
        batch = Batch.from_wire(data)
    except RemoteProtocolError as e:
        # The seal is intact, so the sender wrote this: a record this release cannot
        # read is most likely a newer release's (0.3.0 added month-end cuts, which
        # 0.2.0 called damaged), and the cure is that release, not another file.
        raise CorruptSyncFile(
            f"{path} holds what this release ({__version__}) cannot read ({e}): it was "
            f"made by a newer crdtledger at {sealed.node}, or damaged there; upgrade this "
            "branch to the release the sender runs, then import it again") from None
    return {"node": node, "logs": logs, "batch": batch, "created": data.get("created")}


def import_file(ledger: Ledger, path: Path | str, *, operator: str | None = None,
                progress: Progress = _silent) -> dict[str, Any]:
    """Apply a sync file all or nothing; returns what it brought. (The records of a
    branch whose certificate the chain revoked are the one exception: dropped, and
    named in `revoked` (only then present), while the rest is taken.)"""
    ledger.authorise(operator or ledger.owner, "sync")
    data = read_file(ledger, path, progress)
    progress(f"verifying and applying {len(data['batch'].recs):,} records from "
             f"{data['node']} (all or nothing)")
    try:
        plan = ledger.verify_batch(data["batch"], strict=True)
        new = ledger.apply_verified(plan, origin="file", strict=True) or []
    except RemoteProtocolError as e:
        raise CorruptSyncFile(f"{path} was refused whole: {e}") from None
    logs = data["logs"]
    restored = ledger.restored
    if data["node"] != ledger.node:
        ledger.remember_peer(str(data["node"]), {n: s for n, (s, _) in logs.items()})
        # Only another branch's file can show a restored node caught up with itself:
        # this node's own file tells what it held once (before its backup, or after
        # it and before more), never what another branch holds of its log. Its
        # records are taken all the same.
        made = data.get("created")
        ledger.peer_caught_up(logs, str(data["node"]),
                              as_of=made if isinstance(made, int) else 0)
    # A file made `--for` this node assumes what the sender last saw of it. If this
    # node lacks records before those in the file, they wait: say which logs.
    held = ledger.positions()
    # (Not a revoked branch's log: its records were dropped, not missing.)
    incomplete = sorted(n for n, (s, _) in logs.items()
                        if held.get(n, 0) < s and n not in plan.revoked)
    # What was applied, not what was kept: a branch blocked for a proven fault has its
    # later records kept (the evidence) and none taken, and "1 document changed" read
    # as taken.
    out: dict[str, Any] = {"file": str(path), "from": data["node"], "records": len(new),
                           "documents": len({r.doc for r in data["batch"].recs} - MARK_DOCS),
                           "changed": sorted(set(plan.touched) - MARK_DOCS),
                           "incomplete": incomplete}
    if plan.revoked:
        out["revoked"] = sorted(plan.revoked)
    blocked = ledger.storage.log.blocked()
    kept = sorted({r.node for r in new if r.node in blocked})
    if kept:
        out["blocked"] = kept
    if restored is not None:
        # A restored node: whether this file ended its wait, or why not (what the till
        # says); None once it may sell.
        out["not_selling"] = None if ledger.restored is None else (
            "this node's own file cannot show it caught up with itself: connect to "
            "another branch that has heard from it since the backup before selling"
            if data["node"] == ledger.node else ledger.storage.meta.get("restore_wait"))
    return out
