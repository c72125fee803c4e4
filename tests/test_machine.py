"""Merge laws and money invariants of whole replicas, under a hostile network.

A hypothesis `RuleBasedStateMachine` runs three real nodes (SH01, SH02, SH03), each a
`Ledger` on its own SQLite file, connected pairwise by the real `SyncSession` objects
the branch node uses. Nothing is faked: frames are the bytes a session emits, and the
machine is the network. It delivers frames in order or out of order, drops and
duplicates them, starts anti-entropy rounds, and crashes nodes (in-flight frames are
lost) while the tills keep working: top-ups, debits (plain, priced services,
packages), refunds, points redeemed and converted, manual rights transfers and rights
requests answered by the peer's session, cards issued, lost, found and replaced,
member edits, new promotions.

Checked after every step, on every replica (and the rights rows after every frame):
- no rights row and no purse total below zero, there or over all entries anywhere;
- no entry breaks its kind's sign rules (a debit never credits value...);
- the projections are what the documents say (entries, members, cards, rights);
- everything a node acknowledged (the call returned) is still there, across crashes;
- a refused operation changed nothing and sent nothing.

`heal` (a rule, and always at teardown) delivers every queue in order, with
anti-entropy rounds, until quiet; then every replica holds the same documents, the
same projections, prints the same reports and balances, and holds exactly the
acknowledged entries, once each; one more round is two hellos per pair and nothing
else (commutative, associative, idempotent merge; no acknowledged entry lost).

At the end of the file: the histories the machine found, replayed as plain tests.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from crdtledger import closing, erasure, lots, views
from crdtledger.errors import (
    LedgerError,
    RemoteProtocolError,
    RightsElsewhere,
)
from crdtledger.hlc import id_time_ms
from crdtledger.ledger import Ledger
from crdtledger.model import ID
from crdtledger.projection import _as_plain, spent_topped
from crdtledger.storage import dumps
from crdtledger.sync import (
    ClockSkewSeen,
    RightsAnswered,
    RightsGranted,
    SyncSession,
    decode_state_vector,
    unpack,
)
from crdtledger.views import member_group

pytestmark = pytest.mark.slow

NODES = ("SH01", "SH02", "SH03")
PAIRS = [(a, b) for a in NODES for b in NODES if a != b]
# Each node edits its own member fields, so concurrent edits of one member touch
# different keys and must all survive the merge (DESIGN.md: field by field).
FIELD_OWNER = {"SH01": "notes", "SH02": "name", "SH03": "gender"}
FIELD_VALUES = {"notes": ["", "VIP", "likes tea", "allergic"],
                "name": ["Wang", "Li", "Zhang", "Chen"],
                "gender": ["", "F", "M"]}
PREF_OWNER = {"SH01": "strength", "SH02": "service", "SH03": "technician"}
# What a session may legitimately refuse when the network reorders or duplicates
# frames (a real transport is ordered; the contract is: close the connection).
TRANSPORT_FAULTS = ("before hello", "reply to unknown rights request")

node_st = st.sampled_from(NODES)
pair_st = st.sampled_from(PAIRS)
pick = st.integers(min_value=0, max_value=2**16)
money = st.integers(min_value=1, max_value=12_000)
# Top-ups are round sums; debits mostly small, so balances run out sometimes, not always.
topup_st = st.sampled_from([5_000, 10_000, 20_000, 50_000]) | money
small = st.integers(min_value=1, max_value=3_000) | money
purse_st = st.sampled_from(["cash", "cash", "bonus", "points"])

# 1,000 histories per suite run, as issue 2 asks, of up to 32 steps: the suite's
# budget is about 20 minutes on CI's 2 cores, and 500 of 60 steps took 2.3 of them.
# Longer histories, e.g. before a release:
# MACHINE_EXAMPLES=5000 MACHINE_STEPS=60 .venv/bin/python -m pytest tests/test_machine.py
EXAMPLES = int(os.environ.get("MACHINE_EXAMPLES", "1000"))
STEPS = int(os.environ.get("MACHINE_STEPS", "32"))
REFUSED = object()
# Histories must replay exactly (hypothesis shrinks by replaying), so the wall clock
# is fixed: 2026-03-01 10:00 in Shanghai, one simulated millisecond per reading,
# shared by all nodes as on one LAN with NTP. (The pycrdt client ids are derived from
# the node ids, writerules.client_id_for: the same in every run.)
START_MS = 1_772_330_400_000
SHANGHAI = ZoneInfo("Asia/Shanghai")  # the stores' zone (Ledger.create's default)


class SimClock:
    def __init__(self) -> None:
        self.ms = START_MS

    def __call__(self) -> int:
        self.ms += 1
        return self.ms


def _states(ledger: Ledger) -> dict[str, dict[int, int]]:
    return {n: decode_state_vector(sv) for n, sv in ledger.state_vectors().items()}


def _rows(ledger: Ledger, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    return [tuple(r) for r in ledger.storage.conn.execute(sql, args)]


def _snapshot(ledger: Ledger) -> tuple[Any, ...]:
    """Everything a refused operation must leave as it was."""
    return (
        ledger.state_vectors(),
        _rows(ledger, "SELECT member, purse, node, amount FROM rights ORDER BY 1, 2, 3"),
        _rows(ledger, "SELECT id, body FROM entries ORDER BY id"),
        _rows(ledger, "SELECT id, body FROM members ORDER BY id"),
        _rows(ledger, "SELECT id, status, body FROM cards ORDER BY id"),
        _rows(ledger, "SELECT doc, key FROM quarantine"),
        _rows(ledger, "SELECT doc, key FROM deferred"),
    )


def _month_end_by_documents(ledger: Ledger, month: str, by_doc: dict[str, set[str]]
                            ) -> closing.MonthEnd:
    """The balances at the end of `month` as the design defines them, worked out the
    long way: the entries of the ledger documents of that month and before, summed."""
    ids = set().union(*(keys for name, keys in by_doc.items() if name <= f"ledger/{month}"))
    rights: dict[tuple[str, str, str], int] = {}
    totals: dict[str, tuple[int, int]] = {}
    for (body,) in _rows(ledger, "SELECT body FROM entries"):
        e = json.loads(body)
        if e["id"] not in ids:
            continue
        for purse, node, change in e["deltas"]:
            key = (e["member"], purse, node)
            rights[key] = rights.get(key, 0) + change
        spent, topped = spent_topped(e)
        was = totals.get(e["member"], (0, 0))
        totals[e["member"]] = (was[0] + spent, was[1] + topped)
    # The points lots by id, not by document: every group replayed up to the month's
    # end in the latest zone.
    conn, cut = ledger.storage.conn, closing._turn_ids(month)[1]
    groups = {views.member_group(conn, m)[0]: views.member_group(conn, m)
              for (m,) in conn.execute("SELECT DISTINCT member FROM entries").fetchall()}
    held = sorted((lot[3], lot[2], lot[0], lot[1]) for group in groups.values()
                  for lot in lots.replay(conn, group, cut) if lot[1])
    return closing.MonthEnd.of(month, sorted(rights.items()), sorted(totals.items()), held)


def check_entry_signs(entry: dict[str, Any]) -> None:
    """Each kind of entry moves value only in its own direction, and balances."""
    d: dict[str, int] = {}
    for purse, node, change in entry["deltas"]:
        assert node == entry["node"] or entry["kind"] == "transfer", entry
        d[purse] = d.get(purse, 0) + change
    kind = entry["kind"]
    if kind == "topup":
        assert d.get("cash", 0) == entry["amount"] > 0, entry
        assert d.get("bonus", 0) >= 0, entry
    elif kind == "debit" and entry.get("pay") == "stored":
        assert d.get("cash", 0) <= 0 and d.get("bonus", 0) <= 0, entry
        assert -(d.get("cash", 0) + d.get("bonus", 0)) == entry["amount"], entry
        assert d.get("points", 0) >= 0, entry
    elif kind == "refund":
        assert d.get("cash", 0) >= 0 and d.get("bonus", 0) >= 0, entry
        assert d.get("points", 0) <= 0, entry
    elif kind == "transfer":
        assert all(v == 0 for v in d.values()), entry
        (giver,) = [n for _p, n, c in entry["deltas"] if c < 0]
        assert giver == entry["node"], entry
    elif kind == "redeem":
        assert set(d) == {"points"} and d["points"] == -entry["points"] < 0, entry
    elif kind == "card":
        assert d == {}, entry
    elif kind == "debit" and entry.get("pay") == "package":
        (pkg,) = [p for p in d if p.startswith("pkg:")]
        assert pkg == f"pkg:{entry['package']}" and d[pkg] == -entry["qty"], entry
        assert d.get("cash", 0) == d.get("bonus", 0) == 0, entry
    elif kind == "package":
        assert d[f"pkg:{entry['id']}"] == entry["qty"] > 0, entry
        paid = -(d.get("cash", 0) + d.get("bonus", 0))
        assert d.get("cash", 0) <= 0 and d.get("bonus", 0) <= 0, entry
        assert paid == (entry["amount"] if entry["pay"] == "stored" else 0), entry
    elif kind == "convert":
        assert d.get("points", 0) == -entry["points"] < 0 < d.get("bonus", 0), entry


class LedgerMachine(RuleBasedStateMachine):
    histories = 0  # torn down (run to their end), counted: issue 2 asks for 1,000 a run

    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp(prefix="crdtledger-machine-"))
        self.ledgers: dict[str, Ledger] = {}
        self._seen: dict[str, dict[str, tuple[sqlite3.Connection, Any]]] = {}
        self.clock = SimClock()
        for node in NODES:
            Ledger.create(self.tmp / node, node)
            # synchronous=NORMAL with WAL loses no committed transaction when the
            # *process* dies (the WAL is in the OS page cache); only a power cut can
            # lose the last commits. A crash here is a process crash, so acknowledged
            # operations must survive it exactly as with FULL, only faster.
            self.ledgers[node] = self._open(node)
        # A promotion, so that top-ups also exercise the bonus purse; it reaches the
        # other nodes through sync like any rule.
        self.ledgers["SH01"].set_rule(self.owner("SH01"), "promotions",
                                      [{"min": 5000, "bonus": 700, "name": "top up 50"}])
        # Rights go only to a branch the chain knows (Payments._require_branch): each
        # store lists the three from the start, so that no transfer is refused for a
        # branch not yet heard from and every one is exercised as before.
        for node in NODES:
            self.ledgers[node].set_rule(self.owner(node), "branches",
                                        {n: n for n in NODES}, effective_from="2000-01-01")
        self.sessions: dict[tuple[str, str], SyncSession] = {}
        self.queues: dict[tuple[str, str], list[bytes]] = {}
        for a, b in PAIRS:
            if a < b:
                self._connect(a, b)
        # The model: what each node acknowledged.
        self.acked: dict[str, set[str]] = {n: set() for n in NODES}  # entry ids
        self.members: list[str] = []
        self.member_home: dict[str, str] = {}
        self.debits: dict[str, list[str]] = {n: [] for n in NODES}
        self.cards: list[tuple[str, str]] = []  # (card id, card number)
        self.card_events: dict[str, set[str]] = {}  # card id -> acked event ids
        self.events_at: dict[str, set[tuple[str, str]]] = {n: set() for n in NODES}
        self.fields: dict[tuple[str, str], str] = {}  # (member, field) -> last acked
        self.prefs: dict[tuple[str, str], str] = {}
        self.waiting: dict[str, list[tuple[str, int]]] = {n: [] for n in NODES}
        self.packages: dict[str, list[str]] = {}  # member -> package ids
        self.granted: dict[str, int] = {n: 0 for n in NODES}
        self.phones: dict[str, str] = {}  # member -> phone (unique: what erasure removes)
        self.erased: set[str] = set()
        self.serial = 0
        self.faults = 0

    def _open(self, node: str) -> Ledger:
        return Ledger.open(self.tmp / node, synchronous="NORMAL", now_ms=self.clock)

    def owner(self, node: str) -> str:
        return self.ledgers[node].owner

    # --- the network --------------------------------------------------------

    def _connect(self, a: str, b: str) -> None:
        for x, y in ((a, b), (b, a)):
            old = self.sessions.get((x, y))
            if old is not None:
                old.close()
            self.sessions[(x, y)] = SyncSession(self.ledgers[x], expect_node=y)
            self.queues[(x, y)] = []
        for x, y in ((a, b), (b, a)):
            self.sessions[(x, y)].start()
        self._flush()

    def _flush(self) -> None:
        for key, session in self.sessions.items():
            self.queues[key].extend(session.data_to_send())

    def _deliver(self, src: str, dst: str, frame: bytes) -> None:
        """Hand one frame to dst's session for src, as the transport would."""
        session = self.sessions[(dst, src)]
        try:
            session.receive(frame)
        except RemoteProtocolError as e:
            # Only a reordered or duplicated frame may be refused; anything else is a
            # bug in a session or in the ledger. Either way the connection is closed
            # and a new one made, as the branch node does.
            assert any(f in str(e) for f in TRANSPORT_FAULTS), repr(e)
            self.faults += 1
            self._connect(src, dst)
            return
        # Not only between steps: no frame may leave a rights row below zero, even
        # for a moment inside a burst or a full sync.
        neg = _rows(self.ledgers[dst], "SELECT * FROM rights WHERE amount < 0")
        assert not neg, f"{dst}: negative rights {neg} after a frame from {src}"
        self._drain_events(dst, session)
        self._flush()

    def _drain_events(self, node: str, session: SyncSession) -> None:
        while (ev := session.next_event()) is not None:
            assert not isinstance(ev, ClockSkewSeen), ev
            if isinstance(ev, RightsGranted) and ev.amount > 0:
                self.granted[node] += 1
            if isinstance(ev, RightsAnswered) and ev.amount > 0:
                # The giver wrote a transfer entry: acknowledged there like any other.
                (eid, body) = self.ledgers[node].storage.conn.execute(
                    "SELECT id, body FROM entries WHERE node = ? AND kind = 'transfer' "
                    "AND op = ? ORDER BY id DESC LIMIT 1", (node, f"sync@{node}")
                ).fetchone()
                assert eid not in self.acked[node]
                entry = json.loads(body)
                assert entry["amount"] == ev.amount and entry["to"] == ev.node
                self.acked[node].add(eid)

    @initialize(homes=st.lists(node_st, min_size=1, max_size=3),
                amounts=st.lists(topup_st, min_size=3, max_size=3))
    def seed_members(self, homes: list[str], amounts: list[int]) -> None:
        """Start from members every branch knows, with stored value at their home."""
        for home, amount in zip(homes, amounts, strict=False):
            self.add_member(home)
            self.topup(home, len(self.members) - 1, amount)
        self._full_sync()

    @rule(pair=pair_st)
    def deliver_next(self, pair: tuple[str, str]) -> None:
        """In order, as on a websocket."""
        if self.queues[pair]:
            self._deliver(*pair, self.queues[pair].pop(0))

    @rule(pair=pair_st, index=pick)
    def deliver_reordered(self, pair: tuple[str, str], index: int) -> None:
        q = self.queues[pair]
        if q:
            self._deliver(*pair, q.pop(index % len(q)))

    @rule(pair=pair_st, count=st.integers(min_value=1, max_value=20))
    def deliver_burst(self, pair: tuple[str, str], count: int) -> None:
        for _ in range(count):
            if not self.queues[pair]:
                break
            self._deliver(*pair, self.queues[pair].pop(0))

    @rule(pair=pair_st, index=pick)
    def drop(self, pair: tuple[str, str], index: int) -> None:
        q = self.queues[pair]
        if q:
            q.pop(index % len(q))

    @rule(pair=pair_st, index=pick)
    def duplicate(self, pair: tuple[str, str], index: int) -> None:
        q = self.queues[pair]
        if q:
            i = index % len(q)
            q.insert(i, q[i])

    @rule(pair=pair_st)
    def anti_entropy(self, pair: tuple[str, str]) -> None:
        self.sessions[pair].anti_entropy()
        self._flush()

    @rule(node=node_st)
    def crash_and_reopen(self, node: str) -> None:
        """The process dies: its connections and every frame in flight to or from it
        are gone. It restarts from its data directory and reconnects."""
        for (a, b), session in self.sessions.items():
            if node in (a, b):
                session.close()
                self.queues[(a, b)].clear()
        self.ledgers[node].close()
        self.ledgers[node] = self._open(node)
        # What its node core does a minute after start (housekeeping): finish the
        # redaction of its own records into members erased lately.
        for entry in erasure.redact_erased(self.ledgers[node]):
            self.acked[node].add(entry["id"])
        for other in NODES:
            if other != node:
                self._connect(node, other)

    # --- operations at the tills -----------------------------------------------

    def _op(self, node: str, fn: Any, *args: Any, refusals: tuple[type[BaseException], ...]
            = (LedgerError,), **kwargs: Any) -> Any:
        """Run an operation; a refusal must leave the replica untouched and send nothing."""
        ledger = self.ledgers[node]
        self._flush()
        before = _snapshot(ledger)
        try:
            result = fn(*args, **kwargs)
        except refusals:
            assert _snapshot(ledger) == before, "a refused operation changed the store"
            for (a, _b), session in self.sessions.items():
                if a == node:
                    assert session.data_to_send() == [], "a refused operation sent frames"
            return REFUSED
        # The sweeps of merged members' rights a merge or an operation for a survivor
        # wrote here (crdtledger.merge), and the write-offs of expired points a spend of
        # points writes first in its commit (Payments._spend_points: two years of
        # closed months, then a conversion), are acknowledged writes too.
        self.acked[node].update(r[0] for r in _rows(
            ledger, "SELECT id FROM entries WHERE kind IN ('merge', 'expiry') AND node = ?",
            node))
        self._flush()
        return result

    def _ack_entry(self, node: str, entry: Any) -> bool:
        if entry is REFUSED:
            return False
        assert isinstance(entry, dict)
        assert entry["id"] not in self.acked[node]
        self.acked[node].add(entry["id"])
        return True

    def _member(self, i: int) -> str:
        return self.members[i % len(self.members)]

    @precondition(lambda self: len(self.members) < 6)
    @rule(node=node_st)
    def add_member(self, node: str) -> None:
        self.serial += 1
        mid = self._op(node, self.ledgers[node].add_member, self.owner(node),
                       name=f"M{self.serial}", phone=f"139{self.serial:08d}")
        assert mid is not REFUSED and ID.match(mid)
        self.phones[mid] = f"139{self.serial:08d}"
        self.members.append(mid)
        self.member_home[mid] = node

    @precondition(lambda self: self.members)
    @rule(node=node_st, m=pick, amount=topup_st)
    def topup(self, node: str, m: int, amount: int) -> None:
        ledger = self.ledgers[node]
        self._ack_entry(node, self._op(node, ledger.topup, self.owner(node), self._member(m),
                                       amount))

    @precondition(lambda self: self.members)
    @rule(node=node_st, m=pick, amount=small)
    def debit(self, node: str, m: int, amount: int) -> None:
        ledger = self.ledgers[node]
        entry = self._op(node, ledger.debit, self.owner(node), self._member(m), amount=amount)
        if self._ack_entry(node, entry):
            self.debits[node].append(entry["id"])

    @precondition(lambda self: self.members)
    @rule(node=node_st, m=pick, service=st.sampled_from(["FOOT60", "HAIR"]))
    def debit_service(self, node: str, m: int, service: str) -> None:
        """A priced service: the member's level discount applies."""
        ledger = self.ledgers[node]
        entry = self._op(node, ledger.debit, self.owner(node), self._member(m),
                         service=service)
        if self._ack_entry(node, entry):
            self.debits[node].append(entry["id"])

    def _purse(self, member: str, purse: str, p: int) -> str:
        """`purse`, or now and then one of the member's packages."""
        packages = self.packages.get(member, [])
        return f"pkg:{packages[p % len(packages)]}" if packages and p % 3 == 0 else purse

    @precondition(lambda self: self.members)
    @rule(node=node_st, m=pick, amount=small, purse=purse_st, to=node_st, p=pick)
    def transfer_rights(self, node: str, m: int, amount: int, purse: str, to: str,
                        p: int) -> None:
        if to == node:
            return
        ledger = self.ledgers[node]
        member = self._member(m)
        purse = self._purse(member, purse, p)
        # Mostly what this branch can give; sometimes more (then it must refuse).
        own = ledger.rights(member, purse).get(node, 0)
        if own > 0 and amount % 4:
            amount = 1 + amount % own
        self._ack_entry(node, self._op(node, ledger.transfer_rights, self.owner(node),
                                       member, to, amount, purse))

    @precondition(lambda self: self.members)
    @rule(pair=pair_st, m=pick, amount=small, purse=purse_st, p=pick)
    def request_rights(self, pair: tuple[str, str], m: int, amount: int, purse: str,
                       p: int) -> None:
        """Ask a peer for rights; its session answers when the frame arrives."""
        session = self.sessions[pair]
        if session.peer is None:
            return  # the peer's hello has not arrived yet: a node cannot ask yet
        member = self._member(m)
        session.request_rights(member, self._purse(member, purse, p), amount)
        self._flush()

    @precondition(lambda self: self.members)
    @rule(node=node_st, m=pick, amount=small)
    def debit_or_ask(self, node: str, m: int, amount: int) -> None:
        """What a till does: debit; if the rights sit elsewhere, ask the richest holder."""
        ledger = self.ledgers[node]
        member = self._member(m)
        try:
            entry = ledger.debit(self.owner(node), member, amount=amount)
        except RightsElsewhere as e:
            if e.branch is not None and e.branch != node:
                session = self.sessions[(node, e.branch)]
                if session.peer is not None:
                    session.request_rights(member, e.purse, e.shortfall)
                    self.waiting[node].append((member, amount))
            self._flush()
            return
        except LedgerError:
            return  # InsufficientFunds, or the member is not known here yet
        self._flush()
        self._ack_entry(node, entry)
        self.debits[node].append(entry["id"])

    @precondition(lambda self: self.members)
    @rule(node=node_st, m=pick, amount=small)
    def swipe_and_wait(self, node: str, m: int, amount: int) -> None:
        """The usual cross-branch swipe on a good link: the till asks the richest holder
        for rights, the two branches talk until done, the till swipes again. What the
        third branch hears, and when, is left to the other rules."""
        ledger = self.ledgers[node]
        member = self._member(m)
        try:
            entry = ledger.debit(self.owner(node), member, amount=amount)
        except RightsElsewhere as e:
            session = self.sessions[(node, e.branch)] if e.branch else None
            if session is None or session.peer is None:
                return
            session.request_rights(member, e.purse, e.shortfall)
            self._flush()
            for _ in range(100):
                busy = [p for p in ((node, e.branch), (e.branch, node)) if self.queues[p]]
                if not busy:
                    break
                for pair in busy:
                    self._deliver(*pair, self.queues[pair].pop(0))
            entry = self._op(node, ledger.debit, self.owner(node), member, amount=amount)
        except LedgerError:
            return
        self._flush()
        if self._ack_entry(node, entry):
            self.debits[node].append(entry["id"])

    @precondition(lambda self: any(self.waiting.values()))
    @rule(node=node_st, i=pick)
    def retry_waiting_debit(self, node: str, i: int) -> None:
        """The customer is still at the till: once rights came in, swipe again."""
        if not self.waiting[node] or not self.granted[node]:
            return
        member, amount = self.waiting[node].pop(i % len(self.waiting[node]))
        self.granted[node] -= 1
        entry = self._op(node, self.ledgers[node].debit, self.owner(node), member,
                         amount=amount)
        if self._ack_entry(node, entry):
            self.debits[node].append(entry["id"])

    @precondition(lambda self: self.members)
    @rule(node=node_st, m=pick, uses=st.integers(min_value=1, max_value=10),
          stored=st.booleans())
    def sell_package(self, node: str, m: int, uses: int, stored: bool) -> None:
        """计次卡, paid at the till or from stored value (which needs rights here)."""
        ledger = self.ledgers[node]
        member = self._member(m)
        entry = self._op(node, ledger.sell_package, self.owner(node), member, "FOOT60", uses,
                         uses * 10_000, "stored" if stored else "cash")
        if self._ack_entry(node, entry):
            self.packages.setdefault(member, []).append(entry["id"])

    @precondition(lambda self: self.packages)
    @rule(node=node_st, m=pick, qty=st.integers(min_value=1, max_value=3))
    def debit_package(self, node: str, m: int, qty: int) -> None:
        """A use of a package: needs this branch to hold that package's rights."""
        ledger = self.ledgers[node]
        entry = self._op(node, ledger.debit, self.owner(node), self._member(m),
                         service="FOOT60", qty=qty, pay="package")
        if self._ack_entry(node, entry):
            self.debits[node].append(entry["id"])

    @precondition(lambda self: self.members)
    @rule(node=node_st, m=pick, points=st.integers(min_value=1, max_value=300))
    def convert_points(self, node: str, m: int, points: int) -> None:
        """积分转储值: points become bonus value."""
        ledger = self.ledgers[node]
        member = self._member(m)
        own = ledger.rights(member, "points").get(node, 0)
        if own > 0 and points % 4:
            points = 1 + points % own
        self._ack_entry(node, self._op(node, ledger.convert_points, self.owner(node),
                                       member, points))

    @rule(node=node_st, bonus=st.sampled_from([0, 300, 700, 2_000]))
    def change_promotion(self, node: str, bonus: int) -> None:
        """Any branch may publish a new promotion; the latest version wins everywhere."""
        body = [{"min": 5_000, "bonus": bonus, "name": f"bonus {bonus}"}] if bonus else []
        rid = self._op(node, self.ledgers[node].set_rule, self.owner(node), "promotions", body)
        assert rid is not REFUSED

    @precondition(lambda self: any(self.debits.values()))
    @rule(node=node_st, d=pick, part=st.none() | small)
    def refund(self, node: str, d: int, part: int | None) -> None:
        if not self.debits[node]:
            return
        debit_id = self.debits[node][d % len(self.debits[node])]
        ledger = self.ledgers[node]
        # A package's debit is refunded by uses (qty), any other by amount.
        by_uses = _rows(ledger, "SELECT 1 FROM entries WHERE id = ? AND json_extract(body, "
                        "'$.pay') = 'package'", debit_id)
        self._ack_entry(node, self._op(node, ledger.refund, self.owner(node), debit_id,
                                       None if by_uses else part,
                                       qty=part if by_uses else None))

    @precondition(lambda self: self.members)
    @rule(node=node_st, m=pick, points=st.integers(min_value=1, max_value=40))
    def redeem_points(self, node: str, m: int, points: int) -> None:
        ledger = self.ledgers[node]
        member = self._member(m)
        own = ledger.rights(member, "points").get(node, 0)
        if own > 0 and points % 4:
            points = 1 + points % own
        self._ack_entry(node, self._op(node, ledger.redeem_points, self.owner(node),
                                       member, points, "tea"))

    @precondition(lambda self: self.members)
    @rule(node=node_st, m=pick)
    def issue_card(self, node: str, m: int) -> None:
        self.serial += 1
        card_no = f"C{node}X{self.serial}"
        ledger = self.ledgers[node]
        before = {r[0] for r in _rows(ledger, "SELECT id FROM entries")}
        cid = self._op(node, ledger.issue_card, self.owner(node), self._member(m), card_no)
        if cid is REFUSED:
            return
        (new,) = {r[0] for r in _rows(ledger, "SELECT id FROM entries")} - before
        self.acked[node].add(new)
        self.cards.append((cid, card_no))
        self.card_events[cid] = {cid}
        self.events_at[node].add((cid, cid))

    def _card_event_ids(self, ledger: Ledger, cid: str) -> set[str]:
        row = ledger.storage.conn.execute("SELECT body FROM cards WHERE id = ?",
                                          (cid,)).fetchone()
        return {e[0] for e in json.loads(row[0]).get("events", [])} if row else set()

    @precondition(lambda self: self.cards)
    @rule(node=node_st, c=pick, lost=st.booleans())
    def card_status(self, node: str, c: int, lost: bool) -> None:
        cid, card_no = self.cards[c % len(self.cards)]
        ledger = self.ledgers[node]
        before = self._card_event_ids(ledger, cid)
        fn = ledger.report_lost if lost else ledger.report_found
        got = self._op(node, fn, self.owner(node), card_no)
        if got is REFUSED:
            return
        assert got == cid
        (new,) = self._card_event_ids(ledger, cid) - before
        self.card_events[cid].add(new)
        self.events_at[node].add((cid, new))

    @precondition(lambda self: self.cards)
    @rule(node=node_st, c=pick)
    def replace_card(self, node: str, c: int) -> None:
        """补卡: a new card number for the same member; the old card is replaced."""
        cid, card_no = self.cards[c % len(self.cards)]
        ledger = self.ledgers[node]
        before = self._card_event_ids(ledger, cid)
        self.serial += 1
        new_no = f"C{node}X{self.serial}"
        new = self._op(node, ledger.replace_card, self.owner(node), card_no, new_no)
        if new is REFUSED:
            return
        (event,) = self._card_event_ids(ledger, cid) - before
        self.card_events[cid].add(event)
        self.events_at[node].add((cid, event))
        self.cards.append((new, new_no))
        self.card_events[new] = {new}
        self.events_at[node].add((new, new))

    @precondition(lambda self: self.members)
    @rule(node=node_st, m=pick, v=pick)
    def edit_member(self, node: str, m: int, v: int) -> None:
        member = self._member(m)
        field = FIELD_OWNER[node]
        value = FIELD_VALUES[field][v % len(FIELD_VALUES[field])]
        pref = PREF_OWNER[node]
        pvalue = f"{pref}{v % 5}"
        ledger = self.ledgers[node]
        done = self._op(node, ledger.edit_member, self.owner(node), member,
                        fields={field: value}, prefs={pref: pvalue})
        if done is not REFUSED:
            self.fields[(member, field)] = value
            self.prefs[(member, pref)] = pvalue

    @precondition(lambda self: len(self.members) > 1)
    @rule(node=node_st, m=pick, into=pick)
    def merge_member(self, node: str, m: int, into: int) -> None:
        """会员合并 amid sales, spends and syncs: the same or opposite merges at two
        branches at once, sales to a merged member by a branch that has not heard of
        its merge, each branch sweeping what it holds for it when it acts."""
        done = self._op(node, self.ledgers[node].merge_member, self.owner(node),
                        self._member(m), self._member(into))
        event("merge " + ("refused" if done is REFUSED else "done"))

    @precondition(lambda self: self.members)
    @rule(node=node_st, m=pick)
    def erase_member(self, node: str, m: int) -> None:
        """Refused while the member holds stored value (most do); the owner erases one
        whose value this branch sees settled (added without a top-up, or spent to
        zero), amid edits, top-ups and syncs at other branches."""
        ledger = self.ledgers[node]
        settled = [x for x in self.members if x not in self.erased
                   and not any(v for k, v in ledger.balance(x).items() if k != "points")]
        done = self._op(node, ledger.erase_member, self.owner(node),
                        settled[m % len(settled)] if settled else self._member(m))
        event("erasure " + ("refused" if done is REFUSED else "done"))
        if done is not REFUSED:
            self.erased.update(done["erased"])
            self.acked[node].update(done["redactions"])

    @rule(node=node_st)
    def close_the_month(self, node: str) -> None:
        """The clock moves to the 8th of next month, 10:00 (shared by every node, as on
        one LAN), and `node` runs its daily pass's closing (crdtledger.closing): it cuts
        the month before and signs the latest closing every branch it knows has cut.
        Whatever the others still deliver into that month they wrote before their own
        cuts, and is taken; whatever they sell now goes into the new month. (What is
        on the wire arrives first: a hello sent a month before it is read would say
        its sender's clock is a month off.)"""
        self._pump()
        now = datetime.fromtimestamp(self.clock.ms / 1000, SHANGHAI)
        year, month = (now.year, now.month + 1) if now.month < 12 else (now.year + 1, 1)
        self.clock.ms = int(datetime(year, month, 8, 10, tzinfo=SHANGHAI).timestamp() * 1000)
        ledger = self.ledgers[node]
        event("closed" if closing.close_due_month(ledger) else "nothing to close")
        event("closing signed" if closing.sign_closing(ledger) else "no closing signed")

    @rule()
    def heal(self) -> None:
        """The whole network comes back for a while: sync to quiescence, then check."""
        self._full_sync()
        self._check_converged()

    # --- invariants -------------------------------------------------------------

    def _changed(self, check: str) -> list[tuple[str, Ledger]]:
        """The stores written since the invariant `check` last looked at them. An
        invariant of a store alone cannot start failing while the store is unchanged
        (most steps write at one node, or nowhere), and checking every store after
        every step was most of this test's time. A store counts as written when its
        connection changed rows (even rolled back), or is a new one (a crashed node
        reopens its store), or a loaded document's state moved (a refused operation
        must not have changed one in memory: that is a failure to find)."""
        seen = self._seen.setdefault(check, {})
        out = []
        for node, ledger in self.ledgers.items():
            conn = ledger.storage.conn
            mark = (conn.total_changes, tuple(
                (name, ld.doc.get_state()) for name, ld in ledger.storage._docs.items()))
            old = seen.get(node)
            if old is None or old[0] is not conn or old[1] != mark:
                seen[node] = (conn, mark)
                out.append((node, ledger))
        return out

    @invariant()
    def no_negative_purse(self) -> None:
        for node, ledger in self._changed("no_negative_purse"):
            neg = _rows(ledger, "SELECT member, purse, node, amount FROM rights WHERE amount < 0")
            assert not neg, f"{node}: negative rights {neg}"
            neg = _rows(ledger, "SELECT member, purse, SUM(amount) FROM rights "
                                "GROUP BY member, purse HAVING SUM(amount) < 0")
            assert not neg, f"{node}: negative purse {neg}"

    @invariant()
    def no_negative_rights_over_all_entries(self) -> None:
        """The design's own claim: whatever the partition, the entries written anywhere
        (the union of all replicas) leave every node's rights, hence every purse, >= 0."""
        if not self._changed("no_negative_rights_over_all_entries"):
            return
        union: dict[str, dict[str, Any]] = {}
        for ledger in self.ledgers.values():
            for (body,) in _rows(ledger, "SELECT body FROM entries UNION ALL "
                                         "SELECT body FROM deferred"):
                e = json.loads(body)
                union[e["id"]] = e
        rows: dict[tuple[str, str, str], int] = {}
        for e in union.values():
            for purse, node, change in e["deltas"]:
                key = (e["member"], purse, node)
                rows[key] = rows.get(key, 0) + change
        neg = {k: v for k, v in rows.items() if v < 0}
        assert not neg, f"rights below zero over all entries: {neg}"

    @invariant()
    def acknowledged_is_durable(self) -> None:
        for node, ledger in self.ledgers.items():
            ids = {r[0] for r in _rows(ledger, "SELECT id FROM entries")}
            missing = self.acked[node] - ids
            assert not missing, f"{node} lost acknowledged entries {missing}"
            known = {r[0] for r in _rows(ledger, "SELECT id FROM members")}
            mine = {m for m, home in self.member_home.items() if home == node}
            assert mine <= known, f"{node} lost members {mine - known}"
            for cid, eid in self.events_at[node]:
                assert eid in self._card_event_ids(ledger, cid), f"{node} lost card event"
            for (member, field), value in self.fields.items():
                if FIELD_OWNER[node] == field and member not in self.erased:
                    row = ledger.storage.conn.execute(
                        "SELECT body FROM members WHERE id = ?", (member,)).fetchone()
                    assert json.loads(row[0]).get(field) == value, (node, member, field)
            for (member, pref), value in self.prefs.items():
                if PREF_OWNER[node] == pref and member not in self.erased:
                    row = ledger.storage.conn.execute(
                        "SELECT body FROM members WHERE id = ?", (member,)).fetchone()
                    assert json.loads(row[0])["prefs"].get(pref) == value, (node, member)

    @invariant()
    def entries_well_formed(self) -> None:
        for node, ledger in self._changed("entries_well_formed"):
            for (body,) in _rows(ledger, "SELECT body FROM entries WHERE node = ?", node):
                check_entry_signs(json.loads(body))
            assert not _rows(ledger, "SELECT * FROM quarantine"), node
            # A node's own entries are funded by construction: they never wait.
            own = _rows(ledger, "SELECT key FROM deferred WHERE key LIKE ?", f"%.{node}")
            assert not own, f"{node} deferred its own entries {own}"

    # --- healing and the final comparison ------------------------------------

    def _pump(self) -> None:
        for _ in range(10_000):
            busy = [p for p in PAIRS if self.queues[p]]
            if not busy:
                return
            for pair in busy:
                if self.queues[pair]:
                    self._deliver(*pair, self.queues[pair].pop(0))
        raise AssertionError("sync did not quiesce")

    def _full_sync(self) -> None:
        self._pump()
        for _ in range(6):
            for pair in PAIRS:
                self.sessions[pair].anti_entropy()
            self._flush()
            self._pump()
            svs = [_states(self.ledgers[n]) for n in NODES]
            if all(sv == svs[0] for sv in svs):
                self._check_quiet_round()
                return
        raise AssertionError(f"replicas did not converge: {svs}")

    def _check_quiet_round(self) -> None:
        """Between replicas in sync, a round is two hellos and nothing else."""
        for pair in PAIRS:
            self.sessions[pair].anti_entropy()
        self._flush()
        kinds = [unpack(f)["t"] for p in PAIRS for f in self.queues[p]]
        assert kinds == ["hello"] * len(PAIRS), kinds
        hellos = {pair: self.queues[pair][:] for pair in PAIRS}
        for pair in PAIRS:
            self.queues[pair].clear()
        for pair in PAIRS:
            for frame in hellos[pair]:
                self._deliver(*pair, frame)
        answers = [unpack(f)["t"] for p in PAIRS for f in self.queues[p]]
        assert not answers, f"replicas in sync still exchanged {answers}"

    def _views(self, ledger: Ledger, day: str) -> dict[str, Any]:
        members = sorted(r[0] for r in _rows(ledger, "SELECT id FROM members"))
        return {
            "sv": _states(ledger),
            "entries": _rows(ledger, "SELECT * FROM entries ORDER BY id"),
            "rights": _rows(ledger, "SELECT * FROM rights ORDER BY member, purse, node"),
            "totals": _rows(ledger, "SELECT * FROM totals ORDER BY member"),
            "members": _rows(ledger, "SELECT * FROM members ORDER BY id"),
            "cards": _rows(ledger, "SELECT * FROM cards ORDER BY id"),
            "rules": _rows(ledger, "SELECT * FROM rules ORDER BY id"),
            "daily": [views.daily_report(ledger, day, n) for n in (None, *NODES)],
            "settlement": views.settlement(ledger),
            "balances": {m: ledger.balance(m) for m in members},
            "member_views": {m: views.member(ledger, m) for m in members},
            "points": {m: views.points(ledger, m) for m in members},
            "ranking": views.ranking(ledger),
            "faults": ledger.faults(),
            # Each replica counts itself among the branches: compared once all have
            # written (a branch that never wrote is known to no other).
            "books": closing.books(ledger) if set(ledger.positions()) >= set(NODES) else None,
        }

    def _check_converged(self) -> None:
        day = self.ledgers[NODES[0]].today()
        seen = {n: self._views(self.ledgers[n], day) for n in NODES}
        first = seen[NODES[0]]
        assert first["faults"] == [], first["faults"]  # every node here is honest
        for n in NODES[1:]:
            for key, value in first.items():
                if key == "books" and (value is None or seen[n][key] is None):
                    continue
                assert seen[n][key] == value, f"{NODES[0]} and {n} differ in {key}"
        all_acked = set().union(*self.acked.values())
        ids = [r[0] for r in first["entries"]]
        assert len(ids) == len(set(ids))
        # A node writes its redaction entries itself when an erasure reaches it, and
        # sweeps merged members' rights when a peer asks it for them (grant_rights).
        redactions = {r[0] for r in first["entries"] if r[1] in ("redaction", "merge")}
        assert set(ids) - redactions == all_acked - redactions, (
            f"lost {all_acked - set(ids)}, unexpected {set(ids) - all_acked - redactions}")
        assert {r[0] for r in first["members"]} == set(self.members)
        assert {r[0] for r in first["cards"]} == {c for c, _ in self.cards}
        for cid, events in self.card_events.items():
            assert self._card_event_ids(self.ledgers[NODES[0]], cid) == events, cid
        for (member, field), value in self.fields.items():
            if member not in self.erased:
                assert first["member_views"][member].get(field) == value, (member, field)
        for (member, pref), value in self.prefs.items():
            if member not in self.erased:
                assert first["member_views"][member]["prefs"].get(pref) == value, member
        # Erased: in no replica's signed records, documents or projections any more.
        for member in self.erased:
            assert first["member_views"][member]["erased"], member
            phone = self.phones[member].encode()
            for n in NODES:
                stored = _rows(self.ledgers[n], "SELECT data FROM records UNION ALL "
                               "SELECT data FROM log UNION ALL SELECT data FROM snapshots "
                               "UNION ALL SELECT body FROM members")
                assert not any(phone in bytes(d[0], "utf-8") if isinstance(d[0], str)
                               else phone in d[0] for d in stored), (n, member)
        for n in NODES:
            self._check_projection_matches_documents(self.ledgers[n])
        assert first["settlement"]["total"] == 0

    def _check_projection_matches_documents(self, ledger: Ledger, settled: bool = True
                                            ) -> None:
        """The projections are what the documents say: entries, members and cards read
        back from the CRDT, and rights rebuilt from the entries, equal the SQLite tables.
        (`settled`: after a full sync no entry may still wait for its funding.)"""
        in_docs: set[str] = set()
        by_doc: dict[str, set[str]] = {}
        members: dict[str, str] = {}
        cards: dict[str, str] = {}
        for name in ledger.state_vectors():
            roots = ledger.storage.doc(name).roots
            if name.startswith("ledger/"):
                by_doc[name] = set(roots["entries"].keys())
                in_docs |= by_doc[name]
            elif name.startswith("members/"):
                members |= {k: dumps(_as_plain(v)) for k, v in roots["members"].items()}
                cards |= {k: dumps(_as_plain(v)) for k, v in roots["cards"].items()}
        projected = {r[0] for r in _rows(ledger, "SELECT id FROM entries")}
        waiting = {r[0] for r in _rows(ledger, "SELECT key FROM deferred")}
        assert not projected & waiting
        assert in_docs == projected | waiting, (in_docs ^ (projected | waiting))
        if settled:
            assert not waiting, f"entries still wait after sync: {waiting}"
        assert dict(_rows(ledger, "SELECT id, body FROM members")) == members, ledger.node
        assert dict(_rows(ledger, "SELECT id, body FROM cards")) == cards, ledger.node
        rights: dict[tuple[str, str, str], int] = {}
        for (body,) in _rows(ledger, "SELECT body FROM entries"):
            e = json.loads(body)
            for purse, node, change in e["deltas"]:
                key = (e["member"], purse, node)
                rights[key] = rights.get(key, 0) + change
        table = {(m, p, n): a for m, p, n, a in _rows(ledger, "SELECT * FROM rights")}
        assert {k: v for k, v in table.items() if v} == {k: v for k, v in rights.items() if v}
        # The points lots kept as entries come (crdtledger.lots) are the replay's.
        kept: dict[str, list[tuple[str, int, str]]] = {}
        for eid, member, expires, left in _rows(
                ledger, "SELECT earned, member, expires, left FROM points_lots"):
            kept.setdefault(member_group(ledger.storage.conn, member)[0], []).append(
                (expires, left, eid))
        heads = {member_group(ledger.storage.conn, m)[0]: member_group(ledger.storage.conn, m)
                 for (m,) in _rows(ledger, "SELECT DISTINCT member FROM entries")}
        replayed = {h: sorted((e, n, i) for e, n, i, _m in lots.replay(
                        ledger.storage.conn, g) if n)
                    for h, g in heads.items()}
        assert {h: sorted(v) for h, v in kept.items()} == {
            h: v for h, v in replayed.items() if v}, ledger.node
        if settled:  # a closing's balances: the tables less what later months added
            for month in sorted({n[7:] for n in by_doc} | {"2025-11"}):
                assert closing.month_end_from_tables(ledger, month) == _month_end_by_documents(
                    ledger, month, by_doc), (ledger.node, month)

    @invariant()
    def projections_match_documents(self) -> None:
        for _node, ledger in self._changed("projections_match_documents"):
            self._check_projection_matches_documents(ledger, settled=False)

    def teardown(self) -> None:
        LedgerMachine.histories += 1
        try:
            if getattr(self, "ledgers", None) and len(self.ledgers) == len(NODES):
                self._full_sync()
                self._check_converged()
        finally:
            for session in getattr(self, "sessions", {}).values():
                session.close()
            for ledger in getattr(self, "ledgers", {}).values():
                ledger.close()
            shutil.rmtree(self.tmp, ignore_errors=True)


