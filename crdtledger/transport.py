"""What a transport is to a node: the shape every driver of `NodeCore` moves frames in.

The shape is automerge-repo's `NetworkAdapterInterface`: an adapter only moves
opaque messages and reports peers coming and going; everything the messages mean
lives above it. Here that is the sans-I/O core (`crdtledger.core`). A link to one
peer offers two calls, and its driver feeds the core three events:

    Transport.send(frames)         ship frames to the peer, in order
    Transport.close(code, reason)  end the link from this side (websocket codes)

    core.link_opened(link, peer, dialer=...)  the link is up; `peer` is the node id
                                              the transport vouches for (the TLS
                                              certificate, the simulated dial)
    core.receive(link, frames, now)           frames arrived together, in order
    core.link_closed(link, now)               the link is gone, either side's doing

Keeping it this small is what lets one shared test suite hold every transport to
the same behaviour (automerge-repo's `runAdapterTests`): the in-memory link below,
the simulator's connection (`sim.net.End`), the node's websocket
(`peer.node.Link`); and a sync file, which is a one-way batch of frames
(`tests/transport_suite.py`).

`MemoryNet` is the smallest whole driver of `NodeCore`s: in-process links between
real ledgers, virtual time on a timer heap, frames delivered in order, optionally
duplicated or swapped, and raw frames injected on a link (oversized, out of order).
Nothing in it reads the wall clock or a random source it was not given, so a test
built on it replays exactly.
"""

from __future__ import annotations

import heapq
import random
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from crdtledger.core import (
    Close,
    Decided,
    Dial,
    Done,
    Effect,
    Failed,
    Link,
    NodeCore,
    Send,
    SetTimer,
    TimerKey,
)
from crdtledger.errors import LocalProtocolError

if TYPE_CHECKING:
    from crdtledger.ledger import Ledger


@runtime_checkable
class Transport(Protocol):
    """One end of a link to one peer, as the core's driver uses it."""

    def send(self, frames: list[bytes]) -> None:
        """Ship `frames` to the peer in order (queued: never blocks the caller)."""

    def close(self, code: int, reason: str) -> None:
        """End the link; both ends' cores then hear `link_closed`."""


@dataclass
class FrameFaults:
    """Session-level faults a broken transport could cause, off by default: a frame
    handed over twice (probability `dup` per frame) or two frames of a batch swapped
    (`reorder` per batch). Real transports (TCP, a file's checksum) never do this;
    injected to test that the session tolerates it. Shared by `MemoryNet` and the
    simulator's network, drawn from the driver's seeded `rng`."""

    rng: random.Random
    dup: float = 0.0
    reorder: float = 0.0
    dup_injected: int = 0
    reorder_injected: int = 0

    def __call__(self, frames: list[bytes]) -> list[bytes]:
        if not (self.dup or self.reorder):
            return frames
        out: list[bytes] = []
        for f in frames:
            out.append(f)
            if self.dup and self.rng.random() < self.dup:
                out.append(f)
                self.dup_injected += 1
        if self.reorder and len(out) > 1 and self.rng.random() < self.reorder:
            i = self.rng.randrange(len(out) - 1)
            out[i], out[i + 1] = out[i + 1], out[i]
            self.reorder_injected += 1
        return out


class MemoryEnd:
    """One end of an in-memory link: frames go into the net's delivery queue."""

    def __init__(self, net: MemoryNet, link: Link, node: str, peer: str) -> None:
        self.net = net
        self.link = link
        self.node = node
        self.peer = peer

    def send(self, frames: list[bytes]) -> None:
        self.net._post(self.link, self.peer, frames)

    def close(self, code: int, reason: str) -> None:
        self.net._close(self.link, self.node, code, reason)


@dataclass
class MemoryNode:
    name: str
    ledger: Ledger
    core: NodeCore
    ends: dict[Link, MemoryEnd]


