"""The shared transport suite (tests/transport_suite.py) run against every transport:
in memory, the simulator's network, mutual-TLS websockets, and sync files.

Each case states what must hold whatever carries the frames, and checks it on the
stores themselves: balances, the state-vector digests, a store left alone by what
it refused."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import pytest
from transport_suite import ADAPTERS, FRAMES, RIGHTS, Adapter, FileAdapter, digest

import peer.node
import sim.net
from crdtledger import sync
from crdtledger.errors import CorruptSyncFile
from crdtledger.ledger import Ledger
from crdtledger.sync import pack
from crdtledger.syncfile import import_file
from crdtledger.transport import MemoryEnd, MemoryNet, Transport

CANNOT = {
    RIGHTS: "a sync file goes one way: nobody is there to answer a rights request",
    FRAMES: "a sync file is not a stream of frames; its own faults (a truncated copy, "
            "a duplicate, an older file) are the file cases below",
}


@pytest.fixture(params=sorted(ADAPTERS))
def net(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Adapter]:
    adapter = ADAPTERS[request.param](tmp_path)
    try:
        yield adapter
    finally:
        adapter.close()


def needs(adapter: Adapter, cap: str) -> None:
    if cap not in adapter.caps:
        pytest.skip(f"{adapter.name}: {CANNOT[cap]}")


def member(net: Adapter, at: str, fen: int, phone: str = "13812345678") -> str:
    mid: str = net.perform(at, lambda lg: lg.add_member(lg.owner, name="张伟", phone=phone))
    net.perform(at, lambda lg: lg.topup(lg.owner, mid, fen))
    return mid


def cash(ledger: Ledger, mid: str) -> int:
    return int(ledger.balance(mid)["cash"])


def test_every_link_is_the_one_transport_interface(tmp_path: Path) -> None:
    """The websocket link, the simulator's connection end and the in-memory end all
    offer `Transport` (mypy checks the assignment; isinstance the runtime shape)."""
    memory: Transport = MemoryEnd(MemoryNet(), 1, "SH01", "SH02")
    assert isinstance(memory, Transport)
    for cls in (peer.node.Link, sim.net.End):
        assert callable(cls.send) and callable(cls.close)
    assert _conforms.__annotations__


def _conforms(a: peer.node.Link, b: sim.net.End) -> list[Transport]:
    """Never called: mypy checks here that both satisfy the Protocol."""
    return [a, b]


def test_two_nodes_sync(net: Adapter) -> None:
    net.add("SH01")
    net.add("SH02")
    a = member(net, "SH01", 10000)
    net.dial("SH02", "SH01")
    b = member(net, "SH02", 2500, phone="13900000000")
    net.settle()
    for n in ("SH01", "SH02"):
        assert cash(net.ledger(n), a) == 10000
        assert cash(net.ledger(n), b) == 2500
    assert digest(net.ledger("SH01")) == digest(net.ledger("SH02"))


def test_a_write_at_a_reaches_c_through_b(net: Adapter) -> None:
    for n in ("SH01", "SH02", "SH03"):
        net.add(n)
    net.dial("SH01", "SH02")
    net.dial("SH03", "SH02")
    net.settle()
    mid = member(net, "SH01", 4200)
    net.settle()
    assert cash(net.ledger("SH03"), mid) == 4200
    assert net.ledger("SH03").rights(mid) == {"SH01": 4200}
    later = member(net, "SH03", 100, phone="13900000000")
    net.settle()
    assert cash(net.ledger("SH01"), later) == 100
    assert len({digest(net.ledger(n)) for n in ("SH01", "SH02", "SH03")}) == 1


def test_a_rights_request_is_answered(net: Adapter) -> None:
    needs(net, RIGHTS)
    net.add("SH01")
    net.add("SH02")
    net.dial("SH02", "SH01")
    mid = member(net, "SH01", 10000)
    net.settle()
    # SH02 holds no rights on this member: its debit waits for SH01's grant.
    entry = net.perform("SH02", lambda lg: lg.debit(lg.owner, mid, amount=3000))
    assert entry["kind"] == "debit"
    net.settle()
    for n in ("SH01", "SH02"):
        ledger = net.ledger(n)
        assert cash(ledger, mid) == 7000
        rights = ledger.rights(mid)
        assert sum(rights.values()) == 7000 and rights.get("SH02", 0) >= 0
    assert net.ledger("SH01").rights(mid) == net.ledger("SH02").rights(mid)


def test_a_rights_request_is_relayed_by_a_hub(net: Adapter) -> None:
    """Shops behind NAT reach each other only through the hub: C's debit is funded by
    rights A holds, fetched by the hub on C's behalf."""
    needs(net, RIGHTS)
    for n in ("SH01", "SH02", "SH03"):
        net.add(n)
    net.dial("SH01", "SH02")
    net.dial("SH03", "SH02")
    mid = member(net, "SH01", 10000)
    net.settle()
    net.perform("SH03", lambda lg: lg.debit(lg.owner, mid, amount=3000))
    net.settle()
    for n in ("SH01", "SH02", "SH03"):
        assert cash(net.ledger(n), mid) == 7000
    rights = net.ledger("SH03").rights(mid)
    assert rights["SH01"] < 10000 and sum(rights.values()) == 7000, "A's rights moved"


