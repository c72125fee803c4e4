"""Oracles: what the money entries should carry, worked out again by plain arithmetic
from the published rules (docs/format.md, docs/design-notes.md), never by the
library's own pricing, splitting or settlement functions, so that a bug in those is
seen as a difference.

Three checks (sim/README.md, checker 6):

- **amount** (as each entry is written, on the branch that wrote it, in the same step
  as its commit): a debit's gross is the price list's price times the quantity (or
  the amount the customer asked); its level is the highest whose threshold the
  member's cumulative top-ups reach on that branch (the sum of the `paid` of the top-up
  entries it holds), or a manual level when higher; its net is the gross times that
  level's discount, rounded half-up to the fen (service and goods only: an amount is
  charged as typed), less a coupon's part; points are floor(net/100 x points_per_yuan
  x the level's multiplier); stored value pays cash first, bonus only once the
  member's cash (all of it the branch knows of) is gone. A top-up's bonus is the
  largest of the promotions in force whose minimum it reaches. A refund gives back at
  most what is left of its debit, principal first, and takes back points by the
  cumulative floor (those the member spent since paid for instead, their worth kept
  off the bonus given back first). Conversions, redemptions and packages likewise.
  The rules are read from the writer's own rules table (the version in force on the
  entry's day), so a branch that has not yet heard of today's promotion is judged by
  what it held.
- **settlement** (end of run): every member's lots replayed first in, first out, in
  id order, from the entries alone; who owes whom, and each branch's figures, must be
  what `views.settlement` reports.
- **refused** (as a debit is refused): a debit refused for want of rights or funds
  while its branch was connected at the swipe and still is, every node up and no
  partition, although the member's value across the chain (the sum of every entry of
  every branch, read from each branch's own entries) covers it and every branch
  holding it is one relay away at most, is a violation. Refusals the design allows
  (the chain really lacks the value; the holders are two relays away, finding 2 of
  sim/README.md; the value is being fetched by another debit of the same member at
  that moment) are counted with their reason.

What is read: the writer's store by SQL (entries, rules, members), after the commit;
nothing is written, so a run's trace and digest are those without the oracles.
"""

from __future__ import annotations

import json
import math
import sqlite3
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from datetime import datetime
from fractions import Fraction
from itertools import product
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from crdtledger import audit, hlc
from crdtledger.errors import InsufficientFunds, LedgerError, RightsElsewhere
from crdtledger.model import DEFAULT_RULES

if TYPE_CHECKING:
    from sim.node import Attempt, SimNode
    from sim.world import World

# docs/format.md: the walk-in customer (散客) of branch N is 0000000000000.N.
WALK_IN = "0" * 13 + "."
ZONE = ZoneInfo("Asia/Shanghai")  # the chain's zone in the simulator (sim.world.ZONE)
MONEY = ("cash", "bonus")
MEMBER_PURSES = ("cash", "bonus", "points")  # what a member holds (closing.member_balances)
# A payment that is no money at the till: stored value, a package's use.
NOT_AT_TILL = ("stored", "package")


class Intent:
    """A till's request: an operation of the table (`crdtledger.operations`) with what
    the customer asked for, the role of the operator at the till who sends it (a
    cashier, a manager where the operation needs one, "owner" for the built-in owner at
    the head office's console) and its Idempotency-Key, as the API takes it. The node
    (sim.node.SimNode.perform) runs it as the API does: the key looked up, begun,
    `operations.run` under the key's tag through `NodeCore.submit(reply_first=True)`,
    the answer kept. The oracle knows from it the amount a top-up was for, the service
    or amount of a debit. `answer` turns the operation's JSON answer into what the
    workload acknowledges (an entry's id, a member's, a card's)."""

    def __init__(self, name: str, given: Mapping[str, Any], role: str = "cashier",
                 key: str | None = None) -> None:
        self.name = name
        self.given = dict(given)
        self.role = role
        self.key = key
        self.sent_ms: int | None = None  # its branch's clock when first sent
        self.tag: str | None = None  # what its entries carry (idempotency.tag_of)

    def answer(self, result: Any) -> Any:
        shape = ANSWERS.get(self.name)
        return shape(result) if shape is not None and isinstance(result, dict) else result


# What the workload acknowledges of an operation's answer, where it is not the entry
# itself (a dict with the entry's "id"): the member, card or rule it made, or the entry
# a coupon's, a booking's or a cancellation's answer names.
ANSWERS: dict[str, Any] = {
    "member.add": lambda r: r["member_id"],
    "member.edit": lambda r: None,
    "card.issue": lambda r: r["id"],
    "card.lost": lambda r: r["id"],
    "card.replace": lambda r: r["id"],
    "rule.set": lambda r: r["rule_id"],
    "goods.add": lambda r: r["rule_id"],
    "coupon.issue": lambda r: {"id": r["coupon"]},
    "booking.add": lambda r: {"id": r["booking"]},
    "booking.cancel": lambda r: {"id": r["entry"]},
}


# --- arithmetic of the published rules ---------------------------------------------


def half_up(x: Fraction) -> int:
    """Rounded half-up to a whole fen (the discount's rounding rule); x >= 0."""
    return math.floor(x + Fraction(1, 2))


def day_of(at_ms: int) -> str:
    return datetime.fromtimestamp(at_ms / 1000, ZONE).date().isoformat()


