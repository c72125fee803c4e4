"""Opening a node in a fresh process: time to ready, resident memory, against size.

For each size of the ladder (10k, 100k and 1M entries; the largest with 100k
members, the target's) and each run, a new Python process (`python -m
benchmarks.scale DIR MEMBER`), so memory is that of a node that has just started,
not of the benchmark. It reports:

- `open`: from the start of `Ledger.open` until it returns;
- `ready`: until it has also answered `state_vectors()` (what the node daemon asks
  before it talks to any peer) and read a member's balance (what a counter shows
  first): the target (at most 3 s);
- resident memory when ready: VmRSS and the peak VmHWM from /proc/self/status
  (the target: at most 600 MB), next to the interpreter's own before `open`;
- the FIRST debit after open, which loads the current month's ledger document (its
  snapshot plus the live log tail) into pycrdt: its time and the peak memory after
  it; then a second debit, for the steady state;
- resident memory after a hundred more debits: a working node.

The largest size gets every run (warm and cold) and the targets; smaller ones a few
warm runs, the points of the curve (`benchmarks.plot`). Warm runs find the database
in the OS page cache (a node restarting); cold runs first ask the kernel to drop
the file's cached pages (`posix_fadvise DONTNEED`, after an fsync so none is
dirty), which is what a node sees after a reboot.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks import datagen
from benchmarks.common import POOL_TOPUP, SERVICE, Config, status_kb
from benchmarks.report import Figure, Report
from crdtledger import audit, views
from crdtledger.ledger import Ledger
from crdtledger.storage import DB_FILE

NAME = "scale"
STEADY_DEBITS = 100  # after the first two, before resident memory is read again


def _child(data_dir: str, member: str) -> dict[str, Any]:
    out: dict[str, Any] = {"rss_before_open_mb": status_kb("VmRSS") / 1024}
    t0 = time.perf_counter()
    ledger = Ledger.open(data_dir)
    out["open_s"] = time.perf_counter() - t0
    ledger.state_vectors()
    balance = ledger.balance(member)
    out["ready_s"] = time.perf_counter() - t0
    out["ready_epoch"] = time.time()
    if balance["cash"] <= 0:
        raise RuntimeError(f"member {member} has no cash: {balance}")
    out["rss_ready_mb"] = status_kb("VmRSS") / 1024
    out["hwm_ready_mb"] = status_kb("VmHWM") / 1024
    t1 = time.perf_counter()
    ledger.debit(ledger.owner, member, service=SERVICE)
    out["first_debit_s"] = time.perf_counter() - t1
    out["rss_first_debit_mb"] = status_kb("VmRSS") / 1024
    out["hwm_first_debit_mb"] = status_kb("VmHWM") / 1024
    t2 = time.perf_counter()
    ledger.debit(ledger.owner, member, service=SERVICE)
    out["second_debit_s"] = time.perf_counter() - t2
    # A working node: the month loaded, a stretch of debits done.
    for _ in range(STEADY_DEBITS * 20_000 // POOL_TOPUP):  # each below the approval limit
        ledger.topup(ledger.owner, member, POOL_TOPUP)
    for _ in range(STEADY_DEBITS):
        ledger.debit(ledger.owner, member, service=SERVICE)
    out["rss_steady_mb"] = status_kb("VmRSS") / 1024
    out["hwm_steady_mb"] = status_kb("VmHWM") / 1024
    ledger.close()
    return out


def _drop_cache(data_dir: Path) -> None:
    for name in (DB_FILE, DB_FILE + "-wal", DB_FILE + "-shm"):
        path = data_dir / name
        if not path.exists():
            continue
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def _members(ledger: Ledger, n: int) -> list[str]:
    """Members with enough of their value held at the node under test to be served
    there without asking a peer, so the first debit is the node's own work."""
    members = views.funded_members(ledger, datagen.BENCH_NODE, at_least=40000, limit=n)
    if len(members) < n:
        raise RuntimeError(f"only {len(members)} members are funded at {datagen.BENCH_NODE}")
    return members


def _current_month(ledger: Ledger) -> dict[str, Any]:
    """What the first debit has to load: the current month's ledger document."""
    name = max(n for n in ledger.storage.doc_names() if n.startswith("ledger/"))
    month = name.split("/")[1]
    entries = views.count_entries(ledger, since_day=month + "-01")
    doc = audit.document_stats(ledger, name)
    return {"document": name, "entries": entries,
            "snapshot_kb": round(doc["snapshot_bytes"] / 1024),
            "log_tail_updates": doc["log_updates"], "log_tail_kb": round(doc["log_bytes"] / 1024)}


