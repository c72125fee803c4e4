"""Offline sync files (crdtledger.syncfile): export, import, and every way a file
can be wrong. A refused file raises CorruptSyncFile or ForeignChain and changes
nothing at all (not even the remembered peer states)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import msgpack
import pytest
from helpers import doc_content, new_ledger, projections, snapshot

from crdtledger import syncfile
from crdtledger.errors import CorruptSyncFile, ForeignChain, InvalidInput, RemoteProtocolError
from crdtledger.ledger import Ledger
from crdtledger.sync import decode_state_vector


def populate(ledger: Ledger, n: int = 5, prefix: str = "138") -> list[str]:
    o = ledger.owner
    ms = []
    for i in range(n):
        m = ledger.add_member(o, name=f"会员{i}", phone=f"{prefix}0000000{i}")
        ledger.issue_card(o, m, f"{ledger.node}-{prefix}-{i}")
        ledger.topup(o, m, 10000 + i)
        ledger.debit(o, m, amount=100 + i)
        ms.append(m)
    ledger.set_rule(o, "promotions", [{"min": 100000, "bonus": 100}])
    return ms


def svs(ledger: Ledger) -> dict[str, dict[int, int]]:
    return {n: decode_state_vector(v) for n, v in ledger.state_vectors().items()}


def converged(x: Ledger, y: Ledger) -> bool:
    return (svs(x) == svs(y) and projections(x) == projections(y)
            and doc_content(x) == doc_content(y))


def write_sync(path: Path, body: Any, *, fmt: bytes = b"1", digest: bytes | None = None) -> Path:
    """A sync file made by hand: header, SHA-256 of the body, body."""
    raw = body if isinstance(body, bytes) else msgpack.packb(body, use_bin_type=True)
    path.write_bytes(b"CRDTLEDGER-SYNC " + fmt + b"\n"
                     + (digest if digest is not None else hashlib.sha256(raw).digest()) + raw)
    return path


def refused(ledger: Ledger, path: Path, exc: type[Exception] = CorruptSyncFile,
            match: str | None = None) -> Exception:
    before = snapshot(ledger)
    with pytest.raises(exc, match=match) as info:
        syncfile.import_file(ledger, path)
    assert isinstance(info.value, RemoteProtocolError)
    assert snapshot(ledger) == before
    return info.value


# --- export and import ---------------------------------------------------------------


def test_full_export_import(a: Ledger, b: Ledger, tmp_path: Path) -> None:
    ms = populate(a)
    f = tmp_path / "a.sync"
    info = syncfile.export_file(a, f)
    assert info["incremental"] is False and info["documents"] == len(a.state_vectors())
    assert info["bytes"] == f.stat().st_size
    assert f.read_bytes().startswith(b"CRDTLEDGER-SYNC 1\n")
    assert not list(tmp_path.glob("*.part"))
    got = syncfile.import_file(b, f)
    assert got["from"] == "SH01" and sorted(got["changed"]) == sorted(a.state_vectors())
    assert converged(a, b)
    for m in ms:
        assert b.balance(m) == a.balance(m)
    assert b.use_card("SH01-138-2")["member"] == ms[2]
    assert b.storage.peer_states("SH01") is not None


def test_reimport_changes_nothing(a: Ledger, b: Ledger, tmp_path: Path) -> None:
    populate(a)
    f = tmp_path / "a.sync"
    syncfile.export_file(a, f)
    syncfile.import_file(b, f)
    before = snapshot(b)
    got = syncfile.import_file(b, f)
    assert got["changed"] == []
    after = snapshot(b)
    before.pop("peers"), after.pop("peers")  # only the 'seen at' time of SH01 moves
    assert after == before
    # A node importing its own export learns nothing and remembers no peer.
    mine = snapshot(a)
    assert syncfile.import_file(a, f)["changed"] == []
    assert snapshot(a) == mine


def test_incremental_export_for_a_node(a: Ledger, b: Ledger, tmp_path: Path) -> None:
    ms = populate(a, 20)
    populate(b, 2, prefix="139")
    full_a = tmp_path / "a_full.sync"
    syncfile.export_file(a, full_a)
    syncfile.import_file(b, full_a)
    # B answers with what A lacks: it knows A's states from A's file.
    back = tmp_path / "b_for_a.sync"
    info = syncfile.export_file(b, back, for_node="SH01")
    assert info["incremental"] is True
    assert back.stat().st_size < full_a.stat().st_size
    syncfile.import_file(a, back)
    assert converged(a, b)
    # Now A knows everything B has: an export for B carries nothing ...
    nothing = syncfile.export_file(a, tmp_path / "nothing.sync", for_node="SH02")
    assert nothing["incremental"] is True and nothing["documents"] == 0
    # ... and after one more top-up at A, only that: far smaller than a full export.
    a.topup(a.owner, ms[0], 1)
    inc = tmp_path / "inc.sync"
    info = syncfile.export_file(a, inc, for_node="SH02")
    assert info["documents"] == 1
    full = syncfile.export_file(a, tmp_path / "full2.sync")
    assert info["bytes"] < full["bytes"] / 4
    got = syncfile.import_file(b, inc)
    assert len(got["changed"]) == 1
    assert b.balance(ms[0]) == a.balance(ms[0])
    assert converged(a, b)
    # An unknown node gets everything.
    other = syncfile.export_file(a, tmp_path / "other.sync", for_node="SH09")
    assert other["incremental"] is False and other["documents"] == len(a.state_vectors())


def test_incremental_file_into_a_node_that_lost_data_says_so(tmp_path: Path) -> None:
    """A node restored from scratch cannot use a file made for what it used to have:
    the import applies nothing it cannot build on and names the documents; a full
    export then completes it."""
    a = new_ledger(tmp_path, "SH01")
    ms = populate(a, 2)
    b = new_ledger(tmp_path, "SH02")
    syncfile.export_file(a, tmp_path / "a.sync")
    syncfile.import_file(b, tmp_path / "a.sync")
    syncfile.export_file(b, tmp_path / "b.sync")
    syncfile.import_file(a, tmp_path / "b.sync")  # A now believes B has everything
    b.close()
    b = new_ledger(tmp_path / "again", "SH02")  # B starts over, empty
    a.topup(a.owner, ms[0], 500)
    syncfile.export_file(a, tmp_path / "inc.sync", for_node="SH02")
    got = syncfile.import_file(b, tmp_path / "inc.sync")
    assert got["changed"] == []
    assert got["incomplete"] and all(n.startswith("ledger/") for n in got["incomplete"])
    assert b.balance(ms[0])["cash"] == 0  # nothing half-applied
    syncfile.export_file(a, tmp_path / "full.sync")
    full = syncfile.import_file(b, tmp_path / "full.sync")
    assert full["incomplete"] == []
    assert converged(a, b)
    a.close()
    b.close()


def test_export_replaces_an_existing_file(a: Ledger, b: Ledger, tmp_path: Path) -> None:
    populate(a, 1)
    f = tmp_path / "x.sync"
    f.write_bytes(b"old junk")
    syncfile.export_file(a, f)
    syncfile.import_file(b, f)
    assert converged(a, b)


# --- refused files ------------------------------------------------------------------


@pytest.fixture
def exported(a: Ledger, b: Ledger, tmp_path: Path) -> tuple[Ledger, Path]:
    """B with some data of its own, and a valid export of A's data."""
    populate(a, 3)
    populate(b, 1, prefix="139")
    f = tmp_path / "a.sync"
    syncfile.export_file(a, f)
    return b, f


