"""Branch nodes as real processes on 127.0.0.1, for the node's tests.

Each node is `python -m peer node run` on its own data directory with fixed ports
(picked free by the OS, so peers can name each other before they start), killed
with SIGKILL or stopped with SIGTERM like a shop PC would be.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from conftest import CliResult, cli_command, cli_env, free_port, run_cli

START_TIMEOUT_S = 30.0
CONVERGE_TIMEOUT_S = 30.0


def wait_for(check: Callable[[], Any], timeout: float = CONVERGE_TIMEOUT_S,
             what: str = "condition") -> Any:
    """Poll until `check()` returns something truthy (and return it)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}; last {last!r}")


@dataclass
class NodeProc:
    name: str
    data: Path
    sync_port: int
    api_port: int
    peers: list[str] = field(default_factory=list)
    mdns: bool = False
    proc: subprocess.Popen[bytes] | None = None
    log: Path | None = None
    env: dict[str, str] = field(default_factory=dict)  # on top of the test's (cli_env)

    @property
    def url(self) -> str:
        return f"wss://127.0.0.1:{self.sync_port}"

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def start(self, wait: bool = True) -> NodeProc:
        argv = ["node", "run", "--data", self.data, "--listen", f"127.0.0.1:{self.sync_port}",
                "--api", f"127.0.0.1:{self.api_port}"]
        for peer in self.peers:
            argv += ["--peer", peer]
        if not self.mdns:
            argv.append("--no-mdns")
        self.log = self.data.parent / f"{self.name}.log"
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(cli_command(*argv), stdout=log, stderr=log,
                                         env=cli_env(self.env))
        if wait:
            wait_for(self.ready, START_TIMEOUT_S, f"{self.name} to start")
        return self

    def ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"{self.name} exited {self.proc.returncode}:\n{self.logs()}")
        with contextlib.suppress(OSError):
            return bool(self.http("GET", "/health")["status"] == "ok")
        return False

    def kill(self) -> None:
        """SIGKILL: no shutdown, no goodbye to peers, like a power cut."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(20)

    def logs(self) -> str:
        return self.log.read_text(errors="replace")[-4000:] if self.log else ""

    def cli(self, *args: str, timeout: float = 60) -> CliResult:
        return run_cli(*args, data=self.data, timeout=timeout)

    def http(self, method: str, path: str, body: Any = None,
             token: str | None = None) -> Any:
        import urllib.request

        req = urllib.request.Request(
            self.api + path, method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Content-Type": "application/json",
                     **({"Authorization": f"Bearer {token}"} if token else {})})
        with urllib.request.urlopen(req, timeout=10) as resp:
            raw = resp.read()
        return json.loads(raw) if raw[:1] in (b"{", b"[") else raw.decode()

    def status(self) -> dict[str, Any]:
        return dict(self.cli("status", "--json").json())

    def connected(self) -> set[str]:
        return {p["node"] for p in self.status()["peers"] if p["connected"]}


@dataclass
class Cluster:
    """A chain (CA) and its nodes under one temporary directory."""

    root: Path
    chain: Path
    nodes: dict[str, NodeProc] = field(default_factory=dict)

    def add(self, name: str, peers: tuple[str, ...] = (), mdns: bool = False) -> NodeProc:
        data = self.root / name.lower()
        r = run_cli("init", "--node", name, "--chain", self.chain, data=data)
        assert r.code == 0, r.err
        node = NodeProc(name, data, free_port(), free_port(), mdns=mdns)
        node.peers = [self.nodes[p].url for p in peers]
        self.nodes[name] = node
        return node

    def __getitem__(self, name: str) -> NodeProc:
        return self.nodes[name]

    def close(self) -> None:
        for node in self.nodes.values():
            node.kill()


@contextlib.contextmanager
def cluster(root: Path, name: str = "demo-chain") -> Iterator[Cluster]:
    chain = root / name
    r = run_cli("chain", "init", "--out", chain)
    assert r.code == 0, r.err
    c = Cluster(root, chain)
    try:
        yield c
    finally:
        c.close()


def member_with_cash(node: NodeProc, yuan: str, phone: str = "13800000001") -> str:
    member = node.cli("member", "add", "--name", "王芳", "--phone", phone,
                      "--json").json()["member_id"]
    r = node.cli("topup", "--member", member, "--amount", yuan)
    assert r.code == 0, r.err
    return str(member)


def balance(node: NodeProc, member: str) -> dict[str, Any] | None:
    r = node.cli("balance", "--member", member, "--json")
    return dict(r.json()) if r.code == 0 else None

