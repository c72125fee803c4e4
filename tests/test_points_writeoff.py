"""Who writes off expired points (views.expired_points_owed): a branch answers for the
lots earned at it, and for those whose earner holds no points rights of the member
any more, from its own rights only. A branch with a valid certificate that lies (a
sale of its own giving points already expired) used to have an honest branch write
off that many of its own valid points in its daily pass, while the liar kept rights
for what was then the member's valid lot. Real ledgers in tmp_path, synced in memory;
the liar's record forged with its own key (helpers.Forger)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import FakeClock, Forger, new_ledger, sync
from pycrdt import Doc, Map

from crdtledger import lots, views
from crdtledger.errors import InsufficientFunds
from crdtledger.hlc import HybridClock
from crdtledger.ledger import Ledger

NODES = ("SH01", "SH02", "HZ01")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()  # 2026-01-01


@pytest.fixture
def chain(tmp_path: Path, clock: FakeClock) -> Iterator[dict[str, Ledger]]:
    """Three branches that know one another; points a yuan, expiring after 30 days."""
    ledgers = {n: new_ledger(tmp_path, n, now_ms=clock) for n in NODES}
    ledgers["SH01"].set_rule(ledgers["SH01"].owner, "earn",
                             {"points_per_yuan": "1", "expire_days": 30},
                             effective_from="2025-01-01")
    sync_all(ledgers)
    yield ledgers
    for ledger in ledgers.values():
        ledger.close()


def sync_all(ledgers: dict[str, Ledger]) -> None:
    for _ in range(2):
        for i, x in enumerate(NODES):
            for y in NODES[i + 1:]:
                sync(ledgers[x], ledgers[y])


def spent_at_sh02_before_l1_expires(chain: dict[str, Ledger], clock: FakeClock,
                                    m: str) -> None:
    """The race of these tests: 10 days on, the member earns lot L2 at SH02; 19 days
    on, the day before L1 expires, SH02 takes 100 of the points for a towel."""
    sh02 = chain["SH02"]
    sync_all(chain)
    clock.advance_days(10)
    sh02.topup(sh02.owner, m, 12000)
    sh02.debit(sh02.owner, m, amount=12000)  # L2 at SH02
    sync_all(chain)
    clock.advance_days(19)  # the day before L1 expires
    sh02.redeem_points(sh02.owner, m, 100, "towel")


def member_earning(ledger: Ledger, fen: int, phone: str = "13812345678") -> str:
    """A member who tops up and spends `fen` at `ledger`: fen // 100 points there."""
    m = ledger.add_member(ledger.owner, name="张伟", phone=phone)
    ledger.topup(ledger.owner, m, fen)
    ledger.debit(ledger.owner, m, amount=fen)
    return m


def points_rights(ledger: Ledger, member: str) -> dict[str, int]:
    return ledger.rights(member, "points")


def write_offs(ledger: Ledger, member: str) -> list[tuple[str, int]]:
    """(writer, points) of every write-off of the member's group, oldest first."""
    return [(e["node"], e["points"]) for e in reversed(ledger.history(member, 500))
            if e["kind"] == "expiry"]


def forge(liar: Ledger, *entries: dict[str, Any]) -> Any:
    """The liar's entries as one record of its log, signed with its real key."""
    w = liar._entry_write(entries[0])
    forger = Forger(liar)

    def put(doc: Doc[Any]) -> None:
        root = doc.get(w.root, type=Map)
        for e in entries:
            root[e["id"]] = e

    forger.write(w.doc, put)
    return forger.batch()


def forge_expired_sale(liar: Ledger, member: str, points: int, expires: str) -> Any:
    """The liar's own sale, signed with its real key: `points` for `member`, whose lot
    expired on `expires` (the day it was written, or long before). The entry is what
    the liar's library would write for a sale, but for the expiry; no write rule can
    tell, since a sale's expiry is the earn rule's of its writer's day."""
    entry = liar._entry("debit", member, deltas=[("points", liar.node, points)],
                        amount=points * 100, pay="cash", points=points, expires=expires,
                        op=liar.owner)
    w = liar._entry_write(entry)
    forger = Forger(liar)

    def put(doc: Doc[Any]) -> None:
        doc.get(w.root, type=Map)[entry["id"]] = entry

    forger.write(w.doc, put)
    return forger.batch()


def take_forgery(victims: list[Ledger], batch: Any) -> None:
    for victim in victims:
        victim.apply_batch(batch)
        assert victim.faults() == []  # nothing a write rule can refuse


# --- the attack ----------------------------------------------------------------------


