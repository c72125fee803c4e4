"""What a dishonest node can build with its own key: forged log records, the heads
that cover them, sealed sync files, and a raw websocket session that speaks the
sync protocol (v2) with its own enrolled certificate.

Nothing here goes through the library's write path (which refuses governance and
others' entries before it commits): a forger mutates a pycrdt document of its own,
taken from the honest state, with whatever client id it likes, chains the update with
crdtledger.log.record_hash from whatever tip it claims, and signs the head with the
key it holds. Used by tests/test_attacks.py and tests/test_record_mutation.py.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import msgpack
from pycrdt import Map

from crdtledger.log import GENESIS, Batch, Head, Record, head_message, record_hash
from crdtledger.seal import seal
from crdtledger.storage import LoadedDoc
from crdtledger.sync import pack, unpack, wire_logs
from crdtledger.syncfile import KIND
from crdtledger.trust import Trust

Mutate = Callable[[dict[str, Map[Any]]], None]


def forge_update(state: bytes, doc: str, client: int, mutate: Mutate) -> bytes:
    """The pycrdt update a node writing as `client` makes when it runs `mutate` on the
    roots of document `doc` holding `state` (the honest document, whole)."""
    ld = LoadedDoc(doc, client)
    if state:
        ld.doc.apply_update(state)
    before = ld.doc.get_state()
    with ld.doc.transaction():
        mutate(ld.roots)
    return bytes(ld.doc.get_update(before))


@dataclass
class ForgedLog:
    """The continuation of `node`'s log from (seq, prev) as a forger writes it: records
    chained by hash and a head signed with `signer`'s key, sent with `cert` (the
    signer's own certificate unless told otherwise)."""

    chain: str
    node: str
    signer: Trust
    seq: int = 0
    prev: bytes = GENESIS
    cert: bytes | None = None

    def batch(self, items: Iterable[tuple[str, bytes]]) -> Batch:
        recs: list[Record] = []
        seq, prev = self.seq, self.prev
        for doc, data in items:
            seq += 1
            prev = record_hash(prev, self.node, seq, doc, data)
            recs.append(Record(self.node, seq, doc, data))
        sig = self.signer.sign(head_message(self.chain, self.node, seq, prev))
        return Batch(recs, {self.node: Head(seq, prev, sig)},
                     {self.node: self.cert if self.cert is not None else self.signer.cert_der})


def sign_head(signer: Trust, chain: str, node: str, seq: int, hash_: bytes) -> Head:
    return Head(seq, hash_, signer.sign(head_message(chain, node, seq, hash_)))


def sync_file(path: Path, sealer: Trust, batch: Batch, created_ms: int,
              logs: Mapping[str, tuple[int, bytes]] | None = None) -> Path:
    """A sealed sync file as export_file writes one, but of whatever batch the sealer
    likes, signed with the sealer's own key."""
    body = msgpack.packb({"chain": sealer.chain, "node": sealer.node, "created": created_ms,
                          "logs": wire_logs(logs or {}), **batch.to_wire()}, use_bin_type=True)
    path.write_bytes(seal(sealer, KIND, body, created_ms))
    return path


def hello(chain: str, node: str, now_ms: int) -> bytes:
    return pack({"t": "hello", "chain": chain, "node": node, "now": now_ms, "digest": b""})


def recs_frame(batch: Batch) -> bytes:
    return pack({"t": "recs", **batch.to_wire()})


@dataclass
class Reply:
    close_code: int | None
    frames: list[dict[str, Any]]

    def states(self) -> list[dict[str, Any]]:
        return [f for f in self.frames if f.get("t") == "state"]


async def session(port: int, ctx: ssl.SSLContext, chain: str, node: str, now_ms: int,
                  send: Callable[[list[dict[str, Any]]], list[bytes]] | list[bytes],
                  timeout: float = 20.0) -> Reply:
    """One sync session with the node listening on 127.0.0.1:`port`, as `node`: hello,
    the node's answer (its state), then what `send` returns (given the frames so far),
    then another hello, whose answer proves the node handled everything before it."""
    got: list[dict[str, Any]] = []

    async def read_until_states(ws: aiohttp.ClientWebSocketResponse, n: int) -> bool:
        while len([f for f in got if f.get("t") == "state"]) < n:
            msg = await ws.receive()
            if msg.type != aiohttp.WSMsgType.BINARY:
                return False
            got.append(unpack(msg.data))
        return True

    async def run() -> Reply:
        async with aiohttp.ClientSession() as http, http.ws_connect(
                f"wss://127.0.0.1:{port}/sync", ssl=ctx, max_msg_size=0) as ws:
            await ws.send_bytes(hello(chain, node, now_ms))
            if await read_until_states(ws, 1):
                frames = send(got) if callable(send) else send
                for frame in frames:
                    await ws.send_bytes(frame)
                await ws.send_bytes(hello(chain, node, now_ms))
                await read_until_states(ws, 2)
            await ws.close()
            return Reply(ws.close_code, got)

    return await asyncio.wait_for(run(), timeout)
