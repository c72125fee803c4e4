"""Reads that check or audit a store rather than serve a shop.

The simulator asserts invariants after every step and compares converged replicas;
the benchmarks report how big a store is. They used to read the projection tables
with their own SQL, which made the tables an API nobody declared. These are the
questions they ask, declared here beside the schema (crdtledger/storage.py) so that
a change of the tables changes them too. Shop features read through `views`.

The audit trail (`trail`, at the end) is the owner's question of the same kind: who
did what, when and at which branch, read from what every record says of its writer.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Literal, TypedDict

from crdtledger import localtime, lots, views
from crdtledger.backups import RESTORE_DAMAGED
from crdtledger.errors import InvalidInput, LocalProtocolError, RemoteProtocolError, StoreError
from crdtledger.hlc import id_time_ms
from crdtledger.model import (
    EDITS,
    ENTRY_KINDS,
    InvalidRecord,
    entry_doc,
    normalise_entry,
    possible_ledger_docs,
)
from crdtledger.money import format_purse, format_yuan
from crdtledger.projection import _entry_value, project_entries, project_entry, record_change
from crdtledger.storage import POINTS_NOTED, SCHEMA, dumps

if TYPE_CHECKING:
    from crdtledger.ledger import Ledger

log = logging.getLogger("crdtledger.audit")
# To the handlers of whoever runs the library (the node's log), and to none where
# nobody set one: the command line says a refusal once, on its own line, and Python's
# last-resort handler printed this warning above it.
log.addHandler(logging.NullHandler())

ReplicaTable = Literal["entries", "rights", "totals", "members", "cards", "rules",
                       "operators", "roles", "quarantine", "deferred"]

# Each projection as converged replicas must hold it, in one canonical order. Rows
# that mean nothing are left out (a rights or totals row of zero may exist at one
# replica and not at another: a row is created when a purse is touched); a deferred
# entry's body is its document's, so its key says enough.
REPLICA_TABLES: dict[ReplicaTable, str] = {
    "entries": "SELECT id, kind, member, node, op, at, day, amount, paid, ref, service, body "
               "FROM entries ORDER BY id",
    "rights": "SELECT member, purse, node, amount FROM rights WHERE amount != 0 "
              "ORDER BY member, purse, node",
    "totals": "SELECT member, spent, topped FROM totals WHERE spent != 0 OR topped != 0 "
              "ORDER BY member",
    # phone_canonical left out: a function of the phone (and a store upgraded in
    # place fills it as a new one does).
    "members": "SELECT id, name, phone, home, created_at, day, body FROM members ORDER BY id",
    "cards": "SELECT * FROM cards ORDER BY id",
    "rules": "SELECT * FROM rules ORDER BY id",
    "operators": "SELECT * FROM operators ORDER BY id",
    "roles": "SELECT * FROM roles ORDER BY name",
    "quarantine": "SELECT * FROM quarantine ORDER BY doc, key",
    "deferred": "SELECT doc, key FROM deferred ORDER BY doc, key",
}


def tables(ledger: Ledger) -> sqlite3.Connection:
    """The store's tables as they are, for a checker that must work the figures out
    again itself rather than through the library's computations it checks (the
    simulator's oracles, sim/oracles.py): a bug in those would be its own answer.
    Read only; what it reads is the schema beside it (crdtledger/storage.py)."""
    return ledger.storage.conn


# Entries this store set aside for want of funding (crdtledger.projection), noted
# once each by a trigger of this connection: counted as the library defers them, not
# guessed from the traffic (the simulator's count). A temporary table is part of the
# transaction, so what a rolled-back apply deferred is not counted; it goes with the
# connection, so it is read before every close.
_DEFERRALS = (
    "CREATE TEMP TABLE IF NOT EXISTS audit_deferred(doc TEXT, key TEXT, PRIMARY KEY(doc, key))",
    "CREATE TEMP TRIGGER IF NOT EXISTS audit_deferred_note AFTER INSERT ON main.deferred "
    "BEGIN INSERT OR IGNORE INTO audit_deferred VALUES (NEW.doc, NEW.key); END",
)


def count_deferrals(ledger: Ledger) -> None:
    """From now on, note each entry this store defers (`deferrals`); for this open
    only (temporary objects of its connection)."""
    for sql in _DEFERRALS:
        ledger.storage.conn.execute(sql)


def deferrals(ledger: Ledger) -> int:
    """How many entries were deferred since `count_deferrals`."""
    return int(ledger.storage.conn.execute(
        "SELECT COUNT(*) FROM temp.audit_deferred").fetchone()[0])


def replica_rows(ledger: Ledger, table: ReplicaTable) -> list[tuple[Any, ...]]:
    """A projection's meaningful rows in canonical order: the simulator digests them
    and requires every converged replica to hold the same."""
    return [tuple(r) for r in ledger.storage.conn.execute(REPLICA_TABLES[table])]


def negative_rights(ledger: Ledger) -> tuple[str, str, str, int] | None:
    """A rights row below zero (member, purse, node, amount), None if there is none:
    the escrow invariant, which the simulator checks after every step of every node.
    O(1) whatever the size of the store: the schema keeps a partial index of such rows
    (`rights_negative`), which is always empty while the invariant holds."""
    row = ledger.storage.conn.execute(
        "SELECT member, purse, node, amount FROM rights WHERE amount < 0 LIMIT 1").fetchone()
    return (str(row[0]), str(row[1]), str(row[2]), int(row[3])) if row is not None else None


def negative_purses(ledger: Ledger, limit: int = 3) -> list[tuple[str, str, int]]:
    """Purses (member, purse, total over all branches) below zero: none may exist at a
    converged replica, whatever the partitions were."""
    return [(str(m), str(p), int(t)) for m, p, t in ledger.storage.conn.execute(
        "SELECT member, purse, TOTAL(amount) FROM rights GROUP BY member, purse "
        "HAVING TOTAL(amount) < 0 LIMIT ?", (limit,))]


def quarantined(ledger: Ledger, limit: int = 3) -> list[tuple[str, str, str]]:
    """Records refused on arrival (document, key, reason): none in an honest chain."""
    return [(str(d), str(k), str(r)) for d, k, r in ledger.storage.conn.execute(
        "SELECT doc, key, reason FROM quarantine ORDER BY doc, key LIMIT ?", (limit,))]


def waiting(ledger: Ledger, limit: int = 3) -> list[tuple[str, str]]:
    """Entries still deferred for want of their funding (document, key): none once
    replicas have converged."""
    return [(str(d), str(k)) for d, k in ledger.storage.conn.execute(
        "SELECT doc, key FROM deferred ORDER BY doc, key LIMIT ?", (limit,))]


# What each kind of document holds under which root, and the table projecting it.
_PROJECTED = (("ledger/", "entries", "entries"), ("members/", "members", "members"),
              ("members/", "cards", "cards"))
# The tables `unprojected` projects again from the documents and compares, each as
# REPLICA_TABLES reads it (cards by their columns' names: a store upgraded in place may
# order them otherwise), keyed by their first column (an id; a member for rights and
# totals, which sum what her entries move).
_REBUILT: dict[str, str] = {
    "entries": REPLICA_TABLES["entries"], "members": REPLICA_TABLES["members"],
    "cards": "SELECT id, card_no, member, status, body FROM cards ORDER BY id",
    "rights": REPLICA_TABLES["rights"], "totals": REPLICA_TABLES["totals"],
    "rules": "SELECT id, kind, effective_from, body FROM rules ORDER BY id",
    "operators": "SELECT id, name, body FROM operators ORDER BY id",
    "roles": "SELECT name, body FROM roles ORDER BY name",
    # Keyed by member: the lots are a fold of each member's group (crdtledger.lots), not
    # rows of their own. A lot's points raised or its expiry put later by hand showed
    # the member points never earned, and let expired ones be spent.
    "points_lots": "SELECT member, earned, expires, left FROM points_lots "
                   "ORDER BY member, earned"}
# Suffix of `unprojected`'s keys for rows that differ from the documents' projection.
CHANGED = " changed"


def unprojected(ledger: Ledger) -> dict[str, list[str]]:
    """Records the documents hold that no table projects, nor holds waiting (deferred)
    or refused (quarantine), by table (and under "documents", those that do not
    decode): none in a store only this program wrote. A row
    deleted by hand (sqlite3, the node stopped) left the day's report short and a
    refund of the sale "no debit", and no check said so: the closing attests rights,
    totals and logs, not these rows. Reads every document: `status --check` only.

    Rows changed (or added) by hand too, under "<table> changed" (CHANGED): the
    documents are projected again, by the projection's own functions (a catch-up's),
    into a store in memory, and its entries, members, cards, rights, totals, rules,
    operators and roles compared with the tables' (ids; members for rights and
    totals), and the points lots with every group's lots replayed from those entries
    (members). A debit's
    amount raised in its row was refunded as raised and the bonus sold; totals raised
    made a member gold; a lost card set active paid; and no check said a word."""
    st = ledger.storage
    conn = st.conn
    held = {(str(d), str(k)) for d, k in conn.execute(
        "SELECT doc, key FROM deferred UNION SELECT doc, key FROM quarantine")}
    out: dict[str, list[str]] = {}
    rebuilt = sqlite3.connect(":memory:")
    try:
        rebuilt.executescript(SCHEMA)
        for prefix, root, table in _PROJECTED:
            rows = {str(i) for (i,) in conn.execute(f"SELECT id FROM {table}")}
            for (name,) in conn.execute("SELECT name FROM docs WHERE substr(name, 1, ?) = ? "
                                        "ORDER BY name", (len(prefix), prefix)).fetchall():
                try:
                    ld = st.doc(name)
                    # As plain values, read through Yrs' own JSON (LoadedDoc.plain_values):
                    # pycrdt's item by item was most of the check's time.
                    keys = list(ld.roots[root].keys())
                    items = [(key, value) for (_r, key), value in ld.plain_values(
                        [(root, key) for key in keys]).items()]
                except BaseException as e:  # pyo3 panics are BaseExceptions
                    if isinstance(e, KeyboardInterrupt | SystemExit):
                        raise
                    # A snapshot or update that does not decode (edited by hand,
                    # damaged): said as such, not a traceback of the check that reads it.
                    if name not in out.get("documents", []):
                        out.setdefault("documents", []).append(name)
                    continue
                missing = [key for key, _ in items
                           if key not in rows and (name, key) not in held]
                if missing:
                    out.setdefault(table, []).extend(sorted(missing))
                mine = [(key, value) for key, value in items if (name, key) not in held]
                if root == "entries":
                    # A month at once, as a catch-up projects it (in the documents'
                    # order: months ascending); what is refused was quarantined here
                    # when it came (held); what waits for funding here, below.
                    project_entries(rebuilt, name, mine, st.day_of)
                    continue
                for key, value in mine:
                    record_change(rebuilt, name, root, key, value, st.day_of)
        # Rules, operators and roles: few, and compared only (no row of theirs is
        # said missing): a service's price lowered in its rules row sold at that price.
        for name, root in (("rules", "rules"), ("operators", "operators"),
                           ("operators", "roles")):
            if _has_doc(conn, name):
                ld = st.doc(name)
                keys = list(ld.roots[root].keys())
                for (_r, key), value in ld.plain_values([(root, key) for key in keys]).items():
                    if (name, key) not in held:
                        record_change(rebuilt, name, root, key, value, st.day_of)
        # Funding that came in a later month's document (a clock behind at the month's
        # turn): the store projected these (they are not held), so they are projected
        # here too, one by one; sums, so in any order.
        for (body,) in rebuilt.execute("SELECT body FROM deferred").fetchall():
            entry = json.loads(body)
            project_entry(rebuilt, entry, st.day_of(entry["at"]), +1)
        # The lots as every group's replay of the entries gives them: the definition
        # (lots.replay), which the table must hold. (Joining from a closing's lots is
        # not built: every store holds the entries its lots were folded from.)
        lots.fill(rebuilt)
        for table, sql in _REBUILT.items():
            changed = _differing(conn.execute(sql), rebuilt.execute(sql),
                                 both=table in ("rights", "totals", "points_lots"))
            if changed:
                out[table + CHANGED] = changed
    finally:
        POINTS_NOTED.discard(id(rebuilt))  # its points lots are nobody's to settle
        rebuilt.close()
    return out


def _differing(held: Iterable[Sequence[Any]], projected: Iterable[Sequence[Any]], *,
               both: bool) -> list[str]:
    """The keys (first column) whose rows differ between a table as held and as
    projected again; of the rows held only, unless `both` (a row the documents project
    and the table lacks is said by `unprojected` as missing: a row deleted)."""
    mine, theirs = set(map(tuple, held)), set(map(tuple, projected))
    return sorted({str(row[0]) for row in (mine ^ theirs if both else mine - theirs)})


def entry_as_written(ledger: Ledger, entry_id: str, body: str) -> dict[str, Any]:
    """Entry `entry_id` as its ledger document holds it (what its writer signed), its
    row in `entries` (whose body is `body`) having found it; StoreError if the row says
    otherwise (changed by hand with sqlite3, the node stopped): a debit's amount raised
    in its row was refunded as raised (50.00 sold, 50,000.00 paid back)."""
    st = ledger.storage
    # Its month in the chain's zone (where its writer filed it), else in any zone.
    names = [entry_doc(entry_id, st.day_of), *sorted(possible_ledger_docs(entry_id))]
    for name in dict.fromkeys(names):
        if _has_doc(st.conn, name):
            value = st.doc(name).roots["entries"].get(entry_id)
            if value is not None:
                try:
                    entry = normalise_entry(entry_id, _entry_value(value))
                except InvalidRecord:
                    break
                if dumps(entry) == body:
                    return entry
                break
    raise StoreError(f"EDITED store: entry {entry_id}'s row in its entries table differs "
                     "from its ledger document (changed by hand): nothing is refunded by it "
                     "(crdtledger status --check says what else was changed). "
                     f"{RESTORE_DAMAGED}.")


def _has_doc(conn: sqlite3.Connection, name: str) -> bool:
    return conn.execute("SELECT 1 FROM docs WHERE name = ?", (name,)).fetchone() is not None


def ids(ledger: Ledger, table: Literal["entries", "members", "cards", "rules"]) -> list[str]:
    """Every id of a projection, sorted: the simulator compares them with what was
    acknowledged and with the keys of the documents."""
    return [str(i) for (i,) in ledger.storage.conn.execute(
        f"SELECT id FROM {table} ORDER BY id")]


def entry_days(ledger: Ledger) -> list[str]:
    """The days on which entries were written, sorted: the days a report may cover."""
    return [str(d) for (d,) in ledger.storage.conn.execute(
        "SELECT DISTINCT day FROM entries ORDER BY day")]


def entries(ledger: Ledger, kind: str | None = None) -> Iterator[dict[str, Any]]:
    """Every projected entry (of `kind`), in id order: independent recomputations of
    rights and settlement check the views against them."""
    sql, args = "SELECT body FROM entries", []
    if kind is not None:
        sql, args = sql + " WHERE kind = ?", [kind]
    for (body,) in ledger.storage.conn.execute(sql + " ORDER BY id", args):
        yield json.loads(body)


class StoreStats(TypedDict):
    """How much a store holds, for benchmark reports and their sanity checks."""

    members: int
    cards: int
    entries: int
    quarantine: int
    negative_rights: int
    documents: int
    log_rows: int
    db_bytes: int  # pages in use: the file's size once the WAL is checkpointed


def store_stats(ledger: Ledger) -> StoreStats:
    conn = ledger.storage.conn

    def one(sql: str) -> int:
        return int(conn.execute(sql).fetchone()[0])

    return {
        "members": one("SELECT COUNT(*) FROM members"),
        "cards": one("SELECT COUNT(*) FROM cards"),
        "entries": one("SELECT COUNT(*) FROM entries"),
        "quarantine": one("SELECT COUNT(*) FROM quarantine"),
        "negative_rights": one("SELECT COUNT(*) FROM rights WHERE amount < 0"),
        "documents": one("SELECT COUNT(*) FROM docs"),
        "log_rows": one("SELECT COUNT(*) FROM log"),
        "db_bytes": one("PRAGMA page_count") * one("PRAGMA page_size"),
    }


def logged_documents(ledger: Ledger) -> list[str]:
    """Documents with updates in the log since their snapshot: what a full compaction
    (a benchmark preparing a store as a year of operation leaves it) must fold."""
    return [str(n) for (n,) in ledger.storage.conn.execute(
        "SELECT DISTINCT doc FROM log ORDER BY doc")]


class DocumentStats(TypedDict):
    """What loading a document reads: its snapshot and the log tail replayed on it."""

    snapshot_bytes: int
    log_updates: int
    log_bytes: int


def document_stats(ledger: Ledger, name: str) -> DocumentStats:
    conn = ledger.storage.conn
    (snapshot,) = conn.execute(
        "SELECT COALESCE(SUM(LENGTH(data)), 0) FROM snapshots WHERE name = ?", (name,)
    ).fetchone()
    tail, tail_bytes = conn.execute(
        "SELECT COUNT(*), COALESCE(SUM(LENGTH(data)), 0) FROM log WHERE doc = ?", (name,)
    ).fetchone()
    return {"snapshot_bytes": int(snapshot), "log_updates": int(tail),
            "log_bytes": int(tail_bytes)}


# --- the audit trail ---------------------------------------------------------------

# What the trail calls an action: a ledger entry by its kind; a change of a member,
# card, operator, role or rule by the operation that makes it.
RECORD_ACTIONS = ("member.add", "member.edit", "card.lost", "card.found", "card.return",
                  "card.replace", "operator.add", "operator.set", "role.define", "rule.set")
ACTIONS: tuple[str, ...] = (*sorted(ENTRY_KINDS), *RECORD_ACTIONS)
# A card's status event, by the status it sets (the first, at issue, is the card entry).
_CARD_ACTIONS = {"lost": "card.lost", "active": "card.found", "returned": "card.return",
                 "replaced": "card.replace"}
TRAIL_LIMIT = 10_000


class AuditRow(TypedDict):
    """One action. `id` is the entry's or the change's own (it sorts by time); ""
    where a record does not say (a change written before the trail has no operator)."""

    id: str
    time: str  # in the chain's time zone, to the second
    branch: str  # the node that wrote it
    action: str  # one of ACTIONS
    operator: str  # operator id (owner@NODE for a node's owner)
    operator_name: str
    approver: str
    approver_name: str
    member: str
    amount: int  # fen (an entry's amount); 0 for a change of a record
    pay: str  # how it was paid: stored, package or a payment method code
    service: str
    reason: str
    ref: str  # the debit a refund refunds
    detail: str  # what else the record says: purse moved, fields changed, card number


def trail(ledger: Ledger, operator: str | None = None, branch: str | None = None,
          kind: str | None = None, start: str | None = None, end: str | None = None,
          limit: int = 500) -> list[AuditRow]:
    """Who did what, when, at which branch: the newest `limit` actions of the days
    start..end (inclusive, either open), written at `branch`, of `kind` (one of
    ACTIONS), done or approved by `operator` (an id), newest first.

    Ledger entries name their operator and approver; members, operators and roles
    list who changed them (model.EDITS); card events and rule versions carry theirs;
    a member or an operator names who created it. Every id (an entry's, a change's)
    is minted by the branch that wrote it, from its clock: it says where and when."""
    if kind is not None and kind not in ACTIONS:
        raise InvalidInput(f"kind must be one of {', '.join(ACTIONS)}")
    limit = max(1, min(int(limit), TRAIL_LIMIT))
    st = ledger.storage
    lo = st.day_start_id(start) if start else ""
    hi = st.day_start_id(end, days_later=1) if end else "~"  # "~" sorts after any id
    conn = st.conn
    # The same filters on a change id (its branch is its suffix) and on who made it,
    # as SQL over `key` and `who`: each query returns at most `limit` rows.
    suffix = f"%.{branch}" if branch is not None else "%"

    def filtered(sql: str, key: str, who: str, *args: Any) -> list[tuple[Any, ...]]:
        sql += f" AND {key} >= ? AND {key} < ? AND {key} LIKE ?"
        args = (*args, lo, hi, suffix)
        if operator is not None:
            sql += f" AND {who} = ?"
            args = (*args, operator)
        return conn.execute(f"{sql} ORDER BY {key} DESC LIMIT ?", (*args, limit)).fetchall()

    rows: list[dict[str, Any]] = []
    if kind is None or kind in ENTRY_KINDS:
        rows += _entry_actions(ledger, operator, branch, kind, lo, hi, limit)
    if kind in (None, "member.add"):
        rows += [{"id": mid, "action": "member.add", "operator": who or "", "member": mid}
                 for mid, who in filtered(
                     "SELECT id, json_extract(body, '$.created_by') FROM members WHERE 1",
                     "id", "json_extract(body, '$.created_by')")]
    if kind in (None, "member.edit"):
        rows += [_noted(cid, "member.edit", note, member=mid) for mid, cid, note in filtered(
            "SELECT m.id, e.key, e.value FROM members m, json_each(m.body, ?) e WHERE 1",
            "e.key", "json_extract(e.value, '$.op')", f"$.{EDITS}")]
    wanted = [s for s, a in _CARD_ACTIONS.items() if kind in (None, a)]
    if wanted:
        event_id = "json_extract(e.value, '$[0]')"
        for no, mid, event in filtered(
                "SELECT c.card_no, c.member, e.value FROM cards c, "
                f"json_each(c.body, '$.events') e WHERE {event_id} != c.id "  # != its issue
                f"AND json_extract(e.value, '$[1]') IN ({', '.join('?' * len(wanted))})",
                event_id, "json_extract(e.value, '$[3]')", *wanted):
            ev = json.loads(event)
            action = _CARD_ACTIONS[ev[1]]
            detail = f"card {no}"
            if action == "card.replace" and len(ev) > 2:  # the note: the new card's id
                new = conn.execute("SELECT card_no FROM cards WHERE id = ?", (ev[2],)).fetchone()
                detail += f" → {new[0] if new else ev[2]}"
            rows.append({"id": str(ev[0]), "action": action, "member": mid, "detail": detail,
                         "operator": str(ev[3]) if len(ev) > 3 else ""})
    if kind in (None, "operator.add", "operator.set", "role.define", "rule.set"):
        rows += _governance(ledger, kind)
    rows = [r for r in rows if r and lo <= r["id"] < hi
            and (branch is None or r["id"].rsplit(".", 1)[-1] == branch)
            and (operator is None or operator in (r.get("operator"), r.get("approver")))]
    rows.sort(key=lambda r: r["id"], reverse=True)
    names = {o["id"]: o["name"] for o in views.operators(ledger)}
    zone = localtime.zone(ledger)  # the branch's clock, as every page and command shows
    out: list[AuditRow] = []
    for r in rows[:limit]:
        at = int(r.get("at") or id_time_ms(r["id"]))
        who, approver = str(r.get("operator") or ""), str(r.get("approver") or "")
        out.append({
            "id": r["id"],
            "time": localtime.show(at / 1000, zone),
            "branch": r["id"].rsplit(".", 1)[-1], "action": r["action"],
            "operator": who, "operator_name": names.get(who, who),
            "approver": approver, "approver_name": names.get(approver, approver),
            "member": str(r.get("member") or ""), "amount": int(r.get("amount") or 0),
            "pay": str(r.get("pay") or ""), "service": str(r.get("service") or ""),
            "reason": str(r.get("reason") or ""), "ref": str(r.get("ref") or ""),
            "detail": str(r.get("detail") or ""),
        })
    return out


COLUMNS = ("time", "branch", "action", "operator", "approver", "member", "amount", "pay",
           "service", "reason", "ref", "detail", "id")


def table(rows: Sequence[AuditRow]) -> list[list[str]]:
    """The trail as one table, a header then a line per action (amounts in yuan,
    operators by name): the command line's --csv and its text. The back office's
    export has the same columns, its headers in the counter's language."""
    return [list(COLUMNS), *([
        r["time"], r["branch"], r["action"], r["operator_name"], r["approver_name"],
        r["member"], format_yuan(r["amount"]) if r["amount"] else "", r["pay"], r["service"],
        r["reason"], r["ref"], r["detail"], r["id"]] for r in rows)]


