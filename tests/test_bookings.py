"""Appointments (crdtledger.bookings): technicians, bookings, never double-booked.

Real SQLite stores synced by real sessions (helpers.sync); a forger signing its own
log for the write rule; the command line as a real process for the --json shapes.
"""

from __future__ import annotations

import itertools
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from helpers import FakeClock, Forger, data_snapshot, new_ledger, sync
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pycrdt import Doc, Map

from crdtledger import bookings, model, views
from crdtledger.bookings import BookingRefused, SlotTaken
from crdtledger.errors import InvalidInput, NotFound, PermissionDenied
from crdtledger.hlc import HybridClock, id_time_ms
from crdtledger.ledger import Ledger
from crdtledger.model import entry_doc

DAY = "2026-01-02"  # the day after FakeClock's start (2026-01-01 08:00 in Shanghai)
NODES = ("SH01", "SH02", "HZ01")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def chain(tmp_path: Path, clock: FakeClock) -> Iterator[dict[str, Ledger]]:
    ledgers = {n: new_ledger(tmp_path, n, now_ms=clock) for n in NODES}
    yield ledgers
    for ledger in ledgers.values():
        ledger.close()


def sync_all(ledgers: dict[str, Ledger]) -> None:
    names = sorted(ledgers)
    for _ in range(2):
        for i, x in enumerate(names):
            for y in names[i + 1:]:
                sync(ledgers[x], ledgers[y])


def settle(ledgers: dict[str, Ledger]) -> None:
    """Everyone syncs, every technician's branch decides what reached it, everyone
    syncs again: what the node core does on its own when records arrive."""
    sync_all(ledgers)
    for ledger in ledgers.values():
        bookings.decide(ledger)
    sync_all(ledgers)


def setup_chain(chain: dict[str, Ledger]) -> str:
    """小李 T01 at SH02 (FOOT60, 10:00-22:00), a member of SH01; synced."""
    sh01, sh02 = chain["SH01"], chain["SH02"]
    bookings.add_technician(sh02, sh02.owner, "T01", "小李", ["FOOT60", "BODY90"],
                            "10:00-22:00")
    m = sh01.add_member(sh01.owner, name="张伟", phone="13800138000")
    sync_all(chain)
    return m


def test_at_the_technicians_branch_a_free_slot_is_confirmed_at_once(
        chain: dict[str, Ledger]) -> None:
    m = setup_chain(chain)
    sh02 = chain["SH02"]
    b = bookings.book(sh02, sh02.owner, m, "T01", "FOOT60", f"{DAY}T14:00")
    assert (b["status"], b["technician"], b["branch"], b["minutes"], b["at"], b["end"]) == (
        "confirmed", "T01", "SH02", 60, f"{DAY}T14:00", "15:00")
    # 14:30 overlaps it: refused at once, nothing written.
    before = data_snapshot(sh02, [m])
    with pytest.raises(SlotTaken, match="booked 14:00-15:00"):
        bookings.book(sh02, sh02.owner, m, "T01", "FOOT60", f"{DAY}T14:30")
    assert data_snapshot(sh02, [m]) == before
    # Right after it is free.
    assert bookings.book(sh02, sh02.owner, m, "T01", "FOOT60", f"{DAY}T15:00")["status"] \
        == "confirmed"
    assert "14:00" not in bookings.slots(sh02, "T01", DAY, "FOOT60")
    assert "16:00" in bookings.slots(sh02, "T01", DAY, "FOOT60")


def test_elsewhere_a_booking_is_pending_until_the_branch_decides(
        chain: dict[str, Ledger]) -> None:
    m = setup_chain(chain)
    sh01, sh02 = chain["SH01"], chain["SH02"]
    b = bookings.book(sh01, sh01.owner, m, "T01@SH02", "FOOT60", f"{DAY}T14:00")
    assert b["status"] == "pending"
    assert bookings.decide(sh01) == []  # not SH01's technician: nothing to decide there
    settle(chain)
    for ledger in chain.values():
        assert bookings.show(ledger, b["booking"])["status"] == "confirmed"
    # Cancelled at SH01 (the member's call): cancelled everywhere, and SH02 frees it.
    assert bookings.cancel(sh01, sh01.owner, b["booking"], member=m)["status"] == "cancelled"
    sync_all(chain)
    released = bookings.decide(sh02)
    assert [(d["status"], d["ref"]) for d in released] == [("released", b["booking"])]
    assert bookings.book(sh02, sh02.owner, m, "T01", "FOOT60", f"{DAY}T14:00")["status"] \
        == "confirmed"


def test_partitioned_branches_booking_one_slot_confirm_it_at_most_once(
        chain: dict[str, Ledger]) -> None:
    """SH01 asks for T01's 14:00 while cut off; SH02 books the same slot at its
    counter. Once they meet: one confirmed (SH02's, decided first), the other
    refused with the reason, on every replica."""
    m = setup_chain(chain)
    sh01, sh02 = chain["SH01"], chain["SH02"]
    asked = bookings.book(sh01, sh01.owner, m, "T01", "FOOT60", f"{DAY}T14:00")
    there = bookings.book(sh02, sh02.owner, m, "T01", "FOOT60", f"{DAY}T14:30")
    assert (asked["status"], there["status"]) == ("pending", "confirmed")
    settle(chain)
    for ledger in chain.values():
        assert bookings.show(ledger, there["booking"])["status"] == "confirmed"
        refused = bookings.show(ledger, asked["booking"])
        assert refused["status"] == "refused"
        assert "was booked 14:30-15:30 already" in refused["reason"]
        assert bookings.double_booked(ledger) == []


