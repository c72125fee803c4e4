"""Whether this machine's clock is off, judged by what the peers' hellos say of theirs.

Every hello carries its sender's time (`now`, the chain's time as the sender sees
it) and how many nodes' clocks agree with it, the sender included (`agree`). A node
keeps, per connected peer, the peer's time minus this machine's clock when the hello
came, and the peer's `agree`. Votes: this machine's own clock (weight 1, offset 0)
and each peer's (weight `agree`). The clock is *off* when the votes beyond
CLOCK_OFF_LIMIT_MS on one side outweigh all the others; the chain's time is then the
weighted median of the votes, and this node mints its ids and books its sales by it
(hlc.HybridClock.offset_ms). So two branches that see only each other cannot tell
whose clock is wrong and neither follows the other (both are told they disagree),
while a branch that reaches only a hub follows the hub backed by the branches that
agree with it.

The offsets are measured against this machine's clock, so a correction does not
feed back into them. When this machine's clock is set (the owner fixes it), the
offsets and the correction are moved by the jump, told by the monotonic time the
driver gives (`tick`): a fixed clock needs no correction at once, without waiting
for the next hello. With no peer connected the last judgement holds.

No I/O: the node core (crdtledger.core) feeds it and reads it.
"""

from __future__ import annotations

from dataclasses import dataclass

from crdtledger.hlc import CLOCK_OFF_LIMIT_MS

# `agree` a hello may carry: more than the branches of any chain is a broken peer.
MAX_AGREE = 1 << 16


@dataclass(frozen=True)
class ClockVerdict:
    """`off_ms`: the chain's time minus this machine's clock, when a majority says
    this clock is off (else 0). `disagree`: peers whose clocks differ from this
    machine's by more than the limit (each side of a lone pair sees the other here)."""

    off_ms: int = 0
    disagree: tuple[str, ...] = ()
    peers: int = 0  # peers whose hello was counted

    @property
    def off(self) -> bool:
        return self.off_ms != 0

    def worth_telling(self) -> tuple[bool, tuple[str, ...]]:
        """What a log line is written for when it changes: not the estimate's drift,
        nor, while this clock is off, which peers disagree with it (all do)."""
        return self.off, () if self.off else self.disagree


class PeerClocks:
    def __init__(self, limit_ms: int = CLOCK_OFF_LIMIT_MS) -> None:
        self.limit_ms = limit_ms
        self.samples: dict[str, tuple[int, int]] = {}  # peer -> (offset ms, agree)
        self.verdict = ClockVerdict()
        self._agree = 1  # agree(), judged with the verdict (asked at every tick)
        self._anchor: tuple[int, float] | None = None  # (this clock in ms, monotonic s)

    def tick(self, clock_ms: int, monotonic_s: float) -> bool:
        """The time now, on this machine's clock and on a monotonic one. If this clock
        was set since the last tick by more than the limit, move the offsets and the
        correction by the jump and judge again; returns whether the verdict changed."""
        anchor, self._anchor = self._anchor, (clock_ms, monotonic_s)
        if anchor is None:
            return False
        jump = (clock_ms - anchor[0]) - round((monotonic_s - anchor[1]) * 1000)
        if abs(jump) <= self.limit_ms:
            return False
        self.samples = {p: (o - jump, w) for p, (o, w) in self.samples.items()}
        before = self.verdict
        kept = before.off_ms - jump if before.off else 0
        self.verdict = ClockVerdict(kept if abs(kept) > self.limit_ms else 0, before.disagree,
                                    before.peers)
        self._judge()
        return self.verdict != before

    def heard(self, peer: str, offset_ms: int, agree: int) -> bool:
        """A peer's hello: its time minus this clock, and its `agree`. Returns whether
        the verdict changed."""
        self.samples[peer] = (offset_ms, agree)
        before = self.verdict
        self._judge()
        return self.verdict != before

    def forget(self, peer: str) -> bool:
        """The peer's link closed: it no longer votes."""
        if self.samples.pop(peer, None) is None:
            return False
        before = self.verdict
        self._judge()
        return self.verdict != before

    def agree(self) -> int:
        """How many nodes' clocks agree with this node's time (corrected), itself
        included: what its hello tells its peers."""
        return self._agree

    def _judge(self) -> None:
        self._agree = 1
        if not self.samples:  # nobody to ask: the last judgement holds
            self.verdict = ClockVerdict(self.verdict.off_ms)
            return
        limit = self.limit_ms
        if all(-limit <= o <= limit for o, _ in self.samples.values()):
            # Every peer agrees with this clock (nearly always, at every hello): what
            # the votes below would conclude, without weighing them.
            self.verdict = ClockVerdict(0, (), len(self.samples))
            self._agree = 1 + len(self.samples)
            return
        votes = sorted([(0, 1), *self.samples.values()])
        total = sum(w for _, w in votes)
        ahead = sum(w for o, w in votes if o > limit)  # the others run ahead of us
        behind = sum(w for o, w in votes if o < -limit)
        off = 0
        if 2 * ahead > total or 2 * behind > total:
            cumulative = 0
            for offset, weight in votes:  # the weighted median
                cumulative += weight
                if 2 * cumulative > total:
                    off = offset
                    break
        disagree = tuple(sorted(p for p, (o, _) in self.samples.items() if abs(o) > limit))
        self.verdict = ClockVerdict(off, disagree, len(self.samples))
        self._agree = 1 + sum(1 for o, _ in self.samples.values() if abs(o - off) <= limit)


def span(ms: int) -> str:
    """A clock difference in words, rounded to its second unit: 2 d 0 h, 4 min 10 s."""
    ms = abs(ms)
    for big, small, big_name, small_name in ((86_400_000, 3_600_000, "d", "h"),
                                             (3_600_000, 60_000, "h", "min"),
                                             (60_000, 1000, "min", "s")):
        if ms >= big - small // 2:
            whole, part = divmod(round(ms / small), big // small)
            return f"{whole} {big_name} {part} {small_name}"
    return f"{ms / 1000:.1f} s"


def tell(status: dict[str, object]) -> str | None:
    """The sentence for the node's log and `crdtledger status` about a clock status
    (NodeCore.clock_status), or None when there is nothing to say."""
    off = status.get("off_ms")
    if isinstance(off, int) and off:
        return (f"this machine's clock is {span(off)} {'ahead of' if off < 0 else 'behind'} "
                "the chain's time, as its peers tell: its ids and sales are booked by the "
                "chain's time until the clock is set right")
    disagree = status.get("disagree")
    limit = status.get("limit_ms")
    if isinstance(disagree, dict) and disagree:
        return ("; ".join(f"{peer}'s clock is {span(o)} "
                          f"{'ahead of' if o > 0 else 'behind'} this machine's"
                          for peer, o in sorted(disagree.items()))
                + f" (more than the {span(limit if isinstance(limit, int) else 0)} "
                "allowed): check the clocks")
    floor = status.get("floor_ahead_ms")
    if isinstance(floor, int) and floor:
        return (f"this machine's clock reads {span(floor)} before the first moment this "
                "branch may book (its enrolment by head office, or its latest month-end "
                "cut): its sales are booked from then until the clock catches up; check "
                "this PC's clock, and head office's if the branch was enrolled just now")
    if status.get("confirmed") is False:
        return ("no other branch has confirmed this machine's clock yet: the month-end cut "
                "and the write-off of expired points wait until one connected has, or "
                "until an operator has checked the clock (crdtledger clock confirm)")
    return None
