"""A branch with a valid certificate that lies, second round (5 December): rights and
coupon units raised across queues.

Funding is judged per (writer, member) queue in the writer's log order
(crdtledger/projection.py, "Funding in log order"), while some write rules judged a
record as a whole: a sweep's "in" by the "out" of its record (merge-paired), a
coupon's units by the record's net. A liar put the lowering part on another member's
row it never holds, so that part waited for ever while the raising part was funded:

- a merge pair whose "out" waits: the "in" raised the liar's rights of another
  member from nothing (spent at once, the member's balance 1,500.00 for 1,000.00 paid);
- a 0.2-style sweep named by two "in"s while the first waits behind a debit of the
  survivor: both passed merge-paired (only projected entries counted as naming the
  out) and both were projected once funded; a replica taking the records in one batch
  refused the second, so honest replicas ended with different books;
- a record adding a unit of an honest branch's coupon on one member's row and
  "taking" it from another's: SH01's coupon redeemed at SH01 and again at SH02.

SH01 is honest (members, top-ups, transfers), SH03 the liar (tests/helpers.Forger, its
own valid key), SH02 and SH04 honest replicas. Real stores, real apply_batch.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import FakeClock, Forger, name_branches, new_ledger, sync
from pycrdt import Map
from test_funding_order import funded, state

from crdtledger.coupons import CouponRedeemed
from crdtledger.hlc import HybridClock, id_time_ms
from crdtledger.ledger import Ledger
from crdtledger.log import Record
from crdtledger.model import entry_doc

NODES = ("SH01", "SH02", "SH03", "SH04")


class World:
    def __init__(self, root: Path) -> None:
        self.clock = FakeClock()
        self.a = new_ledger(root, "SH01", now_ms=self.clock)
        name_branches(self.a, *NODES)
        self.member = self.a.add_member(self.a.owner, name="王芳", phone="13800000001")
        self.other = self.a.add_member(self.a.owner, name="李娜", phone="13800000002")
        self.third = self.a.add_member(self.a.owner, name="张三", phone="13800000003")
        self.a.topup(self.a.owner, self.member, 100_000)
        self.a.topup(self.a.owner, self.other, 100_000)
        liar = new_ledger(root, "SH03", now_ms=self.clock)
        self.b = new_ledger(root, "SH02", now_ms=self.clock)
        self.c = new_ledger(root, "SH04", now_ms=self.clock)
        for r in (liar, self.b, self.c):
            sync(self.a, r)
        self.liar = Forger(liar)
        self.clock.advance_days(40)
        self.n = 0

    def close(self) -> None:
        for x in (self.a, self.liar.ledger, self.b, self.c):
            x.close()

    def give(self, amount: int, member: str) -> None:
        self.a.transfer_rights(self.a.owner, member, "SH03", amount)
        for r in (self.b, self.c):
            sync(self.a, r)

    def entry(self, kind: str, member: str, deltas: list[list[Any]], **kw: Any
              ) -> dict[str, Any]:
        self.n += 1
        at = self.clock.ms + self.n
        eid = HybridClock("SH03", now_ms=lambda: at).mint()
        return {"id": eid, "kind": kind, "member": member, "node": "SH03", "op": "x",
                "at": id_time_ms(eid), "amount": 0, "deltas": deltas, **kw}

    def write(self, *entries: dict[str, Any]) -> Record:
        def put(d: Any) -> None:
            root = d.get("entries", type=Map)
            for e in entries:
                root[e["id"]] = e

        return self.liar.write(entry_doc(entries[0]["id"], self.a.storage.day_of), put)

    def refused_everywhere(self, entry: dict[str, Any], rule: str, what: str = ""
                           ) -> Iterator[Ledger]:
        """The liar's `entry`, written and sent to each honest replica in turn: refused
        by `rule` there, its writer blocked, nothing of it funded and the replica's
        state as before; each replica is yielded for the caller's own books."""
        before = {r.node: state(r) for r in (self.a, self.b, self.c)}
        rec = self.write(entry)
        for r in (self.a, self.b, self.c):
            r.apply_batch(self.liar.batch([rec]))
            assert [f["rule"] for f in r.faults()] == [rule], (r.node, what)
            assert "SH03" in r.storage.log.blocked(), r.node
            assert funded(r, entry["id"]) == [False]
            assert state(r) == before[r.node], r.node
            yield r


@pytest.fixture
def w(tmp_path: Path) -> Iterator[World]:
    world = World(tmp_path)
    yield world
    world.close()


def test_a_sweeps_in_is_funded_only_once_its_out_is(w: World) -> None:
    """The liar holds no rights of the member; its "out" of them waits, so its "in" for
    another member must wait too, and the debit spending it behind that."""
    out = w.entry("merge", w.member, [["cash", "SH03", -50_000]], to=w.other)
    into = w.entry("merge", w.other, [["cash", "SH03", 50_000]], ref=out["id"])
    spend = w.entry("debit", w.other, [["cash", "SH03", -50_000]], amount=50_000, pay="stored")
    recs = [w.write(out, into), w.write(spend)]
    for rec in recs:
        w.b.apply_batch(w.liar.batch([rec]))
    w.c.apply_batch(w.liar.batch(recs))
    for r in (w.b, w.c):
        assert funded(r, out["id"], into["id"], spend["id"]) == [False, False, False]
        assert r.rights(w.other) == {"SH01": 100_000}
        assert r.balance(w.other)["cash"] == 100_000
    assert state(w.b) == state(w.c)
    # Once the out is funded (the liar really holds the rights), the pair goes through.
    w.give(50_000, w.member)
    for r in (w.b, w.c):
        assert funded(r, out["id"], into["id"], spend["id"]) == [True, True, True]
        assert r.balance(w.member)["cash"] + r.balance(w.other)["cash"] == 150_000
    assert state(w.b) == state(w.c)


