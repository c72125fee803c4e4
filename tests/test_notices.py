"""Notices: what is due and who sends it (crdtledger.notices), consent, templates in
both languages, the outbox's keys (crdtledger.outbox), the rule `notifications`, and
the gateways against real servers: aiosmtpd (the local SMTP stand-in) and a local
HTTP server standing in for the SMS provider (Tencent Cloud SMS API 3.0's SendSms)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from collections.abc import Iterator
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from aiohttp import web
from conftest import Cli
from helpers import FakeClock, name_branches, new_ledger, sync

from crdtledger import notices, operations, outbox
from crdtledger.errors import InvalidInput
from crdtledger.ledger import Ledger
from peer.gateways import (
    GatewayError,
    LogGateway,
    Message,
    SettingsError,
    gateways_from_settings,
    tc3_authorization,
)
from peer.notifier import Notifier
from peer.smtp_standin import SmtpStandIn, text_of

NOW = int(datetime(2026, 12, 3, 10, 30, tzinfo=ZoneInfo("Asia/Shanghai")).timestamp() * 1000)
BOTH = ["email", "sms"]


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    Ledger.create(tmp_path / "SH01", "SH01")
    with Ledger.open(tmp_path / "SH01") as led:
        yield led


def op(ledger: Ledger, operation: str, /, **params: Any) -> Any:
    return operations.run(ledger, ledger.owner, operation, params)


def members(ledger: Ledger) -> dict[str, str]:
    """Three members born on 12-03: one who consented (English, by e-mail), one never
    asked, one who opted out."""
    return {
        "yes": op(ledger, "member.add", name="Alice", phone="13800000001", birthday="12-03",
                  email="alice@example.com", lang="en", promo="yes")["member_id"],
        "never": op(ledger, "member.add", name="张伟", phone="13800000002",
                    birthday="1990-12-03")["member_id"],
        "no": op(ledger, "member.add", name="李娜", phone="13800000003", birthday="12-03",
                 promo="no")["member_id"],
    }


def test_templates_say_each_notice_in_chinese_and_english() -> None:
    fields = {"day": "2026-12-03", "branch_name": "南京西路店", "new_members": 3,
              "sales": "1280.00", "topup_cash": "500.00", "topups": 2, "cards_sold": 1,
              "card_sales": "20.00", "refunds": "0.00", "exit_refunds": "0.00",
              "by_method": "  现金 500.00"}
    zh = notices.render("daily", "zh-CN", **fields)
    en = notices.render("daily", "en", **fields)
    assert zh[0] == "南京西路店 营业日报 2026-12-03"
    assert "当天新增会员 3 人" in zh[1] and "当天充值实收 500.00" in zh[1]
    assert en[0] == "Daily report 2026-12-03: 南京西路店"
    assert "New members: 3" in en[1] and "Top-up cash received: 500.00" in en[1]
    for kind, t in notices.TEMPLATES.items():
        assert set(t) == set(notices.LANGS), kind
    assert "验证码" in notices.render("otp", "zh-CN", code="123456", minutes=5)[1]
    assert "123456" in notices.render("otp", "en", code="123456", minutes=5)[1]


def test_the_daily_mail_says_the_till_by_payment_method_and_the_exits_paid_back(
        tmp_path: Path) -> None:
    """The owner counts the drawer and the payment apps against the day's report: the
    mail said only the top-ups' cash, not what the till took by method nor the refunds
    and exits paid back out of it, which the back office's 营业日报 shows."""
    led = new_ledger(tmp_path, "SH01", now_ms=FakeClock(NOW))
    try:
        led.set_rule(led.owner, "notifications", {"daily": [
            {"branch": "all", "at": "21:00", "to": ["boss@example.com"]}]},
            effective_from="2000-01-01")
        m = op(led, "member.add", name="张伟", phone="13800000002")["member_id"]
        op(led, "topup", member=m, amount=50000, pay="cash")
        op(led, "topup", member=m, amount=10000, pay="wechat")
        sale = op(led, "debit", member=m, amount=12800, pay="wechat")
        op(led, "refund", debit_id=sale["id"], amount=2800)
        mail = [n for n in outbox.collect(led, NOW + 11 * 3_600_000, BOTH).notices
                if n.kind == "daily"]
        assert [n.to for n in mail] == ["boss@example.com"]
        body = mail[0].body
        assert "当天退款 28.00，退会退款 0.00" in body, body
        assert "  现金 500.00（充值 500.00，收银 0.00）" in body, body
        assert "  微信 200.00（充值 100.00，收银 100.00）" in body, body
    finally:
        led.close()


