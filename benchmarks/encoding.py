"""How a ledger entry is held in its month's document, measured three ways.

`python -m benchmarks.encoding [ENTRIES]` (default 60,000: a month of a chain of
about 25 branches) prints, for each way a writer could set an entry into the month's
`entries` Map:

- `map`: a plain JSON object, as crdtledger writes it today (Yrs keeps it as a tree
  of `Any` values; docs/format.md publishes it so);
- `json`: the entry's JSON text, one string;
- `msgpack`: the entry's msgpack bytes, one binary value;

the resident memory a document of ENTRIES entries takes once loaded (a fresh process
that applies the snapshot, so no freed memory of an earlier document is reused), the
snapshot's and one update's bytes per entry, and the time a replica spends on one
record: applying its update with the root observer that replica.py uses (Yrs' raw
`observe_deep`, `path` and `keys` read), then turning the value into a dict (medians,
with the collector off as `Replica._apply_slice` has it).

Not part of `run`: it measures a choice of format, not this release. Its figures
and what they would cost (the published format, the protocol version) are in
benchmarks/README.md, "What an entry costs in its document".
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import msgpack
from pycrdt import Doc, Map

from benchmarks.common import status_kb
from crdtledger.hlc import id_floor

START_MS = 1_764_000_000_000
TIMED = 2_000  # records applied one by one, after the rest
ENCODINGS: dict[str, tuple[Callable[[dict[str, Any]], Any], Callable[[Any], Any]]] = {
    "map": (lambda e: e, lambda v: v),
    "json": (lambda e: json.dumps(e, separators=(",", ":")), json.loads),
    "msgpack": (msgpack.packb, msgpack.unpackb),
}


def entry(i: int) -> dict[str, Any]:
    """A service debit as `LedgerBase._entry` writes one (ids of the real form)."""
    at = START_MS + i * 7_000
    return {"id": f"{id_floor(at)}.B1", "kind": "debit",
            "member": f"{id_floor(START_MS // 2 + i % 9_973 * 60_000)}.B2",
            "node": "B1", "op": "owner@B1", "at": at, "amount": 11_520,
            "deltas": [["cash", "B1", -11_520], ["points", "B1", 172]], "service": "FOOT60"}


def _updates(kind: str, n: int) -> tuple[list[bytes], bytes]:
    """Each entry's update as its writer made it, and the whole document's."""
    pack = ENCODINGS[kind][0]
    doc: Doc[Any] = Doc(client_id=7)
    entries = doc.get("entries", type=Map)
    out = []
    for i in range(n):
        sv = doc.get_state()
        e = entry(i)
        entries[e["id"]] = pack(e)
        out.append(doc.get_update(sv))
    return out, doc.get_update()


def _resident(snapshot: Path) -> int:
    """Bytes of RSS a document takes when loaded from `snapshot` (run in a child)."""
    data = snapshot.read_bytes()
    before = status_kb("VmRSS")
    doc: Doc[Any] = Doc(client_id=9)
    doc.get("entries", type=Map)
    doc.apply_update(data)
    return (status_kb("VmRSS") - before) * 1024


def measure(kind: str, n: int, work: Path) -> dict[str, float]:
    ups, whole = _updates(kind, n)
    snapshot = work / f"{kind}.bin"
    snapshot.write_bytes(whole)
    child = subprocess.run([sys.executable, "-m", "benchmarks.encoding", "--resident",
                            str(snapshot)], capture_output=True, text=True, check=True)
    # The timed records: applied one by one to a document holding the rest.
    doc: Doc[Any] = Doc(client_id=9)
    root = doc.get("entries", type=Map)
    for u in ups[:-TIMED]:
        doc.apply_update(u)
    got: list[Any] = []
    sub = root.integrated.observe_deep(
        lambda evs: got.extend((list(ev.path), ev.keys) for ev in evs))
    apply_us, decode_us = [], []
    unpack = ENCODINGS[kind][1]
    gc.disable()  # as Replica._apply_slice does while it applies
    try:
        for u in ups[-TIMED:]:
            t0 = time.perf_counter_ns()
            with doc.transaction():
                doc.apply_update(u)
            apply_us.append((time.perf_counter_ns() - t0) / 1000)
        for _path, keys in got:
            t0 = time.perf_counter_ns()
            for info in keys.values():
                unpack(info["newValue"])
            decode_us.append((time.perf_counter_ns() - t0) / 1000)
    finally:
        gc.enable()
        sub.drop()
    return {"resident_b": int(child.stdout) / n,
            "snapshot_b": snapshot.stat().st_size / n,
            "update_b": statistics.mean(len(u) for u in ups),
            "apply_observe_us": statistics.median(apply_us),
            "to_dict_us": statistics.median(decode_us)}


def main(n: int) -> dict[str, dict[str, float]]:
    with TemporaryDirectory(prefix="crdtledger-encoding-") as tmp:
        return {kind: measure(kind, n, Path(tmp)) for kind in ENCODINGS}


def _args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.encoding",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("entries", nargs="?", type=int, default=60_000,
                        help=f"entries in the month's document (over {TIMED:,})")
    parser.add_argument("--resident", type=Path, help=argparse.SUPPRESS)  # the child's
    args = parser.parse_args(argv)
    if args.resident is None and args.entries <= TIMED:
        parser.error(f"ENTRIES must be over {TIMED:,}: the timed records come after the rest")
    return args


if __name__ == "__main__":
    args = _args(sys.argv[1:])
    if args.resident is not None:
        print(_resident(args.resident))
        sys.exit(0)
    count = args.entries
    results = main(count)
    print(f"{count:,} entries in one month's document, per entry:")
    print(f"{'':8} {'resident':>9} {'snapshot':>9} {'update':>7} {'apply+observe':>14} "
          f"{'to dict':>8}")
    for kind, r in results.items():
        print(f"{kind:8} {r['resident_b']:7.0f} B {r['snapshot_b']:7.0f} B {r['update_b']:5.0f} B "
              f"{r['apply_observe_us']:11.1f} µs {r['to_dict_us']:5.1f} µs")
    print(json.dumps(results))
