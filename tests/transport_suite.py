"""One test suite for every transport (automerge-repo's `runAdapterTests`).

A transport is held to the same behaviour whatever carries the frames: two nodes
sync; a write at A reaches C through B; a debit at one node is funded by rights
fetched from another; a link cut in the middle of a round heals on reconnect; an
oversized, duplicated or out-of-order frame changes nothing it should not. Each
adapter below drives real ledgers through the one node core (`crdtledger.core`)
over its own transport, behind one synchronous interface, so a case is written
once (tests/test_transports.py) and run against all of them:

- `MemoryAdapter`: `crdtledger.transport.MemoryNet`, in-process links in virtual time;
- `SimAdapter`: the simulator's network and nodes (`sim.net`, `sim.node.SimNode`)
  under its engine, with a small world instead of a workload;
- `WebsocketAdapter`: real `peer.node.Node`s with mutual TLS on 127.0.0.1, their
  event loop run by the test between steps;
- `FileAdapter`: sync files, a one-way batch of frames (export at A what B lacks,
  import at B). It has no live link, so it declares what it cannot do (`caps`) and
  a case that needs it is skipped with that reason; the faults a file can suffer
  (a truncated copy, a duplicate or an older file) have cases of their own.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

from crdtledger.core import Close, Effect, Link, NodeCore
from crdtledger.errors import CorruptSyncFile, LedgerError
from crdtledger.ledger import Ledger
from crdtledger.sync import states_digest, unpack
from crdtledger.syncfile import export_file, import_file
from crdtledger.transport import MemoryNet
from peer.chain import enrol, init_chain
from peer.node import Config as NodeConfig
from peer.node import Node
from sim.config import Config as SimConfig
from sim.engine import SECOND
from sim.net import SHOP_UPLINK_BPS, Connection, Network
from sim.node import SimNode
from sim.world import World

T = TypeVar("T")

# Capabilities a case may need.
RIGHTS = "rights"  # a node can ask another for rights and wait for the answer
FRAMES = "frames"  # a live link on which raw frames can be put

# Generous: a shared 2-core box; the virtual-time adapters never come near.
SETTLE_S = 30.0
SIM_CHAIN = "simchain"  # what SimNode creates its stores with


def digest(ledger: Ledger) -> str:
    return states_digest(ledger.state_vectors()).hex()


def kind(frame: bytes) -> str:
    try:
        return str(unpack(frame).get("t"))
    except LedgerError:
        return "?"


class Adapter:
    """What a case sees of a transport. Node names are node ids (SH01...)."""

    name = "?"
    caps: frozenset[str] = frozenset({RIGHTS, FRAMES})

    def __init__(self, root: Path) -> None:
        self.root = root
        self.edges: list[tuple[str, str]] = []
        self.cut_done: set[str] = set()

    # --- for the adapters to provide -------------------------------------------

    def add(self, name: str) -> None:
        raise NotImplementedError

    def ledger(self, name: str) -> Ledger:
        raise NotImplementedError

    def core(self, name: str) -> NodeCore:
        raise NotImplementedError

    def _dial(self, src: str, dst: str) -> None:
        raise NotImplementedError

    def perform(self, name: str, op: Callable[[Ledger], T]) -> T:
        """A till's operation at `name`, through the node core (which may fetch
        rights); its result, or its refusal raised."""
        raise NotImplementedError

    def run(self, seconds: float) -> None:
        """Let time pass (virtual, or real for the websockets)."""
        raise NotImplementedError

    def quiet(self) -> bool:
        """Nothing in flight (frames, dials)."""
        return True

    def inject(self, src: str, dst: str, frames: list[bytes]) -> None:
        """Raw frames on the link from `src` to `dst`, as if `src`'s session sent them."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def refusals(self, name: str) -> list[str] | None:
        """Why `name`'s sessions refused frames (None: refused below the session, as
        aiohttp does with an oversized websocket message, and not reported)."""
        return None

    # --- shared -------------------------------------------------------------------

    def dial(self, src: str, dst: str) -> None:
        """`src` keeps a connection to `dst` (reconnecting after a loss)."""
        self.edges.append((src, dst))
        self._dial(src, dst)

    def names(self) -> list[str]:
        raise NotImplementedError

    def connected(self, a: str, b: str) -> bool:
        return b in self.core(a).connected() and a in self.core(b).connected()

    def in_sync(self) -> bool:
        digests = {digest(self.ledger(n)) for n in self.names()}
        return (len(digests) == 1 and self.quiet()
                and all(self.connected(a, b) for a, b in self.edges))

    def until(self, done: Callable[[], bool], what: str, timeout: float = SETTLE_S) -> None:
        """Run the nodes until `done()`: a real transport takes its time, and the box may
        be busy (an anti-entropy hello read meanwhile must not pass for the awaited
        frame)."""
        waited = 0.0
        while not done():
            if waited > timeout:
                raise AssertionError(f"{self.name}: {what} not within {timeout} s")
            self.run(0.05)
            waited += 0.05

    def settle(self, timeout: float = SETTLE_S) -> None:
        """Until every link is up and every store holds the same data."""
        waited = 0.0
        while not self.in_sync():
            if waited > timeout:
                raise AssertionError(
                    f"{self.name}: not in sync after {timeout} s: "
                    + ", ".join(f"{n} {digest(self.ledger(n))[:8]} {self.core(n).connected()}"
                                for n in self.names()))
            self.run(0.05)
            waited += 0.05

    def cut_mid_round(self, dst: str) -> None:
        """The next batch of frames `dst` receives that carries log records is its last
        on that link: the frames up to and including the first `recs` arrive, then
        the connection dies (a cable pulled in the middle of a catch-up)."""
        core = self.core(dst)
        receive = core.receive

        def cut(link: Link, frames: list[bytes], now: float) -> list[Effect]:
            for i, f in enumerate(frames):
                if kind(f) == "recs":
                    core.receive = receive  # type: ignore[method-assign]
                    self.cut_done.add(dst)
                    effects = receive(link, frames[:i + 1], now)
                    return [*effects, Close(link, 1001, "cut mid-round")]
            return receive(link, frames, now)

        core.receive = cut  # type: ignore[method-assign]


