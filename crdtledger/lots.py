"""Points lots: what each earning of points has left, and when it expires.

Each point earned is a lot with the expiry its entry stated. A point spent (a
redemption, a conversion, a correction) takes the lot that expires first among those
still valid on the day it was spent; a refund takes back first what its own debit
earned; a write-off (kind `expiry`) takes lots already expired on its day. So a
redemption never uses up an expired lot on paper, and what is expired and not yet
written off is exactly what is due. Transfers move rights between branches and leave
the member's points as they are. A member's group (crdtledger.merge) is one member
here: the lots of a merged member keep their expiries, and the merge pairs, which
move rights from one member of the group to another, are passed over like transfers.

That is a replay of the group's entries in id order (`replay`), the same on every
replica. The `points_lots` table holds its result, the lots with points left, so
that reading a member's points, a redemption's check and the daily search for
expired points are index reads instead of a replay of the member's whole history
(the daily search read every entry ever written). It is also what a closing will
carry for a branch that joins from it (benchmarks/README.md, "What the closing's
balances must carry").

Kept up to date inside the transaction that projects the entries. A sale's lot is
inserted at once when its member is in no merge and holds no later entry
(`projection.project_entry`: one statement on the till's path). Everything else is
noted (`projection.touch_points`, and a merge by `touch_group`) and settled before
the transaction commits (`settle`, which also takes the entries an apply of peers'
records projected, not noted): each group's new entries taken in id order when none of
the group's other entries that move points is later (nearly always), else the group
replayed (an entry that came late, a merge, a rewrite undone). The state-machine
test checks the table against the replay after every step.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from typing import Any

from crdtledger.hlc import id_time_ms
from crdtledger.projection import IN_MERGE, NO_EXPIRY, points_change
from crdtledger.views import in_, member_group

Lot = list[Any]  # [expires, left, earned by entry id, the member that entry names]


def take(lots: list[Lot], n: int, kind: str, ref: str | None, day: str) -> None:
    """Take `n` points from `lots` for an entry of `kind` (and `ref`) on `day`."""
    by_expiry = sorted(lots, key=lambda lot: (lot[0], lot[2]))
    if kind == "expiry":
        order = [lot for lot in by_expiry if lot[0] < day]
    else:
        order = [lot for lot in by_expiry if lot[0] >= day]
        if kind == "refund":
            order = [lot for lot in order if lot[2] == ref] + [
                lot for lot in order if lot[2] != ref]
    # What the preferred lots cannot cover (a writer that did not know of a lot yet)
    # comes from the others, soonest expiry first: the sum stays exact.
    for lot in order + [lot for lot in by_expiry if lot not in order]:
        got = min(lot[1], n)
        lot[1] -= got
        n -= got
        if not n:
            return


def replay(conn: sqlite3.Connection, group: list[str], day_of: Callable[[int], str]
           ) -> list[Lot]:
    """The lots of `group` from its entries, in id order: the definition."""
    lots: list[Lot] = []
    for (body,) in conn.execute(
            f"SELECT body FROM entries WHERE member {in_(group)} AND kind NOT IN "
            "('transfer', 'merge') ORDER BY id", group):
        e = json.loads(body)
        _step(lots, (e["member"], e["id"], points_change(e), e["kind"], e.get("ref"),
                     e.get("expires")), day_of)
    return lots


def _step(lots: list[Lot], row: tuple[Any, ...], day_of: Callable[[int], str]) -> None:
    """One entry, as (member, id, change, kind, ref, expires), folded into `lots`."""
    member, eid, change, kind, ref, expires = row
    if change > 0:
        lots.append([expires or NO_EXPIRY, change, eid, member])
    elif change < 0:
        take(lots, -change, kind, ref, day_of(id_time_ms(eid)))


def settle(conn: sqlite3.Connection, day_of: Callable[[int], str],
           entries: list[dict[str, Any]] | None = None) -> None:
    """Bring the lots of every group this transaction touched up to date, before it
    commits: what the projections noted in `points_touched`, and `entries`, those an
    apply of peers' records projected in batches (a catch-up's are many: not noted).
    Both at once: an entry the batch funded (projected from `deferred`, noted) and the
    batch's own must be settled against one another, not one after the other."""
    rows = conn.execute(
        "SELECT member, id, change, kind, ref, expires FROM temp.points_touched").fetchall()
    if rows:
        conn.execute("DELETE FROM temp.points_touched")
    seen = {row[1] for row in rows}
    for e in entries or ():
        seen.add(e["id"])
        if c := points_change(e):
            rows.append((e["member"], e["id"], c, e["kind"], e.get("ref"), e.get("expires")))
    if rows:
        _update(conn, sorted(rows, key=lambda r: r[1] or ""), seen, day_of)


