"""Chain identity over real TLS: an aiohttp server on 127.0.0.1 and real clients.

Each test builds its own chain CA ("acme"), and a foreign chain that is also called
"acme" with a node also called SH02: names prove nothing, only the CA does.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import socket
import ssl
import stat
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from helpers import new_ledger

from crdtledger.errors import InvalidInput
from peer.chain import (
    ChainError,
    Identity,
    PeerRejected,
    RevocationRejected,
    enrol,
    init_chain,
    load_chain,
    load_identity,
    node_serial,
    revocations_rule,
    revoke,
)


@dataclass
class World:
    chain: Path
    foreign_chain: Path
    server: Path  # data directories, each enrolled in `chain` unless named foreign
    client: Path
    expired: Path
    foreign: Path


def identity(data: Path) -> Identity:
    ident = load_identity(data)
    assert ident is not None
    return ident


@pytest.fixture
def world(tmp_path: Path) -> World:
    chain, foreign_chain = tmp_path / "acme", tmp_path / "elsewhere" / "acme"
    init_chain(chain)
    init_chain(foreign_chain)
    now = dt.datetime.now(dt.UTC)
    w = World(chain, foreign_chain, tmp_path / "sh01", tmp_path / "sh02", tmp_path / "sh03",
              tmp_path / "foreign-sh02")
    enrol(chain, w.server, "SH01", head_office=True)  # may write the revocations rule
    enrol(chain, w.client, "SH02")
    enrol(chain, w.expired, "SH03", not_before=now - dt.timedelta(days=10),
          not_after=now - dt.timedelta(days=1))
    enrol(foreign_chain, w.foreign, "SH02")
    return w


# --- a real server and real clients -------------------------------------------


@dataclass
class Server:
    url: str
    seen: list[str]  # what the handler saw, so after the TLS handshake: a node or "rejected"


@asynccontextmanager
async def serve(ident: Identity) -> AsyncIterator[Server]:
    """A websocket server on an ephemeral port, as a node's sync endpoint will be:
    the peer is checked before the upgrade, so a refused peer never gets a socket."""
    seen: list[str] = []

    async def sync(request: web.Request) -> web.StreamResponse:
        assert request.transport is not None
        der = request.transport.get_extra_info("ssl_object").getpeercert(binary_form=True)
        try:
            node = ident.check_peer(der)
        except PeerRejected as e:
            seen.append("rejected")
            raise web.HTTPForbidden(text=str(e), headers={"X-Refused": e.code}) from None
        seen.append(node)
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.send_json({"node": node})
        await ws.close()
        return ws

    app = web.Application()
    app.router.add_get("/sync", sync)
    runner = web.AppRunner(app)
    await runner.setup()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    try:
        await web.SockSite(runner, sock, ssl_context=ident.server_ssl_context()).start()
        yield Server(f"wss://127.0.0.1:{sock.getsockname()[1]}/sync", seen)
    finally:
        await runner.cleanup()
        sock.close()


@dataclass
class Reply:
    body: Any  # the server's first message: the node id it read from our certificate
    server_cert: bytes


async def dial(url: str, ctx: ssl.SSLContext) -> Reply:
    async with aiohttp.ClientSession() as session, session.ws_connect(url, ssl=ctx) as ws:
        # Where a node checks whom it dialled, before sending anything.
        server_cert = ws.get_extra_info("ssl_object").getpeercert(binary_form=True)
        return Reply(await ws.receive_json(), server_cert)


def call(server_ident: Identity, ctx: ssl.SSLContext) -> tuple[Reply | BaseException, list[str]]:
    """One connection from a client context; returns the reply (or the error) and
    what the server's handler saw."""

    async def run() -> tuple[Reply | BaseException, list[str]]:
        async with serve(server_ident) as server:
            try:
                return await dial(server.url, ctx), server.seen
            except aiohttp.ClientError as e:
                return e, server.seen

    return asyncio.run(run())


def no_cert_client(ca: Path, tls_max: ssl.TLSVersion) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.maximum_version = tls_max
    ctx.load_verify_locations(ca)
    return ctx


# --- handshakes -----------------------------------------------------------------


