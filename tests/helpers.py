"""Small helpers shared by the unit tests that drive the real library.

- `new_ledger` creates and opens a real SQLite-backed node under a tmp path.
- `snapshot` captures everything a refused operation must leave alone.
- `Net` pumps frames between pairs of `SyncSession`s until every queue is empty.
- `Forger` writes records as a dishonest node would: its own pycrdt client id, its
  own log's hash chain, its own key; what it writes is the test's choice.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from pycrdt import Doc

from crdtledger.ledger import Ledger
from crdtledger.log import Batch, Head, Record, head_message, record_hash
from crdtledger.sync import Event, SyncSession, pack

# Durability after a crash is tested elsewhere (tests/test_crash.py); here FULL's
# fsync per commit only slows a suite of a few thousand commits on a busy machine.
SYNCHRONOUS = "NORMAL"


def tables(ledger: Ledger) -> list[str]:
    """Every table a refused operation (or frame, or file) must not touch, found in the
    schema itself so that tables added later are covered too; the log is compared by
    row count and last sequence number. Not the node's list of refused attempts
    (crdtledger.audit.note_refusal), which a refusal is meant to add to."""
    return [n for (n,) in ledger.storage.conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' "
        "AND name NOT IN ('log', 'refusals') ORDER BY name")]


def new_ledger(root: Path, node: str, chain: str = "default",
               now_ms: Callable[[], int] | None = None, timezone: str = "Asia/Shanghai"
               ) -> Ledger:
    path = Path(root) / node.lower()
    Ledger.create(path, node, chain, timezone)
    return Ledger.open(path, now_ms=now_ms, synchronous=SYNCHRONOUS)


def two_zones(root: Path, clock: Callable[[], int], expire_days: int
              ) -> tuple[Ledger, Ledger]:
    """SH01 in Shanghai and SH02 in Los Angeles on one clock, SH01 having set points
    earned at a point a yuan that expire after `expire_days` (not yet synced)."""
    sh = new_ledger(root, "SH01", now_ms=clock)
    la = new_ledger(root, "SH02", now_ms=clock, timezone="America/Los_Angeles")
    sh.set_rule(sh.owner, "earn", {"points_per_yuan": "1", "expire_days": expire_days},
                effective_from="2025-01-01")
    return sh, la


def name_branches(ledger: Ledger, *nodes: str) -> None:
    """The owner lists the chain's branches (rule `branches`, each named by its id):
    rights and stock go only to a branch the chain knows (Payments._require_branch),
    and a session between two stores already in step records neither as a peer."""
    ledger.set_rule(ledger.owner, "branches", {n: n for n in nodes},
                    effective_from="2000-01-01")


class FakeClock:
    """Wall clock in ms that the test moves by hand (HybridClock takes any callable)."""

    def __init__(self, ms: int = 1_767_225_600_000) -> None:  # 2026-01-01T00:00Z
        self.ms = ms

    def __call__(self) -> int:
        return self.ms

    def advance_days(self, days: float) -> None:
        self.ms += int(days * 86_400_000)


def snapshot(ledger: Ledger, members: Iterable[str] = ()) -> dict[str, Any]:
    """Everything observable about a node: tables, log, state vectors, the documents
    in memory, and balances / rights / history of the named members."""
    conn = ledger.storage.conn
    out: dict[str, Any] = {
        t: sorted(conn.execute(f"SELECT * FROM {t}").fetchall(), key=repr)
        for t in tables(ledger)
    }
    out["log"] = conn.execute("SELECT COUNT(*), COALESCE(MAX(seq), 0) FROM log").fetchone()
    svs = ledger.state_vectors()
    out["state_vectors"] = svs
    # Memory must never run ahead of disk: each loaded document is at its stored state.
    out["memory"] = {n: bytes(ledger.storage.doc(n).doc.get_state()) for n in sorted(svs)}
    for m in members:
        out[f"balance:{m}"] = ledger.balance(m)
        out[f"history:{m}"] = ledger.history(m, limit=1000)
        for purse in ("cash", "bonus", "points"):
            out[f"rights:{m}:{purse}"] = ledger.rights(m, purse)
    return out


def reopened(snap: dict[str, Any]) -> dict[str, Any]:
    """A `snapshot` as it compares across a close and a reopen: the clock's ceiling
    (meta `hlc`) comes down to the last id minted when a store is closed cleanly
    (Storage.close), which changes nothing a node holds."""
    return {**snap, "meta": [r for r in snap.get("meta", []) if r[0] != "hlc"]}


# The tables of the signed logs (crdtledger.log): a record refused by a write rule is
# kept there as evidence and its writer's fault recorded, while nothing else moves.
LOG_TABLES = ("records", "heads", "faults", "pins", "marks")


def data_snapshot(ledger: Ledger, members: Iterable[str] = ()) -> dict[str, Any]:
    """`snapshot` without the log tables: what a record refused by a write rule (kept
    as evidence, crdtledger.replica) must leave alone."""
    out = snapshot(ledger, members)
    for t in LOG_TABLES:
        out.pop(t)
    return out


def log_rows(ledger: Ledger) -> int:
    return int(ledger.storage.conn.execute("SELECT COUNT(*) FROM log").fetchone()[0])


def doc_content(ledger: Ledger) -> dict[str, Any]:
    """Plain content of every document (roots to_py), for comparing replicas."""
    out: dict[str, Any] = {}
    for name in sorted(ledger.state_vectors()):
        ld = ledger.storage.doc(name)
        out[name] = {r: json.loads(json.dumps(root.to_py(), sort_keys=True, default=str))
                     for r, root in ld.roots.items()}
    return out


def projections(ledger: Ledger) -> dict[str, Any]:
    """The derived tables that converged replicas must agree on."""
    conn = ledger.storage.conn
    return {t: sorted(conn.execute(f"SELECT * FROM {t}").fetchall(), key=repr)
            for t in ("entries", "rights", "totals", "members", "cards", "rules",
                      "operators", "roles", "quarantine")}


class Net:
    """In-memory links between ledgers, each link a pair of started SyncSessions."""

    def __init__(self) -> None:
        self.links: list[tuple[SyncSession, SyncSession]] = []
        self.frames = 0

    def connect(self, a: Ledger, b: Ledger, pump: bool = True) -> tuple[SyncSession, SyncSession]:
        sa, sb = SyncSession(a, expect_node=b.node), SyncSession(b, expect_node=a.node)
        sa.start()
        sb.start()
        self.links.append((sa, sb))
        if pump:
            self.pump()
        return sa, sb

    def pump(self, limit: int = 10_000) -> int:
        """Deliver frames until every queue is empty; return how many were delivered."""
        delivered = 0
        while True:
            moved = False
            for sa, sb in self.links:
                for src, dst in ((sa, sb), (sb, sa)):
                    if src.closed or dst.closed:
                        continue
                    for frame in src.data_to_send():
                        dst.receive(frame)
                        delivered += 1
                        moved = True
            if not moved:
                break
            if delivered > limit:
                raise AssertionError(f"sync did not settle after {limit} frames")
        self.frames += delivered
        return delivered

    def close(self) -> None:
        for sa, sb in self.links:
            sa.close()
            sb.close()
        self.links.clear()


def sync(a: Ledger, b: Ledger) -> None:
    """One full exchange between two ledgers, then disconnect."""
    net = Net()
    net.connect(a, b)
    net.close()


def registered_apart(ledger: Ledger, root: Path, *, name: str, phone: str,
                     node: str = "SH02", chain_dir: Path | None = None,
                     now_ms: Callable[[], int] | None = None) -> str:
    """A member registered at `node` (a new store under `root`) while it had heard
    nothing of `ledger`'s members, then synced into `ledger`: how one person becomes
    two members, since registration refuses a phone it already holds however either
    is typed, and sees only what has arrived. `chain_dir`: the chain to enrol `node`
    in, for a `ledger` whose store has certificates (one under a running node);
    `now_ms`: its clock, the test's own when `ledger` runs on one."""
    from peer.chain import enrol

    data = Path(root) / node.lower()
    Ledger.create(data, node, ledger.storage.chain)
    if chain_dir is not None:
        enrol(chain_dir, data, node)
    with Ledger.open(data, now_ms=now_ms, synchronous=SYNCHRONOUS) as apart:
        mid = apart.add_member(apart.owner, name=name, phone=phone)
        sync(ledger, apart)
    return mid


