"""What names an entry is booked after it (fourteenth wave): a check-in's reversal, a
referral's reward and what its branch takes back or gives back of it, a member merge's
sweep and an exit's decision, each written by a PC whose clock ran days ahead and was
put right (a new era of lower ids, crdtledger.hlc), as a refund after its sale
(test_refund_dates).

Real components: library ledgers on real SQLite files, synced by real sessions
(helpers.sync), each on its own hand-moved clock."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from helpers import FakeClock, new_ledger, sync

from crdtledger import closing
from crdtledger.hlc import MAX_CLOCK_SKEW_MS, id_time_ms
from crdtledger.ledger import Ledger

SH = ZoneInfo("Asia/Shanghai")


def _ms(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=SH).timestamp() * 1000)


def _day(ledger: Ledger, ident: str) -> str:
    return ledger.storage.day_of(id_time_ms(ident))


def _january(*branches: tuple[Ledger, FakeClock]) -> dict[str, dict[str, int]]:
    """January closed at every branch (on 10 February), as the first reads it: each
    member's balances then."""
    for ledger, clock in branches:
        clock.ms = _ms("2026-02-10T09:00")
        assert closing.close_due_month(ledger) == "2026-01"
    first = branches[0][0]
    for other, _clock in branches[1:]:
        sync(first, other)
    return {r["member"]: r for r in closing.member_balances(first, "2026-01")["members"]}


def test_a_surplus_check_in_made_while_the_clock_ran_ahead_is_reversed_after_it(
        tmp_path: Path) -> None:
    """Cut off, the member checks in once at SH02 and once at HZ01, whose clock runs
    three days ahead (booked 2 February); its clock put right, HZ01 reverses its
    surplus check-in by an id dated 30 January, before the check-in: January's closing
    gave the member -50 points she never held."""
    hz_clock, sh_clock = FakeClock(_ms("2026-01-30T10:00")), FakeClock(_ms("2026-01-30T10:00"))
    hz = new_ledger(tmp_path, "HZ01", now_ms=hz_clock)
    sh = new_ledger(tmp_path, "SH02", now_ms=sh_clock)
    try:
        hz.set_activity(hz.owner, "ONCE", {
            "name": "新春打卡", "from": "2026-01-01T00:00", "to": "2026-03-01T00:00",
            "points": 50, "repeat": "once", "per_day": 1})
        m = hz.add_member(hz.owner, name="李娜", phone="13800138009")
        sync(hz, sh)
        sh.checkin(sh.owner, "ONCE", m)
        hz_clock.advance_days(3)  # cut off, the PC runs three days ahead for an hour
        mine = hz.checkin(hz.owner, "ONCE", m)
        assert _day(hz, mine["id"]) == "2026-02-02"
        hz_clock.advance_days(-3)
        hz_clock.ms += 3_600_000  # put right: 30 January, 11:00
        sync(hz, sh)
        [rev] = hz.reconcile_checkins()
        assert rev["ref"] == mine["id"]
        assert rev["id"] > mine["id"] and _day(hz, rev["id"]) == "2026-02-02"
        assert hz.balance(m)["points"] == 50
        # The next operation is booked by the right time again.
        later = hz.topup(hz.owner, m, 100)
        assert _day(hz, later["id"]) == "2026-01-30"
        january = _january((hz, hz_clock), (sh, sh_clock))
        assert january[m]["points"] == 50  # SH02's check-in, nothing taken back
    finally:
        hz.close()
        sh.close()


def test_a_peers_id_far_ahead_is_not_followed(tmp_path: Path) -> None:
    """The helper follows another branch's id no further ahead than its clock would be
    adopted: a peer days ahead must not drag this branch's ids (and its clock check)
    into the future. Its own ids it follows however far."""
    clock = FakeClock(_ms("2026-01-30T10:00"))
    hz = new_ledger(tmp_path, "HZ01", now_ms=clock)
    try:
        now = clock()
        peer = f"{'Z' * 13}.SH02"  # the end of time, from another branch
        with hz._booked_after(peer, "not an id"):
            assert hz.clock.floor_ms <= now + MAX_CLOCK_SKEW_MS
        assert hz.clock.floor_ms < now
        own = f"{'Z' * 13}.HZ01"
        with hz._booked_after(own):
            assert hz.clock.floor_ms == id_time_ms(own) + 1
        assert hz.clock.floor_ms < now
    finally:
        hz.close()


