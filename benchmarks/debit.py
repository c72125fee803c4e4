"""Durable debit against its baselines, measured side by side.

Two sets of rounds. The first times, in turn, exactly A B A B (the target):

- `ledger`: `Ledger.debit` of a service, `synchronous=FULL` (the default): operator
  and member checks, level discount, escrow check inside the write transaction,
  pycrdt update, projections, log row, COMMIT. Acknowledged = durable.
- `plain sqlite`: the least a durable debit can be with SQLite: one table (WAL,
  `synchronous=FULL`, same directory), `BEGIN IMMEDIATE`, balance check (`SUM` over
  the member's rows by index), `INSERT`, `COMMIT`.

The second set times the ledger again, side by side with what it is made of:

- `fsync floor`: `os.pwrite` of 100 bytes into a preallocated file on the same disk
  + `os.fsync`: the physical cost of making anything durable here.
- `pycrdt append`: the same debit entry set into a pycrdt Map in one transaction,
  no storage and no observer.
- `ledger, synchronous=OFF`: a second copy of the node, without the fsync: the
  ledger's CPU cost (plus writing WAL pages to the OS cache).

The third set is what the signed log costs a debit (issue 12), exactly A B A B:

- `ledger`: as above, which appends the debit's record to the node's own log
  (crdtledger.log: hash-chained to the one before; `LedgerBase._log_own`);
- `ledger, no log record`: a third copy of the node whose `_log_own` is replaced, on
  that Ledger object only and in this process only, by one that returns the record
  without hashing or storing it: the debit as it was before signed logs.

and after each `ledger` debit, `Ledger.own_head()`, which signs the moved head of
the node's log (ECDSA P-256): what a session does once per batch it sends, so once
per debit at a counter's pace.

The fourth set is what a branch with four tills gets when they all swipe at once,
in blocks A B C D A B C D ... (each till debits back to back, closed loop):

- `ledger, 1 till` / `4 tills`: a real branch node (`peer.node.Node`, started in this
  process on a copy of the data set) and one asyncio task per till calling
  `Node.perform(ledger.debit)`, as the node's API handlers do. The node runs its
  writes one at a time on its event loop, so a till's debit waits for those queued
  before it. Each request yields to the loop once before it is served (its arrival).
- `plain SQLite, 1 till` / `4 tills`: one thread and connection per till, each doing
  the plain debit: four clients of one SQLite file, serialised by its write lock
  (and SQLite's busy handler, which sleeps while the lock is taken).

Per till and debit: the latency it saw (queueing included); per block: debits per
second of all tills together.

Interleaving the variants (A B A B ..., A C D E A C D E ...) makes slow drift of the
machine (other tenants, CPU frequency, the disk's cache) fall on all of them alike,
so their ratio means something on a noisy two-core box.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from pycrdt import Doc, Map

from benchmarks import datagen
from benchmarks.common import (
    POOL_TOPUP,
    SERVICE,
    Config,
    block_ratios,
    fund_pool,
    member_pool,
)
from benchmarks.report import Report
from crdtledger.hlc import HybridClock, decode, wall_ms
from crdtledger.ledger import Ledger
from crdtledger.log import Record

NAME = "debit"
WARMUP = 30
POOL = 400  # members debited in turn; each is funded for well over its share
TILLS = 4  # counters of one branch swiping at once
AMOUNT = 11520  # the plain baseline's debit: FOOT60 at the 0.9 level discount


class PlainSqlite:
    """The baseline: a durable debit in one SQLite table, nothing else."""

    def __init__(self, path: Path, synchronous: str = "FULL", create: bool = True) -> None:
        if create:
            path.unlink(missing_ok=True)
        # Another connection of a till may hold the write lock: wait for it (SQLite's
        # busy handler), as clients of one database file do.
        self.conn = sqlite3.connect(path, isolation_level=None, timeout=30,
                                    check_same_thread=False)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute(f"PRAGMA synchronous={synchronous}")
        if create:
            self.conn.execute(
                "CREATE TABLE ledger(id INTEGER PRIMARY KEY, member TEXT NOT NULL, "
                "amount INTEGER NOT NULL, at INTEGER NOT NULL)")
            self.conn.execute("CREATE INDEX ledger_member ON ledger(member)")

    def preload(self, members: list[str], rows: int, credit: int) -> None:
        """As many rows as the ledger has entries, spread over the same members."""
        now = time.time_ns() // 1_000_000
        with self.conn:
            self.conn.execute("BEGIN")
            self.conn.executemany(
                "INSERT INTO ledger(member, amount, at) VALUES (?, ?, ?)",
                ((members[i % len(members)], credit if i < len(members) else 0, now)
                 for i in range(rows)))

    def debit(self, member: str, amount: int) -> None:
        c = self.conn
        c.execute("BEGIN IMMEDIATE")
        try:
            (balance,) = c.execute(
                "SELECT COALESCE(SUM(amount), 0) FROM ledger WHERE member = ?", (member,)
            ).fetchone()
            if balance < amount:
                raise RuntimeError(f"plain baseline: {member} has {balance} < {amount}")
            c.execute("INSERT INTO ledger(member, amount, at) VALUES (?, ?, ?)",
                      (member, -amount, time.time_ns() // 1_000_000))
            c.execute("COMMIT")
        except BaseException:
            c.execute("ROLLBACK")
            raise

    def close(self) -> None:
        self.conn.close()


class FsyncFloor:
    """100 bytes written in place into a file allocated (and synced) beforehand, then
    fsync: a durable write that changes no file size, as SQLite's WAL does once it
    is in use. (Appending would also commit file-system metadata: ext4 takes about
    twice as long.)"""

    SIZE = 1 << 20

    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        os.write(self.fd, b"\0" * self.SIZE)
        os.fsync(self.fd)
        self.offset = 0

    def write(self) -> None:
        os.pwrite(self.fd, b"x" * 100, self.offset)
        os.fsync(self.fd)
        self.offset = (self.offset + 4096) % self.SIZE

    def close(self) -> None:
        os.close(self.fd)


class PycrdtAppend:
    """A debit entry as the ledger writes it, into a bare Doc: the CRDT's own cost."""

    def __init__(self) -> None:
        self.doc: Doc[Any] = Doc()
        self.entries: Map[Any] = self.doc.get("entries", type=Map)
        self.clock = HybridClock("B1")

    def append(self, member: str) -> None:
        eid = self.clock.mint()
        entry = {"id": eid, "kind": "debit", "member": member, "node": "B1",
                 "op": "owner@B1", "at": wall_ms(decode(eid.split(".")[0])), "amount": 11520,
                 "deltas": [["cash", "B1", -11520], ["points", "B1", 172]],
                 "gross": 12800, "discount": "0.9", "level": "金卡", "service": SERVICE,
                 "qty": 1, "pay": "stored", "points": 172, "expires": "2027-11-23"}
        with self.doc.transaction():
            self.entries[eid] = entry


