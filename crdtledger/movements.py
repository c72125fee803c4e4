"""What an accountant reads between two balances: the movement of a period of each
member purse (stored value, bonus value, points), per branch and for the chain, and
the packages' unearned value (the uses sold and not yet served, valued at what was
paid per use). The command line, the HTTP API and the back office all read these
two functions (operations report.movements and report.packages).

Both work from the same two tables as the month end (crdtledger.closing): a balance
at an instant is the `rights` table less what the entries with ids from that instant
on added. A period's bounds are the chain's days (views._bounds), as every report's."""

from __future__ import annotations

import sqlite3
from collections import defaultdict
from typing import TYPE_CHECKING, Any

from crdtledger import views

if TYPE_CHECKING:
    from crdtledger.ledger import Ledger

PURSES = ("cash", "bonus", "points")
# The movement's lines, in the order a statement lists them: what came in, what went
# out, then what moved value between members or branches (net zero for the chain).
LINES = ("topups", "earned", "rewards", "refunds", "corrected_in", "spent", "converted",
         "expired", "exits", "corrected_out", "merges", "transfers", "other")
# Kinds that pay for something from the purses: what they take is spent, what they
# add (a sale's points) is earned.
_SPENDING = frozenset({"debit", "package", "card", "redeem", "coupon_use"})
_LINE_OF_KIND = {"topup": "topups", "reward": "rewards", "checkin": "rewards",
                 "refund": "refunds", "convert": "converted", "expiry": "expired",
                 "exit_settle": "exits", "merge": "merges", "transfer": "transfers"}
CHAIN = "all"


def _line(kind: str, change: int) -> str:
    if kind in _SPENDING:
        return "earned" if change > 0 else "spent"
    if kind == "correction":
        return "corrected_in" if change > 0 else "corrected_out"
    return _LINE_OF_KIND.get(kind, "other")


def _deltas(conn: sqlite3.Connection, where: str, args: list[Any], purse: str
            ) -> sqlite3.Cursor:
    """(kind, member, purse, node, change) of each delta of the entries of `where`
    on the purses of `purse` (an SQL condition on `p`)."""
    return conn.execute(
        "SELECT kind, member, p, n, c FROM (SELECT e.kind, e.member, "
        "json_extract(d.value, '$[0]') AS p, json_extract(d.value, '$[1]') AS n, "
        "json_extract(d.value, '$[2]') AS c FROM entries e, json_each(e.body, '$.deltas') d "
        f"WHERE {where}) WHERE {purse}", args)


def _held_at(conn: sqlite3.Connection, at: str | None, purse: str, key: str
             ) -> dict[tuple[str, ...], int]:
    """The rights of the purses of `purse` before the id `at` (now when None), summed
    by `key` ("pn": purse and node; "mp": member and purse)."""
    def k(m: str, p: str, n: str) -> tuple[str, ...]:
        return (p, n) if key == "pn" else (m, p)

    held: defaultdict[tuple[str, ...], int] = defaultdict(int)
    for m, p, n, a in conn.execute(
            f"SELECT member, p, node, amount FROM (SELECT member, purse AS p, node, amount "
            f"FROM rights) WHERE {purse}"):
        held[k(m, p, n)] += int(a)
    if at is not None:
        for _kind, m, p, n, c in _deltas(conn, "e.id >= ?", [at], purse):
            held[k(m, p, n)] -= int(c)
    return held


_MEMBER_PURSES = "p IN ('cash', 'bonus', 'points')"


def movement(ledger: Ledger, start: str | None = None, end: str | None = None
             ) -> dict[str, Any]:
    """余额变动 of the days `start`..`end` (inclusive; from the first entry, up to now,
    when left out): a row per purse and branch holding it, then the chain's (branch
    "all"), each with the opening balance, the lines, the closing balance and `check`,
    opening + lines - closing, which is 0 when the lines account for the whole change.
    Opening and closing are the rights held at the period's bounds: at a month's
    bounds they are the month end's (closing.member_balances, `report balances`).
    A branch's row is the rights it holds: rights moved between branches are its
    `transfers` (net zero for the chain), a merged member's swept to the survivor
    `merges` (net zero too). Points are counted, money in fen."""
    lo, hi = views._bounds(ledger, start, end)
    conn = ledger.storage.conn
    opening = (_held_at(conn, lo, _MEMBER_PURSES, "pn") if lo is not None
               else defaultdict(int))
    closing = _held_at(conn, hi, _MEMBER_PURSES, "pn")
    where, args = "1", []
    if lo is not None:
        where, args = "e.id >= ?", [lo]
    if hi is not None:
        where += " AND e.id < ?"
        args.append(hi)
    lines: defaultdict[tuple[str, str], dict[str, int]] = defaultdict(
        lambda: dict.fromkeys(LINES, 0))
    for kind, _m, p, n, c in _deltas(conn, where, args, _MEMBER_PURSES):
        lines[(p, n)][_line(kind, int(c))] += int(c)
    rows = []
    for p in PURSES:
        nodes = sorted({n for q, n in (*opening, *closing, *lines) if q == p
                        and (opening.get((q, n)) or closing.get((q, n))
                             or any(lines[(q, n)].values()))})
        chain = {"purse": p, "branch": CHAIN, "opening": 0, **dict.fromkeys(LINES, 0),
                 "closing": 0}
        for n in nodes:
            row = {"purse": p, "branch": n, "opening": opening.get((p, n), 0),
                   **lines[(p, n)], "closing": closing.get((p, n), 0)}
            for key in ("opening", *LINES, "closing"):
                chain[key] += row[key]
            rows.append(row)
        rows.append(chain)
    for row in rows:
        row["check"] = row["opening"] + sum(row[k] for k in LINES) - row["closing"]
    return {"from": start, "to": end, "rows": rows}
