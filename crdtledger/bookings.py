"""Appointments (预约): technicians, their slots, and bookings never double-booked.

A technician's slot is the same hard problem as the last 100 yuan of a card: two
branches cut off from each other must not both give it away. The answer is the
escrow idea again, with the whole "purse" at one branch: **only the branch a
technician belongs to decides that technician's slots.**

- A technician is a `technician` entry written at its own branch; its id (the first
  version's entry id) is minted there, so the node part of that id names the branch,
  and every later version, booking, decision and cancellation of that technician is
  an entry whose `member` is that id: a technician's whole book is one range of the
  entries' member index.
- A booking made at the technician's branch is checked against the slots that
  branch holds, inside the write transaction, and written confirmed (its writer is
  the technician's branch: the entry is its own decision). One made anywhere else is
  a request, "pending" until the technician's branch hears of it: its node decides
  every undecided request in id order as soon as it arrives (`decide`, run by the
  node core on applied records, the same in the node and the simulator) and writes a
  `booking_decision`, confirmed or refused with the reason.
- The write rule `booking-branch` (crdtledger.writerules) refuses, on every replica, a
  technician version or a decision written by any other branch. A decision copies
  the slot it confirms (`start`, `minutes`), so what holds a technician is read from
  the technician's branch's own records alone (`held`): any replica holds a prefix of
  that branch's log (hash-chained, applied in order), and every prefix of it holds no
  two overlapping slots, because the branch checked each one against all before it.
  So no replica ever shows a technician double-booked, even in transit.
- A cancellation may be written anywhere (a member cancels from home); the booking
  reads "cancelled" at once. The slot is freed when the technician's branch knows of
  it: a cancellation written there frees it, and one written elsewhere is answered
  by a `released` decision when it arrives. An ending (cancellation, release,
  no-show) takes effect whatever its id: ids follow the writer's clock, not the
  order things happened in (`held`, `_book`).
- No-shows (爽约) are recorded by the technician's branch (decision `no_show`).

Entries with no deltas move no money: reports, balances, settlement and histories
read entries by kind or by member, and a booking's `member` is a technician, its
member in `ref`.
"""

from __future__ import annotations

import bisect
import json
import re
from collections.abc import Iterable, Mapping
from datetime import date, datetime, time, timedelta
from typing import TYPE_CHECKING, Any, Literal, get_args
from zoneinfo import ZoneInfo

from crdtledger import views
from crdtledger.errors import InvalidInput, LedgerError, NotFound, PermissionDenied
from crdtledger.hlc import id_floor, id_node, id_time_ms
from crdtledger.inputs import check_text
from crdtledger.localtime import known_zone
from crdtledger.model import ID, SERVICE_CODE, erased, self_service_of

if TYPE_CHECKING:
    from crdtledger.ledger import Ledger

# The `ref` of every technician version: an indexed value (entries_ref), so the list
# of technicians is one index read, not a scan of the ledger.
TECH_REF = "technicians"
# How far ahead a booking may be made. It also bounds how far back a branch reads a
# technician's book to know what holds it: a slot still to come was asked for at
# most this long ago (plus a day for time zones).
HORIZON_DAYS = 90
# What a member may book on the self-service pages: this many bookings to come at once,
# and this many made there a day, cancelled or not. One member booked all 84 slots of
# a technician's week, and book-and-cancel cycles wrote entries every replica keeps.
# The counter books on a member's behalf without these limits.
SELF_SERVICE_OPEN = 3
SELF_SERVICE_PER_DAY = 10
# The step of the free start times offered (booking.slots).
SLOT_STEP_MIN = 30
# The services of a technician, joined by commas, in one text field of its entry.
MAX_SERVICES_TEXT = 200
TECH_CODE = re.compile(r"^[A-Za-z0-9_-]{1,16}\Z")
HOURS = re.compile(r"^([01][0-9]|2[0-3]):([0-5][0-9])-([01][0-9]|2[0-4]):([0-5][0-9])\Z")
WHEN = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}\Z")

BookingStatus = Literal["pending", "confirmed", "refused", "cancelled", "no_show", "done"]
BOOKING_STATUSES: tuple[BookingStatus, ...] = get_args(BookingStatus)
# What a technician's branch decides (a booking_decision's `status`).
Decision = Literal["confirmed", "refused", "released", "no_show"]
DECISIONS: tuple[Decision, ...] = get_args(Decision)


class BookingRefused(LedgerError):
    """The booking cannot be made, cancelled or marked as asked; nothing changed."""

    code = "booking_refused"


class SlotTaken(BookingRefused):
    code = "slot_taken"


# --- technicians ------------------------------------------------------------------------


def _minutes_of(hhmm: str) -> int:
    h, m = hhmm.split(":")
    return int(h) * 60 + int(m)


def parse_hours(hours: str) -> tuple[int, int]:
    """'10:00-22:00' -> (600, 1320), minutes of the day; the end after the start."""
    m = HOURS.match(hours.strip())
    if m is None:
        raise InvalidInput(f"working hours {hours!r} are not like 10:00-22:00")
    start, end = (_minutes_of(x) for x in hours.strip().split("-"))
    if end > 24 * 60 or end <= start:
        raise InvalidInput(f"working hours {hours!r} must end after they start, on the same "
                           "day (hours past midnight are not supported)")
    return start, end