@pytest.mark.parametrize("tls_max", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_a_node_of_the_chain_connects_and_both_sides_read_the_node_ids(
        world: World, tls_max: ssl.TLSVersion) -> None:
    server, client = identity(world.server), identity(world.client)
    ctx = client.client_ssl_context()
    ctx.maximum_version = tls_max
    reply, seen = call(server, ctx)
    assert isinstance(reply, Reply), reply
    assert (reply.body, seen) == ({"node": "SH02"}, ["SH02"])
    assert client.check_peer(reply.server_cert, expect_node="SH01") == "SH01"


@pytest.mark.parametrize("tls_max", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_a_client_without_certificate_is_refused_at_the_handshake(
        world: World, tls_max: ssl.TLSVersion) -> None:
    server = identity(world.server)
    reply, seen = call(server, no_cert_client(server.ca_path, tls_max))
    assert isinstance(reply, aiohttp.ClientError)
    assert seen == []


def test_a_client_of_another_chain_is_refused_at_the_handshake(world: World) -> None:
    server = identity(world.server)
    ctx = identity(world.foreign).client_ssl_context()
    # It trusts our CA (a certificate is public), so only its own can be refused.
    ctx.load_verify_locations(server.ca_path)
    reply, seen = call(server, ctx)
    assert isinstance(reply, aiohttp.ClientError)
    assert not isinstance(reply, aiohttp.ClientConnectorCertificateError)
    assert seen == []


def test_a_server_of_another_chain_is_refused_by_the_client(world: World) -> None:
    reply, seen = call(identity(world.foreign), identity(world.client).client_ssl_context())
    assert isinstance(reply, aiohttp.ClientConnectorCertificateError)
    assert seen == []


def test_an_expired_certificate_is_refused(world: World) -> None:
    server, expired = identity(world.server), identity(world.expired)
    reply, seen = call(server, expired.client_ssl_context())
    assert isinstance(reply, aiohttp.ClientError)
    # Refused by check_peer, before the upgrade: dates are left to it (with a margin,
    # naming the clock), not to OpenSSL, whose refusal nothing logs above debug.
    assert seen == ["rejected"]
    # check_peer refuses it too, on its own, whatever context produced it.
    with pytest.raises(PeerRejected, match="SH03 is valid only"):
        server.check_peer(ssl.PEM_cert_to_DER_cert(expired.cert_path.read_text()))


def test_check_peer_refuses_another_node_than_expected_and_foreign_certificates(
        world: World) -> None:
    client = identity(world.client)
    der = ssl.PEM_cert_to_DER_cert(identity(world.server).cert_path.read_text())
    with pytest.raises(PeerRejected, match="expected node SH05, the peer is node SH01") as e:
        client.check_peer(der, expect_node="SH05")
    assert e.value.code == "peer_rejected"
    foreign = ssl.PEM_cert_to_DER_cert(identity(world.foreign).cert_path.read_text())
    with pytest.raises(PeerRejected, match="not from chain acme"):
        client.check_peer(foreign, expect_node="SH02")
    for bad in (None, b"", b"not a certificate"):
        with pytest.raises(PeerRejected):
            client.check_peer(bad)


# --- revocation -------------------------------------------------------------------


def test_a_revoked_certificate_is_refused_after_the_list_is_installed(world: World) -> None:
    server, client = identity(world.server), identity(world.client)
    crl = revoke(world.chain, node_serial(world.client))
    # As the daemon gets it: the base64 text of the replicated rule.
    assert server.set_revocations(revocations_rule(crl)["crl"]) == 1
    reply, seen = call(server, client.client_ssl_context())
    assert isinstance(reply, aiohttp.WSServerHandshakeError)
    assert reply.status == 403 and reply.headers is not None
    assert reply.headers["X-Refused"] == "peer_rejected"
    assert seen == ["rejected"]
    # Revoking SH02 takes nothing from SH01: it still dials SH01.
    reply, seen = call(server, identity(world.server).client_ssl_context())
    assert isinstance(reply, Reply) and seen == ["SH01"]


def test_an_older_list_does_not_replace_a_newer_one(world: World) -> None:
    ident = identity(world.server)
    sh02 = ssl.PEM_cert_to_DER_cert(identity(world.client).cert_path.read_text())
    first = revoke(world.chain, "SH03")  # by node id, from the CA's record of issues
    second = revoke(world.chain, node_serial(world.client))
    assert ident.set_revocations(second) == 2
    with pytest.raises(RevocationRejected, match="older") as e:
        ident.set_revocations(first)
    assert e.value.code == "crl_rejected"
    assert ident.crl_number == 2
    with pytest.raises(PeerRejected, match="revoked"):
        ident.check_peer(sh02)
    assert ident.set_revocations(second) == 2  # the same list again changes nothing
    assert ident.set_revocations("") == 2  # the rule's default body installs nothing


def test_a_new_list_keeps_earlier_revocations_and_builds_on_the_ledger_copy(
        world: World) -> None:
    first = revoke(world.chain, node_serial(world.client))
    # Another copy of the CA directory that never saw `first`: the list in force,
    # as read from the ledger, still carries SH02 forward and sets the number.
    (world.chain / "crl.der").unlink()
    second = revoke(world.chain, identity(world.expired).cert_path.read_bytes(),
                    existing_crl=revocations_rule(first)["crl"])
    ident = identity(world.server)
    assert ident.set_revocations(second) == 2
    with pytest.raises(PeerRejected, match="revoked"):
        ident.check_peer(ssl.PEM_cert_to_DER_cert(identity(world.client).cert_path.read_text()))
    # A list of another CA is no base to build on.
    with pytest.raises(ChainError):
        revoke(world.chain, "SH02", existing_crl=revoke(world.foreign_chain, "SH02"))


def test_a_list_not_signed_by_the_chain_ca_is_ignored(world: World) -> None:
    server, client = identity(world.server), identity(world.client)
    # Same chain name, same CA subject, same node id and a real CRL: only the
    # signature tells it apart.
    forged = revoke(world.foreign_chain, "SH02")
    for bad in (forged, revocations_rule(forged)["crl"], "%%%", b"garbage"):
        with pytest.raises(RevocationRejected):
            server.set_revocations(bad)
    assert server.crl_number == 0
    reply, seen = call(server, client.client_ssl_context())
    assert isinstance(reply, Reply) and seen == ["SH02"]


def test_revoke_refuses_what_this_chain_did_not_issue(world: World) -> None:
    with pytest.raises(ChainError, match="not issued by chain acme"):
        revoke(world.chain, identity(world.foreign).cert_path.read_bytes())
    with pytest.raises(ChainError, match="no certificate to node SH09"):
        revoke(world.chain, "SH09")
    with pytest.raises(InvalidInput):
        revoke(world.chain, "not a node")


def test_the_revocations_rule_replicates_base64_only(tmp_path: Path, world: World) -> None:
    ledger = new_ledger(tmp_path, "SH01", chain=load_chain(world.chain).name)
    try:
        assert ledger.rule("revocations") == {"crl": ""}
        body = revocations_rule(revoke(world.chain, "SH02"))
        ledger.set_rule(ledger.owner, "revocations", body)
        assert ledger.rule("revocations") == body
        bad_bodies: list[Any] = [{"crl": "not base64!"}, {"crl": 1}, {}, [], {"crl": "abc"}]
        for bad in bad_bodies:
            with pytest.raises(InvalidInput, match="rule revocations is malformed"):
                ledger.set_rule(ledger.owner, "revocations", bad)
    finally:
        ledger.close()


# --- files on disk ------------------------------------------------------------------


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_keys_are_private_and_the_node_never_gets_the_ca_key(world: World) -> None:
    assert mode(world.chain / "ca.key") == 0o600
    tls = world.client / "tls"
    assert mode(tls / "node.key") == 0o600
    assert sorted(p.name for p in tls.iterdir()) == ["ca.crt", "chain.key", "node.crt",
                                                     "node.key"]
    # The chain secret (sealed files) is every branch's; the CA key is no branch's.
    assert (tls / "chain.key").read_bytes() == (world.chain / "chain.key").read_bytes()
    assert mode(tls / "chain.key") == mode(world.chain / "chain.key") == 0o600
    ident = identity(world.client)
    chain = load_chain(world.chain)
    assert (ident.node, ident.chain, ident.fingerprint) == ("SH02", "acme", chain.fingerprint)
    assert chain.has_key and len(chain.fingerprint) == 64 and len(chain.short) == 16
    assert ident.short == chain.short
    assert chain.fingerprint != load_chain(world.foreign_chain).fingerprint


def test_init_and_enrol_refuse_to_overwrite(tmp_path: Path, world: World) -> None:
    with pytest.raises(ChainError, match="already holds a chain CA"):
        init_chain(world.chain, "acme")
    with pytest.raises(ChainError, match="already holds a node identity"):
        enrol(world.chain, world.client, "SH02")
    with pytest.raises(InvalidInput, match="--name"):
        init_chain(tmp_path / "my chain")
    assert init_chain(tmp_path / "x", "west-2").name == "west-2"
    # A copy of the chain without its key can be read, not used to enrol.
    public = tmp_path / "public"
    public.mkdir()
    for f in ("ca.crt", "chain.json"):
        (public / f).write_bytes((world.chain / f).read_bytes())
    assert not load_chain(public).has_key
    with pytest.raises(ChainError, match=r"no ca\.key"):
        enrol(public, tmp_path / "sh04", "SH04")
    with pytest.raises(InvalidInput):
        enrol(world.chain, tmp_path / "bad", "sh04")


def test_a_node_made_without_a_chain_has_no_identity(tmp_path: Path, world: World) -> None:
    assert load_identity(tmp_path / "plain") is None
    (world.client / "tls" / "node.key").unlink()
    with pytest.raises(ChainError, match="usable node identity"):
        load_identity(world.client)