def test_refusals_say_why_and_change_nothing(chain: dict[str, Ledger],
                                             clock: FakeClock) -> None:
    m = setup_chain(chain)
    sh01, sh02 = chain["SH01"], chain["SH02"]
    b = bookings.book(sh02, sh02.owner, m, "T01", "FOOT60", f"{DAY}T14:00")
    cases: list[tuple[Ledger, dict[str, Any], type[Exception], str]] = [
        (sh02, {"when": f"{DAY}T21:30"}, BookingRefused, "outside technician T01's hours"),
        (sh02, {"when": f"{DAY}T09:00"}, BookingRefused, "outside"),
        (sh02, {"service": "HAIR"}, BookingRefused, "does not do HAIR"),
        (sh02, {"service": "NOPE"}, NotFound, "not in the price list"),
        (sh02, {"technician": "T99"}, NotFound, "no technician T99"),
        (sh02, {"member": "01J5Q8ZK3T7XM.SH01"}, NotFound, "unknown member"),
        (sh02, {"when": "2025-12-31T14:00"}, BookingRefused, "has passed"),
        (sh02, {"when": "2026-01-02 25:00"}, InvalidInput, "not like|not a real"),
        (sh02, {"when": "tomorrow"}, InvalidInput, "not like 2026-12-03T14:00"),
        (sh02, {"when": "2026-02-30T14:00"}, InvalidInput, "not a real date"),
        # Year 1's midnight in Shanghai is year 0 in UTC: a 500 (schemathesis found it)
        (sh02, {"when": "0001-01-01T00:00"}, InvalidInput, "out of range"),
        (sh02, {"when": f"{DAY}T14:15"}, SlotTaken, "booked 14:00-15:00"),
    ]
    for ledger, change, error, says in cases:
        args = {"member": m, "technician": "T01", "service": "FOOT60",
                "when": f"{DAY}T16:00", **change}
        before = data_snapshot(ledger, [m])
        with pytest.raises(error, match=says):
            bookings.book(ledger, ledger.owner, args["member"], args["technician"],
                          args["service"], args["when"])
        assert data_snapshot(ledger, [m]) == before, change
    # Cancels: someone else's, an unknown one, twice; a no-show elsewhere or too early.
    other = sh01.add_member(sh01.owner, name="李四", phone="13900139000")
    sync_all(chain)
    before = data_snapshot(sh01, [m])
    with pytest.raises(PermissionDenied, match="not member"):
        bookings.cancel(sh01, sh01.owner, b["booking"], member=other)
    with pytest.raises(NotFound, match="no booking"):
        bookings.cancel(sh01, sh01.owner, "01J5Q8ZK3T7XM.SH01")
    with pytest.raises(BookingRefused, match="only SH02"):
        bookings.noshow(sh01, sh01.owner, b["booking"])
    with pytest.raises(BookingRefused, match="not started"):
        bookings.noshow(sh02, sh02.owner, b["booking"])
    assert data_snapshot(sh01, [m]) == before
    # A technician with bad hours or an unknown service is not added.
    with pytest.raises(InvalidInput, match="must end after they start"):
        bookings.add_technician(sh01, sh01.owner, "T02", "王", ["FOOT60"], "22:00-10:00")
    with pytest.raises(NotFound, match="price list"):
        bookings.add_technician(sh01, sh01.owner, "T02", "王", ["MASSAGE"], "10:00-22:00")
    # Nor one offering more services than its entry's text takes at every replica (it
    # was set aside as malformed at every other branch, never bookable from there).
    many = {f"MASSAGE_SERVICE_{i:02d}": {"name": "按摩", "price": 100} for i in range(11)}
    sh01.set_rule(sh01.owner, "services", {**sh01.rule("services"), **many})
    with pytest.raises(InvalidInput, match="at most 200 characters"):
        bookings.add_technician(sh01, sh01.owner, "T02", "王", list(many), "10:00-22:00")
    assert bookings.technicians(sh01, "SH01") == []
    # The appointment passes: a no-show at SH02, and a cancel is then refused.
    clock.advance_days(1.3)  # 2026-01-02 15:12 in Shanghai
    assert bookings.noshow(sh02, sh02.owner, b["booking"])["status"] == "no_show"
    with pytest.raises(BookingRefused, match="no_show"):
        bookings.cancel(sh02, sh02.owner, b["booking"])


def test_a_code_at_two_branches_needs_the_branch(chain: dict[str, Ledger]) -> None:
    m = setup_chain(chain)
    sh01 = chain["SH01"]
    bookings.add_technician(sh01, sh01.owner, "T01", "小王", ["FOOT60"], "09:00-18:00")
    with pytest.raises(InvalidInput, match="T01@SH01"):
        bookings.book(sh01, sh01.owner, m, "T01", "FOOT60", f"{DAY}T14:00")
    assert bookings.book(sh01, sh01.owner, m, "T01@SH01", "FOOT60",
                         f"{DAY}T14:00")["status"] == "confirmed"
    # A new version of SH01's T01 (other hours) keeps its id and its book.
    t = bookings.add_technician(sh01, sh01.owner, "T01", "小王", ["FOOT60"], "12:00-20:00")
    assert [x["hours"] for x in bookings.technicians(sh01, "SH01")] == ["12:00-20:00"]
    assert bookings.list_bookings(sh01, technician=t["id"])[0]["status"] == "confirmed"


def test_money_reports_do_not_change_with_bookings(chain: dict[str, Ledger]) -> None:
    m = setup_chain(chain)
    sh01, sh02 = chain["SH01"], chain["SH02"]
    sh01.topup(sh01.owner, m, 100_000)
    sync_all(chain)
    before = {n: (views.daily_report(x, "2026-01-01"), x.history(m), x.balance(m))
              for n, x in chain.items()}
    bookings.book(sh01, sh01.owner, m, "T01", "FOOT60", f"{DAY}T14:00")
    bookings.book(sh02, sh02.owner, m, "T01", "BODY90", f"{DAY}T16:00")
    settle(chain)
    after = {n: (views.daily_report(x, "2026-01-01"), x.history(m), x.balance(m))
             for n, x in chain.items()}
    assert after == before
    assert len(bookings.list_bookings(sh01, member=m)) == 2
    # SH02 and HZ01 only booked today: no row of zeros for them among the branches.
    hz01 = chain["HZ01"]
    bookings.book(hz01, hz01.owner, m, "T01", "FOOT60", f"{DAY}T18:00")
    settle(chain)
    assert views.active_branches(sh01, "2026-01-01") == {"SH01"}


def _forge(chain: dict[str, Ledger], writer: str, fields: dict[str, Any]) -> list[str]:
    """`writer` signs a record of one forged entry; every other replica refuses it by
    the rule it names (returned), blocks the writer and changes nothing."""
    forger = Forger(chain[writer])
    eid = HybridClock(writer).mint()
    forged = {"id": eid, "node": writer, "op": "x", "at": id_time_ms(eid), "amount": 0,
              "deltas": [], **fields}

    def put(doc: Doc[Any]) -> None:
        doc.get("entries", type=Map)[eid] = forged

    forger.write(entry_doc(eid, chain[writer].storage.day_of), put)
    rules = []
    for name, victim in chain.items():
        if name == writer:
            continue
        before = data_snapshot(victim, [])
        victim.apply_batch(forger.batch())
        rules += [f["rule"] for f in victim.faults() if f["node"] == writer]
        assert data_snapshot(victim, []) == before
    return rules


