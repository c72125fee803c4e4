"""Charts (PNG, matplotlib) and a short markdown report of a run or a sweep."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.patches import Patch

if TYPE_CHECKING:
    from sim.world import World

HOUR_US = 3_600_000_000
SHADE = {"partition": ("#f4a6a6", "partition"), "crash": ("#c7b8ea", "node down")}


def _spans(ax: Any, spans: list[tuple[int, int, str]]) -> list[Patch]:
    """Shade fault windows; overlapping ones darken."""
    seen: dict[str, Patch] = {}
    for start, end, kind in spans:
        color, label = SHADE.get(kind, ("#dddddd", kind))
        ax.axvspan(start / HOUR_US, end / HOUR_US, color=color, alpha=0.35, lw=0)
        seen.setdefault(kind, Patch(color=color, alpha=0.5, label=label))
    return list(seen.values())


def refused_chart(path: Path, result: dict[str, Any], world: World) -> None:
    m = world.metrics
    hours = range(int(world.engine.now // HOUR_US) + 1)
    empty: Counter[str] = Counter()
    debits = [m.hourly.get(h, empty)["debits"] for h in hours]
    rights = [m.hourly.get(h, empty)["refused_rights"] for h in hours]
    funds = [m.hourly.get(h, empty)["refused_funds"] for h in hours]
    other = [m.hourly.get(h, empty)["refused_other"] for h in hours]
    x = [h + 0.5 for h in hours]
    fig, ax = plt.subplots(figsize=(11, 4.2))
    legend = _spans(ax, m.partition_spans)
    pct = [100 * r / d if d else 0.0 for r, d in zip(rights, debits, strict=True)]
    pct_all = [100 * (r + f + o) / d if d else 0.0
               for r, f, o, d in zip(rights, funds, other, debits, strict=True)]
    ax.step(x, pct_all, where="mid", color="#999999", lw=1.2,
            label="refused, any reason (% of debits)")
    ax.step(x, pct, where="mid", color="#c0392b", lw=2.2,
            label="refused: rights elsewhere (% of debits)")
    ax.set_ylabel("refused debits, % of the hour's debits")
    ax.set_xlabel("hours since the start (local time: hour of day = hour mod 24)")
    top = max([*pct_all, 1.0])
    ax.set_ylim(0, top * 1.25)
    ax2 = ax.twinx()
    ax2.bar(x, debits, width=0.9, color="#3498db", alpha=0.18, label="debits per hour")
    ax2.set_ylabel("debits per hour")
    ax.set_zorder(ax2.get_zorder() + 1)
    ax.patch.set_visible(False)
    rd = result["refused_debits"]
    ax.set_title(
        f"Refused debits over time, {result['scenario']}, {result['nodes']} nodes, seed "
        f"{result['seed']}: connected {rd['connected']['refused_rights_rate']:.3%}, "
        f"partitioned {rd['partitioned']['refused_rights_rate']:.2%} (rights)", fontsize=10)
    handles, labels = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(handles=[*handles, *h2, *legend], labels=[*labels, *l2,
                                                       *(str(p.get_label()) for p in legend)],
              loc="upper left", fontsize=8, framealpha=0.9)
    ax.set_xlim(0, len(hours))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def hot_rights_chart(path: Path, result: dict[str, Any], world: World) -> bool:
    shots = world.metrics.hot_rights
    if not shots:
        return False
    members = sorted({mid for _, shot in shots for mid in shot})[:6]
    cols = min(3, len(members))
    rows = (len(members) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    cmap = plt.get_cmap("tab20")
    for k, mid in enumerate(members):
        ax = axes[k // cols][k % cols]
        totals: dict[str, int] = defaultdict(int)
        for _, shot in shots:
            for node, amount in shot.get(mid, {}).items():
                totals[node] += amount
        top = [n for n, _ in sorted(totals.items(), key=lambda kv: (-kv[1], kv[0]))[:7]]
        xs = [t / HOUR_US for t, _ in shots]
        layers = [[shot.get(mid, {}).get(n, 0) / 100 for _, shot in shots] for n in top]
        rest = [sum(a for n, a in shot.get(mid, {}).items() if n not in top) / 100
                for _, shot in shots]
        ax.stackplot(xs, *layers, rest, labels=[*top, "others"],
                     colors=[cmap(i) for i in range(len(top))] + ["#cccccc"], alpha=0.85)
        ax.set_title(f"card {mid[-8:]}", fontsize=9)
        ax.set_xlabel("hour", fontsize=8)
        ax.set_ylabel("cash rights held (yuan)", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6, loc="upper right", ncol=2)
    for k in range(len(members), rows * cols):
        axes[k // cols][k % cols].axis("off")
    fig.suptitle(f"Where the shared (hot) cards' stored value sits, by branch, hour by hour "
                 f"({result['scenario']}, seed {result['seed']})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def convergence_chart(path: Path, result: dict[str, Any]) -> bool:
    heals = [h for h in result["convergence"]["by_heal"] if h["seconds"] is not None]
    interrupted = sum(h["interrupted"] for h in result["convergence"]["by_heal"])
    if not heals:
        return False
    ae = result.get("ae_interval_s", 10.0)
    fig, ax = plt.subplots(figsize=(9, 3.8))
    xs = list(range(len(heals)))
    secs = [h["seconds"] for h in heals]
    colors = ["#27ae60" if s <= 3 * ae else "#e67e22" for s in secs]
    ax.bar(xs, secs, color=colors)
    for i in range(1, 4):
        ax.axhline(i * ae, color="#7f8c8d", ls=":", lw=1)
        ax.text(len(heals) - 0.5, i * ae, f" {i} round{'s' if i > 1 else ''}", va="bottom",
                ha="right", fontsize=7, color="#7f8c8d")
    ax.set_xticks(xs, [f"{h['label']}\n@{h['healed_at_h']:.1f}h" for h in heals], fontsize=7,
                  rotation=0 if len(heals) < 8 else 60)
    ax.set_ylabel("seconds until every replica\nheld all that existed at the heal")
    ax.set_title(f"Convergence after each heal, {result['nodes']} nodes "
                 f"({interrupted} heals interrupted by a new fault are left out)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_run_report(out: Path, result: dict[str, Any], world: World) -> None:
    out.mkdir(parents=True, exist_ok=True)
    charts = []
    refused_chart(out / "refused.png", result, world)
    charts.append(("refused.png", "Refused debits over time",
                   "The red line is the share of each hour's debits refused because the "
                   "member's stored value sat at branches this one could not reach in time "
                   "(RightsElsewhere); grey counts every refusal. Blue bars are the "
                   "debits of the hour (right axis). Shaded: partitions (red) and nodes "
                   "down (violet). Refusals should appear only inside shading."))
    if convergence_chart(out / "convergence.png", result):
        charts.append(("convergence.png", "Convergence after heals",
                       "One bar per heal: seconds until every live replica holds everything "
                       "any replica held when the fault ended. Dotted lines mark 1, 2 and 3 "
                       "anti-entropy intervals; green bars are within 3 rounds."))
    if hot_rights_chart(out / "hot_rights.png", result, world):
        charts.append(("hot_rights.png", "Rights of hot members",
                       "Each panel is one card shared across branches: the stacked areas "
                       "are how much of its stored value each branch holds (its own view "
                       "of its own rights), hour by hour. Rights move to where the card is "
                       "swiped, by the automatic transfers."))
    _markdown(out / "report.md", result, charts)
    (out / "result.json").write_text(json.dumps(result, indent=2, ensure_ascii=False))


def _markdown(path: Path, r: dict[str, Any], charts: list[tuple[str, str, str]]) -> None:
    rd = r["refused_debits"]
    rt = r["rights_transfer"]
    conv = r["convergence"]
    lines = [
        f"# Simulation: {r['scenario']}, {r['nodes']} nodes, {r['days']} day(s), "
        f"seed {r['seed']}",
        "",
        f"Reproduce: `{r['reproduce']}`",
        "",
        "| | |",
        "|---|---|",
        f"| violations | {r['violations']}"
        + (f" ({r['violation']['kind']}: {r['violation']['message']})" if r["violation"]
           else "") + " |",
        f"| converged | {r['converged']} |",
        f"| operations | {r['ops']} ({r['acknowledged']} acknowledged records) |",
        f"| topology | {r['topology']}, {r['hubs']} hubs |",
        f"| wall time | {r['wall_seconds']} s for {r['sim_seconds'] / 3600:.1f} simulated "
        f"hours, {r['events']} events |",
        f"| refused debits while connected | {rd['connected']['refused_rights']} for rights, "
        f"{rd['connected']['refused_funds']} for funds, of {rd['connected']['debits']} "
        f"({rd['connected']['refused_rights_rate']:.3%} for rights) |",
        f"| refused debits while partitioned | {rd['partitioned']['refused_rights']} for "
        f"rights of {rd['partitioned']['debits']} "
        f"({rd['partitioned']['refused_rights_rate']:.2%}) |",
        f"| rights transfers | {rt['fetches_ok']} debits waited for rights, "
        f"p50 {rt['latency_ms']['p50']} ms, p99 {rt['latency_ms']['p99']} ms |",
        f"| convergence after heals | seconds {conv['seconds']}, rounds {conv['rounds']} |",
        "| traffic per operation | " + "; ".join(
            f"{k}: {v['messages_per_op']} messages, {v['bytes_per_op']} B"
            for k, v in r["traffic"].items()) + " |",
        f"| trace digest | `{r['trace_digest']}` |",
        "",
        "Faults: " + ("; ".join(r["faults"]) if r["faults"] else "none"),
        "",
    ]
    for file, title, text in charts:
        lines += [f"## {title}", "", f"![{title}]({file})", "", text, ""]
    path.write_text("\n".join(lines))


# --- sweeps ---------------------------------------------------------------------------


def write_sweep_report(out: Path, results: list[dict[str, Any]], summary: dict[str, Any]
                       ) -> None:
    out.mkdir(parents=True, exist_ok=True)
    charts = []
    by_n: dict[int, list[float]] = defaultdict(list)
    rounds_by_n: dict[int, list[int]] = defaultdict(list)
    for r in results:
        by_n[r["nodes"]] += r["convergence"]["seconds"]
        rounds_by_n[r["nodes"]] += r["convergence"]["rounds"]
    if any(by_n.values()):
        ns = sorted(n for n in by_n if by_n[n])
        fig, ax = plt.subplots(figsize=(7.5, 4))
        ax.boxplot([by_n[n] for n in ns], positions=list(range(len(ns))), widths=0.5,
                   showfliers=True)
        ax.set_xticks(range(len(ns)), [str(n) for n in ns])
        ae = results[0].get("ae_interval_s", 10.0)
        for i in range(1, 4):
            ax.axhline(i * ae, color="#7f8c8d", ls=":", lw=1)
        ax.set_yscale("log")
        ax.set_xlabel("nodes")
        ax.set_ylabel("seconds to converge after a heal (log)")
        ax.set_title(f"Convergence time against number of nodes ({len(results)} runs; "
                     f"dotted: 1-3 anti-entropy rounds)", fontsize=10)
        fig.tight_layout()
        fig.savefig(out / "convergence_vs_nodes.png", dpi=110)
        plt.close(fig)
        charts.append(("convergence_vs_nodes.png", "Convergence time against number of nodes",
                       "Each box is every heal of every seed at that size: seconds until "
                       "all replicas held what existed when the fault ended."))
    by_s: dict[str, list[float]] = defaultdict(list)
    for r in results:
        by_s[r["scenario"]].append(100 * r["refused_debits"]["connected"]["refused_rights_rate"])
        by_s[r["scenario"] + " (partitioned)"].append(
            100 * r["refused_debits"]["partitioned"]["refused_rights_rate"])
    names = sorted(k for k in by_s if "(partitioned)" not in k)
    fig, ax = plt.subplots(figsize=(8.5, 4))
    xs = range(len(names))
    conn = [sum(by_s[n]) / len(by_s[n]) for n in names]
    part = [sum(by_s[n + " (partitioned)"]) / len(by_s[n + " (partitioned)"]) for n in names]
    ax.bar([x - 0.2 for x in xs], conn, width=0.4, color="#27ae60", label="while connected")
    ax.bar([x + 0.2 for x in xs], part, width=0.4, color="#c0392b", label="while partitioned")
    ax.axhline(0.1, color="#333333", ls="--", lw=1, label="target 0.1 % (connected)")
    ax.set_xticks(list(xs), names, rotation=20, fontsize=8)
    ax.set_ylabel("debits refused for rights, %")
    ax.set_title("Refused debits by scenario (mean over seeds)", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "refused_by_scenario.png", dpi=110)
    plt.close(fig)
    charts.append(("refused_by_scenario.png", "Refused debits by scenario",
                   "Share of debits refused because the stored value sat out of reach."))
    lines = ["# Sweep", "", "```json", json.dumps({k: v for k, v in summary.items()
                                                   if k != "digests"}, indent=2), "```", ""]
    for file, title, text in charts:
        lines += [f"## {title}", "", f"![{title}]({file})", "", text, ""]
    (out / "report.md").write_text("\n".join(lines))
    (out / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False))
