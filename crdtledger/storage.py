"""One SQLite database per node: the log of pycrdt updates, snapshots, projections.

The replicated truth is the pycrdt documents; SQLite keeps them durable (an append-
only log of updates, compacted into snapshots) and keeps the projections every read
uses (rights, entries, members, cards...). A change to a document and the projection
of that change commit in one SQLite transaction, so after a crash at any instant the
store reopens with both or neither.

Documents are loaded lazily and evicted freely: reads never go through pycrdt (reading
a large Doc back is slow, see DESIGN.md), so a node with years of history opens
without loading any of it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from datetime import time as dt_time
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import orjson
from pycrdt import Array, Doc, Map

from crdtledger import hlc, model, platform, tipmark, walpair
from crdtledger.backups import local_time, no_store, put_back_marks, restore_pending
from crdtledger.errors import InvalidInput, LocalProtocolError, StoreError, StoreLocked
from crdtledger.lib0 import decode_state_vector
from crdtledger.localtime import MACHINE_ZONES
from crdtledger.log import SCHEMA as LOG_SCHEMA
from crdtledger.log import Log, record_hash
from crdtledger.log import Record as LogRecord
from crdtledger.model import DOC_NAME, canonical_phone
from crdtledger.private import FILE_MODE, private_dir, private_sqlite_file, tighten, tighten_store
from crdtledger.writerules import client_id_for

log = logging.getLogger("crdtledger.storage")

# 2: the update log is a rowid table (see _upgrade); 3: signed logs (crdtledger.log);
# 4: month-end marks and the points lots kept as a table, which 0.2.0 (format 3) does
# not know: it refuses a store of 4 rather than write sales without their lots.
FORMAT_VERSION = 4
DB_FILE = "ledger.sqlite3"
LOCK_FILE = "lock"
# A new store's page size (SQLite's default is 4096; an existing store keeps its own).
# A durable commit writes every page it changed to the WAL whole, and a debit changes
# about ten (entries, rights, totals, the update log, the signed log, their indexes):
# 2 KB pages halve the bytes each debit writes and waits for (-8% a durable debit;
# 1 KB slowed a catch-up): docs/design-notes.md, "Durable debit", Page size.
PAGE_SIZE = 2048
# Compact a document's log into a snapshot once this many updates pile up: loading
# then replays at most this many small updates (about 20 µs each).
COMPACT_AFTER = 2000
# How many documents stay in memory; the current month, a few member shards.
DOC_CACHE = 48
# ... and how much of them, counted as the bytes of the updates they were built from:
# pycrdt holds about 10x that (3 KB an entry of 260 bytes). A branch joining a chain
# of 1M entries loaded every month of it and kept them all, 3 GB; the least recently
# used go first once past this, but never one changed and not yet logged (its change
# would be lost) nor one of the DOC_CACHE_KEPT most recently used (the
# month a till sells on and the document just asked for: at a few hundred branches a
# month is past this on its own, and reloading it for every sale would cost seconds).
DOC_CACHE_BYTES = 32 * 1024 * 1024
DOC_CACHE_KEPT = 2
LOCK_WAIT_S = 10.0
# How far ahead of the clock the persisted ceiling is set (see Storage.keep_clock).
CLOCK_LEASE_MS = 2000

LOG_TABLE = ("CREATE TABLE IF NOT EXISTS log("
             "seq INTEGER PRIMARY KEY, doc TEXT NOT NULL, sv BLOB, data BLOB NOT NULL)")
LOG_INDEX = "CREATE INDEX IF NOT EXISTS log_doc ON log(doc, seq)"
_LOG_ROW = "INSERT INTO log(doc, seq, data, sv) VALUES (?, ?, ?, ?)"

# The kinds an operator's daily limit counts (index `entries_limited`). A query that
# reads the index states this condition as it is written here: SQLite uses a partial
# index only for a query whose WHERE contains the index's condition.
LIMITED = ("correction", "package", "stock")
LIMITED_KINDS = f"kind IN ({', '.join(repr(k) for k in LIMITED)})"

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
-- A rowid table with an index by document (a document loads by one range read).
-- Not WITHOUT ROWID: there a row is its own key, so interior b-tree pages carry
-- whole rows, and a catch-up's megabyte update made every delete near it (a
-- compaction) copy it around: 0.5 s stalls. `seq` comes from a counter kept above
-- every seq and snapshot_seq ever written, and is the rowid.
-- `sv`: the document's state vector after this row's update(s), on the last row of
-- a commit; stored before `data` so reading it never walks a blob's overflow pages.
-- The current state vector is that of the newest row, else docs.sv (as of the
-- snapshot): so a commit writes no `docs` row.
{LOG_TABLE};
{LOG_INDEX};
CREATE TABLE IF NOT EXISTS docs(
    name TEXT PRIMARY KEY, sv BLOB NOT NULL, snapshot_seq INTEGER NOT NULL DEFAULT 0
    ) WITHOUT ROWID;
-- Snapshots live apart from `docs`, whose row every commit rewrites: SQLite rewrites
-- (and first reads) a whole row on UPDATE, overflow pages included, so a snapshot
-- kept there made each commit cost in proportion to its document's size.
CREATE TABLE IF NOT EXISTS snapshots(name TEXT PRIMARY KEY, data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS peers(node TEXT PRIMARY KEY, states BLOB NOT NULL, seen_at INTEGER);
CREATE TABLE IF NOT EXISTS entries(
    id TEXT PRIMARY KEY, kind TEXT NOT NULL, member TEXT NOT NULL, node TEXT NOT NULL,
    op TEXT NOT NULL, at INTEGER NOT NULL, day TEXT NOT NULL, amount INTEGER NOT NULL,
    paid INTEGER NOT NULL DEFAULT 0, ref TEXT, service TEXT, body TEXT NOT NULL
    ) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS entries_member ON entries(member, id);
CREATE INDEX IF NOT EXISTS entries_ref ON entries(ref) WHERE ref IS NOT NULL;
CREATE TABLE IF NOT EXISTS rights(
    member TEXT NOT NULL, purse TEXT NOT NULL, node TEXT NOT NULL, amount INTEGER NOT NULL,
    PRIMARY KEY(member, purse, node)) WITHOUT ROWID;
-- Always empty while the escrow invariant holds: lets audit.negative_rights check it
-- in O(1) after every step of a simulation, for the cost of testing one condition
-- when a rights row is written.
CREATE INDEX IF NOT EXISTS rights_negative ON rights(member, purse, node) WHERE amount < 0;
-- Goods' units by branch (crdtledger.goods keeps stock as escrow rights of the items'
-- stock ids): the stock list read every rights row of every member for its few (about
-- 12M rows at 3M members, the back office's 库存 page on the node's loop).
CREATE INDEX IF NOT EXISTS rights_goods ON rights(member, node)
    WHERE purse IN ('stock', 'transit');
CREATE TABLE IF NOT EXISTS totals(
    member TEXT PRIMARY KEY, spent INTEGER NOT NULL DEFAULT 0,
    topped INTEGER NOT NULL DEFAULT 0) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS members(
    id TEXT PRIMARY KEY, name TEXT NOT NULL, phone TEXT NOT NULL, home TEXT NOT NULL,
    created_at INTEGER NOT NULL, day TEXT NOT NULL, body TEXT NOT NULL,
    phone_canonical TEXT NOT NULL DEFAULT '');
-- (Its index by phone_canonical, the form lookups ask for: MEMBERS_PHONE_CANONICAL,
-- made once the column is there.)
CREATE INDEX IF NOT EXISTS members_phone ON members(phone);
CREATE INDEX IF NOT EXISTS members_name ON members(name);
CREATE INDEX IF NOT EXISTS members_day ON members(day);
-- Erased members (crdtledger.erasure), few: which documents to compact again.
CREATE INDEX IF NOT EXISTS members_erased ON members(id)
    WHERE json_extract(body, '$.erased') IS NOT NULL;
-- Members merged into another (crdtledger.merge): who was folded into whom is asked on
-- every debit (a survivor's group), so it is an index, holding merged members only.
CREATE INDEX IF NOT EXISTS members_merged ON members(json_extract(body, '$.merged_into'))
    WHERE json_extract(body, '$.merged_into') IS NOT NULL;
-- The same members by id: is this one merged (views._merged_into, projection.IN_MERGE)
-- is asked on every operation naming a member and every sale's points lot; a probe of
-- this (nearly always empty) index instead of the member's row and a parse of its body.
CREATE INDEX IF NOT EXISTS members_merged_id ON members(id)
    WHERE json_extract(body, '$.merged_into') IS NOT NULL;
-- Check-ins by activity (crdtledger.membership): housekeeping reads each activity's
-- every day, and without it scanned every entry once per activity ever set.
CREATE INDEX IF NOT EXISTS entries_checkin ON entries(json_extract(body, '$.activity'), id)
    WHERE kind = 'checkin';
-- Exit and return applications by member (crdtledger.membership): whether a member has
-- left is asked on every debit, and read from the decisions on her applications, not
-- from her profile's flag (any branch may set or clear it); a probe of this (nearly
-- always empty for her) index spares reading the entries of a member who never applied.
CREATE INDEX IF NOT EXISTS entries_exit ON entries(member, id) WHERE kind = 'exit';
-- Referrals by the branch that recorded them (crdtledger.membership): housekeeping (every
-- ten minutes, and at each approval that arrives) reads this branch's referrals twice,
-- for rewards due and rewards to settle, and without it scanned every entry each time
-- (0.1-0.3 s at 100k entries on the 2-core VM, so a minute at 30M, on the node's loop).
CREATE INDEX IF NOT EXISTS entries_referral ON entries(node, id) WHERE kind = 'referral';
-- An operator's corrections, package sales and stock entries at this branch, by time:
-- each counts against its daily limit with those written since the day began without
-- an approver (crdtledger.payments `_unapproved_today`), and without it the count read
-- every entry of the chain's day (some 27,000 by evening at 300 branches). Kinds a
-- debit is not, so a debit pays only the test of the condition; the query repeats the
-- condition word for word, which is how SQLite knows the index holds its rows.
CREATE INDEX IF NOT EXISTS entries_limited ON entries(node, op, kind, id)
    WHERE {LIMITED_KINDS};
CREATE TABLE IF NOT EXISTS cards(
    id TEXT PRIMARY KEY, card_no TEXT NOT NULL, member TEXT NOT NULL,
    status TEXT NOT NULL, body TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS cards_no ON cards(card_no);
CREATE INDEX IF NOT EXISTS cards_member ON cards(member);
CREATE TABLE IF NOT EXISTS rules(
    id TEXT PRIMARY KEY, kind TEXT NOT NULL, effective_from TEXT NOT NULL, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS operators(
    id TEXT PRIMARY KEY, name TEXT NOT NULL, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS roles(name TEXT PRIMARY KEY, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS quarantine(
    doc TEXT NOT NULL, key TEXT NOT NULL, reason TEXT NOT NULL, PRIMARY KEY(doc, key));
-- The points each earning has left, with its expiry (crdtledger.lots): lots with
-- points left (or owed, negative) only, under the member their entry named. One
-- b-tree: a sale adds a row to it; the daily search for expired lots scans it.
CREATE TABLE IF NOT EXISTS points_lots(
    member TEXT NOT NULL, earned TEXT NOT NULL, expires TEXT NOT NULL,
    left INTEGER NOT NULL, PRIMARY KEY(member, earned)) WITHOUT ROWID;
-- The points owed (spent before what earned them came): rare, and asked of every
-- sale's lot (projection.EARN), which must not walk a member's every lot to know.
CREATE INDEX IF NOT EXISTS points_owed ON points_lots(member) WHERE left < 0;
-- What a transaction projected that moves points lots, settled before it commits
-- (crdtledger.lots.settle). Per connection, so never in the file.
CREATE TEMP TABLE IF NOT EXISTS points_touched(
    member TEXT NOT NULL, id TEXT, change INTEGER NOT NULL, kind TEXT NOT NULL,
    ref TEXT, expires TEXT, day TEXT);
-- Valid entries that arrived before the entries funding them (see projection.py), with
-- the position in its writer's log of the record that carried each (NULL: deferred by
-- a version that did not keep it; such come first, in id order).
CREATE TABLE IF NOT EXISTS deferred(
    doc TEXT NOT NULL, key TEXT NOT NULL, body TEXT NOT NULL, seq INTEGER,
    PRIMARY KEY(doc, key));
-- (Its index by queue: DEFERRED_QUEUE, made once `seq` is there.)
-- Branches that handed their members' rights over (Payments.hand_over_rights): shops
-- closing for good, to which the rebalancer moves nothing back. Noted as their
-- transfers are projected, so any replica knows without a scan of the entries.
CREATE TABLE IF NOT EXISTS handed_over(node TEXT PRIMARY KEY) WITHOUT ROWID;
CREATE TRIGGER IF NOT EXISTS handed_over_seen AFTER INSERT ON entries
WHEN NEW.kind = 'transfer' AND json_extract(NEW.body, '$.reason') = 'handover' BEGIN
    INSERT OR IGNORE INTO handed_over VALUES (NEW.node);
END;
-- The branch each shop first handed over to (its first hand-over record in its log,
-- `seq` its position there; NULL: its own, written here, or noted from the entries by
-- a build before this table): that branch, and it alone, refunds the shop's sales
-- (write rule refund-own, projection._backed). Noted as records are applied
-- (replica._apply_run), before their transfers are funded, and kept at the lowest
-- position: once a shop's hand-over is held, all of its log before it is, so every
-- replica names the same branch, whatever a lying shop handed over later.
CREATE TABLE IF NOT EXISTS handover_to(
    node TEXT PRIMARY KEY, "to" TEXT NOT NULL, seq INTEGER) WITHOUT ROWID;
CREATE TRIGGER IF NOT EXISTS handover_to_own AFTER INSERT ON entries
WHEN NEW.kind = 'transfer' AND json_extract(NEW.body, '$.reason') = 'handover'
    AND typeof(json_extract(NEW.body, '$.to')) = 'text' BEGIN
    INSERT OR IGNORE INTO handover_to VALUES (NEW.node, json_extract(NEW.body, '$.to'), NULL);
END;
-- Members whose rights may have moved since the waiting entries were last judged
-- (projection.project_deferred): of every entry projected or taken back, the member a
-- sweep's "out" moves value to (its "in" waits for that out), and of every entry
-- deferred or taken out of `deferred`. Noted for entries only while something waits;
-- per connection, so never in the file.
CREATE TEMP TABLE IF NOT EXISTS funding_moved(member TEXT PRIMARY KEY);
CREATE TEMP TRIGGER IF NOT EXISTS funding_moved_in AFTER INSERT ON main.entries
WHEN EXISTS (SELECT 1 FROM main.deferred) BEGIN
    INSERT OR IGNORE INTO funding_moved VALUES (NEW.member);
    INSERT OR IGNORE INTO funding_moved SELECT json_extract(NEW.body, '$.to')
        WHERE NEW.kind = 'merge' AND json_extract(NEW.body, '$.to') IS NOT NULL;
    -- A refund waits for its debit (projection._backed), and may be of the member a
    -- merge made the debit's survivor: another queue than the debit's.
    INSERT OR IGNORE INTO funding_moved SELECT json_extract(body, '$.member')
        FROM main.deferred WHERE NEW.kind = 'debit'
        AND json_extract(body, '$.kind') = 'refund' AND json_extract(body, '$.ref') = NEW.id;
END;
CREATE TEMP TRIGGER IF NOT EXISTS funding_moved_out AFTER DELETE ON main.entries
WHEN EXISTS (SELECT 1 FROM main.deferred) BEGIN
    INSERT OR IGNORE INTO funding_moved VALUES (OLD.member);
END;
CREATE TEMP TRIGGER IF NOT EXISTS funding_moved_deferred AFTER INSERT ON main.deferred
BEGIN
    INSERT OR IGNORE INTO funding_moved VALUES (json_extract(NEW.body, '$.member'));
END;
-- (A queue's head taken out another way than by its funding: a misbehaving peer's
-- rewrite of a waiting entry. The unit behind it is judged again.)
CREATE TEMP TRIGGER IF NOT EXISTS funding_moved_undeferred AFTER DELETE ON main.deferred
BEGIN
    INSERT OR IGNORE INTO funding_moved VALUES (json_extract(OLD.body, '$.member'));
END;
-- A receiving branch's refunds of a closed shop's sales wait for its hand-over
-- (projection._backed): judged again once it is noted. Any hand-over noted wakes
-- them all, not only those of the branch it names: at the end of a chain of them
-- (SH02 -> SH01 -> SH03) the last link to arrive may be the first (SH02's).
CREATE TEMP TRIGGER IF NOT EXISTS funding_moved_handover AFTER INSERT ON main.handover_to
WHEN EXISTS (SELECT 1 FROM main.deferred) BEGIN
    INSERT OR IGNORE INTO funding_moved SELECT json_extract(body, '$.member')
        FROM main.deferred WHERE json_extract(body, '$.kind') = 'refund'
        AND json_extract(body, '$.handover') IS NOT NULL;
END;
CREATE TEMP TRIGGER IF NOT EXISTS funding_moved_handover_moved AFTER UPDATE ON main.handover_to
WHEN EXISTS (SELECT 1 FROM main.deferred) BEGIN
    INSERT OR IGNORE INTO funding_moved SELECT json_extract(body, '$.member')
        FROM main.deferred WHERE json_extract(body, '$.kind') = 'refund'
        AND json_extract(body, '$.handover') IS NOT NULL;
END;
"""

