"""The one write path of a ledger, shared by every concept's operations.

Every mutating operation follows it (`LedgerBase._commit`): check permission and
input, check escrow rights against the projection, write to the pycrdt document,
project the change, log the update; all in one SQLite transaction, acknowledged
only after COMMIT. The concepts (auth, rules, members, cards, payments, replica)
are mixins of `LedgerBase`, composed by `crdtledger.ledger.Ledger`.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from pycrdt import Map

from crdtledger import closing, escrow, idempotency, lots
from crdtledger.errors import (
    ClockSkew,
    InvalidAmount,
    InvalidInput,
    NotCaughtUp,
    PermissionDenied,
)
from crdtledger.hlc import (
    CLOCK_OFF_LIMIT_MS,
    MAX_CLOCK_SKEW_MS,
    HybridClock,
    id_node,
    id_time_ms,
    wall_ms,
)
from crdtledger.log import Head, Record, record_hash
from crdtledger.model import (
    EDITS,
    ID,
    EntryKind,
    InvalidRecord,
    entry_kinds_text,
    ledger_doc,
    month_over_ms,
    normalise_entry,
    owner_of,
)
from crdtledger.money import MAX_AMOUNT
from crdtledger.peerclock import span
from crdtledger.projection import project_entry, record_change, rejudge_quarantined, reproject
from crdtledger.storage import PROJECTION, LoadedDoc, Storage
from crdtledger.trust import Trust, load_trust
from crdtledger.writerules import GOVERNANCE_DOCS, RuleBroken, check_change, check_local

Listener = Callable[[Record, object], None]
T = TypeVar("T")


@dataclass(frozen=True)
class Write:
    """One replicated record changed by a local operation: `mutate` gets the root Map
    of `doc`; the projection then rewrites that one record (or, for a ledger entry,
    projects `entry`, the very value written)."""

    doc: str
    root: str
    key: str
    mutate: Callable[[Map[Any]], None]
    entry: dict[str, Any] | None = None


def put(doc: str, root: str, key: str, value: Any) -> Write:
    """A Write that sets one key of a root Map to a new value (a new record)."""
    return Write(doc, root, key, lambda r: r.__setitem__(key, value))


def note_edit(record: Map[Any], change_id: str, operator: str, fields: Iterable[str]) -> None:
    """Note in `record` (inside the write's mutate) who changed which fields, under
    model.EDITS. A record made before the audit trail gets that Map at its first
    change: two branches changing such a record for the first time while apart both
    create it, and one of their two notes is lost (the fields themselves are not)."""
    sub_map(record, EDITS)[change_id] = {"op": operator, "fields": sorted(set(fields))}


def sub_map(record: Map[Any], name: str) -> Map[Any]:
    """`record[name]`, a Map: created if missing, and made again if another writer put
    something else there (a liar's list made every later edit of the record fail)."""
    inner = record.get(name)
    if not isinstance(inner, Map):
        inner = record[name] = Map({})
    return inner


# Remote entries stamped too far ahead of our clock: the latest are kept for a look.
SKEW_EVENTS_KEPT = 100
CLOCK_CONFIRMED = "clock_confirmed"  # the store's meta key of Ledger.confirm_clock


class LedgerBase:
    """What every concept of a ledger shares: the store, the clock, the listeners and
    the write path. One thread owns a ledger (pycrdt objects are bound to their
    thread)."""

    def __init__(self, storage: Storage, now_ms: Callable[[], int] | None = None) -> None:
        self.storage = storage
        storage.before_commit.append(lambda: lots.settle(storage.conn))
        if storage.meta.get("points_lots") != lots.FOLD:
            with storage.transaction():
                if "points_lots" not in storage.meta:  # a store made before the table
                    lots.fill(storage.conn)
                else:  # folded by an older version
                    lots.refold(storage.conn, storage.meta["points_lots"])
                storage.conn.execute("INSERT OR REPLACE INTO meta VALUES ('points_lots', ?)",
                                     (lots.FOLD,))
            storage.meta["points_lots"] = lots.FOLD
        if storage.meta.get("projection") != PROJECTION:  # projected another way
            with storage.transaction():
                reproject(storage.conn)
                storage.conn.execute("INSERT OR REPLACE INTO meta VALUES ('projection', ?)",
                                     (PROJECTION,))
            storage.meta["projection"] = PROJECTION
        kinds = entry_kinds_text()
        if storage.meta.get("entry_kinds") != kinds:  # a build that knows other kinds
            with storage.transaction():
                lots.settle(storage.conn, rejudge_quarantined(storage))
                storage.conn.execute("INSERT OR REPLACE INTO meta VALUES ('entry_kinds', ?)",
                                     (kinds,))
            storage.meta["entry_kinds"] = kinds
        self.node = storage.node
        self.chain = storage.chain
        self.clock = HybridClock(self.node, int(storage.meta.get("hlc", "0")), now_ms,
                                 storage.meta.get("hlc_eras"))
        self.owner = owner_of(self.node)
        self._listeners: list[Listener] = []
        self._rules: dict[str, list[tuple[str, str, Any]]] | None = None
        # ((day, expire_days), that day's points expiry date): payments._points_expiry.
        self._expiry_memo: tuple[tuple[str, int], str] | None = None
        # Members others were merged into (merge.Merges._folded), read once: a debit
        # then asks nothing more for the members (nearly all) nobody was merged into.
        self._merge_targets: frozenset[str] | None = None
        # And the members merged into another (merge.Merges.survivor_of): an operation
        # naming a member asks nothing more for the members (nearly all) never merged.
        # Both read again after a members record changed, or a transaction failed
        # (storage.rollbacks: read inside it, they may hold what it undid).
        self._merged_ids: frozenset[str] | None = None
        self._merges_read = storage.read_mark()
        # A merged member's sweep an operation owes (merge.Merges._owe_sweep): written
        # by its commit, in its transaction, before its plan (dropped when the next
        # operation begins, auth.Auth.authorise, if it was refused before its commit).
        self._owed: tuple[list[str], list[Write], list[Any], str | None] | None = None
        # Entries the open apply transaction projected from peers: their points lots
        # are settled together before it commits (Replica.apply_verified).
        self._fresh_entries: list[dict[str, Any]] = []
        # Ledger records of the open apply whose entries' funding waits for its end:
        # an earlier record of their writer is applied after them (Replica._apply_plan).
        self._funding_held: set[tuple[str, int]] = set()
        # (writer, seq) -> what a waiting record needs (redaction.needs; None: not
        # readable here), for each writer's first waiting record, asked at every batch
        # (Replica._may_integrate): parsed once, not once a batch.
        self._needs: dict[tuple[str, int], dict[int, int] | None] = {}
        # Erasures (crdtledger.erasure): redaction entries of other writers applied and
        # not yet carried out on the records held here; whether an erasure came since
        # the last housekeeping (which redacts this node's own records); the erased
        # members whose records this process has looked at.
        self.redactions_due: list[dict[str, Any]] = []
        self.erased_now: set[str] = set()  # member documents an applied batch erased in
        self.erasure_seen = False
        self.redaction_checked: set[str] = set()
        self.skew_events: deque[ClockSkew] = deque(maxlen=SKEW_EVENTS_KEPT)
        # (log.changes, log_view, states_digest)
        self._logs_seen: tuple[int, Mapping[str, tuple[int, bytes]], bytes] | None = None
        self.trust: Trust = load_trust(storage.dir, self.chain, self.node)
        self.trust.pinned = storage.log.pinned()
        self._own_head: Head | None = None
        self._certs_seen: dict[str, bytes] = {}  # node -> certificate its head verified under
        # What was refused from peers and files, and why (the latest): for the node's
        # log, its metrics and `crdtledger status`. Proven faults are in the store.
        self.refusals: deque[str] = deque(maxlen=SKEW_EVENTS_KEPT)
        self.refused_total = 0  # refusals ever appended (a driver reports the new ones)
        # Set while a node restored from a backup has not yet caught up with its own
        # log from a peer: the backup's time. It must not write meanwhile (it could
        # write at a position of its log that a peer already holds).
        self.restored: str | None = storage.meta.get("restored_from") or None
        # The latest month this node closed (crdtledger.closing): it writes nothing
        # more into the ledger of that month or before, and mints no id before the
        # next month's start.
        self.closed_through: str | None = None
        # The balances at the end of each month a closing was worked out for here, with
        # the history they were worked out from (crdtledger.closing.month_end).
        self.month_ends: dict[str, tuple[str, closing.MonthEnd]] = {}
        # Nothing is booked before the chain enrolled this branch: a new PC whose clock
        # ran 50 days behind sold into a month every branch had closed and signed, and
        # the chain's books read it open again (its ids go on from this floor, and the
        # clock check says the clock is off, as after a cut).
        self.clock.floor_ms = self.trust.enrolled_ms()
        # Whether the peers connected now confirm this PC's clock, as the node core
        # running this store judges at each tick (NodeCore._peers_confirm): False with
        # no node core (the library, the command line) or no peer. `check_clock_for`.
        # With this machine's clock less its boot clock when they did (`clock_vouched`).
        self._vouched: tuple[bool, int | None] = (False, None)
        # The node core's judgement whether this PC's clock may decide what cannot be
        # undone (NodeCore._clock_confirmed), asked when it matters (a no-show,
        # crdtledger.bookings.noshow); None with no node core: the caller's clock.
        self.clock_judge: Callable[[], bool] | None = None
        own = storage.log.cuts().get(self.node)
        if own:
            self._cut_taken(max(m for _s, m in own))

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call `listener(record, origin)` after each committed log record.

        `origin` is None for local operations, else what the caller of apply_batch
        passed (a sync session), so a session need not echo a peer's own records.
        """
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None

    # --- the one write path -------------------------------------------------

    def _commit(self, plan: Callable[[], tuple[Sequence[Write], T]]) -> T:
        """Run `plan` inside the write transaction (so the rights it checks cannot move
        before its entry commits), write what it returns, project, log, commit; then
        hand the updates to listeners. Returns the plan's result. What an operation
        owes first (`_owed_writes`: a merged member's sweep) is written in the same
        transaction, before the plan reads: a refused operation writes none of it."""
        st = self.storage
        self._check_may_write()
        committed: list[Record] = []
        docs: set[str] = set()
        try:  # free unless raised
            with st.transaction():
                self._apply(self._owed_writes(), committed, docs)
                writes, result = plan()
                self._apply(writes, committed, docs)
                st.keep_clock(self.clock.last, self.clock.eras_text)
        except BaseException:  # rolled back: it may have written a merge read since
            self._merge_targets = self._merged_ids = None
            raise
        self._notify(committed, None)
        for name in docs:
            st.maybe_compact(name)
        return result

    def _owed_writes(self) -> Sequence[Write]:
        """Writes the next commit makes before its plan (none here; merge.Merges)."""
        return ()

    def _apply(self, writes: Sequence[Write], committed: list[Record], docs: set[str]
               ) -> None:
        """Write, project and log `writes` (inside the transaction)."""
        st = self.storage
        records: list[tuple[str, list[dict[str, Any]]]] = []  # the entries of each record
        for w in writes:
            closed = self.closed_through
            if w.entry is not None and closed and w.doc[7:] <= closed:
                raise PermissionDenied(
                    f"the books of {w.doc[7:]} are closed at {self.node} (through "
                    f"{closed}); an entry of that month cannot be written")
            ld = st.doc(w.doc)
            with ld.doc.transaction() as t:
                w.mutate(ld.roots[w.root])
                # The state vector the log row keeps, read in the write's own Yrs
                # transaction (as it will stand once committed): get_state() after it
                # opened and committed a second one.
                raw = t._txn  # (never None inside it; else record reads it after)
                sv = ld.doc._doc.get_state(raw) if raw is not None else None
            if w.doc in GOVERNANCE_DOCS:  # a debit reads nothing back
                check_local(w.doc, self.trust.governs, ld.roots[w.root].get(w.key),
                            self.trust.is_revocation_list)
            updates = ld.take_updates()
            if w.entry is not None:  # a write that adds nothing joins the record before
                if updates or not records:  # (_together's)
                    records.append((w.doc, [w.entry]))
                else:
                    records[-1][1].append(w.entry)
            self._project_write(ld, w)
            st.record(ld, updates, sv)
            committed.extend(self._log_own(w.doc, u) for u in updates)
            docs.add(w.doc)
        for doc, entries in records:
            self._judge_own(doc, entries)

    def _judge_own(self, doc: str, entries: list[dict[str, Any]]) -> None:
        """Judge a record of entries about to be committed as every replica will: by
        the chain's write rules (crdtledger.writerules) and the entries' schema
        (model.normalise_entry). An operation that missed a check is refused here,
        with nothing written, instead of being signed and sent, when every branch
        would refuse it and take nothing more this branch writes, or set the entry
        aside and hold other balances than this branch."""
        try:
            check_change(self.node, doc, [("entries", e["id"], None, e) for e in entries],
                         0, False, self.trust.is_revocation_list)
        except RuleBroken as broken:
            raise PermissionDenied(f"refused: every branch would refuse it by the chain's "
                                   f"write rule {broken}; nothing was written") from None
        for e in entries:  # and quarantine it as malformed (a level name of 300 characters)
            try:
                normalise_entry(e["id"], e)
            except InvalidRecord as bad:
                raise InvalidInput(f"refused: every branch would set this {e['kind']} "
                                   f"aside as malformed ({bad}); nothing was written"
                                   ) from None

    def _cut_taken(self, month: str | None) -> None:
        """This node closed `month` (its cut written here, or back from a peer)."""
        if month is not None and (self.closed_through or "") < month:
            self.closed_through = month
            # Nothing before the month's end in any zone: no document of it, nor the
            # fold the closing's points lots are cut from (model.month_over_ms).
            self.clock.floor_ms = max(self.clock.floor_ms, month_over_ms(month))

    def retired(self, node: str) -> bool:
        """Did the chain revoke `node`'s certificate (a shop closed for good), as this
        replica judges the head it keeps of its log? Nothing more it writes is taken."""
        kept = self.storage.log.head(node)
        return kept is not None and self.trust.revoked(node, kept[1])

    def _check_may_write(self) -> None:
        if self.restored is not None:
            raise NotCaughtUp(
                f"restored from a backup of {self.restored}; connect to another branch "
                "before selling (it may hold what this branch wrote after the backup)")
        if self.trust.self_revoked:
            # Every branch holding the list refuses what it writes from now on; one not
            # yet holding it took it, so a sale here split the books for good (a member
            # at 550.00 at one branch and 500.00 at head office).
            raise NotCaughtUp(
                f"the chain revoked branch {self.node}'s certificate (a shop closed for "
                "good, or its PC replaced): this PC may not write any more; the owner "
                "enrols a PC under a new node id, or renews this one (crdtledger chain renew)")
        if self.storage.log.is_blocked(self.node):
            raise NotCaughtUp(
                f"branch {self.node} wrote two different histories (a restored backup or a "
                "copied disk sold on both): the chain no longer takes its writes; the "
                "owner revokes it and enrols this PC under a new node id (crdtledger status "
                "shows the fork)")

    def _log_own(self, doc: str, data: bytes) -> Record:
        """This node's next log record, for a committed update (inside the
        transaction). Its head is signed when sent (Replica.own_head), not here."""
        log = self.storage.log
        seq, prev = log.tip(self.node)
        rec = Record(self.node, seq + 1, doc, data)
        log.append(rec, record_hash(prev, self.node, rec.seq, doc, data))
        return rec

    def _write(self, *writes: Write) -> None:
        self._commit(lambda: (writes, None))

    def _project_write(self, ld: LoadedDoc, w: Write) -> None:
        """Project a local write from what it wrote. pycrdt's observers would tell the
        same, but converting their events costs more than the rest of a debit's CPU;
        remote updates, whose content we do not know, go through the observers."""
        conn, day_of = self.storage.conn, self.storage.day_of
        if w.entry is not None:
            # Built by _entry (exact ints, ranges checked, rights checked by the plan)
            # and judged by _judge_own as the replicas will: projected as is.
            project_entry(conn, w.entry, day_of(id_time_ms(w.key)), +1)
            return
        record_change(conn, ld.name, w.root, w.key, ld.roots[w.root][w.key], day_of)
        if w.root == "rules":
            self._rules = None
        elif w.root == "members":
            self._merge_targets = self._merged_ids = None

    def _notify(self, records: Iterable[Record], origin: object) -> None:
        for rec in records:
            for fn in list(self._listeners):
                fn(rec, origin)

    # --- ledger entries -----------------------------------------------------

    def _entry(self, kind: EntryKind, member: str, *, deltas: Sequence[tuple[str, str, int]] = (),
               amount: int = 0, **extra: Any) -> dict[str, Any]:
        eid = self.clock.mint()
        # `amount` too: an entry out of range would be quarantined by every replica
        # (model.normalise_entry) after the operation was acknowledged here.
        for v in (amount, *extra.values()):
            if isinstance(v, int) and not isinstance(v, bool) and not 0 <= v <= MAX_AMOUNT:
                raise InvalidAmount(f"value {v} out of range")
        escrow.check_deltas_authorised(self.node, deltas)
        entry: dict[str, Any] = {
            "id": eid, "kind": kind, "member": member, "node": self.node,
            "op": extra.pop("op", self.owner), "at": wall_ms(self.clock.last),
            "amount": amount, "deltas": [list(d) for d in deltas if d[2] != 0],
        }
        entry.update({k: v for k, v in extra.items() if v is not None and v != ""})
        tag = idempotency.current_tag()
        if tag is not None:  # written under an Idempotency-Key: found again after a restore
            entry["idem"] = tag
        if any(p == "points" and c < 0 for p, _n, c in entry["deltas"]):
            # The day it spends on, in this branch's zone: every replica takes the
            # lots still valid that day (crdtledger.lots.spend_day), whatever its zone.
            entry["day"] = self.storage.day_of(entry["at"])
        return entry

    def _entry_write(self, entry: dict[str, Any]) -> Write:
        month = self.storage.day_of(entry["at"])[:7]
        eid = entry["id"]
        return Write(ledger_doc(month), "entries", eid,
                     lambda root: root.__setitem__(eid, entry), entry=entry)

    def _together(self, *entries: dict[str, Any]) -> list[Write]:
        """Entries written as one log record, so that every replica takes them together
        (a sale's money and its stock; a sweep's "out" and "in"): the first write sets
        every key in one pycrdt transaction, the others only have their entry projected
        (they change nothing more, so they add no record). Entries of two months (a sale
        at midnight on the last of a month) are two documents, so separate records, in
        order: each stands alone (funded, never below zero), and a replica between them
        shows the money taken a moment before the stock."""
        writes = [self._entry_write(e) for e in entries]
        if len(writes) == 1 or any(w.doc != writes[0].doc for w in writes):
            return writes

        def every(root: Any) -> None:
            for e in entries:
                root[e["id"]] = e

        first = writes[0]
        return [Write(first.doc, first.root, first.key, every, entry=entries[0]),
                *(Write(w.doc, w.root, w.key, lambda _root: None, entry=w.entry)
                  for w in writes[1:])]

    def today(self) -> str:
        """The day this node books on now: that of the next id it mints (by the chain's
        time; past it after an id seen from a peer, and never before the month after
        its latest cut). What is checked against today (a coupon's dates, a once-a-day
        limit, a refund period) is then checked on the day the entry is booked on: a
        clock 90 s behind a peer's redeemed a coupon on the day after it expired, and
        a PC set back after a cut let a once-a-day check-in through again and again."""
        return self.storage.day_of(self.clock.next_ms())

    @contextmanager
    def _booked_after(self, *refs: str) -> Iterator[None]:
        """While an entry naming `refs` (entries, members) is judged and written:
        nothing is minted before the latest of their times, so the entry is booked on
        or after the day of what it names, and judged on that day (`today`). A sale
        made while this PC ran days ahead, its clock then put right (a new era: lower
        ids, crdtledger.hlc), was refunded by an id dated before the sale: the day's
        report showed sales of -100.00 with no debit, and the month's closing a member
        holding the refund's cash before the sale took it. One millisecond past, not
        at it: an era below the sale's sorts before it within the millisecond. No
        effect when they are in the past; after it, the next operation starts a new
        era at the right time again (an era is spent while what it named is ahead).

        Another branch's id is followed no further ahead than its clock is adopted
        (HybridClock.observe): one whose clock runs days ahead must not drag this
        branch's ids, and its clock check (`check_clock_for`), into the future. What
        is not an id (a liar's field) is passed over."""
        clock = self.clock
        before = clock.floor_ms
        limit = clock.wall() + MAX_CLOCK_SKEW_MS
        after = [id_time_ms(r) + 1 if id_node(r) == self.node
                 else min(id_time_ms(r) + 1, limit)
                 for r in refs if isinstance(r, str) and ID.match(r)]
        raised = clock.floor_ms = max([before, *after])
        try:
            yield
        finally:
            if clock.floor_ms == raised:  # (a cut taken meanwhile raised it for good)
                clock.floor_ms = before

    @property
    def clock_vouched(self) -> bool:
        """Do the peers connected vouch for this PC's clock as it reads now? Their word
        (set by the node core at each tick and hello) holds for the clock they judged:
        put forward by hand since by more than CLOCK_OFF_LIMIT_MS against the boot
        clock (HybridClock.boot_gap), it waits for their next judgement. A cashier put
        the clock forward 30 days beside a lone peer that had vouched; the counter's
        page read the rules before the node core's next tick, took that word for the
        jump (Rules._moved_by_hand), and the sale then carried no `moved`. Set back,
        the word stands as it did (check_clock_for judges a clock set back)."""
        vouched, gap = self._vouched
        if not vouched or gap is None:
            return vouched
        now = self.clock.boot_gap()
        return now is None or now - gap <= CLOCK_OFF_LIMIT_MS

    @clock_vouched.setter
    def clock_vouched(self, vouched: bool) -> None:
        self._vouched = (vouched, self.clock.boot_gap() if vouched else None)

    def clock_confirmed_today(self) -> bool:
        """Did an operator confirm this PC's clock today (Ledger.confirm_clock)? A clock
        put forward since reads another day, and waits again."""
        kept = self.storage.meta.get(CLOCK_CONFIRMED)
        try:
            return kept is not None and json.loads(kept).get("day") == self.today()
        except (ValueError, AttributeError):
            return False

    def check_clock_for(self, what: str, *, until: str | None = None) -> None:
        """Refuse `what`, an operation judged by the day against a deadline (a coupon's
        last day, a refund period, points' expiry, a once-a-day check-in, a card's
        expiry), before it writes, while this PC's clock reads more than
        MAX_CLOCK_SKEW_MS before the latest id it minted (HybridClock.high_water_ms)
        and nobody vouches for it: neither the peers connected now (`clock_vouched`)
        nor an operator today (`clock_confirmed_today`). A clock set back starts a new
        era (crdtledger.hlc), so `today` went back with it: a lone PC set back two
        days took an expired coupon, expired points, a refund past its period and a
        once-a-day check-in each day again. Plain sales, top-ups and new members go
        on. `until`: the day the deadline falls on (the last day it is still
        allowed), when one day decides: nothing waits if that day had not passed by
        the clock's furthest reading either."""
        clock = self.clock
        furthest = clock.high_water_ms()
        behind = furthest - clock.next_ms()
        if behind <= MAX_CLOCK_SKEW_MS or self.clock_vouched:
            return
        if until is not None and self.storage.day_of(furthest) <= until:
            return
        if self.clock_confirmed_today():
            return
        at = datetime.fromtimestamp(furthest / 1000, self.storage.tz).strftime("%Y-%m-%d %H:%M")
        raise NotCaughtUp(
            f"this PC's clock reads {span(behind)} earlier than it did (it had booked up "
            f"to {at}): {what} is judged by the day, and waits until another branch "
            "connects and confirms the clock, or a manager confirms it (crdtledger clock "
            "confirm, 本机时钟已核对)")
