"""An entry lives in the document of its id's month (docs/design-notes.md, Storage).

A peer, or a stranger's sync file, can craft a Yjs update that puts a known entry
(or a fresh one) into another month's document. That reached the `entries`
projection's primary key and escaped `apply_remote` as a bare sqlite3.IntegrityError:
the command line called the store unusable, the websocket handler logged a traceback.
It is a protocol error: refused whole, nothing applied (not even in memory), the
session fails, the file is refused, the node keeps its other links and redials.
"""

from __future__ import annotations

import hashlib
import json
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgpack
import pytest
from helpers import events, new_ledger, snapshot, sync
from pycrdt import Doc, Map

from crdtledger import syncfile
from crdtledger.errors import CorruptSyncFile, LocalProtocolError, RemoteProtocolError
from crdtledger.hlc import HybridClock, encode
from crdtledger.ledger import Ledger
from crdtledger.model import entry_doc, member_doc
from crdtledger.sync import SyncSession, pack
from crdtledger.transport import MemoryNet
from peer import cli


def _member(ledger: Ledger) -> str:
    o = ledger.owner
    m = ledger.add_member(o, name="张三", phone="13800000000")
    ledger.topup(o, m, 10000)
    ledger.debit(o, m, amount=1234)
    return m


def _update(entries: dict[str, dict[str, Any]]) -> bytes:
    """A pycrdt update, made outside any ledger, that adds `entries` to a document."""
    doc = Doc()
    root = doc.get("entries", type=Map)
    for key, value in entries.items():
        root[key] = value
    return bytes(doc.get_update())


def _other_month(doc: str) -> str:
    """The month before `doc`'s (any other month would do)."""
    year, month = int(doc[7:11]), int(doc[12:14])
    year, month = (year - 1, 12) if month == 1 else (year, month - 1)
    return f"ledger/{year:04d}-{month:02d}"


def _topup(eid: str, member: str, node: str, amount: int = 500) -> dict[str, Any]:
    return {"id": eid, "kind": "topup", "member": member, "node": node, "op": "x",
            "at": 0, "amount": amount, "paid": amount, "deltas": [["cash", node, amount]]}


def attacks(victim: Ledger, member: str) -> dict[str, tuple[str, bytes]]:
    """(document, update) of each way to misplace an entry, against `victim`."""
    conn = victim.storage.conn
    known_id, body = conn.execute(
        "SELECT id, body FROM entries WHERE kind = 'topup' ORDER BY id").fetchone()
    known = json.loads(body)
    home = entry_doc(known_id, victim.storage.day_of)
    fresh = HybridClock("SH02").mint()
    fresh_home = entry_doc(fresh, victim.storage.day_of)
    # The largest timestamp an id can spell: a time past year 9999, in no month.
    never = f"{encode(2**64 - 1)}.SH02"
    # Noon on the 15th of the month before `fresh`'s, in the chain's zone.
    prev = _other_month(fresh_home)
    noon = datetime(int(prev[7:11]), int(prev[12:14]), 15, 12, tzinfo=victim.storage.tz)
    earlier = f"{encode(int(noon.timestamp() * 1000) << 16)}.SH02"
    return {
        # The victim's own top-up, copied whole into the month before.
        "known id, other month": (_other_month(home), _update({known_id: known})),
        # The same id with other content (a bigger top-up).
        "known id rewritten, other month": (
            _other_month(home), _update({known_id: _topup(known_id, member, "SH01", 99999)})),
        # A new entry whose id says another month than its document's.
        "fresh id, wrong month": (_other_month(fresh_home),
                                  _update({fresh: _topup(fresh, member, "SH02")})),
        # The same month a year before: outside the quick range, the careful check says.
        "fresh id, a year off": (f"ledger/{int(fresh_home[7:11]) - 1:04d}{fresh_home[11:]}",
                                 _update({fresh: _topup(fresh, member, "SH02")})),
        # An id no month holds (it used to escape as a bare ValueError).
        "id past year 9999": (fresh_home, _update({never: _topup(never, member, "SH02")})),
        # A good entry beside one from the month before: the update is refused whole.
        "good and misplaced together": (fresh_home, _update({
            fresh: _topup(fresh, member, "SH02"), earlier: _topup(earlier, member, "SH02")})),
    }


ATTACKS = ["known id, other month", "known id rewritten, other month", "fresh id, wrong month",
           "fresh id, a year off", "id past year 9999", "good and misplaced together"]


