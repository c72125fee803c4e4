"""Payment methods (issue 13, part 8): what the till took, and how, is on the books.

A top-up, a package and a service paid at the till name one of the chain's payment
methods (the rule `payment_methods`: cash, WeChat Pay, Alipay, bank card, other by
default); the daily report splits what the till took by method; the counter lets the
cashier pick it and its history says how each item was paid. Through the library, the
command line (a real data directory), the HTTP API and the counter.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from app_fixtures import CASHIER, OWNER, CounterApp
from conftest import Cli
from helpers import snapshot, sync
from nicegui import ui
from test_api import BOSS_PW, Api, drive

from crdtledger import views
from crdtledger.errors import InvalidInput
from crdtledger.ledger import Ledger

METHODS = [{"code": "cash", "name_zh": "现金", "name_en": "cash"},
           {"code": "meituan", "name_zh": "美团", "name_en": "Meituan"}]


def member(ledger: Ledger, phone: str = "13812345678") -> str:
    return ledger.add_member(ledger.owner, name="王芳", phone=phone)


# --- the library ---------------------------------------------------------------------


def test_the_daily_report_splits_what_the_till_took_by_method(a: Ledger) -> None:
    m = member(a)
    o = a.owner
    a.topup(o, m, 50000, pay="wechat")
    a.topup(o, m, 20000)  # the rule's first method: cash
    a.topup(o, m, 10000, pay="alipay")
    cash_service = a.debit(o, m, service="FOOT60", pay="cash")  # 128.00 at the till
    a.debit(o, m, service="HAIR")  # from stored value: not the till's
    a.debit(o, m, amount=3000, pay="card")
    a.sell_package(o, m, "FOOT60", 10, 100000, pay="wechat")
    a.sell_package(o, m, "HAIR", 5, 30000, pay="stored")  # from stored value
    a.refund(o, cash_service["id"], 2800, reason="shorter")  # given back at the till
    report = views.daily_report(a, a.today())
    assert report["topup_by_method"] == {"alipay": 10000, "cash": 20000, "wechat": 50000}
    assert sum(report["topup_by_method"].values()) == report["topup_cash"] == 80000
    assert report["till_by_method"] == {"card": 3000, "cash": 12800 - 2800, "wechat": 100000}
    # Each entry says how it was paid.
    kinds = [(e["kind"], e.get("pay")) for e in a.history(m)][::-1]
    assert kinds[:4] == [("topup", "wechat"), ("topup", "cash"), ("topup", "alipay"),
                         ("debit", "cash")]
    # A branch's report holds its own entries only.
    assert views.daily_report(a, a.today(), "SH02")["topup_by_method"] == {}


def test_an_unknown_method_is_refused_and_changes_nothing(a: Ledger) -> None:
    m = member(a)
    a.topup(a.owner, m, 50000)
    a.sell_package(a.owner, m, "FOOT60", 2, 20000)
    before = snapshot(a, [m])
    refused = [
        lambda: a.topup(a.owner, m, 10000, pay="bitcoin"),
        lambda: a.topup(a.owner, m, 10000, pay="stored"),  # a top-up is taken at the till
        lambda: a.debit(a.owner, m, service="FOOT60", pay="bitcoin"),
        lambda: a.debit(a.owner, m, service="FOOT60", pay="CASH"),
        lambda: a.sell_package(a.owner, m, "FOOT60", 2, 20000, pay="package"),
        lambda: a.sell_package(a.owner, m, "FOOT60", 2, 20000, pay="bitcoin"),
    ]
    for call in refused:
        with pytest.raises(InvalidInput, match="pay must be one of"):
            call()
    assert snapshot(a, [m]) == before


def test_the_chain_chooses_its_methods_and_old_entries_keep_theirs(a: Ledger, b: Ledger
                                                                   ) -> None:
    m = member(a)
    a.topup(a.owner, m, 50000, pay="wechat")
    a.set_rule(a.owner, "payment_methods", METHODS)
    with pytest.raises(InvalidInput, match="cash, meituan"):
        a.topup(a.owner, m, 10000, pay="wechat")  # dropped from today
    a.topup(a.owner, m, 10000, pay="meituan")
    e = a.topup(a.owner, m, 10000)
    assert e["pay"] == "cash"  # the rule's first
    assert a.payment_methods() == ("cash", "meituan")
    assert views.daily_report(a, a.today())["topup_by_method"] == {
        "cash": 10000, "meituan": 10000, "wechat": 50000}
    # A replica holds the entries whatever its own rule says, and reports them alike.
    sync(a, b)
    assert views.daily_report(b, b.today()) == views.daily_report(a, a.today())
    for bad, why in (([*METHODS, METHODS[0]], "appears twice"),
                     ([{"code": "stored", "name_zh": "储值"}], "purses"),
                     ([{"code": "We Chat"}], "lower-case"),
                     ([], "1 to 20"), ({"code": "cash"}, "1 to 20"),
                     (["cash"], "malformed")):
        with pytest.raises(InvalidInput, match=why):
            a.set_rule(a.owner, "payment_methods", bad)
    assert a.payment_methods() == ("cash", "meituan")


# --- the command line ----------------------------------------------------------------


def test_the_command_line_takes_a_method_and_reports_the_split(
        cli: Cli, make_node: Callable[..., Path]) -> None:
    data = make_node("SH01")
    mid = cli("member", "add", "--name", "王芳", "--phone", "13812345678", "--json",
              data=data).json()["member_id"]
    r = cli("topup", "--member", mid, "--amount", "500", "--pay", "wechat", data=data)
    assert r.code == 0 and "topped up 500.00 (wechat)" in r.out, r.err
    r = cli("debit", "--member", mid, "--service", "FOOT60", "--pay", "cash", data=data)
    assert r.code == 0 and "(cash)" in r.out, r.err
    r = cli("package", "sell", "--member", mid, "--service", "HAIR", "--uses", "5",
            "--price", "300", "--pay", "alipay", data=data)
    assert r.code == 0 and "(alipay)" in r.out, r.err
    history = cli("history", "--member", mid, data=data)
    assert "pay cash" in history.out and "pay wechat" in history.out

    before = cli("balance", "--member", mid, "--json", data=data).json()
    r = cli("topup", "--member", mid, "--amount", "5", "--pay", "bitcoin", "--json", data=data)
    assert (r.code, json.loads(r.out)["error"]) == (1, "invalid_input")
    assert "pay must be one of cash, wechat, alipay, card, other" in r.err
    assert cli("balance", "--member", mid, "--json", data=data).json() == before

    daily = cli("report", "daily", "--json", data=data).json()
    assert daily["topup_by_method"] == {"wechat": 50000}
    assert daily["till_by_method"] == {"alipay": 30000, "cash": 12800}
    text = cli("report", "daily", data=data).out
    assert "by method   wechat 500.00" in text
    assert "at the till   alipay 300.00  cash 128.00" in text


# --- the HTTP API --------------------------------------------------------------------


def test_the_api_takes_a_method_and_refuses_an_unknown_one(tmp_path: Path) -> None:
    async def go(ledger: Ledger, api: Api) -> None:
        boss = await api.login("boss", BOSS_PW)
        mid = member(ledger)
        status, entry = await api.call("POST", "/topup", {"member": mid, "yuan": "300.00",
                                                          "pay": "alipay"}, token=boss)
        assert (status, entry["pay"]) == (200, "alipay")
        before = snapshot(ledger, [mid])
        for path, body in (("/topup", {"member": mid, "yuan": "1.00", "pay": "bitcoin"}),
                           ("/debit", {"member": mid, "amount": 100, "pay": "bitcoin"}),
                           ("/topup", {"member": mid, "yuan": "1.00", "pay": "WeChat!"})):
            status, answer = await api.call("POST", path, body, token=boss)
            assert (status, answer["error"]) == (400, "invalid_input"), answer
        assert snapshot(ledger, [mid]) == before
        status, daily = await api.call("GET", "/reports/daily", token=boss)
        assert (status, daily["topup_by_method"]) == (200, {"alipay": 30000})

    drive(tmp_path, go)


# --- the counter -----------------------------------------------------------------------

CARD = "C10001"


async def served_on_screen(app: CounterApp) -> str:
    mid = app.ledger.add_member(app.node_owner, name="张伟", phone="13812345678")
    app.ledger.issue_card(app.node_owner, mid, CARD)
    await app.login(*CASHIER)
    app.reader.insert(CARD)
    await app.user.should_see(marker="member-name")
    return mid


@pytest.mark.asyncio
async def test_the_counter_tops_up_by_wechat(counter_app: CounterApp) -> None:
    app = counter_app
    await served_on_screen(app)
    app.user.find(marker="topup").click()
    await app.user.should_see(marker="topup-pay")
    app.user.find(marker="amount").type("500")
    radio = app.user.find(marker="topup-pay").elements.pop()
    assert isinstance(radio, ui.radio) and list(radio.options) == [
        "cash", "wechat", "alipay", "card", "other"] and radio.value == "cash"
    radio.set_value("wechat")
    app.user.find(marker="topup-ok").click()
    await app.user.should_see("已充值 ¥500.00")
    assert views.daily_report(app.ledger, app.ledger.today())["topup_by_method"] == {
        "wechat": 50000}
    await app.user.should_see("充值 · 微信")  # the history says how


@pytest.mark.asyncio
async def test_a_service_paid_in_cash_shows_as_cash_not_off_the_card(
        counter_app: CounterApp) -> None:
    app = counter_app
    mid = await served_on_screen(app)
    app.ledger.topup(app.node_owner, mid, 50000)
    app.user.find(marker="search").type("5678")  # the panel again, with the top-up
    app.user.find(marker="search-go").click()
    await app.user.should_see("¥500.00")
    app.user.find(marker="consume").click()
    await app.user.should_see(marker="pay")
    app.user.find(marker="pay").elements.pop().set_value("cash")
    app.user.find(marker="consume-ok").click()
    await app.user.should_see("已消费 足疗 60 分钟")
    assert app.ledger.balance(mid)["cash"] == 50000  # the card was not touched
    await app.user.should_see("消费 · 足疗 60 分钟 · 现金")
    await app.user.should_not_see("-¥128.00")  # not shown as if it came off the card
    app.user.find(marker="lang").click()  # the page again, in English
    await app.user.should_see("Counter")
    app.reader.insert(CARD)
    await app.user.should_see("service · 足疗 60 分钟 · cash")
    app.user.find(marker="lang").click()
    await app.user.should_see("收银台")
    assert views.daily_report(app.ledger, app.ledger.today())["till_by_method"] == {
        "cash": 12800}
    # The owner reads the split on the daily summary, by the method's name.
    await app.logout()
    await app.login(*OWNER)
    await app.user.open("/office")
    await app.user.should_see(marker="by-method")
    await app.user.should_see("收银（服务、套餐，减退款、退会退款）")