def test_no_promotion_without_consent_but_service_notices_reach_everyone(
        ledger: Ledger) -> None:
    m = members(ledger)
    due = outbox.collect(ledger, NOW, BOTH)
    greetings = [n for n in due.notices if n.kind == "birthday"]
    assert [(n.member, n.channel, n.to, n.subject) for n in greetings] == [
        (m["yes"], "email", "alice@example.com", "Happy birthday")]
    assert greetings[0].key == f"birthday:{m['yes']}:2026" and greetings[0].promotional
    outbox.keep(ledger, due, NOW)

    # A broadcast to everyone reaches only the one who consented.
    done = op(ledger, "notice.broadcast", subject="双12", text="{name}，全场八折")
    assert (done["segment"], done["queued"], done["without_consent_or_contact"]) == (3, 1, 2)
    sent_to = {h["member"] for h in outbox.history(ledger, kind="broadcast")}
    assert sent_to == {m["yes"]}

    # Low balance is a service notice: the member never asked about promotion gets it.
    op(ledger, "topup", member=m["never"], amount=10000, pay="cash")
    op(ledger, "debit", member=m["never"], amount=6000)
    due = outbox.collect(ledger, NOW + 60_000, BOTH)
    [low] = [n for n in due.notices if n.kind == "low_balance"]
    assert (low.member, low.channel, low.to) == (m["never"], "sms", "13800000002")
    assert "40.00" in low.body and "50.00" in low.body and not low.promotional
    outbox.keep(ledger, due, NOW + 60_000)
    assert not outbox.collect(ledger, NOW + 120_000, BOTH).notices, "each once"

    # Consent given later counts; withdrawn, it stops.
    op(ledger, "member.edit", member=m["never"], promo="yes")
    op(ledger, "member.edit", member=m["yes"], promo="no")
    done = op(ledger, "notice.broadcast", subject="元旦", text="新年好")
    assert done["queued"] == 1
    assert {h["member"] for h in outbox.history(ledger, kind="broadcast")} == {
        m["yes"], m["never"]}
    assert op(ledger, "member.show", member=m["yes"])["promo"] == "no"


def test_an_erased_members_notices_leave_the_outbox(ledger: Ledger) -> None:
    m = members(ledger)
    outbox.keep(ledger, outbox.collect(ledger, NOW, BOTH), NOW)
    assert [h["member"] for h in outbox.history(ledger)] == [m["yes"]]
    op(ledger, "member.erase", member=m["yes"])
    outbox.keep(ledger, outbox.Due([], {}), NOW + 1000)
    assert outbox.history(ledger) == []
    assert outbox.collect(ledger, NOW + 2000, BOTH).notices == [], "and none are due"


def test_an_erasure_takes_the_notices_with_it_at_a_node_without_a_notifier(
        tmp_path: Path) -> None:
    """No [notify] gateway: no notifier, so no `keep` ever runs. A broadcast queued
    here all the same, and the erasure, written here or arriving from another
    branch, takes the member's notices (phone, a text with the name) with it; a store
    that kept some from before this (erased under an older version) loses them at
    its housekeeping."""
    clock = FakeClock()
    a = new_ledger(tmp_path, "SH01", now_ms=clock)
    b = new_ledger(tmp_path, "SH02", now_ms=clock)
    name_branches(a, "SH01", "SH02")
    here = a.add_member(a.owner, name="王芳", phone="13812345678", promo="yes")
    there = a.add_member(a.owner, name="李娜", phone="13812345679", promo="yes")
    kept = a.add_member(a.owner, name="张伟", phone="13812345670", promo="yes")
    sync(a, b)
    for led in (a, b):
        operations.run(led, led.owner, "notice.broadcast", {"subject": "新品",
                                                            "text": "{name}，本周八折"})
    assert {h["member"] for h in outbox.history(b)} == {here, there, kept}

    a.erase_member(a.owner, here)
    assert {h["member"] for h in outbox.history(a)} == {there, kept}
    b.erase_member(b.owner, there)
    sync(a, b)
    for led in (a, b):
        assert {h["member"] for h in outbox.history(led)} == {kept}, led.node
        assert not led.storage.conn.execute(
            "SELECT 1 FROM outbox WHERE member IN (?, ?)", (here, there)).fetchone()

    # Kept for an erased member by an older version: the housekeeping takes it.
    outbox.enqueue(a, [notices.Notice(f"broadcast:old:{here}", "broadcast", "SH01", "sms",
                                      "13812345678", "新品", "王芳，本周八折", here, True)],
                   clock())
    assert here in {h["member"] for h in outbox.history(a)}
    a.housekeeping()
    assert {h["member"] for h in outbox.history(a)} == {kept}
    a.close()
    b.close()


def test_a_segment_by_level_home_dormancy_and_tags(ledger: Ledger) -> None:
    a = op(ledger, "member.add", name="A", phone="13800000011", promo="yes",
           tags=["vip"])["member_id"]
    name_branches(ledger, "SH02")  # a home branch must be one the chain knows
    op(ledger, "member.add", name="B", phone="13800000012", promo="yes", home="SH02")
    op(ledger, "topup", member=a, amount=10000, pay="cash")
    assert [x["id"] for x in outbox.segment_members(ledger, {"tags": ["vip"]})] == [a]
    assert len(outbox.segment_members(ledger, {"home": "SH01"})) == 1
    assert len(outbox.segment_members(ledger, {"level": "普通会员"})) == 2
    dormant = outbox.segment_members(ledger, {"dormant_days": 30})
    assert a not in [x["id"] for x in dormant], "visited today"
    with pytest.raises(InvalidInput, match="unknown segment field 'age'"):
        outbox.segment_members(ledger, {"age": 30})


