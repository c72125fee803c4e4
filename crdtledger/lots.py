"""Points lots: what each earning of points has left, and when it expires.

Each point earned is a lot with the expiry its entry stated. A point spent (a
redemption, a conversion, a correction) takes the lot that expires first among those
still valid on the day it was spent; a refund takes back first what its own debit
earned, and only that once those points had expired on its day (its entry says when,
since 0.3.0; what a write-off took of that lot first is the write-off's to give back);
a write-off (kind `expiry`) takes lots already expired on its day, the lot it
names in `ref` first (one write-off entry per lot, since 0.3.0). So a
redemption never uses up an expired lot on paper, and what is expired and not yet
written off is exactly what is due. Points spent before, in id order, the entry that
earned them are owed: a lot of negative points, never expiring, that the next points
earned pay first, oldest first. Ids are their writers' clocks, and a branch whose
clock runs days ahead, or was put back (crdtledger.hlc, eras), mints them out of the
order things happened in: without the debt the spend took nothing, its earning later
made a lot of points already spent, and once that lot expired the daily pass wrote
off points earned since. Transfers move rights between branches and leave
the member's points as they are. A merge (crdtledger.merge) takes effect from the
merge on: until then each member of a group spends its own lots, as its rights were
its own; from the id of the change that merged it, its lots and its survivor's are
one pool, keeping their expiries (`merged_at`). The merge pairs, which move rights
from one member of the group to another, are passed over like transfers. So a
branch that starts from a closing's lots (the fold up to a cut) and folds what came
after holds what a branch that folded from the first entry holds, whenever the merge.

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

import heapq
import json
import sqlite3
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import Any

from crdtledger import views  # a module: views reads closing, which reads this
from crdtledger.hlc import id_time_ms
from crdtledger.model import EDITS
from crdtledger.projection import EARN, IN_MERGE, NO_EXPIRY, points_change
from crdtledger.storage import POINTS_FOLD, POINTS_NOTED

Lot = list[Any]  # [expires, left, earned by entry id, the member that entry names]


def take(lots: list[Lot], n: int, kind: str, ref: str | None, day: str,
         took: list[tuple[Lot, int]] | None = None,
         index: dict[str, Lot] | None = None) -> int:
    """Take `n` points from `lots` for an entry of `kind` (and `ref`) on `day`; what
    no lot had left to cover. `took` collects (lot, points taken from it); `index`,
    if given, holds every lot of `lots` by its earning entry's id."""
    # The lot taken first covers the whole spend nearly always: found by one pass, not
    # a sort of every lot (a liar's ten thousand lots of a point made each honest
    # spend sort them all), or by `index` when the entry names it (a daily pass writing
    # off ten thousand lots of a member passed over them all once per lot).
    first = _first(lots, kind, ref, day, index)
    if first is not None and first[1] >= n:
        first[1] -= n
        if n and took is not None:
            took.append((first, n))
        return 0
    by_expiry = sorted((lot for lot in lots if lot[1] > 0), key=lambda lot: (lot[0], lot[2]))
    if kind == "expiry":
        order = [lot for lot in by_expiry if lot[0] < day]
    else:
        order = [lot for lot in by_expiry if lot[0] >= day]
    if kind in ("refund", "expiry") and ref:
        # A refund takes back first what its own debit earned; a write-off (since
        # 0.3.0) takes first the lot it names, so that what a branch writes off is the
        # lot it answers for (views.expired_lots_owed), not whichever expired lot is in
        # front. A write-off without `ref` (older versions) takes them in expiry order.
        order = [lot for lot in order if lot[2] == ref] + [
            lot for lot in order if lot[2] != ref]
    # What the preferred lots cannot cover (a writer that did not know of a lot yet)
    # comes from the others, soonest expiry first: the sum stays exact. Not for a
    # write-off: it takes only what had expired. More than that is a write-off made
    # before its writer heard of a spend of the lot (a redemption at a branch cut off
    # from it), which took valid points of later lots; the rest is returned, and its
    # writer gives it back to its own rights (Payments.give_back_write_offs).
    # (Those valid on `day` are all in `order`, whatever `ref` put first: the rest are
    # those that were not. A test of membership in `order` made this quadratic.)
    rest = [] if kind == "expiry" else [lot for lot in by_expiry if lot[0] < day]
    for lot in order + rest:
        got = min(lot[1], n)
        lot[1] -= got
        n -= got
        if got and took is not None:
            took.append((lot, got))
        if not n:
            break
    return n


