"""The chain's rules: versions of each kind, the one in force on a day, and the
shape checks that keep a bad rule from breaking operations at other nodes."""

from __future__ import annotations

import json
import re
from datetime import datetime
from decimal import Decimal
from functools import lru_cache
from pathlib import Path
from typing import Any, NoReturn

from crdtledger import localtime, notices
from crdtledger.auth import Auth
from crdtledger.commit import put
from crdtledger.errors import InvalidAmount, InvalidInput, LedgerError
from crdtledger.hlc import CLOCK_OFF_LIMIT_MS, MAX_CLOCK_SKEW_MS
from crdtledger.inputs import (
    CONTROLS,
    TURNS,
    blank,
    check_date,
    check_text,
    printable,
    seen_as,
)
from crdtledger.model import (
    CARD_TYPES,
    DEFAULT_RULES,
    ID,
    LEVEL_BASES,
    PAY_CODE,
    PURSE_METHODS,
    RULE_KINDS,
    SERVICE_CODE,
    normalise,
)
from crdtledger.money import check_amount

# The store's meta key of what Rules._moved_by_hand keeps: this machine's boot, its
# clock minus the boot clock then, how far it had been put forward by hand; and the
# hold of the rules (Rules._held_high: "held", "seen", "seen_moved").
CLOCK_MOVED = "clock_moved"


@lru_cache(maxsize=1)
def _boot_id() -> str | None:
    """This machine's boot (Linux), None where there is none to read: the clock moved
    by hand is then kept within one process only. Read once: a process outlives no
    boot, and every sale asks (Rules.rules_day)."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text(encoding="ascii").strip()
    except (OSError, ValueError):
        return None


def _kept_moved(text: str | None) -> dict[str, Any]:
    """What Rules._moved_by_hand kept, {} for nothing readable."""
    try:
        kept = json.loads(text or "{}")
    except ValueError:
        return {}
    return kept if isinstance(kept, dict) else {}


def _kept_held(kept: dict[str, Any]) -> tuple[int, int, int] | None:
    """The hold of the rules a process kept (Rules._keep_held): held, seen, seen_moved,
    each a whole number of ms from 0; None for none kept (a store from before it) or
    anything else there."""
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0
               for v in (kept.get(k) for k in ("held", "seen", "seen_moved"))):
        return None
    return kept["held"], kept["seen"], kept["seen_moved"]


def _held_steady(held: tuple[int, int, int] | None) -> bool:
    """A hold the next process reads as the whole high water it finds, as it reads none:
    the clock not moved at the last look, nor the furthest reading held below it. An
    honest PC's always is, so its sales write no more than they did."""
    return held is None or (held[0] == held[1] and held[2] == 0)


# The highest `rev` a version may carry (a billion versions of one rule kind): honest
# writers count up by one; a larger or malformed value reads as none (0).
MAX_REV = 1_000_000_000


def _rev(record: Any) -> int:
    """A version's `rev` as replicated (Yjs numbers come back as floats): a whole
    number from 1 to MAX_REV, else 0, as a version written before the field has.
    Whatever a misbehaving writer put there, never an exception."""
    # model.normalise reads an integral float as the int it is; NaN, infinities and
    # fractions stay floats and count for nothing.
    value = normalise(record.get("rev")) if isinstance(record, dict) else None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_REV:
        return 0
    return value


