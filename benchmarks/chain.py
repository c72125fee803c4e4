"""What a chain's history costs a node, and a brand-new branch that joins it (issue 14).

A chain of 300 branches writes some 30M entries in three years, and every node holds
all of them. For each size of a ladder of data sets (`benchmarks.datagen`: ten
entries per member, over 24 months) this measures, then draws a line through the
two largest sizes (the marginal cost of more history) and reads it at 30M entries
and 3M members:

- the store on disk of one node (the SQLite file after a checkpoint: what a shop
  PC's disk holds);
- resident memory of a node in a fresh process (`python -m benchmarks.chain hour
  DIR`): when it has opened and is ready (as `benchmarks.scale` defines ready), and
  after an hour of a branch's traffic done back to back: top-ups and debits of a
  pool of members drawn from the whole member table, as many operations as the
  whole chain writes in a busy hour (`HOUR_OPS`: every node receives every entry;
  done here as local durable operations, which cost more than applying a peer's);
- a debit's cost (median of that hour's debits) against the smallest size's;
- the join of a brand-new branch: a node with an empty store (enrolled in the data
  set's chain, so its certificate is good) dials a node holding the data set, over
  mutual TLS between two real node processes (`benchmarks.network`), catches up
  everything (members, rules, ledger), and then sells: a debit of a member whose
  value sits at the other branch, so the new node must first fetch rights from it.
  From the dial to that sale being durable.

The verdict: the projected join at 30M entries against 10 minutes, above which a
joining branch would need period closing (a month end every branch can verify, to
start from instead of the whole history).
"""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks import datagen, network
from benchmarks.common import POOL_TOPUP, SERVICE, Config, member_pool, status_kb
from benchmarks.datagen import Size
from benchmarks.report import Report
from crdtledger.ledger import Ledger
from crdtledger.storage import DB_FILE

NAME = "chain"
# 300 branches x 3 years: entries, and members at the data sets' ten entries each.
CHAIN_ENTRIES = 30_000_000
CHAIN_MEMBERS = 3_000_000
JOIN_LIMIT_S = 600.0  # the bar for designing period closing now
# A busy hour of the whole chain: 30M entries / (3 years x 365 days x 12 open hours)
# = 2,283 an hour on average; every node receives them all.
HOUR_OPS = 2_500
POOL = 250  # members served in that hour, each topped up once
JOIN_TIMEOUT_S = 3600.0


def sizes(cfg: Config) -> tuple[Size, ...]:
    """The ladder: the full run's history sizes (up to 1M entries / 100k members);
    `--chain-size` replaces it."""
    if cfg.chain_sizes:
        return cfg.chain_sizes
    if cfg.scale == "quick":  # CI's smoke test: seconds
        return Size(100, 1_000), Size(1_000, 10_000)
    return cfg.sizes


def hour_ops(cfg: Config) -> int:
    return {"quick": 200, "tiny": 40}.get(cfg.scale, HOUR_OPS)


def run(cfg: Config, report: Report) -> None:
    points = [_size(cfg, report, size) for size in sizes(cfg)]
    figs = [report.figure(NAME, f"{p['label']}: debit", "µs", p["debit_samples"],
                          "an hour's debits, durable") for p in points]
    for p, fig in zip(points[1:], figs[1:], strict=True):
        report.ratio(NAME, f"debit at {p['label']} / at {points[0]['label']}", fig, figs[0],
                     note="medians of an hour's debits each")
    _project(cfg, report, points)
    report.note(NAME, series=[{k: v for k, v in p.items() if k != "debit_samples"}
                              for p in points])


def _size(cfg: Config, report: Report, size: Size) -> dict[str, Any]:
    data = datagen.dataset(size, cfg.out, cfg.log)
    label = datagen._short(size.entries)
    work = cfg.work / NAME / label
    hub_dir = datagen.working_copy(data, work / "hour")
    db_mb = (hub_dir / DB_FILE).stat().st_size / 2**20
    report.figure(NAME, f"{label}: store on disk", "MB", [db_mb], size.label)
    cfg.log(f"chain: {size.label}: a node's hour of {hour_ops(cfg)} operations")
    hour = _spawn(hub_dir, hour_ops(cfg))
    report.figure(NAME, f"{label}: RSS when opened and ready", "MB", [hour["rss_ready_mb"]],
                  f"open -> ready {hour['ready_s'] * 1000:.0f} ms")
    report.figure(NAME, f"{label}: RSS after an hour's traffic", "MB", [hour["rss_hour_mb"]],
                  f"{hour['ops']} operations in {hour['hour_s']:.1f} s; "
                  f"peak {hour['hwm_hour_mb']:.0f} MB")
    cfg.log(f"chain: {size.label}: a brand-new branch joins and sells")
    join = _join(work, data)
    report.figure(NAME, f"{label}: join by sync file, export + import", "s", [join["file_s"]],
                  f"everything a new branch lacks: {join['file_mb']:.0f} MB")
    if "network_failed" in join:
        report.note(NAME, **{f"{label}_network_join": join["network_failed"]})
        cfg.log(f"chain: {size.label}: the network join {join['network_failed']}")
    else:
        report.figure(NAME, f"{label}: join, dial -> holds everything", "s",
                      [join["caught_up_s"]], "an empty node over mutual TLS, two node processes")
        if "sale_failed" in join:
            report.note(NAME, **{f"{label}_first_sale": join["sale_failed"]})
        else:
            report.figure(NAME, f"{label}: join, dial -> first sale durable", "s",
                          [join["sold_s"]], "the sale fetches the member's rights from the "
                          "node joined")
        report.figure(NAME, f"{label}: join, CPU of the joining node", "s", [join["cpu_s"]])
        report.figure(NAME, f"{label}: join, peak RSS of the node joined", "MB",
                      [join["hub_peak_mb"]], f"{join['hub_rss_mb']:.0f} MB when ready")
        report.figure(NAME, f"{label}: join, peak RSS of the joining node", "MB",
                      [join["new_peak_mb"]], f"{join['new_rss_mb']:.0f} MB once caught up")
    return {"label": label, "entries": size.entries, "members": size.members,
            "db_mb": db_mb, "rss_ready_mb": hour["rss_ready_mb"],
            "rss_hour_mb": hour["rss_hour_mb"], "hwm_hour_mb": hour["hwm_hour_mb"],
            "debit_us": statistics.median(hour["debit_us"]), "debit_samples": hour["debit_us"],
            "join_s": join["file_s"], "network_join_s": join.get("sold_s"), "join": join,
            "hour": {
                k: v for k, v in hour.items() if k != "debit_us"},
            "data_set": datagen.info(data)}


