"""Projections: the SQLite tables every read uses, derived from document changes.

Each function turns one change of a replicated record into row changes. They are
commutative (sums and per-record rewrites), so replicas that received the same
updates in any order hold the same projections.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Mapping
from operator import itemgetter
from typing import Any

from crdtledger.hlc import id_time_ms
from crdtledger.model import (
    CARD_STATUSES,
    EDITS,
    ID,
    CardStatus,
    EntryKind,
    InvalidRecord,
    canonical_phone,
    erased,
    is_one_of,
    member_doc,
    normalise,
    normalise_entry,
)
from crdtledger.storage import POINTS_NOTED, dumps

# Above this many members in one projection, their rights rows are read together.
_PRELOAD_MEMBERS = 32

# Which purse change counts toward a member's cumulative spend / top-up (levels).
_SPEND_KINDS: dict[EntryKind, int] = {"debit": 1, "refund": -1}


def _as_plain(value: Any) -> Any:
    to_py = getattr(value, "to_py", None)
    return normalise(to_py() if to_py else value)


def project_entry(conn: sqlite3.Connection, entry: dict[str, Any], day: str, sign: int) -> None:
    """Add (sign=+1) or take back (sign=-1) one ledger entry's effects.

    `day` is that of the entry's id (its writer's clock), so that reports can select
    a period as a range of ids (views._period)."""
    if sign > 0:
        conn.execute(
            "INSERT INTO entries(id, kind, member, node, op, at, day, amount, paid, ref, "
            "service, body) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            (entry["id"], entry["kind"], entry["member"], entry["node"], entry["op"],
             entry["at"], day, entry["amount"], entry.get("paid", 0), entry.get("ref"),
             entry.get("service"), dumps(entry)),
        )
    else:
        conn.execute("DELETE FROM entries WHERE id = ?", (entry["id"],))
    conn.executemany(_ADD_RIGHTS,
                     [(entry["member"], p, n, sign * c) for p, n, c in entry["deltas"]])
    spent, topped = spent_topped(entry)
    if spent or topped:
        conn.execute(_ADD_TOTALS, (entry["member"], sign * spent, sign * topped))
    change = points_change(entry)
    if change > 0 and sign > 0 and entry["kind"] != "expiry":
        # A sale's lot, at once, when nothing of the member's group can come after it
        # (nearly always): one statement on the till's path. Else crdtledger.lots.
        if not conn.execute(EARN, (entry["member"], entry["id"], entry.get("expires")
                                    or NO_EXPIRY, change)).rowcount:
            touch_points(conn, [entry], sign)
    elif change:
        touch_points(conn, [entry], sign)


_ADD_RIGHTS = ("INSERT INTO rights(member, purse, node, amount) VALUES (?,?,?,?) "
               "ON CONFLICT(member, purse, node) DO UPDATE SET amount = amount + excluded.amount")
_ADD_TOTALS = ("INSERT INTO totals(member, spent, topped) VALUES (?,?,?) ON CONFLICT(member) "
               "DO UPDATE SET spent = spent + excluded.spent, topped = topped + excluded.topped")


def points_change(entry: dict[str, Any]) -> int:
    """What `entry` adds to (or takes from) its member's points lots (crdtledger.lots):
    a transfer or a merge pair moves rights, not points."""
    if entry["kind"] in ("transfer", "merge"):
        return 0
    return sum(c for purse, _node, c in entry["deltas"] if purse == "points")


# (A positive `expiry` is a write-off's give-back: rights for points no lot lost, so
# no lot of its own: crdtledger.lots._step.)


def touch_points(conn: sqlite3.Connection, entries: list[dict[str, Any]], sign: int) -> None:
    """Note for crdtledger.lots.settle the entries with points just projected (sign
    +1) or taken back (-1: their group is replayed)."""
    POINTS_NOTED.add(id(conn))
    conn.executemany(_TOUCH, [
        (e["member"], e["id"] if sign > 0 else None, c, e["kind"], e.get("ref"),
         e.get("expires"), e.get("day")) for e in entries if (c := points_change(e))])


def touch_group(conn: sqlite3.Connection, member: str) -> None:
    """Note that `member`'s group may have changed (a merge): its lots are replayed."""
    POINTS_NOTED.add(id(conn))
    conn.execute(_TOUCH, (member, None, 0, "merge", None, None, None))


# Is member ?1 merged into another, or another into it (crdtledger.merge)?
IN_MERGE = ("EXISTS (SELECT 1 FROM members INDEXED BY members_merged_id WHERE id = ?1 "
            "AND json_extract(body, '$.merged_into') IS NOT NULL) "
            "OR EXISTS (SELECT 1 FROM members WHERE json_extract(body, '$.merged_into') = ?1)")
# The lot of an entry whose member is in no merge, holds no later entry (with
# points or not: a sale's own is the latest, nearly always) and owes no points.
# Also crdtledger.lots.settle's for a peer's lone sale (the live path).
EARN = ("INSERT INTO points_lots(member, earned, expires, left) SELECT ?1, ?2, ?3, ?4 "
        "WHERE NOT EXISTS (SELECT 1 FROM entries WHERE member = ?1 AND id > ?2) "
        "AND NOT EXISTS (SELECT 1 FROM points_lots INDEXED BY points_owed "
        "WHERE member = ?1 AND left < 0) "
        f"AND NOT ({IN_MERGE})")
# A lot that never expires (an entry earning points without an expiry).
NO_EXPIRY = "9999-12-31"
_TOUCH = ("INSERT INTO temp.points_touched(member, id, change, kind, ref, expires, day) "
          "VALUES (?,?,?,?,?,?,?)")


def spent_topped(entry: dict[str, Any]) -> tuple[int, int]:
    """What an entry adds to its member's cumulative spend and top-ups (levels). The
    cash an exit paid back comes off the top-ups it refunded: a member who reached a
    level, left with the money and came back held the level on nothing (a discount
    and extra points, again at each return). By the cash its own deltas move at its
    writer, net: `paid` is text its writer chose, and a lying branch's settlement moving
    nothing but saying 10**13 paid took every member's top-ups, and level, away at
    every branch; its top-up of 0.01 saying 10**12 paid (or adding 10**12 and taking it
    back in one entry) made any member gold at every branch; and a top-up saying 0 paid
    beside a settlement paying it back took her top-ups away. An honest top-up's `paid`
    is the cash it adds, an honest settlement's at most the cash it takes. A correction
    of cash counts as it moves: it puts a top-up typed wrong right (3,000.00 typed for
    30.00 left the member gold for good), and a liar's correction raising cash, then
    its settlement paying that out, demoted a gold member at every branch."""
    spent = _SPEND_KINDS.get(entry["kind"], 0) * entry["amount"]
    if entry["kind"] == "debit" and entry.get("pay") == "package":
        spent = 0
    kind = entry["kind"]
    if kind in ("topup", "exit_settle", "correction"):
        net = sum(c for purse, n, c in entry["deltas"] if purse == "cash" and n == entry["node"])
        topped = (max(net, 0) if kind == "topup" else net if kind == "correction"
                  else -min(entry.get("paid") or 0, max(-net, 0)))
    else:
        topped = 0
    return spent, topped


