"""Membership decisions and levels against a lying branch with a valid certificate: a
chain with a CA (SH01 head office by its certificate, SH02 honest, SH03 the liar, which
writes what it likes through its own ledger's commit path, as a modified build would),
real Ledger files synced with each other. The eighth wave (docs/design-notes.md)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
from helpers import FakeClock, sqlite_steps, sync
from test_membership import Staff

from crdtledger import projection
from crdtledger.coupons import purse_of
from crdtledger.errors import InvalidInput, PermissionDenied
from crdtledger.hlc import encode, id_time_ms
from crdtledger.ledger import Ledger
from peer.chain import enrol, init_chain

GOLD = [{"name": "普通会员", "threshold": 0, "discount": "1", "points_multiplier": "1"},
        {"name": "金卡", "threshold": 300000, "discount": "0.8", "points_multiplier": "2"}]


class Chain:
    def __init__(self, root: Path, nodes: tuple[str, ...] = ("SH01", "SH02", "SH03"),
                 hq: tuple[str, ...] = ("SH01",)) -> None:
        self.root = root
        init_chain(root / "chain", "demo")
        self.clock = FakeClock()
        self.ls: dict[str, Ledger] = {}
        # Enrolled 60 days before the fake clock's first day: nothing is booked
        # before a branch's certificate starts (commit.LedgerBase: the clock's floor),
        # nor taken dated before it (write rule `enrolled`), and a liar here back-dates.
        enrolled = dt.datetime.fromtimestamp(self.clock.ms / 1000 - 60 * 86_400, dt.UTC)
        for n in nodes:
            Ledger.create(root / n, n, "demo")
            enrol(root / "chain", root / n, n, head_office=n in hq, not_before=enrolled)
            self.ls[n] = Ledger.open(root / n, now_ms=self.clock, synchronous="NORMAL")

    def __getitem__(self, node: str) -> Ledger:
        return self.ls[node]

    def sync(self) -> None:
        names = list(self.ls)
        for _ in range(2):
            for i, x in enumerate(names):
                for y in names[i + 1:]:
                    sync(self.ls[x], self.ls[y])

    def reopened_projected_as(self, node: str, version: str, damage: str,
                              member: str) -> Ledger:
        """`node`'s store as a build projecting by `version` left it (`damage`, SQL
        naming `member`, says how), opened again by this one."""
        led = self.ls[node]
        with led.storage.transaction():
            led.storage.conn.execute(damage, (member,))
            led.storage.conn.execute("UPDATE meta SET value = ? WHERE key = 'projection'",
                                     (version,))
        led.close()
        self.ls[node] = Ledger.open(self.root / node, now_ms=self.clock)
        return self.ls[node]

    def settle(self, rounds: int = 1, by: tuple[str, ...] | None = None) -> None:
        """Every branch's daily pass (those named `by`'s only) after a sync, `rounds`
        times, then a last sync."""
        for _ in range(rounds):
            self.sync()
            for node in by or self.ls:
                self.ls[node].housekeeping()
        self.sync()

    def close(self) -> None:
        for led in self.ls.values():
            led.close()


@pytest.fixture
def chain(tmp_path: Path) -> Iterator[Chain]:
    c = Chain(tmp_path)
    yield c
    c.close()


def lie(liar: Ledger, entry: dict[str, Any]) -> dict[str, Any]:
    """Write `entry` as a lying build would: through the commit path, unchecked."""
    liar._commit(lambda: ([liar._entry_write(entry)], None))
    return entry


def back_dated(liar: Ledger, kind: str, member: str, before: str, ms: int = 1000,
               **fields: Any) -> dict[str, Any]:
    """An entry of `liar` whose id (and `at`) lies `ms` before entry `before`'s time."""
    e = liar._entry(kind, member, **fields)
    t = id_time_ms(before) - ms
    e["id"], e["at"] = f"{encode(t << 16)}.{liar.node}", t
    return e


# --- levels: a settlement's `paid` ------------------------------------------------------------


