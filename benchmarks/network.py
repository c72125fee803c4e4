"""Sync between real branch nodes: catch-up, anti-entropy, propagation, rights transfer.

Every node here is a real `peer.node.Node` (mutual-TLS websockets on 127.0.0.1, the
sans-I/O sync session, durable commits), each in a child process of its own
(`python -m benchmarks.network node DIR`), so that on a two-core machine the sender
and the receiver really run at the same time, as two shop PCs do. The parent only
steers them, one JSON line per command over the child's stdin and stdout, and is
idle while they work. Times taken in different processes are compared on
`time.monotonic_ns()`, which on Linux is CLOCK_MONOTONIC, one clock for the whole
machine.

Two benchmarks, the sections "sync" and "propagation" of the benchmark-suite issue:

`sync`
- catch-up: a node that has the members but none of the ledger of a data set
  (`benchmarks.datagen`, 10k and 100k entries) dials a node that has it all:
  seconds from the dial until its digest equals the other's, and the bytes: the
  sync protocol's payload (`crdtledger_sync_bytes`) and what TCP carried (TLS
  records, websocket framing, the handshakes), read from the kernel (TCP_INFO).
  Each repetition is a fresh process on a fresh copy; the node it catches up from
  keeps running, as a hub would.
- an anti-entropy round between the two, now in sync, started by hand alternately
  from each side: bytes both ways, and the time from the hello being queued to the
  peer having handled it. The nodes keep their periodic rounds (the defaults); a
  sample into which one of those fell is discarded and taken again.
- bytes per debit: debits at one node at 100/s, the sync bytes they cost, per block.

`propagation`
- commit-to-visible latency at 100 debits/s (open loop: each debit is due at its
  slot whatever the previous one took): from `Node.perform` returning at A (the
  debit is durable there) to the ledger listener at the receiver having the entry
  in its projection (durable there too). Two nodes A-B, then three in a line
  A-B-C (A and C not connected), measured at B and at C.
- automatic rights transfer: debits at B, alternately of a member whose rights B
  holds (a plain local debit) and of a member topped up at A just before, each
  used once (B must fetch rights from A): their times, and the time added per pair.
  A pause (`RIGHTS_GAP_S`) separates operations, as swipes at a counter are.

A (`B1`) starts from a copy of a generated data set; the other nodes start empty
(B4, B5), enrolled in the data set's own chain CA (its writers' heads are signed
under it), and join by catching up, so every node carries the same history.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import select
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import msgpack

from benchmarks import datagen
from benchmarks.common import POOL_TOPUP, SERVICE, Config, status_kb
from benchmarks.datagen import Size
from benchmarks.report import Figure, Report
from crdtledger import views
from crdtledger.log import Record

SYNC = "sync"
PROPAGATION = "propagation"
ROOT = Path(__file__).resolve().parent.parent
CHAIN = datagen.CHAIN  # the chain id of datagen's data sets
HUB = datagen.BENCH_NODE  # B1: the node whose store datagen wrote
JOINERS = ("B4", "B5")  # not among datagen's writers (HQ, B1, B2, B3)
RATE = 100.0  # debits per second in the propagation and bytes-per-debit streams
RIGHTS_GAP_S = 0.02
SETTLE_S = 2.0  # after a node joined, before a measured stream
QUIET_S = 0.2  # after a round or a stream, before counters are read: nothing in flight
WORST = 8  # slowest debits of a stream kept in the JSON: (s into the stream, ms, own ms)
# Event-loop stalls reported: longer than STALL_MS, seen by a thread sampling the
# loop's stack every SAMPLE_S while its heartbeat (every HEARTBEAT_S) is late.
STALL_MS = 25.0
SAMPLE_S = 0.005
HEARTBEAT_S = 0.005
STACK_DEPTH = 6
START_TIMEOUT_S = 60.0
# The sync file of the 100k data set before nodes wrote signed logs (full run at
# 0b9bbc0, benchmarks/README.md before f2f8a86): issue 12's bar is 1.2x this.
FILE_100K_BEFORE_MB = 25.1
CALL_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class Plan:
    catchup: tuple[tuple[Size, int], ...]  # data set, repetitions
    rounds: int  # in-sync anti-entropy rounds
    wire_debits: int  # debits for the bytes per debit, in `blocks` blocks
    blocks: int
    stream: int  # debits per propagation phase
    rights: int  # interleaved pairs of the rights benchmark
    live: Size  # data set of the propagation nodes


def plan(cfg: Config) -> Plan:
    small, large = Size(1_000, 10_000), Size(10_000, 100_000)
    if cfg.scale == "full":
        return Plan(((small, 5), (large, 3)), rounds=50, wire_debits=1000, blocks=10,
                    stream=3000, rights=300, live=large)
    if cfg.scale == "quick":
        return Plan(((small, 1), (large, 1)), rounds=10, wire_debits=200, blocks=4,
                    stream=500, rights=60, live=small)
    return Plan(((cfg.sizes[0], 1), (cfg.sizes[-1], 1)), rounds=4, wire_debits=40,
                blocks=2, stream=100, rights=10, live=cfg.sizes[0])


# --- the parent: nodes as child processes ------------------------------------------


class NodeProc:
    """One node in a child process, steered by JSON lines."""

    def __init__(self, data: Path, log: Path) -> None:
        self.log = log
        self._logf = open(log, "ab")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.network", "node", str(data)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._logf, cwd=ROOT)
        self._buf = b""
        try:
            ready = self._reply(START_TIMEOUT_S)
        except BaseException:
            self.proc.kill()
            self.proc.wait(10)
            self._logf.close()
            raise
        self.node: str = ready["node"]
        self.port: int = ready["port"]

    @property
    def url(self) -> str:
        return f"wss://127.0.0.1:{self.port}"

    def call(self, cmd: str, timeout: float = CALL_TIMEOUT_S, **args: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"cmd": cmd, **args}).encode() + b"\n")
        self.proc.stdin.flush()
        return self._reply(timeout)

    def _reply(self, timeout: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise RuntimeError(f"node child timed out after {timeout:.0f} s\n{self._tail()}")
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                raise RuntimeError(f"node child exited ({self.proc.wait()})\n{self._tail()}")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        out = dict(json.loads(line))
        if "error" in out:
            raise RuntimeError(f"node child: {out['error']}\n{self._tail()}")
        return out

    def _tail(self) -> str:
        self._logf.flush()
        return self.log.read_text(errors="replace")[-3000:]

    def digest(self) -> str:
        return str(self.call("digest")["digest"])

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                self.call("stop", timeout=30)
                self.proc.wait(30)
            except (RuntimeError, OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait(10)
        self._logf.close()


class Chain:
    """The chain CA of a data set (a copy: enrolling writes to it), the data
    directories of its nodes, the running nodes."""

    def __init__(self, work: Path, data_set: Path) -> None:
        self.work = work
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        self.dir = work / "chain"
        shutil.copytree(data_set / datagen.CHAIN_DIR, self.dir)
        self.data_set = data_set
        self.running: list[NodeProc] = []

    def hub(self, name: str) -> Path:
        """A copy of the data set: node B1 of this chain, enrolled when generated."""
        return datagen.working_copy(self.data_set, self.work / name)

    def empty(self, name: str, node: str) -> Path:
        from crdtledger.ledger import Ledger
        from peer.chain import enrol

        dest = self.work / name
        shutil.rmtree(dest, ignore_errors=True)
        Ledger.create(dest, node, CHAIN, datagen.TIMEZONE)
        enrol(self.dir, dest, node)
        return dest

    def start(self, data: Path) -> NodeProc:
        n = NodeProc(data, self.work / f"{data.name}.log")
        self.running.append(n)
        return n

    def stop(self, node: NodeProc) -> None:
        self.running.remove(node)
        node.stop()

    def close(self) -> None:
        for n in reversed(self.running):
            n.stop()
        self.running.clear()


@contextmanager
def _chain(work: Path, data_set: Path) -> Iterator[Chain]:
    chain = Chain(work, data_set)
    try:
        yield chain
    finally:
        chain.close()


def _members_only(data_set: Path, hub: Path, dest: Path) -> int:
    """Give `dest` (an empty node) the records of the rules and member documents,
    with the heads their writers signed there (`datagen.members_batch`): a node that
    knows the members and lacks all of their entries. Returns the size of what it
    lacks (its records' wire form, without heads or certificates): the least a
    catch-up sends."""
    from crdtledger.ledger import Ledger

    with contextlib.closing(Ledger.open(dest)) as dst:
        dst.apply_batch(datagen.members_batch(data_set), strict=True)
        view = dst.log_view()
    with contextlib.closing(Ledger.open(hub, lock=False)) as src:
        return len(msgpack.packb([[r.node, r.seq, r.doc, r.data] for r in src.lacking(view)],
                                 use_bin_type=True))


def _sync_file(data: Path, behind: Path, work: Path, reps: int) -> list[dict[str, Any]]:
    """The offline way to the same state: the hub, having seen what the node behind
    holds (a file or a session from it), exports what it lacks (`crdtledger export
    --for B4`); the file is imported into a fresh copy of the node behind, which
    must then hold what the hub holds. Timed in this process: library calls, as the
    CLI makes them."""
    from crdtledger.ledger import Ledger
    from crdtledger.syncfile import export_file, import_file

    hub_dir = datagen.working_copy(data, work / "hub")  # remembering a peer writes
    with contextlib.closing(Ledger.open(behind, lock=False)) as led:
        theirs = led.positions()
    runs = []
    with contextlib.closing(Ledger.open(hub_dir)) as hub:
        hub.remember_peer(JOINERS[0], theirs)
        want = hub.states_digest()
        path = work / "to-B4.sync"
        for _ in range(reps):
            t0 = time.perf_counter()
            exported = export_file(hub, path, JOINERS[0])
            t1 = time.perf_counter()
            dest = work / "behind"
            shutil.rmtree(dest, ignore_errors=True)
            shutil.copytree(behind, dest)
            with contextlib.closing(Ledger.open(dest)) as led, verify_timer() as spent:
                t2 = time.perf_counter()
                imported = import_file(led, path)
                t3 = time.perf_counter()
                if imported["incomplete"] or led.states_digest() != want:
                    raise RuntimeError(f"sync file: the import did not reach the hub's state "
                                       f"({imported['incomplete']})")
            runs.append({"export_s": t1 - t0, "import_s": t3 - t2, "bytes": exported["bytes"],
                         "documents": exported["documents"], "records": exported["records"],
                         **spent})
    shutil.rmtree(work, ignore_errors=True)
    return runs


@contextmanager
def verify_timer() -> Iterator[dict[str, float]]:
    """Seconds spent verifying records (`Replica._verify`: hash chains, head
    signatures, certificates) and judging them by the write rules
    (`writerules.check_header` and `check_change`, as `crdtledger.replica` calls
    them), accumulated by perf counters wrapped around them for the duration; in this
    process only. The wrappers cost about 0.2 µs per call (one per record)."""
    from crdtledger import replica

    spent = {"verify_s": 0.0, "rules_s": 0.0}
    orig_verify = replica.Replica._verify
    orig_header, orig_change = vars(replica)["check_header"], vars(replica)["check_change"]

    def timed(fn: Any, key: str) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[key] += time.perf_counter() - t0
        return wrapper

    def timed_steps(fn: Any, key: str) -> Any:
        """`_verify` is a generator (a step per turn): each step is timed, not the
        waits between them (timing the call timed making the generator: 0 s)."""
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            steps = fn(*args, **kwargs)
            while True:
                t0 = time.perf_counter()
                try:
                    next(steps)
                except StopIteration as done:
                    return done.value
                finally:
                    spent[key] += time.perf_counter() - t0
                yield
        return wrapper

    replica.Replica._verify = timed_steps(orig_verify, "verify_s")  # type: ignore[method-assign]
    setattr(replica, "check_header", timed(orig_header, "rules_s"))  # noqa: B010
    setattr(replica, "check_change", timed(orig_change, "rules_s"))  # noqa: B010
    try:
        yield spent
    finally:
        replica.Replica._verify = orig_verify  # type: ignore[method-assign]
        setattr(replica, "check_header", orig_header)  # noqa: B010
        setattr(replica, "check_change", orig_change)  # noqa: B010


def _ms(ns: list[int] | list[float]) -> list[float]:
    return [x / 1e6 for x in ns]


COUNTERS = ("rounds", "payload_in", "payload_out", "tcp_in", "tcp_out")


def _delta(after: dict[str, Any], before: dict[str, Any]) -> dict[str, int]:
    return {k: int(after[k] - before[k]) for k in COUNTERS}


def _load() -> dict[str, Any]:
    """What else the machine is doing (a node's fsync and wake-ups suffer from it)."""
    out: dict[str, Any] = {"loadavg": Path("/proc/loadavg").read_text().split()[:3]}
    for kind in ("cpu", "io"):
        with contextlib.suppress(OSError):  # pressure stall information, Linux >= 4.20
            some = Path(f"/proc/pressure/{kind}").read_text().splitlines()[0]
            out[f"{kind}_pressure_avg60"] = float(some.split()[2].split("=")[1])
    return out


def _code() -> dict[str, Any]:
    """The revision measured, and which library files differed from it (the figures
    are of the working tree)."""
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                                  timeout=10, check=False).stdout
        except OSError:
            return ""

    dirty = [line.split(maxsplit=1)[-1] for line in
             git("status", "--porcelain", "--", "crdtledger", "peer").splitlines()]
    return {"commit": git("rev-parse", "--short", "HEAD").strip(), "modified": dirty}


# --- sync ------------------------------------------------------------------------


def run_sync(cfg: Config, report: Report) -> None:
    p = plan(cfg)
    details: dict[str, Any] = {"code": _code(), "load_before": _load(), "catchup": {}}
    for size, reps in p.catchup:
        data = datagen.dataset(size, cfg.out, cfg.log)
        label = datagen._short(size.entries)
        with _chain(cfg.work / SYNC / label, data) as chain:
            hub_dir = chain.hub(f"hub-{label}")
            template = chain.empty(f"behind-{label}", JOINERS[0])
            lacking = _members_only(data, hub_dir, template)
            last = size == p.catchup[-1][0]
            cfg.log(f"sync: a sync file of {label} entries, exported and imported, {reps} runs")
            files = _sync_file(data, template, chain.work / f"file-{label}", reps)
            cfg.log(f"sync: catch-up of {label} entries ({size.label}), {reps} runs")
            hub = chain.start(hub_dir)
            states = hub.call("states")["states"]
            runs = []
            behind: NodeProc | None = None
            for rep in range(reps):
                if behind is not None:
                    chain.stop(behind)
                behind_dir = chain.work / f"behind-{label}-{rep}"
                shutil.rmtree(behind_dir, ignore_errors=True)
                shutil.copytree(template, behind_dir)
                behind = chain.start(behind_dir)
                cpu0 = hub.call("cpu")["cpu_s"]
                r = behind.call("catchup", url=hub.url, states=states)
                r["hub_cpu_s"] = hub.call("cpu")["cpu_s"] - cpu0
                runs.append(r)
            assert behind is not None
            name = f"catch-up {label} entries"
            secs = report.figure(SYNC, f"{name}: dial -> digests equal", "s",
                                 [r["done_ns"] / 1e9 for r in runs],
                                 f"{size.label}; the joining node has the members")
            report.figure(SYNC, f"{name}: dial -> last frame handled", "s",
                          [r["last_frame_ns"] / 1e9 for r in runs],
                          "frames sent before the peer knew it was done, included")
            report.figure(SYNC, f"{name}: payload received", "MB",
                          [r["bytes"]["payload_in"] / 1e6 for r in runs],
                          "sync protocol frames (crdtledger_sync_bytes)")
            report.figure(SYNC, f"{name}: payload / what it lacked", "x",
                          [r["bytes"]["payload_in"] / lacking for r in runs],
                          f"lacked: the records it lacked, {lacking / 1e6:.2f} MB as msgpack")
            report.figure(SYNC, f"{name}: on the wire, both ways", "MB",
                          [(r["bytes"]["tcp_in"] + r["bytes"]["tcp_out"]) / 1e6 for r in runs],
                          "TCP payload: TLS records, websocket frames, handshakes")
            report.figure(SYNC, f"{name}: CPU of the joining node", "s",
                          [r["cpu_total_s"] for r in runs])
            report.figure(SYNC, f"{name}: CPU of the node it joins", "s",
                          [r["hub_cpu_s"] for r in runs])
            ver = report.figure(SYNC, f"{name}: verifying, in the joining node", "s",
                                [r["verify"]["verify_s"] for r in runs],
                                "Replica._verify: hash chains, head signatures, certificates")
            rules = report.figure(SYNC, f"{name}: write rules, in the joining node", "s",
                                  [r["verify"]["rules_s"] for r in runs],
                                  "writerules.check_header + check_change")
            share = report.figure(
                SYNC, f"{name}: verifying + write rules / dial -> digests equal", "x",
                [(r["verify"]["verify_s"] + r["verify"]["rules_s"]) / (r["done_ns"] / 1e9)
                 for r in runs], "perf counters around the checks, in the joining node")
            report.figure(SYNC, f"{name}: verifying + write rules / CPU of the joining node",
                          "x", [(r["verify"]["verify_s"] + r["verify"]["rules_s"])
                                / r["cpu_total_s"] for r in runs])
            if size.entries >= 100_000 or last:
                report.limit(SYNC, f"{name} (worst)", max(secs.samples), "s", 3.0,
                             "issue target: 100k entries <= 3 s" if size.entries >= 100_000
                             else "the target is for 100k entries; a toy size here")
                report.limit(SYNC, f"{name}: verifying share (worst)", max(share.samples), "x",
                             0.10, f"issue 12: verifying <= 10% of the catch-up (median "
                             f"{ver.median:.2f} s verify + {rules.median:.2f} s rules)")
            name = f"sync file {label} entries"
            report.figure(SYNC, f"{name}: export", "s", [f["export_s"] for f in files],
                          "what the joining node lacks (export --for it), written + fsync")
            report.figure(SYNC, f"{name}: import", "s", [f["import_s"] for f in files],
                          "read, checked and applied all or nothing (import_file)")
            size_mb = report.figure(SYNC, f"{name}: file size", "MB",
                                    [f["bytes"] / 1e6 for f in files],
                                    "sealed: signed and encrypted (not compressible)")
            report.figure(SYNC, f"{name}: import, verifying + write rules", "s",
                          [f["verify_s"] + f["rules_s"] for f in files],
                          "the same perf counters as the catch-up's")
            if size.entries == 100_000:
                report.limit(SYNC, f"{name}: size / before signed logs", size_mb.median
                             / FILE_100K_BEFORE_MB, "x", 1.2,
                             f"issue 12: <= 1.2x the {FILE_100K_BEFORE_MB} MB of the full "
                             "run at 0b9bbc0 (per-document diffs, unsealed)")
            details["catchup"][label] = {"data_set": datagen.info(data), "runs": runs,
                                         "lacking_bytes": lacking, "sync_file": files}
            if last:
                details.update(_in_sync(cfg, p, report, hub, behind))
            chain.close()
    report.note(SYNC, **details, load_after=_load())


def _in_sync(cfg: Config, p: Plan, report: Report, a: NodeProc, b: NodeProc
             ) -> dict[str, Any]:
    """Anti-entropy rounds between two nodes in sync, then bytes per debit."""
    cfg.log(f"sync: {p.rounds} in-sync anti-entropy rounds, then {p.wire_debits} debits at "
            f"{RATE:.0f}/s for the bytes per debit")
    if a.digest() != b.digest():
        raise RuntimeError("sync: nodes not in sync before the anti-entropy rounds")
    # A catch-up can lose its link (its batch holds the loop for seconds): the joining
    # node redials; the rounds need the link up at both ends.
    a.call("wait", peers=[b.node])
    b.call("wait", peers=[a.node])
    wire: list[float] = []
    payload: list[float] = []
    took: list[float] = []
    spoilt = 0
    while len(wire) < p.rounds:
        src, dst = (a, b) if len(wire) % 2 == 0 else (b, a)
        before_src = src.call("counters", peer=dst.node)
        before_dst = dst.call("counters", peer=src.node)
        t0 = src.call("round", peer=dst.node)["wall"]
        deadline = time.monotonic() + 10
        while (after_dst := dst.call("counters", peer=src.node))["rounds"] == \
                before_dst["rounds"]:
            if time.monotonic() > deadline:
                raise RuntimeError("sync: the peer never handled the hello")
            time.sleep(0.002)
        time.sleep(QUIET_S)  # an answer (there should be none) would be in by now
        d = _delta(src.call("counters", peer=dst.node), before_src)
        if d["rounds"] != 0 or after_dst["rounds"] != before_dst["rounds"] + 1 or \
                dst.call("counters", peer=src.node)["rounds"] != after_dst["rounds"]:
            spoilt += 1  # a periodic round of either node fell in: not one round alone
            if spoilt > 5 * p.rounds:
                raise RuntimeError("sync: periodic rounds spoil every measured round")
            continue
        wire.append(d["tcp_in"] + d["tcp_out"])
        payload.append(d["payload_in"] + d["payload_out"])
        took.append((after_dst["last_contact"] - t0) * 1000)
    on_wire = report.figure(SYNC, "in-sync round: on the wire, both ways", "B", wire,
                            "one hello and whatever it draws (nothing, in sync)")
    report.figure(SYNC, "in-sync round: payload, both ways", "B", payload)
    report.figure(SYNC, "in-sync round: hello queued -> peer done", "ms", took,
                  "the peer compared digests and found nothing to ask")
    report.limit(SYNC, "in-sync round on the wire (worst)", max(on_wire.samples), "B", 1024.0,
                 "issue target: <= 1 KB")
    # Bytes per debit: debits at A in blocks, counters read around each block.
    pool = a.call("pool", n=max(2, p.wire_debits // 20), seed="wire")["members"]
    a.call("fund", members=pool)
    _settle([a, b])
    per_wire, per_payload = [], []
    n = p.wire_debits // p.blocks
    for _ in range(p.blocks):
        before = a.call("counters", peer=b.node)
        a.call("stream", members=pool, n=n, rate=RATE)
        _settle([a, b])
        d = _delta(a.call("counters", peer=b.node), before)
        per_wire.append((d["tcp_in"] + d["tcp_out"]) / n)
        per_payload.append((d["payload_in"] + d["payload_out"]) / n)
    bw = report.figure(SYNC, "bytes per debit: on the wire, both ways", "B", per_wire,
                       f"per block of {n} debits at {RATE:.0f}/s, A -> B, with the "
                       "periodic rounds and heartbeats of the block")
    report.figure(SYNC, "bytes per debit: payload", "B", per_payload,
                  "the update frame carrying the debit's entry")
    report.limit(SYNC, "bytes per debit on the wire (median)", bw.median, "B", 150.0,
                 "benchmark-suite issue's target (not the node issue's)")
    return {"rounds_spoilt_by_periodic_rounds": spoilt}


# --- propagation --------------------------------------------------------------------


def run_propagation(cfg: Config, report: Report) -> None:
    p = plan(cfg)
    data = datagen.dataset(p.live, cfg.out, cfg.log)
    details: dict[str, Any] = {"code": _code(), "load_before": _load(),
                               "data_set": datagen.info(data)}
    with _chain(cfg.work / PROPAGATION, data) as chain:
        a = chain.start(chain.hub("a"))
        b = chain.start(chain.empty("b", JOINERS[0]))
        cfg.log(f"propagation: {b.node} joins {a.node} ({p.live.label})")
        details["b_joins_a"] = b.call("catchup", url=a.url, states=a.call("states")["states"])
        members = a.call("pool", n=10**9, seed="propagation")["members"]
        # Each stream member is funded once (POOL_TOPUP: about 30 debits) for both
        # streams; the rights benchmark's members are its own.
        stream_n = max(2, -(-2 * p.stream // 15))
        stream_pool, rest = members[:stream_n], members[stream_n:]
        remote, local = rest[:p.rights], rest[p.rights:p.rights + max(2, p.rights // 10)]
        if len(remote) < p.rights or len(local) < 2:
            raise RuntimeError(f"propagation: {len(members)} members are too few")
        a.call("fund", members=stream_pool + remote)
        b.call("fund", members=local)
        _settle([a, b])
        on = f"nodes with {p.live.label}"
        cfg.log(f"propagation: {p.stream} debits at {RATE:.0f}/s, A -> B")
        details["worst_2_nodes"] = {}
        lat = _stream(a, [b], stream_pool, p.stream, details["worst_2_nodes"])
        ab = report.figure(PROPAGATION, "A -> B, 2 nodes: commit -> visible", "ms", lat[0],
                           f"{RATE:.0f} debits/s at A, open loop; {on}")
        report.figure(PROPAGATION, "A: debit during the stream (Node.perform)", "ms",
                      lat[-1], "the sender's own durable debit")
        report.limit(PROPAGATION, "A -> B, 2 nodes: p99", _p99(ab), "ms", 50.0,
                     "issue target: p99 <= 50 ms")

        cfg.log(f"propagation: rights transfer, {p.rights} interleaved pairs at B")
        for n in (a, b):
            n.call("stalls")
        r = b.call("rights", local=local, remote=remote, gap=RIGHTS_GAP_S)
        details["rights_stalls"] = {n.node: n.call("stalls")["stalls"] for n in (a, b)}
        loc = report.figure(PROPAGATION, "debit at B, rights at B", "ms", _ms(r["local_ns"]),
                            f"plain local debit through Node.perform; interleaved; {on}")
        fet = report.figure(PROPAGATION, "debit at B, rights at A (fetched)", "ms",
                            _ms(r["remote_ns"]), "a member topped up at A, each debited once")
        added = report.figure(PROPAGATION, "rights fetch: added to a debit", "ms",
                              [(x - y) / 1e6 for x, y in zip(r["remote_ns"], r["local_ns"],
                                                             strict=True)],
                              "fetched minus the local debit of the same pair")
        report.figure(PROPAGATION, "rights fetch: the refused first try", "ms",
                      _ms(r["first_ns"]), "the debit refused with RightsElsewhere")
        report.figure(PROPAGATION, "rights fetch: waiting for the rights", "ms",
                      _ms(r["fetch_ns"]), "between the two tries: request to A, A's "
                      "transfer, its update and reply back, applied here")
        report.figure(PROPAGATION, "rights fetch: the debit retried", "ms",
                      _ms(r["retry_ns"]), "after the rights arrived")
        report.ratio(PROPAGATION, "debit with rights fetched / local debit", fet, loc,
                     note="interleaved A B A B")
        report.limit(PROPAGATION, "rights fetch: added to a debit, p99", _p99(added), "ms",
                     200.0, "issue target: p99 <= 200 ms")
        details["rights"] = {k: v for k, v in r.items() if not k.endswith("_ns")}

        c = chain.start(chain.empty("c", JOINERS[1]))
        cfg.log(f"propagation: {c.node} joins {b.node}, then {p.stream} debits at "
                f"{RATE:.0f}/s, A -> B -> C (a line)")
        details["c_joins_b"] = c.call("catchup", url=b.url, states=b.call("states")["states"])
        _settle([a, b, c])
        time.sleep(SETTLE_S)  # the joined node writes back what it took in
        if a.call("wait")["connected"] != [b.node]:
            raise RuntimeError("propagation: A must be connected to B only")
        details["worst_line"] = {}
        lat = _stream(a, [b, c], stream_pool, p.stream, details["worst_line"])
        report.figure(PROPAGATION, "A -> B, 3 in a line: commit -> visible", "ms", lat[0])
        abc = report.figure(PROPAGATION, "A -> B -> C, 3 in a line: commit -> visible", "ms",
                            lat[1], "two hops: B relays to C")
        report.limit(PROPAGATION, "A -> B -> C, 3 in a line: p99", _p99(abc), "ms", 50.0,
                     "the same bar through a middle node")
    report.note(PROPAGATION, **details, load_after=_load())


def _settle(nodes: list[NodeProc], timeout: float = 120.0) -> None:
    """Wait until every node holds the same (all digests equal), and a moment more."""
    deadline = time.monotonic() + timeout
    while len({n.digest() for n in nodes}) > 1:
        if time.monotonic() > deadline:
            raise RuntimeError(f"nodes {[n.node for n in nodes]} did not converge")
        time.sleep(0.02)
    time.sleep(QUIET_S)


def _stream(src: NodeProc, sinks: list[NodeProc], pool: list[str], n: int,
            worst: dict[str, Any]) -> list[list[float]]:
    """Debits at `src` at RATE; the latency to each sink (ms), then the debits' own.
    `worst` gets the slowest debits of each: when in the stream (s), and how slow."""
    for s in (src, *sinks):
        s.call("stalls")  # forget the earlier ones
    for s in sinks:
        s.call("track")
    sent = src.call("stream", members=pool, n=n, rate=RATE)
    _settle([src, *sinks])
    out = []
    t0 = sent["commit_ns"][0]
    for s in (src, *sinks):
        st = s.call("stalls")
        worst[f"stalls at {s.node}"] = [
            {"s": round((x["at_ns"] - t0) / 1e9, 2), "ms": x["ms"], "where": x["where"]}
            for x in st["stalls"]]
        worst[f"counts at {s.node}"] = st["counts"]
    for s in sinks:
        seen = s.call("seen", ids=sent["ids"])["ns"]
        lost = [i for i, t in zip(sent["ids"], seen, strict=True) if t is None]
        if lost:
            raise RuntimeError(f"{len(lost)} debits never became visible at {s.node}")
        lat = [(t - c) / 1e6 for t, c in zip(seen, sent["commit_ns"], strict=True)]
        out.append(lat)
        slow = sorted(range(n), key=lambda i: -lat[i])[:WORST]
        worst[s.node] = [(round((sent["commit_ns"][i] - t0) / 1e9, 2), round(lat[i], 1),
                          round(sent["op_ns"][i] / 1e6, 1)) for i in sorted(slow)]
    out.append(_ms(sent["op_ns"]))
    worst["late_ms_max"] = round(sent["late_ms_max"], 1)
    return out


def _p99(fig: Figure) -> float:
    return float(fig.summary()["p99"])


# --- the child: one node, steered over stdin/stdout ------------------------------


def _tcp_bytes(ws: Any) -> tuple[int, int]:
    """(received, sent and acknowledged) bytes of the connection's TCP socket, from
    the kernel's tcp_info (Linux >= 4.1: tcpi_bytes_acked at offset 120,
    tcpi_bytes_received at 128): everything TLS put on the wire, handshake included."""
    sock = ws.get_extra_info("socket")
    if sock is None:
        return 0, 0
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 192)
    if len(info) < 136:
        return 0, 0
    acked, received = struct.unpack_from("<QQ", info, 120)
    return int(received), int(acked)


class StallWatch:
    """Event-loop stalls longer than STALL_MS, and the code the loop was running
    meanwhile: a stalled loop cannot report on itself, so a thread samples the loop
    thread's stack every SAMPLE_S while the loop's heartbeat is late. This is what
    explains a latency's tail: every frame waits while the loop is held."""

    def __init__(self) -> None:
        self.beat = time.monotonic()
        self.stalls: list[dict[str, Any]] = []
        self._thread_id = threading.get_ident()
        self._open: dict[str, Any] | None = None
        self._stop = threading.Event()
        threading.Thread(target=self._watch, daemon=True, name="stall-watch").start()

    async def heartbeat(self) -> None:
        while True:
            self.beat = time.monotonic()
            await asyncio.sleep(HEARTBEAT_S)

    def _watch(self) -> None:
        while not self._stop.wait(SAMPLE_S):
            lag = time.monotonic() - self.beat
            if lag * 1000 < STALL_MS:
                if self._open is not None:
                    self.stalls.append(self._open)
                    self._open = None
                continue
            frame = sys._current_frames().get(self._thread_id)
            where = _where(frame)
            if self._open is None:
                self._open = {"at_ns": int(self.beat * 1e9), "ms": 0.0, "samples": {}}
            self._open["ms"] = round(lag * 1000, 1)
            self._open["samples"][where] = self._open["samples"].get(where, 0) + 1

    def take(self) -> list[dict[str, Any]]:
        out, self.stalls = self.stalls, []
        for st in out:  # the stack seen most often during the stall, and how often
            where, n = max(st.pop("samples").items(), key=lambda kv: kv[1])
            st["where"], st["share"] = where, n
        return out

    def stop(self) -> None:
        self._stop.set()


def _where(frame: Any) -> str:
    """The library's frames of a stack (and this module's), outermost first:
    `Class.method:line > ...`, the innermost STACK_DEPTH of them."""
    names = []
    while frame is not None:
        path = frame.f_code.co_filename
        if "/crdtledger/" in path or "/peer/" in path or path.endswith("network.py"):
            names.append(f"{frame.f_code.co_qualname}:{frame.f_lineno}")
        frame = frame.f_back
    return " > ".join(reversed(names[:STACK_DEPTH])) or "(outside the library)"


class Child:
    def __init__(self, data: Path) -> None:
        from peer.node import Config as NodeConfig
        from peer.node import Node

        # The node's defaults (anti-entropy period, rights deadline, rebalancer).
        self.node = Node(NodeConfig(data, listen=("127.0.0.1", 0), api=("127.0.0.1", 0),
                                    peers=[], mdns=False))
        self.tracking = False
        self.watermark = ""
        self.seen_ns: dict[str, int] = {}
        # During a catch-up: the logs not yet held as far as the peer held them.
        self.target: dict[str, int] = {}
        self.pending: set[str] = set()
        self.reached = asyncio.Event()
        self.reached_ns = 0
        self.watch = StallWatch()

    # Called after every log record committed here, local or remote (Ledger.subscribe):
    # a batch's records one after the other, once it is applied whole.
    def on_commit(self, record: Record, origin: object) -> None:
        if origin is None:
            return
        if self.tracking and record.doc.startswith("ledger/"):
            now = time.monotonic_ns()
            for eid in views.entry_ids_after(self.node.ledger, self.watermark):
                self.seen_ns.setdefault(eid, now)
                self.watermark = max(self.watermark, eid)
        if record.node in self.pending and record.seq >= self.target[record.node]:
            self.pending.discard(record.node)
            if not self.pending:
                self.reached_ns = time.monotonic_ns()
                self.reached.set()

    async def main(self) -> None:
        node = self.node
        await node.start()
        node.ledger.subscribe(self.on_commit)
        heartbeat = asyncio.create_task(self.watch.heartbeat())
        self.reply({"node": node.node_id, "port": node.sync_port})
        try:
            while line := await asyncio.to_thread(sys.stdin.readline):
                msg = json.loads(line)
                cmd = msg.pop("cmd")
                if cmd == "stop":
                    break
                try:
                    self.reply(await getattr(self, "cmd_" + cmd)(**msg))
                except Exception as e:  # reported to the parent, which raises
                    logging.exception("command %s failed", cmd)
                    self.reply({"error": f"{cmd}: {type(e).__name__}: {e}"})
        finally:
            heartbeat.cancel()
            self.watch.stop()
            await node.stop()
        self.reply({"stopped": True})

    @staticmethod
    def reply(obj: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    def counters(self, peer: str) -> dict[str, Any]:
        reg = self.node.metrics.registry
        link = self.node.link(peer)
        tcp_in, tcp_out = _tcp_bytes(link.ws) if link is not None else (0, 0)
        state = self.node.peers.get(peer)
        return {
            "rounds": link.session.rounds if link is not None else 0,  # hellos received
            "last_contact": state.last_contact if state is not None else None,
            "payload_in": reg.get_sample_value("crdtledger_sync_bytes_total",
                                               {"peer": peer, "direction": "in"}) or 0,
            "payload_out": reg.get_sample_value("crdtledger_sync_bytes_total",
                                                {"peer": peer, "direction": "out"}) or 0,
            "tcp_in": tcp_in, "tcp_out": tcp_out,
        }

    # --- commands ---------------------------------------------------------------

    async def cmd_stalls(self) -> dict[str, Any]:
        """Stalls since the last call, and what this node has counted (its metrics)."""
        reg = self.node.metrics.registry
        counts = {f"{m.name}{sorted(s.labels.items())}": s.value
                  for m in reg.collect() for s in m.samples
                  if m.name in ("crdtledger_rights_transfers", "crdtledger_operations")
                  and s.name.endswith("_total")}
        return {"stalls": self.watch.take(), "counts": counts}

    async def cmd_digest(self) -> dict[str, Any]:
        return {"digest": self.node.digest()}

    async def cmd_cpu(self) -> dict[str, Any]:
        return {"cpu_s": time.process_time()}

    async def cmd_memory(self) -> dict[str, Any]:
        """Resident memory now and at its peak (MB)."""
        return {"rss_mb": status_kb("VmRSS") / 1024, "peak_mb": status_kb("VmHWM") / 1024}

    async def cmd_counters(self, peer: str) -> dict[str, Any]:
        return self.counters(peer)

    async def cmd_round(self, peer: str) -> dict[str, Any]:
        link = self.node.link(peer)
        assert link is not None, f"not connected to {peer}"
        wall = time.time()
        link.session.anti_entropy()
        link.wake()
        return {"wall": wall}

    async def cmd_wait(self, peers: list[str] | None = None, digest: str | None = None,
                       timeout: float = 120.0) -> dict[str, Any]:
        peers = peers or []
        deadline = time.monotonic() + timeout
        while not (set(peers) <= set(self.node.connected())
                   and (digest is None or self.node.digest() == digest)):
            if time.monotonic() > deadline:
                raise TimeoutError(f"connected {self.node.connected()}, waiting for {peers} "
                                   f"and digest {digest}")
            await asyncio.sleep(0.005)
        return {"connected": self.node.connected()}

    async def cmd_states(self) -> dict[str, Any]:
        """How far this node holds each log (what a joining node must reach)."""
        return {"states": self.node.ledger.positions()}

    async def cmd_catchup(self, url: str, states: dict[str, int], wait_s: float = 300.0
                          ) -> dict[str, Any]:
        """Dial `url` and time until this node holds every log as far as `states`
        (the peer's positions), at most `wait_s` (not `timeout`: `NodeProc.call` takes
        that name for itself). Verifying and the write rules are timed meanwhile
        (`verify_timer`)."""
        node = self.node
        ours = node.ledger.positions()
        self.target = dict(states)
        self.pending = {n for n, seq in self.target.items() if ours.get(n, 0) < seq}
        self.reached_ns = 0
        self.reached.clear()
        with verify_timer() as spent:
            cpu0 = await self.cmd_cpu()
            t0, wall0 = time.monotonic_ns(), time.time()
            node.dial(url)
            while not node.connected():
                await asyncio.sleep(0.001)
            connected = time.monotonic_ns()
            first = node.link(node.connected()[0])
            if self.pending:
                await asyncio.wait_for(self.reached.wait(), wait_s)
            else:
                self.reached_ns = connected
            cpu1 = await self.cmd_cpu()
            verify = dict(spent)
        peer = node.connected()[0]
        # The rest of the round: frames the peer queued before it knew we had it all.
        last = node.peers[peer].last_contact
        while True:
            await asyncio.sleep(QUIET_S)
            if node.peers[peer].last_contact == last:
                break
            last = node.peers[peer].last_contact
        cpu2 = await self.cmd_cpu()
        # The peer may have moved on meanwhile (a rights transfer, its rebalancer): what
        # we hold must cover what it held when asked, and may hold more.
        ours = node.ledger.positions()
        short = [n for n, seq in self.target.items() if ours.get(n, 0) < seq]
        self.target = {}
        if short:
            raise RuntimeError(f"caught up by the applied records, yet short of {short}")
        refused = list(node.ledger.refusals)
        if refused:
            raise RuntimeError(f"records refused during the catch-up: {refused[:3]}")
        return {"connected_ns": connected - t0, "done_ns": self.reached_ns - t0,
                "verify": verify, "same_link": node.link(peer) is first,
                "last_frame_ns": int(((last or wall0) - wall0) * 1e9),
                "cpu_s": cpu1["cpu_s"] - cpu0["cpu_s"],
                "cpu_total_s": cpu2["cpu_s"] - cpu0["cpu_s"], "peer": peer,
                "bytes": self.counters(peer)}

    async def cmd_pool(self, n: int, seed: str) -> dict[str, Any]:
        from benchmarks.common import member_pool

        return {"members": member_pool(self.node.ledger, n, seed)}

    async def cmd_fund(self, members: list[str]) -> dict[str, Any]:
        led = self.node.ledger
        for m in members:
            await self.node.perform(partial(led.topup, led.owner, m, POOL_TOPUP))
        return {"funded": len(members)}

    async def cmd_track(self) -> dict[str, Any]:
        self.watermark = views.max_entry_id(self.node.ledger)
        self.seen_ns.clear()
        self.tracking = True
        return {"watermark": self.watermark}

    async def cmd_seen(self, ids: list[str]) -> dict[str, Any]:
        self.tracking = False
        return {"ns": [self.seen_ns.get(i) for i in ids]}

    async def cmd_stream(self, members: list[str], n: int, rate: float) -> dict[str, Any]:
        """`n` debits at `rate` per second, open loop: each is due at its slot."""
        node, led = self.node, self.node.ledger
        period = 1e9 / rate
        start = time.monotonic_ns() + 20_000_000
        ids, commit, op, late = [], [], [], []
        for i in range(n):
            due = start + int(i * period)
            delay = due - time.monotonic_ns()
            await asyncio.sleep(max(0.0, delay / 1e9))  # also lets the writers run
            m = members[i % len(members)]
            t0 = time.monotonic_ns()
            entry = await node.perform(partial(led.debit, led.owner, m, service=SERVICE))
            t1 = time.monotonic_ns()
            ids.append(entry["id"])
            commit.append(t1)
            op.append(t1 - t0)
            late.append(t0 - due)
        return {"ids": ids, "commit_ns": commit, "op_ns": op,
                "late_ms_max": max(late) / 1e6, "late_ms_median": statistics.median(late) / 1e6}

    async def cmd_rights(self, local: list[str], remote: list[str], gap: float
                         ) -> dict[str, Any]:
        """Interleaved: a debit served from rights held here, then one whose rights
        are at a peer (each remote member once). `Node.perform` runs the debit,
        which is refused, asks the peer, and runs it again: both runs are timed, and
        what lies between them is the wait for the rights."""
        node, led = self.node, self.node.ledger
        out: dict[str, list[int]] = {"local_ns": [], "remote_ns": [], "first_ns": [],
                                     "fetch_ns": [], "retry_ns": []}
        fetched = 0
        for i, m in enumerate(remote):
            await asyncio.sleep(gap)
            lm = local[i % len(local)]
            t0 = time.monotonic_ns()
            await node.perform(partial(led.debit, led.owner, lm, service=SERVICE))
            out["local_ns"].append(time.monotonic_ns() - t0)
            await asyncio.sleep(gap)
            tries: list[int] = []

            def debit(m: str = m, tries: list[int] = tries) -> dict[str, Any]:
                t = time.monotonic_ns()
                try:
                    return led.debit(led.owner, m, service=SERVICE)
                finally:
                    tries.append(time.monotonic_ns() - t)

            t0 = time.monotonic_ns()
            await node.perform(debit)
            total = time.monotonic_ns() - t0
            out["remote_ns"].append(total)
            if len(tries) == 2:  # refused, rights fetched, done
                fetched += 1
                out["first_ns"].append(tries[0])
                out["fetch_ns"].append(total - tries[0] - tries[1])
                out["retry_ns"].append(tries[1])
        if not fetched:
            raise RuntimeError("no debit fetched rights")
        return {**out, "pairs": len(remote), "fetched": fetched}


def _child_main(argv: list[str]) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m benchmarks.network")
    parser.add_argument("what", choices=["node"])
    parser.add_argument("data", type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    # BENCH_PROFILE=DIR: each node child writes its cProfile to DIR/<data dir>.prof
    # (cProfile doubles Python's share against C: read it for where, not how much).
    out = os.environ.get("BENCH_PROFILE")
    if not out:
        asyncio.run(Child(args.data).main())
        return
    import cProfile

    Path(out).mkdir(parents=True, exist_ok=True)
    prof = cProfile.Profile()
    try:
        prof.runcall(asyncio.run, Child(args.data).main())
    finally:
        prof.dump_stats(Path(out) / f"{args.data.name}.prof")


if __name__ == "__main__":
    _child_main(sys.argv[1:])
