"""The scale plot: a debit's cost, opening and resident memory against the ledger's size.

Drawn after a run from the series `history` and `scale` leave in the report (either
may be missing: its panels are then left out), with matplotlib's Agg backend (no
display). A full run writes `benchmarks/img/scale.png`, the one the README shows;
smaller runs write under their output directory, so they never replace it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.ticker import FuncFormatter

from benchmarks.report import Report, machine

IMG = Path(__file__).resolve().parent / "img"  # committed: the README's figures
MEMORY_TARGET_MB = 600


def write(report: Report, out: Path) -> list[Path]:
    """Draw what the report has; returns the files written (none if nothing to draw)."""
    cost = report.info.get("history", {}).get("series")
    opens = report.info.get("scale", {}).get("series")
    if not cost and not opens:
        return []
    rows = (1 if cost else 0) + (1 if opens else 0)
    fig, axes = plt.subplots(rows, 2, figsize=(10, 4.3 * rows), squeeze=False)
    ax = iter(axes.flat)
    if cost:
        _cost(next(ax), cost["FULL"], "durable debit (synchronous=FULL)", target=1.2)
        _cost(next(ax), cost["OFF"], "its CPU cost (synchronous=OFF)", target=None)
    if opens:
        _memory(next(ax), opens)
        _times(next(ax), opens)
    mach = machine(report.data_dir)
    fig.suptitle(f"crdtledger against ledger size ({report.scale} run): "
                 f"{mach['cpu_count']} x {mach['cpu_model']}, python {mach['python']}, "
                 f"SQLite {mach['sqlite']}", fontsize=9)
    fig.tight_layout()
    out.mkdir(parents=True, exist_ok=True)
    path = out / "scale.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path]


def _x(ax: Axes, series: list[dict[str, Any]]) -> list[int]:
    xs = [int(p["entries"]) for p in series]
    ax.set_xscale("log")
    ax.set_xticks(xs, [f"{_short(p['entries'])}\n{_short(p['members'])} members"
                       for p in series])
    ax.minorticks_off()
    ax.set_xlabel("ledger entries")
    ax.grid(True, alpha=0.3)
    return xs


def _cost(ax: Axes, series: list[dict[str, Any]], title: str, target: float | None
          ) -> None:
    xs = _x(ax, series)
    for key, style in (("median", "o-"), ("p99", "s--")):
        ys = [p[key] for p in series]
        ax.plot(xs, ys, style, label=key)
        for x, y in zip(xs, ys, strict=True):
            ax.annotate(f"{y:.0f}", (x, y), textcoords="offset points", xytext=(0, 5),
                        ha="center", fontsize=8)
    if target is not None:
        ax.axhline(series[0]["median"] * target, color="red", lw=0.8, ls=":",
                   label=f"target: median at most {target:g}x the smallest's")
    _log_y(ax)  # the tail is tens of times the median on a shared disk
    ax.set_ylabel("µs per debit (interleaved rounds)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="best")


def _memory(ax: Axes, series: list[dict[str, Any]]) -> None:
    xs = _x(ax, series)
    for key, label, style in (("hwm_ready_mb", "peak when opened", "o-"),
                              ("hwm_first_debit_mb", "peak after the first debit", "s-"),
                              ("rss_steady_mb", "resident after 102 debits", "^--")):
        ys = [p[key] for p in series]
        ax.plot(xs, ys, style, label=label)
        ax.annotate(f"{ys[-1]:.0f}", (xs[-1], ys[-1]), textcoords="offset points",
                    xytext=(6, -3), fontsize=8)
    ax.axhline(MEMORY_TARGET_MB, color="red", lw=0.8, ls=":", label="target (open): 600 MB")
    ax.set_ylim(0, MEMORY_TARGET_MB * 1.1)
    ax.set_ylabel("MB resident, fresh process (worst run)")
    ax.set_title("resident memory", fontsize=10)
    ax.legend(fontsize=8, loc="upper left")


def _times(ax: Axes, series: list[dict[str, Any]]) -> None:
    xs = _x(ax, series)
    for key, label, style in (("ready_ms", "open -> ready", "o-"),
                              ("first_debit_ms", "first debit (loads the month)", "s-")):
        ys = [p[key] for p in series]
        ax.plot(xs, ys, style, label=label)
        for x, y in zip(xs, ys, strict=True):
            ax.annotate(f"{y:.3g}", (x, y), textcoords="offset points", xytext=(0, 5),
                        ha="center", fontsize=8)
    ax.axhline(3000, color="red", lw=0.8, ls=":", label="target (open): 3 s")
    _log_y(ax)
    ax.set_ylabel("ms, warm page cache (median)")
    ax.set_title("opening a node", fontsize=10)
    ax.legend(fontsize=8, loc="best")


def _log_y(ax: Axes) -> None:
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    # Narrow ranges have no decade inside: label the 2s and 5s between decades too.
    ax.yaxis.set_minor_formatter(FuncFormatter(
        lambda v, _: f"{v:g}" if f"{v:.0e}"[0] in "25" else ""))


def _short(n: int) -> str:
    if n >= 1_000_000:
        return f"{n / 1_000_000:g}M"
    if n >= 1000:
        return f"{n / 1000:g}k"
    return str(n)
