"""Hybrid logical clock and node-minted ids.

A timestamp is 48 bits of wall-clock milliseconds and a 16-bit counter, so it sorts
like time (Kulkarni et al., 2014). Paired with the node id it is globally unique,
which is all an id needs to be: only the node that creates a thing mints its id, so
two nodes never claim the same key.

A node never mints one timestamp twice. Within an *era* its timestamps only grow; the
counter's top ERA_BITS name the era, so timestamps of two eras never meet. A node
whose clock went back by more than MAX_CLOCK_SKEW_MS (it ran ahead and was fixed,
or the chain's time corrected it: crdtledger.peerclock) starts a new era at the
right time instead of minting ahead until real time catches up; an era is taken
again only once the wall clock has passed everything minted in it.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from types import TracebackType

from crdtledger.errors import ClockSkew, InvalidInput

# A remote clock further ahead than this is not adopted: one branch with a wrong
# clock must not drag every other branch's timestamps into the future. So a clock
# further ahead of its own wall clock than this went back itself (see `now`).
MAX_CLOCK_SKEW_MS = 5 * 60 * 1000
# A branch whose clock differs from the chain's by more than this is told so, and
# mints by the chain's time (crdtledger.peerclock). Clocks kept by NTP differ by
# milliseconds; a till set by hand drifts minutes a year.
CLOCK_OFF_LIMIT_MS = 2 * 60 * 1000
_COUNTER_BITS = 16
_COUNTER_MAX = (1 << _COUNTER_BITS) - 1
# 64 eras of 1,024 timestamps per millisecond: a till mints one or two per sale.
ERA_BITS = 6
ERAS = 1 << ERA_BITS
_SEQ_BITS = _COUNTER_BITS - ERA_BITS
_SEQ_MAX = (1 << _SEQ_BITS) - 1
# The eras of a store made with eras: the first, nothing minted in any other.
FRESH_ERAS = '{"era": 0, "max": {}}'

_B32 = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"  # Crockford's alphabet, as in ULID
_B32_SET = frozenset(_B32)
# \Z, not $: "$" also matches before a trailing newline ("SH01\n").
NODE_ID = re.compile(r"^[A-Z0-9][A-Z0-9_]{0,15}\Z")


def check_node_id(node: str) -> str:
    if not isinstance(node, str) or not NODE_ID.match(node):
        raise InvalidInput(
            f"node id {node!r} must be 1-16 capital letters, digits or _ (e.g. SH01)"
        )
    return node


# Two base32 digits per 10 bits: an id is minted on every write (a debit's path), and
# seven lookups cost a third of thirteen shifts and appends.
_B32_PAIRS = tuple(a + b for a in _B32 for b in _B32)


def encode(ts: int) -> str:
    """64-bit timestamp -> 13 sortable base32 characters (its low 65 bits, 5 per digit)."""
    p = _B32_PAIRS
    return (_B32[(ts >> 60) & 31] + p[(ts >> 50) & 1023] + p[(ts >> 40) & 1023]
            + p[(ts >> 30) & 1023] + p[(ts >> 20) & 1023] + p[(ts >> 10) & 1023]
            + p[ts & 1023])


# Crockford's digits as the ones int(..., 32) reads, so decoding runs in C.
_TO_INT32 = str.maketrans(_B32, "0123456789ABCDEFGHIJKLMNOPQRSTUV")


# Crockford's digits, one or more: the check of `decode` (a regular expression runs in
# C; making a set of the text's characters cost a third of decoding an id).
_B32_RUN = re.compile(r"[0-9A-HJKMNP-TV-Z]+")


def decode(text: str) -> int:
    if (type(text) is not str or not _B32_RUN.fullmatch(text)) and (
            not text or not set(text) <= _B32_SET):
        raise ValueError(f"not a base32 timestamp: {text!r}")
    return int(text.translate(_TO_INT32), 32)


def id_floor(ms: int) -> str:
    """The smallest id (timestamp part) minted at or after wall-clock `ms`."""
    return encode(ms << _COUNTER_BITS)


def wall_ms(ts: int) -> int:
    return ts >> _COUNTER_BITS


def era_of(ts: int) -> int:
    return (ts & _COUNTER_MAX) >> _SEQ_BITS


class HybridClock:
    """`eras`: what the store kept of the clock's eras (`eras_text`); None for a store
    made before eras, whose ids may use any counter: every other era then counts as
    used up to `last`."""

    def __init__(self, node: str, last: int = 0, now_ms: Callable[[], int] | None = None,
                 eras: str | None = FRESH_ERAS, since_boot_ms: Callable[[], int] | None = None
                 ) -> None:
        self.node = check_node_id(node)
        self.last = last
        self._now_ms = now_ms or (lambda: time.time_ns() // 1_000_000)
        # A clock that runs with real time, beside this machine's (`moved_by_hand`): the
        # time since boot, by default for this machine's own clock only (a simulated
        # one, a test's, says itself what time passes: it may give its own).
        self.since_boot_ms = since_boot_ms or (None if now_ms else _since_boot_ms)
        # How far this machine's clock was put forward by hand, net, since anyone
        # vouched for it (`moved_by_hand`); and this clock minus the boot clock when
        # last read (None: not read yet).
        self.moved_ms = 0
        self.gap_ms: int | None = None
        self.max_skew_seen_ms = 0
        # The chain's time minus this machine's clock, when this machine's is off
        # (set by the node core from what its peers say: crdtledger.peerclock).
        self.offset_ms = 0
        # No id is minted before this wall time: the start of the month after the
        # latest one this node closed (crdtledger.closing).
        self.floor_ms = 0
        # How many nodes' clocks agree with this one's time, itself included: told
        # to peers in the hello, so a branch that reaches only a hub can tell whose
        # clock is wrong.
        self.agree = 1
        # The instant of the operation running, while one runs (`pinned`).
        self._pin: int | None = None
        self.era = 0
        # The highest timestamp minted (or adopted) in each other era: the current
        # era's is `last`.
        self.era_max: dict[int, int] = {}
        if eras is None:
            self.era_max = {e: last for e in range(1, ERAS)}
        else:
            kept = json.loads(eras)
            self.era = int(kept["era"])
            self.era_max = {int(e): int(m) for e, m in kept["max"].items()}
        self.eras_text = self._eras_text()

    def _eras_text(self) -> str:
        return json.dumps({"era": self.era, "max": {str(e): m for e, m in
                                                    sorted(self.era_max.items())}})

    def raw_wall(self) -> int:
        """This machine's clock in ms (simulated in the simulator)."""
        return self._now_ms()

    def wall(self) -> int:
        """Wall-clock milliseconds as the chain sees them: this machine's clock,
        corrected when it is off (`offset_ms`); the operation's instant while one is
        `pinned`."""
        if self._pin is not None:
            return self._pin
        return self._now_ms() + self.offset_ms

    def pinned(self) -> Pinned:
        """One instant for one operation: the time its first id will carry
        (`next_ms`), which `wall`, `next_ms` and the ids minted meanwhile keep (ids of
        one millisecond differ by their counter). What the operation judges by the
        day or the minute (a coupon's last day, a once-a-day check-in, an activity's
        hours, the refund period) is then judged on the day and minute its entries
        are booked on: a sale begun at 23:59:59.999 was judged on one day and booked
        on the next, and a check-in judged by this PC's clock was booked by an id
        past it (a peer's later id). Re-entered, the outer instant stands.
        (A class, not a generator's context manager: entered on every operation.)"""
        return Pinned(self)

    def now(self) -> int:
        wall = max(self.wall(), self.floor_ms)
        if wall_ms(self.last) - wall > MAX_CLOCK_SKEW_MS:
            self._new_era(wall)
        self.last = self._after(max(self.last, (wall << _COUNTER_BITS) - 1))
        return self.last

    def next_ms(self) -> int:
        """The wall time the next id will carry (`now`, without minting it): the day an
        operation is booked on. Past this machine's clock when an id seen from a peer
        (or a cut's floor) is later, as `now` would mint; this clock again where `now`
        would start a new era."""
        wall = max(self.wall(), self.floor_ms)
        last = wall_ms(self.last)
        if last - wall > MAX_CLOCK_SKEW_MS and any(
                e != self.era and self.era_max.get(e, 0) < wall << _COUNTER_BITS
                for e in range(ERAS)):
            return wall
        return max(wall, last)

    def moved_by_hand(self) -> int:
        """How far this machine's clock has been put forward by hand since anyone
        vouched for it (`vouched`): each jump against the boot clock of more than
        CLOCK_OFF_LIMIT_MS since the last reading, forward adding, back taking off
        (never below 0). What NTP slews and a till drifts stays under the limit. A
        cashier alone put the PC forward a day five times in five minutes, and every
        daily limit counted from a new day each time (Rules.unmoved_day)."""
        gap = self.boot_gap()
        if gap is None:
            return self.moved_ms
        before, self.gap_ms = self.gap_ms, gap
        if before is not None and abs(gap - before) > CLOCK_OFF_LIMIT_MS:
            self.moved_ms = max(0, self.moved_ms + gap - before)
        return self.moved_ms

    def boot_gap(self) -> int | None:
        """This machine's clock less its boot clock now: steady while real time passes
        (asleep too), jumping when the clock is set. None with no boot clock (a
        simulated clock's: nothing is seen being moved)."""
        if self.since_boot_ms is None:
            return None
        return self._now_ms() - self.since_boot_ms()

    def vouched(self) -> None:
        """A peer or an operator says this clock is right now: nothing was moved."""
        self.moved_ms = 0

    def high_water_ms(self) -> int:
        """The latest wall time of any id this clock minted (or took from a peer, at
        most MAX_CLOCK_SKEW_MS ahead), in any era: how far this PC's clock has read.
        A clock set back reads earlier than it (Ledger.check_clock_for)."""
        return wall_ms(max([self.last, *self.era_max.values()]))

    def _after(self, ts: int) -> int:
        """The smallest timestamp of the current era above `ts`: 1,024 per
        millisecond, then the next millisecond is borrowed."""
        base = self.era << _SEQ_BITS
        counter = ts & _COUNTER_MAX
        if counter < base:
            return ts - counter + base
        if counter < base | _SEQ_MAX:
            return ts + 1
        return ts - counter + (1 << _COUNTER_BITS) + base

    def _new_era(self, wall: int) -> None:
        """The clock went back: mint from `wall` again, in an era whose timestamps are
        all below it. If every era holds some above it, go on from `last` (the ids
        run ahead until the wall clock catches up, as they did before eras)."""
        floor = wall << _COUNTER_BITS
        free = [e for e in range(ERAS) if e != self.era and self.era_max.get(e, 0) < floor]
        if not free:
            return
        self.era_max[self.era] = self.last
        self.era = free[0]
        self.era_max.pop(self.era, None)
        self.last = floor - 1
        self.eras_text = self._eras_text()

    def observe(self, remote: int) -> None:
        """Move past a timestamp seen from a peer, unless it is implausibly far ahead."""
        local_ms = self.wall()
        skew = wall_ms(remote) - local_ms
        if skew > self.max_skew_seen_ms:
            self.max_skew_seen_ms = skew
        if skew > MAX_CLOCK_SKEW_MS:
            raise ClockSkew(wall_ms(remote), local_ms)
        if remote > self.last:
            self.last = remote

    def minted(self, ts: int) -> None:
        """A timestamp this node minted, come back from a peer (a node restored from a
        backup gets back what it wrote after it): never mint it again, however far
        ahead it is. One of the current era is adopted (a new era starts at the
        next id if it is far ahead); one of another era raises that era's mark."""
        era = era_of(ts)
        if era == self.era:
            self.last = max(self.last, ts)
        elif ts > self.era_max.get(era, 0):
            self.era_max[era] = ts
            self.eras_text = self._eras_text()

    def mint(self) -> str:
        """A new globally unique, time-sortable id: '<13 base32 chars>.<node>'."""
        return f"{encode(self.now())}.{self.node}"


