"""Membership workflows (issue 16, parts 4-6): referral with two approvals, check-in
activities, member exit and return.

Real components: library ledgers on real SQLite files, two replicas synced by real
sessions (helpers.sync) and partitioned by simply not syncing them, a forger writing
its own signed log (helpers.Forger), and the `crdtledger` command line as a process on
a real data directory. Every refusal is checked to change nothing (test_ledger.refused).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Cli
from helpers import (
    FakeClock,
    Forger,
    data_snapshot,
    full_scans,
    name_branches,
    new_ledger,
    sync,
)
from test_ledger import refused
from test_sync_protocol import _fresh, _greet
from transport_suite import SimAdapter

from crdtledger import operations, settlement, views
from crdtledger.errors import InvalidInput, NotFound, PermissionDenied, RightsElsewhere
from crdtledger.hlc import encode, id_time_ms
from crdtledger.ledger import Ledger
from crdtledger.membership import attendance_csv_rows

# FakeClock starts at 2026-01-01T00:00Z: 08:00 in Shanghai, the chain's time zone.
OPEN = {"name": "晨练打卡", "from": "2025-12-31T09:00", "to": "2026-01-10T21:00",
        "points": 10, "repeat": "daily", "per_day": 1}


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def a(tmp_path: Path, clock: FakeClock) -> Iterator[Ledger]:
    ledger = new_ledger(tmp_path, "SH01", now_ms=clock)
    yield ledger
    ledger.close()


@pytest.fixture
def b(tmp_path: Path, clock: FakeClock) -> Iterator[Ledger]:
    ledger = new_ledger(tmp_path, "SH02", now_ms=clock)
    yield ledger
    ledger.close()


class Staff:
    """Operators of the chain: two managers, a cashier, a level-2-only approver."""

    def __init__(self, ledger: Ledger) -> None:
        o = ledger.owner
        ledger.define_role(o, "hq", ["referral.approve2", "member.exit.approve"])
        self.mgr = ledger.add_operator(o, "mgr", "secret1", ["manager"])
        self.mgr2 = ledger.add_operator(o, "mgr2", "secret2", ["manager"])
        self.cashier = ledger.add_operator(o, "cashier", "secret3", ["cashier"])
        self.hq = ledger.add_operator(o, "hq", "secret4", ["hq"])


def two_members(ledger: Ledger) -> tuple[str, str]:
    old = ledger.add_member(ledger.owner, name="老王", phone="13800000001")
    new = ledger.add_member(ledger.owner, name="小李", phone="13800000002")
    return old, new


def rewards(ledger: Ledger, referral: str) -> list[dict[str, Any]]:
    return [json.loads(b) for (b,) in ledger.storage.conn.execute(
        "SELECT body FROM entries WHERE ref = ? AND kind IN ('reward', 'coupon')", (referral,))]


# --- referral --------------------------------------------------------------------------------


def test_a_referral_is_rewarded_after_two_approvals_by_two_operators(a: Ledger) -> None:
    staff = Staff(a)
    a.set_rule(a.owner, "referral", {"reward": "points", "points": 200})
    old, new = two_members(a)
    r = a.refer(staff.cashier, new, old)["id"]
    assert a.referral_view(r)["status"] == "pending"
    # level 2 before level 1, level 1 by the operator who recorded it: refused
    refused(a, [old, new], InvalidInput, lambda: a.approve_referral(staff.mgr, r, 2),
            match="level 1 approval first")
    assert a.approve_referral(staff.mgr, r, 1)["status"] == "approved1"
    assert a.balance(old)["points"] == 0
    # the level-1 approver cannot give level 2; a cashier holds neither permission
    refused(a, [old, new], PermissionDenied, lambda: a.approve_referral(staff.mgr, r, 2),
            match="level 2 needs another operator")
    refused(a, [old, new], PermissionDenied, lambda: a.approve_referral(staff.cashier, r, 2))
    refused(a, [old, new], InvalidInput, lambda: a.approve_referral(staff.mgr2, r, 1),
            match="level 1 approval already")
    v = a.approve_referral(staff.hq, r, 2)
    assert v["status"] == "granted" and (v["level1"], v["level2"]) == (staff.mgr, staff.hq)
    assert a.balance(old)["points"] == 200 and a.balance(new)["points"] == 0
    # approved twice: nothing more to approve, and nothing granted twice
    refused(a, [old, new], InvalidInput, lambda: a.approve_referral(staff.mgr2, r, 2))
    assert a.grant_due_referrals() == []
    assert len(rewards(a, r)) == 1


def test_referral_refusals_change_nothing(a: Ledger) -> None:
    staff = Staff(a)
    old, new = two_members(a)
    refused(a, [old], InvalidInput, lambda: a.refer(a.owner, old, old), match="themself")
    refused(a, [old], NotFound, lambda: a.refer(a.owner, new, "0000000000009.SH01"))
    refused(a, [old], NotFound, lambda: a.refer(a.owner, "0000000000009.SH01", old))
    r = a.refer(a.owner, new, old)["id"]
    third = a.add_member(a.owner, name="小张", phone="13800000003")
    refused(a, [old, new], InvalidInput, lambda: a.refer(a.owner, new, third),
            match="referred already")
    refused(a, [old, new], PermissionDenied, lambda: a.approve_referral(a.owner, r, 1),
            match="recorded referral")
    refused(a, [old, new], PermissionDenied, lambda: a.approve_referral(staff.hq, r, 1))


def test_a_referrer_who_joined_later_or_was_referred_by_the_member_is_refused(
        a: Ledger, clock: FakeClock) -> None:
    """老带新 backwards: an old member "referred" by one who joined after her, and two
    members each recorded as the other's referrer, were both rewarded."""
    a.set_rule(a.owner, "referral", {"reward": "points", "points": 500})
    old = a.add_member(a.owner, name="老王", phone="13800000001")
    clock.advance_days(1)
    new = a.add_member(a.owner, name="小李", phone="13800000002")
    refused(a, [old, new], InvalidInput, lambda: a.refer(a.owner, old, new),
            match=r"joined on 2026-01-02 08:00:00, after member .* \(on 2026-01-01 "
                  r"08:00:00\), and cannot have referred them")
    a.refer(a.owner, new, old)
    # Joined in the same millisecond (this clock stands still): the pair is refused
    # by who referred whom.
    p = a.add_member(a.owner, name="小张", phone="13800000003")
    q = a.add_member(a.owner, name="小赵", phone="13800000004")
    a.refer(a.owner, q, p)
    refused(a, [p, q], InvalidInput, lambda: a.refer(a.owner, p, q),
            match="was referred by member .*: two members cannot refer each other")