def _join(work: Path, data: Path, *, by_file: bool = True) -> dict[str, Any]:
    with network._chain(work / "join", data) as chain:
        hub_dir = chain.hub("hub")
        with Ledger.open(hub_dir) as led:
            # The new branch's first customers: one tops up there, one has value at B1.
            here, there = member_pool(led, 2, "chain-join")
            led.topup(led.owner, there, POOL_TOPUP)
        local, remote = [here], [there]
        new_dir = chain.empty("new", network.JOINERS[0])
        out: dict[str, Any] = {}
        if by_file:
            # The offline way first (the hub's copy is not yet running): a sync file of
            # everything the new branch lacks, exported at the hub and imported there.
            file = network._sync_file(data, new_dir, chain.work / "file", 1)[0]
            out = {"file_s": file["export_s"] + file["import_s"],
                   "file_mb": file["bytes"] / 1e6, "file": file}
        hub = chain.start(hub_dir)
        new = chain.start(new_dir)
        states = hub.call("states")["states"]
        before = hub.call("memory")
        t0 = time.monotonic()
        try:  # waited for as long as the bar: past it, the verdict is known
            r = new.call("catchup", timeout=JOIN_LIMIT_S + 60, url=hub.url, states=states,
                         wait_s=JOIN_LIMIT_S)
        except RuntimeError as e:
            out["network_failed"] = f"not caught up in {JOIN_LIMIT_S:.0f} s: {str(e)[:300]}"
            return out
        # What answering costs the node joined: its peak resident memory over the join
        # against when it was ready (the answer is read a slice at a time as it goes out).
        peak = hub.call("memory")["peak_mb"]
        # ... and holding it: the joining node's peak, and what it keeps once caught up.
        held = new.call("memory")
        # Loop stalls of either node during the join, the longest first: one held past
        # half the heartbeat closes the link, and the answer comes again.
        stalls = {name: sorted(({"ms": round(s["ms"]), "where": s["where"]}
                                for s in proc.call("stalls")["stalls"]),
                               key=lambda s: -s["ms"])[:3]
                  for name, proc in (("new", new), ("hub", hub))}
        joined = {**out, "caught_up_s": r["done_ns"] / 1e9, "cpu_s": r["cpu_total_s"],
                  "hub_rss_mb": before["rss_mb"], "hub_peak_mb": peak, "stalls": stalls,
                  "new_peak_mb": held["peak_mb"], "new_rss_mb": held["rss_mb"],
                  "same_link": r["same_link"], "payload_mb": r["bytes"]["payload_in"] / 1e6}
        # A customer tops up at the new branch and is served; then one whose value
        # sits at the other branch, fetched for the sale (`cmd_rights`).
        new.call("fund", members=local)
        try:
            sale = new.call("rights", local=local, remote=remote, gap=0.0)
        except RuntimeError as e:
            return {**joined, "sale_failed": str(e).splitlines()[0][:300]}
        return {**joined, "sold_s": time.monotonic() - t0,
                "sale_ms": sale["remote_ns"][0] / 1e6, "fetched": sale["fetched"]}


