"""Shared fixtures: the `crdtledger` CLI run as a real process against real SQLite
files, and branch ledgers opened in-process."""

from __future__ import annotations

import json
import logging
import os
import random
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from helpers import new_ledger
from hypothesis import settings

from crdtledger.ledger import Ledger


@pytest.fixture(autouse=True)
def root_logger_as_found() -> Iterator[None]:
    """Each test gets the root logger as the one before found it. The node and the
    counter, run in-process, set up logging for the process (platform.setup_logging)
    on the sys.stderr of that moment, which is pytest's capture of that test: a later
    test's warning then went to a closed file, and logging wrote "--- Logging error ---"
    into whatever that test was reading as stderr."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def ephemeral_low() -> int:
    """The first port the kernel hands out to sockets bound to port 0."""
    return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])


def free_port(n: int = 1) -> int:
    """A first port of `n` free ones, for a process started later to bind. Below the
    ephemeral range: a port the kernel handed out and took back can be handed to any
    of the thousands of client sockets the other tests open before the process binds
    it (a node exited 'address already in use', vpcd's reader never appeared). Random,
    so that two test workers seldom try the same one."""
    rng = random.Random()
    for _ in range(100):
        base = rng.randrange(10000, ephemeral_low() - n)
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
    raise AssertionError(f"no {n} free ports below the ephemeral range")

# The counter app's fixtures (NiceGUI's simulated user against a real node).
pytest_plugins = ["app_fixtures"]

# No per-example deadline: CI machines are shared and noisy, and a slow example is
# not a wrong one (speed is measured in benchmarks/, never asserted in tests).
settings.register_profile("crdtledger", deadline=None)
settings.load_profile("crdtledger")

CLI_TIMEOUT_S = 60  # a store lock waits 10 s at most; anything longer is a hang


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The files with the most `slow` tests first, each file's tests kept together and
    in order. `./run test` hands the files to one worker per core (pytest-xdist,
    `--dist loadfile --no-loadscope-reorder`); a long file handed out last would keep
    one core busy alone at the end of the run."""
    def file(item: pytest.Item) -> str:
        return item.nodeid.split("::")[0]

    slow: dict[str, int] = {}
    for item in items:
        slow[file(item)] = slow.get(file(item), 0) + (item.get_closest_marker("slow") is not None)
    items.sort(key=lambda item: -slow[file(item)])  # stable: each file keeps its order


class CliResult(NamedTuple):
    code: int
    out: str
    err: str

    def json(self) -> Any:
        assert self.code == 0, f"exit {self.code}: {self.err}"
        return json.loads(self.out)


Cli = Callable[..., CliResult]


def cli_command(*args: str | os.PathLike[str]) -> list[str]:
    """The argv of one CLI run; `python -m peer` needs no installed console script."""
    return [sys.executable, "-m", "peer", *map(str, args)]


def cli_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The test's environment minus any CRDTLEDGER_* of the developer's shell."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRDTLEDGER_")}
    env["PYTHONIOENCODING"] = "utf-8"
    env.update(extra or {})
    return env


def run_cli(*args: str | os.PathLike[str], data: Path | None = None,
            env: Mapping[str, str] | None = None, timeout: float = CLI_TIMEOUT_S,
            cwd: Path | None = None) -> CliResult:
    """Run the CLI to completion; `data` appends --data DIR."""
    argv = cli_command(*args, *(("--data", data) if data is not None else ()))
    proc = subprocess.run(argv, capture_output=True, text=True, encoding="utf-8",
                          env=cli_env(env), cwd=cwd, timeout=timeout, check=False)
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    """cli(*args, data=DIR, env={...}) -> CliResult(code, out, err), run in tmp_path."""

    def run(*args: str | os.PathLike[str], **kwargs: Any) -> CliResult:
        return run_cli(*args, cwd=tmp_path, **kwargs)

    return run


@pytest.fixture
def make_node(cli: Cli, tmp_path: Path) -> Callable[..., Path]:
    """make_node("SH01", chain="default") -> the data directory of a new node."""

    def make(node: str, chain: str = "default") -> Path:
        data = tmp_path / node.lower() if chain == "default" else tmp_path / f"{chain}-{node}"
        r = cli("init", "--node", node, "--chain", chain, data=data)
        assert r.code == 0, r.err
        return data

    return make


# Two branch ledgers on real SQLite files, for the library's own tests.
@pytest.fixture
def a(tmp_path: Path) -> Iterator[Ledger]:
    ledger = new_ledger(tmp_path, "SH01")
    yield ledger
    ledger.close()


@pytest.fixture
def b(tmp_path: Path) -> Iterator[Ledger]:
    ledger = new_ledger(tmp_path, "SH02")
    yield ledger
    ledger.close()
