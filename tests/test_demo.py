"""The README's main job, run as a new user would: `./run demo` (here with --exit so
it stops the nodes after the walk-through instead of waiting for Ctrl-C)."""

from __future__ import annotations

import random
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import cli_env

pytestmark = pytest.mark.slow


def free_block(n: int) -> int:
    """A first port with n free ports from it (the demo numbers its ports)."""
    rng = random.Random()
    for _ in range(50):
        base = rng.randrange(20000, 60000)
        socks = []
        try:
            for port in range(base, base + n):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise AssertionError("no block of free ports")


def run_demo(data: Path, port: int) -> str:
    proc = subprocess.run([sys.executable, "-m", "peer.demo", "--data", str(data), "--exit",
                           "--port", str(port)], capture_output=True, text=True,
                          env=cli_env(), timeout=180, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def test_demo_runs_a_chain_and_resumes_it(tmp_path: Path) -> None:
    port = free_block(6)
    out = run_demo(tmp_path / "demo", port)
    # 张伟 is served at SH02 and at HZ01 through automatic rights transfer, and the
    # three branches then show the same balance.
    assert out.count("charged FOOT60") == 2
    balances = re.findall(r"\$ crdtledger balance .*\n(balance: .*)", out)
    assert len(balances) == 3 and len(set(balances)) == 1
    assert "SH01     connected" in out and "HZ01     connected" in out
    again = run_demo(tmp_path / "demo", port)
    assert "Demo data found" in again
    assert re.findall(r"\$ crdtledger balance .*\n(balance: .*)", again) == balances
