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
import base64
import contextlib
import logging
import random
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
from aiohttp import WSMsgType, web

from crdtledger import escrow
from crdtledger.errors import (
    ForeignChain,
    LedgerError,
    LocalProtocolError,
    RemoteProtocolError,
    RightsElsewhere,
)
from crdtledger.hlc import id_floor
from crdtledger.ledger import Ledger
from crdtledger.model import MONEY_PURSES
from crdtledger.sync import (
    MAX_FRAME_BYTES,
    ClockSkewSeen,
    PeerHello,
    RightsAnswered,
    RightsGranted,
    RightsRequested,
    SyncSession,
    UpdatesApplied,
    missing,
    states_digest,
)
from peer.chain import Identity, PeerRejected, load_identity
from peer.local import RUN_FILE, local_app, write_run_file
from peer.metrics import CONTENT_TYPE, Metrics

log = logging.getLogger("crdtledger.node")
T = TypeVar("T")

SYNC_PATH = "/sync"
ANTI_ENTROPY_S = 3.0
RIGHTS_DEADLINE_S = 2.0
REBALANCE_S = 60.0
HEARTBEAT_S = 10.0
BACKOFF_MIN_S = 0.25
BACKOFF_MAX_S = 30.0
# A connection that lasted this long was healthy: the next failure starts the
# backoff from the beginning again.
HEALTHY_S = 10.0
VISIT_WINDOW_DAYS = 30


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


def parse_address(text: str, default_port: int) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep:
        return text, default_port
    if not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"bad port in {text!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


@dataclass
class PeerState:
    """What the node knows of one peer, connected or not (for `status`)."""

    node: str
    address: str = ""
    link: Link | None = None
    last_contact: float | None = None  # wall-clock seconds
    behind_in: int | None = None
    behind_out: int | None = None


class Link:
    """One open websocket to a peer, carrying one sync session."""

    def __init__(self, node: Node, ws: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
                 peer: str, address: str, dialer: str, cert: bytes) -> None:
        self.node = node
        self.ws = ws
        self.peer = peer
        self.address = address
        self.dialer = dialer  # node id of the side that dialled: decides duplicates
        self.cert = cert
        self.session = SyncSession(node.ledger, expect_node=peer)
        self.session.relay_rights = True  # see Node._relay_rights
        self._wake = asyncio.Event()
        self.closed = False
        self.measured: dict[str, bytes] | None = None  # peer states lag was measured at

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        self.session.start()
        self.wake()  # the hello goes out first, before anything is read
        writer = asyncio.create_task(self._write())
        try:
            await self._read()
        finally:
            self.session.close()
            self.closed = True
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer
            await self.ws.close()

    async def close(self, code: int = 1000, message: bytes = b"") -> None:
        await self.ws.close(code=code, message=message)

    async def _read(self) -> None:
        metrics = self.node.metrics
        async for msg in self.ws:
            if msg.type != WSMsgType.BINARY:
                if msg.type == WSMsgType.ERROR:
                    log.info("connection to %s failed: %s", self.peer, self.ws.exception())
                    return
                self.node.metrics.protocol_errors.inc()
                log.warning("peer %s sent a %s frame; closing", self.peer, msg.type.name)
                await self.close(1003, b"binary frames only")
                return
            metrics.sync_bytes.labels(self.peer, "in").inc(len(msg.data))
            try:
                self.session.receive(msg.data)
            except (RemoteProtocolError, ForeignChain) as e:
                metrics.protocol_errors.inc()
                log.warning("peer %s broke the protocol (%s); closing", self.peer, e)
                await self.close(1002, str(e)[:100].encode())
                return
            self.node.peer_seen(self.peer)
            self.node.handle_events(self)
            self.wake()

    async def _write(self) -> None:
        sent = self.node.metrics.sync_bytes.labels(self.peer, "out")
        while True:
            await self._wake.wait()
            self._wake.clear()
            for frame in self.session.data_to_send():
                await self.ws.send_bytes(frame)
                sent.inc(len(frame))


@dataclass
class _Wait:
    fetch: escrow.RightsFetch
    done: asyncio.Event