def test_who_sends_what_once_per_chain() -> None:
    rule = notices.rule_of({"daily": [{"branch": "all", "at": "21:00", "to": ["b@x.cn"]},
                                      {"branch": "SH02", "at": "21:30", "to": ["c@x.cn"]}]})
    at = datetime(2026, 12, 3, 21, 45, tzinfo=ZoneInfo("Asia/Shanghai"))
    rid = "038HS9BR9T000.HQ"  # written by HQ: HQ sends the chain's report
    assert [d.key for d in notices.daily_due(rule, rid, "HQ", at)] == ["daily:CHAIN:2026-12-03"]
    assert [d.key for d in notices.daily_due(rule, rid, "SH02", at)] == [
        "daily:SH02:2026-12-03"]
    assert notices.daily_due(rule, rid, "SH01", at) == []
    named = {**rule, "sender": "SH01"}
    assert [d.key for d in notices.daily_due(named, rid, "SH01", at)] == [
        "daily:CHAIN:2026-12-03"]
    early = at.replace(hour=20)
    assert notices.daily_due(rule, rid, "HQ", early) == []
    next_morning = at.replace(day=4, hour=8)
    assert [d.key for d in notices.daily_due(rule, rid, "HQ", next_morning)] == [
        "daily:CHAIN:2026-12-03"], "a node off at 21:00 still sends it within 12 hours"
    assert notices.daily_due(rule, rid, "HQ", at.replace(day=4, hour=10)) == []
    # A member's notices are its home branch's.
    m = {"id": "X", "profile": {"home": "SH02", "birthday": "12-03", "promo": "yes",
                                "phone": "13800000001", "name": "A"}, "left": False}
    assert notices.member_day_notices("SH01", "2026-12-03", [m], rule, BOTH, "店") == []
    assert len(notices.member_day_notices("SH02", "2026-12-03", [m], rule, BOTH, "店")) == 1


def test_an_appointment_reminder_is_a_service_notice_from_the_confirming_branch() -> None:
    profile = {"name": "张伟", "phone": "13800000002", "home": "SH01"}  # never asked
    booking = {"booking": "038HS9BR9T000.SH01", "member": "M", "profile": profile,
               "branch": "SH02", "branch_name": "徐家汇店", "service": "FOOT60",
               "service_name": "足疗 60 分钟", "at": "2026-12-03T14:00",
               "status": "confirmed", "left": False}
    rule = notices.rule_of({})
    assert notices.reminder_notices("SH01", [booking], rule, BOTH) == []
    [n] = notices.reminder_notices("SH02", [booking], rule, BOTH)
    assert (n.key, n.channel, n.promotional) == ("reminder:038HS9BR9T000.SH01", "sms", False)
    assert n.body == "张伟，您预约的足疗 60 分钟将于 2026-12-03 14:00 在 徐家汇店 开始。"
    pending = {**booking, "status": "pending"}
    assert notices.reminder_notices("SH02", [pending], rule, BOTH) == []


@pytest.mark.parametrize(("body", "says"), [
    ({"daily": [{"branch": "all", "at": "25:00", "to": ["b@x.cn"]}]}, "a time like 21:00"),
    ({"daily": [{"branch": "all", "at": "21:00", "to": ["nobody"]}]},
     "neither an e-mail address nor a phone number"),
    ({"daily": [{"branch": "all", "at": "21:00", "to": []}]}, "1 to 10 addresses"),
    ({"language": "fr"}, "language is one of zh-CN, en"),
    ({"low_balance": -1}, "low_balance is a whole number"),
    ({"greet_at": "noon"}, "greet_at is a time like 10:00"),
    ({"daily_at": "21:00"}, "unknown setting 'daily_at'"),
])
def test_bad_notification_rules_are_refused_with_a_sentence_and_change_nothing(
        ledger: Ledger, body: dict[str, Any], says: str) -> None:
    before = ledger.rule("notifications")
    with pytest.raises(InvalidInput, match=says):
        op(ledger, "rule.set", kind="notifications", body=body)
    assert ledger.rule("notifications") == before


def test_a_daily_report_of_a_branch_the_chain_does_not_name_is_refused(
        ledger: Ledger, cli: Cli, tmp_path: Path) -> None:
    """SH1 for SH01 was taken, and the report, due at no node, never came. Without a
    branches rule any node id is taken (a new branch may not have synced yet)."""
    def daily(branch: str) -> dict[str, Any]:
        return {"daily": [{"branch": branch, "at": "21:00", "to": ["boss@example.com"]}]}

    op(ledger, "rule.set", kind="notifications", body=daily("SH1"))
    op(ledger, "rule.set", kind="branches", body={"SH01": "南京西路店", "SH02": "徐家汇店"})
    before = ledger.rule("notifications")
    with pytest.raises(InvalidInput, match=r"the daily report of SH1: no branch SH1 is in "
                       r"the rule branches \(SH01, SH02\)"):
        op(ledger, "rule.set", kind="notifications", body=daily("SH1"))
    assert ledger.rule("notifications") == before
    for ok in ("SH02", "all"):
        op(ledger, "rule.set", kind="notifications", body=daily(ok))
    # The owner's command, as the probe typed it.
    data = tmp_path / "hq"
    assert cli("init", "--node", "HQ", data=data).code == 0
    assert cli("rule", "set", "branches", "--json-body", '{"SH01": "南京西路店"}',
               data=data).code == 0
    r = cli("rule", "set", "notifications", "--json-body", json.dumps(daily("SH1")),
            data=data)
    assert r.code == 1 and "no branch SH1 is in the rule branches (SH01)" in r.err, r


