"""The node's policies with two real nodes in one event loop (real TLS on loopback):
how long a debit waits for rights, what the rebalancer moves, what /metrics shows."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from crdtledger.errors import RightsElsewhere
from crdtledger.ledger import Ledger
from peer.chain import enrol, init_chain, load_chain
from peer.node import Config, Node


@asynccontextmanager
async def pair(root: Path, before: Callable[[Path], None] | None = None,
               chain_dir: Path | None = None, **config: float
               ) -> AsyncIterator[tuple[Node, Node]]:
    """SH02 dials SH01; `before(SH01's directory)` writes there before either starts.
    Their chain is `chain_dir`'s if given, else a new one in `root`."""
    chain_dir = chain_dir or root / "chain"
    chain = load_chain(chain_dir) if chain_dir.exists() else init_chain(chain_dir)
    for name in ("SH01", "SH02"):
        Ledger.create(root / name, name, chain.name)
        enrol(chain_dir, root / name, name)
    if before is not None:
        before(root / "SH01")
    a = Node(Config(root / "SH01", listen=("127.0.0.1", 0), api=("127.0.0.1", 0), mdns=False,
                    **config))  # type: ignore[arg-type]
    await a.start()
    b = Node(Config(root / "SH02", listen=("127.0.0.1", 0), api=("127.0.0.1", 0), mdns=False,
                    peers=[f"wss://127.0.0.1:{a.sync_port}"], **config))  # type: ignore[arg-type]
    await b.start()
    try:
        for _ in range(100):
            if a.connected() and b.connected():
                break
            await asyncio.sleep(0.05)
        yield a, b
    finally:
        await b.stop()
        await a.stop()


def _history(data_dir: Path, topups: int) -> dict[str, int]:
    """Ten members and `topups` top-ups written at a node before it starts; returns
    its log positions."""
    with Ledger.open(data_dir, synchronous="OFF") as led:
        members = [led.add_member(led.owner, name=f"m{i}", phone=f"1381234{i:04d}")
                   for i in range(10)]
        for i in range(topups):
            led.topup(led.owner, members[i % 10], 100 + i)
        return led.positions()


async def settle(a: Node, b: Node) -> None:
    for _ in range(200):
        if a.digest() == b.digest():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("nodes did not converge")


async def member_at(a: Node, b: Node, fen: int) -> str:
    mid = await a.perform(lambda: a.ledger.add_member(a.ledger.owner, name="张伟",
                                                      phone="13812345678"))
    await a.perform(lambda: a.ledger.topup(a.ledger.owner, mid, fen))
    await settle(a, b)
    return mid


