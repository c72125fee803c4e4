"""`python -m sim run|sweep|scenarios`: the simulator's command line."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

from sim.byzantine import ROLES
from sim.config import Config
from sim.faults import SCENARIOS


def _at_least(low: int) -> Any:
    """An argparse type: a whole number of at least `low` (a run of no days, no
    customers or no seeds reported "0 violations", or a false divergence, for a run
    that did nothing; a negative one hung)."""
    def whole(text: str) -> int:
        try:
            n = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
        if n < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, not {n}")
        return n
    return whole


def _number(ok: Callable[[float], bool], wanted: str) -> Callable[[str], float]:
    """An argparse type: a finite number for which `ok` holds."""
    def number(text: str) -> float:
        try:
            x = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not (math.isfinite(x) and ok(x)):
            raise argparse.ArgumentTypeError(f"{wanted}, not {text}")
        return x
    return number


_fraction = _number(lambda x: 0.0 <= x <= 1.0, "a probability is 0 to 1")
# Anti-entropy every 0 s never let the simulated clock move.
_seconds = _number(lambda x: x > 0, "must be more than 0 seconds")


def _day(text: str) -> str:
    try:
        return date.fromisoformat(text).isoformat()
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date like 2026-01-30: {text!r}") from None


def _add_run_options(p: argparse.ArgumentParser, *, sweep: bool) -> None:
    if sweep:
        p.add_argument("--nodes", default="10",
                       help="node count, or a comma-separated list (e.g. 5,10,20)")
        p.add_argument("--scenario", default="all",
                       help="a scenario, a comma-separated list, or 'all'")
    else:
        p.add_argument("--nodes", type=_at_least(2), default=10)
        p.add_argument("--scenario", default="steady", choices=sorted(SCENARIOS))
    p.add_argument("--members", type=_at_least(1), default=None, help="default: 20 per node")
    p.add_argument("--days", type=_at_least(1), default=1)
    p.add_argument("--start", type=_day, default=Config().start,
                   help="local date the run begins, e.g. 2026-01-30 (a month's end)")
    p.add_argument("--topology", default="auto", choices=("auto", "hub", "tree", "mesh"),
                   help="auto: mesh up to 6 nodes, else hub (see README)")
    p.add_argument("--hubs", type=_at_least(1), default=None)
    p.add_argument("--ops-per-node", type=_at_least(1), default=Config().ops_per_node,
                   help="customer arrivals per branch per day")
    p.add_argument("--hot-members", type=_at_least(0), default=Config().hot_members)
    p.add_argument("--ae-interval", type=_seconds, default=Config().ae_interval_s,
                   help="seconds between anti-entropy rounds")
    p.add_argument("--dup", type=_fraction, default=0.0,
                   help="probability a frame reaches the session twice")
    p.add_argument("--reorder", type=_fraction, default=0.0,
                   help="probability two frames of a batch reach the session swapped")
    p.add_argument("--lost-answers", type=_fraction, default=Config().lost_answers,
                   help="probability a till's answer is lost and the request sent again "
                        "under its Idempotency-Key")
    p.add_argument("--max-ops", type=_at_least(0), default=None)
    p.add_argument("--forger", type=_at_least(0), default=0,
                   help="branches that write records breaking the write rules")
    p.add_argument("--equivocator", type=_at_least(0), default=0,
                   help="branches that fork their log (two records at one position)")
    p.add_argument("--restored", type=_at_least(0), default=0,
                   help="branches restored from a backup taken earlier in the run")
    p.add_argument("--closed", type=_at_least(0), default=0,
                   help="shops closing for good: hand over, switched off, revoked")
    p.add_argument("--revoked", type=_at_least(0), default=0,
                   help="branches whose PC is stolen: cut off, revoked while selling on, "
                        "plugged in again")
    p.add_argument("--revoked-live", action="store_true",
                   help="the --revoked PCs stay connected to head office until it revokes "
                        "them: their live link is dropped, a rights request refused")
    p.add_argument("--byzantine", default="",
                   help="the same as a list, e.g. "
                        "forger:1,equivocator:1,restored:1,closed:1,revoked:1")
    p.add_argument("--kill-before-flush", type=_at_least(0), default=0,
                   help="times a day a node is killed after a till's write was acknowledged, "
                        "before the frames it queued are flushed")
    p.add_argument("--drop-faults", default="", help="fault indexes to switch off (1,3)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--plot", type=Path, default=None, help="write PNG charts and a report")
    p.add_argument("--progress", action="store_true",
                   help="progress on stderr even when it is not a terminal")
    p.add_argument("--no-shrink", action="store_true",
                   help="on a violation, do not search for a shorter reproduction")


def _config(a: argparse.Namespace, *, nodes: int, scenario: str, seed: int) -> Config:
    try:
        mask = frozenset(int(x) for x in a.drop_faults.split(",") if x.strip())
    except ValueError:
        raise SystemExit(f"--drop-faults {a.drop_faults}: fault indexes are whole numbers, "
                         "e.g. 1,3") from None
    byz = {role: getattr(a, role) for role in ROLES}
    for item in (x.strip() for x in a.byzantine.split(",") if x.strip()):
        role, _, count = item.partition(":")
        if role not in byz:
            raise SystemExit(f"unknown Byzantine role {role!r}: {', '.join(ROLES)}")
        if not (count or "1").isdigit():
            raise SystemExit(f"--byzantine {item}: the count must be a whole number")
        byz[role] = int(count or "1")
    if any(n < 0 for n in byz.values()):
        raise SystemExit(f"a count of branches with a role cannot be negative: {byz}")
    return Config(nodes=nodes, members=a.members, days=a.days, start=a.start, seed=seed,
                  scenario=scenario,
                  topology=a.topology, hubs=a.hubs, ops_per_node=a.ops_per_node,
                  hot_members=a.hot_members, ae_interval_s=a.ae_interval,
                  dup=a.dup, reorder=a.reorder, lost_answers=a.lost_answers,
                  max_ops=a.max_ops, fault_mask=mask,
                  kill_before_flush=a.kill_before_flush, revoked_live=a.revoked_live,
                  **byz)


def _human(result: dict[str, Any]) -> str:
    r = result
    conv = r["convergence"]
    rd = r["refused_debits"]
    rt = r["rights_transfer"]
    lines = [
        f"seed {r['seed']}  scenario {r['scenario']}  {r['nodes']} nodes ({r['topology']}, "
        f"{r['hubs']} hubs)  {r['days']} day(s)",
        f"ops {r['ops']}  events {r['events']}  wall {r['wall_seconds']} s",
        f"violations: {r['violations']}" + (f"  ({r['violation']['kind']}: "
                                            f"{r['violation']['message']})"
                                            if r["violation"] else ""),
        f"converged: {str(r['converged']).lower()}",
        f"convergence after heals: seconds {conv['seconds']}  rounds {conv['rounds']}"
        f"  (interrupted {conv['interrupted']}); from the first reconnection: rounds "
        f"{conv['rounds_after_reconnect']}",
        "refused debits: connected {c[refused_rights]}+{c[refused_funds]}+{c[refused_other]}"
        " of {c[debits]} ({rate:.3%} for rights); partitioned {p[refused_rights]}+"
        "{p[refused_funds]}+{p[refused_other]} of {p[debits]}".format(
            c=rd["connected"], p=rd["partitioned"],
            rate=rd["connected"]["refused_rights_rate"]),
        f"rights transfers: {rt['fetches_ok']} fetched, {rt['fetches_failed']} failed, "
        f"latency ms p50 {rt['latency_ms']['p50']} p99 {rt['latency_ms']['p99']}; "
        f"entries deferred for their funding {r['deferred_entries']}",
        "traffic per op: " + ", ".join(f"{k} {v['messages_per_op']} msgs {v['bytes_per_op']} B"
                                       for k, v in r["traffic"].items()),
        f"trace_digest: {r['trace_digest']}",
    ]
    b = r.get("byzantine")
    if b is not None:
        lines.append(f"byzantine: {b['nodes']}; forged {len(b['forged'])}, forks "
                     f"{len(b['forks'])}, restores {len(b['restores'])}, closings "
                     f"{sum(c['revoked_at_s'] is not None for c in b['closings'])} of "
                     f"{len(b['closings'])} revoked; faults detected "
                     f"per honest node {b.get('faults_detected')}; records refused "
                     f"{b.get('records_refused')}; lost to restore {b.get('lost_to_restore')}")
    return "\n".join(lines)


def cmd_run(a: argparse.Namespace) -> int:
    from sim.shrink import report_violation
    from sim.world import run

    cfg = _config(a, nodes=a.nodes, scenario=a.scenario, seed=a.seed)
    cfg = cfg.with_(progress=a.progress or (sys.stderr.isatty() and not a.json))
    _plot_dir(a.plot)
    try:
        result, world = run(cfg)
    except ValueError as e:  # the run as asked cannot be built (a run's own faults are
        raise SystemExit(f"python -m sim run: {e}") from None  # violations, not raised)
    if result["violations"]:
        report_violation(cfg, result, world, shrink=not a.no_shrink, out=sys.stderr)
    if a.plot is not None:
        from sim.report import write_run_report

        write_run_report(a.plot, result, world)
    print(json.dumps(result, indent=2, ensure_ascii=False) if a.json else _human(result))
    return 1 if result["violations"] else 0


def cmd_sweep(a: argparse.Namespace) -> int:
    try:
        nodes = [int(x) for x in str(a.nodes).split(",")]
    except ValueError:
        raise SystemExit(f"--nodes {a.nodes}: node counts are whole numbers, e.g. 5,10,20"
                         ) from None
    if any(n < 2 for n in nodes):
        raise SystemExit(f"--nodes {a.nodes}: a chain has at least 2 nodes")
    _plot_dir(a.plot)
    scenarios = sorted(SCENARIOS) if a.scenario == "all" else a.scenario.split(",")
    for s in scenarios:
        if s not in SCENARIOS:
            raise SystemExit(f"unknown scenario {s!r}; one of {', '.join(SCENARIOS)}")
    if a.jobs < 1:
        raise SystemExit("--jobs must be at least 1")
    runs = [(n, s, seed) for n in nodes for s in scenarios
            for seed in range(a.first_seed, a.first_seed + a.seeds)]
    results: list[dict[str, Any]] = []
    began = time.monotonic()
    bad: list[dict[str, Any]] = []
    configs = [_config(a, nodes=n, scenario=s, seed=seed) for n, s, seed in runs]
    try:
        _sweep(a, runs, configs, results, bad, began)
    except ValueError as e:  # a run as asked cannot be built (as `run` says it)
        raise SystemExit(f"python -m sim sweep: {e}") from None
    summary = _sweep_summary(results)
    if a.plot is not None:
        from sim.report import write_sweep_report

        write_sweep_report(a.plot, results, summary)
    if a.json:
        print(json.dumps({"summary": summary, "runs": results}, indent=2, ensure_ascii=False))
    else:
        print(json.dumps(summary, indent=2, ensure_ascii=False))
        for r in bad:
            v = r["violation"]
            print(f"VIOLATION seed {r['seed']} {r['scenario']} n={r['nodes']}: "
                  f"{v['kind']}: {v['message']}\n  reproduce: {r['reproduce']}")
    return 1 if bad else 0


def _sweep(a: argparse.Namespace, runs: list[tuple[int, str, int]], configs: list[Config],
           results: list[dict[str, Any]], bad: list[dict[str, Any]], began: float) -> None:
    from sim.world import results_of

    tty = sys.stderr.isatty()
    for i, ((n, s, seed), result) in enumerate(zip(runs, results_of(configs, a.jobs),
                                                   strict=True)):
        results.append(result)
        if result["violations"]:
            bad.append(result)
        done = i + 1
        elapsed = time.monotonic() - began
        eta = elapsed / done * (len(runs) - done)
        line = (f"[{'#' * (30 * done // len(runs)):<30}] {done}/{len(runs)}  "
                f"{s} n={n} seed={seed}  violations so far {len(bad)}  eta {eta:.0f}s")
        if tty:
            sys.stderr.write("\r\033[K" + line)
        elif done == len(runs) or done % max(1, len(runs) // 10) == 0:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()
    if tty:
        sys.stderr.write("\n")


def _plot_dir(plot: Path | None) -> None:
    """The --plot directory, made and checked before a run of minutes (a file path
    there failed after it, and the result was never printed)."""
    if plot is None:
        return
    try:
        plot.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SystemExit(f"--plot {plot}: cannot write charts there ({e.strerror})") from None
    if not os.access(plot, os.W_OK):
        raise SystemExit(f"--plot {plot}: cannot write charts there (not writable)")


def _sweep_summary(results: list[dict[str, Any]]) -> dict[str, Any]:
    from collections import Counter

    rounds: Counter[int] = Counter()
    rounds_after: Counter[int] = Counter()
    seconds: list[float] = []
    conn_debits = conn_refused = part_debits = part_refused = 0
    for r in results:
        rounds.update(r["convergence"]["rounds"])
        rounds_after.update(r["convergence"]["rounds_after_reconnect"])
        seconds += r["convergence"]["seconds"]
        c = r["refused_debits"]["connected"]
        p = r["refused_debits"]["partitioned"]
        conn_debits += c["debits"]
        conn_refused += c["refused_rights"]
        part_debits += p["debits"]
        part_refused += p["refused_rights"]
    return {
        "runs": len(results),
        "violations": sum(r["violations"] for r in results),
        "not_converged": sum(not r["converged"] for r in results),
        "violating_seeds": [r["seed"] for r in results if r["violations"]],
        "convergence_rounds": dict(sorted(rounds.items())),
        "convergence_rounds_after_reconnect": dict(sorted(rounds_after.items())),
        "convergence_seconds_max": max(seconds) if seconds else None,
        "refused_rights_rate_connected": conn_refused / conn_debits if conn_debits else 0.0,
        "refused_rights_rate_partitioned": part_refused / part_debits if part_debits else 0.0,
        "debits": conn_debits + part_debits,
        "ops": sum(r["ops"] for r in results),
        "wall_seconds": round(sum(r["wall_seconds"] for r in results), 1),
        "digests": {f"{r['scenario']}:{r['nodes']}:{r['seed']}": r["trace_digest"]
                    for r in results},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sim", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_run = sub.add_parser("run", help="one seeded run")
    p_run.add_argument("--seed", type=int, default=1)
    _add_run_options(p_run, sweep=False)
    p_sweep = sub.add_parser("sweep", help="many seeds (and scenarios, node counts)")
    p_sweep.add_argument("--seeds", type=_at_least(1), default=10)
    p_sweep.add_argument("--first-seed", type=int, default=1)
    p_sweep.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                         help="runs at once, each in its own process (default: one per "
                              "CPU); the results do not depend on it")
    _add_run_options(p_sweep, sweep=True)
    sub.add_parser("scenarios", help="list the scenarios")
    a = parser.parse_args(argv)
    if a.cmd == "run":
        return cmd_run(a)
    if a.cmd == "sweep":
        return cmd_sweep(a)
    for name, text in SCENARIOS.items():
        print(f"{name:20} {text}")
    return 0