def _managers(ledger: Ledger) -> tuple[str, str]:
    o = ledger.owner
    return (ledger.add_operator(o, "mgr", "secret1", ["manager"]),
            ledger.add_operator(o, "mgr2", "secret2", ["manager"]))


def _referral_rule(ledger: Ledger) -> tuple[str, str, str, str]:
    """Two managers, a referral reward of 50.00 bonus, a referrer and a newcomer."""
    mgr, mgr2 = _managers(ledger)
    ledger.set_rule(ledger.owner, "referral", {"reward": "bonus", "bonus": 5000})
    old = ledger.add_member(ledger.owner, name="老王", phone="13800000001")
    new = ledger.add_member(ledger.owner, name="小李", phone="13800000002")
    return mgr, mgr2, old, new


def test_a_referral_approved_while_the_clock_ran_ahead_is_rewarded_after_it(
        tmp_path: Path) -> None:
    """HZ01 records a referral and its level-1 approval while its clock runs three days
    ahead; its clock put right, the level-2 approval (and the reward, in its commit)
    was dated before both: read in id order the level-2 came before level 1, so the
    view named no level-2 approver and the reward, granted on 30 January for a
    referral of 2 February, counted as unapproved (`_granted_in`)."""
    clock = FakeClock(_ms("2026-01-30T10:00"))
    hz = new_ledger(tmp_path, "HZ01", now_ms=clock)
    try:
        mgr, mgr2, old, new = _referral_rule(hz)
        clock.advance_days(3)
        r = hz.refer(hz.owner, new, old)["id"]
        hz.approve_referral(mgr, r, 1)
        clock.advance_days(-3)
        clock.ms += 3_600_000
        view = hz.referral_view(r)
        assert view["status"] == "approved1"
        view = hz.approve_referral(mgr2, r, 2)
        assert (view["status"], view["level1"], view["level2"]) == ("granted", mgr, mgr2)
        assert view["reward"] > r and _day(hz, view["reward"]) == "2026-02-02"
        assert hz.balance(old)["bonus"] == 5000
    finally:
        hz.close()


def test_a_reward_granted_while_the_clock_ran_ahead_is_taken_back_after_it(
        tmp_path: Path) -> None:
    """Cut off, SH02 and HZ01 each record, approve and reward the referral of one
    newcomer, HZ01 while its clock runs three days ahead (so its referral is the later,
    void one). Its clock put right, HZ01 took its reward back by an id dated 30
    January, before the grant: the take-back then read as the referral's grant (the
    first by id), and January's closing gave the referrer 50.00 of bonus taken back
    before she had it, and again at every housekeeping pass."""
    hz_clock, sh_clock = FakeClock(_ms("2026-01-30T10:00")), FakeClock(_ms("2026-01-30T10:00"))
    hz = new_ledger(tmp_path, "HZ01", now_ms=hz_clock)
    sh = new_ledger(tmp_path, "SH02", now_ms=sh_clock)
    try:
        mgr, mgr2, old, new = _referral_rule(hz)
        sync(hz, sh)
        first = sh.refer(sh.owner, new, old)["id"]
        sh.approve_referral(mgr, first, 1)
        sh.approve_referral(mgr2, first, 2)
        hz_clock.advance_days(3)
        late = hz.refer(hz.owner, new, old)["id"]
        hz.approve_referral(mgr, late, 1)
        grant = hz.approve_referral(mgr2, late, 2)["reward"]
        hz_clock.advance_days(-3)
        hz_clock.ms += 3_600_000
        sync(hz, sh)
        assert hz.balance(old)["bonus"] == 10000
        hz.housekeeping()
        hz.housekeeping()  # once
        assert hz.settle_referral_rewards() == []
        [back] = [e for e in _entries_naming(hz, late) if e.get("reason") == "void"]
        assert back["id"] > grant and _day(hz, back["id"]) == "2026-02-02"
        view = hz.referral_view(late)
        assert (view["status"], view["reward"], view["taken_back"]) == ("void", grant,
                                                                        back["id"])
        assert hz.balance(old)["bonus"] == 5000
        january = _january((hz, hz_clock), (sh, sh_clock))
        # SH02's grant; HZ01's, and what it took back of it, on 2 February.
        assert january[old]["bonus"] == 5000
    finally:
        hz.close()
        sh.close()