def test_a_referrer_joined_by_a_clock_far_ahead_adds_nobody(tmp_path: Path) -> None:
    """A referrer registered at a branch whose clock ran a day ahead: a member added
    here now with that referrer would join before them, and the referral be refused
    after she was added. Refused before anyone is added, naming the clock."""
    here, ahead = FakeClock(), FakeClock()
    ahead.advance_days(1)
    a, b = new_ledger(tmp_path, "SH01", now_ms=here), new_ledger(tmp_path, "SH02", now_ms=ahead)
    try:
        name_branches(a, "SH01", "SH02")
        early = b.add_member(b.owner, name="老王", phone="13800000001")
        sync(a, b)
        before = data_snapshot(a)
        with pytest.raises(InvalidInput, match=r"joined on 2026-01-02 08:00:00, later than "
                           r"this branch's clock reads \(2026-01-01 08:00:00\)"):
            operations.run(a, a.owner, "member.add", {
                "name": "小李", "phone": "13800000002", "referrer": early})
        assert data_snapshot(a) == before
    finally:
        a.close()
        b.close()


def test_cli_refuses_a_backwards_referral(cli: Cli, tmp_path: Path) -> None:
    data = tmp_path / "sh01"
    assert cli("init", "--node", "SH01", data=data).code == 0
    old = cli("member", "add", "--name", "甲", "--phone", "13800000001", "--json",
              data=data).json()["member_id"]
    new = cli("member", "add", "--name", "乙", "--phone", "13800000002", "--referrer", old,
              "--json", data=data).json()["member_id"]
    bad = cli("referral", "add", "--member", old, "--referrer", new, "--json", data=data)
    refusal = json.loads(bad.out)
    assert bad.code != 0 and refusal["error"] == "invalid_input"
    assert f"{new} joined on" in refusal["message"], refusal
    assert len(cli("referral", "list", "--json", data=data).json()) == 1


def test_a_rejected_referral_gives_nothing(a: Ledger) -> None:
    staff = Staff(a)
    a.set_rule(a.owner, "referral", {"reward": "bonus", "bonus": 5000})
    old, new = two_members(a)
    r = a.refer(a.owner, new, old)["id"]
    a.approve_referral(staff.mgr, r, 1)
    v = a.approve_referral(staff.hq, r, 2, reject=True, reason="同一家人")
    assert v["status"] == "rejected" and v["rejected_by"] == staff.hq
    refused(a, [old, new], InvalidInput, lambda: a.approve_referral(staff.mgr2, r, 2),
            match="rejected already")
    assert a.grant_due_referrals() == [] and rewards(a, r) == []
    assert a.balance(old)["bonus"] == 0


def test_a_coupon_reward_is_a_coupon_of_the_referrer(a: Ledger) -> None:
    staff = Staff(a)
    a.set_rule(a.owner, "referral", {"reward": "coupon", "off": 2000, "valid_days": 30})
    old, new = two_members(a)
    r = a.refer(a.owner, new, old)["id"]
    a.approve_referral(staff.mgr, r, 1)
    a.approve_referral(staff.mgr2, r, 2)
    [c] = a.coupons(old)
    assert (c["off"], c["reason"], c["status"], c["valid_to"]) == (2000, "referral",
                                                                   "available", "2026-01-30")


def test_approvals_at_two_cut_off_branches_grant_once(a: Ledger, b: Ledger) -> None:
    """Level 2 given at SH01 and at SH02 while they are cut off: only SH01, which
    recorded the referral, grants; SH02's approval only adds a second 'yes'."""
    staff = Staff(a)
    a.set_rule(a.owner, "referral", {"reward": "points", "points": 300})
    old, new = two_members(a)
    r = a.refer(a.owner, new, old)["id"]
    a.approve_referral(staff.mgr, r, 1)
    sync(a, b)
    # partitioned: both give level 2, by different operators
    b.approve_referral(staff.hq, r, 2)
    assert b.referral_view(r)["status"] == "approved"  # SH02 does not grant
    assert b.grant_due_referrals() == []  # not its referral
    a.approve_referral(staff.mgr2, r, 2)
    assert a.referral_view(r)["status"] == "granted"
    sync(a, b)
    assert a.grant_due_referrals() == [] and b.grant_due_referrals() == []
    for x in (a, b):
        assert len(rewards(x, r)) == 1 and x.balance(old)["points"] == 300
        assert x.referral_view(r)["status"] == "granted"


def test_the_recording_branch_grants_when_approvals_reach_it(a: Ledger, b: Ledger) -> None:
    staff = Staff(a)
    a.set_rule(a.owner, "referral", {"reward": "points", "points": 100})
    old, new = two_members(a)
    r = a.refer(a.owner, new, old)["id"]
    sync(a, b)
    b.approve_referral(staff.mgr, r, 1)
    b.approve_referral(staff.hq, r, 2)
    sync(a, b)
    assert a.referral_view(r)["status"] == "approved"
    [got] = a.housekeeping()  # the node's daily pass (and `referral grant`) grants it
    assert got["kind"] == "reward" and got["node"] == "SH01"
    sync(a, b)
    assert b.referral_view(r)["status"] == "granted" and b.balance(old)["points"] == 100


def test_an_approval_by_an_operator_without_the_permission_does_not_count(a: Ledger, b: Ledger
                                                                         ) -> None:
    """A lying SH02 writes level-1 and level-2 approvals in a cashier's and the
    recorder's names (its own log: no write rule stops it): they count nowhere, so
    nothing is granted."""
    staff = Staff(a)
    a.set_rule(a.owner, "referral", {"reward": "points", "points": 100})
    old, new = two_members(a)
    r = a.refer(a.owner, new, old)["id"]
    sync(a, b)
    for op, step in ((staff.cashier, "1"), (a.owner, "1"), (staff.hq, "2")):
        b._post(b._entry("approval", new, ref=r, step=step, op=op), {})
    sync(a, b)
    assert a.referral_view(r)["status"] == "pending"
    assert a.grant_due_referrals() == [] and a.balance(old)["points"] == 0


def test_concurrent_referrals_of_one_member_count_the_first(a: Ledger, b: Ledger) -> None:
    old, new = two_members(a)
    third = a.add_member(a.owner, name="小张", phone="13800000003")
    sync(a, b)
    r1 = a.refer(a.owner, new, old)["id"]
    r2 = b.refer(b.owner, new, third)["id"]
    sync(a, b)
    first, second = sorted([r1, r2])
    for x in (a, b):
        assert x.referral_view(first)["status"] == "pending"
        assert x.referral_view(second)["status"] == "void"


def test_a_referral_rewarded_at_two_branches_apart_is_taken_back_by_the_second(
        a: Ledger, b: Ledger) -> None:
    """Two branches cut off from each other each recorded, approved and rewarded the
    referral of one newcomer: the referrer held the reward twice, for good (only a
    reward not yet granted was void). The branch whose referral is not the first takes
    its reward back at its housekeeping, as far as the referrer still holds it there,
    and says what it took."""
    staff = Staff(a)
    a.set_rule(a.owner, "referral", {"reward": "bonus", "bonus": 5000})
    old, new = two_members(a)
    sync(a, b)
    ids = {}
    for x in (a, b):  # apart
        ids[x.node] = x.refer(x.owner, new, old)["id"]
        x.approve_referral(staff.mgr, ids[x.node], 1)
        assert x.approve_referral(staff.mgr2, ids[x.node], 2)["status"] == "granted"
    second = max(ids.values())
    late = a if ids["SH01"] == second else b
    late.debit(late.owner, old, amount=2000)  # 20.00 of its bonus spent there first
    sync(a, b)
    assert a.balance(old)["bonus"] == 10000 - 2000
    for x in (a, b):
        x.housekeeping()
        x.housekeeping()  # once
    sync(a, b)
    for x in (a, b):
        # Two rewards, less 20.00 spent at the second branch, less the 30.00 it held.
        assert x.balance(old)["bonus"] == 10000 - 2000 - 3000
        view = x.referral_view(second)
        assert view["status"] == "void" and view["taken_back"]
        assert x.referral_view(min(ids.values()))["status"] == "granted"
    [back] = [e for e in rewards(a, second) if e.get("reason") == "void"]
    assert (back["bonus"], back["node"]) == (3000, late.node)


