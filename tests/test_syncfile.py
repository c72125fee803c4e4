"""Offline sync files (crdtledger.syncfile): export, import, and every way a file
can be wrong. A refused file raises CorruptSyncFile, ForeignChain or UntrustedSigner
and changes nothing at all (not even the remembered peer states).

The seal itself (signature, encryption, its every byte) is tested in
tests/test_seal.py; here, what a sealed file carries: a Batch of signed log records,
checked as a session's records are and taken all or nothing."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import msgpack
import pytest
from helpers import Forger, doc_content, new_ledger, projections, snapshot
from pycrdt import Map

from crdtledger import log as log_mod
from crdtledger import seal, syncfile
from crdtledger.errors import CorruptSyncFile, ForeignChain, InvalidInput, RemoteProtocolError
from crdtledger.ledger import Ledger
from crdtledger.log import Batch, Record
from crdtledger.model import entry_doc, member_doc
from crdtledger.sync import decode_state_vector, wire_logs


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
            and doc_content(x) == doc_content(y) and x.log_view() == y.log_view())


def write_sync(path: Path, signer: Ledger, body: Any) -> Path:
    """A sync file made by hand and sealed by `signer` (a node of the chain, with its
    own key): a well-sealed file whose content is whatever the test says."""
    raw = body if isinstance(body, bytes) else msgpack.packb(body, use_bin_type=True)
    path.write_bytes(seal.seal(signer.trust, syncfile.KIND, raw, 0))
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
    assert info["records"] == sum(a.positions().values())
    assert info["bytes"] == f.stat().st_size
    assert f.read_bytes().startswith(b"CRDTLEDGER-SEALED sync 1\n")
    assert not list(tmp_path.glob("*.part"))
    got = syncfile.import_file(b, f)
    assert got["from"] == "SH01" and sorted(got["changed"]) == sorted(a.state_vectors())
    assert got["records"] == info["records"] and got["incomplete"] == []
    assert converged(a, b)
    for m in ms:
        assert b.balance(m) == a.balance(m)
    assert b.use_card("SH01-138-2")["member"] == ms[2]
    assert b.storage.peer_states("SH01") == a.positions()


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



def test_a_blocked_branchs_later_records_are_said_kept_not_taken(tmp_path: Path) -> None:
    """SH02's disk cloned and both copies sold: once SH01 holds both histories SH02 is
    blocked, and its next file's records are kept (the evidence), none taken; the
    import said "1 document changed", read as taken."""
    a, b = new_ledger(tmp_path, "SH01"), new_ledger(tmp_path, "SH02")
    m = b.add_member(b.owner, name="张伟", phone="13812345678")
    b.topup(b.owner, m, 30_000)
    syncfile.import_file(a, syncfile.export_file(b, tmp_path / "b0.sync")["file"])
    b.close()
    shutil.copytree(tmp_path / "sh02", tmp_path / "clone")
    b, c = Ledger.open(tmp_path / "sh02"), Ledger.open(tmp_path / "clone")
    try:
        b.debit(b.owner, m, amount=10_000)
        c.debit(c.owner, m, amount=20_000)
        for src, name in ((b, "b1"), (c, "c1")):
            syncfile.import_file(a, syncfile.export_file(src, tmp_path / f"{name}.sync")["file"])
        assert "SH02" in a.storage.log.blocked()
        before = a.balance(m)
        b.topup(b.owner, m, 5_000)
        got = syncfile.import_file(a, syncfile.export_file(b, tmp_path / "b2.sync")["file"])
        assert got["changed"] == [] and got["blocked"] == ["SH02"], got
        assert a.balance(m) == before
    finally:
        for lg in (a, b, c):
            lg.close()


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
    the import applies nothing it cannot build on (the records after the gap in a
    node's log wait) and names the logs it lacks; a full export then completes it."""
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
    assert got["incomplete"] == ["SH01"] and got["records"] == 0
    assert b.balance(ms[0])["cash"] == 0  # nothing half-applied
    syncfile.export_file(a, tmp_path / "full.sync")
    full = syncfile.import_file(b, tmp_path / "full.sync")
    assert full["incomplete"] == []
    assert converged(a, b)
    a.close()
    b.close()


