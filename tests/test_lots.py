"""Points lots kept as a table (crdtledger.lots): whatever order entries and merges
come in, the table is what a replay of each member group's entries gives, on real
ledgers in tmp_path synced in memory; a store made before the table gets it filled
when it is opened."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import hypothesis.strategies as st
import pytest
from helpers import FakeClock, Forger, new_ledger, sync, two_zones
from hypothesis import given, settings
from pycrdt import Doc, Map

from crdtledger import lots, views
from crdtledger.hlc import HybridClock, id_time_ms
from crdtledger.ledger import Ledger
from crdtledger.model import entry_doc


def kept(ledger: Ledger) -> list[tuple[str, str, str, int]]:
    return [tuple(r) for r in ledger.storage.conn.execute(
        "SELECT earned, member, expires, left FROM points_lots ORDER BY earned")]


def replayed(ledger: Ledger) -> list[tuple[str, str, str, int]]:
    """The lots with points left of every group, by replay (the definition)."""
    conn = ledger.storage.conn
    groups = {views.member_group(conn, m)[0]: views.member_group(conn, m)
              for (m,) in conn.execute("SELECT DISTINCT member FROM entries").fetchall()}
    out = []
    for group in groups.values():
        for expires, left, eid, owner in lots.replay(conn, group):
            if left:
                out.append((eid, owner, expires, left))
    return sorted(out)


def earning_chain(tmp_path: Path) -> tuple[Ledger, Ledger, FakeClock, FakeClock]:
    sh_clock, hz_clock = FakeClock(), FakeClock()
    sh = new_ledger(tmp_path, "SH01", now_ms=sh_clock)
    hz = new_ledger(tmp_path, "HZ01", now_ms=hz_clock)
    sh.set_rule(sh.owner, "earn", {"points_per_yuan": "1", "expire_days": 30},
                effective_from="2025-01-01")
    sync(sh, hz)
    return sh, hz, sh_clock, hz_clock


def expired_then_earned(tmp_path: Path) -> tuple[Ledger, Ledger, FakeClock, str]:
    """earning_chain's SH01 with a member who earned 100 points, then 20 more 40 days
    later, when the first had expired (not yet written off)."""
    sh, hz, sh_clock, _ = earning_chain(tmp_path)
    m = sh.add_member(sh.owner, name="张伟", phone="13812345678")
    sh.topup(sh.owner, m, 50000)
    sh.debit(sh.owner, m, amount=10000)
    sh_clock.advance_days(40)
    sh.debit(sh.owner, m, amount=2000)
    return sh, hz, sh_clock, m


def test_a_debit_that_comes_late_is_replayed_into_its_place(tmp_path: Path) -> None:
    """HZ01 sells first (by its clock) but syncs last: at SH01 its lot comes after a
    later redemption, which took the lots it knew of. The table is the replay's, at
    both branches, and the same."""
    sh, hz, sh_clock, hz_clock = earning_chain(tmp_path)
    try:
        m = sh.add_member(sh.owner, name="张伟", phone="13812345678")
        sh.topup(sh.owner, m, 50000)
        sh.debit(sh.owner, m, amount=10000)  # 100 points, expiring 2026-01-31
        sh.transfer_rights(sh.owner, m, "HZ01", 10000)  # HZ01 may sell to m
        sync(sh, hz)
        hz_clock.advance_days(2)
        sh_clock.advance_days(3)
        hz_sale = hz.debit(hz.owner, m, amount=5000)  # 50 points, expiring 2026-02-02
        redeemed = sh.redeem_points(sh.owner, m, 80, "towel")  # from the only lot SH01 knows
        assert hz_sale["id"] < redeemed["id"]
        assert views.points(sh, m)["lots"] == [{"expires": "2026-01-31", "points": 20}]
        sync(sh, hz)
        for ledger in (sh, hz):
            assert kept(ledger) == replayed(ledger)
            assert views.points(ledger, m)["total"] == 70
        assert kept(sh) == kept(hz)
        assert hz_sale["id"] in {r[0] for r in kept(sh)}
    finally:
        sh.close()
        hz.close()


def test_points_spent_before_the_entry_that_earned_them_are_owed_not_lost(
        tmp_path: Path) -> None:
    """HZ01's clock runs three days ahead: a member earns 100 points there and redeems
    them at SH01, whose redemption's id sorts before the earning. The redemption is
    owed and the earning pays it: no lot is left of points already spent, which the
    daily pass would write off, once expired, from points earned since."""
    sh, hz, sh_clock, hz_clock = earning_chain(tmp_path)
    try:
        hz_clock.advance_days(3)
        m = sh.add_member(sh.owner, name="张伟", phone="13812345678")
        sync(sh, hz)
        hz.topup(hz.owner, m, 20_000)
        earned = hz.debit(hz.owner, m, amount=10_000)  # 100 points, at HZ01
        hz.transfer_rights(hz.owner, m, "SH01", 100, purse="points")
        sync(sh, hz)
        redeemed = sh.redeem_points(sh.owner, m, 100, gift="毛巾")
        assert redeemed["id"] < earned["id"]
        sync(sh, hz)
        for ledger in (sh, hz):
            assert ledger.balance(m)["points"] == 0
            assert views.points(ledger, m)["total"] == views.points(ledger, m)["usable"] == 0
            assert kept(ledger) == replayed(ledger) == []
        sh_clock.advance_days(35)
        hz_clock.advance_days(35)
        sh.topup(sh.owner, m, 10_000)
        sh.debit(sh.owner, m, amount=5_000)  # 50 points, valid for 30 days
        sh_clock.advance_days(1)
        assert [e for e in sh.housekeeping() if e["kind"] == "expiry"] == []
        sync(sh, hz)
        for ledger in (sh, hz):
            assert ledger.balance(m)["points"] == views.points(ledger, m)["usable"] == 50
            assert kept(ledger) == replayed(ledger)
    finally:
        sh.close()
        hz.close()


def test_an_owed_spend_is_kept_until_its_earning_comes(tmp_path: Path) -> None:
    """The fold itself: a spend with no lot to take from is owed (a lot of negative
    points that never expires), and the next points earned pay it first."""
    owed: list[lots.Lot] = []  # every row below carries its writer's day
    lots._step(owed, ("M1", "A1", -30, "redeem", None, None, "2026-01-02"))
    assert owed == [["9999-12-31", -30, "A1", "M1"]]
    lots._step(owed, ("M1", "A2", 20, "debit", None, "2026-02-01", "2026-01-03"))
    assert owed == [["9999-12-31", -10, "A1", "M1"]]
    lots._step(owed, ("M1", "A3", 25, "debit", None, "2026-02-02", "2026-01-03"))
    assert [lot for lot in owed if lot[1]] == [["2026-02-02", 15, "A3", "M1"]]


def test_a_refund_takes_back_its_own_debits_lot(tmp_path: Path) -> None:
    sh, hz, sh_clock, _ = earning_chain(tmp_path)
    try:
        m = sh.add_member(sh.owner, name="张伟", phone="13812345678")
        sh.topup(sh.owner, m, 50000)
        first = sh.debit(sh.owner, m, amount=10000)
        sh_clock.advance_days(5)
        second = sh.debit(sh.owner, m, amount=6000)
        sh.refund(sh.owner, second["id"])
        assert [(r[0], r[3]) for r in kept(sh)] == [(first["id"], 100)]
        assert kept(sh) == replayed(sh)
        sync(sh, hz)
        assert kept(hz) == kept(sh)
    finally:
        sh.close()
        hz.close()


def test_a_merge_makes_the_groups_lots_one_members_wherever_the_survivor_comes(
        tmp_path: Path) -> None:
    """SH01 merges b into a. A third branch first gets the merged member (not its
    survivor: a pointer it cannot follow yet), then everything: its table is then the
    group's replay, as at SH01, where b's later redemption took a's lots too."""
    sh, hz, sh_clock, _ = earning_chain(tmp_path)
    bj = new_ledger(tmp_path, "BJ01", now_ms=FakeClock())
    try:
        a = sh.add_member(sh.owner, name="张伟", phone="13812345678")
        b = sh.add_member(sh.owner, name="张伟", phone="13812345679")
        for m, fen in ((a, 10000), (b, 3000)):
            sh.topup(sh.owner, m, 50000)
            sh.debit(sh.owner, m, amount=fen)
        sh.merge_member(sh.owner, b, a)
        sh_clock.advance_days(1)
        sh.redeem_points(sh.owner, b, 120, "towel")  # the group's 130 points: a's lot too
        assert views.points(sh, a)["total"] == 10
        assert kept(sh) == replayed(sh)
        sync(sh, hz)
        sync(hz, bj)
        for ledger in (hz, bj):
            assert kept(ledger) == replayed(ledger) == kept(sh)
            assert views.points(ledger, b)["total"] == views.points(ledger, a)["total"] == 10
    finally:
        for ledger in (sh, hz, bj):
            ledger.close()