def test_the_rebalancer_moves_surplus_toward_where_a_member_shops(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with pair(tmp_path) as (a, b):
            mid = await member_at(a, b, 10000)
            for _ in range(3):  # the first fetches rights; all count as visits to SH02
                await b.perform(lambda: b.ledger.debit(b.ledger.owner, mid, amount=100))
            await settle(a, b)
            before = a.ledger.rights(mid)
            assert await a.rebalance() == 1
            await settle(a, b)
            after = b.ledger.rights(mid)
            assert after["SH01"] == 1, "the holder keeps its last fen"
            assert after["SH02"] == before["SH02"] + before["SH01"] - 1
            assert await a.rebalance() == 0, "nothing new since the last pass"

    asyncio.run(scenario())


def test_the_rebalancer_moves_nothing_back_to_a_shop_that_handed_its_rights_over(
        tmp_path: Path) -> None:
    """SH02, where the member shops, is closing: it hands every right it holds to
    SH01. SH01's rebalancer, which would send the surplus to where the member shops,
    sends none back there, where it would be stranded once SH02 is revoked."""
    async def scenario() -> None:
        async with pair(tmp_path) as (a, b):
            mid = await member_at(a, b, 10000)
            for _ in range(3):
                await b.perform(lambda: b.ledger.debit(b.ledger.owner, mid, amount=100))
            await settle(a, b)
            done = await b.perform(lambda: b.ledger.hand_over_rights(b.ledger.owner, "SH01"))
            assert done["moved"]["cash"] > 0
            await settle(a, b)
            assert a.ledger.rights(mid).get("SH02", 0) == 0
            assert await a.rebalance() == 0
            await settle(a, b)
            assert b.ledger.rights(mid).get("SH02", 0) == 0
            assert b.ledger.balance(mid)["cash"] == 10000 - 300

    asyncio.run(scenario())


def test_a_sale_answered_nothing_is_judged_again_as_the_store_now_stands(
        tmp_path: Path) -> None:
    """SH01 holds nothing of the member, SH02 all 50.00. At SH01 two tills wait for it
    at once: the first asks for all of it and is then refused for its own reason (its
    card reported lost meanwhile, here a refusal of its own) with the 50.00 now at
    SH01; SH02 has answered the second with nothing. The second was refused with the
    figures from before its wait ("held at SH02 (50.00)"), by a branch that held the
    money, and taken at once when sent again."""
    from crdtledger.errors import InvalidInput

    async def scenario() -> None:
        async with pair(tmp_path) as (a, b):
            mid = await member_at(b, a, 5000)
            runs = {"n": 0}

            def whole() -> Any:
                runs["n"] += 1
                if runs["n"] > 1:  # the rights came: refused for another reason now
                    raise InvalidInput("card reported lost meanwhile")
                return a.ledger.debit(a.ledger.owner, mid, amount=5000)

            first = asyncio.ensure_future(a.perform(whole))
            await asyncio.sleep(0)  # asked first, so answered first
            second = asyncio.ensure_future(
                a.perform(lambda: a.ledger.debit(a.ledger.owner, mid, amount=500)))
            with pytest.raises(InvalidInput):
                await first
            done = await second
            assert done["amount"] == 500
            assert a.ledger.balance(mid)["cash"] == 4500

    asyncio.run(scenario())


def test_a_link_holding_more_than_its_peer_reads_is_closed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """A certified peer that never read and sent a frame every few seconds was never
    dropped (aiohttp's heartbeat restarts at every frame received), and what the node
    relayed to it piled up in memory without bound. Past MAX_QUEUED_BYTES waiting
    behind the frame going out the link is closed; the peer dials again and gets
    what it lacks. One frame over the cap is not counted: it closed every link it was
    sent on, for good. (The cap is made small here: filling the kernel's buffers
    takes a peer minutes.)"""
    import peer.node

    async def scenario() -> None:
        async with pair(tmp_path) as (a, b):
            mid = await member_at(a, b, 1000)
            monkeypatch.setattr(peer.node, "MAX_QUEUED_BYTES", 500)
            note = "长" * 200  # 600 bytes: with its head, one frame over the cap
            await a.perform(lambda: a.ledger.edit_member(a.ledger.owner, mid,
                                                         fields={"notes": note}))
            await settle(a, b)
            assert b.ledger.member(mid)["notes"] == note
            link = next(iter(a._links.values()))
            assert not link.closed
            link.send([b"x" * 1500] * 3)  # more than the peer has read
            assert link.queued == 0
            for _ in range(200):
                if link.closed:
                    break
                await asyncio.sleep(0.05)
            assert link.closed
            monkeypatch.setattr(peer.node, "MAX_QUEUED_BYTES", 64 << 20)
            await a.perform(lambda: a.ledger.topup(a.ledger.owner, mid, 500))
            await settle(a, b)  # b dialled again
            assert b.ledger.balance(mid)["cash"] == 1500

    with caplog.at_level(logging.WARNING, logger="crdtledger.node"):
        asyncio.run(scenario())
    assert sum("reads nothing" in r.getMessage() for r in caplog.records) == 1


def test_a_peers_state_said_again_is_not_written_again(tmp_path: Path) -> None:
    """A certified peer sent 27-byte `state` frames as fast as its socket went, and the
    branch wrote (and fsynced) each: its tills and other links stopped while it went
    on. The same state again is a hint already held; a changed one is written
    without an fsync of its own."""
    async def scenario() -> None:
        async with pair(tmp_path) as (a, b):
            await member_at(a, b, 1000)
            conn = a.ledger.storage.conn
            peer_id = b.ledger.node
            view = {n: s for n, (s, _) in b.ledger.log_view().items()}
            a.ledger.remember_peer(peer_id, view)
            before = conn.total_changes
            for _ in range(1000):
                a.ledger.remember_peer(peer_id, view)
            assert conn.total_changes == before
            a.ledger.remember_peer(peer_id, {**view, "SH09": 1})
            assert conn.total_changes == before + 1
            assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL again

    asyncio.run(scenario())


def test_a_second_start_on_a_running_nodes_directory_leaves_it_alone(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A second process started on the directory of a running node (the counter app, a
    second demo) could not open the store and, once stopped, removed the running
    node's run file: `crdtledger status` then said "not running" and every command was
    refused as the directory being in use, until that node restarted."""
    from crdtledger import storage
    from crdtledger.errors import StoreLocked
    from peer import local

    monkeypatch.setattr(storage, "LOCK_WAIT_S", 0)  # refused at once, not after a wait

    async def scenario() -> None:
        async with pair(tmp_path) as (a, _b):
            second = Node(Config(tmp_path / "SH01", listen=("127.0.0.1", 0),
                                 api=("127.0.0.1", 0), mdns=False))
            with pytest.raises(StoreLocked):
                await second.start()
            await second.stop()
            found = local.running(tmp_path / "SH01")
            assert found is not None and found.url.endswith(f":{a.api_port}")

    asyncio.run(scenario())


def test_a_debit_waits_no_longer_than_the_deadline_for_a_silent_holder(
        tmp_path: Path) -> None:
    async def scenario() -> None:
        async with pair(tmp_path, rights_deadline_s=0.5) as (a, b):
            mid = await member_at(a, b, 10000)
            # SH01 goes silent without closing the connection: its loop is busy.
            link = a.link("SH02")
            assert link is not None
            link.session.receive_frames = lambda frames: None  # type: ignore[method-assign]
            started = time.monotonic()
            with pytest.raises(RightsElsewhere) as refused:
                await b.perform(lambda: b.ledger.debit(b.ledger.owner, mid, amount=3000))
            waited = time.monotonic() - started
            assert refused.value.branch == "SH01"
            assert 0.4 < waited < 3, waited
            metrics = b.metrics.render().decode()
            assert 'crdtledger_refused_operations_total{reason="rights_elsewhere"} 1.0' in metrics
            assert "crdtledger_rights_fetch_seconds_count 1.0" in metrics

    asyncio.run(scenario())


def test_a_long_answer_is_read_from_the_store_no_faster_than_it_goes_out(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A branch joins over a line that stalls after the first slice of the answer.
    The answering node reads the next slice from its store only once the last is on
    the socket, so it holds a slice of the answer, not all of it (at 1M records,
    hundreds of MB): measured in `benchmarks/README.md`, "Back-pressure"."""
    from aiohttp import web

    from crdtledger import sync as sync_mod
    from crdtledger.sync import unpack

    monkeypatch.setattr(sync_mod, "SEND_SLICE_RECORDS", 20)
    positions: dict[str, int] = {}

    def write(data_dir: Path) -> None:
        positions.update(_history(data_dir, 400))

    # The line: SH01 answers SH02's dial, so its frames go out through the server side's
    # websocket; after the answer's first slice the line stops taking bytes (the one
    # stand-in here: loopback's socket buffers would take the whole answer at once).
    line = asyncio.Event()
    slices: list[int] = []
    real_send = web.WebSocketResponse.send_bytes

    async def send_bytes(ws: web.WebSocketResponse, data: bytes, *args: object) -> None:
        if unpack(data).get("t") == "recs":
            if slices:
                await line.wait()
            slices.append(len(data))
        await real_send(ws, data, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(web.WebSocketResponse, "send_bytes", send_bytes)

    async def scenario() -> None:
        async with pair(tmp_path, write) as (a, b):
            for _ in range(200):
                if slices:
                    break
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.5)  # long enough for a node to read every slice
            link = a.link("SH02")
            assert link is not None and link.session.busy, "the answer is still being read"
            assert 0 < link.queued <= 2 * max(slices)
            gauge = a.metrics.sync_queued.labels("SH02")._value.get()
            assert gauge == link.queued
            line.set()
            for _ in range(500):
                if b.ledger.positions() == positions:
                    break
                await asyncio.sleep(0.02)
            assert b.ledger.positions() == positions
            assert len(slices) >= 400 // 20
            await settle(a, b)
            assert link.queued == 0

    asyncio.run(scenario())


def test_a_joining_node_gives_its_heap_back_once_the_history_is_applied(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """After a long catch-up the node frees its copy of the answer and the documents it
    closed; glibc would keep those pages for as long as the node runs (1.1 GB after a
    1M-entry join), so the node asks for them to be given back, once per large batch
    and not for the small ones of ordinary trade."""
    from crdtledger import platform
    from peer import node as node_mod

    platform.give_back_memory()  # the real one runs here (glibc) and returns
    given: list[float] = []
    monkeypatch.setattr(node_mod, "GIVE_BACK_AFTER_BYTES", 20_000)
    monkeypatch.setattr(platform, "give_back_memory", lambda: given.append(time.monotonic()))

    async def scenario() -> None:
        async with pair(tmp_path, lambda d: _history(d, 200)) as (a, b):
            await settle(a, b)
            await asyncio.sleep(0.1)  # the next turn, after the batch is dropped
            assert len(given) == 1
            mid = await member_at(a, b, 100)  # ordinary trade: small batches
            await b.perform(lambda: b.ledger.topup(b.ledger.owner, mid, 5))
            await settle(a, b)
            assert len(given) == 1

    asyncio.run(scenario())


def test_a_strangers_idle_connections_are_closed_and_the_branches_still_sync(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A connection that never finishes its TLS handshake (sync port) or its request
    (API port) is closed after its deadline, not after asyncio's 60 s or aiohttp's
    hour: idle strangers held a descriptor each, and a thousand of them left the tills
    none. The branches' own long-lived websocket is not an idle connection."""
    import peer.api
    import peer.node

    monkeypatch.setattr(peer.node, "HANDSHAKE_S", 0.3)
    monkeypatch.setattr(peer.node, "IDLE_S", 0.3)
    monkeypatch.setattr(peer.api, "BODY_IDLE_S", 0.3)

    async def closed_within(port: int, send: bytes, limit_s: float) -> float:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(send)
        t0 = time.monotonic()
        assert await asyncio.wait_for(reader.read(), limit_s) is not None  # EOF: closed
        writer.close()
        return time.monotonic() - t0

    async def scenario() -> None:
        async with pair(tmp_path) as (a, b):
            assert await closed_within(a.sync_port, b"", 5) >= 0.2  # a handshake never begun
            assert await closed_within(a.sync_port, b"\x16\x03\x01\x00", 5) >= 0.2  # half a hello
            assert await closed_within(a.api_port, b"GET /health HTTP/1.1\r\nHost: x\r\n",
                                       5) >= 0.2  # a request never finished
            reader, writer = await asyncio.open_connection("127.0.0.1", a.api_port)
            writer.write(b"POST /api/login HTTP/1.1\r\nHost: x\r\nContent-Type: "
                         b"application/json\r\nContent-Length: 100\r\n\r\n")  # no body
            answer = await asyncio.wait_for(reader.read(12), 5)
            assert answer.startswith(b"HTTP/1.1 408"), answer
            writer.close()
            await asyncio.sleep(1.0)  # past both deadlines
            assert a.connected() and b.connected()
            mid = await member_at(a, b, 500)
            await b.perform(lambda: b.ledger.debit(b.ledger.owner, mid, amount=100))
            await settle(a, b)
            assert a.ledger.balance(mid)["cash"] == 400

    asyncio.run(scenario())


def test_records_a_full_store_could_not_take_are_fetched_again_once_there_is_room(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """SH02's disk is full (SQLite's SQLITE_FULL, made by capping its pages) while
    SH01 sells: the link that brought the records is closed with a line in the log,
    not a task dying with a traceback, nothing of them is held, and once there is room
    the records come again and both branches agree."""
    async def scenario() -> None:
        async with pair(tmp_path) as (a, b):
            mid = await member_at(a, b, 10_000)
            conn = b.ledger.storage.conn
            (pages,) = conn.execute("PRAGMA page_count").fetchone()
            conn.execute(f"PRAGMA max_page_count = {pages}")
            for _ in range(20):
                await a.perform(lambda: a.ledger.debit(a.ledger.owner, mid, amount=100))
            for _ in range(200):
                if "not stored" in caplog.text:
                    break
                await asyncio.sleep(0.05)
            assert "not stored" in caplog.text
            conn.execute("PRAGMA max_page_count = 1073741823")
            for _ in range(600):
                if a.digest() == b.digest():
                    break
                await asyncio.sleep(0.05)
            assert a.digest() == b.digest()
            assert b.ledger.balance(mid)["cash"] == 10_000 - 2_000
            assert b.ledger.faults() == []

    caplog.set_level("WARNING", "crdtledger.node")
    asyncio.run(scenario())


def test_a_slot_confirmed_for_a_member_erased_meanwhile_is_cancelled_by_the_node(
        tmp_path: Path) -> None:
    """SH02 (the technician's branch) confirms a booking while SH01 erases its member,
    neither knowing of the other's: the erasure cancels only what SH01 knew of. The
    node hears of the erasure in a member document, which never started its bookings
    pass: the slot stayed held for nobody until some other booking came."""
    from crdtledger import bookings

    async def scenario() -> None:
        async with pair(tmp_path) as (a, b):
            await b.perform(lambda: bookings.add_technician(
                b.ledger, b.ledger.owner, "T01", "小李", ["FOOT60"], "00:00-24:00"))
            mid = await a.perform(lambda: a.ledger.add_member(a.ledger.owner, name="张伟",
                                                             phone="13812345678"))
            await settle(a, b)
            when = time.strftime("%Y-%m-%dT%H:00", time.localtime(time.time() + 86_400))

            def erase() -> Any:
                return a.ledger.erase_member(a.ledger.owner, mid)

            def book() -> Any:
                return bookings.book(b.ledger, b.ledger.owner, mid, "T01", "FOOT60", when)

            made, _erased = await asyncio.gather(b.perform(book), a.perform(erase))
            assert made["status"] == "confirmed"
            for _ in range(200):
                shown = bookings.show(b.ledger, made["booking"])
                if shown["status"] == "cancelled":
                    break
                await asyncio.sleep(0.05)
            assert shown["status"] == "cancelled" and "erased" in shown["reason"], shown
            await settle(a, b)
            assert bookings.show(a.ledger, made["booking"])["status"] == "cancelled"

    asyncio.run(scenario())


def test_a_branchs_address_announced_under_a_made_up_id_still_reaches_it(
        tmp_path: Path) -> None:
    """A stranger on the LAN reads the chain's tag from any branch's announcement and
    announces SH02's real sync address as node ZZ90: every dial there then failed
    "expected node ZZ90, the peer is node SH02", for good. An announced id is a hint;
    the certificate says who answers."""
    async def scenario() -> None:
        chain = init_chain(tmp_path / "chain")
        nodes = []
        for name in ("SH01", "SH02"):
            Ledger.create(tmp_path / name, name, chain.name)
            enrol(tmp_path / "chain", tmp_path / name, name)
            node = Node(Config(tmp_path / name, listen=("127.0.0.1", 0),
                               api=("127.0.0.1", 0), mdns=False))
            await node.start()
            nodes.append(node)
        a, b = nodes
        try:
            a.dial(f"wss://127.0.0.1:{b.sync_port}", node_hint="ZZ90", discovered=True)
            for _ in range(200):
                if "SH02" in a.connected() and "SH01" in b.connected():
                    break
                await asyncio.sleep(0.05)
            assert "SH02" in a.connected() and "SH01" in b.connected()
        finally:
            for node in reversed(nodes):
                await node.stop()

    asyncio.run(scenario())


def test_a_node_starts_though_its_name_is_announced_already(tmp_path: Path) -> None:
    """Something on the LAN already announces SH01's service name (a stranger, or a
    PC enrolled twice by mistake): the node exited at start with zeroconf's
    NonUniqueNameException. It starts, announced under another name; peers go by the
    node id in its TXT record and by its certificate."""
    from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

    from peer.discovery import SERVICE

    async def scenario() -> None:
        squatter = AsyncZeroconf(interfaces=["127.0.0.1"])
        await squatter.async_register_service(AsyncServiceInfo(
            SERVICE, f"SH01.{SERVICE}", port=9, parsed_addresses=["127.0.0.1"],
            server="squatter.local.", properties={"node": "SH01", "chain": "x"}))
        chain = init_chain(tmp_path / "chain")
        Ledger.create(tmp_path / "SH01", "SH01", chain.name)
        enrol(tmp_path / "chain", tmp_path / "SH01", "SH01")
        node = Node(Config(tmp_path / "SH01", listen=("127.0.0.1", 0),
                           api=("127.0.0.1", 0), mdns=True))
        try:
            await node.start()
            assert node.sync_port
        finally:
            await node.stop()
            await squatter.async_close()

    asyncio.run(scenario())


def test_a_revocation_list_imported_from_a_file_drops_the_revoked_peer(tmp_path: Path) -> None:
    """Head office offline revoked SH02 and sent its sync file; SH01's running node
    imported it (POST /sync/import), and the list sat in the store uninstalled: the
    revoked branch kept its link, and our members' data, and was let in again after a
    blip, until SH01 restarted."""
    from peer.chain import revocations_rule, revoke
    from peer.files import export_bytes, import_bytes

    async def scenario() -> None:
        chain = init_chain(tmp_path / "chain")
        Ledger.create(tmp_path / "HQ01", "HQ01", chain.name)
        enrol(tmp_path / "chain", tmp_path / "HQ01", "HQ01", head_office=True)
        async with pair(tmp_path / "pair", chain_dir=tmp_path / "chain") as (a, b):
            assert "SH02" in a.connected()
            with Ledger.open(tmp_path / "HQ01") as hq:
                hq.set_rule(hq.owner, "revocations",
                            revocations_rule(revoke(tmp_path / "chain", "SH02")))
                data = export_bytes(hq, hq.owner)[0]
            await a.perform(lambda: import_bytes(a.ledger, a.ledger.owner, data))
            for _ in range(100):
                if "SH02" not in a.connected():
                    break
                await asyncio.sleep(0.05)
            assert "SH02" not in a.connected() and "SH01" not in b.connected()

    asyncio.run(scenario())