def test_a_decision_forged_by_another_branch_is_refused_everywhere(
        chain: dict[str, Ledger]) -> None:
    """SH01 (a valid key of its own) confirms a request for SH02's technician, and
    writes itself a version of that technician: the write rule booking-branch refuses
    both at every replica; the request stays pending until SH02 decides."""
    m = setup_chain(chain)
    sh01, hz01 = chain["SH01"], chain["HZ01"]
    b = bookings.book(hz01, hz01.owner, m, "T01", "FOOT60", f"{DAY}T14:00")
    sync_all(chain)
    tech = b["technician_id"]
    assert _forge(chain, "SH01", {"kind": "booking_decision", "member": tech,
                                  "ref": b["booking"], "status": "confirmed",
                                  "start": b["start"], "minutes": 60}) \
        == ["booking-branch", "booking-branch"]
    for ledger in (chain["SH02"], hz01):
        assert bookings.show(ledger, b["booking"])["status"] == "pending"
    assert bookings.show(sh01, b["booking"])["status"] == "pending"


def test_a_request_without_a_slot_is_refused_and_breaks_no_listing(
        chain: dict[str, Ledger]) -> None:
    """SH01 signs a booking for SH02's technician with no start (no write rule
    forbids it: the fields are optional): every replica keeps it, no listing or pass
    crashes on it, and SH02 refuses it."""
    m = setup_chain(chain)
    tech = bookings.technician(chain["SH01"], "T01")["id"]
    forger = Forger(chain["SH01"])
    eid = HybridClock("SH01").mint()

    def put(doc: Doc[Any]) -> None:
        doc.get("entries", type=Map)[eid] = {
            "id": eid, "kind": "booking", "member": tech, "node": "SH01", "op": "x",
            "at": id_time_ms(eid), "amount": 0, "deltas": [], "ref": m, "service": "FOOT60"}

    forger.write(entry_doc(eid, chain["SH01"].storage.day_of), put)
    for victim in (chain["SH02"], chain["HZ01"]):
        victim.apply_batch(forger.batch())
        assert victim.faults() == []
        assert bookings.list_bookings(victim, member=m) == []
        with pytest.raises(NotFound, match="no valid slot"):
            bookings.show(victim, eid)
    [refused] = bookings.decide(chain["SH02"])
    assert (refused["ref"], refused["status"]) == (eid, "refused")
    assert bookings.decide(chain["SH02"]) == []


def test_a_forged_technician_version_is_refused_everywhere(chain: dict[str, Ledger]) -> None:
    setup_chain(chain)
    tech = bookings.technician(chain["SH01"], "T01")["id"]
    assert _forge(chain, "HZ01", {"kind": "technician", "member": tech, "ref": "technicians",
                                  "code": "T01", "name": "假", "services": "FOOT60",
                                  "hours": "00:00-24:00"}) == ["booking-branch", "booking-branch"]
    assert bookings.technician(chain["SH02"], "T01")["hours"] == "10:00-22:00"


def test_starting_lists_what_a_reminder_is_for(chain: dict[str, Ledger]) -> None:
    m = setup_chain(chain)
    sh01, sh02 = chain["SH01"], chain["SH02"]
    b1 = bookings.book(sh02, sh02.owner, m, "T01", "FOOT60", f"{DAY}T14:00")
    b2 = bookings.book(sh01, sh01.owner, m, "T01", "FOOT60", f"{DAY}T18:00")
    b3 = bookings.book(sh02, sh02.owner, m, "T01", "FOOT60", f"{DAY}T19:00")
    bookings.cancel(sh02, sh02.owner, b3["booking"])
    t0 = bookings.parse_when(sh02, f"{DAY}T12:00")
    t1 = bookings.parse_when(sh02, f"{DAY}T20:00")
    assert [(v["booking"], v["status"]) for v in bookings.starting(sh02, t0, t1)] == [
        (b1["booking"], "confirmed")]
    sync_all(chain)
    assert [(v["booking"], v["status"]) for v in bookings.starting(sh01, t0, t1)] == [
        (b1["booking"], "confirmed"), (b2["booking"], "pending")]


# --- a hypothesis property over interleavings -------------------------------------------

TIMES = [f"{DAY}T{h}" for h in ("10:00", "10:30", "11:00", "12:00", "12:30")]
steps = st.lists(st.one_of(
    st.tuples(st.just("book"), st.sampled_from(NODES), st.sampled_from(("T01", "T02")),
              st.sampled_from(TIMES), st.sampled_from(("FOOT60", "BODY90"))),
    st.tuples(st.just("cancel"), st.sampled_from(NODES), st.integers(0, 20)),
    st.tuples(st.just("sync"), st.sampled_from(NODES), st.sampled_from(NODES)),
    st.tuples(st.just("decide"), st.sampled_from(NODES)),
), min_size=1, max_size=25)


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(steps=steps)
def test_any_interleaving_converges_and_never_double_books(
        tmp_path_factory: pytest.TempPathFactory, steps: list[tuple[Any, ...]]) -> None:
    root = tmp_path_factory.mktemp("bk")
    clock = FakeClock()
    chain = {n: new_ledger(root, n, now_ms=clock) for n in NODES}
    try:
        bookings.add_technician(chain["SH02"], "owner@SH02", "T01", "小李",
                                ["FOOT60", "BODY90"], "10:00-22:00")
        bookings.add_technician(chain["HZ01"], "owner@HZ01", "T02", "小张",
                                ["FOOT60"], "10:00-22:00")
        m = chain["SH01"].add_member("owner@SH01", name="张伟", phone="13800138000")
        sync_all(chain)
        made: list[str] = []
        for step in steps:
            ledger = chain[step[1]]
            try:
                if step[0] == "book":
                    made.append(bookings.book(ledger, ledger.owner, m, step[2], step[4],
                                              step[3])["booking"])
                elif step[0] == "cancel" and made:
                    bookings.cancel(ledger, ledger.owner, made[step[2] % len(made)])
                elif step[0] == "sync" and step[1] != step[2]:
                    sync(ledger, chain[step[2]])
                elif step[0] == "decide":
                    bookings.decide(ledger)
            except (BookingRefused, NotFound):
                pass  # a refusal: a slot known taken, not synced here yet, cancelled...
            for x in chain.values():  # never, on any replica, at any step
                assert bookings.double_booked(x) == []
        settle(chain)
        seen = {n: json.dumps(bookings.list_bookings(x, day=DAY), sort_keys=True)
                for n, x in chain.items()}
        assert len(set(seen.values())) == 1, seen
        final = bookings.list_bookings(chain["SH01"], day=DAY)
        assert {v["status"] for v in final} <= {"confirmed", "refused", "cancelled"}
        for tech in ("T01", "T02"):
            mine = [(v["start"], v["start"] + v["minutes"] * 60_000) for v in final
                    if v["technician"] == tech and v["status"] == "confirmed"]
            mine.sort()
            assert all(a[1] <= b[0] for a, b in itertools.pairwise(mine))
    finally:
        for x in chain.values():
            x.close()