def test_export_replaces_an_older_sync_file_only(a: Ledger, b: Ledger, tmp_path: Path
                                                 ) -> None:
    """Anything else at the path (a CA key, a backup, a note) is kept and refused:
    the export replaced it whole (tests/test_cli_guards.py has the command line)."""
    populate(a, 1)
    f = tmp_path / "x.sync"
    f.write_bytes(b"old junk")
    with pytest.raises(InvalidInput, match="is not a sync file of this chain"):
        syncfile.export_file(a, f)
    assert f.read_bytes() == b"old junk"
    f.unlink()
    syncfile.export_file(b, f)  # yesterday's file, of this chain
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


@pytest.fixture
def stranger(tmp_path: Path) -> Any:
    """SH07, a node of the chain that B has never heard of: its files are sealed with
    a key B has no reason to doubt (a store without a chain CA trusts a node's first
    key), so what they carry is judged on its own."""
    ledger = new_ledger(tmp_path, "SH07")
    yield ledger
    ledger.close()


def test_flipped_byte_anywhere_is_refused(exported, tmp_path: Path) -> None:
    b, f = exported
    raw = f.read_bytes()
    header = raw.index(b"\n") + 1
    for pos in (header + 3, header + 40, len(raw) // 2, len(raw) - 1):
        damaged = bytearray(raw)
        damaged[pos] ^= 0x01
        bad = tmp_path / f"flip{pos}.sync"
        bad.write_bytes(bytes(damaged))
        refused(b, bad, match="altered|damaged|incomplete")
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
    # A file of the format before sync files were sealed: header, SHA-256, body.
    b"CRDTLEDGER-SYNC 1\n" + bytes(32) + msgpack.packb(
        {"chain": "default", "node": "SH01", "created": 0, "states": {}, "updates": []}),
    b"CRDTLEDGER-SEALED sync\n", b"CRDTLEDGER-SEALED  1\n", b"CRDTLEDGER-SEALED 1 sync\n",
])
def test_not_a_sync_file(exported, tmp_path: Path, content: bytes) -> None:
    b, _ = exported
    bad = tmp_path / "junk.sync"
    bad.write_bytes(content)
    refused(b, bad)


def test_a_device_or_a_huge_file_is_refused_by_its_first_bytes(exported,
                                                               tmp_path: Path) -> None:
    """A file was read whole before it was looked at: a gigabyte of zeros took a
    gigabyte of memory, and /dev/zero (which reports no size) was read until the
    process was killed. The first bytes decide now."""
    import resource

    b, _ = exported
    refused(b, Path("/dev/zero"), match="not a crdtledger sync file")
    huge = tmp_path / "huge.sync"
    with open(huge, "wb") as f:
        f.truncate(1024**3)  # a sparse gigabyte of zeros: no disk used
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    refused(b, huge, match="not a crdtledger sync file")
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 100 * 1024  # KB


def _strangers_file(tmp_path: Path) -> Path:
    """A real sync file of another chain ("other-chain")."""
    stranger = new_ledger(tmp_path / "elsewhere", "SH01", chain="other-chain")
    try:
        populate(stranger, 1)
        f = tmp_path / "stranger.sync"
        syncfile.export_file(stranger, f)
    finally:
        stranger.close()
    return f


def test_foreign_chain(exported, tmp_path: Path) -> None:
    b, _ = exported
    err = refused(b, _strangers_file(tmp_path), ForeignChain)
    assert "other-chain" in str(err)


def _declaring_a_gigabyte(f: Path, huge: Path) -> Path:
    """`f`'s clear part (line, header) with a gigabyte of content declared after it, as
    a sparse file: every declared length matches its size, and it holds no data."""
    raw = f.read_bytes()
    at = raw.index(b"\n") + 1
    at += 4 + int.from_bytes(raw[at:at + 4], "big")  # the content's length
    size = 1024**3
    with open(huge, "wb") as out:
        out.write(raw[:at] + size.to_bytes(8, "big"))
        out.seek(at + 8 + size)
        out.write((72).to_bytes(2, "big"))  # a signature's length, then its place
        out.truncate(at + 8 + size + 2 + 72)
    return huge