def test_one_out_is_named_by_one_in_even_while_that_in_waits(w: World) -> None:
    """A 0.2-style sweep (the "in" in a later record), the first "in" waiting behind a
    debit of the survivor: a second "in" naming the same out is refused at every
    replica, however the records were batched, and stays refused once funded."""
    w.give(50_000, w.member)
    out = w.entry("merge", w.member, [["cash", "SH03", -50_000]], to=w.other)
    wait = w.entry("debit", w.other, [["cash", "SH03", -100]], amount=100, pay="stored")
    in1 = w.entry("merge", w.other, [["cash", "SH03", 50_000]], ref=out["id"])
    in2 = w.entry("merge", w.other, [["cash", "SH03", 50_000]], ref=out["id"])
    recs = [w.write(out), w.write(wait), w.write(in1), w.write(in2)]
    for rec in recs:
        w.b.apply_batch(w.liar.batch([rec]))
    w.c.apply_batch(w.liar.batch(recs))
    for r in (w.b, w.c):
        assert [f["rule"] for f in r.faults()] == ["merge-paired"]
    w.give(100, w.other)  # the survivor's debit is funded: the first "in" with it
    for r in (w.b, w.c):
        assert funded(r, out["id"], wait["id"], in1["id"], in2["id"]) == [
            True, True, True, False]
        assert r.rights(w.other) == {"SH01": 99_900, "SH03": 50_000}
    assert state(w.b) == state(w.c)


def test_no_entry_but_a_coupons_issue_adds_a_unit_of_it(w: World) -> None:
    """A unit of SH01's coupon raised on SH02's row of its member, "taken" in the same
    record from another member's row the liar never held: refused (coupon-unit), and
    the coupon is redeemed once."""
    a = w.a
    coupon = a.issue_coupon(a.owner, w.member, off=5_000)["coupon"]
    purse = "cpn:" + coupon
    for r in (w.b, w.liar.ledger):
        sync(a, r)
    w.liar = Forger(w.liar.ledger)
    plus = w.entry("correction", w.member, [[purse, "SH02", 1]])
    minus = w.entry("correction", w.third, [[purse, "SH03", -1]])
    w.b.apply_batch(w.liar.batch([w.write(plus, minus)]))
    assert [f["rule"] for f in w.b.faults()] == ["coupon-unit"]
    assert w.b.rights(w.member, purse) == {"SH01": 1}
    a.redeem_coupon(a.owner, coupon, member=w.member)
    sync(a, w.b)
    with pytest.raises(CouponRedeemed):
        w.b.redeem_coupon(w.b.owner, coupon, member=w.member)


def test_a_liars_lot_moved_away_by_a_merge_is_not_written_off_from_valid_points(
        w: World) -> None:
    a = w.a
    a.debit(a.owner, w.member, service="FOOT60")  # valid points earned at SH01
    valid = a.rights(w.member, "points")["SH01"]
    lot = w.entry("debit", w.member, [["points", "SH03", 100]], amount=100,
                  expires="2026-01-05")  # written already expired
    out = w.entry("merge", w.member, [["points", "SH03", -100]], to=w.other)
    into = w.entry("merge", w.other, [["points", "SH03", 100]], ref=out["id"])
    a.apply_batch(w.liar.batch([w.write(lot), w.write(out, into)]))
    assert a.faults() == []
    a.housekeeping()
    # SH01 answers for a lot of another earner only up to the rights that earner gave
    # it (views.expired_lots_owed): the liar gave it none, wherever it moved them.
    assert a.rights(w.member, "points") == {"SH01": valid}
    assert [e for e in a.history(w.member, 500) if e["kind"] == "expiry"] == []


def test_a_row_a_liar_raised_past_the_largest_amount_still_moves_in_pieces(w: World) -> None:
    """A liar's funded top-ups of MAX_AMOUNT and balanced transfers of them to an
    honest branch (no rule broken) made its row of a member 2 x MAX_AMOUNT: every
    hand-over of the honest shop, with its real members' money in it, then failed on
    the one entry that would move that row whole, and so did every sweep a merge of
    that member owed (no sale or top-up of the survivor there). Moves go in pieces of
    at most MAX_AMOUNT; a grant gives at most that much."""
    from crdtledger.money import MAX_AMOUNT

    a, b = w.a, w.b
    a.transfer_rights(a.owner, w.other, "SH02", 50_000)
    sync(a, b)
    raised = [w.entry("topup", w.member, [["cash", "SH03", MAX_AMOUNT]], amount=MAX_AMOUNT,
                      paid=MAX_AMOUNT, pay="cash") for _ in range(2)]
    raised += [w.entry("transfer", w.member, [["cash", "SH03", -MAX_AMOUNT],
                                              ["cash", "SH02", MAX_AMOUNT]],
                       amount=MAX_AMOUNT, to="SH02") for _ in range(2)]
    record = w.write(*raised)
    for r in (a, b):
        r.apply_batch(w.liar.batch([record]))
    assert b.rights(w.member, "cash")["SH02"] == 2 * MAX_AMOUNT
    given = b.grant_rights(w.member, "cash", "SH04", 100)
    assert given is not None and given["amount"] == MAX_AMOUNT
    a.merge_member(a.owner, w.member, w.other)  # an honest manager merges the two
    sync(a, b)
    b.debit(b.owner, w.other, amount=1000)  # sweeps first: in pieces
    done = b.hand_over_rights(b.owner, "SH01")
    assert done["moved"]["cash"] == MAX_AMOUNT + 50_000 - 1000
    assert "SH02" not in b.rights(w.other, "cash")