def test_a_liars_settlement_moving_nothing_takes_no_top_ups_or_level(
        chain: Chain, tmp_path: Path) -> None:
    """SH03 wrote an `exit_settle` for SH02's pending application of a gold member,
    moving nothing but saying 10**13 paid: her top-ups, and level, were gone at every
    branch, and the application read settled. A settlement counts off the top-ups only
    the cash its own deltas take at its writer, and an application shows only the
    settlement of the approval that stands. Since write rule paid-moved covers
    settlements (tests/test_paid_moved.py) no settlement whose `paid` is not the cash
    it takes is taken at all: refused here before it is written."""
    hq, sh02, liar = chain["SH01"], chain["SH02"], chain["SH03"]
    Staff(hq)
    hq.set_rule(hq.owner, "levels", GOLD)
    m = hq.add_member(hq.owner, name="金卡会员", phone="13800000001")
    chain.sync()
    sh02.topup(sh02.owner, m, 300000)
    app = sh02.apply_exit(sh02.owner, m, "thinking about it")["application"]
    chain.sync()
    assert sh02.level(m)["name"] == "金卡"
    for paid in (10**13, 1):
        with pytest.raises(PermissionDenied, match="paid-moved"):
            lie(liar, liar._entry("exit_settle", m, ref=app, step="refund", paid=paid,
                                  op=liar.owner))
    liar.topup(liar.owner, m, 1000)
    with pytest.raises(PermissionDenied, match="paid-moved"):
        lie(liar, liar._entry("exit_settle", m, ref=app, step="refund", paid=10**13,
                              amount=1000, deltas=[["cash", "SH03", -1000]], op=liar.owner))
    # Saying what it took, it counts that: 10.00 off.
    lie(liar, liar._entry("exit_settle", m, ref=app, step="refund", paid=1000,
                          amount=1000, deltas=[["cash", "SH03", -1000]], op=liar.owner))
    chain.sync()
    for led in chain.ls.values():
        assert led.level(m)["name"] == "金卡"
        assert led.level(m)["topped"] == 300000  # 3000.00 + 10.00 - 10.00
        v = led.exit_view(app)
        assert (v["status"], v["settled"], v["paid"]) == ("pending", "", 0)
    # A store projected by a build that took `paid` whole: summed again on opening.
    again = chain.reopened_projected_as(
        "SH02", "2", "UPDATE totals SET topped = -10 WHERE member = ?", m).level(m)
    assert (again["name"], again["topped"]) == ("金卡", 300000)


def test_a_liars_top_up_saying_more_paid_than_its_cash_raises_no_level(
        chain: Chain, tmp_path: Path) -> None:
    """SH03 wrote a top-up of 0.01 saying 10**12 paid: the member was gold at every
    branch (a discount at honest tills, paid by them). A top-up counts toward the
    level only the cash it adds at its writer, as an honest one's `paid` is; and since
    write rule paid-moved no top-up whose `paid` is not the cash it adds is taken at
    all (tests/test_paid_moved.py): refused here before it is written."""
    hq, sh02, liar = chain["SH01"], chain["SH02"], chain["SH03"]
    hq.set_rule(hq.owner, "levels", GOLD)
    m = hq.add_member(hq.owner, name="普通会员", phone="13800000002")
    chain.sync()
    sh02.topup(sh02.owner, m, 1000)
    for lying in (liar._entry("topup", m, deltas=[["cash", "SH03", 1]], amount=1,
                              paid=10**12, pay="cash", op=liar.owner),
                  # 10**12 added and taken back in one entry: 0.01 net.
                  liar._entry("topup", m, deltas=[["cash", "SH03", 10**12],
                                                  ["cash", "SH03", 1 - 10**12]],
                              amount=10**12, paid=10**12, pay="cash", op=liar.owner)):
        with pytest.raises(PermissionDenied, match="paid-moved"):
            lie(liar, lying)
    chain.sync()
    for led in chain.ls.values():
        assert led.level(m)["topped"] == 1000
        assert led.level(m)["name"] == "普通会员"
    # A store projected by a build that took `paid` whole: summed again on opening.
    assert chain.reopened_projected_as(
        "SH02", "3", "DELETE FROM totals WHERE member = ?", m).level(m)["topped"] == 1000


@pytest.mark.parametrize("raised_by", [
    {"kind": "topup", "paid": 10**12, "pay": "cash"}, {"kind": "correction", "reason": "x"}])
def test_a_liars_cash_paid_out_by_its_settlement_leaves_the_level(
        chain: Chain, raised_by: dict[str, Any]) -> None:
    """SH03 raised a gold member's cash at SH03 by 10**12, by a top-up saying 0 paid or
    by a correction (either counted nothing toward the level), then settled 10**12
    saying it paid that out (counted off her top-ups): no money of hers moved, and she
    was demoted at every branch. Top-ups, corrections of cash and settlements count by
    the cash they move at their writer, net; so a top-up typed wrong (3,000.00 for
    30.00) and put right by a correction no longer leaves a member gold for good. (A
    top-up saying 0 paid is refused by write rule paid-moved since: the top-up here
    says what it adds, and counts it, and the settlement takes it off again.)"""
    hq, sh02, liar = chain["SH01"], chain["SH02"], chain["SH03"]
    Staff(hq)
    hq.set_rule(hq.owner, "levels", GOLD)
    m = hq.add_member(hq.owner, name="金卡会员", phone="13800000001")
    typo = hq.add_member(hq.owner, name="打错", phone="13800000005")
    chain.sync()
    sh02.topup(sh02.owner, m, 300000)
    sh02.topup(sh02.owner, typo, 300000)  # 3,000.00 typed for 30.00
    sh02.correct(sh02.owner, typo, "cash", -297000, "typed 3000 for 30",
                 approver=("mgr2", "secret2"))
    x = 10**12
    fields = {k: v for k, v in raised_by.items() if k != "kind"}
    lie(liar, liar._entry(raised_by["kind"], m, deltas=[["cash", "SH03", x]], amount=x,
                          op=liar.owner, **fields))
    lie(liar, liar._entry("exit_settle", m, deltas=[["cash", "SH03", -x]], step="refund",
                          paid=x, amount=x, op=liar.owner))
    chain.sync()
    for led in chain.ls.values():
        assert (led.level(m)["name"], led.level(m)["topped"]) == ("金卡", 300000)
        assert (led.level(typo)["name"], led.level(typo)["topped"]) == ("普通会员", 3000)


