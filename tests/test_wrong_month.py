"""An entry lives in the document of its id's month (docs/design-notes.md, Storage).

A branch (or a stranger's sync file carrying its records) can sign a record that
puts one of its entries (one the replicas already hold, or a fresh one) into another
month's document. That used to reach the `entries` projection's primary key and
escape as a bare sqlite3.IntegrityError: the command line called the store unusable,
the websocket handler logged a traceback. It breaks a write rule (entry-writer):
the record is refused whole, nothing of it applied (not even in memory); from a
session it is kept as evidence and its writer blocked while the session goes on; a
sync file carrying it is refused whole; the node keeps its links.

Misplaced entries are forged as a dishonest branch would (tests/helpers.Forger): its
own pycrdt client id, its own log, its own key.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgpack
import pytest
from helpers import Forger, data_snapshot, events, new_ledger, reopened, snapshot, sync
from pycrdt import Doc, Map

from crdtledger import seal, syncfile
from crdtledger.errors import CorruptSyncFile, RemoteProtocolError
from crdtledger.hlc import HybridClock, encode, id_time_ms
from crdtledger.ledger import Ledger
from crdtledger.log import APPLIED, REFUSED, Record
from crdtledger.model import entry_doc, member_doc
from crdtledger.sync import SyncSession, pack, wire_logs
from crdtledger.transport import MemoryNet
from peer import cli


def _member(ledger: Ledger) -> str:
    o = ledger.owner
    m = ledger.add_member(o, name="张三", phone="13800000000")
    ledger.topup(o, m, 10000)
    ledger.debit(o, m, amount=1234)
    return m


def _put(entries: dict[str, Any]) -> Callable[[Doc[Any]], None]:
    """A forger's write: `entries` added to the document's `entries`."""
    def mutate(doc: Doc[Any]) -> None:
        root = doc.get("entries", type=Map)
        for key, value in entries.items():
            root[key] = value
    return mutate


def _other_month(doc: str) -> str:
    """Two months before `doc`'s. Not the month before: within 14 hours of a month's
    turn, an id's month differs between time zones, and either neighbour is then a
    month some zone reads it in (`replica._possible_months`), so the entry would get
    past the month check there and be refused by another rule."""
    year, month = int(doc[7:11]), int(doc[12:14])
    index = year * 12 + month - 1 - 2
    return f"ledger/{index // 12:04d}-{index % 12 + 1:02d}"


def _topup(eid: str, member: str, node: str, amount: int = 500) -> dict[str, Any]:
    return {"id": eid, "kind": "topup", "member": member, "node": node, "op": "x",
            "at": id_time_ms(eid), "amount": amount, "paid": amount,
            "deltas": [["cash", node, amount]]}


@pytest.fixture
def evil(a: Ledger, tmp_path: Path) -> Iterator[Ledger]:
    """Branch SH02, synced with A after a top-up of its own: a valid key, and an entry
    of its own that A holds."""
    ledger = new_ledger(tmp_path, "SH02")
    m = _member(a)
    sync(a, ledger)
    ledger.topup(ledger.owner, m, 300)
    sync(a, ledger)
    yield ledger
    ledger.close()


def _member_of(a: Ledger) -> str:
    (m,) = a.storage.conn.execute("SELECT id FROM members").fetchone()
    return str(m)


def attacks(victim: Ledger, member: str) -> dict[str, tuple[str, dict[str, Any]]]:
    """(document, entries) of each way for SH02 to misplace an entry, against `victim`."""
    known_id, body = victim.storage.conn.execute(
        "SELECT id, body FROM entries WHERE kind = 'topup' AND node = 'SH02'").fetchone()
    known = json.loads(body)
    home = entry_doc(known_id, victim.storage.day_of)
    fresh = HybridClock("SH02").mint()
    fresh_home = entry_doc(fresh, victim.storage.day_of)
    # The largest timestamp an id can spell: a time past year 9999, in no month.
    never = f"{encode(2**64 - 1)}.SH02"
    # Noon on the 15th of another month than `fresh`'s, in the chain's zone.
    prev = _other_month(fresh_home)
    noon = datetime(int(prev[7:11]), int(prev[12:14]), 15, 12, tzinfo=victim.storage.tz)
    earlier = f"{encode(int(noon.timestamp() * 1000) << 16)}.SH02"
    return {
        # The writer's own top-up, which every replica holds, copied into another month.
        "known id, other month": (_other_month(home), {known_id: known}),
        # The same id with other content (a bigger top-up).
        "known id rewritten, other month": (
            _other_month(home), {known_id: _topup(known_id, member, "SH02", 99999)}),
        # A new entry whose id says another month than its document's.
        "fresh id, wrong month": (_other_month(fresh_home),
                                  {fresh: _topup(fresh, member, "SH02")}),
        # The same month a year before: outside the quick range, the careful check says.
        "fresh id, a year off": (f"ledger/{int(fresh_home[7:11]) - 1:04d}{fresh_home[11:]}",
                                 {fresh: _topup(fresh, member, "SH02")}),
        # An id no month holds (it used to escape as a bare ValueError).
        "id past year 9999": (fresh_home, {never: _topup(never, member, "SH02")}),
        # A good entry beside one from another month: the record is refused whole.
        "good and misplaced together": (fresh_home, {
            fresh: _topup(fresh, member, "SH02"), earlier: _topup(earlier, member, "SH02")}),
    }


ATTACKS = ["known id, other month", "known id rewritten, other month", "fresh id, wrong month",
           "fresh id, a year off", "id past year 9999", "good and misplaced together"]


def _forge(a: Ledger, evil: Ledger, attack: str, *, good_first: bool = False
           ) -> tuple[Forger, str, list[str]]:
    """SH02's forger with the attack's record written (after a good record of another
    document if `good_first`): the forger, the attacked document, its keys."""
    doc, entries = attacks(a, _member_of(a))[attack]
    forger = Forger(evil)
    if good_first:
        forger.write(member_doc("0000000000001.SH02"), lambda d: d.get(
            "members", type=Map).__setitem__("0000000000001.SH02", {"name": "x"}))
    forger.write(doc, _put(entries))
    return forger, doc, list(entries)


def _still_works(ledger: Ledger, member: str, doc: str, keys: list[str]) -> None:
    """Nothing of the refused record stayed in memory, and the ledger still sells."""
    root = ledger.storage.doc(doc).roots["entries"]
    assert not any(k in root for k in keys)
    before = ledger.balance(member)["cash"]
    ledger.debit(ledger.owner, member, amount=100)
    assert ledger.balance(member)["cash"] == before - 100


def _fault(ledger: Ledger) -> dict[str, Any]:
    (fault,) = ledger.faults()
    assert (fault["node"], fault["rule"]) == ("SH02", "entry-writer"), fault
    return fault


# --- straight into apply_batch -------------------------------------------------------


@pytest.mark.parametrize("attack", ATTACKS)
def test_a_misplaced_entry_is_refused_whole(a: Ledger, evil: Ledger, attack: str) -> None:
    """Taken all or nothing (strict, as a sync file is): with a good record of another
    document before it, nothing at all is applied or kept."""
    m = _member_of(a)
    forger, doc, keys = _forge(a, evil, attack, good_first=True)
    a.storage.doc(doc)  # loaded beforehand: a rollback must reload it, not keep the edit
    before = snapshot(a, [m])
    with pytest.raises(RemoteProtocolError, match=r"entry-writer.*belongs in"):
        a.apply_batch(forger.batch(), strict=True)
    assert snapshot(a, [m]) == before
    assert a.faults() == []
    _still_works(a, m, doc, keys)


@pytest.mark.parametrize("attack", ATTACKS)
def test_a_misplaced_entry_is_refused_and_its_writer_blocked(a: Ledger, evil: Ledger,
                                                             attack: str) -> None:
    """From a peer: the good record before it is applied, the misplaced one is kept
    as evidence but not applied, and its writer is blocked."""
    m = _member_of(a)
    forger, doc, keys = _forge(a, evil, attack, good_first=True)
    a.storage.doc(doc)
    new = a.apply_batch(forger.batch())
    assert [r.seq for r in new] == [forger.seq - 1, forger.seq]
    assert a.storage.log.state_of("SH02", forger.seq - 1) == APPLIED
    assert a.storage.log.state_of("SH02", forger.seq) == REFUSED
    assert a.member("0000000000001.SH02")["name"] == "x"
    assert "belongs in" in _fault(a)["detail"]
    assert "SH02" in a.storage.log.blocked()
    _still_works(a, m, doc, keys)


def test_the_right_month_is_accepted(a: Ledger, evil: Ledger) -> None:
    """The rule refuses nothing honest: an entry in its own month projects."""
    m = _member_of(a)
    fresh = HybridClock("SH02").mint()
    forger = Forger(evil)
    forger.write(entry_doc(fresh, a.storage.day_of), _put({fresh: _topup(fresh, m, "SH02")}))
    a.apply_batch(forger.batch(), strict=True)
    assert a.rights(m, "cash")["SH02"] == 300 + 500


def test_every_month_edge_as_the_writer_chose_it(tmp_path: Path) -> None:
    """Ids at the first and last milliseconds of months (in the store's zone, and
    around them) are accepted in the month their writer placed them in; in the
    neighbour's month only if some zone's clock (UTC-12 to UTC+14) reads that month
    at the id's time, else refused. Asia/Shanghai, and a zone far from UTC each way."""
    rng = random.Random(7)
    for zone in ("Asia/Shanghai", "Pacific/Kiritimati", "Pacific/Pago_Pago"):
        path = tmp_path / zone.replace("/", "_")
        Ledger.create(path, "SH01", timezone=zone)
        lg = Ledger.open(path)
        writer = new_ledger(path, "SH02")
        try:
            m = _member(lg)
            forger = Forger(writer)
            for month in range(1, 13):
                edge = datetime(2026, month, 1, tzinfo=lg.storage.tz)
                ms = int(edge.timestamp() * 1000)
                for off in (-1, 0, 1, rng.randrange(1, 86_400_000 * 2)):
                    eid = f"{encode((ms + off) << 16)}.SH02"
                    home = entry_doc(eid, lg.storage.day_of)
                    assert home == f"ledger/{lg.storage.day_of(ms + off)[:7]}"
                    entries = {eid: _topup(eid, m, "SH02", 1)}
                    at = datetime.fromtimestamp((ms + off) / 1000, UTC)
                    seen = {f"ledger/{t:%Y-%m}" for t in (at - timedelta(hours=12),
                                                          at + timedelta(hours=14))}
                    if _other_month(home) not in seen:
                        trial = forger.copy()  # refused: the forger goes on without it
                        trial.write(_other_month(home), _put(entries))
                        with pytest.raises(RemoteProtocolError, match="belongs in"):
                            lg.apply_batch(trial.batch(), strict=True)
                    forger.write(home, _put(entries))
                    lg.apply_batch(forger.batch(forger.records[-1:]), strict=True)
            assert lg.faults() == []
        finally:
            lg.close()
            writer.close()


