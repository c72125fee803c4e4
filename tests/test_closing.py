"""Month-end cuts (crdtledger.closing): a branch closes a month a week after it ends,
every replica holds it to that, and the books say how far the chain has closed. Real
SQLite stores and the real sync sessions (helpers.sync); a lying branch writes its
log by hand with its own key (helpers.Forger)."""

from __future__ import annotations

import hashlib
import itertools
import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from conftest import run_cli
from cryptography import x509
from helpers import (
    FakeClock,
    Forger,
    data_snapshot,
    log_rows,
    new_ledger,
    sync,
    two_zones,
)
from pycrdt import Doc, Map

from crdtledger import closing, operations, views
from crdtledger.backups import restore, write_backup
from crdtledger.errors import InvalidInput, PermissionDenied
from crdtledger.hlc import HybridClock, id_time_ms
from crdtledger.ledger import Ledger
from crdtledger.log import APPLIED, CLOSING_DOC, CUT_DOC, HELD, WAITING, closing_data
from crdtledger.model import entry_doc, member_doc
from crdtledger.storage import DB_FILE
from peer.chain import enrol, init_chain, revocations_rule, revoke

DAY_MS = 86_400_000


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()  # 2026-01-01 08:00 in Shanghai, the stores' zone


@pytest.fixture
def pair(tmp_path: Path, clock: FakeClock) -> Iterator[tuple[Ledger, Ledger, str]]:
    a, b = (new_ledger(tmp_path, n, now_ms=clock) for n in ("SH01", "SH02"))
    m = a.add_member(a.owner, name="王芳", phone="13800000001")
    a.topup(a.owner, m, 100_000)
    sync(a, b)
    yield a, b, m
    a.close()
    b.close()


@contextmanager
def enrolled(tmp_path: Path, *nodes: str) -> Iterator[list[Ledger]]:
    """Stores of a chain with a CA (`tmp_path/acme`), the first node its head office,
    enrolled 120 days ago: the months these tests close (by the real clock) are theirs
    to close (a branch enrolled after a month is not waited for in it)."""
    chain_dir = tmp_path / "acme"
    init_chain(chain_dir)
    for node in nodes:
        Ledger.create(tmp_path / node, node, "acme")
        enrol(chain_dir, tmp_path / node, node, head_office=node == nodes[0],
              not_before=datetime.now(UTC) - timedelta(days=120))
    stores = [Ledger.open(tmp_path / node) for node in nodes]
    try:
        yield stores
    finally:
        for ledger in stores:
            ledger.close()


@pytest.mark.parametrize(("day", "month"), [
    ("2026-02-07", "2025-12"), ("2026-02-08", "2026-01"), ("2026-01-31", "2025-12"),
    ("2026-01-07", "2025-11"), ("2026-01-08", "2025-12"), ("2026-03-01", "2026-01"),
])
def test_a_month_is_due_a_week_after_it_ends(day: str, month: str) -> None:
    assert closing.due_month(day) == month


def test_a_report_reaching_past_the_closed_months_says_it_may_still_change(
        pair: tuple[Ledger, Ledger, str], clock: FakeClock) -> None:
    """March's settlement printed on 2 April said "nothing to settle", and "SH01 owes
    SH03 120.00" on the 9th once a branch cut off on the 31st was heard: neither said
    the month was open. A closed month's report says nothing more."""
    a, b, _m = pair

    def shown(name: str, **params: str) -> str:
        op = operations.TABLE[name]
        return op.show(a, operations.run(a, a.owner, name, params), params)

    open_note = "not closed yet: these figures may still change"
    assert open_note in shown("report.daily", day="2026-01-01")
    assert "books closed through no month yet" in shown("report.daily", day="2026-01-01")
    clock.advance_days(38)  # 2026-02-08: January is due
    for ledger in (a, b, a):
        ledger.housekeeping()
        sync(a, b)
    assert closing.books(a)["closed_through"] == "2026-01"
    assert open_note not in shown("report.daily", day="2026-01-01")
    assert open_note not in shown("report.settlement", **{"from": "2026-01-01",
                                                          "to": "2026-01-31"})
    assert "(books closed through 2026-01)" in shown("report.daily", day="2026-02-08")
    assert open_note in shown("report.settlement", **{"from": "2026-01-01"})


def test_the_daily_pass_closes_the_month_due_once(pair: tuple[Ledger, Ledger, str],
                                                 clock: FakeClock) -> None:
    a, b, _m = pair
    a.housekeeping()
    assert a.closed_through == "2025-11"
    tip = a.storage.log.tip("SH01")
    a.housekeeping()  # nothing more is due the same day
    assert a.storage.log.tip("SH01") == tip
    clock.advance_days(38)  # 2026-02-08: January is due
    a.housekeeping()
    assert a.closed_through == "2026-01"
    sync(a, b)
    books = closing.books(b)
    assert books == {"closed_through": None, "latest": "2026-01",
                     "branches": {"SH01": "2026-01", "SH02": None}, "behind": ["SH02"],
                     "retired": [], "closing": None, "blocked": []}
    b.housekeeping()  # closes January, and signs its closing: it holds all of it
    sync(a, b)
    a.housekeeping()  # SH01 signs it too, a day later
    sync(a, b)
    digest = closing.digest(a, "2026-01")
    assert digest is not None and digest == closing.digest(b, "2026-01")
    for ledger in (a, b):
        assert closing.books(ledger) == {
            "closed_through": "2026-01", "latest": "2026-01",
            "branches": {"SH01": "2026-01", "SH02": "2026-01"}, "behind": [],
            "retired": [], "closing": {"month": "2026-01", "digest": digest,
                                       "agree": ["SH01", "SH02"], "differ": [],
                                       "counted": True,  # every branch (no CA: all govern)
                                       "balances": {"purses": {"cash": 100_000},
                                                    "holders": 1, "lots": 0,
                                                    "lot_points": 0, "pending": 0}},
            "blocked": []}
        assert ledger.faults() == []


def test_entries_written_before_the_cut_are_taken_with_it_in_one_batch(
        tmp_path: Path, pair: tuple[Ledger, Ledger, str], clock: FakeClock) -> None:
    """A replica applies a batch grouped by document, cuts first: the entries its
    writer made before a cut, in the month it closes, are judged by their place in
    the log, not by the order they were applied in."""
    a, _b, m = pair
    clock.advance_days(30)  # 2026-01-31
    a.debit(a.owner, m, amount=2_500)
    clock.advance_days(8)  # 2026-02-08
    a.housekeeping()
    assert a.closed_through == "2026-01"
    a.debit(a.owner, m, amount=1_000)
    c = new_ledger(tmp_path, "SH03", now_ms=clock)
    try:
        sync(a, c)  # everything of SH01, cut included, in one batch
        assert c.faults() == []
        assert c.balance(m) == a.balance(m)
        assert c.balance(m)["cash"] == 100_000 - 2_500 - 1_000
        assert closing.books(c)["branches"]["SH01"] == "2026-01"
    finally:
        c.close()