def test_a_merge_takes_effect_from_the_merge_on(tmp_path: Path) -> None:
    """b redeemed before it was merged into a: from its own lot, as its rights were
    its own then (folding the group as one member from its first entry would have
    taken a's lot, which expires sooner, and left b's). After the merge the group is
    one pool. The same at a branch that gets it all at once."""
    sh, hz, sh_clock, _ = earning_chain(tmp_path)
    try:
        a = sh.add_member(sh.owner, name="张伟", phone="13812345678")
        b = sh.add_member(sh.owner, name="张伟", phone="13812345679")
        sh.topup(sh.owner, a, 50000)
        sh.debit(sh.owner, a, amount=10000)  # a: 100 points expiring 2026-01-31
        sh_clock.advance_days(5)
        sh.topup(sh.owner, b, 50000)
        sh.debit(sh.owner, b, amount=5000)  # b: 50 points expiring 2026-02-05
        sh_clock.advance_days(1)
        sh.redeem_points(sh.owner, b, 30, "towel")  # b's own lot: 20 left of it
        sh_clock.advance_days(1)
        sh.merge_member(sh.owner, b, a)
        expect = [(a, "2026-01-31", 100), (b, "2026-02-05", 20)]
        assert [r[1:] for r in kept(sh)] == expect
        sh_clock.advance_days(1)
        sh.redeem_points(sh.owner, a, 110, "towel")  # one pool now: a's lot first, then b's
        assert [r[1:] for r in kept(sh)] == [(b, "2026-02-05", 10)]
        sync(sh, hz)
        for ledger in (sh, hz):
            assert kept(ledger) == replayed(ledger) == kept(sh)
            assert views.points(ledger, b)["total"] == views.points(ledger, a)["total"] == 10
    finally:
        sh.close()
        hz.close()


