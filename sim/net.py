"""The simulated network: links with latency, loss and bandwidth; partitions; and
connections that carry one sync session each way as an ordered, reliable stream.

The model follows what the branch node really runs on (a websocket over TLS over
TCP), so that faults reach the sync protocol in the form they would in a shop:

- A connection is a reliable ordered byte stream. A lost packet does not lose a
  frame: TCP retransmits it after its retransmission timeout (200 ms on Linux,
  doubling on each further loss), and every frame behind it waits (head-of-line
  blocking). Duplicated and reordered packets are undone by TCP, so on the wire
  they are only delay. That is the faithful model, and the default.
- A partition (a cut between groups of nodes, possibly one-way, possibly only on
  the WAN) holds a connection's frames in the sender's buffer: they arrive, in
  order, when the cut heals, unless the cut outlasts the websocket heartbeat, in
  which case both ends close the connection, everything in flight is lost, and
  the dialling side reconnects with the node's backoff. The fresh session pair
  starts with a hello, so anti-entropy heals what was lost.
- Bandwidth: frames leave a node through its uplink one after another (a hub's
  uplink carries all its connections), so a week's catch-up takes real time.
- Optional session-level faults, off by default (`--dup`, `--reorder`): the same
  frame handed to the session twice, or two frames swapped. They model a broken
  transport, to test that the library tolerates them (a duplicated rights request
  is granted once; an out-of-order frame closes the connection, not the node).
"""

from __future__ import annotations

import random
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import msgpack

from crdtledger.core import HEARTBEAT_S
from crdtledger.transport import FrameFaults
from sim.engine import MS, SECOND, Engine

if TYPE_CHECKING:
    from crdtledger.sync import SyncSession

# TCP/IP and TLS framing around each websocket frame, and the payload per packet.
FRAME_OVERHEAD = 2 + 4 + 29 + 52  # ws header, mask, TLS record, TCP/IP headers
PACKET_PAYLOAD = 1448
# Linux's minimum retransmission timeout; it doubles on each loss of the same packet.
RTO_US = 200 * MS
# The node's heartbeat (crdtledger.core.HEARTBEAT_S, run by aiohttp) closes a
# connection whose pong is half a heartbeat late: a cut is noticed 10-15 s in.
HEARTBEAT_TIMEOUT_US = round(HEARTBEAT_S * 1.5 * SECOND)
# An ECDSA P-256 signature in DER is 70 to 72 bytes (r and s lose a leading zero, or
# gain a sign byte, at random): a signed head is counted at the longest.
SIGNATURE_BYTES = 72
_SIZES: OrderedDict[bytes, int] = OrderedDict()


def frame_size(frame: bytes) -> int:
    """A frame's length as the run counts it (bandwidth, traffic, the trace): its
    length, except that the signatures of log heads (and of the heads that prove a
    fork) in a `recs` frame count as SIGNATURE_BYTES whatever their DER length.
    That length is random (the signing nonce), so counting it as it is would make
    one seed's runs differ in timing and digest; a frame's content is never
    changed. Remembered by content: a frame is sized when sent and again when
    delivered, and a hub relays one record to every peer in frames of equal bytes
    (only `recs` frames: any other is counted at its length, which is cheaper than
    the look-up)."""
    size = len(frame)
    if frame[6:11] != b"\xa4recs":
        return size
    hit = _SIZES.get(frame)
    if hit is not None:
        return hit
    try:
        msg: Any = msgpack.unpackb(frame, raw=False, strict_map_key=False)
        for field in ("heads", "proofs"):  # a proof of a fork is a signed head too
            heads = msg.get(field) if isinstance(msg, dict) else None
            if isinstance(heads, dict):
                for head in heads.values():
                    if isinstance(head, list) and len(head) == 3 and isinstance(head[2], bytes):
                        size += SIGNATURE_BYTES - len(head[2])
    except Exception:
        pass
    _SIZES[frame] = size
    if len(_SIZES) > 4096:
        _SIZES.popitem(last=False)
    return size


@dataclass(frozen=True)
class Profile:
    """A class of link. One-way latency = base + an exponential tail of mean `jitter`."""

    name: str
    latency_us: int
    jitter_us: int
    loss: float  # per packet
    handshake_rtts: int  # TCP + TLS 1.3 + websocket upgrade

    def delay(self, rng: random.Random, size: int) -> int:
        d = self.latency_us + int(rng.expovariate(1.0) * self.jitter_us)
        packets = 1 + (size + FRAME_OVERHEAD) // PACKET_PAYLOAD
        p_frame = 1.0 - (1.0 - self.loss) ** packets
        rto = RTO_US
        while rng.random() < p_frame:  # each loss costs a retransmission timeout
            d += rto
            rto *= 2
            p_frame = self.loss
        return d


LAN = Profile("lan", latency_us=250, jitter_us=150, loss=1e-5, handshake_rtts=3)
WAN = Profile("wan", latency_us=20 * MS, jitter_us=6 * MS, loss=1e-3, handshake_rtts=3)