# What pycrdt gives for an immutable value (Yrs `Any`); anything else is a shared type.
_PLAIN = (dict, list, str, int, float, bytes, type(None))


def _entry_value(value: Any) -> Any:
    """An entry is an immutable value. A shared type (a nested Map from a misbehaving
    peer) could be edited in place later, which no root event reports, so replicas
    that saw the edits together or apart would project different entries.
    (normalise_entry reads numbers exactly itself: no `normalise` pass first.)"""
    if not isinstance(value, _PLAIN):
        raise InvalidRecord("entry is a shared type, not an immutable value")
    return value


def entry_change(conn: sqlite3.Connection, doc: str, key: str, old: Any, new: Any,
                 day_of: Any, *, local: bool = False, seq: int | None = None
                 ) -> dict[str, Any] | None:
    """Project an added (or, from a misbehaving peer, rewritten) entry; None if invalid
    or deferred. `local`: written here, so its numbers are exact Python ints already
    and its writer has just checked its rights; the schema is checked all the same.
    `seq`: the position in its writer's log of the record that carried it (funding
    is judged in that order: "Funding in log order", below)."""
    if old is not None and not conn.execute(
            "DELETE FROM deferred WHERE doc = ? AND key = ?", (doc, key)).rowcount:
        try:
            prev = normalise_entry(key, _entry_value(old))
            project_entry(conn, prev, day_of(id_time_ms(prev["id"])), -1)
        except InvalidRecord:
            conn.execute("DELETE FROM quarantine WHERE doc = ? AND key = ?", (doc, key))
    try:
        entry = normalise_entry(key, new if local else _entry_value(new))
    except InvalidRecord as e:
        conn.execute("INSERT OR REPLACE INTO quarantine VALUES (?,?,?)", (doc, key, str(e)))
        return None
    if not local and (_waiting(conn, [(entry["node"], entry["member"])])
                      or not _funded(conn, [entry])):
        conn.execute(_DEFER, (doc, key, dumps(entry), seq))
        return None
    project_entry(conn, entry, day_of(id_time_ms(entry["id"])), +1)
    return entry


_DEFER = "INSERT OR REPLACE INTO deferred(doc, key, body, seq) VALUES (?,?,?,?)"
_BY_ID = itemgetter("id")


def project_entries(conn: sqlite3.Connection, doc: str, added: list[tuple[str, Any]],
                    day_of: Any, pos: Mapping[str, tuple[int, bool]] | None = None
                    ) -> list[dict[str, Any]]:
    """Project entries new to a document (key, value as pycrdt gave it), as
    entry_change would one by one, in a few statements: a catch-up brings a month of
    them at once. Returns those projected (not quarantined, not deferred).

    `pos`: for each key, the position in its writer's log of the record that carried
    it and whether its funding must wait for the batch's end (an earlier record of its
    writer is applied later in this transaction, replica._apply_plan). Judged in id
    order (most writers' causal order, so that funding from another writer usually
    comes first), except that each writer's entries of one member keep their log
    order ("Funding in log order", below), against the rights as they stand plus what
    the batch has projected so far, read once per rights row. Their points lots are
    the caller's to settle (crdtledger.lots.settle)."""
    valid: list[dict[str, Any]] = []
    bad: list[tuple[str, str, str]] = []
    for key, value in added:
        try:
            valid.append(normalise_entry(key, _entry_value(value)))
        except InvalidRecord as err:
            bad.append((doc, key, str(err)))
    valid.sort(key=_BY_ID)
    units = _units_in_order(valid, pos)
    # A generator: its queues are only walked when some entry waits (rarely).
    blocked = _waiting(conn, ((e["node"], e["member"]) for e in valid))
    # A rights row as stored before this batch, read when first needed: only a row an
    # entry lowers is ever read (one that is only raised needs no check).
    stored: dict[tuple[str, str, str], int] = {}
    # Only the members an entry lowers a row of (a top-up's are never read).
    members: set[str] = set()
    for e in valid:
        for d in e["deltas"]:
            if d[2] < 0:
                members.add(e["member"])
                break
    loaded: set[str] = set()  # members whose every rights row is in `stored`
    if len(members) > _PRELOAD_MEMBERS:  # a catch-up: their rows in a few statements
        loaded = members
        few = sorted(members)
        for i in range(0, len(few), 500):
            part = few[i:i + 500]
            stored.update(((m, p, n), a) for m, p, n, a in conn.execute(
                "SELECT member, purse, node, amount FROM rights WHERE member IN "
                f"({','.join('?' * len(part))})", part))
    changed: dict[tuple[str, str, str], int] = {}  # what the batch projected adds

    def held(k: tuple[str, str, str]) -> int:
        """The rights row as it stands with what the batch projected so far."""
        if k not in stored:
            if k[0] in loaded:
                stored[k] = 0
            else:
                row = conn.execute("SELECT amount FROM rights WHERE member = ? AND purse = ? "
                                   "AND node = ?", k).fetchone()
                stored[k] = row[0] if row else 0
        return stored[k] + changed.get(k, 0)

    done: list[dict[str, Any]] = []
    backing = Backing()
    waiting: list[tuple[str, str, str, int | None]] = []
    totals: dict[str, list[int]] = {}
    for queue, seq, hold, unit in units:
        change: dict[tuple[str, str, str], int] = {}
        backs = False  # a sweep's "in" or a refund: _backed has something to judge
        for e in unit:
            member = e["member"]
            for purse, node, c in e["deltas"]:
                k = (member, purse, node)
                change[k] = change.get(k, 0) + c
            if e["kind"] in _BACKED_KINDS:
                backs = True
        funded = not hold and queue not in blocked
        if funded:  # a loop, not any() over a generator: asked of every unit
            for k, c in change.items():
                if c < 0 and held(k) + c < 0:
                    funded = False
                    break
        if not funded or (backs and not _backed(conn, unit, backing, seq=seq)):
            blocked.add(queue)  # its writer's later entries of the member wait behind
            waiting += ((doc, e["id"], dumps(e), seq) for e in unit)
            continue
        for k, c in change.items():
            changed[k] = changed.get(k, 0) + c
        for e in unit:
            spent, topped = spent_topped(e)
            if spent or topped:
                t = totals.setdefault(e["member"], [0, 0])
                t[0] += spent
                t[1] += topped
        done += unit
        backing.add(unit)
    # Each statement only when it has rows: an empty executemany still costs a few
    # µs, and a peer's sale comes alone in its batch (the live path).
    if bad:
        conn.executemany("INSERT OR REPLACE INTO quarantine VALUES (?,?,?)", bad)
    if waiting:
        conn.executemany(_DEFER, waiting)
    if done:
        conn.executemany(
            "INSERT INTO entries(id, kind, member, node, op, at, day, amount, paid, ref, "
            "service, body) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            # `at` is its id's time (normalise_entry refuses any other): not decoded again.
            [(e["id"], e["kind"], e["member"], e["node"], e["op"], e["at"],
              day_of(e["at"]), e["amount"], e.get("paid", 0), e.get("ref"),
              e.get("service"), dumps(e)) for e in done])
    if changed:
        # Net zero too: a row exists once any entry touched it, as when projected singly.
        conn.executemany(_ADD_RIGHTS, [(*k, c) for k, c in changed.items()])
    if totals:
        conn.executemany(_ADD_TOTALS, [(m, s, t) for m, (s, t) in totals.items()])
    return done


