"""The demo chain: three branch nodes on this machine, syncing over mutual TLS.

It creates a chain CA and three branches (SH01 南京西路店, SH02 徐家汇店, HZ01 杭州西湖店)
in ./demo-data, starts each as a real `crdtledger node run` process, and drives them
with the real `crdtledger` command, printing each command before its output, so it
doubles as a tour. The branches are wired in a line, HZ01 → SH02 → SH01 (each dials
the next, as shops behind NAT would dial a hub), so what happens at HZ01 reaches
SH01 through SH02.

The nodes keep running until Ctrl-C; meanwhile the printed commands work from
another shell. Running the demo again resumes the same data; --fresh starts over.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

BRANCHES = {"SH01": "南京西路店", "SH02": "徐家汇店", "HZ01": "杭州西湖店"}
DIALS = {"SH02": "SH01", "HZ01": "SH02"}  # who dials whom: a line, relayed hop by hop
MEMBERS = [
    # name, phone, home branch, top-up in yuan, card number
    ("张伟", "13812345678", "SH01", "1000.00", "C10001"),
    ("王芳", "13987654321", "SH02", "500.00", "C10002"),
    ("李娜", "13700001111", "HZ01", "300.00", "C10003"),
]
START_TIMEOUT_S = 30


class Demo:
    def __init__(self, root: Path, port: int) -> None:
        self.root = root
        self.chain = root / "chain"
        self.ports = {node: (port + 2 * i, port + 2 * i + 1) for i, node in enumerate(BRANCHES)}
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def data(self, node: str) -> str:
        return str(self.root / node)

    def cli(self, *args: str, show: bool = True, check: bool = True) -> str:
        cmd = ["crdtledger", *args]
        if show:
            print(f"\n$ {shlex.join(cmd)}")
        proc = subprocess.run([sys.executable, "-m", "peer", *args], capture_output=True,
                              text=True, env={**os.environ, "PYTHONIOENCODING": "utf-8"})
        out = (proc.stdout + proc.stderr).strip()
        if show and out:
            print(out)
        if check and proc.returncode != 0:
            raise SystemExit(f"demo step failed: {shlex.join(cmd)}\n{out}")
        return proc.stdout

    def json(self, *args: str, show: bool = False) -> Any:
        return json.loads(self.cli(*args, "--json", show=show))

    # --- the nodes ----------------------------------------------------------------

    def create(self) -> None:
        print("# The head office creates the chain's certificate authority once...")
        self.cli("chain", "init", "--out", str(self.chain), "--name", "demo")
        print("\n# ...and enrols each branch: a data directory with its own certificate.")
        for node in BRANCHES:
            self.cli("init", "--data", self.data(node), "--node", node, "--chain",
                     str(self.chain))

    def start(self) -> None:
        logs = self.root / "logs"
        logs.mkdir(exist_ok=True)
        print("\n# Each branch runs its node; HZ01 dials SH02, SH02 dials SH01.")
        for node in BRANCHES:
            sync, api = self.ports[node]
            argv = ["node", "run", "--data", self.data(node), "--listen", f"127.0.0.1:{sync}",
                    "--api", f"127.0.0.1:{api}", "--no-mdns"]
            if node in DIALS:
                argv += ["--peer", f"wss://127.0.0.1:{self.ports[DIALS[node]][0]}"]
            print(f"$ {shlex.join(['crdtledger', *argv])} &")
            with open(logs / f"{node}.log", "ab") as log:
                self.procs[node] = subprocess.Popen(
                    [sys.executable, "-m", "peer", *argv], stdout=log, stderr=log,
                    start_new_session=True)  # Ctrl-C is ours to pass on, in order
        for node in BRANCHES:
            self.wait(lambda n=node: self.health(n) is not None, f"{node} to start")
        self.wait(lambda: self.in_sync(), "the branches to connect and sync")

    def health(self, node: str) -> dict[str, Any] | None:
        if self.procs[node].poll() is not None:
            log = (self.root / "logs" / f"{node}.log").read_text(errors="replace")[-2000:]
            raise SystemExit(f"{node} stopped:\n{log}")
        try:
            url = f"http://127.0.0.1:{self.ports[node][1]}/health"
            with urllib.request.urlopen(url, timeout=2) as r:
                return dict(json.loads(r.read()))
        except OSError:
            return None

    def in_sync(self) -> bool:
        states = [self.health(node) for node in BRANCHES]
        return all(states) and len({s["digest"] for s in states if s}) == 1

    def wait(self, check: Any, what: str) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not check():
            if time.monotonic() > deadline:
                raise SystemExit(f"timed out waiting for {what}")
            time.sleep(0.2)

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()

    # --- the story ------------------------------------------------------------

    def member_id(self, node: str, phone: str) -> str:
        found = self.json("member", "find", "--data", self.data(node), phone)
        return str(found[0]["id"])

    def first_day(self) -> None:
        print("\n# Head office sets a promotion: top up 1000, get 200 bonus.")
        self.cli("rule", "set", "promotions", "--data", self.data("SH01"), "--json-body",
                 '[{"name": "充1000送200", "min": 100000, "bonus": 20000}]')
        print("\n# Members register and top up at their home branch.")
        for name, phone, home, amount, card in MEMBERS:
            mid = self.json("member", "add", "--data", self.data(home), "--name", name,
                            "--phone", phone, show=True)["member_id"]
            self.cli("card", "issue", "--data", self.data(home), "--member", mid, "--card", card)
            self.cli("topup", "--data", self.data(home), "--member", mid, "--amount", amount)
        self.wait(self.in_sync, "the branches to sync")
        print("\n# 张伟 topped up at 南京西路店 (SH01) and now visits 徐家汇店 (SH02), then")
        print("# 杭州西湖店 (HZ01, two hops away). Neither holds rights on his money, so each")
        print("# asks the branch that does, gets them in milliseconds, and serves him:")
        self.cli("debit", "--data", self.data("SH02"), "--card", "C10001", "--service", "FOOT60")
        self.cli("debit", "--data", self.data("HZ01"), "--card", "C10001", "--service", "FOOT60",
                 check=False)

    def show(self) -> None:
        self.wait(self.in_sync, "the branches to sync")
        zhang = self.member_id("SH01", MEMBERS[0][1])
        print("\n# Every branch holds the same books:")
        for node in BRANCHES:
            self.cli("balance", "--data", self.data(node), "--member", zhang)
        self.cli("rights", "show", "--data", self.data("SH01"), "--member", zhang)
        self.cli("status", "--data", self.data("SH02"))
        self.cli("report", "settlement", "--data", self.data("HZ01"))
        print("\nThe three nodes keep running. From another shell, try e.g.:")
        print(f"  .venv/bin/crdtledger debit --data {self.data('HZ01')} --card C10002 "
              "--amount 12.00")
        print(f"  .venv/bin/crdtledger status --data {self.data('SH01')}")
        for node, (_sync, api) in self.ports.items():
            print(f"  {node} {BRANCHES[node]}: http://127.0.0.1:{api}/api/openapi.json, "
                  f"/metrics, /health")
        print("Press Ctrl-C to stop them; ./run demo again resumes the same data.")


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM stops the nodes as cleanly as Ctrl-C


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="./run demo", description=__doc__)
    parser.add_argument("--data", default="demo-data", help="where the branches keep data")
    parser.add_argument("--fresh", action="store_true", help="delete the demo data first")
    parser.add_argument("--port", type=int, default=8470,
                        help="first of six ports on 127.0.0.1 (default 8470)")
    parser.add_argument("--exit", action="store_true",
                        help="stop the nodes after the walk-through instead of waiting")
    args = parser.parse_args(argv)
    demo = Demo(Path(args.data).resolve(), args.port)
    if demo.root.exists() and (args.fresh or not demo.chain.exists()):
        # (Demo data without a chain CA is from the sync-file demo of earlier versions.)
        shutil.rmtree(demo.root)
    new = not (demo.root / "SH01").exists()
    if new:
        demo.create()
    else:
        print(f"# Demo data found in {demo.root}: starting the same branches again.")
    try:
        demo.start()
        if new:
            demo.first_day()
        demo.show()
        signal.signal(signal.SIGTERM, _interrupt)
        while not args.exit:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        print("\n# Stopping the branch nodes...")
        demo.stop()


if __name__ == "__main__":
    main()