# --- in memory ---------------------------------------------------------------------


class MemoryAdapter(Adapter):
    name = "memory"

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.net = MemoryNet(seed=1)
        self.ledgers: dict[str, Ledger] = {}

    def add(self, name: str) -> None:
        Ledger.create(self.root / name, name, "transport-test")
        ledger = Ledger.open(self.root / name, synchronous="NORMAL")
        self.ledgers[name] = ledger
        self.net.add(ledger)

    def names(self) -> list[str]:
        return sorted(self.ledgers)

    def ledger(self, name: str) -> Ledger:
        return self.ledgers[name]

    def core(self, name: str) -> NodeCore:
        return self.net.nodes[name].core

    def _dial(self, src: str, dst: str) -> None:
        self.net.dial(src, dst)

    def perform(self, name: str, op: Callable[[Ledger], T]) -> T:
        ledger = self.ledgers[name]
        oid = self.net.submit(name, lambda: op(ledger))
        for _ in range(400):
            done = self.net.done.pop((name, oid), None)
            if done is not None:
                if done.error is not None:
                    raise done.error
                result: T = done.result
                return result
            self.net.run(0.025)
        raise AssertionError(f"operation {oid} at {name} never finished")

    def run(self, seconds: float) -> None:
        self.net.run(seconds)

    def quiet(self) -> bool:
        return self.net.in_flight() == 0

    def inject(self, src: str, dst: str, frames: list[bytes]) -> None:
        self.net.inject(src, dst, frames)
        self.net.run(0)

    def refusals(self, name: str) -> list[str] | None:
        mine = set(self.core(name).peers)
        return [str(f.error) for f in self.net.failures if f.peer in mine]

    def close(self) -> None:
        for ledger in self.ledgers.values():
            ledger.close()


# --- the simulator ------------------------------------------------------------------


