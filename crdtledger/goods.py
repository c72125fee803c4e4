"""Goods and stock (issue 15, part 1): the chain's catalogue, each branch's stock,
sales over the counter (to a member or a walk-in customer) and gifts for points.

- The catalogue is chain governance: versions of the rule `goods` (head office
  only), each naming the items it adds or changes; `Rules.rule("goods")` folds them
  per code, so two concurrent additions are both kept. An item gets a stock id
  (minted when it is first added, an ID like 01J5Q8ZK3T7XM.HQ) that later versions
  keep.
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
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, cast

from crdtledger import escrow, views
from crdtledger.commit import Write, put
from crdtledger.errors import InsufficientFunds, InvalidInput, LedgerError, NotFound
from crdtledger.hlc import check_node_id
from crdtledger.inputs import check_text
from crdtledger.model import SERVICE_CODE
from crdtledger.money import apply_rate, check_amount, check_count, format_yuan, points_for
from crdtledger.payments import Payments, _spend
from crdtledger.rules import _check_goods

if TYPE_CHECKING:
    from crdtledger.ledger import Ledger

# Why a stock entry moves units (its `reason`).
STOCK_REASONS = ("in", "return", "adjust", "ship", "receive", "sale", "gift")


def walk_in(node: str) -> str:
    """The walk-in customer (散客) of a branch: a fixed pseudo-member its till sales
    without a member are written for. Never a member record, so nothing can top it
    up or pay from it; it earns no points and gets no level discount."""
    return f"{'0' * 13}.{node}"


def is_walk_in(member: str) -> bool:
    return member.startswith("0" * 13 + ".")


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

    # --- the catalogue --------------------------------------------------------

    def catalogue(self, day: str | None = None) -> dict[str, dict[str, Any]]:
        """Every goods item in force (code -> item, its code included)."""
        return {str(code): {**item, "code": str(code)}
                for code, item in self.rule("goods", day).items() if isinstance(item, dict)}

    def goods_item(self, code: str) -> dict[str, Any]:
        """An item of the catalogue by its code or its barcode."""
        items = self.catalogue()
        if code in items:
            return items[code]
        for item in items.values():
            if code and item.get("barcode") == code:
                return item
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
                  "body": json.dumps({code: item}, sort_keys=True), "by": operator}
        self._write(put("rules", "rules", rid, record))
        return {**item, "code": code, "rule_id": rid}

    # --- stock ----------------------------------------------------------------

    def stock_held(self, item: Mapping[str, Any], purse: str = "stock") -> dict[str, int]:
        """Units of an item per branch (non-zero rows)."""
        return {n: a for n, a in sorted(self._rights(str(item["stock"]), purse).items()) if a}

    def _branch_name(self, node: str) -> str:
        name = self.rule("branches").get(node)
        return f"{name} ({node})" if name else node

    def _require_stock(self, item: Mapping[str, Any], qty: int, purse: str = "stock") -> None:
        """Inside the write transaction: this branch's own units cover `qty`."""
        held = self._rights(str(item["stock"]), purse)
        have = held.get(self.node, 0)
        if qty > have:
            others = {n: a for n, a in held.items() if n != self.node}
            raise OutOfStock(item, self._branch_name(self.node), have, qty,
                             others if purse == "stock" else {}, purse)

    def _together(self, first: dict[str, Any], second: dict[str, Any]) -> list[Write]:
        """Two entries written as one log record, so that every replica takes them
        together (a sale's money and its stock): the first write sets both keys in
        one pycrdt transaction, the second only has its entry projected (it changes
        nothing more, so it adds no record). Entries of two months (a sale at
        midnight on the last of a month) are two documents, so two records, in order:
        each stands alone (funded, never below zero), and a replica between the two
        shows the money taken a moment before the stock."""
        one, two = self._entry_write(first), self._entry_write(second)
        if one.doc != two.doc:
            return [one, two]

        def both(root: Any) -> None:
            root[first["id"]] = first
            root[second["id"]] = second

        return [Write(one.doc, one.root, one.key, both, entry=first),
                Write(two.doc, two.root, two.key, lambda _root: None, entry=second)]

    def _stock_entry(self, item: Mapping[str, Any], qty: int, reason: str,
                     deltas: list[tuple[str, str, int]], operator: str, **extra: Any
                     ) -> dict[str, Any]:
        return self._entry("stock", str(item["stock"]), deltas=deltas,
                           amount=int(item.get("cost", 0)) * qty, qty=qty, reason=reason,
                           goods=str(item["code"]), op=operator, **extra)

    def _post_stock(self, item: Mapping[str, Any], entry: dict[str, Any],
                    lowers: Mapping[str, int]) -> dict[str, Any]:
        def plan() -> tuple[list[Write], dict[str, Any]]:
            for purse, qty in lowers.items():
                self._require_stock(item, qty, purse)
            return [self._entry_write(entry)], entry

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
        entry = self._stock_entry(item, qty, "in", [("stock", self.node, qty)], operator,
                                  to=check_text(supplier, "supplier", limit=60))
        return self._post_stock(item, entry, {})

    def stock_return(self, operator: str, code: str, qty: int, supplier: str = ""
                     ) -> dict[str, Any]:
        """商品退货单: units sent back to the supplier from this branch's stock."""
        self.authorise(operator, "stock.write")
        item = self.goods_item(code)
        qty = check_count(qty, "quantity")
        entry = self._stock_entry(item, qty, "return", [("stock", self.node, -qty)], operator,
                                  to=check_text(supplier, "supplier", limit=60))
        return self._post_stock(item, entry, {"stock": qty})

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
        if qty * int(item.get("cost", 0)) > limit:
            approved = self._approve(operator, approver, f"a stock adjustment of {change:+d} "
                                     f"{item['name']} ({format_yuan(qty * int(item['cost']))} "
                                     "at cost)")
        entry = self._stock_entry(item, qty, "adjust", [("stock", self.node, change)], operator,
                                  note=note, approver=approved)
        return self._post_stock(item, entry, {"stock": qty} if change < 0 else {})

    def ship_stock(self, operator: str, code: str, qty: int, to: str) -> dict[str, Any]:
        """调拨 out: units leave this branch's stock and are in transit to `to`, which
        takes them into its stock when they arrive (receive_stock)."""
        self.authorise(operator, "stock.write")
        item = self.goods_item(code)
        qty = check_count(qty, "quantity")
        check_node_id(to)
        if to == self.node:
            raise InvalidInput("a branch cannot ship stock to itself")
        entry = self._stock_entry(item, qty, "ship",
                                  [("stock", self.node, -qty), ("transit", to, qty)],
                                  operator, to=to)
        return self._post_stock(item, entry, {"stock": qty})

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
        entry = self._stock_entry(item, qty, "receive",
                                  [("transit", self.node, -qty), ("stock", self.node, qty)],
                                  operator)
        return self._post_stock(item, entry, {"transit": qty})

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
        gross = int(item.get("price", 0)) * qty
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
            lvl = views.level(cast("Ledger", self), member, profile, totals, day)
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
            earn = self.rule("earn", day)
            points = points_for(net, str(earn["points_per_yuan"]),
                                str(lvl["points_multiplier"]))
            expires = self._points_expiry(day, earn) if points else None
        lvl_name = str(lvl["name"]) if lvl is not None else None
        buyer = member

        def plan() -> tuple[list[Write], dict[str, Any]]:
            self._require_stock(item, qty)
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
                **({} if use is None else {"coupon": use.id, "off": use.off}))
            stock = self._stock_entry(item, qty, "sale", [("stock", self.node, -qty)],
                                      operator, ref=debit["id"])
            return self._together(debit, stock), {**debit, "stock_entry": stock["id"]}

        return self._commit(plan)

    def gift_goods(self, operator: str, member: str, code: str, qty: int = 1
                   ) -> dict[str, Any]:
        """积分兑换 of a goods item: the member's points lowered by its points price
        (as a redemption) and this branch's stock by the units, in one commit."""
        self.authorise(operator, "points.redeem")
        item = self.goods_item(code)
        qty = check_count(qty, "quantity")
        price = int(item.get("points_price", 0))
        if price <= 0:
            raise InvalidInput(f"{item['name']} ({item['code']}) is not a gift for points")
        points = check_count(price * qty, "points")
        member, _ = self._acting(member)
        self._usable_points(member, points)

        def plan() -> tuple[list[Write], dict[str, Any]]:
            self._require_stock(item, qty)
            escrow.require("points", self.node, self._purses(member).get("points", {}),
                           points, member)
            redeem = self._entry("redeem", member, deltas=[("points", self.node, -points)],
                                 points=points, qty=qty, gift=str(item["name"]),
                                 goods=str(item["code"]), op=operator)
            stock = self._stock_entry(item, qty, "gift", [("stock", self.node, -qty)],
                                      operator, ref=redeem["id"])
            return self._together(redeem, stock), {**redeem, "stock_entry": stock["id"]}

        return self._commit(plan)

    # --- reads ------------------------------------------------------------------

    def stock_of(self, code: str, branch: str | None = None) -> dict[str, Any]:
        """Units of an item on hand at `branch` (this one by default)."""
        item = self.goods_item(code)
        node = branch or self.node
        return {"branch": node, "qty": self.stock_held(item).get(node, 0)}