def events(session: SyncSession) -> list[Event]:
    out = []
    while (ev := session.next_event()) is not None:
        out.append(ev)
    return out


class Forger:
    """A dishonest node writing its log by hand, as a real one could: with pycrdt Docs
    of its own client id (each starting from its ledger's copy of the document), its
    records chained from its own tip (crdtledger.log.record_hash), the head signed
    with its own key (a forger holds its own key, never another node's). What it
    writes is up to the test: `write` mutates a document, `record` takes raw bytes."""

    def __init__(self, ledger: Ledger, *, after: tuple[int, bytes] | None = None) -> None:
        """`after`: the (seq, hash) its log goes on from, if not its ledger's tip."""
        self.ledger = ledger
        self.node = ledger.node
        self.seq, self.tip = after or ledger.storage.log.tip(ledger.node)
        self.records: list[Record] = []
        self._hashes: dict[int, bytes] = {self.seq: self.tip}
        self._docs: dict[str, Doc[Any]] = {}

    def doc(self, name: str) -> Doc[Any]:
        d = self._docs.get(name)
        if d is None:
            d = Doc(client_id=self.ledger.storage.client_id)
            d.apply_update(self.ledger.storage.doc(name).doc.get_update())
            self._docs[name] = d
        return d

    def write(self, name: str, mutate: Callable[[Doc[Any]], None]) -> Record:
        """The next record: what `mutate` does to the forger's copy of `name`."""
        d = self.doc(name)
        before = d.get_state()
        with d.transaction():
            mutate(d)
        return self.record(name, bytes(d.get_update(before)))

    def record(self, doc: str, data: bytes) -> Record:
        """The next record of the forger's log, carrying `data` as it is."""
        self.seq += 1
        rec = Record(self.node, self.seq, doc, data)
        self.tip = record_hash(self.tip, self.node, self.seq, doc, data)
        self._hashes[self.seq] = self.tip
        self.records.append(rec)
        return rec

    def head(self, seq: int | None = None) -> Head:
        """The forger's signed head at `seq` (its tip if None)."""
        seq = self.seq if seq is None else seq
        hash_ = self._hashes[seq]
        msg = head_message(self.ledger.chain, self.node, seq, hash_)
        return Head(seq, hash_, self.ledger.trust.sign(msg))

    def batch(self, records: Iterable[Record] | None = None) -> Batch:
        """`records` (all written so far if None) under the forger's head signed at
        the last of them."""
        recs = list(self.records if records is None else records)
        head = self.head(max((r.seq for r in recs), default=self.seq))
        return Batch(recs=recs, heads={self.node: head},
                     certs={self.node: self.ledger.trust.cert_der})

    def frame(self, records: Iterable[Record] | None = None) -> bytes:
        """A `recs` frame of `batch(records)`, as the forger's session would send it."""
        return pack({"t": "recs", **self.batch(records).to_wire()})

    def copy(self) -> Forger:
        """A forger at this one's position whose writes this one does not see: to try
        a record that will be refused, then go on as if it were never written."""
        other = Forger(self.ledger)
        other.seq, other.tip, other.records = self.seq, self.tip, list(self.records)
        other._hashes = dict(self._hashes)
        for name, d in self._docs.items():
            clone: Doc[Any] = Doc(client_id=self.ledger.storage.client_id)
            clone.apply_update(d.get_update())
            other._docs[name] = clone
        return other