class SmallWorld(World):
    """The simulator's World without a workload or faults: nodes added by name, dials
    chosen by the test, the engine run by hand. Everything else (dialling over the
    simulated network, delivery, resets, the checks a node's step triggers) is the
    World's own; a protocol error is recorded instead of ending the run, since the
    suite injects them on purpose."""

    def __init__(self, root: Path, seed: int = 1) -> None:  # no super(): no workload
        self.config = SimConfig(nodes=3, seed=seed, ae_interval_s=3.0, synchronous="NORMAL",
                                keep_trace=True)
        self._init_state(datetime(2026, 1, 5, 10, tzinfo=ZoneInfo("Asia/Shanghai")), root)
        self.nodes: list[SimNode] = []
        self.by_name: dict[str, SimNode] = {}
        self.site_of: dict[str, int] = {}
        self.uplink: dict[str, int] = {}
        self.net = Network(self.engine, self.rng_net, self.site_of, self.uplink,
                           self._deliver, self._reset)
        self.protocol_errors: list[tuple[str, int, str]] = []

    def add(self, name: str) -> SimNode:
        i = len(self.nodes)
        self.site_of[name] = i  # each on its own site: WAN latency and loss
        self.uplink[name] = SHOP_UPLINK_BPS
        node = SimNode(self, i, name, self.root / name, hub=False)
        self.nodes.append(node)
        self.by_name[name] = node
        node.boot()
        return node

    def protocol_error(self, node: SimNode, conn: Connection, error: Exception) -> None:
        self.metrics.protocol_errors += 1
        self.trace(self.engine.now, f"{node.name} protocol error {error}")
        self.protocol_errors.append((node.name, conn.id, str(error)))


class SimAdapter(Adapter):
    name = "sim"

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.world = SmallWorld(root)

    def add(self, name: str) -> None:
        self.world.add(name)

    def names(self) -> list[str]:
        return sorted(self.world.by_name)

    def node(self, name: str) -> SimNode:
        return self.world.by_name[name]

    def ledger(self, name: str) -> Ledger:
        ledger = self.node(name).ledger
        assert ledger is not None
        return ledger

    def core(self, name: str) -> NodeCore:
        core = self.node(name).core
        assert core is not None
        return core

    def _dial(self, src: str, dst: str) -> None:
        node = self.node(src)
        node.run(self.core(src).add_target(dst, dst, node.now_s()))

    def perform(self, name: str, op: Callable[[Ledger], T]) -> T:
        outcome: list[Any] = []
        self.node(name).perform("test", op, lambda result, _attempt: outcome.append(result))
        for _ in range(400):
            if outcome:
                if isinstance(outcome[0], BaseException):
                    raise outcome[0]
                result: T = outcome[0]
                return result
            self.run(0.025)
        raise AssertionError(f"operation at {name} never finished")

    def run(self, seconds: float) -> None:
        engine = self.world.engine
        engine.run(engine.now + round(seconds * SECOND))

    def quiet(self) -> bool:
        return self.world.net.in_flight() == 0

    def conn(self, a: str, b: str) -> Connection:
        for cid in sorted(self.node(a).conns):
            conn = self.node(a).conns[cid]
            if b in conn.key() and self.core(a).session(b) is not None:
                return conn
        raise AssertionError(f"no connection between {a} and {b}")

    def inject(self, src: str, dst: str, frames: list[bytes]) -> None:
        self.world.net.send(self.conn(src, dst), src, frames)
        self.run(1.0)  # WAN latency, and a retransmission or two

    def refusals(self, name: str) -> list[str] | None:
        return [why for node, _, why in self.world.protocol_errors if node == name]

    def close(self) -> None:
        for node in self.world.nodes:
            node.close()


# --- websockets over mutual TLS ------------------------------------------------------