def _first(lots: list[Lot], kind: str, ref: str | None, day: str,
           index: dict[str, Lot] | None = None) -> Lot | None:
    """The lot `take` takes from first: the one `ref` earned when it leads (found in
    `index` if given), else the soonest to expire (then the smallest earning id) of
    those it may take."""
    best: Lot | None = None
    expired = kind == "expiry"
    named = kind in ("refund", "expiry") and ref
    if named and index is not None:
        lot = index.get(str(ref))
        if lot is not None and lot[1] > 0 and (lot[0] < day if expired else lot[0] >= day):
            return lot
    for lot in lots:
        if lot[1] > 0 and (lot[0] < day if expired else lot[0] >= day):
            if named and lot[2] == ref:
                return lot
            if best is None or (lot[0], lot[2]) < (best[0], best[2]):
                best = lot
    return best


class Pool(list[Lot]):
    """A replay's lots of one pool, knowing whether any may be owed (left < 0): an
    earning then scans them for debts only when there may be some (a liar's thousands
    of earnings, each scanning every lot, made every sale of the member replaying
    them quadratic). A plain list is taken to owe, as before."""

    owes = False
    # Its length after the last `prune`: lots spent to nothing stay in the list until
    # it has doubled (each spend passes over the list: a member's thousand sales and
    # thousand redemptions made one replay pass over every lot ever earned, per spend).
    pruned = 0

    @classmethod
    def loaded(cls, lots: Iterable[Lot]) -> Pool:
        """Lots as the table holds them, knowing whether any is owed: `_update`'s. A
        plain list there scanned every lot for debts at each earning, and a batch of
        a liar's 16,000 check-ins of one member (earnings) was quadratic to receive."""
        pool = cls(lots)
        pool.owes = any(lot[1] < 0 for lot in pool)
        return pool

    def prune(self) -> None:
        """Drop the lots with nothing left (nothing reads them) once it has doubled."""
        if len(self) >= 2 * self.pruned + 32:
            self[:] = [lot for lot in self if lot[1]]
            self.pruned = len(self)


def replay(conn: sqlite3.Connection, group: list[str], before: str | None = None,
           excess: dict[str, int] | None = None) -> list[Lot]:
    """The lots of `group` from its entries (those with ids before `before`, if
    given), in id order: the definition. Each member folds apart until its merge
    (`merged_at`), one pool with whom it was merged into from then on: a member's
    spending before a merge took its own lots, as its rights were its own. `excess`
    collects what each write-off took beyond the points expired (`take`), by its id."""
    merges = merged_at(conn, group)
    pools: dict[str, Pool] = {m: Pool() for m in group}
    into: dict[str, str] = {}

    def pool(m: str) -> str:
        while m in into:
            m = into[m]
        return m

    written: dict[str, list[list[Any]]] = {}  # lot -> [write-off, points it took]
    extra: dict[str, int] = {}
    bound = "" if before is None else "AND id < ? "
    for (body,) in conn.execute(
            f"SELECT body FROM entries WHERE member {views.in_(group)} AND kind NOT IN "
            f"('transfer', 'merge') {bound}ORDER BY id",
            group if before is None else [*group, before]):
        e = json.loads(body)
        while merges and merges[0][0] < e["id"]:
            _, m, target = merges.pop(0)
            a, b = pool(m), pool(target if target in pools or target in into else m)
            if a != b:  # a cycle's last merge (its survivor's pointer) joins nothing
                into[a] = b
                joined = pools.pop(a)
                pools[b] += joined
                pools[b].owes = pools[b].owes or joined.owes
        p = pools[pool(e["member"])]
        _step(p, _row(e, points_change(e)), written, extra)
        p.prune()
    if excess is not None:
        excess.update(extra)
    return [lot for lots in pools.values() for lot in lots]