def _governance(ledger: Ledger, kind: str | None) -> list[dict[str, Any]]:
    """Operators added and changed, roles defined, rules set (few: read whole)."""
    conn = ledger.storage.conn
    rows: list[dict[str, Any]] = []
    if kind in (None, "operator.add", "operator.set"):
        for oid, name, body in conn.execute("SELECT id, name, body FROM operators"):
            data = json.loads(body)
            if kind in (None, "operator.add"):
                rows.append({"id": oid, "action": "operator.add", "detail": f"operator {name}",
                             "operator": str(data.get("created_by") or "")})
            if kind in (None, "operator.set"):
                rows += [_noted(cid, "operator.set", note, detail=f"operator {name}")
                         for cid, note in (data.get(EDITS) or {}).items()]
    if kind in (None, "role.define"):
        for role, body in conn.execute("SELECT name, body FROM roles"):
            rows += [_noted(cid, "role.define", note, detail=f"role {role}")
                     for cid, note in (json.loads(body).get(EDITS) or {}).items()]
    if kind in (None, "rule.set"):
        # The projection keeps a version's body only; who set it is in the record, read
        # from the rules document (a few dozen versions).
        for rid, rec in ledger.storage.doc("rules").roots["rules"].items():
            if isinstance(rec, dict):
                rows.append({"id": rid, "action": "rule.set", "operator": str(rec.get("by", "")),
                             "detail": f"{rec.get('kind')} from {rec.get('effective_from')}"})
    return rows


