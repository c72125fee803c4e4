"""Figures, ratios against targets, the machine they ran on; printed and written as JSON.

A figure keeps every sample, so min / median / p99 come from the repetitions
themselves. A ratio divides two medians measured in the same process (interleaved
where the benchmark says so) and carries its target, so a reader sees at once whether
a target is met and by how much.
"""

from __future__ import annotations

import json
import os
import platform
import sqlite3
import statistics
import sys
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any


def percentile(samples: list[float], q: float) -> float:
    """Nearest-rank percentile: with few samples, p99 is the worst one, as it should be."""
    ordered = sorted(samples)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


@dataclass
class Figure:
    bench: str
    name: str
    unit: str
    samples: list[float]
    note: str = ""

    def summary(self) -> dict[str, Any]:
        s = self.samples
        return {
            "unit": self.unit,
            "n": len(s),
            "min": min(s),
            "median": statistics.median(s),
            "p99": percentile(s, 99),
            "mean": statistics.fmean(s),
            "note": self.note,
        }

    @property
    def median(self) -> float:
        return statistics.median(self.samples)


@dataclass
class Ratio:
    bench: str
    name: str
    value: float
    target: float | None  # the ratio must be at most this; None: informative only
    note: str = ""

    @property
    def ok(self) -> bool | None:
        return None if self.target is None else self.value <= self.target


@dataclass
class Limit:
    """An absolute target (seconds, megabytes): `value` must be at most `target`."""

    bench: str
    name: str
    value: float
    unit: str
    target: float
    note: str = ""

    @property
    def ok(self) -> bool:
        return self.value <= self.target


@dataclass
class Report:
    scale: str
    data_dir: Path
    figures: list[Figure] = field(default_factory=list)
    ratios: list[Ratio] = field(default_factory=list)
    limits: list[Limit] = field(default_factory=list)
    info: dict[str, dict[str, Any]] = field(default_factory=dict)
    started: float = field(default_factory=time.time)

    def figure(self, bench: str, name: str, unit: str, samples: list[float],
               note: str = "") -> Figure:
        if not samples:
            raise ValueError(f"figure {bench}/{name} has no samples")
        fig = Figure(bench, name, unit, list(samples), note)
        self.figures.append(fig)
        return fig

    def ratio(self, bench: str, name: str, num: Figure, den: Figure,
              target: float | None = None, note: str = "", stat: str = "median") -> Ratio:
        """num / den of their medians (or of their best cases: stat="min")."""
        best = stat == "min"
        value = min(num.samples) / min(den.samples) if best else num.median / den.median
        r = Ratio(bench, name, value, target, note)
        self.ratios.append(r)
        return r

    def limit(self, bench: str, name: str, value: float, unit: str, target: float,
              note: str = "") -> Limit:
        lim = Limit(bench, name, value, unit, target, note)
        self.limits.append(lim)
        return lim

    def note(self, bench: str, **items: Any) -> None:
        self.info.setdefault(bench, {}).update(items)

    # --- output ---------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        return {
            "scale": self.scale,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(self.started)),
            "seconds": round(time.time() - self.started, 1),
            "machine": machine(self.data_dir),
            "figures": {f"{f.bench}/{f.name}": f.summary() for f in self.figures},
            "ratios": {f"{r.bench}/{r.name}": {"value": r.value, "target_max": r.target,
                                               "ok": r.ok, "note": r.note}
                       for r in self.ratios},
            "limits": {f"{m.bench}/{m.name}": {"value": m.value, "unit": m.unit,
                                               "target_max": m.target, "ok": m.ok,
                                               "note": m.note}
                       for m in self.limits},
            "info": self.info,
        }

    def write_json(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), indent=2, ensure_ascii=False) + "\n")

    def table(self) -> str:
        lines = [f"crdtledger benchmarks ({self.scale})", ""]
        rows: list[tuple[str, ...]] = [("benchmark", "figure", "n", "min", "median", "p99",
                                        "unit")]
        for f in self.figures:
            s = f.summary()
            rows.append((f.bench, f.name, str(s["n"]), _num(s["min"]), _num(s["median"]),
                         _num(s["p99"]), f.unit))
        lines += _grid(rows, right=(2, 3, 4, 5))
        if self.ratios or self.limits:
            lines.append("")
            rows = [("benchmark", "ratio / limit", "value", "target", "verdict")]
            for r in self.ratios:
                rows.append((r.bench, r.name, f"{r.value:.2f}x",
                             "-" if r.target is None else f"<= {r.target:g}x", _verdict(r.ok)))
            for m in self.limits:
                rows.append((m.bench, m.name, f"{_num(m.value)} {m.unit}",
                             f"<= {m.target:g} {m.unit}", _verdict(m.ok)))
            lines += _grid(rows, right=(2,))
        mach = machine(self.data_dir)
        lines += ["", f"machine: {mach['cpu_count']} x {mach['cpu_model']}, "
                      f"{mach['memory_mb']} MB RAM, {mach['platform']}",
                  f"python {mach['python']}, pycrdt {mach['pycrdt']}, SQLite {mach['sqlite']}, "
                  f"data on {mach['filesystem']}, load average {mach['load_average_1m']} "
                  f"(at the end)"]
        return "\n".join(lines)


def _verdict(ok: bool | None) -> str:
    return "info" if ok is None else ("met" if ok else "MISSED")


def _num(v: float) -> str:
    if v >= 100:
        return f"{v:,.0f}"
    if v >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def _grid(rows: list[tuple[str, ...]], right: tuple[int, ...]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = []
    for n, r in enumerate(rows):
        cells = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in
                 enumerate(zip(r, widths, strict=True))]
        out.append("  ".join(cells).rstrip())
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return out


# --- the machine ----------------------------------------------------------------


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_mb() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    except OSError:
        pass
    return 0


def _filesystem(path: Path) -> str:
    """The device and file system type under `path` (fsync cost depends on it)."""
    try:
        best = ("", "unknown", "unknown")
        target = str(path.resolve())
        for line in Path("/proc/mounts").read_text().splitlines():
            dev, mnt, fstype = line.split()[:3]
            if (target == mnt or target.startswith(mnt.rstrip("/") + "/")) and \
                    len(mnt) >= len(best[0]):
                best = (mnt, dev, fstype)
        return f"{best[1]} ({best[2]})"
    except OSError:
        return "unknown"


def machine(data_dir: Path) -> dict[str, Any]:
    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "memory_mb": _memory_mb(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "pycrdt": metadata.version("pycrdt"),
        "sqlite": sqlite3.sqlite_version,
        "filesystem": _filesystem(data_dir if data_dir.exists() else Path(__file__).parent),
        "load_average_1m": round(os.getloadavg()[0], 2),  # other work on the machine
    }
