"""A clock put forward by hand while peers are connected, before they next hear it.

Left by the nineteenth wave: the peers' word that this PC's clock is right
(`Ledger.clock_vouched`, set by the node core at each tick and hello) stood for a clock
the cashier had put forward since. The counter's pages read the rules (`rules_day`)
between the jump and the node core's next tick; that reading saw the jump
(HybridClock.moved_by_hand) and took the stale word as a vouch for it, so the next
sale, whose tick then heard the lone peer disagree, carried no `moved`: booked 30 days
on, its refund period counted 30 more days, and the daily limits counted from the moved
day afresh. The peers' word now holds for the clock they judged: once this machine's
clock moves forward against its boot clock since, it waits for their next judgement.

Real SQLite stores, a real node core meeting real peers by sync sessions; the clock
moved as tests/test_refund_clock_ahead.py moves it.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from helpers import FakeClock, new_ledger, sync
from test_clock_forward_rules import put_forward
from test_clock_moved_by_hand import DAY_MS, BootClock, met
from test_refund_clock_ahead import Chain

from crdtledger import rules
from crdtledger.core import Done, NodeCore
from crdtledger.errors import ApprovalRequired, PermissionDenied
from crdtledger.hlc import boot_clock_s, id_time_ms
from crdtledger.ledger import Ledger
from peer import node as node_module


@pytest.fixture
def chain(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    c = Chain(tmp_path, monkeypatch)
    yield c
    c.close()


def connected(chain: Chain, peers: int) -> NodeCore:
    """SH01's node core meets `peers` of SH02, SH03, which vouch for its clock."""
    core = NodeCore(chain.sh01)
    core.start(0.0)
    for link, other in enumerate(chain.ledgers[1:1 + peers], 1):
        sync(chain.sh01, other)
        met(core, other, link, now=1.0)
    assert chain.sh01.clock_vouched
    return core


def submitted(core: NodeCore, run: Any, now: float) -> Any:
    """A till's operation through the node core (its tick first), as peer.node runs it."""
    oid, effects = core.submit(run, now)
    done = [e for e in effects if isinstance(e, Done) and e.op == oid]
    assert done, effects
    if done[0].error is not None:
        raise done[0].error
    return done[0].result


def test_a_sale_after_a_read_on_a_clock_put_forward_beside_a_lone_peer_carries_moved(
        chain: Chain) -> None:
    """The brief's window: connected to SH02 alone, which agreed with the clock; the
    cashier puts it forward 30 days, the counter's page reads the rules, then a 200.00
    sale: it says how far the clock stood forward, so 20 real days later it is past a
    7-day period."""
    sh01 = chain.sh01
    core = connected(chain, 1)
    put_forward(chain.machine, chain.boot, 30)
    sh01.rules_day()  # the counter's sale page, before the node core's next tick
    # (the peer's word was for the clock before the jump: it waits for the next tick)
    sale = submitted(core, lambda: sh01.debit(sh01.owner, chain.member, amount=20_000), 61.0)
    assert chain.day(sale["id"]) == "2026-01-31"
    assert sale["moved"] == 30 * DAY_MS
    chain.machine.advance_days(-30)
    chain.days_pass(20)
    with pytest.raises(PermissionDenied, match="made on 2026-01-01"):
        submitted(core, lambda: sh01.refund(sh01.owner, sale["id"]), 61.0 + 20 * 86_400)


def test_the_daily_limit_counts_from_the_unmoved_day_in_that_window(chain: Chain) -> None:
    """Topped up to the limit today; put forward a day beside a lone peer that had
    vouched, a page read, then the same again: it needs an approver, as on a lone PC."""
    sh01 = chain.sh01
    cashier = sh01.add_operator(sh01.owner, "alice", "secret1", roles=["cashier"])
    limit = int(sh01.rule("approval")["topup_limit"])
    core = connected(chain, 1)
    submitted(core, lambda: sh01.topup(cashier, chain.member, limit), 2.0)
    put_forward(chain.machine, chain.boot, 1)
    sh01.rules_day()  # a page's read, before the node core's next tick
    with pytest.raises(ApprovalRequired):
        submitted(core, lambda: sh01.topup(cashier, chain.member, limit), 62.0)
    assert sh01.unmoved_day() == "2026-01-01"


