"""Malformed frames and sync files under Hypothesis, from real ones.

Two real branches of chain "acme" (real CA, SH01 the head office, SH02) sync and
trade a rights request; every frame that passed between them is kept (hellos,
states, records with their heads and certificates, the request and its answer). A
fresh copy of the receiving store then hears, after the frames that came before it,
one of them mutated: bits flipped, cut short, spliced with another, inserted bytes,
or a value inside its msgpack structure swapped for another type (a huge or negative
integer, a NaN, text for bytes, a list for a map, an ext type, deep nesting), a key
dropped or added. Taken by `receive` or by `receive_frames`, the frame is handled or
refused with RemoteProtocolError and a sentence, and a refused frame changes nothing.

A sync file SH01 wrote is taken the same way: its body mutated and sealed again by
SH01 (a branch of the chain writing a malformed file), or its sealed bytes altered.
import_file takes it or refuses it with a RemoteProtocolError (CorruptSyncFile,
ForeignChain) and a sentence, changing nothing.

(tests/test_sync_protocol.py has the hand-picked malformed frames;
tests/test_record_mutation.py signed records altered; tests/test_seal.py the seal.)
"""

from __future__ import annotations

import copy
import math
import shutil
import tracemalloc
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import pytest
from helpers import name_branches, snapshot
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from crdtledger import syncfile
from crdtledger.errors import CorruptSyncFile, RemoteProtocolError, RightsElsewhere
from crdtledger.ledger import Ledger
from crdtledger.seal import seal, unseal
from crdtledger.sync import SyncSession
from peer.chain import enrol, init_chain

CHAIN = "acme"
FUZZ = settings(max_examples=500, derandomize=True, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])


@dataclass
class World:
    root: Path
    # (sender, frame) in the order they passed: "SH01" sent it to SH02, or back.
    frames: list[tuple[str, bytes]]
    sync_file: bytes  # SH01's sealed sync file of everything it held
    sh01: Ledger  # SH01 as it was before the sync: it seals mutated files
    open: dict[str, Ledger] = field(default_factory=dict)

    def victim(self, node: str) -> Ledger:
        """The store of `node` as it was before the sync (reopened after a frame or
        file changed it: each example starts from the same state)."""
        ledger = self.open.get(node)
        if ledger is None:
            path = self.root / "victims" / node.lower()
            shutil.rmtree(path, ignore_errors=True)
            shutil.copytree(self.root / "pristine" / node.lower(), path)
            ledger = self.open[node] = Ledger.open(path, synchronous="OFF")
        return ledger

    def reset(self, node: str) -> None:
        self.open.pop(node).close()


def _build(root: Path) -> World:
    init_chain(root / "chain", CHAIN)
    ledgers = {}
    for node in ("SH01", "SH02"):
        Ledger.create(root / node.lower(), node, CHAIN)
        enrol(root / "chain", root / node.lower(), node, head_office=node == "SH01")
        ledgers[node] = Ledger.open(root / node.lower(), synchronous="OFF")
    a, b = ledgers["SH01"], ledgers["SH02"]
    name_branches(a, "SH01", "SH02")
    members = [a.add_member(a.owner, name=f"会员{i}", phone=f"1380000000{i}") for i in range(3)]
    for i, m in enumerate(members):
        a.topup(a.owner, m, 10_000 * (i + 1))
    a.issue_card(a.owner, members[0], "SH01-0001")
    a.debit(a.owner, members[0], amount=2_500)
    b.topup(b.owner, b.add_member(b.owner, name="李四", phone="13900000000"), 500)
    for ledger in (a, b):
        ledger.close()
    for node in ("sh01", "sh02"):
        shutil.copytree(root / node, root / "pristine" / node)
    a, b = (Ledger.open(root / n, synchronous="OFF") for n in ("sh01", "sh02"))
    sa, sb = SyncSession(a, expect_node="SH02"), SyncSession(b, expect_node="SH01")
    sa.start()
    sb.start()
    frames: list[tuple[str, bytes]] = []

    def pump() -> None:
        while True:
            moved = False
            for src, dst, who in ((sa, sb, "SH01"), (sb, sa, "SH02")):
                for frame in src.data_to_send():
                    frames.append((who, frame))
                    dst.receive(frame)
                    moved = True
            if not moved:
                return

    pump()
    with pytest.raises(RightsElsewhere) as short:
        b.debit(b.owner, members[1], amount=3000)
    sb.request_rights(members[1], "cash", short.value.shortfall)
    pump()
    b.debit(b.owner, members[1], amount=3000)
    a.topup(a.owner, members[2], 700)
    pump()
    sa.anti_entropy()
    pump()
    kinds = {msgpack.unpackb(f)["t"] for _, f in frames}
    assert kinds == {"hello", "state", "recs", "rreq", "rrep"}
    sa.close()
    sb.close()
    a.close()
    b.close()
    sh01 = Ledger.open(root / "pristine" / "sh01", synchronous="OFF")
    syncfile.export_file(sh01, root / "all.sync")
    return World(root, frames, (root / "all.sync").read_bytes(), sh01)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    w = _build(tmp_path_factory.mktemp("fuzz"))
    try:
        yield w
    finally:
        for ledger in w.open.values():
            ledger.close()
        w.sh01.close()