class Rules(Auth):
    """Rules are versions, never overwritten: the one in force is the latest
    `effective_from` on or before the day; among versions of one `effective_from`,
    the one written after seeing the others (its `rev`), then by id
    (docs/format.md, Rules)."""

    # The furthest this store has read that was not read on a clock put forward by
    # hand (`_moved_by_hand`): the high water this process found, and each later rise
    # of it less how far the clock stood moved when it rose. With the high water then
    # and how far the clock stood moved then. Kept in the store too (`_keep_held`), and
    # taken up by the next process at its first look: the command line runs one
    # operation a process, and each took the high water minted while moved as held.
    _held_high: int = 0
    _seen_high: int | None = None
    _seen_moved: int = 0
    # The CLOCK_MOVED text last read by `_keep_held`, and its hold (`_kept_held`).
    _held_read: tuple[str | None, tuple[int, int, int] | None] = (None, None)

    # --- rules --------------------------------------------------------------

    def rule(self, kind: str, day: str | None = None) -> Any:
        """The version of a rule in force on `day` (default today), else the default."""
        if kind not in RULE_KINDS:
            raise InvalidInput(f"unknown rule kind {kind!r}")
        if kind == "revocations":
            # Not the latest written: the highest-numbered list the chain CA signed
            # (Replica.revocation_list).
            return {"crl": self.revocation_list()}  # type: ignore[attr-defined]
        day = day or self.rules_day()
        if kind in ("goods", "checkin"):
            # Folded per code, so two concurrent additions are both kept: a goods
            # version names only the items it adds or changes (crdtledger.goods); a
            # checkin version holds every activity still open its writer saw (set_rule
            # refuses one dropping an open one; ended ones stay as they were), so two
            # activities set at two branches apart are both kept (the later whole set
            # dropped the other, acknowledged and gone, its check-ins refused).
            catalogue: dict[str, Any] = {}
            for eff, _rid, body in self._versions(kind):
                if eff <= day:
                    catalogue.update(body)
            return catalogue
        current = DEFAULT_RULES[kind]
        for eff, _rid, body in self._versions(kind):
            if eff <= day:
                current = body
        return current

    def rules_day(self, today: str | None = None) -> str:
        """The day the rules in force now are read as of: today (`today`, when the
        caller has it), or, while this PC's clock reads more than MAX_CLOCK_SKEW_MS
        before its furthest reading (HybridClock.high_water_ms) and nobody vouches for
        it (the peers connected, or an operator today: as `check_clock_for`), the day of
        that furthest reading. A cashier who set a lone PC's clock back a day sold at
        yesterday's prices and discounts (12,160 fen for a service raised to 15,010
        that morning) and topped up with a promotion ended that day: rules never go
        back to an earlier version than the furthest day this store has read. Sales go
        on; only their rules do not roll back.

        Put forward by hand instead (HybridClock.moved_by_hand), the day it would be
        had it not been (`unmoved_day`), until a peer vouches or an operator confirms,
        as the daily limits count: a cashier alone moved the clock to next week and
        took its promotion's bonus today. Every reader of the rules asks this day
        (`rule`'s default, a sale's rules, a coupon's first day), so one sale never
        mixes two days' rules. The furthest reading counts less how far the clock stood
        put forward when it was read: put forward a week, one sale, and set back, the
        PC read next week's rules until next week. Kept in the store (CLOCK_MOVED), as
        how far the clock was moved is: the command line's next process, one operation
        a process, holds to the same day as the running node."""
        clock = self.clock
        at = clock.next_ms()
        if today is None:
            today = self.storage.day_of(at)
        # Not kept in the store from here (`keep`): a read of the rules, and a refused
        # sale, write nothing; the limits' paths keep what was seen.
        moved = self._moved_by_hand(keep=False)
        unmoved = min(today, self.storage.day_of(at - moved)) if moved else today
        furthest = clock.high_water_ms()
        if clock.since_boot_ms is not None:
            furthest = min(furthest, self._held_high)
        if furthest - (at - moved) > MAX_CLOCK_SKEW_MS and not self.clock_vouched:
            far = self.storage.day_of(furthest)
            if far > unmoved and not self.clock_confirmed_today():
                return far
        return unmoved

    def unmoved_day(self, today: str | None = None) -> str:
        """The day it would be had this PC's clock not been put forward by hand since a
        peer or an operator last vouched for it (HybridClock.moved_by_hand): today
        (`today`, when the caller has it) when it was not. A daily limit counts from
        the start of this day (and so everything booked since, today's and the moved
        days'): a cashier alone put the clock forward a day at a time and topped up
        2,500,000 fen without an approver in five minutes, under a limit of 500,000 a
        day."""
        at = self.clock.next_ms()
        if today is None:
            today = self.storage.day_of(at)
        moved = self._moved_by_hand()
        return min(today, self.storage.day_of(at - moved)) if moved else today

    def moved_ahead(self, day: str) -> int | None:
        """How far (ms) this PC's clock stands put forward by hand, unvouched
        (`_moved_by_hand`), when that books what is written now on a later day than
        it would be (`day`, the day it is booked on): a sale's `moved`, from which its
        refund period counts (Payments.refund_closed). Put forward 30 days, a sale's
        id said so, and it was refunded 20 real days later inside a 7-day period. None
        otherwise, so an honest PC's sales are written as they were. Read as `rules_day`,
        which every sale asks first, just left it (HybridClock.moved_ms: 0 once vouched
        for): reading it again cost a sale 11 us."""
        moved = self.clock.moved_ms
        if not moved or self.storage.day_of(self.clock.next_ms() - moved) >= day:
            return None
        return moved

    def as_unmoved(self, days: list[str], today: str) -> list[str]:
        """`days` (one per thing done), each on or after `unmoved_day` counted as
        `today`: what a once-a-day limit counts on a clock put forward by hand."""
        since = self.unmoved_day(today)
        if since == today:
            return days
        return [today if since <= d else d for d in days]

    def _moved_by_hand(self, keep: bool = True) -> int:
        """HybridClock.moved_by_hand, as 0 once a peer connected vouches for the clock
        or an operator confirmed it today; kept in the store with the boot it was seen
        on (unless not `keep`), so a restart on the same boot (the command line runs
        one operation a process) still sees the clock moved since, against the boot
        clock."""
        clock = self.clock
        if clock.since_boot_ms is None:
            return clock.moved_ms
        boot = _boot_id()
        kept = _kept_moved(self.storage.meta.get(CLOCK_MOVED))
        if clock.gap_ms is None:  # the first reading here: as the store kept it
            if isinstance(kept.get("moved"), int):
                clock.moved_ms = max(0, kept["moved"])
            if boot is not None and kept.get("boot") == boot and isinstance(kept.get("gap"),
                                                                             int):
                clock.gap_ms = kept["gap"]
        if self._seen_high is None:  # this process's first look: where the last left off
            held = _kept_held(kept)
            if held is not None:
                self._held_high = max(self._held_high, held[0])
                self._seen_high, self._seen_moved = held[1], held[2]
            self.storage.before_commit.append(self._keep_held)
        moved = clock.moved_by_hand()
        vouched = self.clock_vouched
        if moved and (vouched or self.clock_confirmed_today()):
            clock.vouched()
            moved, vouched = 0, True
        high = clock.high_water_ms()
        if self._seen_high is None or vouched:  # read before it looked, or vouched for
            self._held_high = max(self._held_high, high)
        elif high > self._seen_high:  # minted since the last look, moved as it was then
            self._held_high = max(self._held_high, high - self._seen_moved)
        self._seen_high, self._seen_moved = high, moved
        gap = clock.gap_ms
        if keep and gap is not None and (kept.get("moved") != moved or kept.get("boot") != boot
                                or not isinstance(kept.get("gap"), int)
                                or abs(kept["gap"] - gap) > CLOCK_OFF_LIMIT_MS):
            with self.storage.transaction():
                self.storage.set_meta(CLOCK_MOVED, json.dumps(
                    {"boot": boot, "gap": gap, "moved": moved, **self._rules_hold()}))
        return moved

    def _rules_hold(self) -> dict[str, int]:
        return {"held": self._held_high, "seen": self._seen_high or 0,
                "seen_moved": self._seen_moved}

    def _keep_held(self) -> None:
        """Before each commit: the hold of the rules as this process's last look left it,
        kept in CLOCK_MOVED, so the next process takes the high water minted since less
        how far the clock stood moved then, as this one would. Only in a transaction
        that commits (a refused sale, a read of the rules, write nothing), and only
        when the next process would read it otherwise (`_held_steady`): compared, not
        parsed, on every commit."""
        if self._seen_high is None:
            return
        text = self.storage.meta.get(CLOCK_MOVED)
        if self._held_read[0] != text:
            self._held_read = (text, _kept_held(_kept_moved(text)))
        hold = (self._held_high, self._seen_high, self._seen_moved)
        kept = self._held_read[1]
        if hold == kept or (_held_steady(hold) and _held_steady(kept)):
            return
        text = json.dumps({**{k: v for k, v in _kept_moved(text).items()
                              if k in ("boot", "gap", "moved")}, **self._rules_hold()})
        self.storage.set_meta(CLOCK_MOVED, text)
        self._held_read = (text, hold)

    def _local_minute(self, unmoved: bool = False) -> str:
        """Now in the chain's time zone, to the minute, as activities' windows are: the
        time the next entry will carry (`next_ms`), not this PC's clock, which a peer's
        later id had put behind it (a check-in after an activity's end passed).
        `unmoved`: less how far the clock was put forward by hand, unvouched (as
        `unmoved_day`), the minute an activity's opening is judged by."""
        at = self.clock.next_ms()
        if unmoved:
            at -= self._moved_by_hand(keep=False)
        return datetime.fromtimestamp(at / 1000, self.storage.tz).strftime("%Y-%m-%dT%H:%M")

    def payment_methods(self, day: str | None = None) -> tuple[str, ...]:
        """The codes of the till's payment methods in force, in the rule's order (the
        first is the default)."""
        return tuple(str(m["code"]) for m in self.rule("payment_methods", day))

    def _versions(self, kind: str) -> list[tuple[str, str, Any]]:
        """Every version of a rule, (effective_from, id, body), the one in force last:
        by effective_from, then `rev`, then id.

        Not by id alone: ids are the writer's clock, and a head office whose clock ran
        ahead and was put back mints ids lower than before, so the owner's correction
        of a typo, with the same effective_from, would lose to the typo forever. `rev`
        is one above the highest of the kind its writer held (set_rule): a version
        written after seeing another comes after it whatever the clocks said; the id
        orders only versions written apart (same rev). An order of the versions held,
        whatever the order they came in: the same on every replica that holds them."""
        if self._rules is None:
            rows = self.storage.conn.execute(
                "SELECT id, kind, effective_from, body FROM rules").fetchall()
            revs = self._revs([rid for rid, _k, _eff, _body in rows])
            cache: dict[str, list[tuple[str, str, Any]]] = {}
            for rid, k, eff, body in sorted(rows, key=lambda r: (r[2], revs.get(r[0], 0), r[0])):
                cache.setdefault(k, []).append((eff, rid, json.loads(body)))
            self._rules = cache
        return self._rules.get(kind, [])

    def _revs(self, ids: list[str]) -> dict[str, int]:
        """The `rev` of each version (0 for none). The projection keeps a version's
        body only (as audit.py reads `by`): read from the rules document, once per
        change of the rules."""
        if not ids:
            return {}
        records = self.storage.doc("rules").plain_values([("rules", rid) for rid in ids])
        return {rid: _rev(rec) for (_root, rid), rec in records.items()}

    def _next_rev(self, kind: str) -> int:
        """The `rev` of a version of `kind` written now: one above every one held."""
        held = self._revs([rid for _eff, rid, _body in self._versions(kind)])
        return min(max(held.values(), default=0) + 1, MAX_REV)

    def set_rule(self, operator: str, kind: str, body: Any, effective_from: str | None = None
                 ) -> str:
        self.authorise(operator, "rules.manage")
        if kind not in RULE_KINDS:
            raise InvalidInput(f"unknown rule kind {kind!r}; one of {sorted(RULE_KINDS)}")
        _check_rule(kind, body)
        eff = effective_from or self.today()
        check_date(eff, "effective_from")
        if kind == "notifications":  # what the shape check cannot know: the branches
            try:
                notices.check_branches(body, self.rule("branches", eff))
            except InvalidInput as e:
                raise InvalidInput(f"rule notifications was not set: {e}") from None
        if kind == "checkin":
            # Versions are folded per code (`rule`): one leaving out an activity still
            # open would be taken as removing nothing. Said rather than ignored. One
            # whose window has ended may be left out (else a chain's 200 activities
            # over the years took every version's room, and none could be ended).
            now = self._local_minute()
            dropped = sorted(c for c, a in self.rule(kind, eff).items()
                             if c not in body and isinstance(a, dict)
                             and str(a.get("to", "")) > now)
            if dropped:
                raise InvalidInput(f"activities {', '.join(dropped)} are open: an activity "
                                   "is not removed, it ends at its window's end (set its "
                                   "`to`)")
            # Named, where written (as Membership.set_activity names it): the whole
            # body through `rule set checkin` took a name of spaces. Only an activity
            # this version adds or changes: one held as it was stays, so a chain that
            # holds a blank-named one still sets the others.
            held = self.rule(kind, eff)
            for code, a in body.items():
                if a != held.get(code) and blank(str(a.get("name", ""))):
                    raise InvalidInput(f"{code}: name is required (not spaces alone)")
        rid = self.clock.mint()
        # `by`: who set it, for the audit trail (the projection keeps only the body).
        # `rev`: after which versions it was written (_versions).
        record = {"kind": kind, "effective_from": eff, "body": json.dumps(body, sort_keys=True),
                  "by": operator, "rev": self._next_rev(kind)}
        self._write(put("rules", "rules", rid, record))
        if kind == "revocations":
            # In force here at once, as a peer's list is when it is applied: the head
            # office that revoked a branch must not take its records meanwhile.
            self.refresh_revocations()  # type: ignore[attr-defined]
        return rid


