"""结算表: who owes whom for stored value paid in at one branch and served at another.

Settlement is by value served, never by rights moved (DESIGN.md, "The one hard
problem"). The rebalancer moves rights ahead of visits and a grant carries a cushion,
so a rights transfer says where value *may* be spent, not where it was. What was
served is read from the entries alone, replayed in id order (ids sort by HLC time
then node: the same total order on every replica), so every converged replica prints
the same statement. No I/O here: `crdtledger.views.settlement` reads the entries and
hands them to `settle`.

The rule (docs/design-notes.md, "Settlement by value served"):

- Only principal (the `cash` purse, 本金) settles. Each top-up's cash opens a *lot*
  collected at the branch that wrote it. A positive cash correction (调整本金) opens a
  lot at the correcting branch. Lots of one member are used oldest first (FIFO by
  the id of the entry that opened them).
- Bonus value (promotions, points converted) is free: consuming it creates no debt.
  It is reported per serving branch as `bonus_served`.
- Consumption is a `debit` or a `package` sale whose deltas lower `cash` (a package
  bought with stored value consumes that value where it is sold; its later uses are
  package uses, not money). Its cash takes lots FIFO; value taken from a lot
  collected at A and served at B (the entry's branch) makes A owe B; A == B is value
  a branch served for itself (`served_own`).
- A `refund` (field `ref` = its debit) gives back exactly what its debit took: its
  cash credit returns to the lots that debit took, the last taken first, and
  reverses the corresponding debt, booked on the refund's day. Cash credited beyond
  what the debit took (no honest refund does that) goes back to no lot. A refund
  whose id sorts before its debit's (a branch whose clock ran ahead when it sold and
  was put right before it refunded) gives back as soon as the debit has taken,
  booked on the debit's day.
- A negative cash correction takes, with no debt, first the lots collected at its
  own branch, the newest first, then the others oldest first: the value leaves the
  books (`removed`, booked against the branch that collected it). It undoes what its
  branch put in by mistake (a top-up keyed too high, a correction in error), which
  is that branch's latest lot; taken FIFO, it removed value another branch had
  collected while the mistake's lot stood, and a member's own spending at the
  collecting branch then owed the correcting one.
- Member merge: a `merge` entry that lowers `cash` and names the survivor (`to`)
  takes the merged member's lots FIFO and moves them, each with its collecting
  branch and its place in FIFO order, to the survivor, at the moment of that entry.
  The survivor's matching `merge` entry (field `ref`) only mirrors it; an out that
  no projected `merge` names so (a liar's lone out, or one written by 0.2.0 whose
  "in" has not arrived) moves nothing: it removes the value, as a cash-lowering
  `merge` without `to` does, as a correction.
- Member exit (crdtledger.membership): an `exit_settle` entry with `step` refund pays
  the principal back in cash at its branch, read like a debit (the collecting branch
  owes the paying one); with `step` forfeit the value leaves the books as the collecting
  branch's income, `removed`, as a correction's does, but taken FIFO (it ends all the
  member's value: no branch undoes a mistake of its own).
- Transfers (rights) are ignored entirely; points and package uses are not money.
- Cash consumed with no lot left to take is *owed* by the member's next lot: a branch
  whose clock was set back after running ahead (hlc.py, eras) mints ids below those it
  minted while ahead, so a debit can sort before the top-up it spent. The first lot
  opened later covers it, oldest debt first, booked on that lot's day; until then (and
  for cash corrected away or merged with no lot, which an honest chain never writes
  but a replica must not crash on) the value counts against the branch that wrote the
  entry, with no debt, as `unattributed`.
- Period: debts, service, collection and removal are booked on the day of the entry
  that caused them (a refund's reversal on the refund's day). Lots are computed from
  all earlier history. `opening` and `unspent` are the value still prepaid at each
  collecting branch (the chain's liability to its members) at the period's start and
  end.

Reconciliation, per branch, for any period (asserted by tests/test_settlement.py):

    opening + collected - served_own - served_for_others - removed
        == unspent - net

where `net` = served_for_others - served_by_others (what others owe the branch,
minus what it owes). Over all time `opening` is 0, so collected - served - removed =
unspent + (owes - owed): the standard 分账 = 充值本金 + 调整本金 − 消费本金, with
what is still prepaid kept apart as the liability it is. Unattributed value is
outside every lot, so outside this identity; it is shown so it cannot hide. The
positions (`net`) sum to zero.
"""

from __future__ import annotations