class WebsocketAdapter(Adapter):
    name = "websocket"

    def __init__(self, root: Path, **config: float) -> None:
        super().__init__(root)
        self.loop = asyncio.new_event_loop()
        self.chain = init_chain(root / "chain")
        self.nodes: dict[str, Node] = {}
        # Anti-entropy often, so that a test never waits long for a round; the rest as
        # a shop runs it.
        self.config: dict[str, float] = {"anti_entropy_s": 0.5, **config}

    def add(self, name: str) -> None:
        Ledger.create(self.root / name, name, self.chain.name)
        enrol(self.root / "chain", self.root / name, name)
        node = Node(NodeConfig(self.root / name, listen=("127.0.0.1", 0),
                               api=("127.0.0.1", 0), mdns=False,
                               **self.config))  # type: ignore[arg-type]
        self.loop.run_until_complete(node.start())
        self.nodes[name] = node

    def names(self) -> list[str]:
        return sorted(self.nodes)

    def ledger(self, name: str) -> Ledger:
        return self.nodes[name].ledger

    def core(self, name: str) -> NodeCore:
        return self.nodes[name].core

    def url(self, name: str) -> str:
        return f"wss://127.0.0.1:{self.nodes[name].sync_port}"

    def in_loop(self, fn: Callable[[], T]) -> T:
        """Call `fn` on the nodes' loop (the node sets its timers on the running loop)."""
        async def call() -> T:
            return fn()

        return self.loop.run_until_complete(call())

    def _dial(self, src: str, dst: str) -> None:
        self.in_loop(lambda: self.nodes[src].dial(self.url(dst), dst))

    def dial_all(self, pairs: Iterable[tuple[str, str]]) -> None:
        """Several dials in the same turn of the loop (crossing dials)."""
        pairs = list(pairs)
        self.edges.extend(pairs)

        def dial() -> None:
            for src, dst in pairs:
                self.nodes[src].dial(self.url(dst), dst)

        self.in_loop(dial)

    def perform(self, name: str, op: Callable[[Ledger], T]) -> T:
        node = self.nodes[name]
        result: T = self.loop.run_until_complete(
            asyncio.wait_for(node.perform(lambda: op(node.ledger)), 30))
        return result

    def run(self, seconds: float) -> None:
        self.loop.run_until_complete(asyncio.sleep(seconds))

    def inject(self, src: str, dst: str, frames: list[bytes]) -> None:
        link = self.nodes[src].link(dst)
        assert link is not None, f"no link from {src} to {dst}"
        session = self.core(dst).session(src)
        assert session is not None
        enough = session.bytes_in + sum(len(f) for f in frames)
        self.in_loop(lambda: link.send(frames))
        # Until `dst` has read them all, or its session ended (refused), not a fixed
        # pause: the box may be busy.
        deadline = time.monotonic() + SETTLE_S
        while not session.closed and session.bytes_in < enough:
            assert time.monotonic() < deadline, f"{dst} never read the injected frames"
            self.run(0.02)

    def close(self) -> None:
        for node in reversed(list(self.nodes.values())):
            self.loop.run_until_complete(node.stop())
        self.loop.close()


# --- sync files ------------------------------------------------------------------------


class FileAdapter(Adapter):
    """A sync file is a batch of frames that goes one way: there is no link to hold
    open, so `settle` exchanges files along every edge, both ways, until nothing
    changes; a write is made at the node directly (no core: nobody could answer a
    rights request)."""

    name = "file"
    caps = frozenset[str]()

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.ledgers: dict[str, Ledger] = {}
        self.files = 0
        self.refused: list[str] = []
        self._truncate: set[str] = set()

    def add(self, name: str) -> None:
        Ledger.create(self.root / name, name, "transport-test")
        self.ledgers[name] = Ledger.open(self.root / name, synchronous="NORMAL")

    def names(self) -> list[str]:
        return sorted(self.ledgers)

    def ledger(self, name: str) -> Ledger:
        return self.ledgers[name]

    def _dial(self, src: str, dst: str) -> None:
        pass  # an edge only says who exchanges files with whom

    def connected(self, a: str, b: str) -> bool:
        return True

    def perform(self, name: str, op: Callable[[Ledger], T]) -> T:
        return op(self.ledgers[name])

    def export(self, src: str, dst: str) -> Path:
        """A file at `src` with what `dst` lacks (as `src` last heard from it)."""
        self.files += 1
        path = self.root / f"{self.files:03d}-{src}-for-{dst}.sync"
        export_file(self.ledgers[src], path, for_node=dst)
        return path

    def carry(self, src: str, dst: str) -> None:
        path = self.export(src, dst)
        if dst in self._truncate:  # the copy to the USB stick was cut short
            self._truncate.discard(dst)
            self.cut_done.add(dst)
            data = path.read_bytes()
            path.write_bytes(data[:len(data) // 2])
        try:
            import_file(self.ledgers[dst], path)
        except CorruptSyncFile as e:
            self.refused.append(str(e))

    def run(self, seconds: float) -> None:
        for a, b in self.edges:
            self.carry(a, b)
            self.carry(b, a)

    def cut_mid_round(self, dst: str) -> None:
        self._truncate.add(dst)

    def close(self) -> None:
        for ledger in self.ledgers.values():
            ledger.close()


ADAPTERS: dict[str, Callable[[Path], Adapter]] = {
    "memory": MemoryAdapter,
    "sim": SimAdapter,
    "websocket": WebsocketAdapter,
    "file": FileAdapter,
}
