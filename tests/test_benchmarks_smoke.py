"""`python -m benchmarks run --quick`, as CI runs it: it finishes, its JSON is complete,
and it leaves no node process behind. One run for all the benchmarks (the suite's
budget is tight); no figure is asserted: machines are noisy."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
BENCHES = {"debit", "history", "scale", "sync", "propagation", "chain"}


def test_quick_benchmark_run(tmp_path: Path) -> None:
    out, bench = tmp_path / "results.json", tmp_path / "bench"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "run", "--quick", "--out", str(bench),
         "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=600, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "ledger / plain SQLite" in proc.stdout  # the table was printed
    result = json.loads(out.read_text())
    assert result["scale"] == "quick"
    for key in ("cpu_count", "cpu_model", "python", "pycrdt", "sqlite", "filesystem"):
        assert result["machine"][key]
    figures, ratios, limits = result["figures"], result["ratios"], result["limits"]
    assert {name.split("/")[0] for name in figures} == BENCHES
    for name, fig in figures.items():
        assert fig["n"] >= 1 and fig["min"] <= fig["median"] <= fig["p99"], name
    # Every target of the issue has its verdict (quick sizes: 100k is the largest).
    for key in ("debit/ledger / plain SQLite (median)", "debit/ledger / fsync floor",
                "history/100k / 10k entries, synchronous=FULL"):
        assert isinstance(ratios[key]["ok"], bool), key
    for key in ("scale/cold: open -> ready (worst)", "scale/cold: peak RSS when ready (worst)",
                "sync/catch-up 100k entries (worst)", "sync/in-sync round on the wire (worst)",
                "sync/bytes per debit on the wire (median)", "propagation/A -> B, 2 nodes: p99",
                "propagation/A -> B -> C, 3 in a line: p99",
                "propagation/rights fetch: added to a debit, p99",
                # Issue 12: what signed logs cost.
                "sync/catch-up 100k entries: verifying share (worst)",
                "sync/sync file 100k entries: size / before signed logs",
                "debit/log record + one head signature, added to a debit"):
        assert isinstance(limits[key]["ok"], bool), key
    assert isinstance(ratios["debit/debit with log record / without (median)"]["ok"], bool)
    # One and four tills, each through the node and the plain baseline.
    for who in ("1 till", "4 tills at once"):
        for what in ("node debit, latency", "plain SQLite debit, latency",
                     "node throughput", "plain SQLite throughput"):
            assert f"debit/{who}: {what}" in figures
    # Memory and cost at every size, and the plot drawn from them.
    assert [p["entries"] for p in result["info"]["scale"]["series"]] == [10_000, 100_000]
    assert [p["entries"] for p in result["info"]["history"]["series"]["FULL"]] == \
        [10_000, 100_000]
    plot = Path(result["info"]["plots"]["scale"])
    assert plot.parent == bench / "img" and plot.read_bytes()[:4] == b"\x89PNG"
    # A sync file as large as each catch-up, and it reached the hub's state.
    for label in ("10k", "100k"):
        assert figures[f"sync/sync file {label} entries: import"]["n"] == 1
    # Every debit of a stream became visible at every receiving node (else no figure),
    # and the rights benchmark really fetched rights each time.
    assert figures["propagation/A -> B -> C, 3 in a line: commit -> visible"]["n"] == 500
    rights = result["info"]["propagation"]["rights"]
    assert rights["fetched"] == rights["pairs"] > 0
    assert figures["sync/catch-up 100k entries: payload / what it lacked"]["min"] >= 1
    # A projection to 30M entries is a size, a memory or a time: never below zero
    # (a debit as fast at 10k entries as at 1k is read as flat, not run on downwards).
    projected = {k: f for k, f in figures.items() if k.startswith("chain/30M entries")}
    assert projected and all(f["min"] >= 0 for f in projected.values()), projected
    # The generated data sets were valid: every entry projected, none quarantined.
    for data in (bench / "data").iterdir():
        info = json.loads((data / "ready.json").read_text())
        assert info["quarantine"] == 0 and info["entries"] > 0
    # Scratch copies are removed; the cache of data sets stays for the next run.
    assert not list(bench.glob("work*"))
    assert not _processes_under(tmp_path), "node processes left running"


def _processes_under(path: Path) -> list[str]:
    """Our interpreter's processes whose command line names `path`: the benchmark's
    node children (`python -m benchmarks.network node DIR`)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if cmd.startswith(sys.executable) and str(path) in cmd:
            found.append(cmd)
    return found


def test_entry_encoding_measurement_runs() -> None:
    """`python -m benchmarks.encoding` (not part of `run`): it measures each way of
    holding an entry and prints every figure; sizes are bytes, so they are compared."""
    proc = subprocess.run([sys.executable, "-m", "benchmarks.encoding", "2500"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(result) == {"map", "json", "msgpack"}
    for figures in result.values():
        assert set(figures) == {"resident_b", "snapshot_b", "update_b", "apply_observe_us",
                                "to_dict_us"}
        assert all(v > 0 for v in figures.values()), figures
    # The same entries: a JSON text is longer than Yrs' own encoding, msgpack shorter.
    assert result["msgpack"]["update_b"] < result["map"]["update_b"] < \
        result["json"]["update_b"]


def test_the_pragmas_tool_runs_its_variants_side_by_side(tmp_path: Path) -> None:
    """`python -m benchmarks.pragmas` (benchmarks/README.md, "WAL checkpoints"): each
    variant a line of figures, on a toy data set, and its copies removed. No figure
    asserted."""
    def run(*variants: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "benchmarks.pragmas", "--entries", "1000", "--rounds", "20",
             "--out", str(tmp_path), *variants],
            cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)

    done = run("", "wal_autocheckpoint=10000")
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()  # the data set's generation said first
    at = [i for i, ln in enumerate(lines)
          if ln.startswith("20 debits each, synchronous=OFF, 1000 entries")]
    assert at, done.stdout
    assert [ln.split()[0] for ln in lines[at[0] + 1:]] == ["(as", "wal_autocheckpoint=10000"]
    assert not list(tmp_path.glob("work-pragmas"))  # its copies are removed
