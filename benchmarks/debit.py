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

Interleaving the variants (A B A B ..., A C D E A C D E ...) makes slow drift of the
machine (other tenants, CPU frequency, the disk's cache) fall on all of them alike,
so their ratio means something on a noisy two-core box.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pycrdt import Doc, Map

from benchmarks import datagen
from benchmarks.common import SERVICE, Config, block_ratios, fund_pool, member_pool
from benchmarks.report import Report
from crdtledger.hlc import HybridClock, decode, wall_ms
from crdtledger.ledger import Ledger

NAME = "debit"
WARMUP = 30
POOL = 400  # members debited in turn; each is funded for well over its share


class PlainSqlite:
    """The baseline: a durable debit in one SQLite table, nothing else."""

    def __init__(self, path: Path, synchronous: str = "FULL") -> None:
        path.unlink(missing_ok=True)
        self.conn = sqlite3.connect(path, isolation_level=None)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute(f"PRAGMA synchronous={synchronous}")
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
    full = Ledger.open(datagen.working_copy(data, work / "full"))
    off = Ledger.open(datagen.working_copy(data, work / "off"), synchronous="OFF")
    plain = PlainSqlite(work / "plain.sqlite3")
    floor = FsyncFloor(work / "fsync.bin")
    crdt = PycrdtAppend()
    times: dict[str, list[float]] = {}
    try:
        pool = member_pool(full, POOL, "debit")
        topups = fund_pool(full, pool)
        fund_pool(off, pool)
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
                   "plain": lambda m: plain.debit(m, 11520)})
        # What the ledger is made of, side by side with it again.
        rounds(n // 2, {"ledger2": lambda m: full.debit(full.owner, m, service=SERVICE),
                        "floor": lambda m: floor.write(),
                        "pycrdt": crdt.append,
                        "off": lambda m: off.debit(off.owner, m, service=SERVICE)})
    finally:
        full.close()
        off.close()
        plain.close()
        floor.close()
    hist = cfg.debit_size.label
    led = report.figure(NAME, "ledger debit, synchronous=FULL", "µs", times["ledger"],
                        f"node with {hist}; rounds: ledger, plain")
    pla = report.figure(NAME, "plain SQLite debit, synchronous=FULL", "µs", times["plain"],
                        "one table, WAL, balance check + insert + commit")
    report.ratio(NAME, "ledger / plain SQLite (median)", led, pla, 2.0,
                 "interleaved A B A B")
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
    report.ratio(NAME, "ledger / fsync floor", led2, flo)
    report.ratio(NAME, "ledger / pycrdt append", led2, cr)
    report.ratio(NAME, "ledger FULL / ledger OFF", led2, cpu)
    report.ratio(NAME, "plain SQLite / fsync floor", pla, flo, note="from the two sets")