def test_a_liars_expired_points_are_not_written_off_from_an_honest_branch(
        chain: dict[str, Ledger]) -> None:
    """SH02 lies: a sale of its own gives m 80 points that expired a month before.
    SH01 holds m's 100 valid points. SH01's daily pass writes off nothing: its rights
    and m's usable points are as they were, and m spends all 100 at SH01. (It wrote
    off 80 of its own, leaving SH02 rights for 80 of m's valid points.)"""
    sh01, liar, hz01 = chain["SH01"], chain["SH02"], chain["HZ01"]
    m = member_earning(sh01, 10000)  # 100 points, expiring 2026-01-31
    sync_all(chain)
    take_forgery([sh01, hz01], forge_expired_sale(liar, m, 80, "2025-12-01"))
    pts = views.points(sh01, m)
    assert (pts["usable"], pts["expired_unwritten"]) == (100, 80)
    assert points_rights(sh01, m) == {"SH01": 100, "SH02": 80}
    for honest in (sh01, hz01):
        honest.housekeeping()
    sync(sh01, hz01)
    assert points_rights(sh01, m) == {"SH01": 100, "SH02": 80}
    assert views.points(sh01, m)["usable"] == 100
    assert write_offs(sh01, m) == []
    for honest in (sh01, hz01):
        assert views.members_with_expired_points(honest, honest.node, honest.today()) == []
        assert views.expired_points_owed(honest, m, honest.node) == 0
        assert honest.expire_points(honest.owner, m) == []
    # The spend writes off nothing first either, and the valid points are SH01's to serve.
    done = sh01.redeem_points(sh01.owner, m, 100, "towel")
    assert write_offs(sh01, m) == []
    assert done["points"] == 100 and points_rights(sh01, m) == {"SH02": 80}
    # What is left is the liar's lot and the liar's rights: its own to write off.
    assert views.expired_points_owed(sh01, m, "SH02") == 80


def test_a_liars_lot_never_makes_an_honest_branch_write_off_twice(
        chain: dict[str, Ledger], clock: FakeClock) -> None:
    """SH01 owes a write-off of its own (50 points expired) and holds 100 valid; the
    liar's lot expired after SH01's (so SH01's comes first in the order a write-off
    takes lots). SH01 writes off its 50 once, whatever passes follow: a write-off of
    the liar's lot too would have been taken from SH01's lot on paper first, left the
    liar's due, and been written off again out of the valid points the next day."""
    sh01, liar, hz01 = chain["SH01"], chain["SH02"], chain["HZ01"]
    m = member_earning(sh01, 5000)  # 50 points, expiring 2026-01-31
    clock.advance_days(35)  # 2026-02-05
    sh01.topup(sh01.owner, m, 10000)
    sh01.debit(sh01.owner, m, amount=10000)  # 100 more, expiring 2026-03-07
    sync_all(chain)
    take_forgery([sh01, hz01], forge_expired_sale(liar, m, 80, "2026-02-01"))
    assert views.points(sh01, m)["expired_unwritten"] == 130
    for _day in range(3):
        sh01.housekeeping()
        hz01.housekeeping()
        sync(sh01, hz01)
        clock.advance_days(1)
    assert write_offs(sh01, m) == [("SH01", 50)]
    assert points_rights(sh01, m) == {"SH01": 100, "SH02": 80}
    pts = views.points(sh01, m)
    assert (pts["usable"], pts["expired_unwritten"]) == (100, 80)


def test_a_liars_lot_in_front_no_longer_holds_up_the_honest_write_off(
        chain: dict[str, Ledger], clock: FakeClock) -> None:
    """The liar's lot dated before SH01's own expired lot: SH01 writes off its own lot
    the first day, naming it, and the fold takes that lot, not the liar's in front.
    (Before write-offs named their lots, SH01 waited for good: its write-off would
    have been taken from the liar's lot on paper.) The liar's lot and rights stay."""
    sh01, liar, hz01 = chain["SH01"], chain["SH02"], chain["HZ01"]
    m = member_earning(sh01, 5000)  # 50 points, expiring 2026-01-31
    own_lot = next(e["id"] for e in sh01.history(m) if e["kind"] == "debit")
    clock.advance_days(35)
    sh01.topup(sh01.owner, m, 10000)
    sh01.debit(sh01.owner, m, amount=10000)  # 100 valid
    sync_all(chain)
    take_forgery([sh01, hz01], forge_expired_sale(liar, m, 80, "2000-01-01"))
    done = sh01.housekeeping()
    assert [(e["kind"], e["points"], e["ref"]) for e in done] == [("expiry", 50, own_lot)]
    assert sh01.housekeeping() == []
    sync(sh01, hz01)
    for ledger in (sh01, hz01):
        assert points_rights(ledger, m) == {"SH01": 100, "SH02": 80}
        pts = views.points(ledger, m)
        assert (pts["usable"], pts["expired_unwritten"]) == (100, 80)
        assert [lot["expires"] for lot in pts["lots"]] == ["2000-01-01", "2026-03-07"]
    assert hz01.housekeeping() == []
    with pytest.raises(InsufficientFunds):
        sh01.redeem_points(sh01.owner, m, 101, "towel")
    sh01.redeem_points(sh01.owner, m, 100, "towel")
    assert write_offs(sh01, m) == [("SH01", 50)]
    assert points_rights(sh01, m) == {"SH02": 80}
    assert views.points(sh01, m)["usable"] == 0