def at(conn: sqlite3.Connection, before: str, moved: set[str]
       ) -> Iterator[tuple[str, str, str, int]]:
    """(member, earned, expires, left) of every lot with points left after the fold of
    the entries with ids before `before`, by member and earning entry: the lots a
    closing carries (closing.month_end_from_tables). The table less what came from
    `before` on: the groups of `moved` (members whose points an entry from `before` on
    moved) and of the members merged from `before` on are replayed up to it, every
    other group's lots are the table's rows. So it costs a replay of the members
    active since, not of the whole history."""
    redo: dict[str, list[str]] = {}
    late = {m for m, notes in conn.execute(
        f"SELECT id, json_extract(body, '$.{EDITS}') FROM members "
        "WHERE json_extract(body, '$.merged_into') IS NOT NULL")
        if _first_merge_note(notes) >= before}
    for m in sorted(moved | late):
        if m not in redo:
            group = views.member_group(conn, m)
            for x in group:
                redo[x] = group
    replayed = sorted((lot[3], lot[2], lot[0], lot[1])
                      for group in {g[0]: g for g in redo.values()}.values()
                      for lot in replay(conn, group, before) if lot[1])
    kept = ((m, e, x, n) for m, e, x, n in conn.execute(
        "SELECT member, earned, expires, left FROM points_lots ORDER BY member, earned")
        if m not in redo)
    return heapq.merge(kept, replayed)


def merged_at(conn: sqlite3.Connection, group: list[str]) -> list[tuple[str, str, str]]:
    """(when, member, into) of each member of `group` merged into another, by time:
    when is the id of the first change its audit notes say set `merged_into`
    (model.EDITS; the same merge made at two branches noted twice), "" for a record
    with no such note (the member is then one with the group from its first entry).
    `group[0]`, the survivor, is merged into no one but in a cycle (two branches
    merged A into B and B into A apart: views.canonical ends at the smallest id), where
    its own pointer counts too: the pool was one from the cycle's first merge, and a
    redemption made at the branch that merged first, refolded as one member's alone,
    became a debt that ate the member's next points."""
    out = []
    for i, m in enumerate(group):
        row = conn.execute("SELECT json_extract(body, '$.merged_into'), "
                           f"json_extract(body, '$.{EDITS}') FROM members WHERE id = ?",
                           (m,)).fetchone()
        if i == 0 and (row is None or row[0] is None or str(row[0]) not in group):
            continue  # the survivor, merged into no one of its group
        out.append((_first_merge_note(row[1] if row else None), m,
                    str(row[0]) if row else group[0]))
    return sorted(out)


def merge_notes(notes: Any) -> dict[str, Any]:
    """The audit notes (model.EDITS, as a replica holds them: a liar's may be
    anything) that say a change set `merged_into`, by change id: when the member was
    merged. An erasure keeps them (crdtledger.erasure), so that the lots stay as they
    were folded."""
    if not isinstance(notes, dict):
        return {}
    return {str(cid): note for cid, note in notes.items() if isinstance(note, dict)
            and isinstance(note.get("fields"), list) and "merged_into" in note["fields"]}


def _first_merge_note(notes: Any) -> str:
    """The smallest change id of `merge_notes`, from their JSON text, else ""."""
    try:
        return min(merge_notes(json.loads(notes) if isinstance(notes, str) else None),
                   default="")
    except ValueError:
        return ""


def _row(e: dict[str, Any], change: int) -> tuple[Any, ...]:
    return (e["member"], e["id"], change, e["kind"], e.get("ref"), e.get("expires"),
            e.get("day"))