# Entries reach a replica in no causal order: pycrdt orders each writer's updates,
# not one writer's against another's, and updates travel by several paths. A debit
# at B spending rights that A transferred to B can arrive at C before the transfer
# does; projected at once, C would show B's rights, and the member's balance if C
# lacks the top-up too, below zero. So an entry that would take a rights row below
# zero waits in `deferred` until the entries that fund it arrive.
#
# Funding in log order: which entries are funded must not depend on how records were
# batched nor on when funding came (a liar overspending its rights in two ways at
# once would otherwise leave honest replicas with different books for ever). Each
# writer's entries of one member form a queue in its log's order (the record's
# position, every entry of one record together: an entry's id is its writer's word
# and may sort against that order, a clock put back or a liar); only the queue's
# head is judged, and it is projected once the rights rows it lowers cover it. Only
# the writer lowers its rights rows (write rule own-rights) and rows are per member,
# so nothing another queue projects ever lowers them: a head that fits stays
# fitting, whatever else is projected first. Hence every replica that holds the same
# records ends with the same entries projected, whatever the batching and order of
# arrival (what is projected at any time is part of that final set), and an honest
# writer's entries are all projected there: each was checked at write time against
# rights its writer held, made of its own earlier entries of the member and of
# raises by others it had projected, all of which are projected too.


# A unit to judge (_units_in_order): (queue, record's position, hold, entries). At
# module level: a subscripted type made inside the function cost every batch a few µs.
_Unit = tuple[tuple[str, str], int | None, bool, list[dict[str, Any]]]


def _units_in_order(entries: list[dict[str, Any]], pos: Mapping[str, tuple[int, bool]] | None
                    ) -> list[_Unit]:
    """`entries` (in id order) as units to judge: (queue, record's position, hold,
    entries), a unit being one writer's entries of one member in one record, in id
    order of their first entry, except that the units of one queue take their slots in
    that order by their log order. Without a position (a caller that has none), each
    entry is a unit of its own, in id order, before any with one."""
    units: list[_Unit] = []
    append = units.append
    # queue -> its last unit's position and index. A record's entries of a member are
    # next to each other in id order nearly always, and one each: no other lookup on
    # a catch-up's path. Out of turn (a later record's entry between), the queue is
    # put right below.
    last: dict[tuple[str, str], tuple[int, int]] = {}
    shuffled: set[tuple[str, str]] = set()
    get = pos.get if pos else None
    for e in entries:
        queue = (e["node"], e["member"])
        at = get(e["id"]) if get else None
        if at is None:
            if queue in last:
                shuffled.add(queue)  # a unit without position after one with
            append((queue, None, False, [e]))
            continue
        seq = at[0]
        prev = last.get(queue)
        if prev is not None:
            if prev[0] == seq:
                units[prev[1]][3].append(e)
                continue
            if prev[0] > seq:
                shuffled.add(queue)
        last[queue] = (seq, len(units))
        append((queue, seq, at[1], [e]))
    if not shuffled:
        return units
    # Each shuffled queue's units, one per record, in log order, into the slots its
    # first units took (those left over go).
    gone: set[int] = set()
    for queue in shuffled:
        slots = [i for i, u in enumerate(units) if u[0] == queue]
        merged: dict[tuple[int, str], _Unit] = {}
        for i in slots:
            q, at_seq, hold, unit = units[i]
            k = (-1, unit[0]["id"]) if at_seq is None else (at_seq, "")
            if k in merged:
                merged[k][3].extend(unit)
            else:
                merged[k] = (q, at_seq, hold, list(unit))
        mine = [merged[k] for k in sorted(merged)]
        for i, u in zip(slots, mine, strict=False):
            units[i] = u
        gone.update(slots[len(mine):])
    return [u for i, u in enumerate(units) if i not in gone]


def _waiting(conn: sqlite3.Connection, queues: Iterable[tuple[str, str]]
             ) -> set[tuple[str, str]]:
    """The queues (writer, member) among `queues` with an entry waiting in `deferred`:
    their later entries wait behind it. None wait, nearly always: one cheap read; else
    an index read per queue (storage's deferred_queue), never the whole table, which
    a dishonest branch's unfunded entries can fill: read for every batch, 20,000 of
    them made a one-debit batch cost 186 ms instead of 0.6 (5 December)."""
    if conn.execute("SELECT 1 FROM deferred LIMIT 1").fetchone() is None:
        return set()
    return {q for q in queues if conn.execute(_QUEUE_WAITS, q).fetchone()}


# The expressions are those of storage's index deferred_queue, so that it is used.
_MEMBER = "json_extract(body, '$.member')"
_NODE = "json_extract(body, '$.node')"
_QUEUE_WAITS = f"SELECT 1 FROM deferred WHERE {_MEMBER} = ?2 AND {_NODE} = ?1 LIMIT 1"
# A member's next writer with entries waiting, after the one given: a seek per writer.
_NEXT_WRITER = (f"SELECT {_NODE} FROM deferred WHERE {_MEMBER} = ? AND {_NODE} > ? "
                f"ORDER BY {_NODE} LIMIT 1")
