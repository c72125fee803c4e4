"""The node's notices: every half minute it asks what this node owes
(crdtledger.outbox.collect, which asks crdtledger.notices), keeps that in the store's
outbox under each notice's key, and sends what is kept and unsent through the node's
gateways (peer.gateways), marking each sent.

Runs on the node's event loop like everything that touches the ledger. A gateway
failure is a sentence kept with the notice and tried again later (crdtledger.outbox);
a notice for a channel this node has no gateway for waits the same way, so one set
up later still goes. One the gateway refuses for good (an address that does not
exist) is kept with why and not tried again. The simulator has no notifier: nothing it runs sends.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from crdtledger import outbox
from crdtledger.errors import LedgerError
from peer.gateways import GatewayError, Message

if TYPE_CHECKING:
    from peer.node import Node

log = logging.getLogger("crdtledger.notify")

INTERVAL_S = 30.0
SEND_TIMEOUT_S = 60.0


class Notifier:
    def __init__(self, node: Node, clock: Callable[[], int] | None = None,
                 interval_s: float = INTERVAL_S) -> None:
        self.node = node
        # The notifier's wall clock (Config.notify_clock); by default the chain's time
        # as the ledger books by it (HybridClock.wall: this machine's clock, corrected
        # when its peers say it is off). Not this machine's own: a PC two days ahead,
        # its sales booked on the right day, sent the day after tomorrow's report (all
        # zeros) and never the day's own.
        self.clock = clock or self._chain_ms
        self.interval_s = interval_s
        self._lock = asyncio.Lock()

    def _chain_ms(self) -> int:
        return self.node.ledger.clock.wall()

    async def tick(self) -> int:
        """One pass: keep what is due, send what is kept and unsent; returns how many
        were sent. Passes never overlap (a slow mail server holds up the next)."""
        async with self._lock:
            ledger = self.node.ledger
            now = self.clock()
            channels = sorted(self.node.gateways)
            try:
                due = outbox.collect(ledger, now, channels)
                new = outbox.keep(ledger, due, now)
            except Exception:  # what is kept still goes
                # Finding what is due reads what every branch wrote; whatever in it
                # trips the scan, the notices already kept are still sent.
                log.exception("notices: finding what is due failed")
                new = 0
            if new:
                log.info("notices: %d due", new)
            sent = 0
            for kept in outbox.pending(ledger, now):
                o = outbox.as_now(ledger, kept, channels, now)
                if o is None:
                    log.info("notices: %s not sent: its member may no longer receive it, "
                             "or it is stale", kept.key)
                    continue
                if await self._send(o):
                    outbox.mark_sent(self.node.ledger, o.key, self.clock())
                    sent += 1
            return sent

    async def _send(self, o: outbox.Outgoing) -> bool:
        gateway = self.node.gateways.get(o.channel)
        if gateway is None:
            error = (f"this node has no {o.channel} gateway: set [notify.{o.channel}] in "
                     "its node.toml; kept until then")
        else:
            try:
                await asyncio.wait_for(gateway.send(
                    Message(o.key, o.channel, o.to, o.subject, o.body)), SEND_TIMEOUT_S)
                return True
            except GatewayError as e:
                if e.permanent:
                    outbox.mark_refused(self.node.ledger, o.key, str(e))
                    log.warning("notice %s to %s refused for good: %s", o.key, o.to, e)
                    return False
                error = str(e)
            except TimeoutError:
                error = (f"the {o.channel} gateway took over {SEND_TIMEOUT_S:.0f} s to answer; "
                         "it will be tried again")
            except Exception as e:  # one notice must not hold up the rest
                # A notice the gateway could not even build (a stored subject that is no
                # header, text that is no text): kept with why, and the pass goes on.
                log.exception("notice %s: the %s gateway failed", o.key, o.channel)
                error = (f"the {o.channel} gateway could not send this notice "
                         f"({type(e).__name__}: {e}); it will be tried again")
        delay = outbox.mark_failed(self.node.ledger, o.key, error, self.clock())
        log.warning("notice %s to %s not sent: %s (again in %d s)", o.key, o.to, error, delay)
        return False

    async def run(self) -> None:
        """A pass every interval, the first one interval after start (the node has had
        that long to hear from its peers what they hold)."""
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.tick()
            except LedgerError as e:
                log.warning("notices: %s", e)
            except Exception:  # the loop must outlive one bad pass; said in the log
                log.exception("notices: a pass failed")
