"""A branch node's policies without I/O: the h11 pattern one level above `sync`.

`NodeCore` is everything a node decides, and nothing it does. It owns one
`SyncSession` per open link, the rule that picks one of two crossing connections,
when to redial a peer (exponential backoff with full jitter), the anti-entropy
and rebalancer ticks, and a till's operation: run it, and when the rights it
needs sit at other branches, ask for them, wait until the answers or the deadline,
and run it again; a peer's rights request that this node cannot cover is relayed
one hop to its other peers first.

It takes the time and events (`link_opened`, `receive`, `link_closed`,
`dial_failed`, `submit`, `fire` for a timer it asked for) and returns effects
(`Send`, `Close`, `Dial`, `SetTimer`, `Done`, `Count`/`Gauge`/`Observe`, and
`Seen` for what a session reported). Two drivers run it: `peer.node` with asyncio,
websockets and wall time, and `sim.node` with a seeded virtual network and
virtual time. So what the simulator checks is what runs in the shop; the
constants below exist nowhere else.

Links are small integers the driver chooses; a timer is a key and a token, and a
timer whose token is no longer current is ignored, so a driver never cancels one.
"""

from __future__ import annotations

import random
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from crdtledger import bookings, escrow, views
from crdtledger.errors import (
    ForeignChain,
    LedgerError,
    LocalProtocolError,
    RemoteProtocolError,
    RightsElsewhere,
)
from crdtledger.hlc import id_floor
from crdtledger.model import MONEY_PURSES
from crdtledger.peerclock import ClockVerdict, PeerClocks
from crdtledger.sync import (
    ClockHeard,
    ClockSkewSeen,
    Event,
    PeerHello,
    RightsAnswered,
    RightsGranted,
    RightsRequested,
    SyncSession,
)

if TYPE_CHECKING:
    from crdtledger.ledger import Ledger

# Seconds between anti-entropy rounds: a hello with a digest, a few bytes when in sync.
ANTI_ENTROPY_S = 3.0
# How long a till waits for rights from other branches before refusing the sale:
# a cashier notices anything longer, and a healthy fetch takes tens of milliseconds.
RIGHTS_DEADLINE_S = 2.0
# Seconds between rebalancer passes (rights follow the member's visits).
REBALANCE_S = 60.0
# Entries the rebalancer reads per turn of the loop (views.debited_elsewhere_arrived).
REBALANCE_SCAN = 20_000
# Seconds between looks at the calendar: the daily housekeeping (Ledger.housekeeping:
# expired points written off, merged members swept) runs a minute after start, not in
# it (it reads the entries once: a big store's start stays quick), then at the first
# look of each new day.
HOUSEKEEPING_S = 600.0
HOUSEKEEPING_FIRST_S = 60.0
# Members whose expired points a housekeeping step writes off: one step per turn of the
# loop, each write-off a durable commit (Ledger.housekeeping_steps).
HOUSEKEEPING_STEP = 50
# Visits that count for the rebalancer's targets.
VISIT_WINDOW_DAYS = 30
# Reconnect backoff: full jitter between 0 and a bound that doubles per failure up to
# the maximum ("Exponential Backoff And Jitter", AWS Architecture Blog, 2015), so
# shops that lost the same hub do not come back in lockstep.
BACKOFF_MIN_S = 0.25
BACKOFF_MAX_S = 30.0
# Targets learned from the LAN's announcements (mDNS), which anyone there can make:
# PER_NODE_DISCOVERED per announced node, at most MAX_DISCOVERED. They were kept and
# dialled for ever, so a stranger's thousands of made-up announcements became dials
# without end and, aimed at a port that never answers, held the descriptors the tills
# needed. One no link has proven (a certified node answered there) goes when its
# announcement is withdrawn, after DISCOVERED_TRIES failed dials in a row, or to make
# room for a newer announcement. One proven stays and is dialled as a configured peer
# is: an announcement is anyone's word (a stranger's goodbye, or its own addresses
# for the branch's id, pushed the real one out), and the LAN does not announce an
# unchanged branch again, so a branch forgotten after a cable was out stayed apart.
MAX_DISCOVERED = 256
DISCOVERED_TRIES = 8
PER_NODE_DISCOVERED = 2
# A connection that lasted this long was healthy: the next failure starts the
# backoff from the beginning again.
HEALTHY_S = 10.0
# The transport's liveness check: a websocket ping every HEARTBEAT_S; a pong later
# than half of that closes the link (aiohttp's rule), so a silent cut is noticed
# 10-15 s in. The simulator's network models the same.
HEARTBEAT_S = 10.0

Link = int
# ("ae",), ("dial", target), ("op", id), ("relay", link, id), ("resume", link), and the
# calendar's: ("rebalance",), ("rebalance-scan",), ("rebalance-step",), ("housekeeping",),
# ("housekeeping-step",), ("bookings",), ("referrals",). A "-scan"/"-step" timer goes on
# a long pass a turn at a time.
TimerKey = tuple[str | int, ...]


# --- effects ------------------------------------------------------------------


@dataclass(frozen=True)
class Send:
    link: Link
    frames: list[bytes]


@dataclass(frozen=True)
class Close:
    link: Link
    code: int  # websocket close codes: 1000 normal, 1002 protocol error, 1008 policy
    reason: str


@dataclass(frozen=True)
class Dial:
    """Open a connection to a configured target (a URL, or a simulated peer)."""

    target: str


@dataclass(frozen=True)
class SetTimer:
    """Call `fire(key, token)` after `delay` seconds."""

    key: TimerKey
    token: int
    delay: float


