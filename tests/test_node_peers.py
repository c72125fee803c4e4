"""Who may talk to a node, and what a misbehaving peer can do to it: nothing.

A running node (a real process) faces hand-made websocket clients holding real
certificates: none, another chain's, an expired or revoked one, or a good one
used to send garbage. Each is turned away or cut off, and the node's real peer
stays connected throughout.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cluster import NodeProc, cluster, member_with_cash, wait_for
from conftest import run_cli

from crdtledger.sync import MAX_FRAME_BYTES, pack
from peer.chain import enrol, load_identity

pytestmark = pytest.mark.slow

REFUSED = (aiohttp.ClientError, ssl.SSLError, ConnectionError, OSError)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("peers")
    with cluster(root) as c:
        a = c.add("SH01").start()
        b = c.add("SH02", peers=("SH01",)).start()
        wait_for(lambda: "SH02" in a.connected(), what="the good peer")
        for node in ("SH03", "SH04"):  # enrolled, but never run: the tests speak for them
            assert run_cli("init", "--node", node, "--chain", c.chain,
                           data=root / node.lower()).code == 0
        expired = root / "old1"
        assert run_cli("init", "--node", "OLD1", "--chain", c.chain.name,
                       data=expired).code == 0
        now = dt.datetime.now(dt.UTC)
        enrol(c.chain, expired, "OLD1", not_before=now - dt.timedelta(days=30),
              not_after=now - dt.timedelta(days=1))
        assert run_cli("chain", "init", "--out", root / "other").code == 0
        assert run_cli("init", "--node", "FX01", "--chain", root / "other",
                       data=root / "fx01").code == 0
        yield {"a": a, "b": b, "root": root, "chain": c.chain}


def client_context(data: Path) -> ssl.SSLContext:
    identity = load_identity(data)
    assert identity is not None
    return identity.client_ssl_context()


async def talk(node: NodeProc, ctx: ssl.SSLContext | None, frames: list[Any]
               ) -> tuple[int | None, list[bytes]]:
    """Connect, send frames (bytes or str), and return the close code and what came back."""
    async with aiohttp.ClientSession() as http, http.ws_connect(
            f"https://127.0.0.1:{node.sync_port}/sync", ssl=ctx or False,
            max_msg_size=0) as ws:
        for frame in frames:
            await (ws.send_bytes(frame) if isinstance(frame, bytes) else ws.send_str(frame))
        got = []
        try:
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.BINARY:
                    got.append(msg.data)
        except aiohttp.ClientConnectionResetError:
            # aiohttp's client answered the node's ping on the connection the node had
            # just closed: the client sees the connection drop, as a 1006.
            return 1006, got
        return ws.close_code, got


def still_serving(world: dict[str, Any]) -> None:
    a: NodeProc = world["a"]
    assert a.http("GET", "/health")["status"] == "ok"
    assert "SH02" in a.connected()


def hello(node: str, chain: str) -> bytes:
    return pack({"t": "hello", "chain": chain, "node": node, "now": 0, "digest": b""})


def test_no_certificate_is_refused(world: dict[str, Any]) -> None:
    ctx = ssl.create_default_context(cafile=str(world["chain"] / "ca.crt"))
    ctx.check_hostname = False
    with pytest.raises(REFUSED):
        asyncio.run(talk(world["a"], ctx, []))
    with pytest.raises(REFUSED):
        asyncio.run(talk(world["a"], None, []))  # no TLS client identity at all
    still_serving(world)


@pytest.mark.parametrize("who", ["fx01", "old1"], ids=["foreign chain", "expired"])
def test_foreign_or_expired_certificate_is_refused(world: dict[str, Any], who: str) -> None:
    with pytest.raises(REFUSED):
        asyncio.run(talk(world["a"], client_context(world["root"] / who), []))
    still_serving(world)


def test_an_expired_certificate_reads_nothing_on_the_sync_port_and_is_told_once(
        world: dict[str, Any]) -> None:
    """A retired branch's expired certificate still passes the handshake (its dates are
    judged after it, to say so): it read the store's digest at the sync port's
    /health, and each of its requests wrote a warning (2,000 in a second from one
    connection). The sync port serves the sync route only; a refusal is logged once a
    minute per reason."""
    a: NodeProc = world["a"]
    ctx = client_context(world["root"] / "old1")
    before = len(a.logs())

    async def main() -> list[int]:
        async with aiohttp.ClientSession() as http:
            codes = []
            for path in ["/health"] + ["/sync"] * 50:
                async with http.get(f"https://127.0.0.1:{a.sync_port}{path}", ssl=ctx) as r:
                    codes.append(r.status)
            return codes

    codes = asyncio.run(main())
    assert codes[0] == 404 and set(codes[1:]) == {403}, codes
    said = [line for line in a.logs()[before:].splitlines() if "refused a peer" in line]
    assert len(said) <= 2, said  # once a minute (or already said), not 50 times
    still_serving(world)


def test_claiming_another_node_id_closes_the_connection(world: dict[str, Any]) -> None:
    chain = world["chain"].name
    code, _ = asyncio.run(talk(world["a"], client_context(world["root"] / "sh03"),
                               [hello("SH02", chain)]))
    assert code == 1002
    still_serving(world)


@pytest.mark.parametrize("frames", [
    [b"\xc1 not msgpack"],
    [pack({"t": "update", "doc": "rules", "data": b"\x00\x00"})],  # before hello
    [pack({"t": "hello", "chain": "x"})],                         # missing fields
    [b"\x92\x01\x02"],                                            # not a map
], ids=["garbage", "out of order", "malformed hello", "not a map"])
def test_malformed_frames_close_only_that_connection(world: dict[str, Any],
                                                     frames: list[bytes]) -> None:
    code, _ = asyncio.run(talk(world["a"], client_context(world["root"] / "sh03"), frames))
    assert code == 1002
    still_serving(world)


def test_text_frames_close_the_connection(world: dict[str, Any]) -> None:
    code, _ = asyncio.run(talk(world["a"], client_context(world["root"] / "sh03"), ["hi"]))
    assert code == 1003
    still_serving(world)


def test_oversized_frame_closes_the_connection(world: dict[str, Any]) -> None:
    chain = world["chain"].name
    code, _ = asyncio.run(talk(world["a"], client_context(world["root"] / "sh03"),
                               [hello("SH03", chain), b"\x00" * (MAX_FRAME_BYTES + 1)]))
    # The node closes with 1009 (too big) while the client is still sending, which
    # the client may only see as the connection dropping (1006).
    assert code in (1009, 1006)
    still_serving(world)


def test_a_good_certificate_syncs(world: dict[str, Any]) -> None:
    chain = world["chain"].name
    member_with_cash(world["a"], "1.00", phone="13700000000")
    got = asyncio.run(asyncio.wait_for(_sync_once(world["a"], world["root"] / "sh04", chain),
                                       20))
    assert got, "a node of the chain gets the data"


async def _sync_once(node: NodeProc, data: Path, chain: str) -> list[bytes]:
    async with aiohttp.ClientSession() as http, http.ws_connect(
            f"https://127.0.0.1:{node.sync_port}/sync", ssl=client_context(data)) as ws:
        await ws.send_bytes(hello("SH04", chain))
        got = []
        async for msg in ws:
            got.append(msg.data)
            if len(got) >= 2:  # its hello and its state: it talks to us
                break
        return got


def test_revoked_certificate_is_refused_everywhere(world: dict[str, Any]) -> None:
    a: NodeProc = world["a"]
    b: NodeProc = world["b"]
    r = run_cli("chain", "revoke", "--chain", world["chain"], "--node", "SH03", data=a.data)
    assert r.code == 0, r.err
    for node in (a, b):  # the list replicated from SH01 to SH02
        def refused(node: NodeProc = node) -> bool:
            try:
                asyncio.run(talk(node, client_context(world["root"] / "sh03"), []))
            except REFUSED:
                return True
            return False

        wait_for(refused, what=f"{node.name} to refuse the revoked SH03")
    still_serving(world)
