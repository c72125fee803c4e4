"""Membership workflows: referral (老带新), check-in activities (签到), member exit (退会).

All three are ledger entries (immutable, keyed by their writer, replicated like any
entry), so every replica derives the same state from the same entries whatever order
they reach it in; the few things a branch must decide alone are decided by the one
branch that may (the escrow idea again).

Referral (老带新)
    A `referral` entry records the referrer of a member (field `referrer`), written
    when the member joins (member.add --referrer) or right after. One referrer per
    member: a second referral is refused where the first is known; two written
    concurrently at cut-off branches are both kept and the first by id counts (the
    other shows as `void`, and is never rewarded). The reward (rule `referral`: points,
    bonus value or a coupon, for the referrer) needs two levels of approval, each by an
    `approval` entry (`ref` = the referral, `step` "1", "2" or "reject"): level 1 by an
    operator holding `referral.approve1`, level 2 by another operator holding
    `referral.approve2`; never by the operator who recorded the referral. Two
    permissions, not one: a chain can give level 1 to its store managers and level 2 to
    head office only, which is what two levels of approval are for; the built-in
    owner and manager roles hold both, and the two approvers must still differ.
    Who grants: only the branch that recorded the referral (its entry's node) writes the
    reward (a `reward` entry, or a `coupon` entry with `reason` referral, `ref` = the
    referral), checking in its write transaction that none exists; the write rule
    `referral-reward` refuses on every replica a reward whose referral another branch
    wrote. So a referral approved twice, or at two branches at once, is rewarded once.
    An approval counts only if its operator holds that level's permission (as this
    replica knows the operators) and did not record the referral.
    The recording branch grants in the commit of the level-2 approval when it gives it,
    else when the approvals reach it (Ledger.housekeeping, `referral.grant`, or its
    back-office page). A rejection seen before the grant means nothing is granted.

Check-in activities (签到)
    Set by head office as the rule `checkin` (code -> name, window `from`-`to` in the
    chain's local time, `points`, `repeat` "once" or "daily" with `per_day` times a
    day). A check-in is a `checkin` entry of this branch (field `activity`) whose
    points are this branch's rights, expiring like earned points. Refused outside the
    window and past the limit as this branch sees it. While branches are cut off a
    member could check in at two of them beyond the limit; once they see each other
    the surplus ones (the later ones by id) are reversed by the branch that wrote them
    (a `checkin` entry taking the points back, `ref` = the surplus one: each branch
    lowers only its own rights), at housekeeping or `checkin.reconcile`. The
    attendance report marks them.

Member exit (退会)
    An `exit` entry is an application (`step` "exit" or "return", `reason`), by an
    operator holding `member.exit`; an `approval` entry (`step` "approve" or "reject")
    decides it, by another operator holding `member.exit.approve`. Approving an exit
    settles the stored value by the rule `exit` (`stored_value`: "refund" pays the
    principal back in cash, money out of the till; "forfeit" makes it income; bonus
    value is never paid out, it is forfeited either way) in an `exit_settle` entry
    (`step` refund or forfeit, `paid` the cash paid back) that lowers the member's
    cash, bonus and points. Only rights held here can be lowered, so the approving
    branch first gathers the member's value held at other branches (RightsElsewhere:
    the node asks the holders for it, as for a debit, and the approval runs again);
    cut off from a holder, the approval is refused with the holder named. Settlement
    (crdtledger.settlement) reads a refund like a sale (value collected at A and paid
    back at B: A owes B) and a forfeit like a negative correction (the collecting
    branch keeps it). The member's profile then says `exited` (hidden from the
    counter's search, refused for sales: members._live_member); a `return` approved
    clears it. Erasure of personal data is a separate operation.
"""

from __future__ import annotations

import json
import re
import sqlite3
from bisect import bisect_left
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import date, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal, cast, get_args

from pycrdt import Map

from crdtledger import bookings, escrow, localtime, views
from crdtledger.commit import Write, note_edit
from crdtledger.coupons import PREFIX as COUPON_PURSE
from crdtledger.coupons import Coupons, purse_of
from crdtledger.errors import InvalidInput, NotCaughtUp, NotFound, PermissionDenied
from crdtledger.hlc import id_time_ms
from crdtledger.inputs import check_text
from crdtledger.model import ID, PERMISSIONS, SERVICE_CODE, member_doc, owner_of
from crdtledger.money import check_amount

if TYPE_CHECKING:
    from crdtledger.ledger import Ledger

# --- rules -------------------------------------------------------------------------------

RewardKind = Literal["none", "points", "bonus", "coupon"]
REWARD_KINDS: tuple[RewardKind, ...] = get_args(RewardKind)
Repeat = Literal["once", "daily"]
REPEATS: tuple[Repeat, ...] = get_args(Repeat)
ExitRule = Literal["refund", "forfeit"]
EXIT_RULES: tuple[ExitRule, ...] = get_args(ExitRule)

MAX_PER_DAY = 100  # check-ins an activity may allow a member a day
# A reward taken back for a void referral, and given back once it counts again
# (Membership.settle_referral_rewards).
VOID_REASON = "void"
RESTORED_REASON = "restored"
ReferralStatus = Literal["pending", "approved1", "approved", "granted", "rejected", "void"]
ExitStatus = Literal["pending", "approved", "rejected"]

MINUTE = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}\Z")


def _ok(cond: bool, what: str) -> None:
    if not cond:
        raise InvalidInput(what)


def _whole(value: Any, what: str, *, zero: bool = True) -> int:
    _ok(isinstance(value, int) and not isinstance(value, bool), f"{what} is a whole number")
    _ok(value >= (0 if zero else 1), f"{what} is {'zero or more' if zero else 'above zero'}")
    return check_amount(value, allow_zero=zero)


def check_referral_rule(body: Any) -> None:
    """The rule `referral`: what the referrer gets once a referral is approved twice."""
    _ok(isinstance(body, dict), "the referral rule is a map")
    kind = body.get("reward")
    _ok(kind in REWARD_KINDS, f"reward is one of {', '.join(REWARD_KINDS)}")
    if kind == "points":
        _ok(_whole(body.get("points"), "points", zero=False) > 0, "points above 0")
    elif kind == "bonus":
        _whole(body.get("bonus"), "bonus (fen)", zero=False)
    elif kind == "coupon":
        _whole(body.get("off"), "off (fen)", zero=False)
        _ok(1 <= _whole(body.get("valid_days", 30), "valid_days") <= 3650,
            "valid_days from 1 to 3650")


def check_activity(code: Any, a: Any) -> None:
    _ok(isinstance(code, str) and bool(SERVICE_CODE.match(code)),
        f"activity code {code!r} is not 1-20 letters, digits, _ or -")
    _ok(isinstance(a, dict), f"{code}: an activity is a map")
    _ok(isinstance(a.get("name"), str) and 0 < len(a["name"]) <= 60,
        f"{code}: name is text of 1 to 60 characters")
    for k in ("from", "to"):
        _ok(isinstance(a.get(k), str) and bool(MINUTE.match(a[k])),
            f"{code}: {k} is a local time like 2026-12-03T09:00")
        try:
            datetime.fromisoformat(a[k])
        except ValueError:
            raise InvalidInput(f"{code}: {k} {a[k]} is not a time") from None
    _ok(a["from"] < a["to"], f"{code}: the window ends before it starts")
    _whole(a.get("points", 0), f"{code}: points")
    _ok(a.get("repeat") in REPEATS, f"{code}: repeat is once or daily")
    if a["repeat"] == "daily":
        _ok(1 <= _whole(a.get("per_day", 1), f"{code}: per_day") <= MAX_PER_DAY,
            f"{code}: per_day from 1 to {MAX_PER_DAY}")


