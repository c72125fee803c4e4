"""Byzantine branches in the simulator (sim/byzantine.py, issue 12 item 7): a forger,
an equivocator and a branch restored from an old backup, alone and together, in
small seeded worlds. The checkers (sim/checks.py) must pass, and the Byzantine
behaviour must really have happened and been caught."""

from __future__ import annotations

from typing import Any

import pytest
from test_sim import go_all

from crdtledger import writerules
from crdtledger.ledger import Ledger
from crdtledger.writerules import RULES
from sim.byzantine import BREAKS, FORGERIES, Byzantine
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


def blames(b: dict[str, Any]) -> dict[str, set[tuple[str, int, str]]]:
    """What each honest replica blames: (writer, record, rule) of every rule fault."""
    return {node: {(f["node"], f["seq"], f["rule"]) for f in faults if f["kind"] == "rule"}
            for node, faults in b["faults"].items()}


def test_a_forger_is_refused_by_every_honest_replica() -> None:
    r = go(seed=1, forger=1)
    b = r["byzantine"]
    (forger,) = b["nodes"]
    assert b["forged"], "the forger forged"
    aimed = {(f["node"], f["seq"], f["breaks"]) for f in b["forged"]}
    assert {f["by"] for f in b["forged"]} == {forger}
    for node, blamed in blames(b).items():
        assert node != forger and not node.startswith(forger)
        assert blamed == aimed, node
        assert b["records_refused"][node] >= len(aimed)
    assert "--forger 1" in r["reproduce"]


def test_forgeries_of_every_kind_break_the_rule_they_aim_at() -> None:
    """One forger forges every kind in one run, each under an identity of its own (a
    writer is judged by its first broken rule only): every write rule is broken, and
    every honest replica blames each forgery, and nothing else, on the rule it aims
    at. The one under the forger's own key (B02 at this seed, which closed January
    after the holiday week, crdtledger.closing) tops up 1,000.00 dated in January:
    applied nowhere (the end check: nothing of a forger's log past its first forgery
    is applied), blamed on that record (`closed-month`) by every replica, also those
    that get it in one batch with other records, which a batch applies document by
    document."""
    r = go(seed=8, forger=1)
    b = r["byzantine"]
    assert sorted(f["kind"] for f in b["forged"]) == sorted(FORGERIES)
    assert {f["breaks"] for f in b["forged"]} == {rule.name for rule in RULES}
    aimed = {(f["node"], f["seq"], f["breaks"]) for f in b["forged"]}
    (back,) = [f for f in b["forged"] if f["kind"] == "closed-month"]
    assert (back["node"], back["doc"]) == ("B02", "ledger/2026-01")
    assert len(blames(b)) == 4
    for node, blamed in blames(b).items():
        assert blamed == aimed, (node, aimed ^ blamed)


@pytest.mark.parametrize(("arm", "forgery"), [("card", "card-paid-claimed"),
                                               ("exit_settle", "exit-paid-claimed")])
def test_a_paid_moved_arm_left_out_is_caught(monkeypatch: pytest.MonkeyPatch, arm: str,
                                             forgery: str) -> None:
    """Write rule paid-moved without its arm for a card's issue (or an exit's
    settlement), in this test only: the forger's card of fee 0 saying 1,000,000.00
    paid (its exit refund taking 500.00 saying nothing paid out) is then taken, and
    the run stops there. Before the nineteenth wave's Left was mended the forger
    broke the rule by a top-up only, and such a run was clean."""
    real = writerules.check_paid_moved

    def without(doc: str, key: str, kind: str, entry: dict[str, Any],
                counted: list[tuple[Any, ...]]) -> None:
        if kind != arm:
            real(doc, key, kind, entry, counted)

    monkeypatch.setattr(writerules, "check_paid_moved", without)
    result, _world = run(SMALL.with_(seed=1, forger=1))
    assert result["violations"] == 1
    v = result["violation"]
    assert v["kind"] == "rule" and f"forged ({forgery})" in v["message"], v


def test_a_forgery_refused_by_another_rule_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """The end check's own test: a forgery every replica blames on a rule other than
    the one it aims at (here, as if its card arm were gone and amount-moved caught
    it) is a violation: the arm it aims at went untried."""
    monkeypatch.setitem(BREAKS, "card-paid-claimed", "amount-moved")
    result, _world = run(SMALL.with_(seed=1, forger=1))
    assert result["violations"] == 1
    v = result["violation"]
    assert v["kind"] == "blamed" and "card-paid-claimed on rule paid-moved" in v["message"], v


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