def test_bad_member_notice_fields_are_refused(ledger: Ledger) -> None:
    with pytest.raises(InvalidInput, match="not an e-mail address"):
        op(ledger, "member.add", name="A", phone="13800000021", email="alice-at-example")
    with pytest.raises(InvalidInput, match="promo must be one of"):
        op(ledger, "member.add", name="A", phone="13800000021", promo="ok")
    assert ledger.find_members("13800000021") == []


def test_the_outbox_keeps_a_notice_until_marked_sent_under_one_key(ledger: Ledger) -> None:
    n = notices.Notice("daily:CHAIN:2026-12-03:b@x.cn", "daily", "SH01", "email", "b@x.cn",
                       "s", "b")
    assert outbox.enqueue(ledger, [n, n], NOW) == 1
    # "Sent" by a gateway, then the node died before marking it: due again, same key.
    assert [o.key for o in outbox.pending(ledger, NOW)] == [n.key]
    assert outbox.enqueue(ledger, [n], NOW + 1000) == 0, "found due again: the same row"
    assert [o.key for o in outbox.pending(ledger, NOW + 1000)] == [n.key]
    delay = outbox.mark_failed(ledger, n.key, "the mail server said no", NOW + 1000)
    assert delay == 60 and outbox.pending(ledger, NOW + 2000) == []
    assert [o.key for o in outbox.pending(ledger, NOW + 61_000)] == [n.key]
    outbox.mark_sent(ledger, n.key, NOW + 61_000)
    assert outbox.pending(ledger, NOW + 10**9) == []
    [row] = outbox.history(ledger)
    assert (row["status"], row["attempts"]) == ("sent", 2)
    later = NOW + outbox.KEEP_SENT_DAYS * 86_400_000
    outbox.keep(ledger, outbox.Due([], {}), later)
    assert len(outbox.history(ledger)) == 1, "kept for KEEP_SENT_DAYS"
    outbox.keep(ledger, outbox.Due([], {}), later + 86_400_000)
    assert outbox.history(ledger) == [], "then it goes"


# --- gateways against real servers -----------------------------------------------------


def test_smtp_gateway_sends_to_a_real_server_with_the_key_as_message_id() -> None:
    with SmtpStandIn() as smtp:
        gw = gateways_from_settings({"email": {
            "kind": "smtp", "host": "127.0.0.1", "port": smtp.port, "starttls": False,
            "sender": "南京西路店 <shop@example.com>"}})["email"]
        msg = Message("birthday:01J5Q8ZK3T7XM.SH01:2026", "email", "alice@example.com",
                      "生日快乐", "Alice，祝您生日快乐！")
        asyncio.run(gw.send(msg))
        asyncio.run(gw.send(msg))  # a resend after a crash: the same Message-ID
        first, again = smtp.messages()
        assert first["Subject"] == "生日快乐" and first["To"] == "alice@example.com"
        assert text_of(first).strip() == "Alice，祝您生日快乐！"
        assert first["Message-ID"] == again["Message-ID"] == (
            "<birthday.01J5Q8ZK3T7XM.SH01.2026@example.com>")
    with pytest.raises(GatewayError, match="cannot reach the mail server"):
        asyncio.run(gw.send(msg))


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")  # loopback
def test_smtp_gateway_logs_in_and_a_wrong_password_is_a_sentence() -> None:
    with SmtpStandIn(login=("shop@example.com", "right")) as smtp:
        settings = {"kind": "smtp", "host": "127.0.0.1", "port": smtp.port,
                    "starttls": False, "sender": "shop@example.com",
                    "username": "shop@example.com", "password": "right"}
        msg = Message("k1", "email", "boss@example.com", "s", "b")
        asyncio.run(gateways_from_settings({"email": settings})["email"].send(msg))
        wrong = gateways_from_settings({"email": {**settings, "password": "wrong"}})
        with pytest.raises(GatewayError, match=r"refused the login of 'shop@example\.com'.*"
                           r"check \[notify\.email\] username and password"):
            asyncio.run(wrong["email"].send(msg._replace(key="k2")))
        assert [m["Message-ID"] for m in smtp.messages()] == ["<k1@example.com>"]


class SmsProviderStandIn:
    """A local HTTP server standing in for the SMS provider (Tencent Cloud SMS API 3.0
    SendSms): it checks the TC3-HMAC-SHA256 signature as the provider does and keeps
    what it was asked to send; `refuse` makes it answer with the provider's error."""

    def __init__(self, secret_id: str, secret_key: str) -> None:
        self.secret_id, self.secret_key = secret_id, secret_key
        self.received: list[dict[str, Any]] = []
        self.refuse = False
        self.unsubscribed: set[str] = set()  # numbers on the do-not-disturb list

    async def handle(self, request: web.Request) -> web.Response:
        raw = await request.read()
        expected = tc3_authorization(self.secret_id, self.secret_key, request.host, raw,
                                     int(request.headers["X-TC-Timestamp"]))
        if not hmac.compare_digest(expected, request.headers.get("Authorization", "")):
            return web.json_response({"Response": {"Error": {
                "Code": "AuthFailure.SignatureFailure", "Message": "signature wrong"},
                "RequestId": "r"}})
        assert request.headers["X-TC-Action"] == "SendSms"
        body = json.loads(raw)
        if self.refuse:
            return web.json_response({"Response": {"Error": {
                "Code": "FailedOperation.InsufficientBalanceInSmsPackage",
                "Message": "package used up"}, "RequestId": "r"}})
        self.received.append(body)
        return web.json_response({"Response": {"SendStatusSet": [
            {"SerialNo": hashlib.sha1(raw).hexdigest(), "PhoneNumber": p, "Fee": 1,
             "SessionContext": body.get("SessionContext", ""),
             **({"Code": "FailedOperation.PhoneNumberInBlacklist", "Message": "unsubscribed"}
                if p in self.unsubscribed else {"Code": "Ok", "Message": "send success"}),
             "IsoCode": "CN"} for p in body["PhoneNumberSet"]],
            "RequestId": "r"}})


