"""Progress of long work at the command line (sync files, backups, restores): a line
on stderr per step, each with the time since the command began, so an owner watching
a large import knows it is working and where it is. Stdout keeps only the result
(scripts and --json read it).

Shown on a terminal, not in a service's journal; CRDTLEDGER_PROGRESS=1 shows it
anywhere (a log file, a test), =0 never. The library takes any `Callable[[str], None]`
(crdtledger.syncfile, crdtledger.backups, crdtledger.analytics) and says nothing
itself: a running node calls it with nothing.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

ENV = "CRDTLEDGER_PROGRESS"
TICK_S = 5.0  # while a running node does the work: how often to say it still is
_start: float | None = None


def wanted() -> bool:
    forced = os.environ.get(ENV)
    if forced in ("0", "1"):
        return forced == "1"
    return sys.stderr.isatty()


def line(text: str) -> None:
    """One step of the work, as `  [  1.2 s] text` on stderr (when wanted)."""
    global _start
    if not wanted():
        return
    now = time.monotonic()
    if _start is None:
        _start = now
    print(f"  [{now - _start:6.1f} s] {text}", file=sys.stderr, flush=True)


@contextmanager
def waiting(what: str) -> Iterator[None]:
    """Work handed to the running node tells nothing until done: say every few
    seconds that it is still going, so a long import does not look hung."""
    if not wanted():
        yield
        return
    done = threading.Event()
    began = time.monotonic()

    def tick() -> None:
        while not done.wait(TICK_S):
            line(f"{what}: the running node is still at it ({time.monotonic() - began:.0f} s)")

    line(f"{what}: handed to the running node")
    ticker = threading.Thread(target=tick, daemon=True)
    ticker.start()
    try:
        yield
    finally:
        done.set()
        ticker.join()