class MemoryNet:
    """Node cores over in-process links, in virtual time (seconds from 0).

    Everything happens in `run`: frames are delivered first, in the order they
    were sent (each `Send` arrives as one batch, as frames that arrived together
    do); when none is left, the next timer fires. Dials connect at once. `dup` and
    `reorder` are per-batch probabilities of duplicating a frame or swapping two,
    drawn from `seed`, as the simulator's session-level faults."""

    def __init__(self, *, seed: int = 0, dup: float = 0.0, reorder: float = 0.0) -> None:
        self.seed = seed
        self.rng = random.Random(f"{seed}:memory-net")
        self.faults = FrameFaults(self.rng, dup, reorder)
        self.now = 0.0
        self.nodes: dict[str, MemoryNode] = {}
        self._links: dict[Link, tuple[MemoryEnd, MemoryEnd]] = {}
        self._next_link = 1
        self._queue: deque[Callable[[], None]] = deque()  # deliveries and dials, in order
        self._timers: list[tuple[float, int, str, TimerKey, int]] = []
        self._seq = 0
        # What happened, for tests: each node's decisions, operations' outcomes,
        # protocol failures and closes (link, closing node, code, reason).
        self.decisions: dict[str, list[str]] = {}
        self.done: dict[tuple[str, int], Done] = {}
        self.failures: list[Failed] = []
        self.closes: list[tuple[Link, str, int, str]] = []

    # --- building ---------------------------------------------------------------

    def add(self, ledger: Ledger, *, dials: Iterable[str] = (), **core: Any) -> NodeCore:
        """A node over `ledger` that keeps connections to the nodes named in `dials`;
        `core` passes NodeCore's intervals (anti_entropy_s, rights_deadline_s, ...)."""
        name = ledger.node
        if name in self.nodes:
            raise LocalProtocolError(f"{name} is already on this net")
        nc = NodeCore(ledger, rng=random.Random(f"{self.seed}:core:{name}"), **core)
        self.nodes[name] = MemoryNode(name, ledger, nc, {})
        self.decisions[name] = []
        self._run(name, nc.start(self.now, [(d, d) for d in dials]))
        return nc

    def dial(self, src: str, dst: str) -> None:
        """`src` keeps a connection to `dst` from now on (redialled after a loss)."""
        self._run(src, self.nodes[src].core.add_target(dst, dst, self.now))

    # --- driving ----------------------------------------------------------------

    def run(self, seconds: float = 0.0) -> None:
        """Deliver everything pending and fire the timers due in the next `seconds`."""
        end = self.now + seconds
        while True:
            while self._queue:
                self._queue.popleft()()
            if not self._timers or self._timers[0][0] > end:
                break
            when, _, name, key, token = heapq.heappop(self._timers)
            self.now = max(self.now, when)
            node = self.nodes.get(name)
            if node is not None:
                self._run(name, node.core.fire(key, token, self.now))
        self.now = max(self.now, end)

    def submit(self, name: str, run: Callable[[], Any], label: str | None = None) -> int:
        """A till's operation at `name`; its `Done` lands in `done[(name, op)]`."""
        oid, effects = self.nodes[name].core.submit(run, self.now, label)
        self._run(name, effects)
        return oid

    def flush(self, name: str) -> None:
        """Ship what a write made outside `submit` queued on the node's sessions."""
        self._run(name, self.nodes[name].core.flush())

    def inject(self, src: str, dst: str, frames: list[bytes]) -> None:
        """Put raw `frames` on the link from `src` to `dst`, as if `src`'s session had
        sent them: how a test makes a broken or hostile peer."""
        self._end(src, dst).send(frames)

    def drop(self, a: str, b: str, reason: str = "dropped") -> None:
        """The link between `a` and `b` dies (a cable pulled): both cores hear of it."""
        self._end(a, b).close(1006, reason)

    def link(self, a: str, b: str) -> Link | None:
        for lid, (x, y) in sorted(self._links.items()):
            if {x.node, y.node} == {a, b}:
                return lid
        return None

    def in_flight(self) -> int:
        return len(self._queue)

    # --- internals ----------------------------------------------------------------

    def _end(self, src: str, dst: str) -> MemoryEnd:
        lid = self.link(src, dst)
        if lid is None:
            raise LocalProtocolError(f"no link between {src} and {dst}")
        return self.nodes[src].ends[lid]

    def _post(self, link: Link, to: str, frames: list[bytes]) -> None:
        batch = self.faults(list(frames))
        self._queue.append(lambda: self._deliver(link, to, batch))

    def _deliver(self, link: Link, to: str, frames: list[bytes]) -> None:
        node = self.nodes.get(to)
        if link in self._links and node is not None and frames:
            self._run(to, node.core.receive(link, frames, self.now))

    def _connect(self, src: str, dst: str) -> None:
        """A dial succeeds at once if `dst` is on the net; both ends are registered
        before either core hears of the link, so a frame sent at once has a way."""
        if dst not in self.nodes or src not in self.nodes:
            if src in self.nodes:
                self._run(src, self.nodes[src].core.dial_failed(dst, self.now))
            return
        lid = self._next_link
        self._next_link += 1
        a, b = MemoryEnd(self, lid, src, dst), MemoryEnd(self, lid, dst, src)
        self._links[lid] = (a, b)
        self.nodes[src].ends[lid] = a
        self.nodes[dst].ends[lid] = b
        self._run(src, self.nodes[src].core.link_opened(lid, dst, dialer=src, now=self.now,
                                                         target=dst))
        if lid in self._links:  # the dialler may have refused it as a duplicate
            self._run(dst, self.nodes[dst].core.link_opened(lid, src, dialer=src,
                                                             now=self.now))

    def _close(self, link: Link, by: str, code: int, reason: str) -> None:
        ends = self._links.pop(link, None)
        if ends is None:
            return
        self.closes.append((link, by, code, reason))
        for end in ends:
            node = self.nodes.get(end.node)
            if node is not None:
                node.ends.pop(link, None)
                self._run(end.node, node.core.link_closed(link, self.now))

    def _run(self, name: str, effects: list[Effect]) -> None:
        """Carry out one node's effects."""
        node = self.nodes[name]
        for e in effects:
            match e:
                case Send(link=lid, frames=frames):
                    end = node.ends.get(lid)
                    if end is not None:
                        end.send(frames)
                case Close(link=lid, code=code, reason=reason):
                    end = node.ends.get(lid)
                    if end is not None:
                        end.close(code, reason)
                case Dial(target=target):
                    self._queue.append(partial(self._connect, name, target))
                case SetTimer(key=key, token=token, delay=delay):
                    self._seq += 1
                    heapq.heappush(self._timers, (self.now + delay, self._seq, name, key,
                                                  token))
                case Done(op=oid):
                    self.done[(name, oid)] = e
                case Decided(what=what):
                    self.decisions[name].append(what)
                case Failed():
                    self.failures.append(e)
                case _:
                    pass