# Root types of each kind of document.
ROOTS = {"ledger": ("entries",), "members": ("members", "cards"), "rules": ("rules",),
         "operators": ("operators", "roles")}


def roots_of(name: str) -> tuple[str, ...]:
    return ROOTS[name.split("/", 1)[0]]


@dataclass
class Change:
    """What one transaction on a document changed, as seen by its root observers."""

    added: list[tuple[str, str, Any, Any]] = field(default_factory=list)  # root, key, old, new
    touched: set[tuple[str, str]] = field(default_factory=set)  # root, key of nested edits
    # Cards whose own keys (number, member, PIN, events...) were set or removed, in the
    # order seen: write rule card-fixed judges each record by the ones it added.
    card_keys_set: list[str] = field(default_factory=list)
    unsure: set[str] = field(default_factory=set)  # roots whose changed keys Yrs cannot tell
    # Changes other than records set or removed (edits inside one, keys Yrs could not
    # tell), counted: what one update among several changed is the difference
    # before and after it (replica._apply_run judges each record by it).
    other: int = 0


class LoadedDoc:
    def __init__(self, name: str, client_id: int) -> None:
        self.name = name
        self.doc: Doc[Any] = Doc(client_id=client_id)
        self.roots: dict[str, Map[Any]] = {r: self.doc.get(r, type=Map) for r in roots_of(name)}
        self.updates: list[bytes] = []
        self._change: Change | None = None  # set while watching()
        self.tail = 0  # updates in the log since the snapshot
        self.size = 0  # bytes of the updates it was built from (Storage's cache budget)
        self.known = False  # has a row in `docs`
        # Changed in memory since the last commit: what a rollback must drop (and
        # only that: reloading an untouched month costs a swipe ~100 ms).
        self.dirty = False
        # Changed in memory and not yet logged (Storage.record): the one state in
        # which closing it would lose a change. Once logged, a reload in the same
        # transaction reads the change back from SQLite.
        self.unlogged = False
        self._observing = False
        self._capturing: Any = None  # the subscription capturing updates, if on

    def start_observing(self) -> None:
        """Capture the update of every transaction from now on (what gets logged)."""
        if self._observing:
            return
        self._observing = True
        self._capture(True)

    def _capture(self, on: bool) -> None:
        """Start or stop capturing each transaction's update. Stopped while remote
        records are applied (watching): they are logged as received, and Yrs encodes
        a transaction's update only for a subscriber (a seventh of applying one)."""
        if on and self._capturing is None:
            self._capturing = self.doc.observe(self._captured)
        elif not on and self._capturing is not None:
            self.doc.unobserve(self._capturing)
            self._capturing = None

    def plain_values(self, keys: list[tuple[str, str]]) -> dict[tuple[str, str], Any]:
        """The records at (root, key), as plain JSON values, in one read transaction;
        keys not there are left out. Read through Yrs' own JSON encoding: pycrdt's
        `to_py` walks a record in Python, 4-5x slower, and a catch-up reads every
        member and card. The two agree on everything a writer checks in (strings,
        numbers, lists, maps); they differ only on what no honest writer stores
        (bytes come back as lists of ints, NaN as null), the same on every replica."""
        out: dict[tuple[str, str], Any] = {}
        with self.doc.transaction() as t:
            txn = t._txn  # pycrdt's raw transaction: the raw Map wants it
            for root, key in keys:
                raw = self.roots[root].integrated
                try:
                    value = raw.get(txn, key)
                except ValueError:  # not there (removed)
                    continue
                to_json = getattr(value, "to_json", None)
                out[(root, key)] = json.loads(to_json(txn)) if to_json else value
        return out

    def _captured(self, event: Any) -> None:
        self.updates.append(event.update)
        self.changed()

    def changed(self) -> None:
        """About to change, or changed: dropped on a rollback, kept until logged."""
        self.dirty = self.unlogged = True

    @contextmanager
    def watching(self) -> Iterator[Change]:
        """Record which records remote updates change, while applying them.

        Only then: converting events costs more than the rest of a local debit, and a
        local write knows what it changed anyway. The events are Yrs' own (pycrdt's
        `integrated` types): pycrdt's wrappers walk every value of every event in
        Python to wrap shared types, which doubled the cost of a catch-up. So a value
        in `Change.added` is as Yrs gives it: plain values as they are, shared types
        as pycrdt's raw classes (read them from the document instead)."""
        self._change = change = Change()
        subs = [root.integrated.observe_deep(self._observer(name))
                for name, root in self.roots.items()]
        capturing = self._capturing is not None
        self._capture(False)
        try:
            yield change
        finally:
            for sub in subs:
                sub.drop()
            self._change = None
            self._capture(capturing)

    def close(self) -> None:
        """Drop the observer when the document leaves the cache. pycrdt keeps each
        callback (which refers back to the Doc) inside the Rust document: a cycle that
        Python's garbage collector cannot see, so an evicted document that kept its
        observers was never freed (a node leaked every document it ever evicted)."""
        self._capture(False)

    def _observer(self, root: str) -> Callable[[Any], None]:
        def on_events(events: Any) -> None:
            self._on_events(root, events)

        return on_events

    def _on_events(self, root: str, events: Any) -> None:
        change = self._change
        if change is None:
            return
        for ev in events:
            path = list(ev.path)
            if not path:
                try:
                    keys = ev.keys
                except BaseException as e:  # pyo3 panics are BaseExceptions
                    if isinstance(e, KeyboardInterrupt | SystemExit):
                        raise
                    # Yrs panics (event_keys unwraps a deleted item's content) when
                    # a key's newest item arrived already deleted, its overwriter
                    # still held back: an honest out-of-order rewrite. The caller
                    # reads the root's records from the document instead.
                    change.unsure.add(root)
                    change.other += 1
                    continue
                for key, info in keys.items():
                    change.added.append(
                        (root, key, info.get("oldValue"), info.get("newValue"))
                    )
            else:
                change.touched.add((root, str(path[0])))
                change.other += 1
                if root == "cards" and len(path) == 1:  # not an event added to one
                    change.card_keys_set.append(str(path[0]))

    def take_updates(self) -> list[bytes]:
        ups, self.updates = self.updates, []
        return ups