def test_sms_gateway_posts_the_providers_signed_request_to_a_real_http_server() -> None:
    provider = SmsProviderStandIn("AKIDtest", "secret")

    async def scenario() -> None:
        app = web.Application()
        app.router.add_post("/", provider.handle)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        settings = {"kind": "tencent", "url": f"http://127.0.0.1:{port}/",
                    "secret_id": "AKIDtest", "secret_key": "secret", "sdk_app_id": "1400000000",
                    "sign_name": "某某足疗", "template_id": "1234567"}
        try:
            gw = gateways_from_settings({"sms": settings})["sms"]
            await gw.send(Message("otp:13800000001:1", "sms", "13800000001", "验证码",
                                  "您的验证码是 123456"))
            [sent] = provider.received
            assert sent["PhoneNumberSet"] == ["+8613800000001"]
            assert sent["TemplateParamSet"] == ["您的验证码是 123456"]
            assert sent["SessionContext"] == "otp:13800000001:1"
            provider.unsubscribed.add("+8613800000002")
            with pytest.raises(GatewayError, match="PhoneNumberInBlacklist") as refused:
                await gw.send(Message("k", "sms", "13800000002", "s", "b"))
            assert refused.value.permanent, "that number will never take it: not retried"
            provider.refuse = True
            with pytest.raises(GatewayError, match="InsufficientBalanceInSmsPackage") as out:
                await gw.send(Message("k", "sms", "13800000001", "s", "b"))
            assert not out.value.permanent, "the package topped up, it goes"
            wrong = gateways_from_settings({"sms": {**settings, "secret_key": "guess"}})
            with pytest.raises(GatewayError, match="SignatureFailure"):
                await wrong["sms"].send(Message("k", "sms", "13800000001", "s", "b"))
        finally:
            await runner.cleanup()

    asyncio.run(scenario())


@pytest.mark.parametrize(("settings", "says"), [
    ({"email": {"kind": "smtp", "host": "h", "sender": "nobody"}}, "not an e-mail address"),
    ({"email": {"kind": "smtp", "host": "h", "sender": "a@b.cn", "username": "u"}},
     "username and password go together"),
    ({"email": {"kind": "smtp", "host": "h", "sender": "a@b.cn", "port": "25"}},
     "port is a int"),
    ({"sms": {"kind": "tencent", "url": "ftp://x", "secret_id": "a", "secret_key": "b",
              "sdk_app_id": "c", "sign_name": "d", "template_id": "e"}}, "not an http"),
])
def test_bad_gateway_settings_are_refused_with_a_sentence(
        settings: dict[str, Any], says: str) -> None:
    with pytest.raises(SettingsError, match=says):
        gateways_from_settings(settings)


def test_a_booking_confirmed_here_gets_its_reminder_before_it_starts(tmp_path: Path) -> None:
    """The technician's branch reminds the member of a confirmed booking once it starts
    within the rule's remind_minutes (120 by default), once: from bookings to outbox."""
    clock = {"ms": NOW - 3_600_000}  # 09:30 in Shanghai
    Ledger.create(tmp_path / "SH02", "SH02")
    with Ledger.open(tmp_path / "SH02", now_ms=lambda: clock["ms"]) as led:
        mid = op(led, "member.add", name="王芳", phone="13800000009")["member_id"]
        op(led, "technician.add", code="T01", name="小李", services="FOOT60")
        booked = op(led, "booking.add", member=mid, technician="T01", service="FOOT60",
                    at="2026-12-03T13:00")
        assert booked["status"] == "confirmed"
        assert not [n for n in outbox.collect(led, clock["ms"], BOTH).notices
                    if n.kind == "reminder"], "not yet: it starts in three and a half hours"
        clock["ms"] = NOW + 3_600_000  # 11:30: it starts within two hours
        due = outbox.collect(led, clock["ms"], BOTH)
        [r] = [n for n in due.notices if n.kind == "reminder"]
        assert (r.member, r.channel, r.to, r.key) == (
            mid, "sms", "13800000009", f"reminder:{booked['booking']}")
        assert "13:00" in r.body and not r.promotional
        outbox.keep(led, due, clock["ms"])
        assert not [n for n in outbox.collect(led, clock["ms"] + 60_000, BOTH).notices
                    if n.kind == "reminder"], "once"


def _look(ledger: Ledger, now_ms: int) -> list[str]:
    """One pass of the notifier's: what low-balance notices are new, kept."""
    due = outbox.collect(ledger, now_ms, BOTH)
    outbox.keep(ledger, due, now_ms)
    return [n.member for n in due.notices if n.kind == "low_balance"]


def _only_from(src: Ledger, dst: Ledger, writer: str) -> None:
    """`dst` takes from `src` the records of `writer`'s log only."""
    dst.apply_batch(src.batch([r for r in src.lacking(dst.log_view()) if r.node == writer]))