def test_an_erasure_leaves_a_merged_groups_lots_as_they_were(tmp_path: Path) -> None:
    """Erasing a merged group's personal data keeps when each member was merged: the
    lots were folded apart until then, and stay so (a closing already signed over
    them must not change), at the branch that erases and at one it reaches."""
    sh, hz, sh_clock, _ = earning_chain(tmp_path)
    try:
        a = sh.add_member(sh.owner, name="张伟", phone="13812345678")
        b = sh.add_member(sh.owner, name="张伟", phone="13812345679")
        sh.debit(sh.owner, a, amount=10000, pay="cash")  # paid at the till: no stored value
        sh_clock.advance_days(5)
        sh.debit(sh.owner, b, amount=5000, pay="cash")
        sh_clock.advance_days(1)
        sh.redeem_points(sh.owner, b, 30, "towel")  # b's own lot, before the merge
        sh_clock.advance_days(1)
        sh.merge_member(sh.owner, b, a)
        sync(sh, hz)
        before = kept(sh)
        assert [r[2:] for r in before] == [("2026-01-31", 100), ("2026-02-05", 20)]
        sh.erase_member(sh.owner, a)
        sync(sh, hz)
        for ledger in (sh, hz):
            assert views.member(ledger, b)["erased"]
            assert kept(ledger) == replayed(ledger) == before
    finally:
        sh.close()
        hz.close()


def test_a_spend_near_midnight_takes_the_same_lots_in_every_zone(tmp_path: Path) -> None:
    """SH02 (Los Angeles) redeems at 20:00 on 31 January, its time, when the lot
    earned at SH01 on 1 January is still valid there, so the spend takes it. At SH01
    (Shanghai) that instant is noon on 1 February, when that lot had expired: read in
    the reader's zone, the spend took the February lot there, and the two branches'
    lots (and closings) differed. The entry carries its writer's day."""
    clock = FakeClock()  # 1 January 2026, 00:00 UTC
    sh, la = two_zones(tmp_path, clock, expire_days=30)
    try:
        m = sh.add_member(sh.owner, name="张伟", phone="13812345678")
        sh.topup(sh.owner, m, 50000)
        sh.debit(sh.owner, m, amount=5000)  # 50 points, expiring 31 January
        clock.advance_days(9)
        sh.debit(sh.owner, m, amount=5000)  # 50 points, expiring 9 February
        sync(sh, la)  # rights go only to a branch the chain knows: SH02 has synced here
        sh.transfer_rights(sh.owner, m, "SH02", 100, "points")
        sync(sh, la)
        clock.ms += 22 * 86_400_000 + 4 * 3_600_000  # 1 February, 04:00 UTC
        assert la.today() == "2026-01-31" and sh.today() == "2026-02-01"
        spent = la.redeem_points(la.owner, m, 20, "towel")
        assert spent["day"] == "2026-01-31"
        sync(sh, la)
        assert kept(la) == kept(sh) == replayed(la) == replayed(sh)
        assert [r[2:] for r in kept(sh)] == [("2026-01-31", 30), ("2026-02-09", 50)]
    finally:
        sh.close()
        la.close()