def sqlite_steps(ledger: Ledger, apply: Callable[[], Any]) -> int:
    """SQLite virtual-machine steps (in hundreds) `apply` makes on `ledger`'s store: a
    count of work, the same on any machine, where a time would not be (tests assert
    no timings: the machines are shared and noisy)."""
    count = [0]

    def step() -> int:
        count[0] += 1
        return 0

    ledger.storage.conn.set_progress_handler(step, 100)
    try:
        apply()
    finally:
        ledger.storage.conn.set_progress_handler(None, 100)
    return count[0]


def plans(ledger: Ledger, apply: Callable[[], Any]) -> list[tuple[str, list[str]]]:
    """Each read `apply` runs on `ledger`'s store, with the steps of SQLite's plan for
    it (EXPLAIN QUERY PLAN of the statement as run): which index a read took, found on
    a store of any size, not by a time."""
    ran: list[str] = []
    conn = ledger.storage.conn
    conn.set_trace_callback(ran.append)
    try:
        apply()
    finally:
        conn.set_trace_callback(None)
    return [(sql, [str(step) for (_id, _parent, _n, step) in conn.execute(
        "EXPLAIN QUERY PLAN " + sql)])
        for sql in ran if sql.lstrip().upper().startswith(("SELECT", "WITH"))]


def full_scans(ledger: Ledger, apply: Callable[[], Any], table: str) -> list[str]:
    """The statements `apply` runs on `ledger`'s store whose plan reads every row of
    `table`: a read that grows with the chain, not with what was asked."""
    conn = ledger.storage.conn
    # A scan of a partial index reads only the rows it holds (goods' stock, referrals).
    partial = {str(n) for n, q in conn.execute(
        "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = ?", (table,))
        if q and " WHERE " in str(q).upper()}
    return [sql for sql, steps in plans(ledger, apply)
            if any(words[:2] == ["SCAN", table] and not (len(words) > 4 and words[-1] in partial)
                   for words in (step.split() for step in steps))]


class Held:
    """A function that, once it has run, holds its caller (a worker thread) until the
    test lets go: a slow step caught midway, e.g. a password checked off the loop
    while the test resets it. `ran` is set when it has run; `release()` lets it go."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn
        self.ran = threading.Event()
        self._go = threading.Event()

    def __call__(self, *args: Any) -> Any:
        out = self.fn(*args)
        self.ran.set()
        self._go.wait(10)
        return out

    def release(self) -> None:
        self._go.set()