def _project(cfg: Config, report: Report, points: list[dict[str, Any]]) -> None:
    """Lines against entries (members grow with them), read at 30M."""
    xs = [float(p["entries"]) for p in points]
    for key, what, unit in (("db_mb", "store on disk", "MB"),
                            ("rss_ready_mb", "RSS when opened", "MB"),
                            ("rss_hour_mb", "RSS after an hour", "MB"),
                            ("debit_us", "debit", "µs"),
                            ("join_s", "join by sync file", "s")):
        ys = [float(p[key]) for p in points]
        slope, icept = _fit(xs, ys)
        at = icept + slope * CHAIN_ENTRIES
        fig = report.figure(NAME, f"30M entries (projected): {what}", unit, [at],
                            f"line through {points[-2]['label'] if len(points) > 1 else 0} "
                            f"and {points[-1]['label']}: {slope * 1e6:.3g} {unit} per 1M "
                            f"entries + {icept:.3g}")
        if key == "join_s":
            report.limit(NAME, "join of a new branch at 30M entries (projected)", fig.median,
                         "s", JOIN_LIMIT_S, "above it: period closing is needed")
        if key == "db_mb":
            report.note(NAME, projected_db_gb=round(at / 1024, 1))
    report.note(NAME, projection={"entries": CHAIN_ENTRIES, "members": CHAIN_MEMBERS,
                                  "sizes": [p["label"] for p in points]})


def _fit(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Slope and intercept of the line through the two largest sizes: the marginal
    cost of more history, which is what grows to 30M (the small sizes' fixed costs,
    the interpreter's memory, would bend a least-squares line); through the origin
    from a single point. More history never makes any of these cheaper: a line that
    falls between the two sizes is noise (a debit's time at 1k and 10k entries, say),
    read as flat at the larger size, not run on to a negative figure at 30M."""
    if len(xs) == 1:
        return ys[0] / xs[0], 0.0
    slope = max((ys[-1] - ys[-2]) / (xs[-1] - xs[-2]), 0.0)
    return slope, ys[-1] - slope * xs[-1]


def _spawn(data_dir: Path, ops: int) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.chain", "hour", str(data_dir), str(ops)],
        capture_output=True, text=True, check=False, cwd=network.ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"chain child failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def _hour(data_dir: str, ops: int) -> dict[str, Any]:
    """In a fresh process: open, ready, then an hour's operations back to back."""
    t0 = time.perf_counter()
    ledger = Ledger.open(data_dir)
    ledger.state_vectors()
    pool = member_pool(ledger, min(POOL, ops // 4), "chain-hour")
    ledger.balance(pool[0])
    out: dict[str, Any] = {"ready_s": time.perf_counter() - t0,
                           "rss_ready_mb": status_kb("VmRSS") / 1024,
                           "hwm_ready_mb": status_kb("VmHWM") / 1024}
    debits: list[float] = []
    t1 = time.perf_counter()
    for m in pool:
        ledger.topup(ledger.owner, m, POOL_TOPUP)
    for i in range(ops - len(pool)):
        t = time.perf_counter_ns()
        ledger.debit(ledger.owner, pool[i % len(pool)], service=SERVICE)
        debits.append((time.perf_counter_ns() - t) / 1000)
    out.update(hour_s=time.perf_counter() - t1, ops=ops, debit_us=debits[1:],
               first_debit_us=debits[0], rss_hour_mb=status_kb("VmRSS") / 1024,
               hwm_hour_mb=status_kb("VmHWM") / 1024)
    ledger.close()
    return out


def profile(data: Path, work: Path, top: int = 30) -> str:
    """cProfile of what a join spends its time on, in one process: the node joined
    exports what an empty new branch lacks (everything) as a sync file, and the new
    branch imports it: the same checks, apply and projection as the catch-up, without
    the network. `python -m benchmarks.chain profile DATA_SET WORK_DIR`."""
    import cProfile
    import io
    import pstats

    from crdtledger.syncfile import export_file, import_file
    from peer.chain import enrol

    shutil.rmtree(work, ignore_errors=True)
    chain_dir = work / "chain"
    shutil.copytree(data / datagen.CHAIN_DIR, chain_dir)
    hub_dir = datagen.working_copy(data, work / "hub")
    new_dir = work / "new"
    Ledger.create(new_dir, network.JOINERS[0], datagen.CHAIN, datagen.TIMEZONE)
    enrol(chain_dir, new_dir, network.JOINERS[0])
    path = work / "join.sync"
    with Ledger.open(hub_dir) as hub:
        hub.remember_peer(network.JOINERS[0], {})
        export_file(hub, path, network.JOINERS[0])
    prof = cProfile.Profile()
    with Ledger.open(new_dir) as new:
        t0 = time.perf_counter()
        prof.runcall(import_file, new, path)
        took = time.perf_counter() - t0
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("cumulative").print_stats(top)
    shutil.rmtree(work, ignore_errors=True)
    return f"import of {path.name}: {took:.1f} s under cProfile\n{out.getvalue()}"


if __name__ == "__main__":
    if sys.argv[1] == "profile":
        print(profile(Path(sys.argv[2]), Path(sys.argv[3])))
    elif sys.argv[1] == "join":  # the network join alone: `join DATA_SET WORK_DIR [WAIT_S]`
        if len(sys.argv) > 4:  # a loaded machine's join, measured past the bar
            JOIN_LIMIT_S = float(sys.argv[4])
        print(json.dumps(_join(Path(sys.argv[3]), Path(sys.argv[2]), by_file=False)))
    else:
        print(json.dumps(_hour(sys.argv[2], int(sys.argv[3]))))
