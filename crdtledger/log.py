"""Signed per-node logs: what each node wrote, in order, provably.

Every local commit of a node is a record in its own append-only log: the node, a
sequence number, the document and the pycrdt update it produced, chained by the
SHA-256 of the record before it. The node signs the *head* of its log (sequence
number and hash) with its certified key (crdtledger.trust), not each record: a
signature costs about 40 µs to make and 50 µs to check here, a record's hash 0.4 µs.
A replica takes a node's records only when their chain, starting from what it holds
of that log, reaches a head signed by that node; relays and sync files forward the
records and heads unchanged, so file and network get one check.

Replicas keep every node's log whole (`records`), even after the documents'
update logs are compacted into snapshots: they are what a peer or a file gets, and
what proves who wrote what. A record is `applied` to the documents, `refused` (it
broke a write rule, crdtledger.writerules), `held` (its writer is blocked: it broke
a rule or forked its log before; nothing more of it is applied) or `waiting` (it
builds on another writer's records not here yet, as a record relayed ahead of them
does: applied as soon as they come).

Two kinds of record change no document; both serve period closing
(crdtledger.closing). A *cut* (document `cut`, data a month "2026-11", ASCII) is its
writer's word that its log up to that record holds all it will ever write into the
ledger of that month and of every month before. A *closing* (document `closing`,
data "2026-11:" and 64 hex digits) is its writer's signature of the digest of the
chain's history up to every branch's cut of that month. Every replica keeps the
ones it holds in `marks`, so the write rule that holds a writer to its cuts
(writerules, `closed-month`) is judged from the writer's own log, whatever order
records are applied in.

Wire form of a batch: ``{"recs": [[node, seq, doc, data], ...], "heads": {node: [seq,
hash, sig]}, "certs": {node: der}}``; the hashes are not sent, each replica computes
them (a record's prev is the hash of the record before it).
"""

from __future__ import annotations

import hashlib
import re
import sqlite3
from bisect import bisect_left
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import accumulate
from typing import Any

import msgpack

from crdtledger.errors import RemoteProtocolError
from crdtledger.hlc import NODE_ID
from crdtledger.model import DOC_NAME, MONTH
from crdtledger.redaction import carries_nothing

# The records that change no document (crdtledger.closing): a month-end cut, a
# closing's signature.
CUT_DOC, CLOSING_DOC = "cut", "closing"
MARK_DOCS = frozenset({CUT_DOC, CLOSING_DOC})
_RECORD_ROW = ("INSERT INTO records(node, seq, hash, doc, data, state) "
               "VALUES (?, ?, ?, ?, ?, ?)")
_CLOSING = re.compile(r"(?P<month>[^:]{7}):(?P<digest>[0-9a-f]{64})")

GENESIS = bytes(32)
# The tip a replica shows (log_view) for a log it caught forking: two replicas that
# both know stop sending each other that log's proof every round.
FORK_MARK = b"\xff" * 8
APPLIED, REFUSED, HELD, WAITING = 0, 1, 2, 3
# A batch may hold a year of a large chain's records (a catch-up, a sync file).
MAX_BATCH_RECORDS = 4_000_000
# Writers whose heads one batch may carry: every branch a chain ever had (a few
# hundred; an answer to a joining branch names them all in its last slice).
MAX_BATCH_WRITERS = 4096

