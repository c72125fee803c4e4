"""Derived views, computed from the projections only (never by reading pycrdt).

Every figure here is a function of the set of entries and records, not of the order
they arrived in, so converged replicas print the same reports.
"""

from __future__ import annotations

import json
import sqlite3
from collections import defaultdict
from collections.abc import Mapping
from datetime import date, timedelta
from typing import TYPE_CHECKING, Any, TypedDict

from crdtledger.errors import InvalidInput, NotFound
from crdtledger.model import PERMISSIONS

if TYPE_CHECKING:
    from crdtledger.ledger import Ledger


def mask_phone(phone: str) -> str:
    """138****5678: lists never show a whole phone number."""
    digits = phone.replace(" ", "").replace("-", "")
    if len(digits) < 7:
        return "*" * len(digits)
    return f"{digits[:3]}{'*' * (len(digits) - 7)}{digits[-4:]}"


def balance(conn: sqlite3.Connection, member: str) -> dict[str, Any]:
    out: dict[str, Any] = {"cash": 0, "bonus": 0, "points": 0, "packages": {}}
    for purse, total in conn.execute(
        "SELECT purse, SUM(amount) FROM rights WHERE member = ? GROUP BY purse", (member,)
    ):
        if purse.startswith("pkg:"):
            out["packages"][purse[4:]] = int(total)
        else:
            out[purse] = int(total)
    return out


def rights_held(conn: sqlite3.Connection, node: str) -> int:
    """Stored value (cash and bonus, fen) whose rights `node` holds: what it could
    spend on its own, so what is at stake if it misbehaves."""
    (total,) = conn.execute(
        "SELECT COALESCE(SUM(amount), 0) FROM rights WHERE node = ? AND purse IN "
        "('cash', 'bonus')", (node,)).fetchone()
    return int(total)


def trust_status(ledger: Ledger) -> dict[str, Any]:
    """What a node's sync status says about trust: whether it is restored and not
    yet caught up with itself, the nodes caught breaking a write rule or forking
    their logs (blocked), and the latest records refused from peers and files."""
    return {"restored": ledger.restored, "faults": ledger.faults(),
            "refused": list(ledger.refusals)[-20:]}


def member(ledger: Ledger, member_id: str) -> dict[str, Any]:
    conn = ledger.storage.conn
    row = conn.execute("SELECT body, home FROM members WHERE id = ?", (member_id,)).fetchone()
    if row is None:
        raise NotFound(f"unknown member {member_id}")
    data = json.loads(row[0])
    data["id"] = member_id
    data["tags"] = sorted(t for t, on in (data.get("tags") or {}).items() if on)
    data["cards"] = [
        {"id": cid, "card_no": no, "status": status}
        for cid, no, status in conn.execute(
            "SELECT id, card_no, status FROM cards WHERE member = ? ORDER BY id", (member_id,)
        )
    ]
    data["level_info"] = level(ledger, member_id)
    return dict(data)


def find_members(conn: sqlite3.Connection, query: str, limit: int = 20) -> list[dict[str, Any]]:
    """By card number, exact phone, phone tail (last 4+ digits) or name; phones masked."""
    q = query.strip()
    ids: list[str] = []
    if q:
        ids += [m for (m,) in conn.execute(
            "SELECT member FROM cards WHERE card_no = ? ORDER BY status = 'active' DESC",
            (q.upper(),))]
        ids += [m for (m,) in conn.execute("SELECT id FROM members WHERE id = ?", (q,))]
        ids += [m for (m,) in conn.execute("SELECT id FROM members WHERE phone = ?", (q,))]
        if q.isdigit() and len(q) >= 4:
            ids += [m for (m,) in conn.execute(
                "SELECT id FROM members WHERE phone LIKE ? LIMIT ?", (f"%{q}", limit))]
        # Escape LIKE's wildcards: a search for "%" or "_" must not list every member.
        like = q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        ids += [m for (m,) in conn.execute(
            "SELECT id FROM members WHERE name LIKE ? ESCAPE '\\' ORDER BY name LIMIT ?",
            (f"%{like}%", limit))]
    out = []
    for mid in dict.fromkeys(ids):
        row = conn.execute("SELECT name, phone, home, body FROM members WHERE id = ?",
                           (mid,)).fetchone()
        if row is None or json.loads(row[3]).get("deleted"):
            continue
        out.append({"id": mid, "name": row[0], "phone": mask_phone(row[1]), "home": row[2]})
    return out[:limit]