def _version(e: Mapping[str, Any]) -> tuple[int, str]:
    """Where a technician's version stands among its others: its `version` (one above
    the versions its branch held when it wrote it; 0 in those written before the
    field), then its id. Not the id alone: ids are the branch's clock, and a change
    made after a clock that ran ahead was put right has a lower id (a new era:
    crdtledger.hlc) than the version it changes."""
    v = e.get("version")
    return (v if isinstance(v, int) else 0, str(e["id"]))


def _tech_view(versions: list[dict[str, Any]]) -> dict[str, Any]:
    """A technician as its latest version says (one writer: its branch)."""
    last = max(versions, key=_version)
    tid = str(last["member"])
    return {"id": tid, "code": last.get("code", ""), "name": last.get("name", ""),
            "version": _version(last)[0],
            "branch": id_node(tid), "ref": f"{last.get('code', '')}@{id_node(tid)}",
            "services": [s for s in str(last.get("services", "")).split(",") if s],
            "hours": last.get("hours", ""), "active": last.get("status", "") != "inactive",
            # The zone its hours are in (its branch's, since 0.3.0); "" for a version
            # written before: read in the reader's zone, as then.
            "tz": last.get("tz") if known_zone(last.get("tz")) is not None else ""}


def technicians(ledger: Ledger, branch: str | None = None) -> list[dict[str, Any]]:
    """Every technician (or a branch's), as its latest version says, by branch and code."""
    by_id: dict[str, list[dict[str, Any]]] = {}
    for (body,) in ledger.storage.conn.execute(
            "SELECT body FROM entries WHERE ref = ? AND kind = 'technician' ORDER BY id",
            (TECH_REF,)):
        e = json.loads(body)
        by_id.setdefault(str(e["member"]), []).append(e)
    out = [_tech_view(v) for tid, v in by_id.items()
           if branch is None or id_node(tid) == branch]
    for t in out:
        # A shop closed for good (its certificate revoked) decides nothing any more: a
        # request to its technician would wait for ever.
        t["closed"] = ledger.retired(t["branch"])
        t["active"] = t["active"] and not t["closed"]
    return sorted(out, key=lambda t: (t["branch"], t["code"], t["id"]))


def technician(ledger: Ledger, ref: str) -> dict[str, Any]:
    """A technician by code (T01), code at a branch (T01@SH02) or id; NotFound, or
    InvalidInput when a bare code names technicians at several branches."""
    ref = _text(ref, "a technician")
    techs = technicians(ledger)
    if ID.match(ref):
        found = [t for t in techs if t["id"] == ref]
    elif "@" in ref:
        code, branch = ref.split("@", 1)
        found = [t for t in techs if t["code"] == code and t["branch"] == branch]
    else:
        found = [t for t in techs if t["code"] == ref]
        if len(found) > 1:
            raise InvalidInput(f"technician {ref} is at several branches ("
                               + ", ".join(t["branch"] for t in found)
                               + f"): say which, e.g. {ref}@{found[0]['branch']}")
    if not found:
        raise NotFound(f"no technician {ref} is known at this branch (added at its own "
                       "branch; not synced here yet?)")
    return found[0]


def add_technician(ledger: Ledger, operator: str, code: str, name: str,
                   services: Iterable[str], hours: str = "10:00-22:00",
                   active: bool = True) -> dict[str, Any]:
    """Add a technician to this branch, or change one of its own (same code): a new
    version, written here only (the write rule `booking-branch`)."""
    ledger.authorise(operator, "technician.manage")
    code = code.strip()
    if not TECH_CODE.match(code):
        raise InvalidInput(f"technician code {code!r} is not 1-16 letters, digits, _ or -")
    name = check_text(name, "name", required=True, limit=40)
    parse_hours(hours)
    codes = [s.strip() for s in services if s.strip()]
    if not codes:
        raise InvalidInput("name at least one service the technician does, e.g. FOOT60")
    price_list = ledger.rule("services")
    for s in codes:
        if not SERVICE_CODE.match(s) or s not in price_list:
            raise NotFound(f"service {s} is not in the price list")
    offered = ",".join(dict.fromkeys(codes))
    if len(offered) > MAX_SERVICES_TEXT:  # replicas take at most 200 characters of text
        raise InvalidInput(f"a technician's services take at most {MAX_SERVICES_TEXT} "
                           f"characters with their commas ({len(offered)} here): name fewer")
    mine = [t for t in technicians(ledger, ledger.node) if t["code"] == code]

    def plan() -> tuple[list[Any], dict[str, Any]]:
        # Its zone goes with its hours: another branch in another zone read "10:00-22:00"
        # in its own, offered slots the technician's branch refused and refused the
        # ones it would take.
        entry = ledger._entry("technician", "", op=operator, ref=TECH_REF, code=code,
                              name=name, services=offered,
                              hours=hours.strip(), status="" if active else "inactive",
                              version=mine[0]["version"] + 1 if mine else 1,
                              tz=ledger.storage.tz.key)
        # The first version's id is the technician's id; later versions name it.
        entry["member"] = mine[0]["id"] if mine else entry["id"]
        return [ledger._entry_write(entry)], entry

    entry = ledger._commit(plan)
    return _tech_view([entry])


# --- reading a technician's book ----------------------------------------------------------


def _floor(ledger: Ledger, now_ms: int | None = None) -> str:
    """The oldest id that can concern a slot still to come (HORIZON_DAYS + a day)."""
    now = ledger.clock.wall() if now_ms is None else now_ms
    return id_floor(max(0, now - (HORIZON_DAYS + 1) * 86_400_000))