SCHEMA = """
-- Every node's log, as far as this replica holds it; `pos` is the order this
-- replica learned the records in, which respects every dependency between them
-- (each was applied whole when it came): the order they are passed on in.
CREATE TABLE IF NOT EXISTS records(
    pos INTEGER PRIMARY KEY, node TEXT NOT NULL, seq INTEGER NOT NULL, hash BLOB NOT NULL,
    doc TEXT NOT NULL, data BLOB NOT NULL, state INTEGER NOT NULL DEFAULT 0);
CREATE UNIQUE INDEX IF NOT EXISTS records_seq ON records(node, seq);
-- Records that build on another writer's records not here yet (pycrdt would hold
-- them back): kept, applied as soon as what they build on comes.
CREATE INDEX IF NOT EXISTS records_waiting ON records(node, pos) WHERE state = 3;
-- The latest signed head of each other node's log (ours is signed when asked).
CREATE TABLE IF NOT EXISTS heads(
    node TEXT PRIMARY KEY, seq INTEGER NOT NULL, hash BLOB NOT NULL, sig BLOB NOT NULL,
    cert BLOB NOT NULL) WITHOUT ROWID;
-- What a node did wrong, as proven here: a record that broke a write rule, or two
-- signed records at one position of its log. A node with a fault is blocked.
CREATE TABLE IF NOT EXISTS faults(
    node TEXT NOT NULL, kind TEXT NOT NULL, seq INTEGER NOT NULL, rule TEXT NOT NULL,
    detail TEXT NOT NULL, at INTEGER NOT NULL, evidence BLOB,
    PRIMARY KEY(node, kind, seq)) WITHOUT ROWID;
-- The cuts and closings in every log held (whatever their records' state): the
-- months each writer closed and the closings it signed (`digest`, '' for a cut),
-- and where in its log.
CREATE TABLE IF NOT EXISTS marks(
    node TEXT NOT NULL, seq INTEGER NOT NULL, kind TEXT NOT NULL, month TEXT NOT NULL,
    digest TEXT NOT NULL, PRIMARY KEY(node, seq)) WITHOUT ROWID;
-- Stores without a chain CA: the first certificate seen for each node.
CREATE TABLE IF NOT EXISTS pins(node TEXT PRIMARY KEY, cert BLOB NOT NULL) WITHOUT ROWID;
"""


def record_hash(prev: bytes, node: str, seq: int, doc: str, data: bytes) -> bytes:
    h = hashlib.sha256(prev)
    h.update(f"\x00{node}\x00{seq}\x00{doc}\x00".encode())
    h.update(data)
    return h.digest()


def first_altered(conn: sqlite3.Connection, node: str, after: int = 0) -> int | None:
    """The first record of `node`'s log held on `conn` (past `after`) whose data no
    longer hashes to the hash kept beside it (from the one kept before it), or None.
    A store edited by hand (an amount changed inside a record) went on selling, and
    every peer refused its log from that record on as "altered on the way", for good,
    said only in the peers' logs. A record the node redacted after an erasure hashes
    otherwise (its signed redaction entry vouches for it: crdtledger.erasure) and
    carries nothing: such a member record is passed. Streams the log: one read of it."""
    prev = GENESIS
    if after > 0:
        row = conn.execute("SELECT hash FROM records WHERE node = ? AND seq = ?",
                           (node, after)).fetchone()
        if row is None:  # not held (a gap): walked from the start
            after = 0
        else:
            prev = bytes(row[0])
    for seq, hash_, doc, data in conn.execute(
            "SELECT seq, hash, doc, data FROM records WHERE node = ? AND seq > ? "
            "ORDER BY seq", (node, after)):
        kept = bytes(hash_)
        if (record_hash(prev, node, seq, doc, bytes(data)) != kept
                and not (doc.startswith("members/") and carries_nothing(bytes(data)))):
            return int(seq)
        prev = kept
    return None


def altered_logs(conn: sqlite3.Connection, after: Mapping[str, int] | None = None
                 ) -> dict[str, int]:
    """Every log held on `conn`, this branch's own and each other branch's, changed
    after it was written or taken (the store edited by hand, or damaged): node -> the
    first record whose data no longer hashes to the hash kept beside it, or the head
    its writer signed when the hashes kept no longer reach it (rewritten with the
    data). One byte of another branch's record flipped in `records` passed every check
    here, and each sync file this branch wrote was then refused whole at every other,
    "altered on the way". `after`: only these logs, past these positions (what a sync
    file carries); else all of them, whole: one read of `records`."""
    nodes = dict(after) if after is not None else {
        str(n): 0 for (n,) in conn.execute("SELECT DISTINCT node FROM records")}
    out: dict[str, int] = {}
    for node in sorted(nodes):
        seq = first_altered(conn, node, nodes[node])
        if seq is not None:
            out[node] = seq
    for node, seq, signed, kept in conn.execute(
            "SELECT h.node, h.seq, h.hash, r.hash FROM heads h "
            "JOIN records r ON r.node = h.node AND r.seq = h.seq"):
        if node in nodes and node not in out and bytes(kept) != bytes(signed):
            out[str(node)] = int(seq)
    return out


