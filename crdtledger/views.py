"""Derived views, computed from the projections only (never by reading pycrdt).

Every figure here is a function of the set of entries and records, not of the order
they arrived in, so converged replicas print the same reports.
"""

from __future__ import annotations

import json
import sqlite3
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import date, timedelta
from typing import TYPE_CHECKING, Any, TypedDict

import msgpack

from crdtledger import closing
from crdtledger.errors import InvalidInput, NotFound
from crdtledger.hlc import id_floor, id_time_ms
from crdtledger.model import EDITS, GOODS_PURSES, PERMISSIONS, WALK_IN, canonical_phone
from crdtledger.money import half_width
from crdtledger.settlement import KINDS as SETTLED_KINDS
from crdtledger.settlement import Statement, settle

if TYPE_CHECKING:
    from crdtledger.ledger import Ledger


def mask_phone(phone: str) -> str:
    """138****5678: lists never show a whole phone number."""
    digits = phone.replace(" ", "").replace("-", "")
    if len(digits) < 7:
        return "*" * len(digits)
    return f"{digits[:3]}{'*' * (len(digits) - 7)}{digits[-4:]}"


# --- merged members (crdtledger.merge) ---------------------------------------------


def _merged_into(conn: sqlite3.Connection, member: str) -> str | None:
    """Whom `member` was merged into, if that is a member this replica holds."""
    row = conn.execute(
        "SELECT t.id FROM members m INDEXED BY members_merged_id JOIN members t "
        "ON t.id = json_extract(m.body, '$.merged_into') "
        "WHERE m.id = ? AND json_extract(m.body, '$.merged_into') IS NOT NULL",
        (member,)).fetchone()
    return str(row[0]) if row else None


def canonical(conn: sqlite3.Connection, member: str, memo: dict[str, str] | None = None
              ) -> str:
    """The member `member` acts as: its `merged_into` pointers followed to a member not
    merged. A cycle (two branches merged A into B and B into A at once) ends at the
    smallest id in it, on every replica alike. A pointer to a member this replica does
    not hold yet is not followed: the merge takes effect here when the survivor comes.

    `memo`: the answers of earlier calls (every member of a path has the answer of its
    start), for a caller asking of many members of one chain: asked of each of a chain
    of D merges, D walks of up to D steps made every sale of its group quadratic."""
    path = [member]
    at: set[str] = {member}
    while True:
        if memo is not None and path[-1] in memo:
            head = memo[path[-1]]
            break
        target = _merged_into(conn, path[-1])
        if target is None:
            head = path[-1]
            break
        if target in at:
            head = min(path[path.index(target):])
            break
        path.append(target)
        at.add(target)
    if memo is not None:
        memo.update(dict.fromkeys(path, head))
    return head


def member_group(conn: sqlite3.Connection, member: str) -> list[str]:
    """The survivor `member` acts as, then every member merged into it (directly or
    through another merged member), by id: whose purses, cards and history are one
    member's. Two indexed reads for a member nobody was merged into."""
    return folded_into(conn, canonical(conn, member))


def merged_ids(conn: sqlite3.Connection) -> frozenset[str]:
    """Every member whose `merged_into` is set (whether or not this replica holds
    whom it names): no other member's `canonical` is anyone but itself."""
    return frozenset(m for (m,) in conn.execute(
        "SELECT id FROM members INDEXED BY members_merged_id "
        "WHERE json_extract(body, '$.merged_into') IS NOT NULL"))


def merge_targets(conn: sqlite3.Connection) -> frozenset[str]:
    """Every member some other member was merged into (a survivor, or a link of a
    chain of merges): one read of the merged members' index."""
    return frozenset(t for (t,) in conn.execute(
        "SELECT DISTINCT json_extract(body, '$.merged_into') FROM members "
        "WHERE json_extract(body, '$.merged_into') IS NOT NULL"))


def folded_into(conn: sqlite3.Connection, head: str) -> list[str]:
    """`head`, then every member merged into it, directly or through another, by id
    (`member_group` of a survivor): one indexed read when there is none."""
    seen, todo = {head}, [head]
    while todo:
        for (m,) in conn.execute("SELECT id FROM members WHERE json_extract(body, "
                                 "'$.merged_into') = ?", (todo.pop(),)):
            if m not in seen:
                seen.add(m)
                todo.append(m)
    return [head, *sorted(seen - {head})]


def merged_members(ledger: Ledger) -> dict[str, str]:
    """Every member merged into another, with the survivor it acts as now (a cycle's
    smallest id is no one's merged member): the sweep moves their rights to it."""
    conn = ledger.storage.conn
    out: dict[str, str] = {}
    memo: dict[str, str] = {}
    for (m,) in conn.execute("SELECT id FROM members WHERE json_extract(body, "
                             "'$.merged_into') IS NOT NULL ORDER BY id"):
        head = canonical(conn, m, memo)
        if head != m:
            out[str(m)] = head
    return out


def phone_key(phone: str) -> str:
    """A phone as duplicates compare it: its canonical form, digits only."""
    return canonical_phone(phone).lstrip("+")


def duplicates(ledger: Ledger) -> list[dict[str, Any]]:
    """Live members (neither merged nor deleted) who look like one person: the same
    phone (phone_key) or the same ID card number. A group is every member linked to
    another by either, its members by id, the groups by their first member: the
    same order on every converged replica. Phones and ID numbers masked."""
    conn = ledger.storage.conn
    merged = merged_members(ledger)
    rows: dict[str, tuple[Any, ...]] = {}
    by_key: dict[tuple[str, str], list[str]] = defaultdict(list)
    for mid, name, phone, home, day, id_no, deleted in conn.execute(
            "SELECT id, name, phone, home, day, json_extract(body, '$.id_no'), "
            "json_extract(body, '$.deleted') FROM members ORDER BY id"):
        if deleted or mid in merged:
            continue
        rows[mid] = (name, phone, home, day, id_no if isinstance(id_no, str) else "")
        if len(key := phone_key(phone)) >= 5:
            by_key[("phone", key)].append(mid)
        if rows[mid][4]:
            by_key[("id_no", rows[mid][4].upper())].append(mid)
    # Union-find over the shared keys: A and B share a phone, B and C an ID number.
    parent: dict[str, str] = {}

    def root(m: str) -> str:
        while parent.get(m, m) != m:
            m = parent[m]
        return m

    for ids in by_key.values():
        for other in ids[1:]:
            a, b = sorted((root(ids[0]), root(other)))
            parent[b] = a  # the smaller root stays: a group's root is its first member
    groups: dict[str, list[str]] = defaultdict(list)
    for mid in rows:
        groups[root(mid)].append(mid)
    reasons: dict[str, set[str]] = defaultdict(set)
    for (what, _key), ids in by_key.items():
        if len(ids) > 1:
            reasons[root(ids[0])].add(what)
    out = []
    for head, ids in sorted(groups.items()):
        if len(ids) < 2:
            continue
        out.append({"shared": sorted(reasons[head]), "members": [
            {"id": mid, "name": rows[mid][0], "phone": mask_phone(rows[mid][1]),
             "home": rows[mid][2], "day": rows[mid][3], "id_no": mask_id_no(rows[mid][4]),
             "balance": balance(conn, mid)} for mid in sorted(ids)]})
    return out