def _noted(change_id: str, action: str, note: Any, **row: str) -> dict[str, Any]:
    """A change noted in a record's EDITS (commit.note_edit), as a trail row; {} for a
    note of another shape (only a misbehaving writer makes one)."""
    n = json.loads(note) if isinstance(note, str) else note
    if not isinstance(n, dict) or not isinstance(change_id, str):
        return {}
    fields = ", ".join(str(f) for f in n.get("fields") or [])
    detail = "  ".join(d for d in (row.pop("detail", ""), fields) if d)
    return {"id": change_id, "action": action, "operator": str(n.get("op") or ""),
            "detail": detail, **row}


def _entry_actions(ledger: Ledger, operator: str | None, branch: str | None,
                   kind: str | None, lo: str, hi: str, limit: int) -> list[dict[str, Any]]:
    """The newest ledger entries of the filters, as trail rows."""
    where, args = "id >= ? AND id < ?", [lo, hi]
    if kind is not None:
        where += " AND kind = ?"
        args.append(kind)
    if branch is not None:
        where += " AND node = ?"
        args.append(branch)
    if operator is not None:
        where += " AND (op = ? OR json_extract(body, '$.approver') = ?)"
        args += [operator, operator]
    conn = ledger.storage.conn
    out = []
    for (body,) in conn.execute(
            f"SELECT body FROM entries WHERE {where} ORDER BY id DESC LIMIT ?", [*args, limit]):
        e = json.loads(body)
        detail = _entry_detail(e)
        if e["kind"] == "card":  # the card issued, by its number
            no = conn.execute("SELECT card_no FROM cards WHERE id = ?", (e.get("card"),)
                              ).fetchone()
            detail = f"card {no[0] if no else e.get('card', '')}"
        out.append({"id": e["id"], "at": e["at"], "action": e["kind"], "operator": e["op"],
                    "approver": e.get("approver", ""), "member": e["member"],
                    "amount": e["amount"], "pay": e.get("pay"), "service": e.get("service"),
                    "reason": e.get("reason"), "ref": e.get("ref"), "detail": detail})
    return out