def run(cfg: Config, report: Report) -> None:
    data = datagen.dataset(cfg.debit_size, cfg.out, cfg.log)
    work = cfg.work / NAME
    work.mkdir(parents=True, exist_ok=True)
    plain = PlainSqlite(work / "plain.sqlite3")
    try:
        full = Ledger.open(datagen.working_copy(data, work / "full"))
        off = Ledger.open(datagen.working_copy(data, work / "off"), synchronous="OFF")
        nolog = Ledger.open(datagen.working_copy(data, work / "nolog"))
        unlogged = nolog.node

        def no_log_record(doc: str, data: bytes) -> Record:
            return Record(unlogged, 0, doc, data)

        nolog._log_own = no_log_record  # type: ignore[method-assign]
        floor = FsyncFloor(work / "fsync.bin")
        crdt = PycrdtAppend()
        times: dict[str, list[float]] = {}
        try:
            pool = member_pool(full, POOL, "debit")
            topups = fund_pool(full, pool)
            fund_pool(off, pool)
            fund_pool(nolog, pool)
            plain.preload(pool, int(datagen.info(data)["entries"]), 10**12)

            def rounds(n: int, variants: dict[str, Callable[[str], object]]) -> None:
                """n rounds of the variants in turn (after a warm-up), each on the next
                pool member; every operation timed on its own."""
                for name in variants:
                    times[name] = []
                for r in range(WARMUP + n):
                    m = pool[r % len(pool)]
                    for name, fn in variants.items():
                        t0 = time.perf_counter_ns()
                        fn(m)
                        if r >= WARMUP:
                            times[name].append((time.perf_counter_ns() - t0) / 1000)

            n = cfg.debit_rounds
            cfg.log(f"debit: {n} rounds ledger / plain SQLite, then {n // 2} rounds ledger / "
                    f"fsync / pycrdt / ledger OFF, on a node with {cfg.debit_size.label}")
            # The target: exactly A B A B ...
            rounds(n, {"ledger": lambda m: full.debit(full.owner, m, service=SERVICE),
                       "plain": lambda m: plain.debit(m, AMOUNT)})
            # What the ledger is made of, side by side with it again.
            rounds(n // 2, {"ledger2": lambda m: full.debit(full.owner, m, service=SERVICE),
                            "floor": lambda m: floor.write(),
                            "pycrdt": crdt.append,
                            "off": lambda m: off.debit(off.owner, m, service=SERVICE)})
            cfg.log(f"debit: {n // 2} rounds ledger (+ head signature) / ledger without its "
                    "log record")

            def debit_signed(m: str) -> None:
                full.debit(full.owner, m, service=SERVICE)
                t0 = time.perf_counter_ns()
                full.own_head()
                times["sign"].append((time.perf_counter_ns() - t0) / 1000)

            times["sign"] = []
            rounds(n // 2, {"ledger3": debit_signed,
                            "nolog": lambda m: nolog.debit(nolog.owner, m, service=SERVICE)})
            times["sign"] = times["sign"][-len(times["ledger3"]):]  # the warm-up's dropped
            # The debit alone: the head is signed after it (as a session does), not in it.
            times["ledger3"] = [t - s for t, s in zip(times["ledger3"], times["sign"],
                                                      strict=True)]
        finally:
            full.close()
            off.close()
            nolog.close()
            floor.close()
        cfg.log(f"debit: {cfg.blocks} blocks of 1 and {TILLS} tills at once, node / plain SQLite")
        tills = _tills(cfg, data, work, pool, plain)
    finally:
        plain.close()
    hist = cfg.debit_size.label
    led = report.figure(NAME, "ledger debit, synchronous=FULL", "µs", times["ledger"],
                        f"node with {hist}; rounds: ledger, plain")
    pla = report.figure(NAME, "plain SQLite debit, synchronous=FULL", "µs", times["plain"],
                        "one table, WAL, balance check + insert + commit")
    report.ratio(NAME, "ledger / plain SQLite (median)", led, pla, 1.5,
                 "interleaved A B A B; issue 14: <= 1.5x (goal 1.3x)")
    report.figure(NAME, f"ledger / plain SQLite, per block of {n // cfg.blocks} rounds", "x",
                  block_ratios(times["ledger"], times["plain"], cfg.blocks),
                  "spread of the ratio with the machine's noise")
    report.ratio(NAME, "ledger / plain SQLite (best case)", led, pla,
                 note="min / min: warm caches, no interference", stat="min")
    led2 = report.figure(NAME, "ledger debit, synchronous=FULL (2nd set)", "µs",
                         times["ledger2"], "rounds: ledger, fsync, pycrdt, ledger OFF")
    flo = report.figure(NAME, "fsync floor (100 B in place + fsync)", "µs", times["floor"])
    cr = report.figure(NAME, "pycrdt append, no storage", "µs", times["pycrdt"])
    cpu = report.figure(NAME, "ledger debit, synchronous=OFF", "µs", times["off"],
                        "the same path without waiting for the disk")
    report.figure(NAME, "ledger top-up, synchronous=FULL", "µs", topups,
                  f"{len(topups)} pool members funded before the rounds")
    report.ratio(NAME, "ledger / fsync floor", led2, flo, 5.0, "interleaved A C D E")
    report.ratio(NAME, "ledger / pycrdt append", led2, cr)
    report.ratio(NAME, "ledger FULL / ledger OFF", led2, cpu)
    report.ratio(NAME, "plain SQLite / fsync floor", pla, flo, note="from the two sets")
    led3 = report.figure(NAME, "ledger debit, synchronous=FULL (3rd set)", "µs",
                         times["ledger3"], "rounds: ledger (+ head signed after), ledger "
                         "without log record")
    nol = report.figure(NAME, "ledger debit without its log record", "µs", times["nolog"],
                        "LedgerBase._log_own patched out on that ledger, in this process")
    sig = report.figure(NAME, "head signature after a debit (own_head)", "µs", times["sign"],
                        "ECDSA P-256 over the moved head: once per batch a session sends")
    report.ratio(NAME, "debit with log record / without (median)", led3, nol, 1.05,
                 "issue 12: the log record adds <= 5%")
    report.ratio(NAME, "head signature / debit without log record (median)", sig, nol,
                 note="a session signs once per batch: once per debit at a counter's pace")
    report.limit(NAME, "log record + one head signature, added to a debit",
                 (led3.median - nol.median + sig.median) / nol.median, "x", 0.05,
                 "issue 12: signing and the log record add <= 5% (medians)")
    _report_tills(cfg, report, tills)


