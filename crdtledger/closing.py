"""Month-end cuts: each branch's signed word that its books of a month are final.

Once a branch's clock is past a month and a week (CUT_GRACE_DAYS), its daily pass
writes a *cut* into its own log: a record naming that month (crdtledger.log,
CUT_DOC), which says "my log up to here holds all I will ever write into the ledger
of this month and of every month before". Every replica holds the writer to it: a
later record of that writer into a closed month breaks the `closed-month` write rule
(crdtledger.writerules), is refused everywhere and blocks its writer, as any other
broken rule does. A month is closed for the chain, as far as a replica can tell, once
every writer it holds a log of has cut it: its books (daily reports, settlement,
ledger exports) then say the same at every branch that holds those logs, and no
branch can add to them. Corrections of a closed month are entries of the current one.

An honest branch can never be caught by its own cut: its entries go into the month
of their id's time, and once it has cut a month its clock mints no id before the
next month begins (`model.month_over_ms`), even if its machine's clock is then set back (a PC
whose clock was days ahead at the month's end): its ids run ahead until the clock
catches up, as they did before clock eras.

Once every branch has cut a month, each signs its *closing* in its own log: the
digest of every branch's log up to its cut and of the balances at the month's end
that this history gives (`digest`, `month_end`). Replicas whose digests agree hold
the same books of that month and of every month before; one that signed another is
shown (`books`, `crdtledger status`), since no rule can tell which history is the
true one.

This is the first part of period closing (benchmarks/README.md, "Period closing: a
design sketch"): the cuts, the month-end balances, and the digest a joining branch
will one day start from, which counts once a head office and a quorum of branches
signed it (`QUORUM`). A shop closed for good (its certificate revoked) is not waited
for; a branch that stops without being revoked keeps every later month open. The
balances include the points lots at the month's end, cut by id
(`month_end_from_tables`), and names by their hashes the records a joining branch
will take whole (`whole_records`: the member documents, the rules, the months
after). Not built: the rest of what a joining branch needs (open packages, coupons,
bookings; benchmarks/README.md), joining from a closing, months on demand.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING, Any

import orjson

from crdtledger import lots
from crdtledger.errors import InvalidInput, NotCaughtUp
from crdtledger.hlc import id_floor
from crdtledger.log import APPLIED, CLOSING_DOC, CUT_DOC, WAITING, closing_data
from crdtledger.model import GOODS_PURSES, ledger_doc, month_over_ms
from crdtledger.money import format_yuan
from crdtledger.projection import points_change, spent_topped

if TYPE_CHECKING:

    from crdtledger.ledger import Ledger

# A month is cut this many days after it ends, in the branch's own time zone: on the
# 8th, a branch's November is final. Until then a machine whose clock runs some days
# ahead would close a month its tills are still selling in.
CUT_GRACE_DAYS = 7

# A closing counts (is the chain's checkpoint of its books, the one a joining branch
# will start from) once a head office and this many other branches signed the same
# digest, or every branch when the chain has fewer: one honest signer besides head
# office would be enough to catch head office signing what it does not hold, two
# let one of them be cut off at month end.
QUORUM = 2


def due_month(day: str) -> str:
    """The latest month a branch closes on its local date `day` (YYYY-MM-DD)."""
    d = date.fromisoformat(day)
    year, month = d.year, d.month - (1 if d.day > CUT_GRACE_DAYS else 2)
    if month < 1:
        year, month = year - 1, month + 12
    return f"{year:04d}-{month:02d}"


def close_due_month(ledger: Ledger) -> str | None:
    """Write this branch's cut of the latest month due (the daily pass does); the month
    cut, or None if none was due (or this branch may not write yet: restored from a
    backup and not caught up, or blocked)."""
    month = due_month(ledger.today())
    if ledger.closed_through is not None and month <= ledger.closed_through:
        return None
    try:
        ledger._check_may_write()
    except NotCaughtUp:
        return None
    st = ledger.storage
    with st.transaction():
        rec = ledger._log_own(CUT_DOC, month.encode("ascii"))
    ledger._cut_taken(month)
    ledger._notify([rec], None)
    return month


def sign_closing(ledger: Ledger) -> str | None:
    """Sign the closing of the latest month every branch has closed, once this branch
    holds it whole (the daily pass does, after the cut): a `closing` record of its
    log with the month's digest. Returns the month signed, or None.

    Signed again if the digest here has changed since: a branch knows of another
    once it has its log, so one that signed before it heard of a branch that wrote
    before its cut (a new store's first pass, a shop cut off at month end) signed a
    closing of less than the chain's history, and its later, fuller one replaces it
    (each branch's latest closing of a month is the one read). Only new knowledge
    changes the digest, so this happens once per branch heard of late, not daily."""
    closing = books(ledger)["closing"]
    if closing is None or closing["digest"] is None:
        return None
    through: str = closing["month"]
    found: str = closing["digest"]
    signed = {m: d for _s, m, d in ledger.storage.log.closings().get(ledger.node, ())}
    if signed.get(through) == found or any(m > through for m in signed):
        return None
    if ledger.closed_through is None or ledger.closed_through < through:
        return None  # a month closed before it was enrolled: not its to sign
    try:
        ledger._check_may_write()
    except NotCaughtUp:
        return None
    with ledger.storage.transaction():
        rec = ledger._log_own(CLOSING_DOC, closing_data(through, found))
    ledger._notify([rec], None)
    return through


def digest(ledger: Ledger, month: str) -> str | None:
    """The closing digest of `month`: SHA-256 of the chain, the month, and for each
    writer whose log this replica holds, where its first cut of `month` or later sits
    in its log and the log's hash there; then the digest of the balances at the
    month's end (`month_end`), and that of the records a branch joining from the
    closing takes whole (`whole_records`). The log hash chains every record before it, so two
    replicas with the same digest hold the same history up to every branch's word
    that the month is over: the same books of it and of every month before, and the
    balances say that this replica's projection of that history is the same too (a
    store edited by hand, or a bug in a projection, shows as a closing that differs).
    A writer whose cut is its log's first record wrote nothing before (a branch newer
    than the month) and counts for nothing. A retired writer that never cut the month
    counts as far as its log is held here (nothing more of it will be taken; two
    replicas that hold different lengths of it hold different books). None while
    another writer known here has not cut the month."""
    return _digest(ledger, month, *_writers(ledger))


def _standing(ledger: Ledger) -> tuple[dict[str, list[tuple[int, str]]], dict[str, int]]:
    """Each writer's cuts that count, and where each writer blocked for a proven fault
    was first refused. A blocked writer's cuts count only before that record: every
    replica refuses the same one, but what it wrote after is held where it reached,
    and a cut of it sent to one branch only closed that branch's books alone, for good
    (the other waited for a cut it would never take)."""
    log = ledger.storage.log
    first: dict[str, int] = {}
    for fault in log.faults():
        node, seq = str(fault["node"]), int(fault["seq"])
        first[node] = min(first.get(node, seq), seq)
    cuts = {n: [c for c in cs if n not in first or c[0] < first[n]]
            for n, cs in log.cuts().items()}
    return cuts, first


def _digest(ledger: Ledger, month: str, writers: list[str], retired: list[str],
            standing: tuple[dict[str, list[tuple[int, str]]], dict[str, int]] | None = None
            ) -> str | None:
    log = ledger.storage.log
    cuts, first = standing or _standing(ledger)
    h = hashlib.sha256(b"crdtledger closing\0%s\0%s" % (ledger.chain.encode(),
                                                         month.encode()))
    upto: dict[str, int] = {}
    for node in writers:
        if enrolled_after(ledger, node, month):
            continue  # it wrote nothing of the month, and never can: counts for nothing
        seq = next((s for s, m in cuts.get(node, ()) if m >= month), None)
        if seq is None and node in retired:
            # All it wrote, as far as every replica took it (not what it sent after
            # its first refused record: that reached some branches only).
            seq = log.tip(node)[0]
            if node in first:
                seq = min(seq, first[node] - 1)
        if seq is None:
            return None
        upto[node] = seq
        if seq > 1:
            h.update(b"\0%s\0%d\0" % (node.encode(), seq) + (log.hash_at(node, seq) or b""))
    end = month_end(ledger, month, upto, h.hexdigest())
    h.update(b"\0balances\0" + end.digest.encode())
    h.update(b"\0records\0" + end.whole_digest.encode())
    return h.hexdigest()


# The widest offsets of civil time from UTC are +14 and -12 hours: an entry id within
# this span before a month's turn in UTC-12 belongs to the month before or after, by
# the zone of its writer.
_ZONES_SPAN_MS = 26 * 3_600_000


@dataclass(frozen=True)
class MonthEnd:
    """The balances at the end of a closed month, from the entries of the ledger
    documents of that month and every month before (each branch's escrow rights per
    member, purse and holding branch, and each member's cumulative spend and top-ups),
    and the points lots of the entries with ids before the month's end in the latest
    zone (lots are folded in id order: `month_end_from_tables`): what every replica
    that holds the same history holds, whatever its time zone."""

    month: str
    digest: str  # SHA-256 of the nonzero rows, sorted (docs/format.md)
    purses: dict[str, int]  # purse kind (cash, bonus, points, pkg, cpn, stock, transit)
    holders: int  # members with any nonzero right (goods items are not members)
    # Points left in the lots at the month's end (crdtledger.lots), and how many lots.
    lot_points: int = 0
    lots: int = 0
    # Records and entries of the month or before that wait here (`month_end`): not
    # counted yet; the balances may change when they come in.
    pending: int = 0
    # The records before the cuts of the documents a branch joining from this closing
    # takes whole (`whole_records`): how many, and the digest of their hashes.
    whole: int = 0
    whole_digest: str = ""

    @classmethod
    def of(cls, month: str, rights: Iterable[tuple[tuple[str, str, str], int]],
           totals: Iterable[tuple[str, tuple[int, int]]],
           lots: Iterable[tuple[str, str, str, int]] = ()) -> MonthEnd:
        """From the rows, each sorted by key: rights ((member, purse, node), amount) and
        totals (member, (spent, topped)), as the `rights` and `totals` tables hold
        them; zero rows count for nothing (a table keeps a row once an entry touched
        it); and the points lots at the month's end by id (`month_end_from_tables`):
        (member, earned by entry, expires, points left), those with points left or owed."""
        h = hashlib.sha256(b"crdtledger month end\0%s" % month.encode())
        purses: defaultdict[str, int] = defaultdict(int)
        holders = 0
        last = None
        for (member, purse, node), amount in rights:
            if amount:
                h.update(b"R\0%s\0%s\0%s\0%d\n" % (member.encode(), purse.encode(),
                                                     node.encode(), amount))
                purses[purse.split(":", 1)[0]] += amount
                if purse not in GOODS_PURSES and member != last:  # a stock id is no member
                    holders += 1
                    last = member
        for member, (spent, topped) in totals:
            if spent or topped:
                h.update(b"T\0%s\0%d\0%d\n" % (member.encode(), spent, topped))
        lot_points = count = 0
        for member, earned, expires, left in lots:
            h.update(b"L\0%s\0%s\0%s\0%d\n" % (member.encode(), earned.encode(),
                                                 expires.encode(), left))
            lot_points += left
            count += 1
        return cls(month, h.hexdigest(), dict(sorted(purses.items())), holders,
                   lot_points, count)


def month_end(ledger: Ledger, month: str, upto: dict[str, int], key: str) -> MonthEnd:
    """The balances at the end of `month` as this replica holds them, remembered per
    (month, `key`: the history up to the cuts) and per what of it waits here: records
    of a writer before its cut kept waiting for what they build on, entries of
    the month or before deferred for their funding. Those count for nothing yet; when
    they come in, the balances are worked out again, the digest changes and the
    branch signs again (`sign_closing`). Not refused meanwhile: a liar can make a
    record wait, or an entry be deferred, for ever (an overdraft of its own rights),
    the same at every replica that holds it, and must not keep the chain's months
    from closing."""
    conn = ledger.storage.conn
    # Which ones, not how many: one funded as another is deferred changes the balances.
    pending = [f"{node}:{seq}" for node in sorted(ledger.storage.log.waiting_nodes()
                                                  & upto.keys())
               for (seq,) in conn.execute(
                   "SELECT seq FROM records WHERE node = ? AND seq < ? AND state = ? "
                   "ORDER BY seq", (node, upto[node], WAITING))]
    # Entries of a later month's document with ids before the lots' cut count for
    # the lots (`month_end_from_tables`): waiting, they are pending too.
    pending += [k for (k,) in conn.execute(
        "SELECT key FROM deferred WHERE doc >= 'ledger/' AND (doc <= ? OR key < ?) "
        "ORDER BY key", (ledger_doc(month), _turn_ids(month)[1]))]
    key = hashlib.sha256("\0".join([key, *pending]).encode()).hexdigest()
    kept = ledger.month_ends.get(month)
    if kept is not None and kept[0] == key:
        return kept[1]
    whole, whole_digest = whole_records(ledger, month, upto)
    end = replace(month_end_from_tables(ledger, month), pending=len(pending), whole=whole,
                  whole_digest=whole_digest)
    ledger.month_ends[month] = (key, end)
    return end


def whole_records(ledger: Ledger, month: str, upto: Mapping[str, int]) -> tuple[int, str]:
    """The records a branch joining from the closing of `month` will take whole, and
    the SHA-256 of their hashes (docs/format.md): every record applied here, before its
    writer's cut (`upto`), of a document that is not a ledger month up to `month` (the
    member documents, the rules and operators, the months after), sorted by document,
    writer and position. The joining branch gets the closed months' books as the
    balances at their end, and every writer's records after its cut verified forward
    from the cut's hash; but a member document's records span the chain's whole life,
    interleaved in every log with the ledger's, and a month after `month` began before
    the cuts (a branch cuts on the 8th), so those come as records, each proven by its
    hash here (docs/design-notes.md, "Joining from a closing: what vouches for the
    documents"). By the records' chain hashes, not by the documents' content: a hash
    is the same at every replica that holds the record, however pycrdt encoded the
    state, and stays the same when an erasure redacts the record later."""
    h = hashlib.sha256(b"crdtledger whole records\0%s" % month.encode())
    count = 0
    for doc, node, seq, hash_ in ledger.storage.conn.execute(
            "SELECT doc, node, seq, hash FROM records WHERE state = ? AND doc NOT IN (?, ?) "
            "AND NOT (doc >= 'ledger/' AND doc <= ?) ORDER BY doc, node, seq",
            (APPLIED, CUT_DOC, CLOSING_DOC, ledger_doc(month))):
        if seq <= upto.get(node, 0):
            h.update(b"%s\0%s\0%d\0%s\n" % (doc.encode(), node.encode(), seq,
                                              bytes(hash_).hex().encode()))
            count += 1
    return count, h.hexdigest()


def month_end_from_tables(ledger: Ledger, month: str) -> MonthEnd:
    """The balances at the end of `month`: the `rights` and `totals` tables, which hold
    every projected entry, less what the entries of the ledger documents after `month`
    added (a week to a month of them when `month` is the latest closed; `views.
    purses_after` reads a receipt's balance the same way). So the closing attests the
    balances this store sells on, and costs a pass over the tables' rows in key order
    (streamed) and over the recent entries, never the whole history."""
    later_rights, later_totals, moved = _added_after(ledger, month)
    conn = ledger.storage.conn
    rights = (((m, p, n), a - later_rights.get((m, p, n), 0)) for m, p, n, a in conn.execute(
        "SELECT member, purse, node, amount FROM rights ORDER BY member, purse, node"))
    totals = ((m, (s - later_totals.get(m, (0, 0))[0], t - later_totals.get(m, (0, 0))[1]))
              for m, s, t in conn.execute(
                  "SELECT member, spent, topped FROM totals ORDER BY member"))
    # The points lots are cut by id, not by document: their fold is in id order, and
    # the prefix of ids before the month's end in the latest zone holds every entry of
    # the month's document and of those before (docs/design-notes.md, "Points lots as
    # a table"). Every branch's cut is past it (`model.month_over_ms`), so it is final too.
    cut = _turn_ids(month)[1]
    return MonthEnd.of(month, rights, totals,
                       lots.at(conn, cut, moved))


# What an owner and an accountant read per member at a month's end: the money and
# points a member can spend (packages and coupons are counted in `MonthEnd.purses`).
MEMBER_PURSES = ("cash", "bonus", "points")


def member_balances(ledger: Ledger, month: str | None = None) -> dict[str, Any]:
    """Each member's stored value, bonus value and points at the end of `month` (the
    latest month closed at every branch when None), and their sums: what the chain
    owes its members, by member, once nothing more can be written into that month.
    The same rows as the closing's balances (`month_end_from_tables`), summed over
    the branches holding them, with what of the month waits here (`pending`, as
    `month_end` counts it: the figures leave those out until they come). InvalidInput
    for a month not closed at every branch: its balances could still change."""
    through = books(ledger)["closed_through"]
    if through is None:
        raise InvalidInput("no month is closed at every branch yet (crdtledger report "
                           "books): a month's balances are final once it is")
    month = month or through
    if month > through:
        raise InvalidInput(f"{month} is not closed at every branch yet (the books are "
                           f"closed through {through}): its balances can still change")
    later, _totals, _moved = _added_after(ledger, month)
    less: defaultdict[tuple[str, str], int] = defaultdict(int)
    for (member, purse, _node), amount in later.items():
        less[(member, purse)] += amount
    held: dict[str, dict[str, Any]] = {}
    for member, name, purse, amount in ledger.storage.conn.execute(
            "SELECT r.member, m.name, r.purse, TOTAL(r.amount) FROM rights r LEFT JOIN members "
            "m ON m.id = r.member WHERE r.purse IN "
            f"({','.join('?' * len(MEMBER_PURSES))}) GROUP BY r.member, r.purse "
            "ORDER BY r.member", MEMBER_PURSES):
        left = int(amount) - less.get((member, purse), 0)
        if left:
            row = held.setdefault(member, {"member": member, "name": name or "",
                                           **dict.fromkeys(MEMBER_PURSES, 0)})
            row[purse] = left
    rows = list(held.values())
    digest(ledger, month)  # every writer has cut it: its month end is worked out
    return {"month": month, "members": rows,
            "total": {k: sum(r[k] for r in rows) for k in MEMBER_PURSES},
            "pending": ledger.month_ends[month][1].pending}


def balance_rows(balances: Mapping[str, Any]) -> list[list[str]]:
    """`member_balances` as one table (amounts in yuan, points as counted), a row per
    member and then the sums: the command line's --csv; the back office's export has
    the same columns, its headers in the counter's language."""
    def row(first: str, name: str, b: Mapping[str, int]) -> list[str]:
        return [first, name, format_yuan(b["cash"]), format_yuan(b["bonus"]), str(b["points"])]
    return [["member", "name", *MEMBER_PURSES],
            *(row(m["member"], m["name"], m) for m in balances["members"]),
            row("total", "", balances["total"])]


def _added_after(ledger: Ledger, month: str) -> tuple[dict[tuple[str, str, str], int],
                                                     dict[str, tuple[int, int]], set[str]]:
    """What the projected entries of the ledger documents after `month` added to the
    rights and totals; and the members whose points lots an entry with an id after the
    month's end in every zone moved (`lots.at`). Ids well before the month's turn are
    of it or before, in every time zone; the few within a zone's offset of the turn
    are looked up in the month's document (each store reads ids in its own zone: by
    id, a sale at 00:30 on the 1st in Shanghai is the month before in Los Angeles)."""
    surely, maybe = _turn_ids(month)
    rights: defaultdict[tuple[str, str, str], int] = defaultdict(int)
    totals: dict[str, tuple[int, int]] = {}
    near: list[dict[str, Any]] = []
    moved: set[str] = set()

    def add(e: dict[str, Any]) -> None:
        for purse, node, change in e["deltas"]:
            rights[(e["member"], purse, node)] += change
        spent, topped = spent_topped(e)
        if spent or topped:
            was = totals.get(e["member"], (0, 0))
            totals[e["member"]] = (was[0] + spent, was[1] + topped)

    for (body,) in ledger.storage.conn.execute(
            "SELECT body FROM entries WHERE id >= ? ORDER BY id", (surely,)):
        e = orjson.loads(body)
        if e["id"] >= maybe:
            add(e)
            if e["kind"] not in ("transfer", "merge") and points_change(e):
                moved.add(e["member"])
        else:
            near.append(e)
    if near:  # in the month's document, or in the next one's
        held = ledger.storage.doc(ledger_doc(month)).plain_values(
            [("entries", e["id"]) for e in near])
        for e in near:
            if ("entries", e["id"]) not in held:
                add(e)
    return rights, totals, moved


def _turn_ids(month: str) -> tuple[str, str]:
    """The ids before which every entry is of `month` or before, in every zone, and
    from which every one is later. A month before 1970 is before every id: a liar's
    cut may name year 0000, which no calendar can turn."""
    if month < "1970-01":
        return "", ""
    over = month_over_ms(month)  # the turn in UTC-12; in UTC+14 it came 26 hours before
    return id_floor(over - _ZONES_SPAN_MS), id_floor(over)


def enrolled_after(ledger: Ledger, node: str, month: str) -> bool:
    """Did the chain enroll `node` after `month` ended in every time zone (its
    certificate says so: trust.ENROLLED_OID)? Then none of its ids is of the month."""
    since = ledger.enrolled_since(node)
    return since is not None and month >= "1970-01" and since >= month_over_ms(month)


def _before_enrolment(ledger: Ledger, node: str) -> str:
    """The latest month `node` was enrolled after ("" if none, or not said)."""
    since = ledger.enrolled_since(node)
    if since is None:
        return ""
    # The month under way at `since` in UTC-12, the latest zone: the one before it had
    # turned everywhere by then.
    day = datetime.fromtimestamp((since - 12 * 3_600_000) // 1000, tz=UTC)
    year, month = (day.year - 1, 12) if day.month == 1 else (day.year, day.month - 1)
    before = f"{year:04d}-{month:02d}"
    return before if before >= "1970-01" and since >= month_over_ms(before) else ""


def _writers(ledger: Ledger) -> tuple[list[str], list[str]]:
    """This branch and every writer whose log it holds, in order; and those of them
    retired: a branch whose certificate the chain revoked (a shop closed for good)
    can add nothing more anywhere, so its months are not waited for."""
    log = ledger.storage.log
    writers = sorted({*log.positions(), ledger.node})
    return writers, [n for n in writers if n != ledger.node and ledger.retired(n)]


def _counted(ledger: Ledger, agree: list[str], writers: list[str], retired: list[str]
             ) -> bool:
    """Did a head office (a node the chain lets write governance) and QUORUM other
    branches, or every branch, sign this replica's digest? Only branches in good
    standing here count: not one retired, nor one blocked for a broken rule or a fork
    (its closing is kept as it came, but a liar's word is not a witness)."""
    out = {*retired, *ledger.storage.log.blocked()}
    signers = [n for n in agree if n not in out]
    return (any(ledger.speaks_for_chain(n) for n in signers)
            and len(signers) >= min(QUORUM + 1, len([n for n in writers if n not in out])))


def books(ledger: Ledger) -> dict[str, Any]:
    """How far the books are closed, as this replica knows: each writer's latest cut
    (None: none yet) for this branch and every writer whose log it holds (a branch
    is heard of once it writes: its first daily pass writes a cut); the month through
    which all have closed (None until each has cut one); the latest due month any has
    closed, and the writers not yet there (who the next month's closing waits for);
    and that month's closing: its digest here, the branches that signed the same and
    those that signed another (their history up to the cuts differs from this one's:
    a fork, or records of the month that reached one of the two after it signed),
    whether it counts (`counted`: a head office and a quorum signed it), and the
    balances at the month's end its digest covers (`balances`: each purse kind's sum
    over every member, how many members hold anything, and how many records and
    entries of the month wait here, not counted yet; None without a digest); and the
    writers blocked here for a proven fault (`blocked`)."""
    log = ledger.storage.log
    standing = _standing(ledger)
    cuts = standing[0]
    writers, retired = _writers(ledger)
    branches = {n: max((m for _s, m in cuts[n]), default=None) if n in cuts else None
                for n in writers}
    # A writer enrolled after a month is not waited for in it, cut or not: nothing of
    # it may be dated there (write rule `enrolled`). Else one record of a branch
    # enrolled today, before its first daily pass cut, read every earlier month open
    # again at every branch. A month nobody cut is closed by nobody's word, though.
    closed = {n: max(m or "", _before_enrolment(ledger, n)) or None for n, m in branches.items()}
    months = [m for n, m in closed.items() if m is not None and n not in retired]
    cut = [m for n, m in branches.items() if m is not None and n not in retired]
    active = len(branches) - len(retired)
    # A cut of a month not yet due here (a branch whose clock ran far ahead, or that
    # lies) closes nothing of anyone else's: the next closing is of a month due.
    due = due_month(ledger.today())
    latest = max((m for m in cut if m <= due), default=None)
    through = min(*months, max(cut)) if cut and len(months) == active else None
    if through is not None and all(enrolled_after(ledger, n, through)
                                   for n in branches if n not in retired):
        through = None  # before the chain had a branch: nothing was closed in it
    closing = None
    if through is not None:
        ours = _digest(ledger, through, writers, retired, standing)
        said = {n: d for n, signed in log.closings().items()
                for _s, m, d in signed if m == through}  # each writer's latest
        agree = sorted(n for n, d in said.items() if d == ours)
        end = ledger.month_ends[through][1] if ours is not None else None
        closing = {"month": through, "digest": ours, "agree": agree,
                   "differ": sorted(n for n, d in said.items() if d != ours),
                   "counted": ours is not None and _counted(ledger, agree, writers, retired),
                   "balances": end and {"purses": end.purses, "holders": end.holders,
                                        "lots": end.lots, "lot_points": end.lot_points,
                                        "pending": end.pending}}
    return {"closed_through": through, "latest": latest, "branches": branches,
            "behind": sorted(n for n, m in closed.items() if n not in retired
                             and latest is not None and (m is None or m < latest)),
            "retired": retired, "closing": closing,
            # Nothing more of theirs is taken here, their cuts included: the months after
            # their last wait for them until head office revokes their certificates.
            "blocked": sorted(set(branches) & log.blocked() - set(retired))}