def _entry_detail(e: dict[str, Any]) -> str:
    """What an entry moved beyond its amount, in a few words."""
    kind, parts = e["kind"], []
    if kind == "correction":
        parts += [f"{p} {'+' if c > 0 else '-'}{format_purse(p, abs(c))}"
                  for p, _n, c in e["deltas"]]
    elif kind == "transfer" and not e["deltas"]:  # a shop holding nothing hands over
        parts.append(f"no rights → {e.get('to', '')}")
    elif kind == "transfer":
        parts.append(f"{e['deltas'][0][0]} rights → {e.get('to', '')}")
    if e.get("qty") and (int(e["qty"]) > 1 or kind == "package"):
        parts.append(f"x{e['qty']}")
    if e.get("bonus"):
        parts.append(f"bonus {format_yuan(int(e['bonus']))}")
    if e.get("points") and kind in ("redeem", "convert", "expiry"):
        parts.append(f"points {e['points']}")
    for key in ("promotion", "gift", "package"):
        if e.get(key):
            parts.append(f"{key} {e[key]}")
    return "  ".join(parts)


# --- refused attempts ----------------------------------------------------------------
# A refusal writes nothing to the books (DESIGN.md), so the trail above, read from
# the books, never showed one: a cashier's tries at what her role lacks, a run of
# wrong card PINs or of a manager's password typed as approver left no trace but an
# in-memory throttle and the sentence on her own screen. The refusals that matter
# for security (SECURITY_CODES) are kept here, in a table of this node's own: never
# replicated, in no sync file and no ledger entry (a backup's copy of the store
# carries it, as it carries the idempotency keys). Bounded: the newest
# REFUSALS_KEPT rows of each door (logins, operations), the oldest removed as new
# ones come, so a flood of refusals costs a fixed amount of disk. Each row is
# written in its own small transaction, after the refused operation's own was
# rolled back: the refusal still changes nothing else.