def _boot_ns() -> int:
    """Nanoseconds on a clock that is never set and runs on while the machine sleeps
    (CLOCK_BOOTTIME: a laptop asleep overnight did not have its clock put forward),
    where there is one; else the monotonic clock."""
    boottime = getattr(time, "CLOCK_BOOTTIME", None)
    if boottime is not None:
        return time.clock_gettime_ns(boottime)
    return time.monotonic_ns()


def boot_clock_s() -> float:
    """Seconds on the boot clock (`_boot_ns`). What the node core is driven by: on the
    monotonic clock, which stops while a laptop is suspended, its check of this PC's
    clock (peerclock.PeerClocks.tick) took eight hours asleep for the clock put
    forward eight hours, moved its peers' readings back by as much, and booked the
    next sale 480 minutes behind the chain's time until new hellos came (for good
    while it stayed offline)."""
    return _boot_ns() / 1e9


def _since_boot_ms() -> int:
    """Milliseconds on the boot clock (`_boot_ns`)."""
    return _boot_ns() // 1_000_000


def id_time_ms(ident: str) -> int:
    return wall_ms(decode(ident.split(".", 1)[0]))


def matched_id_time_ms(ident: str) -> int:
    """id_time_ms of an id that model.ID matched (13 Crockford digits, then the node):
    not checked again (a catch-up reads the time of every entry's id)."""
    return int(ident[:13].translate(_TO_INT32), 32) >> _COUNTER_BITS


def id_node(ident: str) -> str:
    return ident.split(".", 1)[1]


class Pinned:
    """HybridClock.pinned's context: sets the clock's instant unless one is set
    already (the outer operation's, which then stands), and clears what it set."""

    __slots__ = ("_clock", "_set")

    def __init__(self, clock: HybridClock) -> None:
        self._clock = clock
        self._set = False

    def __enter__(self) -> int:
        clock = self._clock
        pin = clock._pin
        if pin is None:
            pin = clock._pin = clock.next_ms()
            self._set = True
        return pin

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._set:
            self._set = False
            self._clock._pin = None