# --- named queries for callers outside the library --------------------------------
#
# The projection tables are the library's own business: their columns change with the
# storage (see docs/design-notes.md, "Storage"). What the node, the counter, the
# simulator and the benchmarks need to read is declared here, one function per
# question, so that a change of the tables changes these and nothing outside
# crdtledger/ (tests/test_layers.py keeps it so).


class OperatorInfo(TypedDict):
    """An operator as a listing shows it: never the password hash."""

    id: str
    name: str
    active: bool
    roles: list[str]


class TopupRow(TypedDict):
    """A top-up entry with who it was for, phone masked (receipts list)."""

    entry: dict[str, Any]
    name: str
    phone: str


class MemberRecord(TypedDict):
    """A member's whole profile (phone unmasked) with the day they joined and their
    cash, bonus and points totals."""

    id: str
    profile: dict[str, Any]
    day: str
    purses: dict[str, int]


def has_operators(ledger: Ledger) -> bool:
    """Whether any operator was ever added. The counter's login page tells the owner
    how to add the first one when there is none."""
    return ledger.storage.conn.execute(
        "SELECT 1 FROM operators LIMIT 1").fetchone() is not None


def operators(ledger: Ledger) -> list[OperatorInfo]:
    """Every operator, by name, with the roles ticked: the back office's operator
    list. A role that is not ticked any more is not listed."""
    out: list[OperatorInfo] = []
    for oid, name, body in ledger.storage.conn.execute(
        "SELECT id, name, body FROM operators ORDER BY name, id"
    ):
        data = json.loads(body)
        out.append({"id": oid, "name": name, "active": bool(data.get("active", True)),
                    "roles": sorted(r for r, on in (data.get("roles") or {}).items() if on)})
    return out


def operator_name(ledger: Ledger, operator_id: str) -> str | None:
    """The display name of an operator, None if unknown (a till prints who served;
    reports name who wrote an entry). The owner of a node is not in the table."""
    row = ledger.storage.conn.execute(
        "SELECT name FROM operators WHERE id = ?", (operator_id,)).fetchone()
    return str(row[0]) if row else None


def defined_roles(ledger: Ledger) -> dict[str, frozenset[str]]:
    """Roles the chain defined (not the built-in ones unless redefined), each with the
    permissions ticked and known, as `Ledger.permissions` reads them: the back
    office's role grid shows and edits these."""
    return {name: frozenset(p for p, on in json.loads(body).items() if on and p in PERMISSIONS)
            for name, body in ledger.storage.conn.execute(
                "SELECT name, body FROM roles ORDER BY name")}


def member_exists(ledger: Ledger, member_id: str) -> bool:
    """Whether a member record exists (erased members too): the API refuses an
    unknown id where a view alone would show an empty balance."""
    return ledger.storage.conn.execute(
        "SELECT 1 FROM members WHERE id = ?", (member_id,)).fetchone() is not None


def member_by_phone(ledger: Ledger, phone: str) -> str | None:
    """The member with exactly this phone number (the oldest id if several), None if
    none: the command line's `--phone`, where find_members would also match names and
    phone tails."""
    row = ledger.storage.conn.execute(
        "SELECT id FROM members WHERE phone = ? ORDER BY id LIMIT 1", (phone.strip(),)
    ).fetchone()
    return str(row[0]) if row else None


def member_ids(ledger: Ledger) -> list[str]:
    """Every member id, sorted (erased ones included): the simulator's convergence
    checks and the benchmarks' customer pools."""
    return [str(m) for (m,) in ledger.storage.conn.execute("SELECT id FROM members ORDER BY id")]


def member_records(ledger: Ledger) -> list[MemberRecord]:
    """Every live member, by id, with cash, bonus and points: the owner's member
    export (whole phone numbers: only for a caller allowed to back up)."""
    conn = ledger.storage.conn
    purses: dict[str, dict[str, int]] = defaultdict(dict)
    for mid, purse, total in conn.execute(
        "SELECT member, purse, SUM(amount) FROM rights WHERE purse IN ('cash', 'bonus', 'points') "
        "GROUP BY member, purse"
    ):
        purses[mid][purse] = int(total)
    out: list[MemberRecord] = []
    for mid, body, day in conn.execute("SELECT id, body, day FROM members ORDER BY id"):
        profile = json.loads(body)
        if profile.get("deleted"):
            continue
        out.append({"id": mid, "profile": profile, "day": day,
                    "purses": purses.get(mid, {})})
    return out


def peers_seen(ledger: Ledger) -> dict[str, int | None]:
    """Every peer this store has synced with (network or file), by node id, with when
    it was last heard from (ms since the epoch; None if never recorded). The back
    office lists their branches and how long ago each was heard from; the command
    line's status shows them when the node is not running."""
    return {str(n): (int(at) if at is not None else None) for n, at in
            ledger.storage.conn.execute("SELECT node, seen_at FROM peers ORDER BY node")}