# --- referrals ---------------------------------------------------------------------------------


def referred_at_sh02(chain: Chain) -> tuple[Staff, str, str, str]:
    """Head office's staff and referral rule (50.00 of bonus), a referrer and a
    newcomer, and a minute later a referral recorded at SH02: (staff, referrer,
    newcomer, referral)."""
    hq, sh02 = chain["SH01"], chain["SH02"]
    staff = Staff(hq)
    hq.set_rule(hq.owner, "referral", {"reward": "bonus", "bonus": 5000})
    old = hq.add_member(hq.owner, name="老王", phone="13800000001")
    new = hq.add_member(hq.owner, name="小李", phone="13800000002")
    chain.sync()
    chain.clock.ms += 60_000
    return staff, old, new, sh02.refer(sh02.owner, new, old)["id"]


def test_a_liars_back_dated_copy_granted_unapproved_voids_no_pending_referral(
        chain: Chain) -> None:
    """SH03 wrote a copy of SH02's pending referral, back-dated before it, for its
    accomplice, and "granted" it by a reward with nothing in it and no approval: the
    honest referral read void for good (an earlier copy granted voided it, whatever its
    approvals), and nobody could reject the copy (granted). An earlier copy granted
    voids a pending one only if its own approvals that count reach "approved"."""
    hq, sh02, liar = chain["SH01"], chain["SH02"], chain["SH03"]
    staff, old, new, honest = referred_at_sh02(chain)
    accomplice = hq.add_member(hq.owner, name="同伙", phone="13800000009")
    sh02.approve_referral(staff.mgr, honest, 1)
    chain.sync()
    copy = lie(liar, back_dated(liar, "referral", new, honest, referrer=accomplice,
                                op=liar.owner))
    lie(liar, liar._entry("reward", accomplice, ref=copy["id"], reason="referral",
                          op="referral@SH03"))
    chain.sync()
    assert sh02.referral_view(honest)["status"] == "approved1"
    assert sh02.approve_referral(staff.mgr2, honest, 2)["status"] == "granted"
    chain.settle()
    for led in chain.ls.values():
        assert led.referral_view(honest)["status"] == "granted"
        assert led.balance(old)["bonus"] == 5000


@pytest.mark.parametrize("second", [
    {"reward": "bonus", "bonus": 8000}, {"reward": "bonus", "bonus": 3000},
    {"reward": "points", "points": 100}])
def test_one_newcomer_rewarded_at_two_branches_apart_rule_changed_between_pays_one_reward(
        chain: Chain, second: dict[str, Any]) -> None:
    """One newcomer registered and referred by one referrer at SH02 and at SH03 apart,
    each branch rewarding her referral, head office raising the reward between: once
    merged, both rewards stood (a later grant was void only for an earlier one "giving
    as much, of the same kind"). The later grant keeps only what it gives beyond the
    earlier of its purse (the referrer keeps the larger). Of another kind both stand:
    no measure is common to points and bonus, and taking the later back whole let a
    liar's copy granting 1 point take an honest 50.00 (the next test)."""
    hq, sh02, sh03 = chain["SH01"], chain["SH02"], chain["SH03"]
    staff = Staff(hq)
    hq.set_rule(hq.owner, "branches", {n: n for n in chain.ls}, effective_from="2000-01-01")
    hq.set_rule(hq.owner, "referral", {"reward": "bonus", "bonus": 5000})
    old = hq.add_member(hq.owner, name="老王", phone="13800000001")
    chain.sync()
    chain.clock.ms += 60_000
    n1 = sh02.add_member(sh02.owner, name="小李", phone="13800000002")
    r1 = sh02.refer(sh02.owner, n1, old)["id"]
    sh02.approve_referral(staff.mgr, r1, 1)
    assert sh02.approve_referral(staff.mgr2, r1, 2)["status"] == "granted"
    hq.set_rule(hq.owner, "referral", second)
    sync(hq, sh03)
    chain.clock.ms += 60_000
    n2 = sh03.add_member(sh03.owner, name="小李", phone="13800000002")
    r2 = sh03.refer(sh03.owner, n2, old)["id"]
    sh03.approve_referral(staff.mgr, r2, 1)
    assert sh03.approve_referral(staff.mgr2, r2, 2)["status"] == "granted"
    chain.sync()
    hq.merge_member(hq.owner, n2, n1)
    chain.settle(2)
    bonus = max(5000, int(second.get("bonus", 0)))
    points = int(second.get("points", 0))
    for led in chain.ls.values():
        assert led.referral_view(r1)["status"] == "granted"
        assert led.referral_view(r2)["status"] == ("granted" if points else "void")
        assert (led.balance(old)["bonus"], led.balance(old)["points"]) == (bonus, points)