def _check_values(body: Any) -> None:
    """What any rule may hold: text, whole numbers, true/false, lists and maps of them.
    A lone surrogate (valid JSON) was kept in the record and set aside at every
    replica, so the rule set was answered and never in force; a float (8800.0, 1e4)
    was kept as sent where money is whole fen. Decimals go as text ("0.95")."""
    stack = [body]
    while stack:
        v = stack.pop()
        if isinstance(v, dict):
            stack += list(v.keys()) + list(v.values())
        elif isinstance(v, list):
            stack += v
        elif isinstance(v, str):
            check_text(v, "a rule's text", limit=len(v))
            if CONTROLS.search(v):  # message templates keep their line breaks
                # ESC p opened every branch's cash drawer from a service's name on its
                # receipts, ESC = disabled the printer, ESC [ cleared the terminal of
                # whoever printed a receipt at the command line.
                raise InvalidInput(f"{v[:40]!r}: a rule's text holds no control "
                                   "characters (printer or terminal commands)")
            if TURNS.search(v):
                # As the levels' and branches' names: "\u202e疗足" showed as 足疗 turned
                # on every counter button and receipt, a promotion's, a payment
                # method's or the shop's name likewise. No rule text needs one.
                raise InvalidInput(f"{printable(v[:40])!r}: a rule's text holds no "
                                   "direction overrides (they turn what follows around)")
        elif isinstance(v, float):
            raise InvalidInput(f"{v!r}: a rule holds whole numbers (fen, counts), and "
                               'decimals as text such as "0.95"')
        elif v is not None and not isinstance(v, int):
            raise InvalidInput(f"a rule holds text, numbers, lists and maps, not {v!r}")