def _forged_topup(forger: Forger, member: str, at_ms: int) -> None:
    eid = HybridClock(forger.node, now_ms=lambda: at_ms).mint()
    entry = {"id": eid, "kind": "topup", "member": member, "node": forger.node, "op": "x",
             "at": id_time_ms(eid), "amount": 50_000, "paid": 50_000,
             "deltas": [["cash", forger.node, 50_000]]}

    def put(doc: Doc[object]) -> None:
        doc.get("entries", type=Map)[eid] = entry

    forger.write(entry_doc(eid, forger.ledger.storage.day_of), put)


def test_a_cut_of_a_month_to_come_closes_nobody_elses_books(
        pair: tuple[Ledger, Ledger, str], clock: FakeClock) -> None:
    """SH01 signs a cut of December 2099 (no rule can tell a month to come: a replica's
    clock may be wrong): it binds SH01 alone; the books wait for no one on it."""
    a, b, _m = pair
    a.housekeeping()
    b.housekeeping()
    sync(a, b)
    forger = Forger(a)
    forger.record(CUT_DOC, b"2099-12")
    b.apply_batch(forger.batch())
    assert b.faults() == []
    books = closing.books(b)
    assert (books["closed_through"], books["latest"], books["branches"], books["behind"]) == (
        "2025-11", "2025-11", {"SH01": "2099-12", "SH02": "2025-11"}, [])


def _forged_member(forger: Forger, at_ms: int) -> None:
    mid = HybridClock(forger.node, now_ms=lambda: at_ms).mint()
    forger.write(member_doc(mid), lambda d: d.get("members", type=Map).__setitem__(
        mid, Map({"name": "迟到", "phone": "13900009999", "home": forger.node,
                  "created_at": id_time_ms(mid)})))


@pytest.mark.parametrize("lie", ["entry into the closed month", "cut going back",
                                 "cut of no month", "entry before the month's end",
                                 "member joined in the closed month"])
def test_a_branch_that_breaks_its_cut_is_refused_and_blocked(
        pair: tuple[Ledger, Ledger, str], clock: FakeClock, lie: str) -> None:
    """SH01, with its own valid key, closes January and then writes into it anyway
    (a back-dated top-up of 500.00), or closes an earlier month again, or writes a
    cut naming no month, or writes a top-up at 07:00 on 1 February, its time: a
    February entry, yet before January's end in every zone (12:00 UTC), where its
    clock mints nothing once it closed January and the closing's points lots are cut.
    SH02 refuses the record whole, blocks SH01, and its books and balances do not
    move."""
    a, b, m = pair
    clock.advance_days(38)
    a.housekeeping()
    sync(a, b)
    forger = Forger(a)
    if lie == "entry into the closed month":
        _forged_topup(forger, m, clock.ms - 20 * DAY_MS)
    elif lie == "entry before the month's end":
        _forged_topup(forger, m, clock.ms - 7 * DAY_MS - 3_600_000)  # 31 Jan 23:00 UTC
    elif lie == "member joined in the closed month":  # a closed day's new members
        _forged_member(forger, clock.ms - 20 * DAY_MS)
    else:
        forger.record(CUT_DOC, b"2025-12" if lie == "cut going back" else b"Jan.")
    before = data_snapshot(b, [m])
    b.apply_batch(forger.batch())
    faults = b.faults()
    assert [(f["node"], f["rule"]) for f in faults] == [("SH01", "closed-month")]
    assert data_snapshot(b, [m]) == before
    assert b.balance(m)["cash"] == 100_000
    books = closing.books(b)
    assert books["branches"]["SH01"] == "2026-01" and books["blocked"] == ["SH01"]
    # The books say why the months after wait, and what ends it.
    said = operations.TABLE["report.books"].show(b, books, {})
    assert "SH01 blocked here for a proven fault" in said and "chain revoke" in said


def test_a_liars_records_after_its_first_broken_one_are_held_whatever_the_batch(
        tmp_path: Path, pair: tuple[Ledger, Ledger, str], clock: FakeClock) -> None:
    """SH01 closes January, then writes a February top-up, a back-dated January one
    and another February one. SH02 gets the first two, then the third; SH03 gets all
    three in one batch, which a replica applies document by document (February's
    before January's). Both refuse the January record, blame it and no other, and
    hold the one after it: the same books and the same faults at both."""
    a, b, m = pair
    clock.advance_days(38)
    a.housekeeping()
    sync(a, b)
    c = new_ledger(tmp_path, "SH03", now_ms=clock)
    try:
        sync(a, c)
        forger = Forger(a)
        _forged_topup(forger, m, clock.ms)
        _forged_topup(forger, m, clock.ms - 20 * DAY_MS)
        _forged_topup(forger, m, clock.ms + 1)
        first, lie, after = forger.records
        b.apply_batch(forger.batch([first, lie]))
        b.apply_batch(forger.batch())
        c.apply_batch(forger.batch())
        for r in (b, c):
            assert [(f["node"], f["seq"], f["rule"]) for f in r.faults()] == [
                ("SH01", lie.seq, "closed-month")]
            assert r.balance(m)["cash"] == 100_000 + 50_000
            assert r.storage.log.state_of("SH01", after.seq) == HELD
        held = [data_snapshot(r, [m]) for r in (b, c)]
        for k in ("entries", "rights", "totals", "state_vectors", f"history:{m}"):
            assert held[0][k] == held[1][k], k
        states = "SELECT seq, state FROM records WHERE node = 'SH01' ORDER BY seq"
        assert (b.storage.conn.execute(states).fetchall()
                == c.storage.conn.execute(states).fetchall())
    finally:
        c.close()