def test_a_liars_copy_granting_little_of_another_kind_takes_no_honest_reward(
        chain: Chain) -> None:
    """SH02 granted an honest referral (50.00 of bonus). SH03 wrote a copy back-dated
    before it, both approvals at SH03 in the chain's managers' names, a grant of 1
    point and its own take-back of it: SH02's housekeeping took its 50.00 back whole
    (an earlier grant of another kind voided it). An earlier grant voids a later one
    only of the same kind, by what it gives net of its own branch's take-back."""
    sh02, liar = chain["SH02"], chain["SH03"]
    staff, old, new, r = referred_at_sh02(chain)
    sh02.approve_referral(staff.mgr, r, 1)
    assert sh02.approve_referral(staff.mgr2, r, 2)["status"] == "granted"
    chain.sync()
    copy = lie(liar, back_dated(liar, "referral", new, r, referrer=old, op=liar.owner))
    for kind, n in (("points", 1), ("bonus", 1)):
        approvals = [liar._entry("approval", new, ref=copy["id"], step=str(step), op=op)
                     for step, op in ((1, staff.mgr), (2, staff.mgr2))]
        for e in approvals:
            lie(liar, e)
        for reason, sign in (("referral", 1), ("void", -1)):
            lie(liar, liar._entry("reward", old, deltas=[[kind, "SH03", sign * n]],
                                  **{kind: n}, ref=copy["id"], reason=reason,
                                  op="referral@SH03"))
        chain.settle(2)
        for led in chain.ls.values():
            assert led.referral_view(r)["status"] == "granted"
            assert led.balance(old)["bonus"] == 5000


@pytest.mark.parametrize("reason", ["void", "anything"])
@pytest.mark.parametrize("rule", [
    {"reward": "bonus", "bonus": 5000}, {"reward": "points", "points": 500},
    {"reward": "coupon", "off": 1000, "valid_days": 30}])
def test_a_liars_copy_granted_then_taken_back_leaves_the_honest_reward(
        chain: Chain, rule: dict[str, Any], reason: str) -> None:
    """SH02 granted an honest referral. SH03 wrote a copy back-dated before it, both
    approvals at SH03 in the chain's managers' names, and granted it as much: SH02's
    housekeeping took its reward back (void: an earlier grant gives as much). Then SH03
    took its own grant back: the honest referral read granted again, and nothing gave
    the referrer the reward back (the eighth wave's Left). The branch that granted
    gives back, once, what it took while the referral was void. The liar's take-back
    is read by what it moves, whatever reason it gives (only "void" counted first)."""
    hq, sh02, liar = chain["SH01"], chain["SH02"], chain["SH03"]
    staff, old, new, r = referred_at_sh02(chain)
    hq.set_rule(hq.owner, "referral", rule)
    chain.sync()
    sh02.approve_referral(staff.mgr, r, 1)
    assert sh02.approve_referral(staff.mgr2, r, 2)["status"] == "granted"
    chain.sync()
    copy = lie(liar, back_dated(liar, "referral", new, r, referrer=old, op=liar.owner))
    for step, op in ((1, staff.mgr), (2, staff.mgr2)):
        lie(liar, liar._entry("approval", new, ref=copy["id"], step=str(step), op=op))
    grant = lie(liar, liar._reward(copy))  # as the rule gives: as much as SH02's
    chain.settle()
    assert sh02.referral_view(r)["status"] == "void"
    assert sh02.referral_view(r)["taken_back"]
    purse, field, n = ((purse_of(grant["id"]), "coupon", 1) if rule["reward"] == "coupon"
                       else (rule["reward"], rule["reward"], rule[rule["reward"]]))
    lie(liar, liar._entry("reward", old, deltas=[[purse, "SH03", -n]], ref=copy["id"],
                          reason=reason, op="referral@SH03",
                          **{field: grant["id"] if field == "coupon" else n}))
    chain.settle(2, by=("SH01", "SH02"))  # the liar's build passes on nothing of its own
    for led in chain.ls.values():
        view = led.referral_view(r)
        assert (view["status"], view["taken_back"]) == ("granted", "")
        if rule["reward"] == "coupon":
            usable = [c for c in led.coupons(old) if c["status"] == "available"]
            assert [(c["issued_at"], c["off"]) for c in usable] == [("SH02", 1000)]
        else:
            assert led.balance(old)[field] == n
    sh02.housekeeping()  # settled: nothing more given back
    chain.sync()
    assert len([e for e in sh02._entries("ref = ?", [r]) if e["kind"] != "approval"]) == 3