def test_a_strangers_huge_file_is_refused_by_its_header(exported, tmp_path: Path) -> None:
    """Another chain's real sync file, its content length set to a gigabyte and the
    file extended to match (sparse: no disk used). Its clear header, in its first
    kilobyte, names another chain; the file was read whole, and copied once more
    (2.1 GB held), before that was looked at. The header is judged first now."""
    import tracemalloc

    b, _ = exported
    huge = _declaring_a_gigabyte(_strangers_file(tmp_path), tmp_path / "huge.sync")
    assert huge.stat().st_size > 1024**3 and os.stat(huge).st_blocks * 512 < 1024**2
    tracemalloc.start()
    try:
        err = refused(b, huge, ForeignChain, match="comes from chain 'other-chain'")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert str(huge) in str(err)
    assert peak < 100 * 1024**2, f"{peak:,} bytes held to refuse it"


def test_this_chains_header_before_a_huge_content_is_refused_as_altered_unread(
        exported, tmp_path: Path) -> None:
    """This chain's genuine sync file, its clear part (line, header, content length)
    kept and a gigabyte of sparse content declared after it. Its header passes every
    judgement of chain and signer, so it was read into one buffer of its size (1 GiB
    held) before `unseal` told it as altered; the signature is checked as the file
    streams by now, before any buffer of its size exists."""
    import tracemalloc

    b, f = exported
    huge = _declaring_a_gigabyte(f, tmp_path / "huge.sync")
    assert huge.stat().st_size > seal.TOLD_WHOLE_BYTES
    assert os.stat(huge).st_blocks * 512 < 1024**2
    tracemalloc.start()
    try:
        err = refused(b, huge, match="was altered after it was signed")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert str(huge) in str(err) and "ask for it again" in str(err)
    assert peak < 100 * 1024**2, f"{peak:,} bytes held to refuse it"


def test_newer_and_unknown_formats(exported, tmp_path: Path) -> None:
    b, f = exported
    raw = f.read_bytes()
    rest = raw[raw.index(b"\n") + 1:]
    for line, match in ((b"sync 2", "newer"), (b"sync 99", "newer"),
                        (b"sync 0", "does not read"), (b"sync -1", "unreadable format"),
                        (b"backup 1", "backup file, not a sync file"),
                        (b"photo 1", "unknown kind")):
        bad = tmp_path / f"fmt{line.decode().replace(' ', '')}.sync"
        bad.write_bytes(b"CRDTLEDGER-SEALED " + line + b"\n" + rest)
        err = refused(b, bad, match=match)
        if match == "newer":
            assert "upgrade" in str(err)


def _body(signer: Ledger, **over: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"chain": signer.chain, "node": signer.node, "created": 0,
                            "logs": {}, "recs": [], "heads": {}}
    body.update(over)
    return body


def _member_record(forger: Forger, mid: str = "0000000000001.SH07") -> Record:
    return forger.write(member_doc(mid), lambda doc: doc.get("members", type=Map).__setitem__(
        mid, {"name": "x"}))


