"""python -m benchmarks run [--quick | --tiny] [--only NAME] [--chain-size N] [--json FILE]
                            [--out DIR]

Runs the benchmarks, prints a table of figures and of ratios against their targets,
and writes the same as JSON (default: benchmarks/out/results-<scale>.json). Exit
status is 0 whether or not targets are met: targets are read, not asserted (the
machines are noisy); it is non-zero only if a benchmark fails to run.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

from benchmarks import chain, datagen, debit, history, network, plot, scale
from benchmarks.common import Config, config
from benchmarks.report import Report

BENCHMARKS: dict[str, Callable[[Config, Report], None]] = {
    debit.NAME: debit.run,
    history.NAME: history.run,
    scale.NAME: scale.run,
    network.SYNC: network.run_sync,
    network.PROPAGATION: network.run_propagation,
    chain.NAME: chain.run,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split(
        "\n\n")[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the benchmarks")
    size = run.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_const", dest="scale", const="quick",
                      help="smaller sizes (100k entries / 10k members); under 2 minutes")
    size.add_argument("--tiny", action="store_const", dest="scale", const="tiny",
                      help="toy sizes: only proves the benchmarks run (smoke test)")
    run.add_argument("--only", action="append", choices=sorted(BENCHMARKS), metavar="NAME",
                     help=f"run only this benchmark (repeatable): {', '.join(BENCHMARKS)}")
    run.add_argument("--chain-size", action="append", type=int, metavar="ENTRIES",
                     help="the chain benchmark at these sizes instead (repeatable; ten "
                          "entries per member): 10000000 is the issue's 10M / 1M")
    run.add_argument("--json", type=Path, metavar="FILE", help="write the results here")
    run.add_argument("--out", type=Path, default=datagen.OUT, metavar="DIR",
                     help="cache of generated data sets and scratch space "
                          "(default: benchmarks/out)")
    args = parser.parse_args(argv)
    scale_name = args.scale or "full"

    def log(msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    cfg = config(scale_name, args.out.resolve(), log)
    if args.chain_size:
        cfg = dataclasses.replace(cfg, chain_sizes=tuple(
            datagen.Size(n // 10, n) for n in sorted(args.chain_size)))
    report = Report(scale_name, cfg.out)
    names = args.only or list(BENCHMARKS)
    suffix = "".join(f"-{n}" for n in args.only or ())  # a partial run keeps its own file
    out = args.json or cfg.out / f"results-{scale_name}{suffix}.json"
    try:
        for name in names:
            t0 = time.perf_counter()
            try:
                BENCHMARKS[name](cfg, report)
            except BaseException as e:  # what was measured before it is still written
                report.note(name, failed=f"{type(e).__name__}: {e}"[:2000])
                raise
            finally:
                shutil.rmtree(cfg.work / name, ignore_errors=True)  # copies of up to 1 GB
            report.note(name, seconds=round(time.perf_counter() - t0, 1))
            log(f"{name}: done in {time.perf_counter() - t0:.1f} s")
        # The committed plot is a full run's; other runs draw theirs beside their results.
        img = plot.IMG if scale_name == "full" else cfg.out / "img"
        for path in plot.write(report, img):
            report.note("plots", **{path.stem: str(path)})
            log(f"plot written to {path}")
    finally:
        shutil.rmtree(cfg.work, ignore_errors=True)
        print(report.table())
        report.write_json(out)
        log(f"results written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