def test_points_given_back_keep_their_grants_expiry(chain: Chain) -> None:
    """Points taken back on the first day and given back a year on came back as a new
    lot with a new year to run: points that had expired made valid again, and each turn
    of a liar's grant renewed them. They come back with the grant's expiry, as a coupon
    given back keeps its validity."""
    hq, sh02, liar = chain["SH01"], chain["SH02"], chain["SH03"]
    staff, old, new, r = referred_at_sh02(chain)
    hq.set_rule(hq.owner, "referral", {"reward": "points", "points": 500})
    chain.sync()
    sh02.approve_referral(staff.mgr, r, 1)
    sh02.approve_referral(staff.mgr2, r, 2)
    grant = sh02._grant_of(r)
    assert grant is not None and grant["expires"]
    chain.sync()
    copy = lie(liar, back_dated(liar, "referral", new, r, referrer=old, op=liar.owner))
    for step, op in ((1, staff.mgr), (2, staff.mgr2)):
        lie(liar, liar._entry("approval", new, ref=copy["id"], step=str(step), op=op))
    lie(liar, liar._reward(copy))
    chain.clock.advance_days(1)
    chain.settle(by=("SH01", "SH02"))
    assert sh02.balance(old)["points"] == 500  # the liar's; SH02's taken back
    chain.clock.advance_days(400)
    lie(liar, liar._entry("reward", old, deltas=[["points", "SH03", -500]], points=500,
                          ref=copy["id"], reason="void", op="referral@SH03"))
    chain.settle(2, by=("SH01", "SH02"))
    [back] = [e for e in sh02._entries("ref = ?", [r]) if e.get("reason") == "restored"]
    assert back["expires"] == grant["expires"] < sh02.today()
    assert sh02.balance(old)["points"] == 0


# --- decisions of a head office retired ---------------------------------------------------------


def test_a_retired_head_offices_decisions_stand(tmp_path: Path) -> None:
    """A head-office PC retired (a new one, HQ02, enrolled, SH01's certificate revoked):
    every exit and referral SH01 had decided read undecided again at every branch (its
    certificate was judged as it is now, revoked), a member who had left long ago could
    not apply to return. A decision held is judged by whether its writer's certificate
    marks head office, revocation aside; what SH01 writes after its revocation is
    refused on arrival, so it decides nothing more."""
    from crdtledger.trust import revocations_rule
    from peer.chain import revoke

    c = Chain(tmp_path, ("SH01", "SH02", "HQ02"), hq=("SH01", "HQ02"))
    try:
        hq, sh02, hq2 = c["SH01"], c["SH02"], c["HQ02"]
        staff = Staff(hq)
        hq.set_rule(hq.owner, "referral", {"reward": "bonus", "bonus": 5000})
        leaving = hq.add_member(hq.owner, name="老张", phone="13800000003")
        old = hq.add_member(hq.owner, name="老王", phone="13800000001")
        new = hq.add_member(hq.owner, name="小李", phone="13800000002")
        c.sync()
        app = sh02.apply_exit(sh02.owner, leaving, "moving")["application"]
        r = sh02.refer(sh02.owner, new, old)["id"]
        stay = sh02.apply_exit(sh02.owner, old, "moving")["application"]
        c.sync()
        assert hq.decide_exit(staff.mgr, app)["status"] == "approved"
        hq.approve_referral(staff.mgr, r, 1)
        c.sync()
        hq2.set_rule(hq2.owner, "revocations",
                     revocations_rule(revoke(tmp_path / "chain", "SH01")))
        sync(hq2, sh02)
        # Written after its revocation: refused on arrival, never decides anything.
        hq.decide_exit(staff.mgr, stay, reject=True)
        sync(hq, sh02)
        assert sh02.exit_view(stay)["status"] == "pending"
        assert sh02.exit_view(app)["status"] == "approved"
        assert sh02.referral_view(r)["status"] == "approved1"
        assert sh02.member(leaving).get("exited")
        assert sh02.apply_exit(sh02.owner, leaving, "back again",
                               step="return")["status"] == "pending"
        sh02.approve_referral(staff.mgr2, r, 2)
        assert sh02.balance(old)["bonus"] == 5000
    finally:
        c.close()


# --- a liar's pending records -------------------------------------------------------------------


