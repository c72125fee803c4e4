"""The simulator's oracles (sim/oracles.py): an entry that differs from what the
published rules give is reported, so is a settlement that is not first in, first out,
and a debit refused while its branch could reach the value; a clean run has none.
Doctored entries are judged on a real store; the library functions broken here are
monkeypatched in the test only, by name."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from crdtledger import escrow, payments, settlement
from crdtledger.money import apply_rate
from sim.config import Config
from sim.oracles import Intent, Store, compare_settlement, fifo_settlement, refunds_beyond_debits
from sim.world import World, run
from tests.helpers import new_ledger

TINY = Config(nodes=5, members=20, days=1, ops_per_node=25, ae_interval_s=30.0, seed=1,
              scenario="partition-heal")


@pytest.fixture
def shop(tmp_path: Path) -> Any:
    """A store with a member at 银卡 (1,000.00 topped up with the 充1000送200 promotion),
    a service debited and a part of it refunded."""
    lg = new_ledger(tmp_path, "SH01")
    lg.set_rule(lg.owner, "promotions", [{"min": 100000, "bonus": 20000, "name": "送200"}],
                effective_from="2000-01-01")
    member = lg.add_member(lg.owner, name="甲", phone="13900000001", home="SH01")
    lg.topup(lg.owner, member, 100000)
    debit = lg.debit(lg.owner, member, service="FOOT60")
    refund = lg.refund(lg.owner, debit["id"], 1000)
    yield lg, member, debit, refund
    lg.close()


def judged(lg: Any, entry: dict[str, Any], op: Any = None) -> list[str] | None:
    from sim.oracles import Oracle

    return Oracle.__new__(Oracle).judge(Store(lg.storage.conn, lg.node), entry, op)


def test_the_written_entries_fit_the_rules(shop: Any) -> None:
    lg, member, debit, refund = shop
    topup = next(e for e in lg.history(member) if e["kind"] == "topup")
    assert judged(lg, topup, Intent("topup", {"member": member, "amount": 100000})) == []
    assert judged(lg, lg.entry(debit["id"]), Intent("debit", {"service": "FOOT60"})) == []
    assert judged(lg, lg.entry(refund["id"]), Intent("refund", {"amount": 1000})) == []
    assert lg.entry(debit["id"])["amount"] == 12160  # 128.00 at 银卡's 0.95


def doctor(entry: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {**entry, **fields}


def test_a_doctored_debit_is_reported(shop: Any) -> None:
    lg, _member, debit, _refund = shop
    e = lg.entry(debit["id"])
    # Off by one fen from the level discount, as is, and with the deltas to match.
    assert any("amount 12159" in p for p in judged(lg, doctor(e, amount=12159)) or [])
    cash = [["cash", "SH01", -12159]]
    assert judged(lg, doctor(e, amount=12159, deltas=[*cash, ["points", "SH01", 145]]))
    # No level discount at all (the member is 银卡).
    assert judged(lg, doctor(e, amount=12800, discount="1", level="普通会员",
                             deltas=[["cash", "SH01", -12800], ["points", "SH01", 153]]))
    # Points without the level's multiplier.
    assert judged(lg, doctor(e, points=121, deltas=[["cash", "SH01", -12160],
                                                   ["points", "SH01", 121]]))
    # Bonus taken while cash was left: cash comes first.
    problems = judged(lg, doctor(e, deltas=[["bonus", "SH01", -12160],
                                            ["points", "SH01", 145]]))
    assert problems and any("cash comes first" in p for p in problems)


def test_a_doctored_topup_or_refund_is_reported(shop: Any) -> None:
    lg, member, _debit, refund = shop
    topup = next(e for e in lg.history(member) if e["kind"] == "topup")
    # The promotion's bonus missed, or the amount not what the customer paid.
    assert judged(lg, doctor(topup, bonus=None, promotion=None,
                             deltas=[["cash", "SH01", 100000]]))
    assert judged(lg, topup, Intent("topup", {"member": member, "amount": 50000}))
    r = lg.entry(refund["id"])
    # Bonus given back before principal; more than the debit took.
    assert judged(lg, doctor(r, deltas=[["bonus", "SH01", 1000]]))
    assert judged(lg, doctor(r, amount=20000, deltas=[["cash", "SH01", 20000]]))
    assert refunds_beyond_debits(lg.storage.conn) == []


def entries_of_two_branches() -> list[dict[str, Any]]:
    """One member: 100.00 collected at A, then 50.00 at B; 120.00 served at C, 10.00 of
    it refunded. First in, first out: A's lot first."""
    def e(i: int, kind: str, node: str, cash: int, **more: Any) -> dict[str, Any]:
        return {"id": f"0000000000{i:03d}.{node}", "kind": kind, "node": node, "member": "M",
                "amount": abs(cash), "deltas": [["cash", node, cash]], **more}

    debit = e(3, "debit", "C", -12000)
    return [e(1, "topup", "A", 10000), e(2, "topup", "B", 5000), debit,
            e(4, "refund", "C", 1000, ref=debit["id"])]