# A queue's head: its first record's entries; an entry deferred by a version that kept
# no position (seq NULL, first in SQLite's order) is a unit of its own, in id order.
# Each an index read whatever the queue's length (no ORDER BY beyond the index's).
_HEAD_SEQ = (f"SELECT seq FROM deferred WHERE {_MEMBER} = ? AND {_NODE} = ? "
             "ORDER BY seq LIMIT 1")
_UNIT = (f"SELECT doc, key, body FROM deferred WHERE {_MEMBER} = ? AND {_NODE} = ? "
         "AND seq = ? ORDER BY rowid")
_UNKEPT = (f"SELECT doc, key, body FROM deferred WHERE {_MEMBER} = ? AND {_NODE} = ? "
           "AND seq IS NULL ORDER BY key LIMIT 1")


def _head_unit(conn: sqlite3.Connection, node: str, member: str
               ) -> list[tuple[str, str, dict[str, Any]]]:
    """The entries of the queue (node, member)'s head unit as (doc, key, entry); [] if
    nothing of it waits."""
    head = conn.execute(_HEAD_SEQ, (member, node)).fetchone()
    if head is None:
        return []
    rows = conn.execute(_UNKEPT if head[0] is None else _UNIT,
                        (member, node) if head[0] is None else (member, node, head[0]))
    return [(doc, key, json.loads(body)) for doc, key, body in rows]


def _merge_in_ref(entry: Mapping[str, Any]) -> str | None:
    """The "out" a sweep's "in" names (a merge entry that only raises rights), else
    None."""
    if entry["kind"] != "merge" or not entry["deltas"] or any(
            c < 0 for _p, _n, c in entry["deltas"]):
        return None
    ref = entry.get("ref")
    return ref if isinstance(ref, str) else ""


def _values(purse: Any) -> tuple[str, ...]:
    """The measures of stored value a purse's change counts in, as a debit takes it and
    a refund gives it back: "money" (cash and bonus together: a refund gives back
    principal first, then bonus), and "cash" alone (no refund gives back more cash
    than its sale took: bonus taken and given back as cash became money a branch had
    collected, charged to another's lot); a package's purse; none for points, goods."""
    if purse == "cash":
        return ("money", "cash")
    if purse == "bonus":
        return ("money",)
    return (purse,) if isinstance(purse, str) and purse.startswith("pkg:") else ()


def _by_value(entry: Mapping[str, Any], sign: int,
              into: dict[str, int] | None = None) -> dict[str, int]:
    """What `entry` takes (sign -1) or gives (sign +1) of each measure of value, added
    to `into` if given (a debit's refunds summed)."""
    out: dict[str, int] = {} if into is None else into
    for purse, _n, c in entry["deltas"]:
        if c * sign > 0:
            for v in _values(purse):
                out[v] = out.get(v, 0) + c * sign
    return out


class Backing:
    """What a batch has projected that later units lean on: the ids projected (a
    sweep's out), the debits projected (by id) and what refunds gave back of each."""

    def __init__(self) -> None:
        self.ids: set[str] = set()
        self.debits: dict[str, dict[str, Any]] = {}
        self.given: dict[str, dict[str, int]] = {}
        # Per debit refunded and projected: its writer, what it took, and what the
        # refunds projected before this batch gave back (the store does not move under
        # a batch: its rows are written at its end). Read once per batch, not once per
        # unit: a liar's thousands of one-refund records were each judged against all
        # the earlier ones, read again (15 s for a catch-up of 3,000 such records).
        self.stored: dict[str, _Sale] = {}

    def add(self, unit: list[dict[str, Any]]) -> None:
        for e in unit:
            self.ids.add(e["id"])
            if e["kind"] == "debit":
                self.debits[e["id"]] = e
            elif e["kind"] == "refund" and isinstance(e.get("ref"), str):
                _refund_gives(e, self.given.setdefault(e["ref"], {}))


# The measure a refund's money share counts in (`_refund_gives`).
_SHARE = "share"


def _refund_gives(entry: Mapping[str, Any], into: dict[str, int] | None = None
                  ) -> dict[str, int]:
    """What a refund gives back of each measure of value (`_by_value`), and of its
    debit's `amount` (the money it gave back and what it kept for points spent:
    Payments.refund_terms), added to `into` if given. The share bounds what refunds
    take off the member's spend (spent_topped): a lying branch's refund of its own
    sale paid at the till, moving no value but saying 10**12, demoted a member at
    every branch."""
    out = _by_value(entry, +1, into)
    out[_SHARE] = out.get(_SHARE, 0) + sale_share(entry)
    return out


def sale_share(refund: Mapping[str, Any]) -> int:
    """The fen of its sale a refund took off: the money it gave back and what it kept
    for the sale's points spent since (Payments.refund_terms)."""
    return int(refund.get("amount") or 0) + int(refund.get("kept") or 0)


# A refunded sale as _backed judges it: its writer, what it took of each measure, and
# what its refunds gave back of each.
_Sale = tuple[str, dict[str, int], dict[str, int]]
# The kinds _backed judges; it passes a unit with none of them.
_BACKED_KINDS = frozenset({"merge", "refund"})