def _step(lots: list[Lot], row: tuple[Any, ...],
          written: dict[str, list[list[Any]]] | None = None,
          excess: dict[str, int] | None = None,
          index: dict[str, Lot] | None = None) -> int:
    """One entry, as (member, id, change, kind, ref, expires, day), folded into `lots`;
    what a write-off took beyond the points expired (else 0). `written` remembers
    which write-off took how much of which lot and `excess` collects what each
    write-off took beyond the points expired, by its id (a replay's: `replay`);
    `index` (take's), kept up to date with the lots this adds."""
    member, eid, change, kind, ref, expires, day = row
    if kind == "expiry":
        # A write-off takes expired points only, and its give-back (a positive one,
        # naming it) returns rights for points no lot lost: neither is owed nor a lot.
        if change >= 0:
            return 0
        took: list[tuple[Lot, int]] = []
        short = take(lots, -change, kind, ref, spend_day(eid, day), took, index)
        if written is not None:
            for lot, got in took:
                written.setdefault(lot[2], []).append([eid, got])
        if short and excess is not None:
            excess[eid] = excess.get(eid, 0) + short
        return short
    if change < 0 and kind == "refund" and ref and expires and expires < spend_day(eid, day):
        # A refund of a sale whose points had expired on its day (its entry says when
        # they expired, since 0.3.0: Payments.refund) takes back what is left of that
        # sale's own lot, never valid points: they were the member's twice over once a
        # write-off took the expired lot too. What the lot lacks because a write-off
        # took it (made before, in id order, at a branch that had not heard of the
        # refund) is that write-off's to give back (Payments.give_back_write_offs), as
        # if the refund had come first. Anything else (a spend of the lot the refund's
        # writer had not heard of) is taken as any refund's (`take`): the sum stays exact.
        change += _take_own(lots, ref, -change)
        for off in reversed((written or {}).get(ref, [])):
            if not change:
                break
            got = min(off[1], -change)
            off[1] -= got
            change += got
            if excess is not None:
                excess[off[0]] = excess.get(off[0], 0) + got
    if change > 0:
        if getattr(lots, "owes", True):
            for debt in sorted((lot for lot in lots if lot[1] < 0), key=lambda lot: lot[2]):
                got = min(-debt[1], change)
                debt[1] += got
                change -= got
                if not change:
                    return 0  # (a debt may be left: `owes` stays)
            if isinstance(lots, Pool):
                lots.owes = False  # every debt paid
        lots.append(lot := [expires or NO_EXPIRY, change, eid, member])
        if index is not None:
            index[eid] = lot
    elif change < 0:
        short = take(lots, -change, kind, ref, spend_day(eid, day), None, index)
        if short:  # spent before, in id order, what earned it: owed by the next lots
            lots.append(lot := [NO_EXPIRY, -short, eid, member])
            if index is not None:
                index[eid] = lot
            if isinstance(lots, Pool):
                lots.owes = True
    return 0


def _take_own(lots: list[Lot], ref: str, n: int) -> int:
    """Up to `n` points from the lot `ref` earned, if it has any left; how many."""
    got = 0
    for lot in lots:
        if lot[2] == ref and lot[1] > 0:
            got = min(lot[1], n)
            lot[1] -= got
            break
    return got


def spend_day(eid: str, said: str | None) -> str:
    """The day a spend was made on (which lots were still valid then): the date its
    writer gave (`day`, written since 0.3.0: commit._entry), brought within the dates
    some zone on Earth had at that instant (UTC-12 to UTC+14: a liar's cannot reach
    further); for an entry without one (written before, or a liar's), the earliest of
    those dates, when the most lots were still valid. The writer's date, never the
    reader's: two branches in zones a day apart took different lots for a spend near
    midnight, and their closings differed for good (a liar had only to leave `day`
    out)."""
    ms = id_time_ms(eid)
    west = _utc_day(ms - _WEST_MS)
    if not said:
        return west
    return min(max(said, west), _utc_day(ms + _EAST_MS))


_WEST_MS, _EAST_MS = 12 * 3_600_000, 14 * 3_600_000


def _utc_day(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).date().isoformat()


def settle(conn: sqlite3.Connection,
           entries: list[dict[str, Any]] | None = None) -> None:
    """Bring the lots of every group this transaction touched up to date, before it
    commits: what the projections noted in `points_touched`, and `entries`, those an
    apply of peers' records projected in batches (a catch-up's are many: not noted).
    Both at once: an entry the batch funded (projected from `deferred`, noted) and the
    batch's own must be settled against one another, not one after the other."""
    rows: list[Any] = []
    if id(conn) in POINTS_NOTED:  # else nothing was noted since the last settle
        POINTS_NOTED.discard(id(conn))
        rows = conn.execute(
            "SELECT member, id, change, kind, ref, expires, day FROM temp.points_touched"
        ).fetchall()
    if rows:
        conn.execute("DELETE FROM temp.points_touched")
    seen = {row[1] for row in rows}
    for e in entries or ():
        seen.add(e["id"])
        if c := points_change(e):
            rows.append(_row(e, c))
    if len(rows) == 1 and rows[0][1] is not None and rows[0][2] > 0 and rows[0][3] != "expiry":
        # One earning (a peer's sale, alone in its batch: the live path): the lot at
        # once in one statement when its member is in no merge, holds no later entry
        # and owes no points, as projection.project_entry does for our own sale; what
        # _update would do then (those conditions make it add this lot and nothing
        # else). Else nothing was written: _update as ever.
        member, eid, change, _kind, _ref, expires, _day = rows[0]
        if conn.execute(EARN, (member, eid, expires or NO_EXPIRY, change)).rowcount:
            return
    if rows:
        _update(conn, sorted(rows, key=lambda r: r[1] or ""), seen)