def test_a_granted_referral_is_taken_back_only_for_an_earlier_one_granted(
        a: Ledger, b: Ledger, clock: FakeClock) -> None:
    """The take-back above took an honest referrer's only reward when the earlier
    referral of the newcomer was the copy SH01 rejected as the duplicate it was, or a
    liar's back-dated one nobody approved: only an earlier referral granted too
    makes a granted one void."""
    staff = Staff(a)
    a.set_rule(a.owner, "referral", {"reward": "bonus", "bonus": 5000})
    old, new = two_members(a)
    sync(a, b)
    first = a.refer(a.owner, new, old)["id"]  # apart from here
    clock.ms += 1000
    second = b.refer(b.owner, new, old)["id"]
    a.approve_referral(staff.mgr, first, 1, reject=True, reason="recorded at SH02")
    b.approve_referral(staff.mgr, second, 1)
    assert b.approve_referral(staff.mgr2, second, 2)["status"] == "granted"
    sync(a, b)
    for x in (a, b):
        x.housekeeping()
    sync(a, b)
    for x in (a, b):
        assert x.balance(old)["bonus"] == 5000
        assert x.referral_view(second)["status"] == "granted"
        assert x.referral_view(first)["status"] == "rejected"
    # The rejection arriving before the honest copy is approved: that one still counts.
    third = a.add_member(a.owner, name="小张", phone="13800000003")
    sync(a, b)
    dup = a.refer(a.owner, third, old)["id"]  # apart
    clock.ms += 1000
    honest = b.refer(b.owner, third, old)["id"]
    a.approve_referral(staff.mgr, dup, 1, reject=True, reason="recorded at SH02")
    sync(a, b)
    b.approve_referral(staff.mgr, honest, 1)
    assert b.approve_referral(staff.mgr2, honest, 2)["status"] == "granted"
    assert b.balance(old)["bonus"] == 10000


def test_a_copy_rejected_by_one_who_left_stays_rejected(
        a: Ledger, b: Ledger, clock: FakeClock) -> None:
    """A rejection counted while its giver held the permission: the manager who
    rejected SH01's copy as a duplicate left, the copy (approved twice) read
    "approved" again and housekeeping granted it, after SH02's honest copy had been
    paid and spent: twice for one newcomer. A decision is judged by what its
    operator's roles grant, active or not."""
    staff = Staff(a)
    a.set_rule(a.owner, "referral", {"reward": "bonus", "bonus": 5000})
    old, new = two_members(a)
    sync(a, b)
    dup = a.refer(a.owner, new, old)["id"]  # apart
    clock.ms += 1000
    honest = b.refer(b.owner, new, old)["id"]
    a.approve_referral(staff.mgr2, dup, 1)
    sync(a, b)
    b.approve_referral(staff.hq, dup, 2)
    a.approve_referral(staff.mgr, dup, 1, reject=True, reason="recorded at SH02")
    sync(a, b)
    b.approve_referral(staff.mgr2, honest, 1)
    assert b.approve_referral(staff.hq, honest, 2)["status"] == "granted"
    b.debit(b.owner, old, amount=5000)  # spent
    sync(a, b)
    clock.advance_days(30)
    a.set_operator(a.owner, staff.mgr, active=False)
    sync(a, b)
    for _ in range(2):
        for x in (a, b):
            x.housekeeping()
        sync(a, b)
    for x in (a, b):
        assert x.referral_view(dup)["status"] == "rejected"
        assert x.referral_view(honest)["status"] == "granted"
        assert x.balance(old)["bonus"] == 0  # one reward, spent


def test_a_later_copy_rewarded_by_its_own_branch_unapproved_voids_nothing(
        a: Ledger, b: Ledger, clock: FakeClock) -> None:
    """A liar recorded a later copy of an honest referral naming its accomplice and
    wrote the reward itself, with no approval: the honest referral read void, could
    not be approved, and the liar's copy could not be rejected. Only earlier copies
    void a referral."""
    staff = Staff(a)
    a.set_rule(a.owner, "referral", {"reward": "bonus", "bonus": 5000})
    old, new = two_members(a)
    accomplice = a.add_member(a.owner, name="老李", phone="13800000009")
    sync(a, b)
    honest = a.refer(a.owner, new, old)["id"]
    a.approve_referral(staff.mgr, honest, 1)
    clock.ms += 1000
    forged = b.refer(b.owner, new, accomplice)
    b._commit(lambda: ([b._entry_write(b._reward(forged))], None))  # the liar's own grant
    sync(a, b)
    assert a.approve_referral(staff.mgr2, honest, 2)["status"] == "granted"
    assert a.balance(old)["bonus"] == 5000


def test_a_forged_reward_for_another_branchs_referral_is_refused(a: Ledger, b: Ledger) -> None:
    """SH02 writes a reward for a referral SH01 recorded: every replica refuses it
    (write rule referral-reward) and blocks the writer. An honest SH02 never writes it."""
    old, new = two_members(a)
    r = a.refer(a.owner, new, old)["id"]
    sync(a, b)
    own = b.topup(b.owner, old, 500)
    sync(a, b)
    forger = Forger(b)
    _fresh(a, forger, own, "SH02", kind="reward", deltas=[["points", "SH02", 99]], points=99,
           ref=r, reason="referral")
    before = data_snapshot(a, [old])
    s = _greet(a, "SH02")
    s.receive(forger.frame())
    assert not s.failed
    assert data_snapshot(a, [old]) == before
    assert [(f["node"], f["rule"]) for f in a.faults()] == [("SH02", "referral-reward")]


# --- check-in --------------------------------------------------------------------------------


def test_checkin_in_window_and_limit(a: Ledger, clock: FakeClock) -> None:
    staff = Staff(a)
    a.set_activity(a.owner, "MORNING", OPEN)
    a.set_activity(a.owner, "ONCE", {**OPEN, "repeat": "once", "points": 50})
    old, _ = two_members(a)
    # 08:00 in Shanghai on 2026-01-01: inside the window
    e = a.checkin(staff.cashier, "MORNING", old)
    assert e["deltas"] == [["points", "SH01", 10]] and a.balance(old)["points"] == 10
    refused(a, [old], InvalidInput, lambda: a.checkin(staff.cashier, "MORNING", old),
            match="1 time\\(s\\) today")
    a.checkin(staff.cashier, "ONCE", old)
    clock.advance_days(1)
    a.checkin(staff.cashier, "MORNING", old)  # a new day
    refused(a, [old], InvalidInput, lambda: a.checkin(staff.cashier, "ONCE", old),
            match="already")
    refused(a, [old], NotFound, lambda: a.checkin(staff.cashier, "NOPE", old))
    refused(a, [old], NotFound, lambda: a.checkin(staff.cashier, "ONCE", "0000000000009.SH01"))
    clock.advance_days(30)
    refused(a, [old], InvalidInput, lambda: a.checkin(staff.cashier, "MORNING", old),
            match="runs from")
    rows = a.attendance("MORNING")
    assert [(r["day"], r["time"], r["points"], r["status"]) for r in rows] == [
        ("2026-01-01", "08:00", 10, "ok"), ("2026-01-02", "08:00", 10, "ok")]


