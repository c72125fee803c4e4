"""What the tills of a chain do all day, as real ledger operations.

Members have a home branch and visiting habits (a few other branches, mostly in
their region); branches open 10:00-22:00 local time, give or take an hour; customers
arrive at each branch as a Poisson process. A customer has a service debited from
the stored-value card (with the level discount), pays at the till, uses a package,
tops up (with the promotion of the day), buys a package, gets a refund, redeems or
converts points, edits preferences, loses a card and gets a replacement. A cashier
looks at the balance first (`Ledger.balance` on the node), as at a real counter, and
a customer short of money tops up before the service. A few "hot" members share one
card across many branches at once (a family or company card).

Every decision is drawn from the workload's own random stream (derived from the
seed), so faults can be switched off when shrinking without changing what the
customers do. Card PINs are not used: their scrypt hash takes ~30 ms per swipe and
its salt is random (see README).
"""

from __future__ import annotations

import bisect
import random
from collections import deque
from dataclasses import dataclass, field
from datetime import date, timedelta
from functools import partial
from typing import TYPE_CHECKING, Any

from crdtledger import bookings
from crdtledger.errors import ApprovalRequired
from crdtledger.ledger import Ledger
from crdtledger.views import packages, points
from sim.engine import DAY, HOUR, MINUTE, SECOND
from sim.oracles import Intent

OPERATOR_PASSWORD = "sim-till-password"  # sim.world.OPERATOR_PASSWORD

if TYPE_CHECKING:
    from sim.node import Attempt, Outcome
    from sim.world import World

SERVICES = ("FOOT60", "BODY90", "HAIR")
PRICES = {"FOOT60": 12800, "BODY90": 19800, "HAIR": 6800}
TOPUPS = (50000, 100000, 100000, 200000, 300000)
PROMOTIONS = (
    [{"min": 100000, "bonus": 20000, "name": "充1000送200"},
     {"min": 50000, "bonus": 8000, "name": "充500送80"}],
    [{"min": 200000, "bonus": 50000, "name": "充2000送500"}],
    [{"min": 100000, "bonus": 15000, "name": "周末充1000送150"}],
)
# One goods item (crdtledger.goods), written to the catalogue by the head office on the
# first morning: branches buy it in when their shelf is nearly empty and sell it.
GOODS, GOODS_PRICE = "G01", 8800
# Branches with a bookable technician (crdtledger.bookings); customers of any branch
# book them now and then.
TECHNICIAN_BRANCHES = 3
OPEN_HOUR = 10
EXPIRE_DAYS = 5  # points lots' life: shorter than the holiday week
CLOSE_HOUR = 22


@dataclass
class Member:
    index: int
    home: int
    card_no: str
    service: str
    hot: bool = False
    id: str | None = None  # known once registered (acknowledged at home)
    cards: int = 1


@dataclass
class Branch:
    index: int
    open_at: int  # offset in the local day, µs
    close_at: int
    visitors: list[int] = field(default_factory=list)  # member indexes
    weights: list[float] = field(default_factory=list)
    cum: list[float] = field(default_factory=list)  # cumulative weights
    debits: deque[str] = field(default_factory=lambda: deque(maxlen=50))
    booked: deque[str] = field(default_factory=lambda: deque(maxlen=20))  # bookings made here