# The points lots' fold version, in meta `points_lots` (crdtledger.lots.FOLD). Here,
# as a new store starts at it and this module imports nothing of the lots.
POINTS_FOLD = "4"
# How rows of records are projected (crdtledger.projection.reproject), in meta
# `projection`: a store opened by a build that projects some other way projects its
# rows again (a card's status, a merge pointer that is not a member id; "2": the cash
# an exit paid back off the member's top-ups; "3": only the cash its deltas took;
# "4": a top-up and a correction by the cash they move).
PROJECTION = "4"


def _log_lone_store(conn: sqlite3.Connection, meta: dict[str, str]) -> None:
    """Format 2 -> 3: give a store made before signed logs its own log.

    A store that never synced holds only its own writes: each document becomes one
    record of its log, whole, which every replica can check like any other. A store
    that holds other nodes' writes cannot prove who wrote them (nothing was signed),
    so it is refused: its branch starts afresh from another branch's data."""
    node, client = meta["node"], int(meta["client_id"])
    own = client_id_for(node, 0)  # its writes are redone under its derived client id
    names = [n for (n,) in conn.execute("SELECT name FROM docs ORDER BY name")]
    docs: list[tuple[str, bytes, bytes]] = []
    for name in names:
        ld = LoadedDoc(name, client)
        row = conn.execute("SELECT (SELECT data FROM snapshots WHERE name = ?), snapshot_seq "
                           "FROM docs WHERE name = ?", (name, name)).fetchone()
        if row[0]:
            ld.doc.apply_update(row[0])
        for (data,) in conn.execute("SELECT data FROM log WHERE doc = ? AND seq > ? "
                                    "ORDER BY seq", (name, row[1])):
            ld.doc.apply_update(data)
        writers = {c for c, k in decode_state_vector(ld.doc.get_state()).items() if k}
        if writers - {client}:
            raise StoreError(
                f"{node}'s store was made by a crdtledger without signed logs and holds "
                "other branches' data, which cannot be proven to whoever wrote it: make "
                "this branch afresh (crdtledger init) and let it sync from the others")
        fresh = LoadedDoc(name, own)
        with fresh.doc.transaction():
            for root, values in ld.roots.items():
                for key, value in values.items():
                    fresh.roots[root][key] = _copy(value)
        docs.append((name, bytes(fresh.doc.get_update()), bytes(fresh.doc.get_state())))
        ld.close()
        fresh.close()
    log = Log(conn)
    conn.execute("BEGIN IMMEDIATE")
    try:
        for seq, (name, data, sv) in enumerate(docs, 1):
            prev = log.tip(node)[1]
            log.append(LogRecord(node, seq, name, data), record_hash(prev, node, seq, name, data))
            conn.execute("INSERT OR REPLACE INTO snapshots VALUES (?, ?)", (name, data))
            conn.execute("DELETE FROM log WHERE doc = ?", (name,))
            conn.execute("UPDATE docs SET sv = ? WHERE name = ?", (sv, name))
        conn.execute("UPDATE meta SET value = ? WHERE key = 'client_id'", (str(own),))
        meta["client_id"] = str(own)
        conn.execute("UPDATE meta SET value = ? WHERE key = 'format'", (str(FORMAT_VERSION),))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _copy(value: Any) -> Any:
    """A value read from one document, to be written into another."""
    if isinstance(value, Map):
        return Map({k: _copy(v) for k, v in value.items()})
    if isinstance(value, Array):
        return Array([_copy(v) for v in value])
    return value