# --- a clock that ran ahead and was put right: ids no longer follow the order of events ---


AHEAD = 3 * 86_400_000


@contextmanager
def technician_at_sh02(tmp_path: Path, sh01_clock: FakeClock, sh02_clock: FakeClock
                       ) -> Iterator[tuple[dict[str, Ledger], str]]:
    """SH01 and SH02 on their own clocks, 小李 (T01, FOOT60, 10:00-22:00) at SH02 and a
    member of SH01, synced: the stores and the member."""
    ledgers = {"SH01": new_ledger(tmp_path, "SH01", now_ms=sh01_clock),
               "SH02": new_ledger(tmp_path, "SH02", now_ms=sh02_clock)}
    try:
        sh01, sh02 = ledgers["SH01"], ledgers["SH02"]
        bookings.add_technician(sh02, sh02.owner, "T01", "小李", ["FOOT60"], "10:00-22:00")
        m = sh01.add_member(sh01.owner, name="张伟", phone="13800138000")
        sync_all(ledgers)
        yield ledgers, m
    finally:
        for ledger in ledgers.values():
            ledger.close()


def _releases(ledger: Ledger, booking: str) -> int:
    return len(ledger.storage.conn.execute(
        "SELECT 1 FROM entries WHERE kind = 'booking_decision' AND ref = ? "
        "AND json_extract(body, '$.status') = 'released'", (booking,)).fetchall())


@pytest.mark.parametrize("made_at", ["SH02", "SH01"])
@pytest.mark.parametrize("cancel_at", ["SH02", "SH01"])
def test_a_slot_confirmed_by_a_clock_ahead_is_freed_once_cancelled_after_it_is_put_right(
        tmp_path: Path, made_at: str, cancel_at: str) -> None:
    """SH02 (T01's branch) runs three days ahead and confirms 14:00 (booked at its
    counter, or asked for at SH01); its clock is put right, so what it writes next
    has smaller ids than the confirmation; the booking is cancelled. The slot is free
    again at both branches, a new booking of it is taken, and SH02's passes release
    it once, then write nothing (it used to stay taken and be released every pass)."""
    good, ahead = FakeClock(), FakeClock(FakeClock().ms + AHEAD)
    with technician_at_sh02(tmp_path, good, ahead) as (ledgers, m):
        sh01, sh02 = ledgers["SH01"], ledgers["SH02"]
        m2 = sh01.add_member(sh01.owner, name="李娜", phone="13800138001")
        sync_all(ledgers)
        when = "2026-01-06T14:00"  # 5 days ahead of the real time, 2 of SH02's clock
        b = bookings.book(ledgers[made_at], ledgers[made_at].owner, m, "T01", "FOOT60",
                          when)["booking"]
        settle(ledgers)
        assert bookings.show(sh01, b)["status"] == "confirmed"
        ahead.ms = good.ms  # the owner sets SH02's clock right
        sync_all(ledgers)
        x = ledgers[cancel_at]
        assert bookings.cancel(x, x.owner, b)["status"] == "cancelled"
        sync_all(ledgers)
        for _ in range(3):
            bookings.decide(sh02)
            sync_all(ledgers)
        for ledger in ledgers.values():
            assert bookings.show(ledger, b)["status"] == "cancelled"
            assert "14:00" in bookings.slots(ledger, "T01", "2026-01-06", "FOOT60")
            # Released by SH02 when cancelled elsewhere, and then only once.
            assert _releases(ledger, b) == (0 if cancel_at == "SH02" else 1)
        assert bookings.decide(sh02) == []
        # What holds T01 is read from the set of SH02's entries, not their order.
        tid = bookings.technician(sh02, "T01")["id"]
        book_ = [json.loads(r) for (r,) in sh02.storage.conn.execute(
            "SELECT body FROM entries WHERE member = ? ORDER BY id", (tid,))]
        assert bookings.held(book_[::-1], tid) == bookings.held(book_, tid) == {}
        again = bookings.book(sh02, sh02.owner, m2, "T01", "FOOT60", when)
        assert again["status"] == "confirmed"
        assert bookings.decide(sh02) == []
        for ledger in ledgers.values():
            assert bookings.double_booked(ledger) == []


def test_a_release_written_long_before_its_booking_by_id_still_frees_the_slot(
        tmp_path: Path) -> None:
    """SH02 runs 100 days ahead and books a slot 5 days after its clock (105 days
    from the real time), is put right, and the booking is cancelled at SH01. 92 days
    on, the release's id is older than the window a book is read in (HORIZON_DAYS +
    a day) while the booking's is not, and the slot, still to come, stays free."""
    good, ahead = FakeClock(), FakeClock(FakeClock().ms + 100 * 86_400_000)
    with technician_at_sh02(tmp_path, good, ahead) as (ledgers, m):
        sh01, sh02 = ledgers["SH01"], ledgers["SH02"]
        day = (datetime.fromtimestamp(ahead.ms / 1000, ZoneInfo("Asia/Shanghai"))
               + timedelta(days=5)).date().isoformat()
        b = bookings.book(sh02, sh02.owner, m, "T01", "FOOT60", f"{day}T14:00")["booking"]
        ahead.ms = good.ms
        sync_all(ledgers)
        bookings.cancel(sh01, sh01.owner, b)
        settle(ledgers)
        assert _releases(sh02, b) == 1
        for c in (good, ahead):
            c.advance_days(92)
        assert id_time_ms(b) > good.ms - (bookings.HORIZON_DAYS + 1) * 86_400_000
        for ledger in ledgers.values():
            assert "14:00" in bookings.slots(ledger, "T01", day, "FOOT60")
        assert bookings.decide(sh02) == []
        assert bookings.book(sh02, sh02.owner, m, "T01", "FOOT60", f"{day}T14:00")[
            "status"] == "confirmed"


