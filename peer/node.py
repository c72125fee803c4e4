"""The branch node: one asyncio process that owns a store and keeps it in sync.

Everything that touches the ledger runs on the event loop's thread, because pycrdt
objects must stay on one thread; a ledger write is a few milliseconds (one fsync),
short enough to run inline rather than hand off.

The node serves two listeners:

* the sync listener (`--listen`), websockets over mutual TLS: only holders of a
  certificate from this chain's CA get past the handshake, and the node id in that
  certificate is the only id the peer may claim. Each connection, inbound or
  dialled, carries one `crdtledger.sync.SyncSession`; the session does the
  protocol, the `Link` here only moves its frames.
* the local listener (`--api`, 127.0.0.1 by default): the HTTP JSON API with
  operator tokens for the counter app and point-of-sale systems, `/metrics`,
  `/health`, and the owner's local route the `crdtledger` CLI uses while the node
  holds the data directory (authorised by a token in a file only the data
  directory's owner can read).

Shops sit behind NAT, so whoever can dial does, and both directions flow over that
one connection. Two nodes that dial each other keep the connection dialled by the
smaller node id, decided the same way on both sides.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import secrets
import socket
import sqlite3
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
from aiohttp import WSMsgType, web

from crdtledger import __version__, localtime, outbox, peerclock, platform, views
from crdtledger.backups import BACKUP_FILE, no_store
from crdtledger.core import (
    ANTI_ENTROPY_S,
    HEARTBEAT_S,
    REBALANCE_S,
    RIGHTS_DEADLINE_S,
    ClockJudged,
    Close,
    Count,
    Decided,
    Dial,
    Done,
    Effect,
    Failed,
    Gauge,
    NodeCore,
    Observe,
    Peer,
    Refused,
    Seen,
    Send,
    SetTimer,
    TimerKey,
)
from crdtledger.errors import LedgerError, LocalProtocolError
from crdtledger.hlc import boot_clock_s
from crdtledger.ledger import Ledger
from crdtledger.log import Record
from crdtledger.sync import (
    MAX_FRAME_BYTES,
    PROTOCOL_VERSION,
    SyncSession,
    UpdatesApplied,
    VersionMismatch,
    states_digest,
)
from crdtledger.throttle import LoginThrottle
from peer.chain import Identity, PeerRejected, apply_revocations, load_identity
from peer.gateways import Gateway, gateways_from_config
from peer.local import RUN_FILE, local_app, write_run_file
from peer.metrics import CONTENT_TYPE, Metrics
from peer.notifier import Notifier

log = logging.getLogger("crdtledger.node")
T = TypeVar("T")

SYNC_PATH = "/sync"
# A batch this large applied (a join, a branch back after weeks): its copy and the
# documents closed meanwhile are freed, and the heap is given back to the system.
GIVE_BACK_AFTER_BYTES = 64 * 1024 * 1024
# Why the sync listener refused a dialler's certificate (PeerRejected), for its log.
REFUSED_HEADER = "X-Crdtledger-Refused"
# How long a connection to the sync or API port may take to finish its TLS handshake,
# and to send a whole request or the next one: asyncio waits 60 s for a handshake and
# aiohttp an hour for a request, so a stranger's idle connections held a descriptor
# each, and a thousand of them left the tills none.
# Bytes a link may hold behind the frame on its socket for a peer that is not reading
# them: past this it is closed (the session's records are asked for again when it
# dials back). aiohttp's heartbeat cannot tell: every frame received resets it, so a
# peer that only sends, one frame every few seconds, was never dropped while the
# records relayed to it piled up here. The frame going out is not counted: one frame
# over the cap (a liar's record of 65 MiB in an answer) closed every link it was
# sent on, for good, and cut a hub's peers off from everything after it.
MAX_QUEUED_BYTES = 64 * 1024 * 1024
HANDSHAKE_S = 10.0
IDLE_S = 30.0
REFUSAL_LOG_S = 60.0  # a refused peer's reason is logged at most this often
DIAL_CONNECT_S = 15.0  # a dial's TCP connect and TLS handshake


class _Site(web.TCPSite):
    """aiohttp's TCP site with a deadline on the TLS handshake (`HANDSHAKE_S`), which
    aiohttp does not pass on to asyncio."""

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registers the site with its runner
        server = self._runner.server
        if server is None:  # the runner's setup() makes it; a site before that is a bug
            raise LocalProtocolError("the site was started before its runner was set up")
        self._server = await asyncio.get_running_loop().create_server(
            server, self._host, self._port, ssl=self._ssl_context,
            ssl_handshake_timeout=HANDSHAKE_S if self._ssl_context else None,
            reuse_address=self._reuse_address)


@dataclass
class Config:
    data_dir: Path
    listen: tuple[str, int] = ("0.0.0.0", 8470)
    api: tuple[str, int] = ("127.0.0.1", 8480)
    peers: list[str] = field(default_factory=list)
    mdns: bool = True
    anti_entropy_s: float = ANTI_ENTROPY_S
    rights_deadline_s: float = RIGHTS_DEADLINE_S
    rebalance_s: float = REBALANCE_S
    # The notifier's wall clock in ms (peer.notifier), None for the chain's time as the
    # ledger books by it (this machine's clock, corrected by its peers): a test
    # sets the hour a daily report is due without touching the ledger's clock.
    notify_clock: Callable[[], int] | None = None
    notify_interval_s: float = 30.0


def parse_address(text: str, default_port: int) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = text, str(default_port)
    if not (port.isascii() and port.isdigit()) or not 0 <= int(port) < 65536:
        raise ValueError(f"bad port in {text!r}: an address is HOST:PORT, e.g. "
                         f"0.0.0.0:{default_port}")
    host = host.strip("[]") or "0.0.0.0"
    try:
        ipaddress.ip_address(host)
    except ValueError:
        # A name: looked up now, so `--listen abc` is said as a bad address with
        # the form it takes, not as the resolver's bare "Name or service not known".
        try:
            socket.getaddrinfo(host, None)
        except (socket.gaierror, UnicodeError):
            raise ValueError(f"{host!r} in {text!r} is no address of this PC: an address "
                             f"is HOST:PORT, e.g. 0.0.0.0:{default_port}") from None
    return host, int(port)


class Link:
    """One open websocket to a peer: moves the frames of the core's session for it.

    Frames go out in order through one writer task per link, so a slow peer holds up
    only its own connection; what arrives is handed to the core as it comes."""

    def __init__(self, node: Node, lid: int,
                 ws: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
                 peer: str, cert: bytes) -> None:
        self.node = node
        self.id = lid
        self.ws = ws
        self.peer = peer
        self.cert = cert
        self._queue: deque[bytes] = deque()
        self._wake = asyncio.Event()
        # Bytes handed to this link and not yet to its socket, and the core's `resume`
        # held until they are (see Node._fire).
        self.queued = 0
        self._queued_gauge = node.metrics.sync_queued.labels(peer)
        self._held_resume: tuple[TimerKey, int] | None = None
        self.closed = False
        # A close the core decides while this link's frames are being handled is
        # carried out by the reader itself, before it reads on: the close frame then
        # goes out before the handler returns (a spawned close could lose that race,
        # and the peer would see 1006 instead of the reason).
        self._receiving = False
        self._closing: tuple[int, bytes] | None = None
        self._dropped = False  # closed for not reading (MAX_QUEUED_BYTES)
        self._sending = 0  # the length of the frame on the socket now

    @property
    def session(self) -> SyncSession:
        """The core's session on this link (it outlives the link only as closed)."""
        session = self.node.core.session(self.peer)
        if session is None:
            raise LocalProtocolError(f"no session with {self.peer}")
        return session

    def send(self, frames: list[bytes]) -> None:
        if self._dropped:
            return
        self._queue.extend(frames)
        self.queued += sum(map(len, frames))
        if self.queued > MAX_QUEUED_BYTES and self.queued - self._sending - max(
                map(len, self._queue), default=0) > MAX_QUEUED_BYTES:
            log.warning("peer %s reads nothing of the %d MiB waiting for it: link closed",
                        self.peer, self.queued >> 20)
            self._dropped = True
            self._queue.clear()
            self.queued = 0
            self.close(1008, "not reading")
        self._queued_gauge.set(self.queued)
        self._wake.set()

    def resume_when_sent(self, key: TimerKey, token: int) -> None:
        """Fire the core's `resume` once every frame queued so far is on the socket."""
        self._held_resume = (key, token)

    def wake(self) -> None:
        """Ship what the sessions queued (after a call made on a session directly)."""
        self.node.flush()

    def close(self, code: int = 1000, reason: str = "") -> None:
        """End the link from this side (crdtledger.transport.Transport); the reader
        then ends, and the node tells the core."""
        message = reason.encode()[:120]
        if self._receiving:
            self._closing = (code, message)
        else:
            self.node._spawn(self.aclose(code, message))

    async def aclose(self, code: int = 1000, message: bytes = b"") -> None:
        await self.ws.close(code=code, message=message)

    async def run(self) -> None:
        writer = asyncio.create_task(self._write())
        try:
            await self._read()
        finally:
            self.closed = True
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer
            self._queued_gauge.set(0)
            await self.ws.close()

    async def _read(self) -> None:
        try:
            await self._read_frames()
        except ConnectionResetError:
            # aiohttp answers a ping while reading; once its heartbeat has given up on
            # the peer, that write fails here. The link is gone either way; the node
            # redials (this was an unretrieved task exception with a traceback).
            log.info("connection to %s reset", self.peer)
        except sqlite3.OperationalError as e:
            # This store could not take the peer's records (a disk full): nothing of
            # them is held (Storage.transaction), so the link is closed and the records
            # are asked for again once it is back (the core redials).
            log.warning("records from %s not stored (%s): link closed, retried later",
                        self.peer, e)
            await self.aclose(1011, b"store unavailable")

    async def _read_frames(self) -> None:
        metrics = self.node.metrics
        received = metrics.sync_bytes.labels(self.peer, "in")
        async for msg in self.ws:
            if msg.type != WSMsgType.BINARY:
                if msg.type == WSMsgType.ERROR:
                    log.info("connection to %s failed: %s", self.peer, self.ws.exception())
                    return
                metrics.protocol_errors.inc()
                log.warning("peer %s sent a %s frame; closing", self.peer, msg.type.name)
                await self.aclose(1003, b"binary frames only")
                return
            received.inc(len(msg.data))
            self._receiving = True
            try:
                self.node.run(self.node.core.receive(self.id, [msg.data], boot_clock_s()))
            finally:
                self._receiving = False
            if self._closing is not None:
                await self.aclose(*self._closing)
                return
            if self.closed:
                return

    async def _write(self) -> None:
        sent = self.node.metrics.sync_bytes.labels(self.peer, "out")
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                frame = self._queue.popleft()
                self._sending = len(frame)
                try:
                    await self.ws.send_bytes(frame)
                except ConnectionResetError:
                    # The peer closed first (it refused our version, say): the reader
                    # ends the link; this is no error of ours to log as a traceback.
                    return
                self._sending = 0
                sent.inc(len(frame))
                self.queued = max(0, self.queued - len(frame))  # 0 once dropped
            self._queued_gauge.set(self.queued)
            if not self._queue and self._held_resume is not None:
                key, token = self._held_resume
                self._held_resume = None
                self.node._fire_core(key, token)


