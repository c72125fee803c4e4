"""Coupons (优惠券): issued to a member, redeemed at most once in the whole chain.

A coupon is the same hard problem as stored value: used once, chain-wide, even while
branches are cut off from each other. So it is the same answer, escrow: a coupon is
a purse `cpn:<coupon id>` of its member holding one unit, and the right to redeem it
sits with exactly one branch at a time.

- Issuing writes a `coupon` entry whose one delta raises the issuing branch's rights
  on `cpn:<its own id>` by one. Its terms are the entry's fields and never change:
  `amount` (fen off), `percent` (off), or `service` (a free one), `min_spend` (fen,
  what the sale must come to after the level discount), `valid_from` / `valid_to`
  (days in the chain's time zone, both inclusive) and `reason` (owner, promotion,
  referral).
- Redeeming lowers the redeeming branch's own right by one, so only the branch that
  holds it can: on its own (a `coupon_use` entry), or inside the very debit it
  discounts (the debit's deltas carry the `cpn:` change, its field `coupon` names it
  and `off` says how much it took off), so the discount and the redemption are one
  entry on every replica, never one without the other.
- A branch without the right raises `CouponElsewhere` (a RightsElsewhere), and the
  node fetches it from the holder like any rights (crdtledger.core: rreq / rrep, a
  `transfer` entry of one unit); if the holder cannot be reached the refusal names it.
  Two partitioned branches can therefore never both redeem a coupon: at most one of
  them holds its right, and the write rule `own-rights` refuses everywhere an entry
  that lowers another branch's right.
- Refusals say exactly why and change nothing: unknown here, another member's,
  not yet valid, expired, minimum spend not met, already redeemed (where and when).

A coupon's status is derived, like a balance: its rights summed over the member's
group (crdtledger.merge) are 1 until it is redeemed, 0 after; the redeeming entry is
the member's entry whose `coupon` field names it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import Any, Literal, get_args

from crdtledger import views
from crdtledger.commit import Write
from crdtledger.errors import (
    InvalidAmount,
    InvalidInput,
    LedgerError,
    NotCaughtUp,
    NotFound,
    RightsElsewhere,
)
from crdtledger.hlc import id_time_ms
from crdtledger.model import ID
from crdtledger.money import apply_rate, check_amount, format_yuan
from crdtledger.payments import Payments

PREFIX = "cpn:"

# Who or what a coupon was issued for (its entry's `reason`).
CouponReason = Literal["owner", "promotion", "referral"]
COUPON_REASONS: tuple[CouponReason, ...] = get_args(CouponReason)

# What a coupon takes off: a sum, a share, or one service of the price list.
CouponKind = Literal["amount", "percent", "service"]
COUPON_KINDS: tuple[CouponKind, ...] = get_args(CouponKind)

# A coupon's state as its list shows it.
CouponStatus = Literal["available", "not_yet_valid", "expired", "redeemed"]
COUPON_STATUSES: tuple[CouponStatus, ...] = get_args(CouponStatus)

_DAY = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}\Z")


def purse_of(coupon: str) -> str:
    return f"{PREFIX}{coupon}"


# --- refusals: each a sentence, each its own code ----------------------------------------


class CouponRefused(LedgerError):
    """The coupon cannot be used for this, now; nothing was changed."""

    code = "coupon_refused"


class CouponRedeemed(CouponRefused):
    code = "coupon_redeemed"


class CouponExpired(CouponRefused):
    code = "coupon_expired"


class CouponNotYetValid(CouponRefused):
    code = "coupon_not_yet_valid"


class CouponOtherMember(CouponRefused):
    code = "coupon_other_member"


class CouponMinSpend(CouponRefused):
    code = "coupon_min_spend"


class CouponElsewhere(RightsElsewhere):
    """The right to redeem the coupon sits at another branch. A RightsElsewhere, so a
    node asks the holder for it (crdtledger.core) and runs the redemption again; the
    sentence is what the till reads if the holder cannot be reached."""

    def __init__(self, coupon: str, holders: Mapping[str, int], member: str) -> None:
        super().__init__(purse_of(coupon), 1, 0, holders, member)
        where = ", ".join(self.holders) or "no branch known here"
        self.args = (f"coupon {coupon} is held at branch {where}: only the branch holding a "
                     "coupon may redeem it, and this branch could not get it from there "
                     "(not reachable now?); try again once connected, or redeem it there",)


# --- the terms ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Use:
    """A coupon about to be redeemed: its issuing entry and what it takes off."""

    coupon: dict[str, Any]
    off: int

    @property
    def id(self) -> str:
        return str(self.coupon["id"])

    @property
    def purse(self) -> str:
        return purse_of(self.id)


def kind_of(c: Mapping[str, Any]) -> CouponKind:
    if c.get("percent"):
        return "percent"
    if c.get("service"):
        return "service"
    return "amount"


def terms(c: Mapping[str, Any]) -> str:
    """What a coupon gives, as a person reads it."""
    kind = kind_of(c)
    what = (f"{c['percent']}% off" if kind == "percent" else
            f"one free {c['service']}" if kind == "service" else
            f"{format_yuan(int(c['amount']))} off")
    if c.get("min_spend"):
        what += f" on {format_yuan(int(c['min_spend']))} or more"
    return what


def discount(c: Mapping[str, Any], net: int, unit: int) -> int:
    """What a coupon takes off a sale that comes to `net` fen after the level discount
    (`unit`: one of the sale's service at that discount, for a free-service coupon).
    The named rounding rule: a percent coupon takes percent/100 of `net`, rounded
    half-up to the fen (money.apply_rate); no coupon ever takes more than `net`."""
    kind = kind_of(c)
    if kind == "percent":
        off = apply_rate(net, str(Decimal(int(c["percent"])) / 100))
    elif kind == "service":
        off = unit
    else:
        off = int(c["amount"])
    return max(0, min(off, net))


def _check_day(value: str | None, what: str) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str) or not _DAY.match(value):
        raise InvalidInput(f"{what} must be a date like 2026-12-31")
    try:
        date.fromisoformat(value)
    except ValueError:
        raise InvalidInput(f"{what} {value} is not a date") from None
    return value


class Coupons(Payments):
    """Issue, redeem and list coupons (composed into crdtledger.ledger.Ledger)."""

    # --- issuing ------------------------------------------------------------------------

    def issue_coupon(self, operator: str, member: str, *, off: int | None = None,
                     percent: int | None = None, service: str | None = None,
                     min_spend: int = 0, valid_from: str | None = None,
                     valid_to: str | None = None, reason: str = "owner") -> dict[str, Any]:
        """A coupon for `member` (exactly one of `off` fen, `percent` off, a free
        `service`), its right to be redeemed held here. Returns its view (`coupon`)."""
        self.authorise(operator, "coupon.issue")
        if sum(x is not None for x in (off, percent, service)) != 1:
            raise InvalidInput("a coupon gives one of: an amount off, a percent off, "
                               "a free service")
        if off is not None:
            off = check_amount(off)
        if percent is not None and (isinstance(percent, bool) or not isinstance(percent, int)
                                    or not 1 <= percent <= 100):
            raise InvalidAmount("a percent off is a whole number from 1 to 100")
        if service is not None and service not in self.rule("services"):
            raise NotFound(f"no service {service} in the price list")
        min_spend = check_amount(min_spend, allow_zero=True)
        valid_from = _check_day(valid_from, "valid-from")
        valid_to = _check_day(valid_to, "valid-to")
        if valid_from and valid_to and valid_to < valid_from:
            raise InvalidInput(f"valid-to {valid_to} is before valid-from {valid_from}")
        if valid_to and valid_to < self.today():
            raise InvalidInput(f"valid-to {valid_to} has passed already (today is "
                               f"{self.today()})")
        if reason not in COUPON_REASONS:
            raise InvalidInput(f"reason must be one of {', '.join(COUPON_REASONS)}")
        member, _ = self._acting(member)
        entry = self._entry("coupon", member, amount=off or 0, percent=percent,
                            service=service, min_spend=min_spend or None,
                            valid_from=valid_from, valid_to=valid_to, reason=reason,
                            op=operator)
        entry["deltas"] = [[purse_of(entry["id"]), self.node, 1]]
        self._post(entry, {})
        return self.coupon_view(str(entry["id"]))

    # --- redeeming ----------------------------------------------------------------------

    def redeem_coupon(self, operator: str, coupon: str, *, member: str | None = None,
                      spend: int | None = None) -> dict[str, Any]:
        """Redeem a coupon on its own (the sale it discounts is not in this ledger):
        `spend`, the bill at the till, is checked against its minimum spend and says
        what an amount or percent coupon took off. A sale in this ledger takes the
        coupon in its own entry instead (`debit(coupon=...)`)."""
        self.authorise(operator, "coupon.redeem")
        if spend is not None:
            spend = check_amount(spend, allow_zero=True)
        c, acting = self._usable(coupon, member)
        if c.get("min_spend") and spend is None:
            raise CouponMinSpend(f"coupon {coupon} needs a spend of at least "
                                 f"{format_yuan(int(c['min_spend']))}: give the bill's "
                                 "amount (spend)")
        self._check_spend(c, spend or 0)
        off = None
        if spend is not None and kind_of(c) != "service":
            off = discount(c, spend, 0)
        elif spend is None and kind_of(c) == "amount":
            off = int(c["amount"])
        use = Use(c, off or 0)
        entry = self._entry("coupon_use", acting, deltas=[(use.purse, self.node, -1)],
                            coupon=use.id, off=off, service=c.get("service"), op=operator)

        def plan() -> tuple[list[Write], dict[str, Any]]:
            self._hold(use, acting, self._purses(acting))
            return [self._entry_write(entry)], entry

        return self._commit(plan)

    def _coupon_for_debit(self, operator: str, coupon: str, member: str, day: str, *,
                          net: int, unit: int, service: str | None, pay: str) -> Use:
        """The debit's hook (payments.Payments.debit): the coupon checked for this sale
        and what it takes off `net`. Its right is checked in the debit's transaction
        (`_hold`), and spent by the debit's own entry."""
        self.authorise(operator, "coupon.redeem")
        if pay == "package":
            raise InvalidInput("a package's uses pay nothing a coupon could take off; "
                               "redeem the coupon with a sale paid by stored value or at "
                               "the till")
        c, _ = self._usable(coupon, member, day)
        if kind_of(c) == "service" and service != c["service"]:
            raise CouponRefused(f"coupon {coupon} is for a free {c['service']}, not for "
                                f"{'this amount' if service is None else service}")
        self._check_spend(c, net)
        return Use(c, discount(c, net, unit))

    def _usable(self, coupon: str, member: str | None, day: str | None = None
                ) -> tuple[dict[str, Any], str]:
        """The coupon's entry and the member it acts for, refused if it is another
        member's or not valid on `day` (today by default)."""
        c = self._coupon_entry(coupon)
        conn = self.storage.conn
        owner = views.canonical(conn, str(c["member"]))
        if member is not None and views.canonical(conn, member) != owner:
            raise CouponOtherMember(f"coupon {coupon} belongs to another member")
        acting, _ = self._acting(owner)
        if c.get("valid_to"):  # a clock set back would take it after its last day
            self.check_clock_for(f"coupon {coupon}'s use", until=str(c["valid_to"]))
        day = day or self.today()
        if c.get("valid_to") and day > str(c["valid_to"]):
            raise CouponExpired(f"coupon {coupon} expired on {c['valid_to']}")
        if c.get("valid_from") and day < str(c["valid_from"]):
            raise CouponNotYetValid(f"coupon {coupon} is valid from {c['valid_from']}")
        if c.get("valid_from") and self.rules_day(day) < str(c["valid_from"]):
            # Put forward by hand to its first day (Rules.rules_day, the unmoved day
            # then): a cashier alone redeemed next week's coupon today.
            raise NotCaughtUp(
                f"this PC's clock was put forward by hand: coupon {coupon} is valid from "
                f"{c['valid_from']}, and waits until another branch connects and confirms "
                "the clock, or a manager confirms it (crdtledger clock confirm, 本机时钟已核对)")
        return c, acting

    @staticmethod
    def _check_spend(c: Mapping[str, Any], spend: int) -> None:
        least = int(c.get("min_spend") or 0)
        if spend < least:
            raise CouponMinSpend(f"coupon {c['id']} needs a spend of at least "
                                 f"{format_yuan(least)}; this comes to {format_yuan(spend)}")

    def _hold(self, use: Use, member: str, purses: Mapping[str, Mapping[str, int]]) -> None:
        """Inside the write transaction: refuse unless this branch holds the coupon's
        right (already redeemed, or held elsewhere: then the node fetches it)."""
        held = purses.get(use.purse, {})
        if sum(held.values()) <= 0:
            raise CouponRedeemed(self._redeemed_sentence(use.coupon))
        if held.get(self.node, 0) < 1:
            raise CouponElsewhere(use.id, {n: a for n, a in held.items() if a > 0}, member)

    def _redeemed_sentence(self, c: Mapping[str, Any]) -> str:
        found = self._redemption(c)
        if found is None:
            return f"coupon {c['id']} was redeemed already"
        when = self.storage.day_of(id_time_ms(str(found["id"])))
        return f"coupon {c['id']} was redeemed already, at {found['node']} on {when}"

    def _redemption(self, c: Mapping[str, Any]) -> dict[str, Any] | None:
        found = self._redemptions(views.member_group(self.storage.conn, str(c["member"])),
                                  str(c["id"])).get(str(c["id"]))
        return None if found is None else dict(json.loads(found))

    def _redemptions(self, group: list[str], coupon: str | None = None) -> dict[str, str]:
        """The first entry (its JSON text) naming each coupon of `group` that redeemed
        it (only `coupon`, if given), in one pass: one search per coupon redeemed made a
        member's list (read at every member lookup at the counter) quadratic (1.4 s
        at 800 coupons). Redeemed means its unit taken: a liar's debit naming another
        branch's coupon without taking its unit (projected: it takes nothing of
        anyone's) read as the redemption, before the real one, at every replica."""
        used: dict[str, str] = {}
        for code, body in self.storage.conn.execute(
                f"SELECT json_extract(body, '$.coupon'), body FROM entries WHERE member "
                f"{views.in_(group)} AND kind != 'coupon' AND json_extract(body, '$.coupon') "
                + ("= ?" if coupon else "IS NOT NULL") + " ORDER BY id",
                [*group, coupon] if coupon else group):
            if not isinstance(code, str) or code in used:
                continue
            unit = purse_of(code)
            if any(isinstance(d, list) and len(d) == 3 and d[0] == unit
                   and isinstance(d[2], int | float) and d[2] < 0
                   for d in json.loads(body).get("deltas") or ()):
                used[code] = body
        return used

    # --- reading ------------------------------------------------------------------------

    def _coupon_entry(self, coupon: str) -> dict[str, Any]:
        if not isinstance(coupon, str) or not ID.match(coupon):
            raise InvalidInput(f"{str(coupon)[:40]!r} is not a coupon id")
        row = self.storage.conn.execute(
            "SELECT body FROM entries WHERE id = ? AND kind = 'coupon'", (coupon,)).fetchone()
        if row is None:
            issuer = coupon.rsplit(".", 1)[1]
            raise NotFound(f"no coupon {coupon} at this branch" + (
                f" (it was issued at {issuer}: sync with it first)"
                if issuer != self.node else ""))
        return dict(json.loads(row[0]))

    def coupon_view(self, coupon: str) -> dict[str, Any]:
        return self._view(self._coupon_entry(coupon))

    def coupons(self, member: str) -> list[dict[str, Any]]:
        """The member's coupons (their group's: crdtledger.merge), oldest first."""
        conn = self.storage.conn
        group = views.member_group(conn, member)
        used = self._redemptions(group)
        return [self._view(dict(json.loads(b)), group, used) for (b,) in conn.execute(
            f"SELECT body FROM entries WHERE member {views.in_(group)} AND kind = 'coupon' "
            "ORDER BY id", group)]

    def _view(self, c: dict[str, Any], group: list[str] | None = None,
              used: Mapping[str, str] | None = None) -> dict[str, Any]:
        """`group`: the member's, and `used`: `_redemptions` of it, if the caller read
        them (a list of the member's coupons)."""
        conn = self.storage.conn
        if group is None:
            group = views.member_group(conn, str(c["member"]))
        held: dict[str, int] = {}
        for node, amount in conn.execute(
                f"SELECT node, amount FROM rights WHERE member {views.in_(group)} "
                "AND purse = ?", [*group, purse_of(str(c["id"]))]):
            held[node] = held.get(node, 0) + int(amount)
        today = self.today()
        at, on, by = "", "", ""
        status: CouponStatus
        if sum(held.values()) <= 0:
            status = "redeemed"
            if used is None:
                used = self._redemptions(group, str(c["id"]))
            body = used.get(str(c["id"]))
            found = None if body is None else dict(json.loads(body))
            if found is not None:
                at, by = str(found["node"]), str(found["id"])
                on = self.storage.day_of(id_time_ms(by))
        else:
            at = max(sorted(held), key=lambda n: held[n])
            status = ("expired" if c.get("valid_to") and today > c["valid_to"] else
                      "not_yet_valid" if c.get("valid_from") and today < c["valid_from"]
                      else "available")
        return {
            "coupon": c["id"], "member": c["member"], "kind": kind_of(c),
            "off": int(c.get("amount") or 0), "percent": int(c.get("percent") or 0),
            "service": str(c.get("service") or ""), "min_spend": int(c.get("min_spend") or 0),
            "valid_from": str(c.get("valid_from") or ""),
            "valid_to": str(c.get("valid_to") or ""), "reason": str(c.get("reason") or ""),
            "issued_at": c["node"], "issued_on": self.storage.day_of(id_time_ms(c["id"])),
            "terms": terms(c), "status": status, "at": at, "on": on, "entry": by,
        }


def describe_status(v: Mapping[str, Any]) -> str:
    """A coupon's line in a list: what it gives and where it stands."""
    status = str(v["status"])
    where = (f"redeemed at {v['at']} on {v['on']}" if status == "redeemed" and v["at"] else
             "redeemed" if status == "redeemed" else
             f"expired on {v['valid_to']}" if status == "expired" else
             f"valid from {v['valid_from']}, held at {v['at']}" if status == "not_yet_valid"
             else f"available at {v['at']}" + (f" until {v['valid_to']}"
                                                 if v["valid_to"] else ""))
    return f"{v['terms']}  {where}  [{v['coupon']}]"


__all__ = ["COUPON_KINDS", "COUPON_REASONS", "COUPON_STATUSES", "CouponElsewhere",
           "CouponRefused", "Coupons", "describe_status", "purse_of"]