def test_ledger_machine_runs_its_histories() -> None:
    before = LedgerMachine.histories
    run_state_machine_as_test(LedgerMachine, settings=settings(
        max_examples=EXAMPLES,
        stateful_step_count=STEPS,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                               HealthCheck.data_too_large],
    ))
    assert LedgerMachine.histories - before >= EXAMPLES


# --- directed regressions: histories the machine found, replayed by hand ---------


def _fresh() -> LedgerMachine:
    machine = LedgerMachine()
    machine.acknowledged_is_durable()
    return machine


def test_edits_sent_ahead_of_the_catch_up_diff_reach_the_projection() -> None:
    """A node reconnects and, before the handshake's diff, a till edits a member.

    The edit reaches the peer ahead of the writer's earlier updates of that document.
    Yrs integrated such updates behind a hole in the writer's clocks without moving the
    state vector, and later edits inside them without firing events, so the peer's
    members projection kept the old name for ever (found by the machine; fixed then by
    refusing updates that skip clocks; now each writer's records are taken only in the
    order of its log, and those past a gap wait: Replica._verify_log)."""
    m = _fresh()
    try:
        m.add_member("SH01")
        first = m.members[0]
        m._connect("SH01", "SH02")  # the links drop: nobody gets that member
        m._connect("SH01", "SH03")
        # More members at SH01 until one shares the first one's document.
        from crdtledger.model import member_doc

        m.add_member("SH01")
        while member_doc(m.members[-1]) != member_doc(first):
            m.add_member("SH01")
        m.edit_member("SH01", len(m.members) - 1, 1)
        # An ordered transport: every frame in order, nothing lost.
        m._full_sync()
        m._check_converged()
    finally:
        m.teardown()