def test_a_writers_day_is_held_to_the_dates_its_instant_had_somewhere() -> None:
    """A liar's `day` cannot make a spend take lots by a date no zone had: it is
    brought within UTC-12 to UTC+14 of the id's instant, the same at every reader."""
    eid = HybridClock("SH01", now_ms=lambda: 1_769_918_400_000).mint()  # 1 Feb 04:00 UTC
    assert lots.spend_day(eid, "2026-01-31") == "2026-01-31"
    assert lots.spend_day(eid, "1999-01-01") == "2026-01-31"
    assert lots.spend_day(eid, "9999-12-31") == "2026-02-01"
    assert lots.spend_day(eid, "garbage") == "2026-02-01"
    # None given (an older build's, or a liar's left out): the earliest date, in no
    # reader's zone; a reader in Los Angeles and one in Shanghai folded it apart.
    assert lots.spend_day(eid, None) == "2026-01-31"


def test_a_store_made_before_the_table_has_it_filled_when_opened(tmp_path: Path) -> None:
    sh, hz, sh_clock, m = expired_then_earned(tmp_path)
    before, path = kept(sh), sh.storage.dir
    assert [r[3] for r in before] == [100, 20]
    with sh.storage.conn:
        sh.storage.conn.execute("DELETE FROM points_lots")
        sh.storage.conn.execute("DELETE FROM meta WHERE key = 'points_lots'")
    sh.close()
    hz.close()
    with Ledger.open(path, now_ms=sh_clock) as again:
        assert kept(again) == before
        assert views.members_with_expired_points(again, "SH01", again.today()) == [m]


def test_a_store_folded_by_an_older_version_replays_its_named_write_offs(
        tmp_path: Path) -> None:
    """Meta `points_lots` "1": an older build folded a named write-off (from a newer
    replica) in expiry order. On opening, the groups holding one are replayed."""
    sh, hz, sh_clock, _m = expired_then_earned(tmp_path)
    [off] = [e for e in sh.housekeeping() if e["kind"] == "expiry"]
    assert off["points"] == 100 and off["ref"]
    before, path = kept(sh), sh.storage.dir
    assert [r[3] for r in before] == [20]
    with sh.storage.conn:
        sh.storage.conn.execute("DELETE FROM points_lots")  # as if folded otherwise
        sh.storage.conn.execute("UPDATE meta SET value = '1' WHERE key = 'points_lots'")
    sh.close()
    hz.close()
    with Ledger.open(path, now_ms=sh_clock) as again:
        assert kept(again) == before
        assert again.storage.meta["points_lots"] == lots.FOLD


def test_a_store_folded_by_an_older_version_replays_its_refunds_of_expired_points(
        tmp_path: Path) -> None:
    """Meta `points_lots` "3": an older build folded a refund stating that its sale's
    points expired (from a newer replica) as any refund, out of the valid lots first.
    On opening, the groups holding one are replayed."""
    sh, hz, sh_clock, m = expired_then_earned(tmp_path)
    d1 = next(e["id"] for e in reversed(sh.history(m)) if e["kind"] == "debit")
    refund = sh.refund(sh.owner, d1)
    assert (refund["points"], refund["expires"]) == (100, "2026-01-31")
    before, path = kept(sh), sh.storage.dir
    assert [r[3] for r in before] == [20]
    with sh.storage.conn:  # as the older fold left it: the valid 20 taken, 20 expired
        sh.storage.conn.execute("UPDATE points_lots SET earned = ?, expires = ?",
                                (d1, "2026-01-31"))
        sh.storage.conn.execute("UPDATE meta SET value = '3' WHERE key = 'points_lots'")
    sh.close()
    hz.close()
    with Ledger.open(path, now_ms=sh_clock) as again:
        assert kept(again) == before == replayed(again)
        assert again.storage.meta["points_lots"] == lots.FOLD


def only_from(src: Ledger, dst: Ledger, writer: str) -> None:
    """`dst` takes from `src` the records of `writer`'s log only (a hub that relayed
    them first, the rest to follow)."""
    recs = [r for r in src.lacking(dst.log_view()) if r.node == writer]
    dst.apply_batch(src.batch(recs))


