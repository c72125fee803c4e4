"""The books an owner signs: points that expire, refunds that return exactly what a
debit took, approvals that bind everyone, card replacement that carries the PIN.

Each test is one finding of issue 13, through the library on real SQLite files and
through the command line on a real data directory (a real process)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from conftest import Cli
from helpers import FakeClock, new_ledger, sync
from test_ledger import refused

from crdtledger import operations, peerclock, views
from crdtledger.core import Count, Decided, NodeCore, SetTimer
from crdtledger.errors import (
    ApprovalRequired,
    InsufficientFunds,
    InvalidInput,
    PermissionDenied,
    RightsElsewhere,
    WrongPin,
)
from crdtledger.hlc import id_time_ms
from crdtledger.ledger import Ledger
from crdtledger.sync import SyncSession
from peer.chain import enrol, init_chain

PHONE = "13812345678"


def member(ledger: Ledger) -> str:
    return ledger.add_member(ledger.owner, name="张伟", phone=PHONE)


DAY_MS = 86_400_000


def earn_expiring_points(data: Path, node: str = "SH01") -> tuple[Ledger, str, FakeClock]:
    """150 points earned on 2026-01-01 that expire 30 days later."""
    clock = FakeClock()
    ledger = new_ledger(data, node, now_ms=clock)
    m = member(ledger)
    ledger.set_rule(ledger.owner, "earn", {"points_per_yuan": "1", "expire_days": 30},
                    effective_from="2025-01-01")
    ledger.topup(ledger.owner, m, 20000)
    ledger.debit(ledger.owner, m, amount=15000)
    assert views.points(ledger, m)["lots"] == [{"expires": "2026-01-31", "points": 150}]
    return ledger, m, clock


@pytest.fixture
def shop(cli: Cli, tmp_path: Path) -> tuple[Path, str]:
    """A branch SH01 made by the command line, with one member: (data dir, member)."""
    data = tmp_path / "sh01"
    assert cli("init", "--node", "SH01", data=data).code == 0
    r = cli("member", "add", "--name", "张伟", "--phone", PHONE, "--json", data=data)
    return data, str(r.json()["member_id"])


# --- points expire ------------------------------------------------------------------


def test_expired_points_cannot_be_redeemed_or_converted(tmp_path: Path) -> None:
    a, m, clock = earn_expiring_points(tmp_path)
    try:
        clock.advance_days(40)
        err = refused(a, [m], InsufficientFunds, lambda: a.redeem_points(a.owner, m, 150, "towel"))
        assert "150 more have expired" in str(err)
        refused(a, [m], InsufficientFunds, lambda: a.convert_points(a.owner, m, 100))
        assert views.points(a, m)["usable"] == 0
    finally:
        a.close()


def test_a_redemption_spends_valid_lots_and_leaves_the_expired_ones_due(tmp_path: Path) -> None:
    """Regression: lots were used soonest-expiry first without regard to the day, so a
    redemption of valid points 'used' an expired lot on paper and hid it from expiry."""
    a, m, clock = earn_expiring_points(tmp_path)
    try:
        a.set_rule(a.owner, "earn", {"points_per_yuan": "1", "expire_days": 365})
        clock.advance_days(40)
        a.debit(a.owner, m, amount=5000)  # 50 points valid until next year
        r = a.redeem_points(a.owner, m, 50, "towel")
        assert r["points"] == 50
        pts = views.points(a, m)
        assert (pts["total"], pts["usable"], pts["expired_unwritten"]) == (0, 0, 0)
        # the redemption wrote the 150 expired points off first, visibly
        kinds = [(e["kind"], e.get("points")) for e in a.history(m, 3)]
        assert kinds[:2] == [("redeem", 50), ("expiry", 150)]
        assert a.balance(m)["points"] == 0
    finally:
        a.close()


def test_housekeeping_writes_off_what_each_branch_holds(tmp_path: Path) -> None:
    a, m, clock = earn_expiring_points(tmp_path)
    b = new_ledger(tmp_path, "SH02", now_ms=clock)
    try:
        sync(a, b)  # rights go only to a branch the chain knows: SH02 has synced here
        a.transfer_rights(a.owner, m, "SH02", 60, purse="points")
        sync(a, b)
        clock.advance_days(40)
        assert [e["points"] for e in a.housekeeping()] == [90]
        assert a.housekeeping() == []  # nothing left to write off here
        sync(a, b)
        assert [e["points"] for e in b.housekeeping()] == [60]
        sync(a, b)
        for ledger in (a, b):
            assert ledger.balance(m)["points"] == 0
            assert views.points(ledger, m)["expired_unwritten"] == 0
            ops = {e["op"] for e in ledger.history(m) if e["kind"] == "expiry"}
            assert ops == {"expiry@SH01", "expiry@SH02"}  # who wrote off, in the history
    finally:
        a.close()
        b.close()


def test_the_node_core_runs_housekeeping_after_start_and_once_a_day(tmp_path: Path) -> None:
    a, m, clock = earn_expiring_points(tmp_path)
    try:
        clock.advance_days(40)
        core = NodeCore(a)
        effects = core.start(0.0)
        timer = next(e for e in effects if isinstance(e, SetTimer) and e.key == ("housekeeping",))
        assert timer.delay <= 60.0  # soon after start, not in it
        effects = core.fire(timer.key, timer.token, timer.delay)
        again = next(e for e in effects if isinstance(e, SetTimer) and e.key == ("housekeeping",))
        steps = 0
        while step := next((e for e in effects if isinstance(e, SetTimer)
                            and e.key == ("housekeeping-step",)), None):
            effects = core.fire(step.key, step.token, timer.delay)  # a step per turn
            steps += 1
        assert steps >= 2 and a.balance(m)["points"] == 0
        assert Count("housekeeping_entries", amount=1) in effects  # once, for the pass
        a.debit(a.owner, m, amount=1000)  # 10 more points; same day: no second pass
        effects = core.fire(again.key, again.token, timer.delay + again.delay)
        assert not any(isinstance(e, SetTimer) and e.key == ("housekeeping-step",)
                       for e in effects)
        assert a.balance(m)["points"] == 10
    finally:
        a.close()


def test_a_timer_pass_is_judged_at_one_instant(tmp_path: Path) -> None:
    """A daily pass, like an operation (operations.run), keeps one instant while it
    runs (`HybridClock.pinned`): with time passing as it ran, a write-off was judged
    on one day and booked by an id of the next."""
    a, m, clock = earn_expiring_points(tmp_path)
    seen: list[int] = []

    class Watched(NodeCore):
        def _housekeeping_step(self) -> None:
            seen.append(self.ledger.clock.wall())
            clock.ms += 1  # time passes inside the step
            super()._housekeeping_step()
            seen.append(self.ledger.clock.wall())

    try:
        clock.advance_days(40)
        core = Watched(a)
        effects = core.start(0.0)
        timer = next(e for e in effects if isinstance(e, SetTimer) and e.key == ("housekeeping",))
        effects = core.fire(timer.key, timer.token, timer.delay)
        while step := next((e for e in effects if isinstance(e, SetTimer)
                            and e.key == ("housekeeping-step",)), None):
            effects = core.fire(step.key, step.token, timer.delay)
        assert a.balance(m)["points"] == 0
        expiry = next(e for e in a.history(m) if e["kind"] == "expiry")
        assert len(seen) >= 4 and all(seen[i] == seen[i + 1] for i in range(0, len(seen), 2))
        assert id_time_ms(expiry["id"]) in seen[::2]  # booked at the instant it was judged
        assert a.clock.wall() == clock.ms  # the pin ends with the pass
    finally:
        a.close()


def test_a_clock_far_ahead_cuts_no_month_and_writes_off_no_points_until_peers_confirm_it(
        tmp_path: Path) -> None:
    """A PC whose clock is a year ahead when the node starts, before any peer has said
    what time it is: its first daily pass cut eleven months early (every later sale
    was then booked on the day after them) and wrote off points still valid, for good.
    Both wait until the peers have judged the clock; then they run, by the chain's
    time."""
    a, m, clock = earn_expiring_points(tmp_path / "a")
    b_clock = FakeClock()
    b = new_ledger(tmp_path / "b", "SH02", now_ms=b_clock)
    try:
        sync(a, b)  # SH01 knows another branch to ask

        def housekeeping(core: NodeCore, now: float) -> list[Any]:
            effects = core.fire(("housekeeping",), core._timers[("housekeeping",)], now)
            while step := core._timers.get(("housekeeping-step",)):
                effects += core.fire(("housekeeping-step",), step, now)
            return effects

        clock.advance_days(375)  # 2027-01-11: every month of 2026 looks due
        core = NodeCore(a)
        core.start(0.0)
        effects = housekeeping(core, 60.0)
        assert any(isinstance(e, Decided) and "confirms this PC's clock" in e.what
                   for e in effects)
        assert a.closed_through is None and a.balance(m)["points"] == 150
        # The clock set right, a month and ten days on (the lots expired, January due),
        # and SH02 heard: the pass runs whole at the next look, the same day.
        clock.ms = b_clock.ms = FakeClock().ms + 40 * DAY_MS
        core.link_opened(1, "SH02", dialer="SH01", now=100.0)
        theirs = SyncSession(b, expect_node="SH01")
        theirs.start()
        mine = core.session("SH02")
        assert mine is not None
        for _ in range(3):
            core.receive(1, theirs.data_to_send(), 100.0)
            for frame in mine.data_to_send():
                theirs.receive(frame)
        clock.ms += 560_000  # to the next look, as the monotonic clock goes
        housekeeping(core, 660.0)
        assert a.closed_through == "2026-01" and a.balance(m)["points"] == 0
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize("head_office", [False, True])
def test_a_new_branch_that_has_met_nobody_waits_for_its_clock_to_be_confirmed(
        tmp_path: Path, head_office: bool) -> None:
    """A branch enrolled today on a PC whose clock runs 60 days ahead, its link not up
    yet: with no other branch known it went by its own clock, and its first pass cut
    the month under way (every sale then booked into the next). An enrolled branch
    that has met nobody waits for a peer; head office, a chain of one if it knows no
    branch, still goes by its own clock."""
    init_chain(tmp_path / "chain", "acme")
    Ledger.create(tmp_path / "SH04", "SH04", "acme")
    enrol(tmp_path / "chain", tmp_path / "SH04", "SH04", head_office=head_office)
    ahead = FakeClock(time.time_ns() // 1_000_000 + 60 * DAY_MS)
    with Ledger.open(tmp_path / "SH04", now_ms=ahead) as a:
        core = NodeCore(a)
        core.start(0.0)
        effects = core.fire(("housekeeping",), core._timers[("housekeeping",)], 60.0)
        while step := core._timers.get(("housekeeping-step",)):
            effects += core.fire(("housekeeping-step",), step, 60.0)
        waited = any(isinstance(e, Decided) and "confirms this PC's clock" in e.what
                     for e in effects)
        assert waited != head_office
        assert (a.closed_through is None) != head_office
        said = peerclock.tell(core.clock_status())  # `crdtledger status`'s CLOCK line
        assert (said is not None and "wait until one connected has" in said) != head_office


def test_a_branch_that_syncs_by_files_closes_its_months_once_its_clock_is_confirmed(
        tmp_path: Path) -> None:
    """A branch that exchanges sync files only knows other branches and never has a
    peer connected: its daily pass waited for ever for one to confirm its clock, so it
    never closed a month and the chain's books stayed open at every branch. An
    operator allowed to adjust says the clock is right (`crdtledger clock confirm`):
    the next look closes the month due, today only."""
    a, _m, clock = earn_expiring_points(tmp_path / "a")
    b = new_ledger(tmp_path / "b", "SH02", now_ms=clock)
    try:
        b.pull(a, origin="file")  # by file: SH01 is known, never connected
        clock.advance_days(40)
        core = NodeCore(b)
        core.start(0.0)

        def look(now: float) -> list[Any]:
            effects = core.fire(("housekeeping",), core._timers[("housekeeping",)], now)
            while step := core._timers.get(("housekeeping-step",)):
                effects += core.fire(("housekeeping-step",), step, now)
            return effects

        look(60.0)
        assert b.closed_through is None and core.clock_status()["confirmed"] is False
        assert "crdtledger clock confirm" in str(peerclock.tell(core.clock_status()))
        with pytest.raises(PermissionDenied):  # a cashier may not
            b.confirm_clock(b.add_operator(b.owner, "amy", "amy-secret1", ["cashier"]))
        with pytest.raises(InvalidInput, match="it takes no fields"):  # and nothing kept
            operations.run(b, b.owner, "clock.confirm", {"day": "2026-01-01"})
        assert core.clock_status()["confirmed"] is False
        assert operations.run(b, b.owner, "clock.confirm", {})["day"] == b.today()
        look(660.0)
        assert b.closed_through == "2026-01" and core.clock_status()["confirmed"]
        clock.advance_days(1)  # another day: the word was for the day it was given
        assert core.clock_status()["confirmed"] is False
    finally:
        a.close()
        b.close()


def test_the_daily_pass_finds_expired_points_in_the_lots_not_the_history(
        tmp_path: Path) -> None:
    """Regression: the search read every entry's body, once a day (7.7 s at 1M entries,
    a joining branch's link lost). Now the lots table says who has points expired and
    not written off: once written off, nobody, and the next pass writes nothing."""
    a, m, clock = earn_expiring_points(tmp_path)
    try:
        others = [a.add_member(a.owner, name=f"m{i}", phone=f"1381234560{i}") for i in range(3)]
        for i, o in enumerate(others):
            a.topup(a.owner, o, 20000)
            a.debit(a.owner, o, amount=1000 * (i + 1))
        clock.advance_days(40)
        steps = list(a.housekeeping_steps(budget=1))
        assert sorted((e["member"], e["points"]) for s in steps for e in s) == sorted(
            [(m, 150), *((o, 10 * (i + 1)) for i, o in enumerate(others))])
        assert len([s for s in steps if s]) == 4  # one member's write-off a step
        assert views.members_with_expired_points(a, a.node, a.today()) == []
        assert a.storage.conn.execute("SELECT count(*) FROM points_lots").fetchone() == (0,)
        assert [e for s in a.housekeeping_steps() for e in s] == []
    finally:
        a.close()


def test_the_cli_refuses_expired_points(tmp_path: Path, cli: Cli) -> None:
    a, m, _clock = earn_expiring_points(tmp_path)
    data = a.storage.dir
    a.close()
    r = cli("points", "redeem", "--member", m, "--points", "150", "--gift", "towel", data=data)
    assert r.code != 0 and "expired" in r.err
    r = cli("history", "--member", m, "--json", data=data)
    assert all(e["kind"] != "redeem" for e in r.json())
    # the owner need not wait for the node's daily pass
    r = cli("points", "expire", "--json", data=data)
    assert [(e["kind"], e["points"], e["op"]) for e in r.json()] == [("expiry", 150, "owner@SH01")]
    assert cli("points", "expire", "--member", m, "--json", data=data).json() == []
    assert cli("balance", "--member", m, "--json", data=data).json()["points"] == 0


# --- refunds return exactly ----------------------------------------------------------


def test_a_refund_in_parts_returns_every_point(tmp_path: Path) -> None:
    """Regression: 145 points earned on 121.60; refunds of 50.00 and 71.60 took back
    59 + 85 points and left one behind."""
    a = new_ledger(tmp_path, "SH01")
    try:
        m = member(a)
        a.set_rule(a.owner, "earn", {"points_per_yuan": "1.2", "expire_days": 365})
        a.topup(a.owner, m, 20000)
        d = a.debit(a.owner, m, amount=12160)
        assert d["points"] == 145
        r1 = a.refund(a.owner, d["id"], 5000)
        r2 = a.refund(a.owner, d["id"], 7160)
        assert (r1["points"], r2["points"]) == (59, 86)
        bal = a.balance(m)
        assert (bal["cash"], bal["bonus"], bal["points"]) == (20000, 0, 0)
        assert views.points(a, m)["total"] == 0
    finally:
        a.close()


def test_three_part_refund_through_the_cli_adds_up(shop: tuple[Path, str], cli: Cli) -> None:
    data, m = shop
    assert cli("topup", "--member", m, "--amount", "300.00", data=data).code == 0
    d = cli("debit", "--member", m, "--amount", "142.20", "--json", data=data).json()
    assert d["points"] == 142
    parts = [cli("refund", "--debit", d["id"], "--amount", y, "--json", data=data).json()
             for y in ("33.33", "33.33", "75.54")]
    assert sum(p.get("points", 0) for p in parts) == 142
    bal = cli("balance", "--member", m, "--json", data=data).json()
    assert (bal["cash"], bal["points"]) == (30000, 0)


# --- approvals bind everyone ---------------------------------------------------------


def test_the_builtin_owner_needs_another_approver(tmp_path: Path) -> None:
    a = new_ledger(tmp_path, "SH01")
    try:
        m = member(a)
        a.topup(a.owner, m, 100000)
        refused(a, [m], ApprovalRequired,
                lambda: a.correct(a.owner, m, "cash", -50000, reason="typo"))
        boss = a.add_operator(a.owner, "boss", "boss-pass", roles=["owner"])
        a.add_operator(a.owner, "amy", "amy-pass", roles=["cashier"])
        mgr = a.add_operator(a.owner, "mgr", "mgr-pass", roles=["manager"])
        refused(a, [m], ApprovalRequired, match="own",
                call=lambda: a.correct(boss, m, "cash", -50000, "typo",
                                       approver=("boss", "boss-pass")))
        refused(a, [m], ApprovalRequired, match="may not approve",
                call=lambda: a.correct(boss, m, "cash", -50000, "typo",
                                       approver=("amy", "amy-pass")))
        refused(a, [m], PermissionDenied,
                call=lambda: a.correct(boss, m, "cash", -50000, "typo",
                                       approver=("mgr", "wrong")))
        e = a.correct(a.owner, m, "cash", -50000, "typo", approver=("mgr", "mgr-pass"))
        assert e["approver"] == mgr and e["op"] == a.owner
        # a large top-up by an operator who may approve is no exception either
        refused(a, [m], ApprovalRequired, lambda: a.topup(boss, m, 600000))
        t = a.topup(boss, m, 600000, approver=("mgr", "mgr-pass"))
        assert t["approver"] == mgr
        # below the limit nobody is asked
        assert a.correct(a.owner, m, "cash", -100, "typo").get("approver") is None
    finally:
        a.close()


def test_the_cli_owner_cannot_correct_above_the_limit_alone(shop: tuple[Path, str],
                                                            cli: Cli) -> None:
    data, m = shop
    assert cli("topup", "--member", m, "--amount", "1000.00", data=data).code == 0
    r = cli("correct", "--member", m, "--purse", "cash", "--change", "500.00",
            "--reason", "goodwill", data=data)
    assert r.code != 0 and "approver" in r.err
    assert cli("balance", "--member", m, "--json", data=data).json()["cash"] == 100000
    assert cli("operator", "add", "--name", "mgr", "--password", "mgr-pass", "--role",
               "manager", data=data).code == 0
    r = cli("correct", "--member", m, "--purse", "cash", "--change", "500.00",
            "--reason", "goodwill", "--approver", "mgr", "--approver-password", "mgr-pass",
            "--json", data=data)
    entry = r.json()
    assert entry["approver"] and entry["op"] == "owner@SH01"
    assert cli("balance", "--member", m, "--json", data=data).json()["cash"] == 150000


# --- card replacement keeps the PIN ---------------------------------------------------


def test_a_replaced_card_keeps_its_pin_type_and_expiry(tmp_path: Path) -> None:
    a = new_ledger(tmp_path, "SH01")
    try:
        m = member(a)
        a.issue_card(a.owner, m, "P1", card_type="discount", pin="4321", expiry="2030-12-31")
        a.topup(a.owner, m, 10000)
        a.replace_card(a.owner, "P1", "P2")
        new = a.card("P2")
        assert (new["type"], new["expiry"], new["has_pin"]) == ("discount", "2030-12-31", True)
        refused(a, [m], WrongPin, lambda: a.debit(a.owner, card="P2", amount=100))
        a.debit(a.owner, card="P2", pin="4321", amount=100)
        a.replace_card(a.owner, "P2", "P3", pin="9876")  # a new PIN when asked for one
        refused(a, [m], WrongPin, lambda: a.debit(a.owner, card="P3", pin="4321", amount=100))
        a.debit(a.owner, card="P3", pin="9876", amount=100)
    finally:
        a.close()


def test_cli_card_replace_keeps_the_pin(shop: tuple[Path, str], cli: Cli) -> None:
    data, m = shop
    assert cli("card", "issue", "--member", m, "--card", "P1", "--pin", "4321",
               data=data).code == 0
    assert cli("topup", "--member", m, "--amount", "100.00", data=data).code == 0
    assert cli("card", "replace", "--card", "P1", "--new", "P2", data=data).code == 0
    r = cli("debit", "--card", "P2", "--amount", "1.00", data=data)
    assert r.code != 0 and "PIN" in r.err
    assert cli("debit", "--card", "P2", "--pin", "4321", "--amount", "1.00", data=data).code == 0


def test_a_spend_refused_for_rights_elsewhere_writes_off_nothing(tmp_path: Path) -> None:
    """Regression (the state-machine test): a conversion of valid points whose rights
    sit at another branch wrote off this branch's expired points in a commit of its
    own, then was refused: a refused operation had changed the store. The write-off
    now goes in the spend's own commit, and is written with it once the rights come."""
    a, m, clock = earn_expiring_points(tmp_path)  # 150 points expiring 2026-01-31
    b = new_ledger(tmp_path, "SH02", now_ms=clock)
    try:
        clock.advance_days(10)
        a.debit(a.owner, m, amount=5000)  # 50 more, expiring 2026-02-10
        sync(a, b)  # rights go only to a branch the chain knows: SH02 has synced here
        a.transfer_rights(a.owner, m, "SH02", 50, purse="points")
        clock.advance_days(25)  # 2026-02-05: 150 expired, 50 valid (their rights at SH02)
        assert views.points(a, m)["usable"] == 50
        for spend in (lambda: a.convert_points(a.owner, m, 50),
                      lambda: a.redeem_points(a.owner, m, 50, "towel")):
            refused(a, [m], RightsElsewhere, spend)
        sync(a, b)
        b.transfer_rights(b.owner, m, "SH01", 50, purse="points")
        sync(a, b)
        done = a.redeem_points(a.owner, m, 50, "towel")
        kinds = [(e["kind"], e["points"]) for e in a.history(m, 2)]
        assert kinds[:2] == [("redeem", 50), ("expiry", 150)]
        assert done["kind"] == "redeem" and views.points(a, m)["total"] == 0
    finally:
        a.close()
        b.close()
