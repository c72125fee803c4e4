"""LAN discovery: branch nodes on the same shop network find each other by mDNS.

Each node announces `NODE._crdtledger._tcp.local.` with its sync port and a TXT
record naming its node id and a short fingerprint of its chain's CA. A node dials
what it discovers only when the fingerprint is its own chain's: another chain's
nodes in the same mall are ignored (and could not pass the TLS handshake anyway;
checking first saves them a refused connection every few seconds).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
from typing import TYPE_CHECKING

import ifaddr
from zeroconf import IPVersion, ServiceStateChange, Zeroconf
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from crdtledger.hlc import NODE_ID

if TYPE_CHECKING:
    from peer.node import Node

log = logging.getLogger("crdtledger.discovery")

SERVICE = "_crdtledger._tcp.local."
RESOLVE_MS = 3000


def fingerprint_tag(fingerprint: str) -> str:
    """What goes in TXT: enough of the CA's SHA-256 to tell chains apart."""
    return fingerprint[:16]


def _addresses(host: str) -> list[str]:
    if host not in ("0.0.0.0", "", "::"):
        return [host]
    found = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if ip.is_IPv4 and not ipaddress.ip_address(str(ip.ip)).is_loopback:
                found.append(str(ip.ip))
    return found or ["127.0.0.1"]


class Discovery:
    def __init__(self, node: Node) -> None:
        self.node = node
        self.tag = fingerprint_tag(node.chain_identity.fingerprint)
        self.addresses = _addresses(node.config.listen[0])
        self._zc: AsyncZeroconf | None = None
        self._browser: AsyncServiceBrowser | None = None
        self._info: AsyncServiceInfo | None = None
        self._pending: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        node_id = self.node.node_id
        # Announce and listen only where we serve: a node bound to 127.0.0.1 (tests,
        # the demo) stays off the shop's real network.
        self._zc = AsyncZeroconf(interfaces=self.addresses, ip_version=IPVersion.V4Only)
        self._info = AsyncServiceInfo(
            SERVICE, f"{node_id}.{SERVICE}", port=self.node.sync_port,
            parsed_addresses=self.addresses, server=f"crdtledger-{node_id.lower()}.local.",
            properties={"node": node_id, "chain": self.tag, "port": str(self.node.sync_port)})
        try:
            # Another's announcement under this node's name (a stranger's, or a second
            # PC enrolled wrongly) made the node fail to start (NonUniqueNameException).
            # The name changes; peers go by the node id in the TXT record, and by the
            # certificate once they dial.
            await self._zc.async_register_service(self._info, allow_name_change=True)
        except Exception as e:  # announcing is a convenience: the node runs without it
            log.warning("not announced on the LAN (%s): peers here find it by their "
                        "configured addresses only", e)
        self._browser = AsyncServiceBrowser(self._zc.zeroconf, [SERVICE],
                                            handlers=[self._on_change])

    def _on_change(self, zeroconf: Zeroconf, service_type: str, name: str,
                   state_change: ServiceStateChange) -> None:
        if state_change is ServiceStateChange.Removed:
            # Withdrawn: its target goes (a branch back announces itself again).
            node_id = name.removesuffix(f".{service_type}")
            if node_id and node_id != name:
                self.node.forget_discovered(node_id)
            return
        task = asyncio.ensure_future(self._resolve(zeroconf, service_type, name))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _resolve(self, zeroconf: Zeroconf, service_type: str, name: str) -> None:
        info = AsyncServiceInfo(service_type, name)
        if not await info.async_request(zeroconf, RESOLVE_MS):
            return
        try:  # anyone on the LAN may announce: bytes that are no text are nobody's
            props = {k.decode(): (v or b"").decode() for k, v in info.properties.items()}
        except UnicodeDecodeError:
            log.debug("ignoring %s: its TXT record is not text", name)
            return
        peer = props.get("node", "")
        if props.get("chain") != self.tag:
            log.debug("ignoring %s: another chain", name)
            return
        if (not NODE_ID.match(peer) or peer == self.node.node_id or info.port is None
                or not 0 < info.port < 65536):
            return  # not a node id (a newline in one forged lines in the log)
        for address in info.parsed_addresses(IPVersion.V4Only):
            log.info("discovered %s at %s:%s", peer, address, info.port)
            self.node.dial(f"wss://{address}:{info.port}", node_hint=peer, discovered=True)
            break

    async def stop(self) -> None:
        for task in list(self._pending):
            task.cancel()
        if self._browser is not None:
            await self._browser.async_cancel()
        if self._zc is not None:
            if self._info is not None:
                with contextlib.suppress(Exception):  # best effort: we are leaving anyway
                    await self._zc.async_unregister_service(self._info)
            await self._zc.async_close()