def test_a_clock_set_back_after_a_cut_still_allows_one_checkin_a_day(
        a: Ledger, clock: FakeClock) -> None:
    """After January is cut (the daily pass of 8 February) the PC's clock is set back
    to January: the node books on 1 February, the first day it may, and the limit of
    once a day is counted on that day too (it was counted on the clock's day, where
    there was never any: every check-in went through, 50 points each)."""
    a.set_activity(a.owner, "FEB", {**OPEN, "from": "2026-01-01T00:00",
                                     "to": "2026-03-01T00:00", "points": 50})
    old, _ = two_members(a)
    clock.advance_days(38)  # 2026-02-08
    a.housekeeping()
    assert a.closed_through == "2026-01"
    clock.advance_days(-19)  # 2026-01-20, as the PC's clock now says
    assert a.today() == "2026-02-01"
    a.checkin(a.owner, "FEB", old)
    refused(a, [old], InvalidInput, lambda: a.checkin(a.owner, "FEB", old),
            match="1 time\\(s\\) today")
    assert a.balance(old)["points"] == 50


def test_check_ins_within_the_limit_then_stay_when_the_activity_is_tightened(
        a: Ledger, b: Ledger, clock: FakeClock) -> None:
    """Head office lowered an activity's limit (3 a day to 1): the next housekeeping
    judged every past check-in by the new limit and reversed two a day, taking back
    points members had earned (and converted: "unrecovered"). Each is judged by the
    limit its writer judged it by."""
    a.set_activity(a.owner, "GYM", {**OPEN, "to": "2026-03-01T21:00", "per_day": 3})
    old, _ = two_members(a)
    for _day in range(2):
        for _ in range(3):
            a.checkin(a.owner, "GYM", old)
            clock.ms += 60_000
        clock.advance_days(1)
    a.set_activity(a.owner, "GYM", {**OPEN, "to": "2026-03-01T21:00", "per_day": 1})
    # Even a version dated back over those days: the limit they were allowed under.
    a.set_rule(a.owner, "checkin", {"GYM": {**OPEN, "to": "2026-03-01T21:00"}},
               effective_from="2026-01-01")
    assert all(e["kind"] != "checkin" for e in a.housekeeping())
    sync(a, b)  # a replica judges them by the limit they carry too
    for x in (a, b):
        assert {r["status"] for r in x.attendance("GYM")} == {"ok"}
    assert a.balance(old)["points"] == 6 * OPEN["points"]
    a.checkin(a.owner, "GYM", old)  # today, under the new limit
    refused(a, [old], InvalidInput, lambda: a.checkin(a.owner, "GYM", old),
            match="1 time\\(s\\) today")


def test_two_activities_set_at_two_branches_apart_are_both_kept(a: Ledger, b: Ledger) -> None:
    """Each branch's `activity set` wrote the whole rule as it saw it, and the later
    version dropped the other's activity: answered with a rule id, then gone, and
    its check-ins refused ("no check-in activity")."""
    sync(a, b)
    a.set_activity(a.owner, "GYM", OPEN)
    b.set_activity(b.owner, "YOGA", {**OPEN, "name": "瑜伽"})
    b.set_activity(b.owner, "SWIM", {**OPEN, "name": "游泳"})  # a later version there
    sync(a, b)
    for x in (a, b):
        assert sorted(x.activities()) == ["GYM", "SWIM", "YOGA"]
    old, _ = two_members(a)
    a.checkin(a.owner, "GYM", old)
    # Folded per code, a version leaving one out would remove nothing: refused.
    refused(a, [old], InvalidInput,
            lambda: a.set_rule(a.owner, "checkin", {"GYM": a.activities()["GYM"]}),
            match="SWIM, YOGA are open")


def test_a_once_activity_checks_in_whatever_its_unused_per_day_says(a: Ledger) -> None:
    """A `once` activity set with per_day "many" (nothing checks it for `once`): every
    check-in raised ValueError (a 500) once check-ins carried their limit."""
    a.set_rule(a.owner, "checkin", {"OPEN": {**OPEN, "repeat": "once", "per_day": "many"}})
    old, _ = two_members(a)
    a.checkin(a.owner, "OPEN", old)
    refused(a, [old], InvalidInput, lambda: a.checkin(a.owner, "OPEN", old), match="already")


def test_an_ended_activity_takes_no_room_and_an_open_one_can_be_ended(
        a: Ledger, clock: FakeClock) -> None:
    """Every version had to hold every activity ever set (none could be left out), so
    a chain with 200 over the years could neither add one nor end one still paying
    points. Those whose window ended may be left out; the rest may be ended."""
    ended = {f"E{i:03d}": {**OPEN, "from": "2025-01-01T09:00", "to": "2025-02-01T09:00"}
             for i in range(200)}
    a.set_rule(a.owner, "checkin", ended)
    a.set_activity(a.owner, "GYM", {**OPEN, "to": "2026-12-31T21:00"})
    a.set_activity(a.owner, "YOGA", {**OPEN, "to": "2026-12-31T21:00"})
    a.set_activity(a.owner, "GYM", {**OPEN, "to": "2026-01-01T08:00"})  # ends it now
    old, _ = two_members(a)
    refused(a, [old], InvalidInput, lambda: a.checkin(a.owner, "GYM", old), match="runs from")
    assert len(a.activities()) == 202
    refused(a, [old], InvalidInput, lambda: a.set_rule(a.owner, "checkin", {}),
            match="activities YOGA are open")


def test_a_bad_activity_is_refused(a: Ledger) -> None:
    for bad in ({**OPEN, "to": "2025-01-01T00:00"}, {**OPEN, "repeat": "weekly"},
                {**OPEN, "from": "tomorrow"}, {**OPEN, "points": -1}):
        refused(a, [], InvalidInput, lambda bad=bad: a.set_activity(a.owner, "X", bad))


def test_check_ins_beyond_the_limit_at_cut_off_branches_are_reversed(a: Ledger, b: Ledger
                                                                     ) -> None:
    """Cut off, each branch allows the once-only check-in; once they see each other the
    later one is surplus, and its writer takes its points back."""
    a.set_activity(a.owner, "ONCE", {**OPEN, "repeat": "once", "points": 50})
    old, _ = two_members(a)
    sync(a, b)
    e1 = a.checkin(a.owner, "ONCE", old)
    e2 = b.checkin(b.owner, "ONCE", old)
    sync(a, b)
    assert a.balance(old)["points"] == 100
    later = max(e1["id"], e2["id"])
    writer = a if later.endswith("SH01") else b
    other = b if writer is a else a
    assert other.reconcile_checkins() == []
    [rev] = writer.reconcile_checkins()
    assert rev["ref"] == later and rev["deltas"] == [["points", writer.node, -50]]
    sync(a, b)
    for x in (a, b):
        assert x.balance(old)["points"] == 50
        # The reversed one stays in the report, with what its reversal took back.
        assert [(r["entry"], r["status"], r["reversed"], r["unrecovered"])
                for r in x.attendance("ONCE")] == [
            (min(e1["id"], e2["id"]), "ok", 0, 0), (later, "reversed", 50, 0)]
    assert writer.reconcile_checkins() == []


