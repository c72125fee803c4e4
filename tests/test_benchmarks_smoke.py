"""The benchmarks run (at toy sizes). No timing is asserted: machines are noisy."""

from __future__ import annotations

import json
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
    assert benches == {"debit", "history", "scale"}
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


def test_only_one_benchmark(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "run", "--tiny", "--only", "debit",
         "--out", str(tmp_path / "bench"), "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert {n.split("/")[0] for n in json.loads(out.read_text())["figures"]} == {"debit"}