def test_a_liars_record_after_one_that_waits_is_judged_when_that_one_is_applied(
        tmp_path: Path, clock: FakeClock) -> None:
    """SH02 edits a member SH01 created, then writes into a month it closed. SH03
    gets SH02's records before SH01's: the edit waits for what it builds on, and the
    lie after it waits with it (not judged ahead of its place in the log). Once
    SH01's records come, the edit is applied and the lie refused: SH03 ends as SH04,
    which got everything in order."""
    a, b, c, d = (new_ledger(tmp_path, n, now_ms=clock) for n in ("SH01", "SH02", "SH03",
                                                                   "SH04"))
    try:
        m = a.add_member(a.owner, name="王芳", phone="13800000001")
        a.topup(a.owner, m, 100_000)
        clock.advance_days(38)
        b.housekeeping()  # SH02 closes January
        sync(a, b)
        b.topup(b.owner, m, 1_000)
        b.edit_member(b.owner, m, fields={"name": "王芳芳"})
        forger = Forger(b)
        _forged_topup(forger, m, clock.ms - 20 * DAY_MS)
        (lie,) = forger.records
        honest = b.storage.log.records_after({"SH02": 0})  # its cut, and those two
        c.apply_batch(forger.batch([*honest, lie]))
        states = "SELECT seq, state FROM records WHERE node = 'SH02' ORDER BY seq"
        assert c.faults() == []
        assert [s for _q, s in c.storage.conn.execute(states)][-3:] == [
            APPLIED, WAITING, WAITING]
        sync(a, c)
        sync(a, d)
        d.apply_batch(forger.batch([*honest, lie]))
        for r in (c, d):
            assert [(f["node"], f["seq"], f["rule"]) for f in r.faults()] == [
                ("SH02", lie.seq, "closed-month")]
            assert r.member(m)["name"] == "王芳芳"
            assert r.balance(m)["cash"] == 100_000 + 1_000
        assert (c.storage.conn.execute(states).fetchall()
                == d.storage.conn.execute(states).fetchall())
    finally:
        for x in (a, b, c, d):
            x.close()


def test_a_clock_set_back_after_a_cut_does_not_write_into_the_closed_month(
        pair: tuple[Ledger, Ledger, str], clock: FakeClock) -> None:
    """A PC whose clock ran three weeks ahead closed January on what it took for
    8 February; its clock is then put right (19 January). Its sales go on, into
    February (its ids run ahead until the clock catches up), and every replica
    takes them."""
    a, b, m = pair
    clock.advance_days(38)
    a.housekeeping()
    clock.advance_days(-20)
    sale = a.debit(a.owner, m, amount=1_000)
    assert entry_doc(str(sale["id"]), a.storage.day_of) == "ledger/2026-02"
    sync(a, b)
    assert b.faults() == [] and b.balance(m) == a.balance(m)


def test_the_writer_refuses_an_entry_into_a_month_it_closed(
        pair: tuple[Ledger, Ledger, str], clock: FakeClock) -> None:
    """The writer's own check, before it commits: what its peers would refuse (here an
    entry filed by a store whose zone then moved a day back, by hand)."""
    a, _b, m = pair
    clock.advance_days(38)
    a.housekeeping()
    a.closed_through = "2026-02"  # as if its zone had put February behind it
    before = data_snapshot(a, [m])
    with pytest.raises(PermissionDenied, match="books of 2026-02 are closed at SH01"):
        a.debit(a.owner, m, amount=1_000)
    assert data_snapshot(a, [m]) == before


def test_a_restored_branch_gets_its_cut_back_before_it_sells(
        tmp_path: Path, pair: tuple[Ledger, Ledger, str], clock: FakeClock) -> None:
    """A backup taken before SH01 closed January, restored: SH01 catches up with its
    own log from SH02, cut included, and holds to it."""
    a, b, m = pair
    bk = tmp_path / "bk"
    write_backup(a.storage.dir, bk)
    clock.advance_days(38)
    a.housekeeping()
    sync(a, b)
    a.close()
    restore(bk, tmp_path / "again")
    r = Ledger.open(tmp_path / "again", now_ms=clock)
    try:
        assert r.closed_through is None
        sync(r, b)
        assert r.restored is None and r.closed_through == "2026-01"
        clock.advance_days(-20)  # and its clock is wrong as well: February still
        sale = r.debit(r.owner, m, amount=1_000)
        assert entry_doc(str(sale["id"]), r.storage.day_of) == "ledger/2026-02"
        sync(r, b)
        assert b.faults() == [] and r.faults() == []
    finally:
        r.close()


def test_the_books_report_as_the_command_line_shows_it(tmp_path: Path) -> None:
    """`crdtledger report books`, on a real store: each branch's cut, and who the next
    closing waits for."""
    data = tmp_path / "sh01"
    assert run_cli("init", "--node", "SH01", data=data).code == 0
    with Ledger.open(data) as ledger:
        ledger.housekeeping()  # today's month due (the real clock)
        due = closing.due_month(ledger.today())
        result = operations.run(ledger, ledger.owner, "report.books", {})
    digest = result["closing"]["digest"]
    assert result == {"closed_through": due, "latest": due, "branches": {"SH01": due},
                      "behind": [], "retired": [], "closing": {"month": due, "digest": digest,
                                                "agree": ["SH01"], "differ": [],
                                                "counted": True, "balances": {
                                                    "purses": {}, "holders": 0, "lots": 0,
                                                    "lot_points": 0, "pending": 0}},
                      "blocked": []}
    r = run_cli("report", "books", data=data)
    assert r.code == 0, r.err
    assert f"books closed through {due} at every branch" in r.out
    assert f"closing of {due}: digest {digest[:16]}, signed alike by SH01" in r.out
    assert f"balances at the end of {due}: nothing held, held by 0 members" in r.out
    r = run_cli("report", "books", "--json", data=data)
    assert r.code == 0 and json.loads(r.out) == result