class Node:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.data_dir = Path(config.data_dir)
        self.identity: Identity | None = None
        self._ledger: Ledger | None = None
        self.metrics = Metrics()
        self.peers: dict[str, PeerState] = {}
        self._waits: dict[tuple[str, int], _Wait] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._runners: list[web.AppRunner] = []
        self._client: aiohttp.ClientSession | None = None
        self._dialing: dict[str, asyncio.Task[None]] = {}  # by address
        self._stopping = False
        self._crl = ""
        self._rebalance_mark = ""
        self.local_token = secrets.token_urlsafe(32)
        self.sync_port = 0
        self.api_port = 0
        self.discovery: Any = None
        self.started_at = time.time()

    # --- what the API and the CLI route use -----------------------------------

    @property
    def ledger(self) -> Ledger:
        assert self._ledger is not None, "node not started"
        return self._ledger

    @property
    def node_id(self) -> str:
        return self.ledger.node

    async def perform(self, op: Callable[[], T], name: str | None = None) -> T:
        """Run one ledger write. If it lacks rights that reachable branches hold,
        ask them (richest first), wait up to the deadline, and try again.

        `op` must be a single ledger write (or retryable as a whole): it may run
        more than once, and only its last run can have committed.
        """
        deadline = time.monotonic() + self.config.rights_deadline_s
        started: float | None = None
        try:
            while True:
                try:
                    result = op()
                    break
                except RightsElsewhere as refusal:
                    left = deadline - time.monotonic()
                    fetch = escrow.RightsFetch(refusal, self.node_id, self.connected())
                    if left <= 0 or not fetch.possible:
                        raise
                    started = started or time.monotonic()
                    await self._fetch(fetch, left)
                    if fetch.received <= 0:
                        raise
        except LedgerError as e:
            self.metrics.refused.labels(e.code).inc()
            raise
        finally:
            if started is not None:
                self.metrics.rights_fetch.observe(time.monotonic() - started)
        if name is None:  # an entry names its kind; anything else is counted as "other"
            kind = result.get("kind") if isinstance(result, dict) else None
            name = kind if isinstance(kind, str) else "other"
        self.metrics.operations.labels(name).inc()
        return result

    async def _relay_rights(self, link: Link, req: RightsRequested) -> None:
        """A peer asks for rights: if this node holds too little, first fetch the rest
        from its other peers (one hop, half the deadline), then grant what it holds."""
        try:
            rights = self.ledger.rights(req.member, req.purse)
            have = rights.get(self.node_id, 0)
            others = [p for p in self.connected() if p != req.node]
            if have < req.amount and others:
                holders = {n: a for n, a in rights.items() if n != self.node_id and a > 0}
                refusal = RightsElsewhere(req.purse, req.amount - have, have, holders,
                                          req.member)
                fetch = escrow.RightsFetch(refusal, self.node_id, others)
                if fetch.possible:
                    await self._fetch(fetch, self.config.rights_deadline_s / 2, forwarded=True)
        except LedgerError as e:  # e.g. a member this node has not heard of yet
            log.info("relaying rights to %s: %s", req.node, e)
        finally:
            if not link.closed:
                link.session.answer_rights(req.request)
                self.handle_events(link)
                link.wake()

    async def _fetch(self, fetch: escrow.RightsFetch, timeout: float,
                     forwarded: bool = False) -> None:
        assert fetch.member is not None
        wait = _Wait(fetch, asyncio.Event())
        keys = []
        for ask in fetch.asks:
            link = self.link(ask.giver)
            try:
                if link is None:
                    raise LocalProtocolError(f"no connection to {ask.giver}")
                rid = link.session.request_rights(fetch.member, fetch.purse, ask.amount,
                                                  forwarded=forwarded)
            except LocalProtocolError:  # the connection closed since `connected()`
                fetch.lost(ask.giver)
                continue
            keys.append((ask.giver, rid))
            self._waits[(ask.giver, rid)] = wait
            link.wake()
        try:
            if not fetch.done:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wait.done.wait(), timeout)
        finally:
            for key in keys:
                self._waits.pop(key, None)

    def sync_status(self) -> dict[str, Any]:
        return {
            "node": self.node_id,
            "chain": self.ledger.chain,
            "listen": self.sync_port,
            "digest": self.digest(),
            "peers": [self._peer_status(p) for p in sorted(self.peers.values(),
                                                            key=lambda p: p.node)],
        }

    def _peer_status(self, p: PeerState) -> dict[str, Any]:
        return {
            "node": p.node,
            "address": p.address,
            "connected": p.link is not None,
            "last_contact": p.last_contact,
            "behind_in": p.behind_in,
            "behind_out": p.behind_out,
        }

    # --- peers ----------------------------------------------------------------

    def link(self, peer: str) -> Link | None:
        state = self.peers.get(peer)
        return state.link if state else None

    def connected(self) -> list[str]:
        """Peers with a connection whose hello has arrived: the ones we can ask."""
        return sorted(n for n, p in self.peers.items()
                      if p.link is not None and p.link.session.peer is not None)

    def peer_seen(self, peer: str) -> None:
        self.peers[peer].last_contact = time.time()

    def handle_events(self, link: Link) -> None:
        m = self.metrics
        while (event := link.session.next_event()) is not None:
            match event:
                case PeerHello(node=peer, skew_ms=skew):
                    m.clock_skew.labels(peer).set(skew / 1000)
                case ClockSkewSeen(node=peer):
                    m.clock_skew_seen.labels(peer).inc()
                case RightsGranted(request=rid, node=peer, amount=amount):
                    if amount > 0:
                        m.rights_transfers.labels("in").inc()
                    wait = self._waits.pop((peer, rid), None)
                    if wait is not None:
                        wait.fetch.answered(peer, amount)
                        if wait.fetch.done:
                            wait.done.set()
                case RightsRequested():
                    self._spawn(self._relay_rights(link, event))
                case RightsAnswered(amount=amount):
                    if amount > 0:
                        m.rights_transfers.labels("out").inc()
                case UpdatesApplied(doc=doc, new=True) if doc == "rules":
                    self._load_revocations()
                case _:
                    pass
        theirs = link.session.peer_states
        if theirs is not None and theirs is not link.measured:
            link.measured = theirs
            self._measure_lag(link, theirs)

    def _measure_lag(self, link: Link, theirs: dict[str, bytes]) -> None:
        """Lag at the start of the round that just began: a round then sends what
        either side lacks, so a healthy pair reads 0 from the next round on."""
        ours = self.ledger.state_vectors()
        state = self.peers[link.peer]
        state.behind_out = missing(theirs, ours)
        state.behind_in = missing(ours, theirs)
        self.metrics.peer_lag.labels(link.peer, "out").set(state.behind_out)
        self.metrics.peer_lag.labels(link.peer, "in").set(state.behind_in)

    async def _attach(self, ws: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
                      peer: str, address: str, dialer: str, cert: bytes) -> None:
        """Run a connection to `peer` until it closes, unless a better one exists."""
        state = self.peers.setdefault(peer, PeerState(peer))
        old = state.link
        if old is not None:
            # Both sides dialled: keep the connection the smaller node id dialled.
            keep_new = dialer == min(self.node_id, peer) and old.dialer != dialer
            if not keep_new:
                await ws.close(code=1000, message=b"already connected")
                return
            await old.close(1000, b"replaced")
        link = Link(self, ws, peer, address, dialer, cert)
        state.link = link
        if address:
            state.address = address
        state.last_contact = time.time()
        self.metrics.peers_connected.set(len(self.connected()))
        log.info("connected to %s (%s)", peer, address or "inbound")
        try:
            await link.run()
        finally:
            if state.link is link:
                state.link = None
            self.metrics.peers_connected.set(len(self.connected()))
            for (giver, _rid), wait in list(self._waits.items()):
                if giver == peer:
                    wait.fetch.lost(peer)
                    if wait.fetch.done:
                        wait.done.set()
            log.info("disconnected from %s", peer)

    # --- sync listener --------------------------------------------------------

    async def _accept(self, request: web.Request) -> web.StreamResponse:
        assert self.identity is not None
        ssl_object = request.transport.get_extra_info("ssl_object") if request.transport else None
        der = ssl_object.getpeercert(binary_form=True) if ssl_object else None
        if not der:
            raise web.HTTPForbidden(text="a client certificate of this chain is required")
        try:
            peer = self.identity.check_peer(der)
        except PeerRejected as e:
            log.warning("refused a peer: %s", e)
            raise web.HTTPForbidden(text=str(e)) from None
        if peer == self.node_id:
            raise web.HTTPForbidden(text="a node cannot connect to itself")
        ws = web.WebSocketResponse(heartbeat=HEARTBEAT_S, max_msg_size=MAX_FRAME_BYTES,
                                   compress=True)
        await ws.prepare(request)
        await self._attach(ws, peer, "", peer, der)
        return ws

    # --- dialling -------------------------------------------------------------

    def dial(self, url: str, node_hint: str | None = None) -> None:
        """Keep a connection to `url` open, reconnecting with backoff, until stop."""
        if url not in self._dialing and not self._stopping:
            self._dialing[url] = self._spawn(self._dial_loop(url, node_hint))

    async def _dial_loop(self, url: str, node_hint: str | None) -> None:
        assert self.identity is not None and self._client is not None
        backoff = BACKOFF_MIN_S
        endpoint = url.rstrip("/") + SYNC_PATH
        while not self._stopping:
            if node_hint and self.link(node_hint) is not None:
                await asyncio.sleep(self.config.anti_entropy_s)  # already reached
                continue
            began = time.monotonic()
            try:
                ws = await self._client.ws_connect(
                    endpoint, ssl=self.identity.client_ssl_context(), heartbeat=HEARTBEAT_S,
                    max_msg_size=MAX_FRAME_BYTES, compress=15,
                    timeout=aiohttp.ClientWSTimeout(ws_close=5))
                der = ws.get_extra_info("ssl_object").getpeercert(binary_form=True)
                try:
                    peer = self.identity.check_peer(der, expect_node=node_hint)
                except PeerRejected as e:
                    log.warning("refused %s: %s", url, e)
                    await ws.close()
                    raise
                node_hint = peer
                await self._attach(ws, peer, url, self.node_id, der)
            except (aiohttp.ClientError, OSError, PeerRejected, TimeoutError) as e:
                log.debug("dial %s: %s", url, e)
            if time.monotonic() - began > HEALTHY_S:
                backoff = BACKOFF_MIN_S
            # Full jitter: peers that lost the same hub do not come back in lockstep.
            await asyncio.sleep(random.uniform(0, backoff))
            backoff = min(BACKOFF_MAX_S, backoff * 2)

    # --- background rounds ----------------------------------------------------

    async def _anti_entropy(self) -> None:
        while True:
            await asyncio.sleep(self.config.anti_entropy_s)
            for peer in self.connected():
                link = self.link(peer)
                if link is not None and not link.closed and link.session.peer is not None:
                    link.session.anti_entropy()
                    link.wake()

    async def _rebalancer(self) -> None:
        while True:
            await asyncio.sleep(self.config.rebalance_s)
            await self.rebalance()

    async def rebalance(self) -> int:
        """Move this node's surplus rights toward connected branches where members
        have been shopping since the last pass; never empties this node's rights
        (escrow.rebalance). Returns the number of transfers made.

        Each transfer is a durable write; the loop is yielded between them so that a
        pass over many members never holds up a swipe or the sync."""
        conn = self.ledger.storage.conn
        me = self.node_id
        mark = self._rebalance_mark
        rows = conn.execute(
            "SELECT DISTINCT member FROM entries WHERE kind = 'debit' AND node != ? AND id > ?",
            (me, mark)).fetchall()
        last = conn.execute("SELECT max(id) FROM entries").fetchone()[0]
        self._rebalance_mark = last or mark
        reachable = set(self.connected())
        since = id_floor(self.ledger.clock.wall() - VISIT_WINDOW_DAYS * 86_400_000)
        moved = 0
        for (member,) in rows:
            visits = dict(conn.execute(
                "SELECT node, count(*) FROM entries WHERE member = ? AND kind = 'debit' "
                "AND id >= ? GROUP BY node", (member, since)).fetchall())
            for purse in (*sorted(MONEY_PURSES), "points"):
                rights = self.ledger.rights(member, purse)
                if rights.get(me, 0) <= 1:
                    continue
                for t in escrow.rebalance(rights, visits, purse):
                    if t.giver == me and t.receiver in reachable:
                        try:
                            self.ledger.transfer_rights(self.ledger.owner, member,
                                                        t.receiver, t.amount, purse)
                        except LedgerError as e:  # spent meanwhile: next pass
                            log.info("rebalance %s: %s", member, e)
                            continue
                        moved += 1
                        await asyncio.sleep(0)
        return moved

    # --- lifecycle ------------------------------------------------------------

    async def start(self) -> None:
        identity = load_identity(self.data_dir)
        if identity is None:
            raise LedgerError(
                f"{self.data_dir} has no chain certificate: create the node with "
                "`crdtledger init --data DIR --node NODE --chain CHAIN_DIR`")
        self.identity = identity
        self._ledger = Ledger.open(self.data_dir)
        try:
            if self.ledger.node != identity.node or self.ledger.chain != identity.chain:
                raise LedgerError(
                    f"the certificate in {self.data_dir} is for {identity.node} of chain "
                    f"{identity.chain}, but the store is {self.ledger.node} of "
                    f"{self.ledger.chain}")
            self._load_revocations()
            # The rebalancer looks at debits from now on: a first pass over a year of
            # entries would hold the loop for as long as the scan takes.
            self._rebalance_mark = self.ledger.storage.conn.execute(
                "SELECT COALESCE(max(id), '') FROM entries").fetchone()[0]
            self.ledger.subscribe(self._on_commit)
            self._client = aiohttp.ClientSession()
            await self._serve()
            write_run_file(self.data_dir, node=self.node_id, host=self.config.api[0],
                           port=self.api_port, token=self.local_token)
            for url in self.config.peers:
                self.dial(url)
            if self.config.mdns:
                from peer.discovery import Discovery

                self.discovery = Discovery(self)
                await self.discovery.start()
            self._spawn(self._anti_entropy())
            self._spawn(self._rebalancer())
        except BaseException:
            await self.stop()
            raise

    async def _serve(self) -> None:
        assert self.identity is not None
        from peer.api import api_app

        sync = web.Application()
        sync.router.add_get(SYNC_PATH, self._accept)
        sync.router.add_get("/health", self._health)
        local = web.Application(client_max_size=1024 * 1024)
        local.add_subapp("/api", api_app(self))
        local.add_subapp("/local", local_app(self))
        local.router.add_get("/metrics", self._metrics)
        local.router.add_get("/health", self._health)
        host, port = self.config.listen
        self.sync_port = await self._site(sync, host, port, self.identity.server_ssl_context())
        host, port = self.config.api
        self.api_port = await self._site(local, host, port, None)

    async def _site(self, app: web.Application, host: str, port: int, ssl: Any) -> int:
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        self._runners.append(runner)
        site = web.TCPSite(runner, host, port, ssl_context=ssl, reuse_address=True)
        await site.start()
        return int(runner.addresses[0][1])

    async def stop(self) -> None:
        self._stopping = True
        if self.discovery is not None:
            await self.discovery.stop()
        for state in list(self.peers.values()):
            if state.link is not None:
                await state.link.close(1001, b"node stopping")
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for runner in self._runners:
            await runner.cleanup()
        if self._client is not None:
            await self._client.close()
        with contextlib.suppress(FileNotFoundError):
            (self.data_dir / RUN_FILE).unlink()  # before the lock goes with the ledger
        if self._ledger is not None:
            self._ledger.close()
            self._ledger = None

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # --- the store's changes --------------------------------------------------

    def _on_commit(self, doc: str, update: bytes, origin: object) -> None:
        # The sessions queued the update already (they subscribe to the ledger);
        # their writers only need waking.
        for state in self.peers.values():
            if state.link is not None:
                state.link.wake()
        if doc == "rules" and origin is None:
            self._load_revocations()

    def _load_revocations(self) -> None:
        """Install the chain's revocation list from the replicated rules and drop
        connections to peers it revokes."""
        assert self.identity is not None
        crl = str(self.ledger.rule("revocations").get("crl", ""))
        if not crl or crl == self._crl:
            return
        self._crl = crl
        try:
            self.identity.set_revocations(base64.b64decode(crl))
        except (LedgerError, ValueError) as e:
            log.warning("ignored a revocation list: %s", e)
            return
        for state in self.peers.values():
            link = state.link
            if link is None:
                continue
            try:
                self.identity.check_peer(link.cert)
            except PeerRejected as e:
                log.warning("dropping %s: %s", link.peer, e)
                self._spawn(link.close(1008, b"certificate revoked"))

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "node": self.node_id,
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
    import signal

    node = Node(config)
    await node.start()
    if announce is not None:
        announce(node)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await node.stop()