def active_branches(ledger: Ledger, day: str) -> set[str]:
    """Branches that wrote an entry on `day` or where a member joined that day: the
    daily report gives each a row even when no rule names it."""
    where, args = _period(ledger, day, day)
    conn = ledger.storage.conn
    out = {str(n) for (n,) in conn.execute(
        f"SELECT DISTINCT node FROM entries WHERE {where}", args)}
    out |= {str(n) for (n,) in conn.execute(
        "SELECT DISTINCT home FROM members WHERE day = ?", (day,))}
    return out


def topups(ledger: Ledger, start: str, end: str) -> list[TopupRow]:
    """Every top-up of the days start..end (inclusive), oldest first, with the
    member's name and masked phone: the top-up receipts (充值明细) report."""
    where, args = _period(ledger, start, end)
    return [{"entry": json.loads(body), "name": name or "", "phone": mask_phone(phone or "")}
            for body, name, phone in ledger.storage.conn.execute(
                "SELECT e.body, m.name, m.phone FROM (SELECT id, member, body FROM entries "
                f"WHERE {where} AND kind = 'topup') e LEFT JOIN members m ON m.id = e.member "
                "ORDER BY e.id", args)]


def max_entry_id(ledger: Ledger) -> str:
    """The greatest entry id this replica holds, '' if none: a mark to ask later what
    arrived since (the rebalancer starts from it so that it never scans a year of
    entries; a benchmark times propagation from it)."""
    (top,) = ledger.storage.conn.execute("SELECT COALESCE(MAX(id), '') FROM entries").fetchone()
    return str(top)


def entry_ids_after(ledger: Ledger, mark: str) -> list[str]:
    """Ids of the entries greater than `mark`, in order: what reached this replica
    since a `max_entry_id` mark (ids are minted from the writer's clock, so an entry
    written earlier elsewhere may still arrive below the mark)."""
    return [str(e) for (e,) in ledger.storage.conn.execute(
        "SELECT id FROM entries WHERE id > ? ORDER BY id", (mark,))]


def debited_elsewhere_since(ledger: Ledger, node: str, mark: str) -> tuple[list[str], str]:
    """Members debited at a branch other than `node` in entries above `mark`, and the
    new mark (the greatest id now held, or `mark` if none): the rebalancer's pass
    looks only at members who shopped elsewhere since its last pass."""
    # A range of the primary key, deduplicated here: with DISTINCT ... ORDER BY member
    # SQLite walks the member index over the whole table, every pass.
    members = sorted({str(m) for (m,) in ledger.storage.conn.execute(
        "SELECT member FROM entries WHERE id > ? AND kind = 'debit' AND node != ?",
        (mark, node))})
    return members, max_entry_id(ledger) or mark


def visits(ledger: Ledger, member: str, since_id: str) -> dict[str, int]:
    """Debits of `member` per branch in entries from `since_id` on (an `id_floor` of
    a day): where the member shops, which the rebalancer moves rights toward."""
    return {str(n): int(c) for n, c in ledger.storage.conn.execute(
        "SELECT node, COUNT(*) FROM entries WHERE member = ? AND kind = 'debit' AND id >= ? "
        "GROUP BY node ORDER BY node", (member, since_id))}


