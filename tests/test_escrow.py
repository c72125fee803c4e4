"""Properties of the escrow policies (crdtledger/escrow.py): pure functions, so every
property is checked over generated rights tables rather than a few hand-picked ones.

The money invariant (`balance >= 0` under partitions) rests on these: a node lowers
only its own rights, only as far as they go, and a giver never gives what it lacks.
"""

from __future__ import annotations

from collections import Counter

import hypothesis.strategies as st
import pytest
from hypothesis import example, given, settings

from crdtledger import escrow
from crdtledger.errors import InsufficientFunds, RightsElsewhere
from crdtledger.escrow import (
    RightsFetch,
    Transfer,
    check_deltas_authorised,
    grant_amount,
    rebalance,
    require,
    shortfall_plan,
)
from crdtledger.hlc import id_time_ms
from crdtledger.model import InvalidRecord, normalise_entry

NODES = ["SH01", "SH02", "SH03", "BJ01", "GZ07"]
PURSES = ["cash", "bonus", "points", "pkg:037573YWGJ000.SH01"]

node = st.sampled_from(NODES)
purse = st.sampled_from(PURSES)
# Rights as replicas hold them: never negative (test_machine checks that they stay so).
rights_st = st.dictionaries(node, st.integers(min_value=0, max_value=10**7), max_size=len(NODES))
amount_st = st.integers(min_value=1, max_value=2 * 10**7)
# Pure functions: cheap enough to try many more cases than hypothesis' default 100.
many = settings(max_examples=400)


def apply_plan(rights: dict[str, int], plan: list[Transfer]) -> dict[str, int]:
    after = dict(rights)
    for t in plan:
        after[t.giver] = after.get(t.giver, 0) - t.amount
        after[t.receiver] = after.get(t.receiver, 0) + t.amount
    return after


# --- shortfall_plan -------------------------------------------------------------


@many
@given(rights=rights_st, here=node, amount=amount_st, purse=purse)
@example(rights={"SH01": 30, "SH02": 50, "SH03": 50}, here="SH01", amount=100, purse="cash")
@example(rights={"SH02": 10**7}, here="SH01", amount=1, purse="cash")
def test_shortfall_plan_covers_and_never_overdraws(rights: dict[str, int], here: str,
                                                    amount: int, purse: str) -> None:
    plan = shortfall_plan(rights, here, amount, purse)
    need = amount - rights.get(here, 0)
    others = sum(a for n, a in rights.items() if n != here and a > 0)
    taken = sum(t.amount for t in plan)

    if sum(rights.values()) >= amount:
        # The total suffices: the plan brings exactly the shortfall here, no more.
        assert taken == max(0, need)
        after = apply_plan(rights, plan)
        assert after.get(here, 0) >= amount
    else:
        # It does not: everything the others hold, and still short.
        assert taken == others < need
    assert sum(apply_plan(rights, plan).values()) == sum(rights.values())
    givers = Counter(t.giver for t in plan)
    assert all(c == 1 for c in givers.values()), "a holder is asked twice"
    for t in plan:
        assert t.purse == purse and t.receiver == here and t.giver != here
        assert 0 < t.amount <= rights[t.giver], "takes more than the holder has"
    # Richest first (ties by name), so the fewest branches are bothered.
    held = [(-rights[t.giver], t.giver) for t in plan]
    assert held == sorted(held)
    # Every holder skipped while some need remained had nothing.
    if plan:
        last = plan[-1]
        richer = [n for n, a in rights.items() if n != here and a > 0
                  and (-a, n) < (-rights[last.giver], last.giver)]
        assert set(richer) <= set(givers)


@many
@given(rights=rights_st, here=node, amount=amount_st)
def test_shortfall_plan_is_empty_when_here_suffices(rights: dict[str, int], here: str,
                                                    amount: int) -> None:
    amount = min(amount, rights.get(here, 0))  # here suffices (built, not filtered for)
    assert shortfall_plan(rights, here, amount) == []


# --- grant_amount -----------------------------------------------------------------


@many
@given(available=st.integers(min_value=-10**7, max_value=10**7),
       shortfall=st.integers(min_value=-10**7, max_value=10**7))