def test_settlement_first_in_first_out() -> None:
    entries = entries_of_two_branches()
    mine = fifo_settlement(entries)
    assert mine["served"] == {("A", "C"): 10000, ("B", "C"): 1000}
    assert compare_settlement(mine, settlement.settle(entries)) is None


def test_a_settlement_last_in_first_out_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    """settlement._Book.take monkeypatched to take the newest lot first (in this test)."""
    def newest_first(self: Any, amount: int) -> tuple[list[tuple[str, str, int]], int]:
        taken = []
        while amount and self.order:
            key = self.order[-1]
            lot = self.lots[key]
            n = min(lot.left, amount)
            lot.left -= n
            amount -= n
            taken.append((key, lot.collector, n))
            if lot.left == 0:
                del self.lots[key]
                self.order.pop()
        return taken, amount

    monkeypatch.setattr(settlement._Book, "take", newest_first)
    entries = entries_of_two_branches()
    assert compare_settlement(fifo_settlement(entries), settlement.settle(entries))


@pytest.mark.slow
def test_a_clean_run_has_no_oracle_violation() -> None:
    result, _world = run(TINY)
    assert result["violations"] == 0, result["violation"]
    checked = result["oracles"]["checked"]
    assert checked.get("debit", 0) > 50 and checked.get("topup", 0) > 10, checked


@pytest.mark.slow
def test_a_discount_off_by_one_fen_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    """payments._discounted monkeypatched (in this test) to charge one fen less than
    the level discount gives."""
    monkeypatch.setattr(payments, "_discounted",
                        lambda fen, rate: apply_rate(fen, rate) - (rate != "1"))
    result = World(TINY).run()
    assert result["violation"] and result["violation"]["kind"] == "amount", result["violation"]


@pytest.mark.slow
def test_a_debit_refused_with_the_value_reachable_is_reported(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """escrow.RightsFetch.possible monkeypatched (in this test) to False: a node never
    asks its peers for rights, so a debit whose value sits at a connected branch is
    refused."""
    monkeypatch.setattr(escrow.RightsFetch, "possible", property(lambda self: False))
    result = World(TINY).run()
    assert result["violation"] and result["violation"]["kind"] == "refused", result["violation"]


def test_a_refund_paying_for_spent_points_fits_and_a_doctored_one_is_reported(
        tmp_path: Path) -> None:
    """The oracle knows what a refund keeps for the sale's points spent since: a real
    one fits; one keeping its worth off the cash while bonus was given back, keeping
    for no point spent, or counting the spent points twice, is reported."""
    lg = new_ledger(tmp_path, "SH01")
    try:
        member = lg.add_member(lg.owner, name="甲", phone="13900000001", home="SH01")
        lg.topup(lg.owner, member, 50000)
        lg.correct(lg.owner, member, "bonus", 3000, "promotion")
        debit = lg.debit(lg.owner, member, amount=53000)
        lg.convert_points(lg.owner, member, debit["points"])
        r = lg.entry(lg.refund(lg.owner, debit["id"])["id"])
        assert r["kept"] > 0 and r["spent"] == debit["points"]
        assert judged(lg, r) == []
        kept = r["kept"]
        assert judged(lg, doctor(r, deltas=[["cash", "SH01", 50000 - kept],
                                            ["bonus", "SH01", 3000]]))
        assert judged(lg, doctor(r, spent=None))
        assert judged(lg, doctor(r, points=debit["points"],
                                 deltas=[*r["deltas"], ["points", "SH01", -debit["points"]]]))
    finally:
        lg.close()