def run(cfg: Config, report: Report) -> None:
    series = []
    for i, size in enumerate(cfg.sizes):
        largest = i == len(cfg.sizes) - 1
        # The largest size is the target's: all its runs, warm and cold, in full detail.
        # Smaller ones are points on the curve of memory against size.
        warm, cold = (cfg.warm_opens, cfg.cold_opens) if largest else (
            max(1, cfg.warm_opens // 3), 0)
        series.append(_size(cfg, report, size, warm, cold, largest))
    report.note(NAME, series=series)


def _size(cfg: Config, report: Report, size: datagen.Size, warm: int, cold: int,
          largest: bool) -> dict[str, Any]:
    data = datagen.dataset(size, cfg.out, cfg.log)
    work = datagen.working_copy(data, cfg.work / NAME)
    runs = [("warm", i) for i in range(warm)] + [("cold", i) for i in range(cold)]
    # Read before any child starts, and closed: each child opens the node alone.
    with Ledger.open(work) as ledger:
        members = _members(ledger, len(runs) + 1)
        month = _current_month(ledger)
    results: dict[str, list[dict[str, Any]]] = {"warm": [], "cold": []}
    cfg.log(f"scale: opening a node with {size.label} in a fresh process, "
            f"{warm} warm + {cold} cold")
    # One untimed start first, so the first warm run finds the file cached too.
    _spawn(work, members[-1])
    for (kind, _), member in zip(runs, members, strict=False):
        if kind == "cold":
            _drop_cache(work)
        results[kind].append(_spawn(work, member))
    short = datagen._short(size.entries)
    for kind in ("warm", "cold"):
        rs = results[kind]
        if not rs:
            continue

        def col(key: str, rs: list[dict[str, Any]] = rs) -> list[float]:
            return [float(r[key]) for r in rs]

        def fig(name: str, unit: str, samples: list[float], note: str = "",
                kind: str = kind) -> Figure:
            return report.figure(NAME, f"{short} entries, {kind}: {name}", unit, samples, note)

        ready = fig("open -> ready", "ms", [x * 1000 for x in col("ready_s")], size.label)
        if largest:
            fig("Ledger.open alone", "ms", [x * 1000 for x in col("open_s")])
            fig("process start -> ready", "ms", [x * 1000 for x in col("process_ready_s")],
                "interpreter start and imports included")
        hwm = fig("peak RSS when ready", "MB", col("hwm_ready_mb"),
                  f"interpreter alone: {min(col('rss_before_open_mb')):.0f} MB")
        first = fig("first debit after open", "ms", [x * 1000 for x in col("first_debit_s")],
                    f"loads {month['document']}: {month['entries']} entries")
        fig("peak RSS after first debit", "MB", col("hwm_first_debit_mb"))
        if largest:
            fig("second debit", "ms", [x * 1000 for x in col("second_debit_s")])
        fig(f"RSS after {STEADY_DEBITS + 2} debits", "MB", col("rss_steady_mb"),
                     f"peak {max(col('hwm_steady_mb')):.0f} MB")
        if largest:
            report.limit(NAME, f"{kind}: open -> ready (worst)", max(ready.samples), "ms",
                         3000.0, size.label)
            report.limit(NAME, f"{kind}: peak RSS when ready (worst)", max(hwm.samples),
                         "MB", 600.0)
            report.limit(NAME, f"{kind}: peak RSS after {STEADY_DEBITS + 2} debits (worst)",
                         max(col("hwm_steady_mb")), "MB", 600.0,
                         "not in the target (open only); reported for honesty")
        report.note(NAME, **{f"{short}_{kind}_first_debit_ms_worst": max(first.samples)})
    w = results["warm"]
    point = {"entries": size.entries, "members": size.members,
             "ready_ms": statistics.median(r["ready_s"] * 1000 for r in w),
             "first_debit_ms": statistics.median(r["first_debit_s"] * 1000 for r in w),
             **{k: max(float(r[k]) for r in w) for k in (
                 "hwm_ready_mb", "hwm_first_debit_mb", "rss_steady_mb", "hwm_steady_mb")},
             "current_month": month, "data_set": datagen.info(data), "runs": results}
    return point


def _spawn(data_dir: Path, member: str) -> dict[str, Any]:
    spawned = time.time()
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.scale", str(data_dir), member],
        capture_output=True, text=True, check=False, cwd=Path(__file__).resolve().parent.parent)
    if proc.returncode != 0:
        raise RuntimeError(f"scale child failed ({proc.returncode}): {proc.stderr[-2000:]}")
    out = dict(json.loads(proc.stdout.strip().splitlines()[-1]))
    out["process_ready_s"] = out.pop("ready_epoch") - spawned
    return out


if __name__ == "__main__":
    print(json.dumps(_child(*sys.argv[1:3])))