# A rate as the rules keep it: a whole number, or decimal text of ASCII digits
# (Decimal() also takes "５", " 5" and "1e3", which every reader would then parse).
_DECIMAL_TEXT = re.compile(r"[0-9]{1,7}(\.[0-9]{1,6})?\Z")


def _decimal(value: Any) -> Decimal:
    if type(value) is int or (isinstance(value, str) and _DECIMAL_TEXT.match(value)):
        return Decimal(value)
    raise InvalidInput(f"{value!r} is not a number like 0.95")


def _whole(value: Any) -> int:
    """A rule's amount in fen, or a count: int() would silently cut 12.7 (or yuan typed
    as 128.5), read true as 1 and take the text "10000", all kept in the rule as sent."""
    if (isinstance(value, bool) or not isinstance(value, int | float)
            or (isinstance(value, float) and not value.is_integer())):
        raise InvalidAmount(f"{value!r} is not a whole number")
    return int(value)


# Points that make one yuan of stored value: whole, as text or a number (the default
# is "100"). A conversion divides by it, so 1.5 or true must not pass as 1 (int() of
# them did), nor "１００" (int() takes full-width digits) be kept as typed.
_POINTS_PER_YUAN = re.compile(r"[0-9]{1,7}\Z")
MAX_POINTS_PER_YUAN = 1_000_000