def test_a_debit_seen_before_its_funding_waits_for_it() -> None:
    """SH02 spends rights SH01 granted it; SH03 hears of the debit first.

    Projected at once, SH03 showed SH02's rights at -30.00 (and the member's balance
    below zero if it also lacked the top-up). The debit now waits in `deferred` until
    the transfer arrives."""
    m = _fresh()
    try:
        m.seed_members(["SH01"], [10_000, 10_000, 10_000])
        m.debit_or_ask("SH02", 0, 3_000)
        m.deliver_burst(("SH02", "SH01"), 20)  # the request; SH01 grants
        m.deliver_burst(("SH01", "SH02"), 20)  # the transfer and the reply
        m.retry_waiting_debit("SH02", 0)
        q = m.queues[("SH02", "SH03")]
        kinds = [unpack(f)["t"] for f in q]
        assert kinds == ["recs", "recs"], kinds  # the relayed transfer, the debit
        m.deliver_reordered(("SH02", "SH03"), 1)  # the debit first
        sh03 = m.ledgers["SH03"]
        assert len(_rows(sh03, "SELECT key FROM deferred")) == 1
        m.no_negative_purse()
        m.deliver_burst(("SH02", "SH03"), 20)
        assert not _rows(sh03, "SELECT key FROM deferred")
        member = m.members[0]
        assert sh03.rights(member) == m.ledgers["SH02"].rights(member)
        m.no_negative_purse()
    finally:
        m.teardown()