def _entries_naming(ledger: Ledger, ref: str) -> list[dict[str, object]]:
    return [json.loads(b) for (b,) in ledger.storage.conn.execute(
        "SELECT body FROM entries WHERE ref = ? ORDER BY id", (ref,))]


def test_a_merge_sweeps_what_was_topped_up_while_the_clock_ran_ahead_after_it(
        tmp_path: Path) -> None:
    """HZ01 registers a newcomer twice and tops up the duplicate 1,000.00 while its
    clock runs three days ahead; its clock put right, the merge swept the duplicate's
    cash to the survivor by a pair dated 30 January, before the top-up: January's
    closing gave the duplicate -1,000.00 and the survivor 1,000.00, neither of which
    they held then."""
    clock = FakeClock(_ms("2026-01-30T10:00"))
    hz = new_ledger(tmp_path, "HZ01", now_ms=clock)
    try:
        o = hz.owner
        keep = hz.add_member(o, name="李娜", phone="13800138009")
        clock.advance_days(3)
        dup = hz.add_member(o, name="李娜", phone="13800138019")
        top = hz.topup(o, dup, 100_000)
        clock.advance_days(-3)
        clock.ms += 3_600_000
        moved = hz.merge_member(o, dup, keep)["entries"]
        assert [e["member"] for e in moved] == [dup, keep]
        assert all(e["id"] > top["id"] and _day(hz, e["id"]) == "2026-02-02" for e in moved)
        assert hz.balance(keep)["cash"] == 100_000
        assert hz.sweep_merged() == []
        later = hz.topup(o, keep, 100)  # the right time again
        assert _day(hz, later["id"]) == "2026-01-30"
        january = _january((hz, clock))
        assert january.get(dup, {}).get("cash", 0) == 0
        assert january[keep]["cash"] == 100  # the top-up of 30 January, nothing swept
    finally:
        hz.close()


def test_an_exit_applied_for_while_the_clock_ran_ahead_is_settled_after_it(
        tmp_path: Path) -> None:
    """A member tops up 500.00 and applies to leave at HZ01 while its clock runs three
    days ahead; its clock put right, the approval and the settlement paying her
    500.00 back were dated 30 January, before the application and the top-up:
    January's closing gave her -500.00."""
    clock = FakeClock(_ms("2026-01-30T10:00"))
    hz = new_ledger(tmp_path, "HZ01", now_ms=clock)
    try:
        o = hz.owner
        mgr, _mgr2 = _managers(hz)
        m = hz.add_member(o, name="李娜", phone="13800138009")
        clock.advance_days(3)
        top = hz.topup(o, m, 50_000)
        app = hz.apply_exit(o, m, "搬家")["application"]
        clock.advance_days(-3)
        clock.ms += 3_600_000
        view = hz.decide_exit(mgr, app, pay="cash")
        assert view["status"] == "approved"
        [settle] = [e for e in _entries_naming(hz, app) if e["kind"] == "exit_settle"]
        [decision] = [e for e in _entries_naming(hz, app) if e["kind"] == "approval"]
        for e in (settle, decision):
            assert e["id"] > max(app, top["id"]) and _day(hz, e["id"]) == "2026-02-02"
        assert settle["paid"] == 50_000 and hz.balance(m)["cash"] == 0
        january = _january((hz, clock))
        assert january.get(m, {}).get("cash", 0) == 0
    finally:
        hz.close()