@dataclass(frozen=True)
class Done:
    """A till's operation finished: `result`, or `error` when it was refused.
    `fetched_s`: how long it waited for rights from other branches (None: it did not)."""

    op: int
    result: Any
    error: Exception | None  # a LedgerError, or what else the operation raised
    fetched_s: float | None


@dataclass(frozen=True)
class Seen:
    """Something a session reported about its peer, for the driver's metrics,
    logs and checks (a hello with its clock skew, a grant given or received...)."""

    link: Link
    peer: str
    event: Event


@dataclass(frozen=True)
class Failed:
    """The peer on `link` broke the protocol; the link is being closed."""

    link: Link
    peer: str
    error: Exception


@dataclass(frozen=True)
class Decided:
    """A decision, in words and without times (which link survives, whom to ask
    for what, what to relay, what the rebalancer moves): for logs and traces, and
    to hold two drivers of one scenario to the same decisions."""

    what: str


@dataclass(frozen=True)
class Rebalanced:
    """The rebalancer wrote a transfer entry on its own (no till asked for it)."""

    entry: dict[str, Any]


@dataclass(frozen=True)
class BookingDecided:
    """This branch decided on a booking of one of its technicians on its own
    (crdtledger.bookings.decide: a request from another branch, or a slot released)."""

    entry: dict[str, Any]


@dataclass(frozen=True)
class Count:
    name: str
    labels: tuple[str, ...] = ()
    amount: float = 1


@dataclass(frozen=True)
class Gauge:
    name: str
    labels: tuple[str, ...]
    value: float


@dataclass(frozen=True)
class Observe:
    name: str
    value: float


@dataclass(frozen=True)
class Refused:
    """Records from a peer or a file were refused, and why (a broken write rule, a
    fork, an unverifiable signer): for the node's log, at warning level."""

    what: str


@dataclass(frozen=True)
class ClockJudged:
    """What the peers say of this machine's clock changed: it is off (and the node
    now mints by the chain's time), or in step again, or a peer's clock disagrees
    with it. Once per change, for the node's log (crdtledger.peerclock)."""

    verdict: ClockVerdict


Effect = (Send | Close | Dial | SetTimer | Done | Seen | Failed | Decided | Rebalanced
          | BookingDecided | Count | Gauge | Observe | Refused | ClockJudged)


# --- state --------------------------------------------------------------------


@dataclass
class Peer:
    """What the node knows of one peer, connected or not (for `status`)."""

    node: str
    address: str = ""
    link: Link | None = None
    last_contact: float | None = None  # wall-clock seconds
    behind_in: int | None = None
    behind_out: int | None = None


@dataclass
class _Link:
    id: Link
    peer: str
    dialer: str  # node id of the side that dialled: decides duplicates
    address: str
    target: str | None  # the dial target this link came from, if we dialled
    opened_at: float
    session: SyncSession
    measured: Mapping[str, tuple[int, bytes]] | None = None  # peer logs lag was measured at


@dataclass
class _Target:
    key: str
    node: str | None  # the node behind it, once known
    backoff: float = BACKOFF_MIN_S
    dialing: bool = False
    discovered: bool = False  # announced on the LAN, not configured
    failures: int = 0  # dials failed in a row
    proven: bool = False  # a link opened there with the node its certificate names


@dataclass
class _Wait:
    """A rights fetch in flight, for a till's operation or a relayed request."""

    fetch: escrow.RightsFetch
    keys: list[tuple[str, int]] = field(default_factory=list)
    held: int = 0  # this node's rights on the purse when it asked (_arrived)


@dataclass
class _Op:
    id: int
    run: Callable[[], Any]
    name: str | None
    deadline: float
    wait: _Wait | None = None
    started: float | None = None  # first fetch


@dataclass
class _Relay:
    link: Link
    request: RightsRequested
    wait: _Wait | None = None


Kind = Literal["op", "relay"]