def test_the_branch_of_an_honest_referral_rejects_a_liars_earlier_copy(chain: Chain) -> None:
    """SH03 wrote a copy of SH02's pending referral, back-dated before it: the honest one
    read void, and since decisions count only where made or at head office, only head
    office could reject the copy. A rejection written where the later referral was
    recorded counts against the earlier copy; the copy's own status is its branch's."""
    hq, sh02, liar = chain["SH01"], chain["SH02"], chain["SH03"]
    staff, old, new, honest = referred_at_sh02(chain)
    chain.sync()
    copy = lie(liar, back_dated(liar, "referral", new, honest, referrer=old, op=liar.owner))
    chain.sync()
    assert sh02.referral_view(honest)["status"] == "void"
    with pytest.raises(PermissionDenied, match="approved or rejected there"):
        sh02.approve_referral(staff.mgr, copy["id"], 1)  # approve: still not here
    with pytest.raises(PermissionDenied, match="approved or rejected there"):
        _reject_elsewhere(hq, chain, staff, old)
    sh02.approve_referral(staff.mgr, copy["id"], 1, reject=True, reason="a liar's copy")
    with pytest.raises(InvalidInput, match="rejected here already"):
        sh02.approve_referral(staff.mgr2, copy["id"], 1, reject=True)
    chain.sync()
    for led in chain.ls.values():
        assert led.referral_view(honest)["status"] == "pending"
        assert led.referral_view(copy["id"])["status"] == "pending"
    sh02.approve_referral(staff.mgr, honest, 1)
    assert sh02.approve_referral(staff.mgr2, honest, 2)["status"] == "granted"
    assert sh02.balance(old)["bonus"] == 5000


def _reject_elsewhere(hq: Ledger, chain: Chain, staff: Staff, old: str) -> None:
    """A branch holding no later copy of the newcomer may not reject another's."""
    other = hq.add_member(hq.owner, name="小赵", phone="13800000005")
    chain.sync()
    r = chain["SH02"].refer(chain["SH02"].owner, other, old)["id"]
    chain.sync()
    chain["SH03"].approve_referral(staff.mgr, r, 1, reject=True)


def test_a_liars_pending_exit_application_holds_no_honest_one_off(chain: Chain) -> None:
    """SH03 wrote a pending exit application for an honest member: every branch refused
    her own ("an application waiting"), and only head office could clear it. Only an
    application made at the branch applying, at head office or at the branch that
    registered the member holds a new one off: by her id, since her `home` is a field
    any branch may edit (the liar made itself her home, and held hers off again)."""
    hq, sh02, liar = chain["SH01"], chain["SH02"], chain["SH03"]
    staff = Staff(hq)
    leaving = sh02.add_member(sh02.owner, name="老张", phone="13800000003")
    chain.sync()
    liar.edit_member(liar.owner, leaving, fields={"home": "SH03"})
    lie(liar, liar._entry("exit", leaving, step="exit", reason="x", op=liar.owner))
    chain.sync()
    app = sh02.apply_exit(sh02.owner, leaving, "moving")["application"]
    chain.sync()
    for led in (hq, liar):  # held off where hers is (home, here, head office) is known
        with pytest.raises(InvalidInput, match="waiting already"):
            led.apply_exit(led.owner, leaving, "again")
    assert sh02.decide_exit(staff.mgr, app, pay="cash")["status"] == "approved"


# --- levels: a refund's `amount` ---------------------------------------------------------------


def test_a_liars_refund_saying_more_than_its_sale_takes_no_spend_or_level(
        chain: Chain) -> None:
    """SH03 sold a gold member (level by spend) 1.00 at its till, refunded 0.50 of it,
    then wrote refunds of it saying 10**12, 0.51 and 0.01 with 10**12 kept, and one of
    a sale it never made: moving no value, each came off her spend at every branch, and
    she lost her level chain-wide. A refund counts only while its sale's refunds, it
    included, give back no more than the sale's amount; one that would waits for ever
    (its writer's later entries of the member behind it), as a stored-value refund
    giving back more than its sale took did."""
    hq, sh02, liar = chain["SH01"], chain["SH02"], chain["SH03"]
    hq.set_rule(hq.owner, "levels", GOLD)
    hq.set_rule(hq.owner, "level_basis", {"basis": "spent"})
    m = hq.add_member(hq.owner, name="金卡会员", phone="13800000003")
    chain.sync()
    sh02.topup(sh02.owner, m, 300000)
    sh02.debit(sh02.owner, m, amount=300000)
    chain.sync()
    assert sh02.level(m)["name"] == "金卡"
    sale = liar.debit(liar.owner, m, amount=100, pay="cash")
    part = liar.refund(liar.owner, sale["id"], 50)  # what the sale took: it counts
    for amount in (10**12, 51):
        lie(liar, liar._entry("refund", m, amount=amount, ref=sale["id"], op=liar.owner))
    lie(liar, liar._entry("refund", m, amount=10**12, ref=f"{encode(1 << 16)}.SH03",
                          op=liar.owner))
    lie(liar, liar._entry("refund", m, amount=1, kept=10**12, ref=sale["id"],
                          op=liar.owner))
    chain.sync()
    for led in (hq, sh02):
        assert led.entry(part["id"])["amount"] == 50
        assert (led.level(m)["name"], led.level(m)["spent"]) == ("金卡", 300050)


