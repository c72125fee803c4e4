"""Realistic data sets for the scale benchmarks, written through the replication path.

Writing a million entries through `Ledger.debit`, one durable commit each, would take
hours. A node's history mostly arrives from its peers anyway, so this module plays
the chain instead: four branches, members joining over 24 months (most with a card),
top-ups (with the chain's promotion), service debits at the member's level discount,
rights transfers when a member is served away from where the value sits, and a few
refunds. Every branch keeps the escrow rules (it only spends rights it holds), so
the books are those a real chain could have written.

Each branch writes into its own scratch `pycrdt.Doc` per document (its own client
id, entry dicts exactly as `Ledger._entry` makes them, ids minted by
`crdtledger.hlc`). Each branch keeps its own signed log, one record per ledger entry
as a node's log has one per operation (a member shard's profiles and cards: one
record per branch) (crdtledger.log: records chained by hash, heads signed with the
key the data set's chain CA certified for it), and the node under test (branch B1)
receives the records with `Ledger.apply_batch(strict=True)`, batch by batch: the
same verification, write rules, projections and log as live sync and sync files.
Past documents are then compacted as a long-running node would have done; the
current month keeps a tail of single-entry updates, as live sync leaves it. The
result is checked (every entry projected, none quarantined, no branch's rights below
zero) and cached under `benchmarks/out/data/`, keyed by size and by the month it
ends in, so later runs reuse it and only copy it.

A data set is a chain of its own: `chain/` holds its CA (HQ enrolled as head office,
B1 as the store itself, `tls/`), `keys/` the other writers' identities, and
`members.batch` the records up to the end of the members (rules and member shards,
with heads signed there): what a node that knows the members but none of the ledger
holds (benchmarks.network's joining node).
"""

from __future__ import annotations

import bisect
import json
import random
import shutil
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import msgpack
from pycrdt import Array, Doc, Map

from crdtledger import audit, writerules
from crdtledger.escrow import grant_amount, shortfall_plan
from crdtledger.hlc import HybridClock, decode, wall_ms
from crdtledger.ledger import Ledger, owner_of
from crdtledger.log import GENESIS, Batch, Head, Record, head_message, record_hash
from crdtledger.model import DEFAULT_RULES, ledger_doc, member_doc
from crdtledger.money import apply_rate, points_for
from crdtledger.storage import DB_FILE, FORMAT_VERSION, PAGE_SIZE
from crdtledger.trust import TLS_DIR, Trust, load_trust

# Bump when the generated content or the storage layout changes, so stale caches
# are not reused (2: snapshots in their own table; 3: unique card numbers;
# 4: log keyed by document, no docs.tail; 5: state vector on the log row;
# 6: signed per-node logs, the data set its own chain CA, members.batch;
# 7: one log record per ledger entry; 8: an approval rule).
GEN_VERSION = 8
OUT = Path(__file__).resolve().parent / "out"  # git-ignored
TIMEZONE = "Asia/Shanghai"
NODES = ("HQ", "B1", "B2", "B3")
APPROVAL = {"topup_limit": 100_000_000, "correction_limit": 10_000, "stock_adjust_limit": 10_000}
NODE_WEIGHTS = (0.4, 0.25, 0.2, 0.15)  # where members register (their home branch)
BENCH_NODE = "B1"  # the node whose data directory is generated and measured
MONTHS = 24
# The current month ends with this many entries as single-entry updates (at most a
# tenth of the month): the uncompacted log tail a live node carries.
LIVE_TAIL = 1000
BATCH = 2000  # entries (one record each) per apply_batch call while back-filling
CHAIN = "bench"  # the chain id (and CA name) of every data set
CHAIN_DIR = "chain"  # inside a data set: its chain CA
KEYS_DIR = "keys"  # inside a data set: the identities of the writers other than B1
MEMBERS_BATCH = "members.batch"  # inside a data set: msgpack of a Batch's wire form

