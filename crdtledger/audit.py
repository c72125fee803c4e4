"""Reads that check or measure a store rather than serve a shop.

The simulator asserts invariants after every step and compares converged replicas;
the benchmarks report how big a store is. They used to read the projection tables
with their own SQL, which made the tables an API nobody declared. These are the
questions they ask, declared here beside the schema (crdtledger/storage.py) so that
a change of the tables changes them too. Shop features read through `views`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Literal, TypedDict

if TYPE_CHECKING:
    from crdtledger.ledger import Ledger

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
    "members": "SELECT * FROM members ORDER BY id",
    "cards": "SELECT * FROM cards ORDER BY id",
    "rules": "SELECT * FROM rules ORDER BY id",
    "operators": "SELECT * FROM operators ORDER BY id",
    "roles": "SELECT * FROM roles ORDER BY name",
    "quarantine": "SELECT * FROM quarantine ORDER BY doc, key",
    "deferred": "SELECT doc, key FROM deferred ORDER BY doc, key",
}


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
        "SELECT member, purse, SUM(amount) FROM rights GROUP BY member, purse "
        "HAVING SUM(amount) < 0 LIMIT ?", (limit,))]


def quarantined(ledger: Ledger, limit: int = 3) -> list[tuple[str, str, str]]:
    """Records refused on arrival (document, key, reason): none in an honest chain."""
    return [(str(d), str(k), str(r)) for d, k, r in ledger.storage.conn.execute(
        "SELECT doc, key, reason FROM quarantine ORDER BY doc, key LIMIT ?", (limit,))]


def waiting(ledger: Ledger, limit: int = 3) -> list[tuple[str, str]]:
    """Entries still deferred for want of their funding (document, key): none once
    replicas have converged."""
    return [(str(d), str(k)) for d, k in ledger.storage.conn.execute(
        "SELECT doc, key FROM deferred ORDER BY doc, key LIMIT ?", (limit,))]


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