def test_every_branch_signs_the_same_closing_and_a_lie_shows(
        tmp_path: Path, pair: tuple[Ledger, Ledger, str], clock: FakeClock) -> None:
    """Three branches close January and sign its closing: one digest. SH03 then signs
    a closing of the same month with another digest (its own key, a well-formed
    record: no rule can tell which history is the true one): every replica takes
    it and shows it as differing."""
    a, b, m = pair
    c = new_ledger(tmp_path, "SH03", now_ms=clock)
    try:
        chain = (a, b, c)
        for x in chain:  # each writes its first cuts: the others hear of it
            x.housekeeping()
        sync(a, b), sync(b, c), sync(a, c)
        a.debit(a.owner, m, amount=1_200)
        clock.advance_days(38)
        for _ in range(2):  # close, sync, then sign (a signature needs every cut)
            for x in chain:
                x.housekeeping()
            sync(a, b), sync(b, c), sync(a, c)
        digests = {closing.digest(x, "2026-01") for x in chain}
        assert len(digests) == 1 and None not in digests
        for x in chain:
            assert closing.books(x)["closing"]["agree"] == ["SH01", "SH02", "SH03"]
        liar = Forger(c)
        liar.record(CLOSING_DOC, closing_data("2026-01", "0" * 64))
        a.apply_batch(liar.batch())
        assert a.faults() == []
        bal = a.balance(m)  # nothing was written after January
        assert bal["cash"] == 98_800 and bal["points"] > 0
        assert closing.books(a)["closing"] == {
            "month": "2026-01", "digest": digests.pop(), "agree": ["SH01", "SH02"],
            "differ": ["SH03"], "counted": False,  # two of the three
            "balances": {"purses": {"cash": 98_800, "points": bal["points"]},
                         "holders": 1, "lots": 1, "lot_points": bal["points"], "pending": 0}}
        assert views.trust_status(a)["closing_differs"] == {"month": "2026-01",
                                                            "branches": ["SH03"]}
        assert views.trust_status(b)["closing_differs"] is None
        r = run_cli("status", data=a.storage.dir)  # the owner's look at the branch
        assert r.code == 0, r.err
        assert "BOOKS of 2026-01 signed otherwise by SH03: a fork" in r.out
    finally:
        c.close()



def _close_and_sign(*stores: Ledger) -> None:
    """Each closes the month due, hears the others' cuts, and signs the closing."""
    for _ in range(2):
        for x in stores:
            x.housekeeping()
        for x, y in itertools.combinations(stores, 2):
            sync(x, y)


def test_the_closing_names_by_hash_the_records_a_joining_branch_takes_whole(
        pair: tuple[Ledger, Ledger, str], clock: FakeClock) -> None:
    """The closing's last part commits to the records before the cuts of every document
    a branch joining from it takes whole (the member documents, the rules, the months
    after the one closed), by their chain hashes, as docs/format.md defines it: not the
    closed month's ledger records, nor any record after a cut. An erasure after the
    closing redacts records before the cuts and changes none of it."""
    a, b, m = pair
    for x in (a, b):
        x.housekeeping()  # December's cuts: each hears of the other
    sync(a, b)
    other = b.add_member(b.owner, name="李雷", phone="13800000002")  # holds nothing
    a.debit(a.owner, m, amount=1_200)
    clock.advance_days(33)  # 2026-02-03: February's document begins before the cuts
    a.topup(a.owner, m, 5_000)
    sync(a, b)
    clock.advance_days(5)
    _close_and_sign(a, b)
    signed = closing.digest(a, "2026-01")
    assert signed is not None and closing.books(b)["closing"]["agree"] == ["SH01", "SH02"]

    cuts = a.storage.log.cuts()
    upto = {n: next(s for s, month in cuts[n] if month >= "2026-01") for n in ("SH01", "SH02")}
    rows = a.storage.conn.execute(
        "SELECT doc, node, seq, hash FROM records ORDER BY doc, node, seq").fetchall()
    whole = [r for r in rows if r[2] < upto[r[1]] and r[0] not in (CUT_DOC, CLOSING_DOC)
             and r[0] not in ("ledger/2025-12", "ledger/2026-01")]
    assert {doc.split("/")[0] for doc, *_ in whole} == {"members", "ledger"}
    assert "ledger/2026-02" in {doc for doc, *_ in whole}  # the top-up of 3 February
    expected = hashlib.sha256(b"crdtledger whole records\0" + b"2026-01")
    for doc, node, seq, hash_ in whole:
        expected.update(f"{doc}\0{node}\0{seq}\0{bytes(hash_).hex()}\n".encode())
    assert closing.whole_records(a, "2026-01", upto) == (len(whole), expected.hexdigest())
    assert closing.whole_records(b, "2026-01", upto) == (len(whole), expected.hexdigest())

    redacted = a.storage.conn.execute(
        "SELECT node, seq, data FROM records WHERE doc = ?", (member_doc(other),)).fetchall()
    a.erase_member(a.owner, other)
    a.edit_member(a.owner, m, fields={"notes": "after the closing"})
    sync(a, b)
    sync(a, b)
    after = b.storage.conn.execute(
        "SELECT node, seq, data FROM records WHERE doc = ?", (member_doc(other),)).fetchall()
    assert [r for r in after if r[:2] == ("SH02", redacted[-1][1])] != [redacted[-1]]
    assert redacted[-1][1] < upto["SH02"]  # a record before the cut, redacted since
    for x in (a, b):
        assert closing.digest(x, "2026-01") == signed
        assert closing.books(x)["closing"]["differ"] == []


def test_the_balances_at_a_months_end_are_by_document_whatever_the_zone(
        tmp_path: Path, clock: FakeClock) -> None:
    """A closing covers the balances at its month's end. SH01 (Shanghai) sells at
    00:30 on 1 February, its time: the entry is February's. SH02 keeps its store in
    Los Angeles, where that instant is still 31 January (its reports put it on that
    day), yet both count it out of January's balances and sign one digest."""
    a = new_ledger(tmp_path, "SH01", now_ms=clock)
    b = new_ledger(tmp_path, "SH02", now_ms=clock, timezone="America/Los_Angeles")
    try:
        m = a.add_member(a.owner, name="王芳", phone="13800000001")
        a.topup(a.owner, m, 100_000)  # 1 January, 08:00 in Shanghai
        clock.ms += 30 * DAY_MS + 16 * 3_600_000 + 30 * 60_000  # 31 Jan 16:30 UTC
        debit = a.debit(a.owner, m, amount=2_000)
        assert entry_doc(debit["id"], a.storage.day_of) == "ledger/2026-02"
        sync(a, b)
        day = b.storage.conn.execute("SELECT day FROM entries WHERE id = ?",
                                     (debit["id"],)).fetchone()[0]
        assert day == "2026-01-31"  # Los Angeles' day, and a January id there
        clock.ms += 9 * DAY_MS  # 9 February in both zones: January is due
        _close_and_sign(a, b)
        books = [closing.books(x)["closing"] for x in (a, b)]
        assert books[0] == books[1]
        assert books[0]["month"] == "2026-01" and books[0]["agree"] == ["SH01", "SH02"]
        assert books[0]["balances"]["purses"]["cash"] == 100_000
        assert a.balance(m)["cash"] == b.balance(m)["cash"] == 98_000
    finally:
        a.close()
        b.close()