def test_a_branch_whose_clock_runs_days_ahead_hides_no_debit_from_the_low_balance_notice(
        tmp_path: Path) -> None:
    """Ids are their writer's clock. SH02's runs 3 days ahead: once its top-up reached
    SH01, a scan by id from the greatest id held looked past every debit written since
    at branches with the right clock. Debits are looked at in the order they reached
    SH01: each once, a debit deferred for its funding (projected only once the
    transfer that funds it comes) too, and nothing is told twice."""
    good = FakeClock(NOW)
    ahead = FakeClock(NOW + 3 * 86_400_000)
    sh01 = new_ledger(tmp_path, "SH01", now_ms=good)
    sh02 = new_ledger(tmp_path, "SH02", now_ms=ahead)
    sh03 = new_ledger(tmp_path, "SH03", now_ms=good)
    try:
        zhang, li, wang = (sh01.add_member(sh01.owner, name=n, phone=p) for n, p in (
            ("张伟", "13800000001"), ("李娜", "13800000002"), ("王芳", "13800000003")))
        sync(sh01, sh02)
        sync(sh01, sh03)
        sh03.topup(sh03.owner, zhang, 10_000)
        sync(sh01, sh03)
        assert _look(sh01, good.ms) == []  # the first look: from now on

        sh02.topup(sh02.owner, wang, 1_000)  # its id 3 days ahead
        sync(sh01, sh02)
        good.ms += 60_000
        assert _look(sh01, good.ms) == []
        sh03.debit(sh03.owner, zhang, amount=6_000)  # 40.00 left, below 50.00
        sync(sh01, sh03)
        good.ms += 60_000
        assert _look(sh01, good.ms) == [zhang]
        good.ms += 60_000
        assert _look(sh01, good.ms) == [], "told once"

        # 李娜's value is SH02's, given to SH03; SH01 gets SH03's debit before the
        # transfer that funds it: deferred, then projected when SH02's log comes.
        sh02.topup(sh02.owner, li, 10_000)
        sh02.transfer_rights(sh02.owner, li, "SH03", 10_000, "cash")
        sync(sh02, sh03)
        sh03.debit(sh03.owner, li, amount=6_000)
        _only_from(sh03, sh01, "SH03")
        assert sh01.storage.conn.execute("SELECT COUNT(*) FROM deferred").fetchone() == (1,)
        good.ms += 60_000
        assert _look(sh01, good.ms) == []
        sync(sh01, sh02)
        assert sh01.balance(li)["cash"] == 4_000
        good.ms += 60_000
        assert _look(sh01, good.ms) == [li]
        for _ in range(3):
            good.ms += 3_600_000
            assert _look(sh01, good.ms) == []
        assert sorted(h["member"] for h in outbox.history(sh01, kind="low_balance")) == sorted(
            [zhang, li])
        assert sh01.storage.conn.execute("SELECT COUNT(*) FROM outbox_debits").fetchone() == (
            0,), "each debit looked at goes from the queue"
    finally:
        for x in (sh01, sh02, sh03):
            x.close()


def test_debits_are_looked_at_a_slice_per_pass_each_once(
        ledger: Ledger, monkeypatch: pytest.MonkeyPatch) -> None:
    """A pass looks at DEBIT_SCAN queued debits at most; the rest wait for the next,
    and what a pass found but did not keep is found again."""
    m = members(ledger)
    assert _look(ledger, NOW) == []
    for who in ("never", "no"):
        op(ledger, "topup", member=m[who], amount=10000, pay="cash")
        op(ledger, "debit", member=m[who], amount=6000)
    monkeypatch.setattr(outbox, "DEBIT_SCAN", 1)
    due = outbox.collect(ledger, NOW + 1000, BOTH)
    assert outbox.collect(ledger, NOW + 1000, BOTH) == due, "not kept: found again"
    outbox.keep(ledger, due, NOW + 1000)
    assert [n.member for n in due.notices if n.kind == "low_balance"] == [m["never"]]
    assert _look(ledger, NOW + 2000) == [m["no"]]
    assert _look(ledger, NOW + 3000) == []


def test_two_debits_in_one_pass_that_cross_the_threshold_once_tell_once(
        ledger: Ledger) -> None:
    """Each debit is judged by the balance it left: 100.00 -> 60.00 -> 20.00 against
    50.00 crosses once, at the second; read as the balance after both (20.00), the
    first looked like a crossing too, and the member was told twice."""
    m = members(ledger)
    assert _look(ledger, NOW) == []
    op(ledger, "topup", member=m["never"], amount=10000, pay="cash")
    op(ledger, "debit", member=m["never"], amount=4000)
    op(ledger, "debit", member=m["never"], amount=4000)
    due = outbox.collect(ledger, NOW + 1000, BOTH)
    [low] = [n for n in due.notices if n.kind == "low_balance"]
    assert low.key == f"low_balance:{m['never']}:{outbox.today_of(ledger, NOW + 1000)}"
    assert "20.00" in low.body, "the one that crossed"
    outbox.keep(ledger, due, NOW + 1000)
    assert _look(ledger, NOW + 2000) == []