def test_entries_that_fund_each_other_are_projected_in_their_writers_log_order() -> None:
    """A gives 50 to B (A's 2nd record), B gives 50 back (B's 1st), A spends 50 (A's
    3rd). A batch applied by document can bring A's debit before A's transfer: judged
    in A's log order (the debit waits for the batch's end behind the transfer), all
    are projected. Two transfers that fund only each other (no entry before either
    funds it: no honest pair of writers writes that) are not projected together: they
    wait alike at every replica, whatever the batching."""
    from crdtledger.projection import project_deferred, project_entries

    tmp = Path(tempfile.mkdtemp(prefix="crdtledger-deferred-"))
    try:
        Ledger.create(tmp / "R", "SH03")
        with Ledger.open(tmp / "R", synchronous="NORMAL", now_ms=SimClock()) as r:
            st_ = r.storage
            member = "037573YWGJ000.SH01"

            def entry(eid: str, kind: str, deltas: list[list[Any]]) -> dict[str, Any]:
                return {"id": eid, "kind": kind, "member": member, "node": eid[14:],
                        "op": "owner", "at": id_time_ms(eid), "amount": 50, "deltas": deltas}

            def project(entries: list[dict[str, Any]], seqs: list[int], hold: bool = False
                        ) -> None:
                project_entries(st_.conn, "ledger/2026-03", [(e["id"], e) for e in entries],
                                st_.day_of, {e["id"]: (s, hold)
                                             for e, s in zip(entries, seqs, strict=True)})

            top = entry("037573YWGJ001.SH01", "topup", [["cash", "SH01", 50]])
            f = entry("037573YWGJ002.SH01", "transfer", [["cash", "SH01", -50],
                                                          ["cash", "SH02", 50]])
            g = entry("037573YWGJ003.SH02", "transfer", [["cash", "SH02", -50],
                                                          ["cash", "SH01", 50]])
            h = entry("037573YWGJ004.SH01", "debit", [["cash", "SH01", -50]])
            with st_.transaction():
                project([h], [3], hold=True)  # A's 2nd record is applied after it
                project([top, f], [1, 2])
                project([g], [1])
                # A's entries wait behind its held record (its top-up too), B's transfer
                # for want of A's.
                assert {k for (k,) in st_.conn.execute("SELECT key FROM deferred")} == {
                    top["id"], f["id"], g["id"], h["id"]}
                done = project_deferred(st_.conn, st_.day_of)
            assert {e["id"] for e in done} == {top["id"], f["id"], g["id"], h["id"]}
            assert r.rights(member) == {}
            assert not _rows(r, "SELECT * FROM deferred")
            assert not _rows(r, "SELECT * FROM rights WHERE amount < 0")
            # Two liars' transfers of rights neither holds, each funded by the other only.
            f2 = entry("037573YWGJ005.SH01", "transfer", [["cash", "SH01", -50],
                                                           ["cash", "SH02", 50]])
            g2 = entry("037573YWGJ006.SH02", "transfer", [["cash", "SH02", -50],
                                                           ["cash", "SH01", 50]])
            with st_.transaction():
                project([f2], [4])
                project([g2], [2])
                assert project_deferred(st_.conn, st_.day_of) == []
            assert {k for (k,) in st_.conn.execute("SELECT key FROM deferred")} == {
                f2["id"], g2["id"]}
            assert r.rights(member) == {}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def test_replicas_in_sync_exchange_two_hellos_only() -> None:
    """sync.py promises that a round between nodes in sync is two hellos. Yrs encodes
    equal state vectors with clients in history-dependent order, so the digests over
    raw bytes differed and every round shipped full state vectors (found by the
    machine; fixed by digesting decoded vectors)."""
    m = _fresh()
    try:
        m.seed_members(["SH01", "SH02", "SH03"], [5_000, 10_000, 20_000])
        m._check_quiet_round()
    finally:
        m.teardown()