class Node:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.data_dir = Path(config.data_dir)
        self.identity: Identity | None = None
        self._ledger: Ledger | None = None
        self._core: NodeCore | None = None
        self.metrics = Metrics()
        self._links: dict[int, Link] = {}
        self._next_link = 1
        self._ops: dict[int, asyncio.Future[Any]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._timers: dict[TimerKey, asyncio.TimerHandle] = {}
        self._runners: list[web.AppRunner] = []
        self._client: aiohttp.ClientSession | None = None
        self._hints: dict[str, str | None] = {}  # dial target -> node id hint
        self._dial_told: dict[str, str] = {}  # dial target -> the last failure logged
        self._refusals_told: dict[str, float] = {}  # a refused peer's reason -> when logged
        self._discovered: set[str] = set()  # dial targets announced on the LAN
        self._flush_soon = False
        self._crl_soon = False  # a reload of the revocation list is due this turn
        self._wrote_run_file = False  # this process's own (Node.stop removes only that)
        # The core's recent decisions, for `status` and tests (bounded: a node runs
        # for months).
        self.decisions: deque[str] = deque(maxlen=1000)
        # Peers refused for speaking another protocol version, and the sentence why.
        self.refusals: dict[str, str] = {}
        self._stopping = False
        self._crl = ""
        self.local_token = secrets.token_urlsafe(32)
        self.logins = LoginThrottle()
        self.sync_port = 0
        self.api_port = 0
        self.discovery: Any = None
        self.started_at = time.time()
        # channel -> Gateway, from DATA/node.toml's [notify] (peer.gateways); read at
        # start, empty for a node that sends nothing. Others (the members' pages) send
        # through it too: `await node.gateways["sms"].send(Message(...))`.
        self.gateways: dict[str, Gateway] = {}
        self.notifier: Notifier | None = None

    # --- what the API and the CLI route use -----------------------------------

    @property
    def ledger(self) -> Ledger:
        if self._ledger is None:
            raise LocalProtocolError("the node is not started")
        return self._ledger

    @property
    def core(self) -> NodeCore:
        if self._core is None:
            raise LocalProtocolError("the node is not started")
        return self._core

    @property
    def chain_identity(self) -> Identity:
        """The certificate and keys, loaded by `start`."""
        if self.identity is None:
            raise LocalProtocolError("the node is not started")
        return self.identity

    @property
    def node_id(self) -> str:
        return self.ledger.node

    @property
    def peers(self) -> dict[str, Peer]:
        return self.core.peers

    async def perform(self, op: Callable[[], T], name: str | None = None) -> T:
        """Run one ledger write. If it lacks rights that reachable branches hold,
        the core asks them (richest first) and runs it again when they answer, within
        the deadline (crdtledger.core).

        `op` must be a single ledger write (or retryable as a whole): it may run
        more than once, and only its last run can have committed.
        """
        # A commit inside the core's call is flushed to the peers below, not by
        # _on_commit.
        flush_soon, self._flush_soon = self._flush_soon, True
        try:
            oid, effects = self.core.submit(op, boot_clock_s(), name, reply_first=True)
        finally:
            self._flush_soon = flush_soon
        # Nearly always the operation is done at once (its rights are here): its
        # outcome is among these effects, and nobody needs to wait for it. What it
        # sends the peers (a batch each, under a freshly signed head) goes at the
        # loop's next turn, after the caller has its answer.
        for e in effects:
            if isinstance(e, Done) and e.op == oid:
                if self._links and not self._flush_soon:
                    self._flush_soon = True
                    asyncio.get_running_loop().call_soon(self._flush_queued)
                self.run(effects)
                if e.error is not None:
                    raise e.error
                result: T = e.result
                return result
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._ops[oid] = future
        self.run(effects)
        try:
            result = await future
        finally:
            self._ops.pop(oid, None)
        return result

    async def rebalance(self) -> int:
        """A rebalancer pass now; returns the number of transfers made."""
        moved, effects = self.core.rebalance(boot_clock_s())
        self.run(effects)
        return moved

    def sync_status(self) -> dict[str, Any]:
        return {
            "node": self.node_id,
            "chain": self.ledger.chain,
            "timezone": localtime.zone(self.ledger).key,  # for the times `status` shows
            "version": __version__,
            "protocol": PROTOCOL_VERSION,
            "listen": self.sync_port,
            "digest": self.digest(),
            **views.trust_status(self.ledger),
            "clock": self.core.clock_status(),
            "peers": [self._peer_status(p) for p in sorted(self.peers.values(),
                                                            key=lambda p: p.node)],
        }

    def _peer_status(self, p: Peer) -> dict[str, Any]:
        session = self.core.session(p.node)
        release = session.peer_release if session is not None else None
        if session is not None and session.peer is not None and not session.failed:
            self.refusals.pop(p.node, None)  # it said hello in our version since
        return {
            "node": p.node,
            "address": p.address,
            "connected": p.link is not None,
            "last_contact": p.last_contact,
            "behind_in": p.behind_in,
            "behind_out": p.behind_out,
            "release": release,
            # Why this node will not sync with it (another protocol version), if so.
            "incompatible": self.refusals.get(p.node),
        }

    # --- peers ----------------------------------------------------------------

    def link(self, peer: str) -> Link | None:
        state = self.peers.get(peer)
        return self._links.get(state.link) if state and state.link is not None else None

    def connected(self) -> list[str]:
        """Peers with a connection whose hello has arrived: the ones we can ask."""
        return self.core.connected()

    # --- the core's effects -----------------------------------------------------

    def run(self, effects: list[Effect]) -> None:
        """Carry out what the core decided."""
        m = self.metrics
        applied = 0  # bytes of records applied in this turn
        for e in effects:
            # A till's operation gives these two, first: without the match below,
            # which tries its cases one by one.
            if isinstance(e, Count) and e.name == "operations":
                m.count_operation(e.labels)
                continue
            if isinstance(e, Done):
                future = self._ops.get(e.op)
                if future is not None and not future.done():
                    if e.error is not None:
                        future.set_exception(e.error)
                    else:
                        future.set_result(e.result)
                continue
            match e:
                case Send(link=lid, frames=frames):
                    link = self._links.get(lid)
                    if link is not None:
                        link.send(frames)
                case Close(link=lid, code=code, reason=reason):
                    link = self._links.get(lid)
                    if link is not None:
                        link.close(code, reason)
                case Dial(target=url):
                    self._spawn(self._dial(url))
                case SetTimer(key=key, token=token, delay=delay):
                    old = self._timers.pop(key, None)
                    if old is not None:
                        old.cancel()
                    self._timers[key] = asyncio.get_running_loop().call_later(
                        delay, self._fire, key, token)
                case Seen(event=UpdatesApplied(size=size)):
                    # (A rules record reloads the revocation list through _on_commit,
                    # which hears every commit, a session's too: once a turn.)
                    applied += size
                case Decided(what=what):
                    self.decisions.append(what)
                    log.debug("decided: %s", what)
                case Count(name="records_refused"):
                    m.records_refused.inc()
                case Refused(what=what):
                    log.warning("refused: %s", what)
                case ClockJudged():
                    said = peerclock.tell(self.core.clock_status())
                    if said:
                        log.warning("clock: %s", said)
                    else:
                        log.info("clock: in step with the peers again")
                case Failed(peer=peer, error=VersionMismatch() as error):
                    # Not a broken peer: one of the two needs an upgrade. Kept for the
                    # sync page and `status` until that peer says hello again.
                    self.refusals[peer] = str(error)
                    log.error("cannot sync with %s: %s", peer, error)
                case Failed(peer=peer, error=error):
                    log.warning("peer %s broke the protocol (%s); closing", peer, error)
                case Count(name="refused", labels=labels):
                    m.refused.labels(*labels).inc()
                case Count(name="rights_transfers", labels=labels):
                    m.rights_transfers.labels(*labels).inc()
                case Count(name="clock_skew_seen", labels=labels):
                    m.clock_skew_seen.labels(*labels).inc()
                case Count(name="protocol_errors"):
                    m.protocol_errors.inc()
                case Count(name="housekeeping_entries", amount=n):
                    log.info("housekeeping: %d entries written (merged members' rights "
                             "swept, expired points, referral rewards, check-ins over their "
                             "limit reversed, erased members' records redacted)", n)
                case Count(name="booking_decisions", amount=n):
                    log.info("bookings: %d decided for this branch's technicians", n)
                case Count(name="referral_rewards", amount=n):
                    log.info("referrals: %d rewards granted (approved at other branches)", n)
                case Gauge(name="peers_connected", value=value):
                    m.peers_connected.set(value)
                case Gauge(name="peer_lag", labels=labels, value=value):
                    m.peer_lag.labels(*labels).set(value)
                case Gauge(name="clock_skew", labels=labels, value=value):
                    m.clock_skew.labels(*labels).set(value)
                case Observe(name="rights_fetch", value=value):
                    m.rights_fetch.observe(value)
                case _:
                    pass
        if applied >= GIVE_BACK_AFTER_BYTES:
            # At the next turn: the session drops the batch once this returns.
            asyncio.get_running_loop().call_soon(platform.give_back_memory)

    def flush(self) -> None:
        if self._core is not None:
            self.run(self.core.flush())

    def _fire(self, key: TimerKey, token: int) -> None:
        self._timers.pop(key, None)
        if key[0] == "resume":
            link = self._links.get(int(key[1]))
            if link is not None and link.queued:
                # Back-pressure: the next slice of a long answer is read from the store
                # once the last one is on the socket, so a peer that reads slowly (a
                # joining branch busy applying, a thin WAN line) costs a slice or two of
                # memory here, not the whole answer.
                link.resume_when_sent(key, token)
                return
        self._fire_core(key, token)

    def _fire_core(self, key: TimerKey, token: int) -> None:
        if self._core is not None and not self._stopping:
            self.run(self.core.fire(key, token, boot_clock_s()))

    async def _attach(self, ws: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
                      peer: str, address: str, dialer: str, cert: bytes,
                      target: str | None = None) -> None:
        """Run a connection to `peer` until it closes (the core may refuse it at once
        as the duplicate of a better one)."""
        lid = self._next_link
        self._next_link += 1
        link = Link(self, lid, ws, peer, cert)
        self._links[lid] = link
        log.info("connected to %s (%s)", peer, address or "inbound")
        try:
            self.run(self.core.link_opened(lid, peer, dialer=dialer, now=boot_clock_s(),
                                           address=address, target=target))
            await link.run()
        finally:
            self._links.pop(lid, None)
            if self._core is not None:
                self.run(self.core.link_closed(lid, boot_clock_s()))
            log.info("disconnected from %s", peer)

    # --- sync listener --------------------------------------------------------

    async def _accept(self, request: web.Request) -> web.StreamResponse:
        ssl_object = request.transport.get_extra_info("ssl_object") if request.transport else None
        der = ssl_object.getpeercert(binary_form=True) if ssl_object else None
        if not der:
            raise web.HTTPForbidden(text="a client certificate of this chain is required")
        try:
            peer = self.chain_identity.check_peer(der)
        except PeerRejected as e:
            self._refused_peer(str(e))
            # The reason in a header too: the dialler's websocket client reads no body.
            raise web.HTTPForbidden(text=str(e), headers={
                REFUSED_HEADER: str(e).encode("ascii", "replace").decode()}) from None
        if peer == self.node_id:
            raise web.HTTPForbidden(text="a node cannot connect to itself")
        ws = web.WebSocketResponse(heartbeat=HEARTBEAT_S, max_msg_size=MAX_FRAME_BYTES,
                                   compress=True)
        await ws.prepare(request)
        await self._attach(ws, peer, "", peer, der)
        return ws

    # --- dialling -------------------------------------------------------------

    def dial(self, url: str, node_hint: str | None = None, *, discovered: bool = False
             ) -> None:
        """Keep a connection to `url` open, reconnecting with the core's backoff;
        `discovered` on the LAN (the core keeps few of those, and forgets them)."""
        if not self._stopping and self._core is not None:
            self._hints.setdefault(url, node_hint)
            if discovered:
                # An announcement's node id is anyone's word: a stranger announcing a
                # real branch's address under a made-up id made every dial there fail
                # "expected node ZZ90" for good. The certificate says who answers.
                self._discovered.add(url)
            self.run(self.core.add_target(url, node_hint, boot_clock_s(),
                                          discovered=discovered))
            if discovered:  # what the core forgot or refused leaves no hint behind
                kept = self.core.targets()
                for gone in [u for u in self._hints if u not in kept]:
                    del self._hints[gone]
                    self._dial_told.pop(gone, None)
                    self._discovered.discard(gone)

    def forget_discovered(self, node_id: str) -> None:
        """The LAN no longer announces `node_id`."""
        if not self._stopping and self._core is not None:
            self.run(self.core.forget_discovered(node_id, boot_clock_s()))

    def _refused_peer(self, why: str) -> None:
        """Log a refused peer once a minute per reason: a retired branch's expired
        certificate still passes the handshake, and 2,000 requests on one connection
        wrote 2,000 warnings in a second (journald then drops the node's real ones)."""
        now = time.monotonic()
        last = self._refusals_told.get(why)
        if last is not None and now - last < REFUSAL_LOG_S:
            return
        if len(self._refusals_told) >= 256:  # reasons name certificates: bounded
            self._refusals_told.clear()
        self._refusals_told[why] = now
        log.warning("refused a peer: %s (said once a minute)", why)

    async def _dial(self, url: str) -> None:
        """One attempt; the core decides when to try again."""
        if self._client is None:
            raise LocalProtocolError("the node is not started")
        endpoint = url.rstrip("/") + SYNC_PATH
        try:
            ws = await self._client.ws_connect(
                endpoint, ssl=self.chain_identity.client_ssl_context(), heartbeat=HEARTBEAT_S,
                max_msg_size=MAX_FRAME_BYTES, compress=15,
                timeout=aiohttp.ClientWSTimeout(ws_close=5))
            der = ws.get_extra_info("ssl_object").getpeercert(binary_form=True)
            try:
                peer = self.chain_identity.check_peer(
                    der, expect_node=None if url in self._discovered else self._hints.get(url))
            except PeerRejected as e:
                log.warning("refused %s: %s", url, e)
                await ws.close()
                raise
            self._hints[url] = peer
        except (aiohttp.ClientError, OSError, PeerRejected, TimeoutError) as e:
            self._dial_failed(url, e)
            if self._core is not None and not self._stopping:
                self.run(self.core.dial_failed(url, boot_clock_s()))
            return
        await self._attach(ws, peer, url, self.node_id, der, target=url)

    def _dial_failed(self, url: str, error: BaseException) -> None:
        """Log why a dial failed: at warning level when the peer refused us, or the TLS
        handshake failed on a certificate (the cause is then usually a clock, and a
        shop must be able to read it), once per reason; a peer that is down is
        routine (debug)."""
        said = None
        if isinstance(error, aiohttp.WSServerHandshakeError) and error.status == 403:
            reason = error.headers.get(REFUSED_HEADER) if error.headers is not None else None
            said = f"{url} refused this node: {reason or 'no reason given'}"
        elif isinstance(error, aiohttp.ClientConnectorCertificateError):
            said = (f"the TLS handshake with {url} failed on a certificate "
                    f"({error.certificate_error}): a peer of another chain, or a clock off "
                    "by more than a day on either side")
        elif isinstance(error, aiohttp.ClientSSLError):
            # The OS's reason, not str(error): that names the SSLContext object, new at
            # every dial, so "once per reason" logged every redial.
            why = getattr(error, "os_error", None) or error
            said = (f"the TLS handshake with {url} failed ({why}): the peer may not "
                    "accept this node's certificate (another chain, revoked, or its clock "
                    "off by more than a day); see its log")
        if said is None or self._dial_told.get(url) == said:
            log.debug("dial %s: %s", url, error)
        else:
            log.warning("%s", said)
        if said is not None:
            self._dial_told[url] = said

    # --- lifecycle ------------------------------------------------------------

    async def start(self) -> None:
        identity = load_identity(self.data_dir)
        if identity is None:
            if (self.data_dir / BACKUP_FILE).is_file():
                # A backup copied by hand into an empty directory: its keys open only
                # with the chain directory (crdtledger.backups), and `init` refuses
                # the node id, which the chain issued already.
                raise LedgerError(no_store(self.data_dir))
            raise LedgerError(
                f"{self.data_dir} has no chain certificate: create the node with "
                "`crdtledger init --data DIR --node NODE --chain CHAIN_DIR`")
        self.identity = identity
        platform.raise_open_files_limit()
        self.gateways = gateways_from_config(self.data_dir)  # bad settings: refused here
        self._ledger = Ledger.open(self.data_dir)
        # Approver passwords count with logins: one lock per name (crdtledger.auth).
        self._ledger.logins = self.logins
        try:
            if self.ledger.node != identity.node or self.ledger.chain != identity.chain:
                raise LedgerError(
                    f"the certificate in {self.data_dir} is for {identity.node} of chain "
                    f"{identity.chain}, but the store is {self.ledger.node} of "
                    f"{self.ledger.chain}")
            self._load_revocations()
            platform.log_zone(localtime.zone(self.ledger))
            # The rebalancer looks at debits from now on (the core's mark starts at
            # the newest entry): a first pass over a year of entries would hold the
            # loop for as long as the scan takes.
            self._core = NodeCore(self.ledger, anti_entropy_s=self.config.anti_entropy_s,
                                  rights_deadline_s=self.config.rights_deadline_s,
                                  rebalance_s=self.config.rebalance_s)
            self.ledger.subscribe(self._on_commit)
            # Dials never wait for one another (aiohttp's pool of 100 let dials to
            # announced addresses that never answer keep a configured peer waiting
            # minutes), and each gives up connecting after DIAL_CONNECT_S. The targets
            # the core keeps bound how many there are (core.MAX_DISCOVERED).
            self._client = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0),
                timeout=aiohttp.ClientTimeout(total=None, connect=DIAL_CONNECT_S))
            await self._serve()
            write_run_file(self.data_dir, node=self.node_id, host=self.config.api[0],
                           port=self.api_port, token=self.local_token)
            self._wrote_run_file = True
            for url in self.config.peers:
                self._hints.setdefault(url, None)
            self.run(self.core.start(boot_clock_s(), [(u, None) for u in self.config.peers]))
            if self.gateways:  # a node with no [notify] sends nothing
                self.notifier = Notifier(self, self.config.notify_clock,
                                         self.config.notify_interval_s)
                self._spawn(self.notifier.run())
            else:  # ... and queues no debit for a notifier (crdtledger.outbox)
                outbox.stop_queue(self.ledger)
            if self.config.mdns:
                from peer.discovery import Discovery

                self.discovery = Discovery(self)
                await self.discovery.start()
        except BaseException:
            await self.stop()
            raise

    async def _serve(self) -> None:
        from peer.api import Sessions, api_app

        sync = web.Application()
        # Only the sync route: /health is the local port's (a retired branch's
        # certificate still passes the handshake, and read the store's digest here).
        sync.router.add_get(SYNC_PATH, self._accept)
        local = web.Application(client_max_size=1024 * 1024)
        # One count of failed logins for the API and the counter's login page, so a
        # guesser gains nothing by switching between them.
        local.add_subapp("/api", api_app(self, sessions=Sessions(throttle=self.logins)))
        local.add_subapp("/local", local_app(self))
        local.router.add_get("/metrics", self._metrics)
        local.router.add_get("/health", self._health)
        host, port = self.config.listen
        tls = self.chain_identity.server_ssl_context()
        self.sync_port = await self._site(sync, host, port, tls)
        host, port = self.config.api
        self.api_port = await self._site(local, host, port, None)

    async def _site(self, app: web.Application, host: str, port: int, ssl: Any) -> int:
        from peer.api import MAX_REQUEST_LINE

        runner = web.AppRunner(app, access_log=None, handle_signals=False,
                               max_line_size=MAX_REQUEST_LINE, max_field_size=MAX_REQUEST_LINE,
                               keepalive_timeout=IDLE_S)
        await runner.setup()
        self._runners.append(runner)
        site = _Site(runner, host, port, ssl_context=ssl, reuse_address=True)
        await site.start()
        return int(runner.addresses[0][1])

    async def stop(self) -> None:
        self._stopping = True
        if self.discovery is not None:
            await self.discovery.stop()
        if self._core is not None:
            self.run(self.core.stop())
        for handle in self._timers.values():
            handle.cancel()
        self._timers.clear()
        for future in self._ops.values():
            future.cancel()
        for link in list(self._links.values()):
            await link.aclose(1001, b"node stopping")
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for runner in self._runners:
            await runner.cleanup()
        if self._client is not None:
            await self._client.close()
        if self._wrote_run_file:  # a start refused (another holds the store) wrote none:
            # the one there is the running node's, and the command line finds it by it
            with contextlib.suppress(FileNotFoundError):
                (self.data_dir / RUN_FILE).unlink()  # before the lock goes with the ledger
            self._wrote_run_file = False
        if self._ledger is not None:
            self._ledger.close()
            self._ledger = None

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # --- the store's changes --------------------------------------------------

    def _on_commit(self, record: Record, origin: object) -> None:
        # The sessions queued the update already (they subscribe to the ledger). A
        # commit made inside a core call ships with that call's effects; one made
        # elsewhere (an import, a direct write) ships at the loop's next turn.
        if not self._flush_soon:
            self._flush_soon = True
            asyncio.get_running_loop().call_soon(self._flush_queued)
        if record.doc == "rules" and not self._crl_soon:
            # Whatever its origin: a list imported from a sync file (origin "file")
            # was never installed, the revoked branch kept its link and our members'
            # data until a restart. Once a turn, however many rules records came:
            # reading the list verifies every version's signature (a liar's 400
            # copies, once per record, held the loop 17 s).
            self._crl_soon = True
            asyncio.get_running_loop().call_soon(self._rules_arrived)

    def _rules_arrived(self) -> None:
        """What the node takes from the rules: the revocation list, the chain's zone
        its log is written in (the settings rule may move it)."""
        self._crl_soon = False
        self._load_revocations()
        platform.log_zone(localtime.zone(self.ledger))

    def _flush_queued(self) -> None:
        self._flush_soon = False
        self.flush()

    def _load_revocations(self) -> None:
        """Install the chain's revocation list from the replicated rules and drop
        connections to peers it revokes."""
        self._crl, ignored, refused = apply_revocations(
            self.chain_identity, self.ledger.revocation_list(), self._crl,
            [(link, link.cert) for link in self._links.values()])
        if ignored is not None:
            log.warning("ignored a revocation list: %s", ignored)
        for link, why in refused:
            log.warning("dropping %s: %s", link.peer, why)
            link.close(1008, "certificate revoked")

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "node": self.node_id,
                                  "version": __version__, "protocol": PROTOCOL_VERSION,
                                  "peers_connected": len(self.connected()),
                                  "digest": self.digest()})

    def digest(self) -> str:
        """Equal at two nodes exactly when they hold the same data: in sync."""
        return states_digest(self.ledger.state_vectors()).hex()

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=self.metrics.render(), headers={"Content-Type": CONTENT_TYPE})


async def run_until_signalled(config: Config, announce: Callable[[Node], None] | None = None
                              ) -> None:
    """`crdtledger node run`: start, serve until SIGINT/SIGTERM, stop cleanly."""
    node = Node(config)
    await node.start()
    if announce is not None:
        announce(node)
    stop = asyncio.Event()
    platform.on_stop(asyncio.get_running_loop(), stop.set)
    try:
        await stop.wait()
    finally:
        await node.stop()

