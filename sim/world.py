"""One simulated chain: its nodes, network, workload and faults, run to the end and
checked. `World(config).run()` returns the result `python -m sim run` prints."""

from __future__ import annotations

import multiprocessing
import random
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from datetime import date, datetime, timedelta
from datetime import time as dt_time
from functools import partial
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import msgpack

from crdtledger import closing, idempotency, syncfile, views
from crdtledger.core import Send
from crdtledger.errors import (
    InsufficientFunds,
    LedgerError,
    RemoteProtocolError,
    RightsElsewhere,
)
from crdtledger.seal import seal, unseal
from crdtledger.sync import RightsAnswered
from crdtledger.trust import Trust
from peer.chain import PeerRejected
from peer.files import export_bytes, import_bytes
from sim import checks
from sim.byzantine import ROLES, Byzantine
from sim.chainca import ChainCA
from sim.checks import Violation
from sim.config import Config
from sim.engine import DAY, HOUR, MINUTE, SECOND, Engine, Trace
from sim.faults import Fault, schedule
from sim.metrics import Metrics, Probe
from sim.net import HUB_UPLINK_BPS, SHOP_UPLINK_BPS, Connection, Network, frame_size
from sim.node import Attempt, Crashed, Outcome, SimNode
from sim.oracles import Intent, Oracle
from sim.workload import OPERATOR_PASSWORD, Workload

# The operations that move goods on a shelf (World._stock_told).
STOCK_OPS = frozenset({"stock.in", "sell", "refund"})
ZONE = "Asia/Shanghai"  # no daylight saving: a day is always 24 hours
TOPOLOGIES = {
    "hub": "a few always-on hub nodes in a mesh; every shop dials every hub (the default "
           "above 6 nodes)",
    "tree": "every shop dials only the hub of its region; hubs in a mesh",
    "mesh": "every node connected to every other (the default up to 6 nodes)",
}
# A month's last day of the run: at 14:00 the chain closes for a holiday week, and its
# PCs come back on at the 8th of the next month (closing.CUT_GRACE_DAYS), so that the
# month is cut and closed within the run with sales on both sides of its end. The idle
# week is not simulated: every node is switched off at HOLIDAY_AT and on again
# HOLIDAY_OFF later, its clock then HOLIDAY_DAYS on.
HOLIDAY_AT = 14 * HOUR
HOLIDAY_OFF = 10 * MINUTE
HOLIDAY_DAYS = closing.CUT_GRACE_DAYS + 1
BOTH_DIAL = 0.3  # the share of links both ends dial (crossing dials), one at least
PROBE_EVERY = 250_000  # µs between convergence checks after a heal
PROBE_LIMIT = 30 * MINUTE
# Every branch's cashier and manager (operators the head office adds at the start, as
# a chain's owner does before opening, all with the password OPERATOR_PASSWORD): the
# tills act as them, and a manager types it to approve a cashier's large amount.
ROLES_AT_TILLS = ("cashier", "manager")