@example(available=1, shortfall=1)
@example(available=1, shortfall=100)
@example(available=3, shortfall=1)
def test_grant_amount_bounds(available: int, shortfall: int) -> None:
    give = grant_amount(available, shortfall)
    if available <= 0 or shortfall <= 0:
        assert give == 0
        return
    core = min(available, shortfall)
    assert core <= give <= available, "gives less than the debit needs, or more than it has"
    cushion = give - core
    keeps = available - core
    # The cushion is at most half of what the holder would otherwise keep, so the
    # holder always keeps at least as much as it hands over beyond the need.
    assert 2 * cushion <= keeps
    assert available - give >= cushion


@many
@given(available=st.integers(min_value=1, max_value=10**7),
       shortfall=st.integers(min_value=1, max_value=10**7))
def test_grant_then_require_succeeds(available: int, shortfall: int) -> None:
    """A grant answering a request lets the asker spend what it was short of."""
    give = grant_amount(available, shortfall)
    rights = {"SH01": available - give, "SH02": give}
    assert rights["SH01"] >= 0
    if give >= shortfall:
        require("cash", "SH02", rights, shortfall)


# --- rebalance ----------------------------------------------------------------------


@many
@given(rights=rights_st, visits=st.dictionaries(node, st.integers(min_value=0, max_value=1000)),
       purse=purse)
@example(rights={"SH01": 1}, visits={"SH02": 5}, purse="cash")
@example(rights={"SH01": 2, "SH02": 0}, visits={"SH02": 1}, purse="cash")
@example(rights={"SH01": 100}, visits={"SH01": 1, "SH02": 1, "SH03": 1}, purse="cash")
def test_rebalance_conserves_and_keeps_last_unit(rights: dict[str, int],
                                                 visits: dict[str, int], purse: str) -> None:
    plan = rebalance(rights, visits, purse)
    after = apply_plan(rights, plan)
    assert sum(after.values()) == sum(rights.values()), "rebalance created or lost value"
    given_by: Counter[str] = Counter()
    for t in plan:
        assert t.purse == purse and t.giver != t.receiver and t.amount > 0
        given_by[t.giver] += t.amount
    for giver, total in given_by.items():
        assert total <= rights[giver] - 1, f"{giver} gave its last unit"
        assert after[giver] >= 1
    assert all(a >= 0 for a in after.values()), "a holder went negative"
    # Moves go toward visited branches, and nobody ends above its target by receiving.
    weight = sum(visits.values())
    total = sum(rights.values())
    for t in plan:
        assert visits.get(t.receiver, 0) > 0
        target = total * visits.get(t.receiver, 0) // weight
        assert after[t.receiver] <= max(target, rights.get(t.receiver, 0))


@many
@given(rights=rights_st, visits=st.dictionaries(node, st.integers(min_value=0, max_value=1000)))
def test_rebalance_is_a_fixpoint_once_balanced(rights: dict[str, int],
                                               visits: dict[str, int]) -> None:
    """Applying the plan and planning again moves nothing back (no ping-pong)."""
    after = apply_plan(rights, rebalance(rights, visits))
    again = rebalance(after, visits)
    back = {(t.giver, t.receiver) for t in again}
    first = {(t.receiver, t.giver) for t in rebalance(rights, visits)}
    assert not back & first, "rebalance moves rights back and forth"


# --- require -----------------------------------------------------------------------


@many
@given(rights=rights_st, here=node, amount=amount_st, purse=purse)
@example(rights={"SH01": 10, "SH02": 60, "SH03": 60}, here="SH01", amount=100, purse="cash")
@example(rights={"SH01": 10}, here="SH01", amount=11, purse="cash")
@example(rights={}, here="SH01", amount=1, purse="points")
def test_require_names_the_right_refusal(rights: dict[str, int], here: str, amount: int,
                                         purse: str) -> None:
    total = sum(rights.values())
    own = rights.get(here, 0)
    if amount > total:
        with pytest.raises(InsufficientFunds) as info:
            require(purse, here, rights, amount)
        assert not isinstance(info.value, RightsElsewhere)
        assert (info.value.purse, info.value.balance, info.value.wanted) == (purse, total, amount)
    elif amount > own:
        with pytest.raises(RightsElsewhere) as err:
            require(purse, here, rights, amount)
        e = err.value
        others = {n: a for n, a in rights.items() if n != here and a > 0}
        assert e.purse == purse and e.here == own and e.shortfall == amount - own
        assert e.holders == others and list(e.holders) == sorted(
            others, key=lambda n: (-others[n], n)), "holders not richest first"
        richest = max(others.values())
        assert e.branch == min(n for n, a in others.items() if a == richest)
        assert e.amount == richest
        # The holders between them can cover the shortfall: asking them is worth it.
        assert sum(e.holders.values()) >= e.shortfall
    else:
        require(purse, here, rights, amount)