def test_a_request_further_ahead_than_the_horizon_is_refused_by_the_branch(
        tmp_path: Path) -> None:
    """SH01's clock runs 30 days ahead and asks for a slot 89 days after it. SH02
    refuses it: confirmed, it would leave the window SH02 reads its book in while
    still to come, and the slot could be given twice."""
    good, ahead = FakeClock(), FakeClock(FakeClock().ms + 30 * 86_400_000)
    with technician_at_sh02(tmp_path, ahead, good) as (ledgers, m):
        sh01 = ledgers["SH01"]
        day = (datetime.fromtimestamp(ahead.ms / 1000, ZoneInfo("Asia/Shanghai"))
               + timedelta(days=89)).date().isoformat()
        b = bookings.book(sh01, sh01.owner, m, "T01", "FOOT60", f"{day}T14:00")["booking"]
        settle(ledgers)
        got = bookings.show(sh01, b)
        assert got["status"] == "refused"
        assert f"more than {bookings.HORIZON_DAYS} days ahead" in got["reason"]


def test_a_technician_changed_after_a_clock_ahead_was_put_right_takes_the_change(
        tmp_path: Path) -> None:
    """A technician changed while SH02's clock ran ahead, then changed again once it
    is put right: the second version's id sorts before the first, and it is the one
    in force (its `version` is one above), here and at another branch."""
    clock = FakeClock(FakeClock().ms + AHEAD)
    sh02 = new_ledger(tmp_path, "SH02", now_ms=clock)
    sh01 = new_ledger(tmp_path, "SH01")
    try:
        first = bookings.add_technician(sh02, sh02.owner, "T01", "小李", ["FOOT60"],
                                        "10:00-22:00")
        clock.ms -= AHEAD
        second = bookings.add_technician(sh02, sh02.owner, "T01", "小李", ["FOOT60"],
                                         "12:00-20:00")
        assert (first["version"], second["version"]) == (1, 2)
        sync(sh02, sh01)
        for x in (sh02, sh01):
            assert bookings.technician(x, "T01@SH02")["hours"] == "12:00-20:00"
    finally:
        sh02.close()
        sh01.close()


# --- the command line, as a person runs it ----------------------------------------------


def test_the_command_line_books_shows_lists_and_cancels(cli: Any, make_node: Any) -> None:
    data = make_node("SH02")
    added = cli("technician", "add", "--code", "T01", "--name", "小李", "--services",
                "FOOT60,BODY90", "--hours", "10:00-22:00", "--json", data=data).json()
    assert (added["ref"], added["services"], added["hours"]) == (
        "T01@SH02", ["FOOT60", "BODY90"], "10:00-22:00")
    member = cli("member", "add", "--name", "张伟", "--phone", "13800138000", "--json",
                 data=data).json()["member_id"]
    day = (datetime.now(ZoneInfo("Asia/Shanghai")).date() + timedelta(days=1)).isoformat()
    free = cli("booking", "slots", "--technician", "T01", "--day", day, "--service", "FOOT60",
               "--json", data=data).json()
    assert f"{day}T14:00" in free and f"{day}T21:00" in free and f"{day}T21:30" not in free
    made = cli("booking", "add", "--member", member, "--technician", "T01", "--service",
               "FOOT60", "--at", f"{day}T14:00", "--json", data=data).json()
    assert {k: made[k] for k in ("status", "technician", "branch", "service", "at",
                                 "minutes")} == {
        "status": "confirmed", "technician": "T01", "branch": "SH02", "service": "FOOT60",
        "at": f"{day}T14:00", "minutes": 60}
    shown = cli("booking", "show", "--booking", made["booking"], "--json", data=data).json()
    assert shown["status"] == "confirmed"
    listed = cli("booking", "list", "--day", day, "--json", data=data).json()
    assert [b["booking"] for b in listed] == [made["booking"]]
    text_ = cli("booking", "list", "--member", member, data=data)
    assert "confirmed (已确认)" in text_.out and "小李" in text_.out
    # The same slot again: refused with a code and a sentence, exit status non-zero.
    again = cli("booking", "add", "--member", member, "--technician", "T01", "--service",
                "FOOT60", "--at", f"{day}T14:30", "--json", data=data)
    assert again.code != 0
    assert json.loads(again.out)["error"] == "slot_taken"
    bad = cli("booking", "add", "--member", member, "--technician", "T01", "--service",
              "FOOT60", "--at", "tomorrow 2pm", "--json", data=data)
    assert bad.code != 0 and json.loads(bad.out)["error"] == "invalid_input"
    done = cli("booking", "cancel", "--booking", made["booking"], "--json", data=data).json()
    assert done["status"] == "cancelled"
    assert cli("booking", "show", "--booking", made["booking"], "--json",
               data=data).json()["status"] == "cancelled"


# --- real node processes: a request decided when it reaches the technician's branch -------


@pytest.mark.slow
def test_nodes_partitioned_confirm_a_slot_once_and_decide_on_reconnect(
        tmp_path: Path) -> None:
    from cluster import cluster, wait_for
    from linkproxy import LinkProxy

    with cluster(tmp_path) as cl, LinkProxy() as to_sh02:
        sh02 = cl.add("SH02").start()
        to_sh02.target = sh02.sync_port
        sh01 = cl.add("SH01")
        sh01.peers = [f"wss://127.0.0.1:{to_sh02.port}"]
        sh01.start()
        sh02.cli("technician", "add", "--code", "T01", "--name", "小李", "--services",
                 "FOOT60", "--json").json()
        member = sh01.cli("member", "add", "--name", "张伟", "--phone", "13800138000",
                          "--json").json()["member_id"]
        wait_for(lambda: sh01.cli("technician", "list", "--json").json(),
                 what="T01 at SH01")
        wait_for(lambda: sh02.cli("member", "show", "--member", member).code == 0,
                 what="the member at SH02")
        day = (datetime.now(ZoneInfo("Asia/Shanghai")).date() + timedelta(days=1)).isoformat()
        # Connected: asked at SH01, confirmed by SH02's node on its own.
        first = sh01.cli("booking", "add", "--member", member, "--technician", "T01",
                         "--service", "FOOT60", "--at", f"{day}T11:00", "--json").json()
        assert first["status"] == "pending"
        wait_for(lambda: sh01.cli("booking", "show", "--booking", first["booking"],
                                  "--json").json()["status"] == "confirmed",
                 what="SH02's confirmation at SH01")
        # Cut off: both book 14:00; SH01's stays pending, SH02's is confirmed at once.
        to_sh02.cut()
        wait_for(lambda: not sh01.connected(), what="the partition")
        asked = sh01.cli("booking", "add", "--member", member, "--technician", "T01",
                         "--service", "FOOT60", "--at", f"{day}T14:00", "--json").json()
        there = sh02.cli("booking", "add", "--member", member, "--technician", "T01",
                         "--service", "FOOT60", "--at", f"{day}T14:00", "--json").json()
        assert (asked["status"], there["status"]) == ("pending", "confirmed")
        to_sh02.heal()
        wait_for(lambda: sh01.cli("booking", "show", "--booking", asked["booking"],
                                  "--json").json()["status"] == "refused",
                 what="SH02's refusal at SH01")
        for node in (sh01, sh02):
            got = {b["booking"]: b["status"] for b in node.cli(
                "booking", "list", "--day", day, "--json").json()}
            assert got == {first["booking"]: "confirmed", asked["booking"]: "refused",
                           there["booking"]: "confirmed"}