def test_a_link_cut_in_the_middle_of_a_round_heals_on_reconnect(net: Adapter) -> None:
    net.add("SH01")
    net.add("SH02")
    members = [member(net, "SH01", 1000 + i, phone=f"1381234{i:04d}") for i in range(6)]
    before = digest(net.ledger("SH02"))
    net.cut_mid_round("SH02")
    net.dial("SH02", "SH01")
    net.settle()
    assert "SH02" in net.cut_done, "the round was cut"
    assert digest(net.ledger("SH02")) != before
    for i, mid in enumerate(members):
        assert cash(net.ledger("SH02"), mid) == 1000 + i
    if isinstance(net, FileAdapter):
        assert len(net.refused) == 1
        assert "damaged" in net.refused[0] and "incomplete" in net.refused[0], net.refused


def pair(net: Adapter) -> tuple[str, str]:
    net.add("SH01")
    net.add("SH02")
    net.dial("SH02", "SH01")
    mid = member(net, "SH01", 5000)
    net.settle()
    return mid, digest(net.ledger("SH02"))


def test_an_oversized_frame_closes_the_link_and_changes_nothing(
        net: Adapter, monkeypatch: pytest.MonkeyPatch) -> None:
    needs(net, FRAMES)
    # The limit is lowered (both where the session and where aiohttp enforce it) so
    # that an oversized frame is 64 KiB, not 256 MiB.
    limit = 64 * 1024
    monkeypatch.setattr(sync, "MAX_FRAME_BYTES", limit)
    monkeypatch.setattr(peer.node, "MAX_FRAME_BYTES", limit)
    mid, before = pair(net)
    version = net.ledger("SH02").storage.version
    links = net.core("SH02").links()
    junk = random.Random(0).randbytes(limit)  # incompressible, for the websocket
    frame = pack({"t": "recs", "recs": [["SH01", 1, "rules", junk]], "heads": {}})
    assert len(frame) > limit
    net.inject("SH01", "SH02", [frame])
    refused = net.refusals("SH02")
    assert refused is None or any("exceeds" in why for why in refused), refused
    assert digest(net.ledger("SH02")) == before
    assert net.ledger("SH02").storage.version == version
    net.until(lambda: not set(links) & set(net.core("SH02").links()), "that link closed")
    # The node survives: it writes, and the reconnect brings it over.
    net.perform("SH01", lambda lg: lg.topup(lg.owner, mid, 1))
    net.settle()
    assert cash(net.ledger("SH02"), mid) == 5001


def test_a_duplicated_frame_is_harmless(net: Adapter) -> None:
    needs(net, FRAMES)
    mid, before = pair(net)
    a = net.ledger("SH01")
    links = net.core("SH02").links()
    # Everything SH02 already has, sent again: every log record SH01 holds, with the
    # signed heads and certificates that cover them, in one frame and record by record.
    records = a.lacking({})
    assert records
    frames = [pack({"t": "recs", **a.batch(records).to_wire()})]
    frames += [pack({"t": "recs", **a.batch(records[:i + 1]).to_wire()})
               for i in range(len(records))]
    net.inject("SH01", "SH02", frames + frames)
    assert net.core("SH02").links() == links, "the link stays up"
    assert not net.refusals("SH02")
    assert digest(net.ledger("SH02")) == before
    assert cash(net.ledger("SH02"), mid) == 5000
    net.settle()
    assert digest(net.ledger("SH01")) == digest(net.ledger("SH02"))


def test_an_out_of_order_frame_closes_the_link_not_the_node(net: Adapter) -> None:
    needs(net, FRAMES)
    mid, before = pair(net)
    links = net.core("SH02").links()
    # A reply to a rights request SH02 never made: the conversation is broken.
    net.inject("SH01", "SH02", [pack({"t": "rrep", "id": 7, "granted": 500})])
    net.until(lambda: not set(links) & set(net.core("SH02").links()), "that link closed")
    refused = net.refusals("SH02")
    assert refused is None or any("unknown rights request" in why for why in refused)
    assert digest(net.ledger("SH02")) == before
    assert cash(net.ledger("SH02"), mid) == 5000, "nothing granted"
    # SH02 goes on: a write of its own, and after the reconnect both directions flow.
    net.perform("SH02", lambda lg: lg.topup(lg.owner, mid, 7))
    net.perform("SH01", lambda lg: lg.topup(lg.owner, mid, 3))
    net.settle()
    for n in ("SH01", "SH02"):
        assert cash(net.ledger(n), mid) == 5010


