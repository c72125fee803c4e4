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


def _check(row: dict[str, int]) -> int:
    return row["opening"] + sum(row[k] for k in LINES) - row["closing"]


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
    rows: list[dict[str, Any]] = []
    for p in PURSES:
        nodes = sorted({n for q, n in (*opening, *closing, *lines) if q == p
                        and (opening.get((q, n)) or closing.get((q, n))
                             or any(lines[(q, n)].values()))})
        chain = {"opening": 0, **dict.fromkeys(LINES, 0), "closing": 0}
        for n in nodes:
            row = {"opening": opening.get((p, n), 0), **lines[(p, n)],
                   "closing": closing.get((p, n), 0)}
            for key in ("opening", *LINES, "closing"):
                chain[key] += row[key]
            rows.append({"purse": p, "branch": n, **row, "check": _check(row)})
        rows.append({"purse": p, "branch": CHAIN, **chain, "check": _check(chain)})
    return {"from": start, "to": end, "rows": rows}


def use_value(uses: int, amount: int, sold: int) -> int:
    """What `uses` of a package of `sold` uses bought for `amount` fen are worth, in
    whole fen: amount // sold each, and the remainder one fen each on the first uses
    served (a package of 3 for 100.00 is 33.34, 33.33, 33.33), so a package's uses
    sum to what was paid, exactly, however they are split."""
    base, rest = divmod(amount, sold)
    return uses * base + max(0, min(uses, rest))


PACKAGE_FIGURES = ("packages", "uses_sold", "opening", "sold", "served_uses", "served",
                   "breakage_uses", "breakage", "uses_left", "closing", "check")


def _package_state(ledger: Ledger, at: str | None, sales: dict[str, tuple[str, int, int]]
                   ) -> dict[str, tuple[int, int, int]]:
    """Each package sold before `at` (now when None): its uses served, those left to
    members who had left (退会) by then, and those left to the others."""
    held = _held_at(ledger.storage.conn, at, "p LIKE 'pkg:%'", "mp")
    left: dict[str, list[int]] = {}
    gone: dict[str, bool] = {}
    for (member, purse), uses in held.items():
        sale = purse[4:]
        if sale not in sales or (at is not None and sale >= at) or not uses:
            continue
        if member not in gone:
            gone[member] = ledger.has_left(member, at)
        pair = left.setdefault(sale, [0, 0])
        pair[0 if gone[member] else 1] += uses
    out = {}
    for sale, (_service, _amount, sold) in sales.items():
        if at is None or sale < at:
            broken, live = left.get(sale, (0, 0))
            out[sale] = (sold - broken - live, broken, live)
    return out


def packages(ledger: Ledger, start: str | None = None, end: str | None = None
             ) -> dict[str, Any]:
    """套餐未消费: per service, the packages sold by the period's end (days `start`..`end`
    inclusive, either open), their uses, and their value: unearned at the opening and
    the closing (the uses left, at what was paid per use: `use_value`), sold in the
    period, recognised in it for uses served (`served`) and, at a member's exit, for
    the uses she left (`breakage`: she will not come for them; approved back, they
    are unearned again, a negative breakage). `check` is opening + sold - served -
    breakage - closing, 0 when they tie. Packages do not expire. Money in fen."""
    lo, hi = views._bounds(ledger, start, end)
    sales: dict[str, tuple[str, int, int]] = {}
    for sale, service, amount, body in ledger.storage.conn.execute(
            "SELECT id, service, amount, json_extract(body, '$.qty') FROM entries "
            "WHERE kind = 'package'"):
        if isinstance(body, int) and body > 0:
            sales[str(sale)] = (str(service or ""), int(amount), body)
    then = _package_state(ledger, lo, sales) if lo is not None else {}
    now = _package_state(ledger, hi, sales)
    rows: dict[str, dict[str, int]] = {}
    for sale, (served, broken, live) in now.items():
        service, amount, sold = sales[sale]
        row = rows.setdefault(service, dict.fromkeys(PACKAGE_FIGURES, 0))
        was = then.get(sale)
        row["packages"] += 1
        row["uses_sold"] += sold
        if was is None:
            row["sold"] += amount
            was = (0, 0, sold)
        else:
            row["opening"] += amount - use_value(sum(was[:2]), amount, sold)
        row["served_uses"] += served - was[0]
        row["served"] += use_value(served, amount, sold) - use_value(was[0], amount, sold)
        row["breakage_uses"] += broken - was[1]
        row["breakage"] += (use_value(served + broken, amount, sold)
                            - use_value(served, amount, sold)
                            - use_value(sum(was[:2]), amount, sold)
                            + use_value(was[0], amount, sold))
        row["uses_left"] += live
        row["closing"] += amount - use_value(served + broken, amount, sold)
    chain = dict.fromkeys(PACKAGE_FIGURES, 0)
    out = []
    for service, row in sorted(rows.items()):
        row["check"] = (row["opening"] + row["sold"] - row["served"] - row["breakage"]
                        - row["closing"])
        for key in PACKAGE_FIGURES:
            chain[key] += row[key]
        out.append({"service": service, **row})
    out.append({"service": CHAIN, **chain})
    return {"from": start, "to": end, "rows": out}