def test_the_closing_carries_the_points_lots_cut_by_id_whatever_the_zone(
        tmp_path: Path, clock: FakeClock) -> None:
    """The points lots at January's end are the fold of every entry with an id before
    the month's end in the latest zone (UTC-12: 1 February 12:00 UTC), not by
    document: SH01 (Shanghai) redeems at 00:30 on 1 February its time, an entry of
    February's document that the fold of January's lots must still take (a later
    entry can take a lot before an earlier one is spent, so order matters). SH02 (Los
    Angeles) signs the same digest. What is spent after the cut leaves the closing's
    lots as they were, though the table moves on."""
    a, b = two_zones(tmp_path, clock, expire_days=90)
    try:
        m = a.add_member(a.owner, name="王芳", phone="13800000001")
        a.topup(a.owner, m, 100_000)
        a.debit(a.owner, m, amount=10_000)  # 1 January, at the level's multiplier
        assert views.points(a, m)["total"] == 120
        clock.ms += 30 * DAY_MS + 16 * 3_600_000 + 30 * 60_000  # 31 Jan 16:30 UTC
        spent = a.redeem_points(a.owner, m, 30, "towel")
        assert entry_doc(spent["id"], a.storage.day_of) == "ledger/2026-02"
        sync(a, b)
        clock.ms += 9 * DAY_MS  # 9 February: January is due
        _close_and_sign(a, b)
        books = [closing.books(x)["closing"] for x in (a, b)]
        assert books[0] == books[1] and books[0]["agree"] == ["SH01", "SH02"]
        assert books[0]["month"] == "2026-01"
        assert (books[0]["balances"]["lots"], books[0]["balances"]["lot_points"]) == (1, 90)
        digest = books[0]["digest"]
        a.redeem_points(a.owner, m, 50, "towel")  # after the cut: the table moves on
        sync(a, b)
        assert views.points(b, m)["total"] == 40
        for x in (a, b):
            assert closing.books(x)["closing"]["digest"] == digest
            assert closing.books(x)["closing"]["balances"]["lot_points"] == 90
        shown = operations.show(a, "report.books", closing.books(a), {})
        assert "90 points in 1 lots not yet spent or expired (the lots as of the 1st, 12:00 UTC)" \
            in shown
    finally:
        a.close()
        b.close()


def test_a_store_edited_by_hand_signs_a_closing_that_differs(
        tmp_path: Path, pair: tuple[Ledger, Ledger, str], clock: FakeClock) -> None:
    """SH02's store is edited by hand (a backup put back after someone raised the
    member's stored value to 9,000.00 in its rights table): its log still matches
    SH01's, but the balances it sells on do not, so its closing differs, at both."""
    a, b, m = pair
    data = b.storage.dir
    b.close()
    with sqlite3.connect(data / DB_FILE) as conn:
        assert conn.execute("UPDATE rights SET amount = amount + 800000 WHERE member = ? "
                            "AND purse = 'cash'", (m,)).rowcount == 1
    b = Ledger.open(data, now_ms=clock)
    try:
        clock.advance_days(38)  # 8 February: January is due
        _close_and_sign(a, b)
        assert b.storage.log.tip("SH01") == a.storage.log.tip("SH01")
        ours, theirs = closing.books(a)["closing"], closing.books(b)["closing"]
        assert (ours["agree"], ours["differ"]) == (["SH01"], ["SH02"])
        assert (theirs["agree"], theirs["differ"]) == (["SH02"], ["SH01"])
        assert ours["balances"]["purses"]["cash"] == 100_000
        assert theirs["balances"]["purses"]["cash"] == 900_000
    finally:
        b.close()


def test_the_balances_report_lists_what_each_member_held_at_the_months_end(
        tmp_path: Path, pair: tuple[Ledger, Ledger, str], clock: FakeClock) -> None:
    """`crdtledger report balances`: each member's stored value, bonus value and points
    at the end of the latest month closed at every branch, and their sums, which are
    the closing's. A sale after the month's end is not in it; a month not closed at
    every branch, or no month, is refused with a sentence."""
    a, b, m = pair
    with pytest.raises(InvalidInput, match="no month is closed at every branch yet"):
        operations.run(a, a.owner, "report.balances", {})
    n = b.add_member(b.owner, name="李娜", phone="13900001111")
    b.topup(b.owner, n, 30_000)
    b.debit(b.owner, n, amount=12_800)
    clock.advance_days(32)  # 2 February
    a.topup(a.owner, m, 5_000)  # February's
    clock.advance_days(6)  # 8 February: January is due
    _close_and_sign(a, b)
    report = operations.run(a, a.owner, "report.balances", {})
    points = b.balance(n)["points"]
    assert report == {"month": "2026-01", "members": sorted([
        {"member": m, "name": "王芳", "cash": 100_000, "bonus": 0, "points": 0},
        {"member": n, "name": "李娜", "cash": 17_200, "bonus": 0, "points": points},
    ], key=lambda r: r["member"]), "total": {"cash": 117_200, "bonus": 0, "points": points},
        "pending": 0}
    assert a.balance(m)["cash"] == 105_000  # February's top-up: not January's
    sums = closing.books(a)["closing"]["balances"]["purses"]
    assert report["total"] == {k: sums.get(k, 0) for k in ("cash", "bonus", "points")}
    assert operations.run(b, b.owner, "report.balances", {"month": "2025-12"})["members"] == []
    with pytest.raises(InvalidInput, match="2026-02 is not closed at every branch yet"):
        operations.run(a, a.owner, "report.balances", {"month": "2026-02"})
    with pytest.raises(InvalidInput, match="month"):
        operations.run(a, a.owner, "report.balances", {"month": "2026-1"})
    r = run_cli("report", "balances", "--csv", data=a.storage.dir)
    assert r.code == 0, r.err
    lines = r.out.splitlines()
    assert lines[0] == "member,name,cash,bonus,points"
    assert lines[-1] == f"total,,1172.00,0.00,{points}"
    r = run_cli("report", "balances", "--month", "2026-02", data=a.storage.dir)
    assert r.code != 0 and "2026-02 is not closed at every branch yet" in r.err