import bisect
from collections import defaultdict, deque
from collections.abc import Container, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypedDict, cast

from crdtledger.money import format_yuan

# The entry kinds that can change a member's prepaid principal. views.settlement reads
# only these.
KINDS = ("topup", "debit", "package", "refund", "correction", "merge", "exit_settle")

# The figures of a branch, in the order the statement's table shows them.
BRANCH_FIGURES = ("opening", "collected", "served_own", "served_for_others",
                  "served_by_others", "net", "removed", "unspent", "bonus_served",
                  "unattributed")
# The figures of a pair of branches.
PAIR_FIGURES = ("served", "served_back", "amount")


class Pair(TypedDict):
    """Two branches, netted: `owes` owes `to` `amount` (fen), which is the value `to`
    served from lots `owes` collected (`served`) minus the value `owes` served from
    lots `to` collected (`served_back`). `amount` may be 0 where both served alike."""

    owes: str
    to: str
    amount: int
    served: int
    served_back: int


class Branch(TypedDict):
    """One branch's figures for the period, in fen (see the module's docstring)."""

    opening: int  # value still prepaid at this branch when the period starts
    collected: int  # top-up cash and positive cash corrections written here
    served_own: int  # value collected here and served here
    served_for_others: int  # value collected elsewhere and served here: owed to us
    served_by_others: int  # value collected here and served elsewhere: we owe
    net: int  # served_for_others - served_by_others
    removed: int  # value collected here that negative corrections took away
    unspent: int  # value still prepaid at this branch when the period ends
    bonus_served: int  # free value (promotion, points converted) served here
    unattributed: int  # cash served here that no lot covered (none in an honest chain)


class Statement(TypedDict):
    pairs: list[Pair]
    branches: dict[str, Branch]
    net: dict[str, int]  # each branch's `net`: positive to receive, negative to pay
    total: int  # the positions' sum: always 0


@dataclass
class _Lot:
    collector: str
    left: int


@dataclass
class _Book:
    """One member's lots still holding value, by the id of the entry that opened them."""

    lots: dict[str, _Lot] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)  # keys of `lots`, oldest first
    # Debits' parts that no lot covered yet (a _Taking and its [None, server, fen]
    # part), oldest first: the next lots opened cover them (_Replay.cover).
    owed: deque[tuple[_Taking, list[Any]]] = field(default_factory=deque)

    def put(self, key: str, collector: str, amount: int) -> None:
        lot = self.lots.get(key)
        if lot is None:
            self.lots[key] = _Lot(collector, amount)
            bisect.insort(self.order, key)
        else:
            lot.left += amount

    def take(self, amount: int) -> tuple[list[tuple[str, str, int]], int]:
        """Up to `amount` from the oldest lots: what was taken (lot, collector, fen) in
        the order taken, and the part no lot covered."""
        taken = []
        while amount and self.order:
            key = self.order[0]
            lot = self.lots[key]
            n = min(lot.left, amount)
            lot.left -= n
            amount -= n
            taken.append((key, lot.collector, n))
            if lot.left == 0:
                del self.lots[key]
                self.order.pop(0)
        return taken, amount

    def undo(self, collector: str, amount: int) -> tuple[list[tuple[str, str, int]], int]:
        """Up to `amount` from the lots `collector` collected, the newest first: what a
        negative correction written at `collector` takes before any other lot (the
        module's docstring). Taken as `take` gives it, with the part not found there."""
        taken = []
        i = len(self.order)
        while amount and i:
            i -= 1
            key = self.order[i]
            lot = self.lots[key]
            if lot.collector != collector:
                continue
            n = min(lot.left, amount)
            lot.left -= n
            amount -= n
            taken.append((key, collector, n))
            if lot.left == 0:
                del self.lots[key]
                self.order.pop(i)  # only keys above i move: the walk down goes on
        return taken, amount


@dataclass
class _Taking:
    """What one debit took: [lot, collector, fen] in the order taken (lot None for
    the part no lot covered), and where it was served."""

    server: str
    parts: list[list[Any]]