def test_a_member_taken_below_the_threshold_again_and_again_is_told_once_a_day(
        ledger: Ledger) -> None:
    """Any branch's debit counts, and a lying one raised a member's bonus and took it
    below the threshold again and again (a top-up of bonus alone, a debit of 0.01), each
    time a message the home branch paid for. A member is told at most once a day."""
    m = members(ledger)
    assert _look(ledger, NOW) == []
    told = []
    for i in range(3):
        op(ledger, "topup", member=m["never"], amount=10000, pay="cash")
        op(ledger, "debit", member=m["never"], amount=8000)
        told += _look(ledger, NOW + 1000 * (i + 1))
    assert told == [m["never"]]


class NodeStandIn:
    """The two things peer.notifier.Notifier reads of its node: the store and the
    gateways (real LogGateways here: they keep what they send)."""

    def __init__(self, ledger: Ledger, gateways: dict[str, LogGateway]) -> None:
        self.ledger = ledger
        self.gateways = gateways


def test_a_kept_notice_goes_as_things_are_when_it_is_sent(ledger: Ledger) -> None:
    """A broadcast is kept when it is written and sent by the next passes: a member who
    withdrew consent meanwhile, or was deleted, still got it; and one kept for e-mail
    on a node that can only send SMS was tried hourly for ever."""
    alice = op(ledger, "member.add", name="Alice", phone="13800000001",
               email="alice@example.com", promo="yes")["member_id"]
    bob = op(ledger, "member.add", name="Bob", phone="13800000002",
             email="bob@example.com", promo="yes")["member_id"]
    carol = op(ledger, "member.add", name="Carol", phone="13800000003",
               email="carol@example.com", promo="yes")["member_id"]
    assert op(ledger, "notice.broadcast", subject="Sale", text="{name}: 20% off")["queued"] == 3
    op(ledger, "member.edit", member=alice, promo="no")
    op(ledger, "member.edit", member=bob, deleted=True)
    sms = LogGateway("sms")
    notifier = Notifier(NodeStandIn(ledger, {"sms": sms}),  # type: ignore[arg-type]
                        clock=ledger.clock.wall)
    assert asyncio.run(notifier.tick()) == 1
    assert [(m.channel, m.to, m.body) for m in sms.sent] == [
        ("sms", "13800000003", "Carol: 20% off")]
    kept = {h["member"]: h["status"] for h in outbox.history(ledger)}
    assert kept == {carol: "sent"}, kept


def test_a_service_notice_goes_before_a_broadcast_kept_earlier(tmp_path: Path) -> None:
    """A broadcast to 120 members, then an appointment reminder due a second later: 50
    notices go a pass, oldest first, so the reminder waited three passes behind the
    promotion (a broadcast to 12,000 delayed it past the appointment)."""
    clock = FakeClock(NOW - 30 * 60_000)  # 10:00 in Shanghai
    led = new_ledger(tmp_path, "SH01", now_ms=clock)
    try:
        for i in range(120):
            op(led, "member.add", name=f"M{i}", phone=f"1380000{i:04d}", promo="yes")
        guest = op(led, "member.add", name="王芳", phone="13900000009")["member_id"]
        op(led, "technician.add", code="T01", name="小李", services="FOOT60")
        op(led, "booking.add", member=guest, technician="T01", service="FOOT60",
           at="2026-12-03T11:45")
        assert op(led, "notice.broadcast", subject="双12", text="{name}，八折")["queued"] == 120
        clock.ms += 1000  # the reminder (two hours ahead) is due now
        sms = LogGateway("sms")
        notifier = Notifier(NodeStandIn(led, {"sms": sms}), clock=clock)  # type: ignore[arg-type]
        assert asyncio.run(notifier.tick()) == 50
        assert sms.sent[0].key.startswith("reminder:") and sms.sent[0].to == "13900000009"
    finally:
        led.close()


def test_a_store_that_sends_nothing_queues_no_debit(tmp_path: Path) -> None:
    """A head office with no gateway read the notice history once: that made the
    outbox's trigger, and every debit of the chain was queued in `outbox_debits` for
    good (only a notifier's pass takes them off). Only a notifier's pass makes it, and
    a node started without one drops it."""
    hq, sh01 = new_ledger(tmp_path, "HQ01"), new_ledger(tmp_path, "SH01")
    try:
        m = sh01.add_member(sh01.owner, name="张伟", phone="13812345678")
        sh01.topup(sh01.owner, m, 100_000)
        outbox.history(hq)  # `crdtledger notice history` at head office

        def queued() -> int:
            return int(hq.storage.conn.execute(
                "SELECT COUNT(*) FROM outbox_debits").fetchone()[0])

        for _ in range(5):
            sh01.debit(sh01.owner, m, amount=100)
        sync(sh01, hq)
        assert queued() == 0
        _look(hq, 0)  # a notifier's pass, once: the queue from then on
        sh01.debit(sh01.owner, m, amount=100)
        sync(sh01, hq)
        assert queued() == 1
        outbox.stop_queue(hq)  # started again without a notifier
        sh01.debit(sh01.owner, m, amount=100)
        sync(sh01, hq)
        assert queued() == 0
    finally:
        hq.close()
        sh01.close()


class _Down(LogGateway):
    """A real LogGateway that a test says is down (the provider unreachable)."""

    down = True

    async def send(self, message: Any) -> None:
        if self.down:
            raise GatewayError("cannot reach the SMS provider; it will be tried again")
        await super().send(message)