def _tills(cfg: Config, data: Path, work: Path, pool: list[str], plain: PlainSqlite
           ) -> dict[str, Any]:
    """Blocks of 1 and TILLS tills debiting at once, through a node and the plain
    baseline in turn. Returns, per variant, every debit's latency (µs) and each
    block's throughput (debits/s)."""
    from benchmarks.network import Chain
    from peer.node import Config as NodeConfig
    from peer.node import Node

    chain = Chain(work / "tills", data)
    node = Node(NodeConfig(chain.hub("node"), listen=("127.0.0.1", 0),
                           api=("127.0.0.1", 0), peers=[], mdns=False))
    conns = [plain] + [PlainSqlite(work / "plain.sqlite3", create=False)
                       for _ in range(TILLS - 1)]
    shares = [pool[i::TILLS] for i in range(TILLS)]  # each till serves its own customers
    out: dict[str, Any] = {}

    def record(variant: str, lat: list[float], seconds: float) -> None:
        v = out.setdefault(variant, {"us": [], "per_s": []})
        v["us"] += lat
        v["per_s"].append(len(lat) / seconds)

    async def node_block(tills: int) -> None:
        led = node.ledger
        lat: list[float] = []

        async def till(members: list[str]) -> None:
            for i in range(cfg.tills_rounds):
                t0 = time.perf_counter_ns()
                await asyncio.sleep(0)  # the request arrives: those queued before go first
                await node.perform(partial(led.debit, led.owner, members[i % len(members)],
                                           service=SERVICE))
                lat.append((time.perf_counter_ns() - t0) / 1000)

        t0 = time.perf_counter()
        await asyncio.gather(*(till(shares[i]) for i in range(tills)))
        record(f"node, {tills}", lat, time.perf_counter() - t0)

    def plain_block(tills: int) -> None:
        lat: list[float] = []
        start = threading.Barrier(tills + 1)

        def till(conn: PlainSqlite, members: list[str]) -> None:
            start.wait()
            for i in range(cfg.tills_rounds):
                t0 = time.perf_counter_ns()
                conn.debit(members[i % len(members)], AMOUNT)
                lat.append((time.perf_counter_ns() - t0) / 1000)

        threads = [threading.Thread(target=till, args=(conns[i], shares[i]))
                   for i in range(tills)]
        for t in threads:
            t.start()
        start.wait()
        t0 = time.perf_counter()
        for t in threads:
            t.join()
        record(f"plain, {tills}", lat, time.perf_counter() - t0)

    async def main() -> None:
        await node.start()
        try:
            led = node.ledger
            for m in pool:
                await node.perform(partial(led.topup, led.owner, m, POOL_TOPUP))
            await node_block(1)  # warm-up, not kept
            await asyncio.to_thread(plain_block, 1)
            out.clear()
            for _ in range(cfg.blocks):
                await node_block(1)
                await asyncio.to_thread(plain_block, 1)
                await node_block(TILLS)
                await asyncio.to_thread(plain_block, TILLS)
        finally:
            await node.stop()

    try:
        asyncio.run(main())
    finally:
        for c in conns[1:]:
            c.close()
    return out