class _Replay:
    def __init__(self, lo: str | None, paired: Container[str] = frozenset()) -> None:
        self.lo = lo
        self.paired = paired  # the merge outs an "in" names (settle)
        self.books: dict[str, _Book] = defaultdict(_Book)
        self.takings: dict[str, _Taking] = {}
        # Refunds replayed before their debit (their writer's clock was put back after
        # running ahead: ids do not always follow the order things happened in): what
        # each gives back, by debit id, given back as soon as the debit has taken.
        self.early: dict[str, list[tuple[str, int]]] = defaultdict(list)
        self.unspent: dict[str, int] = defaultdict(int)  # per collector, now
        self.opening: dict[str, int] | None = None if lo else {}
        self.figures: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        self.flows: dict[tuple[str, str], int] = defaultdict(int)  # (collector, server)
        self.booking = lo is None

    def entry(self, e: Mapping[str, Any]) -> None:
        if not self.booking and e["id"] >= str(self.lo):
            self.booking = True
            self.opening = dict(self.unspent)
        kind, node = e["kind"], e["node"]
        cash = bonus = 0
        for purse, _node, change in e["deltas"]:  # one loop: a report reads every entry
            if purse == "cash":
                cash += change
            elif purse == "bonus":
                bonus += change
        if kind in ("debit", "package", "refund"):
            self.book(node, "bonus_served", -bonus)
        if kind == "topup" or (kind == "correction" and cash > 0):
            if cash > 0:
                self.books[e["member"]].put(e["id"], node, cash)
                self.unspent[node] += cash
                self.book(node, "collected", cash)
                self.cover(self.books[e["member"]])
        elif (kind in ("debit", "package") or (kind == "exit_settle"
                                                and e.get("step") == "refund")) and cash < 0:
            # An exit's refund is value paid out at its branch like value served: the
            # branch that collected it owes the one that paid it back.
            self.consume(e, -cash)
        elif kind == "refund" and cash > 0:
            self.give_back(e, cash)
        elif kind in ("correction", "merge", "exit_settle") and cash < 0:  # exit: forfeit
            book = self.books[e["member"]]
            # A correction undoes what its branch put in by mistake: its own lots
            # first, then (a branch correcting value it never collected) the oldest.
            # A merge moves and a forfeit ends all the value, in FIFO order.
            own, left = book.undo(node, -cash) if kind == "correction" else ([], -cash)
            taken, short = book.take(left)
            taken = own + taken
            # An out moves only with its "in": a lone one (a liar's, or 0.2.0's until
            # its "in" is taken) lowered rights that nobody was given, so its value
            # leaves the books; moved, a member who never had the lots spent them.
            target = (self.books[e["to"]] if kind == "merge" and e.get("to")
                      and e["id"] in self.paired else None)
            for key, collector, n in taken:
                if target is not None:
                    target.put(key, collector, n)  # moved: the branch's liability stays
                else:
                    self.unspent[collector] -= n
                    self.book(collector, "removed", n)
            self.book(node, "unattributed", short)

    def consume(self, e: Mapping[str, Any], amount: int) -> None:
        server = e["node"]
        taken, short = self.books[e["member"]].take(amount)
        for _key, collector, n in taken:
            self.unspent[collector] -= n
            self.serve(collector, server, n)
        self.book(server, "unattributed", short)
        parts: list[list[Any]] = [list(t) for t in taken]
        if short:
            parts.append([None, server, short])
        self.takings[e["id"]] = _Taking(server, parts)
        if short:
            self.books[e["member"]].owed.append((self.takings[e["id"]], parts[-1]))
        for member, back in self.early.pop(e["id"], ()):
            self.put_back(self.takings[e["id"]], member, back)

    def cover(self, book: _Book) -> None:
        """Lots just opened pay what earlier-sorted debits took with no lot behind
        them: the covered share becomes a part taken from that lot (so a refund gives
        it back there), served now."""
        while book.owed and book.order:
            taking, part = book.owed[0]
            if part[2]:
                taken, _ = book.take(part[2])
                # The part not covered stays last (consume appends it, lots covering it
                # go before it, a refund gives back from the end): found there, not by
                # a search of every part (a debit covered a fen at a time by N top-ups
                # searched N growing lists: 4.6 s at 16,000).
                parts = taking.parts
                at = len(parts) - 1 if parts and parts[-1] is part else parts.index(part)
                for key, collector, n in taken:
                    self.unspent[collector] -= n
                    self.serve(collector, taking.server, n)
                    self.book(taking.server, "unattributed", -n)
                    part[2] -= n
                    taking.parts.insert(at, [key, collector, n])
                    at += 1
            if part[2] == 0:
                book.owed.popleft()
                taking.parts = [p for p in taking.parts if p is not part]

    def give_back(self, e: Mapping[str, Any], amount: int) -> None:
        taking = self.takings.get(str(e.get("ref")))
        if taking is None:
            self.early[str(e.get("ref"))].append((e["member"], amount))
        else:
            self.put_back(taking, e["member"], amount)

    def put_back(self, taking: _Taking, member: str, amount: int) -> None:
        book = self.books[member]
        while amount and taking.parts:
            part = taking.parts[-1]
            key, collector, took = part
            n = min(took, amount)
            amount -= n
            part[2] -= n
            if part[2] == 0:
                taking.parts.pop()
            if key is None:
                self.book(taking.server, "unattributed", -n)
            else:
                book.put(key, collector, n)
                self.unspent[collector] += n
                self.serve(collector, taking.server, -n)

    def serve(self, collector: str, server: str, n: int) -> None:
        if not self.booking:
            return
        if collector == server:
            self.figures[server]["served_own"] += n
        else:
            self.flows[(collector, server)] += n
            self.figures[server]["served_for_others"] += n
            self.figures[collector]["served_by_others"] += n

    def book(self, branch: str, figure: str, n: int) -> None:
        if self.booking and n:
            self.figures[branch][figure] += n

    def statement(self) -> Statement:
        opening = self.opening if self.opening is not None else dict(self.unspent)
        for branch, n in opening.items():
            if n:
                self.figures[branch]["opening"] = n
        for branch, n in self.unspent.items():
            if n:
                self.figures[branch]["unspent"] = n
        branches: dict[str, Branch] = {}
        for b in sorted(self.figures):
            f = self.figures[b]
            f["net"] = f["served_for_others"] - f["served_by_others"]
            if any(f.values()):
                branches[b] = cast(Branch, {k: f[k] for k in BRANCH_FIGURES})
        pairs: list[Pair] = []
        for a, b in sorted({tuple(sorted(k)) for k in self.flows}):
            ab, ba = self.flows.get((a, b), 0), self.flows.get((b, a), 0)
            if ab == ba == 0:
                continue
            if ab >= ba:  # b served more of a's value than a of b's: a owes b
                pairs.append({"owes": a, "to": b, "amount": ab - ba, "served": ab,
                              "served_back": ba})
            else:
                pairs.append({"owes": b, "to": a, "amount": ba - ab, "served": ba,
                              "served_back": ab})
        net = {b: f["net"] for b, f in branches.items()}
        return {"pairs": pairs, "branches": branches, "net": net,
                "total": sum(net.values())}