@pytest.mark.parametrize("away", ["merge pair", "transfer"])
def test_a_liars_lot_whose_rights_it_moved_away_is_not_written_off_by_an_honest_holder(
        chain: dict[str, Ledger], away: str) -> None:
    """The liar's lot, expired when written, and its rights moved in the same record
    to a member not merged (a merge pair: whether they are merged is a member
    document's fact, no write rule sees it) or to a node id of the liar's own (a
    balanced transfer). The liar then holds no points rights of m, so its lot looked
    orphaned and SH01 wrote it off from m's valid points. SH01 never got the liar's
    rights, so it answers for none of the lot."""
    sh01, liar, hz01 = chain["SH01"], chain["SH02"], chain["HZ01"]
    m = member_earning(sh01, 10000)  # 100 valid
    other = sh01.add_member(sh01.owner, name="李娜", phone="13900000001")
    sync_all(chain)
    lot = liar._entry("debit", m, deltas=[("points", liar.node, 80)], amount=8000,
                      pay="cash", points=80, expires="2025-12-01", op=liar.owner)
    if away == "merge pair":
        out = liar._entry("merge", m, deltas=[("points", liar.node, -80)], to=other)
        into = liar._entry("merge", other, deltas=[("points", liar.node, 80)],
                           ref=out["id"])
        moved = [out, into]
    else:
        moved = [liar._entry("transfer", m, deltas=[("points", liar.node, -80),
                                                    ("points", "SH09", 80)],
                             amount=80, to="SH09")]
    take_forgery([sh01, hz01], forge(liar, lot, *moved))
    assert "SH02" not in points_rights(sh01, m)
    assert views.points(sh01, m)["expired_unwritten"] == 80
    for honest in (sh01, hz01):
        assert honest.housekeeping() == []
        assert views.expired_points_owed(honest, m, honest.node) == 0
    assert points_rights(sh01, m)["SH01"] == 100
    assert views.points(sh01, m)["usable"] == 100
    sh01.redeem_points(sh01.owner, m, 100, "towel")  # all of m's valid points, served at SH01
    assert write_offs(sh01, m) == []


def test_a_liars_lot_is_written_off_from_the_rights_the_liar_gave(
        chain: dict[str, Ledger]) -> None:
    """A liar that did give SH01 the rights of its expired lot (a balanced transfer,
    as a rights fetch writes) and holds none: SH01 writes the lot off from those,
    naming it, and its rights for m's valid points are whole."""
    sh01, liar, hz01 = chain["SH01"], chain["SH02"], chain["HZ01"]
    m = member_earning(sh01, 10000)  # 100 valid
    sync_all(chain)
    lot = liar._entry("debit", m, deltas=[("points", liar.node, 80)], amount=8000,
                      pay="cash", points=80, expires="2025-12-01", op=liar.owner)
    give = liar._entry("transfer", m, deltas=[("points", liar.node, -80),
                                              ("points", "SH01", 80)], amount=80, to="SH01")
    take_forgery([sh01, hz01], forge(liar, lot, give))
    assert points_rights(sh01, m) == {"SH01": 180}
    done = sh01.housekeeping()
    assert [(e["points"], e["ref"]) for e in done] == [(80, lot["id"])]
    assert points_rights(sh01, m) == {"SH01": 100}
    assert views.points(sh01, m) == {
        "total": 100, "expired_unwritten": 0, "usable": 100, "expiring_30_days": 100,
        "lots": [{"expires": "2026-01-31", "points": 100}]}


