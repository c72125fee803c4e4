"""The audit trail (issue 13, part 7): who did what, when, at which branch.

Every ledger entry names its operator (and approver); members, operators and roles
note who changed them, card events and rule versions carry theirs. `audit.trail`
reads them all, filtered by operator, branch, kind and period; reading it takes the
`audit.view` permission. Through the library (two branches that sync), the command
line (a real data directory, --csv), the HTTP API and the back office.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from pathlib import Path

import pytest
from app_fixtures import CASHIER, OWNER, CounterApp
from conftest import Cli
from helpers import FakeClock, new_ledger, snapshot, sync
from pycrdt import Map
from test_api import AMY_PW, BOSS_PW, Api, drive

from crdtledger import audit
from crdtledger.commit import Write, put
from crdtledger.errors import InvalidInput, PermissionDenied
from crdtledger.ledger import Ledger
from crdtledger.model import BUILTIN_ROLES, member_doc
from crdtledger.operations import run


def actions(rows: list[audit.AuditRow]) -> list[tuple[str, str]]:
    return [(r["action"], r["operator_name"]) for r in rows]


def staffed(ledger: Ledger) -> tuple[str, str, str]:
    """A manager, an owner who approves what the manager does, and a cashier."""
    boss = ledger.add_operator(ledger.owner, "boss", "boss-secret", ["manager"])
    eve = ledger.add_operator(ledger.owner, "eve", "eve-secret", ["owner"])
    amy = ledger.add_operator(ledger.owner, "amy", "amy-secret", ["cashier"])
    return boss, eve, amy


def test_the_trail_names_who_did_what_approved_by_whom(tmp_path: Path) -> None:
    clock = FakeClock()  # 2026-01-01 08:00 in Shanghai
    a = new_ledger(tmp_path, "SH01", now_ms=clock)
    b = new_ledger(tmp_path, "SH02", now_ms=clock)
    try:
        boss, eve, amy = staffed(a)
        sync(a, b)
        m = a.add_member(amy, name="王芳", phone="13812345678")
        a.topup(amy, m, 30000, pay="wechat")
        a.edit_member(amy, m, fields={"notes": "喜欢安静"}, prefs={"strength": "重"})
        a.issue_card(amy, m, "C1")
        a.report_lost(amy, "C1")
        clock.advance_days(1)
        fix = a.correct(boss, m, "cash", -20000, "typed twice", approver=("eve", "eve-secret"))
        a.replace_card(boss, "C1", "C2")
        a.set_operator(a.owner, amy, active=False)
        a.define_role(a.owner, "auditor", ["audit.view", "reports.view"])
        a.set_rule(a.owner, "payment_methods", [{"code": "cash"}])
        sync(a, b)
        b.topup(b.owner, m, 1000)

        rows = audit.trail(a)
        assert rows[0]["action"] == "rule.set" and rows[-1]["action"] == "operator.add"
        correction = next(r for r in rows if r["action"] == "correction")
        assert correction == {
            "id": fix["id"], "time": "2026-01-02 08:00:00", "branch": "SH01",
            "action": "correction", "operator": boss, "operator_name": "boss",
            "approver": eve, "approver_name": "eve", "member": m, "amount": 20000,
            "pay": "", "service": "", "reason": "typed twice", "ref": "",
            "detail": "cash -200.00"}
        assert actions(rows[:7]) == [
            ("rule.set", "owner@SH01"), ("role.define", "owner@SH01"),
            ("operator.set", "owner@SH01"), ("card.replace", "boss"), ("correction", "boss"),
            ("card.lost", "amy"), ("card", "amy")]
        by = {r["action"]: r for r in rows}
        assert by["member.edit"]["detail"] == "notes, prefs.strength"  # names, not values
        assert by["card.replace"]["detail"] == "card C1 → C2"
        assert by["operator.set"]["detail"] == "operator amy  active=false"
        assert by["role.define"]["detail"] == "role auditor  audit.view=true, reports.view=true"
        assert by["rule.set"]["detail"] == f"payment_methods from {a.today()}"
        assert by["topup"]["pay"] == "wechat" and by["member.add"]["member"] == m

        # Filters: operator (done or approved), kind, branch, period; and a limit.
        assert actions(audit.trail(a, operator=boss)) == [("card.replace", "boss"),
                                                         ("correction", "boss")]
        assert actions(audit.trail(a, operator=eve)) == [("correction", "boss")]
        assert [r["action"] for r in audit.trail(a, operator=amy, end="2026-01-01")] == [
            "card.lost", "card", "member.edit", "topup", "member.add"]
        assert [r["id"] for r in audit.trail(a, kind="correction")] == [fix["id"]]
        assert audit.trail(a, start="2026-01-02", kind="card.lost") == []
        assert len(audit.trail(a, limit=3)) == 3
        # Another branch holds the same trail once synced, its own actions included.
        sync(a, b)
        assert audit.trail(b) == audit.trail(a)
        assert actions(audit.trail(a, branch="SH02")) == [("topup", "owner@SH02")]
        with pytest.raises(InvalidInput, match="kind must be one of"):
            audit.trail(a, kind="everything")
    finally:
        a.close()
        b.close()


def test_reading_the_trail_needs_audit_view(a: Ledger) -> None:
    boss, _eve, amy = staffed(a)
    assert "audit.view" in BUILTIN_ROLES["owner"] and "audit.view" in BUILTIN_ROLES["manager"]
    assert "audit.view" not in BUILTIN_ROLES["cashier"]
    with pytest.raises(PermissionDenied, match=r"audit\.view"):
        run(a, amy, "audit", {})
    assert [r["action"] for r in run(a, boss, "audit", {"operator": "amy"})] == []
    assert len(run(a, boss, "audit", {})) == 3  # the three operators added


def test_records_written_before_the_trail_still_read(a: Ledger, b: Ledger) -> None:
    """A member without the `edits` Map and a card event without an operator, as a
    version before the trail wrote them: replicas read them, the trail lists the event
    with no operator, and the member's first change creates the Map."""
    boss, _eve, _amy = staffed(a)
    mid = a.clock.mint()
    a._write(put(member_doc(mid), "members", mid, Map({
        "name": "老会员", "phone": "13900000000", "home": "SH01", "created_by": a.owner,
        "prefs": Map(), "tags": Map(), "custom": Map()})))
    a.issue_card(a.owner, mid, "OLD1")
    cid, eid = a.card("OLD1")["id"], a.clock.mint()
    a._write(Write(member_doc(mid), "cards", cid,
                   lambda root: root[cid]["events"].append([eid, "lost", ""])))
    assert a.card("OLD1")["status"] == "lost"
    a.edit_member(boss, mid, fields={"notes": "常客"})
    sync(a, b)
    for ledger in (a, b):
        rows = audit.trail(ledger, kind="card.lost") + audit.trail(ledger, kind="member.edit")
        assert [(r["action"], r["operator"], r["detail"]) for r in rows] == [
            ("card.lost", "", "card OLD1"), ("member.edit", boss, "notes")]
        assert ledger.card("OLD1")["status"] == "lost"
    assert audit.trail(a, operator=boss, kind="card.lost") == []


