"""One node core, two drivers: the same scripted scenario through the asyncio node
(real `peer.node.Node`s, mutual TLS on 127.0.0.1, wall time) and through the
simulator (`sim.node.SimNode` over `sim.net`, virtual time), with the same
decisions and the same final state. This is what makes the simulator's findings
hold in the shop: nothing the node decides is written twice.

The scenario: shop A (SH01) and hub B (SH02) dial each other at once (crossing
dials); shop C (SH03) dials only the hub. A member tops up at A, so A holds all the
rights. C debits: it asks the hub, the hub relays the request one hop to A, A
grants the hub, the hub grants C, the debit goes through. Then C's link to the hub
drops; A and C each write while it is down; C redials and everything converges.

How decisions are compared. The core reports each decision as text (`Decided`),
without times. Two kinds of them are timing, not policy, and would make a strict
comparison flaky on a real network:

- Connection bookkeeping ("connected, dialled by", "keep the link", "replace the
  link"). With crossing dials, which handshake finishes first at which end differs
  between runs, and so does whether a redial races the surviving link; the rule is
  that both ends end up on the link the smaller node id dialled. So per phase of
  the scenario and per peer, what is compared is the dialler of the last link the
  node accepted: the link that survived.
- Member ids (minted from the clock and node): replaced by M1, M2, ... in order of
  creation.

Everything else (whom to ask for how much, what to relay, what was granted and
given) is compared as the exact sequence per node and phase: those decisions
follow from the data alone, so any difference is a difference in policy.

The final state is compared per node: balance and rights per member; within each
driver every store's digest is equal (across drivers the stores differ in chain
and ids, never in balances or rights).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from transport_suite import Adapter, SimAdapter, WebsocketAdapter, digest

from crdtledger.core import Decided, Effect
from crdtledger.ledger import Ledger
from sim.net import End

NODES = ("SH01", "SH02", "SH03")
CONNECTION = re.compile(r"^(\w+): (connected, dialled by (\w+)|keep the link|replace the link)")

Phase = tuple[tuple[str, ...], tuple[tuple[str, str], ...]]


class SimDriver:
    """The simulator's driver. Its `Decided` texts go to the world's trace among
    other lines; here they are taken from the effects each node carries out."""

    def __init__(self, root: Path) -> None:
        self.net = SimAdapter(root)
        self.said: dict[str, list[str]] = {}
        for name in NODES:
            self.net.add(name)
            node = self.net.node(name)
            self.said[name] = []
            run = node.run

            def record(effects: list[Effect], run: Callable[[list[Effect]], None] = run,
                       said: list[str] = self.said[name]) -> None:
                said.extend(e.what for e in effects if isinstance(e, Decided))
                run(effects)

            node.run = record  # type: ignore[method-assign]

    def decisions(self, name: str) -> list[str]:
        return list(self.said[name])

    def crossing(self, a: str, b: str) -> None:
        self.net.dial(a, b)
        self.net.dial(b, a)  # in the same virtual instant

    def drop(self, a: str, b: str) -> None:
        End(self.net.world.net, self.net.conn(a, b), a).close(1001, "link dropped")


class AsyncioDriver:
    """The branch node's driver: `Node.decisions` keeps its recent `Decided` texts."""

    def __init__(self, root: Path) -> None:
        # The rebalancer must not run in either driver: the scenario is over long
        # before 60 s of virtual time; here, an hour.
        self.net = WebsocketAdapter(root, rebalance_s=3600.0)
        for name in NODES:
            self.net.add(name)

    def decisions(self, name: str) -> list[str]:
        return list(self.net.nodes[name].decisions)

    def crossing(self, a: str, b: str) -> None:
        self.net.dial_all([(a, b), (b, a)])

    def drop(self, a: str, b: str) -> None:
        link = self.net.nodes[a].link(b)
        assert link is not None
        self.net.in_loop(lambda: link.close(1001, "link dropped"))


Driver = SimDriver | AsyncioDriver