# --- the faults of a file ------------------------------------------------------------


@pytest.fixture
def files(tmp_path: Path) -> Iterator[FileAdapter]:
    adapter = FileAdapter(tmp_path)
    for n in ("SH01", "SH02"):
        adapter.add(n)
    adapter.dial("SH02", "SH01")
    try:
        yield adapter
    finally:
        adapter.close()


def test_a_file_imported_twice_changes_nothing_the_second_time(files: FileAdapter) -> None:
    mid = member(files, "SH01", 3000)
    path = files.export("SH01", "SH02")
    first = import_file(files.ledger("SH02"), path)
    after = digest(files.ledger("SH02"))
    version = files.ledger("SH02").storage.version
    again = import_file(files.ledger("SH02"), path)
    assert first["changed"] and not again["changed"]
    assert digest(files.ledger("SH02")) == after == digest(files.ledger("SH01"))
    assert files.ledger("SH02").storage.version == version
    assert cash(files.ledger("SH02"), mid) == 3000


def test_an_older_file_imported_after_a_newer_one_is_harmless(files: FileAdapter) -> None:
    mid = member(files, "SH01", 3000)
    older = files.export("SH01", "SH02")
    files.perform("SH01", lambda lg: lg.debit(lg.owner, mid, amount=1000))
    newer = files.export("SH01", "SH02")
    import_file(files.ledger("SH02"), newer)
    after = digest(files.ledger("SH02"))
    result = import_file(files.ledger("SH02"), older)
    assert not result["changed"]
    assert digest(files.ledger("SH02")) == after == digest(files.ledger("SH01"))
    assert cash(files.ledger("SH02"), mid) == 2000


@pytest.mark.parametrize("damage", ["truncated", "flipped", "empty"])
def test_a_damaged_file_is_refused_whole(files: FileAdapter, damage: str) -> None:
    member(files, "SH01", 3000)
    path = files.export("SH01", "SH02")
    data = bytearray(path.read_bytes())
    if damage == "truncated":
        data = data[:len(data) - 7]
    elif damage == "flipped":
        data[len(data) // 2] ^= 0xFF
    else:
        data = bytearray()
    path.write_bytes(bytes(data))
    ledger = files.ledger("SH02")
    before, version = digest(ledger), ledger.storage.version
    with pytest.raises(CorruptSyncFile):
        import_file(ledger, path)
    assert digest(ledger) == before and ledger.storage.version == version
    files.settle()  # a good copy then goes through
    assert digest(ledger) == digest(files.ledger("SH01"))


def test_memory_net_duplicating_and_swapping_frames_still_converges(tmp_path: Path) -> None:
    """MemoryNet's session-level faults, as the simulator's --dup/--reorder: a
    duplicated frame is absorbed, a swapped pair may break a conversation (that link
    closes and is redialled), and the stores end up equal all the same."""
    net = MemoryNet(seed=3, dup=0.3, reorder=0.5)
    ledgers = []
    for name in ("SH01", "SH02"):
        Ledger.create(tmp_path / name, name, "transport-test")
        ledgers.append(Ledger.open(tmp_path / name, synchronous="NORMAL"))
    try:
        a, b = ledgers
        net.add(a)
        net.add(b, dials=["SH01"])
        for i in range(5):
            mid = a.add_member(a.owner, name="张伟", phone=f"1381234{i:04d}")
            a.topup(a.owner, mid, 100 + i)
            b.add_member(b.owner, name="李娜", phone=f"1390000{i:04d}")
            net.flush("SH01")
            net.flush("SH02")
            net.run(1.0)
        for _ in range(120):
            if (digest(a) == digest(b) and net.in_flight() == 0
                    and net.link("SH01", "SH02") is not None):
                break
            net.run(1.0)
        assert digest(a) == digest(b)
        assert net.faults.dup_injected and net.faults.reorder_injected, "the faults happened"
        # A swap that broke a conversation closed that link as a protocol error (1002);
        # nothing else closes a link here.
        assert len(net.closes) == len(net.failures)
        assert all(code == 1002 for _, _, code, _ in net.closes)
    finally:
        for ledger in ledgers:
            ledger.close()