def points_per_yuan(body: Any) -> int:
    """The `conversion` rule's rate: a whole number of points from 1 to
    MAX_POINTS_PER_YUAN, given as an int or as ASCII digits; InvalidInput otherwise
    (at a spend too: a rule an older build let through is refused, not cut down)."""
    value = body.get("points_per_yuan") if isinstance(body, dict) else None
    if type(value) is int:
        rate = value
    elif isinstance(value, str) and _POINTS_PER_YUAN.match(value):
        rate = int(value)
    else:
        raise InvalidInput(f"points per yuan of the conversion rule are a whole number "
                           f"like \"100\", not {value!r}")
    _require(0 < rate <= MAX_POINTS_PER_YUAN,
             f"points per yuan are from 1 to {MAX_POINTS_PER_YUAN}")
    return rate


def _text(value: Any, limit: int) -> bool:
    return isinstance(value, str) and len(value) <= limit


def _require(ok: bool, what: str) -> None:
    """A rule check that holds under `python -O` too (which strips `assert`)."""
    if not ok:
        raise InvalidInput(what)


# What may not be in one line of text: control characters and the other characters
# str.splitlines() breaks at (NEL, U+2028, U+2029). A regex class's body, shared by the
# API's schemas (operations.ONE_LINE) and the mail gateway (peer.gateways.one_line).
LINE_BREAKS = "\\x00-\\x1f\\x7f-\\x9f\\u2028\\u2029"
_ONE_LINE = re.compile(f"[^{LINE_BREAKS}]*\\Z")
_BASE64 = re.compile(r"^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?\Z")