def test_flipped_byte_anywhere_is_refused(exported, tmp_path: Path) -> None:
    b, f = exported
    raw = f.read_bytes()
    header = raw.index(b"\n") + 1
    for pos in (header + 3, header + 40, len(raw) // 2, len(raw) - 1):
        damaged = bytearray(raw)
        damaged[pos] ^= 0x01
        bad = tmp_path / f"flip{pos}.sync"
        bad.write_bytes(bytes(damaged))
        refused(b, bad, match="damaged or incomplete")
    damaged = bytearray(raw)
    damaged[2] ^= 0x20  # in the magic
    bad = tmp_path / "flipmagic.sync"
    bad.write_bytes(bytes(damaged))
    refused(b, bad, match="not a crdtledger sync file")


def test_truncated_and_empty_files_are_refused(exported, tmp_path: Path) -> None:
    b, f = exported
    raw = f.read_bytes()
    header = raw.index(b"\n") + 1
    for n in (len(raw) - 1, len(raw) // 2, header + 40, header + 31, header + 1, header,
              header - 1, 5, 0):
        bad = tmp_path / f"cut{n}.sync"
        bad.write_bytes(raw[:n])
        refused(b, bad)
    refused(b, tmp_path / "missing.sync", match="cannot read")
    refused(b, tmp_path, match="cannot read")  # a directory


@pytest.mark.parametrize("content", [
    b"hello world\n", b'{"chain": "default"}', b"\x00" * 100, "会员,余额\n张三,100\n".encode(),
    b"CRDTLEDGER-SYNC", b"CRDTLEDGER-SYNC x\n", b"CRDTLEDGER-SYNC \n", b"crdtledger-sync 1\n",
    b"CRDTLEDGER-SYNC 1.0\n" + b"\x00" * 40, b"PK\x03\x04 a zip file",
])
def test_not_a_sync_file(exported, tmp_path: Path, content: bytes) -> None:
    b, _ = exported
    bad = tmp_path / "junk.sync"
    bad.write_bytes(content)
    refused(b, bad)


def test_foreign_chain(exported, tmp_path: Path) -> None:
    b, _ = exported
    stranger = new_ledger(tmp_path / "elsewhere", "SH01", chain="other-chain")
    try:
        populate(stranger, 1)
        f = tmp_path / "stranger.sync"
        syncfile.export_file(stranger, f)
    finally:
        stranger.close()
    err = refused(b, f, ForeignChain)
    assert "other-chain" in str(err)


def test_newer_and_unknown_formats(exported, tmp_path: Path) -> None:
    b, f = exported
    raw = f.read_bytes()
    rest = raw[raw.index(b"\n") + 1:]
    for fmt, match in ((b"2", "newer"), (b"99", "newer"), (b"0", "does not read"),
                       (b"-1", "does not read")):
        bad = tmp_path / f"fmt{fmt.decode()}.sync"
        bad.write_bytes(b"CRDTLEDGER-SYNC " + fmt + b"\n" + rest)
        err = refused(b, bad, match=match)
        if match == "newer":
            assert "upgrade" in str(err)


def _body(ledger: Ledger, **over: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"chain": ledger.chain, "node": "SH07", "created": 0,
                            "states": {}, "updates": []}
    body.update(over)
    return body


def test_damaged_body_with_a_valid_checksum(exported, tmp_path: Path) -> None:
    b, f = exported
    good = syncfile.read_file(f, b.chain)
    valid_update = good["updates"][0]
    bodies: list[Any] = [
        b"\xc1 not msgpack",
        b"\x93\x01",  # truncated msgpack
        msgpack.packb([1, 2, 3]),
        msgpack.packb("text"),
        {"chain": b.chain},
        _body(b, states=[]),
        _body(b, updates={}),
        _body(b, states={"nope": b"\x00"}),
        _body(b, states={"rules\n": b"\x00"}),
        _body(b, states={b"rules": b"\x00"}),  # regression: was a TypeError
        _body(b, states={"rules": b"\x02\x01"}),
        _body(b, states={"rules": "text"}),
        _body(b, node=["SH07"]),  # regression: was remembered as peer "['SH07']"
        _body(b, node="not a node"),
        _body(b, node="SH01\n"),
        _body(b, updates=[["rules"]]),
        _body(b, updates=[["rules", "text"]]),
        _body(b, updates=[["weather", b"\x00\x00"]]),
        _body(b, updates=[[b"rules", b"\x00\x00"]]),
        _body(b, updates=[["rules", b"\x01\x02\x03garbage"]]),
        # All or nothing: a valid update followed by a garbage one applies neither.
        _body(b, updates=[list(valid_update), ["rules", b"\x01\x02\x03garbage"]]),
        _body(b, updates=[list(valid_update), ["members/01", b""]]),
    ]
    for i, body in enumerate(bodies):
        bad = write_sync(tmp_path / f"body{i}.sync", body)
        refused(b, bad)


def test_wrong_checksum_on_a_good_body(exported, tmp_path: Path) -> None:
    b, _f = exported
    body = msgpack.packb(_body(b))
    refused(b, write_sync(tmp_path / "x.sync", body, digest=b"\x00" * 32))
    refused(b, write_sync(tmp_path / "y.sync", body, digest=hashlib.sha256(body).digest()[:31]))


def test_too_many_documents(exported, tmp_path: Path, monkeypatch) -> None:
    b, _ = exported
    monkeypatch.setattr(syncfile, "MAX_DOCS", 2)
    body = _body(b, updates=[["rules", b"\x00\x00"]] * 3)
    refused(b, write_sync(tmp_path / "many.sync", body))


def test_oversized_file_refused_before_reading(exported, tmp_path: Path, monkeypatch) -> None:
    b, f = exported
    monkeypatch.setattr(syncfile, "MAX_FILE_BYTES", f.stat().st_size - 1)
    refused(b, f, match="larger than any sync file")


def test_a_minimal_handmade_file_is_accepted(exported, tmp_path: Path) -> None:
    """The checks above refuse damage, not valid files made by other tools."""
    b, _ = exported
    ok = write_sync(tmp_path / "ok.sync", _body(b, states={"rules": b"\x00"}))
    got = syncfile.import_file(b, ok)
    assert got == {"file": str(ok), "from": "SH07", "documents": 0, "changed": [],
                   "incomplete": []}
    assert b.storage.peer_states("SH07") == {"rules": b"\x00"}


def test_export_to_an_unwritable_place_names_the_file(a: Ledger, tmp_path: Path) -> None:
    target = tmp_path / "no-such-dir" / "out.sync"
    with pytest.raises(InvalidInput, match=r"cannot write .*out\.sync: "):
        syncfile.export_file(a, target)
    assert not target.parent.exists()