def _still_works(ledger: Ledger, member: str, doc: str, keys: list[str]) -> None:
    """Nothing of the refused update stayed in memory, and the ledger still sells."""
    root = ledger.storage.doc(doc).roots["entries"]
    assert not any(k in root for k in keys)
    before = ledger.balance(member)["cash"]
    ledger.debit(ledger.owner, member, amount=100)
    assert ledger.balance(member)["cash"] == before - 100


def _keys(update: bytes) -> list[str]:
    doc = Doc()
    doc.apply_update(update)
    return list(doc.get("entries", type=Map).keys())


# --- straight into apply_remote ------------------------------------------------------


@pytest.mark.parametrize("attack", ATTACKS)
def test_apply_remote_refuses_a_misplaced_entry_whole(a: Ledger, attack: str) -> None:
    m = _member(a)
    doc, update = attacks(a, m)[attack]
    a.storage.doc(doc)  # loaded beforehand: a rollback must reload it, not keep the edit
    # In one call with a good update of another document: that one is refused too.
    other = Doc()
    other.get("members", type=Map)["0000000000001.SH02"] = Map({"name": "x"})
    good = (member_doc("0000000000001.SH02"), bytes(other.get_update()))
    before = snapshot(a, [m])
    with pytest.raises(RemoteProtocolError, match="belongs in"):
        a.apply_remote([good, (doc, update)])
    assert snapshot(a, [m]) == before
    _still_works(a, m, doc, _keys(update))


def test_the_right_month_is_accepted(a: Ledger) -> None:
    """The rule refuses nothing honest: an entry in its own month projects."""
    m = _member(a)
    fresh = HybridClock("SH02").mint()
    a.apply_remote([(entry_doc(fresh, a.storage.day_of),
                     _update({fresh: _topup(fresh, m, "SH02")}))])
    assert a.rights(m, "cash")["SH02"] == 500


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
        try:
            m = _member(lg)
            for month in range(1, 13):
                edge = datetime(2026, month, 1, tzinfo=lg.storage.tz)
                ms = int(edge.timestamp() * 1000)
                for off in (-1, 0, 1, rng.randrange(1, 86_400_000 * 2)):
                    eid = f"{encode((ms + off) << 16)}.SH02"
                    home = entry_doc(eid, lg.storage.day_of)
                    assert home == f"ledger/{lg.storage.day_of(ms + off)[:7]}"
                    up = _update({eid: _topup(eid, m, "SH02", 1)})
                    at = datetime.fromtimestamp((ms + off) / 1000, UTC)
                    seen = {f"ledger/{t:%Y-%m}" for t in (at - timedelta(hours=12),
                                                          at + timedelta(hours=14))}
                    if _other_month(home) not in seen:
                        with pytest.raises(RemoteProtocolError, match="belongs in"):
                            lg.apply_remote([(_other_month(home), up)])
                    lg.apply_remote([(home, up)])
        finally:
            lg.close()


# --- (a) a live session --------------------------------------------------------------


@pytest.mark.parametrize("attack", ATTACKS)
def test_a_session_fails_on_a_misplaced_entry(a: Ledger, attack: str) -> None:
    m = _member(a)
    doc, update = attacks(a, m)[attack]
    s = SyncSession(a, expect_node="SH02")
    s.start()
    s.receive(pack({"t": "hello", "chain": a.chain, "node": "SH02", "now": a.clock.wall(),
                    "digest": b"\x00" * 16}))
    s.data_to_send()
    events(s)
    before = snapshot(a, [m])
    with pytest.raises(RemoteProtocolError, match="belongs in"):
        s.receive(pack({"t": "update", "doc": doc, "data": update}))
    assert snapshot(a, [m]) == before
    # The session has failed (the driver closes the link); the ledger has not.
    with pytest.raises(LocalProtocolError):
        s.receive(pack({"t": "state", "docs": {}}))
    _still_works(a, m, doc, _keys(update))


# --- (b) a sync file -----------------------------------------------------------------


def _sync_file(path: Path, chain: str, updates: list[tuple[str, bytes]]) -> Path:
    body = msgpack.packb({"chain": chain, "node": "SH02", "created": 0, "states": {},
                          "updates": [list(u) for u in updates]}, use_bin_type=True)
    path.write_bytes(b"CRDTLEDGER-SYNC 1\n" + hashlib.sha256(body).digest() + body)
    return path