def test_damaged_body_with_a_valid_seal(exported, stranger: Ledger, tmp_path: Path) -> None:
    """A file sealed by a node of the chain whose content is malformed, or whose
    records cannot be taken, is refused whole: one bad record refuses the others."""
    b, _f = exported
    forger = Forger(stranger)
    rec = _member_record(forger)
    good = forger.batch().to_wire()
    head = good["heads"]["SH07"]
    cert = good["certs"]
    junk = b"\x01\x02\x03garbage"
    alone = Forger(stranger)  # garbage as SH07's first record ...
    alone_head = alone.batch([alone.record("members/01", junk)]).to_wire()["heads"]
    later = Forger(stranger, after=(forger.seq, forger.tip))  # ... or as its second
    garbage_head = later.batch([later.record("members/01", junk)]).to_wire()["heads"]
    bodies: list[Any] = [
        b"\xc1 not msgpack",
        b"\x93\x01",  # truncated msgpack
        msgpack.packb([1, 2, 3]),
        msgpack.packb("text"),
        {"chain": b.chain},
        _body(stranger, node=["SH07"]),  # regression: was remembered as peer "['SH07']"
        _body(stranger, node="not a node"),
        _body(stranger, node="SH07\n"),
        _body(stranger, node="SH01"),  # sealed by SH07, claims to be SH01's
        _body(stranger, logs=[]),
        _body(stranger, logs={"nope": [1, b""]}),
        _body(stranger, logs={"SH01\n": [1, b""]}),
        _body(stranger, logs={b"SH01": [1, b""]}),  # regression: was a TypeError
        _body(stranger, logs={"SH01": [1]}),
        _body(stranger, logs={"SH01": [-1, b""]}),
        _body(stranger, logs={"SH01": "text"}),
        _body(stranger, recs={}),
        _body(stranger, heads=[]),
        _body(stranger, certs=[]),
        _body(stranger, recs=[["SH07"]]),
        _body(stranger, recs=[["SH07", 1, "members/00", "text"]]),
        _body(stranger, recs=[["SH07", 1, "weather", b"\x00\x00"]]),
        _body(stranger, recs=[[b"SH07", 1, "members/00", b"\x00\x00"]]),
        _body(stranger, recs=[["SH07", 0, "members/00", b"\x00\x00"]]),
        _body(stranger, heads={"SH07": [1, b"short", b"sig"]}),
        # Well formed, but not to be taken: without its head, its head altered or
        # signed by no one, its certificate missing, its data no update.
        _body(stranger, recs=good["recs"], certs=cert),
        _body(stranger, recs=good["recs"], heads={"SH07": [head[0], bytes(32), head[2]]},
              certs=cert),
        _body(stranger, recs=good["recs"], heads={"SH07": [head[0], head[1], b"\x00" * 70]},
              certs=cert),
        _body(stranger, recs=good["recs"], heads=good["heads"]),
        _body(stranger, recs=[["SH07", 1, "members/01", junk]], heads=alone_head, certs=cert),
        # All or nothing: a valid record followed by a garbage one applies neither.
        _body(stranger, recs=[*good["recs"], ["SH07", 2, "members/01", junk]],
              heads=garbage_head, certs=cert),
    ]
    for i, body in enumerate(bodies):
        bad = write_sync(tmp_path / f"body{i}.sync", stranger, body)
        refused(b, bad)
    assert rec.seq == 1
    # The same records, whole, are taken: the files above were refused for their faults.
    ok = write_sync(tmp_path / "ok.sync", stranger, _body(stranger, **good))
    assert syncfile.import_file(b, ok)["records"] == 1
    assert b.member("0000000000001.SH07")["name"] == "x"


def test_a_record_this_release_cannot_read_names_a_newer_release(
        exported, stranger: Ledger, tmp_path: Path) -> None:
    """A newer release's record (0.3.0's month-end `cut` at a 0.2.0 branch) in a file
    sealed by a node of the chain was called "a damaged body": the cure is the
    release, not another file, and the sentence now says so."""
    b, _f = exported
    newer = write_sync(tmp_path / "newer.sync", stranger,
                       _body(stranger, recs=[["SH07", 1, "weather", b"\x00\x00"]]))
    err = refused(b, newer, match="newer crdtledger")
    assert "SH07" in str(err) and "upgrade this branch" in str(err)


def test_a_body_of_another_chain_under_this_chains_seal(exported, stranger: Ledger,
                                                        tmp_path: Path) -> None:
    b, _f = exported
    bad = write_sync(tmp_path / "chain.sync", stranger, _body(stranger, chain="other-chain"))
    refused(b, bad, ForeignChain, match="other-chain")


def test_too_many_records(exported, stranger: Ledger, tmp_path: Path, monkeypatch) -> None:
    b, _ = exported
    monkeypatch.setattr(log_mod, "MAX_BATCH_RECORDS", 2)
    body = _body(stranger, recs=[["SH07", i, "members/00", b"\x00\x00"] for i in (1, 2, 3)])
    refused(b, write_sync(tmp_path / "many.sync", stranger, body), match="malformed batch")


def test_oversized_file_refused_before_reading(exported, tmp_path: Path, monkeypatch) -> None:
    b, f = exported
    monkeypatch.setattr(syncfile, "MAX_FILE_BYTES", f.stat().st_size - 1)
    refused(b, f, match="larger than any sync file")


