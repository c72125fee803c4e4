"""A debit that names a package pays from it, or is refused (issue: the `package`
field was read only with pay=package; with any other `pay` the debit charged stored
value and left the package's uses as they were, and a package that does not exist
was ignored as well).

On real stores (helpers.new_ledger) and through the HTTP API on 127.0.0.1; every
refusal is checked to have changed nothing (helpers.snapshot)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from helpers import new_ledger, snapshot
from test_api import AMY_PW, BOSS_PW, Api, drive

from crdtledger.errors import InvalidInput
from crdtledger.ledger import Ledger

NO_SUCH_PACKAGE = "0000000000000.SH01"


def refused(ledger: Ledger, members: list[str], call: Any, match: str) -> None:
    before = snapshot(ledger, members)
    with pytest.raises(InvalidInput, match=match):
        call()
    assert snapshot(ledger, members) == before


@pytest.fixture
def shop(tmp_path: Path) -> Any:
    """SH01 with a member holding 500.00 and a package of 10 × FOOT60 (paid in cash)."""
    a = new_ledger(tmp_path, "SH01")
    m = a.add_member(a.owner, name="王芳", phone="13812345678")
    a.topup(a.owner, m, 50000)
    pkg = a.sell_package(a.owner, m, "FOOT60", 10, 100000, pay="cash")
    yield a, m, str(pkg["id"])
    a.close()


@pytest.mark.parametrize("pay", ["stored", "cash"])
def test_a_package_named_with_another_pay_is_refused_and_changes_nothing(
        shop: Any, pay: str) -> None:
    a, m, pkg = shop
    for package in (pkg, NO_SUCH_PACKAGE):
        refused(a, [m], lambda package=package: a.debit(
            a.owner, m, service="FOOT60", pay=pay, package=package), "pay=package")
        refused(a, [m], lambda package=package: a.debit(
            a.owner, m, amount=100, pay=pay, package=package), "pay=package")
    assert a.balance(m) == {"cash": 50000, "bonus": 0, "points": 0, "packages": {pkg: 10}}


def test_pay_package_takes_a_use_of_the_named_package_and_no_money(shop: Any) -> None:
    a, m, pkg = shop
    e = a.debit(a.owner, m, service="FOOT60", pay="package", package=pkg)
    assert (e["pay"], e["package"], e["amount"]) == ("package", pkg, 0)
    assert a.balance(m) == {"cash": 50000, "bonus": 0, "points": 0, "packages": {pkg: 9}}


def test_pay_package_refuses_an_unknown_package_and_an_amount(shop: Any) -> None:
    a, m, _pkg = shop
    refused(a, [m], lambda: a.debit(a.owner, m, service="FOOT60", pay="package",
                                    package=NO_SUCH_PACKAGE), "not a FOOT60 package")
    # The sentence says what a package debit takes (it used to say "give an amount or a
    # service" to a request that gave an amount).
    for kw in ({"amount": 100}, {"amount": 100, "package": _pkg}, {}):
        refused(a, [m], lambda kw=kw: a.debit(a.owner, m, pay="package", **kw),
                "a package debit takes the service its uses are for")


def test_through_the_api_a_package_without_pay_package_is_refused(tmp_path: Path) -> None:
    async def go(ledger: Ledger, api: Api) -> None:
        boss = await api.login("boss", BOSS_PW)
        amy = await api.login("amy", AMY_PW)
        status, body = await api.call("POST", "/members", {"name": "王芳",
                                                           "phone": "13812345678"}, token=boss)
        mid = body["member_id"]
        assert (await api.call("POST", "/topup", {"member": mid, "yuan": "500.00"},
                               token=amy))[0] == 200
        status, pkg = await api.call("POST", "/packages", {
            "member": mid, "service": "FOOT60", "uses": 10, "price_yuan": "1000.00",
            "pay": "cash"}, token=amy)
        assert status == 200, pkg
        before = snapshot(ledger, [mid])
        for body in ({"member": mid, "service": "FOOT60", "package": pkg["id"]},
                     {"member": mid, "service": "FOOT60", "package": pkg["id"], "pay": "cash"},
                     {"member": mid, "amount": 100, "package": NO_SUCH_PACKAGE}):
            status, out = await api.call("POST", "/debit", body, token=amy)
            assert (status, out["error"]) == (400, "invalid_input"), (body, out)
            assert "pay=package" in out["message"]
        status, out = await api.call("POST", "/debit", {"member": mid, "amount": 100,
                                                        "pay": "package"}, token=amy)
        assert (status, out["error"]) == (400, "invalid_input")
        assert "takes the service" in out["message"] and "not an amount" in out["message"]
        assert snapshot(ledger, [mid]) == before
        # Named with pay=package: one use of it, no money.
        status, out = await api.call("POST", "/debit", {
            "member": mid, "service": "FOOT60", "package": pkg["id"], "pay": "package"},
            token=amy)
        assert status == 200, out
        assert ledger.balance(mid)["packages"] == {pkg["id"]: 9}
        assert ledger.balance(mid)["cash"] == 50000

    drive(tmp_path, go)


def test_a_package_sale_takes_a_package_whose_uses_are_held_here(tmp_path: Path) -> None:
    """Two packages of one service, the first's use held at SH02 (cut off), the
    second's here: the sale was asked of SH02 and refused, a use sitting at SH01. And
    two uses over two packages read "balance 0"."""
    from helpers import FakeClock, name_branches, sync

    from crdtledger.errors import InsufficientFunds

    clock = FakeClock()
    sh01, sh02 = new_ledger(tmp_path, "SH01", now_ms=clock), new_ledger(tmp_path, "SH02",
                                                                         now_ms=clock)
    name_branches(sh01, "SH01", "SH02")
    sync(sh01, sh02)
    m = sh01.add_member(sh01.owner, name="张伟", phone="13812345678")
    first = sh01.sell_package(sh01.owner, m, "FOOT60", 1, 12000, "cash")
    sh01.sell_package(sh01.owner, m, "FOOT60", 1, 12000, "cash")
    before = snapshot(sh01, [m])
    with pytest.raises(InsufficientFunds, match=r"balance 2, .*one at a time"):
        sh01.debit(sh01.owner, m, service="FOOT60", pay="package", qty=2)
    assert snapshot(sh01, [m]) == before
    sh01.transfer_rights(sh01.owner, m, "SH02", 1, purse=f"pkg:{first['id']}")
    sync(sh01, sh02)
    sold = sh01.debit(sh01.owner, m, service="FOOT60", pay="package")  # SH02 unreachable
    assert sold["package"] != first["id"]
    # Refunded by an amount, "0.02" yuan gave back two uses and no money.
    refused(sh01, [m], lambda: sh01.refund(sh01.owner, sold["id"], 2), "by uses \\(qty\\)")
    assert sh01.refund(sh01.owner, sold["id"], qty=1)["qty"] == 1