def _backed(conn: sqlite3.Connection, unit: list[dict[str, Any]],
            batch: Backing | None = None, *, seq: int | None = None,
            final: bool = False) -> bool:
    """What `unit` raises is backed by what it names, projected here (in the store, or
    earlier in this batch: `batch`):
    - a sweep's "in" by its "out" (write rule merge-paired). The out lowers its writer's
      rights of another member, so it is in another queue: an "in" projected while its
      out waits for ever would raise rights from nothing;
    - a refund by its debit (write rule refund-own: its writer's), of which the
      refunds projected give back no more of each value than it took (cash and bonus
      together, cash alone, each package's uses). A refund of a debit never made, or
      one given twice, or bonus given back as cash, raised its writer's rights by
      what nobody paid, and the settlement then served it from other branches'
      prepaid lots. A closed shop's sale is refunded by the branch its chain of first
      hand-overs ends at (storage's handover_to, handover_chain: SH02 -> SH01 -> SH03
      once SH01 closes too), and by no other: such a refund is judged only at a
      transaction's end (`final`: project_deferred), when every writer's records
      applied here are a prefix of its log, so each shop's first hand-over, if held,
      is the one noted; its room is what the refunds of the branches before it on the
      chain held here (projected or waiting, from before each one's hand-over: all of
      them, once that is held) left. A writer's refunds from after its own hand-over
      (`seq`: the position in its log of the unit's record) wait for ever: the next
      branch on the chain refunds instead, and two writers' refunds of one sale, each
      fitting alone, would be taken in whichever order they came.
    Either waits until that is so. (A debit or an out, once projected, stays so; a
    refund's room only shrinks as other refunds of its debit are projected, and those
    are its writer's entries of the same member, in the same queue, so taken in its
    log's order: the set projected is the same whatever the batching.)"""
    # Once per unit and per debit, not per entry: a liar's record of thousands of
    # refunds, waiting for ever on its last, was judged again at each honest sync of
    # the member, in time growing with the square of its length (12 s at 6,000).
    ids: set[str] | None = None  # the unit's own, made when a merge asks
    own: dict[str, dict[str, Any]] | None = None  # its debits, made when a refund asks
    sales: dict[str, _Sale] = {}
    batch = batch or Backing()
    for e in unit:
        kind = e["kind"]
        if kind == "merge":
            ref = _merge_in_ref(e)
            if ref is None or ref in batch.ids:
                continue
            if ids is None:
                ids = {x["id"] for x in unit}
            if ref in ids:
                continue
            if conn.execute("SELECT 1 FROM entries WHERE id = ?", (ref,)).fetchone() is None:
                return False
        elif kind == "refund":
            ref = e.get("ref")
            if not isinstance(ref, str):
                return False
            if ref not in sales:
                if own is None:
                    own = {x["id"]: x for x in unit if x["kind"] == "debit"}
                known = _sale(conn, ref, own, batch)
                if known is None:
                    return False
                # What its refunds gave back already: projected before, and earlier in
                # this batch; earlier in this unit is added as the unit is walked.
                given = dict(known[2])
                for v, n in batch.given.get(ref, {}).items():
                    given[v] = given.get(v, 0) + n
                if seq is not None and _handed_before(conn, e["node"], seq):
                    # Its writer handed over before it (the shop, or a receiver that
                    # closed in turn): the next branch on the chain refunds instead.
                    return False
                if known[0] != e["node"] and (not final or not _receivers_room(
                        conn, known[0], e["node"], ref, given)):
                    # Another branch's sale (a unit is one writer's: checked once).
                    return False
                sales[ref] = (known[0], known[1], given)
            _writer, took, given = sales[ref]
            gives = _refund_gives(e)
            if any(given.get(v, 0) + n > took.get(v, 0) for v, n in gives.items()):
                return False
            _refund_gives(e, given)
    return True


def _sale(conn: sqlite3.Connection, ref: str, own: Mapping[str, dict[str, Any]],
          batch: Backing) -> _Sale | None:
    """The debit `ref` as _backed judges its refunds, with what the refunds projected
    before this batch gave back; None if it is nowhere: projected before, earlier in
    this batch, or in the unit judged (`own`: a record holding a sale and its refund
    together is taken whole). Remembered by the batch only once projected: a debit of
    the unit is not if the unit waits, and a later unit's refund of it (a liar's, to
    another member) leant on it."""
    known = batch.stored.get(ref)
    if known is not None:
        return known
    debit = batch.debits.get(ref)
    projected = debit is not None
    if debit is None:
        debit = own.get(ref)
    if debit is None:
        row = conn.execute("SELECT body FROM entries WHERE id = ? AND kind = 'debit'",
                           (ref,)).fetchone()
        if row is None:
            return None
        debit, projected = json.loads(row[0]), True
    took = _by_value(debit, -1)
    took[_SHARE] = int(debit["amount"])
    before: dict[str, int] = {}
    # Its own writer's refunds: a receiving branch's (_receivers_room) came after all
    # of them that may ever be projected, and counted them.
    for (body,) in conn.execute("SELECT body FROM entries WHERE ref = ? AND kind = 'refund' "
                                "AND node = ?", (ref, debit["node"])):
        _refund_gives(json.loads(body), before)
    known = (str(debit["node"]), took, before)
    if projected:
        batch.stored[ref] = known
    return known


def handed_to(conn: sqlite3.Connection, node: str) -> tuple[str, int | None] | None:
    """The branch `node` first handed its members' rights over to (a shop closing for
    good, Payments.hand_over_rights), and that hand-over's position in its log (None:
    not known), as noted here (storage's handover_to); None if it has not."""
    row = conn.execute('SELECT "to", seq FROM handover_to WHERE node = ?', (node,)).fetchone()
    return None if row is None else (str(row[0]), row[1])


def handover_chain(conn: sqlite3.Connection, shop: str
                   ) -> tuple[list[tuple[str, int | None]], str | None]:
    """The chain of first hand-overs from `shop` (SH02 -> SH01 -> SH03 when SH01,
    having received SH02's members, closes in turn): the shops on it that handed over,
    each with its hand-over's position in its log (handed_to), and the open branch it
    ends at, which refunds `shop`'s sales (write rule refund-own); None there when it
    comes back on itself (liars' hand-overs naming each other: no branch refunds).
    Bounded: each shop is visited once."""
    links: list[tuple[str, int | None]] = []
    seen = {shop}
    node = shop
    while (got := handed_to(conn, node)) is not None:
        links.append((node, got[1]))
        node = got[0]
        if node in seen:
            return links, None
        seen.add(node)
    return links, node


def refunder(conn: sqlite3.Connection, shop: str) -> str | None:
    """The branch that refunds `shop`'s sales: the end of its chain of hand-overs."""
    return handover_chain(conn, shop)[1]


def _handed_before(conn: sqlite3.Connection, node: str, seq: int) -> bool:
    """Did `node` hand over before its record at `seq`?"""
    got = handed_to(conn, node)
    return got is not None and got[1] is not None and got[1] < seq


# A sale's refunds waiting here (storage's deferred_refund index).
WAITING_REFUNDS = ("SELECT body, seq FROM deferred WHERE json_extract(body, '$.ref') = ? "
                    "AND json_extract(body, '$.kind') = 'refund'")


def _receivers_room(conn: sqlite3.Connection, shop: str, writer: str, ref: str,
                    given: dict[str, int]) -> bool:
    """Is `writer` on the chain of hand-overs from `shop` (handover_chain), after it?
    If so, add to `given` what the refunds of `shop`'s sale `ref` held here gave back
    beyond those `_sale` read: those of each branch on the chain before `writer` and
    after `shop` projected, `writer`'s own projected, and each earlier one's (the
    shop's too) still waiting from before its hand-over (its records before it are all
    here once it is: counted whether projected yet or not, so that what the receiver
    may give is the same at every replica, whichever of them is projected first).
    A branch on the chain that handed over in turn refunded, before that, as the last
    open one; its refunds after it wait for ever (_backed, by `seq`)."""
    links, last = handover_chain(conn, shop)
    nodes = [n for n, _at in links] + ([] if last is None else [last])
    if writer not in nodes[1:]:
        return False
    upto = nodes.index(writer)
    for node in nodes[1:upto + 1]:
        for (body,) in conn.execute("SELECT body FROM entries WHERE ref = ? "
                                    "AND kind = 'refund' AND node = ?", (ref, node)):
            _refund_gives(json.loads(body), given)
    handed = dict(links[:upto])
    for body, at in conn.execute(WAITING_REFUNDS, (ref,)).fetchall():
        e = json.loads(body)
        node = e.get("node")
        if node in handed and (handed[node] is None or at is None or at < handed[node]):
            _refund_gives(e, given)
    return True