def _update(conn: sqlite3.Connection, touched: list[tuple[Any, ...]], seen: set[str]
            ) -> None:
    """`touched`: (member, entry id or None for a replay, change, kind, ref, expires)
    in id order; `seen`: the entries projected with them (any later entry of a group
    that is not among them and moves points asks for the group's replay)."""
    group_of: dict[str, list[str]] = {}
    if len({row[0] for row in touched}) > 1 and conn.execute(_ANY_MERGED).fetchone() is None:
        # Nobody is merged (nearly always): each member is its own group, told by one
        # read instead of one per member (a catch-up's slice touches thousands).
        group_of = {row[0]: [row[0]] for row in touched}
    groups: dict[str, tuple[list[str], list[tuple[Any, ...]]]] = {}
    replayed: set[str] = set()
    for row in touched:
        m = row[0]
        if m not in group_of:
            group_of[m] = _group(conn, m)
        group = group_of[m]
        _, new = groups.setdefault(group[0], (group, []))
        if row[1] is None or (row[3] == "refund" and row[5]):
            # A merge, or an entry taken back: nothing but a replay does; nor a refund
            # of points expired (its entry says when: `_step`), which may have to know
            # what write-offs took of its sale's lot (rare).
            replayed.add(group[0])
        else:
            new.append(row)
    kept: list[Lot] = []
    for head, (group, new) in groups.items():
        pools = None if head in replayed else _pools(conn, group, new, seen)
        if pools is None:
            conn.execute(f"DELETE FROM points_lots WHERE member {views.in_(group)}", group)
            kept += replay(conn, group)
            continue
        for pool in pools:
            rows = [row for row in new if row[0] in pool]
            # Earnings alone (sales) only add lots, or pay what is owed: only that to read.
            earnings = all(row[2] > 0 for row in rows)
            # Not pruned: a lot spent to nothing must still be seen as changed.
            lots = Pool.loaded(list(r) for r in conn.execute(
                "SELECT expires, left, earned, member FROM points_lots "
                + ("INDEXED BY points_owed " if earnings else "")
                + f"WHERE member {views.in_(pool)}" + (" AND left < 0" if earnings else ""),
                pool))
            before = {lot[2]: lot[1] for lot in lots}
            index = {lot[2]: lot for lot in lots}
            for row in rows:
                _step(lots, row, index=index)
            changed = [lot for lot in lots if before.get(lot[2]) != lot[1]]
            conn.executemany("DELETE FROM points_lots WHERE member = ? AND earned = ?",
                             [(lot[3], lot[2]) for lot in changed if lot[2] in before])
            kept += changed
    _keep(conn, kept)


# Is any member merged into another (the partial index members_merged)?
_ANY_MERGED = ("SELECT 1 FROM members WHERE json_extract(body, '$.merged_into') IS NOT NULL "
               "LIMIT 1")


def _group(conn: sqlite3.Connection, member: str) -> list[str]:
    """`member`'s group (views.member_group): most members are in no merge, which
    one read says."""
    if conn.execute(f"SELECT {IN_MERGE}", (member,)).fetchone()[0]:
        return views.member_group(conn, member)
    return [member]