def check_checkin_rule(body: Any) -> None:
    """The rule `checkin`: activity code -> activity, the whole set in each version."""
    _ok(isinstance(body, dict) and len(body) <= 200, "check-in activities are a map of "
                                                     "at most 200")
    for code, a in body.items():
        check_activity(code, a)


def check_exit_rule(body: Any) -> None:
    _ok(isinstance(body, dict) and body.get("stored_value") in EXIT_RULES,
        f"stored_value is one of {', '.join(EXIT_RULES)}")


RULE_CHECKS = {"referral": check_referral_rule, "checkin": check_checkin_rule,
               "exit": check_exit_rule}


# --- pure derivations: the same on every replica -------------------------------------------


def referral_status(approvals: list[dict[str, Any]], granted: bool) -> tuple[
        ReferralStatus, dict[str, str]]:
    """A referral's status from its approvals in id order, and who gave each level.
    Level 1 is the first "1"; level 2 the first "2" after it by another operator. A
    rejection counts unless the reward was granted already (then it came too late)."""
    who: dict[str, str] = {}
    rejected = False
    for a in approvals:
        step = a.get("step")
        if step == "reject":
            rejected = True
            who.setdefault("reject", str(a["op"]))
        elif step == "1" and "1" not in who:
            who["1"] = str(a["op"])
        elif step == "2" and "1" in who and "2" not in who and a["op"] != who["1"]:
            who["2"] = str(a["op"])
    if granted:
        return "granted", who
    if rejected:
        return "rejected", who
    if "2" in who:
        return "approved", who
    return ("approved1" if "1" in who else "pending"), who


# The text fields each kind of entry is read by here.
_NEEDS = {"referral": ("referrer",), "approval": ("step",), "exit": ("step",),
          "exit_settle": ("step",)}


def _joined_ms(conn: sqlite3.Connection, member: str) -> int:
    """When the member first registered (the wall time of its id; of the first of its
    merge group: the duplicate registered first is when she joined)."""
    return min(id_time_ms(m) for m in views.member_group(conn, member))


def _well_formed(e: Mapping[str, Any]) -> bool:
    kind = e.get("kind")
    return (all(isinstance(e.get(f), str) for f in _NEEDS.get(str(kind), ()))
            and (kind != "exit" or e["step"] in ("exit", "return")))


def _kind_given(e: Mapping[str, Any]) -> str | None:
    """What a referral's grant gives, by its deltas (its fields are text its writer
    chose): "coupon", "points" or "bonus", or None if nothing."""
    if e.get("kind") == "coupon":
        return "coupon" if _given(e, COUPON_PURSE) > 0 else None
    return next((p for p in ("points", "bonus") if _given(e, p) > 0), None)


def _left_of(grant: Mapping[str, Any], purse: str, given: int, before: list[int]) -> int:
    """What a void referral's grant (`given` in `purse`) is to keep, the earlier grants
    of its purse to its referrer that void it giving `before` (net of what their own
    branches took back): what it gives beyond the most they give (the referrer keeps
    the larger reward: head office raised the rule between two branches' grants apart,
    and both stood); a coupon, nothing (the first by id counts)."""
    if grant["kind"] == "coupon" or not before:
        return 0
    return max(0, given - max(before))


def _given(e: Mapping[str, Any], purse: str) -> int:
    """What entry `e` raises in `purse` (in any coupon's, for COUPON_PURSE)."""
    return sum(_int(d[2]) for d in e.get("deltas") or ()
               if isinstance(d, list | tuple) and len(d) == 3 and isinstance(d[0], str)
               and (d[0] == purse or (purse == COUPON_PURSE and d[0].startswith(purse))))


def _int(v: Any) -> int:
    return v if isinstance(v, int) and not isinstance(v, bool) else 0


def allowed_today(activity: Mapping[str, Any], earlier: list[str], day: str) -> int:
    """How many more check-ins the activity allows a member who checked in on the days
    `earlier` (one item per check-in) on `day`."""
    return _left_today(activity, bool(earlier), earlier.count(day))


def _left_today(activity: Mapping[str, Any], any_earlier: bool, that_day: int) -> int:
    """How many more check-ins the activity allows a member who checked in before (if
    `any_earlier`), `that_day` times on the day asked of (`allowed_today`)."""
    if activity["repeat"] == "once":
        return 0 if any_earlier else 1
    return max(0, int(activity.get("per_day", 1)) - that_day)


def _per_day(activity: Mapping[str, Any]) -> int | None:
    """A daily activity's check-ins a day (checked when set); None for a `once` one,
    whose `per_day` nothing checks (a text there made every check-in a 500)."""
    return int(activity.get("per_day", 1)) if activity["repeat"] == "daily" else None


def _limit_of(e: Mapping[str, Any]) -> dict[str, Any] | None:
    """The limit a check-in entry carries, or None (an older entry, or one a liar
    wrote nonsense into: judged by the rule then)."""
    repeat, per_day = e.get("repeat"), e.get("per_day")
    if repeat == "once":
        return {"repeat": repeat}
    if repeat != "daily" or isinstance(per_day, bool) or not isinstance(
            per_day, int) or not 1 <= per_day <= MAX_PER_DAY:
        return None
    return {"repeat": repeat, "per_day": per_day}


class _Reads:
    """One read of referrals' entries, shared by the views of a listing
    (`Membership.referrals`) and by the parts of one view: valid only while nothing is
    written. Each view judged every earlier referral of its newcomer's group with reads
    of its own (its grant, its approvals, its take-backs), so a liar's N back-dated
    copies of one referral, each "granted" by a reward of its own, made the office's
    referral list N^2 reads (23 s at 1,200 copies). Now each referral's entries are read
    once a listing, and what voids a referral once a group (`_Voiders`)."""

    def __init__(self) -> None:
        self.canon: dict[str, str] = {}  # views.canonical's memo
        self.groups: dict[str, tuple[str, ...]] = {}  # member -> views.member_group
        self.referrals: dict[tuple[str, ...], list[dict[str, Any]]] = {}
        self.grants: dict[str, list[dict[str, Any]]] = {}  # referral -> its rewards, coupons
        self.approvals: dict[str, list[dict[str, Any]]] = {}  # referral -> `_approvals`
        self.voiders: dict[tuple[str, ...], _Voiders] = {}


class _Voiders:
    """What the referrals of one newcomer's group void (`Membership._voided_by`), each
    found by one walk of the group when first asked, so that each referral's judgement
    is a look-up, not a walk of every earlier referral: `granted`, by (kind given,
    referrer acting as), the ids and net gifts of the group's referrals approved and
    granted something of that kind to that referrer, in id order (those earlier than a
    granted referral of that kind and referrer void it); `holds`, by node, the first
    referral by id that holds off one not granted recorded there (None: none)."""

    def __init__(self) -> None:
        self.granted: dict[tuple[str, str], tuple[list[str], list[int]]] | None = None
        self.holds: dict[str, str | None] = {}