def deltas_by(entry: Mapping[str, Any]) -> dict[str, int]:
    out: dict[str, int] = defaultdict(int)
    for purse, _node, change in entry.get("deltas") or ():
        out[str(purse)] += int(change)
    return out


class Rules:
    """A store's rule versions (its `rules` table), the ones in force on a day. Ties
    between versions of one effective day (told apart by `rev`, which the table does
    not keep) give several candidates; an entry passes if it fits one."""

    def __init__(self, rows: Iterable[tuple[str, str, str, str]]) -> None:
        self.versions: dict[str, list[tuple[str, str, Any]]] = defaultdict(list)
        for rid, kind, eff, body in rows:
            self.versions[kind].append((eff, rid, json.loads(body)))

    def candidates(self, kind: str, days: Iterable[str]) -> list[Any]:
        out: list[Any] = []
        for day in sorted(set(days)):
            held = [(eff, rid, body) for eff, rid, body in self.versions.get(kind, ())
                    if eff <= day]
            if kind == "goods":  # each version adds or changes items: folded per code
                catalogue: dict[str, Any] = {}
                for _eff, _rid, body in sorted(held, key=lambda v: (v[0], v[1])):
                    catalogue.update(body)
                bodies = [catalogue]
            elif not held:
                bodies = [DEFAULT_RULES[kind]]
            else:
                last = max(eff for eff, _rid, _body in held)
                bodies = [body for eff, _rid, body in held if eff == last]
            for body in bodies:
                if body not in out:
                    out.append(body)
        return out


def level_for(levels: list[Mapping[str, Any]], value: int, manual: str | None
              ) -> Mapping[str, Any]:
    """The highest level whose threshold `value` reaches; a manual level if higher."""
    ordered = sorted(levels, key=lambda lv: int(lv["threshold"]))
    current = ordered[0]
    for lv in ordered:
        if value >= int(lv["threshold"]):
            current = lv
    for lv in ordered:
        if manual is not None and lv["name"] == manual and (
                int(lv["threshold"]) > int(current["threshold"])):
            current = lv
    return current


def coupon_off(coupon: Mapping[str, Any], net: int, unit: int) -> int:
    """What a coupon takes off (docs/design-notes.md, Coupons): a percent of the net,
    rounded half-up; a free service's one unit; else its amount; never above net."""
    if coupon.get("percent"):
        off = half_up(Fraction(net) * int(coupon["percent"]) / 100)
    elif coupon.get("service"):
        off = unit
    else:
        off = int(coupon["amount"])
    return max(0, min(off, net))


def points_for(net: int, per_yuan: Any, multiplier: Any) -> int:
    return math.floor(Fraction(net) / 100 * Fraction(str(per_yuan)) * Fraction(str(multiplier)))


# --- one store, read by SQL -----------------------------------------------------------


class Store:
    """What the oracle reads of a branch's store (its projected tables, by SQL)."""

    def __init__(self, conn: sqlite3.Connection, node: str) -> None:
        self.conn = conn
        self.node = node

    def entry(self, entry_id: str) -> dict[str, Any] | None:
        row = self.conn.execute("SELECT body FROM entries WHERE id = ?", (entry_id,)).fetchone()
        return None if row is None else dict(json.loads(row[0]))

    def rules(self) -> Rules:
        return Rules(self.conn.execute("SELECT id, kind, effective_from, body FROM rules"))

    def topped(self, member: str) -> int:
        """Cumulative top-ups: the `paid` of every top-up entry of the member held."""
        row = self.conn.execute(
            "SELECT TOTAL(json_extract(body, '$.paid')) FROM entries "
            "WHERE member = ? AND kind = 'topup'", (member,)).fetchone()
        return int(row[0] or 0)

    def spent(self, member: str) -> int:
        row = self.conn.execute(
            "SELECT TOTAL(CASE kind WHEN 'debit' THEN json_extract(body, '$.amount') "
            "ELSE -json_extract(body, '$.amount') END) FROM entries "
            "WHERE member = ? AND kind IN ('debit', 'refund')", (member,)).fetchone()
        return int(row[0] or 0)

    def manual_level(self, member: str) -> str | None:
        row = self.conn.execute("SELECT body FROM members WHERE id = ?", (member,)).fetchone()
        level = json.loads(row[0]).get("level") if row else None
        return str(level) if level else None

    def balance(self, member: str, purse: str) -> int:
        """The member's value in a purse as this store knows it: the sum of the
        deltas of every entry of the member it holds, at every branch."""
        row = self.conn.execute(
            "SELECT TOTAL(json_extract(d.value, '$[2]')) FROM entries, "
            "json_each(entries.body, '$.deltas') AS d WHERE entries.member = ? "
            "AND json_extract(d.value, '$[0]') = ?", (member, purse)).fetchone()
        return int(row[0] or 0)

    def own_rights(self, member: str) -> dict[tuple[str, str], int]:
        """Every change the entries this branch wrote make, per (purse, node)."""
        out: dict[tuple[str, str], int] = defaultdict(int)
        for (body,) in self.conn.execute(
                "SELECT body FROM entries WHERE member = ? AND node = ?", (member, self.node)):
            for purse, node, change in json.loads(body).get("deltas") or ():
                out[(str(purse), str(node))] += int(change)
        return out

    def refunds_of(self, debit_id: str) -> list[dict[str, Any]]:
        return [json.loads(b) for (b,) in self.conn.execute(
            "SELECT body FROM entries WHERE ref = ? AND kind = 'refund' ORDER BY id",
            (debit_id,))]


