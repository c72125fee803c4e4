"""Escrow rights: the bounded counter that keeps every purse at or above zero.

A purse's balance is the sum of per-node rights. Anyone may raise rights (a top-up
credits the node where it happens); only a node itself may lower its own rights
(a debit, or giving rights away), and only while they cover the amount. Because no
node ever spends more than it holds, the sum cannot go below zero under any
partition (Balegas et al., EuroSys 2015; AntidoteDB's counter_b).

Everything here is pure: the ledger applies it under its write lock, the simulator
and the branch node use the same policies to decide who asks whom.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from crdtledger.errors import InsufficientFunds, RightsElsewhere
from crdtledger.money import MAX_AMOUNT

Delta = tuple[str, str, int]  # (purse, node, change in that node's rights)


def check_deltas_authorised(origin: str, deltas: Iterable[Delta]) -> None:
    """An entry may lower rights only of the node that wrote it.

    Replicas check this on every entry they receive, so a decrement written on
    behalf of another node is rejected identically everywhere.
    """
    for purse, node, change in deltas:
        if change < 0 and node != origin:
            raise ValueError(f"entry from {origin} lowers {node}'s rights on {purse}")


def require(purse: str, here: str, rights: Mapping[str, int], amount: int,
            member: str | None = None) -> None:
    """Raise unless `here` alone can cover `amount` of `purse`."""
    balance = sum(rights.values())
    if amount > balance:
        raise InsufficientFunds(purse, balance, amount)
    own = rights.get(here, 0)
    if amount > own:
        others = {n: a for n, a in rights.items() if n != here and a > 0}
        raise RightsElsewhere(purse, amount - own, own, others, member)


@dataclass(frozen=True)
class Transfer:
    purse: str
    giver: str
    receiver: str
    amount: int


def shortfall_plan(
    rights: Mapping[str, int], here: str, amount: int, purse: str = "cash"
) -> list[Transfer]:
    """Who should give how much so that `here` can spend `amount`: richest first.

    This is the debit's own shortfall, so a holder may be asked for everything it has.
    """
    need = amount - rights.get(here, 0)
    plan: list[Transfer] = []
    for node, held in sorted(rights.items(), key=lambda kv: (-kv[1], kv[0])):
        if need <= 0:
            break
        if node == here or held <= 0:
            continue
        take = min(held, need)
        plan.append(Transfer(purse, node, here, take))
        need -= take
    return plan


def grant_amount(available: int, shortfall: int) -> int:
    """What a holder gives to a branch short of `shortfall`.

    The shortfall itself (a debit is waiting on it, so it may take the last rights),
    plus a cushion of at most half of what the holder keeps, so the next swipe at
    that branch does not have to ask again.
    """
    if available <= 0 or shortfall <= 0:
        return 0
    core = min(available, shortfall)
    keeps = available - core
    return min(core + keeps // 2, MAX_AMOUNT)  # one entry's most (money.pieces)


# Rights requests a branch answers per asking branch: GRANTS_PER_MINUTE, up to
# GRANT_BURST at once. An honest branch asks once per sale whose member's value sits
# elsewhere (a till sells one every minute or so; a branch of ten tills, ten a
# minute). A certified liar asked for every member's rights in seconds, 1,500 members'
# 750,000.00 in 2.5 s through a hub, and then held them where nobody else could spend
# them (only a branch may lower its own rights), or served them to itself.
GRANTS_PER_MINUTE = 60
GRANT_BURST = 120
# A hub relays for the shops behind it (a request marked `fwd`, naming its asker): each
# of those has the budget above at the giver, and the hub all of them together this
# many times it. One liar behind a hub no longer spends the budget of every honest shop
# relaying through it; a lying hub naming made-up askers gets this many, no more.
RELAY_FACTOR = 10
# Askers remembered at most (least recently used dropped): made-up names cannot grow it.
BUDGET_KEYS = 10_000


class GrantBudget:
    """How many rights requests of each asking branch may be answered now (a token
    bucket per asker, on the ledger's wall clock: the simulator's is its own). What a
    budget refuses is answered "none", counted per asker for the owner to see.

    Whole numbers only: a request costs a minute's worth of milliseconds
    (`_REQUEST`), and each millisecond gives back `per_minute` units, so a bucket
    refills `per_minute` requests a minute, exactly."""

    _REQUEST = 60_000  # units one request costs: a minute in ms

    def __init__(self, now_ms: Callable[[], int], per_minute: int = GRANTS_PER_MINUTE,
                 burst: int = GRANT_BURST) -> None:
        self.now_ms = now_ms
        self.per_minute = per_minute
        self.burst = burst
        self._left: dict[str, tuple[int, int]] = {}  # key -> (units, at ms)
        self.refused: dict[str, int] = {}  # asker -> requests refused since start

    @staticmethod
    def _keys(asker: str, via: str | None) -> list[tuple[str, int]]:
        return [(asker, 1)] if via is None else [(f"{via}>{asker}", 1),
                                                 (f"{via}>*", RELAY_FACTOR)]

    def _buckets(self, asker: str, via: str | None) -> list[tuple[str, int]]:
        """Each budget a request of `asker` (relayed by `via`) counts against, with
        the units it holds now. A clock set back adds nothing; set forward, at most a
        full bucket."""
        now = self.now_ms()
        out = []
        for key, scale in self._keys(asker, via):
            full = self.burst * scale * self._REQUEST
            units, at = self._left.get(key, (full, now))
            out.append((key, min(full, units + max(0, now - at) * self.per_minute * scale)))
        return out

    def allows(self, asker: str, via: str | None = None) -> bool:
        """Whether a request of `asker` (relayed by `via`) would be answered now
        (nothing taken)."""
        return all(units >= self._REQUEST for _k, units in self._buckets(asker, via))

    def take(self, asker: str, via: str | None = None) -> bool:
        """Answer one request of `asker` (relayed by `via`), if its budgets allow; else
        count it refused."""
        now = self.now_ms()
        held = self._buckets(asker, via)
        ok = all(units >= self._REQUEST for _k, units in held)
        for key, units in held:
            self._left.pop(key, None)  # to the end: the most recently used
            self._left[key] = (units - self._REQUEST if ok else units, now)
        while len(self._left) > BUDGET_KEYS:
            del self._left[next(iter(self._left))]
        if not ok:
            name = asker if via is None else f"{asker} via {via}"
            self.refused[name] = self.refused.get(name, 0) + 1
            while len(self.refused) > BUDGET_KEYS:
                del self.refused[next(iter(self.refused))]
        return ok


def rebalance(
    rights: Mapping[str, int], visits: Mapping[str, int], purse: str = "cash"
) -> list[Transfer]:
    """Background moves of rights toward the branches a member visits.

    Target: rights in proportion to `visits`, the weight of each branch (what the
    member spent there: views.visits). A holder only gives surplus above its
    own target and never gives its last unit: only a debit's shortfall may empty it.
    """
    total = sum(max(0, a) for a in rights.values())
    weight = sum(max(0, v) for v in visits.values())
    if total <= 0 or weight <= 0:
        return []
    nodes = sorted(set(rights) | set(visits))
    target = {n: total * max(0, visits.get(n, 0)) // weight for n in nodes}
    surplus = {n: rights.get(n, 0) - target[n] for n in nodes}
    givers = [(n, min(s, rights.get(n, 0) - 1)) for n, s in surplus.items() if s > 0]
    takers = [(n, -s) for n, s in surplus.items() if s < 0]
    givers.sort(key=lambda kv: (-kv[1], kv[0]))
    takers.sort(key=lambda kv: (-kv[1], kv[0]))
    plan: list[Transfer] = []
    gi = 0
    for taker, want in takers:
        while want > 0 and gi < len(givers):
            giver, spare = givers[gi]
            if spare <= 0:
                gi += 1
                continue
            take = min(spare, want)
            plan.append(Transfer(purse, giver, taker, take))
            want -= take
            givers[gi] = (giver, spare - take)
    return plan


class RightsFetch:
    """One refused spend's wait for rights, without I/O: whom to ask, when to retry.

    The branch node and the simulator drive it the same way: build it from the
    `RightsElsewhere` the ledger raised and the peers reachable now, send each of
    `asks` as a rights request to its giver, feed every answer to `answered`, and
    retry the spend once `done` (or at the deadline, whichever comes first). A giver's
    transfer entry travels ahead of its answer on the same connection, so when the
    last answer is in, the rights are already here.
    """

    def __init__(self, refusal: RightsElsewhere, here: str, reachable: Iterable[str]) -> None:
        self.member = refusal.member
        self.purse = refusal.purse
        reach = set(reachable)
        rights = {n: a for n, a in refusal.holders.items() if n in reach}
        rights[here] = refusal.here
        # The debit's own shortfall, so a holder may be asked for its last rights.
        self.asks = shortfall_plan(rights, here, refusal.here + refusal.shortfall, refusal.purse)
        # What reachable holders cannot cover may sit behind a peer that holds nothing
        # itself (a hub that shops behind NAT dial): ask one such peer to relay.
        rest = refusal.shortfall - sum(t.amount for t in self.asks)
        relays = sorted(reach - set(refusal.holders) - {here})
        if rest > 0 and relays:
            self.asks.append(Transfer(refusal.purse, relays[0], here, rest))
        self._waiting = {t.giver for t in self.asks}
        self.need = refusal.shortfall
        self.received = 0

    @property
    def possible(self) -> bool:
        """Worth waiting for: a request about a real member's purse reaches someone."""
        return bool(self.asks) and self.member is not None

    def answered(self, giver: str, amount: int) -> None:
        self._waiting.discard(giver)
        self.received += max(0, amount)

    def lost(self, giver: str) -> None:
        """The connection to `giver` went away: no answer will come from it."""
        self._waiting.discard(giver)

    @property
    def done(self) -> bool:
        return not self._waiting or self.received >= self.need