def test_a_month_whose_records_wait_here_is_signed_again_once_they_come(
        tmp_path: Path, clock: FakeClock) -> None:
    """SH03 gets SH02's log before SH01's: SH02's January edit of a member SH01
    created waits for it, and so do SH02's top-up and cut after it. Every branch SH03
    knows has closed January: it signs the balances it holds, saying two records of
    the month wait; once SH01's records come it counts the top-up, signs again, and
    agrees with the others."""
    a, b, c = (new_ledger(tmp_path, n, now_ms=clock) for n in ("SH01", "SH02", "SH03"))
    try:
        m = a.add_member(a.owner, name="王芳", phone="13800000001")
        a.topup(a.owner, m, 100_000)
        sync(a, b)
        b.edit_member(b.owner, m, fields={"name": "王芳芳"})
        b.topup(b.owner, m, 1_000)
        clock.advance_days(38)  # 8 February
        _close_and_sign(a, b)
        c.apply_batch(Forger(b).batch(b.storage.log.records_after({"SH02": 0})))
        c.housekeeping()
        books = closing.books(c)
        assert books["closed_through"] == "2026-01"
        assert books["closing"]["balances"] == {"purses": {}, "holders": 0, "lots": 0,
                                                "lot_points": 0, "pending": 2}
        assert operations.run(c, c.owner, "report.balances", {})["pending"] == 2
        sync(a, c)
        c.housekeeping()
        sync(a, c)
        books = closing.books(c)
        assert books["closing"]["agree"] == ["SH01", "SH02", "SH03"]
        assert books["closing"]["balances"] == {"purses": {"cash": 101_000}, "holders": 1,
                                                "lots": 0, "lot_points": 0, "pending": 0}
        assert closing.books(a)["closing"] == books["closing"]
    finally:
        for x in (a, b, c):
            x.close()


def test_a_liars_overdraft_that_waits_for_ever_keeps_no_month_open(
        tmp_path: Path, pair: tuple[Ledger, Ledger, str], clock: FakeClock) -> None:
    """SH03, with its own valid key, debits 500.00 of rights it never held in January
    and then closes January: every replica defers the debit for ever (nothing will
    fund it). The honest branches still close January and sign one closing, the debit
    counted nowhere."""
    a, b, m = pair
    liar = Forger(new_ledger(tmp_path, "SH03", now_ms=clock))
    try:
        eid = HybridClock("SH03", now_ms=lambda: clock.ms + DAY_MS).mint()
        entry = {"id": eid, "kind": "debit", "member": m, "node": "SH03", "op": "x",
                 "at": id_time_ms(eid), "amount": 50_000,
                 "deltas": [["cash", "SH03", -50_000]], "pay": "stored"}
        liar.write(entry_doc(eid, liar.ledger.storage.day_of),
                   lambda d: d.get("entries", type=Map).__setitem__(eid, entry))
        liar.record(CUT_DOC, b"2026-01")
        for x in (a, b):
            x.apply_batch(liar.batch())
            assert x.storage.conn.execute("SELECT key FROM deferred").fetchall() == [(eid,)]
        clock.advance_days(38)  # 8 February
        _close_and_sign(a, b)
        ours = closing.books(a)["closing"]
        assert ours == closing.books(b)["closing"]
        assert (ours["month"], ours["agree"]) == ("2026-01", ["SH01", "SH02"])
        assert ours["balances"] == {"purses": {"cash": 100_000}, "holders": 1, "lots": 0,
                                    "lot_points": 0, "pending": 1}
    finally:
        liar.ledger.close()


def test_a_cut_of_year_0000_breaks_no_replicas_books(
        tmp_path: Path, pair: tuple[Ledger, Ledger, str], clock: FakeClock) -> None:
    """SH03's only record is a cut of 0000-01 (a well-formed month, no calendar's): the
    books of the replica that takes it still read, its balances too (every entry is
    after such a month), rather than failing on a date no calendar can turn."""
    a, _b, m = pair
    liar = Forger(new_ledger(tmp_path, "SH03", now_ms=clock))
    try:
        liar.record(CUT_DOC, b"0000-01")
        a.apply_batch(liar.batch())
        a.housekeeping()
        books = closing.books(a)
        assert books["closed_through"] == "0000-01"
        assert books["closing"]["balances"] == {"purses": {}, "holders": 0, "lots": 0,
                                                "lot_points": 0, "pending": 0}
        report = operations.run(a, a.owner, "report.balances", {"month": "0000-01"})
        assert (report["members"], report["pending"]) == ([], 0)
        assert a.balance(m)["cash"] == 100_000
    finally:
        liar.ledger.close()


def test_a_branch_that_has_not_heard_every_cut_has_no_closing(
        tmp_path: Path, pair: tuple[Ledger, Ledger, str], clock: FakeClock) -> None:
    a, b, _m = pair
    b.housekeeping()  # SH02's first cuts: SH01 hears of it
    sync(a, b)
    clock.advance_days(38)
    a.housekeeping()
    sync(a, b)
    assert closing.digest(b, "2026-01") is None  # SH02 itself has not closed it
    b.housekeeping()
    assert closing.digest(b, "2026-01") is not None
    assert [m for _s, m, _d in b.storage.log.closings()["SH02"]] == ["2026-01"]
    assert "2026-01" not in [m for _s, m, _d in a.storage.log.closings()["SH01"]]
    assert closing.digest(a, "2026-01") is None  # SH02's cut has not reached SH01


@pytest.mark.parametrize("bad", [closing_data("2026-02", "0" * 64), b"2026-01:nothing",
                                 closing_data("2026-01", "0" * 63) + b"\xff"])
def test_a_closing_its_writer_cannot_sign_is_refused(
        pair: tuple[Ledger, Ledger, str], clock: FakeClock, bad: bytes) -> None:
    """A closing of a month its writer has not closed (February, on 8 February), or
    one that says no digest: refused, its writer blocked, nothing changed."""
    a, b, m = pair
    clock.advance_days(38)
    b.housekeeping()
    sync(a, b)
    forger = Forger(b)
    forger.record(CLOSING_DOC, bad)
    before = data_snapshot(a, [m])
    a.apply_batch(forger.batch())
    assert [(f["node"], f["rule"]) for f in a.faults()] == [("SH02", "closed-month")]
    assert data_snapshot(a, [m]) == before


