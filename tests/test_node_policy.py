"""The node's policies with two real nodes in one event loop (real TLS on loopback):
how long a debit waits for rights, what the rebalancer moves, what /metrics shows."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from crdtledger.errors import RightsElsewhere
from crdtledger.ledger import Ledger
from peer.chain import enrol, init_chain
from peer.node import Config, Node


@asynccontextmanager
async def pair(root: Path, **config: float) -> AsyncIterator[tuple[Node, Node]]:
    chain = init_chain(root / "chain")
    for name in ("SH01", "SH02"):
        Ledger.create(root / name, name, chain.name)
        enrol(root / "chain", root / name, name)
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