def test_a_lot_whose_rights_were_fetched_is_written_off_up_to_what_was_moved(
        chain: dict[str, Ledger], clock: FakeClock) -> None:
    """SH01's lot of 100: part of its rights fetched by SH02 (grant_rights, what a
    peer's request does), the rest given to HZ01; SH01 holds none. SH02 also holds the
    rights of 50 valid points it earned itself. Once the lot expires SH02 answers for
    what SH01 gave it, not for all it holds; HZ01 for the rest."""
    sh01, sh02, hz01 = chain["SH01"], chain["SH02"], chain["HZ01"]
    m = member_earning(sh01, 10000)  # 100, expiring 2026-01-31
    lot = next(e["id"] for e in sh01.history(m) if e["kind"] == "debit")
    sync_all(chain)
    grant = sh01.grant_rights(m, "points", "SH02", 40)  # a shortfall, and a cushion
    assert grant is not None
    fetched = grant["amount"]
    assert 40 <= fetched < 100
    sh01.transfer_rights(sh01.owner, m, "HZ01", 100 - fetched, purse="points")
    clock.advance_days(20)
    sh02.topup(sh02.owner, m, 5000)
    sh02.debit(sh02.owner, m, amount=5000)  # 50, expiring 2026-02-20
    sync_all(chain)
    assert points_rights(sh02, m) == {"SH02": fetched + 50, "HZ01": 100 - fetched}
    clock.advance_days(20)  # 2026-02-10: the lot expired, SH02's 50 valid
    assert views.expired_lots_owed(sh02, m, "SH02") == [(lot, fetched)]
    assert [(e["points"], e["ref"]) for e in sh02.housekeeping()] == [(fetched, lot)]
    assert sh02.housekeeping() == []
    assert sh01.housekeeping() == []
    sync_all(chain)
    assert [(e["points"], e["ref"]) for e in hz01.housekeeping()] == [(100 - fetched, lot)]
    sync_all(chain)
    for ledger in chain.values():
        assert ledger.housekeeping() == []
        assert sorted(write_offs(ledger, m)) == [("HZ01", 100 - fetched), ("SH02", fetched)]
        assert points_rights(ledger, m) == {"SH02": 50}
        pts = views.points(ledger, m)
        assert (pts["usable"], pts["expired_unwritten"]) == (50, 0)


# --- honest chains still write everything off ---------------------------------------


def test_points_earned_here_are_written_off_here_only(
        chain: dict[str, Ledger], clock: FakeClock) -> None:
    sh01, sh02 = chain["SH01"], chain["SH02"]
    m = member_earning(sh01, 10000)  # 100 points at SH01
    sync_all(chain)
    clock.advance_days(40)
    assert sh02.housekeeping() == []  # SH02 holds none, and answers for none
    assert [e["points"] for e in sh01.housekeeping()] == [100]
    assert sh01.housekeeping() == []
    sync_all(chain)
    for ledger in chain.values():
        assert ledger.housekeeping() == []
        assert views.points(ledger, m)["total"] == 0
        assert write_offs(ledger, m) == [("SH01", 100)]


def test_points_whose_rights_moved_are_written_off_where_they_went(
        chain: dict[str, Ledger], clock: FakeClock) -> None:
    """Earned at SH01, all their rights given to SH02 (as a rights fetch does): SH01
    holds none, so SH02 answers for the lot once it expires, up to what SH01 gave it,
    and names the lot."""
    sh01, sh02 = chain["SH01"], chain["SH02"]
    m = member_earning(sh01, 10000)
    sync_all(chain)
    sh01.grant_rights(m, "points", "SH02", 100)  # what a peer's request for rights does
    sync_all(chain)
    assert points_rights(sh02, m) == {"SH02": 100}
    clock.advance_days(40)
    assert sh01.housekeeping() == []
    lot = next(e["id"] for e in sh01.history(m) if e["kind"] == "debit")
    assert [(e["points"], e["ref"]) for e in sh02.housekeeping()] == [(100, lot)]
    sync_all(chain)
    for ledger in chain.values():
        assert ledger.balance(m)["points"] == 0 and views.points(ledger, m)["total"] == 0
        assert write_offs(ledger, m) == [("SH02", 100)]


def test_part_moved_the_holder_writes_off_the_rest_on_a_second_pass(
        chain: dict[str, Ledger], clock: FakeClock) -> None:
    """60 of 100 moved to SH02. SH02's pass first: SH01 still holds rights, so the lot
    is SH01's to answer for and SH02 waits. SH01 writes off its 40; then, holding
    none, it leaves the rest to SH02, whose next pass writes off 60."""
    sh01, sh02 = chain["SH01"], chain["SH02"]
    m = member_earning(sh01, 10000)
    sync_all(chain)
    sh01.transfer_rights(sh01.owner, m, "SH02", 60, purse="points")
    sync_all(chain)
    clock.advance_days(40)
    assert sh02.housekeeping() == []
    assert [e["points"] for e in sh01.housekeeping()] == [40]
    sync_all(chain)
    assert [e["points"] for e in sh02.housekeeping()] == [60]
    sync_all(chain)
    for ledger in chain.values():
        assert ledger.housekeeping() == []
        assert ledger.balance(m)["points"] == 0
        assert write_offs(ledger, m) == [("SH01", 40), ("SH02", 60)]