def _pools(conn: sqlite3.Connection, group: list[str], new: list[tuple[Any, ...]],
           seen: set[str]) -> list[list[str]] | None:
    """The pools the new entries fold into without a replay, or None (replay the
    group): the group itself when every merge took effect before them; each member
    alone when none took effect yet for any entry of the group (a merge takes effect
    for the entries after it: `replay`). Either way only if no other entry of the
    group later than them moves points (new to this transaction or not)."""
    first = min(row[1] for row in new)
    pools = [group]
    if len(group) > 1:
        whens = [when for when, _m, _t in merged_at(conn, group)]
        if any(when >= first for when in whens):  # as replay: effective after `when`
            (newest,) = conn.execute(f"SELECT MAX(id) FROM entries WHERE member "
                                     f"{views.in_(group)}", group).fetchone()
            if not all(when >= (newest or "") for when in whens):
                return None  # merged since: the new entries fold as one pool, the earlier apart
            # No merge has taken effect yet (a merge noted ahead of every entry, which
            # only a liar writes: each sale of the member replayed the group's history).
            pools = [[m] for m in sorted({row[0] for row in new})]
    if any(eid not in seen and conn.execute(_MOVES, (eid,)).fetchone()
           for m in group for (eid,) in conn.execute(
               "SELECT id FROM entries WHERE member = ? AND id > ?", (m, first))):
        return None
    return pools


# Does an entry move its member's points lots (projection.points_change, near enough:
# a debit whose points deltas cancel counts; a replay is never wrong)?
_MOVES = ("SELECT 1 FROM entries WHERE id = ? AND kind NOT IN ('transfer', 'merge') "
          "AND EXISTS (SELECT 1 FROM json_each(body, '$.deltas') "
          "WHERE json_extract(value, '$[0]') = 'points' AND json_extract(value, '$[2]') != 0)")


def _keep(conn: sqlite3.Connection, lots: list[Lot]) -> None:
    """Store the lots with points left, and what is owed (those with none are not kept)."""
    conn.executemany(
        "INSERT INTO points_lots(expires, left, earned, member) VALUES (?,?,?,?)",
        [lot for lot in lots if lot[1]])


# The fold's version, in meta `points_lots`: "2" since a write-off takes the lot it
# names first, "3" since a spend without `day` is folded on a date of its instant's
# alone and a merge cycle's survivor's own pointer counts, "4" since a refund stating
# that its sale's points expired takes back only that sale's lot (0.3.0). A store
# folded before replays the groups it may have folded otherwise when it opens
# (`refold`).
FOLD = POINTS_FOLD


def refold(conn: sqlite3.Connection, since: str) -> None:
    """Replay the groups a fold of version `since` may have folded otherwise: those
    holding a write-off that names its lot (an `expiry` with `ref`), before "2" folded
    by expiry order; those holding a spend without `day`, before "3" folded on the
    reader's own date; those holding a refund that states when its sale's points
    expired (`expires`), before "4" folded as any refund. Few: a read of the entries,
    and a replay of each such group, once."""
    members: set[str] = set()
    if since < "2":
        members.update(m for (m,) in conn.execute(
            "SELECT DISTINCT member FROM entries WHERE ref IS NOT NULL AND kind = 'expiry'"))
    if since < "3":
        members.update(e["member"] for (body,) in conn.execute(
            "SELECT body FROM entries WHERE instr(body, '\"points\"') "
            "AND json_extract(body, '$.day') IS NULL")
            if points_change(e := json.loads(body)) < 0)
        # Merge cycles, whose survivor's own pointer the fold had ignored.
        members.update(m for (m,) in conn.execute(
            "SELECT id FROM members WHERE json_extract(body, '$.merged_into') IS NOT NULL"))
    if since < "4":
        members.update(m for (m,) in conn.execute(
            "SELECT DISTINCT member FROM entries WHERE kind = 'refund' "
            "AND json_extract(body, '$.expires') IS NOT NULL"))
    heads: dict[str, list[str]] = {}
    for m in sorted(members):
        group = views.member_group(conn, m)
        heads.setdefault(group[0], group)
    for group in heads.values():
        conn.execute(f"DELETE FROM points_lots WHERE member {views.in_(group)}", group)
        _keep(conn, replay(conn, group))


def fill(conn: sqlite3.Connection) -> None:
    """Every group's lots from its entries (a store made before this table)."""
    conn.execute("DELETE FROM points_lots")
    heads: dict[str, list[str]] = {}
    for (m,) in conn.execute("SELECT DISTINCT member FROM entries").fetchall():
        group = views.member_group(conn, m)
        heads.setdefault(group[0], group)
    for group in heads.values():
        _keep(conn, replay(conn, group))