# Uplink bandwidth in bits per second: a shop's broadband upload, a hub's server
# line, a LAN.
SHOP_UPLINK_BPS = 8_000_000
HUB_UPLINK_BPS = 200_000_000
LAN_BPS = 100_000_000


@dataclass(frozen=True)
class Cut:
    """A partition: frames from a node in `src` to a node in `dst` do not pass.
    `wan_only`: only links between sites (a shop's internet uplink is down, its
    LAN is not)."""

    src: frozenset[str]
    dst: frozenset[str]
    wan_only: bool = False
    label: str = ""

    @staticmethod
    def split(side: Iterable[str], everyone: Iterable[str], *, wan_only: bool = False,
              label: str = "") -> list[Cut]:
        a = frozenset(side)
        b = frozenset(everyone) - a
        return [Cut(a, b, wan_only, label), Cut(b, a, wan_only, label)]


@dataclass
class Pipe:
    """One direction of a connection: frames in order, each with its arrival time."""

    src: str
    dst: str
    queue: deque[tuple[int, bytes]] = field(default_factory=deque)
    last_arrival: int = 0
    scheduled: int | None = None  # time of the pending delivery event
    held_since: int | None = None  # blocked by a cut since


class Connection:
    """A websocket between two nodes, one SyncSession at each end."""

    def __init__(self, cid: int, dialer: str, acceptor: str, profile: Profile) -> None:
        self.id = cid
        self.dialer = dialer
        self.acceptor = acceptor
        self.profile = profile
        self.sessions: dict[str, SyncSession] = {}
        self.pipes = {dialer: Pipe(dialer, acceptor), acceptor: Pipe(acceptor, dialer)}
        self.open = False
        self.opened_at = 0
        self.last_used = 0

    def other(self, node: str) -> str:
        return self.acceptor if node == self.dialer else self.dialer

    def key(self) -> tuple[str, str]:
        return (self.dialer, self.acceptor)


class End:
    """One node's end of a Connection: `crdtledger.transport.Transport` over the
    simulated network, as `peer.node.Link` is over a websocket."""

    def __init__(self, net: Network, conn: Connection, node: str) -> None:
        self.net = net
        self.conn = conn
        self.node = node

    def send(self, frames: list[bytes]) -> None:
        self.net.send(self.conn, self.node, frames)

    def close(self, code: int, reason: str) -> None:
        self.net.close(self.conn, f"{reason} at {self.node}")