def test_a_shop_closed_for_good_is_refused_at_once_and_not_waited_for(tmp_path: Path) -> None:
    """SH02 (enrolled in a chain with a CA) wrote a member and never closed a month;
    head office revokes its certificate (the shop closed): the chain's books close
    without it, at every branch, and the report says why."""
    with enrolled(tmp_path, "HQ", "SH01", "SH02") as stores:
        hq, sh01, sh02 = stores
        chain_dir = tmp_path / "acme"
        sh02.add_member(sh02.owner, name="李娜", phone="13900001111")
        for ledger in (hq, sh01):
            ledger.housekeeping()  # the real clock: the month due today is closed
        sync(hq, sh02), sync(hq, sh01), sync(sh01, sh02)
        due = closing.due_month(sh01.today())
        assert closing.books(sh01)["behind"] == ["SH02"]
        assert closing.books(sh01)["closed_through"] is None
        hq.set_rule(hq.owner, "revocations", revocations_rule(revoke(chain_dir, "SH02")))
        sync(hq, sh01)
        # From the moment it revoked SH02, the head office takes nothing more of it.
        sh02.add_member(sh02.owner, name="王芳", phone="13800000001")
        sync(hq, sh02)
        assert hq.positions()["SH02"] < sh02.positions()["SH02"]
        assert any("is revoked" in r for r in hq.refusals)
        for ledger in (hq, sh01):
            books = closing.books(ledger)
            assert (books["closed_through"], books["behind"], books["retired"]) == (
                due, [], ["SH02"]), ledger.node
            ledger.housekeeping()  # and signs the closing, SH02's log counted as held
        sync(hq, sh01)
        assert closing.books(sh01)["closing"]["agree"] == ["HQ", "SH01"]
        r = run_cli("report", "books", data=tmp_path / "SH01")
        assert r.code == 0 and "not waiting for SH02: certificates revoked" in r.out, r.err


def test_a_closing_counts_once_head_office_and_a_quorum_signed_it(tmp_path: Path) -> None:
    """An enrolled chain of head office and three shops; SH01 has written before its
    cut. Each signs a closing at its first pass, knowing only itself: all but SH01's
    are of less than the chain's history. Once they have heard of each other, each
    signs again (its digest changed); the three shops' closings alone do not count,
    head office's with them does (closing.QUORUM)."""
    with enrolled(tmp_path, "HQ", "SH01", "SH02", "SH03") as stores:
        hq, sh01, sh02, sh03 = stores

        def spread() -> None:
            for _ in range(2):
                for shop in (sh01, sh02, sh03):
                    sync(hq, shop)

        def said(ledger: Ledger) -> tuple[list[str], list[str], bool]:
            c = closing.books(ledger)["closing"]
            return c["agree"], c["differ"], c["counted"]

        sh01.add_member(sh01.owner, name="王芳", phone="13800000001")
        for ledger in stores:
            ledger.housekeeping()  # its cut of the month due (the real clock), signed
        spread()
        assert said(hq) == (["SH01"], ["HQ", "SH02", "SH03"], False)
        for shop in (sh01, sh02, sh03):
            shop.housekeeping()  # SH02 and SH03 sign again; SH01 need not
        spread()
        assert all(said(x) == (["SH01", "SH02", "SH03"], ["HQ"], False)
                   for x in stores)
        hq.housekeeping()
        spread()
        assert all(said(x) == (["HQ", "SH01", "SH02", "SH03"], [], True)
                   for x in stores)
        before = log_rows(hq)
        hq.housekeeping()  # nothing new: nothing signed again
        assert log_rows(hq) == before
        r = run_cli("report", "books", data=tmp_path / "SH02")
        assert r.code == 0 and "it counts (head office and a quorum signed it)" in r.out, r.err


def test_a_blocked_branchs_closing_is_no_witness(tmp_path: Path) -> None:
    """Head office, SH01 and SH02 sign; SH01 then writes into a month it closed and
    is blocked: at SH02 the closing no longer counts (head office and SH02 are two of
    the three in good standing) until SH03 signs too."""
    with enrolled(tmp_path, "HQ", "SH01", "SH02", "SH03") as stores:
        hq, sh01, sh02, sh03 = stores
        m = sh01.add_member(sh01.owner, name="王芳", phone="13800000001")
        for ledger in stores:
            ledger.housekeeping()
        for _ in range(2):
            for shop in (sh01, sh02, sh03):
                sync(hq, shop)
        for ledger in (hq, sh02):
            ledger.housekeeping()
            sync(hq, sh02)
            sync(sh01, sh02)
        books = closing.books(sh02)["closing"]
        assert books["agree"] == ["HQ", "SH01", "SH02"] and books["counted"]
        forger = Forger(sh01)
        _forged_topup(forger, m, sh01.clock.wall() - 70 * DAY_MS)
        sh02.apply_batch(forger.batch())
        assert [f["rule"] for f in sh02.faults()] == ["closed-month"]
        books = closing.books(sh02)["closing"]
        assert books["agree"] == ["HQ", "SH01", "SH02"] and not books["counted"]
        sh03.housekeeping()
        sync(hq, sh03)
        sync(hq, sh02)
        assert closing.books(sh02)["closing"]["counted"]


def test_a_new_pc_whose_clock_is_behind_books_nothing_before_it_was_enrolled(
        tmp_path: Path) -> None:
    """SH01 and SH02 closed and signed the month due. SH03, enrolled today on a PC whose
    clock runs 50 days behind, sells before it meets anyone: its sales were booked into
    that closed month, and every branch's books read it open again (a BIOS clock years
    behind would reopen every month since). Nothing is booked before a branch's
    certificate starts (head office's clock, a day back): the books stay closed."""
    with enrolled(tmp_path, "SH01", "SH02") as (hq, b):
        _close_and_sign(hq, b)
        books = operations.run(hq, hq.owner, "report.books", {})
        assert books["closing"]["counted"]
        Ledger.create(tmp_path / "SH03", "SH03", "acme")
        enrol(tmp_path / "acme", tmp_path / "SH03", "SH03")
        start_ms = int(x509.load_pem_x509_certificate(
            (tmp_path / "SH03" / "tls" / "node.crt").read_bytes()
        ).not_valid_before_utc.timestamp() * 1000)
        behind = time.time_ns() // 1_000_000 - 50 * DAY_MS
        with Ledger.open(tmp_path / "SH03", now_ms=lambda: behind) as late:
            m = late.add_member(late.owner, name="迟到", phone="13900009999")
            sale = late.topup(late.owner, m, 30_000, pay="cash")
            assert id_time_ms(str(sale["id"])) >= start_ms
            assert late.storage.day_of(start_ms) <= late.today()
            late.housekeeping()  # its first cut: the month due by the floor's day
            hq.pull(late, origin="test")
        assert hq.faults() == []
        closed = books["closed_through"]
        assert hq.storage.conn.execute(
            "SELECT COUNT(*) FROM entries WHERE node = 'SH03' AND day < ?",
            (f"{closed}-32",)).fetchone() == (0,)
        after = operations.run(hq, hq.owner, "report.books", {})
        assert (after["closed_through"], after["behind"]) == (closed, [])