def test_a_spend_cannot_use_expired_points_and_writes_off_those_it_answers_for(
        chain: dict[str, Ledger], clock: FakeClock) -> None:
    """SH02 holds the rights of SH01's 100 points (now expired) and of 50 valid it
    earned itself: it serves 50, not 150, and writes the 100 off first."""
    sh01, sh02 = chain["SH01"], chain["SH02"]
    m = member_earning(sh01, 10000)  # 100, expiring 2026-01-31
    sync_all(chain)
    sh01.grant_rights(m, "points", "SH02", 100)
    sync_all(chain)
    clock.advance_days(20)
    sh02.topup(sh02.owner, m, 5000)
    sh02.debit(sh02.owner, m, amount=5000)  # 50, expiring 2026-02-20
    clock.advance_days(20)  # 2026-02-10
    with pytest.raises(InsufficientFunds, match="100 more have expired"):
        sh02.redeem_points(sh02.owner, m, 51, "towel")
    sh02.redeem_points(sh02.owner, m, 50, "towel")
    assert write_offs(sh02, m) == [("SH02", 100)]
    assert points_rights(sh02, m) == {}
    assert views.points(sh02, m)["total"] == 0


def test_lots_of_two_earners_are_each_written_off_once(
        chain: dict[str, Ledger], clock: FakeClock) -> None:
    """SH01's lot expires first, SH02's later; each holds its own rights. Whatever
    order the passes run in, each lot is written off once, by its earner: SH02's
    write-off names its own lot, so SH01's in front neither holds it up nor pays it."""
    sh01, sh02 = chain["SH01"], chain["SH02"]
    m = member_earning(sh01, 10000)  # 100, expiring 2026-01-31
    sync_all(chain)
    clock.advance_days(5)
    sh02.topup(sh02.owner, m, 7000)
    sh02.debit(sh02.owner, m, amount=7000)  # 70, expiring 2026-02-05
    sync_all(chain)
    clock.advance_days(40)
    for _day in range(3):
        for ledger in (sh02, sh01, chain["HZ01"]):
            ledger.housekeeping()
            sync_all(chain)
        clock.advance_days(1)
    for ledger in chain.values():
        assert sorted(write_offs(ledger, m)) == [("SH01", 100), ("SH02", 70)]
        assert ledger.balance(m)["points"] == 0 and views.points(ledger, m)["total"] == 0


def test_a_merged_members_lots_are_written_off_from_the_survivors_rights(
        chain: dict[str, Ledger], clock: FakeClock) -> None:
    """HZ01 merges b into a; SH01, where both earned, holds b's rights unswept. The
    group's expired lots are written off in a's name from a's rights here, after the
    sweep of b's rights to a (in the same commit)."""
    sh01, hz01 = chain["SH01"], chain["HZ01"]
    a = member_earning(sh01, 10000)  # 100
    b = member_earning(sh01, 3000, phone="13900000000")  # 30
    sync_all(chain)
    hz01.merge_member(hz01.owner, b, a)
    sync(sh01, hz01)
    clock.advance_days(40)
    assert points_rights(sh01, b) == {"SH01": 30}
    assert views.expired_points_owed(sh01, b, "SH01") == 100  # a's rights, before the sweep
    done = sh01.expire_points(sh01.owner, b)
    assert sorted((e["member"], e["points"]) for e in done) == [(a, 30), (a, 100)]
    assert len({e["ref"] for e in done}) == 2  # one entry a lot, each naming it
    assert points_rights(sh01, a) == {} and points_rights(sh01, b) == {}
    assert views.points(sh01, a)["total"] == 0
    assert sh01.housekeeping() == []


def test_a_write_off_made_before_its_writer_heard_of_a_redemption_takes_no_valid_points(
        chain: dict[str, Ledger], clock: FakeClock) -> None:
    """Lot L1 (120, SH01's, expiring first) and L2 (120, SH02's, ten days later). SH02,
    cut off, redeems 100 the day before L1 expires: its own rights pay, and the fold
    takes them from L1, soonest expiry first. SH01, not knowing, writes L1 off whole
    (120) from its rights. Once they meet, the write-off took 100 valid points of L2:
    the member had 240, spent 100, and only L1's last 20 expired. A write-off now
    takes expired points only, and its writer gives the rest back to its own rights
    at its next daily pass: 120 usable, 120 in rights, at every branch."""
    sh01, sh02, hz01 = chain["SH01"], chain["SH02"], chain["HZ01"]
    m = member_earning(sh01, 12000)  # L1 at SH01
    sync_all(chain)
    clock.advance_days(10)
    sh02.topup(sh02.owner, m, 12000)
    sh02.debit(sh02.owner, m, amount=12000)  # L2 at SH02
    sync_all(chain)
    clock.advance_days(19)  # the day before L1 expires; SH02 is cut off from here
    sh02.redeem_points(sh02.owner, m, 100, "towel")
    clock.advance_days(3)
    [off] = sh01.expire_points(sh01.owner, m)
    assert off["points"] == 120
    sync(sh01, hz01)
    sync_all(chain)  # they meet
    for x in chain.values():
        assert views.points(x, m)["usable"] == 120, x.node
    assert sh02.give_back_write_offs() == hz01.give_back_write_offs() == []
    [back] = sh01.give_back_write_offs()
    assert (back["kind"], back["ref"], back["deltas"]) == ("expiry", off["id"],
                                                          [["points", "SH01", 100]])
    assert sh01.give_back_write_offs() == []
    sync_all(chain)
    for x in chain.values():
        assert views.points(x, m)["usable"] == 120
        assert sum(points_rights(x, m).values()) == 120
        assert x.give_back_write_offs() == []
    sh01.redeem_points(sh01.owner, m, 100, "towel")  # the rights given back pay


