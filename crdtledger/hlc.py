"""Hybrid logical clock and node-minted ids.

A timestamp is 48 bits of wall-clock milliseconds and a 16-bit counter, so it sorts
like time yet never repeats or runs backwards on one node (Kulkarni et al., 2014).
Paired with the node id it is globally unique, which is all an id needs to be: only
the node that creates a thing mints its id, so two nodes never claim the same key.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable

from crdtledger.errors import ClockSkew, InvalidInput

# A remote clock further ahead than this is not adopted: one branch with a wrong
# clock must not drag every other branch's timestamps into the future.
MAX_CLOCK_SKEW_MS = 5 * 60 * 1000
_COUNTER_BITS = 16
_COUNTER_MAX = (1 << _COUNTER_BITS) - 1

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


def encode(ts: int) -> str:
    """64-bit timestamp -> 13 sortable base32 characters."""
    out = []
    for _ in range(13):
        out.append(_B32[ts & 31])
        ts >>= 5
    return "".join(reversed(out))


# Crockford's digits as the ones int(..., 32) reads, so decoding runs in C.
_TO_INT32 = str.maketrans(_B32, "0123456789ABCDEFGHIJKLMNOPQRSTUV")


def decode(text: str) -> int:
    if not text or not set(text) <= _B32_SET:
        raise ValueError(f"not a base32 timestamp: {text!r}")
    return int(text.translate(_TO_INT32), 32)


def id_floor(ms: int) -> str:
    """The smallest id (timestamp part) minted at or after wall-clock `ms`."""
    return encode(ms << _COUNTER_BITS)


def wall_ms(ts: int) -> int:
    return ts >> _COUNTER_BITS


class HybridClock:
    def __init__(self, node: str, last: int = 0, now_ms: Callable[[], int] | None = None) -> None:
        self.node = check_node_id(node)
        self.last = last
        self._now_ms = now_ms or (lambda: time.time_ns() // 1_000_000)
        self.max_skew_seen_ms = 0

    def wall(self) -> int:
        """Wall-clock milliseconds as this node sees them (simulated in the simulator)."""
        return self._now_ms()

    def now(self) -> int:
        wall = self._now_ms() << _COUNTER_BITS
        self.last = wall if wall > self.last else self.last + 1
        if self.last & _COUNTER_MAX == _COUNTER_MAX:
            # 65k ids in one millisecond: borrow the next millisecond rather than wrap.
            self.last += 1
        return self.last

    def observe(self, remote: int) -> None:
        """Move past a timestamp seen from a peer, unless it is implausibly far ahead."""
        local_ms = self._now_ms()
        skew = wall_ms(remote) - local_ms
        if skew > self.max_skew_seen_ms:
            self.max_skew_seen_ms = skew
        if skew > MAX_CLOCK_SKEW_MS:
            raise ClockSkew(wall_ms(remote), local_ms)
        if remote > self.last:
            self.last = remote

    def mint(self) -> str:
        """A new globally unique, time-sortable id: '<13 base32 chars>.<node>'."""
        return f"{encode(self.now())}.{self.node}"


def id_time_ms(ident: str) -> int:
    return wall_ms(decode(ident.split(".", 1)[0]))


def id_node(ident: str) -> str:
    return ident.split(".", 1)[1]