def test_a_notice_kept_while_the_gateway_was_down_goes_as_things_are(tmp_path: Path) -> None:
    """Kept at 10:00 while the gateway was down: a reminder of an 11:30 appointment the
    member cancelled at 10:30, changing her phone number too, went out at 15:00 to the
    number she had given up. A reminder goes only while its booking stands and before
    it begins; a notice goes to the address the member has now, within its day."""
    clock = FakeClock(NOW - 30 * 60_000)  # 10:00 in Shanghai
    led = new_ledger(tmp_path, "SH01", now_ms=clock)
    try:
        m = op(led, "member.add", name="王芳", phone="13800000009")["member_id"]
        op(led, "technician.add", code="T01", name="小李", services="FOOT60")
        op(led, "technician.add", code="T02", name="小王", services="FOOT60")
        b = op(led, "booking.add", member=m, technician="T01", service="FOOT60",
               at="2026-12-03T11:30")
        b2 = op(led, "booking.add", member=m, technician="T02", service="FOOT60",
                at="2026-12-03T11:00")
        sms = _Down("sms")
        notifier = Notifier(NodeStandIn(led, {"sms": sms}), clock=clock)  # type: ignore[arg-type]
        asyncio.run(notifier.tick())
        assert {h["key"] for h in outbox.history(led)} == {
            f"reminder:{b['booking']}", f"reminder:{b2['booking']}"}
        clock.ms += 30 * 60_000  # 10:30
        op(led, "booking.cancel", booking=b["booking"])
        op(led, "member.edit", member=m, phone="13900000000")
        sms.down = False
        assert asyncio.run(notifier.tick()) == 1
        assert [(x.key, x.to) for x in sms.sent] == [(f"reminder:{b2['booking']}",
                                                       "13900000000")]
    finally:
        led.close()


def test_what_expires_is_one_notice_a_day_however_many_coupons(tmp_path: Path) -> None:
    """Another branch issued a member 200 coupons of 0.01 expiring tomorrow (a coupon
    moves no money: a liar pays nothing for it), and her home branch sent 200 text
    messages at the greetings hour, every member, every day."""
    led = new_ledger(tmp_path, "SH01", now_ms=FakeClock(NOW))
    try:
        m = op(led, "member.add", name="张伟", phone="13800000002")["member_id"]
        today = outbox.today_of(led, NOW)
        tomorrow = (date.fromisoformat(today) + timedelta(days=1)).isoformat()
        for _ in range(5):
            op(led, "coupon.issue", member=m, off=1, valid_to=tomorrow)
        due = outbox.collect(led, NOW, BOTH)
        [expiry] = [n for n in due.notices if n.kind == "expiry"]
        assert expiry.key == f"expiry:{m}:{today}"
        assert "等 5 项" in expiry.body, expiry.body
        outbox.keep(led, due, NOW)
        # The next day nothing new expires: nothing is told (each thing once; the
        # first version told a coupon of a week every day of it).
        later = NOW + 86_400_000
        assert not [n for n in outbox.collect(led, later, BOTH).notices
                    if n.kind == "expiry"]
    finally:
        led.close()


def test_a_low_balance_is_told_once_by_the_senders_day(tmp_path: Path) -> None:
    """The key named the debit's own day: SH02, its clock put back a day before each
    top-up and debit (honest code; a liar does it at will), had SH01 send the member a
    message per round, all in the same real minutes."""
    real = FakeClock(NOW + 4 * 3_600_000)  # 15:00 in Shanghai
    behind = FakeClock(real.ms)
    sh01, sh02 = new_ledger(tmp_path, "SH01", now_ms=real), new_ledger(tmp_path, "SH02",
                                                                       now_ms=behind)
    try:
        name_branches(sh01, "SH01", "SH02")
        m = op(sh01, "member.add", name="王芳", phone="13800000009")["member_id"]
        sms = LogGateway("sms")
        notifier = Notifier(NodeStandIn(sh01, {"sms": sms}), clock=real)  # type: ignore[arg-type]
        asyncio.run(notifier.tick())
        sync(sh01, sh02)
        for i in range(4):
            behind.ms = real.ms - (i + 1) * 86_400_000  # a day further back each round
            op(sh02, "topup", member=m, amount=6000 if i == 0 else 2000, pay="cash")
            op(sh02, "debit", member=m, amount=2000)
            sync(sh01, sh02)
            real.ms += 30_000
            asyncio.run(notifier.tick())
        assert [x.key for x in sms.sent if x.key.startswith("low_balance:")] == [
            f"low_balance:{m}:{outbox.today_of(sh01, real.ms)}"]
    finally:
        sh01.close()
        sh02.close()


def test_a_merged_duplicates_kept_notices_are_not_sent(ledger: Ledger) -> None:
    """A broadcast kept for two records of one customer while mail was down went to
    both once merged: one customer, two messages, one to the duplicate's old address."""
    a = op(ledger, "member.add", name="Carol", phone="13800000003", promo="yes")["member_id"]
    b = op(ledger, "member.add", name="Carol", phone="13800000004", promo="yes")["member_id"]
    assert op(ledger, "notice.broadcast", subject="Sale", text="{name}: 20% off")["queued"] == 2
    op(ledger, "member.merge", member=b, into=a)
    sms = LogGateway("sms")
    notifier = Notifier(NodeStandIn(ledger, {"sms": sms}),  # type: ignore[arg-type]
                        clock=ledger.clock.wall)
    assert asyncio.run(notifier.tick()) == 1
    assert [x.to for x in sms.sent] == ["13800000003"]