# --- (a) a live session --------------------------------------------------------------


@pytest.mark.parametrize("attack", ATTACKS)
def test_a_session_refuses_a_misplaced_entry(a: Ledger, evil: Ledger, attack: str) -> None:
    m = _member_of(a)
    forger, doc, keys = _forge(a, evil, attack)
    s = SyncSession(a, expect_node="SH02")
    s.start()
    s.receive(pack({"t": "hello", "chain": a.chain, "node": "SH02", "now": a.clock.wall(),
                    "digest": b"\x00" * 16}))
    s.data_to_send()
    events(s)
    before = data_snapshot(a, [m])
    s.receive(forger.frame())
    assert data_snapshot(a, [m]) == before
    assert a.storage.log.state_of("SH02", forger.seq) == REFUSED  # kept: evidence
    assert "belongs in" in _fault(a)["detail"]
    assert any("belongs in" in r for r in a.refusals)
    # The session goes on (the record is refused, not the conversation).
    assert not s.failed
    s.receive(pack({"t": "state", "logs": wire_logs(a.log_view())}))
    _still_works(a, m, doc, keys)


# --- (b) a sync file -----------------------------------------------------------------


def _sync_file(path: Path, forger: Forger, records: list[Record] | None = None) -> Path:
    """A sync file as SH02 would write one: its records, under its head, sealed with
    its key."""
    ledger = forger.ledger
    body = msgpack.packb({"chain": ledger.chain, "node": forger.node, "created": 0,
                          "logs": wire_logs(ledger.log_view()),
                          **forger.batch(records).to_wire()}, use_bin_type=True)
    path.write_bytes(seal.seal(ledger.trust, syncfile.KIND, body, ledger.clock.wall()))
    return path