def _check_rule(kind: str, body: Any) -> None:
    """Enough shape checking that a bad rule cannot break operations at other nodes.
    The kind's own checks first (their sentences name the setting), then what any rule
    may hold (_check_values)."""
    try:
        if kind == "services":
            _require(isinstance(body, dict) and bool(body), "services are a non-empty map")
            for code, svc in body.items():
                _require(isinstance(code, str) and bool(SERVICE_CODE.match(code)),
                         f"service code {code!r} is not 1-20 letters, digits, _ or -")
                check_amount(_whole(svc["price"]), allow_zero=True)
                # Optional (the code is what entries carry), but on every receipt and
                # the counter's buttons: 10,000 characters were taken from the price list.
                _require(_text(svc.get("name", ""), 60),
                         f"{code}: name is text of at most 60 characters")
                # How long a booking holds a technician (crdtledger.bookings); optional:
                # a service without it is sold but not booked.
                _require("minutes" not in svc or (
                    type(svc["minutes"]) is int and 5 <= svc["minutes"] <= 720),
                    f"{code}: minutes are a whole number from 5 to 720")
        elif kind == "levels":
            _require(isinstance(body, list) and bool(body), "levels are a non-empty list")
            for lv in body:
                check_amount(_whole(lv["threshold"]), allow_zero=True)
                _require(0 < _decimal(lv["discount"]) <= 1,
                         "a discount is above 0 and at most 1")
                # Bounded, so finite: an "Infinity" multiplier or earn rate would
                # overflow in every debit at every branch once the rule replicates.
                _require(0 <= _decimal(lv["points_multiplier"]) <= 100,
                         "a points multiplier is from 0 to 100")
                # Both are copied into every sale's entry, where replicas take at most
                # 200 characters of text: a longer one set every sale aside at every
                # other branch.
                # Not spaces alone: the name is what a sale's entry says of its level.
                # Nor invisible characters alone or turned backwards, as the API's
                # one-line names (operations.ONE_LINE).
                _require(_text(lv["name"], 40) and not blank(lv["name"])
                         and TURNS.search(lv["name"]) is None,
                         "a level's name is text of 1 to 40 characters, not spaces alone "
                         "nor invisible characters, without direction overrides")
                _require(len(str(lv["discount"])) <= 12 and len(str(lv["points_multiplier"]))
                         <= 12, "a discount or points multiplier is at most 12 characters, "
                         "like 0.95")
            # One level a name: "金卡" and "金卡 " read the same in every sale's entry and
            # in the reports by level, and a member pinned to "金卡" got the first.
            seen: set[str] = set()
            for lv in body:
                name = seen_as(lv["name"]).strip()
                _require(name not in seen, f"two levels are named {lv['name'].strip()}")
                seen.add(name)
            # One level a threshold: of two at one, a member reaching it got whichever
            # the list put last (views.level sorts by threshold alone), so the
            # order of the rows, not the owner, chose the discount (金卡 set to 0
            # beside 普通会员 gave every new member 10% off).
            starts: dict[int, str] = {}
            for lv in body:
                first = starts.setdefault(int(lv["threshold"]), lv["name"])
                _require(first == lv["name"], f"levels {first.strip()} and "
                         f"{lv['name'].strip()} start at one threshold, "
                         f"{int(lv['threshold'])} fen")
        elif kind == "promotions":
            _require(isinstance(body, list), "promotions are a list")
            for p in body:
                check_amount(_whole(p["min"]))
                check_amount(_whole(p["bonus"]))
                _require(_text(p.get("name", ""), 40),
                         "a promotion's name is text of at most 40 characters")
        elif kind == "branches":
            # Shown on receipts, pages and notices at every branch.
            _require(isinstance(body, dict), "the rule is a map of branch id to name")
            for node, name in body.items():
                _require(_text(node, 40) and bool(node) and _text(name, 40)
                         and not blank(name) and TURNS.search(name) is None,
                         f"branch {node!r}: its name is text of 1 to 40 characters, not "
                         "spaces alone nor invisible characters, without direction "
                         "overrides")
                # One line: the name is in the daily report's mail subject (a header)
                # and in receipts' and lists' lines.
                _require(_ONE_LINE.match(node) is not None and _ONE_LINE.match(name)
                         is not None, f"branch {node!r}: its id and name are one line "
                         "each, without line breaks or control characters")
        elif kind == "card_types":
            _require(isinstance(body, dict), "the rule is a map of card type to its fee")
            for t, terms in body.items():
                _require(t in CARD_TYPES, f"card type {t!r} is one of {list(CARD_TYPES)}")
                _require(isinstance(terms, dict), f"{t}: the terms are a map, e.g. "
                         '{"fee": 1000}')
                check_amount(_whole(terms.get("fee", 0)), allow_zero=True)
        elif kind == "earn":
            _require(0 <= _decimal(body["points_per_yuan"]) <= 1000,
                     "points per yuan are from 0 to 1000")
            _require(0 <= _whole(body["expire_days"]) <= 36500,  # far below timedelta's limit
                     "points expire after 0 to 36500 days")
        elif kind == "conversion":
            points_per_yuan(body)
        elif kind == "approval":
            check_amount(_whole(body["topup_limit"]))
            check_amount(_whole(body["correction_limit"]))
            check_amount(_whole(body.get("stock_adjust_limit", 1)))
        elif kind == "goods":
            _check_goods(body)
        elif kind == "level_basis":
            _require(body["basis"] in LEVEL_BASES, f"the basis is one of {LEVEL_BASES}")
        elif kind == "payment_methods":
            _require(isinstance(body, list) and 0 < len(body) <= 20,
                     "payment methods are a list of 1 to 20")
            codes: set[str] = set()
            for m in body:
                code = m["code"]
                _require(isinstance(code, str) and bool(PAY_CODE.match(code)),
                         f"method code {code!r} is not 1-16 lower-case letters, digits or _")
                _require(code not in PURSE_METHODS,
                         f"{code} is paid from the member's purses, not at the till")
                _require(code not in codes, f"method {code} appears twice")
                codes.add(code)
                for k in ("name_zh", "name_en"):
                    _require(isinstance(m.get(k, ""), str) and len(m.get(k, "")) <= 40,
                             f"{code}: {k} is text of at most 40 characters")
        elif kind == "notifications":
            notices.check_rule(body)
        elif kind == "revocations":
            # Base64 text only: whether it is a CRL signed by the chain CA is checked
            # by each node before installing it (peer/chain.py), not here.
            _require(isinstance(body, dict) and isinstance(body["crl"], str),
                     "crl is text")
            _require(bool(_BASE64.match(body["crl"])), "crl is not base64")
        elif kind == "settings":
            _require(isinstance(body, dict), "the rule is a map")
            # Every page and command shows times in it (crdtledger.localtime).
            _require("timezone" not in body or localtime.known_zone(body["timezone"])
                     is not None, f"timezone {body.get('timezone')!r} is no IANA time "
                     "zone (e.g. Asia/Shanghai)")
        elif kind == "refunds":
            _require(isinstance(body, dict) and type(body.get("days")) is int
                     and 0 <= body["days"] <= 3650,
                     "days are a whole number from 0 (no limit) to 3650")
        elif kind in ("referral", "checkin", "exit"):
            from crdtledger.membership import RULE_CHECKS  # it builds on this module

            RULE_CHECKS[kind](body)
        else:
            _require(isinstance(body, dict), "the rule is a map")
    except KeyError as e:
        _malformed(kind, f"{e.args[0]} is missing")
    except (TypeError, ValueError, ArithmeticError):
        # Python's own words ("'int' object is not subscriptable") tell an owner nothing.
        _malformed(kind, "a value is not of the kind or form the rule takes")
    except LedgerError as e:  # ours, and already a sentence
        _malformed(kind, str(e))
    _check_values(body)


