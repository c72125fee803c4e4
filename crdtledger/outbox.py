"""A node's outbox of notices: what is due (crdtledger.notices decides), kept durably
in this store before it is sent and marked once sent, and the reads that feed the
decision.

Local, not replicated. Each notice has one sender (crdtledger.notices), so whether it
was sent is that node's business alone; writing "due" and "sent" marks into the
replicated ledger would put two signed records per birthday into every branch's log
forever, to tell branches something none of them acts on. The outbox is a table of
this node's store (one SQLite file, fsync'd like the rest), created on first use, so
it survives restarts and goes with the store's backups: a notice is inserted under
its key before any attempt, INSERT OR IGNORE (so a notice found due again after a
restart is the same row), and marked sent after the gateway took it. A crash between
the gateway taking it and the mark sends it once more, with the same key (the
provider's duplicate check sees the same Message-ID / SessionContext).

A failed send is kept with its sentence and tried again later (backoff up to an hour),
never dropped; one the gateway refused for good (a mailbox that does not exist, a
number that unsubscribed) is kept with its sentence and not tried again.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from datetime import date, datetime, timedelta
from typing import TYPE_CHECKING, Any, NamedTuple

from crdtledger import bookings, notices, views
from crdtledger.errors import InvalidInput, LedgerError
from crdtledger.hlc import id_time_ms
from crdtledger.inputs import blank
from crdtledger.notices import Notice

if TYPE_CHECKING:
    from crdtledger.ledger import Ledger

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS outbox(key TEXT PRIMARY KEY, kind TEXT NOT NULL, "
    "channel TEXT NOT NULL, recipient TEXT NOT NULL, member TEXT NOT NULL, "
    "subject TEXT NOT NULL, body TEXT NOT NULL, promotional INTEGER NOT NULL, "
    "due INTEGER NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, next_try INTEGER NOT NULL, "
    "sent INTEGER, error TEXT NOT NULL DEFAULT '')",
    "CREATE INDEX IF NOT EXISTS outbox_unsent ON outbox(next_try) WHERE sent IS NULL",
    "CREATE INDEX IF NOT EXISTS outbox_member ON outbox(member, due)",
    "CREATE TABLE IF NOT EXISTS outbox_marks(name TEXT PRIMARY KEY, value TEXT NOT NULL)",
    # The debits not yet looked at, in the order they reached this store (a rowid
    # table: each row goes once looked at). Filled by a trigger, in the transaction
    # that projects the entry, whatever its id: an id is its writer's clock (a branch
    # whose clock runs days ahead, or was put back, or that was offline for a week
    # mints ids far from when they arrive here), and an entry deferred for funding
    # (crdtledger.projection) is inserted only once funded. Created on first use,
    # like the rest of the outbox: a store that never sends notices pays nothing.
    "CREATE TABLE IF NOT EXISTS outbox_debits(pos INTEGER PRIMARY KEY, entry TEXT NOT NULL)",
)
# The queue's trigger, made by the notifier's pass only (`_queued_debits`), and dropped
# when a node starts without a notifier (`stop_queue`): made by any use of the outbox
# (`notice history` at a head office that sends nothing), it queued every debit of the
# chain for good, since only a notifier's pass takes them off.
_QUEUE = (*_SCHEMA,
          "CREATE TRIGGER IF NOT EXISTS outbox_debit_arrived AFTER INSERT ON entries "
          "WHEN NEW.kind = 'debit' BEGIN INSERT INTO outbox_debits(entry) VALUES (NEW.id); "
          "END")
# What was sent to whom is history for a year and a bit, then goes (PIPL: kept no
# longer than needed; the sent message named a member and their phone or e-mail).
KEEP_SENT_DAYS = 400
RETRY_FIRST_S = 60
RETRY_MAX_S = 3600
# The next try of a notice refused for good: never (past any clock's ms).
REFUSED = 2 ** 62
# Debits looked at per pass, at most (a catch-up brings a month of them): the rest
# wait in the queue for the next pass.
DEBIT_SCAN = 20_000
# The mark saying the debit queue has been looked at (an older store's mark was an
# entry id: its first look on this code starts afresh, like a new store's).
DEBITS_QUEUED = "queue"


class Outgoing(NamedTuple):
    key: str
    kind: str
    channel: str
    to: str
    member: str
    subject: str
    body: str
    attempts: int
    due: int = 0  # when it was kept (ms)


# How long a notice kept while it could not go is still worth sending: a low-balance
# notice, a greeting, an expiry a day; a broadcast three. A reminder goes only before
# its appointment, while the booking stands. The mail server back after a weekend
# sent Friday's notices on Monday, and a reminder of an appointment cancelled and
# long past to the phone number the member had given up.
STALE_AFTER_MS = {"broadcast": 3 * 86_400_000}
STALE_DEFAULT_MS = 86_400_000


def _conn(ledger: Ledger, queue: bool = False) -> sqlite3.Connection:
    return ledger.storage.local(_QUEUE if queue else _SCHEMA, "the outbox is")


def stop_queue(ledger: Ledger) -> None:
    """No notifier at this node: no debit is queued for one, and a notifier started
    later takes up the debits from then on (its first look reads none from before).
    A store that never had a notifier is not touched: its outbox is made only once
    it is used."""
    if ledger.storage.conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'trigger' "
                                   "AND name = 'outbox_debit_arrived'").fetchone() is None:
        return
    conn = _conn(ledger)
    conn.execute("DROP TRIGGER IF EXISTS outbox_debit_arrived")
    conn.execute("DELETE FROM outbox_debits")
    conn.execute("DELETE FROM outbox_marks WHERE name = 'debits'")
    ledger.storage.forget_local(_QUEUE)


def enqueue(ledger: Ledger, due: Iterable[Notice], now_ms: int) -> int:
    """Keep each notice as due (once per key: a key already kept is left as it is);
    returns how many are new."""
    conn = _conn(ledger)
    new = 0
    for n in due:
        cur = conn.execute(
            "INSERT OR IGNORE INTO outbox(key, kind, channel, recipient, member, subject, "
            "body, promotional, due, next_try) VALUES (?,?,?,?,?,?,?,?,?,?)",
            (n.key, n.kind, n.channel, n.to, n.member, n.subject, n.body,
             int(n.promotional), now_ms, now_ms))
        new += cur.rowcount
    return new


# Sorts promotions after service notices (False before True).
_PROMOTIONAL_LAST = "kind IN ({})".format(", ".join(f"'{k}'" for k in sorted(notices.PROMOTIONAL)))


def pending(ledger: Ledger, now_ms: int, limit: int = 50) -> list[Outgoing]:
    """Notices not yet sent whose next try has come: service notices first (a reminder
    due after a broadcast to thousands waited a pass per 50 of them, past the
    appointment), then promotions, each oldest first."""
    return [Outgoing(*r) for r in _conn(ledger).execute(
        "SELECT key, kind, channel, recipient, member, subject, body, attempts, due "
        "FROM outbox "
        f"WHERE sent IS NULL AND next_try <= ? ORDER BY {_PROMOTIONAL_LAST}, next_try, key "
        "LIMIT ?", (now_ms, limit))]


def as_now(ledger: Ledger, o: Outgoing, channels: Sequence[str], now_ms: int | None = None
           ) -> Outgoing | None:
    """The notice as it should go now, or None (and its row dropped) if it should not
    go any more: its member may no longer receive it (deleted, erased, left or merged
    into another since it was kept, or a promotion to one who withdrew consent), or it
    is stale (STALE_AFTER_MS; a reminder whose booking was cancelled or has begun). It
    goes to the member's address now (a phone number changed since), by a channel
    this node can send (a broadcast picks e-mail where the node has only SMS), else
    waits as before."""
    now_ms = ledger.clock.wall() if now_ms is None else now_ms
    if not o.member:  # the owner's reports: addressed by the rule, not a member
        return o
    row = ledger.storage.conn.execute(
        "SELECT body FROM members WHERE id = ?", (o.member,)).fetchone()
    profile = json.loads(row[0]) if row else {}
    if (not row or not notices.may_receive(profile, o.kind in notices.PROMOTIONAL,
                                           ledger.has_left(o.member))
            or _stale(ledger, o, now_ms)):
        _conn(ledger).execute("DELETE FROM outbox WHERE key = ? AND sent IS NULL", (o.key,))
        return None
    reach = (notices.contact(profile, [o.channel]) if o.channel in channels else None) \
        or notices.contact(profile, channels)
    if reach is None:
        if notices.contact(profile, notices.CHANNELS) is None:  # no address left at all
            _conn(ledger).execute("DELETE FROM outbox WHERE key = ? AND sent IS NULL",
                                  (o.key,))
            return None
        return o  # an address this node cannot send to yet: kept, tried again
    if reach == (o.channel, o.to):
        return o
    _conn(ledger).execute("UPDATE outbox SET channel = ?, recipient = ? WHERE key = ?",
                          (*reach, o.key))
    return o._replace(channel=reach[0], to=reach[1])


def _stale(ledger: Ledger, o: Outgoing, now_ms: int) -> bool:
    if o.kind == "reminder":
        try:
            b = bookings.show(ledger, o.key.split(":", 1)[1])
        except LedgerError:
            return True
        return b["status"] != "confirmed" or int(b.get("start") or 0) <= now_ms
    return o.due > 0 and now_ms - o.due > STALE_AFTER_MS.get(o.kind, STALE_DEFAULT_MS)


def mark_sent(ledger: Ledger, key: str, now_ms: int) -> None:
    _conn(ledger).execute("UPDATE outbox SET sent = ?, attempts = attempts + 1, error = '' "
                          "WHERE key = ?", (now_ms, key))


def mark_failed(ledger: Ledger, key: str, error: str, now_ms: int) -> int:
    """Keep the failure's sentence and when to try again; returns that delay (s)."""
    conn = _conn(ledger)
    row = conn.execute("SELECT attempts FROM outbox WHERE key = ?", (key,)).fetchone()
    attempts = int(row[0]) if row else 0
    delay: int = min(RETRY_FIRST_S * 2 ** min(attempts, 10), RETRY_MAX_S)
    conn.execute("UPDATE outbox SET attempts = attempts + 1, error = ?, next_try = ? "
                 "WHERE key = ?", (error[:500], now_ms + delay * 1000, key))
    return delay