def _report_tills(cfg: Config, report: Report, tills: dict[str, Any]) -> None:
    figs = {}
    for n in (1, TILLS):
        who = "1 till" if n == 1 else f"{n} tills at once"
        lat = {k: report.figure(NAME, f"{who}: {label} debit, latency", "µs",
                                tills[f"{k}, {n}"]["us"], note)
               for k, label, note in (
                   ("node", "node", "Node.perform(Ledger.debit) on the node's loop, "
                    "queueing included"),
                   ("plain", "plain SQLite", f"{n} connection(s), one thread each"))}
        thr = {k: report.figure(NAME, f"{who}: {label} throughput", "debits/s",
                                tills[f"{k}, {n}"]["per_s"],
                                f"all tills together, per block of {n * cfg.tills_rounds}")
               for k, label in (("node", "node"), ("plain", "plain SQLite"))}
        report.ratio(NAME, f"{who}: node / plain SQLite latency (median)", lat["node"],
                     lat["plain"], 1.8 if n == 1 else None,
                     note="blocks interleaved" + ("; issue 14: <= 1.8x" if n == 1 else ""))
        report.ratio(NAME, f"{who}: plain SQLite / node throughput (median)", thr["plain"],
                     thr["node"], note="above 1: the baseline serves more debits per second")
        figs[n] = thr
    report.ratio(NAME, f"node throughput, {TILLS} tills / 1 till", figs[TILLS]["node"],
                 figs[1]["node"], note="writes are serialised on the loop: about 1")