def test_a_shop_handing_over_reverses_its_surplus_check_ins_first(
        a: Ledger, b: Ledger, clock: FakeClock) -> None:
    """Cut off, a member checks in once at each branch for a once-only 50 points; the
    second's writer, SH02, syncs and hands its rights over (closing for good) before
    its next daily pass: only it may reverse its check-in, and nobody ever did. The
    member kept 100 points for good, the attendance read "surplus", nothing reversed."""
    name_branches(a, "SH01", "SH02")
    a.set_activity(a.owner, "ONCE", {**OPEN, "repeat": "once", "points": 50})
    old, _ = two_members(a)
    sync(a, b)
    a.checkin(a.owner, "ONCE", old)
    clock.ms += 60_000
    b.checkin(b.owner, "ONCE", old)  # the later: the surplus, SH02's to reverse
    sync(a, b)
    b.hand_over_rights(b.owner, "SH01")
    sync(a, b)
    a.housekeeping()
    assert a.balance(old)["points"] == 50
    assert [r["status"] for r in a.attendance("ONCE")] == ["ok", "reversed"]
    assert sum(r["reversed"] for r in a.attendance("ONCE")) == 50


def test_a_surplus_check_in_spent_before_its_reversal_shows_what_was_not_recovered(
        a: Ledger, b: Ledger) -> None:
    """Cut off, the member checks in at both branches and converts the points to bonus
    at each: the reversal finds nothing left to take back. The report must not hide the
    surplus check-in (it listed only the other one as "ok"): it shows it reversed, with
    its points not recovered, at every replica."""
    a.set_activity(a.owner, "ONCE", {**OPEN, "repeat": "once", "points": 10000})
    old, _ = two_members(a)
    sync(a, b)
    e1 = a.checkin(a.owner, "ONCE", old)
    e2 = b.checkin(b.owner, "ONCE", old)
    for x in (a, b):
        x.convert_points(x.owner, old, 10000)
    sync(a, b)
    later = max(e1["id"], e2["id"])
    writer = a if later.endswith("SH01") else b
    [rev] = writer.reconcile_checkins()
    assert rev["deltas"] == [] and not rev.get("points")  # nothing left to take back
    sync(a, b)
    for x in (a, b):
        rows = x.attendance("ONCE")
        assert [(r["entry"], r["status"], r["reversed"], r["unrecovered"]) for r in rows] == [
            (min(e1["id"], e2["id"]), "ok", 0, 0), (later, "reversed", 0, 10000)]
        csv = attendance_csv_rows(rows)
        assert csv[0][6:9] == ["status", "reversed", "unrecovered"]
        assert csv[2][6:9] == ["reversed", "0", "10000"]
    assert writer.reconcile_checkins() == []


# --- exit and return ----------------------------------------------------------------------


def test_exit_refunds_hides_and_refuses_sales_then_return(a: Ledger) -> None:
    staff = Staff(a)
    a.set_rule(a.owner, "promotions", [{"min": 10000, "bonus": 2000, "name": "充100送20"}])
    _, new = two_members(a)
    a.topup(a.owner, new, 10000)
    refused(a, [new], InvalidInput, lambda: a.apply_exit(staff.cashier, new, ""))
    app = a.apply_exit(staff.cashier, new, "搬家")["application"]
    refused(a, [new], InvalidInput, lambda: a.apply_exit(staff.cashier, new, "again"),
            match="waiting already")
    refused(a, [new], PermissionDenied, lambda: a.decide_exit(staff.cashier, app),
            match="may not")
    v = a.decide_exit(staff.mgr, app)
    assert (v["status"], v["settled"], v["paid"], v["forfeited"]) == ("approved", "refund",
                                                                       10000, 2000)
    assert a.balance(new) == {"cash": 0, "bonus": 0, "points": 0, "packages": {}}
    assert a.find_members("小李") == [] and a.find_members("13800000002") == []
    refused(a, [new], InvalidInput, lambda: a.debit(a.owner, new, amount=100, pay="cash"),
            match="has left")
    refused(a, [new], InvalidInput, lambda: a.topup(a.owner, new, 100), match="has left")
    refused(a, [new], InvalidInput, lambda: a.apply_exit(staff.cashier, new, "x"),
            match="left already")
    refused(a, [new], InvalidInput, lambda: a.decide_exit(staff.mgr2, app),
            match="approved already")
    assert [m["id"] for m in a.exited()] == [new]
    back = a.apply_exit(staff.cashier, new, "回来了", step="return")["application"]
    refused(a, [new], PermissionDenied, lambda: a.decide_exit(staff.cashier, back))
    assert a.decide_exit(staff.mgr, back)["status"] == "approved"
    assert [m["id"] for m in a.find_members("小李")] == [new]
    a.topup(a.owner, new, 100)


def test_a_level_reached_by_top_ups_an_exit_paid_back_is_not_kept_on_return(
        a: Ledger) -> None:
    """A top-up of 3000.00 made the member 金卡; the exit paid the 3000.00 back in cash
    and a return was approved: the member was 金卡 again holding nothing (a fifth off
    every service, twice the points), and could do it again. The cash paid back comes
    off the top-ups."""
    staff = Staff(a)
    a.set_rule(a.owner, "levels", [
        {"name": "普通会员", "threshold": 0, "discount": "1", "points_multiplier": "1"},
        {"name": "金卡", "threshold": 300000, "discount": "0.8", "points_multiplier": "2"}])
    _, new = two_members(a)
    a.topup(a.owner, new, 300000)
    assert a.level(new)["name"] == "金卡"
    app = a.apply_exit(staff.cashier, new, "搬家")["application"]
    assert a.decide_exit(staff.mgr, app)["paid"] == 300000
    back = a.apply_exit(staff.cashier, new, "回来了", step="return")["application"]
    a.decide_exit(staff.mgr, back)
    assert a.level(new)["name"] == "普通会员"
    assert a.level(new)["topped"] == 0
    # A store an older build projected (the top-up's 3000.00 still counted): its
    # totals are summed again when it opens.
    with a.storage.transaction():
        a.storage.conn.execute("UPDATE totals SET topped = 300000 WHERE member = ?", (new,))
        a.storage.conn.execute("UPDATE meta SET value = '1' WHERE key = 'projection'")
    path = a.storage.dir
    a.close()
    with Ledger.open(path, lock=False) as again:
        assert again.level(new)["topped"] == 0
        assert again.level(new)["name"] == "普通会员"