def mask_id_no(id_no: str) -> str:
    """An ID card number as a list shows it: the last four characters only."""
    return "*" * max(0, len(id_no) - 4) + id_no[-4:] if id_no else ""


def in_(ids: list[str]) -> str:
    """`IN (?,?,...)` for a list of ids (a member's group)."""
    return f"IN ({','.join('?' * len(ids))})"


def balance(conn: sqlite3.Connection, member: str) -> dict[str, Any]:
    """A member's purses, summed over the member's group (crdtledger.merge): a
    survivor's balance includes the rights of merged members not yet swept into it."""
    out: dict[str, Any] = {"cash": 0, "bonus": 0, "points": 0, "packages": {}}
    for purse, total in _group_rights(conn, member_group(conn, member)).items():
        if purse.startswith("pkg:"):
            out["packages"][purse[4:]] = total
        elif purse.startswith("cpn:"):  # a coupon is no balance: crdtledger.coupons
            continue
        else:
            out[purse] = total
    return out


def _group_rights(conn: sqlite3.Connection, ids: list[str]) -> dict[str, int]:
    """Each purse's rights summed over the members `ids` (a member's group) and nodes."""
    return {purse: int(total) for purse, total in conn.execute(
        f"SELECT purse, TOTAL(amount) FROM rights WHERE member {in_(ids)} GROUP BY purse", ids)}


def purses_after(conn: sqlite3.Connection, member: str, entry_id: str, *,
                 as_written: bool = False) -> dict[str, int]:
    """Every purse of the member's group (package and coupon purses too) as it stood
    just after entry `entry_id`, in the chain's order (by id): the rights now, less
    what the entries after it changed. A receipt's "balance after" reads the few
    entries since the sale, not the member's whole history. `as_written`: of the
    members that were one with `member` when the entry was written (merged before it,
    crdtledger.lots.merged_at), not of the group as it is now."""
    ids = member_group(conn, member)
    if as_written and len(ids) > 1:
        ids = _group_then(conn, ids, member, entry_id)
    out = _group_rights(conn, ids)
    for (body,) in conn.execute(
            f"SELECT body FROM entries WHERE member {in_(ids)} AND id > ?", [*ids, entry_id]):
        for purse, _node, delta in json.loads(body)["deltas"]:
            out[purse] = out.get(purse, 0) - int(delta)
    return out


def _group_then(conn: sqlite3.Connection, group: list[str], member: str, entry_id: str
                ) -> list[str]:
    """The members of `group` that were one with `member` at `entry_id`: joined by the
    merges made before it (a merge with no note counts from the start, as the points
    fold takes it)."""
    from crdtledger.lots import merged_at  # lots imports this module

    root = {m: m for m in group}

    def find(m: str) -> str:
        while root[m] != m:
            m = root[m]
        return m

    for when, m, into in merged_at(conn, group):
        if when < entry_id and into in root:
            root[find(m)] = find(into)
    mine = find(member) if member in root else member
    return sorted(m for m in group if find(m) == mine) or [member]


def rights_held(conn: sqlite3.Connection, node: str) -> int:
    """Stored value (cash and bonus, fen) whose rights `node` holds: what it could
    spend on its own, so what is at stake if it misbehaves."""
    (total,) = conn.execute(
        "SELECT TOTAL(amount) FROM rights WHERE node = ? AND purse IN "
        "('cash', 'bonus')", (node,)).fetchone()
    return int(total)


def trust_status(ledger: Ledger) -> dict[str, Any]:
    """What a node's sync status says about trust: whether it is restored and not
    yet caught up with itself, the nodes caught breaking a write rule or forking
    their logs (blocked), the latest records refused from peers and files, and the
    branches that signed another closing of the books than this replica holds
    (crdtledger.closing: a fork, or records that reached one side late), and the
    rights requests answered "none" for asking too fast (escrow.GrantBudget)."""
    closing_ = closing.books(ledger)["closing"]
    differ = closing_ and closing_["differ"] and {"month": closing_["month"],
                                                  "branches": closing_["differ"]}
    return {"restored": ledger.restored, "faults": ledger.faults(),
            "another_pc": another_pc(ledger),
            "refused": list(ledger.refusals)[-20:], "closing_differs": differ or None,
            "rights_refused": dict(sorted(ledger.grants.refused.items())),
            "unfunded": unfunded(ledger), "revoked": ledger.trust.self_revoked,
            "certificate_expires": ledger.trust.expires_ms()}


def another_pc(ledger: Ledger) -> str | None:
    """Whether another PC is seen running as this branch: it stopped selling for one
    (Replica._another_pc), or a peer said it holds this branch's log beyond this
    store's (a sync file written for this branch carries that view before any of
    the records). None while restored and catching up: a peer is ahead then."""
    said = ledger.storage.meta.get("another_pc")
    if said or ledger.restored is not None:
        return said or None
    ours = ledger.storage.log.tip(ledger.node)[0]
    for peer, states in ledger.storage.conn.execute(
            "SELECT node, states FROM peers ORDER BY node"):
        said = msgpack.unpackb(states)
        held = said.get(ledger.node) if isinstance(said, dict) else None
        if isinstance(held, int) and held > ours:
            return (f"{peer} holds this branch's log to record {held} and this store only "
                    f"to record {ours}: another PC may be selling as branch {ledger.node} "
                    "(or records were lost here); two PCs must never sell as one branch")
    return None


# How long before its certificate ends a branch says so: a chain's branches enrolled
# together all stopped syncing on one day, unwarned (their certificates last 825 days).
CERT_WARN_MS = 30 * 86_400_000


# An entry that reached this branch before the rights it spends waits for them
# (projection.project_deferred), a moment in a catch-up; past this, it is said.
UNFUNDED_SAID_MS = 10 * 60_000


def unfunded(ledger: Ledger) -> dict[str, dict[str, int]]:
    """Each writer's ledger entries that have waited here for rights it never held
    (entries, and the time of the oldest), those dated over UNFUNDED_SAID_MS ago: a
    branch that sells money it does not have (a store edited by hand, a liar) had its
    sales held here without a word. One read of the waiting entries."""
    out: dict[str, dict[str, int]] = {}
    before = id_floor(ledger.clock.wall() - UNFUNDED_SAID_MS)
    for node, n, oldest in ledger.storage.conn.execute(
            "SELECT substr(key, 15), COUNT(*), MIN(key) FROM deferred "
            "WHERE doc >= 'ledger/' AND doc < 'ledger0' AND key < ? GROUP BY 1 ORDER BY 1",
            (before,)):
        out[str(node)] = {"entries": int(n), "since": id_time_ms(str(oldest))}
    return out