class Network:
    """Who can reach whom, and the delivery of frames over connections.

    The network calls back into the simulation for what nodes do: `deliver(conn,
    node, frames)` when frames arrive at `node`, and `reset(conn, reason)` when a
    connection dies.
    """

    def __init__(self, engine: Engine, rng: random.Random, site_of: dict[str, int],
                 uplink_bps: dict[str, int],
                 deliver: Callable[[Connection, str, list[bytes]], None],
                 reset: Callable[[Connection, str], None],
                 dup: float = 0.0, reorder: float = 0.0) -> None:
        self.engine = engine
        self.rng = rng
        self.site_of = site_of
        self.uplink_bps = uplink_bps
        self._deliver = deliver
        self._reset = reset
        self.faults = FrameFaults(rng, dup, reorder)
        self.cuts: list[Cut] = []
        self._blocked: dict[tuple[str, str], bool] = {}
        self.connections: dict[int, Connection] = {}
        self._next_id = 0
        self._busy: dict[tuple[str, str], int] = {}  # (node, lan|wan) -> uplink free at
        # traffic[profile] = [frames, bytes]
        self.traffic: dict[str, list[int]] = {"lan": [0, 0], "wan": [0, 0]}

    # --- reachability ---------------------------------------------------------

    def profile(self, a: str, b: str) -> Profile:
        return LAN if self.site_of[a] == self.site_of[b] else WAN

    def blocked(self, src: str, dst: str) -> bool:
        key = (src, dst)
        hit = self._blocked.get(key)
        if hit is None:
            wan = self.site_of[src] != self.site_of[dst]
            hit = any(src in c.src and dst in c.dst and (wan or not c.wan_only)
                      for c in self.cuts)
            self._blocked[key] = hit
        return hit

    def reachable(self, a: str, b: str) -> bool:
        return not self.blocked(a, b) and not self.blocked(b, a)

    def add_cuts(self, cuts: Iterable[Cut]) -> None:
        self.cuts.extend(cuts)
        self._blocked.clear()
        self._review()

    def remove_cuts(self, cuts: Iterable[Cut]) -> None:
        for c in cuts:
            if c in self.cuts:
                self.cuts.remove(c)
        self._blocked.clear()
        self._review()

    def cut_nodes(self) -> set[str]:
        """Nodes on either side of an active cut (for 'while partitioned')."""
        out: set[str] = set()
        for c in self.cuts:
            out |= c.src | c.dst
        return out

    def _review(self) -> None:
        """After the cuts changed: hold or release every connection's pipes."""
        for conn in sorted(self.connections.values(), key=lambda c: c.id):
            for pipe in (conn.pipes[conn.dialer], conn.pipes[conn.acceptor]):
                if self.blocked(pipe.src, pipe.dst):
                    if pipe.held_since is None:
                        pipe.held_since = self.engine.now
                        self._watch(conn)
                elif pipe.held_since is not None:
                    pipe.held_since = None
                    self._release(conn, pipe)

    def _watch(self, conn: Connection) -> None:
        """A heartbeat later, a connection still cut in either direction is closed."""

        def check() -> None:
            if conn.id not in self.connections:
                return
            now = self.engine.now
            for pipe in conn.pipes.values():
                if pipe.held_since is not None and now - pipe.held_since >= HEARTBEAT_TIMEOUT_US:
                    self.close(conn, "heartbeat timeout")
                    return

        self.engine.after(HEARTBEAT_TIMEOUT_US, check)

    def _release(self, conn: Connection, pipe: Pipe) -> None:
        """A cut healed before the heartbeat gave up: TCP's retransmissions get the
        held frames through, in order, one retransmission timeout or so later."""
        now = self.engine.now
        base = now + RTO_US // 2 + conn.profile.delay(self.rng, 0)
        shifted: deque[tuple[int, bytes]] = deque()
        last = base
        for arrival, frame in pipe.queue:
            last = max(last, arrival)
            shifted.append((last, frame))
        pipe.queue = shifted
        pipe.last_arrival = max(pipe.last_arrival, last)
        pipe.scheduled = None
        self._schedule(conn, pipe)

    # --- connections ------------------------------------------------------------

    def connect(self, dialer: str, acceptor: str,
                done: Callable[[Connection | None], None]) -> None:
        """Dial: after the handshake's round trips, `done(conn)` with an open
        connection, or `done(None)` if the peer could not be reached."""
        profile = self.profile(dialer, acceptor)
        if not self.reachable(dialer, acceptor):
            # A SYN into a cut: the connect attempt times out.
            self.engine.after(3 * SECOND, lambda: done(None))
            return
        rtt = sum(profile.delay(self.rng, 200) + profile.delay(self.rng, 200)
                  for _ in range(profile.handshake_rtts))

        def finish() -> None:
            if not self.reachable(dialer, acceptor):
                done(None)
                return
            self._next_id += 1
            conn = Connection(self._next_id, dialer, acceptor, profile)
            conn.open = True
            conn.opened_at = conn.last_used = self.engine.now
            self.connections[conn.id] = conn
            done(conn)

        self.engine.after(rtt, finish)

    def close(self, conn: Connection, reason: str) -> None:
        """Both ends see the connection die; frames in flight are lost."""
        if self.connections.pop(conn.id, None) is None:
            return
        conn.open = False
        for pipe in conn.pipes.values():
            pipe.queue.clear()
        self._reset(conn, reason)

    def send(self, conn: Connection, src: str, frames: list[bytes]) -> None:
        if not conn.open or not frames:
            return
        pipe = conn.pipes[src]
        now = self.engine.now
        kind = conn.profile.name
        bps = LAN_BPS if kind == "lan" else self.uplink_bps[src]
        busy_key = (src, kind)
        free = max(now, self._busy.get(busy_key, 0))
        stats = self.traffic[kind]
        rng = self.rng
        for frame in frames:
            size = frame_size(frame)
            wire = size + FRAME_OVERHEAD * (1 + size // PACKET_PAYLOAD)
            free += wire * 8 * 1_000_000 // bps
            arrival = max(free + conn.profile.delay(rng, size), pipe.last_arrival)
            pipe.last_arrival = arrival
            pipe.queue.append((arrival, frame))
            stats[0] += 1
            stats[1] += wire
        self._busy[busy_key] = free
        conn.last_used = now
        if pipe.held_since is None:
            self._schedule(conn, pipe)

    def _schedule(self, conn: Connection, pipe: Pipe) -> None:
        if not pipe.queue or pipe.held_since is not None:
            return
        first = pipe.queue[0][0]
        if pipe.scheduled is not None and pipe.scheduled <= first:
            return
        pipe.scheduled = first
        self.engine.at(first, lambda: self._arrive(conn, pipe, first))

    def _arrive(self, conn: Connection, pipe: Pipe, when: int) -> None:
        if pipe.scheduled != when:
            return  # superseded by an earlier delivery event
        pipe.scheduled = None
        if not conn.open or pipe.held_since is not None:
            return
        now = self.engine.now
        frames: list[bytes] = []
        q = pipe.queue
        while q and q[0][0] <= now:
            frames.append(q.popleft()[1])
        if frames:
            frames = self.faults(frames)
            self._deliver(conn, pipe.dst, frames)
        if conn.open:
            self._schedule(conn, pipe)

    def in_flight(self) -> int:
        return sum(len(p.queue) for c in self.connections.values() for p in c.pipes.values())