# --- the oracle -------------------------------------------------------------------------


class Oracle:
    def __init__(self, world: World) -> None:
        self.world = world
        self.checked: Counter[str] = Counter()
        self.unchecked: Counter[str] = Counter()
        self.refused_connected: Counter[str] = Counter()
        self.seconds = 0.0
        self.settlement_seconds = 0.0
        self.books_seconds = 0.0
        self.enabled = True
        # Every acknowledged entry as its writer held it at the commit (World._ack):
        # the oracle's own record of what happened, which the books are checked by.
        self.record: dict[str, dict[str, Any]] = {}
        self.books_checked: Counter[str] = Counter()

    def acknowledged(self, node: SimNode, entry_id: str) -> None:
        """An entry acknowledged at `node` (a till's answer, a grant, the rebalancer's
        transfer, a booking decided): kept as written there."""
        if not self.enabled or node.ledger is None:
            return
        began = time.perf_counter()
        body = Store(audit.tables(node.ledger), node.name).entry(entry_id)
        if body is not None:
            self.record[entry_id] = body
        self.seconds += time.perf_counter() - began

    # -- as operations end ----------------------------------------------------------

    def done(self, node: SimNode, label: str, outcome: Any, attempt: Attempt,
             op: Any = None) -> None:
        """An operation of the workload ended at `node` (World.op_done)."""
        if not self.enabled or node.ledger is None:
            return
        began = time.perf_counter()
        try:
            if isinstance(outcome, LedgerError):
                self._refused(node, label, outcome, attempt, op)
            elif isinstance(outcome, dict) and "id" in outcome:
                store = Store(audit.tables(node.ledger), node.name)
                entry = store.entry(str(outcome["id"]))
                if entry is None:
                    self.unchecked["not projected"] += 1
                    return
                problems = self.judge(store, entry, op, node.now_ms())
                if problems is None:
                    self.unchecked[str(entry["kind"])] += 1
                    return
                self.checked[str(entry["kind"])] += 1
                if problems:
                    from sim.checks import Violation

                    self.world.fail(Violation(
                        "amount", f"{node.name} {label} wrote {entry['id']} "
                                  f"({entry['kind']}): {'; '.join(problems)}", node.name))
        finally:
            self.seconds += time.perf_counter() - began

    def judge(self, store: Store, entry: Mapping[str, Any], op: Any = None,
              now_ms: int | None = None) -> list[str] | None:
        """What is wrong with `entry`, just written at `store`'s branch, by the rules
        (None: a kind the oracle does not judge)."""
        intent = op.given if isinstance(op, Intent) else None
        days = {day_of(int(entry["at"]))}
        if now_ms is not None:
            days.add(day_of(now_ms))
        rules = store.rules()
        kind = entry["kind"]
        if kind == "debit":
            return self._debit(store, entry, rules, days, intent)
        if kind == "topup":
            return self._topup(store, entry, rules, days, intent)
        if kind == "refund":
            return self._refund(store, entry, intent)
        if kind == "package":
            return self._package(store, entry, intent)
        if kind == "convert":
            problems: list[str] = []
            for conv in rules.candidates("conversion", days):
                per_yuan = Fraction(str(conv["points_per_yuan"]))
                value = math.floor(int(entry["points"]) * 100 / per_yuan)
                want = {"points": -int(entry["points"]), "bonus": value}
                problems = _compare({"amount": entry["amount"], **_money(entry)},
                                    {"amount": value, **want})
                if not problems:
                    break
            return problems + _asked(entry, intent, points="points")
        if kind == "redeem":
            return (_compare(_money(entry), {"points": -int(entry["points"])})
                    + _asked(entry, intent, points="points"))
        return None

    def _debit(self, store: Store, e: Mapping[str, Any], rules: Rules, days: set[str],
               intent: Mapping[str, Any] | None) -> list[str]:
        member = str(e["member"])
        walk = member.startswith(WALK_IN)
        pay = str(e.get("pay") or "stored")
        qty = int(e.get("qty") or 1)
        problems: list[str] = []
        if intent is not None:
            problems += _asked(e, intent, service="service", pay="pay")
            if "amount" in intent and e.get("gross") != intent["amount"]:
                problems.append(f"gross {e.get('gross')}, the customer was charged "
                                f"{intent['amount']}")
        manual = None if walk else store.manual_level(member)
        coupon = store.entry(str(e["coupon"])) if e.get("coupon") else None
        best: list[str] | None = None
        for levels, basis, earn, services, goods in product(
                rules.candidates("levels", days), rules.candidates("level_basis", days),
                rules.candidates("earn", days), rules.candidates("services", days),
                rules.candidates("goods", days)):
            if e.get("goods"):
                price: int | None = int(goods[str(e["goods"])]["price"])
            elif e.get("service"):
                price = int(services[str(e["service"])]["price"])
            else:
                price = None
            gross = price * qty if price is not None else int(
                intent["amount"] if intent and "amount" in intent else e["gross"])
            lvl = None
            if not walk:
                value = (store.topped(member) if basis.get("basis") == "topped"
                         else store.spent(member) - int(e["amount"]))
                lvl = level_for(levels, value, manual)
            rate = Fraction(str(lvl["discount"])) if lvl is not None and price is not None \
                else Fraction(1)
            net = 0 if pay == "package" else half_up(gross * rate)
            off = 0
            if coupon is not None:
                unit = half_up((gross // qty) * rate) if price is not None else 0
                off = coupon_off(coupon, net, unit)
            net -= off
            points = 0 if lvl is None else points_for(net, earn["points_per_yuan"],
                                                      lvl["points_multiplier"])
            want: dict[str, Any] = {
                "gross": gross, "discount": rate, "level": None if lvl is None else lvl["name"],
                "amount": net, "off": off, "points": points, "points delta": points}
            got: dict[str, Any] = {
                "gross": e.get("gross"), "discount": Fraction(str(e.get("discount") or "1")),
                "level": e.get("level"), "amount": e.get("amount"), "off": e.get("off") or 0,
                "points": e.get("points") or 0, "points delta": deltas_by(e).get("points", 0)}
            found = _compare(got, want)
            if not found:
                best = []
                break
            if best is None:
                best = found
        problems += best or []
        problems += self._paid(store, e, pay, int(e["amount"]), member)
        if pay == "package" and deltas_by(e).get(f"pkg:{e.get('package')}") != -qty:
            problems.append(f"package uses {deltas_by(e)}, not -{qty} of {e.get('package')}")
        return problems

    def _paid(self, store: Store, e: Mapping[str, Any], pay: str, net: int, member: str
              ) -> list[str]:
        """Stored value pays cash first, then bonus: bonus only when no cash is left."""
        got = deltas_by(e)
        cash, bonus = -got.get("cash", 0), -got.get("bonus", 0)
        if pay != "stored":
            return [] if cash == bonus == 0 else [f"paid {pay} yet took cash {cash}, "
                                                  f"bonus {bonus} of stored value"]
        out = []
        if cash < 0 or bonus < 0 or cash + bonus != net:
            out.append(f"took cash {cash} and bonus {bonus} for {net}")
        if any(str(n) != e["node"] for p, n, c in e["deltas"] if p in MONEY and c):
            out.append(f"lowered another branch's rights {e['deltas']}")
        if bonus > 0:
            left = store.balance(member, "cash")
            if left != 0:
                out.append(f"took bonus {bonus} while the member still had cash {left} "
                           "(cash comes first)")
        return out

    def _topup(self, store: Store, e: Mapping[str, Any], rules: Rules, days: set[str],
               intent: Mapping[str, Any] | None) -> list[str]:
        amount = int(e["amount"])
        problems: list[str] = []
        for promotions in rules.candidates("promotions", days):
            bonus, name = 0, None
            for p in promotions:  # the largest bonus whose minimum it reaches, first kept
                if amount >= int(p["min"]) and int(p["bonus"]) > bonus:
                    bonus, name = int(p["bonus"]), str(p.get("name", ""))
            got = {"paid": e.get("paid"), "bonus": e.get("bonus") or 0,
                   "promotion": e.get("promotion") if bonus else None, **_money(e)}
            want = {"paid": amount, "bonus": bonus, "promotion": name, "cash": amount,
                    "bonus delta": bonus}
            got["bonus delta"] = got.pop("bonus_purse", 0)
            problems = _compare(got, want)
            if not problems:
                break
        if any(str(n) != e["node"] for _p, n, _c in e["deltas"]):
            problems.append(f"credits another branch {e['deltas']}")
        return problems + _asked(e, intent, amount="amount")

    def _package(self, store: Store, e: Mapping[str, Any], intent: Mapping[str, Any] | None
                 ) -> list[str]:
        pay = str(e.get("pay") or "stored")
        price, uses = int(e["amount"]), int(e["qty"])
        problems = _asked(e, intent, price="amount", uses="qty", pay="pay", service="service")
        if deltas_by(e).get(f"pkg:{e['id']}") != uses:
            problems.append(f"package uses {deltas_by(e)}, not +{uses}")
        want_paid = 0 if pay == "stored" else price
        if int(e.get("paid") or 0) != want_paid:
            problems.append(f"paid {e.get('paid')} at the till, not {want_paid}")
        return problems + self._paid(store, e, pay, price if pay == "stored" else 0,
                                     str(e["member"]))

    def _refund(self, store: Store, e: Mapping[str, Any], intent: Mapping[str, Any] | None
                ) -> list[str]:
        d = store.entry(str(e.get("ref")))
        if d is None or d["kind"] != "debit":
            return [f"refunds {e.get('ref')}, which is no debit here"]
        prior = [r for r in store.refunds_of(str(d["id"])) if r["id"] < e["id"]]
        problems: list[str] = []
        if e["node"] != d["node"]:
            problems.append(f"refunds a debit of {d['node']}")
        got = deltas_by(e)
        # The share of its debit a refund takes off is the money it gives back and what
        # it keeps for the sale's points spent since (Payments.refund_terms).
        kept, spent = int(e.get("kept") or 0), int(e.get("spent") or 0)
        amount = int(e["amount"]) + kept
        paid = int(d["amount"])
        refunded = sum(int(r["amount"]) + int(r.get("kept") or 0) for r in prior)
        if not 0 <= kept <= amount or (kept > 0 and spent <= 0):
            problems.append(f"keeps {kept} for {spent} points spent, of {amount}")
        if d.get("pay") == "package":  # by uses
            uses = int(e.get("qty") or 0)
            left = int(d["qty"]) - sum(int(r.get("qty") or 0) for r in prior)
            if not 0 < uses <= left or amount != 0:
                problems.append(f"gives back {uses} uses and {amount} of a package debit "
                                f"with {left} uses left")
            if got.get(f"pkg:{d.get('package')}") != uses:
                problems.append(f"package uses {dict(got)}, not +{uses}")
            whole, done, this = int(d["qty"]), int(d["qty"]) - left, uses
        else:
            left = paid - refunded
            if not 0 < amount <= left:
                problems.append(f"gives back {amount} of a debit of {paid} with {left} left "
                                "(a refund is never more than its debit)")
            if d.get("goods") is not None:
                sold, units = int(d["qty"]), int(e.get("qty") or 0)
                units_left = sold - sum(int(r.get("qty") or 0) for r in prior)
                # That share of what the sale took; the last refund takes the rest.
                back = paid if units == units_left else paid * (sold - units_left + units) // sold
                want = max(0, min(left, back - refunded))
                if amount != want:
                    problems.append(f"gives back {amount} for {units} of {sold} units, "
                                    f"not {want}")
            elif intent is not None and "amount" in intent:
                if amount != intent["amount"]:
                    problems.append(f"gives back {amount}, asked {intent['amount']}")
            elif amount not in (1000, left):  # the workload asks 10.00 or all that is left
                problems.append(f"gives back {amount}: neither 1000 nor all left ({left})")
            whole, done, this = paid, refunded, amount
            if d.get("pay") == "stored":  # principal first, then bonus
                cash_taken = -deltas_by(d).get("cash", 0)
                cash_back = sum(deltas_by(r).get("cash", 0) for r in prior)
                to_cash = min(amount, cash_taken - cash_back)
                # What is kept comes off the bonus given back first, then the cash.
                off_bonus = min(kept, amount - to_cash)
                split = (to_cash - (kept - off_bonus), amount - to_cash - off_bonus)
                if (got.get("cash", 0), got.get("bonus", 0)) != split:
                    problems.append(f"gives back cash {got.get('cash', 0)} and bonus "
                                    f"{got.get('bonus', 0)}, not {split[0]} and {split[1]} "
                                    "(principal first, what is kept off the bonus first)")
            elif got.get("cash", 0) or got.get("bonus", 0):
                problems.append(f"a till sale's refund credits stored value {dict(got)}")
        earned = int(d.get("points") or 0)
        target = (earned * (done + this) // whole if whole else 0) - sum(
            int(r.get("points") or 0) + int(r.get("spent") or 0) for r in prior)
        taken = int(e.get("points") or 0)
        if -got.get("points", 0) != taken:
            problems.append(f"points {taken} but points delta {got.get('points', 0)}")
        # The points the member had spent since are paid for, not taken back.
        # A refund of a sale whose points had expired by the refund's day takes back
        # what is left of that sale's lot, which the oracle does not replay: at most
        # the floor, never more.
        expires = d.get("expires")
        lapsed = (isinstance(expires, str) and expires < day_of(int(e["at"]))
                  and 0 <= taken + spent <= target)
        if taken + spent != target and not lapsed and not (
                0 <= taken + spent < target
                and store.balance(str(e["member"]), "points") == 0):
            problems.append(f"takes back {taken} points and pays for {spent}, not {target} "
                            f"(cumulative floor of {earned} earned)")
        return problems

    # -- refusals ----------------------------------------------------------------------

    def _refused(self, node: SimNode, label: str, error: LedgerError, attempt: Attempt,
                 op: Any) -> None:
        if not isinstance(error, InsufficientFunds | RightsElsewhere):
            return
        if not (label.startswith("debit") or label == "sell"):
            return
        world = self.world
        if attempt.where != "connected" or world.connectivity(node) != "connected":
            return
        purse = error.purse
        member = getattr(error, "member", None) or self._member_of(op)
        if member is None:
            self.refused_connected["member unknown"] += 1
            return
        if isinstance(error, RightsElsewhere):
            need = int(error.shortfall) + int(getattr(error, "here", 0) or 0)
        else:
            need = int(error.wanted)
        rights: dict[tuple[str, str], int] = defaultdict(int)
        for n in world.nodes:
            if n.ledger is None:
                continue
            for k, v in Store(audit.tables(n.ledger), n.name).own_rights(member).items():
                rights[k] += v
        purses = MONEY if purse in MONEY else (purse,)
        total = sum(v for (p, _n), v in rights.items() if p in purses)
        holders = {n for (p, n), v in rights.items() if p in purses and v > 0} - {node.name}
        direct = set(node.connected())
        # The node asks the holders it is connected to, and what they cannot cover one
        # peer that holds nothing as it knows the rights, the first by name, to relay
        # (escrow.RightsFetch; sim/README.md finding 2: it may reach no holder).
        known = set(getattr(error, "holders", {}) or {})
        relays = sorted(direct - known - {node.name})
        relayed = set(world.by_name[relays[0]].connected()) if relays else set()
        busy = any(a.label.startswith("debit") for n in world.nodes if n is not node
                   for a in n.attempts.values())
        blocked = node.ledger.storage.log.blocked()  # type: ignore[union-attr]
        if total < need:
            reason = "the chain lacks the value"
        elif (not world.honest(node.name) or any(not world.honest(h) for h in holders)
              or holders & blocked):
            reason = "held by or asked of a Byzantine branch"
        elif isinstance(error, InsufficientFunds):
            here = Store(audit.tables(node.ledger), node.name)  # type: ignore[arg-type]
            known_here = sum(here.balance(member, p) for p in purses)
            reason = ("the value was known here" if known_here >= need
                      else "the value not yet replicated here")
        elif not holders <= direct | {h for p in direct for h in world.by_name[p].connected()}:
            reason = "holders two relays away"
        elif not holders <= direct | relayed:
            reason = "holders behind a peer the relay was not asked of (finding 2)"
        elif busy:
            reason = "another branch's debit in flight"
        elif world.config.reorder or world.config.dup:
            # A grant's answer may overtake the transfer entry it is for on a transport
            # that swaps frames (--reorder): the asker then counts nothing granted.
            reason = "a transport that swaps or repeats frames"
        else:
            reason = "holders reachable"
        self.refused_connected[reason] += 1
        if reason in ("holders reachable", "the value was known here"):
            from sim.checks import Violation

            world.fail(Violation("refused", f"{node.name} refused {label} for {member} "
                                            f"({type(error).__name__}: {error}) while "
                                            f"connected: the chain holds {total} of "
                                            f"{purse}, at {sorted(holders)}, all reachable",
                                 node.name))

    def _member_of(self, op: Any) -> str | None:
        given = op.given if isinstance(op, Intent) else {}
        return given.get("member")

    # -- end of run ------------------------------------------------------------------

    def final(self, nodes: list[SimNode]) -> list[Any]:
        """Settlement recomputed first in, first out on the first honest replica (the
        others are compared with it by the convergence checks)."""
        from sim.checks import Violation

        if not self.enabled or not nodes or nodes[0].ledger is None:
            return []
        began = time.perf_counter()
        try:
            ledger = nodes[0].ledger
            rows = audit.tables(ledger).execute("SELECT body FROM entries ORDER BY id")
            mine = fifo_settlement(json.loads(b) for (b,) in rows)
            from crdtledger import views

            theirs = views.settlement(ledger)
            diff = compare_settlement(mine, theirs)
            out = []
            if diff:
                out.append(Violation("settlement", f"{nodes[0].name}: first in, first out "
                                                   f"from the entries gives {diff}"))
            over = refunds_beyond_debits(audit.tables(ledger))
            if over:
                out.append(Violation("amount", f"refunds beyond their debit: {over[:3]}"))
            return out
        finally:
            self.settlement_seconds += time.perf_counter() - began

    def books(self, ledger: Any, name: str, skip: set[str]) -> list[Any]:
        """The books against the record of acknowledged entries (less `skip`, entries a
        restore lost): each branch's daily report, every day, figure by figure as
        `views.daily_report` gives them, and each member's cash, bonus and points at
        the end of the latest month closed at every branch, as
        `closing.member_balances` gives them, and their sums as the closing's balances
        (`closing.books`) give them, worked out again by sums of the entries the tills
        were told of."""
        from crdtledger import closing, views
        from sim.checks import Violation

        if not self.enabled:
            return []
        began = time.perf_counter()
        try:
            entries = {k: v for k, v in self.record.items() if k not in skip}
            out: list[Any] = []
            mine = daily_figures(entries)
            for (day, node), want in sorted(mine.items()):
                got = views.daily_report(ledger, day, node)
                self.books_checked["daily"] += 1
                for key, value in want.items():
                    if got.get(key) != value:
                        out.append(Violation("books", f"{name}: the daily report of {node} "
                                                      f"on {day} says {key} {got.get(key)}; "
                                                      f"the acknowledged entries give "
                                                      f"{value}", name))
                        return out
            month = closing.books(ledger)["closed_through"]
            if month is not None and any(day_of(hlc.id_time_ms(e)) <= f"{month}-31"
                                         for e in entries):
                want_b = month_end_balances(entries, month)
                got_b = {r["member"]: {p: int(r[p]) for p in MEMBER_PURSES if r[p]}
                         for r in closing.member_balances(ledger, month)["members"]}
                self.books_checked["month_end_members"] += len(want_b)
                for member in sorted(set(want_b) | set(got_b)):
                    if want_b.get(member, {}) != got_b.get(member, {}):
                        out.append(Violation("books", f"{name}: {member}'s balances at the "
                                                      f"end of {month} are "
                                                      f"{got_b.get(member, {})} in "
                                                      f"member_balances; the acknowledged "
                                                      f"entries give "
                                                      f"{want_b.get(member, {})}", name))
                        return out
                # The closing's own month-end balances (what its digest covers), by
                # purse kind: the members' sums.
                end = (closing.books(ledger)["closing"] or {}).get("balances") or {}
                got_t = {p: int(v) for p, v in (end.get("purses") or {}).items()
                         if p in MEMBER_PURSES and v}
                want_t = {p: v for p in MEMBER_PURSES
                          if (v := sum(b.get(p, 0) for b in want_b.values()))}
                self.books_checked["month_end_purses"] += 1
                if end and got_t != want_t:
                    out.append(Violation("books", f"{name}: the closing of {month} sums the "
                                                  f"members' purses to {got_t}; the "
                                                  f"acknowledged entries give {want_t}",
                                         name))
            return out
        finally:
            self.books_seconds += time.perf_counter() - began

    def report(self) -> dict[str, Any]:
        return {"oracles": {
            "checked": dict(sorted(self.checked.items())),
            "unchecked": dict(sorted(self.unchecked.items())),
            "refused_connected": dict(sorted(self.refused_connected.items())),
            "seconds": round(self.seconds, 3),
            "settlement_seconds": round(self.settlement_seconds, 3),
            "books_checked": dict(sorted(self.books_checked.items())),
            "books_seconds": round(self.books_seconds, 3)}}


def _money(e: Mapping[str, Any]) -> dict[str, int]:
    d = deltas_by(e)
    out = {p: v for p, v in d.items() if p in ("cash", "points") and v}
    if d.get("bonus"):
        out["bonus_purse" if e["kind"] == "topup" else "bonus"] = d["bonus"]
    return out


def _compare(got: Mapping[str, Any], want: Mapping[str, Any]) -> list[str]:
    keys = sorted(set(got) | set(want))
    return [f"{k} {got.get(k)}, the rules give {want.get(k)}" for k in keys
            if got.get(k, 0 if k not in ("level", "promotion") else None)
            != want.get(k, 0 if k not in ("level", "promotion") else None)]


def _asked(e: Mapping[str, Any], intent: Mapping[str, Any] | None, **fields: str
           ) -> list[str]:
    """The entry's fields against what the customer asked (param -> entry field)."""
    if intent is None:
        return []
    return [f"{field} {e.get(field)}, the customer asked {intent[param]}"
            for param, field in fields.items()
            if param in intent and e.get(field) != intent[param]]


# --- settlement, first in, first out ----------------------------------------------------


def fifo_settlement(entries: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Who owes whom over all time, from the entries in id order (docs/design-notes.md,
    "Settlement by value served"): a top-up's cash (and a positive cash correction)
    opens a lot at its branch; cash a debit or a package sale takes comes from the
    member's oldest lots, and value collected at A served at B makes A owe B; a refund
    puts back into the lots its debit took, last taken first; a negative correction
    removes value from the oldest lots. Cash taken with no lot left is owed by the
    member's next lot."""
    lots: dict[str, dict[str, list[Any]]] = defaultdict(dict)  # member -> key -> [who, left]
    owing: dict[str, list[list[Any]]] = defaultdict(list)  # member -> [server, n, debit]
    took: dict[str, list[list[Any]]] = defaultdict(list)  # debit -> [key, who, n, server]
    served: Counter[tuple[str, str]] = Counter()  # (collector, server) -> fen
    fig: dict[str, Counter[str]] = defaultdict(Counter)
    other = Counter[str]()

    def take(member: str, key_of: str, server: str, n: int, *, removal: bool = False
             ) -> None:
        book = lots[member]
        for key in sorted(book):
            if n <= 0:
                break
            lot = book[key]
            part = min(n, lot[1])
            lot[1] -= part
            n -= part
            if removal:
                fig[lot[0]]["removed"] += part
            else:
                served[(lot[0], server)] += part
                took[key_of].append([key, lot[0], part, server])
            if lot[1] == 0:
                del book[key]
        if n > 0:
            if removal:
                fig[server]["unattributed"] += n
            else:
                owing[member].append([server, n, key_of])

    def open_lot(member: str, key: str, who: str, n: int) -> None:
        fig[who]["collected"] += n
        for debt in owing[member]:
            if n <= 0:
                break
            part = min(n, debt[1])
            served[(who, debt[0])] += part
            took[debt[2]].append([key, who, part, debt[0]])
            debt[1] -= part
            n -= part
        owing[member] = [d for d in owing[member] if d[1] > 0]
        if n > 0:
            lots[member][key] = [who, n]

    kinds = Counter[str]()
    for e in entries:
        kind = str(e["kind"])
        d = deltas_by(e)
        cash, bonus = d.get("cash", 0), d.get("bonus", 0)
        member, node, eid = str(e["member"]), str(e["node"]), str(e["id"])
        if kind == "topup" and cash > 0:
            open_lot(member, eid, node, cash)
        elif kind in ("debit", "package"):
            if cash < 0:
                take(member, eid, node, -cash)
            if bonus < 0:
                fig[node]["bonus_served"] -= bonus
        elif kind == "refund" and (cash > 0 or bonus > 0):
            fig[node]["bonus_served"] -= bonus
            n = cash
            for part in reversed(took.get(str(e.get("ref")), [])):
                if n <= 0:
                    break
                back = min(n, part[2])
                part[2] -= back
                n -= back
                served[(part[1], part[3])] -= back
                lot = lots[member].get(part[0])
                if lot is None:
                    lots[member][part[0]] = [part[1], back]
                else:
                    lot[1] += back
            if n > 0:
                other["refund beyond its debit"] += n
        elif kind == "correction" and cash:
            if cash > 0:
                open_lot(member, eid, node, cash)
            else:
                take(member, eid, node, -cash, removal=True)
        elif kind in ("merge", "exit_settle") and cash:
            kinds[kind] += 1
    for debts in owing.values():
        for server, n, _eid in debts:
            fig[server]["unattributed"] += n
    for book in lots.values():
        for who, left in book.values():
            fig[who]["unspent"] += left
    for (a, b), n in served.items():
        if a == b:
            fig[a]["served_own"] += n
        else:
            fig[b]["served_for_others"] += n
            fig[a]["served_by_others"] += n
    return {"served": {k: v for k, v in served.items() if v},
            "branches": {n: {k: v for k, v in f.items() if v} for n, f in fig.items()},
            "not_replayed": dict(kinds), "other": dict(other)}


def compare_settlement(mine: Mapping[str, Any], theirs: Mapping[str, Any]) -> str | None:
    """The library's statement against the replay: every pair's `served` and
    `served_back`, and each branch's figures."""
    if mine["not_replayed"]:
        return None  # merges and exits are not replayed here: nothing to compare
    got: dict[tuple[str, str], int] = {}
    for p in theirs["pairs"]:
        got[(p["owes"], p["to"])] = int(p["served"])
        got[(p["to"], p["owes"])] = int(p["served_back"])
    served = {k: v for k, v in mine["served"].items() if k[0] != k[1]}
    for k in set(got) | set(served):
        if got.get(k, 0) != served.get(k, 0):
            return (f"{k[1]} served {served.get(k, 0)} from lots {k[0]} collected; the "
                    f"statement says {got.get(k, 0)}")
    for name, figures in theirs["branches"].items():
        want = mine["branches"].get(name, {})
        for key in ("collected", "served_own", "served_for_others", "served_by_others",
                    "removed", "unspent", "bonus_served", "unattributed"):
            if int(figures.get(key, 0)) != int(want.get(key, 0)):
                return (f"{name} {key} {want.get(key, 0)}; the statement says "
                        f"{figures.get(key, 0)}")
    missing = set(mine["branches"]) - set(theirs["branches"])
    if any(mine["branches"][n] for n in missing):
        return f"branches {sorted(missing)} missing from the statement"
    return None


def refunds_beyond_debits(conn: sqlite3.Connection) -> list[tuple[str, int, int]]:
    """Debits whose refunds give back more money (or uses, units) than they took."""
    out = []
    for did, amount, qty, pay, goods, back, units in conn.execute(
            "SELECT d.id, json_extract(d.body, '$.amount'), COALESCE(json_extract(d.body, "
            "'$.qty'), 1), json_extract(d.body, '$.pay'), json_extract(d.body, '$.goods'), "
            "TOTAL(json_extract(r.body, '$.amount')), TOTAL(COALESCE(json_extract(r.body, "
            "'$.qty'), 0)) FROM entries r JOIN entries d ON d.id = r.ref "
            "WHERE r.kind = 'refund' GROUP BY d.id"):
        if back > amount or ((pay == "package" or goods) and units > qty):
            out.append((str(did), int(amount), int(back)))
    return out


# --- the books, by sums of the acknowledged entries -------------------------------------


def daily_figures(entries: Mapping[str, Mapping[str, Any]]
                  ) -> dict[tuple[str, str], dict[str, Any]]:
    """Per (day, branch) that wrote any: sales (debits less refunds), debits counted,
    refunds, top-up cash and count, cards and packages sold and what they took, and
    what the till took by payment method (top-ups; services, goods and packages paid
    there, less refunds of such debits on the refund's day). An entry's day is its
    id's time in the chain's zone (docs/format.md)."""
    out: dict[tuple[str, str], dict[str, Any]] = {}

    def fig(e: Mapping[str, Any]) -> dict[str, Any]:
        key = (day_of(hlc.id_time_ms(str(e["id"]))), str(e["node"]))
        f = out.get(key)
        if f is None:
            f = out[key] = {"sales": 0, "debits": 0, "refunds": 0, "topup_cash": 0,
                            "topups": 0, "cards_sold": 0, "card_sales": 0,
                            "topup_by_method": Counter(), "till_by_method": Counter()}
        return f

    for e in entries.values():
        kind = e["kind"]
        amount, paid = int(e.get("amount") or 0), int(e.get("paid") or 0)
        pay = str(e.get("pay") or "cash")
        if kind == "debit":
            f = fig(e)
            f["sales"] += amount
            f["debits"] += 1
            if pay not in NOT_AT_TILL:
                f["till_by_method"][pay] += amount
        elif kind == "refund":
            f = fig(e)
            f["sales"] -= amount
            f["refunds"] += amount
            debit = entries.get(str(e.get("ref")))
            if debit is not None and debit.get("pay") not in (*NOT_AT_TILL, None):
                f["till_by_method"][str(debit["pay"])] -= amount
        elif kind == "topup":
            f = fig(e)
            f["topup_cash"] += paid
            f["topups"] += 1
            f["topup_by_method"][pay] += paid
        elif kind == "card":
            f = fig(e)
            f["cards_sold"] += 1
            f["card_sales"] += paid
        elif kind == "package":
            f = fig(e)
            f["cards_sold"] += 1
            f["card_sales"] += amount
            if pay not in NOT_AT_TILL:
                f["till_by_method"][pay] += paid
    for f in out.values():
        f["topup_by_method"] = {m: v for m, v in sorted(f["topup_by_method"].items()) if v}
        f["till_by_method"] = {m: v for m, v in sorted(f["till_by_method"].items()) if v}
    return out


def month_end_balances(entries: Mapping[str, Mapping[str, Any]], month: str
                       ) -> dict[str, dict[str, int]]:
    """Each member's cash, bonus and points at the end of `month` (YYYY-MM): the sum of
    the deltas of the entries whose id's day falls in it or before."""
    out: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for eid, e in entries.items():
        if day_of(hlc.id_time_ms(eid))[:7] > month:
            continue
        for purse, _node, change in e.get("deltas") or ():
            if purse in MEMBER_PURSES:
                out[str(e["member"])][str(purse)] += int(change)
    return {m: {p: v for p, v in sorted(b.items()) if v} for m, b in sorted(out.items())
            if any(b.values())}