def member(ledger: Ledger, member_id: str) -> dict[str, Any]:
    conn = ledger.storage.conn
    row = conn.execute("SELECT body, home FROM members WHERE id = ?", (member_id,)).fetchone()
    if row is None:
        raise NotFound(f"unknown member {member_id}")
    data = json.loads(row[0])
    # Whether she left is the decisions' word (Membership.has_left), not the flag's,
    # which any branch may set or clear; those who read `exited` here (the members'
    # portal) read that. A member whose Map never had the flag shows none.
    left = ledger.has_left(member_id)
    if left or "exited" in data:
        data["exited"] = left
    data.pop(EDITS, None)  # who changed what: the audit trail's (crdtledger.audit.trail)
    data["id"] = member_id
    data["tags"] = sorted(t for t, on in (data.get("tags") or {}).items() if on)
    # A merged member's cards act for the survivor: the survivor lists its group's.
    group = member_group(conn, member_id)
    data.pop("merged_into", None)  # the survivor it acts as, below (a cycle has none)
    if group[0] != member_id:
        data["merged_into"] = group[0]
    else:
        data["merged"] = group[1:]
    ids = group if group[0] == member_id else [member_id]
    data["cards"] = [
        {"id": cid, "card_no": no, "status": status}
        for cid, no, status in conn.execute(
            f"SELECT id, card_no, status FROM cards WHERE member {in_(ids)} ORDER BY id", ids
        )
    ]
    data["level_info"] = level(ledger, member_id)
    return dict(data)


def find_members(conn: sqlite3.Connection, query: str, limit: int = 20, *,
                 left: Callable[[str], bool]) -> list[dict[str, Any]]:
    """By card number, exact phone, phone tail (last 4+ digits) or name; phones masked.
    Full-width digits and letters (an input method's "１３８…", "Ｃ１０００１") count as
    ASCII, and a name is also looked for as typed. `left`: whether a member (by id)
    has left (Membership.has_left), hidden: not the profile's flag."""
    typed = query.strip()
    q = half_width(typed)
    ids: list[str] = []
    if q:
        ids += [m for (m,) in conn.execute(
            "SELECT member FROM cards WHERE card_no = ? ORDER BY status = 'active' DESC",
            (q.upper(),))]
        ids += [m for (m,) in conn.execute("SELECT id FROM members WHERE id = ?", (q,))]
        # Phones by their canonical form, however either was typed ("138-0013-8000"
        # finds "+86 13800138000"); "+86" alone is no phone (a blank one would match).
        if phone := canonical_phone(q):
            ids += [m for (m,) in conn.execute(
                "SELECT id FROM members WHERE phone_canonical = ?", (phone,))]
        if q.isdigit() and len(q) >= 4:
            ids += [m for (m,) in conn.execute(
                "SELECT id FROM members WHERE substr(phone_canonical, -4) = ? "
                "AND phone_canonical LIKE ? LIMIT ?", (q[-4:], f"%{q}", limit))]
        # Escape LIKE's wildcards: a search for "%" or "_" must not list every member.
        for name in dict.fromkeys((typed, q)):
            like = name.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            ids += [m for (m,) in conn.execute(
                "SELECT id FROM members WHERE name LIKE ? ESCAPE '\\' ORDER BY name LIMIT ?",
                (f"%{like}%", limit))]
    out = []
    # A merged member is found as the survivor it acts as (its card, its phone).
    for mid in dict.fromkeys(canonical(conn, m) for m in ids):
        row = conn.execute("SELECT name, phone, home, body FROM members WHERE id = ?",
                           (mid,)).fetchone()
        body = json.loads(row[3]) if row is not None else {}
        if row is None or body.get("deleted") or left(mid):  # left: 退会
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


def member_names(ledger: Ledger, member_ids: Iterable[str]) -> dict[str, str]:
    """The names of these members (by id, one indexed read each, erased ones as their
    blanked name; an unknown id is left out): a listing that names who an action was
    for, as the audit trail's page does."""
    conn = ledger.storage.conn
    out: dict[str, str] = {}
    for mid in dict.fromkeys(member_ids):
        row = conn.execute("SELECT name FROM members WHERE id = ?", (mid,)).fetchone()
        if row is not None:
            out[mid] = str(row[0])
    return out


def member_exists(ledger: Ledger, member_id: str) -> bool:
    """Whether a member record exists (erased members too): the API refuses an
    unknown id where a view alone would show an empty balance."""
    return ledger.storage.conn.execute(
        "SELECT 1 FROM members WHERE id = ?", (member_id,)).fetchone() is not None


def members_by_phone(ledger: Ledger, phone: str) -> list[str]:
    """Every member with this phone number, however it is typed, oldest first: more
    than one where a person was registered twice (the back office merges them) or a
    number was typed two ways for two people."""
    if not (canonical := canonical_phone(phone)):
        return []
    return [str(i) for (i,) in ledger.storage.conn.execute(
        "SELECT id FROM members WHERE phone_canonical = ? ORDER BY id", (canonical,))]


def member_by_phone(ledger: Ledger, phone: str) -> str | None:
    """The member with this phone number, however it is typed (canonical_phone; the
    oldest id if several), None if none: the command line's `--phone`, where
    find_members would also match names and phone tails."""
    found = members_by_phone(ledger, phone)
    return found[0] if found else None


# A branch's rights of members' purses (goods units aside: they move by shipping).
_HELD = (f"FROM rights WHERE node = ? AND amount > 0 AND purse NOT {in_(sorted(GOODS_PURSES))}",
         tuple(sorted(GOODS_PURSES)))


def rights_summary(ledger: Ledger, node: str) -> dict[str, Any]:
    """What `node` holds of the members' purses, summed per purse, and of how many
    members: what its revocation would strand unless it hands them over first
    (Payments.hand_over_rights)."""
    conn = ledger.storage.conn
    where, goods = _HELD
    held = {p: int(a) for p, a in conn.execute(
        f"SELECT purse, TOTAL(amount) {where} GROUP BY purse ORDER BY purse", (node, *goods))}
    (members,) = conn.execute(f"SELECT COUNT(DISTINCT member) {where}",
                              (node, *goods)).fetchone()
    return {"node": node, "members": int(members), "held": held}


def rights_held_rows(ledger: Ledger, node: str, limit: int = -1
                     ) -> list[tuple[str, str, int]]:
    """(member, purse, amount) of what `node` holds, by member and purse (`limit`
    rows; all when negative): what a hand-over moves."""
    where, goods = _HELD
    return [(str(m), str(p), int(a)) for m, p, a in ledger.storage.conn.execute(
        f"SELECT member, purse, amount {where} ORDER BY member, purse LIMIT ?",
        (node, *goods, limit))]


def handed_over(ledger: Ledger) -> set[str]:
    """Branches that handed their members' rights over to another (a shop closing for
    good, Payments.hand_over_rights): the rebalancer moves no rights back to them."""
    return {str(n) for (n,) in ledger.storage.conn.execute("SELECT node FROM handed_over")}