# --- check_deltas_authorised --------------------------------------------------------

delta_st = st.tuples(purse, node, st.integers(min_value=-10**6, max_value=10**6).filter(bool))


@many
@given(origin=node, deltas=st.lists(delta_st, max_size=8))
@example(origin="SH01", deltas=[("cash", "SH02", -1)])
@example(origin="SH01", deltas=[("cash", "SH01", -5), ("cash", "SH02", 5)])
def test_only_the_writer_lowers_its_rights(origin: str, deltas: list[tuple[str, str, int]]
                                           ) -> None:
    forged = [d for d in deltas if d[2] < 0 and d[1] != origin]
    if forged:
        with pytest.raises(ValueError, match=forged[0][1]):
            check_deltas_authorised(origin, deltas)
    else:
        check_deltas_authorised(origin, deltas)


@many
@given(origin=node, victim=node, change=st.integers(min_value=1, max_value=10**6),
       purse=purse)
def test_replicas_reject_an_entry_lowering_another_node(origin: str, victim: str, change: int,
                                                       purse: str) -> None:
    """The same check on the replication path: a forged entry is invalid everywhere."""
    key = f"037573YWGJ000.{origin}"
    entry = {"id": key, "kind": "debit", "node": origin, "member": "037573YWGJ001.SH01",
             "op": f"owner@{origin}", "at": id_time_ms(key), "amount": change,
             "deltas": [[purse, victim, -change]]}
    if victim == origin:
        assert normalise_entry(key, entry)["deltas"] == [[purse, victim, -change]]
    else:
        with pytest.raises(InvalidRecord):
            normalise_entry(key, entry)


def test_a_fetch_asks_a_relay_for_what_reachable_holders_cannot_cover() -> None:
    refusal = RightsElsewhere("cash", 3000, 0, {"SH01": 5000, "SH03": 1000}, "M")
    # SH03 is reachable and gives what it has; SH01 is only behind the hub HQ01.
    fetch = RightsFetch(refusal, "HZ01", ["SH03", "HQ01"])
    assert [(t.giver, t.amount) for t in fetch.asks] == [("SH03", 1000), ("HQ01", 2000)]
    # With the holder itself reachable, no relay is asked.
    direct = RightsFetch(refusal, "HZ01", ["SH01", "HQ01"])
    assert [(t.giver, t.amount) for t in direct.asks] == [("SH01", 3000)]
    assert not RightsFetch(refusal, "HZ01", []).possible


def test_a_relayed_askers_budget_is_its_own_and_its_hubs_is_ten_of_them() -> None:
    """A hub relays for the shops behind it: one liar behind it spent the budget every
    honest shop relaying through it had at the giver. Each asker a hub names has its
    own budget there, and the hub all of them together RELAY_FACTOR times one."""
    now = [0]
    budget = escrow.GrantBudget(lambda: now[0])
    took = sum(budget.take("SH09", via="HUB") for _ in range(escrow.GRANT_BURST * 2))
    assert took == escrow.GRANT_BURST
    assert budget.take("SH05", via="HUB"), "an honest shop behind the same hub"
    assert budget.refused == {"SH09 via HUB": escrow.GRANT_BURST}
    # A lying hub naming made-up askers gets RELAY_FACTOR budgets, no more.
    made_up = sum(budget.take(f"X{i:05d}", via="HUB") for i in range(5_000))
    assert made_up + took + 1 == escrow.GRANT_BURST * escrow.RELAY_FACTOR
    assert budget.take("HUB"), "its own requests are its own budget"
    now[0] += 60_000  # a minute: a minute's worth back for each
    assert sum(budget.take("SH09", via="HUB") for _ in range(100)) == (
        escrow.GRANTS_PER_MINUTE)