# --- the command line ----------------------------------------------------------------


def test_the_command_line_lists_filters_and_exports_csv(
        cli: Cli, make_node: Callable[..., Path]) -> None:
    data = make_node("SH01")
    for name, role in (("boss", "owner"), ("mgr", "manager"), ("amy", "cashier")):
        assert cli("operator", "add", "--name", name, "--password", f"{name}-secret",
                   "--role", role, data=data).code == 0
    as_amy = ("--operator", "amy", "--password", "amy-secret")
    as_boss = ("--operator", "boss", "--password", "boss-secret")
    as_mgr = ("--operator", "mgr", "--password", "mgr-secret")
    mid = cli(*as_amy, "member", "add", "--name", "王芳", "--phone", "13812345678", "--json",
              data=data).json()["member_id"]
    assert cli(*as_amy, "topup", "--member", mid, "--amount", "300", data=data).code == 0
    r = cli(*as_mgr, "correct", "--member", mid, "--purse", "cash", "--change", "-200",
            "--reason", "typed twice", "--approver", "boss", "--approver-password",
            "boss-secret", data=data)
    assert r.code == 0, r.err

    refused = cli(*as_amy, "audit", "--json", data=data)
    assert refused.code == 1 and json.loads(refused.out)["error"] == "permission_denied"
    assert "amy may not audit.view" in refused.err

    text = cli(*as_boss, "audit", "--kind", "correction", data=data)
    assert text.code == 0, text.err
    header, line = text.out.splitlines()
    assert header.split()[:5] == ["time", "branch", "action", "operator", "approver"]
    assert line.split()[2:6] == ["SH01", "correction", "mgr", "boss"]

    rows = cli(*as_boss, "audit", "--json", data=data).json()
    assert [r["action"] for r in rows] == ["correction", "topup", "member.add",
                                          "operator.add", "operator.add", "operator.add"]
    export = cli(*as_boss, "audit", "--operator", "amy", "--csv", data=data)
    table = list(csv.reader(io.StringIO(export.out)))
    assert table[0] == list(audit.COLUMNS)  # a header and one line per action
    assert [(t[2], t[3], t[4], t[6], t[7]) for t in table[1:]] == [
        ("topup", "amy", "", "300.00", "cash"), ("member.add", "amy", "", "", "")]
    approved = cli(*as_boss, "audit", "--operator", "boss", "--csv", data=data)
    assert [(t[2], t[3], t[4], t[6], t[9]) for t in csv.reader(io.StringIO(approved.out))][1:] \
        == [("correction", "mgr", "boss", "200.00", "typed twice")]
    day = rows[0]["time"][:10]
    assert len(cli(*as_boss, "audit", "--from", day, "--to", day, "--branch", "SH01",
                   "--json", data=data).json()) == 6
    assert cli(*as_boss, "audit", "--to", "2020-01-01", "--json", data=data).json() == []
    unknown = cli(*as_boss, "audit", "--operator", "nobody", data=data)
    assert unknown.code == 1 and "no operator named nobody" in unknown.err


