"""What a run measures, gathered as it goes and summarised at the end."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

HOUR_US = 3_600_000_000


@dataclass
class Probe:
    """Convergence after a heal: when did every live replica hold everything any
    replica held at the moment of the heal?"""

    label: str
    healed_at: int
    target: dict[tuple[str, int], int]
    nodes: list[str]
    waiting: set[str]
    converged_at: int | None = None
    interrupted: bool = False
    reconnected_at: int | None = None  # first connection made after the heal


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    k = min(len(s) - 1, max(0, math.ceil(q / 100 * len(s)) - 1))
    return s[k]


@dataclass
class Metrics:
    ops: Counter[str] = field(default_factory=Counter)  # label -> attempted
    ok: Counter[str] = field(default_factory=Counter)
    refused: Counter[str] = field(default_factory=Counter)  # "label:reason"
    crashed_in_flight: int = 0
    # debits by (connected|partitioned) -> Counter(outcome)
    debits: dict[str, Counter[str]] = field(
        default_factory=lambda: {"connected": Counter(), "partitioned": Counter()})
    # hourly: hour -> Counter(debits, refused_rights, refused_funds, refused_other)
    hourly: dict[int, Counter[str]] = field(default_factory=dict)
    fetch_latency_ms: list[float] = field(default_factory=list)  # debits that waited
    fetch_failed: int = 0
    grants: int = 0
    granted_amount: int = 0
    transfers_answered_zero: int = 0
    clock_skew_seen: int = 0
    protocol_errors: int = 0
    resets: Counter[str] = field(default_factory=Counter)
    connects: Counter[str] = field(default_factory=Counter)
    dial_failures: int = 0
    rebalanced: Counter[str] = field(default_factory=Counter)  # purse -> transfers
    frames: Counter[str] = field(default_factory=Counter)  # kind -> count
    frame_bytes: Counter[str] = field(default_factory=Counter)
    probes: list[Probe] = field(default_factory=list)
    hot_rights: list[tuple[int, dict[str, dict[str, int]]]] = field(default_factory=list)
    partition_spans: list[tuple[int, int, str]] = field(default_factory=list)

    def debit(self, now: int, where: str, outcome: str) -> None:
        self.debits[where][outcome] += 1
        hour = now // HOUR_US
        c = self.hourly.get(hour)
        if c is None:
            c = self.hourly[hour] = Counter()
        c["debits"] += 1
        if outcome != "ok":
            c[f"refused_{outcome}"] += 1
            c[f"refused_{outcome}_{where}"] += 1

    def summary(self, ae_interval_s: float, traffic: dict[str, list[int]],
                total_ops: int) -> dict[str, Any]:
        def rate(c: Counter[str]) -> dict[str, Any]:
            n = sum(c.values())
            return {"debits": n, "ok": c["ok"], "refused_rights": c["rights"],
                    "refused_funds": c["funds"], "refused_other": c["other"],
                    "lost_in_crash": c["crashed"],
                    "refused_rights_rate": (c["rights"] / n) if n else 0.0,
                    "refused_rate": ((c["rights"] + c["funds"] + c["other"]) / n) if n
                    else 0.0}

        done = [p for p in self.probes if p.converged_at is not None and not p.interrupted]
        secs = [(p.converged_at - p.healed_at) / 1e6 for p in done
                if p.converged_at is not None]
        rounds = [math.ceil(s / ae_interval_s - 1e-9) if s > 0 else 0 for s in secs]
        # From the first reconnection (or the heal, if no connection had died): what
        # the protocol needs, without the reconnect backoff.
        after = [max(0.0, (p.converged_at - (p.reconnected_at or p.healed_at)) / 1e6)
                 for p in done if p.converged_at is not None]
        rounds_after = [math.ceil(s / ae_interval_s - 1e-9) if s > 0 else 0 for s in after]
        lat = self.fetch_latency_ms
        ops = max(1, total_ops)
        return {
            "convergence": {
                "heals": len(self.probes),
                "measured": len(done),
                "interrupted": sum(p.interrupted for p in self.probes),
                "not_converged": sum(p.converged_at is None and not p.interrupted
                                     for p in self.probes),
                "seconds": [round(s, 3) for s in secs],
                "rounds": rounds,
                "max_rounds": max(rounds) if rounds else None,
                "seconds_after_reconnect": [round(s, 3) for s in after],
                "rounds_after_reconnect": rounds_after,
                "by_heal": [{"label": p.label, "healed_at_h": round(p.healed_at / HOUR_US, 3),
                             "seconds": None if p.converged_at is None else
                             round((p.converged_at - p.healed_at) / 1e6, 3),
                             "reconnect_s": None if p.reconnected_at is None else
                             round((p.reconnected_at - p.healed_at) / 1e6, 3),
                             "interrupted": p.interrupted} for p in self.probes],
            },
            "refused_debits": {"connected": rate(self.debits["connected"]),
                               "partitioned": rate(self.debits["partitioned"])},
            "rights_transfer": {
                "fetches_ok": len(lat), "fetches_failed": self.fetch_failed,
                "grants": self.grants, "granted_fen": self.granted_amount,
                "answered_nothing": self.transfers_answered_zero,
                "latency_ms": {"p50": percentile(lat, 50), "p90": percentile(lat, 90),
                               "p99": percentile(lat, 99),
                               "max": max(lat) if lat else None},
            },
            "traffic": {
                kind: {"messages": t[0], "bytes": t[1],
                       "messages_per_op": round(t[0] / ops, 3),
                       "bytes_per_op": round(t[1] / ops, 1)}
                for kind, t in sorted(traffic.items())
            },
            "frames": dict(sorted(self.frames.items())),
            "frame_bytes": dict(sorted(self.frame_bytes.items())),
            "ops_by_kind": dict(sorted(self.ops.items())),
            "ok_by_kind": dict(sorted(self.ok.items())),
            "refused_by_kind": dict(sorted(self.refused.items())),
            "lost_in_crash": self.crashed_in_flight,
            "clock_skew_seen": self.clock_skew_seen,
            "protocol_errors": self.protocol_errors,
            "connection_resets": dict(sorted(self.resets.items())),
            "connects": dict(sorted(self.connects.items())),
            "dial_failures": self.dial_failures,
            "rebalanced": dict(sorted(self.rebalanced.items())),
        }