# --- mutations ------------------------------------------------------------------------

def _nested(depth: int) -> Any:
    value: Any = 0
    for i in range(depth):
        value = [value] if i % 2 else {"k": value}
    return value


LEAVES = st.one_of(
    st.integers(-2**63, 2**64 - 1),
    st.sampled_from([0, -1, 2**62, 2**63, 2**64 - 1, -2**63, True, False, None,
                     math.nan, math.inf, -0.0, 1.5]),
    st.text(max_size=40), st.binary(max_size=64),
    st.lists(st.integers(0, 3), max_size=4),
    st.dictionaries(st.text(max_size=4), st.integers(0, 3), max_size=4),
    st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=8)),
    st.builds(msgpack.Timestamp, st.integers(-2**40, 2**40), st.integers(0, 10**9 - 1)),
    st.sampled_from([10, 100, 2000]).map(_nested),
    st.sampled_from([100, 5000]).map(lambda n: {f"N{i:07d}": [1, b"\0" * 32, b"s"]
                                                for i in range(n)}),
)


def _swapped(value: Any) -> list[Any]:
    """The same value as other msgpack types (int <-> str <-> bytes <-> list <-> map)."""
    if isinstance(value, bool):
        return [int(value), str(value), None]
    if isinstance(value, int):
        return [str(value), str(value).encode(), [value], {"x": value}, float(value), -value,
                value + 2**63, True]
    if isinstance(value, str):
        return [value.encode(), [value], {value: value}, 0, value + "\n", value.lower(), ""]
    if isinstance(value, bytes):
        return [value.decode("latin-1"), list(value[:8]), {}, 0, value[:-1], value + b"\0"]
    if isinstance(value, list):
        return [{str(i): v for i, v in enumerate(value)}, value[:-1], value * 2, [value], ""]
    if isinstance(value, dict):
        return [list(value), list(value.items()), {}, {**value, "zz": 1}, "map"]
    return [0, "", b""]