def mark_refused(ledger: Ledger, key: str, error: str) -> None:
    """The gateway refused this notice for good: kept with why, never tried again (an
    hourly retry of a mailbox that does not exist sent nothing for ever)."""
    _conn(ledger).execute("UPDATE outbox SET attempts = attempts + 1, error = ?, "
                          "next_try = ? WHERE key = ?", (error[:500], REFUSED, key))


def history(ledger: Ledger, *, member: str | None = None, kind: str | None = None,
            limit: int = 100) -> list[dict[str, Any]]:
    """What this node sent or has due, newest first: to whom, when, and why not yet."""
    where, args = ["1 = 1"], []
    if member:
        where.append("member = ?")
        args.append(member)
    if kind:
        where.append("kind = ?")
        args.append(kind)
    rows = _conn(ledger).execute(
        "SELECT key, kind, channel, recipient, member, subject, due, sent, attempts, error, "
        f"next_try FROM outbox WHERE {' AND '.join(where)} ORDER BY due DESC, key LIMIT ?",
        [*args, limit])
    return [{"key": k, "kind": kd, "channel": c, "to": to, "member": m, "subject": s,
             "due": d, "sent": se, "attempts": a, "error": e,
             "status": "sent" if se is not None else "refused" if nt == REFUSED
             else "failing" if e else "due"}
            for k, kd, c, to, m, s, d, se, a, e, nt in rows]