def test_a_member_books_a_few_at_a_time_on_the_self_service_pages(
        chain: dict[str, Ledger]) -> None:
    """One member booked all 84 slots of a technician's week on the self-service pages,
    and book-and-cancel cycles wrote entries every replica keeps. There: three bookings
    to come at once, ten made a day; the counter books for a member without limits."""
    m = setup_chain(chain)
    sh02 = chain["SH02"]
    me = model.self_service_of("SH02")
    made = [bookings.book(sh02, me, m, "T01", "FOOT60", f"{DAY}T{h}:00")
            for h in (10, 11, 12)]
    before = data_snapshot(sh02, [m])
    with pytest.raises(BookingRefused, match="3 bookings to come"):
        bookings.book(sh02, me, m, "T01", "FOOT60", f"{DAY}T13:00")
    assert data_snapshot(sh02, [m]) == before
    assert bookings.book(sh02, sh02.owner, m, "T01", "FOOT60", f"{DAY}T13:00")
    for h in range(14, 21):  # cancel one, book another: seven times more
        bookings.cancel(sh02, me, made.pop()["booking"], m)
        made.append(bookings.book(sh02, me, m, "T01", "FOOT60", f"{DAY}T{h}:00"))
    bookings.cancel(sh02, me, made.pop()["booking"], m)
    with pytest.raises(BookingRefused, match="10 bookings made here today"):
        bookings.book(sh02, me, m, "T01", "FOOT60", f"{DAY}T21:00")


def test_a_member_who_leaves_or_is_erased_holds_no_technician(
        chain: dict[str, Ledger]) -> None:
    """A member's confirmed booking to come stayed confirmed after the member left
    (退会) or was erased, and kept the technician's slot from everyone else, with
    nothing to say why. Both cancel the member's bookings to come, saying why."""
    m = setup_chain(chain)
    sh02 = chain["SH02"]
    other = sh02.add_member(sh02.owner, name="李娜", phone="13900139000")
    b = bookings.book(sh02, sh02.owner, m, "T01", "FOOT60", f"{DAY}T14:00")
    mgr = sh02.add_operator(sh02.owner, "mgr", "secret1", ["manager"])
    app = sh02.apply_exit(mgr, m, "搬家")["application"]
    sh02.decide_exit(sh02.owner, app)
    assert (bookings.show(sh02, b["booking"])["status"], bookings.show(
        sh02, b["booking"])["reason"]) == ("cancelled", "member left")
    assert bookings.book(sh02, sh02.owner, other, "T01", "FOOT60",
                         f"{DAY}T14:00")["status"] == "confirmed"
    third = sh02.add_member(sh02.owner, name="王芳", phone="13700137000")
    c = bookings.book(sh02, sh02.owner, third, "T01", "FOOT60", f"{DAY}T16:00")
    sh02.erase_member(sh02.owner, third)
    assert bookings.show(sh02, c["booking"])["status"] == "cancelled"
    sync_all(chain)
    assert bookings.show(chain["SH01"], c["booking"])["status"] == "cancelled"


def test_a_member_who_left_or_was_merged_away_since_is_not_booked_nor_approved(
        chain: dict[str, Ledger]) -> None:
    """Once a member left, a new booking for them held a technician for nobody; and an
    exit approved after its member was merged into another marked it left while the
    survivor holding the value stayed, and cancelled the survivor's bookings."""
    m = setup_chain(chain)
    sh02 = chain["SH02"]
    mgr = sh02.add_operator(sh02.owner, "mgr", "secret1", ["manager"])
    sh02.decide_exit(sh02.owner, sh02.apply_exit(mgr, m, "搬家")["application"])
    with pytest.raises(InvalidInput, match="has left"):
        bookings.book(sh02, sh02.owner, m, "T01", "FOOT60", f"{DAY}T14:00")
    a = sh02.add_member(sh02.owner, name="李娜", phone="13900139000")
    b = sh02.add_member(sh02.owner, name="李娜", phone="13900139001")
    booked = bookings.book(sh02, sh02.owner, b, "T01", "FOOT60", f"{DAY}T16:00")
    app = sh02.apply_exit(mgr, a, "搬家")["application"]
    sh02.merge_member(sh02.owner, a, into=b)
    before = data_snapshot(sh02, [a, b])
    with pytest.raises(InvalidInput, match="merged into another since it applied"):
        sh02.decide_exit(sh02.owner, app)
    assert data_snapshot(sh02, [a, b]) == before
    assert bookings.show(sh02, booked["booking"])["status"] == "confirmed"


def test_slots_at_a_days_edges_are_offered_only_as_they_can_be_booked(tmp_path: Path) -> None:
    """Hours to 24:00 offered a last slot ending at midnight that booking refused as
    outside the hours, every day. On the day the clocks go forward (Berlin, 29 March
    2026) slots at 02:00 and 02:30, times that do not exist, were offered, and 02:00
    booked 03:00 without a word."""
    berlin = ZoneInfo("Europe/Berlin")
    clock = FakeClock(int(datetime(2026, 3, 27, 12, tzinfo=berlin).timestamp() * 1000))
    a = new_ledger(tmp_path, "SH01", now_ms=clock, timezone="Europe/Berlin")
    a.set_rule(a.owner, "services", {"FOOT60": {"name": "足疗", "price": 10000,
                                                "minutes": 60}})
    m = a.add_member(a.owner, name="A", phone="13800138000")
    bookings.add_technician(a, a.owner, "LATE", "x", ["FOOT60"], "20:00-24:00")
    bookings.add_technician(a, a.owner, "NIGHT", "y", ["FOOT60"], "00:00-05:00")
    offered = bookings.slots(a, "LATE", "2026-03-28", "FOOT60")
    assert offered[-1] == "23:00"
    late = bookings.book(a, a.owner, m, "LATE", "FOOT60", "2026-03-28T23:00")
    assert (late["at"], late["end"]) == ("2026-03-28T23:00", "00:00")
    with pytest.raises(BookingRefused, match="outside"):  # past midnight: still refused
        bookings.book(a, a.owner, m, "LATE", "FOOT60", "2026-03-28T23:30")
    offered = bookings.slots(a, "NIGHT", "2026-03-29", "FOOT60")
    assert "02:00" not in offered and "02:30" not in offered and "03:00" in offered
    before = data_snapshot(a)
    with pytest.raises(InvalidInput, match="does not exist"):
        bookings.book(a, a.owner, m, "NIGHT", "FOOT60", "2026-03-29T02:00")
    assert data_snapshot(a) == before


