"""Refused attempts leave a trace: a node's own list of the refusals that matter for
security (crdtledger.audit.note_refusal, kept by operations.run and the API's login).

A cashier's ~25 refused calls (a refund, a correction, a rule, an operator added,
her own role raised, herself deactivated, a dozen PIN guesses, an approver's
password guessed) showed nowhere: the audit trail reads the books, and a refusal
writes none. Each is now a row the owner reads (GET /api/audit?refused=1,
`crdtledger audit --refused`, the back office's audit page), never replicated,
and the refused operation still changes nothing else.
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Callable
from pathlib import Path

import pytest
from app_fixtures import CASHIER, OWNER, CounterApp
from conftest import Cli
from helpers import new_ledger, snapshot, sync
from test_api import AMY_PW, BOSS_PW, Api, drive, topped_up

from crdtledger import audit, operations
from crdtledger.errors import PermissionDenied
from crdtledger.ledger import Ledger


def test_a_cashiers_refused_tries_are_kept_for_the_owner_and_change_nothing(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="crdtledger.audit")

    async def go(ledger: Ledger, api: Api) -> None:
        boss = await api.login("boss", BOSS_PW)
        amy = await api.login("amy", AMY_PW)
        amy_id = ledger.authenticate("amy", AMY_PW)
        mid = await topped_up(api, boss, "500.00")
        status, card = await api.call("POST", f"/members/{mid}/cards",
                                      {"card_no": "C1", "pin": "4321"}, token=boss)
        assert status == 201, card
        status, sale = await api.call("POST", "/debit", {"member": mid, "yuan": "50.00"},
                                      token=amy)
        assert status == 200, sale
        # Before any refusal the list is empty (and a store that never kept one has
        # no table yet: it is made on the first refusal).
        status, rows = await api.call("GET", "/audit?refused=1", token=boss)
        assert (status, rows) == (200, [])
        before = snapshot(ledger, [mid])

        tries: list[tuple[str, str, object, int]] = [
            ("POST", "/refund", {"debit_id": sale["id"]}, 403),
            ("POST", "/corrections", {"member": mid, "purse": "cash", "change_text": "100.00",
                                      "reason": "x"}, 403),
            ("POST", "/rules", {"kind": "approval", "body": {"topup_limit": 10**9}}, 403),
            ("POST", "/operators", {"name": "amy2", "password": "secret-2",
                                    "roles": ["owner"]}, 403),
            ("PATCH", f"/operators/{amy_id}", {"roles": {"owner": True}}, 403),
            ("PATCH", f"/operators/{amy_id}", {"active": False}, 403),
            ("POST", "/topup", {"member": mid, "yuan": "6000.00",
                                "approver": {"name": "boss", "password": "guess-1"}}, 403),
        ]
        tries += [("POST", "/debit", {"card": "C1", "pin": f"{1000 + i}", "yuan": "1.00"},
                   422 if i < 5 else 429) for i in range(7)]
        for method, path, body, expected in tries:
            status, answer = await api.call(method, path, body, token=amy)
            assert status == expected, (path, answer)
        # Not kept: an honest refusal of input, and an approval asked for and not given
        # (how the counter learns to show the approver's fields).
        status, _ = await api.call("POST", "/debit", {"member": mid, "yuan": "1.005"},
                                   token=amy)
        assert status == 400
        status, answer = await api.call("POST", "/topup", {"member": mid, "yuan": "6000.00"},
                                        token=amy)
        assert (status, answer["error"]) == (403, "approval_required")
        # A login refused, by a name nobody has: kept by the name typed, never the
        # password.
        status, _ = await api.call("POST", "/login", {"operator": "mallory",
                                                      "password": "hunter22"})
        assert status == 401
        assert snapshot(ledger, [mid]) == before  # nothing else changed

        status, rows = await api.call("GET", "/audit?refused=1", token=boss)
        assert status == 200, rows
        assert len(rows) == len(tries) + 1
        assert rows[0]["operation"] == "login" and rows[0]["operator"] == "mallory"
        assert rows[0]["code"] == "login_failed" and "hunter22" not in str(rows)
        mine = list(reversed(rows[1:]))  # oldest first, as tried
        assert [r["operation"] for r in mine] == [
            "refund", "correct", "rule.set", "operator.add", "operator.set", "operator.set",
            "topup", *["debit"] * 7]
        assert {r["operator_name"] for r in mine} == {"amy"}
        assert {r["operator"] for r in mine} == {amy_id}
        assert {r["branch"] for r in rows} == {"SH01"}
        assert all(r["time"][:4].isdigit() for r in rows)
        codes = [r["code"] for r in mine]
        assert codes[:7] == ["permission_denied"] * 7
        assert codes[7:] == ["wrong_pin"] * 5 + ["too_many_attempts"] * 2
        assert mine[1]["member"] == mid and mine[7]["card"] == "C1"
        assert "wrong operator name or password" in mine[6]["reason"]  # the approver's
        assert "amy" in mine[0]["reason"] and amy_id not in mine[0]["reason"]
        # Filters: by operator name, and the trail of the books is as it was.
        status, only = await api.call("GET", "/audit?refused=true&operator=mallory",
                                      token=boss)
        assert (status, [r["operation"] for r in only]) == (200, ["login"])
        status, trail = await api.call("GET", "/audit", token=boss)
        assert status == 200 and all("operation" not in r for r in trail)
        # Reading it takes audit.view: the cashier is refused, and that is kept too.
        status, answer = await api.call("GET", "/audit?refused=1", token=amy)
        assert (status, answer["error"]) == (403, "permission_denied")
        status, rows = await api.call("GET", "/audit?refused=1&limit=1", token=boss)
        assert [(r["operation"], r["operator_name"]) for r in rows] == [("audit", "amy")]

        # Never replicated: a peer that syncs with this node has none of it.
        other = new_ledger(tmp_path, "SH02")
        try:
            sync(ledger, other)
            assert other.balance(mid) == ledger.balance(mid)  # the sync did run
            assert audit.refused(other) == []
        finally:
            other.close()

    drive(tmp_path, go)
    warned = [r.getMessage() for r in caplog.records if r.name == "crdtledger.audit"]
    assert sum("'amy'" in w for w in warned) == 15  # 14 tries and the audit read
    assert any("refund" in w and "permission_denied" in w for w in warned)
    assert any("'mallory'" in w and "login" in w for w in warned)


def test_the_list_keeps_the_newest_of_each_door(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Bounded: the newest REFUSALS_KEPT of refused operations, and as many of refused
    logins, so a flood of made-up logins cannot push a cashier's tries out."""
    monkeypatch.setattr(audit, "REFUSALS_KEPT", 3)

    async def go(ledger: Ledger, api: Api) -> None:
        amy = await api.login("amy", AMY_PW)
        for i in range(5):
            status, _ = await api.call("GET", f"/reports/daily?day=2026-01-0{i + 1}",
                                       token=amy)
            assert status == 403
        for i in range(8):
            await api.call("POST", "/login", {"operator": f"nobody{i}", "password": "x" * 8})
        rows = audit.refused(ledger)
        logins = [r["operator"] for r in rows if r["operation"] == "login"]
        assert logins == ["nobody7", "nobody6", "nobody5"]
        assert [r["operation"] for r in rows if r["operation"] != "login"] == [
            "report.daily"] * 3
        assert ledger.storage.conn.execute("SELECT COUNT(*) FROM refusals").fetchone() == (6,)

    drive(tmp_path, go)


