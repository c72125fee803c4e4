"""Peers announced on the LAN (mDNS) are anyone's to announce: the node core keeps few
of them and forgets them, as it never does a configured peer. Sans-I/O: the real
`NodeCore` of a real store, driven by its effects."""

from __future__ import annotations

from pathlib import Path

from helpers import new_ledger

from crdtledger import core as core_mod
from crdtledger.core import NodeCore


def test_announced_peers_are_few_two_per_node_and_forgotten(tmp_path: Path) -> None:
    """A stranger's thousands of made-up announcements became dial targets kept and
    dialled for ever (17 dials a second for 500), and aimed at a port that accepts and
    never answers, held a descriptor each: the tills' API had none left. And an
    announcement being anyone's word, a target a link proved is never pushed out, nor
    forgotten: a stranger's goodbye or addresses for a branch's id cut it off, and the
    LAN does not announce an unchanged branch again."""
    ledger = new_ledger(tmp_path, "SH01")
    try:
        core = NodeCore(ledger)
        core.start(0.0, [("wss://203.0.113.9:7443", "HZ01")])  # configured: kept
        # Two addresses per announced node: a third replaces the oldest no link proved,
        # and one a link proved is never pushed out by an announcement.
        for last in (1, 2, 3):
            core.add_target(f"wss://10.9.9.{last}:7443", "SH02", 1.0, discovered=True)
        assert {"wss://10.9.9.2:7443", "wss://10.9.9.3:7443"} <= core.targets()
        assert "wss://10.9.9.1:7443" not in core.targets()
        core._targets["wss://10.9.9.2:7443"].proven = True  # as link_opened marks it
        core._targets["wss://10.9.9.3:7443"].proven = True
        core.add_target("wss://10.6.6.6:7443", "SH02", 1.0, discovered=True)  # a stranger
        assert "wss://10.6.6.6:7443" not in core.targets()
        core.forget_discovered("SH02", 2.0)  # a goodbye is anyone's: the proven stay
        assert {"wss://10.9.9.2:7443", "wss://10.9.9.3:7443"} <= core.targets()
        for _ in range(core_mod.DISCOVERED_TRIES):  # a cable out: dialled on, not forgotten
            core.dial_failed("wss://10.9.9.2:7443", 2.0)
        assert "wss://10.9.9.2:7443" in core.targets()
        core.add_target("wss://10.7.7.7:7443", "SH03", 2.0, discovered=True)
        core.forget_discovered("SH03", 2.0)  # never proven: gone when withdrawn
        assert "wss://10.7.7.7:7443" not in core.targets()
        for i in range(core_mod.MAX_DISCOVERED + 50):  # a flood: the newest kept
            core.add_target(f"wss://10.0.{i // 250}.{i % 250}:7443", f"X{i:05d}", 3.0,
                            discovered=True)
        assert len(core.targets()) == core_mod.MAX_DISCOVERED + 1  # and the configured
        assert {"wss://10.9.9.2:7443", "wss://10.9.9.3:7443"} <= core.targets()  # proven
        assert "wss://10.0.0.0:7443" not in core.targets()  # the oldest unproven went
        last = core_mod.MAX_DISCOVERED + 49
        assert f"wss://10.0.{last // 250}.{last % 250}:7443" in core.targets()
        # Failing, again and again, never proven: gone; a configured peer is dialled on.
        flood = f"wss://10.0.{last // 250}.{last % 250}:7443"
        for _ in range(core_mod.DISCOVERED_TRIES):
            core.dial_failed(flood, 4.0)
            core.dial_failed("wss://203.0.113.9:7443", 4.0)
        assert flood not in core.targets()
        assert "wss://203.0.113.9:7443" in core.targets()
    finally:
        ledger.close()
