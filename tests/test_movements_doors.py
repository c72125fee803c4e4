"""The movement of a period and the packages' unearned value through every door: the
command line as a real process, the HTTP API on a real aiohttp server, and the back
office page through NiceGUI's user fixture, each the same figures as the library's
function (crdtledger.movements) and each refusing a period typed backwards."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest
from app_fixtures import OWNER, CounterApp, downloaded, parse_csv
from conftest import Cli
from helpers import name_branches, new_ledger, sync
from test_api import BOSS_PW, Api, drive

from crdtledger import movements, operations
from crdtledger.ledger import Ledger


def business(a: Ledger, b: Ledger | None = None) -> str:
    """A member tops up 500.00 (+30.00 bonus), is served 128.00, buys three foot
    massages for 250.00 paid in cash and has one; 100.00 of her rights go to SH02."""
    o = a.owner
    a.set_rule(o, "promotions", [{"name": "充500送30", "min": 50000, "bonus": 3000}])
    m = a.add_member(o, name="王芳", phone="13812345678")
    a.topup(o, m, 50000)
    a.debit(o, m, amount=12800)
    p = a.sell_package(o, m, "FOOT60", 3, 25000, pay="cash")["id"]
    a.debit(o, m, service="FOOT60", pay="package", package=p)
    if b is not None:
        name_branches(a, a.node, b.node)
        sync(a, b)
        a.transfer_rights(o, m, b.node, 10000)
        sync(a, b)
    return m


def test_the_command_line_prints_the_librarys_figures(tmp_path: Path, cli: Cli) -> None:
    a, b = new_ledger(tmp_path, "SH01"), new_ledger(tmp_path, "SH02")
    try:
        business(a, b)
        day = a.today()
        view = movements.movement(a, day, day)
        packages = movements.packages(a, day, day)
    finally:
        a.close()
        b.close()
    data = tmp_path / "sh01"
    period = ("--from", day, "--to", day)
    assert cli("report", "movements", *period, "--json", data=data).json() == view
    text = cli("report", "movements", *period, data=data)
    assert text.code == 0, text.err
    assert ("  cash   all    opening 0.00  topups 500.00, spent -128.00  closing 372.00  "
            "(ties)") in text.out.splitlines()
    assert "  cash   SH02   opening 0.00  transfers 100.00  closing 100.00  (ties)" in text.out
    table = list(csv.reader(io.StringIO(cli("report", "movements", *period, "--csv",
                                            data=data).out)))
    assert table == operations.movement_rows(view)
    assert cli("report", "packages", *period, "--json", data=data).json() == packages
    text = cli("report", "packages", *period, data=data)
    assert ("  FOOT60: 1 packages, 3 uses sold; unearned 0.00, sold 250.00, served 1 uses "
            "83.34, breakage 0 uses 0.00, unearned 166.66 for 2 uses (ties)") in text.out
    wrong = cli("report", "movements", "--from", day, "--to", "2020-01-01", data=data)
    assert wrong.code != 0 and "the period is reversed" in wrong.err


def test_the_api_serves_the_librarys_figures(tmp_path: Path) -> None:
    async def go(ledger: Ledger, api: Api) -> None:
        boss = await api.login("boss", BOSS_PW)
        business(ledger)
        day = ledger.today()
        status, body = await api.call("GET", f"/reports/movements?from={day}&to={day}",
                                      token=boss)
        assert (status, body) == (200, movements.movement(ledger, day, day))
        status, body = await api.call("GET", "/reports/packages", token=boss)
        assert (status, body) == (200, movements.packages(ledger))
        for path in ("movements", "packages"):
            status, body = await api.call("GET", f"/reports/{path}?from={day}&to=2020-01-01",
                                          token=boss)
            assert (status, body["error"]) == (400, "invalid_input"), body

    drive(tmp_path, go)


@pytest.mark.asyncio
async def test_the_back_office_page_shows_and_exports_the_same(
        counter_app: CounterApp) -> None:
    app = counter_app
    business(app.ledger)
    await app.login(*OWNER)
    await app.user.open("/office/movements")
    await app.user.should_see("余额变动")
    [cash] = app.user.find(marker="movements-cash").elements
    lines = {r["line"]: r for r in cash.rows}
    assert (lines["期初余额"]["b1"], lines["充值"]["b1"], lines["消费"]["b1"],
            lines["期末余额"]["b1"], lines["核对（期初＋变动－期末）"]["b1"]) == (
        "¥0.00", "¥500.00", "-¥128.00", "¥372.00", "✓")
    [bonus] = app.user.find(marker="movements-bonus").elements
    assert {r["line"]: r["b1"] for r in bonus.rows}["期末余额"] == "¥30.00"
    [pk] = app.user.find(marker="movements-packages").elements
    foot = next(r for r in pk.rows if r["service"] != "合计")
    assert (foot["served"], foot["closing"], foot["uses_left"], foot["check"]) == (
        "¥83.34", "¥166.66", 2, "✓")
    day = app.ledger.today()
    exported = parse_csv(await downloaded(app, "export-movements"))
    assert exported[0][:3] == ["余额", "分店", "期初余额"]
    view = movements.movement(app.ledger, day[:8] + "01", day)
    assert [row[2:] for row in exported[1:]] == [r[2:] for r in
                                                 operations.movement_rows(view)[1:]]
    exported = parse_csv(await downloaded(app, "export-packages"))
    assert exported[1][0] == "足疗 60 分钟" and exported[1][-2:] == ["166.66", "0.00"]
    app.user.find(marker="movements-from").clear().type("2026-01-10")
    app.user.find(marker="movements-to").clear().type("2026-01-01")
    await app.user.should_see("起止日期反了：开始日 2026-01-10 在结束日 2026-01-01 之后。")
    await app.user.should_not_see(marker="movements-cash")