def _book(ledger: Ledger, tech_id: str, since: str = "") -> list[dict[str, Any]]:
    """The technician's entries from `since` on, in id order (one index range), and
    the cancellations and decisions naming one of those bookings from before `since`.

    Ids are hybrid-clock times of the writer's PC, and a later entry can have a
    smaller id than the booking it names: a branch whose clock ran days ahead and was
    put right mints lower ids (crdtledger.hlc), and a branch behind writes lower ids
    than one ahead. Reading by id alone, such a cancellation or release drops out of
    the window before its booking does, and the slot would be held again."""
    conn = ledger.storage.conn
    rows = [(i, json.loads(b)) for (i, b) in conn.execute(
        "SELECT id, body FROM entries WHERE member = ? AND id >= ? ORDER BY id",
        (tech_id, since))]
    if since:
        # The bookings read, and those a decision read names (a confirmation can be
        # in the window when its request is not): what an ending can name.
        ids = sorted({e["id"] for _i, e in rows if e["kind"] == "booking"}
                     | {str(e.get("ref")) for _i, e in rows if e["kind"] == "booking_decision"})
        for n in range(0, len(ids), 500):
            part = ids[n:n + 500]
            # `+member`, `+id`: look them up by ref (a few rows each), not by the
            # member index, which would walk the technician's whole older history.
            rows += [(i, json.loads(b)) for (i, b) in conn.execute(
                f"SELECT id, body FROM entries WHERE ref {views.in_(part)} "
                "AND kind IN ('booking_decision', 'booking_cancel') "
                "AND +member = ? AND +id < ?", (*part, tech_id, since))]
        rows.sort(key=lambda r: r[0])
    return [e for _i, e in rows]


def _slot_ok(e: Mapping[str, Any]) -> bool:
    """Whether a booking (or confirmation) names a slot: a start and 5-720 minutes.
    A replica accepts entries without them (the fields are optional in the schema), so
    one a lying branch wrote is passed over here, never a crash of a listing or a pass."""
    return isinstance(e.get("start"), int) and isinstance(e.get("minutes"), int) \
        and 5 <= e["minutes"] <= 720


def held(entries: Iterable[Mapping[str, Any]], tech_id: str) -> dict[str, tuple[int, int]]:
    """Booking id -> (start ms, end ms) of the slots holding the technician, read only
    from the records of the technician's own branch: its own bookings and confirmed
    decisions, less what it released, cancelled or marked no-show.

    A set, not a replay in id order: a slot held is never held again once released,
    cancelled or marked no-show, so an ending wins whichever id is larger. Ids do not
    follow the order things happened in (a clock put back starts a lower era:
    crdtledger.hlc), and replayed in id order a release with a smaller id than its
    booking removed nothing, leaving the slot taken for ever and `decide` releasing it
    again on every pass. As a set, the result depends on which entries a replica has,
    never on their order, and every prefix of the branch's log still holds no two
    overlapping slots (an ending only removes one)."""
    branch = id_node(tech_id)
    out: dict[str, tuple[int, int]] = {}
    by: dict[str, str] = {}  # booking id -> the entry its slot was read from
    ended: set[str] = set()
    for e in entries:
        if e["node"] != branch or e["member"] != tech_id:
            continue
        kind = e["kind"]
        if (kind == "booking" or (kind == "booking_decision" and e.get("status") == "confirmed")
                ) and _slot_ok(e):
            bid = e["id"] if kind == "booking" else str(e.get("ref"))
            # One confirmation a booking, from an honest branch; should there be two,
            # the smallest id's slot, so the answer does not depend on the order given.
            if bid not in by or e["id"] < by[bid]:
                by[bid] = e["id"]
                out[bid] = (int(e["start"]), int(e["start"]) + int(e["minutes"]) * 60_000)
        elif kind == "booking_cancel" or (
                kind == "booking_decision" and e.get("status") in ("released", "no_show")):
            ended.add(str(e.get("ref")))
    for bid in ended:
        out.pop(bid, None)
    return out


def overlaps(slots: Mapping[str, tuple[int, int]]) -> list[tuple[str, str]]:
    """Pairs of bookings whose slots overlap (none, if the technician's branch is honest)."""
    items = sorted(slots.items(), key=lambda kv: kv[1])
    bad = []
    for i, (a, (_s, end)) in enumerate(items):
        for b, (s2, _e2) in items[i + 1:]:
            if s2 >= end:
                break
            bad.append((a, b))
    return bad


class _Slots:
    """Slots (booking id -> (start ms, end ms)) sorted by (start, end), to find the
    first that overlaps a time without reading them all: `decide` asks once a request
    against every slot held, and a lying branch's thousands of requests for one
    technician, each confirmed and added, made the pass quadratic inside the write
    transaction (the tills waiting on it). Sorted once; each confirmation inserted."""

    def __init__(self, slots: Mapping[str, tuple[int, int]]) -> None:
        self._rows = sorted((s, e, bid) for bid, (s, e) in slots.items())
        self._starts = [r[0] for r in self._rows]
        # The longest slot: nothing starting earlier than this before a time can reach it.
        self._longest = max((e - s for s, e, _b in self._rows), default=0)

    def add(self, bid: str, start: int, end: int) -> None:
        i = bisect.bisect_right(self._rows, (start, end, bid))
        self._rows.insert(i, (start, end, bid))
        self._starts.insert(i, start)
        self._longest = max(self._longest, end - start)

    def first_overlap(self, start: int, end: int, skip: str = "") -> tuple[int, int] | None:
        """The first slot by (start, end) overlapping [start, end), `skip`'s aside: one
        overlapping starts after start - longest, so the walk begins there and ends at
        the first slot starting at `end` or later."""
        i = bisect.bisect_right(self._starts, start - self._longest)
        rows = self._rows
        while i < len(rows) and rows[i][0] < end:
            s, e, bid = rows[i]
            if bid != skip and start < e:
                return s, e
            i += 1
        return None