def settle(entries: Iterable[Mapping[str, Any]], lo: str | None = None,
           hi: str | None = None, paired: Container[str] | None = None) -> Statement:
    """The statement of the entries with lo <= id < hi (either open), from `entries`:
    every entry of the kinds in KINDS below `hi`, in id order, of all members.
    `paired`: the ids of the merge outs a projected "in" names (any id, beyond `hi`
    too); None to read them from `entries`."""
    if paired is None:
        entries = list(entries)
        paired = {str(e["ref"]) for e in entries if e["kind"] == "merge" and e.get("ref")}
    replay = _Replay(lo, paired)
    for e in entries:
        if hi is not None and e["id"] >= hi:
            break
        replay.entry(e)
    return replay.statement()


def csv_rows(statement: Statement) -> list[list[str]]:
    """The statement as one table (amounts in yuan): the pairs, a blank row, the
    branches. The command line's --csv; the back office's export has the same
    columns, its headers in the counter's language and branches by name."""
    rows = [["owes", "to", *PAIR_FIGURES]]
    rows += [[p["owes"], p["to"], *yuan(p, PAIR_FIGURES)] for p in statement["pairs"]]
    rows += [[], ["branch", *BRANCH_FIGURES]]
    rows += [[b, *yuan(f, BRANCH_FIGURES)] for b, f in statement["branches"].items()]
    return rows


def reconciles(f: Branch) -> bool:
    """The identity a branch's figures keep (the module's docstring): what it collected,
    less what it served and what was corrected away, is what is still prepaid there
    less what others owe it. The back office shows it per branch and for the chain."""
    return (f["opening"] + f["collected"] - f["served_own"] - f["served_for_others"]
            - f["removed"] == f["unspent"] - f["net"])


def chain_total(statement: Statement) -> Branch:
    """Every branch's figures added up: the chain's row of the statement."""
    rows = [cast(Mapping[str, int], f) for f in statement["branches"].values()]
    return cast(Branch, {k: sum(f[k] for f in rows) for k in BRANCH_FIGURES})


def yuan(figures: Mapping[str, object], keys: Iterable[str]) -> list[str]:
    """The named figures of a pair or a branch, in yuan."""
    return [format_yuan(cast(int, figures[k])) for k in keys]
