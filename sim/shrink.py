"""On a violation: the seed, and the shortest run of that seed that still fails.

A run is a function of its seed and its limits, so a smaller reproduction is found
by running again: first with fewer operations (the workload stops after `max_ops`;
the customers' choices up to there are the same, they come from their own random
stream), then with every fault switched off, else one by one (`fault_mask`; the
others and the workload are unchanged). A candidate is kept if it fails with the same kind of
violation. The trace of the shortest failing run is printed with the command line
that replays it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TextIO

from sim.config import Config
from sim.engine import clock

if TYPE_CHECKING:
    from sim.world import World

BUDGET = 14  # re-runs at most


def shrink_run(cfg: Config, result: dict[str, Any]
               ) -> tuple[Config, dict[str, Any], World | None]:
    """The smallest config found that fails like `result`, with its result and world."""
    from sim.world import run

    kind = result["violation"]["kind"]
    best_cfg, best, best_world = cfg, result, None
    runs = 0

    def fails(candidate: Config) -> bool:
        nonlocal best_cfg, best, best_world, runs
        runs += 1
        r, w = run(candidate.with_(progress=False, keep_trace=True))
        if r["violations"] and r["violation"]["kind"] == kind:
            best_cfg, best, best_world = candidate, r, w
            return True
        return False

    # Fewer operations: bisect on the op count at which the violation appears.
    hi = result["ops"]
    lo = 0
    while hi - lo > 1 and runs < BUDGET - 4:
        mid = (lo + hi) // 2
        if fails(best_cfg.with_(max_ops=mid)):
            hi = mid
        else:
            lo = mid
    if best_cfg.max_ops is None and runs < BUDGET and fails(best_cfg.with_(max_ops=hi)):
        pass
    # Fewer faults: all at once first (a day of single-link cuts is a score of them,
    # more than the budget), else one by one.
    n_faults = len(result.get("faults", []))
    everything = frozenset(range(n_faults))
    if n_faults > 1 and runs < BUDGET and fails(best_cfg.with_(fault_mask=everything)):
        n_faults = 0
    for i in range(n_faults):
        if runs >= BUDGET:
            break
        if i in best_cfg.fault_mask:
            continue
        fails(best_cfg.with_(fault_mask=best_cfg.fault_mask | {i}))
    if best_world is None:
        fails(best_cfg)  # once more with the whole trace kept
    return best_cfg, best, best_world


def report_violation(cfg: Config, result: dict[str, Any], world: World, *, out: TextIO,
                     shrink: bool = True) -> None:
    v = result["violation"]
    when = "the end" if v["at_s"] is None else clock(int(v["at_s"] * 1_000_000))
    out.write(f"\nVIOLATION ({v['kind']}) at {when} (simulated), seed {cfg.seed}: "
              f"{v['message']}\n")
    out.write(f"reproduce: {' '.join(cfg.argv())}\n")
    if not shrink:
        out.write("last trace lines:\n")
        for line in world.trace.tail:
            out.write(f"  {line}\n")
        return
    small_cfg, small, small_world = shrink_run(cfg, result)
    out.write(f"shrunk to {small['ops']} ops, faults {small.get('faults')}\n")
    out.write(f"reproduce the short run: {' '.join(small_cfg.argv())}\n")
    trace = (small_world.trace.all if small_world is not None and small_world.trace.all
             is not None else list(world.trace.tail))
    out.write(f"its trace has {len(trace)} lines; the last {TAIL} that are not routine "
              "sync frames (hello, state, recs):\n")
    for line in notable(trace)[-TAIL:]:
        out.write(f"  {line}\n")


ROUTINE = (" hello ", " state ", " recs ")
TAIL = 60


def notable(trace: list[str]) -> list[str]:
    """Operations, rights requests and answers, faults, connections, violations."""
    return [line for line in trace
            if not (">" in line.split(" ", 3)[2] and any(r in line for r in ROUTINE))]
