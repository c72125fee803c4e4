"""Sync files: the offline way between branches (USB stick, e-mail).

A file carries, per document, what the receiving node lacks (or everything), plus
the sender's state vectors so the receiver can later export just what the sender
lacks. Applying updates is idempotent, so importing a file twice, or a file whose
content arrived meanwhile over the network, changes nothing.

Layout::

    b"CRDTLEDGER-SYNC <format>\\n"   readable with `head -1`; the format is checked first
    32 bytes                         SHA-256 of the body
    body                             msgpack {chain, node, created, states, updates}

A truncated, corrupt, foreign-chain or newer-format file is refused whole before
anything is applied.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgpack

from crdtledger.errors import CorruptSyncFile, ForeignChain, InvalidInput, RemoteProtocolError
from crdtledger.hlc import NODE_ID
from crdtledger.lib0 import covers, decode_state_vector
from crdtledger.model import DOC_NAME
from crdtledger.private import private_file_open
from crdtledger.sync import MAX_DOCS, lacking

if TYPE_CHECKING:
    from crdtledger.ledger import Ledger

FORMAT = 1
MAGIC = b"CRDTLEDGER-SYNC "
# A sync file is read whole into memory; a year of a large chain fits well below.
MAX_FILE_BYTES = 2 * 1024**3


def export_file(ledger: Ledger, path: Path | str, for_node: str | None = None, *,
                operator: str | None = None) -> dict[str, Any]:
    """Write what `for_node` lacks (as last seen in a file or session from it), or
    everything when no node is named or nothing is known of it.

    A sync file carries every member's data, so it needs the `sync` permission;
    `operator` None is the node's owner at its own console."""
    ledger.authorise(operator or ledger.owner, "sync")
    known = ledger.storage.peer_states(for_node) if for_node else None
    theirs = known or {}
    updates = [[name, data] for name, data in lacking(ledger, theirs)]
    body = msgpack.packb(
        {"chain": ledger.chain, "node": ledger.node, "created": ledger.clock.wall(),
         "states": ledger.state_vectors(), "updates": updates},
        use_bin_type=True,
    )
    path = Path(path)
    # Written aside and renamed: a reader never sees half a file under the real name.
    tmp = path.with_name(path.name + ".part")
    try:
        # 0600 from its first byte: it carries every member's phone and PIN hash.
        with private_file_open(tmp) as f:
            f.write(MAGIC + str(FORMAT).encode() + b"\n")
            f.write(hashlib.sha256(body).digest())
            f.write(body)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        if tmp.parent.is_dir():
            tmp.unlink(missing_ok=True)
        raise InvalidInput(f"cannot write {path}: {e.strerror}") from None
    return {"file": str(path), "documents": len(updates), "bytes": path.stat().st_size,
            "for": for_node, "incremental": known is not None}


def read_file(path: Path | str, chain: str) -> dict[str, Any]:
    """Parse and check a sync file without applying anything."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise CorruptSyncFile(f"{path} is {size} bytes, larger than any sync file")
        raw = path.read_bytes()
    except OSError as e:
        raise CorruptSyncFile(f"cannot read {path}: {e.strerror}") from None
    head, sep, rest = raw.partition(b"\n")
    if not sep or not head.startswith(MAGIC):
        raise CorruptSyncFile(f"{path} is not a crdtledger sync file")
    try:
        fmt = int(head[len(MAGIC):])
    except ValueError:
        raise CorruptSyncFile(f"{path} has an unreadable format number") from None
    if fmt > FORMAT:
        raise CorruptSyncFile(
            f"{path} is sync format {fmt}, made by a newer crdtledger; "
            f"this one reads format {FORMAT}: upgrade to import it"
        )
    if fmt != FORMAT:
        raise CorruptSyncFile(f"{path} is sync format {fmt}, which this version does not read")
    digest, body = rest[:32], rest[32:]
    if len(digest) != 32 or hashlib.sha256(body).digest() != digest:
        raise CorruptSyncFile(f"{path} is damaged or incomplete (checksum mismatch)")
    try:
        data = msgpack.unpackb(body, raw=False, strict_map_key=True)
        file_chain, node = data["chain"], data["node"]
        states, updates = data["states"], data["updates"]
    except Exception:
        raise CorruptSyncFile(f"{path} has a damaged body") from None
    if file_chain != chain:
        raise ForeignChain(f"{path} comes from chain {file_chain!r}, this node is in {chain!r}")
    if not isinstance(states, dict) or not isinstance(updates, list) or len(updates) > MAX_DOCS:
        raise CorruptSyncFile(f"{path} has a damaged body")
    try:
        if not isinstance(node, str) or not NODE_ID.match(node):
            raise RemoteProtocolError(f"sender node {str(node)[:40]!r}")
        for name, sv in states.items():
            if not isinstance(name, str) or not DOC_NAME.match(name):
                raise RemoteProtocolError(name)
            decode_state_vector(sv)
        for item in updates:
            if (not isinstance(item, list) or len(item) != 2 or not isinstance(item[0], str)
                    or not DOC_NAME.match(item[0]) or not isinstance(item[1], bytes)):
                raise RemoteProtocolError(str(item)[:40])
    except RemoteProtocolError as e:
        raise CorruptSyncFile(f"{path} has a damaged body ({e})") from None
    return {"node": node, "states": states, "updates": [(n, u) for n, u in updates],
            "created": data.get("created")}


def import_file(ledger: Ledger, path: Path | str, *, operator: str | None = None
                ) -> dict[str, Any]:
    """Apply a sync file all or nothing; returns which documents gained something."""
    ledger.authorise(operator or ledger.owner, "sync")
    data = read_file(path, ledger.chain)
    try:
        new = ledger.apply_remote(data["updates"], origin="file")
    except RemoteProtocolError as e:
        raise CorruptSyncFile(f"{path}: {e}") from None
    states = {str(k): bytes(v) for k, v in data["states"].items()}
    if data["node"] != ledger.node:
        ledger.remember_peer(str(data["node"]), states)
    # An export made `--for` this node assumes what the sender last saw of it. If this
    # node lacks some of that (restored from a backup, say), updates that build on the
    # missing part wait, and the sender's state is not reached: say so, by document.
    ours = ledger.state_vectors()
    incomplete = sorted(
        name for name, _ in data["updates"]
        if not covers(decode_state_vector(ours.get(name, b"\x00")),
                      decode_state_vector(states.get(name, b"\x00")))
    )
    return {"file": str(path), "from": data["node"], "documents": len(data["updates"]),
            "changed": [n for n, _ in new], "incomplete": incomplete}