@pytest.mark.parametrize("attack", ATTACKS)
def test_a_sync_file_with_a_misplaced_entry_is_refused(a: Ledger, evil: Ledger,
                                                       tmp_path: Path, attack: str) -> None:
    m = _member_of(a)
    forger, doc, keys = _forge(a, evil, attack, good_first=True)
    f = _sync_file(tmp_path / "evil.sync", forger)
    before = snapshot(a, [m])
    with pytest.raises(CorruptSyncFile, match=r"refused whole.*belongs in"):
        syncfile.import_file(a, f)
    assert snapshot(a, [m]) == before
    assert a.faults() == []
    _still_works(a, m, doc, keys)


def test_the_command_line_refuses_the_file_with_a_sentence(
        a: Ledger, evil: Ledger, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    m = _member_of(a)
    forger, doc, keys = _forge(a, evil, "known id, other month")
    f = _sync_file(tmp_path / "evil.sync", forger)
    before = snapshot(a, [m])
    path = a.storage.dir
    a.close()
    capsys.readouterr()
    assert cli.main(["import", "--data", str(path), str(f)]) == 1
    err = capsys.readouterr().err
    assert "belongs in" in err and "unusable" not in err, err
    again = Ledger.open(path)
    try:
        assert reopened(snapshot(again, [m])) == reopened(before)
        _still_works(again, m, doc, keys)
    finally:
        again.close()


# --- (c) nodes on a net --------------------------------------------------------------


def test_a_node_refuses_the_record_keeps_its_links_and_sells(tmp_path: Path) -> None:
    a = new_ledger(tmp_path, "SH01")
    evil = new_ledger(tmp_path, "SH02")
    honest = new_ledger(tmp_path, "SH03")
    try:
        m = _member(a)
        sync(a, evil)
        evil.topup(evil.owner, m, 300)
        sync(a, evil)
        sync(a, honest)
        net = MemoryNet()
        net.add(evil)
        net.add(honest)
        core = net.add(a, dials=["SH02", "SH03"])
        net.run(5)
        assert sorted(core.connected()) == ["SH02", "SH03"]
        forger, doc, keys = _forge(a, evil, "known id, other month")
        before = data_snapshot(a, [m])
        net.inject("SH02", "SH01", [forger.frame()])
        net.run()
        assert data_snapshot(a, [m]) == before
        assert "belongs in" in _fault(a)["detail"]
        assert not net.failures, net.failures  # a refused record fails no session
        assert "SH03" in core.connected(), "the honest link stays up"
        # The honest peer's sales still arrive; the refused record reached it too,
        # and it judged it alike.
        net.submit("SH03", lambda: honest.topup(honest.owner, m, 700))
        net.run(120)
        assert a.balance(m)["cash"] == honest.balance(m)["cash"]
        assert [(f["node"], f["rule"]) for f in honest.faults()] == [("SH02", "entry-writer")]
        _still_works(a, m, doc, keys)
    finally:
        for lg in (a, evil, honest):
            lg.close()


def test_what_the_store_refuses_breaks_a_rule_too(
        a: Ledger, evil: Ledger, monkeypatch: pytest.MonkeyPatch) -> None:
    """Behind the month rule, a projection's key that refuses remote data (here the
    rule switched off) still refuses the record whole under a write rule, never a
    bare sqlite3 error out of apply_batch."""
    m = _member_of(a)
    forger, doc, keys = _forge(a, evil, "known id, other month")
    monkeypatch.setattr("crdtledger.replica._check_months", lambda *args: [])
    before = snapshot(a, [m])
    with pytest.raises(RemoteProtocolError, match=r"entry-insert-once.*UNIQUE"):
        a.apply_batch(forger.batch(), strict=True)
    assert snapshot(a, [m]) == before
    a.apply_batch(forger.batch())  # from a peer: refused, kept, its writer blocked
    (fault,) = a.faults()
    assert fault["rule"] == "entry-insert-once"
    _still_works(a, m, doc, keys)


@pytest.mark.parametrize(("doc", "ts"), [
    ("ledger/1969-12", 2**65 - (20 * 86_400_000 << 16)),  # reads as a time in 1969's range
    ("ledger/0000-01", 5), ("ledger/9999-12", 2**64 - 1), ("ledger/1970-01", 2**65 - 1),
])
def test_months_no_id_can_be_in(a: Ledger, evil: Ledger, doc: str, ts: int) -> None:
    m = _member_of(a)
    eid = f"{encode(ts)}.SH02"
    forger = Forger(evil)
    forger.write(doc, _put({eid: _topup(eid, m, "SH02")}))
    before = snapshot(a, [m])
    with pytest.raises(RemoteProtocolError, match="belongs in"):
        a.apply_batch(forger.batch(), strict=True)
    assert snapshot(a, [m]) == before


def test_a_branch_in_another_time_zone_is_honest_at_a_months_turn(tmp_path: Path) -> None:
    """A writer files an entry by its own zone's month; a replica set to another zone
    accepts it there (each store has its zone: `init --timezone`), so a branch whose
    zone differs is not cut off for the hours around every month's turn."""
    Ledger.create(tmp_path / "far", "SH02", timezone="Pacific/Kiritimati")  # UTC+14
    Ledger.create(tmp_path / "home", "SH01", timezone="Asia/Shanghai")  # UTC+8
    far, home = Ledger.open(tmp_path / "far"), Ledger.open(tmp_path / "home")
    try:
        m = _member(home)
        # 2026-03-01 02:00 at Kiritimati is still February in Shanghai.
        ms = int(datetime(2026, 3, 1, 2, tzinfo=far.storage.tz).timestamp() * 1000)
        eid = f"{encode(ms << 16)}.SH02"
        doc = entry_doc(eid, far.storage.day_of)
        assert doc == "ledger/2026-03" != entry_doc(eid, home.storage.day_of)
        forger = Forger(far)
        forger.write(doc, _put({eid: _topup(eid, m, "SH02")}))
        home.apply_batch(forger.batch(), strict=True)
        assert home.rights(m, "cash")["SH02"] == 500
    finally:
        far.close()
        home.close()