def mark_of(doc: str, data: bytes) -> tuple[str, str] | None:
    """(month, digest) a cut's or a closing's data says (digest '' for a cut); None
    if it says none."""
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        return None
    if doc == CUT_DOC:
        month, digest = text, ""
    else:
        found = _CLOSING.fullmatch(text)
        if found is None:
            return None
        month, digest = found["month"], found["digest"]
    return (month, digest) if MONTH.match(month) else None


def closing_data(month: str, digest: str) -> bytes:
    return f"{month}:{digest}".encode("ascii")


def head_message(chain: str, node: str, seq: int, hash_: bytes) -> bytes:
    """What a node signs for the head of its log: bound to the chain, so a head never
    counts in another chain."""
    return b"crdtledger head\x00" + f"{chain}\x00{node}\x00{seq}\x00".encode() + hash_


@dataclass(frozen=True, slots=True)  # a joining branch holds millions
class Record:
    node: str
    seq: int
    doc: str
    data: bytes


@dataclass(frozen=True)
class Head:
    seq: int
    hash: bytes
    sig: bytes


@dataclass
class Batch:
    """Records in the sender's order, the signed heads that cover them, and the
    certificates of their signers (those the receiver may not know yet)."""

    recs: list[Record] = field(default_factory=list)
    heads: dict[str, Head] = field(default_factory=dict)
    certs: dict[str, bytes] = field(default_factory=dict)
    # Heads of the other side of a fork the sender proved (a node's signed head that
    # contradicts the sender's own copy of its log): so that a replica holding the
    # same side as the sender learns of the fork too.
    proofs: dict[str, Head] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.recs or self.heads or self.proofs)

    def to_wire(self) -> dict[str, Any]:
        out = {"recs": [[r.node, r.seq, r.doc, r.data] for r in self.recs],
               "heads": {n: [h.seq, h.hash, h.sig] for n, h in self.heads.items()},
               "certs": dict(self.certs)}
        if self.proofs:
            out["proofs"] = {n: [h.seq, h.hash, h.sig] for n, h in self.proofs.items()}
        return out

    @classmethod
    def from_wire(cls, msg: Mapping[str, Any]) -> Batch:
        """Parse and check the shape of a batch (RemoteProtocolError if malformed)."""
        recs, heads, certs = msg.get("recs"), msg.get("heads"), msg.get("certs", {})
        proofs = msg.get("proofs", {})
        if not isinstance(recs, list) or not isinstance(heads, dict) or not isinstance(
                certs, dict) or not isinstance(proofs, dict) or len(recs) > MAX_BATCH_RECORDS:
            raise RemoteProtocolError("records: malformed batch")
        # One head, proof and certificate per writer at most, and a chain has a few
        # hundred: 400,000 made-up heads in one frame (1 MB deflated) held the node's
        # loop for seconds, each looked up and refused alone.
        if max(len(heads), len(proofs), len(certs)) > MAX_BATCH_WRITERS:
            raise RemoteProtocolError(f"records: heads of over {MAX_BATCH_WRITERS} writers")
        batch = cls()
        # One string per name: a joining branch holds a million records of a few
        # hundred writers and a few dozen documents until they are verified. Each
        # name is checked once, when first seen (a plain str: msgpack's).
        nodes: dict[str, str] = {}
        docs: dict[str, str] = {}
        append = batch.recs.append
        for item in recs:
            if type(item) is list and len(item) == 4:
                node, seq, doc, data = item
                if (type(node) is str and (node in nodes or NODE_ID.match(node))
                        and type(seq) is int and 0 < seq < 2**62
                        and type(doc) is str and (doc in docs or DOC_NAME.match(doc)
                                                  or doc in MARK_DOCS)
                        and type(data) is bytes):
                    append(Record(nodes.setdefault(node, node), seq,
                                  docs.setdefault(doc, doc), data))
                    continue
            # Anything else (subclasses included): checked as ever.
            if (not isinstance(item, list) or len(item) != 4 or not isinstance(item[0], str)
                    or not NODE_ID.match(item[0]) or isinstance(item[1], bool)
                    or not isinstance(item[1], int) or not 0 < item[1] < 2**62
                    or not isinstance(item[2], str)
                    or not (DOC_NAME.match(item[2]) or item[2] in MARK_DOCS)
                    or not isinstance(item[3], bytes)):
                raise RemoteProtocolError(f"records: malformed record {str(item)[:60]}")
            append(Record(nodes.setdefault(item[0], item[0]), item[1],
                          docs.setdefault(item[2], item[2]), item[3]))
        for kind, given in (("heads", heads), ("proofs", proofs)):
            for node, head in given.items():
                if (not isinstance(node, str) or not NODE_ID.match(node)
                        or not isinstance(head, list) or len(head) != 3
                        or isinstance(head[0], bool) or not isinstance(head[0], int)
                        or not 0 < head[0] < 2**62 or not isinstance(head[1], bytes)
                        or len(head[1]) != 32 or not isinstance(head[2], bytes)
                        or len(head[2]) > 256):
                    raise RemoteProtocolError(f"records: malformed head of {str(node)[:20]}")
                getattr(batch, kind)[node] = Head(head[0], head[1], head[2])
        for node, der in certs.items():
            if not isinstance(node, str) or not NODE_ID.match(node) or not isinstance(
                    der, bytes) or len(der) > 16384:
                raise RemoteProtocolError("records: malformed certificate")
            batch.certs[node] = der
        return batch