def test_the_command_line_shows_the_refused_attempts(cli: Cli,
                                                     make_node: Callable[..., Path]) -> None:
    data = make_node("SH01")
    r = cli("audit", "--refused", data=data)
    assert (r.code, r.out.strip()) == (0, "no refused attempts"), r.err
    r = cli("audit", "--refused", "--csv", data=data)
    assert r.out.strip() == ",".join(audit.REFUSED_COLUMNS)
    assert cli("operator", "add", "--name", "amy", "--password", "secret1", data=data).code == 0
    env = {"CRDTLEDGER_PASSWORD": "secret1"}
    refused = cli("rule", "set", "approval", "--json-body", '{"topup_limit": 1}',
                  "--operator", "amy", data=data, env=env)
    assert refused.code != 0 and "may not" in refused.err
    # The cashier may not read the list either (the acting operator goes before the
    # command: audit's own --operator is its filter).
    assert cli("--operator", "amy", "audit", "--refused", data=data, env=env).code != 0

    text = cli("audit", "--refused", data=data)
    assert text.code == 0, text.err
    assert "rule.set" in text.out and "amy" in text.out and "permission_denied" in text.out
    table = list(csv.reader(io.StringIO(cli("audit", "--refused", "--csv", data=data).out)))
    assert table[0] == list(audit.REFUSED_COLUMNS)
    assert [(row[2], row[3]) for row in table[1:]] == [("audit", "amy"), ("rule.set", "amy")]
    rows = cli("audit", "--refused", "--json", data=data).json()
    assert [r["code"] for r in rows] == ["permission_denied"] * 2
    # The trail of the books has none of them.
    trail = cli("audit", "--json", data=data).json()
    assert all("operation" not in r for r in trail)


