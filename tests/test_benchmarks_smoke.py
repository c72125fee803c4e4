"""The benchmarks run (at toy sizes). No timing is asserted: machines are noisy."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_benchmarks_run_at_tiny_size(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "run", "--tiny", "--out", str(tmp_path / "bench"),
         "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "ledger / plain SQLite" in proc.stdout  # the table was printed
    result = json.loads(out.read_text())
    assert result["scale"] == "tiny"
    for key in ("cpu_count", "cpu_model", "python", "pycrdt", "sqlite"):
        assert result["machine"][key]
    benches = {name.split("/")[0] for name in result["figures"]}
    assert benches == {"debit", "history", "scale", "sync", "propagation"}
    for fig in result["figures"].values():
        assert fig["n"] >= 1 and fig["min"] <= fig["median"] <= fig["p99"]
    assert {"debit/ledger / plain SQLite (median)"} <= set(result["ratios"])
    assert any(k.startswith("history/") for k in result["ratios"])
    assert any(k.startswith("scale/") for k in result["limits"])
    # The generated data sets were valid: every entry projected, none quarantined.
    for data in (tmp_path / "bench" / "data").iterdir():
        info = json.loads((data / "ready.json").read_text())
        assert info["quarantine"] == 0 and info["entries"] > 0
    # Scratch copies are removed; the cache of data sets stays for the next run.
    assert not (tmp_path / "bench" / "work").exists()
    assert not _processes_under(tmp_path), "node processes left running"


def test_only_one_benchmark(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "run", "--tiny", "--only", "debit",
         "--out", str(tmp_path / "bench"), "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert {n.split("/")[0] for n in json.loads(out.read_text())["figures"]} == {"debit"}


def test_network_benchmarks_between_real_nodes(tmp_path: Path) -> None:
    """`sync` and `propagation` start real nodes (one child process each, TLS on
    127.0.0.1) and must leave none behind. Under a minute at --tiny."""
    out = tmp_path / "results.json"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "run", "--tiny", "--only", "sync", "--only",
         "propagation", "--out", str(tmp_path / "bench"), "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=180, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    figures, limits = result["figures"], result["limits"]
    assert {n.split("/")[0] for n in figures} == {"sync", "propagation"}
    for fig in figures.values():
        assert fig["n"] >= 1 and fig["min"] <= fig["median"] <= fig["p99"]
    # Every target of the node issue has its verdict, and bytes per debit is reported.
    for key in ("sync/catch-up 3k entries (worst)", "sync/in-sync round on the wire (worst)",
                "sync/bytes per debit on the wire (median)", "propagation/A -> B, 2 nodes: p99",
                "propagation/A -> B -> C, 3 in a line: p99",
                "propagation/rights fetch: added to a debit, p99"):
        assert isinstance(limits[key]["ok"], bool), key
    # Every debit of a stream became visible at every receiving node (else no figure),
    # and the rights benchmark really fetched rights each time.
    assert figures["propagation/A -> B -> C, 3 in a line: commit -> visible"]["n"] == 100
    rights = result["info"]["propagation"]["rights"]
    assert rights["fetched"] == rights["pairs"] > 0
    # A catch-up brings the whole ledger: at least what the joining node lacked.
    assert figures["sync/catch-up 3k entries: payload / what it lacked"]["min"] >= 1
    assert not (tmp_path / "bench" / "work").exists()
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