def test_a_redemption_funded_by_the_batch_with_an_earlier_sale_is_taken_once(
        tmp_path: Path) -> None:
    """SH02 redeems points whose rights SH01 gave it. SH03 gets the redemption first
    (it waits for its funding) and then SH01's log: a sale earlier than the redemption
    and the transfer that funds it, in one batch. The redemption (from `deferred`) and
    the batch's sale are settled together: the redemption taken once."""
    sh, hz, sh_clock, hz_clock = earning_chain(tmp_path)
    bj = new_ledger(tmp_path, "BJ01", now_ms=sh_clock)
    try:
        m = sh.add_member(sh.owner, name="张伟", phone="13812345678")
        sh.topup(sh.owner, m, 50000)
        sh.debit(sh.owner, m, amount=10000)  # 100 points
        sync(sh, hz)
        sync(sh, bj)
        sh_clock.advance_days(1)
        hz_clock.advance_days(1)
        sh.debit(sh.owner, m, amount=4000)  # 40 more
        sh.transfer_rights(sh.owner, m, "HZ01", 60, purse="points")
        sync(sh, hz)
        hz.redeem_points(hz.owner, m, 60, "towel")
        only_from(hz, bj, "HZ01")
        assert bj.storage.conn.execute("SELECT count(*) FROM deferred").fetchone() == (1,)
        only_from(sh, bj, "SH01")
        assert bj.storage.conn.execute("SELECT count(*) FROM deferred").fetchone() == (0,)
        assert kept(bj) == replayed(bj)
        sync(sh, bj)
        sync(hz, bj)
        for ledger in (sh, hz, bj):
            assert kept(ledger) == replayed(ledger)
            assert views.points(ledger, m)["total"] == 80
    finally:
        for ledger in (sh, hz, bj):
            ledger.close()


def test_a_duplicate_merged_into_two_survivors_apart_leaves_the_same_lots_everywhere(
        tmp_path: Path) -> None:
    """Honest branches only. SH01 merges X into Y and Y redeems from X's lot (one pool
    since the merge); SH03, cut off, merges X into Z and its pointer wins. Y's group
    no longer holds X, but was not replayed when X's pointer moved away: SH01 and SH02
    kept Y's lots as they were, the 50 points spent counted nowhere, and their
    closing differed from SH03's for good."""
    clock = FakeClock()
    a, b, c = (new_ledger(tmp_path, n, now_ms=clock) for n in ("SH01", "SH02", "SH03"))
    a.set_rule(a.owner, "earn", {"points_per_yuan": "1", "expire_days": 365},
               effective_from="2025-01-01")
    x, y, z = (a.add_member(a.owner, name="甲", phone=f"1380000000{i}") for i in (1, 2, 3))
    for m in (x, y, z):
        a.topup(a.owner, m, 100_000)
    a.debit(a.owner, x, amount=10_000)  # X's lot expires first
    clock.advance_days(1)
    for m in (y, z):
        a.debit(a.owner, m, amount=10_000)
    sync(a, b)
    sync(b, c)
    clock.advance_days(19)
    a.merge_member(a.owner, x, y)
    a.redeem_points(a.owner, y, 50, "towel")
    c.merge_member(c.owner, x, z)  # not knowing of SH01's merge
    for _ in range(2):
        sync(a, b)
        sync(b, c)
        sync(a, c)
    assert len({a.survivor_of(x), b.survivor_of(x), c.survivor_of(x)}) == 1
    for ledger in (a, b, c):
        assert kept(ledger) == replayed(ledger), ledger.node
    assert kept(a) == kept(b) == kept(c)


def test_a_spend_without_its_day_is_folded_alike_in_every_zone(tmp_path: Path) -> None:
    """A certified branch leaves `day` out of a redemption (and of the write-off it
    writes first) at 20:00 UTC on a lot's last day: still that day in Los Angeles, the
    next in Shanghai. Each reader took its own zone's date, so the two folded
    different lots for the same records, and their closings differed for good."""
    from datetime import datetime

    clock = FakeClock()
    sh, la = two_zones(tmp_path, clock, expire_days=10)
    liar = new_ledger(tmp_path, "SH03", now_ms=clock)
    m = sh.add_member(sh.owner, name="王芳", phone="13800000001")
    sync(sh, liar)
    liar.topup(liar.owner, m, 100_000)
    liar.debit(liar.owner, m, amount=10_000)
    clock.advance_days(2)
    liar.debit(liar.owner, m, amount=10_000)
    first_expires = min(r[2] for r in kept(liar))
    clock.ms = int(datetime.fromisoformat(first_expires + "T20:00:00+00:00").timestamp()
                   * 1000)
    honest = liar._entry

    def without_day(*args: Any, **kwargs: Any) -> dict[str, Any]:
        entry = honest(*args, **kwargs)
        entry.pop("day", None)
        return entry

    liar._entry = without_day  # type: ignore[method-assign]
    assert "day" not in liar.redeem_points(liar.owner, m, 30, "towel")
    liar._entry = honest  # type: ignore[method-assign]
    sync(sh, liar)
    sync(la, liar)
    assert la.storage.day_of(clock.ms) != sh.storage.day_of(clock.ms)
    assert kept(sh) == kept(la) == kept(liar) == replayed(la) == replayed(sh)
    # A store folded by "2" (the reader's zone) replays such groups when it opens.
    want, path = kept(la), la.storage.dir
    with la.storage.conn:
        la.storage.conn.execute("DELETE FROM points_lots")  # as if folded otherwise
        la.storage.conn.execute("UPDATE meta SET value = '2' WHERE key = 'points_lots'")
    la.close()
    with Ledger.open(path, now_ms=clock) as again:
        assert kept(again) == want
        assert again.storage.meta["points_lots"] == lots.FOLD