def _paths(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield path
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _paths(v, (*path, k))
    elif isinstance(value, list):
        for i, v in enumerate(value[:20]):
            yield from _paths(v, (*path, i))


def _at(value: Any, path: tuple[Any, ...]) -> Any:
    for k in path:
        value = value[k]
    return value


def _put(value: Any, path: tuple[Any, ...], new: Any) -> Any:
    if not path:
        return new
    _at(value, path[:-1])[path[-1]] = new
    return value


@st.composite
def mutated_structure(draw: st.DrawFn, original: Any, keep: tuple[str, ...] = ()) -> Any:
    """`original` (decoded msgpack) with one value swapped, replaced, dropped or added."""
    value = copy.deepcopy(original)
    paths = [p for p in _paths(value) if p and p[0] not in keep]
    kind = draw(st.sampled_from(["swap", "replace", "drop", "add"]))
    if kind in ("swap", "replace"):
        path = draw(st.sampled_from(paths))
        new = (draw(st.sampled_from(_swapped(_at(value, path)))) if kind == "swap"
               else draw(LEAVES))
        return _put(value, path, new)
    maps = [p for p in [(), *paths] if isinstance(_at(value, p), dict)]
    where = _at(value, draw(st.sampled_from(maps)))
    if kind == "drop" and where:
        del where[draw(st.sampled_from(sorted(where, key=repr)))]
    else:
        key = draw(st.sampled_from(["more", "reply", "proofs", "certs", "heads", "fwd",
                                    "for", "agree", "sw", "created", "logs", "zz"]))
        where[key] = draw(LEAVES)
    return value


@st.composite
def mutated_bytes(draw: st.DrawFn, original: bytes, others: list[bytes]) -> bytes:
    data = bytearray(original)
    kind = draw(st.sampled_from(["flip", "cut", "splice", "insert"]))
    if kind == "flip":
        for _ in range(draw(st.integers(1, 3))):
            data[draw(st.integers(0, len(data) - 1))] ^= 1 << draw(st.integers(0, 7))
    elif kind == "cut":
        del data[draw(st.integers(0, len(data) - 1)):]
    elif kind == "splice":
        other = draw(st.sampled_from(others))
        data = data[:draw(st.integers(0, len(data)))] + other[draw(st.integers(0, len(other))):]
    else:
        at = draw(st.integers(0, len(data)))
        data[at:at] = draw(st.binary(min_size=1, max_size=8))
    return bytes(data)


def _packed(value: Any) -> bytes | None:
    try:
        return bytes(msgpack.packb(value, use_bin_type=True))
    except (TypeError, ValueError, OverflowError):  # a value msgpack cannot write
        return None


def _taken_or_refused(ledger: Ledger, take: Callable[[], Any], what: str) -> bool:
    """Run `take`: True if it took the input, False if it refused it with a
    RemoteProtocolError and a sentence, changing nothing. Anything else fails."""
    before = snapshot(ledger)
    try:
        take()
    except RemoteProtocolError as e:
        assert str(e).strip(), f"{what}: refused without a sentence"
        assert snapshot(ledger) == before, f"{what}: refused ({e}) yet the store changed"
        return False
    return True


# --- frames ---------------------------------------------------------------------------

@pytest.mark.parametrize("more", ["yes", 1, None, [True], {}])
def test_a_records_frame_with_a_malformed_more_applies_nothing(world: World, more: Any) -> None:
    """Taken by receive_frames, the frame's records were applied although the frame
    was refused: its batch joined the run before its `more` was read, and a refused
    run is applied up to the bad frame (what came before it is kept)."""
    frames = [f for who, f in world.frames if who == "SH01"]
    records = next(f for f in frames if msgpack.unpackb(f)["t"] == "recs")
    msg = msgpack.unpackb(records, raw=False)
    assert msg["recs"]
    bad = msgpack.packb({**msg, "more": more}, use_bin_type=True)
    b = world.victim("SH02")
    session = SyncSession(b, expect_node="SH01")
    session.start()
    session.receive(frames[0])  # SH01's hello
    session.data_to_send()
    held = b.positions().get("SH01", 0)
    try:
        assert not _taken_or_refused(b, lambda: session.receive_frames([bad]), "more")
        assert "'more' malformed" in (session.failed or "")
        assert b.positions().get("SH01", 0) == held
    finally:
        session.close()
        world.reset("SH02")


@FUZZ
@given(data=st.data())
def test_a_mutated_real_frame_is_taken_or_refused_changing_nothing(
        world: World, data: st.DataObject) -> None:
    i = data.draw(st.integers(0, len(world.frames) - 1), label="frame")
    sender, original = world.frames[i]
    receiver = "SH02" if sender == "SH01" else "SH01"
    decoded = msgpack.unpackb(original, raw=False)
    if data.draw(st.booleans(), label="in its structure"):
        frame = _packed(data.draw(mutated_structure(decoded, keep=("v",)), label="value"))
        if frame is None:
            return
    else:
        frame = data.draw(mutated_bytes(original, [f for _, f in world.frames]), label="bytes")
    ledger = world.victim(receiver)
    session = SyncSession(ledger, expect_node=sender)
    session.start()
    # What came before it from the same side; the answer to a rights request only
    # to a session that asked.
    for who, f in world.frames[:i]:
        if who == sender and msgpack.unpackb(f)["t"] != "rrep":
            session.receive(f)
    if decoded["t"] == "rrep":
        session.request_rights("0000000000000.SH01", "cash", 1)
    session.data_to_send()
    while session.next_event() is not None:
        pass
    whole = data.draw(st.booleans(), label="receive_frames")
    hello = next(f for who, f in world.frames if who == sender)

    def take() -> None:
        if whole:  # with the peer's next (valid) frame behind it
            session.receive_frames([frame, hello])
        else:
            session.receive(frame)
        while session.busy:
            session.resume()

    before = snapshot(ledger)
    taken = _taken_or_refused(ledger, take, f"{decoded['t']} frame {i}")
    event(f"{decoded['t']}: {'taken' if taken else 'refused'}")
    if not taken:
        assert session.failed
    session.close()
    if snapshot(ledger) != before:
        world.reset(receiver)


# --- sync files -----------------------------------------------------------------------

@FUZZ
@given(data=st.data())
def test_a_mutated_sync_file_is_taken_or_refused_changing_nothing(
        world: World, data: st.DataObject) -> None:
    b = world.victim("SH02")
    if data.draw(st.booleans(), label="body sealed again"):
        body = msgpack.unpackb(unseal(b.trust, world.sync_file, "sync", what="file").payload,
                               raw=False)
        payload = _packed(data.draw(mutated_structure(body), label="body"))
        if payload is None:
            return
        sealed = seal(world.sh01.trust, "sync", payload, world.sh01.clock.wall())
    else:
        sealed = data.draw(mutated_bytes(world.sync_file, [world.sync_file]), label="bytes")
    path = world.root / "mutated.sync"
    path.write_bytes(sealed)
    before = snapshot(b)
    taken = _taken_or_refused(b, lambda: syncfile.import_file(b, path), "sync file")
    event(f"sync file: {'taken' if taken else 'refused'}")
    if snapshot(b) != before:
        world.reset("SH02")


def test_the_real_frames_and_file_are_taken(world: World) -> None:
    """The unmutated inputs are taken: the tests above do mutate something real."""
    b = world.victim("SH02")
    session = SyncSession(b, expect_node="SH01")
    session.start()
    for who, frame in world.frames:
        if who == "SH01" and msgpack.unpackb(frame)["t"] != "rrep":
            session.receive(frame)
    assert b.positions().get("SH01", 0) > 0
    session.close()
    world.reset("SH02")
    b = world.victim("SH02")
    path = world.root / "real.sync"
    path.write_bytes(world.sync_file)
    assert syncfile.import_file(b, path)["records"] > 0
    world.reset("SH02")


def test_a_sync_file_of_empty_maps_is_refused_before_they_are_built(world: World) -> None:
    """A body of a million empty maps (a byte each), sealed by a branch of the chain:
    read whole before any check, it held 74 bytes of memory per byte of file (a file
    of the 2 GiB allowed, some 150 GB). Now refused as a frame of them is, before
    they are built (sync.unpackb_bounded)."""
    b = world.victim("SH02")
    n = 1_000_000
    body = (b"\x83" + msgpack.packb("chain") + msgpack.packb(CHAIN) + msgpack.packb("node")
            + msgpack.packb("SH01") + msgpack.packb("junk")
            + b"\xdd" + n.to_bytes(4, "big") + b"\x80" * n)
    path = world.root / "maps.sync"
    path.write_bytes(seal(world.sh01.trust, "sync", body, world.sh01.clock.wall()))
    before = snapshot(b)
    tracemalloc.start()
    try:
        with pytest.raises(CorruptSyncFile, match="more maps and lists than any sync file"):
            syncfile.import_file(b, path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 * path.stat().st_size  # the file, decrypted once: 74 times it before
    assert snapshot(b) == before