def _funded(conn: sqlite3.Connection, entries: list[dict[str, Any]], *,
            seq: int | None = None, final: bool = False) -> bool:
    """True if projecting `entries` together keeps every rights row they lower >= 0
    (and what they raise is backed: _backed, to whose `seq` and `final` they go)."""
    if not _backed(conn, entries, seq=seq, final=final):
        return False
    change: dict[tuple[str, str, str], int] = {}
    for e in entries:
        for purse, node, c in e["deltas"]:
            key = (e["member"], purse, node)
            change[key] = change.get(key, 0) + c
    for (member, purse, node), c in change.items():
        if c < 0:
            row = conn.execute(
                "SELECT amount FROM rights WHERE member = ? AND purse = ? AND node = ?",
                (member, purse, node)).fetchone()
            if (row[0] if row else 0) + c < 0:
                return False
    return True


def _unit_seq(conn: sqlite3.Connection, unit: list[tuple[str, str, dict[str, Any]]]
              ) -> int | None:
    """The position in its writer's log of a waiting unit's record (None: not kept)."""
    row = conn.execute("SELECT seq FROM deferred WHERE doc = ? AND key = ?",
                       unit[0][:2]).fetchone()
    return None if row is None else row[0]


def project_deferred(conn: sqlite3.Connection, day_of: Any) -> list[dict[str, Any]]:
    """Project the deferred entries that are now funded; return them.

    Queue by queue (a writer's entries of one member, in its log's order: "Funding in
    log order" above), the head unit while it fits, again over the queues while any
    moved: one queue's transfer can fund another's head. Nothing is projected ahead of
    its queue's head, nor together with other queues' entries to make them fit (two
    transfers that fund only each other, which no honest pair of writers writes in
    log order, wait alike at every replica).

    Only the queues whose funding may have moved are judged: those of the members in
    `temp.funding_moved` (storage: whose entries were projected, taken back or
    deferred since the last call, and the member a projected sweep's "out" moves value
    to). A head unfunded before stays so until its member's rights rows move (only
    entries of that member move them) or, for a sweep's "in", its "out" is projected:
    every other queue would be judged as it was, so which entries end projected is as
    when every queue was judged, as every call did until 5 December (a dishonest
    branch's unfunded entries, piling up, made every later batch read them all).
    """
    if conn.execute("SELECT 1 FROM deferred LIMIT 1").fetchone() is None:
        conn.execute("DELETE FROM temp.funding_moved")
        return []
    heads: dict[tuple[str, str], list[tuple[str, str, dict[str, Any]]]] = {}
    loaded: set[str] = set()

    def load() -> bool:
        """The head units of the queues of the members moved since the last read
        (taking a head out moves its member too: loaded already); True if any moved."""
        moved = {m for (m,) in conn.execute("SELECT member FROM temp.funding_moved")}
        conn.execute("DELETE FROM temp.funding_moved")
        moved -= loaded
        loaded.update(moved)
        for member in sorted(m for m in moved if isinstance(m, str)):
            node = ""
            while row := conn.execute(_NEXT_WRITER, (member, node)).fetchone():
                node = row[0]
                heads[(node, member)] = _head_unit(conn, node, member)
        return bool(moved)

    load()
    done: list[dict[str, Any]] = []
    progress = True
    while progress:
        progress = False
        for q in sorted(heads):
            unit = heads[q]
            while unit and _funded(conn, [e for _d, _k, e in unit], final=True,
                                   seq=_unit_seq(conn, unit)):
                for _doc, _key, entry in unit:
                    project_entry(conn, entry, day_of(id_time_ms(entry["id"])), +1)
                    done.append(entry)
                conn.executemany("DELETE FROM deferred WHERE doc = ? AND key = ?",
                                 [(doc, key) for doc, key, _e in unit])
                unit = _head_unit(conn, *q)
                progress = True
            if unit:
                heads[q] = unit
            else:
                del heads[q]
        # What was projected moved its members' rights (and a sweep's out, its "in"'s
        # member): their queues join, one's transfer may fund another's head.
        progress = load() or progress
    return done


def rejudge_quarantined(storage: Any) -> list[dict[str, Any]]:
    """Judge again the entries set aside (`quarantine`) and project those this build
    takes: an entry of a kind a newer release writes is set aside by an older one,
    and once that branch was upgraded nothing looked at it again, so it held other
    balances than the branches that took it, for good, its writer's later entries of
    the member waiting behind it. Those taken now are judged with the entries of
    their queues (writer, member) that wait in `deferred`, in id order (an honest
    writer's log order): one set aside first came first. Run when a store is opened
    by a build that knows other entry kinds (LedgerBase); returns the entries
    projected, for their points lots to be settled."""
    conn = storage.conn
    quarantined: dict[str, list[str]] = {}
    for doc, key in conn.execute("SELECT doc, key FROM quarantine WHERE doc LIKE 'ledger/%' "
                                 "ORDER BY doc, key").fetchall():
        quarantined.setdefault(str(doc), []).append(str(key))
    judged: dict[str, list[tuple[str, Any]]] = {}
    queues: set[tuple[str, str]] = set()
    for doc, keys in quarantined.items():
        values = storage.doc(doc).plain_values([("entries", k) for k in keys])
        for key in keys:
            value = values.get(("entries", key))
            try:
                entry = normalise_entry(key, _entry_value(value))
            except InvalidRecord:
                continue  # refused still: it stays set aside
            conn.execute("DELETE FROM quarantine WHERE doc = ? AND key = ?", (doc, key))
            judged.setdefault(doc, []).append((key, value))
            queues.add((entry["node"], entry["member"]))
    for node, member in sorted(queues):
        rows = conn.execute(f"SELECT doc, key, body FROM deferred WHERE {_MEMBER} = ? "
                            f"AND {_NODE} = ?", (member, node)).fetchall()
        conn.executemany("DELETE FROM deferred WHERE doc = ? AND key = ?",
                         [(d, k) for d, k, _b in rows])
        for doc, key, body in rows:
            judged.setdefault(str(doc), []).append((str(key), json.loads(body)))
    done: list[dict[str, Any]] = []
    for doc in sorted(judged):
        done += project_entries(conn, doc, judged[doc], storage.day_of, None)
    if done:
        done += project_deferred(conn, storage.day_of)
    return done