def phase(lines: list[str], members: list[str]) -> Phase:
    """(the decisions other than connection bookkeeping, in order; per peer, the
    dialler of the last link accepted), member ids renamed M1, M2..."""
    decided: list[str] = []
    survivor: dict[str, str] = {}
    for line in lines:
        for i, mid in enumerate(members):
            line = line.replace(mid, f"M{i + 1}")
        m = CONNECTION.match(line)
        if m is None:
            decided.append(line)
        elif m.group(3) is not None:
            survivor[m.group(1)] = m.group(3)
    return tuple(decided), tuple(sorted(survivor.items()))


def scenario(driver: Driver) -> tuple[dict[str, list[Phase]], dict[str, Any]]:
    net: Adapter = driver.net
    members: list[str] = []
    marks = {n: 0 for n in NODES}
    phases: dict[str, list[Phase]] = {n: [] for n in NODES}

    def end_phase() -> None:
        for n in NODES:
            lines = driver.decisions(n)
            phases[n].append(phase(lines[marks[n]:], members))
            marks[n] = len(lines)

    # 1. Crossing dials between A and the hub; C dials the hub.
    driver.crossing("SH01", "SH02")
    net.dial("SH03", "SH02")
    net.settle()
    assert any(line.startswith(("SH01: keep", "SH01: replace", "SH02: keep", "SH02: replace"))
               for n in ("SH01", "SH02") for line in driver.decisions(n)), "the dials crossed"
    end_phase()

    # 2. A member of A's; a debit at C needs A's rights, fetched through the hub.
    mid: str = net.perform("SH01", lambda lg: lg.add_member(lg.owner, name="张伟",
                                                             phone="13812345678"))
    members.append(mid)
    net.perform("SH01", lambda lg: lg.topup(lg.owner, mid, 10000))
    net.settle()
    entry = net.perform("SH03", lambda lg: lg.debit(lg.owner, mid, amount=3000))
    assert entry["kind"] == "debit"
    net.settle()
    end_phase()

    # 3. C's link to the hub drops; both shops write meanwhile; C redials.
    driver.drop("SH03", "SH02")
    net.perform("SH01", lambda lg: lg.topup(lg.owner, mid, 500))
    net.perform("SH03", lambda lg: lg.topup(lg.owner, mid, 50))
    net.settle()
    end_phase()

    assert len({digest(net.ledger(n)) for n in NODES}) == 1, "one driver's stores agree"
    state = {n: state_of(net.ledger(n), members) for n in NODES}
    return phases, state


def state_of(ledger: Ledger, members: list[str]) -> dict[str, Any]:
    return {f"M{i + 1}": {"balance": ledger.balance(mid),
                          "rights": {p: ledger.rights(mid, p) for p in ("cash", "bonus")}}
            for i, mid in enumerate(members)}


def run(driver: Driver) -> tuple[dict[str, list[Phase]], dict[str, Any], float]:
    started = time.monotonic()
    try:
        phases, state = scenario(driver)
    finally:
        driver.net.close()
    return phases, state, time.monotonic() - started


def test_one_scenario_two_drivers_same_decisions_and_state(tmp_path: Path) -> None:
    sim_phases, sim_state, _ = run(SimDriver(tmp_path / "sim"))
    live_phases, live_state, _ = run(AsyncioDriver(tmp_path / "live"))

    # What the scenario is about happened (so that equal is not equally empty).
    crossing, fetch, reconnect = sim_phases["SH01"]
    assert dict(crossing[1]) == {"SH02": "SH01"}, "the link the smaller id dialled survives"
    assert dict(sim_phases["SH02"][0][1]) == {"SH01": "SH01", "SH03": "SH03"}
    assert any(d.startswith("relay SH03's request") for d in sim_phases["SH02"][1][0])
    assert any(d.startswith("ask SH02 for 3000 cash of M1") for d in sim_phases["SH03"][1][0])
    assert any("(relayed)" in d for d in sim_phases["SH02"][1][0])
    assert fetch[0] and not reconnect[0]
    assert dict(sim_phases["SH03"][2][1]) == {"SH02": "SH03"}, "C redialled the hub"
    assert sim_state["SH01"]["M1"]["balance"]["cash"] == 10000 - 3000 + 500 + 50

    assert live_phases == sim_phases
    assert live_state == sim_state