def _mark(ledger: Ledger, name: str) -> str | None:
    row = _conn(ledger).execute("SELECT value FROM outbox_marks WHERE name = ?",
                                (name,)).fetchone()
    return None if row is None else str(row[0])


def _set_mark(ledger: Ledger, name: str, value: str) -> None:
    _conn(ledger).execute("INSERT OR REPLACE INTO outbox_marks(name, value) VALUES (?, ?)",
                          (name, value))


def _kept(ledger: Ledger, prefix: str) -> bool:
    return _conn(ledger).execute("SELECT 1 FROM outbox WHERE key >= ? AND key < ? LIMIT 1",
                                 (prefix, prefix + "\uffff")).fetchone() is not None


# --- what is due at this node ---------------------------------------------------------


def rule_in_force(ledger: Ledger) -> tuple[dict[str, Any], str]:
    """The rule `notifications` in force today, and its version's id ("" if none)."""
    today = ledger.today()
    rid, body = "", None
    for eff, vid, b in ledger._versions("notifications"):
        if eff <= today:
            rid, body = vid, b
    return notices.rule_of(body), rid


def _local(ledger: Ledger, now_ms: int) -> datetime:
    return datetime.fromtimestamp(now_ms / 1000, ledger.storage.tz)


class Due(NamedTuple):
    notices: list[Notice]
    marks: dict[str, str]  # scan marks to keep once the notices are kept
    debits_read: int = 0  # the queued debits looked at (outbox_debits.pos up to this)