def member_ids(ledger: Ledger) -> list[str]:
    """Every member id, sorted (erased ones included): the simulator's convergence
    checks and the benchmarks' customer pools."""
    return [str(m) for (m,) in ledger.storage.conn.execute("SELECT id FROM members ORDER BY id")]


def member_records(ledger: Ledger) -> list[MemberRecord]:
    """Every live member, by id, with cash, bonus and points: the owner's member
    export (whole phone numbers: only for a caller allowed to back up)."""
    conn = ledger.storage.conn
    purses: dict[str, dict[str, int]] = defaultdict(dict)
    merged = merged_members(ledger)
    for mid, purse, total in conn.execute(
        "SELECT member, purse, TOTAL(amount) FROM rights "
        "WHERE purse IN ('cash', 'bonus', 'points') GROUP BY member, purse"
    ):
        # A merged member's purses not yet swept are its survivor's.
        into = purses[merged.get(mid, mid)]
        into[purse] = into.get(purse, 0) + int(total)
    out: list[MemberRecord] = []
    for mid, body, day in conn.execute("SELECT id, body, day FROM members ORDER BY id"):
        profile = json.loads(body)
        if profile.get("deleted") or mid in merged:
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


def first_written_ms(ledger: Ledger) -> int | None:
    """The time of this branch's earliest entry or member (None: it wrote neither). A
    renewal's enrolment time is no later (peer.chain): a PC enrolled before stores kept
    their clock from the certificate's start may have written before it."""
    conn = ledger.storage.conn
    node = ledger.node
    times = [t for (t,) in (conn.execute("SELECT min(at) FROM entries WHERE node = ?",
                                         (node,)).fetchone(),
                            conn.execute("SELECT min(created_at) FROM members WHERE id LIKE ?",
                                         ("%." + node,)).fetchone()) if t is not None]
    return min(times, default=None)


def refund_paid_by(ledger: Ledger, refund: Mapping[str, Any]) -> str | None:
    """How the sale a refund names was paid (its `pay`: a till method, "stored", ...),
    None if that sale is not held here (erased, another branch's not come yet): the
    refund names only its sale, and a till refund went back the sale's way."""
    ref = refund.get("ref")
    if not isinstance(ref, str):
        return None
    row = ledger.storage.conn.execute(
        "SELECT json_extract(body, '$.pay') FROM entries WHERE id = ?", (ref,)).fetchone()
    return str(row[0]) if row and row[0] else None


def require_heard_of(ledger: Ledger, branch: str, what: str) -> None:
    """Refuse `what` (a report, a stock figure) of a branch this store has never heard
    of: a typo (XX99 for SH09) read as a branch that sold nothing, or holds none.
    Heard of: this one, one the rule `branches` names, a writer whose log is held here
    (retired or blocked too: their past days and stock are still theirs), a peer
    synced with."""
    log = ledger.storage.log
    known = {ledger.node, *(ledger.rule("branches") or {}), *log.positions(),
             *log.blocked(), *peers_seen(ledger)}
    if branch not in known:
        raise InvalidInput(f"{branch} is not a branch of this chain (known here: "
                           f"{', '.join(sorted(known))}): {what}")


def branches_known(ledger: Ledger) -> set[str]:
    """The other branches this store knows to be at work: a writer whose log it holds
    or one it synced with (a branch that never wrote has no log), less those blocked
    here for a proven fault or retired (their writes are not taken any more)."""
    log = ledger.storage.log
    return {n for n in {*log.positions(), *peers_seen(ledger)} - {ledger.node} - log.blocked()
            if not ledger.retired(n)}


def active_branches(ledger: Ledger, day: str) -> set[str]:
    """Branches that wrote an entry on `day` or where a member joined that day: the
    daily report gives each a row even when no rule names it."""
    where, args = _period(ledger, day, day)
    conn = ledger.storage.conn
    # Appointments move no money (crdtledger.bookings): a branch that only booked that
    # day gets no row of zeros.
    out = {str(n) for (n,) in conn.execute(
        f"SELECT DISTINCT node FROM entries WHERE {where} AND kind NOT IN ('technician', "
        "'booking', 'booking_decision', 'booking_cancel')", args)}
    out |= {str(n) for (n,) in conn.execute(
        f"SELECT DISTINCT {_REGISTERED_AT} FROM members WHERE day = ?", (day,))}
    return out


# The branch a member registered at: the node of its id (hlc.id_node, '<13 chars>.<node>'),
# fixed for good. Not `home`, which a later edit moves: a closed month's report then
# counted the member at the branch she moved to.
_REGISTERED_AT = "substr(id, 15)"


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


def debited_elsewhere_since(ledger: Ledger, node: str, mark: str, limit: int
                            ) -> tuple[list[str], str, bool]:
    """Members debited at a branch other than `node` in the next `limit` entries above
    `mark` who hold more than 1 fen (or point) of rights at `node`: the rebalancer's
    pass looks only at members who shopped elsewhere since its last pass, and moves
    only what this branch holds. Returns them, the new mark (the greatest id read, or
    `mark` if none), and whether entries remain above it (a branch that has just
    joined holds a million: read `limit` at a time, a turn of the loop each)."""
    conn = ledger.storage.conn
    # A range of the primary key, deduplicated here: with DISTINCT ... ORDER BY member
    # SQLite walks the member index over the whole table, every pass.
    rows = conn.execute("SELECT id, member, kind, node FROM entries WHERE id > ? "
                        "ORDER BY id LIMIT ?", (mark, limit)).fetchall()
    seen = {str(m) for _, m, kind, writer in rows if kind == "debit" and writer != node}
    members = sorted(m for m in seen if conn.execute(
        "SELECT 1 FROM rights WHERE member = ? AND node = ? AND amount > 1 LIMIT 1",
        (m, node)).fetchone())
    return members, str(rows[-1][0]) if rows else mark, len(rows) == limit


def debits_arrived_from_now(ledger: Ledger) -> None:
    """Start the rebalancer's queue of other branches' debits in the order they reach
    this store (not by id: an id is its writer's clock, days ahead or behind, and an
    entry deferred for funding is inserted only once funded), from now on: a trigger
    fills it in the transaction that projects each entry; what it held goes unread."""
    conn = ledger.storage.conn
    conn.execute("CREATE TABLE IF NOT EXISTS rebalance_debits(pos INTEGER PRIMARY KEY, "
                 "member TEXT NOT NULL)")
    own = ledger.node.replace("'", "''")
    conn.execute("CREATE TRIGGER IF NOT EXISTS rebalance_debit_arrived AFTER INSERT ON entries "
                 f"WHEN NEW.kind = 'debit' AND NEW.node != '{own}' BEGIN "
                 "INSERT INTO rebalance_debits(member) VALUES (NEW.member); END")
    conn.execute("DELETE FROM rebalance_debits")