def scenario_defaults(cfg: Config) -> Config:
    """Scenario-specific workload: hot-member has many shared cards."""
    if cfg.scenario == "hot-member" and cfg.hot_members == Config().hot_members:
        return cfg.with_(hot_members=max(8, cfg.nodes // 4))
    return cfg


def frame_kind(frame: bytes) -> str:
    """The message type of a sync frame ({"v": 1, "t": kind, ...}) without unpacking
    the whole frame; any other layout is unpacked."""
    if frame[1:3] == b"\xa1v" and frame[4:6] == b"\xa1t" and frame[6] & 0xE0 == 0xA0:
        return frame[7:7 + (frame[6] & 0x1F)].decode()
    try:
        return str(msgpack.unpackb(frame).get("t"))
    except Exception:
        return "?"


class World:
    # The adversaries of a run (--revoked, --forgers...): none in a world built by hand
    # (tests/transport_suite.py's SmallWorld), which delivery and rights answers ask.
    byz: Byzantine | None = None

    def __init__(self, config: Config) -> None:
        cfg = self.config = scenario_defaults(config)
        start = datetime.combine(date.fromisoformat(cfg.start), dt_time(0), ZoneInfo(ZONE))
        self._init_state(start, Path(tempfile.mkdtemp(prefix="crdtledger-sim-")))
        self._build()
        self.workload = Workload(self)
        self.faults: list[Fault] = schedule(self)
        counts = {role: getattr(cfg, role) for role in ROLES}
        if cfg.revoked_live and not cfg.revoked:
            raise ValueError("--revoked-live keeps the --revoked PCs connected: ask for one "
                             "with --revoked N")
        self.byz = Byzantine(self, counts) if any(counts.values()) else None

    def _init_state(self, start: datetime, root: Path) -> None:
        """The run's clock, trace, metrics and acknowledgements (before any node)."""
        cfg = self.config
        self.engine = Engine()
        self.trace = Trace(keep_all=cfg.keep_trace)
        self.rng_net = random.Random(f"{cfg.seed}:net")
        self.metrics = Metrics()
        self.epoch_ms = int(start.timestamp() * 1000)
        self.workload_end = cfg.days * DAY
        self.violation: Violation | None = None
        self.violation_at: int | None = None
        self.acked_entries: dict[str, str] = {}  # entry id -> node
        self.acked_by_node: dict[str, int] = {}
        self.acked_members: set[str] = set()
        self.acked_cards: set[str] = set()
        self.acked_rules: set[str] = set()
        self.acked_where: dict[str, str] = {}  # member or card id -> node that acknowledged it
        self.records_refused: dict[str, int] = {}  # node -> records it refused from peers
        self.converged = False
        self._books: dict[str, Any] | None = None
        self.holidays: list[str] = []  # months closed by a holiday week (`_holiday`)
        self._down: set[str] = set()
        self._probing = False
        self._began = 0.0
        self._last_hour = -1
        self.root = root
        # A chain at work for a season before the run: the months before the start are
        # its to close (one enrolled after a month is not waited for in it).
        self.ca = ChainCA("simchain", cfg.seed, enrolled=start - timedelta(days=90))
        self.oracle = Oracle(self)  # sim/oracles.py: entries and settlement by the rules
        # Node name -> role -> operator id (made at B01 at the start: `_operators`).
        self.operators: dict[str, dict[str, str]] = {}
        # A till's answer lost on its way back, the request sent again under its key:
        # a stream of its own, so that the workload's choices do not depend on it.
        self.rng_answers = random.Random(f"{cfg.seed}:answers")
        self.retrying = 0  # requests whose till is yet to send them again
        self.answers_lost = 0
        # A sync file carried across each partition (`_courier`): a stream of its own.
        self.rng_courier = random.Random(f"{cfg.seed}:courier")
        # Units of goods each branch should hold by what its tills were told (bought
        # in, sold, refunded back to the shelf), and the sales by id; a branch whose
        # stock operation died with its process may hold either outcome.
        self.stock_told: dict[str, int] = {}
        self.goods_sold: dict[str, tuple[str, int]] = {}
        self.stock_unsure: set[str] = set()
        self.couriered: list[dict[str, Any]] = []
        self.written_off = 0  # the daily passes' write-offs of expired points lots
        self.handshakes_refused: dict[str, int] = {}  # by either end (`_handshake`)
        # Live links an honest node dropped as the list it installed revoked the peer
        # (SimNode._load_revocations), by that peer.
        self.links_dropped: dict[str, int] = {}
        # Nodes killed between an acknowledgement and its flush (`killed_before_flush`).
        self.kills: list[dict[str, Any]] = []

    # --- the chain ----------------------------------------------------------------

    def _build(self) -> None:
        cfg = self.config
        n = cfg.nodes
        if n < 2:
            raise ValueError("a chain needs at least 2 nodes")
        width = max(2, len(str(n)))
        names = [f"B{i + 1:0{width}d}" for i in range(n)]
        topo = cfg.topology if cfg.topology != "auto" else ("mesh" if n <= 6 else "hub")
        if topo not in TOPOLOGIES:
            raise ValueError(f"unknown topology {topo!r}: one of {', '.join(TOPOLOGIES)}")
        self.topology = topo
        hubs = min(n, cfg.hubs or 2) if topo in ("hub", "tree") else 0
        regions = max(1, hubs) if hubs else 2
        self.region_of = [i * regions // n for i in range(n)]
        hub_of = {r: self.region_of.index(r) for r in range(regions)} if hubs else {}
        is_hub = {hub_of[r] for r in hub_of}
        # Sites share a LAN: a hub sits with the head-office store next to it, and every
        # sixth branch is a big store running a second node.
        site = list(range(n))
        for i in range(1, n):
            same_region = self.region_of[i] == self.region_of[i - 1]
            if same_region and ((i - 1) in is_hub or i % 6 == 5) and site[i - 1] == i - 1:
                site[i] = site[i - 1]
        site_of = {names[i]: site[i] for i in range(n)}
        # (pycrdt client ids are derived from node ids: the same in every run.)
        self.nodes = [SimNode(self, i, names[i], self.root / names[i], hub=i in is_hub)
                      for i in range(n)]
        self.by_name = {node.name: node for node in self.nodes}
        edges: set[tuple[int, int]] = set()
        if topo == "mesh":
            edges = {(i, j) for i in range(n) for j in range(i + 1, n)}
        else:
            for i in range(n):
                # hub: every shop dials every hub (redundant uplinks); tree: only the
                # hub of its region.
                targets = sorted(is_hub) if topo == "hub" else [hub_of[self.region_of[i]]]
                for h in targets:
                    if i != h and (h, i) not in edges:
                        edges.add((i, h))
            hub_list = sorted(is_hub)
            edges |= {(a, b) for a in hub_list for b in hub_list if a < b}
            for i in range(n):
                for j in range(i + 1, n):
                    if site[i] == site[j] and (j, i) not in edges:
                        edges.add((i, j))
        self.edges = sorted(edges)
        # Some links are configured at both ends (each branch's peers list names the
        # other), as shops set up by hand are: both dial, at the start and after every
        # cut, and NodeCore.link_opened keeps one of the crossing connections (the one
        # the smaller id dialled) on both sides. A stream of its own.
        rng_dials = random.Random(f"{cfg.seed}:dials")
        both = set(rng_dials.sample(self.edges, max(1, round(BOTH_DIAL * len(self.edges)))))
        for a, b in self.edges:
            self.nodes[a].dial_edges.append(names[b])
            if (a, b) in both:
                self.nodes[b].dial_edges.append(names[a])
        uplink = {node.name: HUB_UPLINK_BPS if node.hub else SHOP_UPLINK_BPS
                  for node in self.nodes}
        self.net = Network(self.engine, self.rng_net, site_of, uplink, self._deliver,
                           self._reset, dup=cfg.dup, reorder=cfg.reorder)

    def day_start(self, day: int) -> int:
        return day * DAY

    def local_offset(self, t: int) -> int:
        """Time of day in the chain's zone (Asia/Shanghai has no DST)."""
        return t % DAY

    # --- what nodes call ----------------------------------------------------------

    def connectivity(self, node: SimNode) -> str:
        if self._down or node.name in self.net.cut_nodes():
            return "partitioned"
        return "connected"

    def dial(self, node: SimNode, peer: str) -> None:
        """The core of `node` asked to connect to `peer`: a handshake over the network,
        then both cores hear of the link (and decide about crossing dials)."""
        target = self.by_name[peer]
        gen = node.gen
        now = self.engine.now
        self.trace(now, f"{node.name} dial {peer}")

        def done(conn: Connection | None) -> None:
            alive = node.up and node.gen == gen
            if conn is None or not alive or not target.up:
                if conn is not None:
                    conn.open = False
                    self.net.connections.pop(conn.id, None)
                if alive:
                    node.dial_failed(peer)
                return
            refused = self._handshake(node, target)
            if refused is not None:  # as peer.node: 403 at the acceptor, or the dialler
                conn.open = False
                self.net.connections.pop(conn.id, None)
                self.trace(self.engine.now, f"{node.name} dial {peer} refused: {refused}")
                for name in (node.name, peer):
                    self.handshakes_refused[name] = self.handshakes_refused.get(name, 0) + 1
                node.dial_failed(peer)
                return
            node.conns[conn.id] = conn
            target.conns[conn.id] = conn
            self.metrics.connects["connections"] += 1
            for p in self.metrics.probes:
                if p.converged_at is None and not p.interrupted and p.reconnected_at is None:
                    p.reconnected_at = self.engine.now
            self.trace(self.engine.now, f"{node.name} connected {peer} #{conn.id}")
            node.opened(conn, peer, node.name)
            if conn.open:  # the dialler may have refused it as a duplicate already
                target.opened(conn, node.name, node.name)

        self.net.connect(node.name, peer, done)

    @staticmethod
    def _handshake(node: SimNode, target: SimNode) -> str | None:
        """The TLS layer's word on a connection (peer.node `_accept` and `_dial`, both
        `Identity.check_peer` on the certificate the other end presented, against the
        list each installed): None, or why it is refused."""
        try:
            target.identity.check_peer(node.cert_der)
            node.identity.check_peer(target.cert_der, expect_node=target.name)
        except PeerRejected as e:
            return str(e)
        return None

    def _reset(self, conn: Connection, reason: str) -> None:
        now = self.engine.now
        self.trace(now, f"reset #{conn.id} {conn.dialer}-{conn.acceptor} {reason}")
        self.metrics.resets[reason.split(" at ")[0].split(":")[0].replace(
            conn.dialer, "node").replace(conn.acceptor, "node")] += 1
        for name in (conn.dialer, conn.acceptor):
            self.by_name[name].detach(conn)  # the cores redial as they see fit

    def _deliver(self, conn: Connection, to: str, frames: list[bytes]) -> None:
        now = self.engine.now
        m = self.metrics
        src = conn.other(to)
        for f in frames:
            kind = frame_kind(f)
            size = frame_size(f)
            m.frames[f"{conn.profile.name}:{kind}"] += 1
            m.frame_bytes[f"{conn.profile.name}:{kind}"] += size
            self.trace(now, f"{src}>{to} {kind} {size}")
        if self.byz is not None:  # --revoked-live: head office may revoke first
            self.byz.arriving(conn, to, frames)
        self.by_name[to].receive(conn, frames)

    def protocol_error(self, node: SimNode, conn: Connection, error: Exception) -> None:
        self.metrics.protocol_errors += 1
        self.trace(self.engine.now, f"{node.name} protocol error {error}")
        if not (self.config.reorder or self.config.dup):
            self.fail(Violation("protocol", f"{node.name} refused a frame from "
                                            f"{conn.other(node.name)} on an ordered, "
                                            f"reliable stream: {error}", node.name))

    def rights_answered(self, node: SimNode, event: RightsAnswered) -> None:
        now = self.engine.now
        self.trace(now, f"{node.name} gave {event.node} {event.member} {event.purse} "
                        f"{event.amount}")
        if self.byz is not None and event.node in self.byz.stolen:
            self.byz.answered(node, event)  # nothing to a PC the chain revoked
        if event.amount <= 0:
            self.metrics.transfers_answered_zero += 1
            return
        assert node.ledger is not None
        # The giver's transfer for this answer: the oldest one not yet accounted for
        # with this receiver, member, purse and amount (one batch of frames can carry
        # several requests, all granted before their events are read).
        match = None
        for e in views.newest_entries(node.ledger, node.name, "transfer", member=event.member,
                                      op=f"sync@{node.name}", limit=50):
            eid = e["id"]
            if (eid not in self.acked_entries and e["to"] == event.node
                    and e["amount"] == event.amount
                    and [event.purse, event.node, event.amount] in e["deltas"]):
                match = eid
        if match is None:
            self.fail(Violation("grant", f"{node.name} answered {event} without a transfer "
                                         "entry of that amount", node.name))
            return
        self._ack(match, node.name)
        self.metrics.grants += 1
        self.metrics.granted_amount += event.amount

    def rebalanced(self, node: SimNode, entry: dict[str, Any]) -> None:
        """The rebalancer's transfer is acknowledged like a till's write: it committed,
        so it must survive and reach every replica."""
        self.trace(self.engine.now, f"{node.name} rebalanced {entry['id']}")
        self._ack(str(entry["id"]), node.name)
        for purse, to, change in entry["deltas"]:
            if change > 0:
                self.metrics.rebalanced[str(purse)] += 1
                # Rights moved to a branch the giver cannot reach sit there, unspendable
                # by anyone else, until the partition heals (a mutant dropping the
                # check was caught by nothing).
                if to != node.name and to not in node.connected():
                    self.fail(Violation("rebalance", f"{node.name} moved {purse} rights to "
                                                     f"{to}, which it cannot reach", node.name))

    def housekept(self, node: SimNode, written: int) -> None:
        """The daily pass wrote entries (crdtledger.core: write-offs of expired points
        lots, points given back): they committed, so like the rebalancer's transfers
        they must survive and reach every replica. Found as the newest write-offs of
        this node's pass (op expiry@node) not acknowledged yet; a pass a crash cut
        short is found with the next one."""
        assert node.ledger is not None
        for e in reversed(views.newest_entries(node.ledger, node.name, "expiry",
                                               op=f"expiry@{node.name}",
                                               limit=written + 200)):
            if str(e["id"]) not in self.acked_entries:
                self.trace(self.engine.now, f"{node.name} wrote off {e['id']} "
                                            f"{e.get('points')}")
                self._ack(str(e["id"]), node.name)
                self.written_off += 1

    def booking_decided(self, node: SimNode, entry: dict[str, Any]) -> None:
        """A technician's branch decided on a booking on its own (crdtledger.bookings):
        acknowledged like the rebalancer's transfers, it must reach every replica."""
        self.trace(self.engine.now, f"{node.name} booking {entry['ref']} {entry['status']}")
        self._ack(str(entry["id"]), node.name)

    def _ack(self, entry_id: str, node: str) -> None:
        if entry_id in self.acked_entries:
            self.fail(Violation("duplicate", f"entry {entry_id} acknowledged twice", node))
        self.acked_entries[entry_id] = node
        self.acked_by_node[node] = self.acked_by_node.get(node, 0) + 1
        self.oracle.acknowledged(self.by_name[node], entry_id)

    def op_done(self, branch: int, label: str, outcome: Outcome, attempt: Attempt, *,
                debit: bool, op: Any = None) -> None:
        node = self.nodes[branch]
        self.oracle.done(node, label, outcome, attempt, op)
        now = self.engine.now
        m = self.metrics
        m.ops[label] += 1
        where = attempt.where
        if isinstance(op, Intent) and op.name in STOCK_OPS and not isinstance(
                outcome, LedgerError):
            self._stock_told(node.name, op, outcome)
        if isinstance(outcome, Crashed):
            m.crashed_in_flight += 1
            if debit:
                m.debit(now, where, "crashed")
            self.trace(now, f"{node.name} {label} lost in crash")
            return
        if isinstance(outcome, LedgerError):
            reason = type(outcome).__name__
            m.refused[f"{label}:{reason}"] += 1
            self.trace(now, f"{node.name} {label} refused {reason}")
            if debit:
                kind = ("rights" if isinstance(outcome, RightsElsewhere) else
                        "funds" if isinstance(outcome, InsufficientFunds) else "other")
                m.debit(now, where, kind)
            if attempt.started is not None:
                m.fetch_failed += 1
            return
        m.ok[label] += 1
        if isinstance(outcome, dict) and "id" in outcome:
            self._ack(str(outcome["id"]), node.name)
            if "stock_entry" in outcome:  # a goods sale's stock entry, in the same commit
                self._ack(str(outcome["stock_entry"]), node.name)
            self.trace(now, f"{node.name} {label} ok {outcome['id']} "
                            f"{outcome.get('amount', '')}")
        elif isinstance(outcome, list) and all(isinstance(e, dict) and "id" in e
                                               for e in outcome):
            # Entries of one commit (an operator's write-offs: one entry a lot).
            for e in outcome:
                self._ack(str(e["id"]), node.name)
            self.trace(now, f"{node.name} {label} ok {[e['id'] for e in outcome]}")
        else:
            self.trace(now, f"{node.name} {label} ok {outcome}")
            self.acked_where[str(outcome)] = node.name
            if label == "member":
                self.acked_members.add(str(outcome))
            elif label in ("card", "card.replace"):
                self.acked_cards.add(str(outcome))
                if label == "card":
                    self._ack_card_entry(node, str(outcome))
            elif label == "rule":
                self.acked_rules.add(str(outcome))
        if isinstance(op, Intent) and op.tag is not None:
            self._ack_tagged(node, op)
        if debit:
            m.debit(now, where, "ok")
            waited = attempt.waited_us
            if waited is not None:
                m.fetch_latency_ms.append(waited / 1000)

    def _ack_tagged(self, node: SimNode, intent: Intent) -> None:
        """Every entry the request wrote carries its key's tag (idempotency.tagging),
        and commits with the one its answer names: a sale's write-off of the member's
        expired points, for one, which the answer does not name. Acknowledged with
        it. Read from this branch's entries since the request was first sent (a
        primary-key range: ids start with their time)."""
        assert node.ledger is not None and intent.sent_ms is not None and intent.tag
        for eid in idempotency.written_under(node.ledger, intent.tag, intent.sent_ms - 1000):
            if eid not in self.acked_entries:
                self.trace(self.engine.now, f"{node.name} {intent.name} also wrote {eid}")
                self._ack(eid, node.name)

    def _ack_card_entry(self, node: SimNode, card_id: str) -> None:
        """issue_card returns the card's id; its ledger entry (the card sale) is the
        newest card entry written here."""
        assert node.ledger is not None
        newest = views.newest_entries(node.ledger, node.name, "card", limit=1)
        if not newest or newest[0].get("card") != card_id:
            self.fail(Violation("lost", f"card {card_id} issued without its entry", node.name))
            return
        self._ack(newest[0]["id"], node.name)

    @staticmethod
    def operator_name(role: str, node: str) -> str:
        return f"{'店长' if role == 'manager' else '收银'}{node}"

    def _operators(self) -> None:
        """The head office's owner adds a cashier and a manager for every branch (as
        reference_app/demo_data.py does), through the operation the API and the
        command line run; they reach the branches like any governance record."""
        hq = self.nodes[0]
        for node in self.nodes:
            for role in ROLES_AT_TILLS:
                def made(outcome: Outcome, attempt: Attempt, name: str = node.name,
                         role: str = role) -> None:
                    if not isinstance(outcome, dict):
                        raise RuntimeError(f"operator {role} of {name} not added: {outcome}")
                    self.operators.setdefault(name, {})[role] = str(outcome["operator_id"])

                hq.perform("operator", Intent("operator.add", {
                    "name": self.operator_name(role, node.name),
                    "password": OPERATOR_PASSWORD, "roles": [role]}, role="owner"), made)

    def key_ms(self) -> int:
        """An Idempotency-Key's clock: the time elapsed (peer.api.IdempotencyKeys runs
        it on the monotonic clock), not a branch's PC clock, which skews and jumps."""
        return self.epoch_ms + self.engine.now // 1000

    def answer_lost(self) -> bool:
        return self.rng_answers.random() < self.config.lost_answers

    def retry_later(self, node: SimNode, intent: Intent, label: str,
                    till: Callable[[Outcome, Attempt], None]) -> None:
        """The till heard nothing back: it sends the same request under the same key a
        few seconds later, to the same branch (again once the node is back up)."""
        self.retrying += 1
        self.answers_lost += 1
        self.trace(self.engine.now, f"{node.name} {label} answer lost, key {intent.key}")

        def send() -> None:
            if not node.up:
                self.engine.after(MINUTE, send)
                return
            self.retrying -= 1
            node.perform(label, intent, till, retried=True)

        self.engine.after(int(self.rng_answers.uniform(2, 30) * SECOND), send)

    def _stock_told(self, branch: str, op: Intent, outcome: Outcome) -> None:
        if isinstance(outcome, Crashed):
            if op.name != "refund" or str(op.given.get("debit_id")) in self.goods_sold:
                self.stock_unsure.add(branch)
            return
        qty = int(op.given.get("qty") or 0)
        if op.name == "stock.in":
            self.stock_told[branch] = self.stock_told.get(branch, 0) + qty
        elif op.name == "sell" and isinstance(outcome, dict):
            self.stock_told[branch] = self.stock_told.get(branch, 0) - qty
            self.goods_sold[str(outcome["id"])] = (branch, qty)
        elif op.name == "refund" and (sale := self.goods_sold.get(
                str(op.given.get("debit_id")))) is not None:
            # A goods sale is refunded whole, by the branch that made it (sim.workload):
            # its units back on that branch's shelf.
            self.stock_told[sale[0]] = self.stock_told.get(sale[0], 0) + sale[1]

    def check_node(self, node: SimNode) -> None:
        """After every step of a node that wrote anything: no rights row below zero."""
        if node.ledger is None:
            return
        version = node.ledger.storage.version
        if version == node.checked_version:
            return
        node.checked_version = version
        neg = checks.negative_rights(node.ledger)
        if neg is not None and self.honest(node.name):
            self.fail(Violation("negative", f"{node.name} holds a rights row below zero: "
                                            f"{neg}", node.name))

    @property
    def closed(self) -> set[str]:
        """Shops closing for good (sim.byzantine, role "closed"): no customer from then."""
        return set() if self.byz is None else self.byz.closing_shops(retired=False)

    @property
    def retired(self) -> set[str]:
        """Closed shops switched off for good: never restarted, out of the end checks."""
        return set() if self.byz is None else self.byz.closing_shops(retired=True)

    def serving(self, node: SimNode) -> bool:
        """Is this shop open to customers (up, and not closing for good)?"""
        return node.up and node.name not in self.closed

    def honest(self, name: str) -> bool:
        return self.byz is None or self.byz.honest(name)

    def honest_nodes(self) -> list[SimNode]:
        return [n for n in self.nodes if self.honest(n.name)]

    def refused_records(self, node: SimNode) -> None:
        self.records_refused[node.name] = self.records_refused.get(node.name, 0) + 1

    def node_down(self, node: SimNode) -> None:
        """A node taken down outside the scheduled faults (a restore)."""
        self._down.add(node.name)
        self._interrupt_probes()

    def node_restarted(self, node: SimNode, *, check: bool = True) -> None:
        self._restart(node, check=check)
        self._probe("restart")

    def _byzantine_tick(self) -> None:
        """Cheap Byzantine checks every simulated quarter hour (the rest at the end)."""
        self.engine.after(15 * MINUTE, self._byzantine_tick)
        for v in checks.byzantine_now(self):
            self.fail(v)

    def fail(self, violation: Violation) -> None:
        if self.violation is None:
            self.violation = violation
            self.violation_at = self.engine.now
            self.trace(self.engine.now, f"VIOLATION {violation}")
        raise violation

    # --- faults -------------------------------------------------------------------

    def _schedule_faults(self) -> None:
        for i, f in enumerate(self.faults):
            if i in self.config.fault_mask:
                continue
            self.engine.at(f.start, partial(self._fault_begin, i, f))
            if f.end is not None:
                self.engine.at(f.end, partial(self._fault_end, i, f))
            if f.kind in ("partition", "crash"):
                end = f.end if f.end is not None else self.workload_end
                self.metrics.partition_spans.append((f.start, end, f.kind))

    def _fault_begin(self, i: int, f: Fault) -> None:
        now = self.engine.now
        self.trace(now, f"fault {i} begins: {f.describe()}")
        if f.kind == "partition":
            self.net.add_cuts(f.cuts)
            self._interrupt_probes()
        elif f.kind == "crash":
            node = self.by_name[f.nodes[0]]
            if node.up:
                node.crash()
                self._down.add(node.name)
                self._interrupt_probes()
        elif f.kind in ("skew", "jump"):
            self.by_name[f.nodes[0]].skew_ms += f.ms

    def _fault_end(self, i: int, f: Fault) -> None:
        now = self.engine.now
        self.trace(now, f"fault {i} ends: {f.describe()}")
        if f.kind == "partition":
            self.net.remove_cuts(f.cuts)
            self._probe(f"{f.label}")
        elif f.kind == "crash":
            node = self.by_name[f.nodes[0]]
            if not node.up:
                self._restart(node)
                self._probe("restart")
                self._down.discard(node.name)
        elif f.kind == "jump":
            self.by_name[f.nodes[0]].skew_ms -= f.ms

    def _arm_kills(self) -> None:
        """`--kill-before-flush N`: N times a day, at a seeded time of business hours
        (not around the holiday's switch-off), a seeded node is armed: its next till
        write acknowledged at once is followed by its death before the flush."""
        rng = random.Random(f"{self.config.seed}:kills")
        for day in range(self.config.days):
            for _ in range(self.config.kill_before_flush):
                t = self.day_start(day) + rng.choice((
                    10 * HOUR + rng.randrange(3 * HOUR), 15 * HOUR + rng.randrange(5 * HOUR)))
                node = rng.choice(self.nodes)
                down = rng.randint(2 * SECOND, 90 * SECOND)
                self.engine.at(min(t, self.workload_end - HOUR),
                               partial(self._arm_kill, node, down))

    def _arm_kill(self, node: SimNode, down: int) -> None:
        if node.name not in self.retired:
            node.kill_armed = True
            node.kill_down = down

    def killed_before_flush(self, node: SimNode, label: str, wrote: str | None,
                            gen: int) -> None:
        """The process dies after its till's answer, before the flush its write queued
        (peer.node.Node's `call_soon(_flush_queued)`; here SimNode._flush_queued, due at
        this same instant): what was committed is kept, the frames are lost with it.
        Every check after a restart and at the end then wants the write everywhere."""
        if gen != node.gen or not node.up or node.core is None:
            return
        # What the dead process had yet to send, counted and dropped with it.
        unsent = sum(len(e.frames) for e in node.core.flush() if isinstance(e, Send))
        node.crash()
        self._down.add(node.name)
        self._interrupt_probes()
        self.kills.append({"node": node.name, "op": label, "wrote": wrote,
                           "frames_unsent": unsent, "at_s": self.engine.now / SECOND})
        self.trace(self.engine.now, f"{node.name} killed after {label} {wrote}, "
                                    f"{unsent} frames unsent")

        def back() -> None:
            if not node.up and node.name not in self.retired:
                self._restart(node)
                self._probe("restart")
                self._down.discard(node.name)

        self.engine.after(node.kill_down, back)

    def _courier(self) -> None:
        """A sync file across a partition, as a manager carries one on a USB stick
        (crdtledger.syncfile, through peer.files as the API's download and upload run
        it): exported at a branch for one it cannot reach, imported there 5-20 minutes
        later through the node's perform (the API's sync import), its frames flushed
        to that branch's peers as the node flushes an import's."""
        pairs = [(a, b) for a in self.honest_nodes() for b in self.honest_nodes()
                 if a is not b and a.up and b.up and a.ledger is not None
                 and b.name not in a.connected() and a.name not in self.closed
                 and b.name not in self.closed]
        if not pairs:
            return
        a, b = self.rng_courier.choice(pairs)
        assert a.ledger is not None
        data, info = export_bytes(a.ledger, a.operator("manager"), b.name)
        # (Not its size: Yrs encodes a map's keys in a per-process order.)
        self.trace(self.engine.now, f"courier {a.name}>{b.name} {info.get('records')} records")
        sent = {"from": a.name, "to": b.name, "records": info.get("records")}
        self.couriered.append(sent)
        pick = (self.rng_courier.random(), self.rng_courier.random())  # `_altered`
        sealer = a.ledger.trust

        def arrive() -> None:
            if not b.up or b.ledger is None:
                sent["imported"] = "down"
                return

            def done(outcome: Outcome, attempt: Attempt) -> None:
                if isinstance(outcome, dict) and "refused" in outcome:
                    outcome = outcome["refused"]
                if isinstance(outcome, RemoteProtocolError | LedgerError | Crashed):
                    sent["imported"] = type(outcome).__name__
                    # A forked log's two sides: a file is taken all or nothing, and one
                    # carrying the side the receiver does not hold is refused (as
                    # designed: crdtledger.syncfile).
                    forked = self.byz is not None and bool(self.byz.forks)
                    if not isinstance(outcome, Crashed) and not forked:
                        self.fail(Violation("syncfile", f"{b.name} refused {a.name}'s sync "
                                                        f"file: {outcome}", b.name))
                    return
                sent["imported"] = outcome.get("changed")
                self.trace(self.engine.now, f"courier {a.name}>{b.name} imported "
                                            f"{outcome.get('documents')}")

            manager = b.operator("manager")

            def take(lg: Any) -> Any:
                altered = _altered(sealer, data, lg.positions(), pick)
                if altered is not None:
                    # The copy a byte of one record altered on the way, sealed again by
                    # a holder of the chain's key: refused whole, nothing of it taken
                    # (a non-strict import took the records around the altered one).
                    held = lg.positions()
                    try:
                        import_bytes(lg, manager, altered)
                    except (RemoteProtocolError, LedgerError):
                        pass
                    else:
                        self.fail(Violation("syncfile", f"{b.name} took a sync file with "
                                                        f"a record altered", b.name))
                    if lg.positions() != held:
                        self.fail(Violation("syncfile", f"{b.name} refused an altered sync "
                                                        "file and kept some of it", b.name))
                try:
                    return import_bytes(lg, manager, data)
                except RemoteProtocolError as e:  # refused whole: nothing applied
                    return {"refused": e}

            b.perform("sync.import", take, done)

        self.engine.after(int(self.rng_courier.uniform(5, 20) * MINUTE), arrive)

    def _restart(self, node: SimNode, *, check: bool = True) -> None:
        if node.name in self.retired:  # a shop closed for good stays switched off
            return
        node.restart()
        self._down.discard(node.name)
        assert node.ledger is not None
        # A restored node lost what it acknowledged after its backup and never sent
        # (checked at the end instead: sim.byzantine.Byzantine.lost_to_restore).
        # A Byzantine branch's store holds what it forged with its own key or the
        # side of its fork nobody acknowledged (checked at the end instead).
        if not check or (self.byz is not None and (node.name in self.byz.restores
                                                   or not self.honest(node.name))):
            return
        count = views.count_entries(node.ledger, node=node.name)
        if count != self.acked_by_node.get(node.name, 0):
            # More than acknowledged: written twice, or by nobody's request.
            kind = "lost" if count < self.acked_by_node.get(node.name, 0) else "phantom"
            self.fail(Violation(kind, f"{node.name} restarted with {count} of its own "
                                        f"entries, {self.acked_by_node.get(node.name, 0)} "
                                        "were acknowledged", node.name))
        # In its documents too, not only its projection: the documents are what its log
        # and snapshots rebuild and what it sends (a record kept only in memory until
        # the next commit left the rows and lost the write, seen only at the end).
        missing = sorted({e for e, n in self.acked_entries.items() if n == node.name}
                         - checks.document_keys(node.ledger)[0])
        if missing:
            self.fail(Violation("lost", f"{node.name} restarted without {len(missing)} "
                                        f"acknowledged entries in its documents, e.g. "
                                        f"{missing[0]}", node.name))

    # --- convergence after a heal -------------------------------------------------

    def _probe(self, label: str) -> None:
        up = [n for n in self.honest_nodes() if n.up and n.ledger is not None]
        target: dict[tuple[str, int], int] = {}
        for n in up:
            assert n.ledger is not None
            for k, v in checks.clocks(n.ledger).items():
                if v > target.get(k, 0):
                    target[k] = v
        names = [n.name for n in up]
        probe = Probe(label, self.engine.now, target, names, set(names))
        # Another fault still holds some node apart: this heal cannot be measured on
        # its own (it is counted with the interrupted ones).
        probe.interrupted = bool(self.net.cuts or self._down)
        self.metrics.probes.append(probe)
        if not self._probing:
            self._probing = True
            self.engine.after(PROBE_EVERY, self._check_probes)

    def _interrupt_probes(self) -> None:
        for p in self.metrics.probes:
            if p.converged_at is None and not p.interrupted:
                p.interrupted = True

    def _check_probes(self) -> None:
        now = self.engine.now
        pending = False
        for p in self.metrics.probes:
            if p.converged_at is not None or p.interrupted:
                continue
            if now - p.healed_at > PROBE_LIMIT:
                continue
            for name in sorted(p.waiting):
                node = self.by_name[name]
                if not node.up or node.ledger is None:
                    p.interrupted = True
                    break
                if checks.covers(node.ledger, p.target):
                    p.waiting.discard(name)
            if not p.interrupted:
                if p.waiting:
                    pending = True
                else:
                    p.converged_at = now
                    self.trace(now, f"converged after {p.label} in "
                                    f"{(now - p.healed_at) / 1e6:.3f}s")
        if pending:
            self.engine.after(PROBE_EVERY, self._check_probes)
        else:
            self._probing = False

    # --- periodic work -------------------------------------------------------------

    def _snapshot_hot(self) -> None:
        self.engine.after(HOUR, self._snapshot_hot)
        hot = [m.id for m in self.workload.members if m.hot and m.id is not None]
        if not hot:
            return
        shot: dict[str, dict[str, int]] = {}
        for mid in hot:
            held: dict[str, int] = {}
            for node in self.nodes:
                if node.ledger is not None:
                    own = node.ledger.rights(mid, "cash").get(node.name, 0)
                    if own:
                        held[node.name] = own
            shot[mid] = held
        self.metrics.hot_rights.append((self.engine.now, shot))

    # --- the run ------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        wall = self._began = time.perf_counter()
        cfg = self.config
        try:
            try:
                self._start()
                self.engine.run(self.workload_end, progress=self._progress)
                self._quiesce()
                if self.violation is None:
                    for v in checks.final(self):
                        self.fail(v)
            except Violation:
                pass
            except (KeyboardInterrupt, SystemExit):
                raise
            except BaseException as e:  # a bug in the code under test (pyo3 panics too)
                where = "".join(traceback.format_exception(e, limit=-4)).strip()
                self.violation = Violation("exception", f"{type(e).__name__}: {e}\n{where}")
                self.violation_at = self.engine.now
                self.trace(self.engine.now, f"VIOLATION exception {type(e).__name__}: {e}")
        finally:
            if self.byz is not None:
                try:
                    self._byz_report: dict[str, Any] = checks.byzantine_report(self)
                except Exception as e:  # a node that died with the run's violation
                    self._byz_report = {**self.byz.summary(), "error": repr(e)}
            # How far the books are closed (the end check compared every replica's).
            self._books = next((closing.books(n.ledger) for n in self.nodes
                                if n.up and n.ledger is not None), None)
            self._close()
            if cfg.progress and sys.stderr.isatty():
                sys.stderr.write("\r\033[K")
                sys.stderr.flush()
        return self._result(time.perf_counter() - wall)

    def _start(self) -> None:
        self._operators()
        for node in self.nodes:
            node.boot()  # dials its configured peers, sets its anti-entropy and rebalancer
        self._schedule_faults()
        for i, f in enumerate(self.faults):
            # Not the single-link cuts: both ends still reach each other through a third.
            if (f.kind == "partition" and f.label != "link" and f.end is not None
                    and i not in self.config.fault_mask):
                self.engine.at(f.start + (f.end - f.start) // 3, self._courier)
        if self.byz is not None:
            self.byz.schedule()
            self.engine.after(15 * MINUTE, self._byzantine_tick)
        if self.config.kill_before_flush:
            self._arm_kills()
        self.workload.start()
        self.engine.at(HOUR, self._snapshot_hot)
        first = date.fromisoformat(self.config.start)
        for d in range(self.config.days):
            if (first + timedelta(days=d + 1)).day == 1:
                self.engine.at(self.day_start(d) + HOLIDAY_AT, self._holiday)

    def _holiday(self) -> None:
        """The chain's PCs are switched off for a holiday week and switched on again:
        their clocks then read the 8th of the next month, so each branch's daily pass
        cuts the month just ended (crdtledger.closing) and the books close with
        entries on both sides of the month's end."""
        now = self.engine.now
        self.trace(now, "holiday: every node off")
        off = [n for n in self.nodes if n.up]
        for node in off:
            node.crash()
            self._down.add(node.name)
        self._interrupt_probes()
        ms = HOLIDAY_DAYS * DAY // 1000
        for node in self.nodes:
            node.skew_ms += ms
        day = date.fromisoformat(self.config.start) + timedelta(days=now // DAY)
        self.holidays.append(day.isoformat()[:7])

        def back() -> None:
            self.trace(self.engine.now, "holiday over: nodes on")
            for node in off:
                if not node.up:
                    self._restart(node)
                    self._down.discard(node.name)
            self._probe("holiday")

        self.engine.after(HOLIDAY_OFF, back)

    def _progress(self, now: int) -> None:
        if not self.config.progress:
            return
        total = self.workload_end
        frac = min(1.0, now / total) if total else 1.0
        bar = "#" * int(frac * 30)
        line = (f"[{bar:<30}] {now / HOUR:6.1f}h of {total / HOUR:.0f}h  ops "
                f"{self.workload.ops}  wall {time.perf_counter() - self._began:.0f}s")
        if sys.stderr.isatty():
            sys.stderr.write("\r\033[K" + line)
        elif now // HOUR != self._last_hour:
            self._last_hour = now // HOUR
            sys.stderr.write(line + "\n")
        sys.stderr.flush()

    def _quiesce(self) -> None:
        """End of the workload: heal every fault, restart every node, and let anti-
        entropy bring the replicas together; they must agree within the limit."""
        now = self.engine.now
        self.trace(now, "heal all")
        self.net.remove_cuts(list(self.net.cuts))
        if self.byz is not None:
            self.byz.healed()  # a stolen PC revoked stays cut until every replica knows
        for node in self.nodes:
            if not node.up:
                self._restart(node)
        self._down.clear()
        self._interrupt_probes()
        self._probe("final")
        interval = int(self.config.ae_interval_s * SECOND)
        limit = now + int(self.config.quiesce_limit_s * SECOND)
        stable = 0
        while self.engine.now < limit:
            self.engine.run(self.engine.now + interval)
            if self._all_equal() and self._books_closed():
                stable += 1
                if stable >= 2:
                    self.converged = True
                    return
            else:
                stable = 0
        if self._all_equal():
            self.fail(Violation("books", f"replicas agree, but {max(self.holidays)} is not "
                                         "closed at every branch "
                                         f"{self.config.quiesce_limit_s:.0f} s after healing"))
        if self.byz is not None:
            views_ = {n.name: checks.honest_view(n.ledger) for n in self.honest_nodes()
                      if n.ledger}
            ref = next(iter(views_.values()))
            behind = [name for name, c in views_.items() if c != ref]
        else:
            states = {n.name: checks.clocks(n.ledger) for n in self.nodes if n.ledger}
            behind = [name for name, c in states.items()
                      if c != states[self.nodes[0].name]]
        self.fail(Violation("convergence", f"replicas still differ "
                                           f"{self.config.quiesce_limit_s:.0f} s after "
                                           f"healing: {behind[:5]}"))

    def _books_closed(self) -> bool:
        """After a holiday week, an honest chain's replicas wait until the month it
        ended is closed at every branch (each cuts it at its daily pass once its clock
        is confirmed: a branch cut off at the time does so after the heal)."""
        if not self.holidays or self.byz is not None:
            return True
        month = max(self.holidays)
        for node in self.nodes:
            if node.ledger is None:
                return False
            through = closing.books(node.ledger)["closed_through"]
            if through is None or through < month:
                return False
        return True

    def _all_equal(self) -> bool:
        if self.net.in_flight() or self.retrying:
            return False
        first: Any = None
        for node in self.nodes:
            if node.name in self.retired:
                continue
            if node.ledger is None or node.attempts:
                return False
            if not self.honest(node.name):
                continue
            # With Byzantine nodes: the honest replicas' logs, except those blocked
            # (checks.honest_view); else every replica's state vectors.
            c = (checks.clocks(node.ledger) if self.byz is None
                 else checks.honest_view(node.ledger))
            if first is None:
                first = c
            elif c != first:
                return False
        return True

    def _close(self) -> None:
        for node in self.nodes:
            node.close()
        shutil.rmtree(self.root, ignore_errors=True)

    def _result(self, wall_s: float) -> dict[str, Any]:
        cfg = self.config
        m = self.metrics
        v = self.violation
        ops = self.workload.ops
        summary = m.summary(cfg.ae_interval_s, self.net.traffic, ops)
        return {
            "seed": cfg.seed,
            "scenario": cfg.scenario,
            "nodes": cfg.nodes,
            "members": cfg.member_count,
            "days": cfg.days,
            "topology": self.topology,
            "hubs": sum(n.hub for n in self.nodes),
            "ae_interval_s": cfg.ae_interval_s,
            "violations": 0 if v is None else 1,
            "violation": None if v is None else {
                "kind": v.kind, "message": v.message, "node": v.node,
                "at_s": None if self.violation_at is None else self.violation_at / 1e6},
            "converged": self.converged and v is None,
            "books": self._books and {
                **{k: self._books[k] for k in ("closed_through", "behind")},
                "closing": (c := self._books["closing"]) and {
                    k: c[k] for k in ("month", "counted", "differ")}},
            "trace_digest": self.trace.digest(),
            "ops": ops,
            "answers_lost": self.answers_lost,  # and sent again under their keys
            "holidays": self.holidays,  # months closed by a holiday week
            "written_off": self.written_off,  # expired lots, by the daily passes
            "couriered": self.couriered,  # sync files carried across partitions
            **({"killed_before_flush": self.kills} if self.config.kill_before_flush else {}),
            "acknowledged": len(self.acked_entries) + len(self.acked_members),
            "faults": [f.describe() for i, f in enumerate(self.faults)
                       if i not in cfg.fault_mask],
            "sim_seconds": round(self.engine.now / 1e6, 3),
            "wall_seconds": round(wall_s, 2),
            "events": self.engine.events,
            "trace_lines": self.trace.lines,
            **summary,
            # Entries a replica held back for want of their funding (sim.node), summed
            # over replicas: the projection's deferral queue at work.
            "deferred_entries": sum(n.deferrals() for n in self.nodes),
            "deferred_by_node": {n.name: n.deferrals() for n in self.nodes if n.deferrals()},
            **({} if self.byz is None else {"byzantine": self._byz_report}),
            **self.oracle.report(),
            "reproduce": " ".join(cfg.argv()),
        }


def run(config: Config) -> tuple[dict[str, Any], World]:
    world = World(config)
    return world.run(), world


def _result(config: Config) -> dict[str, Any]:
    return run(config)[0]


def results_of(configs: Sequence[Config], jobs: int) -> Iterator[dict[str, Any]]:
    """Each run's result, in the order of `configs`, `jobs` runs at once. A run is a
    function of its config alone, so runs in parallel processes give what one process
    would: `jobs` only changes how long it takes. Spawned, not forked: the caller may
    hold threads (a test runner, an event loop) that a fork would copy half-way."""
    if jobs == 1 or len(configs) <= 1:
        yield from map(_result, configs)
        return
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(min(jobs, len(configs)), mp_context=context) as pool:
        yield from pool.map(_result, configs)


def _altered(sealer: Trust, data: bytes, held: Mapping[str, int],
             pick: tuple[float, float]) -> bytes | None:
    """`data`, a sync file `sealer` wrote, with one byte changed in the update of one
    record its receiver lacks (`held`: one it holds is skipped unread, as it may be),
    sealed again by `sealer`, as a holder of its key could; `pick` says which record
    and byte. None if the receiver lacks none."""
    sealed = unseal(sealer, data, syncfile.KIND, what="the courier's file")
    body = msgpack.unpackb(sealed.payload, raw=False, strict_map_key=True)
    lacked = [r for r in body["recs"] if r[1] > held.get(r[0], 0) and len(r[3]) > 8]
    if not lacked:
        return None
    rec = lacked[int(pick[0] * len(lacked))]
    at = 4 + int(pick[1] * (len(rec[3]) - 4))
    rec[3] = rec[3][:at] + bytes([rec[3][at] ^ 0x01]) + rec[3][at + 1:]
    return seal(sealer, syncfile.KIND, msgpack.packb(body, use_bin_type=True),
                sealed.created_ms)