def test_a_merge_cycle_is_one_pool_from_its_first_merge(tmp_path: Path) -> None:
    """SH01 merges A into B and redeems 150 of their 200 points; SH02, apart, merges B
    into A. The cycle's survivor is A, and the fold ignored A's own pointer: A and B
    folded apart until SH02's merge, the redemption became B's alone, a debt of 50,
    the member's 50 points expired with A's lot on 31 January instead of B's on 10
    February, and the debt then ate the member's next points."""
    clock = FakeClock()
    a, b = (new_ledger(tmp_path, n, now_ms=clock) for n in ("SH01", "SH02"))
    a.set_rule(a.owner, "earn", {"points_per_yuan": "1", "expire_days": 30},
               effective_from="2025-01-01")
    x = a.add_member(a.owner, name="甲", phone="13800000001")
    y = b.add_member(b.owner, name="甲", phone="138-0000-0001")  # registered apart
    sync(a, b)
    a.debit(a.owner, x, amount=10_000, pay="cash")  # expires 31 January
    clock.advance_days(10)
    a.debit(a.owner, y, amount=10_000, pay="cash")  # expires 10 February
    sync(a, b)
    clock.advance_days(1)
    a.merge_member(a.owner, x, y)
    a.redeem_points(a.owner, y, 150, "towel")
    told = views.points(a, y)
    clock.ms += 5
    b.merge_member(b.owner, y, x)  # apart, the other way round
    sync(a, b)
    for ledger in (a, b):
        assert views.points(ledger, x)["lots"] == told["lots"], ledger.node
        assert kept(ledger) == replayed(ledger)
    clock.advance_days(25)  # past 31 January, before 10 February
    a.housekeeping()
    b.housekeeping()
    sync(a, b)
    assert views.points(a, x)["usable"] == 50


def _merge_noted_at(liar: Ledger, note_id: str, member: str, into: str) -> None:
    """`liar` merges `member` into `into` with its audit note keyed `note_id`, not its
    change's own id (member documents carry no rule on notes)."""
    from crdtledger import merge

    real = merge.note_edit
    merge.note_edit = lambda rec, change, op, fields: real(rec, note_id, op, fields)
    try:
        liar.merge_member(liar.owner, member, into)
    finally:
        merge.note_edit = real


def test_a_merge_noted_at_an_entrys_own_id_is_folded_alike_everywhere(tmp_path: Path) -> None:
    """A liar's merge noted at the exact id of an honest redemption: a replay counts a
    merge only after its id, the incremental fold counted it at the tie, so the
    replica that got the merge first held other lots than the others, for good."""
    from crdtledger.log import Batch

    clock = FakeClock()
    h, liar, r = (new_ledger(tmp_path, n, now_ms=clock) for n in ("SH01", "SH02", "SH03"))
    h.set_rule(h.owner, "earn", {"points_per_yuan": "1", "expire_days": 30},
               effective_from="2025-01-01")
    s = h.add_member(h.owner, name="甲", phone="13800000001")
    m = h.add_member(h.owner, name="乙", phone="13800000002")
    h.debit(h.owner, s, amount=10_000, pay="cash")
    clock.advance_days(10)
    h.debit(h.owner, m, amount=10_000, pay="cash")
    sync(h, liar)
    sync(h, r)
    clock.advance_days(1)
    x = h.redeem_points(h.owner, m, 50, "towel")["id"]
    sync(h, liar)
    clock.ms += 5
    _merge_noted_at(liar, x, m, s)
    own = [rec for rec in liar.lacking(r.log_view()) if rec.node == "SH02"]
    r.apply_batch(Batch(own, {"SH02": liar.own_head()}, {"SH02": liar.trust.cert_der}))
    for a, b in ((h, r), (h, liar), (liar, r)):
        sync(a, b)
    for ledger in (h, liar, r):
        assert kept(ledger) == replayed(ledger), ledger.node
    assert kept(h) == kept(liar) == kept(r)