def debited_elsewhere_arrived(ledger: Ledger, node: str, limit: int) -> tuple[list[str], bool]:
    """`debited_elsewhere_since` by arrival: the members of the next `limit` debits
    queued (debits_arrived_from_now) who hold more than 1 fen (or point) of rights at
    `node`, each debit read once (taken off the queue), and whether more remain."""
    conn = ledger.storage.conn
    rows = conn.execute("SELECT pos, member FROM rebalance_debits ORDER BY pos LIMIT ?",
                        (limit,)).fetchall()
    if rows:  # a row queued meanwhile has a greater pos: those read are still there
        conn.execute("DELETE FROM rebalance_debits WHERE pos <= ?", (rows[-1][0],))
    members = sorted(m for m in {str(m) for _, m in rows} if conn.execute(
        "SELECT 1 FROM rights WHERE member = ? AND node = ? AND amount > 1 LIMIT 1",
        (m, node)).fetchone())
    return members, len(rows) == limit


def visits(ledger: Ledger, member: str, since_id: str) -> dict[str, int]:
    """What `member` spent of its stored value (cash and bonus its debits took, fen) at
    each branch in entries from `since_id` on (an `id_floor` of a day): where the
    member shops, which the rebalancer moves rights toward. By value taken, not by the
    number of debits nor by what a debit says it cost: a liar's fifty debits of 0.01
    counted fifty visits against three real ones and drew 94% of the member's rights
    to it, unasked, and one debit "paid at the till" of 10,000,000.00 (it takes no
    value, so no rule judges its amount) would have drawn them all."""
    out: dict[str, int] = {}
    for node, body in ledger.storage.conn.execute(
            "SELECT node, body FROM entries WHERE member = ? AND kind = 'debit' AND id >= ? "
            "ORDER BY node", (member, since_id)):
        took = -sum(int(c) for p, _n, c in json.loads(body)["deltas"]
                    if p in ("cash", "bonus") and c < 0)
        if took > 0:
            out[str(node)] = out.get(str(node), 0) + took
    return out


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
          totals: tuple[int, int] | None = None, day: str | None = None) -> dict[str, Any]:
    """Highest level whose threshold the member's cumulative basis reaches; a manual
    upgrade (the member's `level` field) counts if it is higher. `profile` and
    `totals` (spent, topped) save reading them again when the caller has them; `day`
    (default today) is the day whose rules apply."""
    conn = ledger.storage.conn
    if totals is None:
        group = member_group(conn, member_id)
        member_id = group[0]
        totals = group_totals(conn, group)
    spent, topped = totals
    basis = ledger.rule("level_basis", day)["basis"]
    value = topped if basis == "topped" else spent
    levels = sorted(ledger.rule("levels", day), key=lambda lv: int(lv["threshold"]))
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


def group_totals(conn: sqlite3.Connection, group: list[str]) -> tuple[int, int]:
    """Cumulative (spent, topped) of a member's group (member_group): a survivor's level
    counts what its merged members spent and topped up."""
    row = conn.execute(
        f"SELECT TOTAL(spent), TOTAL(topped) FROM totals WHERE member {in_(group)}", group
    ).fetchone()
    return int(row[0] or 0), int(row[1] or 0)


def history(conn: sqlite3.Connection, member_id: str, limit: int = 50) -> list[dict[str, Any]]:
    """Newest first, the member's group's entries together (crdtledger.merge)."""
    ids = member_group(conn, member_id)
    return [json.loads(b) for (b,) in conn.execute(
        f"SELECT body FROM entries WHERE member {in_(ids)} ORDER BY id DESC LIMIT ?",
        [*ids, limit])]


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
    """Points with their expiry: the lots of the member's group (crdtledger.lots, where
    what each spending takes is decided), soonest expiry first."""
    ids = member_group(ledger.storage.conn, member_id)
    lots = ledger.storage.conn.execute(
        f"SELECT expires, left FROM points_lots WHERE member {in_(ids)} "
        "ORDER BY expires, earned", ids).fetchall()
    today = ledger.today()
    soon = (date.fromisoformat(today) + timedelta(days=30)).isoformat()
    return {
        "total": sum(n for _, n in lots),
        "expired_unwritten": sum(n for exp, n in lots if exp < today),
        "usable": sum(n for exp, n in lots if exp >= today),
        "expiring_30_days": sum(n for exp, n in lots if today <= exp <= soon),
        # Points owed (spent before what earned them came: crdtledger.lots) count in
        # the sums, as the rights do; they are no lot to show.
        "lots": [{"expires": exp, "points": n} for exp, n in lots if n > 0],
    }


def points_beyond_rights(ledger: Ledger) -> dict[str, int]:
    """The survivors whose group's lots hold more points than its points rights, and by
    how many: a write-off took more than had expired, and its writer gives the rest
    back (Payments.give_back_write_offs), never more than that. Two grouped reads; the
    groups by merged_members."""
    conn = ledger.storage.conn
    merged = merged_members(ledger)
    held: dict[str, int] = defaultdict(int)
    for member, n in conn.execute("SELECT member, TOTAL(left) FROM points_lots "
                                  "GROUP BY member"):
        held[merged.get(member, member)] += int(n)
    for member, n in conn.execute("SELECT member, TOTAL(amount) FROM rights "
                                  "WHERE purse = 'points' GROUP BY member"):
        held[merged.get(member, member)] -= int(n)
    return {m: n for m, n in sorted(held.items()) if n > 0}


def expired_points_owed(ledger: Ledger, member: str, node: str, today: str | None = None
                        ) -> int:
    """How many expired points of `member`'s group `node` is answerable for writing
    off: the total of expired_lots_owed."""
    return sum(n for _lot, n in expired_lots_owed(ledger, member, node, today))


def expired_lots_owed(ledger: Ledger, member: str, node: str, today: str | None = None
                      ) -> list[tuple[str, int]]:
    """(earning entry id, points) of each expired lot of `member`'s group that `node`
    answers for writing off, soonest expiry first, capped by `node`'s own points rights
    of the survivor (escrow). The daily pass, an operator's write-off and a spend's
    write-off all read this, and write one `expiry` entry per lot naming it (`ref`),
    which the fold takes first (crdtledger.lots.take).

    A branch answers for what is left of the lots earned at it (the earning id's node),
    in full; and for a lot earned by another node A only when A holds no points rights
    of the group any more (it gave them away, or wrote its part off), and only up to
    the points rights A itself transferred to `node` for the group (a rights fetch, the
    rebalancer), less what `node` transferred back to A and what `node` already wrote
    off naming A's lots. Holding rights is not being answerable: rights are fungible,
    so a branch that wrote off whatever expired lot it found let a liar's lot, expired
    the day it was written, be paid for out of an honest branch's valid points while
    the liar kept the rights, or moved them where nobody would answer for them (a
    merge pair to a member not merged, a transfer to a node of its own). A liar that
    never gave `node` its points is never answered for here.

    The write-off names its lot, so a lot in front that another branch answers for
    (a liar's, dated before) no longer holds this one up: the fold takes the named lot.
    Indexed reads: this node's rights, the group's expired lots, and for each other
    earner met its rights and its transfers with `node`."""
    conn = ledger.storage.conn
    group = member_group(conn, member)
    row = conn.execute("SELECT amount FROM rights WHERE member = ? AND purse = 'points' "
                       "AND node = ?", (group[0], node)).fetchone()
    own = int(row[0]) if row else 0
    if own <= 0:
        return []
    budget: dict[str, int] = {}  # other earner -> what node may still write off of its lots
    out: list[tuple[str, int]] = []
    for earned, left in conn.execute(
            f"SELECT earned, left FROM points_lots WHERE member {in_(group)} "
            "AND expires < ? AND left > 0 ORDER BY expires, earned",
            [*group, today or ledger.today()]).fetchall():
        earned = str(earned)
        earner = earned.rpartition(".")[2]
        n = int(left)
        if earner != node:
            if earner not in budget:
                budget[earner] = _answerable_for(conn, group, earner, node)
            n = min(n, budget[earner])
            budget[earner] -= n
        n = min(n, own)
        if n > 0:
            out.append((earned, n))
            own -= n
            if not own:
                break
    return out