class Workload:
    def __init__(self, world: World) -> None:
        self.world = world
        cfg = world.config
        self.rng = random.Random(f"{cfg.seed}:workload")
        self.n = cfg.nodes
        self.ops = 0
        self.receipts = 0  # Idempotency-Keys sent so far
        self.stopped = False
        self.members: list[Member] = []
        self.branches: list[Branch] = []
        rng = self.rng
        for i in range(self.n):
            open_at = (OPEN_HOUR * HOUR + rng.choice((-1, 0, 0, 0, 1)) * HOUR)
            close_at = (CLOSE_HOUR * HOUR + rng.choice((-1, 0, 0, 1)) * HOUR)
            self.branches.append(Branch(i, open_at, close_at))
        weights: list[list[tuple[int, float]]] = [[] for _ in range(self.n)]
        for m in range(cfg.member_count):
            self._new_member(weights, hot=m < cfg.hot_members)
        for b in self.branches:
            self._index(b, weights[b.index])
        # Arrivals per branch per open hour, so that a day has about ops_per_node ops.
        self.rate_per_us = [cfg.ops_per_node / max(1, (b.close_at - b.open_at))
                            for b in self.branches]

    def _new_member(self, weights: list[list[tuple[int, float]]], hot: bool = False) -> Member:
        rng = self.rng
        idx = len(self.members)
        home = rng.randrange(self.n)
        m = Member(idx, home, f"C{idx:06d}", rng.choice(SERVICES), hot=hot)
        self.members.append(m)
        weights[home].append((idx, 1.0))
        if not hot and rng.random() < 0.5:
            region = self.world.region_of[home]
            for _ in range(rng.randint(1, 3)):
                if rng.random() < 0.6:
                    peers = [i for i in range(self.n) if self.world.region_of[i] == region]
                else:
                    peers = list(range(self.n))
                other = rng.choice(peers)
                if other != home:
                    weights[other].append((idx, rng.uniform(0.05, 0.3)))
        return m

    @staticmethod
    def _index(b: Branch, pairs: list[tuple[int, float]]) -> None:
        total = 0.0
        b.visitors = []
        b.weights = []
        b.cum = []
        for idx, w in pairs:
            total += w
            b.visitors.append(idx)
            b.weights.append(w)
            b.cum.append(total)

    # --- schedule -----------------------------------------------------------------

    def start(self) -> None:
        """Register every member at home before the first opening (spread over the
        small hours, so that they replicate like anything else), then open the shops."""
        world = self.world
        spacing = max(1, (2 * HOUR) // max(1, len(self.members)))
        for i, m in enumerate(self.members):
            world.engine.at(30 * MINUTE + i * spacing, partial(self._register, m))
        for b in self.branches:
            self._next_arrival(b, 0)
        if self.world.config.hot_members:
            world.engine.at(self.world.day_start(0) + OPEN_HOUR * HOUR, self._hot_burst)
        for d in range(world.config.days):
            world.engine.at(world.day_start(d) + 8 * HOUR, partial(self._daily_rule, d))

    def _next_arrival(self, b: Branch, after: int) -> None:
        """The next customer at branch b: Poisson while open, else at next opening."""
        world = self.world
        t = after + int(self.rng.expovariate(self.rate_per_us[b.index]) + 1)
        local = world.local_offset(t)
        if local < b.open_at:
            t += b.open_at - local
        elif local >= b.close_at:
            t += DAY - local + b.open_at
        if t >= world.workload_end:
            return
        world.engine.at(t, lambda: self._arrive(b, t))

    def _budget(self, n: int = 1) -> bool:
        limit = self.world.config.max_ops
        if self.stopped or (limit is not None and self.ops + n > limit):
            self.stopped = True
            return False
        return True

    def _arrive(self, b: Branch, t: int) -> None:
        self._next_arrival(b, t)
        if not self.world.serving(self.world.nodes[b.index]) or not self._budget():
            return
        rng = self.rng
        if rng.random() < 0.02 or not b.visitors:
            self._walk_in(b)
            return
        m = self.members[b.visitors[bisect.bisect(b.cum, rng.random() * b.cum[-1])]]
        if m.id is None:
            return  # registration not acknowledged (crashed home): they come back later
        self._customer(b, m)

    def _run(self, op_name: str, role: str = "cashier", /, **params: Any) -> Intent:
        """A till's request for an operation of the table (crdtledger.operations), as
        the HTTP API runs it: sent by the branch's operator in `role` (a cashier; a
        manager where a cashier may not), under an Idempotency-Key of its own (the
        till's receipt number), its schema, its permission, then the ledger. A
        parameter None is left out, as the counter leaves it out."""
        given = {k: v for k, v in params.items() if v is not None}
        self.receipts += 1
        return Intent(op_name, given, role, key=f"R{self.receipts:08d}")

    def _customer(self, b: Branch, m: Member) -> None:
        rng = self.rng
        node = self.world.nodes[b.index]
        ledger = node.ledger
        assert ledger is not None and m.id is not None
        mid = m.id
        r = rng.random()
        svc = m.service if rng.random() < 0.8 else rng.choice(SERVICES)
        if r < 0.55:
            self._debit(b, m, "debit.service", self._run(
                "debit", card=m.card_no, service=svc), PRICES[svc])
        elif r < 0.60:
            amount = rng.choice((1500, 2800, 5000, 8800, 12000))
            self._debit(b, m, "debit.amount", self._run(
                "debit", card=m.card_no, amount=amount), amount)
        elif r < 0.63:
            self._op(b, "debit.cash", self._run("debit", member=mid, service=svc, pay="cash"))
        elif r < 0.68:
            pkg = next((p for p in packages(ledger, mid) if p["remaining"] > 0), None)
            if pkg is None:
                self._debit(b, m, "debit.service", self._run(
                    "debit", card=m.card_no, service=svc), PRICES[svc])
            else:
                self._op(b, "debit.package", self._run(
                    "debit", member=mid, service=pkg["service"], pay="package",
                    package=pkg["id"]))
        elif r < 0.80:
            amount = rng.choice(TOPUPS)
            topup = self._run("topup", member=mid, amount=amount)
            if rng.random() < 0.03:
                # An older till sends a field the API does not know: refused with a
                # sentence (operations.validate), then sent as it should be.
                self._refused(b, "topup.typo", self._run(
                    "topup", member=mid, amount=amount, remark="老收银机"), "InvalidInput",
                    lambda: self._op(b, "topup", topup))
            else:
                self._op(b, "topup", topup)
        elif r < 0.83:
            stored = rng.random() < 0.3 and self._spendable(ledger, mid) >= 100000
            pay = "stored" if stored else "cash"
            self._op(b, "package", self._run("package.sell", member=mid, service="FOOT60",
                                             uses=10, price=100000, pay=pay))
        elif r < 0.85 and b.debits:
            debit_id = rng.choice(list(b.debits))
            part = rng.choice((None, 1000))
            # A goods sale is refunded by units (all of it: its unit back on the shelf).
            if "goods" in ledger.entry(debit_id):
                part = None
            refund = self._run("refund", "manager", debit_id=debit_id,
                               reason="customer complaint", amount=part)
            if rng.random() < 0.3:
                # The cashier tries first and is refused (a refund is a manager's:
                # operations.authorise); the manager then does it.
                self._refused(b, "refund.cashier", self._run(
                    "refund", debit_id=debit_id, reason="customer complaint", amount=part),
                    "PermissionDenied", lambda: self._op(b, "refund", refund))
            else:
                self._op(b, "refund", refund)
        elif r < 0.87:
            if points(ledger, mid)["total"] >= 1000:
                self._op(b, "redeem", self._run("points.redeem", member=mid, points=1000,
                                                gift="毛巾"))
        elif r < 0.88:
            if points(ledger, mid)["total"] >= 500:
                self._op(b, "convert", self._run("points.convert", member=mid, points=500))
        elif r < 0.90:
            strength = rng.choice(("轻", "中", "重"))
            self._op(b, "edit", self._run("member.edit", member=mid,
                                          prefs={"strength": strength}))
        elif r < 0.905:
            self._lose_card(b, m)
        elif r < 0.91:
            self._op(b, "expire", self._run("points.expire", "manager", member=mid))
        elif r < 0.93:
            self._goods(b, m)
        elif r < 0.945:
            self._coupon(b, m, svc)
        elif r < 0.955:
            self._booking(b, m)
        else:
            self._debit(b, m, "debit.service", self._run(
                "debit", card=m.card_no, service=svc), PRICES[svc])

    def _goods(self, b: Branch, m: Member) -> None:
        """A goods item over the counter: bought in (20) when the shelf is nearly empty,
        else one sold to the member, from stored value when they have enough."""
        ledger = self.world.nodes[b.index].ledger
        assert ledger is not None and m.id is not None
        mid = m.id
        if GOODS not in ledger.catalogue():  # the head office's catalogue not here yet
            return
        if ledger.stock_of(GOODS)["qty"] < 2:
            self._op(b, "stock.in", self._run("stock.in", "manager", goods=GOODS, qty=20))
            return
        pay = "stored" if self._spendable(ledger, mid) >= GOODS_PRICE else "cash"
        self._op(b, "sell", self._run("sell", goods=GOODS, qty=1, member=mid, pay=pay),
                 debit=True)

    def _booking(self, b: Branch, m: Member) -> None:
        """An appointment for tomorrow with a technician this branch knows of (its own:
        confirmed or refused at once; another branch's: a request that branch decides
        when it arrives), or a cancellation of one made here."""
        rng = self.rng
        ledger = self.world.nodes[b.index].ledger
        assert ledger is not None and m.id is not None
        techs = [t for t in bookings.technicians(ledger) if t["active"]]  # as offered
        if not techs:
            return
        if b.booked and rng.random() < 0.25:
            bid = b.booked.popleft()
            self._op(b, "booking.cancel", self._run("booking.cancel", booking=bid))
            return
        tech = rng.choice(techs)
        service = rng.choice(tech["services"])
        hour, minute = rng.randrange(10, 21), rng.choice((0, 30))
        day = date.fromisoformat(ledger.today()) + timedelta(days=1)
        at, mid = f"{day}T{hour:02d}:{minute:02d}", m.id

        def booked(outcome: Outcome, attempt: Attempt) -> None:
            if isinstance(outcome, dict):
                b.booked.append(str(outcome["id"]))

        self._op(b, "booking", self._run("booking.add", member=mid, technician=tech["id"],
                                         service=service, at=at), then=booked)

    def _coupon(self, b: Branch, m: Member, svc: str) -> None:
        """A coupon: the member's first available one comes off a service here (its
        unit fetched by the node from the branch holding it, as rights are), else this
        branch issues one (10.00 off). Used at most once chain-wide is checked by the
        rights checkers: one unit, never below zero anywhere."""
        ledger = self.world.nodes[b.index].ledger
        assert ledger is not None and m.id is not None
        mid = m.id
        ready = [c["coupon"] for c in ledger.coupons(mid) if c["status"] == "available"]
        if not ready:
            # Acknowledged by its entry's id, as every other write (the view calls it
            # `coupon`).
            self._op(b, "coupon.issue", self._run("coupon.issue", "manager", member=mid,
                                                  off=1000))
            return
        cid = ready[0]
        self._debit(b, m, "debit.coupon", self._run(
            "debit", card=m.card_no, service=svc, coupon=cid), PRICES[svc])

    @staticmethod
    def _spendable(ledger: Ledger, member: str) -> int:
        bal = ledger.balance(member)
        return int(bal["cash"]) + int(bal["bonus"])

    def _debit(self, b: Branch, m: Member, label: str, op: Any, price: int) -> None:
        """The cashier sees the balance; a customer short of it tops up first."""
        node = self.world.nodes[b.index]
        assert node.ledger is not None and m.id is not None
        mid = m.id
        if self._spendable(node.ledger, mid) >= price:
            self._op(b, label, op, debit=True)
            return
        amount = self.rng.choice(TOPUPS)

        def then(outcome: Outcome, attempt: Attempt) -> None:
            if isinstance(outcome, dict) and self._budget():
                self._op(b, label, op, debit=True)

        self._op(b, "topup", self._run("topup", member=mid, amount=amount), then=then)

    def _refused(self, b: Branch, label: str, op: Intent, expected: str,
                 then: Any) -> None:
        """A request the shop must refuse with `expected` (a LedgerError's name): done
        otherwise, it is a violation; refused (or lost in a crash), the till goes on
        with `then`."""
        world = self.world

        def done(outcome: Outcome, attempt: Attempt) -> None:
            name = type(outcome).__name__
            world.trace(world.engine.now, f"{world.nodes[b.index].name} {label} {name}")
            if name not in (expected, "Crashed"):
                from sim.checks import Violation

                world.fail(Violation("refusal", f"{world.nodes[b.index].name} {label}: "
                                                f"{op.name} {op.given} by the {op.role} "
                                                f"gave {outcome!r}, not {expected}",
                                     world.nodes[b.index].name))
            if self._budget():
                then()

        world.nodes[b.index].perform(label, op, done)

    def _op(self, b: Branch, label: str, op: Any, *, debit: bool = False,
            then: Any = None) -> None:
        self.ops += 1
        world = self.world

        def done(outcome: Outcome, attempt: Attempt) -> None:
            world.op_done(b.index, label, outcome, attempt, debit=debit, op=op)
            if debit and isinstance(outcome, dict) and outcome.get("pay") != "cash":
                b.debits.append(str(outcome["id"]))
            if (isinstance(outcome, ApprovalRequired) and isinstance(op, Intent)
                    and "approver" not in op.given and self._budget()):
                # Past the approval limit (a top-up counts with the cashier's others
                # for the member that day): the cashier calls the manager, who
                # approves it with their name and password, as at the counter.
                node = world.nodes[b.index].name
                self._op(b, label, self._run(op.name, op.role, **op.given, approver={
                    "name": world.operator_name("manager", node),
                    "password": OPERATOR_PASSWORD}), debit=debit, then=then)
                return
            if then is not None:
                then(outcome, attempt)

        world.nodes[b.index].perform(label, op, done)

    def _register(self, m: Member, b: Branch | None = None) -> None:
        """A new member at the counter: profile, card, first top-up."""
        if not self._budget(3):
            return
        branch = b or self.branches[m.home]
        node = self.world.nodes[branch.index]
        if node.name in self.world.closed:
            return  # they register elsewhere or not at all
        if not node.up:
            self.world.engine.after(10 * MINUTE, lambda: self._register(m, b))
            return
        idx = m.index
        name, phone = f"会员{idx}", f"139{idx:08d}"

        def registered(outcome: Outcome, attempt: Attempt) -> None:
            if not isinstance(outcome, str):
                return
            m.id = outcome
            self._op(branch, "card", self._run("card.issue", member=outcome,
                                               card_no=m.card_no))
            # A hot (shared) card starts with 10,000.00: two top-ups at the approval
            # limit (the second, counted with the first, approved by the manager).
            for amount in (500_000, 500_000) if m.hot else (self.rng.choice(TOPUPS),):
                self._op(branch, "topup", self._run("topup", member=outcome, amount=amount))

        self._op(branch, "member", self._run(
            "member.add", name=name, phone=phone, home=node.name, gender="F",
            prefs={"service": m.service}), then=registered)

    def _walk_in(self, b: Branch) -> None:
        weights: list[list[tuple[int, float]]] = [[] for _ in range(self.n)]
        m = self._new_member(weights)
        m.home = b.index
        self._index(b, [*zip(b.visitors, b.weights, strict=True), (m.index, 1.0)])
        self._register(m, b)

    def _lose_card(self, b: Branch, m: Member) -> None:
        """挂失 then 补卡: the customer carries the new card from now on."""
        old = m.card_no
        new = f"C{m.index:06d}-{m.cards}"

        def replaced(outcome: Outcome, attempt: Attempt) -> None:
            if isinstance(outcome, str):
                m.card_no = new
                m.cards += 1

        def lost(outcome: Outcome, attempt: Attempt) -> None:
            if isinstance(outcome, str) and self._budget():
                self._op(b, "card.replace", self._run("card.replace", "manager",
                                                      card_no=old, new_no=new),
                         then=replaced)

        self._op(b, "card.lost", self._run("card.lost", card_no=old), then=lost)

    def _daily_rule(self, day: int) -> None:
        """Head office changes the promotion of the day before opening."""
        body = PROMOTIONS[day % len(PROMOTIONS)]
        if self._budget() and self.world.nodes[0].up:
            self._op(self.branches[0], "rule", self._run(
                "rule.set", "owner", kind="promotions", body=body))
            if day == 0 and self._budget():
                # Points earned today expire within the run (after the holiday week,
                # sim.world.HOLIDAY_AT): each branch's daily pass writes them off.
                self._op(self.branches[0], "rule", self._run(
                    "rule.set", "owner", kind="earn",
                    body={"points_per_yuan": "1", "expire_days": EXPIRE_DAYS}))
            if day == 0 and self._budget():  # the catalogue's goods rule (a rule id)
                self._op(self.branches[0], "rule", self._run(
                    "goods.add", "owner", code=GOODS, name="精油", price=GOODS_PRICE,
                    cost=3000))
        # A bookable technician at each of the first branches, added there (its entry's
        # id is the technician's): only that branch decides its slots.
        for b in self.branches[:TECHNICIAN_BRANCHES] if day == 0 else ():
            if self._budget() and self.world.nodes[b.index].up:
                self._op(b, "technician", self._run(
                    "technician.add", "manager", code="T1", name="技师",
                    services="FOOT60,BODY90", hours="10:00-22:00"))

    def _hot_burst(self) -> None:
        """A shared card used at several branches within seconds (a family card)."""
        world = self.world
        rng = self.rng
        hot = [m for m in self.members if m.hot and m.id is not None]
        nxt = world.engine.now + int(rng.expovariate(1 / (20 * MINUTE)))
        local = world.local_offset(nxt)
        if local >= CLOSE_HOUR * HOUR:
            nxt += DAY - local + OPEN_HOUR * HOUR
        if nxt < world.workload_end:
            world.engine.at(nxt, self._hot_burst)
        if not hot:
            return
        m = rng.choice(hot)
        branches = rng.sample(range(self.n), min(self.n, rng.randint(3, 8)))
        first = world.nodes[branches[0]]
        if (world.serving(first) and first.ledger is not None and m.id is not None
                and self._budget()
                and self._spendable(first.ledger, m.id) < 300_000):
            # The family tops the card up where the burst begins, as it runs low: above
            # the approval limit, so the branch's manager approves the cashier's top-up.
            self._op(self.branches[branches[0]], "topup", self._run(
                "topup", member=m.id, amount=600_000, approver={
                    "name": world.operator_name("manager", first.name),
                    "password": OPERATOR_PASSWORD}))
        for i, bi in enumerate(branches):
            b = self.branches[bi]
            svc = rng.choice(SERVICES)

            def swipe(b: Branch = b, svc: str = svc) -> None:
                if world.serving(world.nodes[b.index]) and self._budget():
                    self._op(b, "debit.hot", self._run("debit", card=m.card_no, service=svc),
                             debit=True)

            world.engine.after(i * int(rng.uniform(0.2, 2.0) * SECOND), swipe)