def _conflict(ledger: Ledger, slots: Mapping[str, tuple[int, int]] | _Slots, start: int,
              end: int, skip: str = "", tz: ZoneInfo | None = None) -> str | None:
    """The slot (its local 'HH:MM-HH:MM') overlapping [start, end) first by start and
    end, or None; pass a `_Slots` to ask many times without sorting each time."""
    index = slots if isinstance(slots, _Slots) else _Slots(slots)
    hit = index.first_overlap(start, end, skip)
    if hit is None:
        return None
    return f"{_hm(ledger, hit[0], tz)}-{_hm(ledger, hit[1], tz)}"


def _status(b: Mapping[str, Any], related: Iterable[Mapping[str, Any]], now: int,
            closed: bool = False) -> tuple[BookingStatus, str]:
    """A booking's status and the reason of a refusal, from the entries that name it.
    `closed`: the technician's branch was closed for good (its certificate revoked)."""
    branch = id_node(str(b["member"]))
    decided: str | None = "confirmed" if b["node"] == branch else None
    reason, cancelled, no_show, why_cancelled = "", False, False, ""
    cancelled_ahead = False
    for e in related:
        if e.get("ref") != b["id"] or e["member"] != b["member"]:
            continue
        if e["kind"] == "booking_cancel":
            cancelled = True
            cancelled_ahead = cancelled_ahead or id_time_ms(str(e["id"])) < int(b["start"])
            why_cancelled = max(why_cancelled, str(e.get("reason") or ""))  # any order
        elif e["kind"] == "booking_decision" and e["node"] == branch:
            st = e.get("status")
            if st == "no_show":
                no_show = True
            # One confirmation or refusal a booking (`decide` never decides one twice);
            # the others are endings, which win whatever their ids (see `held`).
            elif st in ("confirmed", "refused") and decided is None:
                decided = str(st)
                reason = str(e.get("reason", ""))
    if no_show and not cancelled_ahead:
        # A no-show marked by a branch that had not heard of a cancellation made
        # before the slot began read "爽约" everywhere: the member had cancelled.
        return "no_show", reason
    if cancelled:
        return "cancelled", why_cancelled or reason
    if decided == "refused":
        return "refused", reason
    end = int(b["start"]) + int(b["minutes"]) * 60_000
    if decided == "confirmed" and end <= now:
        return "done", reason
    # Nobody will serve it or decide it: every replica that knows of the revocation
    # says so, instead of a confirmation for a shut shop or a request waiting for ever.
    # The member can book again elsewhere; no money was taken for a booking.
    if closed:
        why = f"branch {branch} closed for good"
        return ("cancelled", why) if decided == "confirmed" else ("refused", why)
    if decided == "confirmed":
        return "confirmed", reason
    return "pending", reason


def zone_of(ledger: Ledger, tech: Mapping[str, Any] | None) -> ZoneInfo:
    """The zone a technician's times are in: its branch's, everywhere (a booking's
    times are the technician's local times), else this branch's."""
    return (known_zone(tech.get("tz")) if tech else None) or ledger.storage.tz


def _local(ledger: Ledger, ms: int, tz: ZoneInfo | None = None) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz or ledger.storage.tz)


def _hm(ledger: Ledger, ms: int, tz: ZoneInfo | None = None) -> str:
    return _local(ledger, ms, tz).strftime("%H:%M")


def parse_when(ledger: Ledger, when: str, tz: ZoneInfo | None = None) -> int:
    """'2026-12-03T14:00' in `tz` (default this branch's zone) -> ms since the epoch."""
    tz = tz or ledger.storage.tz
    text = _text(when, "a time like 2026-12-03T14:00")
    if not WHEN.match(text):
        raise InvalidInput(f"time {when!r} is not like 2026-12-03T14:00")
    try:
        local = datetime.fromisoformat(text.replace(" ", "T"))
    except ValueError:
        raise InvalidInput(f"time {when!r} is not a real date and time") from None
    try:
        ms = int(local.replace(tzinfo=tz).timestamp() * 1000)
        back = _local(ledger, ms, tz).replace(tzinfo=None)
    except (ValueError, OverflowError, OSError):  # year 1's midnight east of UTC is year 0
        raise InvalidInput(f"time {when!r} is out of range") from None
    if back != local:
        raise InvalidInput(f"time {when!r} does not exist in {tz.key}: the "
                           "clocks go forward then")
    return ms  # a time the clocks pass twice (going back) is the first of the two


def _view(ledger: Ledger, b: Mapping[str, Any], related: Iterable[Mapping[str, Any]],
          techs: Mapping[str, Mapping[str, Any]], now: int) -> dict[str, Any]:
    tech = techs.get(str(b["member"]), {})
    status, reason = _status(b, related, now, bool(tech.get("closed")))
    start = int(b["start"])
    tz = zone_of(ledger, tech)
    local = _local(ledger, start, tz)
    names = ledger.rule("services")
    return {
        "booking": b["id"], "status": status, "member": b.get("ref", ""),
        "technician": tech.get("code", ""), "technician_id": b["member"],
        "technician_name": tech.get("name", ""), "branch": id_node(str(b["member"])),
        "service": b.get("service", ""),
        "service_name": str(names.get(b.get("service", ""), {}).get("name", "")),
        "at": local.strftime("%Y-%m-%dT%H:%M"), "day": local.date().isoformat(),
        "end": _hm(ledger, start + int(b["minutes"]) * 60_000, tz), "start": start,
        "minutes": int(b["minutes"]), "made_at": b["node"], "op": b["op"], "reason": reason,
    }