def test_a_refusal_inside_a_ledger_transaction_is_logged_not_kept(tmp_path: Path) -> None:
    """A row written inside a ledger transaction would roll back with it (or commit
    with what the caller writes): such a refusal is logged only, and reaches its
    caller all the same."""
    ledger = new_ledger(tmp_path, "SH01")
    try:
        ledger.add_operator(ledger.owner, "amy", AMY_PW, ["cashier"])
        amy = ledger.authenticate("amy", AMY_PW)
        with pytest.raises(Exception, match="may not"), ledger.storage.transaction():
            operations.run(ledger, amy, "report.daily", {})
        assert audit.refused(ledger) == []
        with pytest.raises(Exception, match="may not"):
            operations.run(ledger, amy, "report.daily", {})
        assert [r["operation"] for r in audit.refused(ledger)] == ["report.daily"]
    finally:
        ledger.close()


@pytest.mark.asyncio
async def test_the_back_office_audit_page_lists_the_refused_attempts(
        counter_app: CounterApp) -> None:
    app = counter_app
    ledger = app.ledger
    m = ledger.add_member(app.cashier_id, name="王芳", phone="13812345678")
    with pytest.raises(PermissionDenied):
        operations.run(ledger, app.cashier_id, "correct",
                       {"member": m, "purse": "cash", "change_text": "-100.00", "reason": "x"})

    await app.login(*CASHIER)
    await app.user.open("/office/audit")  # not the cashier's to read
    await app.user.should_not_see(marker="audit-refused")
    await app.logout()

    await app.login(*OWNER)
    await app.user.open("/office/audit")
    await app.user.should_see("被拒绝的操作")
    rows = [r for t in app.user.find(marker="audit-refused").elements for r in t.rows]
    assert [(r["operation"], r["operator"], r["member"], r["code"]) for r in rows] == [
        ("调账", CASHIER[0], m, "无此权限")]


def test_a_wrong_password_at_the_command_line_is_kept(cli: Cli,
                                                      make_node: Callable[..., Path]) -> None:
    """The API's and the counter's refused logins were kept; `--operator amy` with a
    wrong password at the command line was not. By the name given, never the password."""
    data = make_node("SH01")
    assert cli("operator", "add", "--name", "amy", "--password", "secret1", data=data).code == 0
    r = cli("--operator", "amy", "balance", "--member", "x", data=data,
            env={"CRDTLEDGER_PASSWORD": "guess-1234"})
    assert r.code != 0 and "wrong operator name or password" in r.err
    rows = cli("audit", "--refused", "--json", data=data).json()
    assert [(x["operator"], x["operation"], x["code"]) for x in rows] == [
        ("amy", audit.LOGIN, "login_failed")]
    assert "at the command line" in rows[0]["reason"] and "guess-1234" not in str(rows)
