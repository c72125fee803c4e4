"""The demo chain: three branches that trade members and money through sync files.

It runs the real `crdtledger` command for every step and prints each command before
its output, so it doubles as a tour of the CLI. The data stays in ./demo-data; run it
again and it shows the same books, then continues from there.

Until the branch node (network sync) exists, branches exchange sync files, which is
also how a branch without a network works for real.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

BRANCHES = {"SH01": "南京西路店", "SH02": "徐家汇店", "HZ01": "杭州西湖店"}
CHAIN = "demo"
MEMBERS = [
    # name, phone, home branch, top-up in yuan, card number
    ("张伟", "13812345678", "SH01", "1000.00", "C10001"),
    ("王芳", "13987654321", "SH02", "500.00", "C10002"),
    ("李娜", "13700001111", "HZ01", "300.00", "C10003"),
]


class Demo:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.files = root / "sync-files"

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

    def sync(self, src: str, dst: str, show: bool = True) -> None:
        self.files.mkdir(parents=True, exist_ok=True)
        f = str(self.files / f"{src}-to-{dst}.sync")
        self.cli("export", "--data", self.data(src), "--out", f, "--for", dst, show=show)
        self.cli("import", "--data", self.data(dst), f, show=show)

    def sync_all(self) -> None:
        print("\n# Every branch exports what the next one lacks; the next one imports it.")
        ring = list(BRANCHES)
        hops = list(zip(ring, ring[1:] + ring[:1], strict=True))
        for a, b in hops:
            self.sync(a, b)
        # Twice round the ring, so what the last branch had reaches the first ones too.
        for a, b in hops:
            self.sync(a, b, show=False)
        print(f"\n# (and once more round the ring: {' → '.join([*ring, ring[0]])})")

    def member_id(self, node: str, phone: str) -> str:
        found = self.json("member", "find", "--data", self.data(node), phone)
        return str(found[0]["id"]) if isinstance(found, list) else str(found["members"][0]["id"])

    def create(self) -> None:
        print("# A chain of three branches, each with its own data directory.")
        for node in BRANCHES:
            self.cli("init", "--data", self.data(node), "--node", node, "--chain", CHAIN)
        print("\n# Head office sets a promotion: top up 1000, get 200 bonus.")
        self.cli("rule", "set", "promotions", "--data", self.data("SH01"), "--json-body",
                 '[{"name": "充1000送200", "min": 100000, "bonus": 20000}]')
        print("\n# Members register and top up at their home branch.")
        for name, phone, home, amount, card in MEMBERS:
            mid = self.json("member", "add", "--data", self.data(home), "--name", name,
                            "--phone", phone, show=True)["member_id"]
            self.cli("card", "issue", "--data", self.data(home), "--member", mid, "--card", card)
            self.cli("topup", "--data", self.data(home), "--member", mid, "--amount", amount)
        self.sync_all()
        zhang = self.member_id("SH02", MEMBERS[0][1])
        print("\n# 张伟 topped up at 南京西路店 (SH01) and now visits 徐家汇店 (SH02).")
        print("# SH02 holds none of his money yet, so it refuses and says where it is:")
        self.cli("debit", "--data", self.data("SH02"), "--card", "C10001", "--service",
                 "FOOT60", check=False)
        print("\n# SH01 gives SH02 rights on part of his balance (a branch node does this")
        print("# by itself over the network; offline, the owner does it by hand).")
        self.cli("rights", "transfer", "--data", self.data("SH01"), "--member", zhang, "--to",
                 "SH02", "--amount", "300.00")
        self.sync("SH01", "SH02")
        self.cli("debit", "--data", self.data("SH02"), "--card", "C10001", "--service", "FOOT60")
        self.sync_all()

    def show(self) -> None:
        zhang = self.member_id("SH01", MEMBERS[0][1])
        print("\n# Every branch holds the same books:")
        for node in BRANCHES:
            self.cli("balance", "--data", self.data(node), "--member", zhang)
        self.cli("rights", "show", "--data", self.data("SH01"), "--member", zhang)
        self.cli("report", "daily", "--data", self.data("SH01"))
        self.cli("report", "settlement", "--data", self.data("HZ01"))
        print(f"\nData: {self.root}. Try for yourself, e.g.:")
        print(f"  .venv/bin/crdtledger member find --data {self.data('SH02')} 张")
        print(f"  .venv/bin/crdtledger history --data {self.data('SH02')} --member {zhang}")
        print("Run ./run demo again to continue with the same data; --fresh starts over.")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="./run demo", description=__doc__)
    parser.add_argument("--data", default="demo-data", help="where the branches keep data")
    parser.add_argument("--fresh", action="store_true", help="delete the demo data first")
    args = parser.parse_args(argv)
    demo = Demo(Path(args.data).resolve())
    if args.fresh and demo.root.exists():
        shutil.rmtree(demo.root)
    if not (demo.root / "SH01").exists():
        demo.create()
    else:
        print(f"# Demo data found in {demo.root}: syncing the branches again.")
        demo.sync_all()
    demo.show()


if __name__ == "__main__":
    main()