def _malformed(kind: str, why: str) -> NoReturn:
    """A malformed rule is refused with what is wrong and what a good one looks like."""
    if kind not in RULE_EXAMPLES:  # goods: `crdtledger goods add` writes its versions
        raise InvalidInput(f"rule {kind} is malformed: {why}")
    example = json.dumps(RULE_EXAMPLES[kind], ensure_ascii=False, separators=(", ", ": "))
    raise InvalidInput(f"rule {kind} is malformed: {why}; a version looks like {example}")


_GOODS_TEXT = {"name": 60, "barcode": 40, "unit": 10, "category": 40}


def _check_goods(body: Any) -> None:
    """A version of the goods catalogue: code -> item (crdtledger.goods), each item
    whole, so that a sale at any branch can read its price, cost and stock id."""
    _require(isinstance(body, dict) and 0 < len(body) <= 1000,
             "goods are a map of 1 to 1000 codes")
    for code, item in body.items():
        _require(isinstance(code, str) and bool(SERVICE_CODE.match(code)),
                 f"goods code {code!r} is not 1-20 letters, digits, _ or -")
        _require(isinstance(item, dict), f"{code}: an item is a map")
        _require(isinstance(item.get("stock"), str) and bool(ID.match(item["stock"])),
                 f"{code}: stock is an id like 01J5Q8ZK3T7XM.HQ")
        _require(isinstance(item.get("name"), str) and 0 < len(item["name"]) <= 60,
                 f"{code}: name is text of 1 to 60 characters")
        for k, limit in _GOODS_TEXT.items():
            _require(isinstance(item.get(k, ""), str) and len(item.get(k, "")) <= limit,
                     f"{code}: {k} is text of at most {limit} characters")
        for k in ("price", "cost", "points_price", "low_stock"):
            check_amount(_whole(item.get(k, 0)), allow_zero=True)


