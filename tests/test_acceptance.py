"""The issue's acceptance scenario, through the real CLI and two real stores.

A member tops up at branch SH01. SH02, knowing the balance from a sync file but
holding none of its escrow rights, refuses to spend it and says where the value
sits. After SH01 gives SH02 rights and the files travel, SH02 can spend, both
branches agree on balance and rights, and importing the files again is harmless.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import Cli

pytestmark = pytest.mark.slow


def state(cli: Cli, data: Path, member: str) -> dict[str, Any]:
    """Everything a branch shows about a member's money."""
    return {
        "balance": cli("balance", "--member", member, "--json", data=data).json(),
        "rights": cli("rights", "show", "--member", member, "--json", data=data).json(),
        "history": cli("history", "--member", member, "--json", data=data).json(),
    }


def sync(cli: Cli, src: Path, dst: Path, file: Path) -> None:
    assert cli("export", "--out", file, data=src).code == 0
    r = cli("import", file, data=dst)
    assert r.code == 0, r.err


def test_cross_branch_spend_needs_rights(cli: Cli, make_node: Callable[..., Path],
                                         tmp_path: Path) -> None:
    a, b = make_node("SH01"), make_node("SH02")
    member = cli("member", "add", "--name", "王芳", "--phone", "13900001111", "--json",
                 data=a).json()["member_id"]
    assert cli("topup", "--member", member, "--amount", "100.00", data=a).code == 0
    sync(cli, a, b, tmp_path / "a1.sync")

    refused = cli("debit", "--member", member, "--amount", "30.00", data=b)
    assert refused.code != 0
    assert "SH01" in refused.err, refused.err
    assert cli("balance", "--member", member, "--json", data=b).json()["cash"] == 10000

    # As the issue tells it: SH01 has heard nothing from SH02 yet, and knows no other
    # branch to tell a typo by (a branch it does not know is refused once it knows
    # any: tests/test_payments.py).
    moved = cli("rights", "transfer", "--member", member, "--to", "SH02", "--amount", "50.00",
                data=a)
    assert moved.code == 0, moved.err
    sync(cli, a, b, tmp_path / "a2.sync")
    spent = cli("debit", "--member", member, "--amount", "30.00", data=b)
    assert spent.code == 0, spent.err
    sync(cli, b, a, tmp_path / "b1.sync")

    at_a, at_b = state(cli, a, member), state(cli, b, member)
    assert at_a["balance"]["cash"] == at_b["balance"]["cash"] == 7000
    assert at_a["rights"] == at_b["rights"] == {"SH01": 5000, "SH02": 2000}
    assert at_a == at_b

    # Every file again, in both directions: applying updates is idempotent.
    for file, dst in ((tmp_path / "a1.sync", b), (tmp_path / "a2.sync", b),
                      (tmp_path / "b1.sync", a)):
        r = cli("import", file, "--json", data=dst)
        assert r.json()["changed"] == []
    assert state(cli, a, member) == at_a
    assert state(cli, b, member) == at_b