class NodeCore:
    """One branch node's decisions, given its ledger. See the module docstring."""

    def __init__(self, ledger: Ledger, *, rng: random.Random | None = None,
                 anti_entropy_s: float = ANTI_ENTROPY_S,
                 rights_deadline_s: float = RIGHTS_DEADLINE_S,
                 rebalance_s: float = REBALANCE_S) -> None:
        self.ledger = ledger
        self.node = ledger.node
        self.rng = rng if rng is not None else random.Random()
        self.anti_entropy_s = anti_entropy_s
        self.rights_deadline_s = rights_deadline_s
        self.rebalance_s = rebalance_s
        self.peers: dict[str, Peer] = {}
        self._links: dict[Link, _Link] = {}
        self._in_order: list[_Link] | None = None  # _links by id, made again when they change
        self._targets: dict[str, _Target] = {}
        self._timers: dict[TimerKey, int] = {}
        self._token = 0
        self._ops: dict[int, _Op] = {}
        self._next_op = 1
        self._relays: dict[tuple[Link, int], _Relay] = {}
        # (giver, request id) -> what waits for that answer
        self._asked: dict[tuple[str, int], tuple[Kind, Any]] = {}
        self._out: list[Effect] = []
        views.debits_arrived_from_now(ledger)  # the rebalancer's queue (not ids: clocks)
        self._rebalance_queue: OrderedDict[str, None] = OrderedDict()  # members, in turn
        self._housekept: str | None = None  # the day the last housekeeping pass ran
        # ... and the last that ran with the clock confirmed (_clock_confirmed).
        self._housekept_timed: str | None = None
        # The pass under way, a step per turn: (its day, whether the clock was
        # confirmed for it, its steps, entries written).
        self._housekeeping_pass: tuple[str, bool, Iterator[list[dict[str, Any]]],
                                       int] | None = None
        self._started = False
        self._refused_seen = ledger.refused_total
        self.clocks = PeerClocks()
        self._clock_told = self.clocks.verdict.worth_telling()
        # The ids of this branch's technicians, whose bookings made elsewhere it decides
        # (crdtledger.bookings), as bytes; None: to be read again (after its own writes).
        self._technician_ids: list[bytes] | None = None
        # Requests for them wait while this PC's clock is not confirmed (_decide_bookings):
        # whether some are waiting, said once in the decision log.
        self._bookings_waiting = False
        ledger.subscribe(self._applied)
        ledger.clock_judge = self._clock_confirmed  # a no-show waits for it too

    # --- driving side ---------------------------------------------------------

    def start(self, now: float, targets: Iterable[tuple[str, str | None]] = ()) -> list[Effect]:
        """Begin: dial each (target, node behind it if known), start the ticks. The
        first anti-entropy round comes at a random phase, so nodes started together
        do not all say hello in the same instant."""
        if self._started:
            raise LocalProtocolError("node core already started")
        self._started = True
        for key, node in targets:
            self._add_target(key, node, 0.0)
        self._timer(("ae",), self.rng.uniform(0, self.anti_entropy_s))
        self._timer(("rebalance",), self.rebalance_s)
        self._timer(("housekeeping",), HOUSEKEEPING_FIRST_S)
        if self._technicians_here():  # requests may have come by file while it was down
            self._timer(("bookings",), 0.0)
        return self._effects()

    def add_target(self, key: str, node: str | None, now: float,
                   delay: float | None = None, *, discovered: bool = False) -> list[Effect]:
        """Keep a connection to `key` open: a configured peer, or one `discovered` on
        the LAN (`node` its announced id: PER_NODE_DISCOVERED addresses per node, a new
        one replacing the oldest no link proved, at most MAX_DISCOVERED in all)."""
        if discovered and key not in self._targets:
            for crowd, limit in (
                    ([t for t in self._targets.values() if t.discovered and t.node == node],
                     PER_NODE_DISCOVERED),
                    ([t for t in self._targets.values() if t.discovered], MAX_DISCOVERED)):
                if len(crowd) < limit:
                    continue
                unproven = [t for t in crowd if not t.proven]  # oldest first
                if not unproven:
                    self._decide(f"announcement of {node} at {key} ignored: the "
                                 "addresses known are proven")
                    return self._effects()
                del self._targets[unproven[0].key]
        self._add_target(key, node, 0.0 if delay is None else delay, discovered)
        return self._effects()

    def forget_discovered(self, node: str, now: float) -> list[Effect]:
        """`node`'s announcement was withdrawn: its discovered targets no link proved go
        (a goodbye is anyone's to send)."""
        for key in [t.key for t in self._targets.values()
                    if t.discovered and t.node == node and not t.proven]:
            del self._targets[key]
        return self._effects()

    def targets(self) -> frozenset[str]:
        return frozenset(self._targets)

    def _add_target(self, key: str, node: str | None, delay: float,
                    discovered: bool = False) -> None:
        if key not in self._targets:
            self._targets[key] = _Target(key, node, discovered=discovered)
            self._timer(("dial", key), delay)

    def link_opened(self, link: Link, peer: str, *, dialer: str, now: float,
                    address: str = "", target: str | None = None) -> list[Effect]:
        """A connection to `peer` is up (its identity already checked by the
        transport). Two nodes that dial each other keep the connection the smaller
        node id dialled; both sides apply the same rule, so they agree unasked."""
        self._tick(now)
        if target is not None and target in self._targets:
            t = self._targets[target]
            t.dialing = False
            t.failures = 0
            t.node = peer  # the certificate's, whatever an announcement said
            t.proven = True
        state = self.peers.setdefault(peer, Peer(peer))
        old = self._links.get(state.link) if state.link is not None else None
        if old is not None:
            keep_new = dialer == min(self.node, peer) and old.dialer != dialer
            if not keep_new:
                self._decide(f"{peer}: keep the link {old.dialer} dialled")
                self._out.append(Close(link, 1000, "already connected"))
                return self._effects()
            self._decide(f"{peer}: replace the link {old.dialer} dialled")
            self._out.append(Close(old.id, 1000, "replaced"))
            self._drop(old, now)
        session = SyncSession(self.ledger, expect_node=peer)
        session.relay_rights = True  # see _relay
        self._links[link] = _Link(link, peer, dialer, address, target, now, session)
        self._in_order = None
        state.link = link
        if address:
            state.address = address
        state.last_contact = self._wall()
        self._decide(f"{peer}: connected, dialled by {dialer}")
        session.start()
        self._gauge_connected()
        return self._effects()

    def receive(self, link: Link, frames: list[bytes], now: float) -> list[Effect]:
        """Frames that arrived together on `link`, in order."""
        self._tick(now)
        lk = self._links.get(link)
        if lk is None or lk.session.closed:
            return self._effects()
        return self._feed(lk, lambda: lk.session.receive_frames(frames), now)

    def _feed(self, lk: _Link, handle: Callable[[], None], now: float) -> list[Effect]:
        """Let the link's session handle what came (or the next slice of a long batch,
        resumed at the driver's next turn so that its loop keeps answering)."""
        link = lk.id
        try:
            handle()
        except (RemoteProtocolError, ForeignChain) as e:
            self._out.append(Count("protocol_errors"))
            self._out.append(Failed(link, lk.peer, e))
            self._out.append(Close(link, 1002, str(e)[:100]))
            self._events(lk, now)
            self._drop(lk, now)
            # The driver's close comes back as link_closed of a link dropped already,
            # so the redial is decided here (with the backoff as it stands: a peer
            # that keeps breaking the protocol is not hammered).
            self._redial_behind(lk)
            return self._effects()
        self.peers[lk.peer].last_contact = self._wall()
        self._events(lk, now)
        if lk.session.busy:
            self._timer(("resume", link), 0.0)
        return self._effects()

    def link_closed(self, link: Link, now: float) -> list[Effect]:
        """The connection is gone (closed by either side, reset, timed out)."""
        self._tick(now)
        lk = self._links.get(link)
        if lk is None:  # refused as a duplicate, or dropped by the core already
            return self._effects()
        self._drop(lk, now)
        if lk.target is not None and lk.target in self._targets:
            t = self._targets[lk.target]
            if now - lk.opened_at > HEALTHY_S:
                t.backoff = BACKOFF_MIN_S
        self._redial_behind(lk)
        return self._effects()

    def _redial_behind(self, lk: _Link) -> None:
        """Any target behind the peer of a lost link needs dialling again: ours, or
        one that waited because the peer had dialled us."""
        if self._link_to(lk.peer) is None:
            for t in self._targets.values():
                if (t.node == lk.peer or t.key == lk.target) and not t.dialing:
                    self._redial(t)

    def dial_failed(self, target: str, now: float) -> list[Effect]:
        t = self._targets.get(target)
        if t is not None:
            t.dialing = False
            t.failures += 1
            self._out.append(Count("dial_failures"))
            if t.discovered and not t.proven and t.failures >= DISCOVERED_TRIES:
                del self._targets[target]  # nobody of the chain ever answered there
            else:
                self._redial(t)
        return self._effects()

    def submit(self, run: Callable[[], Any], now: float, name: str | None = None, *,
               reply_first: bool = False) -> tuple[int, list[Effect]]:
        """A till's operation: one ledger write, retried as a whole after rights
        arrive (so only its last run can have committed). Its `Done` may be among
        the effects returned here, or come later from `receive` or `fire`.
        `reply_first`: when it is done at once, the frames its commit queued on the
        sessions are left for `flush`, which the driver calls at its next turn: the
        till's answer does not wait for the batch each peer is sent (its head's
        signature, its encoding)."""
        self._tick(now)  # before the operation mints its ids
        op = _Op(self._next_op, run, name, now + self.rights_deadline_s)
        self._next_op += 1
        self._ops[op.id] = op
        self._step(op, now)
        return op.id, self._effects(sessions=not (reply_first and op.id not in self._ops))

    def fire(self, key: TimerKey, token: int, now: float) -> list[Effect]:
        if self._timers.get(key) != token:
            return []  # replaced or no longer wanted
        del self._timers[key]
        self._tick(now)
        # A pass that writes (write-offs, bookings decided, referral rewards, rights
        # moved) judges its day by the instant its entries carry, as an operation does
        # (operations.run): a day turning inside it booked an entry on one day that
        # was judged on the other.
        with self.ledger.clock.pinned():
            return self._fired(key, now)

    def _fired(self, key: TimerKey, now: float) -> list[Effect]:
        kind = key[0]
        if kind == "ae":
            self._timer(("ae",), self.anti_entropy_s)
            for lk in self._open_links():
                lk.session.anti_entropy()
        elif kind in ("rebalance", "rebalance-scan"):
            if kind == "rebalance":
                self._timer(("rebalance",), self.rebalance_s)
            if self._rebalance_plan():
                self._timer(("rebalance-scan",), 0.0)
            if self._rebalance_queue:
                self._timer(("rebalance-step",), 0.0)
        elif kind == "housekeeping":
            self._timer(("housekeeping",), HOUSEKEEPING_S)
            self._housekeeping()
        elif kind == "housekeeping-step":
            self._housekeeping_step()
        elif kind == "bookings":
            self._decide_bookings()
        elif kind == "referrals":
            self._grant_referrals()
        elif kind == "rebalance-step":
            self._rebalance_step()
            if self._rebalance_queue:
                self._timer(("rebalance-step",), 0.0)
        elif kind == "dial":
            t = self._targets.get(str(key[1]))
            if t is not None and not t.dialing:
                if t.node is not None and self._link_to(t.node) is not None:
                    pass  # reached already (perhaps it dialled us); redialled on close
                else:
                    t.dialing = True
                    self._out.append(Dial(t.key))
        elif kind == "op":
            op = self._ops.get(int(key[1]))
            if op is not None and op.wait is not None:
                self._fetched(op, now)
        elif kind == "relay":
            relay = self._relays.get((int(key[1]), int(key[2])))
            if relay is not None:
                self._answer(relay)
        elif kind == "resume":
            busy = self._links.get(int(key[1]))
            if busy is not None and not busy.session.closed:
                return self._feed(busy, busy.session.resume, now)
        return self._effects()

    def rebalance(self, now: float) -> tuple[int, list[Effect]]:
        """A whole rebalancer pass now (the owner's command, tests); returns the number
        of transfers made."""
        while self._rebalance_plan():
            pass
        moved = 0
        while self._rebalance_queue:
            moved += self._rebalance_step()
        return moved, self._effects()

    def flush(self) -> list[Effect]:
        """Frames the sessions queued outside the core's own calls (a write that did
        not come through `submit`, such as a sync file's import)."""
        return self._effects()

    def stop(self) -> list[Effect]:
        """Close every link and forget every timer; pending operations are refused."""
        self._asked.clear()  # nothing is retried while stopping
        for lk in list(self._links.values()):
            self._out.append(Close(lk.id, 1001, "node stopping"))
            self._drop(lk, 0.0)
        self._timers.clear()
        self._targets.clear()
        return self._effects()

    # --- reading ----------------------------------------------------------------

    def connected(self) -> list[str]:
        """Peers with a connection whose hello has arrived: the ones we can ask."""
        return sorted(lk.peer for lk in self._open_links())

    def session(self, peer: str) -> SyncSession | None:
        lk = self._link_to(peer)
        return lk.session if lk is not None else None

    def links(self) -> list[Link]:
        return sorted(self._links)

    def pending(self) -> list[int]:
        """Operations submitted and not yet done."""
        return sorted(self._ops)

    # --- operations -------------------------------------------------------------

    def _step(self, op: _Op, now: float, *, ask: bool = True) -> None:
        try:
            result = op.run()
        except RightsElsewhere as refusal:
            fetch = escrow.RightsFetch(refusal, self.node, self.connected())
            if now >= op.deadline or not fetch.possible or not ask:
                self._finish(op, None, refusal, now)
                return
            op.started = op.started if op.started is not None else now
            op.wait = self._ask(fetch, ("op", op), forwarded=False)
            if fetch.done:
                self._fetched(op, now)
            else:
                self._timer(("op", op.id), op.deadline - now)
            return
        except LedgerError as e:
            self._finish(op, None, e, now)
            return
        except Exception as e:  # e.g. a damaged sync file: the caller's to report
            self._finish(op, None, e, now)
            return
        self._finish(op, result, None, now)

    def _fetched(self, op: _Op, now: float) -> None:
        """The wait is over (all answered, enough received, or the deadline): retry.
        When nothing came it is judged once more, asking nobody again: other
        operations may have changed the store meanwhile (rights came in for another
        till's sale that was then refused, the member left, an exit was approved by
        another), and refusing with the figures from before the wait told a cashier
        to wait for a branch that held nothing, about a sale this one could serve."""
        wait, op.wait = op.wait, None
        self._timers.pop(("op", op.id), None)
        if wait is not None:
            self._forget(wait)
        self._step(op, now, ask=wait is not None and wait.fetch.received > 0)

    def _finish(self, op: _Op, result: Any, error: Exception | None, now: float) -> None:
        self._ops.pop(op.id, None)
        waited = None if op.started is None else now - op.started
        if waited is not None:
            self._out.append(Observe("rights_fetch", waited))
        if error is not None:
            self._out.append(Count("refused", (getattr(error, "code", "error"),)))
        else:
            name = op.name
            if name is None:  # an entry names its kind; anything else is "other"
                kind = result.get("kind") if isinstance(result, dict) else None
                name = kind if isinstance(kind, str) else "other"
            self._out.append(Count("operations", (name,)))
        self._out.append(Done(op.id, result, error, waited))

    def _ask(self, fetch: escrow.RightsFetch, waiter: tuple[Kind, Any], *,
             forwarded: bool, asker: str | None = None) -> _Wait:
        wait = _Wait(fetch, held=self._held(fetch))
        member = fetch.member
        for ask in fetch.asks:
            lk = self._link_to(ask.giver)
            try:
                if lk is None or member is None:  # `possible` rules out the second
                    raise LocalProtocolError(f"no connection to {ask.giver}")
                rid = lk.session.request_rights(member, fetch.purse, ask.amount,
                                                forwarded=forwarded, asker=asker)
            except LocalProtocolError:  # gone since `connected()`
                fetch.lost(ask.giver)
                continue
            self._decide(f"ask {ask.giver} for {ask.amount} {fetch.purse} of {fetch.member}"
                         + (" (relayed)" if forwarded else ""))
            wait.keys.append((ask.giver, rid))
            self._asked[(ask.giver, rid)] = waiter
        return wait

    def _forget(self, wait: _Wait) -> None:
        for key in wait.keys:
            self._asked.pop(key, None)
        wait.keys = []

    def _answered(self, giver: str, rid: int, amount: int | None, now: float) -> None:
        """An answer (or, with None, the loss of the link it would come on)."""
        waiter = self._asked.pop((giver, rid), None)
        if waiter is None:
            return
        kind, obj = waiter
        wait: _Wait | None = obj.wait
        if wait is None:
            return
        if amount is None:
            wait.fetch.lost(giver)
        else:
            wait.fetch.answered(giver, self._arrived(wait, amount))
        if not wait.fetch.done:
            return
        if kind == "op":
            self._fetched(obj, now)
        else:
            self._answer(obj)

    def _held(self, fetch: escrow.RightsFetch) -> int:
        """This node's rights on the fetch's purse (the member's group's, as a grant
        gives them: Payments.grantable)."""
        if fetch.member is None:
            return 0
        try:
            return self.ledger.grantable(fetch.member, fetch.purse).get(self.node, 0)
        except LedgerError:
            return 0

    def _arrived(self, wait: _Wait, amount: int) -> int:
        """What of a giver's answer of `amount` is here: its transfer travels ahead of
        its answer, so an honest grant is in the store when the answer is read. A reply
        is a peer's word: one that claimed rights it never sent (2^64 of them, or just
        the shortfall) ended the wait for the honest givers at once, and the sale,
        retried short, asked everyone again, in a loop until the deadline. Counted
        only as far as this node's rights rose since it asked (less, when another
        sale here spent some meanwhile: the wait goes on for the other answers)."""
        rose = self._held(wait.fetch) - wait.held - wait.fetch.received
        return max(0, min(amount, rose))

    # --- relaying a peer's request ------------------------------------------------

    def _relay(self, lk: _Link, req: RightsRequested) -> None:
        """A peer asks for rights: if this node holds too little, first fetch the rest
        from its other peers (one hop, marked so it is never relayed again, half the
        deadline), then grant what it holds. Shops behind NAT reach each other's
        rights through a hub so."""
        fetch = None
        try:
            # A member merged away is judged as its grant serves it: the group's.
            rights = self.ledger.grantable(req.member, req.purse)
            have = rights.get(self.node, 0)
            others = [p for p in self.connected() if p != req.node]
            # An asker past its budget is answered "none" (Payments.grant_rights): not
            # worth emptying the other peers' rights into this node for it first.
            if have < req.amount and others and self.ledger.grants.allows(req.node):
                holders = {n: a for n, a in rights.items() if n != self.node and a > 0}
                refusal = RightsElsewhere(req.purse, req.amount - have, have, holders,
                                          req.member)
                fetch = escrow.RightsFetch(refusal, self.node, others)
        except LedgerError:  # e.g. a member this node has not heard of yet
            fetch = None
        relay = _Relay(lk.id, req)
        if fetch is None or not fetch.possible:
            self._answer(relay)
            return
        self._decide(f"relay {req.node}'s request for {req.amount} {req.purse} "
                     f"of {req.member}")
        relay.wait = self._ask(fetch, ("relay", relay), forwarded=True, asker=req.node)
        self._relays[(lk.id, req.request)] = relay
        if fetch.done:
            self._answer(relay)
        else:
            self._timer(("relay", lk.id, req.request), self.rights_deadline_s / 2)

    def _answer(self, relay: _Relay) -> None:
        self._relays.pop((relay.link, relay.request.request), None)
        self._timers.pop(("relay", relay.link, relay.request.request), None)
        if relay.wait is not None:
            self._forget(relay.wait)
        lk = self._links.get(relay.link)
        if lk is not None and not lk.session.closed:
            lk.session.answer_rights(relay.request.request)

    # --- sessions -----------------------------------------------------------------

    def _events(self, lk: _Link, now: float) -> None:
        session = lk.session
        while (event := session.next_event()) is not None:
            match event:
                case PeerHello(skew_ms=skew):
                    self._gauge_connected()
                    self._out.append(Gauge("clock_skew", (lk.peer,), skew / 1000))
                case ClockSkewSeen():
                    self._out.append(Count("clock_skew_seen", (lk.peer,)))
                case ClockHeard(node=peer, offset_ms=offset, agree=agree):
                    # A branch speaks for its own clock; only the hub for the others
                    # that agree with it (Replica.speaks_for_chain).
                    weight = agree if agree == 1 or self.ledger.speaks_for_chain(peer) else 1
                    self._clock_update(self.clocks.heard(peer, offset, weight))
                case RightsGranted(request=rid, node=peer, amount=amount):
                    if amount > 0:
                        self._out.append(Count("rights_transfers", ("in",)))
                    self._decide(f"{peer} granted {amount}")
                    self._answered(peer, rid, amount, now)
                case RightsRequested():
                    self._relay(lk, event)
                case RightsAnswered(amount=amount, node=peer):
                    if amount > 0:
                        self._out.append(Count("rights_transfers", ("out",)))
                    self._decide(f"gave {peer} {amount}")
                case _:
                    pass
            self._out.append(Seen(lk.id, lk.peer, event))
        theirs = session.peer_states
        if theirs is not None and theirs is not lk.measured:
            lk.measured = theirs
            self._measure_lag(lk, theirs)

    def _measure_lag(self, lk: _Link, theirs: Mapping[str, tuple[int, bytes]]) -> None:
        """Lag at the start of the round that just began, in log records: a round
        then sends what either side lacks, so a healthy pair reads 0 from the next
        round on."""
        ours = self.ledger.positions()
        state = self.peers[lk.peer]
        state.behind_out = sum(max(0, s - theirs.get(n, (0, b""))[0]) for n, s in ours.items())
        state.behind_in = sum(max(0, s - ours.get(n, 0)) for n, (s, _) in theirs.items())
        self._out.append(Gauge("peer_lag", (lk.peer, "out"), state.behind_out))
        self._out.append(Gauge("peer_lag", (lk.peer, "in"), state.behind_in))

    def _drop(self, lk: _Link, now: float) -> None:
        """Forget a link: its session stops, and nobody waits for answers on it."""
        self._links.pop(lk.id, None)
        self._in_order = None
        lk.session.close()
        state = self.peers.get(lk.peer)
        if state is not None and state.link == lk.id:
            state.link = None
        for key in [k for k in self._relays if k[0] == lk.id]:
            relay = self._relays.pop(key)
            self._timers.pop(("relay", *key), None)
            if relay.wait is not None:
                self._forget(relay.wait)
        if self._link_to(lk.peer) is None:
            for (giver, rid) in sorted(k for k in self._asked if k[0] == lk.peer):
                self._answered(giver, rid, None, now)
            self._clock_update(self.clocks.forget(lk.peer))
        self._gauge_connected()

    def _open_links(self) -> list[_Link]:
        return [lk for _, lk in sorted(self._links.items())
                if lk.session.peer is not None and not lk.session.closed]

    def _link_to(self, peer: str) -> _Link | None:
        state = self.peers.get(peer)
        if state is None or state.link is None:
            return None
        lk = self._links.get(state.link)
        return lk if lk is not None and not lk.session.closed else None

    def _housekeeping(self) -> None:
        day = self.ledger.today()
        timed = self._clock_confirmed()
        if timed and self._bookings_waiting and ("bookings",) not in self._timers:
            self._timer(("bookings",), 0.0)  # confirmed since (an operator's clock.confirm)
        # Once a day, and soon after an erasure came (the records this node wrote into
        # the member are redacted then: crdtledger.erasure); again once the clock is
        # confirmed if the day's pass ran without what needs it.
        if (((day == self._housekept and not self.ledger.erasure_seen)
                and (day == self._housekept_timed or not timed))
                or self._housekeeping_pass is not None):
            return
        self._housekeeping_pass = (day, timed, self.ledger.housekeeping_steps(
            HOUSEKEEPING_STEP, timed), 0)
        if not timed:
            self._decide("housekeeping: the month-end cut and the write-off of expired "
                         "points wait until another branch confirms this PC's clock")
        self._housekeeping_step()

    def _clock_confirmed(self) -> bool:
        """May this PC's clock (as corrected by the peers' verdict) decide what cannot
        be undone (Ledger.housekeeping_steps' `timed`)? Yes once the peers connected
        now have judged it: the chain's time is used (a majority said it is off), or
        fewer of them disagree with it than agree, this node included. A lone pair that
        disagree cannot tell whose clock is wrong, and a branch cut off has nobody to
        ask: both wait. With no other branch known, a store of no chain and a head
        office (a chain of one) have only their own clock; a branch enrolled in a chain
        has not met the others yet, and waits: a new PC set 60 days ahead cut December
        in mid-December at its first pass, and booked every sale into January. With no
        peer connected, an operator's word that the clock is right stands for the day
        (Ledger.confirm_clock: a branch that syncs by files alone has no peer)."""
        peers = self._peers_confirm()
        if peers is not None:
            return peers
        if self.ledger.clock_confirmed_today():
            return True
        trust = self.ledger.trust
        return not views.branches_known(self.ledger) and (not trust.enrolled or trust.governs)

    def _peers_confirm(self) -> bool | None:
        """What the peers connected now say of this PC's clock (`_clock_confirmed`);
        None with none connected."""
        v = self.clocks.verdict
        if not v.peers:
            return None
        return v.off or 2 * len(v.disagree) < v.peers + 1

    def _housekeeping_step(self) -> None:
        if self._housekeeping_pass is None:
            return
        day, timed, steps, total = self._housekeeping_pass
        try:
            written = next(steps)
        except StopIteration:
            self._housekeeping_pass = None
            self._housekept = day
            if timed:
                self._housekept_timed = day
            if total:
                self._out.append(Count("housekeeping_entries", amount=total))
            return
        except LedgerError as e:  # e.g. a restored node not caught up yet: next look
            self._housekeeping_pass = None
            self._decide(f"housekeeping deferred: {e}")
            return
        self._housekeeping_pass = (day, timed, steps, total + len(written))
        self._timer(("housekeeping-step",), 0.0)

    # --- bookings of this branch's technicians (crdtledger.bookings) ---------------------

    def _technicians_here(self) -> list[bytes]:
        if self._technician_ids is None:
            self._technician_ids = [t["id"].encode()
                                    for t in bookings.technicians(self.ledger, self.node)]
        return self._technician_ids

    def _applied(self, record: Any, origin: object) -> None:
        """A record was committed: one from elsewhere may be a booking request (or a
        cancellation) for a technician of this branch, which this branch decides at
        its next turn (a zero timer: never inside the apply that brought it); so may a
        member erased or gone (退会) elsewhere, whose slots here held a technician for
        nobody (bookings._held_for_nobody)."""
        data = record.data
        if record.doc.startswith("members/"):
            if (record.node != self.node and ("bookings",) not in self._timers
                    and (b"erased" in data or b"exited" in data)
                    and self._technicians_here()):
                self._timer(("bookings",), 0.0)
            return
        if not record.doc.startswith("ledger/"):
            return
        if record.node == self.node:
            self._technician_ids = None  # perhaps a technician added here
            return
        # Only a record that carries a booking entry of one of our technicians: its kind
        # and the technician's id (the entry's member) are plain strings in the update,
        # so a byte search tells, and a catch-up of other entries costs one search each.
        if (("bookings",) not in self._timers and b"booking" in data
                and any(tid in data for tid in self._technicians_here())):
            self._timer(("bookings",), 0.0)
        # An approval given elsewhere of a referral this branch recorded (its id ends
        # in this node's): the reward, if now due, is this branch's to grant, now
        # rather than at the next housekeeping (crdtledger.membership).
        if (("referrals",) not in self._timers and b"approval" in data
                and f".{self.node}".encode() in data):
            self._timer(("referrals",), 0.0)

    def _decide_bookings(self) -> None:
        # A request is refused for good when its slot has passed by this PC's clock:
        # one 3 days ahead, cut off or one of a lone pair, refused every request for
        # tomorrow. So requests wait, as the month-end cut does, until the clock is
        # confirmed (the next verdict that confirms it, or the housekeeping look after
        # an operator's clock.confirm, runs this again); a cancellation elsewhere is
        # still released (bookings.decide's `timed`).
        timed = self._clock_confirmed()
        if not timed and not self._bookings_waiting:
            self._decide("bookings: requests for this branch's technicians wait until "
                         "another branch confirms this PC's clock")
        self._bookings_waiting = not timed
        try:
            written = bookings.decide(self.ledger, timed=timed)
        except LedgerError as e:  # e.g. a restored node not caught up yet: next record
            self._decide(f"bookings deferred: {e}")
            return
        for d in written:
            self._decide(f"booking {d['ref']} {d['status']}"
                         + (f": {d['reason']}" if d.get("reason") else ""))
            self._out.append(BookingDecided(d))
        if written:
            self._out.append(Count("booking_decisions", amount=len(written)))

    def _grant_referrals(self) -> None:
        try:
            written = self.ledger.grant_due_referrals()
        except LedgerError as e:  # e.g. a restored node not caught up yet: housekeeping
            self._decide(f"referral rewards deferred: {e}")
            return
        for r in written:
            self._decide(f"referral {r.get('ref')} rewarded")
        if written:
            self._out.append(Count("referral_rewards", amount=len(written)))

    # --- rebalancer -----------------------------------------------------------------

    def _rebalance_plan(self) -> bool:
        """Members debited at other branches since the last pass: their rights may
        need to follow them (escrow.rebalance). Reads REBALANCE_SCAN entries; True if
        more remain. (A queue kept as a list, each member tested against it, took 43 s
        of one turn after a branch joined a chain of 1M entries.)"""
        members, more = views.debited_elsewhere_arrived(self.ledger, self.node, REBALANCE_SCAN)
        for m in members:
            self._rebalance_queue.setdefault(m)
        return more

    def _rebalance_step(self) -> int:
        """One member per step, each transfer a durable write: a pass over many
        members never holds up a swipe or the sync for long."""
        moved = 0
        member, _ = self._rebalance_queue.popitem(last=False)
        reachable = set(self.connected())
        since = id_floor(self.ledger.clock.wall() - VISIT_WINDOW_DAYS * 86_400_000)
        # A shop closing for good handed its rights over: none go back to it, where
        # they would be stranded once it is revoked.
        closing = views.handed_over(self.ledger)
        visits = {n: v for n, v in views.visits(self.ledger, member, since).items()
                  if n not in closing}
        for purse in (*sorted(MONEY_PURSES), "points"):
            rights = self.ledger.rights(member, purse)
            if rights.get(self.node, 0) <= 1:
                continue
            for t in escrow.rebalance(rights, visits, purse):
                if t.giver != self.node or t.receiver not in reachable:
                    continue
                try:
                    entry = self.ledger.transfer_rights(self.ledger.owner, member,
                                                        t.receiver, t.amount, purse)
                except LedgerError:  # spent meanwhile: the next pass
                    continue
                self._decide(f"rebalance {t.amount} {purse} of {member} to {t.receiver}")
                self._out.append(Rebalanced(entry))
                moved += 1
        return moved

    # --- internals --------------------------------------------------------------------

    def _redial(self, t: _Target) -> None:
        delay = self.rng.uniform(0, t.backoff)
        t.backoff = min(BACKOFF_MAX_S, t.backoff * 2)
        self._timer(("dial", t.key), delay)

    def _timer(self, key: TimerKey, delay: float) -> None:
        self._token += 1
        self._timers[key] = self._token
        self._out.append(SetTimer(key, self._token, max(0.0, delay)))

    def _gauge_connected(self) -> None:
        self._out.append(Gauge("peers_connected", (), len(self.connected())))

    def _decide(self, what: str) -> None:
        self._out.append(Decided(what))

    def _wall(self) -> float:
        return self.ledger.clock.wall() / 1000

    # --- this machine's clock, as the peers see it ----------------------------------

    def clock_status(self) -> dict[str, Any]:
        """For `status`: how far this machine's clock is off the chain's time (0: not
        by more than the limit), the peers whose clocks differ from it, and whether it
        may decide what cannot be undone (`_clock_confirmed`: else the month-end cut
        and the points' write-off wait)."""
        v = self.clocks.verdict
        clock = self.ledger.clock
        # How far the first moment this branch may book (its enrolment, its latest cut)
        # is past this machine's clock, as the chain's time corrects it: ids and sales
        # are booked there until the clock catches up. Silent, a certificate issued by
        # a head office whose clock ran days ahead booked a new shop's takings days on.
        floor = clock.floor_ms - clock.raw_wall() - v.off_ms
        return {"off_ms": v.off_ms, "limit_ms": self.clocks.limit_ms, "peers": v.peers,
                "disagree": {p: self.clocks.samples[p][0] for p in v.disagree
                             if p in self.clocks.samples},
                "confirmed": self._clock_confirmed(),
                "floor_ahead_ms": floor if floor > self.clocks.limit_ms else 0}

    def _tick(self, now: float) -> None:
        self._clock_update(self.clocks.tick(self.ledger.clock.raw_wall(), now))

    def _clock_update(self, changed: bool) -> None:
        """Mint by the verdict, tell peers how many agree, and say so once when what is
        worth telling changed."""
        clock = self.ledger.clock
        clock.agree = self.clocks.agree()
        # What is judged by the day on a clock set back goes on once the peers vouch for
        # it (Ledger.check_clock_for).
        self.ledger.clock_vouched = self._peers_confirm() is True
        if not changed:
            return
        if (self._bookings_waiting and ("bookings",) not in self._timers
                and self._clock_confirmed()):
            self._timer(("bookings",), 0.0)  # the requests that waited for it
        verdict = self.clocks.verdict
        clock.offset_ms = verdict.off_ms
        told = verdict.worth_telling()
        if told != self._clock_told:
            self._clock_told = told
            self._out.append(ClockJudged(verdict))

    def _effects(self, sessions: bool = True) -> list[Effect]:
        """What the calls so far decided, then every frame the sessions queued (a
        local commit queues its update on every session); without `sessions`, those
        frames stay queued for the next call."""
        fresh = self.ledger.refused_total - self._refused_seen
        if fresh:  # records refused from peers and files, reported once each
            self._refused_seen = self.ledger.refused_total
            for what in list(self.ledger.refusals)[-fresh:]:
                self._out.append(Count("records_refused"))
                self._out.append(Refused(what))
        out, self._out = self._out, []
        if not sessions:
            return out
        # Called after every frame received: a hub has a link per branch, and mostly
        # one or none of them has anything to send.
        if self._in_order is None:
            self._in_order = sorted(self._links.values(), key=lambda x: x.id)
        for lk in self._in_order:
            if lk.session.has_output and (frames := lk.session.data_to_send()):
                out.append(Send(lk.id, frames))
        return out