def test_a_give_back_is_booked_after_its_write_off_made_while_the_clock_ran_ahead(
        chain: dict[str, Ledger], clock: FakeClock) -> None:
    """As above, but SH01's PC runs three days ahead when it writes L1 off; its clock
    is put right (a new era: lower ids) before its daily pass gives back what the
    write-off took beyond the expired points. The give-back names the write-off and is
    booked after it, not three days before (as a refund after its sale)."""
    sh01, hz01 = chain["SH01"], chain["HZ01"]
    m = member_earning(sh01, 12000)
    spent_at_sh02_before_l1_expires(chain, clock, m)
    clock.advance_days(6)  # SH01 alone runs three days ahead: the others wait
    [off] = sh01.expire_points(sh01.owner, m)
    clock.advance_days(-3)  # put right
    sync(sh01, hz01)
    sync_all(chain)
    [back] = sh01.give_back_write_offs()
    assert back["ref"] == off["id"] and back["id"] > off["id"]
    assert sh01.storage.day_of(back["at"]) == sh01.storage.day_of(off["at"])
    later = sh01.topup(sh01.owner, m, 100)  # and the next is booked by the right time
    assert later["id"] < off["id"]
    sync_all(chain)
    for x in chain.values():
        assert views.points(x, m)["usable"] == 120
        assert sum(points_rights(x, m).values()) == 120


def test_a_write_off_before_a_merge_is_given_back_after_it(
        chain: dict[str, Ledger], clock: FakeClock) -> None:
    """The same race, and the member then merged into another who has an expired lot
    of its own: the give-back's fold took the excess from the other member's pool,
    where the write-off never reached, and gave nothing back."""
    sh01, hz01 = chain["SH01"], chain["HZ01"]
    b = member_earning(sh01, 12000)
    a = member_earning(hz01, 10000, phone="13900000000")
    spent_at_sh02_before_l1_expires(chain, clock, b)
    clock.advance_days(3)
    sh01.expire_points(sh01.owner, b)
    sync(sh01, hz01)
    hz01.merge_member(hz01.owner, b, a)
    sync_all(chain)
    for x in chain.values():
        x.housekeeping()
    sync_all(chain)
    for x in chain.values():
        assert views.points(x, a)["usable"] == sum(points_rights(x, a).values()) == 120


def test_a_liar_cannot_make_a_branch_give_back_more_than_the_lots_hold(
        tmp_path: Path) -> None:
    """A liar's entries dated before SH01's write-off of lot X (an `expiry` of its own
    naming X, taking it first in the fold; rights of its own from nothing by a positive
    `expiry`; a lone merge "out" of one point) made SH01's write-off look 120 too large,
    and SH01 gave back 120 points rights no lot backed. A give-back names its writer's
    own write-off (write rule give-back-own), and is never more than the group's lots
    hold beyond its rights."""
    from test_liar_round2 import World

    from crdtledger.hlc import HybridClock, id_time_ms

    w = World(tmp_path)
    try:
        a, m = w.a, w.third
        a.set_rule(a.owner, "earn", {"points_per_yuan": "1", "expire_days": 30},
                   effective_from="2025-01-01")
        a.topup(a.owner, m, 12000)
        x_id = a.debit(a.owner, m, amount=12000)["id"]
        w.clock.advance_days(31)
        a.housekeeping()
        [off] = [e for e in a.history(m, 20) if e["kind"] == "expiry"]
        t = id_time_ms(off["id"]) - 3_600_000

        def entry(kind: str, deltas: list[list[Any]], ms: int, **kw: Any) -> dict[str, Any]:
            eid = HybridClock("SH03", now_ms=lambda: ms).mint()
            return {"id": eid, "kind": kind, "member": m, "node": "SH03", "op": "x",
                    "at": id_time_ms(eid), "amount": 0, "deltas": deltas, **kw}

        made_up = entry("expiry", [["points", "SH03", 120]], t)
        a.apply_batch(w.liar.batch([w.write(made_up)]))
        assert [f["rule"] for f in a.faults()] == ["give-back-own"]
        # From a second liar's log (SH04's replica stands in as its writer here), the
        # same without the made-up rights: a correction of its own gives it 121.
        liar2 = Forger(w.c)
        lie = [{**entry("correction", [["points", "SH04", 121]], t - 1, expires="2030-01-01"),
                "node": "SH04"},
               {**entry("expiry", [["points", "SH04", -120]], t + 1, ref=x_id, points=120,
                        day=a.storage.day_of(t)), "node": "SH04"},
               {**entry("merge", [["points", "SH04", -1]], t + 2, to=w.member), "node": "SH04"}]
        for e in lie:
            e["id"] = e["id"].replace(".SH03", ".SH04")

        def put(*es: dict[str, Any]) -> Callable[[Any], None]:
            def mutate(d: Any) -> None:
                for e in es:
                    d.get("entries", type=Map)[e["id"]] = e
            return mutate

        from crdtledger.model import entry_doc
        doc = entry_doc(lie[0]["id"], a.storage.day_of)
        # The lone "out" in a record of its own (writerules merge-paired refuses one
        # beside other entries; alone it is 0.2.0's shape of a sweep, taken).
        a.apply_batch(liar2.batch([liar2.write(doc, put(*lie[:2])),
                                   liar2.write(doc, put(lie[2]))]))
        a.housekeeping()
        # What SH01 gave back, the liar's own correction's lot backs (points a liar
        # makes are its own to make: docs/design-notes.md); never rights without lots.
        p = views.points(a, m)
        assert sum(points_rights(a, m).values()) <= p["total"] == p["usable"] == 121
    finally:
        w.close()