# --- the HTTP API --------------------------------------------------------------------


def test_the_api_serves_the_trail_to_whoever_may_read_it(tmp_path: Path) -> None:
    async def go(ledger: Ledger, api: Api) -> None:
        boss = await api.login("boss", BOSS_PW)
        amy = await api.login("amy", AMY_PW)
        status, added = await api.call("POST", "/members", {"name": "王芳",
                                                            "phone": "13812345678"}, token=amy)
        assert status == 201
        before = snapshot(ledger)
        status, answer = await api.call("GET", "/audit", token=amy)
        assert (status, answer["error"]) == (403, "permission_denied")
        status, rows = await api.call("GET", "/audit?operator=amy&kind=member.add",
                                      token=boss)
        assert status == 200
        assert [(r["action"], r["operator_name"], r["member"]) for r in rows] == [
            ("member.add", "amy", added["member_id"])]
        status, rows = await api.call("GET", "/audit?branch=SH02", token=boss)
        assert (status, rows) == (200, [])
        status, answer = await api.call("GET", "/audit?kind=everything", token=boss)
        assert status == 400
        assert snapshot(ledger) == before  # reading changes nothing

    drive(tmp_path, go)


# --- the back office -------------------------------------------------------------------


@pytest.mark.asyncio
async def test_the_back_office_page_filters_and_downloads_csv(counter_app: CounterApp) -> None:
    app = counter_app
    ledger = app.ledger
    m = ledger.add_member(app.cashier_id, name="王芳", phone="13812345678")
    ledger.topup(app.cashier_id, m, 30000, pay="alipay")
    ledger.add_operator(app.node_owner, "mgr", "mgr-secret", ["manager"])
    ledger.correct(app.owner_id, m, "cash", -20000, "typed twice",
                   approver=("mgr", "mgr-secret"))

    await app.login(*CASHIER)
    await app.user.should_not_see("操作日志")  # not in a cashier's menu
    await app.user.open("/office/audit")
    await app.user.should_not_see(marker="audit")
    await app.logout()

    await app.login(*OWNER)
    await app.user.open("/office/audit")
    await app.user.should_see(marker="audit")
    rows = [r for t in app.user.find(marker="audit").elements for r in t.rows]
    correction = next(r for r in rows if r["action"] == "调账")
    assert (correction["operator"], correction["approver"], correction["amount"],
            correction["member"]) == ("boss", "mgr", "200.00", f"王芳 ({m})")
    assert next(r for r in rows if r["action"] == "充值")["pay"] == "支付宝"

    app.user.find(marker="audit-kind").elements.pop().set_value("correction")
    await app.user.should_not_see("支付宝")
    app.user.find(marker="export-audit").click()
    data = (await app.user.download.next()).content
    table = list(csv.reader(io.StringIO(data.decode("utf-8-sig"))))
    assert table[0][:6] == ["时间", "分店", "操作", "操作员", "审批人", "会员"]
    assert [(t[2], t[3], t[4], t[7]) for t in table[1:]] == [("调账", "boss", "mgr", "")]