def test_a_branch_in_another_zone_offers_and_books_the_technicians_own_hours(
        tmp_path: Path) -> None:
    """A Los Angeles branch read a Shanghai technician's 10:00-22:00 in its own zone:
    it offered 10:00-21:00 Los Angeles time, booked 10:00 (02:00 in Shanghai), which
    the technician's branch refused, and refused 22:00 (14:00 in Shanghai, a working
    hour). A booking's times are the technician's local times at every branch."""
    clock = FakeClock()
    sh = new_ledger(tmp_path, "SH02", now_ms=clock)  # Asia/Shanghai
    la = new_ledger(tmp_path, "SH01", now_ms=clock, timezone="America/Los_Angeles")
    bookings.add_technician(sh, sh.owner, "T01", "小李", ["FOOT60"], "10:00-22:00")
    m = la.add_member(la.owner, name="张伟", phone="13800138000")
    sync(sh, la)
    day = "2026-01-03"
    offered = bookings.slots(la, "T01@SH02", day, "FOOT60")
    assert offered == bookings.slots(sh, "T01", day, "FOOT60")
    assert (offered[0], offered[-1]) == ("10:00", "21:00")
    b = bookings.book(la, la.owner, m, "T01@SH02", "FOOT60", f"{day}T14:00")
    sync(sh, la)
    bookings.decide(sh)
    sync(sh, la)
    for x in (la, sh):
        v = bookings.show(x, b["booking"])
        assert (v["status"], v["at"]) == ("confirmed", f"{day}T14:00")
    with pytest.raises(BookingRefused, match="outside"):
        bookings.book(la, la.owner, m, "T01@SH02", "FOOT60", f"{day}T22:00")


def test_a_cancellation_in_time_wins_over_a_no_show_marked_apart(tmp_path: Path) -> None:
    """The member cancelled at 12:00 at SH01 while the technician's branch was cut
    off; at 14:30 SH02, not knowing, marked a no-show: every replica then read 爽约
    for a booking cancelled two hours ahead. A cancellation made before the slot
    began wins. And a number where a text goes is refused, not an AttributeError."""
    clock = FakeClock()  # 08:00 in Shanghai
    sh01, sh02 = (new_ledger(tmp_path, n, now_ms=clock) for n in ("SH01", "SH02"))
    bookings.add_technician(sh02, sh02.owner, "T01", "小李", ["FOOT60"], "10:00-22:00")
    m = sh01.add_member(sh01.owner, name="张伟", phone="13800138000")
    sync(sh01, sh02)
    b = bookings.book(sh01, sh01.owner, m, "T01@SH02", "FOOT60", "2026-01-01T14:00")
    sync(sh01, sh02)
    bookings.decide(sh02)
    sync(sh01, sh02)
    clock.ms += 4 * 3_600_000  # 12:00; apart from here
    bookings.cancel(sh01, sh01.owner, b["booking"], member=m)
    clock.ms += 2 * 3_600_000 + 30 * 60_000  # 14:30
    bookings.noshow(sh02, sh02.owner, b["booking"])
    sync(sh01, sh02)
    for x in (sh01, sh02):
        assert bookings.show(x, b["booking"])["status"] == "cancelled"
    for bad in (lambda: bookings.book(sh01, sh01.owner, m, "T01@SH02", "FOOT60", 5),
                lambda: bookings.book(sh01, sh01.owner, m, None, "FOOT60", "2026-01-02T14:00"),
                lambda: bookings.cancel(sh01, sh01.owner, None)):
        with pytest.raises(InvalidInput, match="is text"):
            bad()


@pytest.mark.parametrize("zone", ["America/Los_Angeles", "Asia/Shanghai"])
def test_slots_of_a_day_at_either_end_of_the_calendar_are_none(tmp_path: Path,
                                                              zone: str) -> None:
    """`GET /slots?day=9999-12-31` west of UTC (year 10000 in UTC) and 0001-01-01 east
    of it (year 0) were a 500; a day beyond the booking window offered slots that
    booking then refused. A day no booking can be made on has no free slot."""
    a = new_ledger(tmp_path, "SH01", timezone=zone)
    a.set_rule(a.owner, "services", {"FOOT60": {"name": "足疗", "price": 10000,
                                                "minutes": 60}})
    bookings.add_technician(a, a.owner, "ALL", "x", ["FOOT60"], "00:00-24:00")
    for day in ("9999-12-31", "9999-12-30", "0001-01-01", "2000-01-01"):
        assert bookings.slots(a, "ALL", day, "FOOT60") == []
    soon = (date.fromisoformat(a.today()) + timedelta(days=3)).isoformat()
    assert len(bookings.slots(a, "ALL", soon, "FOOT60")) == 24 * 60 // bookings.SLOT_STEP_MIN - 1


def test_bookings_of_a_member_erased_while_apart_are_cancelled_or_refused(
        tmp_path: Path) -> None:
    """SH01 erases a member while SH02 (the technician's branch) confirms a booking
    for them and HZ01 asks for another: the erasure cancelled only what SH01 knew of.
    SH02, once it hears, cancels the one it confirmed (the slot was held for nobody
    at every replica) and refuses the request."""
    clock = FakeClock()
    sh01, sh02, hz01 = (new_ledger(tmp_path, n, now_ms=clock) for n in ("SH01", "SH02", "HZ01"))
    bookings.add_technician(sh02, sh02.owner, "T01", "小李", ["FOOT60"], "10:00-22:00")
    m = sh01.add_member(sh01.owner, name="张伟", phone="13800138000")
    pairs = ((sh01, sh02), (sh02, hz01), (sh01, hz01))
    for x, y in pairs:
        sync(x, y)
    sh01.erase_member(sh01.owner, m)
    assert bookings.book(sh02, sh02.owner, m, "T01", "FOOT60",
                         "2026-01-02T14:00")["status"] == "confirmed"
    assert bookings.book(hz01, hz01.owner, m, "T01", "FOOT60",
                         "2026-01-02T16:00")["status"] == "pending"
    sync(sh01, sh02)
    for _ in range(2):
        for x, y in pairs:
            sync(x, y)
        for ledger in (sh01, sh02, hz01):
            bookings.decide(ledger)
    for ledger in (sh01, sh02, hz01):
        seen = sorted((b["at"][-5:], b["status"], b["reason"])
                      for b in bookings.list_bookings(ledger, member=m))
        assert [s[:2] for s in seen] == [("14:00", "cancelled"), ("16:00", "refused")]
        assert all("erased" in str(s[2]) for s in seen), seen
        free = bookings.slots(ledger, "T01", "2026-01-02", "FOOT60")
        assert {"14:00", "16:00"} <= set(free)
    assert not bookings.decide(sh02), "cancelled once"


