"""What the benchmarks share: sizes per scale, a member pool to debit, timers, memory."""

from __future__ import annotations

import os
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from benchmarks.datagen import Size
from crdtledger import views
from crdtledger.ledger import Ledger

Log = Callable[[str], None]

# A debit of this service: the counter's commonest sale (FOOT60, 128.00 before discount).
SERVICE = "FOOT60"
# Each pool member is topped up by this much at the node under test before timing
# starts (below the default approval limit, so no approver is involved).
POOL_TOPUP = 400_000


@dataclass(frozen=True)
class Config:
    scale: str
    out: Path  # data cache and work copies
    debit_size: Size  # history of the node in the baseline comparison
    sizes: tuple[Size, ...]  # the history and scale ladder, smallest first
    debit_rounds: int
    tills_rounds: int  # debits per till and block in the concurrent-tills comparison
    history_rounds: int
    blocks: int  # the rounds are also cut into this many blocks, for the ratio's spread
    warm_opens: int  # fresh processes per size (the largest: also cold ones)
    cold_opens: int
    log: Log = print
    chain_sizes: tuple[Size, ...] = ()  # `--chain-size`: the `chain` ladder, else its own

    @property
    def work(self) -> Path:
        """Scratch space of this run: runs sharing a data cache never share it."""
        return self.out / f"work-{os.getpid()}"


def config(scale: str, out: Path, log: Log = print) -> Config:
    small, mid, large = Size(1_000, 10_000), Size(10_000, 100_000), Size(100_000, 1_000_000)
    if scale == "full":
        return Config(scale, out, small, (small, mid, large), debit_rounds=5000,
                      tills_rounds=100, history_rounds=3000, blocks=10, warm_opens=10,
                      cold_opens=5, log=log)
    if scale == "quick":
        return Config(scale, out, small, (small, mid), debit_rounds=1000, tills_rounds=25,
                      history_rounds=600, blocks=5, warm_opens=3, cold_opens=2, log=log)
    if scale == "tiny":  # only proves the benchmarks run
        return Config(scale, out, Size(100, 1_000), (Size(100, 1_000), Size(300, 3_000)),
                      debit_rounds=40, tills_rounds=5, history_rounds=30, blocks=2,
                      warm_opens=1, cold_opens=1, log=log)
    raise ValueError(f"unknown scale {scale!r}")


def member_pool(ledger: Ledger, n: int, seed: str) -> list[str]:
    """`n` members drawn at random from the whole member table (so their rows are
    spread over the indexes as a day's customers would be)."""
    ids = views.member_ids(ledger)
    return random.Random(seed).sample(ids, min(n, len(ids)))


def fund_pool(ledger: Ledger, pool: list[str]) -> list[float]:
    """Top each pool member up at this node, so each debit is served from rights held
    here. Returns the top-ups' durations (µs): they are durable operations too."""
    out = []
    for m in pool:
        t0 = time.perf_counter_ns()
        ledger.topup(ledger.owner, m, POOL_TOPUP)
        out.append((time.perf_counter_ns() - t0) / 1000)
    return out


def block_ratios(num: list[float], den: list[float], blocks: int) -> list[float]:
    """The ratio of medians within each of `blocks` consecutive stretches of paired,
    interleaved samples: how much the ratio itself moves with the machine's noise."""
    size = max(1, len(num) // blocks)
    return [statistics.median(num[i:i + size]) / statistics.median(den[i:i + size])
            for i in range(0, size * blocks, size) if num[i:i + size]]


def status_kb(field: str) -> int:
    """A field of /proc/self/status in kB (VmRSS: resident now, VmHWM: peak resident)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)