# Where a card's status event lists the events its writer had seen (cards.Cards).
SEEN = 4

# The most events one card's record may hold, and the most ids one event may list as
# seen: a card beyond either is malformed, quarantined alike by every replica, and no
# longer a card. They bound what card_frontier does for any record (at most about
# MAX_CARD_EVENTS * MAX_SEEN steps, milliseconds), whatever a dishonest branch appends
# to a card it does not own (member documents have no write rule beyond client ids
# and order). An honest card has a few dozen events at most (issue, losses and finds,
# a return or a replacement); a writer refuses to report a card lost or found once it
# holds CARD_EVENTS_WRITABLE (cards.Cards), and a return or a replacement ends a card,
# so only branches changing one card while apart add to that: ten of them, each
# toggling it about ninety times before they meet, to pass MAX_CARD_EVENTS. An event
# lists the events no other had seen where it was written: more than one only when
# branches changed the card concurrently, one per such branch.
MAX_CARD_EVENTS = 1000
MAX_SEEN = 64
CARD_EVENTS_WRITABLE = MAX_CARD_EVENTS // 10


def _status_events(events: list[Any]) -> list[list[Any]]:
    """The events naming a status a card can have (only a misbehaving peer writes
    another), passed over alike everywhere."""
    return [e for e in events if isinstance(e, list) and len(e) >= 2 and isinstance(e[0], str)
            and is_one_of(e[1], CARD_STATUSES)]


def card_frontier(events: list[Any]) -> list[list[Any]]:
    """The status events no other event has seen: what a writer knew of a card's
    status is what it saw, so an event made after seeing another wins over it, whatever
    the clocks said (a branch whose clock ran ahead must not keep a card lost that
    the owner found at a branch with the right clock).

    An event lists the ids of the events its writer had seen at index SEEN (the
    frontier, from which the rest follow). The first event, written with the card,
    has seen nothing; an event written before events listed what they saw has seen
    every such event with a smaller id (the rule of its time), and none that lists
    (an old writer would have let a larger id win anyway). "Seen" is followed
    through; two events that each come to have seen the other (only a misbehaving
    writer lists an event it could not have seen) are concurrent. Every replica holds
    the same events, so every replica computes the same frontier.

    In graph terms: an event is hidden when an event outside its strongly connected
    component of the "has seen" graph has seen it, that is when an edge enters its
    component from outside. One pass of Tarjan's algorithm, linear in the events and
    the ids they list; a record with more than MAX_CARD_EVENTS events or an event
    listing more than MAX_SEEN raises InvalidRecord (quarantined by record_change)."""
    if len(events) > MAX_CARD_EVENTS:
        raise InvalidRecord(f"card has {len(events)} events, more than {MAX_CARD_EVENTS}")
    valid = sorted(_status_events(events), key=lambda e: e[0])
    if not valid:
        return []
    first = events[0][0] if isinstance(events[0], list) and events[0] else None
    n = len(valid)
    index = {e[0]: i for i, e in enumerate(valid)}
    # Nodes 0..n-1 are the events in id order. An event listing nothing has seen every
    # earlier such event: instead of an edge to each (quadratic), one to node n+k,
    # which has seen the k-th such event and node n+k-1 (the earlier ones). Those
    # nodes are in no cycle (they and such events reach only earlier ones), so they
    # change neither what an event reaches nor the components.
    succ: list[list[int]] = []
    chain: list[list[int]] = []  # node n+k: [the k-th event listing nothing, n+k-1]
    used = 0  # chain nodes some event has seen (those after are dropped: seen by none)
    for i, e in enumerate(valid):
        listed = e[SEEN] if len(e) > SEEN else None
        if isinstance(listed, list):
            if len(listed) > MAX_SEEN:
                raise InvalidRecord(f"card event {e[0][:40]!r} lists {len(listed)} "
                                    f"events as seen, more than {MAX_SEEN}")
            out = []
            for ident in listed:
                j = index.get(ident) if isinstance(ident, str) else None
                if j is not None and j != i:
                    out.append(j)
            succ.append(out)
        else:
            if e[0] == first or not chain:
                succ.append([])
            else:
                succ.append([n + len(chain) - 1])
                used = len(chain)
            chain.append([i, n + len(chain) - 1] if chain else [i])
    succ += chain[:used]
    comp = _components(succ)
    entered = {comp[w] for v, out in enumerate(succ) for w in out if comp[w] != comp[v]}
    return [e for i, e in enumerate(valid) if comp[i] not in entered]


def _components(succ: list[list[int]]) -> list[int]:
    """The strongly connected component of each node of a graph (Tarjan's algorithm,
    iterative: a liar's chain of events must not meet Python's recursion limit)."""
    n = len(succ)
    order = [-1] * n  # when the search reached the node
    low = [0] * n
    comp = [-1] * n  # -1: not yet in a component (on the stack once reached)
    stack: list[int] = []
    reached = found = 0
    for root in range(n):
        if order[root] != -1:
            continue
        order[root] = low[root] = reached
        reached += 1
        stack.append(root)
        work = [(root, 0)]
        while work:
            v, k = work[-1]
            if k < len(succ[v]):
                work[-1] = (v, k + 1)
                w = succ[v][k]
                if order[w] == -1:
                    order[w] = low[w] = reached
                    reached += 1
                    stack.append(w)
                    work.append((w, 0))
                elif comp[w] == -1:
                    low[v] = min(low[v], order[w])
                continue
            work.pop()
            if work:
                u = work[-1][0]
                low[u] = min(low[u], low[v])
            if low[v] == order[v]:
                while True:
                    w = stack.pop()
                    comp[w] = found
                    if w == v:
                        break
                found += 1
    return comp


# Statuses a card never leaves: replaced (补卡) and returned (退卡).
_FINAL: tuple[CardStatus, ...] = ("replaced", "returned")


def _card_status(events: list[Any]) -> CardStatus:
    """The status of the frontier (card_frontier); among concurrent events there, a
    final one (replaced, returned) wins, then the larger id (its writer's clock, then
    its node), the same on every replica. By id alone, a branch cut off that marked a
    lost card found a little after another replaced it brought the old card (a
    thief's) back beside the new one, for good."""
    frontier = card_frontier(events)
    if not frontier:
        return "active"
    final = [e for e in frontier if e[1] in _FINAL]
    status: CardStatus = (final or frontier)[-1][1]
    return status