def _answerable_for(conn: sqlite3.Connection, group: list[str], earner: str, node: str
                    ) -> int:
    """How many points of `earner`'s expired lots of `group` `node` may write off: none
    while `earner` holds points rights of the group (its own lots are its to write
    off); else the points rights `earner` transferred to `node` for the group, less
    those `node` transferred back and the points `node` already wrote off naming
    `earner`'s lots. Transfers only (the rights fetch and the rebalancer write them):
    a merge pair moves rights between members at one node, and a sale crediting
    another node's rights is nothing its writer gave up."""
    (held,) = conn.execute(
        f"SELECT TOTAL(amount) FROM rights WHERE member {in_(group)} "
        "AND purse = 'points' AND node = ?", [*group, earner]).fetchone()
    if int(held) > 0:
        return 0
    given = 0
    for writer, kind, ref, body in conn.execute(
            f"SELECT node, kind, ref, body FROM entries WHERE member {in_(group)} "
            "AND kind IN ('transfer', 'expiry') AND node IN (?, ?)", [*group, earner, node]):
        e = json.loads(body)
        if kind == "transfer":
            to, sign = (node, 1) if writer == earner else (earner, -1)
            given += sign * sum(int(c) for purse, n, c in e["deltas"]
                                if purse == "points" and n == to and c > 0)
        elif writer == node and isinstance(ref, str) and ref.rpartition(".")[2] == earner:
            given -= sum(-int(c) for purse, n, c in e["deltas"]
                         if purse == "points" and n == node and c < 0)
    return max(given, 0)


def members_with_expired_points(ledger: Ledger, node: str, today: str) -> list[str]:
    """Members whose expired points `node` owes a write-off for (expired_points_owed):
    the daily housekeeping pass. A merged member's lots are its survivor's, and so are
    its rights once swept (the pass sweeps first: Ledger.housekeeping). A scan of the
    live lots (crdtledger.lots), not of the history, then the few reads of
    expired_points_owed for each member with an expired lot and points rights here."""
    conn = ledger.storage.conn
    survivors = {canonical(conn, m) for (m,) in conn.execute(
        "SELECT DISTINCT member FROM points_lots WHERE expires < ? AND left > 0", (today,))}
    return [m for (m,) in conn.execute(
        "SELECT member FROM rights WHERE purse = 'points' AND node = ? AND amount > 0 "
        "ORDER BY member", (node,))
        if m in survivors and expired_points_owed(ledger, m, node, today) > 0]


def _bounds(ledger: Ledger, start: str | None, end: str | None
            ) -> tuple[str | None, str | None]:
    """The ids from which the days `start`..`end` (inclusive, either open) begin and
    before which they end. A reversed period is refused, as operations.validate refuses
    it: read as an empty one, the back office's rankings said "no sales", its top-up
    receipts nothing and its settlement "nothing to settle" for an accountant's typo."""
    lo = ledger.storage.day_start_id(start) if start else None
    hi = ledger.storage.day_start_id(end, days_later=1) if end else None
    if lo is not None and hi is not None and lo >= hi:
        raise InvalidInput(f"the period is reversed: from {start} is after to {end}")
    return lo, hi


def _period(ledger: Ledger, start: str | None, end: str | None) -> tuple[str, list[Any]]:
    """Entries of the days `start`..`end` (inclusive, either open), as a range of ids.

    An entry's id starts with its timestamp and its day is derived from it, so a
    period is a primary-key range: no index on the day to update at every debit."""
    where, args = "1", []
    lo, hi = _bounds(ledger, start, end)
    if lo is not None:
        where += " AND id >= ?"
        args.append(lo)
    if hi is not None:
        where += " AND id < ?"
        args.append(hi)
    return where, args


def methods_in(reports: Sequence[Mapping[str, Any]], codes: Iterable[str]) -> list[str]:
    """The payment methods daily reports (`daily_report`) name: `codes` (the rule's),
    in their order, then any other an entry used (one the chain has since dropped)."""
    seen = [m for r in reports for key in ("topup_by_method", "till_by_method")
            for m in r[key]]
    return list(dict.fromkeys([*codes, *seen]))


def daily_report(ledger: Ledger, day: str, node: str | None = None) -> dict[str, Any]:
    """营业报表 for one day: new members, sales, top-up cash received, cards sold."""
    conn = ledger.storage.conn
    where, args = _period(ledger, day, day)
    if node:
        where += " AND node = ?"
        args.append(node)
    sums: dict[str, tuple[int, int, int]] = {
        k: (int(c), int(a or 0), int(p or 0)) for k, c, a, p in conn.execute(
            f"SELECT kind, COUNT(*), TOTAL(amount), TOTAL(paid) FROM entries WHERE {where} "
            "GROUP BY kind", args)
    }
    margs = [day, node] if node else [day]
    mwhere = "day = ?" + (f" AND {_REGISTERED_AT} = ?" if node else "")
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
        # Principal paid back in cash when an exit (退会) was approved: money out of the
        # till (crdtledger.membership; settlement reads it as value served there).
        "exit_refunds": sums.get("exit_settle", (0, 0, 0))[2],
        **_till_by_method(conn, where, args),
    }


def _method(body: str = "body") -> str:
    """An entry's payment method; a top-up written before methods were recorded was
    cash, and so is a debit that names none (write rule amount-moved), its refund too."""
    return f"COALESCE(json_extract({body}, '$.pay'), 'cash')"


_METHOD = _method()


