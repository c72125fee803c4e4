"""A simulated branch: a real `Ledger` on a real SQLite file and the real node core
(`crdtledger.core.NodeCore`: sessions, crossing dials, backoff, rights fetch and
relay, anti-entropy, rebalancer), driven by virtual time over the simulated network.

This module only carries out the core's effects, as `peer/node.py` does with
asyncio and websockets: frames go to the simulated connection, timers to the
engine, an operation's outcome to the workload. Only the clock, the network and
the faults are simulated.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from crdtledger import audit, idempotency, operations
from crdtledger.core import (
    BookingDecided,
    Close,
    Count,
    Decided,
    Dial,
    Done,
    Effect,
    Failed,
    NodeCore,
    Rebalanced,
    Seen,
    Send,
    SetTimer,
    TimerKey,
)
from crdtledger.errors import LedgerError
from crdtledger.ledger import Ledger
from crdtledger.storage import Storage
from crdtledger.sync import ClockSkewSeen, PeerHello, RightsAnswered, RightsGranted
from crdtledger.trust import NODE_CERT, TLS_DIR
from peer.chain import apply_revocations, load_identity
from sim.engine import SECOND
from sim.net import Connection, End
from sim.oracles import Intent

if TYPE_CHECKING:
    from sim.world import World

Outcome = Any  # an operation's result, or the LedgerError that refused it
Op = Callable[[Ledger], Any]


class Crashed(Exception):
    """The node died while the operation was in flight: the till got no answer."""


@dataclass
class Attempt:
    """One operation at the till, as the workload and the metrics see it."""

    label: str
    where: str  # at the swipe: "connected" or "partitioned"
    done: Callable[[Outcome, Attempt], None]
    waited_us: int | None = None  # time spent fetching rights, if any
    retried: bool = False  # sent again under its key after its answer was lost

    @property
    def started(self) -> bool | None:
        """Whether it waited for rights (None: it did not)."""
        return None if self.waited_us is None else True


class SimNode:
    def __init__(self, world: World, index: int, name: str, path: Path,
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
        self.core: NodeCore | None = None
        self.conns: dict[int, Connection] = {}
        self.attempts: dict[int, Attempt] = {}  # by the core's operation id
        self.dial_edges: list[str] = []  # peers this node keeps a connection to
        self.deferred = 0  # entries this replica deferred for want of funding (past lives)
        # Effects decided while earlier ones are carried out (an operation's outcome
        # starts the next one at once): carried out after them, in the core's order.
        self._queued: list[Effect] = []
        self._running = False
        self._flush_soon = False  # a flush of the frames a till's write left queued is due
        # Killed right after the next write acknowledged at once, before its flush
        # (World.kill_before_flush): set by the world at a seeded time.
        self.kill_armed = False
        self.kill_down = 0  # and down for this long
        Ledger.create(path, name, "simchain", "Asia/Shanghai")
        # Enrolled in the chain's CA, as a shop is; the first node is the head office.
        world.ca.enrol(path, name, head_office=index == 0)
        store = Storage(path, lock=False)
        try:
            store.set_meta("created_at", "0")
        finally:
            store.close()
        # What its TLS layer presents and checks (peer.chain, as peer.node): a peer is
        # refused at the handshake, and a live link dropped, once the list it installed
        # from the replicated rule revokes that peer (World.dial, `_load_revocations`).
        identity = load_identity(path)
        assert identity is not None
        self.identity = identity
        self.cert_der = x509.load_pem_x509_certificate(
            (path / TLS_DIR / NODE_CERT).read_bytes()).public_bytes(serialization.Encoding.DER)
        self._crl = ""  # the list installed, as peer.node.Node._crl
        self._crl_soon = False
        self.open()

    # --- life -------------------------------------------------------------------

    def now_ms(self) -> int:
        return self.world.epoch_ms + self.world.engine.now // 1000 + self.skew_ms

    def now_s(self) -> float:
        return self.world.engine.now / SECOND

    def open(self) -> None:
        """Open the store and make the core, each life with its own seeded jitter."""
        cfg = self.world.config
        self.ledger = Ledger.open(self.path, synchronous=cfg.synchronous,
                                  now_ms=self.now_ms, lock=False)
        audit.count_deferrals(self.ledger)  # funding deferrals, as the store notes them
        # As peer.node.Node.start: the list in force is installed before any link, and
        # again whenever a rules record commits (`_on_commit`).
        self.identity = load_identity(self.path) or self.identity  # a new process
        self._crl = ""
        self._crl_soon = False
        self._load_revocations()
        self.ledger.subscribe(self._on_commit)
        self.core = NodeCore(self.ledger, rng=random.Random(f"{cfg.seed}:core:{self.name}:"
                                                            f"{self.gen}"),
                             anti_entropy_s=cfg.ae_interval_s)
        self.checked_version = -1
        self.up = True

    def boot(self) -> None:
        """Start the core: it dials this node's configured peers and sets its ticks."""
        assert self.core is not None
        self.run(self.core.start(self.now_s(), [(p, p) for p in self.dial_edges]))

    def restart(self) -> None:
        self.open()
        self.boot()

    def crash(self) -> None:
        """The process dies. SQLite has every committed transaction (a commit is the
        acknowledgement); nothing else survives: sessions, frames in flight, the
        tills' operations waiting for rights."""
        if not self.up:
            return
        self.up = False
        self.gen += 1
        self._flush_soon = False
        self._queued = []  # what the dead process had yet to do is not done
        for conn in sorted(self.conns.values(), key=lambda c: c.id):
            self.world.net.close(conn, f"{self.name} crashed")
        for oid in sorted(self.attempts):
            attempt = self.attempts.pop(oid)
            attempt.done(Crashed(), attempt)
        self.core = None
        assert self.ledger is not None
        self.deferred += audit.deferrals(self.ledger)
        # Storage.close() only closes: evicts the documents from memory, closes the
        # SQLite connection (which keeps what committed), writes nothing.
        self.ledger.close()
        self.ledger = None

    def close(self) -> None:
        """End of the run: stop the core, close the store."""
        if self.core is not None:
            self.core.stop()
            self.core = None
        if self.ledger is not None:
            self.deferred += audit.deferrals(self.ledger)
            self.ledger.close()
            self.ledger = None

    def deferrals(self) -> int:
        """Entries this replica has deferred so far, over all its lives."""
        return self.deferred + (audit.deferrals(self.ledger) if self.ledger is not None else 0)

    # --- what the world calls -------------------------------------------------------

    def connected(self) -> list[str]:
        return self.core.connected() if self.core is not None else []

    def perform(self, label: str, op: Op | Intent,
                done: Callable[[Outcome, Attempt], None], *, retried: bool = False) -> None:
        attempt = Attempt(label, self.world.connectivity(self), done, retried=retried)
        if not self.up or self.core is None or self.ledger is None:
            done(Crashed(), attempt)
            return
        if isinstance(op, Intent):
            self._request(op, attempt)
            return
        ledger = self.ledger
        self._submit(lambda: op(ledger), label, attempt)

    def operator(self, role: str) -> str:
        """The id of this branch's operator in `role` (the world made them at B01)."""
        assert self.ledger is not None
        return self.ledger.owner if role == "owner" else self.world.operators[self.name][role]

    def _request(self, intent: Intent, attempt: Attempt) -> None:
        """A till's request as the API takes it (peer.api: `IdempotencyKeys.run` around
        the route's handler): under its Idempotency-Key, the answer kept is given again
        without running anything; else the key is begun, the operation runs through
        `operations.run` as this branch's operator, its entries tagged with the key,
        and its answer is kept (a refusal frees the key)."""
        ledger = self.ledger
        assert ledger is not None
        operator = self.operator(intent.role)
        key = intent.key
        till = attempt.done
        if key is None:
            def run_plain() -> Any:
                return operations.run(ledger, operator, intent.name, intent.given)

            attempt.done = lambda outcome, a: till(
                outcome if isinstance(outcome, Exception) else intent.answer(outcome), a)
            self._submit(run_plain, attempt.label, attempt)
            return
        now = self.world.key_ms()
        op = operations.TABLE[intent.name]
        request = idempotency.fingerprint(op.method, op.path, [], intent.given,
                                          secret=idempotency.node_secret(ledger))
        kept = idempotency.look(ledger, operator, key, now)
        if kept is None:
            before = idempotency.done_before_restore(ledger, operator, key, now)
            if before is not None:  # 409: the cashier finds it in the member's history
                till({"id": before}, attempt)
                return
        elif kept.request != request:
            if not idempotency.fingerprinted_before(ledger, kept):  # 422: a bug of ours
                raise RuntimeError(f"the simulator sent key {key} for another request")
            till(Crashed(), attempt)  # 409: begun before a restore, cannot be told
            return
        elif kept.status is None:  # 409: interrupted before it answered
            till(Crashed(), attempt)
            return
        else:  # the answer kept for the key, the operation not run again
            till(intent.answer(kept.body), attempt)
            return
        idempotency.begin(ledger, operator, key, request, now)
        if intent.sent_ms is None:
            intent.sent_ms, intent.tag = self.now_ms(), idempotency.tag_of(operator, key)
        gen = self.gen

        def answered(outcome: Outcome, a: Attempt) -> None:
            if isinstance(outcome, Crashed):  # the row stays begun: unknown (409)
                till(outcome, a)
                return
            if gen != self.gen or self.ledger is not ledger:
                return  # a life since ended: its keys are as it left them
            if isinstance(outcome, LedgerError):
                idempotency.forget(ledger, operator, key)
                till(outcome, a)
                return
            idempotency.finish(ledger, operator, key, op.status, outcome)
            if not a.retried and self.world.answer_lost():
                # Lost on its way to the till: the till sends it again, same key.
                self.world.retry_later(self, intent, a.label, till)
                return
            till(intent.answer(outcome), a)

        def run() -> Any:
            with idempotency.tagging(operator, key):  # its entries carry the key's tag
                return operations.run(ledger, operator, intent.name, intent.given)

        attempt.done = answered
        self._submit(run, attempt.label, attempt)

    def _submit(self, run: Callable[[], Any], label: str, attempt: Attempt) -> None:
        """One ledger write as peer.node.Node.perform makes it: `reply_first`, so the
        till's answer does not wait for the frames its commit queued, and a flush of
        those frames at the next turn (the node's `call_soon(_flush_queued)`)."""
        assert self.core is not None
        oid, effects = self.core.submit(run, self.now_s(), label, reply_first=True)
        self.attempts[oid] = attempt
        done = next((e for e in effects if isinstance(e, Done) and e.op == oid
                     and e.error is None), None) if self.kill_armed else None
        if done is not None:
            # Before the flush below: the process dies once the till has its answer
            # (delivered by `run` now), the frames its commit queued still unsent.
            self.kill_armed = False
            wrote = done.result.get("id") if isinstance(done.result, dict) else done.result
            self.world.engine.after(0, partial(self.world.killed_before_flush, self, label,
                                               None if wrote is None else str(wrote),
                                               self.gen))
        if (self.conns and not self._flush_soon
                and any(isinstance(e, Done) and e.op == oid for e in effects)):
            self._flush_soon = True
            self.world.engine.after(0, partial(self._flush_queued, self.gen))
        self.run(effects)

    def _flush_queued(self, gen: int) -> None:
        self._flush_soon = False
        if gen == self.gen and self.up and self.core is not None:
            self.run(self.core.flush())

    def _on_commit(self, record: Any, origin: object) -> None:
        # peer.node.Node._on_commit: once a turn, however many rules records came.
        if record.doc == "rules" and not self._crl_soon:
            self._crl_soon = True
            self.world.engine.after(0, partial(self._rules_arrived, self.gen))

    def _rules_arrived(self, gen: int) -> None:
        self._crl_soon = False
        if gen == self.gen and self.up and self.ledger is not None:
            self._load_revocations()

    def _load_revocations(self) -> None:
        """peer.node.Node._load_revocations: install the list in force, close the links
        to peers it revokes (peer.chain.apply_revocations, the node's own code)."""
        assert self.ledger is not None
        world = self.world
        self._crl, ignored, refused = apply_revocations(
            self.identity, self.ledger.revocation_list(), self._crl,
            [(conn, world.by_name[conn.other(self.name)].cert_der)
             for conn in sorted(self.conns.values(), key=lambda c: c.id)])
        if ignored is not None:
            world.trace(world.engine.now, f"{self.name} ignored a revocation list: {ignored}")
        for conn, why in refused:
            world.trace(world.engine.now, f"{self.name} drops #{conn.id}: {why}")
            peer = conn.other(self.name)
            world.links_dropped[peer] = world.links_dropped.get(peer, 0) + 1
            End(world.net, conn, self.name).close(1008, "certificate revoked")

    def opened(self, conn: Connection, peer: str, dialer: str) -> None:
        """A connection to `peer` is up (both ends are registered before either core
        hears of it, so a frame sent at once has somewhere to go)."""
        if self.core is None:
            return
        target = peer if dialer == self.name else None
        self.run(self.core.link_opened(conn.id, peer, dialer=dialer, now=self.now_s(),
                                       target=target))

    def dial_failed(self, peer: str) -> None:
        if self.core is not None:
            self.run(self.core.dial_failed(peer, self.now_s()))

    def receive(self, conn: Connection, frames: list[bytes]) -> None:
        """The frames that arrived at one instant, one `core.receive` each, as the node
        takes them (peer.node: one websocket message per call). Handed over together,
        consecutive `recs` frames were applied as one batch, a path the node never
        takes (a bug of grants matched to transfers was found only in that path)."""
        for frame in frames:
            if self.core is None or conn.id not in self.conns:
                return  # the link failed on an earlier frame, or the node crashed
            self.run(self.core.receive(conn.id, [frame], self.now_s()))

    def detach(self, conn: Connection) -> None:
        if self.conns.pop(conn.id, None) is not None and self.core is not None:
            self.run(self.core.link_closed(conn.id, self.now_s()))

    # --- the core's effects -----------------------------------------------------------

    def run(self, effects: list[Effect]) -> None:
        """Carry out the core's effects in the order it decided them. An operation's
        outcome may start the next one (the workload chains a card and a top-up to a
        new member): its effects wait until those before them are carried out, else
        its frames would overtake frames sent before them on the same connection,
        which a real connection (an ordered stream) never does."""
        self._queued.extend(effects)
        if self._running:
            return
        self._running = True
        try:
            while self._queued:
                batch, self._queued = self._queued, []
                self._run(batch)
        finally:
            self._running = False
            self._queued = []
        self.world.check_node(self)

    def _run(self, effects: list[Effect]) -> None:
        world = self.world
        now = world.engine.now
        for e in effects:
            match e:
                case Send(link=cid, frames=frames):
                    conn = self.conns.get(cid)
                    if conn is not None:
                        End(world.net, conn, self.name).send(frames)
                case Close(link=cid, code=code, reason=reason):
                    conn = self.conns.get(cid)
                    if conn is not None:
                        world.trace(now, f"{self.name} close #{cid} {reason}")
                        End(world.net, conn, self.name).close(code, reason)
                case Dial(target=peer):
                    world.dial(self, peer)
                case SetTimer(key=key, token=token, delay=delay):
                    world.engine.after(round(delay * SECOND),
                                       partial(self._fire, key, token, self.gen))
                case Done(op=oid, result=result, error=error, fetched_s=fetched):
                    attempt = self.attempts.pop(oid, None)
                    if error is not None and not isinstance(error, LedgerError):
                        raise error  # a bug in the code under test: the run reports it
                    if attempt is not None:
                        if fetched is not None:
                            attempt.waited_us = round(fetched * SECOND)
                        attempt.done(error if error is not None else result, attempt)
                case Seen(event=event):
                    self._seen(event)
                case Failed(link=cid, error=error):
                    conn = self.conns.get(cid)
                    if conn is not None:
                        world.protocol_error(self, conn, error)
                case Decided(what=what):
                    world.trace(now, f"{self.name} {what}")
                case Count(name="dial_failures"):
                    world.metrics.dial_failures += 1
                case Count(name="records_refused"):
                    world.refused_records(self)
                case Count(name="housekeeping_entries", amount=n):
                    world.housekept(self, int(n))
                case Rebalanced(entry=entry):
                    world.rebalanced(self, entry)
                case BookingDecided(entry=entry):
                    world.booking_decided(self, entry)
                case _:
                    pass

    def _fire(self, key: TimerKey, token: int, gen: int) -> None:
        if gen == self.gen and self.up and self.core is not None:
            self.run(self.core.fire(key, token, self.now_s()))

    def _seen(self, event: object) -> None:
        world = self.world
        now = world.engine.now
        if isinstance(event, PeerHello):
            world.trace(now, f"{self.name} hello {event.node}")
        elif isinstance(event, RightsGranted):
            world.trace(now, f"{self.name} granted {event.node} {event.amount}")
        elif isinstance(event, RightsAnswered):
            world.rights_answered(self, event)
        elif isinstance(event, ClockSkewSeen):
            world.metrics.clock_skew_seen += 1
            world.trace(now, f"{self.name} skew {event.node} {event.skew_ms}")