def reproject(conn: sqlite3.Connection) -> None:
    """What a build that projected rows another way left (storage.PROJECTION): a card
    whose status a concurrent event won over a replacement or a return (the old card,
    a thief's, paid on at the branches that held it before this build, and was refused
    at one that joined after), and a member whose `merged_into` is no member id (every
    edit of her failed). Both read from the row's own body, as projected."""
    for cid, body in conn.execute("SELECT id, body FROM cards").fetchall():
        try:
            status = _card_status(json.loads(body).get("events") or [])
        except (InvalidRecord, ValueError, AttributeError):
            continue
        conn.execute("UPDATE cards SET status = ? WHERE id = ? AND status != ?",
                     (status, cid, status))
    for mid, into in conn.execute(
            "SELECT id, json_extract(body, '$.merged_into') FROM members "
            "WHERE json_extract(body, '$.merged_into') IS NOT NULL").fetchall():
        if not (isinstance(into, str) and ID.match(into)):
            conn.execute("UPDATE members SET body = json_remove(body, '$.merged_into') "
                         "WHERE id = ?", (mid,))
    # Before "2" an exit's cash paid back stayed in the member's top-ups, before "3"
    # any settlement's or top-up's `paid` counted whole, however little cash it moved,
    # and before "4" corrections of cash did not count (spent_topped): every member's
    # top-ups summed again from their entries, by the one function (so a build going
    # back and forth counts nothing twice).
    topped: dict[str, int] = {}
    for (body,) in conn.execute(
            "SELECT body FROM entries WHERE kind IN ('topup', 'exit_settle', 'correction')"):
        e = json.loads(body)
        topped[e["member"]] = topped.get(e["member"], 0) + spent_topped(e)[1]
    # A member whose top-ups summed to nothing before has no row yet.
    conn.executemany("INSERT INTO totals(member, spent, topped) VALUES (?, 0, ?) "
                     "ON CONFLICT(member) DO UPDATE SET topped = excluded.topped",
                     [(m, t) for m, t in topped.items()])


# A member's fields that are maps (crdtledger.members): another value there (a liar's
# list) made the member page, every tag segment of a broadcast and every edit fail.
MEMBER_MAPS = ("prefs", "tags", "custom", EDITS)


def record_change(conn: sqlite3.Connection, doc: str, root: str, key: str, value: Any,
                  day_of: Any) -> None:
    """Rewrite the projection row of one member, card, rule, operator or role."""
    try:
        data = _as_plain(value)
        if not isinstance(data, dict) or not isinstance(key, str) or len(key) > 64:
            raise InvalidRecord("not a map")
    except InvalidRecord as e:
        conn.execute("INSERT OR REPLACE INTO quarantine VALUES (?,?,?)", (doc, key, str(e)))
        return
    try:
        if root == "members":
            if not ID.match(key):
                raise InvalidRecord("bad member id")
            if member_doc(key) != doc:
                # Honest writes file a member in its shard; a copy filed in another
                # (a liar's) was projected over it by whichever came last, so replicas
                # differed, and could be deleted or moved home at some of them.
                raise InvalidRecord(f"member {key} belongs in {member_doc(key)}")
            if "erased" in data and not erased(data):
                del data["erased"]  # a flag set in place: no erasure (model.erased)
            into = data.get("merged_into")
            if into is not None and not (isinstance(into, str) and ID.match(into)):
                # A liar's list or number: no merge. Read in SQL as the JSON text
                # '["x"]', it made a group of its own, whose points lots the member's
                # next edit inserted a second time (a 500 for every edit of her).
                del data["merged_into"]
            for sub in MEMBER_MAPS:  # what every reader takes for a map (prefs.items())
                if sub in data and not isinstance(data[sub], dict):
                    data[sub] = {}
            created = id_time_ms(key)
            phone = str(data.get("phone", ""))
            row = conn.execute("SELECT json_extract(body, '$.merged_into') FROM members "
                               "WHERE id = ?", (key,)).fetchone()
            was = row[0] if row else None
            conn.execute(
                "INSERT OR REPLACE INTO members VALUES (?,?,?,?,?,?,?,?)",
                (key, str(data.get("name", "")), phone, str(data.get("home", "")), created,
                 day_of(created), dumps(data), canonical_phone(phone)),
            )
            # Merged into another, or the survivor of a merge that came first: the
            # group's points lots are one member's. A pointer moved to another survivor
            # (a second merge of the same duplicate, made apart, won) or cleared leaves
            # its old group without it: that group is replayed too, or its lots kept
            # the points the member's group had spent from them.
            if was is not None and was != data.get("merged_into"):
                touch_group(conn, key)
                touch_group(conn, str(was))
            elif conn.execute(f"SELECT {IN_MERGE}", (key,)).fetchone()[0]:
                touch_group(conn, key)
        elif root == "cards":
            if not ID.match(key):
                raise InvalidRecord("bad card id")
            owner = data.get("member")
            if not isinstance(owner, str) or member_doc(owner) != doc:
                # A card lives in its member's shard, where its events are written: one
                # filed elsewhere paid with a PIN its writer chose and could be neither
                # reported lost nor replaced (their events went to the member's shard).
                raise InvalidRecord(f"card {key} is not in its member's document")
            try:
                status = _card_status(data.get("events") or [])
            except InvalidRecord:
                # No card, as on a replica that never saw it well-formed: what a
                # replica holds depends on the record only.
                conn.execute("DELETE FROM cards WHERE id = ?", (key,))
                raise
            conn.execute(
                "INSERT OR REPLACE INTO cards VALUES (?,?,?,?,?)",
                (key, str(data.get("card_no", "")), str(data.get("member", "")), status,
                 dumps(data)),
            )
        elif root == "rules":
            body = json.loads(str(data["body"]))
            conn.execute(
                "INSERT OR REPLACE INTO rules VALUES (?,?,?,?)",
                (key, str(data["kind"]), str(data["effective_from"]), dumps(body)),
            )
        elif root == "operators":
            conn.execute(
                "INSERT OR REPLACE INTO operators VALUES (?,?,?)",
                (key, str(data.get("name", "")), dumps(data)),
            )
        elif root == "roles":
            conn.execute("INSERT OR REPLACE INTO roles VALUES (?,?)", (key, dumps(data)))
    except (KeyError, ValueError, TypeError) as e:
        conn.execute("INSERT OR REPLACE INTO quarantine VALUES (?,?,?)", (doc, key, str(e)))
