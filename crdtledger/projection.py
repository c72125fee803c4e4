"""Projections: the SQLite tables every read uses, derived from document changes.

Each function turns one change of a replicated record into row changes. They are
commutative (sums and per-record rewrites), so replicas that received the same
updates in any order hold the same projections.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from crdtledger.hlc import id_time_ms
from crdtledger.model import ID, InvalidRecord, normalise, normalise_entry
from crdtledger.storage import dumps

# Which purse change counts toward a member's cumulative spend / top-up (levels).
_SPEND_KINDS = {"debit": 1, "refund": -1}


def _as_plain(value: Any) -> Any:
    to_py = getattr(value, "to_py", None)
    return normalise(to_py() if to_py else value)


def project_entry(conn: sqlite3.Connection, entry: dict[str, Any], day: str, sign: int) -> None:
    """Add (sign=+1) or take back (sign=-1) one ledger entry's effects."""
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
    conn.executemany(
        "INSERT INTO rights(member, purse, node, amount) VALUES (?,?,?,?) "
        "ON CONFLICT(member, purse, node) DO UPDATE SET amount = amount + excluded.amount",
        [(entry["member"], p, n, sign * c) for p, n, c in entry["deltas"]],
    )
    spent = _SPEND_KINDS.get(entry["kind"], 0) * entry["amount"]
    if entry["kind"] == "debit" and entry.get("pay") == "package":
        spent = 0
    topped = entry.get("paid", 0) if entry["kind"] == "topup" else 0
    if spent or topped:
        conn.execute(
            "INSERT INTO totals(member, spent, topped) VALUES (?,?,?) ON CONFLICT(member) "
            "DO UPDATE SET spent = spent + excluded.spent, topped = topped + excluded.topped",
            (entry["member"], sign * spent, sign * topped),
        )


def entry_change(conn: sqlite3.Connection, doc: str, key: str, old: Any, new: Any,
                 day_of: Any) -> dict[str, Any] | None:
    """Project an added (or, from a misbehaving peer, rewritten) entry; None if invalid."""
    if old is not None:
        try:
            prev = normalise_entry(key, _as_plain(old))
            project_entry(conn, prev, day_of(prev["at"]), -1)
        except InvalidRecord:
            conn.execute("DELETE FROM quarantine WHERE doc = ? AND key = ?", (doc, key))
    try:
        entry = normalise_entry(key, _as_plain(new))
    except InvalidRecord as e:
        conn.execute("INSERT OR REPLACE INTO quarantine VALUES (?,?,?)", (doc, key, str(e)))
        return None
    project_entry(conn, entry, day_of(entry["at"]), +1)
    return entry


def _card_status(events: list[Any]) -> str:
    """The latest status event wins by id (HLC order), the same on every replica."""
    valid = [e for e in events if isinstance(e, list) and len(e) >= 2 and isinstance(e[0], str)]
    return str(max(valid, key=lambda e: e[0])[1]) if valid else "active"


def record_change(conn: sqlite3.Connection, doc: str, root: str, key: str, value: Any,
                  day_of: Any) -> None:
    """Rewrite the projection row of one member, card, rule, operator or role."""
    data = _as_plain(value)
    if not isinstance(data, dict) or not isinstance(key, str) or len(key) > 64:
        conn.execute("INSERT OR REPLACE INTO quarantine VALUES (?,?,?)", (doc, key, "not a map"))
        return
    try:
        if root == "members":
            if not ID.match(key):
                raise InvalidRecord("bad member id")
            created = id_time_ms(key)
            conn.execute(
                "INSERT OR REPLACE INTO members VALUES (?,?,?,?,?,?,?)",
                (key, str(data.get("name", "")), str(data.get("phone", "")),
                 str(data.get("home", "")), created, day_of(created), dumps(data)),
            )
        elif root == "cards":
            if not ID.match(key):
                raise InvalidRecord("bad card id")
            status = _card_status(data.get("events") or [])
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