def _till_by_method(conn: sqlite3.Connection, where: str, args: list[Any]
                    ) -> dict[str, dict[str, int]]:
    """What the till took in the entries of `where`, by payment method (fen per code):
    `topup_by_method` splits top-up cash received; `till_by_method` the packages and
    services paid at the till, less what refunds of such services gave back (on the
    refund's day, by the method the service was paid with). Stored value and package
    uses are not taken at the till; card fees name no method and stay out. An exit's
    refund paid back is taken off the method it was paid with."""
    topup = {str(m): int(v) for m, v in conn.execute(
        f"SELECT {_METHOD}, TOTAL(paid) FROM entries WHERE {where} AND kind = 'topup' "
        "GROUP BY 1 ORDER BY 1", args) if v}
    till: dict[str, int] = defaultdict(int)
    for m, v in conn.execute(
            f"SELECT {_METHOD}, TOTAL(CASE kind WHEN 'package' THEN paid ELSE amount END) "
            f"FROM entries WHERE {where} AND kind IN ('package', 'debit') "
            f"AND {_METHOD} NOT IN ('stored', 'package') GROUP BY 1", args):
        till[str(m)] += int(v or 0)
    for m, v in conn.execute(
            f"SELECT {_method('d.body')}, TOTAL(r.amount) FROM (SELECT ref, amount "
            f"FROM entries WHERE {where} AND kind = 'refund') r JOIN entries d ON d.id = r.ref "
            f"WHERE d.kind = 'debit' AND {_method('d.body')} NOT IN ('stored', 'package') "
            "GROUP BY 1", args):
        till[str(m)] -= int(v or 0)
    # A member's exit refund (退会) paid back from the till, by the method it was paid
    # with: the drawer was short of it against the report.
    for m, v in conn.execute(
            f"SELECT {_METHOD}, TOTAL(paid) FROM entries WHERE {where} AND kind = 'exit_settle' "
            "AND paid > 0 GROUP BY 1", args):
        till[str(m)] -= int(v or 0)
    return {"topup_by_method": topup,
            "till_by_method": {m: v for m, v in sorted(till.items()) if v}}


def settlement(ledger: Ledger, start: str | None = None, end: str | None = None
               ) -> Statement:
    """结算表 of the days start..end (inclusive, either open), by value served: the rule
    is crdtledger/settlement.py's. One read of the kinds that change principal, in id
    order (the primary key's: every member's entries interleaved as they were written,
    so a merge moves lots at its moment), up to the period's end."""
    lo, hi = _bounds(ledger, start, end)
    kinds = ", ".join(f"'{k}'" for k in SETTLED_KINDS)
    rows = ledger.storage.conn.execute(
        f"SELECT body FROM entries WHERE kind IN ({kinds}) AND id < ? ORDER BY id",
        (hi or "~",))  # "~" sorts after every id
    # The outs a sweep's "in" names (any id: the period may end between the two).
    paired = {str(r) for (r,) in ledger.storage.conn.execute(
        "SELECT ref FROM entries WHERE ref IS NOT NULL AND kind = 'merge'")}
    return settle((json.loads(b) for (b,) in rows), lo, hi, paired)


def ranking(ledger: Ledger, by: str = "members", start: str | None = None,
            end: str | None = None, limit: int = 10) -> list[dict[str, Any]]:
    """消费排名 (by member) and 销量排名 (by service): net of refunds, each in its own
    period. `count`: by service the units sold (a sale of three is three), by member
    the visits; a sale refunded whole counts off in the period of the refund that
    completes it (a package's uses, one by one as they are given back)."""
    if by not in ("members", "services"):
        raise InvalidInput(f"rank by members or services, not {by!r}")
    conn = ledger.storage.conn
    key = "member" if by == "members" else "service"
    units = "COALESCE(json_extract(body, '$.qty'), 1)" if by == "services" else "1"
    where, args = _period(ledger, start, end)
    where += " AND kind IN ('debit', 'refund')"
    if by == "services":
        where += " AND service IS NOT NULL"
    else:  # 散客 are nobody: a till sale to a walk-in customer ranks no member
        where += f" AND member NOT LIKE '{WALK_IN}%'"
    # By member, each as its survivor (a merged member's sale and its refund, written
    # to the survivor, are one member's): all rows folded, then ranked.
    merged = merged_members(ledger) if by == "members" else {}
    rows = conn.execute(
        f"SELECT {key}, TOTAL(CASE kind WHEN 'debit' THEN amount ELSE -amount END), "
        f"TOTAL(CASE kind WHEN 'debit' THEN {units} ELSE 0 END) FROM entries WHERE {where} "
        f"GROUP BY {key} ORDER BY 2 DESC, 1" + ("" if merged else " LIMIT ?"),
        args if merged else [*args, limit]).fetchall()
    back = _counted_back(conn, key, by == "services", where, args, [r[0] for r in rows])
    folded: dict[Any, list[int]] = {}
    for k, total, count in rows:
        f = folded.setdefault(merged.get(k, k), [0, 0])
        f[0] += int(total)
        f[1] += int(count) - back.get(k, 0)
    ranked = sorted(folded.items(), key=lambda kv: (-kv[1][0], kv[0]))[:limit]
    out = []
    for k, (total, count) in ranked:
        item: dict[str, Any] = {key: k, "amount": total, "count": count}
        if by == "members":
            r = conn.execute("SELECT name, phone FROM members WHERE id = ?", (k,)).fetchone()
            if r:
                item["name"], item["phone"] = r[0], mask_phone(r[1])
        out.append(item)
    return out


def _counted_back(conn: sqlite3.Connection, key: str, by_units: bool, where: str,
                  args: list[Any], keys: list[Any]) -> dict[Any, int]:
    """What the period's refunds take off the ranking's counts of `keys`: a package's
    uses given back, or a sale's units (or its visit) once refunded whole."""
    if not keys:
        return {}
    back: dict[Any, int] = defaultdict(int)
    wanted = set(keys)  # filtered here: an IN of every member ranked ran past SQLite's
    ranked: dict[str, dict[str, tuple[Any, Any]]] = defaultdict(dict)  # limit on variables
    for k, eid, ref, qty in conn.execute(  # in a big chain's year
            f"SELECT {key}, id, ref, json_extract(body, '$.qty') FROM entries WHERE {where} "
            "AND kind = 'refund'", args):
        if k in wanted and ref is not None:
            ranked[ref][eid] = (k, qty)
    # Each sale's refunds are read once, in id order, with a running total: asked per
    # refund, a liar's thousands of 0.01 refunds of one sale cost a ranking N^2.
    for ref, refunds in ranked.items():
        sale = conn.execute("SELECT amount, json_extract(body, '$.qty') FROM entries "
                            "WHERE id = ?", (ref,)).fetchone()
        if sale is None:
            continue
        sold = int(sale[1] or 1)
        given = given_qty = 0
        for eid, amount, kept, q in conn.execute(
                # A refund's share of its sale is the money it gave back and what it kept
                # for points spent since (projection.sale_share, in SQL).
                "SELECT id, amount, json_extract(body, '$.kept'), json_extract(body, '$.qty') "
                "FROM entries WHERE ref = ? AND kind = 'refund' ORDER BY id", (ref,)):
            given += int(amount) + int(kept or 0)
            given_qty += int(q or 0)
            if eid not in refunds:
                continue
            k, qty = refunds[eid]
            whole = given_qty >= sold if qty is not None else given >= int(sale[0])
            if by_units:
                back[k] += int(qty) if qty is not None else sold if whole else 0
            elif whole and (qty is None or given_qty - int(qty) < sold):
                back[k] += 1  # the refund that completes it, once
    return back