# What a version of each rule kind looks like (but goods, whose items carry the stock
# ids `goods add` mints): the command line's `rule set --help`
# prints them, and tests/test_rules_examples.py sets each one, so they cannot drift
# from what `_check_rule` takes. A version replaces the kind's previous one whole
# (amounts in fen; discounts and multipliers as text, exact).
RULE_EXAMPLES: dict[str, Any] = {
    "branches": {"SH01": "南京西路店", "SH02": "徐家汇店", "HZ01": "杭州西湖店"},
    "services": {"FOOT60": {"name": "足疗 60 分钟", "price": 12800, "minutes": 60},
                 "HEAD30": {"name": "头疗 30 分钟", "price": 6800}},
    "levels": [{"name": "普通会员", "threshold": 0, "discount": "1", "points_multiplier": "1"},
               {"name": "金卡", "threshold": 300000, "discount": "0.9",
                "points_multiplier": "1.5"}],
    "level_basis": {"basis": "topped"},
    "promotions": [{"name": "充500送30", "min": 50000, "bonus": 3000}],
    "earn": {"points_per_yuan": "1", "expire_days": 365},
    "conversion": {"points_per_yuan": "100"},
    "card_types": {"stored_value": {"fee": 0}, "points": {"fee": 1000}},
    "approval": {"topup_limit": 500000, "correction_limit": 10000,
                 "stock_adjust_limit": 10000},
    "payment_methods": [{"code": "cash", "name_zh": "现金", "name_en": "cash"},
                        {"code": "wechat", "name_zh": "微信", "name_en": "WeChat Pay"}],
    "settings": {"timezone": "Asia/Shanghai"},
    "notifications": {"daily": [{"branch": "all", "at": "21:00",
                                 "to": ["owner@example.com"]}], "low_balance": 5000},
    "referral": {"reward": "points", "points": 500},
    "checkin": {"OPEN": {"name": "开业签到", "from": "2026-12-01T09:00",
                         "to": "2026-12-31T21:00", "points": 10, "repeat": "daily",
                         "per_day": 1}},
    "exit": {"stored_value": "refund"},
    "refunds": {"days": 30},
    "revocations": {"crl": ""},
}


def rule_help() -> str:
    """The formats of the rule kinds, for `crdtledger rule set --help`."""
    lines = ["rule formats (each version replaces the kind's last one whole; amounts in "
             "fen):", ""]
    for kind in sorted(RULE_EXAMPLES):
        body = json.dumps(RULE_EXAMPLES[kind], ensure_ascii=False, separators=(",", ":"))
        lines.append(f"  crdtledger rule set {kind} --json-body '{body}'")
    lines += ["", "revocations is written by `crdtledger chain revoke`; goods by "
              "`crdtledger goods add`; checkin by `crdtledger activity set`."]
    return "\n".join(lines)
