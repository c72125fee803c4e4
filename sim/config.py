"""What a run is: every knob, with the defaults the scenarios start from."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any


@dataclass(frozen=True)
class Config:
    nodes: int = 10
    members: int | None = None  # default: 20 per node
    days: int = 1
    # The local date the run begins (at midnight, Asia/Shanghai): a month's last day, so
    # that a one-day run has its holiday week (sim.world.HOLIDAY_AT) and closes a month.
    start: str = "2026-01-31"
    seed: int = 1
    scenario: str = "steady"
    topology: str = "auto"  # auto | hub | tree | mesh
    hubs: int | None = None  # hub and tree topologies: default 2
    ops_per_node: int = 1000  # customer arrivals per branch per day
    hot_members: int = 2
    ae_interval_s: float = 10.0
    dup: float = 0.0  # session-level duplicated frames (per frame)
    reorder: float = 0.0  # session-level swapped frames (per delivered batch)
    lost_answers: float = 0.01  # a till's answer lost, the request sent again (same key)
    synchronous: str = "OFF"  # a crash is a process crash: every commit survives it
    max_ops: int | None = None  # stop the workload after this many (shrinking)
    fault_mask: frozenset[int] = field(default_factory=frozenset)  # faults switched off
    keep_trace: bool = False
    quiesce_limit_s: float = 900.0  # after the workload: time allowed to converge
    check_views_every: int = 1  # final view comparison on every k-th node (1: all)
    progress: bool = False
    # Byzantine branches (sim.byzantine), chosen by the seed: how many of each.
    forger: int = 0
    equivocator: int = 0
    restored: int = 0
    closed: int = 0  # shops closing for good (not Byzantine: honest throughout)
    revoked: int = 0  # PCs stolen, revoked while they run on
    # The stolen PCs stay connected to head office until it revokes them (sim.byzantine,
    # "--revoked-live"): their live link dropped, a rights request of theirs refused.
    revoked_live: bool = False
    # Nodes killed between a till's acknowledgement and the flush of its frames, a day.
    kill_before_flush: int = 0

    @property
    def member_count(self) -> int:
        return self.members if self.members is not None else 20 * self.nodes

    def with_(self, **changes: Any) -> Config:
        return replace(self, **changes)

    def argv(self) -> list[str]:
        """The command line that replays this run."""
        out = ["python", "-m", "sim", "run", "--nodes", str(self.nodes), "--days",
               str(self.days), "--seed", str(self.seed), "--scenario", self.scenario]
        if self.members is not None:
            out += ["--members", str(self.members)]
        defaults = Config()
        for name, flag in (("start", "--start"), ("topology", "--topology"), ("hubs", "--hubs"),
                           ("ops_per_node", "--ops-per-node"),
                           ("hot_members", "--hot-members"),
                           ("ae_interval_s", "--ae-interval"), ("dup", "--dup"),
                           ("reorder", "--reorder"), ("lost_answers", "--lost-answers"),
                           ("max_ops", "--max-ops"),
                           ("forger", "--forger"), ("equivocator", "--equivocator"),
                           ("restored", "--restored"), ("closed", "--closed"),
                           ("revoked", "--revoked"),
                           ("kill_before_flush", "--kill-before-flush")):
            value = getattr(self, name)
            if value != getattr(defaults, name):
                out += [flag, str(value)]
        if self.revoked_live:
            out.append("--revoked-live")
        if self.fault_mask:
            out += ["--drop-faults", ",".join(str(i) for i in sorted(self.fault_mask))]
        return out