def refund_gives_counted(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """From now on, the calls of projection._refund_gives, counted in the one item."""
    calls = [0]
    counted = projection._refund_gives

    def counting(*args: Any, **kw: Any) -> dict[str, int]:
        calls[0] += 1
        return counted(*args, **kw)

    monkeypatch.setattr(projection, "_refund_gives", counting)
    return calls


def test_a_liars_record_of_many_refunds_is_judged_in_time_linear_in_its_length(
        chain: Chain, monkeypatch: pytest.MonkeyPatch) -> None:
    """SH03 wrote one record of K refunds of its own till sale of a member, 0.01 each,
    the last of a sale never made: it waits for ever, and is judged again at every
    honest sync that moves the member's funding. Each judgement walked the record's
    earlier refunds for every refund (6,000 made each honest sync of her take 12 s).
    Counted, not timed: what a refund gives is worked out a bounded number of times
    per refund."""
    hq, sh02, liar = chain["SH01"], chain["SH02"], chain["SH03"]
    m = hq.add_member(hq.owner, name="会员", phone="13800000004")
    chain.sync()
    k = 300
    sale = liar.debit(liar.owner, m, amount=100_000, pay="cash")["id"]
    refunds = [liar._entry("refund", m, amount=1, ref=sale, op=liar.owner) for _ in range(k)]
    refunds.append(liar._entry("refund", m, amount=1, ref=f"{encode(1 << 16)}.SH03",
                               op=liar.owner))
    liar._commit(lambda: (liar._together(*refunds), None))
    chain.sync()
    assert hq.storage.conn.execute("SELECT count(*) FROM deferred").fetchone()[0] == k + 1
    calls = refund_gives_counted(monkeypatch)
    sh02.topup(sh02.owner, m, 1000)  # her funding moves: the waiting record is judged again
    sync(sh02, hq)
    assert hq.balance(m)["cash"] == 1000
    assert 0 < calls[0] <= 4 * (k + 1), calls


def test_a_catch_up_of_many_one_refund_records_reads_each_refund_a_bounded_number_of_times(
        chain: Chain, monkeypatch: pytest.MonkeyPatch) -> None:
    """K records of one 0.01 refund each of a till sale (they move no value: a liar's
    cost nothing), caught up in one session: from the second slice of the answer on,
    each refund read every refund projected in the slices before it (15 s at 3,000).
    Counted, not timed, with slices of 50 records."""
    from crdtledger import sync as sync_protocol

    hq, liar = chain["SH01"], chain["SH03"]
    m = hq.add_member(hq.owner, name="会员", phone="13800000006")
    chain.sync()
    k = 300
    sale = liar.debit(liar.owner, m, amount=100_000, pay="cash")["id"]
    for _ in range(k):
        liar.refund(liar.owner, sale, amount=1)
    calls = refund_gives_counted(monkeypatch)
    monkeypatch.setattr(sync_protocol, "APPLY_SLICE", 50)
    sync(liar, hq)
    assert hq.refund_left(sale) == 100_000 - k
    assert 0 < calls[0] <= 12 * k, calls  # 18,000 and more before


def test_a_record_holding_a_sale_and_its_refund_is_taken_whole(chain: Chain) -> None:
    """No build writes one today (a refund is written alone), but a record holding a
    till sale and its refund waited for ever at every peer: the refund's sale was
    looked for only among entries projected before, not in its own record."""
    hq, liar = chain["SH01"], chain["SH03"]
    m = hq.add_member(hq.owner, name="会员", phone="13800000005")
    chain.sync()
    sale = liar._entry("debit", m, amount=500, pay="cash", op=liar.owner)
    back = liar._entry("refund", m, amount=500, ref=sale["id"], op=liar.owner)
    liar._commit(lambda: (liar._together(sale, back), None))
    chain.sync()
    assert hq.storage.conn.execute("SELECT count(*) FROM deferred").fetchone()[0] == 0
    assert hq.entry(back["id"])["amount"] == 500


# --- cost: a liar's many copies of one referral, many check-ins of one member -----------


def _granted_copies(chain: Chain, staff: Staff, new: str, old: str, honest: str,
                    k: int, at: int) -> None:
    """`k` copies by SH03 of SH02's referral `honest`, back-dated an hour and more
    before it (from `at` copies on), each "granted" by a reward of 1 point of its own,
    every third approved twice in the chain's managers' names, in one record."""
    liar = chain["SH03"]
    entries = []
    for i in range(at, at + k):
        copy = back_dated(liar, "referral", new, honest, ms=3_600_000 + 10 * i,
                          referrer=old, op=liar.owner)
        entries.append(copy)
        if i % 3 == 0:
            entries += [liar._entry("approval", new, ref=copy["id"], step=str(step), op=op)
                        for step, op in ((1, staff.mgr), (2, staff.mgr2))]
        entries.append(liar._entry("reward", old, deltas=[["points", "SH03", 1]], points=1,
                                   ref=copy["id"], reason="referral", op="referral@SH03"))
    liar._commit(lambda: (liar._together(*entries), None))
    chain.sync()


def test_a_liars_many_granted_copies_of_a_referral_are_listed_in_linear_work(
        chain: Chain) -> None:
    """SH03 wrote N back-dated copies of SH02's honest referral, each "granted" by a
    reward of its own: every view of the office's referral list walked every earlier
    copy with two or three reads each, N^2 reads (23 s at 1,200 copies, at every
    branch). The list reads each referral's entries once. Counted, not timed: the
    SQLite steps of both lists at N and 4N copies; and every row as its own view."""
    hq, sh02 = chain["SH01"], chain["SH02"]
    staff, old, new, honest = referred_at_sh02(chain)
    hq.set_rule(hq.owner, "referral", {"reward": "points", "points": 200})
    chain.sync()
    sh02.approve_referral(staff.mgr, honest, 1)
    assert sh02.approve_referral(staff.mgr2, honest, 2)["status"] == "granted"
    n = 40
    steps = []
    rows: list[dict[str, Any]] = []
    for have, more in ((0, n), (n, 3 * n)):
        _granted_copies(chain, staff, new, old, honest, more, have)
        rows.clear()
        steps.append((sqlite_steps(sh02, lambda: rows.extend(sh02.referrals())),
                      sqlite_steps(sh02, lambda: sh02.referrals(member=new))))
        assert len(rows) == have + more + 1
    for row in rows[:3] + rows[-3:]:
        assert row == sh02.referral_view(row["referral"])
    assert {r["status"] for r in rows} == {"granted", "void"}
    (small, small_member), (big, big_member) = steps
    assert big <= 5 * small and big_member <= 5 * small_member, steps


class _Day(str):
    """A day as `Storage.day_of` gives it, counting the comparisons made of it."""

    compared: ClassVar[list[int]] = [0]

    def __eq__(self, other: object) -> bool:
        _Day.compared[0] += 1
        return str.__eq__(self, other)

    __hash__ = str.__hash__


def test_a_liars_many_check_ins_of_one_member_are_judged_in_linear_work(
        chain: Chain, monkeypatch: pytest.MonkeyPatch) -> None:
    """SH03 wrote thousands of check-ins of one member, back-dated, 100 a day as the
    activity allows: each check-in's surplus was judged by walking every day she
    checked in before (`allowed_today` over a list), N^2 comparisons at every honest
    branch's daily pass and attendance page (8,002,000 at 4,000). Her check-ins are
    counted by day. Counted, not timed: the comparisons of days at N and 4N; one day
    over the limit is still the one surplus."""
    hq, sh02, liar = chain["SH01"], chain["SH02"], chain["SH03"]
    hq.set_activity(hq.owner, "DAILY", {
        "name": "每日签到", "from": "2025-01-01T00:00", "to": "2027-01-01T00:00",
        "points": 1, "repeat": "daily", "per_day": 100})
    m = hq.add_member(hq.owner, name="会员", phone="13800000007")
    chain.sync()
    day_of = sh02.storage.day_of
    monkeypatch.setattr(sh02.storage, "day_of", lambda ms: _Day(day_of(ms)))
    now, n, counts = chain.clock.ms, 200, []
    for have, more in ((0, n + 1), (n + 1, 3 * n)):  # the first one over the limit
        entries = []
        for i in range(have, have + more):
            day, k = (0, i) if i <= 100 else divmod(i - 1, 100)  # 101 on the first day
            e = liar._entry("checkin", m, activity="DAILY", points=1, repeat="daily",
                            per_day=100, deltas=[["points", "SH03", 1]], op=liar.owner)
            t = now - (day + 1) * 86_400_000 + k * 1000
            e["id"], e["at"] = f"{encode(t << 16)}.SH03", t
            entries.append(e)
        liar._commit(lambda entries=entries: (liar._together(*entries), None))
        chain.sync()
        _Day.compared[0] = 0
        rows = sh02.attendance("DAILY")
        assert sh02.reconcile_checkins() == []  # the surplus is SH03's to reverse
        counts.append(_Day.compared[0])
        assert len(rows) == have + more
        assert [r["status"] for r in rows].count("surplus") == 1
    assert counts[1] <= 5 * counts[0], counts
