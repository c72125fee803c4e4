"""A cashier trying what the buttons do not offer: a package (次卡/套餐) sold far above
its list price needed no approver (only one below half of it did). It moves no value,
but the till and the day report took a made-up amount (a drawer short of cash taken
balanced by it), or a member's stored value was drained by it. Now a price above the
list needs an approver, at the library, the API, the command line and the counter
(operations.run is the one path of the last three), and nothing changes without one.

The other amounts a cashier types were looked at: a service's price, a goods sale's
and a top-up's promotion bonus come from the rules, not the till; a plain amount sale
has no list to be above; a top-up and a correction have their limits already."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from app_fixtures import CASHIER, OWNER, CounterApp
from conftest import Cli
from helpers import snapshot
from test_api import AMY_PW, BOSS_PW, Api, drive

from crdtledger import views
from crdtledger.errors import ApprovalRequired
from crdtledger.ledger import Ledger

PHONE = "13812345678"
# FOOT60 lists at 128.00 a use (the default rules): ten uses list at 1,280.00.
ABOVE = "a package of 10 x FOOT60 for 99999.00, above its list price 1280.00, needs an approver"


def test_a_package_above_its_list_price_needs_an_approver(a: Ledger) -> None:
    o = a.owner
    m = a.add_member(o, name="张伟", phone=PHONE)
    cashier = a.add_operator(o, "alice", "secret1", roles=["cashier"])
    boss = a.add_operator(o, "boss", "bosspass", roles=["manager"])
    a.topup(o, m, 500_000)
    a.sell_package(cashier, m, "FOOT60", 10, 128_000, pay="cash")  # at the list: no one asked
    a.sell_package(cashier, m, "FOOT60", 10, 100_000, pay="stored")  # the usual discount
    day = views.daily_report(a, a.today())
    for pay in ("cash", "stored"):
        before = snapshot(a, [m])
        with pytest.raises(ApprovalRequired, match=ABOVE):
            a.sell_package(cashier, m, "FOOT60", 10, 9_999_900, pay=pay)
        # One fen above is above: no allowance to fill a drawer by.
        with pytest.raises(ApprovalRequired, match="above its list price"):
            a.sell_package(cashier, m, "FOOT60", 10, 128_001, pay=pay)
        with pytest.raises(ApprovalRequired, match="own"):  # nobody approves their own
            a.sell_package(cashier, m, "FOOT60", 10, 128_001, pay=pay,
                           approver=("alice", "secret1"))
        assert snapshot(a, [m]) == before
    assert views.daily_report(a, a.today()) == day
    e = a.sell_package(cashier, m, "FOOT60", 10, 150_000, pay="cash",
                       approver=("boss", "bosspass"))
    assert (e["approver"], e["op"], e["amount"]) == (boss, cashier, 150_000)


def test_through_the_api_and_the_command_line(tmp_path: Path, cli: Cli) -> None:
    async def go(ledger: Ledger, api: Api) -> None:
        amy = await api.login("amy", AMY_PW)
        mid = ledger.add_member(ledger.owner, name="王芳", phone=PHONE)
        before = snapshot(ledger, [mid])
        body = {"member": mid, "service": "FOOT60", "uses": 10, "price_yuan": "99999.00",
                "pay": "cash"}
        status, out = await api.call("POST", "/packages", body, token=amy)
        assert (status, out["error"]) == (403, "approval_required"), out
        assert ABOVE in out["message"]
        assert snapshot(ledger, [mid]) == before
        status, out = await api.call("POST", "/packages", {
            **body, "approver": {"name": "boss", "password": BOSS_PW}}, token=amy)
        assert status == 200 and out["approver"] == ledger.authenticate("boss", BOSS_PW), out

    drive(tmp_path / "api", go)
    data = tmp_path / "sh01"
    assert cli("init", "--node", "SH01", data=data).code == 0
    mid = cli("member", "add", "--name", "甲", "--phone", PHONE, "--json",
              data=data).json()["member_id"]
    r = cli("package", "sell", "--member", mid, "--service", "FOOT60", "--uses", "10",
            "--price", "99999.00", "--pay", "cash", "--json", data=data)
    assert r.code != 0 and json.loads(r.out)["error"] == "approval_required", r
    assert ABOVE in json.loads(r.out)["message"]
    assert cli("balance", "--member", mid, "--json", data=data).json()["packages"] == {}


@pytest.mark.asyncio
async def test_the_counter_asks_for_an_approver_above_the_list(
        counter_app: CounterApp) -> None:
    app = counter_app
    mid = app.ledger.add_member(app.node_owner, name="张伟", phone=PHONE)
    app.ledger.issue_card(app.node_owner, mid, "C10001")
    await app.login(*CASHIER)
    app.reader.insert("C10001")
    await app.user.should_see(marker="member-name")
    before = snapshot(app.ledger, [mid])
    app.user.find(marker="sell-package").click()
    app.user.find(marker="package-service").elements.pop().set_value("FOOT60")
    app.user.find(marker="package-uses").elements.pop().set_value(10)  # list 1,280.00
    app.user.find(marker="package-price").type("99999.00")
    await app.user.should_see(marker="approver")
    app.user.find(marker="package-pay").elements.pop().set_value("cash")
    app.user.find(marker="package-ok").click()
    await app.user.should_see("售价高于标价，需要有审批权限的人输入姓名和密码。")
    assert snapshot(app.ledger, [mid]) == before
    app.user.find(marker="approver").type(OWNER[0])
    app.user.find(marker="approver-password").type(OWNER[1])
    app.user.find(marker="package-ok").click()
    await app.user.should_see("已售套餐")
    [entry] = [e for e in app.ledger.history(mid) if e["kind"] == "package"]
    assert entry["amount"] == 9_999_900 and entry["approver"] == app.owner_id
