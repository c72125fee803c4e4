"""Byzantine branches in the simulator (sim/byzantine.py, issue 12 item 7): a forger,
an equivocator and a branch restored from an old backup, alone and together, in
small seeded worlds. The checkers (sim/checks.py) must pass, and the Byzantine
behaviour must really have happened and been caught."""

from __future__ import annotations

import re
from typing import Any

import pytest
from test_sim import go_all

from crdtledger import replica, writerules
from crdtledger.ledger import Ledger
from crdtledger.log import MARK_DOCS
from crdtledger.writerules import RULES
from sim import checks
from sim.byzantine import BREAKS, FORGERIES, LED, Byzantine
from sim.checks import Violation
from sim.config import Config
from sim.engine import MINUTE
from sim.world import World, run

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
    document. The other closed-month arms, and in-order's and coupon-unit's that only a
    writer's earlier record opens, are each the last of an identity's records, the
    first ones (a cut, a member, a coupon and its lone sweep out) taken everywhere."""
    r = go(seed=8, forger=1)
    b = r["byzantine"]
    assert sorted(f["kind"] for f in b["forged"]) == sorted(FORGERIES)
    assert {f["kind"] for f in b["forged"] if f["seq"] > 1 and f["node"] != "B02"} == (
        LED - {"cut-no-month"})
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


# The twenty-first wave's forgeries, each aiming at an arm no forgery tried before.
NEW_ARMS = ("card-replaced", "card-repointed", "merge-outs", "coupon-ref-other",
            "refund-handover-other", "transfer-elsewhere", "two-clients", "garbage-update",
            "member-before-enrolled", "clock-back", "coupon-swept-in", "cut-again",
            "closing-unclosed", "id-before-cut", "cut-no-month")


def _without_arms(monkeypatch: pytest.MonkeyPatch) -> None:
    """Take out of the replicas' judging (only: a writer's own check is left) the arm of
    a write rule each of NEW_ARMS aims at: its RuleBroken is dropped, or the function
    holding the arm is wrapped to skip it."""
    real_change = replica.check_change

    def change(node: str, doc: str, added: list[tuple[str, str, Any, Any]], *args: Any,
               **kwargs: Any) -> set[str]:
        try:
            return real_change(node, doc, added, *args, **kwargs)
        except writerules.RuleBroken as e:
            entries = [new for _r, _k, _o, new in added if isinstance(new, dict)]
            if (e.rule == "card-fixed"  # (its one arm: card-rewritten goes through too)
                    or (e.rule == "coupon-unit" and e.detail.startswith(f"{doc}: node "))
                    or (e.rule == "referral-reward"
                        and any(x.get("kind") == "coupon" for x in entries))
                    or (e.rule == "refund-own" and any("handover" in x for x in entries))):
                return set()
            raise

    real_cards, real_amount = writerules.check_card_records, writerules.check_amount_moved
    real_merges = writerules.check_merges_paired
    real_header, real_mark = replica.check_header, replica.check_mark
    real_enrolled, real_record = replica.check_ids_after_enrolment, writerules.InOrder.record

    def amount(*args: Any) -> None:
        try:
            real_amount(*args)
        except writerules.RuleBroken as e:
            if "other than one purse" not in e.detail:
                raise

    def header(node: str, doc: str, update: bytes) -> tuple[int, int] | None:
        try:
            return real_header(node, doc, update)
        except writerules.RuleBroken as e:
            if "carries structs of" in e.detail or "does not parse" in e.detail:
                return None
            raise

    def record(self: writerules.InOrder, client: int, clock: int) -> None:
        try:
            real_record(self, client, clock)
        except writerules.RuleBroken as e:
            if "goes back" not in e.detail:
                raise

    monkeypatch.setattr(replica, "check_change", change)
    monkeypatch.setattr(writerules, "check_card_records", lambda node, doc, added: real_cards(
        node, doc, [a for a in added if a[0] != "cards" or a[2] is None]))
    monkeypatch.setattr(writerules, "check_amount_moved", amount)
    monkeypatch.setattr(writerules, "check_merges_paired", lambda *a, **k: real_merges(
        *a, **{**k, "alone": True}))
    monkeypatch.setattr(replica, "check_header", header)
    monkeypatch.setattr(replica, "check_mark", lambda node, doc, mark, closed: None
                        if doc in MARK_DOCS else real_mark(node, doc, mark, closed))
    monkeypatch.setattr(replica, "check_ids_after_cut", lambda *args: None)
    monkeypatch.setattr(replica, "check_ids_after_enrolment", lambda node, doc, keys, since:
                        None if doc.startswith("members/")
                        else real_enrolled(node, doc, keys, since))
    monkeypatch.setattr(writerules.InOrder, "record", record)


def test_the_arms_the_new_forgeries_aim_at_left_out_are_caught(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """One run with the arms NEW_ARMS aim at taken out of every replica's judging: the
    run's quarter-hourly check reports each of those forgeries applied (collected here
    rather than stopping the run at the first). Before the twenty-first wave no
    forgery tried these arms, and a run without them was clean. `garbage-update` is
    the exception: without the header's "does not parse", applying it fails, which
    refuses it under the same rule (`own-client`), so it stays unapplied. Card-fixed
    has one arm, so the old `card-rewritten` goes through with `card-repointed`."""
    _without_arms(monkeypatch)
    seen: list[Violation] = []

    def tick(self: World) -> None:
        self.engine.after(15 * MINUTE, self._byzantine_tick)
        seen.extend(v for v in checks.byzantine_now(self) if v.kind == "rule")

    monkeypatch.setattr(World, "_byzantine_tick", tick)
    result, _world = run(SMALL.with_(seed=1, forger=1))
    assert result["violations"] == 1
    applied = {k for v in seen for k in re.findall(r"forged \(([a-z-]+)\)", v.message)}
    assert applied == set(NEW_ARMS) - {"garbage-update"} | {"card-rewritten"}, applied


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