REFUSALS_KEPT = 10_000  # of each door (below)
# What a refusal's code says of it: no permission (403: permission_denied, and the
# approval_required of an approver named who may not approve), a wrong PIN, a
# wrong password at a login, throttled (too_many_attempts, 429).
SECURITY_CODES = ("permission_denied", "approval_required", "wrong_pin", "login_failed",
                  "too_many_attempts")
_REASON_CHARS = 200  # a refusal's sentence, as kept: enough to read what was refused
# `door`: 1 for a login refused (anyone who reaches the node may try one), 0 for an
# operation refused to an operator logged in. Each door keeps its newest
# REFUSALS_KEPT: ten thousand made-up logins from the network cannot push a
# cashier's refused refunds out of the list.
_REFUSALS = (
    "CREATE TABLE IF NOT EXISTS refusals(pos INTEGER PRIMARY KEY, door INTEGER NOT NULL, "
    "at INTEGER NOT NULL, operator TEXT NOT NULL, operation TEXT NOT NULL, "
    "member TEXT NOT NULL, card TEXT NOT NULL, code TEXT NOT NULL, branch TEXT NOT NULL, "
    "reason TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS refusals_door ON refusals(door, pos)",
)
LOGIN = "login"  # the operation a refused login is kept under
AT_COMMAND_LINE = ", at the command line"  # where a refused password was given
# What a file command refused is kept under (`note_file_refusal`): the command line's
# `export`, `import`, `backup` and `export-analytics`, the API's and the counter's.
SYNC_EXPORT, SYNC_IMPORT, BACKUP, ANALYTICS_EXPORT = (
    "sync.export", "sync.import", "backup", "analytics.export")