PROMOTIONS: list[dict[str, Any]] = [
    {"name": "充1000送100", "min": 100000, "bonus": 10000},
    {"name": "充3000送500", "min": 300000, "bonus": 50000},
]
TOPUPS = (50000, 100000, 200000, 300000, 500000)
TOPUP_WEIGHTS = (0.3, 0.35, 0.15, 0.15, 0.05)
SERVICES = ("FOOT60", "BODY90", "HAIR")
SERVICE_WEIGHTS = (0.5, 0.25, 0.25)
SURNAMES = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗"
GIVEN = "伟芳娜秀敏静丽强磊军洋勇艳杰娟涛明超秀兰霞平刚桂英"

Log = Callable[[str], None]
# crdtledger.writerules.client_id_for(node, epoch), in libraries that have it.
_CLIENT_ID_FOR: Callable[[str, int], int] | None = getattr(writerules, "client_id_for", None)


@dataclass(frozen=True)
class Size:
    members: int
    entries: int
    months: int = MONTHS

    @property
    def label(self) -> str:
        return f"{_short(self.members)} members / {_short(self.entries)} entries"

    def key(self, anchor: str) -> str:
        # The store's format, the client-id scheme and a new store's page size too: a
        # library that changed any of them refuses the old cache (or measures a store
        # it would no longer make).
        return (f"v{GEN_VERSION}-{self.members}m-{self.entries}e-{self.months}mo-{anchor}"
                f"-f{FORMAT_VERSION}{'-cid' if _CLIENT_ID_FOR else ''}-p{PAGE_SIZE}")


def _short(n: int) -> str:
    if n >= 1_000_000 and n % 1_000_000 == 0:
        return f"{n // 1_000_000}M"
    if n >= 1000 and n % 1000 == 0:
        return f"{n // 1000}k"
    return str(n)


def anchor_month(now_ms: int | None = None) -> str:
    ms = now_ms if now_ms is not None else time.time_ns() // 1_000_000
    return datetime.fromtimestamp(ms / 1000, ZoneInfo(TIMEZONE)).strftime("%Y-%m")