@pytest.mark.parametrize("attack", ATTACKS)
def test_a_sync_file_with_a_misplaced_entry_is_refused(a: Ledger, tmp_path: Path,
                                                       attack: str) -> None:
    m = _member(a)
    doc, update = attacks(a, m)[attack]
    f = _sync_file(tmp_path / "evil.sync", a.chain, [(doc, update)])
    before = snapshot(a, [m])
    with pytest.raises(CorruptSyncFile, match="belongs in"):
        syncfile.import_file(a, f)
    assert snapshot(a, [m]) == before
    _still_works(a, m, doc, _keys(update))


def test_the_command_line_refuses_the_file_with_a_sentence(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = new_ledger(tmp_path, "SH01")
    m = _member(a)
    doc, update = attacks(a, m)["known id, other month"]
    before = snapshot(a, [m])
    a.close()
    f = _sync_file(tmp_path / "evil.sync", "default", [(doc, update)])
    data = str(tmp_path / "sh01")
    capsys.readouterr()
    assert cli.main(["import", "--data", data, str(f)]) == 1
    err = capsys.readouterr().err
    assert "belongs in" in err and "unusable" not in err, err
    a = Ledger.open(tmp_path / "sh01")
    try:
        assert snapshot(a, [m]) == before
        _still_works(a, m, doc, _keys(update))
    finally:
        a.close()


# --- (c) nodes on a net --------------------------------------------------------------


def test_a_node_drops_the_link_keeps_the_others_and_redials(tmp_path: Path) -> None:
    a = new_ledger(tmp_path, "SH01")
    evil = new_ledger(tmp_path, "SH02")
    honest = new_ledger(tmp_path, "SH03")
    try:
        m = _member(a)
        sync(a, evil)
        sync(a, honest)
        net = MemoryNet()
        net.add(evil)
        net.add(honest)
        core = net.add(a, dials=["SH02", "SH03"])
        net.run(5)
        assert sorted(core.connected()) == ["SH02", "SH03"]
        evil_link = net.link("SH01", "SH02")
        doc, update = attacks(a, m)["known id, other month"]
        before = snapshot(a, [m])
        net.inject("SH02", "SH01", [pack({"t": "update", "doc": doc, "data": update})])
        net.run()
        assert snapshot(a, [m]) == before
        assert [str(f.error) for f in net.failures if f.peer == "SH02"], net.failures
        assert all("belongs in" in str(f.error) for f in net.failures), net.failures
        assert "SH03" in core.connected(), "the honest link stays up"
        # The honest peer's sales still arrive, and the dropped peer is dialled again.
        net.submit("SH03", lambda: honest.topup(honest.owner, m, 700))
        net.run(120)
        assert a.balance(m)["cash"] == honest.balance(m)["cash"]
        assert sorted(core.connected()) == ["SH02", "SH03"]
        assert net.link("SH01", "SH02") not in (None, evil_link)
        _still_works(a, m, doc, _keys(update))
    finally:
        for lg in (a, evil, honest):
            lg.close()


def test_what_the_store_refuses_is_a_protocol_error_too(
        a: Ledger, monkeypatch: pytest.MonkeyPatch) -> None:
    """Behind the month rule, a projection's key that refuses remote data (here the
    rule switched off) still makes a protocol error, rolled back whole, never a bare
    sqlite3 error out of apply_remote."""
    m = _member(a)
    doc, update = attacks(a, m)["known id, other month"]
    monkeypatch.setattr("crdtledger.replica._check_months", lambda *args: None)
    before = snapshot(a, [m])
    with pytest.raises(RemoteProtocolError, match="refused by the store"):
        a.apply_remote([(doc, update)])
    assert snapshot(a, [m]) == before
    _still_works(a, m, doc, _keys(update))


@pytest.mark.parametrize(("doc", "ts"), [
    ("ledger/1969-12", 2**65 - (20 * 86_400_000 << 16)),  # reads as a time in 1969's range
    ("ledger/0000-01", 5), ("ledger/9999-12", 2**64 - 1), ("ledger/1970-01", 2**65 - 1),
])
def test_months_no_id_can_be_in(a: Ledger, doc: str, ts: int) -> None:
    m = _member(a)
    eid = f"{encode(ts)}.SH02"
    before = snapshot(a, [m])
    with pytest.raises(RemoteProtocolError, match="belongs in"):
        a.apply_remote([(doc, _update({eid: _topup(eid, m, "SH02")}))])
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
        home.apply_remote([(doc, _update({eid: _topup(eid, m, "SH02")}))])
        assert home.rights(m, "cash")["SH02"] == 500
    finally:
        far.close()
        home.close()