def newest_entries(ledger: Ledger, node: str, kind: str, *, member: str | None = None,
                   op: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
    """The newest entries of `kind` written by `node` (optionally for one member, by
    one operator), newest first: the simulator finds the entry behind an operation
    that returned only an id (a card issued, a rights request granted)."""
    where, args = "node = ? AND kind = ?", [node, kind]
    if member is not None:
        where += " AND member = ?"
        args.append(member)
    if op is not None:
        where += " AND op = ?"
        args.append(op)
    return [json.loads(b) for (b,) in ledger.storage.conn.execute(
        f"SELECT body FROM entries WHERE {where} ORDER BY id DESC LIMIT ?", [*args, limit])]


def count_entries(ledger: Ledger, *, node: str | None = None, since_day: str | None = None
                  ) -> int:
    """How many entries this replica holds (written by `node`, on `since_day` or
    later): the simulator checks a restarted node kept every acknowledged entry; the
    demo and the benchmarks report sizes."""
    where, args = _period(ledger, since_day, None)
    if node is not None:
        where += " AND node = ?"
        args.append(node)
    (n,) = ledger.storage.conn.execute(
        f"SELECT COUNT(*) FROM entries WHERE {where}", args).fetchone()
    return int(n)


def funded_members(ledger: Ledger, node: str, at_least: int, limit: int,
                   purse: str = "cash") -> list[str]:
    """Up to `limit` members (by id) whose rights in `purse` held at `node` are at least
    `at_least`: a benchmark's customers, served there without asking a peer."""
    return [str(m) for (m,) in ledger.storage.conn.execute(
        "SELECT member FROM rights WHERE node = ? AND purse = ? AND amount >= ? "
        "ORDER BY member LIMIT ?", (node, purse, at_least, limit))]


def level(ledger: Ledger, member_id: str, profile: Mapping[str, Any] | None = None,
          totals: tuple[int, int] | None = None) -> dict[str, Any]:
    """Highest level whose threshold the member's cumulative basis reaches; a manual
    upgrade (the member's `level` field) counts if it is higher. `profile` and
    `totals` (spent, topped) save reading them again when the caller has them."""
    conn = ledger.storage.conn
    if totals is None:
        row = conn.execute("SELECT spent, topped FROM totals WHERE member = ?",
                           (member_id,)).fetchone()
        totals = (int(row[0]), int(row[1])) if row else (0, 0)
    spent, topped = totals
    basis = ledger.rule("level_basis")["basis"]
    value = topped if basis == "topped" else spent
    levels = sorted(ledger.rule("levels"), key=lambda lv: int(lv["threshold"]))
    current = levels[0]
    for lv in levels:
        if value >= int(lv["threshold"]):
            current = lv
    if profile is None:
        mrow = conn.execute("SELECT body FROM members WHERE id = ?", (member_id,)).fetchone()
        profile = json.loads(mrow[0]) if mrow else {}
    manual = profile.get("level")
    for lv in levels:
        if lv["name"] == manual and int(lv["threshold"]) > int(current["threshold"]):
            current = lv
    return {"name": current["name"], "discount": str(current["discount"]),
            "points_multiplier": str(current["points_multiplier"]), "spent": spent,
            "topped": topped}


def history(conn: sqlite3.Connection, member_id: str, limit: int = 50) -> list[dict[str, Any]]:
    return [json.loads(b) for (b,) in conn.execute(
        "SELECT body FROM entries WHERE member = ? ORDER BY id DESC LIMIT ?", (member_id, limit))]


def packages(ledger: Ledger, member_id: str) -> list[dict[str, Any]]:
    bal = balance(ledger.storage.conn, member_id)["packages"]
    out = []
    for pkg_id, remaining in sorted(bal.items()):
        row = ledger.storage.conn.execute(
            "SELECT service, body FROM entries WHERE id = ?", (pkg_id,)).fetchone()
        svc = row[0] if row else None
        out.append({"id": pkg_id, "service": svc, "remaining": remaining,
                    "uses": json.loads(row[1]).get("qty") if row else None})
    return out


def points(ledger: Ledger, member_id: str) -> dict[str, Any]:
    """Points with their expiry: lots earned are used first-in, first-out."""
    conn = ledger.storage.conn
    lots: list[list[Any]] = []  # [expires, remaining]
    used = 0
    expired_written = 0
    for (body,) in conn.execute(
        "SELECT body FROM entries WHERE member = ? ORDER BY id", (member_id,)
    ):
        e = json.loads(body)
        if e["kind"] == "transfer":
            continue  # moves rights between branches; the member's points are unchanged
        for purse, _node, change in e["deltas"]:
            if purse != "points":
                continue
            if change > 0:
                lots.append([e.get("expires") or "9999-12-31", change])
            else:
                used += -change
                if e["kind"] == "expiry":
                    expired_written += -change
    lots.sort(key=lambda lot: lot[0])
    remaining_used = used
    for lot in lots:
        take = min(lot[1], remaining_used)
        lot[1] -= take
        remaining_used -= take
    today = ledger.today()
    expired_due = sum(n for exp, n in lots if exp < today)
    soon = (date.fromisoformat(today) + timedelta(days=30)).isoformat()
    total = sum(n for _exp, n in lots)
    return {
        "total": total,
        "expired_unwritten": expired_due,
        "expiring_30_days": sum(n for exp, n in lots if today <= exp <= soon),
        "lots": [{"expires": exp, "points": n} for exp, n in lots if n > 0],
    }


def _period(ledger: Ledger, start: str | None, end: str | None) -> tuple[str, list[Any]]:
    """Entries of the days `start`..`end` (inclusive, either open), as a range of ids.

    An entry's id starts with its timestamp and its day is derived from it, so a
    period is a primary-key range: no index on the day to update at every debit."""
    where, args = "1", []
    if start:
        where += " AND id >= ?"
        args.append(ledger.storage.day_start_id(start))
    if end:
        where += " AND id < ?"
        args.append(ledger.storage.day_start_id(end, days_later=1))
    return where, args


def daily_report(ledger: Ledger, day: str, node: str | None = None) -> dict[str, Any]:
    """营业报表 for one day: new members, sales, top-up cash received, cards sold."""
    conn = ledger.storage.conn
    where, args = _period(ledger, day, day)
    if node:
        where += " AND node = ?"
        args.append(node)
    sums: dict[str, tuple[int, int, int]] = {
        k: (int(c), int(a or 0), int(p or 0)) for k, c, a, p in conn.execute(
            f"SELECT kind, COUNT(*), SUM(amount), SUM(paid) FROM entries WHERE {where} "
            "GROUP BY kind", args)
    }
    margs = [day, node] if node else [day]
    mwhere = "day = ?" + (" AND home = ?" if node else "")
    (new_members,) = conn.execute(f"SELECT COUNT(*) FROM members WHERE {mwhere}",
                                  margs).fetchone()
    cards = sums.get("card", (0, 0, 0))
    packages_sold = sums.get("package", (0, 0, 0))
    debit = sums.get("debit", (0, 0, 0))
    refund = sums.get("refund", (0, 0, 0))
    topup = sums.get("topup", (0, 0, 0))
    return {
        "day": day,
        "branch": node or "all",
        "new_members": int(new_members),
        "sales": debit[1] - refund[1],
        "debits": debit[0],
        "refunds": refund[1],
        "topup_cash": topup[2],
        "topups": topup[0],
        "cards_sold": cards[0] + packages_sold[0],
        "card_sales": cards[2] + packages_sold[1],
    }


def settlement(ledger: Ledger, start: str | None = None, end: str | None = None
               ) -> dict[str, Any]:
    """结算表: stored value moved between branches. A transfer of cash rights A -> B
    means B will serve value A was paid for: A owes B. Pairs are netted; the
    per-branch positions sum to zero."""
    conn = ledger.storage.conn
    where, args = _period(ledger, start, end)
    where += " AND kind = 'transfer'"
    flows: dict[tuple[str, str], int] = defaultdict(int)
    for (body,) in conn.execute(f"SELECT body FROM entries WHERE {where}", args):
        e = json.loads(body)
        for purse, node, change in e["deltas"]:
            if purse == "cash" and change > 0 and node != e["node"]:
                flows[(e["node"], node)] += change
    pairs = []
    matrix: dict[str, dict[str, int]] = {}
    position: dict[str, int] = defaultdict(int)
    for a, b in sorted({tuple(sorted(k)) for k in flows}):
        net = flows.get((a, b), 0) - flows.get((b, a), 0)
        if net == 0:
            continue
        debtor, creditor = (a, b) if net > 0 else (b, a)
        pairs.append({"owes": debtor, "to": creditor, "amount": abs(net)})
        matrix.setdefault(debtor, {})[creditor] = abs(net)
        position[debtor] -= abs(net)
        position[creditor] += abs(net)
    return {"pairs": pairs, "matrix": matrix, "net": dict(sorted(position.items())),
            "total": sum(position.values())}


def ranking(ledger: Ledger, by: str = "members", start: str | None = None,
            end: str | None = None, limit: int = 10) -> list[dict[str, Any]]:
    """消费排名 (by member) and 销量排名 (by service): net of refunds."""
    if by not in ("members", "services"):
        raise InvalidInput(f"rank by members or services, not {by!r}")
    conn = ledger.storage.conn
    key = "member" if by == "members" else "service"
    where, args = _period(ledger, start, end)
    where += " AND kind IN ('debit', 'refund')"
    if by == "services":
        where += " AND service IS NOT NULL"
    rows = conn.execute(
        f"SELECT {key}, SUM(CASE kind WHEN 'debit' THEN amount ELSE -amount END), "
        f"SUM(CASE kind WHEN 'debit' THEN 1 ELSE 0 END) FROM entries WHERE {where} "
        f"GROUP BY {key} ORDER BY 2 DESC, 1 LIMIT ?", [*args, limit]).fetchall()
    out = []
    for k, total, count in rows:
        item: dict[str, Any] = {key: k, "amount": int(total), "count": int(count)}
        if by == "members":
            r = conn.execute("SELECT name, phone FROM members WHERE id = ?", (k,)).fetchone()
            if r:
                item["name"], item["phone"] = r[0], mask_phone(r[1])
        out.append(item)
    return out