def dataset(size: Size, out: Path = OUT, log: Log = print) -> Path:
    """The cached data directory of this size, generated first if need be.

    The cache is read-only by convention: benchmarks work on `working_copy()`.
    """
    anchor = anchor_month()
    data = out / "data"
    target = data / size.key(anchor)
    if (target / "ready.json").exists():
        return target
    data.mkdir(parents=True, exist_ok=True)
    # The same size from an older generator, or ending in another month.
    for stale in data.glob(f"v*-{size.members}m-{size.entries}e-{size.months}mo-*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = data / (size.key(anchor) + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    log(f"generating data set {size.label} into {target} (once; cached)")
    started = time.perf_counter()
    stats = Generator(size, tmp, log).run()
    stats["generate_s"] = round(time.perf_counter() - started, 1)
    (tmp / "ready.json").write_text(json.dumps(stats, indent=2) + "\n")
    tmp.rename(target)
    log(f"generated in {stats['generate_s']} s: {json.dumps(stats)}")
    return target


def info(data_dir: Path) -> dict[str, Any]:
    return dict(json.loads((data_dir / "ready.json").read_text()))


def working_copy(data_dir: Path, dest: Path) -> Path:
    """A private copy to write to (the store and its identity as B1 of the data set's
    chain); the cached original stays as generated."""
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    shutil.copyfile(data_dir / DB_FILE, dest / DB_FILE)
    shutil.copytree(data_dir / TLS_DIR, dest / TLS_DIR)
    return dest


def members_batch(data_dir: Path) -> Batch:
    """The records of the rules and member documents, with heads signed where they
    end: what a node holds that knows the members and none of the ledger."""
    return Batch.from_wire(msgpack.unpackb((data_dir / MEMBERS_BATCH).read_bytes(),
                                           raw=False, strict_map_key=True))


# --- generation --------------------------------------------------------------------


@dataclass
class _Member:
    id: str
    created: int  # ms
    home: int  # index into NODES
    card: str | None
    card_no: str


class _Writer:
    """One branch's replica of one document: its own client id, updates as diffs."""

    def __init__(self, name: str, node: str, client_id: int, roots: tuple[str, ...]) -> None:
        self.name = name
        self.node = node
        self.doc: Doc[Any] = Doc(client_id=client_id)
        self.roots: dict[str, Map[Any]] = {r: self.doc.get(r, type=Map) for r in roots}
        self.sent = self.doc.get_state()
        self.dirty = False

    def set(self, root: str, key: str, value: Any) -> None:
        with self.doc.transaction():
            self.roots[root][key] = value
        self.dirty = True

    def take(self) -> tuple[str, str, bytes] | None:
        if not self.dirty:
            return None
        update = bytes(self.doc.get_update(self.sent))
        self.sent = self.doc.get_state()
        self.dirty = False
        return self.node, self.name, update


class _SignedLog:
    """One branch's log: its records chained by hash, its head signed with its key."""

    def __init__(self, trust: Trust, chain: str) -> None:
        self.trust = trust
        self.chain = chain
        self.seq = 0
        self.tip = GENESIS

    def record(self, doc: str, data: bytes) -> Record:
        self.seq += 1
        rec = Record(self.trust.node, self.seq, doc, data)
        self.tip = record_hash(self.tip, rec.node, rec.seq, doc, data)
        return rec

    def head(self) -> Head:
        msg = head_message(self.chain, self.trust.node, self.seq, self.tip)
        return Head(self.seq, self.tip, self.trust.sign(msg))


class Generator:
    def __init__(self, size: Size, directory: Path, log: Log) -> None:
        self.size = size
        self.dir = directory
        self.log = log
        self.rng = random.Random(f"crdtledger-bench-{GEN_VERSION}-{size.members}-{size.entries}")
        self.tz = ZoneInfo(TIMEZONE)
        self.now = time.time_ns() // 1_000_000
        self.end = self.now - 3_600_000  # history stops an hour ago
        first = date.fromisoformat(anchor_month(self.now) + "-01")
        for _ in range(size.months - 1):
            first = (first - timedelta(days=1)).replace(day=1)
        self.start = self._ms(first)
        # As the nodes' own where the library derives a node's client ids from its id
        # (a write rule then refuses any other), else random as before.
        self.client_ids = {n: _CLIENT_ID_FOR(n, 0) if _CLIENT_ID_FOR else
                           self.rng.getrandbits(47) * 2 + 1 for n in NODES}
        self.sim_ms = self.start
        self.members: list[_Member] = []
        self.created: list[int] = []
        n = len(NODES) * size.members
        # Escrow state per member and branch (index member * len(NODES) + node).
        self.cash = [0] * n
        self.bonus = [0] * n
        self.points = [0] * n
        self.topped = [0] * size.members
        self.recent: list[deque[tuple[dict[str, Any], int]]] = [deque(maxlen=64) for _ in NODES]
        self.written = 0
        self.kinds: dict[str, int] = {}
        self.clocks: dict[str, HybridClock] = {}
        self.writers: dict[str, _Writer] = {}
        self.queue: list[tuple[str, str, bytes]] = []  # records of entries, in order
        self.index: dict[str, int] = {}
        self.ledger: Ledger

    def _ms(self, d: date) -> int:
        return int(datetime(d.year, d.month, d.day, tzinfo=self.tz).timestamp() * 1000)

    def _clock(self, node: str) -> HybridClock:
        return HybridClock(node, 0, lambda: self.sim_ms)

    def _day(self, ms: int) -> str:
        return datetime.fromtimestamp(ms / 1000, self.tz).date().isoformat()

    # --- the run ---------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        from peer.chain import enrol, init_chain

        chain_dir = self.dir / CHAIN_DIR
        init_chain(chain_dir, name=CHAIN)
        Ledger.create(self.dir, BENCH_NODE, CHAIN, TIMEZONE)
        # Enrolled a day before the history begins: nothing of a branch is taken dated
        # before its enrolment (write rule `enrolled`).
        since = datetime.fromtimestamp(self.start / 1000, UTC) - timedelta(days=1)
        enrol(chain_dir, self.dir, BENCH_NODE, not_before=since)
        self.ledger = Ledger.open(self.dir, synchronous="OFF")
        self.logs: dict[str, _SignedLog] = {}
        for node in NODES:
            if node == BENCH_NODE:
                trust = self.ledger.trust
            else:
                home = self.dir / KEYS_DIR / node
                enrol(chain_dir, home, node, head_office=node == "HQ", not_before=since)
                trust = load_trust(home, CHAIN, node)
            self.logs[node] = _SignedLog(trust, CHAIN)
        self.members_wire: dict[str, Any] = {"recs": [], "heads": {}, "certs": {}}
        try:
            self._rules()
            self._members()
            (self.dir / MEMBERS_BATCH).write_bytes(
                msgpack.packb(self.members_wire, use_bin_type=True))
            self.members_wire = {}
            members_positions = {n: lg.seq for n, lg in self.logs.items() if lg.seq}
            self._ledger()
            stats = self._check()
            stats["log_positions"] = self.ledger.positions()
            stats["members_positions"] = members_positions
        finally:
            self.ledger.close()
        return stats

    def _apply(self, updates: list[tuple[str, str, bytes]]) -> None:
        """Each writer's updates as the next records of its log, with its head signed
        after them, applied at B1 as a session's batch (all or nothing)."""
        if not updates:
            return
        batch = Batch()
        for node, doc, data in updates:
            batch.recs.append(self.logs[node].record(doc, data))
        for node in dict.fromkeys(n for n, _, _ in updates):
            batch.heads[node] = self.logs[node].head()
            batch.certs[node] = self.logs[node].trust.cert_der
        self.ledger.apply_batch(batch, strict=True)
        if self.members_wire:  # still in the members: kept for the joining node
            wire = batch.to_wire()
            self.members_wire["recs"] += wire["recs"]
            self.members_wire["heads"].update(wire["heads"])
            self.members_wire["certs"].update(wire["certs"])

    def _rules(self) -> None:
        clock = self._clock("HQ")
        self.sim_ms = self.start
        w = _Writer("rules", "HQ", self.client_ids["HQ"], ("rules",))
        w.set("rules", clock.mint(), {"kind": "promotions", "effective_from": self._day(self.start),
                                      "body": json.dumps(PROMOTIONS, sort_keys=True)})
        # Top-ups without an approver count together for a member and an operator in a
        # day (Payments.topup): the benchmarks' own top-ups, as the owner, come on top of
        # the data set's of the day. They measure the durable write, not the approval.
        w.set("rules", clock.mint(), {"kind": "approval", "effective_from": self._day(self.start),
                                      "body": json.dumps(APPROVAL, sort_keys=True)})
        self._apply([u for u in [w.take()] if u])

    def _members(self) -> None:
        """Mint every member (and card) at its join time, then write them shard by shard."""
        size, rng = self.size, self.rng
        span = self.end - self.start
        imported = size.members * 3 // 10  # brought in from the old system in week one
        times = sorted(
            [self.start + rng.randrange(7 * 86_400_000) for _ in range(imported)]
            + [self.start + 7 * 86_400_000 + rng.randrange(span - 8 * 86_400_000)
               for _ in range(size.members - imported)]
        )
        clocks = {n: self._clock(n) for n in NODES}
        shards: dict[str, list[tuple[_Member, dict[str, Any]]]] = {}
        for i, t in enumerate(times):
            self.sim_ms = t
            home = rng.choices(range(len(NODES)), NODE_WEIGHTS)[0]
            node = NODES[home]
            mid = clocks[node].mint()
            card = clocks[node].mint() if rng.random() < 0.9 else None
            m = _Member(mid, t, home, card, f"8{i:011d}")
            self.members.append(m)
            self.created.append(t)
            shards.setdefault(member_doc(mid), []).append((m, self._profile(i, m)))
        for n, (name, items) in enumerate(sorted(shards.items())):
            writers = {node: _Writer(name, node, self.client_ids[node], ("members", "cards"))
                       for node in NODES}
            for m, profile in items:
                node = NODES[m.home]
                writers[node].set("members", m.id, _member_map(profile))
                if m.card is not None:
                    writers[node].set("cards", m.card, Map({
                        "card_no": m.card_no, "member": m.id, "type": "stored_value",
                        "pin": "", "expiry": "", "node": node,
                        "events": Array([[m.card, "active", ""]])}))
            self._apply([u for w in writers.values() if (u := w.take())])
            self.ledger.storage.evict_all()
            if n % 8 == 7:
                self.log(f"  members: {n + 1}/{len(shards)} shards")

    def _profile(self, i: int, m: _Member) -> dict[str, Any]:
        rng = self.rng
        node = NODES[m.home]
        name = rng.choice(SURNAMES) + "".join(rng.choices(GIVEN, k=rng.choice((1, 2))))
        prefs = {}
        if rng.random() < 0.4:
            prefs = {"strength": rng.choice(("轻", "中", "重")),
                     "service": rng.choice(SERVICES)}
        birthday = "" if rng.random() < 0.3 else \
            f"{rng.randint(1955, 2005)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
        return {"name": name, "phone": f"1{rng.choice('3578')}{i:09d}",
                "gender": rng.choice(("F", "M", "")), "birthday": birthday,
                "anniversary": "", "home": node, "notes": "", "created_by": owner_of(node),
                "prefs": prefs, "tags": {"VIP": True} if rng.random() < 0.05 else {},
                "custom": {}}

    # --- ledger entries -------------------------------------------------------

    def _months(self) -> list[tuple[str, int, int]]:
        out = []
        d = date.fromisoformat(self._day(self.start)).replace(day=1)
        while True:
            nxt = (d + timedelta(days=32)).replace(day=1)
            lo, hi = self._ms(d), min(self._ms(nxt), self.end)
            out.append((d.isoformat()[:7], lo, hi))
            if hi >= self.end:
                return out
            d = nxt

    def _ledger(self) -> None:
        months = self._months()
        cards = [m for m in self.members if m.card is not None]
        other = self.size.entries - len(cards)
        if other < len(months):
            raise ValueError(f"{self.size.entries} entries is too few for "
                             f"{self.size.members} members")
        # Activity in a month grows with the members who have joined by then.
        weights = []
        for _, lo, hi in months:
            joined = bisect.bisect_right(self.created, (lo + hi) // 2)
            weights.append(max(1, joined) * (hi - lo))
        quota = [int(other * w / sum(weights)) for w in weights]
        quota[-1] += other - sum(quota)
        card_times = [m.created for m in cards]
        self.clocks = {n: self._clock(n) for n in NODES}
        self.index = {m.id: k for k, m in enumerate(self.members)}
        for (month, lo, hi), q in zip(months, quota, strict=True):
            self._month(month, lo, hi, q, cards[bisect.bisect_left(card_times, lo):
                                                 bisect.bisect_left(card_times, hi)],
                        live=hi >= self.end)
            if month.endswith(("-06", "-12")) or hi >= self.end:
                self.log(f"  ledger/{month}: {self.written:,} entries so far")

    def _month(self, month: str, lo: int, hi: int, quota: int, cards: list[_Member],
               live: bool) -> None:
        name = ledger_doc(month)
        self.writers = {n: _Writer(name, n, self.client_ids[n], ("entries",)) for n in NODES}
        tail = min(LIVE_TAIL, quota // 10) if live else 0
        live_mode = False  # in the live tail: one update per entry, as live sync sends
        pending: list[tuple[str, str, bytes]] = []
        batched = self.written
        t = float(lo)
        ci = 0
        left = quota
        while left > 0 or ci < len(cards):
            # Next event: the next card issued, or the next visit (a Poisson process whose
            # rate is recomputed so the month's quota ends at the month's end).
            t = min(t + self.rng.expovariate(max(left, 1) / max(hi - t, 1.0)), hi - 1.0)
            if ci < len(cards) and (left <= 0 or cards[ci].created <= t):
                t = max(t, float(cards[ci].created))
                self._card(cards[ci], int(t))
                ci += 1
            else:
                left -= self._visit(int(t), single=left < 8)
            if live and not live_mode and left <= tail:
                # Compact what a long-running node would have compacted by now.
                self._flush(self._take())
                self._compact_all()
                live_mode = True
            elif live_mode:
                pending += self._take()
                if len(pending) >= 100:
                    self._flush(pending)
                    pending = []
            elif self.written - batched >= BATCH:
                self._flush(self._take())
                batched = self.written
        self._flush(pending + self._take())
        self.ledger.storage.evict_all()

    def _take(self) -> list[tuple[str, str, bytes]]:
        out, self.queue = self.queue, []
        return out + [u for w in self.writers.values() if (u := w.take()) is not None]

    def _flush(self, updates: list[tuple[str, str, bytes]]) -> None:
        self._apply(updates)

    def _compact_all(self) -> None:
        st = self.ledger.storage
        for name in audit.logged_documents(self.ledger):
            st.compact(name)
            st.evict_all()

    def _entry(self, kind: str, member: _Member, node: str, t: int, *,
               deltas: list[tuple[str, str, int]] | None = None, amount: int = 0,
               **extra: Any) -> dict[str, Any]:
        """An entry exactly as `Ledger._entry` shapes it, written by branch `node`."""
        self.sim_ms = t
        eid = self.clocks[node].mint()
        entry: dict[str, Any] = {
            "id": eid, "kind": kind, "member": member.id, "node": node,
            "op": extra.pop("op", owner_of(node)), "at": wall_ms(decode(eid.split(".")[0])),
            "amount": amount, "deltas": [list(d) for d in deltas or () if d[2] != 0],
        }
        entry.update({k: v for k, v in extra.items() if v is not None and v != ""})
        self.writers[node].set("entries", eid, entry)
        # One record per entry, as a node's log has one per operation it commits.
        taken = self.writers[node].take()
        if taken is not None:
            self.queue.append(taken)
        self.written += 1
        self.kinds[kind] = self.kinds.get(kind, 0) + 1
        return entry

    def _card(self, m: _Member, t: int) -> None:
        self._entry("card", m, NODES[m.home], t, amount=0, paid=0, card=m.card)

    def _visit(self, t: int, single: bool) -> int:
        """One member's visit to a branch: a top-up or a service, sometimes a refund.
        Returns the number of entries written (transfers come with a debit)."""
        rng = self.rng
        joined = bisect.bisect_right(self.created, t)
        if joined == 0:
            return 0
        if not single and rng.random() < 0.015:
            at = rng.randrange(len(NODES))
            if self.recent[at]:
                return self._refund(at, t)
        # Regulars visit more: skewed toward members who joined early.
        i = min(joined - 1, int(joined * rng.random() ** 1.6))
        m = self.members[i]
        at = m.home if rng.random() < 0.8 else rng.randrange(len(NODES))
        base = i * len(NODES)
        svc = rng.choices(SERVICES, SERVICE_WEIGHTS)[0]
        lvl = _level(self.topped[i])
        net = apply_rate(int(DEFAULT_RULES["services"][svc]["price"]), str(lvl["discount"]))
        cash = sum(self.cash[base:base + len(NODES)])
        bonus = sum(self.bonus[base:base + len(NODES)])
        from_cash = min(net, cash)
        from_bonus = net - from_cash
        if single or from_bonus > bonus:
            return self._topup(i, m, at, t)
        n = 0
        for purse, store, need in (("cash", self.cash, from_cash),
                                   ("bonus", self.bonus, from_bonus)):
            rights = {NODES[k]: store[base + k] for k in range(len(NODES))}
            for tr in shortfall_plan(rights, NODES[at], need, purse):
                g = NODES.index(tr.giver)
                give = grant_amount(store[base + g], tr.amount)
                store[base + g] -= give
                store[base + at] += give
                self._entry("transfer", m, tr.giver, t - 2000, amount=give,
                            deltas=[(purse, tr.giver, -give), (purse, NODES[at], give)],
                            to=NODES[at], op=f"sync@{tr.giver}")
                n += 1
        node = NODES[at]
        points = points_for(net, "1", str(lvl["points_multiplier"]))
        self.cash[base + at] -= from_cash
        self.bonus[base + at] -= from_bonus
        self.points[base + at] += points
        expires = (date.fromisoformat(self._day(t)) + timedelta(days=365)).isoformat()
        entry = self._entry(
            "debit", m, node, t,
            deltas=[("cash", node, -from_cash), ("bonus", node, -from_bonus),
                    ("points", node, points)],
            amount=net, gross=int(DEFAULT_RULES["services"][svc]["price"]),
            discount=str(lvl["discount"]), level=str(lvl["name"]), service=svc, qty=1,
            pay="stored", package=None, points=points or None, expires=expires)
        self.recent[at].append((entry, from_cash))
        return n + 1

    def _topup(self, i: int, m: _Member, at: int, t: int) -> int:
        amount = self.rng.choices(TOPUPS, TOPUP_WEIGHTS)[0]
        bonus, promo = 0, None
        for p in PROMOTIONS:
            if amount >= int(p["min"]) and int(p["bonus"]) > bonus:
                bonus, promo = int(p["bonus"]), str(p["name"])
        node = NODES[at]
        base = i * len(NODES)
        self.cash[base + at] += amount
        self.bonus[base + at] += bonus
        self.topped[i] += amount
        self._entry("topup", m, node, t, deltas=[("cash", node, amount), ("bonus", node, bonus)],
                    amount=amount, paid=amount, bonus=bonus or None, promotion=promo)
        return 1

    def _refund(self, at: int, t: int) -> int:
        debit, cash_taken = self.recent[at].popleft()
        i = self.index[debit["member"]]
        m = self.members[i]
        node = NODES[at]
        base = i * len(NODES)
        amount = int(debit["amount"])
        to_cash = min(amount, cash_taken)
        due = int(debit.get("points", 0))  # a whole refund takes back all points earned
        points = min(due, max(0, self.points[base + at]))
        self.cash[base + at] += to_cash
        self.bonus[base + at] += amount - to_cash
        self.points[base + at] -= points
        self._entry("refund", m, node, t,
                    deltas=[("cash", node, to_cash), ("bonus", node, amount - to_cash),
                            ("points", node, -points)],
                    amount=amount, ref=debit["id"], qty=None, points=points or None,
                    reason="", service=debit.get("service"))
        return 1

    # --- checks ----------------------------------------------------------------

    def _check(self) -> dict[str, Any]:
        store = audit.store_stats(self.ledger)
        stats: dict[str, Any] = {
            **{k: v for k, v in store.items() if k != "db_bytes"},
            "kinds": dict(sorted(self.kinds.items())),
            "first_day": self._day(self.start),
            "last_day": self._day(self.end),
            "skew_events": len(self.ledger.skew_events),
        }
        problems = []
        if stats["entries"] != self.written:
            problems.append(f"{self.written} entries written, {stats['entries']} projected")
        if stats["members"] != self.size.members:
            problems.append(f"{self.size.members} members written, {stats['members']} projected")
        for k in ("quarantine", "negative_rights", "skew_events"):
            if stats[k]:
                problems.append(f"{k}: {stats[k]}")
        if problems:
            raise RuntimeError("generated data set is invalid: " + "; ".join(problems))
        # The pages in use: the file's size once closing has checkpointed the WAL.
        stats["db_mb"] = round(store["db_bytes"] / 2**20, 1)
        return stats


def _member_map(profile: dict[str, Any]) -> Map[Any]:
    """The member record as `Ledger.add_member` writes it (nested Maps)."""
    return Map({**{k: v for k, v in profile.items() if k not in ("prefs", "tags", "custom")},
                "prefs": Map(profile["prefs"]), "tags": Map(profile["tags"]),
                "custom": Map(profile["custom"])})


def _level(topped: int) -> dict[str, Any]:
    """The default level rules on the default basis (cumulative top-ups), as views.level."""
    levels = sorted(DEFAULT_RULES["levels"], key=lambda lv: int(lv["threshold"]))
    current = levels[0]
    for lv in levels:
        if topped >= int(lv["threshold"]):
            current = lv
    return dict(current)