def test_a_minimal_handmade_file_is_accepted(exported, stranger: Ledger,
                                             tmp_path: Path) -> None:
    """The checks above refuse damage, not valid files made by other tools."""
    b, _ = exported
    ok = write_sync(tmp_path / "ok.sync", stranger,
                    _body(stranger, logs=wire_logs(b.log_view())))
    got = syncfile.import_file(b, ok)
    assert got == {"file": str(ok), "from": "SH07", "records": 0, "documents": 0,
                   "changed": [], "incomplete": []}
    assert b.storage.peer_states("SH07") == b.positions()


def test_a_relay_cannot_alter_or_forge_what_it_carries(a: Ledger, b: Ledger, stranger: Ledger,
                                                       tmp_path: Path) -> None:
    """A file carries other nodes' records under their own signed heads: the node
    that seals it (here SH07, which holds A's records) cannot alter them, nor sign
    records in A's name, nor pass off another key as A's. Each such file is refused
    whole; the genuine records, relayed by the same node, are taken."""
    m = populate(a, 1)[0]
    f = tmp_path / "a.sync"
    syncfile.export_file(a, f)
    syncfile.import_file(b, f)  # B knows A's key from now on
    a.topup(a.owner, m, 1)
    stranger.pull(a)  # SH07 holds A's records and A's signed head
    real = stranger.batch(stranger.lacking(b.log_view()))
    (rec,) = real.recs
    assert rec.node == "SH01"
    altered = Batch([Record(rec.node, rec.seq, rec.doc, rec.data[:-1] + b"\x07")],
                    real.heads, real.certs)
    before = (rec.seq - 1, a.storage.log.hash_at("SH01", rec.seq - 1) or b"")
    # SH07 writes in A's name and signs the head itself, with A's certificate beside.
    in_a_name = Forger(stranger, after=before)
    in_a_name.node = "SH01"
    in_a_name.record(rec.doc, rec.data[:-1] + b"\x07")
    signed_by_sh07 = in_a_name.batch()
    signed_by_sh07.certs = {"SH01": a.trust.cert_der}
    # Another store that calls itself SH01, with its own key.
    impostor = Forger(new_ledger(tmp_path / "elsewhere", "SH01"), after=before)
    impostor.record(rec.doc, rec.data[:-1] + b"\x07")
    for batch, match in ((altered, "altered on the way"),
                         (signed_by_sh07, "does not match what it signs"),
                         (impostor.batch(), "key other than the one this store first saw")):
        bad = write_sync(tmp_path / "relayed.sync", stranger, _body(stranger, **batch.to_wire()))
        refused(b, bad, match=match)
    good = write_sync(tmp_path / "relayed.sync", stranger, _body(stranger, **real.to_wire()))
    assert syncfile.import_file(b, good)["records"] == 1
    assert b.balance(m) == a.balance(m)
    impostor.ledger.close()


def test_a_file_with_a_record_breaking_a_write_rule_is_refused_whole(
        a: Ledger, b: Ledger, tmp_path: Path) -> None:
    """B, with a valid key, writes in its own sealed file a record rewriting A's entry,
    after an honest one: the file is refused whole, and nothing is held against B
    (a file is taken all or nothing, so its records are not kept as evidence)."""
    m = populate(a, 1)[0]
    f = tmp_path / "a.sync"
    syncfile.export_file(a, f)
    syncfile.import_file(b, f)
    forger = Forger(b)
    _member_record(forger, "0000000000001.SH02")
    eid, body = a.storage.conn.execute(
        "SELECT id, body FROM entries WHERE kind = 'topup'").fetchone()
    forger.write(entry_doc(eid, a.storage.day_of), lambda doc: doc.get(
        "entries", type=Map).__setitem__(eid, json.loads(body) | {"amount": 1}))
    bad = write_sync(tmp_path / "b.sync", b, _body(b, logs=wire_logs(b.log_view()),
                                                   **forger.batch().to_wire()))
    err = refused(a, bad, match="refused whole")
    assert "entry-insert-once" in str(err)
    assert a.faults() == []
    assert a.balance(m)["cash"] == 10000 - 100


def test_export_to_an_unwritable_place_names_the_file(a: Ledger, tmp_path: Path) -> None:
    target = tmp_path / "no-such-dir" / "out.sync"
    with pytest.raises(InvalidInput, match=r"cannot write .*out\.sync: "):
        syncfile.export_file(a, target)
    assert not target.parent.exists()
