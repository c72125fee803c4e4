"""A simulated branch: a real `Ledger` on a real SQLite file, real `SyncSession`s on
its connections, and the node's policies (automatic rights transfer, anti-entropy,
reconnect backoff) as `peer/node.py` runs them, driven by virtual time.

Only the clock, the network and the faults are simulated. The till's operations go
through the same library calls as the node's HTTP API.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crdtledger import escrow
from crdtledger.errors import LedgerError, RemoteProtocolError, RightsElsewhere
from crdtledger.ledger import Ledger
from crdtledger.storage import DB_FILE
from crdtledger.sync import (
    ClockSkewSeen,
    PeerHello,
    RightsAnswered,
    RightsGranted,
    RightsRequested,
    SyncSession,
    UpdatesApplied,
)
from sim.engine import MS, SECOND
from sim.net import Connection

if TYPE_CHECKING:
    from sim.world import World

# The branch node's constants (peer/node.py), in virtual microseconds.
RIGHTS_DEADLINE_US = 2 * SECOND
BACKOFF_MIN_US = 250 * MS
BACKOFF_MAX_US = 30 * SECOND
HEALTHY_US = 10 * SECOND

Outcome = Any  # an operation's result, or the LedgerError that refused it
Op = Callable[[Ledger], Any]

# The sim's own index on each node's database, for the continuous checker: "is any
# rights row below zero?" in O(1) after every step instead of a scan of the table.
# It changes no result of the library (a partial index on its table).
CHECK_INDEX = ("CREATE INDEX IF NOT EXISTS sim_negative_rights ON rights(member, purse, node) "
               "WHERE amount < 0")


class Crashed(Exception):
    """The node died while the operation was in flight: the till got no answer."""


class Attempt:
    """One operation at the till that may need rights from other branches.

    The same loop as `peer.node.Node.perform`: run it; on RightsElsewhere ask the
    reachable holders (escrow.RightsFetch, which also asks one peer to relay what
    they cannot cover), wait for their answers or the deadline, and run it again
    while something was received.
    """

    def __init__(self, node: SimNode, label: str, op: Op,
                 done: Callable[[Outcome, Attempt], None]) -> None:
        self.node = node
        self.label = label
        self.op = op
        self.done = done
        self.gen = node.gen
        self.began = node.world.engine.now
        self.deadline = self.began + RIGHTS_DEADLINE_US
        self.started: int | None = None  # first fetch
        self.fetch: escrow.RightsFetch | None = None
        self.refusal: RightsElsewhere | None = None
        self.keys: list[tuple[str, int]] = []
        self.finished = False
        self.tries = 0
        self.where = node.world.connectivity(node)  # at the swipe: connected or not
        node.seq += 1
        self.seq = node.seq

    @property
    def waited_us(self) -> int | None:
        return None if self.started is None else self.node.world.engine.now - self.started

    def alive(self) -> bool:
        return not self.finished and self.gen == self.node.gen and self.node.up

    def step(self) -> None:
        if not self.alive():
            return
        node = self.node
        ledger = node.ledger
        assert ledger is not None
        now = node.world.engine.now
        self.tries += 1
        try:
            result = self.op(ledger)
        except RightsElsewhere as refusal:
            self.refusal = refusal
            left = self.deadline - now
            reachable = node.connected()
            fetch = escrow.RightsFetch(refusal, node.name, reachable)
            if left <= 0 or not fetch.possible:
                node.after_step()
                self._finish(refusal)
                return
            self.started = self.started or now
            self.fetch = fetch
            self.keys = []
            assert fetch.member is not None
            for ask in fetch.asks:
                session = node.session_with(ask.giver)
                if session is None:
                    fetch.lost(ask.giver)
                    continue
                rid = session.request_rights(fetch.member, fetch.purse, ask.amount)
                self.keys.append((ask.giver, rid))
                node.waits[(ask.giver, rid)] = self
                node.world.trace(now, f"{node.name} rreq {ask.giver} {fetch.member} "
                                      f"{fetch.purse} {ask.amount}")
            node.after_step()
            if fetch.done:
                self._fetched()
            else:
                node.world.engine.at(self.deadline, self._timeout)
            return
        except LedgerError as e:
            node.after_step()
            self._finish(e)
            return
        node.after_step()  # ship the commit at once (the node wakes its links), check
        self._finish(result)

    def answered(self, giver: str, amount: int) -> None:
        if self.fetch is None or not self.alive():
            return
        self.fetch.answered(giver, amount)
        if self.fetch.done:
            self._fetched()

    def lost(self, giver: str) -> None:
        if self.fetch is None or not self.alive():
            return
        self.fetch.lost(giver)
        if self.fetch.done:
            self._fetched()

    def _fetched(self) -> None:
        """The wait is over (all answered, or enough received): retry, unless
        nothing came, which refuses the operation (as the node does)."""
        fetch = self.fetch
        assert fetch is not None
        self._forget_waits()
        self.fetch = None
        if fetch.received <= 0:
            assert self.refusal is not None
            self._finish(self.refusal)
        else:
            self.step()

    def _timeout(self) -> None:
        if not self.alive():
            return
        if self.fetch is not None:
            self._fetched()

    def _forget_waits(self) -> None:
        for key in self.keys:
            self.node.waits.pop(key, None)
        self.keys = []

    def _finish(self, outcome: Outcome) -> None:
        if self.finished:
            return
        self.finished = True
        self._forget_waits()
        self.node.attempts.pop(self.seq, None)
        self.done(outcome, self)

    def crash(self) -> None:
        if not self.finished:
            self.finished = True
            self.done(Crashed(), self)


class Relay:
    """A peer asked this node for rights it holds too little of: as
    `peer.node.Node._relay_rights`, fetch the rest from the other peers (one hop,
    marked forwarded so it is never relayed again; half the deadline), then grant
    what it holds. Shops behind NAT reach each other's rights through a hub so."""

    def __init__(self, node: SimNode, conn: Connection, session: SyncSession,
                 req: RightsRequested) -> None:
        self.node = node
        self.conn = conn
        self.session = session
        self.req = req
        self.gen = node.gen
        self.fetch: escrow.RightsFetch | None = None
        self.keys: list[tuple[str, int]] = []
        self.finished = False

    def start(self) -> None:
        node, req = self.node, self.req
        ledger = node.ledger
        assert ledger is not None
        rights = ledger.rights(req.member, req.purse)
        have = rights.get(node.name, 0)
        others = [p for p in node.connected() if p != req.node]
        if have < req.amount and others:
            holders = {n: a for n, a in rights.items() if n != node.name and a > 0}
            refusal = RightsElsewhere(req.purse, req.amount - have, have, holders, req.member)
            fetch = escrow.RightsFetch(refusal, node.name, others)
            if fetch.possible:
                self.fetch = fetch
                now = node.world.engine.now
                for ask in fetch.asks:
                    s = node.session_with(ask.giver)
                    if s is None:
                        fetch.lost(ask.giver)
                        continue
                    rid = s.request_rights(req.member, req.purse, ask.amount, forwarded=True)
                    self.keys.append((ask.giver, rid))
                    node.waits[(ask.giver, rid)] = self
                    node.world.trace(now, f"{node.name} relay rreq {ask.giver} for {req.node} "
                                          f"{req.member} {req.purse} {ask.amount}")
                node.after_step()
                if not fetch.done:
                    node.world.engine.after(RIGHTS_DEADLINE_US // 2, self.finish)
                    return
        self.finish()

    def answered(self, giver: str, amount: int) -> None:
        if self.fetch is not None and not self.finished:
            self.fetch.answered(giver, amount)
            if self.fetch.done:
                self.finish()

    def lost(self, giver: str) -> None:
        if self.fetch is not None and not self.finished:
            self.fetch.lost(giver)
            if self.fetch.done:
                self.finish()

    def finish(self) -> None:
        if self.finished or self.gen != self.node.gen or not self.node.up:
            return
        self.finished = True
        for key in self.keys:
            self.node.waits.pop(key, None)
        if not self.session.closed:
            self.session.answer_rights(self.req.request)
            self.node.handle_events(self.conn, self.session)
            self.node.after_step()


class SimNode:
    def __init__(self, world: World, index: int, name: str, path: Path, client_id: int,
                 hub: bool) -> None:
        self.world = world
        self.index = index
        self.name = name
        self.path = path
        self.hub = hub
        self.skew_ms = 0
        self.checked_version = -1  # storage.version at the last continuous check
        self.up = False
        self.gen = 0  # incremented on every crash: callbacks of an older life are void
        self.ledger: Ledger | None = None
        self.conns: dict[int, Connection] = {}
        self.sessions: dict[int, SyncSession] = {}
        self.waits: dict[tuple[str, int], Attempt | Relay] = {}
        self.attempts: dict[int, Attempt] = {}  # by sequence: a set would iterate in
        self.seq = 0  # an order of object addresses, different in every process
        self.dial_edges: list[str] = []  # peers this node keeps a connection to
        self.backoff: dict[str, int] = {}
        self.redial_pending: set[str] = set()
        Ledger.create(path, name, "simchain", "Asia/Shanghai")
        # pycrdt client ids are random per store (storage._new_client_id); fixed from
        # the seed here, so that concurrent Map writes (won by the higher client id)
        # resolve alike in every run of a seed.
        with sqlite3.connect(path / DB_FILE) as db:
            db.execute("UPDATE meta SET value = ? WHERE key = 'client_id'", (str(client_id),))
            db.execute("UPDATE meta SET value = '0' WHERE key = 'created_at'")
        self.open()

    # --- life -------------------------------------------------------------------

    def now_ms(self) -> int:
        return self.world.epoch_ms + self.world.engine.now // 1000 + self.skew_ms

    def open(self) -> None:
        self.ledger = Ledger.open(self.path, synchronous=self.world.config.synchronous,
                                  now_ms=self.now_ms, lock=False)
        self.ledger.storage.conn.execute(CHECK_INDEX)
        self.checked_version = -1
        self.up = True

    def crash(self) -> None:
        """The process dies. SQLite has every committed transaction (a commit is the
        acknowledgement); nothing else survives: sessions, frames in flight, the
        tills' operations waiting for rights."""
        if not self.up:
            return
        self.up = False
        self.gen += 1
        for conn in sorted(self.conns.values(), key=lambda c: c.id):
            self.world.net.close(conn, f"{self.name} crashed")
        for seq in sorted(self.attempts):
            self.attempts[seq].crash()
        self.attempts.clear()
        self.waits.clear()
        self.redial_pending.clear()
        assert self.ledger is not None
        # Storage.close() only closes: evicts the documents from memory, closes the
        # SQLite connection (which keeps what committed), writes nothing.
        self.ledger.close()
        self.ledger = None

    def restart(self) -> None:
        self.open()
        self.backoff.clear()
        for peer in self.dial_edges:
            self.redial(peer, 0)

    # --- connections ----------------------------------------------------------

    def connected(self) -> list[str]:
        """Peers with an open session whose hello arrived (peer/node.py `connected`)."""
        return sorted({s.peer for s in self.sessions.values()
                       if s.peer is not None and not s.closed})

    def session_with(self, peer: str) -> SyncSession | None:
        for cid in sorted(self.sessions):
            s = self.sessions[cid]
            if s.peer == peer and not s.closed:
                return s
        return None

    def redial(self, peer: str, delay: int) -> None:
        """Keep the connection to `peer` open (a configured peer: the hub, the LAN)."""
        if peer in self.redial_pending:
            return
        self.redial_pending.add(peer)
        gen = self.gen

        def attempt() -> None:
            self.redial_pending.discard(peer)
            if gen != self.gen or not self.up or self.has_edge(peer):
                return
            self.world.dial(self, peer)

        self.world.engine.after(delay, attempt)

    def has_edge(self, peer: str) -> bool:
        return any(c.other(self.name) == peer for c in self.conns.values())

    def next_backoff(self, peer: str, lasted: int | None) -> int:
        """Full jitter over an exponential backoff, reset after a healthy connection."""
        b = self.backoff.get(peer, BACKOFF_MIN_US)
        if lasted is not None and lasted > HEALTHY_US:
            b = BACKOFF_MIN_US
        self.backoff[peer] = min(BACKOFF_MAX_US, b * 2)
        return int(self.world.rng_net.uniform(0, b))

    def attach(self, conn: Connection) -> SyncSession:
        assert self.ledger is not None
        session = SyncSession(self.ledger, expect_node=conn.other(self.name))
        session.relay_rights = True  # as the branch node: see Relay
        self.conns[conn.id] = conn
        self.sessions[conn.id] = session
        conn.sessions[self.name] = session
        return session

    def detach(self, conn: Connection) -> None:
        session = self.sessions.pop(conn.id, None)
        self.conns.pop(conn.id, None)
        if session is not None:
            session.close()
        peer = conn.other(self.name)
        for (giver, rid), waiter in sorted(self.waits.items()):
            if giver == peer and self.session_with(peer) is None:
                self.waits.pop((giver, rid), None)
                waiter.lost(giver)

    # --- work -------------------------------------------------------------------

    def perform(self, label: str, op: Op, done: Callable[[Outcome, Attempt], None]) -> None:
        attempt = Attempt(self, label, op, done)
        if not self.up:
            attempt.finished = True
            done(Crashed(), attempt)
            return
        self.attempts[attempt.seq] = attempt
        attempt.step()

    def receive(self, conn: Connection, frames: list[bytes]) -> None:
        """Frames arrived on a connection: the session handles them (consecutive
        updates in one ledger transaction), then the node reacts to its events."""
        session = self.sessions.get(conn.id)
        if session is None or session.closed or not self.up:
            return
        world = self.world
        try:
            session.receive_frames(frames)
        except RemoteProtocolError as e:
            world.protocol_error(self, conn, e)
            world.net.close(conn, f"protocol error at {self.name}: {e}")
            self.after_step()
            return
        self.handle_events(conn, session)
        self.after_step()

    def handle_events(self, conn: Connection, session: SyncSession) -> None:
        world = self.world
        now = world.engine.now
        while (event := session.next_event()) is not None:
            if isinstance(event, UpdatesApplied):
                continue
            if isinstance(event, PeerHello):
                world.trace(now, f"{self.name} hello {event.node}")
            elif isinstance(event, RightsGranted):
                world.trace(now, f"{self.name} granted {event.node} {event.amount}")
                waiter = self.waits.pop((event.node, event.request), None)
                if waiter is not None:
                    waiter.answered(event.node, event.amount)
            elif isinstance(event, RightsAnswered):
                world.rights_answered(self, event)
            elif isinstance(event, RightsRequested):
                world.trace(now, f"{self.name} relaying {event.node} {event.member} "
                                 f"{event.purse} {event.amount}")
                Relay(self, conn, session, event).start()
            elif isinstance(event, ClockSkewSeen):
                world.metrics.clock_skew_seen += 1
                world.trace(now, f"{self.name} skew {event.node} {event.skew_ms}")

    def anti_entropy(self) -> None:
        for cid in sorted(self.sessions):
            s = self.sessions[cid]
            if s.peer is not None and not s.closed:
                s.anti_entropy()
        self.after_step()

    def after_step(self) -> None:
        """Ship what the sessions queued, then check this replica."""
        net = self.world.net
        for cid in sorted(self.sessions):
            frames = self.sessions[cid].data_to_send()
            if frames:
                net.send(self.conns[cid], self.name, frames)
        self.world.check_node(self)