# --- goods and stock (crdtledger.goods) ----------------------------------------------


def stock_levels(ledger: Ledger, branch: str | None = None, *, low_only: bool = False
                 ) -> list[dict[str, Any]]:
    """库存: units of each goods item per branch (and in transit to it), by code then
    branch; `low` when at or below the item's threshold (库存提醒). The rows are the
    escrow rights of the items' stock ids: nothing here mistakes them for members."""
    # Every stock id an item's code carried counts (two concurrent additions: goods).
    items = {str(s): g for g in ledger.catalogue().values() for s in g["stocks"]}
    held: dict[tuple[str, str], dict[str, int]] = {}
    for member, purse, node, amount in ledger.storage.conn.execute(
            "SELECT member, purse, node, amount FROM rights WHERE purse IN ('stock', "
            "'transit')"):
        if member in items and (branch is None or node == branch):
            q = held.setdefault((str(items[member]["code"]), str(node)), {})
            q[purse] = q.get(purse, 0) + int(amount)
    if branch is not None:  # every item has a row at the branch asked about
        for g in items.values():
            held.setdefault((str(g["code"]), branch), {})
    by_code = {str(g["code"]): g for g in items.values()}
    rows = []
    for (code, node), q in sorted(held.items()):
        g = by_code[code]
        threshold = int(g.get("low_stock", 0))
        qty = q.get("stock", 0)
        low = threshold > 0 and qty <= threshold
        if low or not low_only:
            rows.append({"code": code, "name": str(g["name"]), "branch": node, "qty": qty,
                         "transit": q.get("transit", 0), "low_stock": threshold, "low": low})
    return rows


# A goods sale's stock entries (reason `sale`), a gift's (`gift`) and those of their
# refunds (`refund`) are written by the sale's own branch: in the sale's commit
# (Goods.sell_goods, gift_goods), or with a refund, which write rule refund-own keeps
# to the sale's writer (Goods._refund_stock). Another branch's stock entry naming
# the sale in `ref` is none of them, whatever it says: a liar's 5 units at 100 billion
# yuan made an honest sale of one unit read 6 sold in the goods report, cost 100
# billion in the analytics export, and the sale's refund put its unit back at a
# sixth of that. Every reader of a sale's stock entries takes them through this rule
# (the SQL below, `s` the stock entry and `d` the sale, or `sale_stock`). Read side,
# not a write rule: a branch of an older version takes such an entry in as before,
# and no two versions disagree on which records are accepted.
OWN_SALE_STOCK = "s.node = d.node"
# But a closed shop's sale is refunded by the branch its chain of hand-overs ends at
# (write rule refund-own), its units back on that branch's shelf: that branch's
# `refund` stock entries naming the sale count too, once its refund of the sale is
# projected here (judged alike at every replica, projection._backed), so that the
# goods report takes back the units its stock figures got back. (`s.reason`: the
# goods report's column.)
RECEIVER_SALE_STOCK = ("(s.reason = 'refund' AND EXISTS (SELECT 1 FROM entries r "
                       "WHERE r.ref = d.id AND r.kind = 'refund' AND r.node = s.node "
                       "AND json_extract(r.body, '$.handover') = d.node))")


def sale_stock(conn: sqlite3.Connection, sale: str, reason: str) -> tuple[int, int]:
    """Units and cost (fen) of the stock entries of `reason` that the sale `sale`'s own
    branch wrote for it (OWN_SALE_STOCK)."""
    units = cost = 0
    for qty, amount in conn.execute(
            "SELECT json_extract(s.body, '$.qty'), s.amount FROM entries s JOIN entries d "
            "ON d.id = s.ref WHERE s.ref = ? AND s.kind = 'stock' AND "
            f"json_extract(s.body, '$.reason') = ? AND {OWN_SALE_STOCK}", (sale, reason)):
        units += int(qty or 0)
        cost += int(amount)
    return units, cost


def goods_ranking(ledger: Ledger, by: str = "sales", start: str | None = None,
                  end: str | None = None, limit: int = 10) -> list[dict[str, Any]]:
    """商品销量排名 (by units sold) and 商品利润排名 (by profit): the goods sales of the
    period less the goods refunds of the period, each counted on its own day as the
    daily reports, the settlement and the analytics export count them: units (stock
    entries, reason `sale` and `refund`, at cost) and money (the sales' debits, the
    refunds' entries). A refund counted against its sale's month rewrote a month
    already handed to the accountant, and its own month never showed it."""
    if by not in ("sales", "profit"):
        raise InvalidInput(f"rank by sales or profit, not {by!r}")
    where, args = _period(ledger, start, end)
    names = {code: str(g["name"]) for code, g in ledger.catalogue().items()}
    rows: dict[str, dict[str, Any]] = {}

    def add(code: Any, qty: Any, sales: Any, cost: Any) -> None:
        r = rows.setdefault(str(code), {"code": str(code), "name": names.get(str(code), code),
                                        "qty": 0, "sales": 0, "cost": 0, "profit": 0})
        r["qty"] += int(qty or 0)
        r["sales"] += int(sales or 0)
        r["cost"] += int(cost or 0)
        r["profit"] = r["sales"] - r["cost"]

    conn = ledger.storage.conn
    # Units at cost, of the period's stock entries of sales and refunds (a sale's units
    # may be several entries), by their sale's goods; a sale's money once per debit.
    for code, reason, qty, cost, paid in conn.execute(
            "SELECT json_extract(d.body, '$.goods'), s.reason, TOTAL(s.qty), TOTAL(s.amount), "
            "d.amount FROM (SELECT json_extract(body, '$.reason') AS reason, "
            "json_extract(body, '$.qty') AS qty, amount, ref, node FROM entries "
            f"WHERE {where} AND kind = 'stock') s JOIN entries d ON d.id = s.ref "
            "WHERE d.kind = 'debit' AND s.reason IN ('sale', 'refund') "
            f"AND ({OWN_SALE_STOCK} OR {RECEIVER_SALE_STOCK}) GROUP BY d.id, s.reason",
            args):
        if reason == "sale":
            add(code, qty, paid, cost)
        else:
            add(code, -int(qty or 0), 0, -int(cost or 0))
    for code, refunded in conn.execute(
            "SELECT json_extract(d.body, '$.goods'), TOTAL(r.amount) FROM (SELECT amount, ref "
            f"FROM entries WHERE {where} AND kind = 'refund') r JOIN entries d ON d.id = r.ref "
            "WHERE d.kind = 'debit' AND json_extract(d.body, '$.goods') IS NOT NULL "
            "GROUP BY 1", args):
        add(code, 0, -int(refunded or 0), 0)
    key = "qty" if by == "sales" else "profit"
    return sorted(rows.values(), key=lambda r: (-r[key], r["code"]))[:limit]