def test_the_machines_own_zone_is_no_branchs_zone(tmp_path: Path) -> None:
    """`init --timezone localtime` was taken, and a technician's `tz` of "localtime"
    read in each reading machine's own zone: its hours differed by branch again."""
    from crdtledger.errors import StoreError
    from crdtledger.ledger import Ledger
    from crdtledger.localtime import known_zone

    with pytest.raises(StoreError, match="reading machine's zone"):
        Ledger.create(tmp_path / "SH09", "SH09", "acme", "localtime")
    assert not (tmp_path / "SH09" / "ledger.sqlite3").exists()
    assert [known_zone(z) for z in ("localtime", "posixrules", "Factory")] == [None] * 3
    assert known_zone("Asia/Shanghai") is not None


# --- a lying branch's thousands of requests for one technician -------------------------------


def _calls(fn: Any) -> tuple[int, Any]:
    """Python function calls `fn` makes (lambdas and sort keys included): a count of
    work, the same on any machine."""
    count = [0]

    def prof(_frame: Any, event: str, _arg: Any) -> None:
        if event == "call":
            count[0] += 1

    sys.setprofile(prof)
    try:
        out = fn()
    finally:
        sys.setprofile(None)
    return count[0], out


def _decide_many_requests(tmp_path: Path, n: int) -> tuple[int, list[dict[str, Any]]]:
    """HZ01 (a valid key of its own) signs `n` requests for SH02's T01, each a 5-minute
    slot of its own (the request's `minutes` is the writer's word), none overlapping,
    within the hours and the horizon: SH02 receives them and decides; the work of
    its pass, counted, and the decisions."""
    clock = FakeClock()
    chain = {x: new_ledger(tmp_path / str(n), x, now_ms=clock) for x in ("SH02", "HZ01")}
    try:
        sh02, hz01 = chain["SH02"], chain["HZ01"]
        bookings.add_technician(sh02, sh02.owner, "T01", "小李", ["FOOT60"], "10:00-22:00")
        m = hz01.add_member(hz01.owner, name="张伟", phone="13800138000")
        sync(sh02, hz01)
        tech = bookings.technician(hz01, "T01")["id"]
        first = clock.ms + 26 * 3_600_000  # 2026-01-02 10:00 in Shanghai
        forger = Forger(hz01)
        for i in range(0, n, 10):
            entries = []
            for k in range(i, min(i + 10, n)):
                eid = HybridClock("HZ01", now_ms=lambda k=k: clock.ms + k).mint()
                day, slot = divmod(k, 144)
                entries.append({"id": eid, "kind": "booking", "member": tech, "node": "HZ01",
                                "op": "x", "at": id_time_ms(eid), "amount": 0, "deltas": [],
                                "ref": m, "service": "FOOT60", "minutes": 5,
                                "start": first + day * 86_400_000 + slot * 300_000})

            def put(doc: Doc[Any], entries: list[dict[str, Any]] = entries) -> None:
                for e in entries:
                    doc.get("entries", type=Map)[e["id"]] = e

            forger.write(entry_doc(entries[0]["id"], hz01.storage.day_of), put)
        sh02.apply_batch(forger.batch())
        assert sh02.faults() == []
        return _calls(lambda: bookings.decide(sh02))
    finally:
        for ledger in chain.values():
            ledger.close()


def test_a_liars_many_requests_for_one_technician_are_decided_in_linear_work(
        tmp_path: Path) -> None:
    """Each request was checked against every slot held, sorted anew each time, and
    each confirmation held one more: the pass, in the write transaction the tills
    wait on, was quadratic (0.68 s at 2,500 requests, 7.66 s at 10,000). Sorted once,
    each request a bisect: four times the requests, about four times the work."""
    n = 200
    small, got = _decide_many_requests(tmp_path, n)
    big, got4 = _decide_many_requests(tmp_path, 4 * n)
    assert [d["status"] for d in got] == ["confirmed"] * n
    assert [d["status"] for d in got4] == ["confirmed"] * (4 * n)
    assert big / small < 5, (small, big)


_SLOT = st.tuples(st.integers(0, 40), st.integers(-2, 12))


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.text("abcdef", min_size=1, max_size=2), _SLOT, max_size=12),
       st.lists(st.tuples(st.text("abcdefg", min_size=1, max_size=2), _SLOT), max_size=6),
       st.lists(st.tuples(_SLOT, st.text("abcdefg", max_size=2)), min_size=1, max_size=8))
def test_the_sorted_slots_find_what_sorting_them_all_found(
        held: dict[str, tuple[int, int]], added: list[tuple[str, tuple[int, int]]],
        asked: list[tuple[tuple[int, int], str]]) -> None:
    """`_Slots` (sorted once, confirmations inserted, a walk from a bisect) answers as
    the definition did (every slot sorted by start and end, the first overlapping),
    with slots of any length, overlapping or empty among them, and a booking skipped."""
    def definition(slots: dict[str, tuple[int, int]], start: int, end: int, skip: str
                   ) -> tuple[int, int] | None:
        for bid, (s, e) in sorted(slots.items(), key=lambda kv: kv[1]):
            if bid != skip and s < end and start < e:
                return s, e
        return None

    slots = {b: (s, s + d) for b, (s, d) in held.items()}
    index = bookings._Slots(slots)
    for b, (s, d) in added:
        if b in slots:
            continue  # `decide` adds only requests it has not decided
        slots[b] = (s, s + d)
        index.add(b, s, s + d)
        for (qs, qd), skip in asked:
            assert index.first_overlap(qs, qs + qd, skip) == definition(slots, qs, qs + qd,
                                                                        skip)
    for (qs, qd), skip in asked:
        assert index.first_overlap(qs, qs + qd, skip) == definition(slots, qs, qs + qd, skip)