def _lock_if_free(path: Path) -> int | None:
    """The data directory's lock taken, its descriptor (closing it gives it back), or
    None when another process holds it (a node runs on it) or it cannot be had (a
    directory this reader may not write)."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, FILE_MODE)
    except OSError:
        return None
    if platform.try_lock(fd):
        return fd
    os.close(fd)
    return None


# How long a peer's unchanged `state` is not written again (Storage.remember_peer).
PEER_SEEN_MS = 60_000


# Connections (by id) whose temp.points_touched may hold rows: noted by
# projection.touch_points / touch_group, cleared by lots.settle once it has read them,
# so a commit that noted none (a sale whose lot went in at once) reads nothing there.
# After a rollback a connection is counted in again: what it settled may be back.
POINTS_NOTED: set[int] = set()


def _connect(path: Path, synchronous: str, page_size: int | None = None) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    if page_size is not None:  # a new file only: WAL mode fixes the page size
        conn.execute(f"PRAGMA page_size={int(page_size)}")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={synchronous}")
    conn.execute("PRAGMA busy_timeout=10000")
    conn.execute("PRAGMA foreign_keys=OFF")
    # Deleted content is overwritten, not left in free pages: an erased member's old
    # values (crdtledger.erasure) must not stay readable in the file.
    conn.execute("PRAGMA secure_delete=ON")
    return conn


def refuse_newer_format(fmt: str | None, what: object) -> None:
    """Raise StoreError if `fmt` (meta `format`) is a store this program cannot read
    because a newer release made it: said before anything is changed, the schema
    included, so that release still opens it as it left it."""
    try:
        newer = fmt is not None and int(fmt) > FORMAT_VERSION
    except ValueError:
        newer = False
    if newer:
        raise StoreError(f"{what} is format {fmt}, made by a newer crdtledger: this program "
                         f"reads format {FORMAT_VERSION}; install that release (or newer) "
                         "to open it")


def _stored_format(conn: sqlite3.Connection) -> str | None:
    try:
        row = conn.execute("SELECT value FROM meta WHERE key = 'format'").fetchone()
    except sqlite3.DatabaseError:  # no meta table: not a store, refused further on
        return None
    return str(row[0]) if row else None


def _upgrade(conn: sqlite3.Connection) -> None:
    """Format 1 -> 2: move the update log out of its WITHOUT ROWID table. One
    transaction, so an interrupted upgrade leaves format 1 to try again."""
    def old() -> bool:
        row = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'log'").fetchone()
        return row is not None and "WITHOUT ROWID" in row[0].upper()

    if not old():
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        if old():  # another process may have upgraded while we waited for the lock
            conn.execute("ALTER TABLE log RENAME TO log_format1")
            conn.execute(LOG_TABLE)
            conn.execute(LOG_INDEX)
            conn.execute("INSERT INTO log(seq, doc, sv, data) "
                         "SELECT seq, doc, sv, data FROM log_format1")
            conn.execute("DROP TABLE log_format1")
            conn.execute("UPDATE meta SET value = '2' WHERE key = 'format' AND value = '1'")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


# `deferred` by queue (a member, then its writer, in its log's order): a batch asks
# whether its queues wait, and the end of an apply judges again only the heads of the
# queues whose funding may have moved, each an index read. Reading the whole table for
# every batch let a dishonest branch's unfunded entries, piling up there, slow every
# later batch at every branch (projection._waiting).
DEFERRED_QUEUE = ("CREATE INDEX IF NOT EXISTS deferred_queue ON deferred("
                  "json_extract(body, '$.member'), json_extract(body, '$.node'), seq)")
# The refunds waiting, by the debit they name: a debit projected looks its refunds up
# (storage's funding_moved_in), an index read, however many a liar's entries wait.
DEFERRED_REFUNDS = ("CREATE INDEX IF NOT EXISTS deferred_refund ON deferred("
                    "json_extract(body, '$.ref')) WHERE json_extract(body, '$.kind') = 'refund'")


MEMBERS_PHONE_CANONICAL = ("CREATE INDEX IF NOT EXISTS members_phone_canonical "
                           "ON members(phone_canonical)")
# And by its last four digits (views.find_members, a search by a phone's tail): the
# counter's search read every member for it, a whole phone typed too (2.9 ms per
# 10,000 members on the 2-core VM, about 0.9 s at 3M, each search). An expression of
# SQLite's own functions, so every program that writes the table keeps it.
MEMBERS_PHONE_TAIL = ("CREATE INDEX IF NOT EXISTS members_phone_tail "
                      "ON members(substr(phone_canonical, -4))")
# The indexes on columns a store from an older build gains when it is opened (`seq`,
# `phone_canonical`): made after those columns, by a new store and an opened one alike.
LATE_INDEXES = (DEFERRED_QUEUE, DEFERRED_REFUNDS, MEMBERS_PHONE_CANONICAL, MEMBERS_PHONE_TAIL)


def _has_column(conn: sqlite3.Connection, table: str, column: str) -> bool:
    return any(col[1] == column for col in conn.execute(f"PRAGMA table_info({table})"))


def _add_phone_canonical(conn: sqlite3.Connection) -> None:
    """A store made before members were looked up by their canonical phone gets the
    column, filled from each member's phone as typed, in one transaction: a member
    registered as "138-0013-8000" is then found by "13800138000" and "+86 138 0013
    8000" too. Done once (a read of the members' phones, 10,000 members in a few
    tens of ms)."""
    if _has_column(conn, "members", "phone_canonical"):
        return
    try:
        with conn:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("ALTER TABLE members ADD COLUMN phone_canonical TEXT NOT NULL "
                         "DEFAULT ''")
            conn.executemany("UPDATE members SET phone_canonical = ? WHERE id = ?",
                             [(canonical_phone(phone), mid) for mid, phone in conn.execute(
                                 "SELECT id, phone FROM members WHERE phone != ''")])
    except sqlite3.OperationalError:
        # Another process added it meanwhile (the ALTER found the column): theirs stands.
        if not _has_column(conn, "members", "phone_canonical"):
            raise


def _add_deferred_seq(conn: sqlite3.Connection) -> None:
    """A store made before deferred entries kept their records' log positions gets
    the column (its rows NULL). One statement, so it is its own transaction."""
    if not _has_column(conn, "deferred", "seq"):
        try:
            conn.execute("ALTER TABLE deferred ADD COLUMN seq INTEGER")
        except sqlite3.OperationalError:
            if not _has_column(conn, "deferred", "seq"):  # else another process did
                raise


def _has_table(conn: sqlite3.Connection, table: str) -> bool:
    return conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
                        (table,)).fetchone() is not None


def _note_handovers(conn: sqlite3.Connection) -> None:
    """A store made before `handover_to`: each shop's hand-over read from its
    projected transfers, the earliest by id (no position in its log is kept with an
    entry; an honest shop hands over to one branch only, Payments.hand_over_rights)."""
    conn.execute("INSERT OR IGNORE INTO handover_to SELECT node, json_extract(body, '$.to'), "
                 "NULL FROM entries WHERE kind = 'transfer' "
                 "AND json_extract(body, '$.reason') = 'handover' "
                 "AND typeof(json_extract(body, '$.to')) = 'text' ORDER BY id")


class Storage:
    """The SQLite file and the in-memory documents of one node (single writer)."""

    def __init__(self, data_dir: Path, *, synchronous: str = "FULL", lock: bool = True) -> None:
        self.dir = Path(data_dir)
        db = self.dir / DB_FILE
        if lock:
            # A backup's files copied into the data directory by hand: restored as
            # `crdtledger restore` would, so the store knows it is restored.
            restore_pending(self.dir)
        if not db.exists():
            raise StoreError(no_store(self.dir))
        # A store made before its files were private (0644, in a 0755 directory) is
        # tightened here, on every open, before SQLite makes a new WAL after it.
        tighten_store(self.dir, DB_FILE)
        tighten(self.dir / LOCK_FILE, FILE_MODE)
        self._lock_fd: int | None = self._take_lock() if lock else None
        # An older store file copied back beside a crash's log: the log set aside
        # before SQLite lays its pages over the file (crdtledger.walpair).
        self._wal_stamp: walpair.WalStamp | None = None
        looking = None
        if lock:
            walpair.set_aside_foreign(self.dir, db)
            self._wal_stamp = walpair.WalStamp(self.dir, db)
        elif (looking := _lock_if_free(self.dir / LOCK_FILE)) is not None:
            # A reader with no node running (`crdtledger status`, a backup) takes the
            # same look: opened beside another file's log, its close copied that log
            # into the file for good. The lock is held from the look to the open, so a
            # node starting meanwhile waits (it set its own new log aside once).
            walpair.set_aside_foreign(self.dir, db)
        self.synchronous = synchronous.upper()
        self._peers_kept: dict[str, tuple[dict[str, int], int]] = {}  # remember_peer
        try:
            try:
                self.conn = _connect(db, synchronous)
                refuse_newer_format(_stored_format(self.conn), db)
            finally:
                if looking is not None:
                    os.close(looking)  # the look is over: the store is open with its log
            _upgrade(self.conn)
            noted = _has_table(self.conn, "handover_to")
            self.conn.executescript(SCHEMA)
            if not noted:
                _note_handovers(self.conn)
            _add_deferred_seq(self.conn)
            _add_phone_canonical(self.conn)
            for index in LATE_INDEXES:
                self.conn.execute(index)
            # What waits from before this open is judged again at the next apply, as
            # if its members' rights had just moved (they may have, by a local write
            # just before the store was closed).
            self.conn.execute("INSERT OR IGNORE INTO temp.funding_moved SELECT DISTINCT "
                              "json_extract(body, '$.member') FROM deferred")
            self.conn.executescript(LOG_SCHEMA)
            self.meta = dict(self.conn.execute("SELECT key, value FROM meta").fetchall())
            if self.meta.get("format") == "2":
                _log_lone_store(self.conn, self.meta)
                self.meta["format"] = str(FORMAT_VERSION)
            if self.meta.get("format") == "3":
                # Format 3 is also what 0.2.0 writes, and it opened a store of this
                # release and wrote sales without their points lots (a table it does
                # not know): back here, the lots were never rebuilt (points that never
                # expire, closings that differ). From 4 on an older release refuses the
                # store; the lots of one that reached this release at 3 are filled anew
                # from its entries (Ledger: no `points_lots` mark, no lots).
                with self.conn:
                    self.conn.execute("DELETE FROM meta WHERE key = 'points_lots'")
                    self.conn.execute("UPDATE meta SET value = ? WHERE key = 'format'",
                                      (str(FORMAT_VERSION),))
                self.meta.pop("points_lots", None)
                self.meta["format"] = str(FORMAT_VERSION)
            if int(self.meta.get("format", "0")) != FORMAT_VERSION:
                raise StoreError(
                    f"{db} is format {self.meta.get('format')}, this program reads "
                    f"format {FORMAT_VERSION}"
                )
        except BaseException:
            self._release_lock()
            raise
        self.node: str = self.meta["node"]
        self.chain: str = self.meta["chain"]
        self.client_id = int(self.meta["client_id"])
        self.tz = ZoneInfo(self.meta.get("timezone", "Asia/Shanghai"))
        self._docs: OrderedDict[str, LoadedDoc] = OrderedDict()
        (self._seq,) = self.conn.execute(
            "SELECT MAX(COALESCE((SELECT MAX(seq) FROM log), 0), "
            "COALESCE((SELECT MAX(snapshot_seq) FROM docs), 0))").fetchone()
        self.log = Log(self.conn)
        self._in_tx = False
        self._tx_failed = False
        self._local_made: set[tuple[str, ...]] = set()  # local()'s schemas made here
        self._tx_logged: set[str] = set()  # documents logged in the open transaction
        # Run inside every write transaction before it commits: projections derived
        # from several rows at once (crdtledger.lots), brought up to date once.
        self.before_commit: list[Callable[[], None]] = []
        self._svs: dict[str, bytes] | None = None  # state_vectors() until the next record
        # Bumped whenever the state vectors may have changed (a record, a compaction, a
        # rollback): what is derived from them may be kept while it stands still.
        self.version = 0
        # Bumped by every failed transaction: what was read inside one may be gone.
        self.rollbacks = 0
        self._day_second: int | None = None
        self._day = ""
        # How far this node's own log has left it, beside the store (crdtledger.
        # tipmark): a store behind it was put back by hand.
        self.tip_mark = tipmark.TipMark(self.dir, self.node)
        self._put_back_by_hand(keep=lock)

    def read_mark(self) -> tuple[int, int]:
        """What a cache of rows read here is kept against: failed transactions (what
        was read inside one may be gone) and, on a store opened without the lock (a
        command reading while the node runs), the commits of other connections
        (SQLite's data_version). The lock's holder is the only writer: nothing else
        moves its rows, and it pays no query for it."""
        if self._lock_fd is not None:
            return self.rollbacks, 0
        return self.rollbacks, self.conn.execute("PRAGMA data_version").fetchone()[0]

    def _put_back_by_hand(self, keep: bool) -> None:
        """A store behind the furthest head of this node's own log that ever left it
        (its tip mark), or holding another record there, is a copy put back by hand:
        restored, as `crdtledger restore` leaves it (meta `restored_from` and
        `restored_tip`), so the node catches up with itself from a peer before it
        sells (Replica.peer_caught_up). Kept in the store by the lock's holder; a
        reader (`status` while the node is stopped) only says so. The mark is read
        before the store: a head is signed only after what it covers committed, so a
        reader racing the node never finds the store behind."""
        mark = tipmark.read(self.dir)
        if mark is None or mark[0] != self.node:
            return
        _node, seq, hash_ = mark
        tip, _hash = self.log.tip(self.node)
        if seq <= tip and self.log.hash_at(self.node, seq) == hash_:
            return
        # The mark proves its log left this PC as far as `seq`: a peer must show that
        # much before it sells again (peer_caught_up), also after `crdtledger restore`
        # in place, whose backup knows less.
        said = {"restored_sent": str(seq)}
        if not self.meta.get("restored_seen"):
            said |= put_back_marks(self.conn)  # as `crdtledger restore` marks it
        if not self.meta.get("restored_from"):
            # When the copy was last written: its clock's ceiling (kept a lease ahead
            # of its last id), or the store's creation for a copy that never wrote.
            last = hlc.wall_ms(int(self.meta.get("hlc") or 0)) - CLOCK_LEASE_MS
            if last <= 0:
                last = int(self.meta.get("created_at") or 0) * 1000
            said |= {"restored_from": local_time(last, self.meta.get("timezone")),
                     "restored_tip": str(tip)}
        if said.items() <= self.meta.items():
            return
        if not keep:
            self.meta.update(said)
            return
        with self.transaction():
            for key, value in said.items():
                self.set_meta(key, value)

    # --- creation and locking -------------------------------------------------

    @staticmethod
    def create(data_dir: Path, node: str, chain: str, timezone: str) -> None:
        data_dir = Path(data_dir)
        # 0700 and a 0600 file before SQLite opens it: its WAL and shared memory take
        # the database file's permissions (crdtledger.private).
        private_dir(data_dir)
        db = data_dir / DB_FILE
        if db.exists():
            raise StoreError(f"{data_dir} already holds a node")
        tipmark.forget(data_dir)
        walpair.forget(data_dir, db)
        ZoneInfo(timezone)  # refuse an unknown zone now rather than at first report
        if timezone in MACHINE_ZONES:
            raise StoreError(f"{timezone} is the reading machine's zone, not a place's: "
                             "name the branch's zone, e.g. Asia/Shanghai")
        tmp = data_dir / (DB_FILE + ".new")
        tmp.unlink(missing_ok=True)
        conn = _connect(private_sqlite_file(tmp), "FULL", PAGE_SIZE)
        conn.executescript(SCHEMA)
        for index in LATE_INDEXES:
            conn.execute(index)
        conn.executescript(LOG_SCHEMA)
        with conn:
            conn.executemany(
                "INSERT INTO meta VALUES (?, ?)",
                [("format", str(FORMAT_VERSION)), ("node", node), ("chain", chain),
                 ("client_id", str(client_id_for(node, 0))), ("timezone", timezone),
                 ("hlc", "0"), ("hlc_eras", hlc.FRESH_ERAS), ("points_lots", POINTS_FOLD),
                 ("projection", PROJECTION),
                 # The entry kinds it was made to read (LedgerBase judges what it set
                 # aside again when another build opens it): set now, so that an
                 # open changes nothing.
                 ("entry_kinds", model.entry_kinds_text()),
                 ("created_at", str(int(time.time())))],
            )
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.close()
        # Appear whole or not at all: a crash during init leaves no half-made node.
        os.replace(tmp, db)

    def _take_lock(self) -> int:
        # It holds only a pid, but it lives with the store: private like the rest.
        fd = os.open(self.dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, FILE_MODE)
        platform.fchmod(fd, FILE_MODE)
        deadline = time.monotonic() + LOCK_WAIT_S
        while not platform.try_lock(fd):
            if time.monotonic() > deadline:
                holder = platform.read_pid(fd)
                os.close(fd)
                raise StoreLocked(
                    f"data directory {self.dir} is in use by another process "
                    f"(pid {holder or '?'})"
                )
            time.sleep(0.02)
        platform.write_pid(fd)
        return fd

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def close(self, clock_last: int | None = None) -> None:
        """`clock_last`: the highest timestamp this process minted or adopted. The
        ceiling kept is a lease ahead of it (`keep_clock`), which a restart must start
        from in case it crashed; closed cleanly, the ceiling comes down to it. Each
        command of the command line, run while no node runs, started at the last one's
        lease and leased on from there: 250 debits in 129 s were dated 274 s ahead,
        then a new era began and the next ones sorted before them. Only by the lock's
        holder: a process reading beside a running node must not lower its ceiling."""
        if clock_last is not None and self._lock_fd is not None and not self._in_tx:
            with contextlib.suppress(sqlite3.Error, StoreError, OSError):
                if int(self.meta.get("hlc", "0")) > clock_last:
                    with self.transaction():
                        self.set_meta("hlc", str(clock_last))
        self.evict_all()
        self.conn.close()
        self.tip_mark.close()
        if self._wal_stamp is not None:
            self._wal_stamp.close()
        self._release_lock()

    # --- meta ---------------------------------------------------------------

    def set_meta(self, key: str, value: str) -> None:
        self.conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))
        self.meta[key] = value

    def keep_clock(self, last: int, eras: str | None = None) -> None:
        """Persist a ceiling above every timestamp issued (inside the transaction that
        used them), so a restarted node never issues one again, even if the wall clock
        went back. A ceiling a little ahead is written once per lease instead of the
        clock at every commit: one page fewer per debit. The price: after a restart,
        ids may run up to a lease ahead of the wall clock until it catches up.
        `eras` (HybridClock.eras_text): when the clock changed era, the ceiling is the
        new era's, lower than the old one's, which `eras` keeps."""
        if eras is not None and eras != self.meta.get("hlc_eras"):
            self.set_meta("hlc_eras", eras)
            self.set_meta("hlc", str(last + (CLOCK_LEASE_MS << 16)))
        elif last > int(self.meta["hlc"]):
            self.set_meta("hlc", str(last + (CLOCK_LEASE_MS << 16)))

    def day_start_id(self, day: str, days_later: int = 0) -> str:
        """The smallest id minted on `day` (+ `days_later`) in this chain's time zone."""
        try:
            start = datetime.combine(date.fromisoformat(day) + timedelta(days=days_later),
                                     dt_time(0), self.tz)
        except (TypeError, ValueError):
            raise InvalidInput(f"not a date like 2026-11-23: {day!r}") from None
        except OverflowError:  # the day after 9999-12-31
            raise InvalidInput(f"{day!r} is past the last day a report can cover") from None
        return hlc.id_floor(int(start.timestamp() * 1000))

    def day_of(self, ms: int) -> str:
        # Called several times per operation with the same second: remember the last
        # one. Exact, since a day never changes within a second (zone offsets are
        # whole minutes).
        second = ms // 1000
        if second != self._day_second:
            self._day = datetime.fromtimestamp(ms / 1000, self.tz).date().isoformat()
            self._day_second = second
        return self._day

    # --- transactions -------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """BEGIN IMMEDIATE ... COMMIT. On any failure the SQLite side rolls back and
        every document changed in memory is dropped, to be reloaded from what did
        commit: memory never runs ahead of disk. (A refused debit changed none.)"""
        if self._in_tx:
            # Nested: one transaction, no savepoint (the documents changed in memory
            # cannot be rolled back in part). A failure inside it that a caller catches
            # must not let the outer one commit what the inner wrote before it failed
            # (a sale's money without its stock): the outer is rolled back instead.
            try:
                yield
            except BaseException:
                self._tx_failed = True
                raise
            return
        self.conn.execute("BEGIN IMMEDIATE")
        self.log.begin()
        self._in_tx = True
        self._tx_failed = False
        self._tx_logged = set()
        try:
            yield
            if self._tx_failed:
                raise StoreError("a write inside this transaction failed and was caught: "
                                 "nothing of it is kept")
            for settle in self.before_commit:
                settle()
            self.conn.execute("COMMIT")
            for ld in self._docs.values():
                ld.dirty = ld.unlogged = False
            if self._wal_stamp is not None:
                self._wal_stamp.after_commit(self.conn)
        except BaseException:
            self._forget_transaction()
            raise
        finally:
            self._in_tx = False

    def _forget_transaction(self) -> None:
        """After a failed transaction: SQLite's side rolled back, and everything kept
        in memory for it dropped. A disk found full (SQLITE_FULL, at a write or at
        COMMIT) has SQLite roll back by itself, and a ROLLBACK then raised "no
        transaction is active" before the memory was dropped: the log's cached tip ran
        past the disk, later records were numbered past a hole no peer would take, and
        a peer's record counted as held was never fetched again."""
        try:
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
        except sqlite3.Error as e:  # the memory must be dropped all the same
            log.warning("rolling back a failed transaction: %s", e)
        POINTS_NOTED.add(id(self.conn))
        self.rollbacks += 1
        self.log.reset()
        self._svs = None
        self._peers_kept.clear()
        self.version += 1
        self.evict(dirty_only=True)
        # The cached meta too: a clock ceiling kept only in memory would let a later
        # commit skip persisting it, and a restart reissue timestamps.
        self.meta = dict(self.conn.execute("SELECT key, value FROM meta").fetchall())

    def forget_local(self, schema: tuple[str, ...]) -> None:
        """`schema` is to be made again at its next use (its objects were dropped)."""
        self._local_made.discard(schema)

    def local(self, schema: tuple[str, ...], what: str) -> sqlite3.Connection:
        """The connection, for this node's own tables (never replicated: the outbox,
        idempotency keys), made by `schema` on first use so that a store that never
        uses them pays nothing (once per open store: a keyed write asks three times).
        Outside a ledger transaction only: their statements would otherwise commit or
        roll back with a ledger write's."""
        if self._in_tx:
            raise LocalProtocolError(f"{what} written outside a ledger transaction")
        if schema not in self._local_made:
            for sql in schema:
                self.conn.execute(sql)
            self._local_made.add(schema)
        return self.conn

    # --- documents ----------------------------------------------------------

    def loaded(self, name: str) -> LoadedDoc | None:
        """Document `name` if it is in memory (never loads it)."""
        return self._docs.get(name)

    def doc(self, name: str) -> LoadedDoc:
        ld = self._docs.get(name)
        if ld is not None:  # its name was checked when it was loaded
            self._docs.move_to_end(name)
            return ld
        if not DOC_NAME.match(name):
            raise ValueError(f"not a document name: {name!r}")
        ld = LoadedDoc(name, self.client_id)
        row = self.conn.execute(
            "SELECT (SELECT data FROM snapshots WHERE name = docs.name), snapshot_seq "
            "FROM docs WHERE name = ?", (name,)
        ).fetchone()
        since = 0
        ld.known = row is not None
        if row is not None:
            snapshot, since = row
            if snapshot:
                ld.doc.apply_update(snapshot)
                ld.size = len(snapshot)
        for (data,) in self.conn.execute(
            "SELECT data FROM log WHERE doc = ? AND seq > ? ORDER BY seq", (name, since)
        ):
            ld.doc.apply_update(data)
            ld.tail += 1
            ld.size += len(data)
        ld.start_observing()
        self._docs[name] = ld
        self._shed()
        return ld

    def _shed(self) -> None:
        """Close the least recently used documents while the cache holds more than
        DOC_CACHE of them or DOC_CACHE_BYTES, keeping the DOC_CACHE_KEPT most recent
        and any changed and not yet logged (see DOC_CACHE_BYTES)."""
        total = sum(ld.size for ld in self._docs.values())
        spare = len(self._docs) - DOC_CACHE_KEPT
        for name, ld in list(self._docs.items())[:max(spare, 0)]:
            if len(self._docs) <= DOC_CACHE and total <= DOC_CACHE_BYTES:
                break
            if ld.unlogged:
                continue
            total -= ld.size
            ld.close()
            del self._docs[name]

    def doc_names(self) -> list[str]:
        return [n for (n,) in self.conn.execute("SELECT name FROM docs ORDER BY name")]

    def state_vectors(self) -> dict[str, bytes]:
        """Every document's state vector, from SQLite: no document is loaded.

        Remembered until the next `record` (or compaction, or rollback): every sync
        round asks for them on both sides, and they change only when a commit logs
        an update. A copy is returned, so a caller may keep or change it."""
        if self._svs is None:
            self._svs = {n: bytes(sv) for n, sv in self.conn.execute(
                "SELECT name, COALESCE((SELECT sv FROM log WHERE doc = docs.name AND sv IS NOT "
                "NULL ORDER BY seq DESC LIMIT 1), sv) FROM docs")}
        return dict(self._svs)

    def record(self, ld: LoadedDoc, updates: list[bytes], sv: bytes | None = None) -> None:
        """Append updates of a document to the log (inside a transaction). `sv`: the
        document's state vector as it now stands, if the caller has just read it
        (replica._apply_run does: not read again)."""
        if not updates:
            return
        self._tx_logged.add(ld.name)
        self.version += 1
        if not ld.known:
            # The document's first commit here: it gets its row (sv as of no snapshot).
            self.conn.execute("INSERT OR IGNORE INTO docs(name, sv) VALUES (?, ?)",
                              (ld.name, b"\x00"))
            ld.known = True
        first = self._seq + 1
        last = len(updates) - 1
        self._seq += len(updates)
        ld.size += sum(len(u) for u in updates)
        ld.unlogged = False
        if ld.tail + len(updates) >= COMPACT_AFTER:
            # Folded into the snapshot now, as compact() would do right after the
            # commit: a catch-up's thousands of updates are then not written here only
            # to be deleted (the signed log keeps each record anyway).
            sv = self._fold(ld, self._seq)
        else:
            if sv is None:
                sv = ld.doc.get_state()
            if last == 0:  # a local write's one update: no list for executemany
                self.conn.execute(_LOG_ROW, (ld.name, first, updates[0], sv))
            else:
                self.conn.executemany(_LOG_ROW, [(ld.name, first + i, u, sv if i == last else None)
                                                 for i, u in enumerate(updates)])
            ld.tail += len(updates)
        if self._svs is not None:
            # Kept current rather than dropped: re-reading every vector (stored after
            # the large update blobs) cost an anti-entropy round 30-120 ms.
            self._svs[ld.name] = bytes(sv)

    def maybe_compact(self, name: str) -> None:
        ld = self._docs.get(name)
        if ld is not None and ld.tail >= COMPACT_AFTER:
            self.compact(name)

    def compact(self, name: str) -> None:
        """Fold a document's log into one snapshot. Replaying into a Doc and taking
        get_update() is linear; pycrdt.merge_updates is quadratic (DESIGN.md)."""
        ld = self.doc(name)
        self._svs = None
        self.version += 1
        with self.transaction():
            (last,) = self.conn.execute(
                "SELECT COALESCE(MAX(seq), 0) FROM log WHERE doc = ?", (name,)
            ).fetchone()
            self._fold(ld, last)

    def forget_freed(self) -> None:
        """Checkpoint the WAL and truncate it: the frames of pages that held erased
        data (crdtledger.erasure) would otherwise stay in the -wal file until SQLite
        reused them. A reader still on an old snapshot keeps the WAL: then it is
        truncated at a later checkpoint."""
        self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def _fold(self, ld: LoadedDoc, last: int) -> bytes:
        """Replace a document's log up to `last` by a snapshot of it as loaded (inside
        a transaction); returns its state vector."""
        sv = ld.doc.get_state()
        self.conn.execute("INSERT OR REPLACE INTO snapshots(name, data) VALUES (?, ?)",
                          (ld.name, ld.doc.get_update()))
        self.conn.execute("UPDATE docs SET snapshot_seq = ?, sv = ? WHERE name = ?",
                          (last, sv, ld.name))
        self.conn.execute("DELETE FROM log WHERE doc = ? AND seq <= ?", (ld.name, last))
        ld.tail = 0
        return sv

    def evict_all(self) -> None:
        self.evict(dirty_only=False)

    def evict(self, *, dirty_only: bool) -> None:
        for name, ld in list(self._docs.items()):
            # A document logged in the failed transaction may have been evicted (cache
            # full) and reloaded with its uncommitted rows: not dirty, still stale.
            if ld.dirty or not dirty_only or name in self._tx_logged:
                ld.close()
                del self._docs[name]

    # --- peers' known states (for export --for NODE) -------------------------

    def remember_peer(self, node: str, states: Mapping[str, int], now_ms: int) -> None:
        """How far `node` holds each log, as it says (a `state` frame, a file). A
        hint (what a sync file for it may leave out, when it was last heard from):
        the same again within PEER_SEEN_MS is not written, and what is written waits
        for no fsync of its own. A certified peer sending 27-byte `state` frames as
        fast as its socket went had the branch fsync for each: its tills and its other
        links stopped for as long as it went on."""
        import msgpack

        states = dict(states)
        kept = self._peers_kept.get(node)
        if kept is not None and kept[0] == states and 0 <= now_ms - kept[1] < PEER_SEEN_MS:
            return
        row = (node, msgpack.packb(states), now_ms)
        if self._in_tx:
            self.conn.execute("INSERT OR REPLACE INTO peers VALUES (?, ?, ?)", row)
        else:
            lazy = self.synchronous in ("FULL", "EXTRA")
            if lazy:  # the WAL's next durable commit makes it durable with it
                self.conn.execute("PRAGMA synchronous=NORMAL")
            try:
                with self.transaction():
                    self.conn.execute("INSERT OR REPLACE INTO peers VALUES (?, ?, ?)", row)
            finally:
                if lazy:
                    self.conn.execute(f"PRAGMA synchronous={self.synchronous}")
        self._peers_kept[node] = (states, now_ms)

    def peer_states(self, node: str) -> dict[str, int] | None:
        """How far `node` held each log when last heard from (a session or a file)."""
        import msgpack

        row = self.conn.execute("SELECT states FROM peers WHERE node = ?", (node,)).fetchone()
        if row is None:
            return None
        return {str(k): int(v) for k, v in msgpack.unpackb(row[0]).items()
                if isinstance(v, int)}



_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), sort_keys=True)


def dumps(value: Any) -> str:
    """The projection's JSON text of a record: compact, keys sorted, UTF-8 as is.

    orjson writes the same text as the json module for what records hold (strings,
    64-bit integers, lists, maps) 6x faster, and a catch-up writes one per entry; what
    it refuses (an integer past 64 bits, a key that is not a string) goes the slow way."""
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
    except TypeError:
        return _ENCODER.encode(value)