def test_the_applicant_cannot_approve_and_a_rejection_changes_nothing(a: Ledger) -> None:
    staff = Staff(a)
    _, new = two_members(a)
    app = a.apply_exit(staff.mgr, new, "不想要了")["application"]
    refused(a, [new], PermissionDenied, lambda: a.decide_exit(staff.mgr, app),
            match="cannot decide")
    assert a.decide_exit(staff.mgr2, app, reject=True)["status"] == "rejected"
    assert a.find_members("小李") and a.balance(new)["cash"] == 0
    refused(a, [new], InvalidInput, lambda: a.apply_exit(staff.cashier, new, "x", step="return"),
            match="has not left")
    # A step the library does not know held every later application off.
    refused(a, [new], InvalidInput,
            lambda: a.apply_exit(staff.cashier, new, "x", step="junk"),  # type: ignore[arg-type]
            match="exit or return")


def test_an_exit_approved_and_settled_reads_approved_though_rejected_apart(
        tmp_path: Path) -> None:
    """Two managers at two branches apart: SH02's rejects, SH01's (a little later)
    approves, and the member is paid and leaves. The first decision by id was shown:
    "rejected", for a member marked as left and settled. An approval that was settled
    stands."""
    clock = FakeClock()
    a, b = new_ledger(tmp_path, "SH01", now_ms=clock), new_ledger(tmp_path, "SH02",
                                                                  now_ms=clock)
    staff = Staff(a)
    _, new = two_members(a)
    a.topup(a.owner, new, 10000)
    app = a.apply_exit(staff.cashier, new, "搬家")["application"]
    sync(a, b)
    assert b.decide_exit(staff.mgr2, app, reject=True)["status"] == "rejected"
    clock.ms += 1000
    assert a.decide_exit(staff.mgr, app)["status"] == "approved"
    sync(a, b)
    for ledger in (a, b):
        v = ledger.exit_view(app)
        assert (v["status"], v["settled"], v["paid"]) == ("approved", "refund", 10000)
        assert ledger.member(new).get("exited")
    a.close()
    b.close()


def test_a_return_approved_apart_reads_approved_though_rejected_first(tmp_path: Path) -> None:
    """The same with nothing settled (a return, or an exit of a member holding
    nothing): the approval took effect (she is back), and the first decision by id read
    "rejected"."""
    clock = FakeClock()
    a, b = new_ledger(tmp_path, "SH01", now_ms=clock), new_ledger(tmp_path, "SH02",
                                                                  now_ms=clock)
    staff = Staff(a)
    _, new = two_members(a)
    out = a.apply_exit(staff.cashier, new, "搬家")["application"]
    a.decide_exit(staff.mgr, out)
    back = a.apply_exit(staff.cashier, new, "回来了", step="return")["application"]
    sync(a, b)
    a.decide_exit(staff.mgr, back, reject=True)
    clock.ms += 1000
    assert b.decide_exit(staff.mgr2, back)["status"] == "approved"
    sync(a, b)
    for ledger in (a, b):
        assert ledger.exit_view(back)["status"] == "approved"
        assert not ledger.member(new).get("exited")
    a.close()
    b.close()


def test_forfeit_is_income_and_value_held_elsewhere_is_gathered_first(a: Ledger, b: Ledger
                                                                       ) -> None:
    """Value topped up at SH01 and SH02; the exit approved at SH02 forfeits it. SH02
    lowers only its own rights: it is refused naming SH01 until SH01's rights move to
    it (the node asks for them, as for a debit), then settles all. Settlement books the
    forfeit as removed at each collecting branch, and the books reconcile."""
    staff = Staff(a)
    a.set_rule(a.owner, "exit", {"stored_value": "forfeit"})
    _, new = two_members(a)
    a.topup(a.owner, new, 3000)
    sync(a, b)
    b.topup(b.owner, new, 5000)
    app = b.apply_exit(staff.cashier, new, "去外地")["application"]
    err = refused(b, [new], RightsElsewhere, lambda: b.decide_exit(staff.mgr, app))
    assert err.branch == "SH01"
    sync(a, b)
    a.grant_rights(new, "cash", "SH02", 3000)  # what SH01 does when SH02 asks
    sync(a, b)
    v = b.decide_exit(staff.mgr, app)
    assert (v["settled"], v["paid"], v["forfeited"]) == ("forfeit", 0, 8000)
    sync(a, b)
    st = views.settlement(a)
    assert st["branches"]["SH01"]["removed"] == 3000 and st["branches"]["SH02"]["removed"] == 5000
    assert st["branches"]["SH01"]["unspent"] == 0 == st["branches"]["SH02"]["unspent"]
    assert st["total"] == 0 and views.settlement(b) == st
    assert all(settlement.reconciles(f) for f in st["branches"].values())
    assert views.daily_report(b, b.today())["exit_refunds"] == 0  # nothing paid back


def test_a_refund_at_another_branch_is_owed_by_the_collecting_one(a: Ledger, b: Ledger) -> None:
    staff = Staff(a)
    _, new = two_members(a)
    a.topup(a.owner, new, 4000)
    sync(a, b)
    a.grant_rights(new, "cash", "SH02", 4000)
    sync(a, b)
    app = b.apply_exit(staff.cashier, new, "退卡")["application"]
    v = b.decide_exit(staff.mgr, app, pay="wechat")
    assert (v["settled"], v["paid"]) == ("refund", 4000)
    sync(a, b)
    st = views.settlement(a)
    assert st["pairs"][0]["owes"] == "SH01" and st["pairs"][0]["to"] == "SH02"
    assert st["pairs"][0]["amount"] == 4000 and st["total"] == 0
    assert all(settlement.reconciles(f) for f in st["branches"].values())
    # the day's report shows the cash paid back at SH02, and only there
    today = a.today()
    assert views.daily_report(a, today, "SH02")["exit_refunds"] == 4000
    assert views.daily_report(a, today, "SH01")["exit_refunds"] == 0
    # ... and out of the till's WeChat takings, as the drawer counts them (it was not)
    assert views.daily_report(a, today, "SH02")["till_by_method"] == {"wechat": -4000}


# --- the command line ------------------------------------------------------------------------