# --- a refund of a sale whose points expired ------------------------------------------


def points_identity(ledger: Ledger, member: str) -> tuple[int, int, int, int]:
    """(earned, used, expired, left) of the member's points by its entries: what sales
    earned, what refunds and redemptions took back, what write-offs took net of their
    give-backs; and the points left. Left = earned - used - expired holds when no
    point is lost twice."""
    earned = used = expired = 0
    for e in ledger.history(member, 500):
        change = sum(c for purse, _n, c in e["deltas"] if purse == "points")
        if e["kind"] in ("transfer", "merge"):
            continue
        if e["kind"] == "expiry":
            expired -= change
        elif change > 0:
            earned += change
        else:
            used -= change
    return earned, used, expired, ledger.balance(member)["points"]


def assert_books_agree(ledgers: list[Ledger], member: str, left: int) -> None:
    """At every replica: `left` points, all valid, in the lots as in the rights, the
    table the replay's and everyone's the same, and the identity holds."""
    tables = []
    for x in ledgers:
        p = views.points(x, member)
        assert (p["total"], p["usable"], p["expired_unwritten"]) == (left, left, 0), x.node
        assert sum(points_rights(x, member).values()) == x.balance(member)["points"] == left
        earned, used, expired, now = points_identity(x, member)
        assert now == earned - used - expired == left, (x.node, earned, used, expired)
        conn = x.storage.conn
        table = sorted(tuple(r) for r in conn.execute(
            "SELECT earned, member, expires, left FROM points_lots"))
        assert table == sorted((lot[2], lot[3], lot[0], lot[1]) for lot in lots.replay(
            conn, views.member_group(conn, member)) if lot[1]), x.node
        tables.append(table)
    assert all(t == tables[0] for t in tables), "replicas hold different lots"


@pytest.mark.parametrize("write_off_first", [False, True])
def test_a_refund_of_a_sale_whose_points_expired_takes_no_valid_points(
        chain: dict[str, Ledger], clock: FakeClock, write_off_first: bool) -> None:
    """Sale D1 earns 100 points at SH01, which expire; D2 earns 100 valid ones; D1 is
    refunded. The refund takes back what is left of D1's own lot (100 before the
    write-off, nothing after it) and never D2's valid points: the member keeps 100,
    whether the daily pass wrote D1's lot off before or after the refund. SH02 takes
    each step as it is made, HZ01 everything at the end: the same lots everywhere."""
    sh01, sh02, hz01 = chain["SH01"], chain["SH02"], chain["HZ01"]
    m = member_earning(sh01, 10000)  # D1: 100 points, expiring 2026-01-31
    d1 = next(e["id"] for e in sh01.history(m) if e["kind"] == "debit")
    sh01.topup(sh01.owner, m, 10000)
    sync(sh01, sh02)
    clock.advance_days(40)  # D1's points have expired
    if write_off_first:
        assert [e["points"] for e in sh01.housekeeping() if e["kind"] == "expiry"] == [100]
        sync(sh01, sh02)
    sh01.debit(sh01.owner, m, amount=10000)  # D2: 100 valid points
    sync(sh01, sh02)
    refund = sh01.refund(sh01.owner, d1)
    assert refund.get("points") == (None if write_off_first else 100)
    sync(sh01, sh02)
    offs = [e for e in sh01.housekeeping() if e["kind"] == "expiry"]
    assert offs == []  # nothing expired is left: the refund took D1's lot, or found it gone
    sync(sh01, sh02)
    sync_all(chain)
    for x in chain.values():
        assert x.housekeeping() == []
    assert_books_agree([sh01, sh02, hz01], m, 100)


