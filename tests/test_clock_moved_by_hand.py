"""A PC's clock moved by hand must not decide what the chain's rules and limits decide.

The owner's notices go by the chain's time the ledger books by, not this machine's
clock; rules are read as of the furthest day this store has read while its clock is
set back and nobody vouches for it; and the daily "no approver needed" limits count
from the day it would be had the clock not been put forward by hand.

Real SQLite stores (helpers.new_ledger) on fake clocks; the node core driven by hand
and real sync sessions, as tests/test_clock_set_back.py does.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from helpers import FakeClock, new_ledger, sync

from crdtledger.core import NodeCore
from crdtledger.ledger import Ledger
from crdtledger.sync import SyncSession
from peer.notifier import Notifier

DAY_MS = 86_400_000
HOUR_MS = 3_600_000


def met(core: NodeCore, peer: Ledger, link: int, *, now: float) -> None:
    """`core`'s store meets `peer` on `link`, a few rounds of real sync sessions, so the
    peer's clock is heard."""
    mine_id = core.ledger.node
    core.link_opened(link, peer.node, dialer=min(mine_id, peer.node), now=now)
    theirs = SyncSession(peer, expect_node=mine_id)
    theirs.start()
    mine = core.session(peer.node)
    assert mine is not None
    for _ in range(3):
        core.receive(link, theirs.data_to_send(), now)
        for frame in mine.data_to_send():
            theirs.receive(frame)


class Kept:
    """A gateway that keeps what it is given."""

    def __init__(self) -> None:
        self.sent: list[Any] = []

    async def send(self, message: Any) -> None:
        self.sent.append(message)


class NodeStandIn:
    """What peer.notifier.Notifier reads of its node: the store and the gateways."""

    def __init__(self, ledger: Ledger, gateways: dict[str, Kept]) -> None:
        self.ledger = ledger
        self.gateways = gateways


def test_the_daily_report_goes_by_the_chains_day_on_a_pc_running_ahead(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SH01's PC ran two days ahead and its two peers corrected it: its sales were
    booked on the right day, but its notifier read the machine's clock and sent the day
    after tomorrow's report (all zeros), and the day's own was never sent."""
    right = FakeClock(1_767_225_600_000 + 13 * HOUR_MS)  # 2026-01-01 21:00 in Shanghai
    machine = FakeClock(right.ms + 2 * DAY_MS)
    monkeypatch.setattr(time, "time_ns", lambda: machine.ms * 1_000_000)
    nodes = ["SH01", "SH02", "SH03"]
    ledgers = [new_ledger(tmp_path, n, now_ms=machine if n == "SH01" else right)
               for n in nodes]
    try:
        sh01 = ledgers[0]
        o = sh01.owner
        sh01.set_rule(o, "branches", {n: n for n in nodes}, effective_from="2000-01-01")
        sh01.set_rule(o, "notifications", {"daily": [{"branch": "SH01", "at": "21:00",
                                                      "to": ["boss@example.com"]}]},
                      effective_from="2000-01-01")
        for _ in range(2):
            for other in ledgers[1:]:
                sync(sh01, other)
        core = NodeCore(sh01)
        core.start(0.0)
        for link, other in enumerate(ledgers[1:], 1):
            met(core, other, link, now=1.0)
        assert core.clock_status()["off_ms"] == -2 * DAY_MS
        m = sh01.add_member(o, name="张伟", phone="13800138000")
        sh01.topup(o, m, 50000)
        sh01.debit(o, m, amount=12800)
        mail = Kept()
        notifier = Notifier(NodeStandIn(sh01, {"email": mail}))  # type: ignore[arg-type]
        asyncio.run(notifier.tick())
        assert [x.key for x in mail.sent] == ["daily:SH01:2026-01-01:boss@example.com"]
        assert "128.00" in mail.sent[0].body
    finally:
        for ledger in ledgers:
            ledger.close()


# --- rules read on a clock set back ---------------------------------------------------


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()  # 2026-01-01 08:00 in Shanghai


@pytest.fixture
def shop(tmp_path: Path, clock: FakeClock) -> Any:
    ledger = new_ledger(tmp_path, "SH01", now_ms=clock)
    yield ledger
    ledger.close()


def test_a_price_raised_today_holds_on_a_clock_set_back(shop: Ledger,
                                                        clock: FakeClock) -> None:
    """Head office raised FOOT60 from today; the cashier set the lone PC's clock back a
    day and sold at yesterday's price (12,160 fen against 15,010)."""
    o = shop.owner
    m = shop.add_member(o, name="张伟", phone="13800138000")
    cashier = shop.add_operator(o, "alice", "secret1", roles=["cashier"])
    shop.topup(o, m, 100000)
    services = dict(shop.rule("services"))
    services["FOOT60"] = dict(services["FOOT60"], price=15800)
    shop.set_rule(o, "services", services, effective_from=shop.today())
    today = shop.debit(cashier, m, service="FOOT60")["amount"]
    clock.advance_days(-1)
    assert shop.debit(cashier, m, service="FOOT60")["amount"] == today == 15010
    # An operator who confirms the clock says it is right: its day's rules then.
    shop.confirm_clock(o)
    assert shop.debit(cashier, m, service="FOOT60")["amount"] < today


def test_an_ended_promotion_gives_nothing_on_a_clock_set_back(shop: Ledger,
                                                              clock: FakeClock) -> None:
    """充500送30 ended today; five top-ups with the clock set back a day gave 150.00."""
    o = shop.owner
    m = shop.add_member(o, name="张伟", phone="13800138000")
    cashier = shop.add_operator(o, "alice", "secret1", roles=["cashier"])
    shop.set_rule(o, "promotions", [{"name": "充500送30", "min": 50000, "bonus": 3000}],
                  effective_from=shop.storage.day_of(clock.ms - 10 * DAY_MS))
    shop.set_rule(o, "promotions", [], effective_from=shop.today())
    clock.advance_days(-1)
    for _ in range(5):
        shop.topup(cashier, m, 50000)
    assert shop.balance(m).get("bonus", 0) == 0
    assert shop.balance(m)["cash"] == 250000
