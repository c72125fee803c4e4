"""Goods and stock (issue 15, part 1): the chain's catalogue, each branch's stock,
sales over the counter (to a member or a walk-in customer) and gifts for points.

- The catalogue is chain governance: versions of the rule `goods` (head office
  only), each naming the items it adds or changes; `Rules.rule("goods")` folds them
  per code, so two concurrent additions are both kept. An item gets a stock id
  (minted when it is first added, an ID like 01J5Q8ZK3T7XM.HQ) that later versions
  keep. Two head offices adding one code before they sync mint two stock ids: the
  item's stock is then the smallest id any version of the code ever carried, and its
  units are the rows under all of them (`stocks`, that one first): nothing taken in
  under the other id is lost (docs/design-notes.md).
- Stock is escrow, as stored value is (crdtledger.escrow): the item's stock id is the
  rights' "member", purse `stock`, one row per branch. A branch's stock is raised by
  anyone (a shipment raises the receiver's `transit`) and lowered only by that branch,
  under its write lock, while it covers the amount: the `own-rights` write rule and the
  projection's deferral hold every replica's rows at or above zero, partitioned or
  not. Units never move by a rights transfer (a shelf is not emptied by a ledger
  row): a branch short of stock is refused, with what it and the others hold.
- A sale writes its money entry (a `debit`, as Payments.debit prices and pays one)
  and its stock entry in one commit; a gift for points its `redeem` and its stock
  entry. Either both commit or neither.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, cast

from crdtledger import escrow, views
from crdtledger.commit import Write, put
from crdtledger.errors import InsufficientFunds, InvalidInput, LedgerError, NotFound
from crdtledger.hlc import check_node_id
from crdtledger.inputs import check_text
from crdtledger.model import SERVICE_CODE
from crdtledger.money import apply_rate, check_amount, check_count, format_yuan, points_for

# The walk-in customer is the payments' (a service sold at the till has one too); it
# is named here as well, where the goods sales that began it are.
from crdtledger.payments import Payments, _spend, times
from crdtledger.payments import is_walk_in as is_walk_in
from crdtledger.payments import walk_in as walk_in
from crdtledger.rules import _check_goods

if TYPE_CHECKING:
    from crdtledger.ledger import Ledger

# Why a stock entry moves units (its `reason`).
STOCK_REASONS = ("in", "return", "adjust", "ship", "receive", "sale", "gift", "refund")


def _item(code: str, item: Mapping[str, Any], carried: Mapping[str, list[str]]
          ) -> dict[str, Any]:
    """A catalogue item as the fold kept it, with its code, its canonical stock id and
    every stock id its code carried (Goods.catalogue)."""
    ids = carried.get(code) or [str(item["stock"])]
    return {**item, "code": code, "stock": ids[0], "stocks": ids}


def _with_stock(entry: dict[str, Any], stock: list[dict[str, Any]]) -> dict[str, Any]:
    """A sale's or a gift's result: its entry and the stock entry written with it (all
    of them, when the units came from more than one of the item's stock ids)."""
    return {**entry, "stock_entry": stock[0]["id"],
            **({"stock_entries": [s["id"] for s in stock]} if len(stock) > 1 else {})}


class OutOfStock(InsufficientFunds):
    """Too few units of an item at this branch: the sentence names the item, the
    branch, what it holds and what other branches hold."""

    code = "out_of_stock"

    def __init__(self, item: Mapping[str, Any], branch: str, have: int, wanted: int,
                 others: Mapping[str, int], purse: str = "stock") -> None:
        self.purse = purse
        self.balance = have
        self.wanted = wanted
        unit = str(item.get("unit") or "")
        where = "in transit to" if purse == "transit" else "in stock at"
        elsewhere = ", ".join(f"{n} {q}" for n, q in sorted(others.items()) if q > 0)
        LedgerError.__init__(
            self, f"not enough {item['name']} ({item['code']}) {where} {branch}: "
            f"{have}{unit} there, {wanted}{unit} asked"
            + (f" (other branches hold {elsewhere}; ship it here first)" if elsewhere else ""))


class Goods(Payments):
    """The goods catalogue, stock movements, goods sales and gifts for points."""

    # The goods versions last read and the stock ids their codes carried.
    _carried: tuple[list[Any], dict[str, list[str]]] | None = None

    # --- the catalogue --------------------------------------------------------

    def catalogue(self, day: str | None = None) -> dict[str, dict[str, Any]]:
        """Every goods item in force (code -> item, its code included). Its `stock` is
        the smallest stock id any version of the code carried, `stocks` every one of
        them, that one first: the same on every replica once they hold the same
        versions, whichever version the fold kept for the rest of the item."""
        carried = self._carried_stock_ids()
        return {str(code): _item(str(code), item, carried)
                for code, item in self.rule("goods", day).items() if isinstance(item, dict)}

    def _carried_stock_ids(self) -> dict[str, list[str]]:
        """Code -> every stock id a version of it carried, sorted. Two head offices
        adding a code concurrently each mint one; units taken in under either are the
        item's. Remembered for the versions read (a new list whenever a rule arrives:
        Rules._versions), as a sale reads the catalogue and rescanning every version
        doubled what that costs."""
        versions = self._versions("goods")
        if self._carried is not None and self._carried[0] is versions:
            return self._carried[1]
        ids: dict[str, set[str]] = {}
        for _eff, _rid, body in versions:
            for code, item in body.items():
                if isinstance(item, dict) and isinstance(item.get("stock"), str):
                    ids.setdefault(str(code), set()).add(item["stock"])
        carried = {code: sorted(s) for code, s in ids.items()}
        self._carried = (versions, carried)
        return carried

    def goods_item(self, code: str) -> dict[str, Any]:
        """An item of the catalogue by its code or its barcode."""
        # Only the one item is built (a sale's path): not the whole catalogue.
        items, carried = self.rule("goods"), self._carried_stock_ids()
        if isinstance(items.get(code), dict):
            return _item(code, items[code], carried)
        for c, item in items.items():
            if code and isinstance(item, dict) and item.get("barcode") == code:
                return _item(str(c), item, carried)
        raise NotFound(f"no goods {code} in the catalogue")

    def add_goods(self, operator: str, code: str, name: str, price: int, cost: int = 0, *,
                  barcode: str = "", unit: str = "", category: str = "",
                  points_price: int = 0, low_stock: int = 0) -> dict[str, Any]:
        """商品资料: add an item to the chain's catalogue, or change one (it keeps its
        stock id). A governance record: only the head office may write it."""
        self.authorise(operator, "goods.write")
        if not isinstance(code, str) or not SERVICE_CODE.match(code):
            raise InvalidInput(f"goods code {str(code)[:30]!r} is not 1-20 letters, "
                               "digits, _ or -")
        old = self.catalogue().get(code)
        item = {
            "name": check_text(name, "name", required=True, limit=60),
            "barcode": check_text(barcode, "barcode", limit=40),
            "unit": check_text(unit, "unit", limit=10),
            "category": check_text(category, "category", limit=40),
            "price": check_amount(price, allow_zero=True),
            "cost": check_amount(cost, allow_zero=True),
            "points_price": check_amount(points_price, allow_zero=True),
            "low_stock": check_amount(low_stock, allow_zero=True),
            # Minted here once: the rights of the item's stock are kept under it.
            "stock": str(old["stock"]) if old else self.clock.mint(),
        }
        _check_goods({code: item})
        rid = self.clock.mint()
        record = {"kind": "goods", "effective_from": self.today(),
                  "body": json.dumps({code: item}, sort_keys=True), "by": operator,
                  "rev": self._next_rev("goods")}  # a later change folds last (Rules._versions)
        self._write(put("rules", "rules", rid, record))
        return {**item, "code": code, "rule_id": rid}

    # --- stock ----------------------------------------------------------------

    @staticmethod
    def _stock_ids(item: Mapping[str, Any]) -> list[str]:
        """The item's stock ids, its canonical one first (catalogue)."""
        return [str(s) for s in item.get("stocks") or [item["stock"]]]

    def _held_by_id(self, item: Mapping[str, Any], purse: str
                    ) -> list[tuple[str, dict[str, int]]]:
        return [(sid, self._rights(sid, purse)) for sid in self._stock_ids(item)]

    def stock_held(self, item: Mapping[str, Any], purse: str = "stock") -> dict[str, int]:
        """Units of an item per branch (non-zero rows), over all its stock ids."""
        held: dict[str, int] = {}
        for _sid, rows in self._held_by_id(item, purse):
            for n, a in rows.items():
                held[n] = held.get(n, 0) + a
        return {n: a for n, a in sorted(held.items()) if a}

    def _branch_name(self, node: str) -> str:
        name = self.rule("branches").get(node)
        return f"{name} ({node})" if name else node

    def _require_stock(self, item: Mapping[str, Any], qty: int, purse: str = "stock"
                       ) -> list[tuple[str, int]]:
        """Inside the write transaction: this branch's own units cover `qty`. Returns
        what to take from which stock id: the canonical one first, then the others
        (each row lowered by at most what it holds here, so none goes below zero)."""
        by_id = self._held_by_id(item, purse)
        held: dict[str, int] = {}
        for _sid, rows in by_id:
            for n, a in rows.items():
                held[n] = held.get(n, 0) + a
        have = held.get(self.node, 0)
        if qty > have:
            others = {n: a for n, a in held.items() if n != self.node}
            raise OutOfStock(item, self._branch_name(self.node), have, qty,
                             others if purse == "stock" else {}, purse)
        parts, left = [], qty
        for sid, rows in by_id:
            take = min(left, max(0, rows.get(self.node, 0)))
            if take:
                parts.append((sid, take))
                left -= take
        return parts

    def _stock_entry(self, item: Mapping[str, Any], qty: int, reason: str,
                     deltas: list[tuple[str, str, int]], operator: str,
                     stock_id: str | None = None, **extra: Any) -> dict[str, Any]:
        return self._entry("stock", stock_id or str(item["stock"]), deltas=deltas,
                           amount=times(int(item.get("cost", 0)), qty,
                                        f"{item['code']} (cost)"),
                           qty=qty, reason=reason,
                           goods=str(item["code"]), op=operator, **extra)

    def _post_stock(self, item: Mapping[str, Any], qty: int, lowers: str | None,
                    make: Callable[[str, int], dict[str, Any]]) -> dict[str, Any]:
        """Commit a stock movement of `qty` units: `make(stock id, units)` is its entry.
        One that lowers purse `lowers` here takes the units from the item's stock ids
        as _require_stock splits them (one entry each, as one record); one that only
        raises writes under the canonical id."""
        def plan() -> tuple[list[Write], dict[str, Any]]:
            parts = ([(str(item["stock"]), qty)] if lowers is None
                     else self._require_stock(item, qty, lowers))
            entries = [make(sid, n) for sid, n in parts]
            result = entries[0] if len(entries) == 1 else {  # all the units, every entry
                **entries[0], "qty": qty, "stock_entries": [e["id"] for e in entries]}
            return self._together(*entries), result

        return self._commit(plan)

    def stock_in(self, operator: str, code: str, qty: int, cost: int | None = None,
                 supplier: str = "") -> dict[str, Any]:
        """商品进货单: units bought in at this branch, at `cost` a unit (the
        catalogue's by default), from `supplier`."""
        self.authorise(operator, "stock.write")
        item = self.goods_item(code)
        qty = check_count(qty, "quantity")
        if cost is not None:
            item = {**item, "cost": check_amount(cost, allow_zero=True)}
        supplier = check_text(supplier, "supplier", limit=60)
        return self._post_stock(item, qty, None, lambda sid, n: self._stock_entry(
            item, n, "in", [("stock", self.node, n)], operator, sid, to=supplier))

    def stock_return(self, operator: str, code: str, qty: int, supplier: str = ""
                     ) -> dict[str, Any]:
        """商品退货单: units sent back to the supplier from this branch's stock."""
        self.authorise(operator, "stock.write")
        item = self.goods_item(code)
        qty = check_count(qty, "quantity")
        supplier = check_text(supplier, "supplier", limit=60)
        return self._post_stock(item, qty, "stock", lambda sid, n: self._stock_entry(
            item, n, "return", [("stock", self.node, -n)], operator, sid, to=supplier))

    def stock_adjust(self, operator: str, code: str, change: int, note: str,
                     approver: tuple[str, str] | None = None) -> dict[str, Any]:
        """盘点: this branch's count differs from its stock by `change` units. Worth
        more than the rule approval's stock_adjust_limit at cost, it needs an
        approver (another operator allowed to approve)."""
        self.authorise(operator, "stock.write")
        item = self.goods_item(code)
        if isinstance(change, bool) or not isinstance(change, int) or change == 0:
            raise InvalidInput("a stock adjustment is a non-zero whole number of units")
        qty = check_count(abs(change), "quantity")
        note = check_text(note, "reason", required=True)
        limit = int(self.rule("approval").get("stock_adjust_limit", 10000))
        approved = None
        # Counted with this operator's adjustments today without an approver (at the
        # cost they were written at): eight of 100.00 passed where one of 110.00 did not.
        before = sum(amount for _stock, amount, body in self._unapproved_today(operator, "stock")
                     if body.get("reason") == "adjust")
        worth = times(int(item.get("cost", 0)), qty, f"{item['code']} (cost)")
        if worth + before > limit:
            approved = self._approve(operator, approver, f"a stock adjustment of {change:+d} "
                                     f"{item['name']} ({format_yuan(worth)} at cost"
                                     + (f", after {format_yuan(before)} adjusted today without "
                                        "one)" if before else ")"))
        sign = 1 if change > 0 else -1
        return self._post_stock(item, qty, None if change > 0 else "stock",
                                lambda sid, n: self._stock_entry(
                                    item, n, "adjust", [("stock", self.node, sign * n)],
                                    operator, sid, note=note, approver=approved))

    def ship_stock(self, operator: str, code: str, qty: int, to: str) -> dict[str, Any]:
        """调拨 out: units leave this branch's stock and are in transit to `to`, which
        takes them into its stock when they arrive (receive_stock)."""
        self.authorise(operator, "stock.write")
        item = self.goods_item(code)
        qty = check_count(qty, "quantity")
        check_node_id(to)
        if to == self.node:
            raise InvalidInput("a branch cannot ship stock to itself")
        # Units in transit to a branch that does not exist could never be received.
        self._require_branch(to, "stock")
        return self._post_stock(item, qty, "stock", lambda sid, n: self._stock_entry(
            item, n, "ship", [("stock", self.node, -n), ("transit", to, n)], operator, sid,
            to=to))

    def receive_stock(self, operator: str, code: str, qty: int | None = None
                      ) -> dict[str, Any]:
        """调拨 in: units shipped to this branch arrive (all in transit by default)."""
        self.authorise(operator, "stock.write")
        item = self.goods_item(code)
        if qty is None:
            qty = self.stock_held(item, "transit").get(self.node, 0)
            if qty <= 0:
                raise OutOfStock(item, self._branch_name(self.node), 0, 1, {}, "transit")
        qty = check_count(qty, "quantity")
        return self._post_stock(item, qty, "transit", lambda sid, n: self._stock_entry(
            item, n, "receive", [("transit", self.node, -n), ("stock", self.node, n)],
            operator, sid))

    # --- sales and gifts --------------------------------------------------------

    def sell_goods(self, operator: str, code: str, qty: int = 1, member: str | None = None,
                   pay: str | None = None, card: str | None = None, pin: str | None = None,
                   coupon: str | None = None) -> dict[str, Any]:
        """商品销售: `qty` of an item at its catalogue price. To a member (by id or card):
        the level discount and points as for a service, paid from stored value
        (default) or at the till. To a walk-in customer (no member): at the till (the
        rule's first method by default), no discount, no points. A member's `coupon`
        comes off after the level discount and is redeemed by the sale's debit, as for
        a service (crdtledger.coupons). The money entry and the stock entry commit
        together, or nothing does."""
        self.authorise(operator, "sale")
        item = self.goods_item(code)
        qty = check_count(qty, "quantity")
        day = self.today()
        rules_day = self.rules_day(day)  # the rules' day (Rules.rules_day), as a debit's
        gross = times(int(item.get("price", 0)), qty, str(item["code"]))
        rate, lvl, points, expires = "1", None, 0, None
        if member is None and card is None:
            if pay == "stored":
                raise InvalidInput("a walk-in customer pays at the till: give a member to "
                                   "pay from stored value")
            pay = self._pay(pay)
            member = walk_in(self.node)
        else:
            pay = self._pay("stored" if pay is None else pay, ("stored",))
            member, (profile, totals) = self._resolve(member, card, pin)
            lvl = views.level(cast("Ledger", self), member, profile, totals, rules_day)
            rate = str(lvl["discount"])
        net = apply_rate(gross, rate)
        use = None
        if coupon is not None:
            if lvl is None:
                raise InvalidInput("a coupon is a member's: name the member or the card")
            use = cast("Ledger", self)._coupon_for_debit(
                operator, coupon, member, day, net=net, unit=0, service=None, pay=pay)
            net -= use.off
        if lvl is not None:  # a member earns points on what is paid, as for a service
            earn = self.rule("earn", rules_day)
            points = points_for(net, str(earn["points_per_yuan"]),
                                str(lvl["points_multiplier"]))
            expires = self._points_expiry(day, earn) if points else None
        lvl_name = str(lvl["name"]) if lvl is not None else None
        buyer = member
        moved = self.moved_ahead(day)  # its refund period counts from the day it really is

        def plan() -> tuple[list[Write], dict[str, Any]]:
            parts = self._require_stock(item, qty)
            paid: list[tuple[str, str, int]] = []
            purses = self._purses(buyer) if pay == "stored" or use is not None else {}
            if pay == "stored":
                paid = _spend(self.node, purses, net)
                for purse, _node, change in paid:
                    if change < 0:
                        escrow.require(purse, self.node, purses.get(purse, {}), -change, buyer)
            if use is not None:  # redeemed, or held elsewhere (then the node fetches it)
                cast("Ledger", self)._hold(use, buyer, purses)
                paid.append((use.purse, self.node, -1))
            debit = self._entry(
                "debit", buyer, deltas=[*paid, ("points", self.node, points)], amount=net,
                gross=gross, discount=rate, level=lvl_name, qty=qty, pay=pay,
                points=points or None, op=operator, expires=expires, goods=str(item["code"]),
                moved=moved, **({} if use is None else {"coupon": use.id, "off": use.off}))
            stock = [self._stock_entry(item, n, "sale", [("stock", self.node, -n)], operator,
                                       sid, ref=debit["id"]) for sid, n in parts]
            return self._together(debit, *stock), _with_stock(debit, stock)

        return self._commit(plan)

    def gift_goods(self, operator: str, member: str | None, code: str, qty: int = 1, *,
                   card: str | None = None, pin: str | None = None) -> dict[str, Any]:
        """积分兑换 of a goods item: the member's points lowered by its points price
        (as a redemption) and this branch's stock by the units, in one commit. For the
        member, or by the card swiped (`card`, `pin`: checked as a debit's)."""
        self.authorise(operator, "points.redeem")
        item = self.goods_item(code)
        qty = check_count(qty, "quantity")
        price = int(item.get("points_price", 0))
        if price <= 0:
            raise InvalidInput(f"{item['name']} ({item['code']}) is not a gift for points")
        points = times(price, qty, str(item["code"]), points=True)
        member, _ = self._resolve(member, card, pin)

        def plan() -> tuple[list[Write], dict[str, Any]]:
            offs = self._spend_points(member, points)
            parts = self._require_stock(item, qty)
            redeem = self._entry("redeem", member, deltas=[("points", self.node, -points)],
                                 points=points, qty=qty, gift=str(item["name"]),
                                 goods=str(item["code"]), op=operator)
            stock = [self._stock_entry(item, n, "gift", [("stock", self.node, -n)], operator,
                                       sid, ref=redeem["id"]) for sid, n in parts]
            return self._together(*offs, redeem, *stock), _with_stock(redeem, stock)

        return self._commit(plan)

    def _refund_stock(self, debit: Mapping[str, Any], qty: int, operator: str
                      ) -> dict[str, Any]:
        """The stock entry of a goods sale's refund: `qty` units back on this branch's
        shelf (the canonical stock id), at the unit cost the sale took them out at, so
        that the profit ranking nets exactly what the sale counted. Written with the
        refund, in the same commit (Payments.refund)."""
        code = str(debit["goods"])
        item = self.catalogue().get(code)
        if item is None:
            raise NotFound(f"no goods {code} in the catalogue")
        # Only the stock entries the sale's own branch wrote (views.OWN_SALE_STOCK).
        units, cost = views.sale_stock(self.storage.conn, str(debit["id"]), "sale")
        unit_cost = cost // units if units else int(item.get("cost", 0))
        return self._stock_entry({**item, "cost": unit_cost}, qty, "refund",
                                 [("stock", self.node, qty)], operator, ref=str(debit["id"]))

    # --- reads ------------------------------------------------------------------

    def stock_of(self, code: str, branch: str | None = None) -> dict[str, Any]:
        """Units of an item on hand at `branch` (this one by default)."""
        item = self.goods_item(code)
        node = branch or self.node
        if node != self.node:
            views.require_heard_of(cast("Ledger", self), check_node_id(node),
                                   "no stock of it to show")
        return {"branch": node, "qty": self.stock_held(item).get(node, 0)}