def collect(ledger: Ledger, now_ms: int, channels: Sequence[str]) -> Due:
    """Every notice this node owes at `now_ms` and has not kept yet (crdtledger.notices
    decides which; this reads the store for it)."""
    rule, rid = rule_in_force(ledger)
    node = ledger.node
    now = _local(ledger, now_ms)
    out: list[Notice] = []
    marks: dict[str, str] = {}
    branches: Mapping[str, str] = ledger.rule("branches") or {}
    for due in notices.daily_due(rule, rid, node, now):
        if _kept(ledger, due.key + ":"):
            continue
        report = views.daily_report(ledger, due.day, None if due.branch == "all"
                                    else due.branch)
        name = (("全部门店" if rule["language"] == "zh-CN" else "all branches")
                if due.branch == "all" else branches.get(due.branch, due.branch))
        key = "name_zh" if rule["language"] == "zh-CN" else "name_en"
        named = {str(m["code"]): str(m.get(key) or m["code"])
                 for m in ledger.rule("payment_methods", due.day)}
        used = {*report["topup_by_method"], *report["till_by_method"]}
        methods = {c: named.get(c, c) for c in views.methods_in([report], list(named))
                   if c in used}
        out += [n._replace(sender=node) for n in
                notices.daily_notices(due, report, rule, name, channels, methods)]
    day = notices.greetings_due(rule, now)
    if day is not None and _mark(ledger, "greetings") != day:
        home = _home_members(ledger, day, rule)
        out += notices.member_day_notices(node, day, home, rule, channels,
                                          rule["shop"] or ledger.chain)
        marks |= {_told(m["id"], x): day for m in home for x in m["expiring"]}
        # The mark only spares a second scan that day: the keys keep each notice once.
        marks["greetings"] = day
    looked = _mark(ledger, "debits") == DEBITS_QUEUED
    debits, read = _queued_debits(ledger, looked)
    if not looked:
        marks["debits"] = DEBITS_QUEUED
    # Once a day by this node's day, not the debit's: a branch whose clock went back a
    # day before each debit made the home branch send one notice per day it named. (A
    # store restored from a backup may tell a member again, once, that day, of debits
    # the lost store had told of; telling none of the debits from before the restore
    # silenced those the lost store never held, and a clock far ahead silenced all.)
    debits = [{**d, "day": now.date().isoformat()} for d in debits]
    out += notices.low_balance_notices(node, debits, rule, channels)
    out += notices.reminder_notices(node, _bookings_soon(ledger, now_ms, rule), rule, channels)
    conn = _conn(ledger)
    fresh = [n for n in out if conn.execute("SELECT 1 FROM outbox WHERE key = ?",
                                            (n.key,)).fetchone() is None]
    return Due(fresh, marks, read)


def keep(ledger: Ledger, due: Due, now_ms: int) -> int:
    """Keep what `collect` found, then its scan marks (a crash between the two scans
    again, and the keys make that harmless); returns how many notices are new. Sent
    notices older than KEEP_SENT_DAYS go, and so do those refused for good: none of
    them can fall due again (a notice is due within hours of its time, and a year's
    greeting names its year); so do erased members' notices."""
    new = enqueue(ledger, due.notices, now_ms)
    for name, value in due.marks.items():
        _set_mark(ledger, name, value)
    conn = _conn(ledger)
    # Only those read: a debit queued since has a greater pos (the rows read are
    # still there, so a new row's rowid is above them).
    conn.execute("DELETE FROM outbox_debits WHERE pos <= ?", (due.debits_read,))
    conn.execute("DELETE FROM outbox WHERE sent IS NOT NULL AND sent < ?",
                 (now_ms - KEEP_SENT_DAYS * 86_400_000,))
    conn.execute("DELETE FROM outbox WHERE next_try = ? AND due < ?",
                 (REFUSED, now_ms - KEEP_SENT_DAYS * 86_400_000))
    conn.execute("DELETE FROM outbox_marks WHERE name LIKE 'told:%' AND value < ?",
                 (today_of(ledger, now_ms - KEEP_SENT_DAYS * 86_400_000),))
    forget_erased(ledger)
    return new