def test_cli_json_shapes(cli: Cli, tmp_path: Path) -> None:
    data = tmp_path / "sh01"
    assert cli("init", "--node", "SH01", data=data).code == 0
    old = cli("member", "add", "--name", "老王", "--phone", "13800000001", "--json",
              data=data).json()["member_id"]
    r = cli("member", "add", "--name", "小李", "--phone", "13800000002", "--referrer", old,
            "--json", data=data).json()
    new, ref = r["member_id"], r["referral"]
    bad = cli("member", "add", "--name", "小张", "--phone", "13800000003", "--referrer",
              "0000000000009.SH01", "--json", data=data)
    assert bad.code != 0 and json.loads(bad.out)["error"] == "not_found"
    assert "no member matches" in cli("member", "find", "小张", data=data).out
    v = cli("referral", "show", "--referral", ref, "--json", data=data).json()
    assert (v["status"], v["referrer"], v["member"]) == ("pending", old, new)
    bad = cli("referral", "add", "--member", old, "--referrer", old, "--json", data=data)
    refusal = json.loads(bad.out)
    assert refusal["error"] == "invalid_input" and "themself" in refusal["message"]
    act = cli("activity", "set", "--code", "MORNING", "--name", "晨练", "--from",
              "2020-01-01T00:00", "--to", "2099-01-01T00:00", "--points", "5", "--json",
              data=data)
    assert act.code == 0 and "rule" in act.json()
    e = cli("checkin", "--activity", "MORNING", "--member", new, "--json", data=data).json()
    assert e["kind"] == "checkin" and e["points"] == 5
    again = cli("checkin", "--activity", "MORNING", "--member", new, "--json", data=data)
    assert json.loads(again.out)["error"] == "invalid_input"
    rows = cli("activity", "report", "--activity", "MORNING", "--csv", data=data).out
    assert rows.splitlines()[0].startswith("day,time,branch,member") and new in rows
    app = cli("exit", "apply", "--member", new, "--reason", "搬家", "--json", data=data).json()
    assert (app["status"], app["step"]) == ("pending", "exit")
    # the owner at its console applied: it cannot approve its own application
    self_ok = cli("exit", "approve", "--application", app["application"], "--json", data=data)
    assert json.loads(self_ok.out)["error"] == "permission_denied"
    listed = cli("exit", "list", "--status", "pending", "--json", data=data).json()
    assert [x["application"] for x in listed] == [app["application"]]


def test_approved_elsewhere_the_recording_branch_rewards_on_arrival(tmp_path: Path) -> None:
    """Both approvals given at head office (SH01): the node core of SH02, which recorded
    the referral, grants the reward as soon as the second approval reaches it (the
    simulator's driver of the same core as the shop's node), not only at its next
    housekeeping."""
    net = SimAdapter(tmp_path)
    try:
        for n in ("SH01", "SH02"):
            net.add(n)
        net.dial("SH02", "SH01")
        sh02 = net.ledger("SH02")
        net.perform("SH01", lambda led: led.set_rule(
            led.owner, "referral", {"reward": "points", "points": 300}))
        old, new = net.perform("SH01", two_members)
        staff = net.perform("SH01", Staff)  # SH01 is the head office: operators are its
        net.settle()
        r = net.perform("SH02", lambda led: led.refer(led.owner, new, old))["id"]
        net.settle()
        net.perform("SH01", lambda led: led.approve_referral(staff.mgr, r, 1))
        net.perform("SH01", lambda led: led.approve_referral(staff.hq, r, 2))
        net.until(lambda: bool(rewards(sh02, r)), "the reward written at SH02", timeout=30)
        [reward] = rewards(sh02, r)
        assert reward["node"] == "SH02" and reward["member"] == old
        net.settle()
        assert net.ledger("SH01").referral_view(r)["status"] == "granted"
    finally:
        net.close()


def three_branches(root: Path) -> SimAdapter:
    """A chain with a CA: head office SH01, and SH02 and SH03 linked to it."""
    net = SimAdapter(root)
    for n in ("SH01", "SH02", "SH03"):
        net.add(n)
    net.dial("SH02", "SH01")
    net.dial("SH03", "SH01")
    return net


def test_a_branch_cannot_approve_another_branchs_referral_in_its_managers_names(
        tmp_path: Path) -> None:
    """An entry's operator is text its writer chooses: a lying SH03 wrote both
    approvals of SH02's referral in two real managers' names, and SH02 paid the reward
    from its own value. Decisions count where the referral was recorded or at head
    office; an honest ordinary branch is told so, and writes nothing."""
    net = three_branches(tmp_path)
    try:
        net.perform("SH01", lambda led: led.set_rule(
            led.owner, "referral", {"reward": "bonus", "bonus": 5000}))
        old, new = net.perform("SH01", two_members)
        staff = net.perform("SH01", Staff)
        net.settle()
        r = net.perform("SH02", lambda led: led.refer(led.owner, new, old))["id"]
        net.settle()
        with pytest.raises(PermissionDenied, match="approved or rejected there"):
            net.perform("SH03", lambda led: led.approve_referral(staff.mgr, r, 1))
        for op, step in ((staff.mgr, "1"), (staff.mgr2, "2"), ("owner@SH02", "2")):
            net.perform("SH03", lambda led, op=op, step=step: led._post(
                led._entry("approval", new, ref=r, step=step, op=op), {}))
        net.settle()
        sh02 = net.ledger("SH02")
        sh02.housekeeping()
        assert sh02.referral_view(r)["status"] == "pending"
        assert rewards(sh02, r) == [] and sh02.balance(old)["bonus"] == 0
    finally:
        net.close()


def test_a_liars_earlier_copy_rewarded_by_itself_takes_no_honest_reward_back(
        a: Ledger, b: Ledger, clock: FakeClock) -> None:
    """A liar wrote a referral of an honest branch's newcomer back-dated before the
    honest one, for the same referrer, and a reward of it with nothing in it and no
    approval: the honest referrer's reward was taken back. Only an earlier copy
    approved and giving as much to the same referrer makes a granted one void."""
    staff = Staff(a)
    a.set_rule(a.owner, "referral", {"reward": "bonus", "bonus": 5000})
    old, new = two_members(a)
    sync(a, b)
    clock.ms += 60_000
    honest = a.refer(a.owner, new, old)["id"]
    a.approve_referral(staff.mgr, honest, 1)
    assert a.approve_referral(staff.mgr2, honest, 2)["status"] == "granted"
    sync(a, b)
    forged = b._entry("referral", new, referrer=old, op=b.owner)
    forged["id"] = f"{encode((id_time_ms(honest) - 1000) << 16)}.SH02"
    forged["at"] = id_time_ms(honest) - 1000
    b._commit(lambda: ([b._entry_write(forged)], None))
    empty = b._entry("reward", old, ref=forged["id"], reason="referral", op="referral@SH02")
    b._commit(lambda: ([b._entry_write(empty)], None))
    sync(a, b)
    a.housekeeping()
    assert a.referral_view(honest)["status"] == "granted"
    assert a.balance(old)["bonus"] == 5000