class Membership(Coupons):
    """Referral, check-in and exit (composed into crdtledger.ledger.Ledger)."""

    # --- shared reads ------------------------------------------------------------------

    def _entries(self, where: str, args: list[Any]) -> list[dict[str, Any]]:
        """The entries matching, by id, less those without the text fields their kind
        is read by (a liar's referral without a referrer, or decision without a step,
        made every page listing them a 500, at every branch)."""
        return [e for (b,) in self.storage.conn.execute(
            f"SELECT body FROM entries WHERE {where} ORDER BY id", args)
            if _well_formed(e := dict(json.loads(b)))]

    def _known(self, member: str) -> dict[str, Any]:
        """The member's profile (exited or not), or NotFound."""
        if not isinstance(member, str) or not ID.match(member):
            raise InvalidInput(f"{str(member)[:40]!r} is not a member id")
        row = self.storage.conn.execute(
            "SELECT body FROM members WHERE id = ?", (member,)).fetchone()
        if row is None:
            raise NotFound(f"unknown member {member}")
        profile: dict[str, Any] = json.loads(row[0])
        if profile.get("deleted"):
            raise InvalidInput(f"member {member} was deleted")
        return profile

    def _check_distinct(self, operator: str, other: str, what: str) -> None:
        if operator == other:
            raise PermissionDenied(f"operator {operator} {what}: another operator must")

    def _earn_expiry(self) -> str | None:
        return self._points_expiry(self.today(), self.rule("earn"))

    # --- referral ----------------------------------------------------------------------

    def check_referrer(self, referrer: str) -> str:
        """The referrer named, checked: a live member (a merged one acts as its
        survivor). For member.add, before it adds anyone."""
        self._known(referrer)
        survivor = views.canonical(self.storage.conn, referrer)
        self._known(survivor)
        if self.has_left(survivor):
            raise InvalidInput(f"member {survivor} has left (退会) and cannot refer anyone")
        # A member added now joins at this clock's time: one who joined later (by a
        # branch's clock far ahead) would be refused by `refer` after the member was
        # added, the cashier told nothing was done.
        joined, now = _joined_ms(self.storage.conn, survivor), self.clock.next_ms()
        if joined > now:
            z = localtime.zone(cast("Ledger", self))
            raise InvalidInput(
                f"{survivor} joined on {localtime.show(joined / 1000, z)}, later than this "
                f"branch's clock reads ({localtime.show(now / 1000, z)}), and cannot have "
                "referred a member joining now: check this PC's clock; nothing was recorded")
        return survivor

    def referral_of(self, member: str) -> dict[str, Any] | None:
        """The member's referral that counts, or None: the first by id of any member
        of its merge group. Duplicates are one person: a newcomer registered at two
        branches apart, by two referrers, was rewarded twice once merged."""
        group = views.member_group(self.storage.conn, member)
        found = self._entries(f"member {views.in_(group)} AND kind = 'referral'", group)
        return found[0] if found else None

    def refer(self, operator: str, member: str, referrer: str) -> dict[str, Any]:
        """Record who referred `member` (once; never themself)."""
        self.authorise(operator, "member.add")
        self._known(member)
        referrer = self.check_referrer(referrer)
        conn = self.storage.conn
        if views.canonical(conn, member) == referrer:
            raise InvalidInput("a member cannot refer themself")
        entry = self._entry("referral", member, referrer=referrer, op=operator)

        def plan() -> tuple[list[Write], dict[str, Any]]:
            first = self.referral_of(member)  # in the transaction: one per member here
            if first is not None:
                raise InvalidInput(f"member {member} was referred already, by "
                                   f"{first['referrer']} ({first['id']})")
            # Recorded when the member joins or right after (design notes, "Membership
            # workflows"): the referrer was a member already. One who joined after her
            # was rewarded for bringing in someone who came first (an old member
            # "referred" by a newer one; two friends each recorded as the other's
            # referrer). By each one's first registration (a merged duplicate's
            # counts), to the millisecond: branches' clocks are kept within minutes of
            # the chain's, and a member added with --referrer is minted after the
            # referrer it read.
            joined, theirs_ms = _joined_ms(conn, member), _joined_ms(conn, referrer)
            if theirs_ms > joined:
                z = localtime.zone(cast("Ledger", self))
                raise InvalidInput(
                    f"{referrer} joined on {localtime.show(theirs_ms / 1000, z)}, after "
                    f"member {member} (on {localtime.show(joined / 1000, z)}), and cannot "
                    "have referred them: a referrer is a member already when the member "
                    "joins; nothing was recorded")
            theirs = self.referral_of(referrer)
            if theirs is not None and views.canonical(
                    conn, str(theirs["referrer"])) == views.canonical(conn, member):
                raise InvalidInput(
                    f"{referrer} was referred by member {member} ({theirs['id']}): two "
                    "members cannot refer each other; nothing was recorded")
            return [self._entry_write(entry)], entry

        return self._commit(plan)

    def _referral(self, referral: str) -> dict[str, Any]:
        if not isinstance(referral, str) or not ID.match(referral):
            raise InvalidInput(f"{str(referral)[:40]!r} is not a referral id")
        found = self._entries("id = ? AND kind = 'referral'", [referral])
        if not found:
            raise NotFound(f"no referral {referral} at this branch")
        return found[0]

    def _grants(self, referral: str, reads: _Reads | None) -> list[dict[str, Any]]:
        """Every reward or coupon entry naming `referral`, by id (read once a `reads`)."""
        if reads is not None and referral in reads.grants:
            return reads.grants[referral]
        found = self._entries("ref = ? AND kind IN ('reward', 'coupon')", [referral])
        if reads is not None:
            reads.grants[referral] = found
        return found

    def _grant_of(self, referral: str, reads: _Reads | None = None) -> dict[str, Any] | None:
        found = self._grants(referral, reads)
        return found[0] if found else None

    @contextmanager
    def _after_referral(self, referral: str) -> Iterator[None]:
        """Book what is written of `referral` after it and every entry naming it (its
        approvals, its grant, what its branch took back or gave back since), as a
        refund after its sale (LedgerBase._booked_after). Read in id order, one minted
        while this PC's clock stood before them (it ran ahead, then was put right)
        came first: a level-2 approval before its level 1 counted for nothing, and a
        take-back before the grant read as the grant itself, the referral "granted"
        again and taken back at every housekeeping pass."""
        named = [i for (i,) in self.storage.conn.execute(
            "SELECT id FROM entries WHERE ref = ?", (referral,))]
        with self._booked_after(referral, *named):
            yield

    def _after_grant(self, referral: str, grant: Mapping[str, Any],
                     reads: _Reads | None = None) -> list[dict[str, Any]]:
        """Every reward or coupon entry naming `referral` but its `grant`, by id: what
        its branch took back of the reward while the referral was void (reason "void")
        and gave back once it counted again ("restored": a reward, or a coupon issued
        anew), `settle_referral_rewards`; from a liar, whatever it wrote (only the
        branch that recorded a referral may write these: write rule referral-reward)."""
        return [e for e in self._grants(referral, reads) if e["id"] != grant["id"]]

    def _void(self, r: Mapping[str, Any], grant: Mapping[str, Any] | None,
              reads: _Reads | None = None) -> bool:
        """Whether referral `r` gives nothing (`_voided_by`)."""
        return self._voided_by(r, grant, reads, first=True) is not None

    def _voided_by(self, r: Mapping[str, Any], grant: Mapping[str, Any] | None,
                   reads: _Reads | None = None, *, first: bool = False) -> list[int] | None:
        """None if referral `r` counts. Else it is void: its referrer merged into the
        member since (referring themself), or an earlier one of the group's referrals
        counts; for `r` granted, what the earlier grants that make it void give (what
        `settle_referral_rewards` leaves of its reward; only the first of them if
        `first`: `_void` asks only whether there is one), else an empty list. Not
        granted, any earlier one not rejected counts (the first by id; one granted, only
        if approved, as below): a copy rejected
        as the duplicate it was voided the honest one once the rejection arrived first,
        and a manager unblocks one a liar's back-dated copy holds by rejecting that.
        Granted, only an earlier one granted too, to the same referrer and giving
        something of the same kind, net of its own branch's take-back (two branches
        apart each rewarded the newcomer): otherwise an honest
        referrer's reward was taken back (a liar's copy for its accomplice, rewarded by
        itself). Only earlier
        ones: a later copy with a reward its branch wrote itself, unapproved (a liar's),
        voided the honest one for good. Approvals and rejections are judged by what
        their operators' roles grant, active or not (`_may_approve`). What voids whom
        is found once a group (`_Voiders`), shared by the views of a listing."""
        reads = _Reads() if reads is None else reads
        conn = self.storage.conn
        referrer = views.canonical(conn, str(r["referrer"]), reads.canon)
        if referrer == views.canonical(conn, str(r["member"]), reads.canon):
            return []
        group = self._group_referrals(str(r["member"]), reads)[0]
        voiders = reads.voiders.setdefault(group, _Voiders())
        if grant is not None:
            if voiders.granted is None:
                voiders.granted = self._granted_in(str(r["member"]), reads)
            kind = _kind_given(grant)
            ids, nets = voiders.granted.get((kind, referrer), ([], [])) if kind else ([], [])
            before = bisect_left(ids, str(r["id"]))  # the earlier ones: only they void
            return nets[:min(before, 1) if first else before] or None
        node = str(r["node"])
        if node not in voiders.holds:
            voiders.holds[node] = self._first_holding(str(r["member"]), node, reads)
        held = voiders.holds[node]
        return [] if held is not None and held < r["id"] else None

    def _group_referrals(self, member: str, reads: _Reads) -> tuple[
            tuple[str, ...], list[dict[str, Any]]]:
        """The member's merge group, and every referral of it, by id."""
        if member not in reads.groups:
            conn = self.storage.conn
            reads.groups[member] = tuple(views.folded_into(
                conn, views.canonical(conn, member, reads.canon)))
        group = reads.groups[member]
        if group not in reads.referrals:
            reads.referrals[group] = self._entries(
                f"member {views.in_(list(group))} AND kind = 'referral'", list(group))
        return group, reads.referrals[group]

    def _granted_in(self, member: str, reads: _Reads
                    ) -> dict[tuple[str, str], tuple[list[str], list[int]]]:
        """`_Voiders.granted` of the member's group: its referrals granted something,
        approved, by kind and referrer, with what each gives net of its own branch's
        take-back, in id order: the same referral rewarded twice to one referrer
        (`_voided_by`). A liar's back-dated copy
        rewarded by itself (for its accomplice, or with nothing in it) took an honest
        referrer's reward back: it must be approved and give this referrer something
        of the same kind, net of what its own branch took back (a liar granted 1
        point, took it back itself, and an honest 50.00 of bonus was taken back whole
        for "another kind"). Of another kind both stand: no measure is common to
        points, bonus and a coupon."""
        granted: dict[tuple[str, str], tuple[list[str], list[int]]] = {}
        for e in self._group_referrals(member, reads)[1]:
            earlier = self._grant_of(str(e["id"]), reads)
            kind = _kind_given(earlier) if earlier is not None else None
            if earlier is None or kind is None or referral_status(
                    self._approvals(e, reads), False)[0] != "approved":
                continue
            purse = COUPON_PURSE if kind == "coupon" else kind
            later = self._after_grant(str(e["id"]), earlier, reads)
            net = _given(earlier, purse) + min(sum(_given(a, purse) for a in later), 0)
            if net > 0:
                to = views.canonical(self.storage.conn, str(e["referrer"]), reads.canon)
                ids, nets = granted.setdefault((kind, to), ([], []))
                ids.append(str(e["id"]))
                nets.append(net)
        return granted

    def _first_holding(self, member: str, node: str, reads: _Reads) -> str | None:
        """The first referral by id of the member's group that holds off a later one
        not granted recorded at `node`, or None. An earlier copy granted holds it off
        only if approved as the granted case asks: a liar's back-dated copy of a pending
        referral, "granted" by a reward of its own with no approval, voided the honest
        one for good. A rejection written at `node` counts against it too: a liar's
        back-dated pending copy held the honest one off, and only head office could
        reject it."""
        for e in self._group_referrals(member, reads)[1]:
            status = referral_status(sorted(
                self._approvals(e, reads) + self._rejected_at(e, node),
                key=lambda a: str(a["id"])), False)[0]
            if status != "rejected" and (
                    self._grant_of(str(e["id"]), reads) is None or status == "approved"):
                return str(e["id"])
        return None

    def _approvals(self, r: Mapping[str, Any], reads: _Reads | None = None
                   ) -> list[dict[str, Any]]:
        """Only approvals that an operator allowed to give them gave count, as this
        replica knows the operators, and never the recorder's own; and only those
        written where the referral was recorded or at head office: an entry's operator
        is text its writer chooses, and a lying branch wrote both approvals of another
        branch's referral in two real managers' names, which that branch then paid."""
        if reads is not None and r["id"] in reads.approvals:
            return reads.approvals[str(r["id"])]
        found = [a for a in self._entries("ref = ? AND kind = 'approval'", [str(r["id"])])
                 if a["op"] != r["op"] and self._decides(str(a["node"]), str(r["node"]))
                 and self._may_approve(str(a["op"]), a.get("step"), str(a["node"]))]
        if reads is not None:
            reads.approvals[str(r["id"])] = found
        return found

    def _rejected_at(self, e: Mapping[str, Any], node: str) -> list[dict[str, Any]]:
        """The rejections of referral `e` written at `node`, where a later copy of it
        was recorded (`_voided_by`), not counted among its approvals already."""
        if self._decides(node, str(e["node"])):
            return []
        return [a for a in self._entries("ref = ? AND kind = 'approval' AND node = ?",
                                         [str(e["id"]), node])
                if a["step"] == "reject" and a["op"] != e["op"]
                and self._may_approve(str(a["op"]), "reject", node)]

    def _copy_later_here(self, r: Mapping[str, Any]) -> bool:
        """Did this branch record a referral of `r`'s newcomer after `r` (by id)?"""
        group = views.member_group(self.storage.conn, str(r["member"]))
        return any(e["id"] > r["id"] for e in self._entries(
            f"member {views.in_(group)} AND kind = 'referral' AND node = ?", [*group, self.node]))

    def _decides(self, node: str, made_at: str) -> bool:
        """May a decision written by `node` on a referral or application made at
        `made_at` count? Where made, or at head office by its writer's certificate,
        revocation aside (`was_head_office`): records a revoked writer signed after its
        revocation are refused on arrival, so a decision held was taken while it stood."""
        return node == made_at or cast("Ledger", self).was_head_office(node)

    def referral_view(self, referral: str, reads: _Reads | None = None) -> dict[str, Any]:
        """Referral `referral` as it stands. `reads`: shared by the views of a listing
        (`referrals`), read while nothing is written."""
        reads = _Reads() if reads is None else reads
        r = self._referral(referral)
        grant = self._grant_of(referral, reads)
        status, who = referral_status(self._approvals(r, reads), grant is not None)
        adjusted = [] if grant is None else self._after_grant(referral, grant, reads)
        back = adjusted[-1] if adjusted and adjusted[-1].get("reason") == VOID_REASON else None
        if status != "rejected" and self._void(r, grant, reads):
            # Nothing to grant; one granted (at two branches apart, or before the
            # merge that made it a second) is taken back by the branch that granted it
            # (`settle_referral_rewards`), as far as the referrer still holds it there.
            status = "void"
        return {"referral": r["id"], "member": r["member"], "referrer": r["referrer"],
                "branch": r["node"], "recorded_by": r["op"],
                "on": self.storage.day_of(int(r["at"])), "status": status,
                "level1": who.get("1", ""), "level2": who.get("2", ""),
                "rejected_by": who.get("reject", "") if status == "rejected" else "",
                "reward": "" if grant is None else grant["id"],
                "taken_back": "" if back is None else back["id"]}

    def _may_approve(self, op: str, step: Any, writer: str) -> bool:
        # A node's built-in owner (owner@NODE) holds every permission at its own node,
        # and only there: the same wherever its approval is read.
        if op.startswith("owner@"):
            perms = PERMISSIONS if op == owner_of(writer) else frozenset()
        else:
            perms = self.granted_to(op)
        if step == "reject":
            return bool(perms & {"referral.approve1", "referral.approve2"})
        return f"referral.approve{step}" in perms

    def referrals(self, status: str | None = None, member: str | None = None
                  ) -> list[dict[str, Any]]:
        """Referrals, newest first; of a member (as referee or referrer) if named."""
        args: list[Any] = []
        where = "kind = 'referral'"
        if member:
            where += " AND (member = ? OR json_extract(body, '$.referrer') = ?)"
            args += [member, member]
        reads = _Reads()  # each referral's entries read once, not once a view of its group
        out = [self.referral_view(str(e["id"]), reads)
               for e in reversed(self._entries(where, args))]
        return [v for v in out if status is None or v["status"] == status]

    def approve_referral(self, operator: str, referral: str, level: int, *,
                         reject: bool = False, reason: str = "") -> dict[str, Any]:
        """Approval `level` 1 or 2 of a referral (holding `referral.approve1` or
        `referral.approve2`; level 2 after level 1, by another operator), or its
        rejection at that level. Granted here at once if this branch recorded it."""
        if level not in (1, 2):
            raise InvalidInput("a referral's approval level is 1 or 2")
        self.authorise(operator, f"referral.approve{level}")
        r = self._referral(referral)
        if not self._decides(self.node, str(r["node"])):
            if reject and self._copy_later_here(r):
                return self._reject_copy(operator, r, reason)
            raise PermissionDenied(f"referral {referral} was recorded at {r['node']}: it is "
                                   "approved or rejected there, or at head office (or "
                                   "rejected where a later referral of the newcomer was)")
        view = self.referral_view(referral)
        status = view["status"]
        if status in ("granted", "rejected", "void"):
            raise InvalidInput(f"referral {referral} is {status} already")
        if operator == r["op"]:
            raise PermissionDenied(f"operator {operator} recorded referral {referral} and "
                                   "cannot approve it: another operator must")
        if reject:
            step = "reject"
        elif status == "approved":
            raise InvalidInput(f"referral {referral} was approved twice already; its reward "
                               f"is granted by {r['node']}, where it was recorded")
        elif level == 1 and status != "pending":
            raise InvalidInput(f"referral {referral} has its level 1 approval already; it "
                               "waits for level 2")
        elif level == 2 and status == "pending":
            raise InvalidInput(f"referral {referral} waits for its level 1 approval first")
        elif level == 2 and operator == view["level1"]:
            raise PermissionDenied(f"operator {operator} gave level 1 of referral "
                                   f"{referral}: level 2 needs another operator")
        else:
            step = str(level)
        reason = check_text(reason, "reason")

        def plan() -> tuple[list[Write], dict[str, Any]]:
            writes = [self._entry_write(entry)]
            if step == "2" and r["node"] == self.node:
                reward = self._reward(r)
                if reward is not None:
                    writes.append(self._entry_write(reward))
            return writes, entry

        with self._after_referral(referral):
            entry = self._entry("approval", str(r["member"]), ref=referral, step=step,
                                reason=reason, op=operator)
            self._commit(plan)
        return self.referral_view(referral)

    def _reject_copy(self, operator: str, r: Mapping[str, Any], reason: str
                     ) -> dict[str, Any]:
        """Reject referral `r`, recorded elsewhere, as the earlier copy of one recorded
        here: it then voids this branch's no more (`_voided_by`), whatever its own
        branch says of it."""
        if operator == r["op"]:
            raise PermissionDenied(f"operator {operator} recorded referral {r['id']} and "
                                   "cannot reject it: another operator must")
        if self._rejected_at(r, self.node):
            raise InvalidInput(f"referral {r['id']} was rejected here already")
        reason = check_text(reason, "reason")
        with self._after_referral(str(r["id"])):
            self._post(self._entry("approval", str(r["member"]), ref=r["id"], step="reject",
                                   reason=reason, op=operator), {})
        return self.referral_view(str(r["id"]))

    def _reward(self, r: Mapping[str, Any]) -> dict[str, Any] | None:
        """The reward entry of referral `r` by the rule in force, or None if the rule
        gives nothing (or it was granted already). Called inside the write transaction."""
        if self._grant_of(str(r["id"])) is not None:
            return None
        rule = self.rule("referral")
        to = views.canonical(self.storage.conn, str(r["referrer"]))
        if self._gone(to):  # erased or left since: a reward there would be stranded
            return None
        op = f"referral@{self.node}"
        kind = rule.get("reward")
        if kind == "points":
            pts = int(rule["points"])
            return self._entry("reward", to, deltas=[("points", self.node, pts)],
                               points=pts, ref=r["id"], reason="referral", op=op,
                               expires=self._earn_expiry())
        if kind == "bonus":
            bonus = int(rule["bonus"])
            return self._entry("reward", to, deltas=[("bonus", self.node, bonus)],
                               bonus=bonus, ref=r["id"], reason="referral", op=op)
        if kind == "coupon":
            last = (date.fromisoformat(self.today())
                    + timedelta(days=int(rule.get("valid_days", 30)) - 1)).isoformat()
            c = self._entry("coupon", to, amount=int(rule["off"]), ref=r["id"],
                            valid_to=last, reason="referral", op=op)
            c["deltas"] = [[purse_of(str(c["id"])), self.node, 1]]
            return c
        return None

    def grant_due_referrals(self, operator: str | None = None) -> list[dict[str, Any]]:
        """Rewards of the referrals this branch recorded that are approved twice and not
        yet granted (approvals given at other branches): the recording branch alone
        grants, once."""
        if operator is not None:
            self.authorise(operator, "referral.approve2")
        done = []
        for r in self._entries("kind = 'referral' AND node = ?", [self.node]):
            if self.referral_view(str(r["id"]))["status"] != "approved":
                continue

            def plan(r: dict[str, Any] = r) -> tuple[list[Write], dict[str, Any] | None]:
                reward = self._reward(r)
                return ([] if reward is None else [self._entry_write(reward)]), reward

            with self._after_referral(str(r["id"])):
                got = self._commit(plan)
            if got is not None:
                done.append(got)
        return done

    def settle_referral_rewards(self) -> list[dict[str, Any]]:
        """Keep the rewards this branch granted for its referrals to what each should
        give now. One void (two branches apart each recorded and rewarded one newcomer;
        a duplicate referred and rewarded, then merged) is taken back: what the referrer
        still holds of it here, points, bonus or the coupon unredeemed, by a `reward`
        entry with reason "void" naming the referral; of an earlier grant of the same
        purse giving less, only as much as it gives (`_left_of`: the referrer keeps the
        larger reward). What was spent first is not recovered (shown as the reward less
        what was taken back). One that counts again (the earlier grant that voided it
        taken back by its own branch: a liar's copy granted, then taken back once ours
        was) is given back what was taken ("restored"; a coupon issued anew on the same
        terms). Once per change of what it should give: a take-back that found less
        held than owed is not tried again, and a liar turning its own grant on and off
        makes this branch write one entry per turn, never more than its own reward."""
        done = []
        for r in self._entries("kind = 'referral' AND node = ?", [self.node]):
            grant = self._grant_of(str(r["id"]))
            if grant is None or grant["node"] != self.node:
                continue
            before = self._voided_by(r, grant)
            adjusted = self._after_grant(str(r["id"]), grant)
            if before is None and not adjusted:
                continue
            if grant["kind"] == "coupon":
                purse, field, given = COUPON_PURSE, "coupon", 1
            elif grant.get("points"):
                purse, field, given = "points", "points", int(grant["points"])
            else:
                purse, field, given = "bonus", "bonus", int(grant.get("bonus") or 0)
            now = given + sum(_given(a, purse) for a in adjusted)
            keep = given if before is None else _left_of(grant, purse, given, before)
            to = views.canonical(self.storage.conn, str(grant["member"]))
            if now > keep and (not adjusted or adjusted[-1]["reason"] != VOID_REASON):
                with self._after_referral(str(r["id"])):
                    done.append(self._take_back(r, grant, adjusted, to, field, now - keep))
            elif now < keep and adjusted and not self._gone(to):
                with self._after_referral(str(r["id"])):
                    done.append(self._give_back(r, grant, to, field, keep - now))
        return done

    def _take_back(self, r: Mapping[str, Any], grant: Mapping[str, Any],
                   adjusted: list[dict[str, Any]], to: str, field: str, owed: int
                   ) -> dict[str, Any]:
        """Take back up to `owed` of referral `r`'s reward from what `to` holds here."""
        group = self._folded(to)
        if len(group) > 1:
            self._owe_sweep(group[1:])
        if field == "coupon":  # the coupon given last: the grant's, or one given back
            coupon = [grant, *(a for a in adjusted if a["kind"] == "coupon")][-1]["id"]
            purse = purse_of(str(coupon))
        else:
            purse = field
        held = sum(self._rights(m, purse).get(self.node, 0) for m in group)
        n = max(0, min(owed, held))
        back = self._entry("reward", to, deltas=[(purse, self.node, -n)] if n else [],
                           ref=r["id"], reason=VOID_REASON, op=f"referral@{self.node}",
                           **{field: n} if field != "coupon" else {"coupon": coupon})
        return self._post(back, {purse: n} if n else {})

    def _give_back(self, r: Mapping[str, Any], grant: Mapping[str, Any], to: str,
                   field: str, n: int) -> dict[str, Any]:
        """Give `to` back `n` of referral `r`'s reward taken while it was void."""
        op = f"referral@{self.node}"
        if field == "coupon":
            entry = self._entry("coupon", to, amount=int(grant.get("amount") or 0),
                                ref=r["id"], valid_to=grant.get("valid_to"),
                                reason=RESTORED_REASON, op=op)
            entry["deltas"] = [[purse_of(str(entry["id"])), self.node, 1]]
        else:
            extra: dict[str, Any] = {field: n}
            if field == "points":  # the grant's expiry, as a coupon keeps its validity:
                extra["expires"] = grant.get("expires")  # a late give-back renews nothing
            entry = self._entry("reward", to, deltas=[(field, self.node, n)], ref=r["id"],
                                reason=RESTORED_REASON, op=op, **extra)
        return self._post(entry, {})

    # --- check-in ----------------------------------------------------------------------

    def activities(self) -> dict[str, Any]:
        return dict(self.rule("checkin"))

    def set_activity(self, operator: str, code: str, activity: Mapping[str, Any]) -> str:
        """Add or change one activity: a new version of the rule `checkin` holding the
        others still open as they are (head office: rules are governance). Ended
        ones stay in force as they were (versions are folded per code) and take no
        room in the version."""
        self.authorise(operator, "rules.manage")
        a = dict(activity)
        # Named, not blank, where it is written: its name is what the counter, the
        # members' page and the attendance report say of it. Not in check_activity,
        # which judges every activity still open again at each version (and the rule
        # as received): a chain holding one named with spaces keeps setting others.
        a["name"] = check_text(a.get("name"), "name", required=True, limit=60)
        check_activity(code, a)
        now = self._local_minute()
        still = {c: v for c, v in self.activities().items() if str(v.get("to", "")) > now}
        return str(self.set_rule(operator, "checkin", {**still, code: a}))

    def _activity(self, code: str) -> dict[str, Any]:
        a = self.activities().get(code)
        if a is None:
            raise NotFound(f"no check-in activity {code}")
        return dict(a)

    def checkin(self, operator: str, activity: str, member: str | None = None, *,
                card: str | None = None, pin: str | None = None) -> dict[str, Any]:
        """签到: the member (by id or card) checks in at the activity, within its window
        and limit; its points are this branch's."""
        self.authorise(operator, "checkin")
        a = self._activity(activity)
        self.check_clock_for(f"a check-in at {activity} (its days and limits)")
        now = self._local_minute()
        if not a["from"] <= now < a["to"]:
            raise InvalidInput(f"activity {activity} ({a['name']}) runs from "
                               f"{a['from'].replace('T', ' ')} to "
                               f"{a['to'].replace('T', ' ')}; it is {now.replace('T', ' ')}")
        if self._local_minute(unmoved=True) < a["from"]:
            # Put forward by hand to its opening (Rules.rules_day): a cashier alone
            # checked members in at next week's activity today, its points given.
            raise NotCaughtUp(
                f"this PC's clock was put forward by hand: activity {activity} opens at "
                f"{a['from'].replace('T', ' ')}, and waits until another branch connects "
                "and confirms the clock, or a manager confirms it (crdtledger clock "
                "confirm, 本机时钟已核对)")
        member, _ = self._resolve(member, card, pin)
        day = self.today()
        pts = int(a.get("points", 0))
        # The limit it is judged by, then and later (`_surplus`): the activity as it
        # stood, not as head office may set it after.
        entry = self._entry("checkin", member, activity=activity, op=operator,
                            deltas=[("points", self.node, pts)], points=pts or None,
                            expires=self._earn_expiry() if pts else None,
                            repeat=a["repeat"], per_day=_per_day(a))

        def plan() -> tuple[list[Write], dict[str, Any]]:
            earlier = self.as_unmoved(self._checkin_days(member, activity), day)
            if allowed_today(a, earlier, day) <= 0:
                raise InvalidInput(
                    f"member {member} checked in at {activity} already" + (
                        "" if a["repeat"] == "once" else
                        f" {a.get('per_day', 1)} time(s) today, the most it allows"))
            return [self._entry_write(entry)], entry

        return self._commit(plan)

    def _checkin_rows(self, member: str | None, activity: str
                      ) -> tuple[list[dict[str, Any]], dict[str, int]]:
        """Every check-in at `activity` (of `member`'s group), in id order, and the
        points each reversed one's reversal took back, by its id."""
        where = "kind = 'checkin' AND json_extract(body, '$.activity') = ?"
        args: list[Any] = [activity]
        if member is not None:
            group = views.member_group(self.storage.conn, member)
            where += f" AND member {views.in_(group)}"
            args += group
        rows = self._entries(where, args)
        reversed_: dict[str, int] = {}
        for e in rows:
            # Only its own writer reverses a check-in (write rule reversal-own).
            if e.get("ref") and str(e["ref"]).endswith(f".{e['node']}"):
                reversed_[str(e["ref"])] = reversed_.get(str(e["ref"]), 0) + int(
                    e.get("points") or 0)
        return [e for e in rows if not e.get("ref")], reversed_

    def _checkins(self, member: str | None, activity: str) -> list[dict[str, Any]]:
        """The check-ins that count (not reversals, not reversed), in id order."""
        rows, reversed_ = self._checkin_rows(member, activity)
        return [e for e in rows if e["id"] not in reversed_]

    def _checkin_days(self, member: str, activity: str) -> list[str]:
        return [self.storage.day_of(int(e["at"])) for e in self._checkins(member, activity)]

    def _surplus(self, activity: str) -> list[dict[str, Any]]:
        """Check-ins beyond the activity's limit, by id order per member (only branches
        cut off from each other write them). Each judged by the limit its writer judged
        it by (its `repeat`, `per_day`): by today's rule, an activity tightened later
        (3 a day to 1) reversed check-ins made within the limit, taking back points
        members had earned."""
        rule_of: dict[str, Any] = {}
        # Per member, her check-ins counted so far by day: each judged in a look-up
        # (a list of her days walked for each made a liar's thousands of one member's
        # check-ins N^2 comparisons at every daily pass and attendance page).
        seen: dict[str, Counter[str]] = {}
        out = []
        for e in self._checkins(None, activity):
            m = views.canonical(self.storage.conn, str(e["member"]))
            day = self.storage.day_of(int(e["at"]))
            a = _limit_of(e)
            if a is None:  # written before check-ins carried it: the rule on its day
                if day not in rule_of:
                    rule_of[day] = self.rule("checkin", day).get(activity)
                a = rule_of[day]
            earlier = seen.setdefault(m, Counter())
            if a is not None and _left_today(a, bool(earlier), earlier[day]) <= 0:
                out.append(e)
            else:  # counted; with no rule (set after its day by the clocks), as it came
                earlier[day] += 1
        return out

    def reconcile_checkins(self, operator: str | None = None) -> list[dict[str, Any]]:
        """Reverse the surplus check-ins this branch wrote (their points are its own
        rights, as far as it still holds them)."""
        if operator is not None:
            self.authorise(operator, "checkin")
        done = []
        for code in self.activities():
            for e in self._surplus(code):
                if e["node"] != self.node:
                    continue
                # In the survivor's name, after this branch's rights of the members
                # merged into it are swept to it: read in the merged member's own name,
                # they had moved, and the reversal took back nothing.
                member = views.canonical(self.storage.conn, str(e["member"]))
                group = self._folded(member)
                if len(group) > 1:
                    self._owe_sweep(group[1:])
                pts = min(int(e.get("points") or 0),
                          sum(self._rights(m, "points").get(self.node, 0) for m in group))
                # Booked after the check-in it reverses: one made while this PC ran
                # ahead was reversed by an id dated before it, and the month's closing
                # gave the member points taken back before she had them.
                with self._booked_after(e["id"]):
                    rev = self._entry("checkin", member, activity=code, ref=e["id"],
                                      deltas=[("points", self.node, -pts)],
                                      points=pts or None, reason="surplus",
                                      op=f"checkin@{self.node}")
                    done.append(self._post(rev, {"points": pts}))
        return done

    def attendance(self, activity: str, day_from: str | None = None,
                   day_to: str | None = None) -> list[dict[str, Any]]:
        """签到记录: every check-in at the activity, oldest first, each `ok`, `surplus`
        (beyond the limit, written while branches were cut off: its branch reverses it
        at its next housekeeping) or `reversed`, with the points its reversal took back
        (`reversed`) and those it could not, the member having spent or converted them
        at that branch first (`unrecovered`): a loss the owner sees here, and may
        correct by hand."""
        self._activity(activity)  # NotFound for an unknown code
        surplus = {e["id"] for e in self._surplus(activity)}
        checkins, reversals = self._checkin_rows(None, activity)
        rows = []
        conn = self.storage.conn
        for e in checkins:
            day = self.storage.day_of(int(e["at"]))
            if (day_from and day < day_from) or (day_to and day > day_to):
                continue
            name = conn.execute("SELECT name FROM members WHERE id = ?",
                                (e["member"],)).fetchone()
            rows.append({
                "entry": e["id"], "member": e["member"], "name": name[0] if name else "",
                "branch": e["node"], "day": day,
                "time": datetime.fromtimestamp(int(e["at"]) / 1000,
                                               self.storage.tz).strftime("%H:%M"),
                "points": int(e.get("points") or 0),
                "status": ("reversed" if e["id"] in reversals else
                           "surplus" if e["id"] in surplus else "ok"),
                "reversed": reversals.get(e["id"], 0),
                "unrecovered": (int(e.get("points") or 0) - reversals[e["id"]]
                                if e["id"] in reversals else 0)})
        return rows

    # --- exit and return -----------------------------------------------------------------

    def _applications(self, member: str) -> list[dict[str, Any]]:
        return self._entries("member = ? AND kind = 'exit'", [member])  # entries_exit

    def _decision(self, application: Mapping[str, Any]) -> dict[str, Any] | None:
        """The decision that stands on `application` (its entry): of two made apart
        (one manager approving, another rejecting), the approval, else the first by id.
        An honest approval takes effect in the transaction that writes it (the member
        leaves and is settled, or comes back: `_decide_exit`), and a rejection changes
        nothing; the first by id read "rejected" for a member who had left and been
        paid. Which took effect was read from the profile's `exited` flag, which any
        branch may clear or set: a liar's flag then chose the decision that stands.
        Decided where it was made or at head office (`_decides`): a lying branch's
        rejection in a manager's name held an honest member's exit off."""
        aid = str(application["id"])
        found = [d for d in self._entries("ref = ? AND kind = 'approval'", [aid])
                 if self._decides(str(d["node"]), str(application["node"]))]
        approved = next((d for d in found if d.get("step") == "approve"), None)
        if approved is not None:
            return approved
        return found[0] if found else None

    def has_left(self, member: str, before: str | None = None) -> bool:
        """Whether `member` has left (退会): her latest exit or return approved by a
        decision that counts (`_decision`) was an exit. Not her profile's `exited`:
        that flag is a cache honest code writes with the approval and the settlement
        (`_decide_exit`), and any branch may edit a member's Map. A liar's bare flag had
        honest branches refuse her debits and hide her while she held 1,000.00; a liar
        clearing the flag of a member who left and was paid had them serve her again
        (a top-up took money for a member the chain had closed). A member who never
        applied is answered by a probe of the applications' index (`entries_exit`,
        nearly always empty for her): the debit path reads none of her entries. With
        `before`, as of that id: the decisions made before it only."""
        if self.storage.conn.execute(
                "SELECT 1 FROM entries INDEXED BY entries_exit "
                "WHERE member = ? AND kind = 'exit' LIMIT 1", (member,)).fetchone() is None:
            return False
        last: tuple[str, Any] | None = None
        for a in self._applications(member):
            d = self._decision(a)
            if d is not None and d.get("step") == "approve" and (
                    before is None or str(d["id"]) < before) and (
                    last is None or str(d["id"]) > last[0]):
                last = (str(d["id"]), a.get("step"))
        return last is not None and last[1] == "exit"

    def exit_view(self, application: str) -> dict[str, Any]:
        if not isinstance(application, str) or not ID.match(application):
            raise InvalidInput(f"{str(application)[:40]!r} is not an application id")
        found = self._entries("id = ? AND kind = 'exit'", [application])
        if not found:
            raise NotFound(f"no exit or return application {application} at this branch")
        e = found[0]
        d = self._decision(e)
        # Only the settlement of the approval that stands, written with it by its
        # branch: read by `ref` alone, a lying branch's showed as the honest one's.
        settle = [] if d is None or d["step"] != "approve" else self._entries(
            "ref = ? AND kind = 'exit_settle' AND node = ?", [application, str(d["node"])])
        status: ExitStatus = ("pending" if d is None else
                              "approved" if d["step"] == "approve" else "rejected")
        return {"application": e["id"], "member": e["member"], "step": e["step"],
                "reason": e.get("reason", ""), "by": e["op"], "branch": e["node"],
                "on": self.storage.day_of(int(e["at"])), "status": status,
                "decided_by": "" if d is None else d["op"],
                "settled": settle[0]["step"] if settle else "",
                "paid": int(settle[0].get("paid") or 0) if settle else 0,
                "forfeited": (sum(-c for p, _n, c in settle[0]["deltas"]
                                  if p in ("cash", "bonus")) - int(settle[0].get("paid") or 0)
                              if settle else 0)}

    def exits(self, status: str | None = None) -> list[dict[str, Any]]:
        out = [self.exit_view(str(e["id"])) for e in reversed(self._entries(
            "kind = 'exit'", []))]
        return [v for v in out if status is None or v["status"] == status]

    def exited(self) -> list[dict[str, Any]]:
        """Members who have left, for the back office (the counter's search hides them)."""
        return [{"id": m, "name": n, "phone": views.mask_phone(p), "home": h}
                for m, n, p, h in self.storage.conn.execute(
                    "SELECT id, name, phone, home FROM members WHERE id IN ("
                    "SELECT member FROM entries WHERE kind = 'exit') ORDER BY id")
                if self.has_left(m)]

    def apply_exit(self, operator: str, member: str, reason: str, *,
                   step: Literal["exit", "return"] = "exit") -> dict[str, Any]:
        """退会申请 (or a return's): an operator for the member, with a reason."""
        self.authorise(operator, "member.exit")
        # Any other step was written, held every later application off, and was
        # approved as neither an exit nor a return.
        if step not in ("exit", "return"):
            raise InvalidInput(f"an application's step is exit or return, not "
                               f"{str(step)[:20]!r}")
        reason = check_text(reason, "reason", required=True)
        profile = self._known(member)
        left = self.has_left(member)
        if step == "exit" and left:
            raise InvalidInput(f"member {member} has left already")
        if step == "return" and not left:
            raise InvalidInput(f"member {member} has not left: nothing to return from")
        if step == "exit" and "merged_into" in profile:
            raise InvalidInput(f"member {member} was merged into another: apply for "
                               f"{views.canonical(self.storage.conn, member)}")
        # Only one made here, at head office or at the branch that registered the member
        # holds a new one off: a lying branch's application for an honest member blocked
        # her own at every branch, and only head office could clear it. By her id, not
        # her `home`, which any branch may edit (a liar made itself her home).
        home = member.rpartition(".")[2]
        for a in self._applications(member):
            node = str(a["node"])
            if self._decision(a) is None and (node in (self.node, home) or cast(
                    "Ledger", self).was_head_office(node)):
                raise InvalidInput(f"member {member} has an application waiting already "
                                   f"({a['id']}, {a['step']})")
        entry = self._entry("exit", member, step=step, reason=reason, op=operator)
        self._post(entry, {})
        return self.exit_view(str(entry["id"]))

    def decide_exit(self, operator: str, application: str, *, reject: bool = False,
                    reason: str = "", pay: str | None = None) -> dict[str, Any]:
        """Approve (or reject) an exit or return application: another operator holding
        `member.exit.approve`. An exit approved settles the stored value by the rule
        `exit` here (gathering what other branches hold first) and marks the member."""
        with self._after_application(application):
            return self._decide_exit(operator, application, reject, reason, pay)

    @contextmanager
    def _after_application(self, application: Any) -> Iterator[None]:
        """Book a decision on `application` after it, every entry naming it and the
        latest entry of its member this branch wrote (what the settlement pays out of),
        as a refund after its sale (LedgerBase._booked_after): applied for and topped
        up while this PC's clock ran ahead, an exit approved once it was put right was
        settled by an id dated before both, and the month's closing gave the member
        minus what she was paid, before she had paid it in."""
        conn = self.storage.conn
        row = conn.execute("SELECT member FROM entries WHERE id = ? AND kind = 'exit'",
                           (application,)).fetchone() if isinstance(application, str) else None
        named = [] if row is None else [
            application, *(i for (i,) in conn.execute(
                "SELECT id FROM entries WHERE ref = ?", (application,))),
            *self._latest_here(str(row[0]))]
        with self._booked_after(*named):
            yield

    def _decide_exit(self, operator: str, application: str, reject: bool, reason: str,
                     pay: str | None) -> dict[str, Any]:
        self.authorise(operator, "member.exit.approve")
        view = self.exit_view(application)
        if not self._decides(self.node, str(view["branch"])):
            raise PermissionDenied(f"application {application} was made at {view['branch']}: "
                                   "it is decided there, or at head office")
        if view["status"] != "pending":
            raise InvalidInput(f"application {application} was {view['status']} already, "
                               f"by {view['decided_by']}")
        self._check_distinct(operator, view["by"], f"applied for {application} and cannot "
                                                    "decide it")
        member = str(view["member"])
        reason = check_text(reason, "reason")
        decision = self._entry("approval", member, ref=application, reason=reason,
                               step="reject" if reject else "approve", op=operator)
        if reject:
            self._post(decision, {})
            return self.exit_view(application)
        profile = self._known(member)
        left = self.has_left(member)
        if view["step"] == "exit" and left:
            raise InvalidInput(f"member {member} has left already")
        if view["step"] == "exit" and "merged_into" in profile:
            # Merged since it applied: marked left, its survivor holding the value
            # stayed, and the survivor's bookings were cancelled "as the member left".
            raise InvalidInput(f"member {member} was merged into another since it applied: "
                               f"reject this and apply for "
                               f"{views.canonical(self.storage.conn, member)}")
        if view["step"] == "return" and not left:
            raise InvalidInput(f"member {member} has not left")
        exiting = view["step"] == "exit"
        rule = str(self.rule("exit")["stored_value"])
        method = self._pay(pay) if exiting and rule == "refund" else None
        if exiting:
            self._acting(member)  # owes the sweep of merged members' rights held here
        change = self.clock.mint()

        def mark(root: Map[Any]) -> None:
            m = root[member]
            m["exited"] = exiting
            note_edit(m, change, operator, ["exited"])

        def plan() -> tuple[list[Write], dict[str, Any]]:
            writes = [self._entry_write(decision)]
            if exiting:
                purses = self._purses(member)
                out = []
                for purse in ("cash", "bonus", "points"):
                    held = purses.get(purse, {})
                    total = sum(held.values())
                    if total > 0:  # all of it must be here: else the node fetches it
                        escrow.require(purse, self.node, held, total, member)
                        out.append((purse, self.node, -total))
                if out:
                    cash = -sum(c for p, _n, c in out if p == "cash")
                    paid = cash if rule == "refund" else 0
                    settle = self._entry(
                        "exit_settle", member, deltas=out, ref=application, step=rule,
                        amount=-sum(c for p, _n, c in out if p in ("cash", "bonus")),
                        paid=paid or None, pay=method if paid else None, op=operator)
                    writes.append(self._entry_write(settle))
            writes.append(Write(member_doc(member), "members", member, mark))
            if exiting:
                writes += bookings.member_cancellations(cast("Ledger", self), operator,
                                                        member, "member left")
            return writes, decision

        self._commit(plan)
        return self.exit_view(application)


def attendance_csv_rows(rows: list[dict[str, Any]]) -> list[list[str]]:
    head = ["day", "time", "branch", "member", "name", "points", "status", "reversed",
            "unrecovered", "entry"]
    return [head, *([str(r[k]) for k in head] for r in rows)]


__all__ = ["EXIT_RULES", "REPEATS", "REWARD_KINDS", "RULE_CHECKS", "Membership",
           "allowed_today", "attendance_csv_rows", "check_activity", "referral_status"]