def test_a_refund_of_an_expired_sale_takes_back_only_what_its_lot_kept(
        chain: dict[str, Ledger], clock: FakeClock) -> None:
    """D1's 100 points, 30 of them redeemed while valid, expire with 70 left; the
    refund of D1 takes back those 70, not the 30 spent (out of D2's valid points)."""
    sh01, sh02, hz01 = chain["SH01"], chain["SH02"], chain["HZ01"]
    m = member_earning(sh01, 10000)
    d1 = next(e["id"] for e in sh01.history(m) if e["kind"] == "debit")
    sh01.redeem_points(sh01.owner, m, 30, "towel")
    sh01.topup(sh01.owner, m, 10000)
    clock.advance_days(40)
    sh01.debit(sh01.owner, m, amount=10000)
    assert sh01.refund(sh01.owner, d1)["points"] == 70
    sh01.housekeeping()
    sync_all(chain)
    assert_books_agree([sh01, sh02, hz01], m, 100)


@pytest.mark.parametrize("write_off_first", [False, True])
def test_a_refund_and_another_branchs_write_off_of_the_same_expired_lot_lose_it_once(
        chain: dict[str, Ledger], clock: FakeClock, write_off_first: bool) -> None:
    """D1's rights went to SH02 (a rights fetch), so SH02 answers for D1's lot once it
    expires and SH01 holds none. Cut off from SH02, SH01 sells D2 (100 valid points,
    its rights) and refunds D1, taking back D1's expired lot; SH02 writes that same
    lot off. Two branches took the same 100 expired points, in either order of ids:
    once they meet, the fold gives the lot to the refund and the write-off's writer
    gives its 100 back (Payments.give_back_write_offs), so the member keeps D2's 100
    at every branch, and no expired point is left for nobody to write off."""
    sh01, sh02, hz01 = chain["SH01"], chain["SH02"], chain["HZ01"]
    m = member_earning(sh01, 10000)
    d1 = next(e["id"] for e in sh01.history(m) if e["kind"] == "debit")
    sh01.topup(sh01.owner, m, 10000)
    sh01.grant_rights(m, "points", "SH02", 100)
    sync_all(chain)
    clock.advance_days(40)
    offs = []
    if write_off_first:
        offs = [e for e in sh02.housekeeping() if e["kind"] == "expiry"]
        clock.advance_days(0.1)
    sh01.debit(sh01.owner, m, amount=10000)
    refund = sh01.refund(sh01.owner, d1)
    assert refund["points"] == 100
    if not write_off_first:
        clock.advance_days(0.1)
        offs = [e for e in sh02.housekeeping() if e["kind"] == "expiry"]
    assert [(e["ref"], e["points"]) for e in offs] == [(d1, 100)]
    assert (offs[0]["id"] < refund["id"]) == write_off_first
    sync(sh01, hz01)  # HZ01 hears of the refund first, then of the write-off
    sync_all(chain)
    for _ in range(2):
        for x in chain.values():
            x.housekeeping()
        sync_all(chain)
    assert_books_agree([sh01, sh02, hz01], m, 100)


def test_a_refund_stating_its_lot_expired_takes_from_that_lot_only() -> None:
    """The fold itself: a refund whose entry says its debit's points expired before
    its day takes back only what that lot has left, never a valid lot."""
    clock = FakeClock()
    clock.advance_days(40.5)  # 2026-02-10, noon
    ids = HybridClock("SH01", now_ms=clock)
    r1, r2, r3 = ids.mint(), ids.mint(), ids.mint()
    held: list[lots.Lot] = [["2026-01-31", 100, "D1", "M1"], ["2026-03-12", 100, "D2", "M1"]]
    lots._step(held, ("M1", r1, -60, "refund", "D1", "2026-01-31", "2026-02-10"))
    assert [lot[1] for lot in held] == [40, 100]
    lots._step(held, ("M1", r2, -40, "refund", "D1", "2026-01-31", "2026-02-10"))
    assert [lot[1] for lot in held] == [0, 100]
    # Without the expiry (an older build's refund), as before: valid lots first.
    held = [["2026-01-31", 100, "D1", "M1"], ["2026-03-12", 100, "D2", "M1"]]
    lots._step(held, ("M1", r3, -100, "refund", "D1", None, "2026-02-10"))
    assert [lot[1] for lot in held] == [100, 0]
