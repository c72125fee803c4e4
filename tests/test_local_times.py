"""Times shown to people are the branch's (issue 17 part 9): the chain's time-zone rule
`settings.timezone`, else the store's zone, in the command line as in the counter,
whatever zone the machine itself runs in."""

from __future__ import annotations

from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from conftest import run_cli
from helpers import FakeClock, new_ledger, sync

from crdtledger import localtime
from crdtledger.errors import InvalidInput
from crdtledger.model import owner_of


def test_the_zone_is_the_rule_else_the_stores(tmp_path: Path) -> None:
    a = new_ledger(tmp_path, "SH01")
    try:
        assert localtime.zone(a) == a.storage.tz == ZoneInfo("Asia/Shanghai")
        owner = owner_of(a.node)
        a.set_rule(owner, "settings", {"timezone": "Europe/Paris"})
        assert localtime.zone(a) == ZoneInfo("Europe/Paris")
        # A zone nobody knows is refused where the rule is written...
        for bad in ("Mars/Olympus", "", 8, "../../etc/passwd"):
            with pytest.raises(InvalidInput, match="no IANA time zone"):
                a.set_rule(owner, "settings", {"timezone": bad})
        assert localtime.zone(a) == ZoneInfo("Europe/Paris")
    finally:
        a.close()
    # ...and one written by an older node falls back to the store's zone, not an error.
    assert localtime.known_zone("Mars/Olympus") is None
    assert localtime.show(0, "Asia/Shanghai") == "1970-01-01 08:00:00"
    assert localtime.show(0, ZoneInfo("Europe/Paris"), "%H:%M") == "01:00"


def test_status_shows_the_last_contact_in_the_branch_zone(tmp_path: Path) -> None:
    clock = FakeClock()  # 2026-01-01T00:00Z
    a, b = new_ledger(tmp_path, "SH01", now_ms=clock), new_ledger(tmp_path, "SH02")
    try:
        a.set_rule(owner_of(a.node), "settings", {"timezone": "America/New_York"})
        sync(a, b)
        seen_ms = a.storage.conn.execute(
            "SELECT seen_at FROM peers WHERE node = 'SH02'").fetchone()[0]
    finally:
        a.close()
        b.close()
    # The machine runs in UTC (as a head-office server does); the branch is in New York.
    r = run_cli("status", data=tmp_path / "sh01", env={"TZ": "UTC"})
    assert r.code == 0, r.err
    header, line = r.out.splitlines()[:2]
    assert header == "node SH01 of chain default: not running (times in America/New_York)"
    shown = localtime.show(seen_ms / 1000, ZoneInfo("America/New_York"))
    assert f"last contact {shown}" in line
    assert shown != localtime.show(seen_ms / 1000, ZoneInfo("UTC"))
    assert r.code == 0 and run_cli("status", "--json", data=tmp_path / "sh01").json()[
        "timezone"] == "America/New_York"


def test_the_audit_trail_and_receipts_read_the_same_clock(tmp_path: Path) -> None:
    from crdtledger import audit
    from crdtledger.hlc import id_time_ms

    a = new_ledger(tmp_path, "SH01")
    try:
        a.set_rule(owner_of(a.node), "settings", {"timezone": "America/New_York"})
        row = audit.trail(a)[0]
        assert row["action"] == "rule.set"
        assert row["time"] == localtime.show(id_time_ms(row["id"]) / 1000,
                                             ZoneInfo("America/New_York"))
    finally:
        a.close()


def test_a_running_node_tells_status_its_zone(tmp_path: Path) -> None:
    from cluster import cluster

    with cluster(tmp_path) as c:
        node = c.add("SH01").start()
        assert node.status()["timezone"] == "Asia/Shanghai"
        r = run_cli("status", data=node.data, env={"TZ": "UTC"})
        assert r.code == 0, r.err
        assert r.out.splitlines()[0] == \
            "node SH01 of chain demo-chain: running (times in Asia/Shanghai)"
