"""SQLite settings tried on the debit, side by side: each variant is a copy of one data
set opened with extra PRAGMAs after the library's own (storage._connect), and the
variants take turns debiting the same member, so the host's moves fall on all alike.

    .venv/bin/python -m benchmarks.pragmas --sync OFF "" "wal_autocheckpoint=10000"
    .venv/bin/python -m benchmarks.pragmas --entries 100000 --rounds 6000 "" "cache_size=-32000"

A variant is PRAGMAs separated by ";" ("" is the library as it is). Prints, per variant,
the CPU (user + system, so a checkpoint's writes count) and wall time of a debit: mean,
median, p90, p99, and how many took over 2 ms. Not part of `run`: a tool for one
question at a time (benchmarks/README.md, "WAL checkpoints").
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import sqlite3
import statistics
import time
from pathlib import Path
from typing import Any

from benchmarks import datagen
from benchmarks.common import SERVICE, fund_pool, member_pool
from crdtledger import storage
from crdtledger.ledger import Ledger


def _opened(data: Path, dest: Path, sync: str, pragmas: str) -> Ledger:
    library = storage._connect

    def connect(path: Path, synchronous: str, page_size: int | None = None
                ) -> sqlite3.Connection:
        conn = library(path, synchronous, page_size)
        for p in filter(None, (p.strip() for p in pragmas.split(";"))):
            conn.execute(f"PRAGMA {p}")
        return conn

    storage._connect = connect
    try:
        return Ledger.open(datagen.working_copy(data, dest), synchronous=sync)
    finally:
        storage._connect = library


def _line(name: str, cpu: list[float], wall: list[float]) -> str:
    def us(xs: list[float], q: float) -> float:
        return sorted(xs)[min(len(xs) - 1, int(len(xs) * q))] * 1e6

    slow = sum(1 for x in cpu if x > 0.002)
    return (f"{name or '(as the library opens)':40s} cpu mean {statistics.mean(cpu) * 1e6:6.1f}"
            f" median {us(cpu, 0.5):6.1f} p90 {us(cpu, 0.9):6.0f} p99 {us(cpu, 0.99):6.0f}"
            f" >2ms {slow:4d} | wall median {us(wall, 0.5):6.1f} p99 {us(wall, 0.99):7.0f} µs")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.pragmas", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("variants", nargs="+", help='PRAGMAs separated by ";", "" for none')
    ap.add_argument("--sync", default="OFF", choices=["OFF", "NORMAL", "FULL"])
    ap.add_argument("--entries", type=int, default=100_000, help="the data set's size")
    ap.add_argument("--rounds", type=int, default=6000)
    ap.add_argument("--out", type=Path, default=datagen.OUT)
    args = ap.parse_args(argv)
    data = datagen.dataset(datagen.Size(args.entries // 10, args.entries), args.out)
    work = args.out / "work-pragmas"
    shutil.rmtree(work, ignore_errors=True)
    stores = {v: _opened(data, work / f"v{i}", args.sync, v) for i, v in
              enumerate(args.variants)}
    cpu: dict[str, list[float]] = {v: [] for v in stores}
    wall: dict[str, list[float]] = {v: [] for v in stores}
    try:
        pool: list[str] = []
        for led in stores.values():
            pool = member_pool(led, 200, "pragmas")
            fund_pool(led, pool)
            for i in range(200):  # warm: the caches and the log as a running node has them
                led.debit(led.owner, pool[i % len(pool)], service=SERVICE)
        for r in range(args.rounds):
            member = pool[r % len(pool)]
            for v, led in stores.items():
                c, w = time.process_time(), time.perf_counter()
                led.debit(led.owner, member, service=SERVICE)
                cpu[v].append(time.process_time() - c)
                wall[v].append(time.perf_counter() - w)
    finally:
        for led in stores.values():
            with contextlib.suppress(Exception):
                led.close()
        shutil.rmtree(work, ignore_errors=True)
    info: dict[str, Any] = datagen.info(data)
    print(f"{args.rounds} debits each, synchronous={args.sync}, {info['entries']} entries")
    for v in stores:
        print(_line(v, cpu[v], wall[v]))


if __name__ == "__main__":
    main()