def test_a_blocked_liars_cut_sent_to_one_branch_closes_nobodys_books(
        tmp_path: Path, clock: FakeClock) -> None:
    """SH03 closed December with the others, then wrote into it: refused and blocked
    everywhere. A cut of January it sent afterwards to SH01 only was held there and
    counted: SH01 closed January alone, SH02 waited for a cut it would never take, and
    the two were closed through different months for good. A blocked writer's cuts
    count only before its first refused record, the same record everywhere."""
    a, b, liar_store = (new_ledger(tmp_path, n, now_ms=clock) for n in ("SH01", "SH02", "SH03"))
    try:
        m = a.add_member(a.owner, name="王芳", phone="13800000001")
        a.topup(a.owner, m, 100_000)
        for x in (b, liar_store):
            sync(a, x)
        clock.advance_days(7.5)  # 8 January: December due
        _close_and_sign(a, b, liar_store)
        liar = Forger(liar_store)
        _forged_topup(liar, m, clock.ms - 10 * DAY_MS)  # into December: refused
        for x in (a, b):
            x.apply_batch(liar.batch())
            assert [(f["node"], f["rule"]) for f in x.faults()] == [("SH03", "closed-month")]
        clock.advance_days(31)  # January due
        liar.record(CUT_DOC, b"2026-01")
        a.apply_batch(liar.batch())  # to SH01 only
        _close_and_sign(a, b)
        books = [closing.books(x) for x in (a, b)]
        assert [(bk["closed_through"], bk["branches"]["SH03"], bk["blocked"]) for bk in books] \
            == [("2025-12", "2025-12", ["SH03"])] * 2
    finally:
        for x in (a, b, liar_store):
            x.close()


def _enrol_today(tmp_path: Path, node: str) -> Ledger:
    Ledger.create(tmp_path / node, node, "acme")
    enrol(tmp_path / "acme", tmp_path / node, node)
    return Ledger.open(tmp_path / node)


def test_a_liar_enrolled_today_dates_nothing_before_it_was_enrolled(tmp_path: Path) -> None:
    """SH01 and SH02 closed and signed the month due. SH03, a liar enrolled today,
    writes a top-up dated 40 days back by hand, then its cut of that month: it was
    taken, and every branch's signed closing of the month changed (its digest, its
    balances). Its certificate says when the chain enrolled it (write rule
    `enrolled`): the top-up is refused everywhere, the closing stands."""
    with enrolled(tmp_path, "SH01", "SH02") as (hq, b):
        m = hq.add_member(hq.owner, name="王芳", phone="13800000001")
        hq.topup(hq.owner, m, 10_000)
        sync(hq, b)
        _close_and_sign(hq, b)
        before = closing.books(hq)["closing"]
        assert before["counted"]
        with _enrol_today(tmp_path, "SH03") as liar_store:
            sync(hq, liar_store)
            liar = Forger(liar_store)
            _forged_topup(liar, m, time.time_ns() // 1_000_000 - 40 * DAY_MS)
            liar.record(CUT_DOC, before["month"].encode())
            hq.apply_batch(liar.batch())
        assert [(f["node"], f["rule"]) for f in hq.faults()] == [("SH03", "enrolled")]
        assert hq.storage.conn.execute(
            "SELECT COUNT(*) FROM entries WHERE node = 'SH03'").fetchone() == (0,)
        after = closing.books(hq)["closing"]
        assert (after["month"], after["digest"], after["counted"]) == (
            before["month"], before["digest"], True)


def test_a_branch_enrolled_after_a_month_keeps_it_closed_before_its_first_cut(
        tmp_path: Path) -> None:
    """One sale of SH03, enrolled today, reached head office before SH03's first daily
    pass cut anything: every month the chain had closed read open again at every
    branch (`closed_through` none), until SH03 cut. It can date nothing before it was
    enrolled, so it closed those months: the books stay as they were, digest and all,
    and stay so once it cuts."""
    with enrolled(tmp_path, "SH01", "SH02") as (hq, b):
        m = hq.add_member(hq.owner, name="王芳", phone="13800000001")
        hq.topup(hq.owner, m, 10_000)
        sync(hq, b)
        _close_and_sign(hq, b)
        before = closing.books(hq)
        assert before["closed_through"] is not None
        with _enrol_today(tmp_path, "SH03") as new:
            sync(hq, new)
            new.topup(new.owner, m, 2_000, pay="cash")
            sync(hq, new)
            assert new.storage.log.cuts().get("SH03") is None
            now = closing.books(hq)
            assert (now["closed_through"], now["closing"]["digest"], now["behind"]) == (
                before["closed_through"], before["closing"]["digest"], [])
            new.housekeeping()  # its first cut
            sync(hq, new)
            assert new.storage.log.cuts().get("SH03")
            assert closing.books(hq)["closing"]["digest"] == before["closing"]["digest"]
        assert hq.faults() == []


def test_a_renewed_certificate_keeps_the_first_enrolment(tmp_path: Path) -> None:
    """A renewal issues a certificate starting now. Judged by its start, every record
    the branch wrote before would be refused at a branch joining later (which judges
    a writer by the certificate of its latest head), and the honest branch blocked:
    the renewal carries the first enrolment over."""
    from crdtledger.trust import enrolled_since
    from peer.cli import renew_certificate

    def since(node: str) -> int | None:
        return enrolled_since(x509.load_pem_x509_certificate(
            (tmp_path / node / "tls" / "node.crt").read_bytes()))

    init_chain(tmp_path / "acme")
    Ledger.create(tmp_path / "SH01", "SH01", "acme")
    enrol(tmp_path / "acme", tmp_path / "SH01", "SH01", head_office=True,
          not_before=datetime.now(UTC) - timedelta(days=10))
    first = since("SH01")
    assert first is not None
    with Ledger.open(tmp_path / "SH01", now_ms=lambda: first + DAY_MS) as hq:
        m = hq.add_member(hq.owner, name="王芳", phone="13800000001")
        hq.topup(hq.owner, m, 10_000)
    renew_certificate(tmp_path / "acme", tmp_path / "SH01")
    renewed = x509.load_pem_x509_certificate(
        (tmp_path / "SH01" / "tls" / "node.crt").read_bytes())
    assert since("SH01") == first < int(renewed.not_valid_before_utc.timestamp() * 1000)
    with Ledger.open(tmp_path / "SH01") as hq, _enrol_today(tmp_path, "SH02") as joining:
        hq.topup(hq.owner, m, 1_000)  # a head signed under the renewed certificate
        sync(hq, joining)
        assert joining.faults() == []
        assert joining.storage.conn.execute(
            "SELECT COUNT(*) FROM entries WHERE node = 'SH01'").fetchone() == (2,)
