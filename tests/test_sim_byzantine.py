"""Byzantine branches in the simulator (sim/byzantine.py, issue 12 item 7): a forger,
an equivocator and a branch restored from an old backup, alone and together, in
small seeded worlds. The checkers (sim/checks.py) must pass, and the Byzantine
behaviour must really have happened and been caught."""

from __future__ import annotations

from typing import Any

import pytest
from test_sim import go_all

from crdtledger.ledger import Ledger
from sim.byzantine import Byzantine
from sim.config import Config
from sim.world import run

pytestmark = pytest.mark.slow

SMALL = Config(nodes=5, members=30, days=1, ops_per_node=40, ae_interval_s=30.0,
               scenario="partition-heal")


def go(**changes: Any) -> dict[str, Any]:
    result, _world = run(SMALL.with_(**changes))
    return clean(result)


def clean(result: dict[str, Any]) -> dict[str, Any]:
    assert result["violations"] == 0, (result["violation"], result["reproduce"])
    assert result["converged"] is True, result["reproduce"]
    return result


def test_a_forger_is_refused_by_every_honest_replica() -> None:
    r = go(seed=1, forger=1)
    b = r["byzantine"]
    (forger,) = b["nodes"]
    assert b["forged"], "the forger forged"
    first = b["forged"][0]
    for node, faults in b["faults"].items():
        assert node != forger
        assert [(f["node"], f["kind"], f["seq"]) for f in faults] == [
            (forger, "rule", first["seq"])], node
        assert faults[0]["rule"] == first["breaks"], (faults, first)
        assert b["records_refused"][node] >= 1
    assert "--forger 1" in r["reproduce"]


def test_forgeries_of_every_kind_break_the_rule_they_aim_at() -> None:
    """Each forger's first forgery is judged (its later records are held, unjudged):
    over a few seeds, every kind of forgery is refused for the rule it breaks."""
    seen: dict[str, str] = {}
    seeds = (2, 3, 4, 6)
    for seed, r in zip(seeds, go_all(*(dict(seed=s, forger=2, ops_per_node=25) for s in seeds),
                                     base=SMALL), strict=True):
        b = clean(r)["byzantine"]
        for forger in b["nodes"]:
            mine = [f for f in b["forged"] if f["node"] == forger]
            if not mine:
                continue
            faults = [f for f in next(iter(b["faults"].values())) if f["node"] == forger]
            assert faults and faults[0]["rule"] == mine[0]["breaks"], (seed, mine[0], faults)
            seen[mine[0]["kind"]] = faults[0]["rule"]
    assert len(set(seen.values())) >= 3, seen


def test_a_top_up_back_dated_into_a_closed_month_is_applied_nowhere() -> None:
    """The forger (B02 at this seed) closed November at its first daily pass
    (crdtledger.closing), then, with its own key, tops up 1,000.00 dated in November:
    no honest replica applies it (the end check: nothing of a forger's log past its
    first forgery is applied anywhere) and every one blocks it and blames that record
    (`closed-month`), also the replicas that get it in one batch with its next
    forgery, which a batch applies document by document."""
    r = go(seed=8, forger=1)
    b = r["byzantine"]
    first = b["forged"][0]
    assert (first["kind"], first["doc"]) == ("closed-month", "ledger/2025-11")
    blamed = {(f["node"], f["seq"], f["rule"]) for faults in b["faults"].values()
              for f in faults}
    assert blamed == {(first["node"], first["seq"], "closed-month")}


def test_an_equivocators_fork_is_detected_everywhere() -> None:
    r = go(seed=1, equivocator=1)
    b = r["byzantine"]
    (eq,) = b["nodes"]
    (fork,) = b["forks"]
    assert fork["side_b_first_to"], "side B went to some peers first"
    for node, faults in b["faults"].items():
        assert (eq, "fork", fork["seq"]) in [(f["node"], f["kind"], f["seq"]) for f in faults], node


def test_a_restored_branch_catches_up_and_nothing_is_spent_twice() -> None:
    r = go(seed=2, restored=1)
    b = r["byzantine"]
    (restore,) = b["restores"]
    assert restore["restored_at_s"] is not None
    assert restore["acknowledged_since_backup"] > 0, "the backup was old"
    assert all(not faults for faults in b["faults"].values()), "no fork, no fault"


def test_all_together_in_a_hub_chain() -> None:
    r = go(seed=3, nodes=8, forger=1, equivocator=1, restored=1)
    b = r["byzantine"]
    assert sorted(b["nodes"].values()) == ["equivocator", "forger", "restored"]
    assert b["forged"] and b["forks"] and b["restores"]
    for node, faults in b["faults"].items():
        kinds = {f["kind"] for f in faults}
        assert kinds == {"rule", "fork"}, (node, faults)


def test_same_seed_same_digest_with_byzantine_nodes() -> None:
    a = go(seed=5, nodes=4, ops_per_node=25, forger=1, equivocator=1, closed=1)
    b, c = go_all(*[dict(seed=5, nodes=4, ops_per_node=25, forger=1, equivocator=1,
                         closed=1)] * 2,
                  base=SMALL)  # in other processes: signatures differ, digests must not
    assert b["trace_digest"] == c["trace_digest"]
    assert a["trace_digest"] == b["trace_digest"]


def test_a_shop_closing_for_good_strands_nothing() -> None:
    """A shop closes for good mid-day in a chain that splits: it hands its members'
    rights over, the owner waits until every branch has it all, switches it off, and
    head office revokes it. Every replica converges with it revoked and holding
    nothing (the end check), its customers' money served elsewhere."""
    r = go(seed=1, closed=1)
    (c,) = r["byzantine"]["closings"]
    assert c["handovers"] and c["handovers"][0]["members"] > 0, "it held rights"
    assert c["retired_at_s"] is not None and c["revoked_at_s"] is not None
    assert "--closed 1" in r["reproduce"]


def test_a_shop_revoked_with_rights_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """The end check's own test: a shop revoked without handing over (its hand-over
    moving nothing, its owner not looking) is a violation, not a clean run."""
    monkeypatch.setattr(Ledger, "hand_over_rights", lambda self, operator, to: {
        "to": to, "members": 0, "entries": 0, "moved": {}})
    monkeypatch.setattr(Byzantine, "_owner_sees", lambda self, node: "retire")
    result, _world = run(SMALL.with_(seed=1, closed=1))
    assert result["violations"] == 1
    assert result["violation"]["kind"] == "stranded", result["violation"]
