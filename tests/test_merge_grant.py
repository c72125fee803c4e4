"""A rights request naming a member merged away (crdtledger.merge, Payments.grant_rights).

Members m1 and m2 hold 100.00 each, all at SH01. SH01 merges m1 into m2 while a till
at a branch that has not heard of it yet debits m1 60.00: that branch asks SH01 for
rights on m1. SH01 had swept m1's rights into m2 and answered "none" (it read the
rights of the id as asked, zero after the sweep), so the sale was refused with
rights_elsewhere though SH01 held 200.00 for the member (the race probe: 33 of 40).

Through real node cores and sync sessions over in-memory links (MemoryNet: the
merge's records and the till's request cross on the wire as they do on a network),
directly at SH01 and relayed by a hub for a shop behind it. Checked on every store:
the sale goes through, the grant names the survivor, money totals are kept, no
rights row is below zero, and the stores agree.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import new_ledger, projections, sync

from crdtledger.errors import RightsElsewhere
from crdtledger.ledger import Ledger
from crdtledger.transport import MemoryNet

SALE = 6000


def cash_total(ledger: Ledger) -> int:
    return int(ledger.storage.conn.execute(
        "SELECT TOTAL(amount) FROM rights WHERE purse = 'cash'").fetchone()[0])


def below_zero(ledger: Ledger) -> list[tuple[str, str, str, int]]:
    return ledger.storage.conn.execute(
        "SELECT member, purse, node, amount FROM rights WHERE amount < 0").fetchall()


class World:
    """SH01 (the members' rights), SH02 and SH03 on one in-memory net."""

    def __init__(self, root: Path, *, dials: dict[str, list[str]]) -> None:
        self.net = MemoryNet(seed=1)
        self.ledgers = {n: new_ledger(root, n) for n in ("SH01", "SH02", "SH03")}
        for name, ledger in self.ledgers.items():
            self.net.add(ledger, dials=dials.get(name, []))
        self.net.run(1.0)
        sh = self.ledgers["SH01"]
        self.m1 = sh.add_member(sh.owner, name="王芳", phone="13800000001")
        self.m2 = sh.add_member(sh.owner, name="王芳", phone="13800000002")
        for m in (self.m1, self.m2):
            sh.topup(sh.owner, m, 10000)
        self.net.flush("SH01")
        self.net.run(5.0)
        for ledger in self.ledgers.values():
            assert ledger.balance(self.m2)["cash"] == 10000, ledger.node

    def merge_while_selling(self, till: str) -> tuple[dict[str, object] | None,
                                                        Exception | None]:
        """SH01 merges m1 into m2 and, before anything is delivered, `till` debits
        m1 (it has not heard of the merge: it asks for rights on m1)."""
        sh = self.ledgers["SH01"]
        sh.merge_member(sh.owner, self.m1, self.m2)
        self.net.flush("SH01")
        ledger = self.ledgers[till]
        oid = self.net.submit(till, lambda: ledger.debit(ledger.owner, self.m1, amount=SALE))
        for _ in range(400):
            done = self.net.done.pop((till, oid), None)
            if done is not None:
                return done.result, done.error
            self.net.run(0.05)
        raise AssertionError("the sale never finished")

    def settle(self) -> None:
        self.net.run(30.0)

    def close(self) -> None:
        for ledger in self.ledgers.values():
            ledger.close()


@pytest.fixture
def direct(tmp_path: Path) -> Iterator[World]:
    w = World(tmp_path, dials={"SH02": ["SH01"], "SH03": ["SH01"]})
    yield w
    w.close()


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[World]:
    """SH01 and SH03 reach each other only through the hub SH02."""
    w = World(tmp_path, dials={"SH01": ["SH02"], "SH03": ["SH02"]})
    yield w
    w.close()


def check_books(w: World) -> None:
    w.settle()
    for ledger in w.ledgers.values():
        assert ledger.balance(w.m1)["cash"] == ledger.balance(w.m2)["cash"] == 20000 - SALE
        assert cash_total(ledger) == 20000 - SALE, ledger.node
        assert below_zero(ledger) == [], ledger.node
        # The merged-away id holds nothing anywhere once every holder swept it.
        assert ledger.rights(w.m1) == {}, ledger.node
    first = projections(w.ledgers["SH01"])
    assert all(projections(lg) == first for lg in w.ledgers.values())


def test_a_till_that_has_not_heard_of_the_merge_is_granted_the_survivors_rights(
        direct: World) -> None:
    sale, error = direct.merge_while_selling("SH02")
    assert error is None, f"refused: {error!r}"
    assert sale is not None and sale["member"] == direct.m2  # acted for the survivor
    grants = [e for e in direct.ledgers["SH01"].history(direct.m2, 100)
              if e["kind"] == "transfer" and e["to"] == "SH02"]
    assert len(grants) == 1 and grants[0]["member"] == direct.m2
    check_books(direct)


def test_a_hub_relaying_for_a_shop_that_has_not_heard_of_the_merge_is_granted_too(
        hub: World) -> None:
    sale, error = hub.merge_while_selling("SH03")
    assert error is None, f"refused: {error!r}"
    assert sale is not None and sale["member"] == hub.m2
    given = [e for lg in ("SH01", "SH02")
             for e in hub.ledgers["SH03"].history(hub.m2, 100)
             if e["kind"] == "transfer" and e["node"] == lg]
    assert {(e["node"], e["to"], e["member"]) for e in given} == {
        ("SH01", "SH02", hub.m2), ("SH02", "SH03", hub.m2)}
    check_books(hub)


def test_a_hub_holding_the_survivors_rights_grants_a_merged_id_at_once(hub: World) -> None:
    """The hub holds the survivor's 100.00 itself, SH01 the merged id's: a request
    naming the merged-away id, relayed to the hub by the shop that has not heard of
    the merge, is served from the hub's own rights at once. It judged the request by
    the asked id alone and first fetched SH01's rights into itself (a "relay")."""
    sh, h, shop = hub.ledgers["SH01"], hub.ledgers["SH02"], hub.ledgers["SH03"]
    sh.transfer_rights(sh.owner, hub.m2, "SH02", 10000)
    hub.net.flush("SH01")
    hub.settle()
    hub.net.decisions["SH02"].clear()
    sale, error = hub.merge_while_selling("SH03")
    assert error is None, f"refused: {error!r}"
    assert sale is not None and sale["member"] == hub.m2
    assert not [d for d in hub.net.decisions["SH02"] if d.startswith("relay")]
    assert [e["node"] for e in shop.history(hub.m2, 100) if e["kind"] == "transfer"
            and e["to"] == "SH03"] == ["SH02"]
    check_books(hub)
    # SH01 kept the merged id's 100.00 (swept into the survivor there): nothing of
    # it was fetched into the hub for a sale the hub could serve itself.
    assert h.rights(hub.m2)["SH01"] == 10000


def test_grant_rights_for_a_merged_away_id_gives_from_the_survivor(tmp_path: Path) -> None:
    """The library's answer itself, on two ledgers synced by the suite's helper: the
    transfer names the survivor (the merged id holds nothing here after the sweep,
    and the asker learns of the merge before the transfer, from the giver's log)."""
    a, b = new_ledger(tmp_path, "SH01"), new_ledger(tmp_path, "SH02")
    try:
        sync(a, b)
        m1 = a.add_member(a.owner, name="王芳", phone="13800000001")
        m2 = a.add_member(a.owner, name="王芳", phone="13800000002")
        a.topup(a.owner, m1, 10000)
        a.topup(a.owner, m2, 10000)
        sync(a, b)
        with pytest.raises(RightsElsewhere) as refused:
            b.debit(b.owner, m1, amount=SALE)
        assert refused.value.member == m1  # b does not know of the merge yet
        a.merge_member(a.owner, m1, m2)
        granted = a.grant_rights(m1, "cash", "SH02", refused.value.shortfall)
        assert granted is not None and granted["member"] == m2
        assert granted["amount"] == SALE + (20000 - SALE) // 2
        sync(a, b)
        assert b.debit(b.owner, m1, amount=SALE)["member"] == m2
        sync(a, b)
        for lg in (a, b):
            assert cash_total(lg) == 20000 - SALE and below_zero(lg) == []
        assert projections(a) == projections(b)
    finally:
        a.close()
        b.close()