def test_a_merge_noted_ahead_of_every_entry_replays_nothing_at_each_sale(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A liar's merge noted far ahead ("~"): the fold took it for a merge later than
    every new entry, and each sale of the member replayed its whole history at every
    branch (112 ms a sale at 3,000 entries). No merge has taken effect for any entry:
    each member folds alone, without a replay."""
    clock = FakeClock()
    h, liar = new_ledger(tmp_path, "SH01", now_ms=clock), new_ledger(tmp_path, "SH02",
                                                                      now_ms=clock)
    h.set_rule(h.owner, "earn", {"points_per_yuan": "1", "expire_days": 365},
               effective_from="2025-01-01")
    m = h.add_member(h.owner, name="regular", phone="13800000001")
    for _ in range(30):
        h.debit(h.owner, m, amount=100, pay="cash")
        clock.ms += 1000
    sync(h, liar)
    made_up = liar.add_member(liar.owner, name="x", phone="13800000009")
    _merge_noted_at(liar, "~", made_up, m)
    sync(h, liar)
    replays: list[object] = []
    real = lots.replay
    monkeypatch.setattr(lots, "replay", lambda *a, **k: replays.append(a) or real(*a, **k))
    for _ in range(5):
        h.debit(h.owner, m, amount=100, pay="cash")
        clock.ms += 1000
    assert replays == []
    monkeypatch.undo()
    assert kept(h) == replayed(h)


def _take_by_sorting(lots_: list[lots.Lot], n: int, kind: str, ref: str | None, day: str,
                     took: list[tuple[lots.Lot, int]]) -> int:
    """`take` as first written, the definition: every lot sorted, the preferred first."""
    by_expiry = sorted((lot for lot in lots_ if lot[1] > 0), key=lambda lot: (lot[0], lot[2]))
    order = [lot for lot in by_expiry if (lot[0] < day if kind == "expiry" else lot[0] >= day)]
    if kind in ("refund", "expiry") and ref:
        order = [lot for lot in order if lot[2] == ref] + [lot for lot in order if lot[2] != ref]
    rest = [] if kind == "expiry" else [lot for lot in by_expiry if lot not in order]
    for lot in order + rest:
        got = min(lot[1], n)
        lot[1] -= got
        n -= got
        if got:
            took.append((lot, got))
        if not n:
            break
    return n


_days = st.sampled_from(["2026-01-01", "2026-01-05", "2026-02-01", "2026-03-01", "9999-12-31"])
_lot = st.tuples(_days, st.integers(-5, 40))


@settings(max_examples=400, deadline=None)
@given(st.lists(_lot, max_size=12), st.integers(0, 120),
       st.sampled_from(["debit", "redeem", "refund", "expiry"]),
       st.sampled_from([None, "E0", "E3", "E9"]), _days, st.booleans())
def test_take_takes_what_sorting_every_lot_took(raw: list[tuple[str, int]], n: int, kind: str,
                                                ref: str | None, day: str, indexed: bool
                                                ) -> None:
    """The one-pass `take` (a liar's ten thousand lots made every spend sort them all),
    with or without its index by earning entry, leaves the same lots, says the same
    shortfall and the same lots taken from."""
    mine = [[expires, left, f"E{i}", "M1"] for i, (expires, left) in enumerate(raw)]
    theirs = [list(lot) for lot in mine]
    took: list[tuple[lots.Lot, int]] = []
    want: list[tuple[lots.Lot, int]] = []
    index = {lot[2]: lot for lot in mine} if indexed else None
    assert lots.take(mine, n, kind, ref, day, took, index) == _take_by_sorting(
        theirs, n, kind, ref, day, want)
    assert mine == theirs
    assert [(lot[2], got) for lot, got in took] == [(lot[2], got) for lot, got in want]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(-50, 50), st.sampled_from(["debit", "redeem"]), _days),
                max_size=25))
def test_a_pool_that_knows_it_owes_nothing_folds_as_a_list(
        rows: list[tuple[int, str, str]]) -> None:
    """A replay's pool skips the scan for debts when none can be owed: the same lots."""
    _fold_both(lots.Pool(), [], rows)


@settings(max_examples=300, deadline=None)
@given(st.lists(_lot, max_size=8),
       st.lists(st.tuples(st.integers(-50, 50), st.sampled_from(["debit", "redeem"]), _days),
                max_size=25))
def test_a_pool_loaded_from_the_table_folds_as_a_list(
        table: list[tuple[str, int]], rows: list[tuple[int, str, str]]) -> None:
    """`_update`'s lots, read from the table (debts among them or not), know whether
    any is owed, and skip the scan for debts only when none is: the same lots as a
    plain list, taken to owe, gives."""
    start = [[expires, left, f"D{i:03d}", "M1"] for i, (expires, left) in enumerate(table)
             if left]  # the table holds the lots with points left, owed or not
    pool, plain = lots.Pool.loaded(list(lot) for lot in start), [list(lot) for lot in start]
    assert pool.owes == any(lot[1] < 0 for lot in start)
    _fold_both(pool, plain, rows)


def _fold_both(pool: lots.Pool, plain: list[Any], rows: list[tuple[int, str, str]]) -> None:
    """Fold `rows` (change, kind, day) into both; they hold the same lots at each step."""
    for i, (change, kind, day) in enumerate(rows):
        row = ("M1", f"E{i:03d}", change, kind, None, "2026-02-01" if change > 0 else None,
               day)
        lots._step(pool, row)
        lots._step(plain, row)
        assert list(pool) == plain


def test_a_spend_among_many_lots_compares_no_lot_with_another() -> None:
    """A liar's thousands of lots of a point: each honest spend tested every lot for
    membership in the list of those it may take (a comparison per pair: 3.3 s for a
    redemption at 10,000 lots). Counted, not timed: the spend compares no two lots,
    and takes from the soonest to expire."""
    compared = [0]

    class Counted(list[Any]):
        __hash__ = None  # type: ignore[assignment]

        def __eq__(self, other: object) -> bool:
            compared[0] += 1
            return list.__eq__(self, other)

    pool: list[lots.Lot] = [Counted([f"2027-01-{1 + i % 28:02d}", 1, f"E{i:05d}", "M1"])
                            for i in range(2000)]
    assert lots.take(pool, 1, "redeem", None, "2026-06-01") == 0
    assert compared == [0]  # 2,000,000 and more before
    assert [lot[2] for lot in pool if lot[1] == 0] == ["E00000"]


_DAILY = {"name": "每日签到", "from": "2025-01-01T00:00", "to": "2027-01-01T00:00",
          "points": 1, "repeat": "daily", "per_day": 100}


def _lines_in_lots(fn: Any) -> int:
    """Lines crdtledger/lots.py runs while `fn` runs (a loop's every turn is one, a
    generator's too): a count of its work, the same on any machine."""
    count = [0]

    def local(_frame: Any, event: str, _arg: Any) -> Any:
        if event == "line":
            count[0] += 1
        return local

    def trace(frame: Any, _event: str, _arg: Any) -> Any:
        return local if frame.f_code.co_filename == lots.__file__ else None

    sys.settrace(trace)
    try:
        fn()
    finally:
        sys.settrace(None)
    return count[0]


def _receive_checkins(tmp_path: Path, n: int) -> int:
    """HZ01 (a valid key of its own) signs `n` check-ins of one member, 100 a day on
    the days before, in records of ten: SH01 receives them in one batch; the lines
    of lots.py that took, counted, and the member's points checked."""
    clock = FakeClock()
    sh = new_ledger(tmp_path / str(n), "SH01", now_ms=clock)
    hz = new_ledger(tmp_path / str(n), "HZ01", now_ms=clock)
    try:
        sh.set_activity(sh.owner, "DAILY", _DAILY)
        m = sh.add_member(sh.owner, name="张伟", phone="13812345678")
        sync(sh, hz)
        clock.advance_days(n // 100 + 2)
        forger = Forger(hz)
        for j in range(0, n, 10):
            entries = []
            for i in range(j, min(j + 10, n)):
                at = clock.ms - (i // 100 + 1) * 86_400_000 + (i % 100) * 1000
                eid = HybridClock("HZ01", now_ms=lambda at=at: at).mint()
                entries.append({"id": eid, "kind": "checkin", "member": m, "node": "HZ01",
                                "op": "x", "at": id_time_ms(eid), "amount": 0,
                                "deltas": [["points", "HZ01", 1]], "activity": "DAILY",
                                "points": 1, "repeat": "daily", "per_day": 100})

            def put(doc: Doc[Any], entries: list[dict[str, Any]] = entries) -> None:
                for e in entries:
                    doc.get("entries", type=Map)[e["id"]] = e

            forger.write(entry_doc(entries[0]["id"], hz.storage.day_of), put)
        lines = _lines_in_lots(lambda: sh.apply_batch(forger.batch()))
        assert sh.faults() == []
        assert kept(sh) == replayed(sh)
        assert sum(lot[3] for lot in kept(sh)) == n
        return lines
    finally:
        sh.close()
        hz.close()


def test_a_batch_of_many_earnings_of_one_member_does_not_scan_its_lots_each(
        tmp_path: Path) -> None:
    """The fold of a batch's new entries held the member's lots in a plain list, taken
    to owe: every earning scanned every lot for debts, the batch's own new lots among
    them (16,000 check-ins of one member: 5.0 s to receive, 0.47 s for 4,000). Its
    lots now know whether any is owed: four times the earnings, about four times the
    work."""
    n = 300
    small = _receive_checkins(tmp_path, n)
    big = _receive_checkins(tmp_path, 4 * n)
    assert big / small < 5, (small, big)