def _made(ledger: Ledger) -> bool:
    return ledger.storage.conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'outbox'"
    ).fetchone() is not None


def forget_members(ledger: Ledger, members: Iterable[str]) -> int:
    """Drop the notices of `members` (erased), sent or not: their address and name are
    in them. Called by the erasure itself, where it is written and where it arrives
    (crdtledger.erasure), so a node with no notifier (no [notify] gateway: nothing
    ever runs `keep`) keeps none either. A store that never used its outbox has no
    table, and gets none. Returns how many went."""
    ids = [m for m in members if isinstance(m, str) and m]
    if not ids or not _made(ledger):
        return 0
    conn = _conn(ledger)
    return sum(conn.execute("DELETE FROM outbox WHERE member = ?", (mid,)).rowcount
               for mid in ids)


def forget_erased(ledger: Ledger) -> int:
    """Drop the notices of every erased member (housekeeping, and each `keep`): those
    kept before the erasure reached this code (a store erased under an older version)."""
    if not _made(ledger):
        return 0
    return _conn(ledger).execute(
        "DELETE FROM outbox WHERE member IN (SELECT id FROM members WHERE "
        "json_extract(body, '$.erased') IS NOT NULL)").rowcount


def _home_members(ledger: Ledger, day: str, rule: Mapping[str, Any]) -> list[dict[str, Any]]:
    """This node's members, with what of theirs expires within the rule's days."""
    until = (date.fromisoformat(day) + timedelta(days=int(rule["expiry_days"]))).isoformat()
    out = []
    for m in views.member_records(ledger):
        p = m["profile"]
        if p.get("home") != ledger.node:
            continue
        expiring: list[dict[str, Any]] = []
        if rule["expiry_days"] and m["purses"].get("points", 0) > 0:
            lots: dict[str, int] = {}
            for lot in views.points(ledger, m["id"])["lots"]:
                if day <= lot["expires"] <= until:
                    lots[lot["expires"]] = lots.get(lot["expires"], 0) + int(lot["points"])
            expiring += [{"what": "points", "n": n, "expires": exp, "ref": f"points:{exp}"}
                         for exp, n in sorted(lots.items())]
        if rule["expiry_days"]:
            expiring += [{"what": "coupon", "coupon": c["coupon"], "terms": c["terms"],
                          "expires": c["valid_to"], "ref": f"coupon:{c['coupon']}"}
                         for c in ledger.coupons(m["id"])
                         if c["status"] == "available" and c["valid_to"]
                         and day <= c["valid_to"] <= until]
        # Each thing is told of once (one notice a day lists what is new): a coupon
        # that expires in a week was told of every day of it.
        expiring = [x for x in expiring if _mark(ledger, _told(m["id"], x)) is None]
        out.append({"id": m["id"], "profile": p, "left": ledger.has_left(m["id"]),
                    "expiring": expiring})
    return out


def _told(member: str, expiring: Mapping[str, Any]) -> str:
    """The mark that `expiring` was told of to `member` (outbox_marks)."""
    return f"told:expiry:{member}:{expiring['ref']}"