def test_a_merged_newcomer_is_one_referral_and_nobody_is_rewarded_for_themself(
        tmp_path: Path) -> None:
    """One newcomer registered at SH01 (referred by R1) and at SH02 (by R2) while apart,
    then merged: both referrals counted and both referrers were rewarded for one
    person. And Q referred by P, then merged into P, rewarded P for referring
    himself. The first referral of the merge group counts; one whose referrer is the
    member now is void."""
    from helpers import name_branches

    clock = FakeClock()
    a, b = (new_ledger(tmp_path, n, now_ms=clock) for n in ("SH01", "SH02"))
    name_branches(a, "SH01", "SH02")
    o = a.owner
    a.set_rule(o, "referral", {"reward": "bonus", "bonus": 5000})
    a.define_role(o, "hq", ["referral.approve2"])
    mgr = a.add_operator(o, "mgr", "secret1", ["manager"])
    hq = a.add_operator(o, "hq", "secret4", ["hq"])
    r1 = a.add_member(o, name="老王", phone="13900000001")
    r2 = a.add_member(o, name="老张", phone="13900000002")
    sync(a, b)
    x = a.add_member(a.owner, name="小李", phone="13800000001")  # apart
    y = b.add_member(b.owner, name="小李", phone="138 0000 0001")
    rx, ry = a.refer(a.owner, x, r1)["id"], b.refer(b.owner, y, r2)["id"]
    sync(a, b)
    a.merge_member(mgr, x, y)
    sync(a, b)
    first, later = sorted([rx, ry])
    for ledger in (a, b):
        assert ledger.referral_view(later)["status"] == "void"
        assert ledger.referral_view(first)["status"] == "pending"
    home, other = (a, b) if first == rx else (b, a)
    with pytest.raises(InvalidInput, match="void"):
        other.approve_referral(mgr, later, 1)
    home.approve_referral(mgr, first, 1)
    sync(a, b)
    home.approve_referral(hq, first, 2)
    sync(a, b)
    assert len(a.storage.conn.execute(
        "SELECT id FROM entries WHERE kind = 'reward'").fetchall()) == 1
    p = a.add_member(o, name="小赵", phone="13700000001")
    q = b.add_member(b.owner, name="小赵", phone="137-0000-0001")  # apart
    sync(a, b)
    rq = a.refer(o, q, p)["id"]
    a.merge_member(mgr, q, p)
    assert a.referral_view(rq)["status"] == "void"
    with pytest.raises(InvalidInput, match="void"):
        a.approve_referral(mgr, rq, 1)
    assert a.balance(p)["bonus"] == 0


def test_a_surplus_check_in_of_a_member_merged_since_takes_its_points_back(
        tmp_path: Path) -> None:
    """One person registered twice checks in at a once-only activity at both branches
    apart; SH01 then merges its duplicate into the other, sweeping the check-in's
    points to the survivor. The reversal read the merged member's own rights (moved,
    so none) and took back nothing: a double reward kept, "unrecovered" shown."""
    from helpers import name_branches

    clock = FakeClock(1_767_258_000_000)  # 2026-01-01 17:00 in Shanghai
    a, b = (new_ledger(tmp_path, n, now_ms=clock) for n in ("SH01", "SH02"))
    name_branches(a, "SH01", "SH02")
    a.set_activity(a.owner, "ONCE", {"name": "开业", "from": "2025-12-31T09:00",
                                     "to": "2026-01-10T21:00", "points": 50,
                                     "repeat": "once"})
    sync(a, b)
    x = a.add_member(a.owner, name="甲", phone="13800000001")
    y = b.add_member(b.owner, name="甲", phone="138-0000-0001", home="SH01")  # apart
    sync(a, b)
    b.checkin(b.owner, "ONCE", y)  # apart
    clock.ms += 1000
    a.checkin(a.owner, "ONCE", x)
    sync(a, b)
    a.merge_member(a.owner, x, y)
    sync(a, b)
    a.housekeeping()
    b.housekeeping()
    sync(a, b)
    for ledger in (a, b):
        rows = sorted((r["branch"], r["status"], r["reversed"], r["unrecovered"])
                      for r in ledger.attendance("ONCE"))
        assert rows == [("SH01", "reversed", 50, 0), ("SH02", "ok", 0, 0)]
        assert ledger.balance(y)["points"] == 50


@pytest.mark.parametrize("kind", ["approval", "exit_settle", "exit", "exit-step", "referral"])
def test_a_liars_membership_entries_without_their_fields_count_for_nothing(
        a: Ledger, b: Ledger, kind: str) -> None:
    """A lying SH02's decision or settlement without a `step`, an application of its own
    without one (or with one nobody writes), or a referral without a referrer: every
    page listing them raised KeyError at every branch (a 500), and the member could be
    neither approved nor referred. Such entries count for nothing."""
    staff = Staff(a)
    leaving = a.add_member(a.owner, name="老张", phone="13800000003")
    old, new = two_members(a)
    a.topup(a.owner, leaving, 10000)
    x = a.apply_exit(a.owner, leaving, "moving")["application"]
    sync(a, b)
    if kind == "referral":
        b._post(b._entry("referral", new, op=b.owner), {})
    elif kind.startswith("exit") and kind != "exit_settle":
        b._post(b._entry("exit", old, op=b.owner,
                         **({"step": "leave"} if kind == "exit-step" else {})), {})
    else:
        b._post(b._entry(kind, leaving, ref=x, op=b.owner), {})
    sync(a, b)
    assert [v["application"] for v in a.exits()] == [x]
    assert a.referrals() == []
    assert a.refer(a.owner, new, old)["referrer"] == old
    assert a.apply_exit(a.owner, old, "moving")["status"] == "pending"
    assert a.decide_exit(staff.mgr, x, pay="cash")["status"] == "approved"


def test_housekeeping_reads_an_activitys_check_ins_by_an_index(a: Ledger) -> None:
    """Housekeeping reads every activity ever set each day: without an index, a scan of
    every entry per activity (6.4 s on a 100k store with 50 ended activities, one
    turn of the node's loop). The plan, not a time, is asserted."""
    sql = ("EXPLAIN QUERY PLAN SELECT body FROM entries WHERE kind = 'checkin' AND "
           "json_extract(body, '$.activity') = ? ORDER BY id")
    plan = " ".join(str(r[3]) for r in a.storage.conn.execute(sql, ["E1"]))
    assert "entries_checkin" in plan, plan


def test_housekeeping_reads_this_branchs_referrals_by_an_index(a: Ledger) -> None:
    """Housekeeping (every ten minutes, and at each approval that arrives) reads this
    branch's referrals twice, for rewards due and rewards to settle: without an index,
    a scan of every entry each time (0.1-0.3 s at 100k entries, a minute at 30M, one
    turn of the node's loop). The plans of the statements it really runs are asserted,
    not a time."""
    old, new = two_members(a)
    a.refer(a.owner, new, old)

    def housekeeping() -> None:
        a.grant_due_referrals()
        a.settle_referral_rewards()
    assert full_scans(a, housekeeping, "entries") == []


def test_a_branch_cannot_decide_another_branchs_exit_application(tmp_path: Path) -> None:
    """A lying SH03 rejected SH02's pending exit application in a real manager's name:
    it read rejected everywhere, and the member could not leave. Decisions count where
    the application was made or at head office; an honest ordinary branch is told so."""
    net = three_branches(tmp_path)
    try:
        leaving = net.perform("SH01", lambda led: led.add_member(
            led.owner, name="老张", phone="13800000003"))
        staff = net.perform("SH01", Staff)
        net.settle()
        x = net.perform("SH02", lambda led: led.apply_exit(
            led.owner, leaving, "moving"))["application"]
        net.settle()
        with pytest.raises(PermissionDenied, match="decided there, or at head office"):
            net.perform("SH03", lambda led: led.decide_exit(staff.mgr, x, reject=True))
        net.perform("SH03", lambda led: led._post(led._entry(
            "approval", leaving, ref=x, step="reject", op=staff.mgr), {}))
        net.settle()
        sh02 = net.ledger("SH02")
        assert sh02.exit_view(x)["status"] == "pending"
        assert net.perform("SH02", lambda led: led.decide_exit(
            staff.mgr, x))["status"] == "approved"
    finally:
        net.close()