class RefusedRow(TypedDict):
    """One refused attempt at this node, as `refused` reads it."""

    time: str  # this node's clock, in the chain's time zone, to the second
    branch: str  # this node (where it was refused)
    operation: str  # the operation's name ("refund", "operator.set"), or "login"
    operator: str  # the acting operator's id, or the name typed at a login
    operator_name: str
    member: str  # the member or card named, if any
    card: str
    code: str  # the refusal's code (SECURITY_CODES)
    reason: str  # the refusal's sentence


def note_refusal(ledger: Ledger, *, operator: str, operation: str, code: str,
                 reason: str, member: str = "", card: str = "") -> bool:
    """Keep one refused attempt (see above); False if it could not be kept: inside a
    ledger transaction (the row would roll back with it), or the store refused the
    write (a disk full): the refusal itself must reach its caller all the same."""
    st = ledger.storage
    row = (ledger.clock.wall(), operator[:_REASON_CHARS], operation[:100], member[:40],
           card[:40], code[:40], ledger.node, " ".join(reason.split())[:_REASON_CHARS])
    # The node's log too, where an owner who watches it (or a log collector) sees a
    # run of them as it happens. Named as people know the operator; every value quoted
    # (repr): a name typed at a login may hold a line break, forging a line.
    named = st.conn.execute("SELECT name FROM operators WHERE id = ?", (operator,)).fetchone()
    log.warning("refused: operator %r%s %s%s%s at %s: %s: %r",
                str(named[0]) if named else row[1], f" ({operator})" if named else "", row[2],
                f" member {row[3]}" if row[3] else "", f" card {row[4]}" if row[4] else "",
                row[6], row[5], row[7])
    try:
        conn = st.local(_REFUSALS, "refused attempts are")
    except LocalProtocolError:
        return False
    try:
        conn.execute("BEGIN IMMEDIATE")
        try:
            door = int(operation == LOGIN)
            conn.execute("INSERT INTO refusals(door, at, operator, operation, member, card, "
                         "code, branch, reason) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                         (door, *row))
            # The door's oldest beyond its newest REFUSALS_KEPT (one at a time, as they
            # come; any number at once after a change of the constant).
            conn.execute("DELETE FROM refusals WHERE door = ? AND pos <= (SELECT pos FROM "
                         "refusals WHERE door = ? ORDER BY pos DESC LIMIT 1 OFFSET ?)",
                         (door, door, REFUSALS_KEPT))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    except sqlite3.Error:
        return False
    return True


def note_failed_login(ledger: Ledger, name: str, address: str, code: str,
                      sentence: str, where: str = "") -> None:
    """A login refused (at the API, or the counter's login page: `where`), kept with
    the refusals the operations keep (operations.run): by the name typed (never the
    password) and the address it came from."""
    said = (f"from {address}" if address else "") + where
    note_refusal(ledger, operator=name, operation=LOGIN, code=code,
                 reason=f"{sentence} ({said.removeprefix(', ')})" if said else sentence)


def note_file_refusal(ledger: Ledger, operator: str | None, operation: str,
                      e: BaseException, file: str = "") -> None:
    """A file command refused (SYNC_EXPORT, SYNC_IMPORT, BACKUP, ANALYTICS_EXPORT): kept
    as operations.run keeps the operations' (they are no operation of its table, so
    a cashier's tries at every member's data on a stick left no trace). For security
    (SECURITY_CODES: her role lacks `sync`, `backup`); and an import refused for its
    file (another chain's, altered, signed by a key the chain does not vouch for, cut
    short): who brought which file, with the sentence, since a stranger's file at the
    counter is worth the owner's eye even when it changed nothing. Not an input refused
    (no such file, a link named as --out), which tells nothing of anyone. A wrong
    password is kept before any of these, as the login it is (note_failed_login)."""
    code = str(getattr(e, "code", ""))
    if code not in SECURITY_CODES and not (operation == SYNC_IMPORT
                                           and isinstance(e, RemoteProtocolError)):
        return
    reason = str(e) or type(e).__name__
    if file and file not in reason:
        reason = f"{file}: {reason}"
    note_refusal(ledger, operator=operator or ledger.owner, operation=operation, code=code,
                 reason=reason)


def refused(ledger: Ledger, operator: str | None = None, start: str | None = None,
            end: str | None = None, limit: int = 500) -> list[RefusedRow]:
    """The newest `limit` refused attempts kept at this node (note_refusal), of the days
    start..end of this node's clock (inclusive, either open), by `operator` (an id, or
    a name as typed at a login), newest first. A store that never refused one has no
    table, and none to show."""
    limit = max(1, min(int(limit), 2 * REFUSALS_KEPT))
    conn = ledger.storage.conn
    if conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'refusals'"
                    ).fetchone() is None:
        return []
    where = "1"
    args: list[Any] = []
    if start:
        where += " AND at >= ?"
        args.append(id_time_ms(ledger.storage.day_start_id(start)))
    if end:
        where += " AND at < ?"
        args.append(id_time_ms(ledger.storage.day_start_id(end, days_later=1)))
    if operator is not None:
        where += " AND operator = ?"
        args.append(operator)
    names = {o["id"]: o["name"] for o in views.operators(ledger)}
    zone = localtime.zone(ledger)
    return [{"time": localtime.show(at / 1000, zone), "branch": branch, "operation": operation,
             "operator": who, "operator_name": names.get(who, who), "member": member,
             "card": card, "code": code,
             # The library's sentence names the operator by id; people know the name.
             "reason": reason.replace(who, names[who]) if who in names else reason}
            for at, who, operation, member, card, code, branch, reason in conn.execute(
                "SELECT at, operator, operation, member, card, code, branch, reason "
                f"FROM refusals WHERE {where} ORDER BY pos DESC LIMIT ?", (*args, limit))]


REFUSED_COLUMNS = ("time", "branch", "operation", "operator", "member", "card", "code",
                   "reason")


def refused_table(rows: Sequence[RefusedRow]) -> list[list[str]]:
    """The refused attempts as one table (operators by name): the command line's --csv
    and its text."""
    return [list(REFUSED_COLUMNS), *([
        r["time"], r["branch"], r["operation"], r["operator_name"], r["member"], r["card"],
        r["code"], r["reason"]] for r in rows)]