def _queued_debits(ledger: Ledger, looked: bool) -> tuple[list[dict[str, Any]], int]:
    """Debits of this node's members that took stored value, among the (at most
    DEBIT_SCAN) oldest in the queue of those not yet looked at, and the queue's pos up
    to which they were read (`keep` takes them off then). Each debit that reaches
    this store is looked at once, in the order it came, whatever its id; the first
    look (`looked` False) takes what is queued off unread (no notices for history)."""
    conn = _conn(ledger, queue=True)
    if not looked:
        (top,) = conn.execute("SELECT COALESCE(MAX(pos), 0) FROM outbox_debits").fetchone()
        return [], int(top)
    (top,) = conn.execute("SELECT COALESCE(MAX(pos), 0) FROM (SELECT pos FROM outbox_debits "
                          "ORDER BY pos LIMIT ?)", (DEBIT_SCAN,)).fetchone()
    out = []
    # One statement for the batch, in queue order (CROSS JOIN keeps the planner on
    # the queue's rowid range, then a key lookup each). A queued debit of another
    # branch's member (or an entry rewritten since) joins to nothing.
    for eid, member, body, prof in conn.execute(
            "SELECT e.id, e.member, e.body, m.body FROM outbox_debits d "
            "CROSS JOIN entries e ON e.id = d.entry CROSS JOIN members m ON m.id = e.member "
            "WHERE d.pos <= ? AND m.home = ? ORDER BY d.pos", (top, ledger.node)).fetchall():
        e = json.loads(body)
        paid = -sum(int(c) for purse, _n, c in e["deltas"] if purse in ("cash", "bonus"))
        if paid > 0:
            out.append({"entry": eid, "member": member, "profile": json.loads(prof),
                        "left": ledger.has_left(member), "paid": paid,
                        "day": ledger.storage.day_of(id_time_ms(eid))})
    # Each debit's balance is the one it left, not the member's now: two debits of a
    # pass that each crossed the threshold from the balance now were each told (the
    # member got two notices for one crossing). Walked back from the balance now,
    # later debits of the pass added back, so the crossings of a pass are one.
    now: dict[str, int] = {}
    for d in reversed(out):
        m = d["member"]
        if m not in now:
            bal = views.balance(conn, m)
            now[m] = int(bal["cash"]) + int(bal["bonus"])
        d["balance"] = now[m]
        now[m] += d["paid"]
    return out, int(top)


def _bookings_soon(ledger: Ledger, now_ms: int, rule: Mapping[str, Any]
                   ) -> list[dict[str, Any]]:
    """Bookings starting within the rule's remind_minutes (crdtledger.bookings), with
    the member's profile and the branch's name for the reminder's text."""
    minutes = int(rule["remind_minutes"])
    if not minutes:
        return []
    out = []
    conn = ledger.storage.conn
    names: Mapping[str, str] = ledger.rule("branches") or {}
    for b in bookings.starting(ledger, now_ms, now_ms + minutes * 60_000):
        row = conn.execute("SELECT body FROM members WHERE id = ?", (b["member"],)).fetchone()
        if row is None:
            continue
        out.append({**b, "profile": json.loads(row[0]), "left": ledger.has_left(b["member"]),
                    "branch_name": names.get(str(b["branch"]), str(b["branch"]))})
    return out


# --- broadcasts --------------------------------------------------------------------------


def segment_members(ledger: Ledger, segment: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The live members in `segment` (crdtledger.notices.in_segment)."""
    notices.check_segment(segment)
    conn = ledger.storage.conn
    last = {str(m): str(d) for m, d in conn.execute(
        "SELECT member, MAX(day) FROM entries WHERE kind IN ('debit', 'topup') "
        "GROUP BY member")}
    today = ledger.today()
    out = []
    for m in views.member_records(ledger):
        row = {"id": m["id"], "profile": m["profile"], "left": ledger.has_left(m["id"]),
               "last_visit": last.get(m["id"], "")}
        if segment.get("level"):
            row["level"] = views.level(ledger, m["id"], m["profile"])["name"]
        if notices.in_segment(row, segment, today):
            out.append(row)
    return out


def broadcast(ledger: Ledger, segment: Mapping[str, Any], subject: str, text: str,
              now_ms: int) -> dict[str, Any]:
    """Keep a broadcast's notices in this node's outbox (its notifier sends them)."""
    # A subject or text of spaces alone (an input method's U+3000 too) was a blank mail
    # to every consenting member of the segment. Only blankness here: what else either
    # may hold is the operation's schema's to say (a notice kept by an older version
    # with a control character in it is still sent, as tests/test_notice_headers.py has).
    for what, value in (("subject", subject), ("text", text)):
        if not isinstance(value, str) or blank(value):
            raise InvalidInput(f"{what} is required")
    bid = ledger.clock.mint()
    members = segment_members(ledger, segment)
    rule, _ = rule_in_force(ledger)
    due, skipped = notices.broadcast_notices(bid, ledger.node, members, subject, text, rule,
                                             notices.CHANNELS)
    enqueue(ledger, due, now_ms)
    return {"broadcast": bid, "segment": len(members), "queued": len(due),
            "without_consent_or_contact": skipped}


def today_of(ledger: Ledger, now_ms: int) -> str:
    return _local(ledger, now_ms).date().isoformat()