def _related(ledger: Ledger, ids: list[str]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for i in range(0, len(ids), 500):
        part = ids[i:i + 500]
        out += [json.loads(b) for (b,) in ledger.storage.conn.execute(
            f"SELECT body FROM entries WHERE ref {views.in_(part)} "
            "AND kind IN ('booking_decision', 'booking_cancel') ORDER BY id", part)]
    return out


def _views(ledger: Ledger, bookings: list[dict[str, Any]]) -> list[dict[str, Any]]:
    bookings = [b for b in bookings if _slot_ok(b)]
    techs = {t["id"]: t for t in technicians(ledger)}
    related = _related(ledger, [b["id"] for b in bookings])
    by_ref: dict[str, list[dict[str, Any]]] = {}
    for e in related:
        by_ref.setdefault(str(e.get("ref")), []).append(e)
    now = ledger.clock.wall()
    out = [_view(ledger, b, by_ref.get(b["id"], []), techs, now) for b in bookings]
    return sorted(out, key=lambda v: (v["start"], v["branch"], v["technician"], v["booking"]))


def _text(value: Any, what: str) -> str:
    """A text argument stripped, or InvalidInput (a number or None from a caller of
    the library was an AttributeError)."""
    if not isinstance(value, str):
        raise InvalidInput(f"{what} is text, not {str(value)[:40]!r}")
    return value.strip()


def _booking_entry(ledger: Ledger, booking: str) -> dict[str, Any]:
    booking = _text(booking, "a booking id")
    if not ID.match(booking):
        raise InvalidInput(f"{booking!r} is not a booking id like 01J5Q8ZK3T7XM.SH01")
    row = ledger.storage.conn.execute(
        "SELECT body FROM entries WHERE id = ? AND kind = 'booking'", (booking.strip(),)
    ).fetchone()
    if row is None:
        raise NotFound(f"no booking {booking.strip()} is known at this branch")
    return dict(json.loads(row[0]))


def show(ledger: Ledger, booking: str) -> dict[str, Any]:
    """One booking and its status as this replica knows it."""
    b = _booking_entry(ledger, booking)
    if not _slot_ok(b):
        raise NotFound(f"booking {b['id']} names no valid slot (written by {b['node']})")
    return _views(ledger, [b])[0]


def list_bookings(ledger: Ledger, *, member: str | None = None, technician: str | None = None,
                  branch: str | None = None, day: str | None = None) -> list[dict[str, Any]]:
    """Bookings by member, technician, technician's branch and day (the start's, in
    this branch's zone), by start time. A member's list is every booking they made;
    the others read the technicians' books as far back as a slot to come can be."""
    conn = ledger.storage.conn
    rows: list[dict[str, Any]]
    if member is not None:
        group = views.member_group(conn, member)
        rows = [json.loads(b) for (b,) in conn.execute(
            f"SELECT body FROM entries WHERE ref {views.in_(group)} AND kind = 'booking' "
            "ORDER BY id", group)]
    else:
        techs = ([technician_of(ledger, technician)] if technician is not None
                 else [t["id"] for t in technicians(ledger, branch)])
        since = ""
        if day is not None:
            since = id_floor(max(0, parse_when(ledger, f"{day}T00:00")
                                 - (HORIZON_DAYS + 1) * 86_400_000))
        rows = [e for t in techs for e in _book(ledger, t, since) if e["kind"] == "booking"]
    out = _views(ledger, rows)
    if technician is not None and member is not None:
        tid = technician_of(ledger, technician)
        out = [v for v in out if v["technician_id"] == tid]
    if branch is not None:
        out = [v for v in out if v["branch"] == branch]
    if day is not None:
        out = [v for v in out if v["day"] == day]
    return out


def technician_of(ledger: Ledger, ref: str) -> str:
    return str(technician(ledger, ref)["id"])


def starting(ledger: Ledger, from_ms: int, to_ms: int) -> list[dict[str, Any]]:
    """Bookings confirmed or pending whose slot starts in [from_ms, to_ms): what a
    reminder before the appointment is for (crdtledger.notices)."""
    since = id_floor(max(0, from_ms - (HORIZON_DAYS + 1) * 86_400_000))
    rows = [e for t in technicians(ledger) for e in _book(ledger, t["id"], since)
            if e["kind"] == "booking" and _slot_ok(e) and from_ms <= e["start"] < to_ms]
    return [v for v in _views(ledger, rows) if v["status"] in ("confirmed", "pending")]


def slots(ledger: Ledger, technician_ref: str, day: str, service: str | None = None
          ) -> list[str]:
    """Free start times ('14:00') of the technician on `day` for `service` (default
    60 minutes), every SLOT_STEP_MIN, as this branch knows the technician's book: a
    slot held or asked for (pending) is not offered; past times are not either."""
    tech = technician(ledger, technician_ref)
    minutes = 60
    if service is not None:
        minutes = _service_minutes(ledger, service)
    try:
        the_day = date.fromisoformat(day)
    except ValueError:
        raise InvalidInput(f"not a date like 2026-12-03: {day!r}") from None
    open_min, close_min = parse_hours(tech["hours"])
    now = ledger.clock.wall()
    tz = zone_of(ledger, tech)
    today = _local(ledger, now, tz).date()
    if not today - timedelta(days=1) <= the_day <= today + timedelta(days=HORIZON_DAYS + 1):
        # Past days hold no free slot and `book` refuses beyond the horizon; and a day
        # at either end of the calendar has midnights no time stamp holds (a 500).
        return []
    book = _book(ledger, tech["id"], _floor(ledger, now))
    taken = dict(held(book, tech["id"]))
    cancelled = {str(e.get("ref")) for e in book if e["kind"] == "booking_cancel"}
    decided = {str(e.get("ref")) for e in book
               if e["kind"] == "booking_decision" and e["node"] == tech["branch"]}
    for e in book:  # requests not decided yet: not offered to someone else meanwhile
        if (e["kind"] == "booking" and e["id"] not in decided and e["id"] not in cancelled
                and e["node"] != tech["branch"] and _slot_ok(e)):
            taken[e["id"]] = (int(e["start"]), int(e["start"]) + int(e["minutes"]) * 60_000)
    midnight = datetime.combine(the_day, time(0), tz)
    index = _Slots(taken)  # sorted once for the day's start times
    out = []
    for m in range(open_min, close_min - minutes + 1, SLOT_STEP_MIN):
        wall = midnight + timedelta(minutes=m)
        start = int(wall.timestamp() * 1000)
        end = start + minutes * 60_000
        if _local(ledger, start, tz).replace(tzinfo=None) != wall.replace(tzinfo=None):
            continue  # a time the clocks skip going forward: no such slot
        if start > now and _conflict(ledger, index, start, end) is None:
            out.append(f"{m // 60:02d}:{m % 60:02d}")
    return out


# --- writing ------------------------------------------------------------------------------


def _service_minutes(ledger: Ledger, service: str) -> int:
    svc = ledger.rule("services").get(service)
    if svc is None:
        raise NotFound(f"service {service} is not in the price list")
    minutes = svc.get("minutes")
    if not isinstance(minutes, int):
        raise BookingRefused(f"service {service} has no duration in the price list (its "
                             "minutes): it cannot be booked until the head office sets one")
    return minutes


def _fits(ledger: Ledger, tech: Mapping[str, Any], service: str, start: int,
          minutes: int) -> str | None:
    """Why the technician cannot take this slot regardless of other bookings, or None."""
    if service not in tech["services"]:
        return (f"technician {tech['code']} ({tech['name']}) does not do {service} (does: "
                f"{', '.join(tech['services'])})")
    if tech["closed"]:
        return (f"technician {tech['code']} ({tech['name']}) works at {tech['branch']}, "
                "closed for good: choose a technician of another branch")
    if not tech["active"]:
        return f"technician {tech['code']} ({tech['name']}) no longer takes bookings"
    open_min, close_min = parse_hours(tech["hours"])
    tz = zone_of(ledger, tech)
    local = _local(ledger, start, tz)
    first = local.hour * 60 + local.minute
    end_local = _local(ledger, start + minutes * 60_000, tz)
    last = end_local.hour * 60 + end_local.minute
    if end_local.date() != local.date():  # only the next midnight itself, for hours to 24:00
        last = 24 * 60 if last == 0 and end_local.date() == local.date() + timedelta(1) \
            else 24 * 60 + 1
    if first < open_min or last > close_min:
        return (f"{local.strftime('%H:%M')}-{end_local.strftime('%H:%M')} is outside "
                f"technician {tech['code']}'s hours {tech['hours']}")
    return None


def book(ledger: Ledger, operator: str, member: str, technician_ref: str, service: str,
         when: str) -> dict[str, Any]:
    """Book `service` with a technician at `when` (local time, '2026-12-03T14:00').
    At the technician's branch: confirmed now if the slot is free, else refused
    (SlotTaken). Elsewhere: a request, pending until that branch decides."""
    ledger.authorise(operator, "booking.write")
    if not views.member_exists(ledger, member):
        raise NotFound(f"unknown member {member}")
    member = ledger.survivor_of(member)
    gone = ledger._gone(member)  # left or erased: their bookings were cancelled
    if gone:
        raise InvalidInput(gone)
    tech = technician(ledger, technician_ref)
    start = parse_when(ledger, when, zone_of(ledger, tech))
    minutes = _service_minutes(ledger, service)
    now = ledger.clock.next_ms()  # the booking entry's own time
    if start <= now:
        raise BookingRefused(f"{when} has passed: book a time to come")
    if start > now + HORIZON_DAYS * 86_400_000:
        raise BookingRefused(f"{when} is more than {HORIZON_DAYS} days ahead")
    why = _fits(ledger, tech, service, start, minutes)
    if why is not None:
        raise BookingRefused(why)
    if operator == self_service_of(ledger.node):
        _self_service_limits(ledger, member, now)
    end = start + minutes * 60_000
    own = tech["branch"] == ledger.node

    def plan() -> tuple[list[Any], dict[str, Any]]:
        # Read inside the write transaction: two tills of this branch booking the same
        # slot at once are serialised here, and the second is refused.
        taken = _conflict(ledger, held(_book(ledger, tech["id"], _floor(ledger, now)),
                                       tech["id"]), start, end, tz=zone_of(ledger, tech))
        if taken is not None:
            where = "" if own else f" (as this branch knows from {tech['branch']})"
            raise SlotTaken(f"technician {tech['code']} ({tech['name']}) is booked {taken} "
                            f"that day{where}: choose another time or technician")
        entry = ledger._entry("booking", tech["id"], op=operator, ref=member,
                              service=service, start=start, minutes=minutes)
        return [ledger._entry_write(entry)], entry

    entry = ledger._commit(plan)
    return _views(ledger, [entry])[0]


def _self_service_limits(ledger: Ledger, member: str, now: int) -> None:
    me = self_service_of(ledger.node)
    mine = [v for v in list_bookings(ledger, member=member) if v["op"] == me]
    if sum(v["status"] in ("confirmed", "pending") and v["start"] > now for v in mine
           ) >= SELF_SERVICE_OPEN:
        raise BookingRefused(f"{SELF_SERVICE_OPEN} bookings to come are the most made here: "
                             "cancel one first, or ask the branch")
    today = ledger.today()
    if sum(ledger.storage.day_of(id_time_ms(v["booking"])) == today for v in mine
           ) >= SELF_SERVICE_PER_DAY:
        raise BookingRefused(f"{SELF_SERVICE_PER_DAY} bookings made here today are the most "
                             "a day: ask the branch")


def cancel(ledger: Ledger, operator: str, booking: str, member: str | None = None
           ) -> dict[str, Any]:
    """Cancel a booking, at any branch; `member`: the member asking, who must be the
    booking's (self-service)."""
    ledger.authorise(operator, "booking.write")
    b = _booking_entry(ledger, booking)
    if member is not None:
        group = views.member_group(ledger.storage.conn, member)
        if b.get("ref") not in group:
            raise PermissionDenied(f"booking {b['id']} is not member {member}'s")
    current = show(ledger, b["id"])
    if current["status"] in ("cancelled", "refused", "no_show", "done"):
        raise BookingRefused(f"booking {b['id']} is {current['status']}: nothing to cancel")
    if int(b["start"]) <= ledger.clock.next_ms():
        raise BookingRefused(f"booking {b['id']} has started: it can no longer be cancelled")

    def plan() -> tuple[list[Any], dict[str, Any]]:
        entry = ledger._entry("booking_cancel", b["member"], op=operator, ref=b["id"])
        return [ledger._entry_write(entry)], entry

    entry = ledger._commit(plan)
    return {**show(ledger, b["id"]), "entry": entry["id"]}


def member_cancellations(ledger: Ledger, operator: str, member: str, why: str
                         ) -> list[Any]:
    """The writes cancelling the bookings to come of `member`'s group, for the commit
    of its exit (退会) or erasure: their confirmed slots held the technicians for
    nobody, and nothing said why. In that commit, so a crash cannot leave them."""
    now = ledger.clock.wall()
    return [ledger._entry_write(ledger._entry(
                "booking_cancel", v["technician_id"], op=operator, ref=v["booking"],
                reason=why))
            for v in list_bookings(ledger, member=member)
            if v["status"] in ("confirmed", "pending") and v["start"] > now]


def noshow(ledger: Ledger, operator: str, booking: str) -> dict[str, Any]:
    """The member did not come: recorded by the technician's branch, once started."""
    ledger.authorise(operator, "booking.write")
    b = _booking_entry(ledger, booking)
    branch = id_node(str(b["member"]))
    if branch != ledger.node:
        raise BookingRefused(f"only {branch}, the technician's branch, records a no-show "
                             f"for booking {b['id']}")
    current = show(ledger, b["id"])
    if current["status"] not in ("confirmed", "done"):
        raise BookingRefused(f"booking {b['id']} is {current['status']}: only a confirmed "
                             "booking can be a no-show")
    if int(b["start"]) > ledger.clock.next_ms():
        raise BookingRefused(f"booking {b['id']} has not started yet")
    if ledger.clock_judge is not None and not ledger.clock_judge():
        # Started by this PC's clock alone: one 4 days ahead marked a booking 2 days on
        # as a no-show, for good. Waits as the month-end cut does (NodeCore).
        raise BookingRefused(f"booking {b['id']} has started by this PC's clock, which no "
                             "other branch has confirmed yet: a no-show waits until one "
                             "connected has, or until a manager confirms the clock "
                             "(crdtledger clock confirm, 本机时钟已核对)")

    def plan() -> tuple[list[Any], dict[str, Any]]:
        entry = ledger._entry("booking_decision", b["member"], op=operator, ref=b["id"],
                              status="no_show")
        return [ledger._entry_write(entry)], entry

    entry = ledger._commit(plan)
    return {**show(ledger, b["id"]), "entry": entry["id"]}


def decide(ledger: Ledger, timed: bool = True) -> list[dict[str, Any]]:
    """The technician's branch's pass: decide every request for its technicians not
    decided yet, in id order (the same order on every run and replay), and release
    the slots of confirmed bookings cancelled elsewhere, once each (a release ends the
    hold whatever its id: `held`). One commit; returns the decisions written (none,
    most of the time).

    `timed` False leaves out what this PC's clock alone must not decide: the requests
    (a slot passed by a clock days ahead is refused for good) and the cancellations
    of slots to come held for members gone; they stay pending. The node core passes
    False until the clock is confirmed (NodeCore._clock_confirmed), as for the
    month-end cut. Releases go on: they read no clock."""
    mine = technicians(ledger, ledger.node)
    if not mine:
        return []
    now = ledger.clock.wall()
    since = _floor(ledger, now)

    def plan() -> tuple[list[Any], list[dict[str, Any]]]:
        out: list[dict[str, Any]] = []
        for tech in mine:
            book_ = _book(ledger, tech["id"], since)
            taken = held(book_, tech["id"])
            index = _Slots(taken)  # taken, sorted: one bisect a request, not a sort
            decided, cancelled = _settled(book_, ledger.node)
            for e in book_:
                if (e["kind"] != "booking" or e["node"] == ledger.node or e["id"] in decided
                        or e["id"] in cancelled or not timed):
                    continue
                if not _slot_ok(e):  # a malformed request: refused, never confirmed
                    out.append(ledger._entry("booking_decision", tech["id"], ref=e["id"],
                                             status="refused", reason="no valid slot"))
                    continue
                start, minutes = int(e["start"]), int(e["minutes"])
                why = _customer_gone(ledger, e)
                if why is not None:
                    pass  # left or erased since asking: refused, the slot not held
                elif start <= now:
                    why = f"the time had passed when {ledger.node} heard of it"
                elif start > now + HORIZON_DAYS * 86_400_000:
                    # As book() refuses here: the window `held` is read in assumes a
                    # confirmation is minted at most HORIZON_DAYS before its slot. A
                    # requester whose clock ran ahead could ask further out, and once
                    # its confirmation left the window the slot would be given twice.
                    why = (f"it was more than {HORIZON_DAYS} days ahead when {ledger.node} "
                           "heard of it")
                else:
                    why = _fits(ledger, tech, str(e.get("service", "")), start, minutes)
                if why is None:
                    clash = _conflict(ledger, index, start, start + minutes * 60_000,
                                      tz=zone_of(ledger, tech))
                    if clash is not None:
                        why = (f"technician {tech['code']} ({tech['name']}) was booked "
                               f"{clash} already")
                extra: dict[str, Any] = ({"status": "confirmed", "start": start,
                                          "minutes": minutes} if why is None
                                         else {"status": "refused", "reason": why[:200]})
                d = ledger._entry("booking_decision", tech["id"], ref=e["id"], **extra)
                if why is None:
                    taken[e["id"]] = (start, start + minutes * 60_000)
                    index.add(e["id"], start, start + minutes * 60_000)
                out.append(d)
            for bid, gone in (_held_for_nobody(ledger, book_, taken, cancelled, now)
                              if timed else ()):
                out.append(ledger._entry("booking_cancel", tech["id"], ref=bid, reason=gone))
                cancelled.add(bid)
            for bid in sorted(taken):
                if bid in cancelled:
                    out.append(ledger._entry("booking_decision", tech["id"], ref=bid,
                                             status="released"))
        return [ledger._entry_write(d) for d in out], out

    # Nothing to write is the usual case: no transaction, no record.
    written = ledger._commit(plan) if _anything(ledger, mine, since, timed) else []
    return written


def _settled(book_: list[dict[str, Any]], node: str) -> tuple[set[str], set[str]]:
    """The bookings in a technician's book this branch (`node`) has confirmed or refused,
    and those cancelled anywhere."""
    decided = {str(e.get("ref")) for e in book_
               if e["kind"] == "booking_decision" and e["node"] == node
               and e.get("status") in ("confirmed", "refused")}
    cancelled = {str(e.get("ref")) for e in book_ if e["kind"] == "booking_cancel"}
    return decided, cancelled


def _anything(ledger: Ledger, mine: list[dict[str, Any]], since: str, timed: bool = True
              ) -> bool:
    """Whether `decide` has anything to write (read without a write transaction)."""
    for tech in mine:
        book_ = _book(ledger, tech["id"], since)
        taken = held(book_, tech["id"])
        decided, cancelled = _settled(book_, ledger.node)
        if timed and any(e["kind"] == "booking" and e["node"] != ledger.node
                         and e["id"] not in decided and e["id"] not in cancelled
                         for e in book_):
            return True
        if any(bid in cancelled for bid in taken):
            return True
        if timed and _held_for_nobody(ledger, book_, taken, cancelled, ledger.clock.wall()):
            return True
    return False


def _customer_gone(ledger: Ledger, booking: Mapping[str, Any]) -> str | None:
    """Why the member a booking is for can no longer be served (left or erased, as
    their merge survivor), as a cancellation says it, or None."""
    member = booking.get("ref")
    if not isinstance(member, str):
        return None
    survivor = ledger.survivor_of(member)
    row = ledger.storage.conn.execute("SELECT body FROM members WHERE id = ?",
                                      (survivor,)).fetchone()
    profile = json.loads(row[0]) if row else {}
    if erased(profile):
        return "member erased"
    if ledger.has_left(survivor):  # by the decisions, not the flag (Membership.has_left)
        return "member left"
    return "member deleted" if profile.get("deleted") else None


def _held_for_nobody(ledger: Ledger, book_: list[dict[str, Any]],
                     taken: Mapping[str, tuple[int, int]], cancelled: set[str], now: int
                     ) -> list[tuple[str, str]]:
    """(booking, why) of the slots to come that hold the technician for a member who
    has left or was erased since: an exit or erasure cancels the bookings its branch
    knows of (member_cancellations), not one confirmed here before it arrived; the
    technician's branch cancels those, once each."""
    requests = {e["id"]: e for e in book_ if e["kind"] == "booking"}
    out = []
    for bid, (start, _end) in sorted(taken.items()):
        if bid in cancelled or start <= now or bid not in requests:
            continue
        why = _customer_gone(ledger, requests[bid])
        if why is not None:
            out.append((bid, why))
    return out


def double_booked(ledger: Ledger) -> list[str]:
    """Problems for a checker: technicians this replica shows holding two overlapping
    slots (never, by the argument in the module docstring)."""
    out = []
    for tech in technicians(ledger):
        for a, b in overlaps(held(_book(ledger, tech["id"]), tech["id"])):
            out.append(f"technician {tech['ref']} double-booked: {a} and {b}")
    return out
