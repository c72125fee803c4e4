"""The discrete-event engine: virtual time, one queue of events, one thread.

Time is an integer number of microseconds since the start of the run, so no float
rounding can make two runs of one seed order their events differently. Events that
fall on the same microsecond run in the order they were scheduled (a sequence
number breaks the tie), never in an order that depends on object identity or
hashing. Nothing in a run reads the wall clock: nodes get their time from here.
"""

from __future__ import annotations

import hashlib
import heapq
from collections import deque
from collections.abc import Callable

US = 1
MS = 1000 * US
SECOND = 1000 * MS
MINUTE = 60 * SECOND
HOUR = 60 * MINUTE
DAY = 24 * HOUR


class Stop(Exception):
    """Raised inside an event to end the run at once (a violation was found)."""


class Engine:
    def __init__(self) -> None:
        self.now = 0
        self._queue: list[tuple[int, int, Callable[[], None]]] = []
        self._seq = 0
        self.events = 0

    def at(self, when: int, fn: Callable[[], None]) -> None:
        """Run `fn` at virtual time `when` (not before now)."""
        self._seq += 1
        heapq.heappush(self._queue, (max(when, self.now), self._seq, fn))

    def after(self, delay: int, fn: Callable[[], None]) -> None:
        self.at(self.now + delay, fn)

    def run(self, until: int, stop: Callable[[], bool] | None = None,
            progress: Callable[[int], None] | None = None) -> None:
        """Run events up to and including time `until`, or until `stop()` is true
        (checked after every event). Time then stands at `until` (or the stop)."""
        queue = self._queue
        pop = heapq.heappop
        tick = 0
        while queue and queue[0][0] <= until:
            when, _, fn = pop(queue)
            self.now = when
            fn()
            self.events += 1
            if stop is not None and stop():
                return
            tick += 1
            if progress is not None and tick >= 4096:
                tick = 0
                progress(self.now)
        self.now = max(self.now, until)

    def pending(self) -> int:
        return len(self._queue)


def clock(now: int) -> str:
    """Virtual time as day and local time of day: 'd0 10:00:08.137'."""
    day, rest = divmod(now, DAY)
    ms = rest // MS
    return (f"d{day} {ms // 3_600_000:02d}:{ms // 60_000 % 60:02d}:{ms // 1000 % 60:02d}"
            f".{ms % 1000:03d}")


class Trace:
    """The run's history: every line feeds a digest; the last lines are kept for a
    report, all of them only when asked (a day of 50 nodes is millions of lines).

    Lines must hold only what a seed determines: virtual times, node names, entry ids,
    frame kinds and sizes. Not frame bytes: Yrs writes the keys of a map value in
    the order of a per-process random hash, so equal updates differ in bytes (never
    in length) from one process to the next.
    """

    def __init__(self, keep: int = 200, keep_all: bool = False) -> None:
        self._hash = hashlib.blake2b(digest_size=16)
        self.tail: deque[str] = deque(maxlen=keep)
        self.all: list[str] | None = [] if keep_all else None
        self.lines = 0
        # Lines come in runs of one instant (a batch's frames, a node's effects): its
        # time stamp is formatted once. The digest is that of the same lines.
        self._stamp_ms = -1
        self._stamp = ""

    def __call__(self, now: int, text: str) -> None:
        ms = now // MS
        if ms != self._stamp_ms:
            self._stamp_ms = ms
            self._stamp = clock(now)
        line = f"{self._stamp} {text}"
        self._hash.update(f"{line}\n".encode())
        self.tail.append(line)
        if self.all is not None:
            self.all.append(line)
        self.lines += 1

    def digest(self) -> str:
        return self._hash.hexdigest()