@dataclass
class _Marks:
    """The `marks` table by writer, in each log's order: cuts (seq, month), closings
    (seq, month, digest), and for the cuts their positions with the latest month
    closed at each (for a bisection)."""

    cuts: dict[str, list[tuple[int, str]]] = field(default_factory=dict)
    closings: dict[str, list[tuple[int, str, str]]] = field(default_factory=dict)
    tops: dict[str, tuple[list[int], list[str]]] = field(default_factory=dict)


class Log:
    """The `records`, `heads`, `faults` and `pins` tables of one store, with the
    tips of the logs cached (one SQLite connection, one thread)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self._tips: dict[str, tuple[int, bytes]] = {}
        self._positions: dict[str, int] | None = None
        self._blocked: set[str] | None = None
        self._waiting: set[str] | None = None
        # Each node's signed head as kept (None: none): read for every batch sent
        # and every log verified.
        self._heads: dict[str, tuple[Head, bytes] | None] = {}
        # The `marks` table as read (_read_marks); None: not read since it moved.
        self._marks: _Marks | None = None
        self._written = False  # in the open transaction
        # Moves whenever what log_view shows may have moved (a record appended, a
        # fault found, a rollback): the key of the views and digests kept of it.
        self.changes = 0

    def begin(self) -> None:
        """A transaction begins: nothing written in it yet."""
        self._written = False

    def reset(self) -> None:
        """A transaction rolled back: forget what is cached, if it wrote anything (a
        refused debit writes nothing here, and reading every log's position again
        walks the whole `records` index)."""
        if not self._written:
            return
        self.changes += 1
        self._tips.clear()
        self._positions = None
        self._blocked = None
        self._waiting = None
        self._heads.clear()
        self._marks = None

    # --- reading ------------------------------------------------------------

    def tip(self, node: str) -> tuple[int, bytes]:
        """(seq, hash) of the last record held of `node`'s log; (0, GENESIS) if none."""
        tip = self._tips.get(node)
        if tip is None:
            row = self.conn.execute(
                "SELECT seq, hash FROM records WHERE node = ? ORDER BY seq DESC LIMIT 1",
                (node,)).fetchone()
            tip = (row[0], bytes(row[1])) if row else (0, GENESIS)
            self._tips[node] = tip
        return tip

    def hash_at(self, node: str, seq: int) -> bytes | None:
        if seq == 0:
            return GENESIS
        tip = self._tips.get(node)
        if tip is not None and tip[0] == seq:  # mostly asked of the tip: where a batch continues
            return tip[1]
        row = self.conn.execute("SELECT hash FROM records WHERE node = ? AND seq = ?",
                                (node, seq)).fetchone()
        return bytes(row[0]) if row else None

    def positions(self) -> dict[str, int]:
        """How far this replica holds each node's log."""
        if self._positions is None:
            self._positions = {n: s for n, s in self.conn.execute(
                "SELECT node, MAX(seq) FROM records GROUP BY node")}
        return dict(self._positions)

    def head(self, node: str) -> tuple[Head, bytes] | None:
        if node in self._heads:
            return self._heads[node]
        row = self.conn.execute("SELECT seq, hash, sig, cert FROM heads WHERE node = ?",
                                (node,)).fetchone()
        kept = None if row is None else (Head(row[0], bytes(row[1]), bytes(row[2])),
                                         bytes(row[3]))
        self._heads[node] = kept
        return kept

    def _read_marks(self) -> _Marks:
        if self._marks is None:
            marks = _Marks()
            for node, seq, kind, month, digest in self.conn.execute(
                    "SELECT node, seq, kind, month, digest FROM marks ORDER BY node, seq"):
                if kind == CUT_DOC:
                    marks.cuts.setdefault(node, []).append((seq, month))
                else:
                    marks.closings.setdefault(node, []).append((seq, month, digest))
            for node, cuts in marks.cuts.items():
                marks.tops[node] = ([s for s, _m in cuts],
                                    list(accumulate((m for _s, m in cuts), max)))
            self._marks = marks
        return self._marks

    def cuts(self) -> dict[str, list[tuple[int, str]]]:
        """Each writer's month-end cuts held here: (seq, month), in its log's order."""
        return self._read_marks().cuts

    def closings(self) -> dict[str, list[tuple[int, str, str]]]:
        """Each writer's signed closings held here: (seq, month, digest), in order."""
        return self._read_marks().closings

    def closed_before(self, node: str, seq: int) -> str | None:
        """The latest month `node` closed in its log before position `seq` (asked of
        every ledger record received: a bisection)."""
        found = self._read_marks().tops.get(node)
        if found is None:
            return None
        i = bisect_left(found[0], seq)
        return found[1][i - 1] if i else None

    def records_after(self, after: Mapping[str, int], *, applied_only: bool = False
                      ) -> list[Record]:
        """Our records of each log in `after` past the position given for it, in our
        order (`applied_only`: not those refused or held)."""
        only = " AND state = 0" if applied_only else ""
        ours = self.positions()
        rows: list[tuple[int, str, int, str, bytes]] = []
        for node, have in after.items():
            if ours.get(node, 0) <= have:
                continue
            rows.extend(self.conn.execute(
                "SELECT pos, node, seq, doc, data FROM records WHERE node = ? AND seq > ?" + only,
                (node, have)))
        rows.sort()
        return [Record(n, s, d, bytes(b)) for _, n, s, d, b in rows]

    def state_of(self, node: str, seq: int) -> int | None:
        row = self.conn.execute("SELECT state FROM records WHERE node = ? AND seq = ?",
                                (node, seq)).fetchone()
        return None if row is None else int(row[0])

    def waiting_head(self, node: str) -> tuple[int, Record, bytes] | None:
        """`node`'s first record kept `waiting` (its others wait behind it), with its
        position among what came and its hash; None if none waits."""
        row = self.conn.execute(
            "SELECT pos, seq, doc, data, hash FROM records INDEXED BY records_waiting "
            "WHERE node = ? AND state = 3 ORDER BY pos LIMIT 1", (node,)).fetchone()
        if row is None:
            return None
        pos, seq, doc, data, hash_ = row
        return int(pos), Record(node, int(seq), doc, bytes(data)), bytes(hash_)

    def waiting_nodes(self) -> set[str]:
        """Writers with records kept waiting (asked at every batch: remembered)."""
        if self._waiting is None:
            self._waiting = {n for (n,) in self.conn.execute(
                "SELECT DISTINCT node FROM records INDEXED BY records_waiting "
                "WHERE state = 3")}
        return set(self._waiting)

    def set_state(self, node: str, seq: int, state: int) -> None:
        self._written = True
        self.conn.execute("UPDATE records SET state = ? WHERE node = ? AND seq = ?",
                          (state, node, seq))
        self._waiting = None

    def blocked(self) -> set[str]:
        """Nodes with a proven fault: nothing more of their logs is applied."""
        if self._blocked is None:
            self._blocked = {n for (n,) in self.conn.execute("SELECT DISTINCT node FROM faults")}
        return set(self._blocked)

    def fork_proofs(self) -> dict[str, tuple[Head, bytes]]:
        """For each node caught forking here: the signed head of the other side (and
        the certificate it was signed under), from the fault's evidence."""
        out: dict[str, tuple[Head, bytes]] = {}
        for node, evidence in self.conn.execute(
                "SELECT node, evidence FROM faults WHERE kind = 'fork' AND evidence IS NOT NULL"):
            try:
                found = msgpack.unpackb(evidence)
                seq, hash_, sig = found["head"]
                out[node] = (Head(int(seq), bytes(hash_), bytes(sig)), bytes(found["cert"]))
            except (ValueError, KeyError, TypeError):
                continue
        return out

    def forked(self, node: str) -> bool:
        """Is `node` caught forking here already (a fork fault kept)?"""
        return self.conn.execute("SELECT 1 FROM faults WHERE node = ? AND kind = 'fork' "
                                 "LIMIT 1", (node,)).fetchone() is not None

    def is_blocked(self, node: str) -> bool:
        if self._blocked is None:
            self.blocked()
        return node in (self._blocked or ())

    def faults(self) -> list[dict[str, Any]]:
        return [{"node": n, "kind": k, "seq": s, "rule": r, "detail": d, "at": a}
                for n, k, s, r, d, a in self.conn.execute(
                    "SELECT node, kind, seq, rule, detail, at FROM faults ORDER BY at, node")]

    def pinned(self) -> dict[str, bytes]:
        return {n: bytes(c) for n, c in self.conn.execute("SELECT node, cert FROM pins")}

    # --- writing (inside the store's transaction) ----------------------------

    def append(self, rec: Record, hash_: bytes, state: int = APPLIED) -> None:
        self.extend([(rec, hash_, state)])

    def extend(self, items: Sequence[tuple[Record, bytes, int]]) -> None:
        """Append records (record, hash, state) in this order: one statement for a
        catch-up's run of them."""
        if not items:
            return
        self._written = True
        self.changes += 1
        if len(items) == 1:  # a local write's record: no list for executemany
            rec, hash_, state = items[0]
            self.conn.execute(_RECORD_ROW, (rec.node, rec.seq, hash_, rec.doc, rec.data, state))
        else:
            self.conn.executemany(_RECORD_ROW, [(rec.node, rec.seq, hash_, rec.doc, rec.data,
                                                 state) for rec, hash_, state in items])
        for rec, hash_, state in items:
            self._appended(rec, hash_, state)
        marks = [(rec.node, rec.seq, rec.doc, *said) for rec, _h, _s in items
                 if rec.doc in MARK_DOCS for said in (mark_of(rec.doc, rec.data),) if said]
        if marks:
            self.conn.executemany("INSERT OR IGNORE INTO marks VALUES (?, ?, ?, ?, ?)", marks)
            self._marks = None

    def _appended(self, rec: Record, hash_: bytes, state: int) -> None:
        # Records of different documents may be appended out of their log's order:
        # the tip moves only forward, and is read again when unknown.
        known = self._tips.get(rec.node)
        if known is not None and rec.seq == known[0] + 1:
            self._tips[rec.node] = (rec.seq, hash_)
        else:
            self._tips.pop(rec.node, None)
        if self._positions is not None:
            self._positions[rec.node] = max(rec.seq, self._positions.get(rec.node, 0))
        if state == WAITING and self._waiting is not None:
            self._waiting.add(rec.node)

    def keep_head(self, node: str, head: Head, cert: bytes) -> None:
        self._written = True
        self.conn.execute("INSERT OR REPLACE INTO heads VALUES (?, ?, ?, ?, ?)",
                          (node, head.seq, head.hash, head.sig, cert))
        self._heads[node] = (head, cert)

    def pin(self, node: str, cert: bytes) -> None:
        self._written = True
        self.conn.execute("INSERT OR IGNORE INTO pins VALUES (?, ?)", (node, cert))

    def add_fault(self, node: str, kind: str, seq: int, rule: str, detail: str, at: int,
                  evidence: bytes | None = None) -> bool:
        """Record a fault; False if this one was known already."""
        self._written = True
        cur = self.conn.execute("INSERT OR IGNORE INTO faults VALUES (?, ?, ?, ?, ?, ?, ?)",
                                (node, kind, seq, rule, detail, at, evidence))
        if self._blocked is not None:
            self._blocked.add(node)
        self.changes += 1
        return cur.rowcount > 0