def test_peers_that_correct_the_clock_book_the_sale_on_the_chains_day_as_before(
        chain: Chain) -> None:
    """Two peers outweigh this clock: their judgement after the jump corrects it (the
    chain's time), so the sale is booked today and carries nothing, read or no read."""
    sh01 = chain.sh01
    core = connected(chain, 2)
    put_forward(chain.machine, chain.boot, 30)
    sh01.rules_day()
    sale = submitted(core, lambda: sh01.debit(sh01.owner, chain.member, amount=20_000), 61.0)
    assert chain.day(sale["id"]) == "2026-01-01" and "moved" not in sale
    assert sh01.clock_vouched and sh01.clock.moved_ms == 0


def test_an_honest_clock_beside_its_peers_is_vouched_for_as_before(chain: Chain) -> None:
    """Real time passing (a day, the boot clock with it), a clock slewed by a minute, a
    clock set back to right: the peers' word stands between two ticks, as before."""
    sh01 = chain.sh01
    connected(chain, 1)
    chain.days_pass(1)
    assert sh01.clock_vouched
    chain.machine.ms += 90_000  # NTP, a till's drift put right: under the limit
    assert sh01.clock_vouched
    chain.machine.ms -= 3 * 60 * 60_000  # set back: judged as before (check_clock_for)
    assert sh01.clock_vouched
    sale = sh01.debit(sh01.owner, chain.member, amount=100)
    assert "moved" not in sale


def test_a_pc_off_for_a_weekend_starts_afresh_as_before(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What stays unknowable: a clock put forward while the PC was off (the BIOS) gives
    the store exactly the readings of a PC off for the weekend: a new boot, a boot clock
    from 0, the wall clock days past the last write. Nothing at start tells them apart,
    so both start afresh, as before: no `moved`, the day's limits anew."""
    clock = FakeClock()
    boots = iter(["boot-friday", "boot-monday"])
    boot_id = [next(boots)]
    monkeypatch.setattr(rules, "_boot_id", lambda: boot_id[0])
    shop = new_ledger(tmp_path, "SH01", now_ms=clock)
    shop.clock.since_boot_ms = BootClock()
    o = shop.owner
    cashier = shop.add_operator(o, "alice", "secret1", roles=["cashier"])
    m = shop.add_member(o, name="张伟", phone="13800138000")
    limit = int(shop.rule("approval")["topup_limit"])
    shop.topup(cashier, m, limit)
    shop.close()
    clock.advance_days(2.5)  # off from Friday night to Monday morning
    boot_id[0] = next(boots)
    shop = Ledger.open(tmp_path / "sh01", now_ms=clock)
    try:
        shop.clock.since_boot_ms = BootClock()  # the boot clock starts again
        shop.topup(cashier, m, limit)  # Monday's limit, afresh
        sale = shop.debit(o, m, amount=100)
        assert "moved" not in sale and shop.clock.moved_ms == 0
        assert not shop.clock_vouched
    finally:
        shop.close()


def test_a_night_asleep_is_no_clock_moved_for_a_core_on_the_boot_clock(chain: Chain) -> None:
    """The node drives its core by the boot clock (hlc.boot_clock_s), which runs on
    while a laptop is suspended. By the monotonic clock, which stops, the core's check
    of this PC's clock (PeerClocks.tick) read eight hours asleep as the clock put
    forward eight hours: it moved its two peers' readings back by as much and booked
    the next sale 480 minutes behind the chain's time."""
    assert node_module.boot_clock_s is boot_clock_s
    if hasattr(time, "CLOCK_BOOTTIME"):
        assert abs(boot_clock_s() - time.clock_gettime(time.CLOCK_BOOTTIME)) < 1
    core = connected(chain, 2)
    asleep = 8 * 3600
    for clock in (chain.machine, chain.right):
        clock.ms += asleep * 1000
    chain.boot.ms += asleep * 1000
    sale = submitted(core, lambda: chain.sh01.debit(chain.sh01.owner, chain.member,
                                                   amount=100), 1.5 + asleep)
    assert core.clock_status()["off_ms"] == 0
    assert abs(id_time_ms(sale["id"]) - chain.right.ms) < 60_000
    assert "moved" not in sale