def _update(conn: sqlite3.Connection, touched: list[tuple[Any, ...]], seen: set[str],
            day_of: Callable[[int], str]) -> None:
    """`touched`: (member, entry id or None for a replay, change, kind, ref, expires)
    in id order; `seen`: the entries projected with them (any later entry of a group
    that is not among them and moves points asks for the group's replay)."""
    group_of: dict[str, list[str]] = {}
    groups: dict[str, tuple[list[str], list[tuple[Any, ...]]]] = {}
    replayed: set[str] = set()
    for row in touched:
        m = row[0]
        if m not in group_of:
            group_of[m] = _group(conn, m)
        group = group_of[m]
        _, new = groups.setdefault(group[0], (group, []))
        if row[1] is None:  # a merge, or an entry taken back: nothing but a replay does
            replayed.add(group[0])
        else:
            new.append(row)
    kept: list[Lot] = []
    for head, (group, new) in groups.items():
        if head not in replayed and _only_later(conn, group, new, seen):
            # Earnings alone (sales) only add lots: nothing to read.
            lots = [] if all(row[2] > 0 for row in new) else [list(r) for r in conn.execute(
                "SELECT expires, left, earned, member FROM points_lots "
                f"WHERE member {in_(group)}", group)]
            before = {lot[2]: lot[1] for lot in lots}
            for row in new:
                _step(lots, row, day_of)
            changed = [lot for lot in lots if before.get(lot[2]) != lot[1]]
            conn.executemany("DELETE FROM points_lots WHERE member = ? AND earned = ?",
                             [(lot[3], lot[2]) for lot in changed if lot[2] in before])
            kept += changed
        else:
            conn.execute(f"DELETE FROM points_lots WHERE member {in_(group)}", group)
            kept += replay(conn, group, day_of)
    _keep(conn, kept)


def _group(conn: sqlite3.Connection, member: str) -> list[str]:
    """`member`'s group (views.member_group): most members are in no merge, which
    one read says."""
    if conn.execute(f"SELECT {IN_MERGE}", (member,)).fetchone()[0]:
        return member_group(conn, member)
    return [member]


def _only_later(conn: sqlite3.Connection, group: list[str], new: list[tuple[Any, ...]],
                seen: set[str]) -> bool:
    """Are the new entries later than every other entry of the group that moves
    points (new to this transaction or not)?"""
    first = min(row[1] for row in new)
    return not any(
        eid not in seen and conn.execute(_MOVES, (eid,)).fetchone()
        for m in group for (eid,) in conn.execute(
            "SELECT id FROM entries WHERE member = ? AND id > ?", (m, first)))


# Does an entry move its member's points lots (projection.points_change, near enough:
# a debit whose points deltas cancel counts; a replay is never wrong)?
_MOVES = ("SELECT 1 FROM entries WHERE id = ? AND kind NOT IN ('transfer', 'merge') "
          "AND EXISTS (SELECT 1 FROM json_each(body, '$.deltas') "
          "WHERE json_extract(value, '$[0]') = 'points' AND json_extract(value, '$[2]') != 0)")


def _keep(conn: sqlite3.Connection, lots: list[Lot]) -> None:
    """Store the lots with points left (those with none are not kept)."""
    conn.executemany(
        "INSERT INTO points_lots(expires, left, earned, member) VALUES (?,?,?,?)",
        [lot for lot in lots if lot[1] > 0])


def fill(conn: sqlite3.Connection, day_of: Callable[[int], str]) -> None:
    """Every group's lots from its entries (a store made before this table)."""
    conn.execute("DELETE FROM points_lots")
    heads: dict[str, list[str]] = {}
    for (m,) in conn.execute("SELECT DISTINCT member FROM entries").fetchall():
        group = member_group(conn, m)
        heads.setdefault(group[0], group)
    for group in heads.values():
        _keep(conn, replay(conn, group, day_of))
