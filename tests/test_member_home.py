"""A member's home branch must be one the chain knows (crdtledger.members._require_home).

`member add --home SH99` used to file a member under a branch nobody knows: no report,
segment or settlement would ever show them where the cashier meant. Known is what
rights and stock transfers already ask (Payments._require_branch, on
views.branches_known): this node, a branch the rule `branches` names, or one whose log
this store holds or that synced with it. Through the real command line on a real data
directory, and through the operation table the API and the counter call.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Cli
from helpers import name_branches, new_ledger, snapshot, sync

from crdtledger import operations
from crdtledger.errors import InvalidInput
from crdtledger.ledger import Ledger

UNKNOWN = "cannot be a member's home branch"


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    lg = new_ledger(tmp_path, "SH01")
    try:
        yield lg
    finally:
        lg.close()


def add(ledger: Ledger, phone: str, **extra: str) -> str:
    return str(operations.run(ledger, ledger.owner, "member.add",
                              {"name": "王芳", "phone": phone, **extra})["member_id"])


def test_the_cli_refuses_an_unknown_home_and_changes_nothing(cli: Cli, tmp_path: Path) -> None:
    data = tmp_path / "sh01"
    assert cli("init", "--node", "SH01", "--chain", "acme", data=data).code == 0
    store = (data / "ledger.sqlite3").read_bytes()
    r = cli("member", "add", "--name", "王芳", "--phone", "13800000001", "--home", "SH99",
            data=data)
    assert r.code != 0 and "Traceback" not in r.err, r
    assert "SH99" in r.err and UNKNOWN in r.err and "rule branches" in r.err, r.err
    assert (data / "ledger.sqlite3").read_bytes() == store
    assert cli("member", "find", "13800000001", "--json", data=data).json() == []

    # The node itself is always a home; a branch the owner listed becomes one.
    r = cli("member", "add", "--name", "王芳", "--phone", "13800000001", "--home", "SH01",
            "--json", data=data)
    assert r.code == 0, r.err
    assert cli("rule", "set", "branches", "--json-body", '{"SH01": "南京西路店", "SH99": "新店"}',
               data=data).code == 0
    r = cli("member", "add", "--name", "李娜", "--phone", "13800000002", "--home", "SH99",
            "--json", data=data)
    assert r.code == 0, r.err
    [found] = cli("member", "find", "13800000002", "--json", data=data).json()
    assert found["home"] == "SH99"


def test_the_operation_refuses_an_unknown_home(ledger: Ledger) -> None:
    before = snapshot(ledger)
    with pytest.raises(InvalidInput, match=f"SH99 {UNKNOWN}.*no other branch is known"
                       ) as refused:
        add(ledger, "13800000001", home="SH99")
    assert snapshot(ledger) == before
    # What the API answers with: 400 invalid_input and that sentence.
    code, status, sentence = operations.describe(refused.value, {})
    assert (code, status) == ("invalid_input", 400) and f"SH99 {UNKNOWN}" in sentence


def test_home_defaults_to_this_node_and_may_name_it(ledger: Ledger) -> None:
    a = add(ledger, "13800000001")
    b = add(ledger, "13800000002", home="SH01")
    assert ledger.member(a)["home"] == ledger.member(b)["home"] == "SH01"


def test_a_listed_branch_or_one_synced_with_is_a_home(ledger: Ledger, tmp_path: Path) -> None:
    name_branches(ledger, "SH01", "SH02")
    assert ledger.member(add(ledger, "13800000001", home="SH02"))["home"] == "SH02"
    # A branch not listed, but whose log this store holds (it synced and wrote).
    other = new_ledger(tmp_path, "HZ01")
    try:
        other.add_member(other.owner, name="张伟", phone="13900000001")
        with pytest.raises(InvalidInput, match=f"HZ01 {UNKNOWN}"):
            add(ledger, "13800000002", home="HZ01")
        sync(ledger, other)
        assert ledger.member(add(ledger, "13800000002", home="HZ01"))["home"] == "HZ01"
    finally:
        other.close()


def test_an_edit_to_an_unknown_home_is_refused_and_an_unchanged_one_is_not_judged(
        ledger: Ledger) -> None:
    name_branches(ledger, "SH01", "SH02")
    mid = add(ledger, "13800000001", home="SH02")
    before = snapshot(ledger, [mid])
    with pytest.raises(InvalidInput, match=f"SH99 {UNKNOWN}"):
        operations.run(ledger, ledger.owner, "member.edit", {"member": mid, "home": "SH99"})
    assert snapshot(ledger, [mid]) == before
    # The owner takes SH02 off the list: the member's home stands, and an edit that
    # leaves it as it is (the same home sent back by a form) still goes through.
    name_branches(ledger, "SH01")
    operations.run(ledger, ledger.owner, "member.edit",
                   {"member": mid, "home": "SH02", "notes": "老顾客"})
    assert ledger.member(mid)["notes"] == "老顾客"
