"""Money and points: top-ups, debits, refunds, rights transfers, points, packages,
corrections. Each is one immutable ledger entry whose deltas say its effect on every
purse's rights; an entry that lowers a purse is committed only if this node's own
rights cover it, checked inside the write transaction (`_post`, `debit`)."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from datetime import date, timedelta
from functools import lru_cache
from typing import TYPE_CHECKING, Any, cast

from crdtledger import audit, escrow, lots, views
from crdtledger.commit import Write
from crdtledger.errors import (
    InsufficientFunds,
    InvalidAmount,
    InvalidInput,
    NotFound,
    PermissionDenied,
    RefundElsewhere,
    RemoteProtocolError,
)
from crdtledger.hlc import check_node_id, id_time_ms
from crdtledger.inputs import check_text
from crdtledger.merge import Merges
from crdtledger.model import (
    GOODS_PURSES,
    HANDOVER_REASON,
    ID,
    MONEY_PURSES,
    PURSE,
    PURSE_METHODS,
    WALK_IN,
)
from crdtledger.money import (
    MAX_AMOUNT,
    apply_rate,
    check_amount,
    check_count,
    format_purse,
    format_yuan,
    given_away,
    pieces,
    points_for,
)
from crdtledger.projection import (
    WAITING_REFUNDS,
    handed_to,
    handover_chain,
    points_change,
    sale_share,
)
from crdtledger.rules import Rules, points_per_yuan
from crdtledger.storage import LIMITED, LIMITED_KINDS
from crdtledger.writerules import COUPON_PREFIX

if TYPE_CHECKING:
    from crdtledger.ledger import Ledger
    from crdtledger.storage import Storage

# The debit's discount and points, remembered: pure functions of a price, a rate and a
# level's multiplier, which a till's sales repeat all day, and their Decimal
# arithmetic cost more than the rest of pricing a sale.
_discounted = lru_cache(maxsize=4096)(apply_rate)
_points_earned = lru_cache(maxsize=4096)(points_for)


def times(unit: int, qty: int, what: str, *, points: bool = False) -> int:
    """`qty` of `what` at `unit` (fen, or points) each, or InvalidAmount saying so and
    the most one entry holds: a walk-in sale of 2 at 100,000,000,000.00 was refused as
    the bare "value 20000000000000 out of range" (Commit._entry's last guard)."""
    total = unit * qty
    if total > MAX_AMOUNT:
        def shown(n: int) -> str:
            return f"{n} points" if points else format_yuan(n)
        raise InvalidAmount(f"{qty} x {what} at {shown(unit)} come to {shown(total)}, "
                            f"more than one entry may hold ({shown(MAX_AMOUNT)}): take "
                            "fewer at a time")
    return total


def walk_in(node: str) -> str:
    """The walk-in customer (散客) of a branch: a fixed pseudo-member its till sales
    without a member (goods, services, plain amounts) are written for. Never a member
    record, so nothing can top it up or pay from it; it earns no points and gets no
    level discount."""
    return WALK_IN + node


def is_walk_in(member: str) -> bool:
    return member.startswith(WALK_IN)


def _spend(node: str, purses: Mapping[str, Mapping[str, int]], amount: int
           ) -> list[tuple[str, str, int]]:
    """Stored value spent at `node`: cash first, then bonus (the named rule)."""
    cash = sum(purses.get("cash", {}).values())
    bonus = sum(purses.get("bonus", {}).values())
    from_cash = min(amount, cash)
    if amount - from_cash > bonus:
        raise InsufficientFunds("cash", cash + bonus, amount)
    return [("cash", node, -from_cash), ("bonus", node, -(amount - from_cash))]


def _refund_share(taken: int, whole: int, refunded: int) -> int:
    """What refunds totalling `refunded` of a debit of `whole` have given back of the
    `taken` points it earned. The named rounding rule is a cumulative floor: each part
    takes the difference of two floors, and the part that reaches `whole` takes the
    rest, so the parts of a split refund add up to exactly what the debit earned."""
    return taken * refunded // whole if whole else 0


# The expiry entries naming an entry: a lot's write-offs, a write-off's give-backs.
_EXPIRIES_OF = "SELECT id, body FROM entries WHERE ref = ? AND kind = 'expiry'"

# Transfers a hand-over writes to one commit (one log record): a few hundred
# members' worth a second, each commit short enough not to hold a till waiting.
HANDOVER_BATCH = 64


class Payments(Merges, Rules):
    """The operations on a member's purses, and the reads of them."""

    def __init__(self, storage: Storage, now_ms: Callable[[], int] | None = None) -> None:
        super().__init__(storage, now_ms)
        # Peers' rights requests answered, per asking branch (escrow.GrantBudget).
        self.grants = escrow.GrantBudget(self.clock.wall)

    def _rights(self, member: str, purse: str) -> dict[str, int]:
        return {n: a for n, a in self.storage.conn.execute(
            "SELECT node, amount FROM rights WHERE member = ? AND purse = ?", (member, purse))}

    def _purses(self, member: str) -> dict[str, dict[str, int]]:
        """Every purse of a member with its rights per node: one indexed read. Rights
        other branches hold for members merged into it count as theirs (they sweep them
        to it when asked: crdtledger.merge); here only its own, which alone it may spend.
        (Asking for only the purses a debit lowers, `AND purse IN (...)`, was slower:
        SQLite builds the IN list for each query, which costs more than the few rows
        it saves.)"""
        out: dict[str, dict[str, int]] = {}
        group = self._folded(member)
        for m, purse, node, amount in self.storage.conn.execute(
            f"SELECT member, purse, node, amount FROM rights WHERE member {views.in_(group)}",
            group
        ):
            if m == member or node != self.node:
                held = out.setdefault(purse, {})
                held[node] = held.get(node, 0) + amount
        return out

    def _post(self, entry: dict[str, Any], needs: Mapping[str, int]) -> dict[str, Any]:
        """Commit an entry after checking, inside the write transaction, that this
        node's own rights cover every purse it lowers."""

        def plan() -> tuple[list[Write], dict[str, Any]]:
            purses = self._purses(entry["member"]) if any(v > 0 for v in needs.values()) else {}
            for purse, amount in needs.items():
                if amount > 0:
                    escrow.require(purse, self.node, purses.get(purse, {}), amount,
                                   entry["member"])
            return [self._entry_write(entry)], entry

        return self._commit(plan)

    def _pay(self, pay: str | None, purses: tuple[str, ...] = ()) -> str:
        """How an entry is paid, checked: one of `purses` (paid from the member's
        purses) or a payment method of the rule in force; None is the rule's first."""
        if pay is not None and pay in purses:  # from stored value: no rule to read
            return pay
        methods = self.payment_methods()
        if pay is None:
            return methods[0]
        if pay not in methods:
            raise InvalidInput(f"pay must be one of {', '.join((*purses, *methods))}, "
                               f"not {str(pay)[:20]!r}")
        return pay

    def topup(self, operator: str, member: str, amount: int, *,
              approver: tuple[str, str] | None = None, card: str | None = None,
              pin: str | None = None, pay: str | None = None) -> dict[str, Any]:
        """充值: what the till took, by one of the chain's payment methods (`pay`, the
        rule's first by default), becomes stored value here, plus any promotion's bonus."""
        self.authorise(operator, "topup")
        amount = check_amount(amount)
        pay = self._pay(pay)
        member, _ = self._resolve(member, card, pin)
        approved = None
        # Counted with what this operator topped up for the member today without an
        # approver, as corrections are (`_unapproved_today`): one top-up of 5,000.01
        # needed an approver, three of 5,000.00 needed none. Only the member's: a
        # cashier's day of top-ups for many members is the till's business, not one
        # amount split.
        before = self._topped_up_today(operator, member)
        if amount + before > int(self.rule("approval")["topup_limit"]):
            what = f"a top-up of {format_yuan(amount)}"
            if before:
                what += (f" (after {format_yuan(before)} topped up for this member today "
                         "without one)")
            approved = self._approve(operator, approver, what)
        bonus, promo = 0, None
        for p in self.rule("promotions"):
            if amount >= int(p["min"]) and int(p["bonus"]) > bonus:
                bonus, promo = int(p["bonus"]), str(p.get("name", ""))
        deltas = [("cash", self.node, amount), ("bonus", self.node, bonus)]
        entry = self._entry("topup", member, deltas=deltas, amount=amount, paid=amount,
                            pay=pay, bonus=bonus or None, promotion=promo, op=operator,
                            approver=approved)
        return self._post(entry, {})

    def debit(self, operator: str, member: str | None = None, *, amount: int | None = None,
              service: str | None = None, qty: int = 1, pay: str = "stored",
              package: str | None = None, card: str | None = None, pin: str | None = None,
              coupon: str | None = None) -> dict[str, Any]:
        """扣费 / 消费. A plain `amount` is charged as given; a `service` from the price
        list gets the member's level discount. Paid from stored value (`pay` "stored":
        cash first, then bonus), from a package's uses ("package"), or at the till by
        a payment method of the rule ("cash", "wechat"...). Points are earned on what
        is paid, by level multiplier. A `coupon` takes its discount off the price after
        the level discount and is redeemed by this same entry (crdtledger.coupons).
        No member nor card, paid at the till: sold to the walk-in customer (散客,
        walk_in), at the list price, no points, no coupon (coupons are members')."""
        self.authorise(operator, "debit")
        pay = self._pay(pay, PURSE_METHODS)
        if package is not None and pay != "package":
            # Naming a package and paying otherwise used to charge stored value and
            # leave the package's uses as they were: the cashier meant the package.
            raise InvalidInput(f"a package's uses are taken with pay=package, not pay={pay}: "
                               "use pay=package, or leave the package out to pay otherwise")
        qty = check_count(qty, "quantity")
        # The rules in force today, the day asked once: five reads of a rule each
        # asked the clock and the time zone again (and a sale at midnight could mix
        # two days' rules).
        day = self.today()
        # ... read as of the furthest day this store has read, while its clock is set
        # back and nobody vouches for it (Rules.rules_day); `day` stays the day the
        # sale is booked on (its coupon's dates, its points' expiry).
        rules_day = self.rules_day(day)
        lvl: dict[str, Any] | None = None
        if member is None and card is None:
            if pay in PURSE_METHODS:
                raise InvalidInput(
                    "name a member or a card: a walk-in customer (散客) pays at the till "
                    f"(pay {', '.join(self.payment_methods())})")
            if coupon is not None:
                raise InvalidInput("a coupon is a member's: name the member or the card")
            member = walk_in(self.node)
        else:
            member, (profile, totals) = self._resolve(member, card, pin)
            lvl = views.level(cast("Ledger", self), member, profile, totals, rules_day)
        rate, svc_name = "1", None
        if service is not None:
            services = self.rule("services", rules_day)
            if service not in services:
                raise NotFound(f"no service {service} in the price list")
            gross = times(int(services[service]["price"]), qty, service)
            svc_name = service
            rate = str(lvl["discount"]) if lvl is not None else "1"
        elif pay == "package":
            raise InvalidInput("a package debit takes the service its uses are for "
                               "(service), not an amount")
        elif amount is not None:
            gross = check_amount(amount)
        else:
            raise InvalidInput("give an amount or a service")
        net = _discounted(gross, rate) if pay != "package" else 0
        use = None
        if coupon is not None:  # checked here, its right in the transaction (plan)
            use = cast("Ledger", self)._coupon_for_debit(
                operator, coupon, member, day, net=net, service=svc_name, pay=pay,
                unit=_discounted(gross // qty, rate) if svc_name else 0)
            net -= use.off
        earn = self.rule("earn", rules_day)
        points = 0 if lvl is None else _points_earned(net, str(earn["points_per_yuan"]),
                                                      str(lvl["points_multiplier"]))
        deltas: list[tuple[str, str, int]] = []
        if pay == "package":
            package = package or self._find_package(member, service, qty)
            row = self.storage.conn.execute(
                "SELECT service, member FROM entries WHERE id = ? AND kind = 'package'",
                (package,)).fetchone()
            # A package sold to a member merged into this one is this one's.
            if (row is None or row[0] != service
                    or views.canonical(self.storage.conn, row[1]) != member):
                raise InvalidInput(f"{package} is not a {service} package of this member")
            deltas = [(f"pkg:{package}", self.node, -qty)]
        if use is not None:
            deltas.append((use.purse, self.node, -1))
        expires = self._points_expiry(day, earn) if points else None
        moved = self.moved_ahead(day)  # its refund period counts from the day it really is

        def plan() -> tuple[list[Write], dict[str, Any]]:
            # Inside the write transaction: the balance split and the escrow check read
            # the rights once, and nothing can move them before the entry commits.
            # A debit paid at the till lowers no purse: nothing to read.
            lowers = pay == "stored" or any(c < 0 for _p, _n, c in deltas)
            purses = self._purses(member) if lowers else {}
            paid = list(deltas)
            if use is not None:  # redeemed or held elsewhere: say so (and fetch it)
                cast("Ledger", self)._hold(use, member, purses)
            if pay == "stored":
                paid += _spend(self.node, purses, net)
            for purse, _node, change in paid:
                if change < 0:
                    escrow.require(purse, self.node, purses.get(purse, {}), -change, member)
            entry = self._entry(
                "debit", member, deltas=[*paid, ("points", self.node, points)], amount=net,
                gross=gross, discount=rate, level=None if lvl is None else str(lvl["name"]),
                service=svc_name, qty=qty,
                pay=pay, package=package, points=points or None, op=operator, expires=expires,
                moved=moved, **({} if use is None else {"coupon": use.id, "off": use.off}),
            )
            return [self._entry_write(entry)], entry

        return self._commit(plan)

    def _points_expiry(self, day: str, earn: dict[str, Any]) -> str | None:
        """When points earned on `day` under the rule `earn` expire: the same for every
        sale of a day, so worked out once a day (or when the rule changes)."""
        days = int(earn.get("expire_days") or 0)
        if days <= 0:
            return None
        if self._expiry_memo is None or self._expiry_memo[0] != (day, days):
            self._expiry_memo = ((day, days), (date.fromisoformat(day)
                                               + timedelta(days=days)).isoformat())
        return self._expiry_memo[1]

    def _find_package(self, member: str, service: str | None, qty: int) -> str:
        """The member's package to take `qty` uses of `service` from: one whose uses
        this branch holds first (one held only at another branch was asked for there,
        and the sale refused while a use sat here), then any that has them. None has:
        refused with the uses the member has (it said 0 with two packages of one use)."""
        fits = [p for p in views.packages(cast("Ledger", self), member)
                if service is None or p["service"] == service]
        here = [p for p in fits if p["remaining"] >= qty and self._rights(
            member, f"pkg:{p['id']}").get(self.node, 0) >= qty]
        for pkg in here or [p for p in fits if p["remaining"] >= qty]:
            return str(pkg["id"])
        left = sum(p["remaining"] for p in fits)
        raise InsufficientFunds("package uses", left, qty, "" if left < qty else (
            f" (over {len([p for p in fits if p['remaining']])} packages: one sale takes "
            "the uses of one package; sell them one at a time)"))

    def _resolve(self, member: str | None, card: str | None, pin: str | None
                 ) -> tuple[str, tuple[dict[str, Any], tuple[int, int]]]:
        """The member a counter operation is for (a merged member's survivor, its
        card acting for the survivor: crdtledger.merge), its profile and totals."""
        if card is not None:
            c = self.use_card(card, pin)
            if member is not None and member != c["member"] and (
                    views.canonical(self.storage.conn, member)
                    != views.canonical(self.storage.conn, str(c["member"]))):
                raise InvalidInput(f"card {card} belongs to another member")
            member = str(c["member"])
        if member is None:
            raise InvalidInput("name a member or a card")
        return self._acting(member)

    def refund_closed(self, debit_id: str, debit: Mapping[str, Any] | None = None
                      ) -> str | None:
        """Why a debit can no longer be refunded by the chain's refund period (rule
        `refunds`, days after the debit in the branch's dates; 0: no limit), or None.
        The counter offers no refund then; `refund` refuses it. `debit`: its entry,
        when the caller has it.

        A sale made on a clock put forward by hand (its `moved`, Rules.moved_ahead)
        is also judged by the days really passed: from its id's time less `moved`
        to this PC's clock now less how far it stands put forward (not the day the
        refund is booked on, which follows the sale's: LedgerBase._booked_after).
        Put forward 30 days, a 200.00 sale was refunded 20 real days later inside a
        7-day period. Only at the refunding branch, as the period always was: a
        writer that would not judge it could refund past any period already."""
        days = self.rule("refunds").get("days")
        if type(days) is not int or days <= 0:  # as checked when set; else no limit
            return None
        at = id_time_ms(debit_id)
        made = self.storage.day_of(at)
        if (date.fromisoformat(self.today()) - date.fromisoformat(made)).days > days:
            return (f"the debit of {made} is past the chain's refund period of {days} days "
                    "(rule refunds): a manager corrects the member's balance instead")
        moved = self._moved_sale(debit_id, debit)
        if moved is None:
            return None
        really = self.storage.day_of(at - moved)
        now = self.storage.day_of(self.clock.wall() - self._moved_by_hand(keep=False))
        if (date.fromisoformat(now) - date.fromisoformat(really)).days <= days:
            return None
        return (f"the debit of {made} was made on {really} (this PC's clock stood put "
                f"forward by hand) and is past the chain's refund period of {days} days "
                "(rule refunds): a manager corrects the member's balance instead")

    def _moved_sale(self, debit_id: str, debit: Mapping[str, Any] | None) -> int | None:
        """How far its writer's clock stood put forward by hand when it made the debit
        (its `moved`), None for none: a debit made on an unmoved clock, as every
        honest one, or a value no clock gives (a liar's, read as none)."""
        if debit is None:
            row = self.storage.conn.execute(
                "SELECT json_extract(body, '$.moved') FROM entries WHERE id = ?",
                (debit_id,)).fetchone()
            moved = None if row is None else row[0]
        else:
            moved = debit.get("moved")
        if type(moved) is not int or not 0 < moved < id_time_ms(debit_id):
            return None
        return moved

    def _debit(self, debit_id: str, *, as_signed: bool = True) -> dict[str, Any]:
        row = self.storage.conn.execute(
            "SELECT body FROM entries WHERE id = ? AND kind = 'debit'", (debit_id,)
        ).fetchone()
        if row is None:
            raise NotFound(f"no debit {debit_id}")
        if not as_signed:
            return dict(json.loads(row[0]))
        # The sale as its writer signed it, the row only finding it: a row's amount
        # raised by hand was refunded as raised (audit.entry_as_written).
        return audit.entry_as_written(cast("Ledger", self), debit_id, str(row[0]))

    def _refunds_of(self, debit_id: str) -> list[dict[str, Any]]:
        return [json.loads(b) for (b,) in self.storage.conn.execute(
            "SELECT body FROM entries WHERE ref = ? AND kind = 'refund'", (debit_id,))]

    def refund_left(self, debit_id: str) -> int | None:
        """What is left to refund of debit `debit_id`, in the unit `refund` takes it
        in: uses of a package's debit, units of a goods sale, else fen; None for a
        debit of nothing (a sale a coupon paid whole). The counter offers a refund, and
        says how much, by it: from the sale's row, since the member's page asks it of
        every sale shown, and reading each sale from its month's document loaded up to
        six months of documents (22 ms and 16 MB each at the benchmarks' 100k entries)
        to draw one page; the refund itself reads the sale as signed."""
        debit = self._debit(debit_id, as_signed=False)
        if refund_whole(debit) <= 0:
            return None
        return _refund_left(debit, self._refunds_of(debit_id))

    def refunds_at(self, debit: Mapping[str, Any]) -> str | None:
        """The branch that refunds `debit` (a debit's row or entry): the one that made
        it, or, once that shop has handed its members' rights over (closing for good),
        the open branch its chain of first hand-overs ends at (SH02 -> SH01 -> SH03 once
        SH01 closes too; write rule refund-own; a goods sale's units come back onto
        its shelf); None when the chain comes back on itself (liars' hand-overs). The
        counter offers a refund where it says this branch."""
        shop = str(debit["node"])
        links, last = handover_chain(self.storage.conn, shop)
        return shop if not links else last

    def refund(self, operator: str, debit_id: str, amount: int | None = None,
               reason: str = "", *, qty: int | None = None) -> dict[str, Any]:
        """退款. A debit's refund rights stay with the branch that made the debit, so two
        branches can never both refund the same consumption. A package's debit is
        refunded by uses (`qty`), a goods sale by units (`qty`):
        the units go back on this branch's shelf in the same commit as the money, which
        is that share of what the sale took (the last refund takes the rest). Nothing
        given: all that is left. The points the sale earned come back with it; those
        the member has spent since are paid for out of what it gives back
        (`refund_terms`)."""
        self.authorise(operator, "refund")
        debit = self._debit(debit_id)
        if self._moved_sale(debit_id, debit) is not None:
            # Its period is judged by this PC's clock (`refund_closed`), which a lone
            # cashier could set back again to bring the sale inside it: past it is
            # past whatever the clock says; inside it, the refund waits while the
            # clock reads earlier than it did, as every deadline does. Before the
            # refund follows the sale, whose time the clock has read.
            late = self.refund_closed(debit_id, debit)
            if late:
                raise PermissionDenied(late)
            self.check_clock_for("a refund of a sale made on a clock put forward (its "
                                 "period)")
        with self._booked_after(debit_id):
            # On the day the refund is booked on: a sale made while the clock ran
            # ahead is refunded on its own day, which the clock has read (no wait).
            self.check_clock_for("a refund (its period, its points' expiry)")
            return self._refund(operator, debit, amount, reason, qty)

    def _refund(self, operator: str, debit: dict[str, Any], amount: int | None,
                reason: str, qty: int | None) -> dict[str, Any]:
        debit_id = str(debit["id"])
        terms = self._refund_terms(debit, amount, qty)
        member = terms["member"]
        gone = self._gone(member) if debit.get("pay") in ("stored", "package") else None
        if gone:  # back on a card nobody can use any more
            raise InvalidInput(f"{gone}: this sale can no longer be refunded to their card")
        points = terms["points"]
        # A closed shop's sale, refunded by the branch it handed over to (refund-own).
        shop = debit["node"] if debit["node"] != self.node else None
        entry = self._entry("refund", member, deltas=terms["deltas"], amount=terms["money"],
                            ref=debit_id, handover=shop, qty=terms["units"], points=points or None,
                            spent=terms["spent"] or None, kept=terms["kept"] or None,
                            expires=terms["expires"],
                            reason=check_text(reason, "reason"), op=operator,
                            service=debit.get("service"), goods=debit.get("goods"))
        if debit.get("goods") is None:
            return self._post(entry, {"points": points})
        stock = cast("Ledger", self)._refund_stock(debit, terms["units"], operator)

        def plan() -> tuple[list[Write], dict[str, Any]]:
            if points > 0:
                escrow.require("points", self.node,
                               self._purses(member).get("points", {}), points, member)
            return (self._together(entry, stock),
                    {**entry, "stock_entry": stock["id"]})

        return self._commit(plan)

    def _points_back(self, debit: Mapping[str, Any], member: str, wanted: int
                     ) -> tuple[int, int]:
        """Of the `wanted` points a refund of `debit` takes back (its share of what the
        sale earned, less what earlier refunds took or paid for): those it takes, and
        those the member has spent since, which it pays for (`refund_terms`).

        While the sale's points are valid, it takes what the member holds of valid
        points (expired points not yet written off, at this branch or another, are not
        the member's to give back) and the rest were spent. Once they have expired,
        it takes what is left of the sale's own lot (none once written off: the
        member's valid points, earned on other sales, were taken for them before, and
        the daily pass wrote the lot off too; the entry says when they expired, so that
        every replica folds it so, crdtledger.lots._step); what the daily passes wrote
        off of the lot expired and was not spent; the rest was spent before it expired."""
        if wanted <= 0:
            return 0, 0
        expired = debit.get("expires")
        if not (isinstance(expired, str) and expired < self.today()):
            held = min(wanted, max(0, int(views.points(cast("Ledger", self), member)["usable"])))
            return held, wanted - held
        conn = self.storage.conn
        row = conn.execute("SELECT left FROM points_lots WHERE member = ? AND earned = ?",
                           (debit["member"], debit["id"])).fetchone()
        held = max(0, views.balance(conn, member)["points"])  # as far as rights go
        taken = min(wanted, held, max(0, int(row[0]) if row else 0))
        # The write-offs naming the lot, less what their writers gave back of them (a
        # write-off made before its writer heard of a spend took more than had expired:
        # give_back_write_offs names the write-off in `ref`).
        written_off = 0
        for eid, body in conn.execute(_EXPIRIES_OF, (debit["id"],)).fetchall():
            written_off -= points_change(json.loads(body))
            for _id, back in conn.execute(_EXPIRIES_OF, (eid,)):
                written_off -= points_change(json.loads(back))
        return taken, max(0, wanted - taken - max(0, written_off))

    def refund_terms(self, debit_id: str, amount: int | None = None, *,
                     qty: int | None = None) -> dict[str, Any]:
        """What a refund of debit `debit_id` (`amount` fen, or `qty` uses or units;
        nothing given: all that is left) would do, as `refund` would write it now:
        `share` of the debit refunded (in its unit; `left` before it), the `money` given
        back, the `points` taken back, the sale's points the member has `spent` since
        and the fen `kept` for them, the `deltas`. InvalidInput/InvalidAmount where
        `refund` refuses what was asked. The counter shows it before a refund.

        Points spent since cannot come back, so their worth at the chain's conversion
        rate (rule `conversion`, rounded up to the fen, as a correction of points is
        valued) is kept from the money: a sale bought, its points converted to bonus
        or redeemed, then refunded gave the member the bonus or the gift for nothing.
        Points of a sale that have expired are not charged: the member did not spend
        them. At most the money refunded is kept."""
        debit = self._debit(debit_id)
        with self._booked_after(debit_id):  # judged on the day the refund is booked on
            return self._refund_terms(debit, amount, qty)

    def _refund_terms(self, debit: dict[str, Any], amount: int | None, qty: int | None
                      ) -> dict[str, Any]:
        debit_id = str(debit["id"])
        late = self.refund_closed(debit_id, debit)
        if late:
            raise PermissionDenied(late)
        prior = self._refunds_of(debit_id)
        shop = str(debit["node"])
        links, last = handover_chain(self.storage.conn, shop)
        handed = dict(links)
        if self.node in handed:
            # Its refund rights went with its members' rights (write rule refund-own):
            # the next branch's refunds would not count this one's.
            to = handed_to(self.storage.conn, self.node)
            raise PermissionDenied(f"this branch handed its members' rights over to "
                                   f"{to[0] if to else last} (a shop closing): this sale "
                                   f"is refunded at {last or 'no branch'}")
        if links and last == self.node:
            # (A goods sale's units come back onto this branch's shelf, as its own
            # sale's would: Goods._refund_stock, counted by views.goods_ranking.)
            # What the branches before this one on the chain refunded before each
            # handed over and that still waits here for its funding counts as
            # refunded, as every replica counts it.
            for body, at in self.storage.conn.execute(WAITING_REFUNDS,
                                                      (debit_id,)).fetchall():
                e = json.loads(body)
                before = handed.get(e.get("node"), -1)
                if before != -1 and (before is None or at is None or at < before):
                    prior.append(e)
        package, goods = debit.get("pay") == "package", debit.get("goods") is not None
        if goods and amount is not None:
            raise InvalidInput("a goods sale is refunded by quantity (qty): its money is "
                               "that share of what was paid")
        if package and amount is not None:
            # An amount was read as uses: "0.02" yuan gave back two uses and no money.
            raise InvalidInput("a package's debit is refunded by uses (qty), not by an "
                               "amount: it took uses, not money")
        if not (package or goods) and qty is not None:
            raise InvalidInput("qty refunds a package's uses or a goods sale's units; "
                               "this debit is refunded by amount")
        left = _refund_left(debit, prior)
        if package or goods:  # by uses or units
            share = left if qty is None else check_count(qty, "uses" if package else "units")
        else:
            share = left if amount is None else check_amount(amount)
        if shop != self.node and (not links or last != self.node):
            # Before what is left is judged, and the quote alike: no part of it is
            # refunded here (a quote said "pays back 1.00" where the refund is refused).
            # A closed shop's sale: at the end of its chain of hand-overs.
            raise RefundElsewhere(shop if not links else last or "no branch", share,
                                  left, "uses" if package else "units" if goods else "fen",
                                  made_at=None if not links else shop)
        if share <= 0 or share > left:
            rest = (f"{left} uses" if package else f"{left} units" if goods
                    else format_yuan(left))
            raise InvalidAmount(f"at most {rest} of this debit can still be refunded")
        # A debit of a member merged since is refunded to the survivor.
        member = self._survivor(str(debit["member"]))[0]
        units = share if package or goods else None
        # The points come back by the share of the debit refunded: of its uses for a
        # package, of its money otherwise (`whole`, `done` before this one).
        money, whole, done = share, refund_whole(debit), refund_whole(debit) - left
        if goods:  # the money of `units`: a cumulative floor, the last part the rest
            sold, whole = int(debit["qty"]), int(debit["amount"])
            done = sum(sale_share(p) for p in prior)
            back = whole if share == left else whole * (sold - left + share) // sold
            money = max(0, min(whole - done, back - done))
        elif package:
            money = 0

        earned = int(debit.get("points") or 0)
        points = (_refund_share(earned, whole, done + (share if package else money))
                  - sum(int(p.get("points") or 0) + int(p.get("spent") or 0) for p in prior))
        points, spent = self._points_back(debit, member, max(points, 0))
        expired = debit.get("expires") if points > 0 else None
        if not (isinstance(expired, str) and expired < self.today()):
            expired = None
        kept = 0
        if spent > 0 and money > 0:
            # Rounded up cumulatively over the refunds of the sale, as the points each
            # takes back are floored: parts never keep more than one refund would. At
            # today's rate: the refund must take the points away, and the member, who
            # no longer holds them, gives their worth now instead (what the same
            # points held would have been worth). A rule changed since the points were
            # spent moves that worth either way: the head office's change, not anyone
            # at a till's.
            per_yuan = points_per_yuan(self.rule("conversion"))
            paid_for = sum(int(p.get("spent") or 0) for p in prior)
            kept_before = sum(int(p.get("kept") or 0) for p in prior)
            kept = max(0, min(money, -(-(paid_for + spent) * 100 // per_yuan) - kept_before))
        elif money <= 0:
            spent = 0  # a package's uses give no money back to keep anything from
        deltas: list[tuple[str, str, int]] = []
        if debit.get("pay") == "stored":
            # Principal comes back first, then bonus: the parts add up to what it
            # gives back; what is kept comes off the bonus first.
            cash_taken = -sum(c for p, _n, c in debit["deltas"] if p == "cash")
            cash_back = sum(c for q in prior for p, _n, c in q["deltas"] if p == "cash")
            to_cash = min(money, cash_taken - cash_back)
            to_bonus = money - to_cash
            off_bonus = min(kept, to_bonus)
            to_cash -= kept - off_bonus
            deltas += [("cash", self.node, to_cash), ("bonus", self.node, to_bonus - off_bonus)]
        elif package:
            deltas.append((f"pkg:{debit['package']}", self.node, share))
        if points:
            deltas.append(("points", self.node, -points))
        return {"debit": debit_id, "member": member, "left": left, "share": share,
                "units": units, "money": money - kept, "points": points, "spent": spent,
                "kept": kept, "expires": expired if points else None, "deltas": deltas}

    def transfer_rights(self, operator: str, member: str, to: str, amount: int,
                        purse: str = "cash") -> dict[str, Any]:
        """Give some of this node's rights on a purse to another branch. Only the holder
        can give its rights away, so this runs at the giving node."""
        self.authorise(operator, "rights.transfer")
        self._not_closing(to)
        return self._transfer(member, purse, to, check_amount(amount), operator,
                              known=True)

    def _not_closing(self, to: str) -> None:
        """An operator's move of rights to a branch that handed its own over (a shop
        closing for good) is refused: they would be stranded once it is revoked, and
        nothing moves them on (the rebalancer sends none there). A grant for a sale it
        makes meanwhile is not an operator's move and still goes."""
        if to in views.handed_over(cast("Ledger", self)):
            raise InvalidInput(f"branch {to} has handed its members' rights over (a shop "
                               "closing): rights sent there would be stranded once it "
                               "closes; send them to a branch that stays")

    def hand_over_rights(self, operator: str, to: str) -> dict[str, Any]:
        """Give every right this branch holds, of every member and purse (stored value,
        bonus, points, packages, coupons; not goods, which move by `stock ship`), to
        branch `to`: what a shop closing for good does before its certificate is
        revoked, since only a branch may lower its own rights and a revoked one's
        would be stranded, its members' money unspendable anywhere.

        Written as ordinary transfers (each a member's purse, `reason` "handover"),
        HANDOVER_BATCH to a commit, each commit reading what is held inside its
        transaction; rights of members merged into another are swept to their
        survivor first. Run again, it moves what came in since (a peer's grant, a
        top-up) and nothing twice. Returns the members, entries and amounts moved."""
        self.authorise(operator, "rights.transfer")
        check_node_id(to)
        if to == self.node:
            raise InvalidInput("a branch cannot hand its rights over to itself")
        self._require_branch(to, "rights")
        self._not_closing(to)
        handed = handed_to(self.storage.conn, self.node)
        if handed is not None and handed[0] != to:
            # The first hand-over names the branch that refunds this shop's sales, at
            # every replica (write rule refund-own): one branch, not two.
            raise InvalidInput(f"this branch handed its members' rights over to "
                               f"{handed[0]} already: hand over again to {handed[0]}, "
                               "which refunds this shop's sales")
        ledger = cast("Ledger", self)
        # What only this branch may take back, taken back before it goes: a surplus
        # check-in of its own (write rule reversal-own) seen once it synced, handed over
        # before its next daily pass, stayed paid for good (500 points too many).
        ledger.reconcile_checkins()
        self._sweep(dict.fromkeys(m for m, _p, _a in views.rights_held_rows(ledger, self.node)))
        moved: dict[str, int] = {}
        members: set[str] = set()
        entries = 0
        while True:
            def plan() -> tuple[list[Write], list[dict[str, Any]]]:
                done = [self._entry("transfer", m, deltas=[(p, self.node, -n), (p, to, n)],
                                    amount=n, to=to, op=operator,
                                    reason=HANDOVER_REASON)
                        for m, p, a in views.rights_held_rows(ledger, self.node,
                                                              HANDOVER_BATCH)
                        for n in pieces(a)]
                return (self._together(*done) if done else []), done
            batch = self._commit(plan)
            if not batch:
                break
            for e in batch:
                purse = e["deltas"][0][0]
                moved[purse] = moved.get(purse, 0) + e["amount"]
                members.add(e["member"])
            entries += len(batch)
        if handed is None and not entries:
            # A shop holding nothing (its members' value all spent, or it only sold at
            # the till) still names its receiver: its first hand-over record is what
            # makes that branch refund its sales (write rule refund-own) and keeps the
            # rebalancer from sending it rights. A transfer of nothing, of its walk-in
            # customer: it moves no rights (transfer-balanced, amount-moved hold).
            def mark() -> tuple[list[Write], dict[str, Any]]:
                e = self._entry("transfer", walk_in(self.node), to=to, op=operator,
                                reason=HANDOVER_REASON)
                return [self._entry_write(e)], e
            self._commit(mark)
            entries = 1
        return {"to": to, "members": len(members), "entries": entries, "moved": moved}

    def _require_branch(self, to: str, what: str, *, unmet_ok: bool = False) -> None:
        """Refuse to send `what` to `to` unless it is a branch the chain knows. Only
        `to` may ever lower what it is given (the own-rights write rule), so rights or
        units sent to a branch that does not exist are stranded for good. Known: a
        branch the rule `branches` names (the owner's list, if the chain keeps one),
        a writer whose signed log this store holds, or a peer this store has synced
        with (a session under its chain certificate, or its sealed sync file: a new
        branch that has synced but not yet sold anything, before the owner lists it);
        never one whose certificate the chain revoked (a shop closed for good) nor one
        blocked here for a proven fault, whose writes are not taken any more, so
        nothing could come back from it. The caller refuses this node itself with its
        own sentence."""
        listed = self.rule("branches") or {}
        blocked = to in self.storage.log.blocked()
        if blocked or self.retired(to):
            why = ("blocked here for a proven fault" if blocked
                   else "closed: the chain revoked its certificate")
            raise InvalidInput(f"branch {to} is {why}; {what} sent there could never "
                               "be spent or come back")
        at_work = views.branches_known(cast("Ledger", self))
        if to in listed or to in at_work:
            return
        known = sorted({n for n in set(listed) - {self.node} - self.storage.log.blocked()
                        if not self.retired(n)} | at_work)
        if unmet_ok and not known and not listed and not self.storage.log.blocked():
            # A store that knows no other branch at all cannot tell a typo from a
            # branch it has not met yet: a new chain's first rights transfer, files
            # carried one way (issue 2's acceptance: A sends SH02 rights before it has
            # heard from SH02). Once it knows any branch, or the chain lists its
            # branches, one it does not know is refused. (A member's home, stock and a
            # whole shop's hand-over wait for the branch to be met.)
            return
        # A name only where it says more than the id ("SH02 SH02" read as a list of two).
        names = ", ".join(f"{n} {listed[n]}" if listed.get(n) not in (None, "", n) else n
                          for n in known)
        raise InvalidInput(
            f"{to} is not a branch of this chain"
            + (f" (known here: {names})" if names else " (no other branch is known here)")
            + ": a branch becomes known when the owner adds it to the rule branches, "
            "or once it has synced with this branch")

    def grant_rights(self, member: str, purse: str, to: str, shortfall: int, *,
                     asker: str | None = None) -> dict[str, Any] | None:
        """Answer a peer's request for rights (see escrow.grant_amount); None if none.
        `asker`: the branch a relayed request is for (`to` relays it), whose budget
        it counts against, with `to`'s relays together (escrow.GrantBudget)."""
        if not PURSE.match(purse) or not ID.match(member):
            raise RemoteProtocolError("bad rights request")
        if purse in GOODS_PURSES:  # units move by shipping them (crdtledger.goods)
            return None
        check_node_id(to)
        # Never to a branch proven to lie here, nor one the chain revoked: nothing it
        # writes is taken any more, so what it is given is stranded (as an operator's
        # transfer is refused, _require_branch). A liar caught forking was granted
        # half of each member's rights, one request each. The branch a relayed request
        # is for too: a hub not yet holding the list relays a revoked branch's request,
        # and what it is given is passed on to that branch.
        blocked = self.storage.log.blocked()
        if any(n in blocked or self.retired(n) for n in {to, asker or to}):
            return None
        if not (self.grants.take(asker, via=to) if asker is not None and asker != to
                else self.grants.take(to)):
            return None
        # Rights held here for members merged into it are its own: swept first.
        # A request naming a member merged away comes from a branch that had not
        # heard of the merge when its till asked: it is answered from the group's
        # survivor, which then holds everything this branch held for the group (the
        # merged id, nothing). The transfer names the survivor, the only id whose
        # rights here it may lower (never below zero). The asker takes it after the
        # merge, which comes before it in what this branch sends (its own log, or
        # the merge's record it relays in the order it learned it), so its till's
        # retry of the merged id acts for the survivor and spends it.
        group = views.member_group(self.storage.conn, member)
        self._sweep(group[1:])
        member = group[0]
        own = self._rights(member, purse).get(self.node, 0)
        give = escrow.grant_amount(own, shortfall)
        if to in views.handed_over(cast("Ledger", self)):
            # A closing shop still selling gets what its sale lacks, no cushion to
            # sit on once it is revoked.
            give = min(own, shortfall)
        if give <= 0 or to == self.node:
            return None
        return self._transfer(member, purse, to, give, f"sync@{self.node}")

    def grantable(self, member: str, purse: str) -> dict[str, int]:
        """Each branch's rights a request for `member`'s `purse` is granted from: the
        group's it acts for (views.member_group), summed per branch, as grant_rights
        here gives after its sweep and a holder that knows of the merge does too. A
        hub judging a request it relays (core._relay) by the asked id alone saw
        nothing of a merged-away id here and emptied its peers' rights into itself
        first, though it held the survivor's."""
        group = views.member_group(self.storage.conn, member)
        return {str(n): int(a) for n, a in self.storage.conn.execute(
            f"SELECT node, SUM(amount) FROM rights WHERE member {views.in_(group)} "
            "AND purse = ? GROUP BY node ORDER BY node", [*group, purse]) if a != 0}

    def _transfer(self, member: str, purse: str, to: str, amount: int, operator: str,
                  *, known: bool = False) -> dict[str, Any]:
        """`known`: check that `to` is a branch the chain knows (an operator's
        transfer; a grant goes to the peer that asked for it over a sync session, a
        node the chain enrolled)."""
        check_node_id(to)
        if to == self.node:
            raise InvalidInput("a branch cannot transfer rights to itself")
        if not PURSE.match(purse):
            raise InvalidInput(f"unknown purse {purse!r}")
        if purse in GOODS_PURSES:
            raise InvalidInput("stock moves between branches by shipping it (stock ship)")
        self._live_member(member)
        entry = self._entry("transfer", member, deltas=[(purse, self.node, -amount),
                                                        (purse, to, amount)],
                            amount=amount, to=to, op=operator)
        own = self._rights(member, purse).get(self.node, 0)
        if amount > own:
            raise InvalidAmount(
                f"this branch holds {format_purse(purse, own)} of the member's {purse}; "
                f"it cannot give {format_purse(purse, amount)}")
        if known:
            self._require_branch(to, "rights", unmet_ok=True)
        return self._post(entry, {purse: amount})

    def redeem_points(self, operator: str, member: str | None, points: int, gift: str,
                      *, card: str | None = None, pin: str | None = None) -> dict[str, Any]:
        """积分兑换 of `gift`, what was given for the points. For the member, or by the
        card swiped (`card`, `pin`: checked as a debit's, so a card reported lost
        redeems nothing)."""
        self.authorise(operator, "points.redeem")
        points = check_count(points, "points")
        member, _ = self._resolve(member, card, pin)
        # Named, not blank: a redemption naming no gift read in the history, the audit
        # trail and the books as points gone for nothing anyone can check.
        gift = check_text(gift, "gift", required=True)
        return self._post_spend(member, points, lambda: self._entry(
            "redeem", member, deltas=[("points", self.node, -points)], points=points,
            gift=gift, op=operator))

    def convert_points(self, operator: str, member: str | None, points: int, *,
                       card: str | None = None, pin: str | None = None) -> dict[str, Any]:
        """积分转储值: points become bonus value at the chain's conversion rate (for the
        member, or by the card swiped, as redeem_points)."""
        self.authorise(operator, "points.redeem")
        points = check_count(points, "points")
        member, _ = self._resolve(member, card, pin)
        per_yuan = points_per_yuan(self.rule("conversion"))
        value = points * 100 // per_yuan
        if value <= 0:
            raise InvalidAmount(f"{points} points are worth less than one fen")
        return self._post_spend(member, points, lambda: self._entry(
            "convert", member, deltas=[("points", self.node, -points),
                                       ("bonus", self.node, value)],
            amount=value, points=points, op=operator))

    def correct(self, operator: str, member: str, purse: str, change: int, reason: str,
                approver: tuple[str, str] | None = None) -> dict[str, Any]:
        """An approved manual adjustment; a decrease still needs this node's rights."""
        self.authorise(operator, "adjust")
        if not PURSE.match(purse) or purse in GOODS_PURSES:  # stock: stock adjust
            raise InvalidInput(f"unknown purse {purse!r}")
        if isinstance(change, bool) or not isinstance(change, int) or change == 0:
            raise InvalidAmount("a correction is a non-zero whole number")
        check_amount(abs(change))
        reason = check_text(reason, "reason", required=True)
        if purse.startswith(COUPON_PREFIX) and change > 0:
            # Write rule coupon-unit: every branch would refuse the record and block
            # this one for it.
            raise InvalidInput("a coupon is created only by issuing it (coupon issue): a "
                               "correction can take a coupon away, not give one")
        survivor = views.canonical(self.storage.conn, member)
        if change < 0 and self._gone(survivor):
            # Value that reached them after all (a top-up or a refund written while
            # another branch erased them) is settled here: taken off, as the owner
            # pays it out or writes it off. Nothing can be added.
            member = survivor
        else:
            member, _ = self._acting(member)
        worth = self._correction_worth(member, purse, abs(change))
        approved = None
        # Counted with what this operator corrected today without an approver: one
        # correction of 100.01 needed an approver, thirty of 100.00 needed none.
        before = self._corrected_today(operator)
        if worth + before > int(self.rule("approval")["correction_limit"]):
            what = (f"a correction of {format_yuan(change)}" if purse in MONEY_PURSES else
                    f"a correction of {change:+d} {purse} (worth {format_yuan(worth)})")
            if before:
                what += f" (after {format_yuan(before)} corrected today without one)"
            approved = self._approve(operator, approver, what)
        entry = self._entry("correction", member, deltas=[(purse, self.node, change)],
                            amount=abs(change), reason=reason, op=operator,
                            approver=approved)
        return self._post(entry, {purse: -change})

    def _correction_worth(self, member: str, purse: str, n: int) -> int:
        """What `n` units of `purse` are worth in fen, for the approval limit: points at
        the conversion rate (points become bonus by `points convert`), a package's uses
        at the price it was sold for; NotFound for a package not the member's."""
        if purse == "points":
            return -(-n * 100 // points_per_yuan(self.rule("conversion")))
        if purse.startswith("pkg:"):
            row = self.storage.conn.execute(
                "SELECT member, amount, body FROM entries WHERE id = ? AND kind = 'package'",
                (purse[4:],)).fetchone()
            if row is None or views.canonical(self.storage.conn, row[0]) != member:
                raise NotFound(f"no package {purse[4:]} of member {member} is known here")
            body = json.loads(row[2])
            uses = body.get("qty")
            paid = -(-n * int(row[1]) // (uses if isinstance(uses, int) and uses > 0 else 1))
            # At the list price too: a package sold for nothing made its uses worth
            # nothing, and a correction adding a million of them needed no approver.
            return max(paid, n * self._list_price(body.get("service")))
        return n if purse in MONEY_PURSES else 0

    def _unapproved_today(self, operator: str, kind: str, members: Sequence[str] = ()
                          ) -> list[tuple[str, int, Any]]:
        """(member, amount, body) of `operator`'s entries of `kind` written at this branch
        today, or on any later day, without an approver: what a limit counts together
        with the next one, so that splitting an amount does not pass it. Later days
        too: a PC's clock set back a day at a time made each day's count start afresh
        (600.00 corrected in one session under a limit of 100.00). From the day it would
        be had the clock not been put forward by hand (`unmoved_day`): put forward a
        day at a time, each day's count started afresh too. Read by an index, not as
        the chain's whole day (some 27,000 entries by the evening of a 300-branch chain,
        about 7 ms per 10,000 on the 2-core VM): with `members`, theirs alone
        (`entries_member`); for the kinds of `storage.LIMITED`, this operator's own
        here (`entries_limited`)."""
        among = (f" AND member IN ({','.join('?' * len(members))})" if members
                 else f" AND {LIMITED_KINDS}" if kind in LIMITED else "")
        return [(str(m), int(a), json.loads(b)) for m, a, b in self.storage.conn.execute(
            "SELECT member, amount, body FROM entries WHERE id >= ? AND kind = ? AND "
            "node = ? AND op = ? AND json_extract(body, '$.approver') IS NULL" + among,
            (self.storage.day_start_id(self.unmoved_day()), kind, self.node, operator,
             *members))]

    def _topped_up_today(self, operator: str, member: str) -> int:
        """What `operator` topped up today here without an approver for `member` (any
        member of its merge group)."""
        group = views.member_group(self.storage.conn, member)
        return sum(amount for _m, amount, _body
                   in self._unapproved_today(operator, "topup", group))

    def _corrected_today(self, operator: str) -> int:
        """What `operator`'s corrections today here without an approver were worth, each
        as `correct` valued it (a package's uses at today's worth, a package no longer
        known at its units)."""
        total = 0
        for member, amount, body in self._unapproved_today(operator, "correction"):
            deltas = body.get("deltas") or [[""]]
            try:
                total += self._correction_worth(views.canonical(self.storage.conn, member),
                                                str(deltas[0][0]), amount)
            except NotFound:
                total += amount
        return total

    def _given_today(self, operator: str) -> int:
        """What `operator`'s packages sold today at this branch below half their list
        worth gave away (list less price), unapproved: counted together against the
        limit, since 26 packages of 39 uses for 0.00, each under it, gave 129,792.00."""
        given = 0
        for _member, price, body in self._unapproved_today(operator, "package"):
            uses = body.get("qty")
            given += given_away((uses if isinstance(uses, int) else 0)
                                * self._list_price(body.get("service")), price)
        return given

    def _list_price(self, service: Any) -> int:
        """A service's price in the price list now, 0 for one no longer listed."""
        item = self.rule("services").get(service) if isinstance(service, str) else None
        return int(item["price"]) if isinstance(item, dict) else 0

    def sell_package(self, operator: str, member: str | None, service: str, uses: int,
                     price: int, pay: str | None = None, *, card: str | None = None,
                     pin: str | None = None, approver: tuple[str, str] | None = None
                     ) -> dict[str, Any]:
        """计次卡: `uses` of a service, paid from stored value ("stored") or at the till
        by a payment method of the rule (the rule's first by default). For the member,
        or by the card swiped (`card`, `pin`: checked as a debit's, so a card reported
        lost buys nothing). The price is the till's to set (packages sell below the
        list), but one under half the uses' list worth gives value away: once what an
        operator's such packages gave today passes the top-up limit, each needs an
        approver, as a top-up of that much does (a cashier alone sold a million uses
        for 0.00, and the till balanced). One above the list needs an approver too."""
        self.authorise(operator, "package.sell")
        if service not in self.rule("services"):
            raise NotFound(f"no service {service} in the price list")
        uses = check_count(uses, "uses")
        price = check_amount(price, allow_zero=True)
        member, _ = self._resolve(member, card, pin)
        pay = self._pay(pay, ("stored",))
        worth = uses * self._list_price(service)
        approved = None
        given = given_away(worth, price)
        if price > worth:
            # Above the list it moves no value, but the till and the day report take a
            # made-up amount (a drawer short of cash taken balances by it, or a member's
            # stored value is drained by it): no honest sale is above the list, so each
            # needs an approver, whatever the amount.
            approved = self._approve(operator, approver, (
                f"a package of {uses} x {service} for {format_yuan(price)}, above its list "
                f"price {format_yuan(worth)},"))
        elif given and given + self._given_today(operator) > int(
                self.rule("approval")["topup_limit"]):
            approved = self._approve(operator, approver, (
                f"a package of {uses} x {service} for {format_yuan(price)} (list "
                f"{format_yuan(worth)})"))
        entry = self._entry("package", member, amount=price, service=service, qty=uses, pay=pay,
                            paid=price if pay != "stored" else 0, op=operator,
                            approver=approved)
        deltas = [(f"pkg:{entry['id']}", self.node, uses)]
        needs: dict[str, int] = {}
        if pay == "stored" and price:
            spent = _spend(self.node, self._purses(member), price)
            needs = {purse: -change for purse, _node, change in spent}
            deltas += spent
        entry["deltas"] = [list(d) for d in deltas if d[2]]
        return self._post(entry, needs)

    def expire_points(self, operator: str, member: str) -> list[dict[str, Any]]:
        """Write off the points past their expiry that this node is answerable for
        (views.expired_lots_owed), as far as it holds them: one entry per lot, each
        naming it, all in one commit (none when nothing is due)."""
        self.authorise(operator, "adjust")
        return self._write_off_points(member, operator)

    def expire_due_points(self, operator: str | None = None) -> list[dict[str, Any]]:
        """The node's own write-offs (housekeeping, or an operator allowed to adjust):
        every member whose expired points this node owes a write-off for. Each branch
        writes off the lots earned here, and those whose earner holds no rights any
        more up to what that earner gave it, from its own rights only: together the
        chain writes off each expired point once, wherever its rights sit, and a lot a
        liar wrote expired is its own to write off, not an honest holder's
        (views.expired_lots_owed)."""
        if operator is not None:
            self.authorise(operator, "adjust")
        return self.write_off_expired(views.members_with_expired_points(
            cast("Ledger", self), self.node, self.today()), operator)

    def write_off_expired(self, members: list[str], operator: str | None = None
                          ) -> list[dict[str, Any]]:
        """The expired points this node owes of each of `members`, written off."""
        done = []
        for member in members:
            done += self._write_off_points(member, operator or f"expiry@{self.node}")
        return done

    def _write_off_points(self, member: str, operator: str) -> list[dict[str, Any]]:
        """Write off what views.expired_lots_owed says this node owes of `member`'s
        group, one entry per lot naming it (`ref`), in the survivor's name and from the
        survivor's rights here, after the sweep of the merged members' rights here
        (written first, in the same commit). Worked out inside the write transaction:
        what a redemption wrote off meanwhile counts."""
        conn = self.storage.conn
        member = views.canonical(conn, member)
        group = self._folded(member)
        if len(group) > 1:
            self._owe_sweep(group[1:])
        if self._owed is None and not views.expired_lots_owed(
                cast("Ledger", self), member, self.node):
            return []

        def plan() -> tuple[list[Write], list[dict[str, Any]]]:
            offs = self._write_offs(member, operator)
            if not offs:
                return [], []
            escrow.require("points", self.node, self._purses(member).get("points", {}),
                           sum(e["points"] for e in offs), member)
            return self._together(*offs), offs

        return self._commit(plan)

    def give_back_write_offs(self) -> list[dict[str, Any]]:
        """Give back to this node's own points rights what its write-offs took beyond
        the points that had expired (crdtledger.lots.take returns it, and the lots keep
        those points): a write-off made before this node heard of a spend of the lot
        at a branch cut off from it. Each `expiry` entry of this node gets one entry of
        its kind raising its points rights, naming it in `ref`, for what is still to
        give back, up to what the group's lots hold beyond its rights. Found where they
        do (one query), then the group folded once (crdtledger.lots.replay, which
        collects each write-off's excess): the same figure at every replica."""
        conn = self.storage.conn
        done: list[dict[str, Any]] = []
        for member, gap in views.points_beyond_rights(cast("Ledger", self)).items():
            group = views.member_group(conn, member)
            if conn.execute(f"SELECT 1 FROM entries WHERE member {views.in_(group)} AND "
                            "kind = 'expiry' AND node = ? LIMIT 1",
                            [*group, self.node]).fetchone() is None:
                continue  # none of this node's write-offs: nothing of its to give back
            excess: dict[str, int] = {}  # every write-off's, in one fold of the group
            lots.replay(conn, group, excess=excess)
            owed: list[tuple[str, int]] = []
            for eid, n in sorted(excess.items()):
                if not eid.endswith(f".{self.node}"):
                    continue  # another branch's to give back
                given = sum(points_change(json.loads(b)) for (b,) in conn.execute(
                    "SELECT body FROM entries WHERE ref = ? AND kind = 'expiry' "
                    "AND node = ?", (eid, self.node)))
                # Never more than the lots hold beyond the rights: a liar's entries
                # (an `expiry` naming the lot first, rights of its own from nothing)
                # inflated an honest write-off's excess, and the branch raised its own
                # rights by 120 points for a gap of one.
                back = min(n - given, gap)
                if back > 0:
                    owed.append((eid, back))
                    gap -= back
            if not owed:
                continue

            def plan(owed: list[tuple[str, int]] = owed, member: str = group[0]
                     ) -> tuple[list[Write], list[dict[str, Any]]]:
                back = [self._entry("expiry", member, deltas=[("points", self.node, n)],
                                    points=n, ref=eid, reason="given back",
                                    op=f"expiry@{self.node}") for eid, n in owed]
                return self._together(*back), back

            # Booked after the write-offs it names, as a refund after its sale: one
            # made while this PC ran ahead was given back by an id dated before it.
            with self._booked_after(max(eid for eid, _n in owed)):
                done += self._commit(plan)
        return done

    def _write_offs(self, member: str, operator: str) -> list[dict[str, Any]]:
        """The `expiry` entries for what this node owes of `member`'s expired lots
        (views.expired_lots_owed), one per lot, each naming the lot it writes off: the
        fold takes that lot first (crdtledger.lots.take), so a lot in front that
        another branch answers for neither holds this one up nor is paid by it."""
        return [self._entry("expiry", member, deltas=[("points", self.node, -n)],
                            points=n, ref=lot, op=operator)
                for lot, n in views.expired_lots_owed(cast("Ledger", self), member,
                                                      self.node)]

    def _post_spend(self, member: str, points: int, make: Callable[[], dict[str, Any]]
                    ) -> dict[str, Any]:
        """Commit the entry `make` builds, spending `points` of `member`'s points, after
        the write-offs `_spend_points` owes first, all in one commit."""
        def plan() -> tuple[list[Write], dict[str, Any]]:
            offs = self._spend_points(member, points)
            entry = make()
            return [self._entry_write(e) for e in (*offs, entry)], entry

        return self._commit(plan)

    def _spend_points(self, member: str, points: int) -> list[dict[str, Any]]:
        """Inside a write plan, before the entry spending `points` of `member`'s points
        is made: refuse the spend unless that many are valid today (wherever their
        rights sit, so every branch alike) and held here (escrow), and return the
        write-offs of the expired points this node owes (views.expired_lots_owed, one
        entry per lot, each naming it), to be written first in the same commit, so
        that the spend cannot use those expired points' rights. In the spend's own
        transaction: a refused spend writes nothing, not even the write-offs (they
        used to commit first)."""
        self.check_clock_for("spending points (their expiry)")
        pts = views.points(cast("Ledger", self), member)
        if points > pts["usable"]:
            expired = pts["expired_unwritten"]
            raise InsufficientFunds("points", pts["usable"], points,
                                    f" ({expired} more have expired)" if expired else "")
        held = dict(self._purses(member).get("points", {}))
        # Only what this node answers for: rights it holds beyond that (another
        # branch's lot expired while its rights sat here) pay for valid points, and the
        # usable check above bounds the spend whoever's rights they are.
        offs = self._write_offs(member, f"expiry@{self.node}")
        if offs:
            held[self.node] -= sum(e["points"] for e in offs)
        escrow.require("points", self.node, held, points, member)
        return offs

    # --- views --------------------------------------------------------------

    def balance(self, member: str) -> dict[str, Any]:
        return views.balance(self.storage.conn, member)

    def rights(self, member: str, purse: str = "cash") -> dict[str, int]:
        return {n: a for n, a in sorted(self._rights(member, purse).items()) if a != 0}

    def purses_after(self, member: str, entry_id: str, *, as_written: bool = False
                     ) -> dict[str, int]:
        return views.purses_after(self.storage.conn, member, entry_id, as_written=as_written)

    def history(self, member: str, limit: int = 50) -> list[dict[str, Any]]:
        return views.history(self.storage.conn, member, limit)

    def entry(self, entry_id: str) -> dict[str, Any]:
        row = self.storage.conn.execute(
            "SELECT body FROM entries WHERE id = ?", (entry_id,)).fetchone()
        if row is None:
            raise NotFound(f"no entry {entry_id}")
        return dict(json.loads(row[0]))


def _by_units(debit: Mapping[str, Any]) -> bool:
    """A package's debit is refunded by uses, a goods sale by units; others by fen."""
    return debit.get("pay") == "package" or debit.get("goods") is not None


def refund_whole(debit: Mapping[str, Any]) -> int:
    """What a refund of `debit` can give back at most, in the unit it is refunded in
    (`refund_left`): the counter tells a debit partly refunded by it."""
    return int((debit.get("qty") or 1) if _by_units(debit) else debit.get("amount") or 0)


def _refund_left(debit: Mapping[str, Any], prior: list[dict[str, Any]]) -> int:
    """What is left to refund of `debit` after its refunds `prior` (`refund_left`)."""
    if _by_units(debit):
        return refund_whole(debit) - sum(int(p.get("qty") or 0) for p in prior)
    return refund_whole(debit) - sum(sale_share(p) for p in prior)
