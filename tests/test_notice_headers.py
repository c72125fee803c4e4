"""Line breaks and control characters in what becomes a mail header, end to end: a real
node (peer.node.Node, its HTTP API on 127.0.0.1) and a real SMTP server (aiosmtpd, the
local SMTP stand-in).

The API refuses a broadcast subject, a name, a branch's name in the `branches` rule
that does not fit on one line, with a sentence. What an older version (or another
branch's record) kept all the same never holds up the notices after it: each pass of
the notifier sends what it can, a subject is sent on one line, and a notice that cannot
be sent at all is kept failing with its reason. Before, one such notice made every
pass raise `ValueError: Header values may not contain linefeed...` before anything
was sent, and it stayed first in the queue for ever.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from crdtledger import operations, outbox, rules
from crdtledger.ledger import Ledger
from crdtledger.notices import Notice
from peer.chain import enrol, init_chain
from peer.gateways import Gateway, Message
from peer.node import Config, Node
from peer.smtp_standin import SmtpStandIn, text_of

BOSS_PW = "boss-secret"
INJECTED = "双十二\r\nBcc: everyone@example.com"


class Clock:
    """The notifier's wall clock (ms): an hour past the real one, so that everything
    kept by now is due."""

    def __init__(self) -> None:
        self.ms = time.time_ns() // 1_000_000 + 3_600_000

    def __call__(self) -> int:
        return self.ms


class Api:
    def __init__(self, http: aiohttp.ClientSession, base: str) -> None:
        self.http, self.base = http, base

    async def call(self, method: str, path: str, body: Any = None, *,
                   token: str | None = None) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with self.http.request(method, self.base + path, json=body,
                                     headers=headers) as r:
            text = await r.text()
            return r.status, json.loads(text) if text else None


Scenario = Callable[[Node, Api, str, SmtpStandIn, Clock], Awaitable[None]]


def run_node(tmp_path: Path, scenario: Scenario) -> None:
    """SH01 (head office), sending mail through the SMTP stand-in, its API served on
    127.0.0.1 with operator boss (owner) logged in."""
    data = tmp_path / "SH01"
    init_chain(tmp_path / "chain", "test")
    Ledger.create(data, "SH01", "test")
    enrol(tmp_path / "chain", data, "SH01", head_office=True)
    with Ledger.open(data) as ledger:
        ledger.add_operator(ledger.owner, "boss", BOSS_PW, ["owner"])
    clock = Clock()

    async def main(smtp: SmtpStandIn) -> None:
        node = Node(Config(data, listen=("127.0.0.1", 0), api=("127.0.0.1", 0), mdns=False,
                           notify_clock=clock, notify_interval_s=3600.0))
        await node.start()
        try:
            async with aiohttp.ClientSession() as http:
                api = Api(http, f"http://127.0.0.1:{node.api_port}/api")
                status, body = await api.call("POST", "/login", {"operator": "boss",
                                                                 "password": BOSS_PW})
                assert status == 200, body
                await scenario(node, api, str(body["token"]), smtp, clock)
        finally:
            await node.stop()

    with SmtpStandIn() as smtp:
        (data / "node.toml").write_text(
            "[notify.email]\nkind = \"smtp\"\nhost = \"127.0.0.1\"\n"
            f"port = {smtp.port}\nstarttls = false\nsender = \"店 <shop@example.com>\"\n",
            encoding="utf-8")
        asyncio.run(main(smtp))


async def add_member(api: Api, token: str, phone: str, email: str) -> str:
    status, body = await api.call("POST", "/members", {
        "name": "王芳", "phone": phone, "email": email, "promo": "yes"}, token=token)
    assert status == 201, body
    return str(body["member_id"])


async def tick(node: Node) -> int:
    assert node.notifier is not None
    return await node.notifier.tick()


def subjects(smtp: SmtpStandIn) -> list[str]:
    return sorted(str(m["Subject"]) for m in smtp.messages())


# --- the API refuses -----------------------------------------------------------------


@pytest.mark.parametrize(("path", "body", "field"), [
    ("/notices/broadcast", {"subject": INJECTED, "text": "{name} 好"}, "subject"),
    ("/notices/broadcast", {"subject": "双十二\x00", "text": "{name} 好"}, "subject"),
    ("/notices/broadcast", {"subject": "双十二\u2028Bcc: x@example.com", "text": "好"},
     "subject"),
    ("/notices/broadcast", {"subject": "双十二", "text": "{name} 好\x00"}, "text"),
    ("/members", {"name": "王芳\r\nX-Evil: 1", "phone": "13812345678"}, "name"),
    ("/members", {"name": "王芳", "phone": "13812345678", "tags": ["vip\n"]}, "tags[0]"),
    ("/goods", {"code": "G1", "name": "洗发水\n", "price": 3000}, "name"),
])
def test_text_for_one_line_with_a_line_break_or_control_character_is_refused(
        tmp_path: Path, path: str, body: dict[str, Any], field: str) -> None:
    async def go(node: Node, api: Api, token: str, smtp: SmtpStandIn, clock: Clock) -> None:
        await add_member(api, token, "13900000000", "m@example.com")
        before = outbox.history(node.ledger)
        status, answer = await api.call("POST", path, body, token=token)
        assert status == 400, answer
        assert answer["error"] == "invalid_input"
        assert answer["message"].startswith(f"{field} must be "), answer
        assert ("line breaks" in answer["message"]
                and "control characters" in answer["message"]), answer
        assert outbox.history(node.ledger) == before, "nothing kept"

    run_node(tmp_path, go)


def test_a_broadcast_text_may_span_lines_and_its_subject_is_one_line(tmp_path: Path) -> None:
    async def go(node: Node, api: Api, token: str, smtp: SmtpStandIn, clock: Clock) -> None:
        await add_member(api, token, "13900000000", "m@example.com")
        status, answer = await api.call("POST", "/notices/broadcast", {
            "subject": "双十二\t大促", "text": "{name} 好\r\n\t全场八折"}, token=token)
        assert status == 400 and "subject must be one line" in answer["message"], answer
        status, answer = await api.call("POST", "/notices/broadcast", {
            "subject": "双十二 大促", "text": "{name} 好\r\n\t全场八折"}, token=token)
        assert status == 201, answer
        assert await tick(node) == 1
        [mail] = smtp.messages()
        assert mail["Subject"] == "双十二 大促" and "全场八折" in text_of(mail)

    run_node(tmp_path, go)


def test_a_branch_name_with_a_line_break_is_refused_in_the_branches_rule(
        tmp_path: Path) -> None:
    async def go(node: Node, api: Api, token: str, smtp: SmtpStandIn, clock: Clock) -> None:
        for name in ("南京西路店\r\nBcc: everyone@example.com", "南京西路店\x00"):
            status, answer = await api.call("POST", "/rules", {
                "kind": "branches", "body": {"SH01": name}}, token=token)
            assert status == 400, answer
            assert "without line breaks or control characters" in answer["message"], answer
        assert "SH01" not in (node.ledger.rule("branches") or {}), "nothing written"
        status, answer = await api.call("POST", "/rules", {
            "kind": "branches", "body": {"SH01": "南京西路店"}}, token=token)
        assert status == 200, answer

    run_node(tmp_path, go)


# --- what is stored already never blocks the queue --------------------------------------


def test_notices_an_older_version_kept_with_a_line_break_do_not_block_the_others(
        tmp_path: Path) -> None:
    async def go(node: Node, api: Api, token: str, smtp: SmtpStandIn, clock: Clock) -> None:
        await add_member(api, token, "13900000000", "m@example.com")
        ledger = node.ledger
        a_minute_ago = ledger.clock.wall() - 60_000
        # Kept before the API refused them (the library's own call, as the API made
        # it): a subject with CRLF and one with a NUL, first in the queue.
        outbox.broadcast(ledger, {}, INJECTED, "{name} 好", a_minute_ago)
        outbox.broadcast(ledger, {}, "双十二\x00", "{name} 好", a_minute_ago)
        # A notice no mail can carry: its address is no address (a liar's record).
        outbox.enqueue(ledger, [Notice("daily:SH01:2026-12-01:x", "daily", "SH01", "email",
                                       "boss\x00@example.com", "日报", "…")], a_minute_ago)
        status, answer = await api.call("POST", "/notices/broadcast",
                                        {"subject": "正常", "text": "{name} 好"}, token=token)
        assert status == 201, answer

        assert await tick(node) == 3, "the pass goes on past the notice it cannot send"
        assert subjects(smtp) == ["双十二", "双十二 Bcc: everyone@example.com", "正常"]
        for mail in smtp.messages():
            assert mail["Bcc"] is None and mail["To"] == "m@example.com"
        rows = {r["to"]: r for r in outbox.history(ledger)}
        bad = rows["boss\x00@example.com"]
        assert bad["status"] == "refused" and bad["attempts"] == 1
        assert "is not an e-mail address" in bad["error"]
        assert sum(r["status"] == "sent" for r in outbox.history(ledger)) == 3

        # Later passes: the refused one is not tried again (no mail can ever carry
        # it), nothing is sent twice, and a new notice still goes.
        clock.ms += 2 * 3_600_000
        status, answer = await api.call("POST", "/notices/broadcast",
                                        {"subject": "再来", "text": "{name} 好"}, token=token)
        assert status == 201, answer
        assert await tick(node) == 1
        assert len(smtp.messages()) == 4
        [bad] = [r for r in outbox.history(ledger) if r["to"] == "boss\x00@example.com"]
        assert bad["status"] == "refused" and bad["attempts"] == 1

    run_node(tmp_path, go)


def test_a_branch_name_an_older_version_kept_with_a_line_break_still_sends_the_report(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The daily report's subject names the branch (the `branches` rule). A name with a
    line break, kept before the rule refused it, goes on one line."""
    async def go(node: Node, api: Api, token: str, smtp: SmtpStandIn, clock: Clock) -> None:
        ledger = node.ledger
        at = datetime.fromtimestamp(clock() / 1000, ledger.storage.tz) - timedelta(minutes=1)

        def old_branches() -> Any:
            with monkeypatch.context() as m:  # the check of an older version: length only
                m.setattr(rules, "_check_rule", lambda _kind, _body: None)
                return operations.run(ledger, ledger.owner, "rule.set", {
                    "kind": "branches", "body": {"SH01": "南京西路店\r\nBcc: all@example.com"}})

        await node.perform(old_branches, "rule.set")
        status, answer = await api.call("POST", "/rules", {
            "kind": "notifications", "body": {"daily": [
                {"branch": "SH01", "at": f"{at:%H:%M}", "to": ["sh01@example.com"]}]}},
            token=token)
        assert status == 200, answer
        await add_member(api, token, "13900000000", "m@example.com")
        status, answer = await api.call("POST", "/notices/broadcast",
                                        {"subject": "正常", "text": "{name} 好"}, token=token)
        assert status == 201, answer
        assert await tick(node) == 2
        assert subjects(smtp) == [
            f"南京西路店 Bcc: all@example.com 营业日报 {at.date()}", "正常"]
        assert all(m["Bcc"] is None for m in smtp.messages())

    run_node(tmp_path, go)


class Broken:
    """A gateway with a fault of its own for one address (not a GatewayError)."""

    channel = "email"

    def __init__(self, inner: Gateway, bad: str) -> None:
        self.inner, self.bad = inner, bad

    async def send(self, msg: Message) -> None:
        if msg.to == self.bad:
            raise RuntimeError("a fault in the gateway")
        await self.inner.send(msg)


def test_any_fault_sending_one_notice_is_kept_with_it_and_the_pass_goes_on(
        tmp_path: Path) -> None:
    async def go(node: Node, api: Api, token: str, smtp: SmtpStandIn, clock: Clock) -> None:
        await add_member(api, token, "13900000000", "a@example.com")
        await add_member(api, token, "13900000001", "b@example.com")
        node.gateways["email"] = Broken(node.gateways["email"], "a@example.com")
        status, answer = await api.call("POST", "/notices/broadcast",
                                        {"subject": "正常", "text": "{name} 好"}, token=token)
        assert status == 201 and answer["queued"] == 2, answer
        assert await tick(node) == 1
        assert [m["To"] for m in smtp.messages()] == ["b@example.com"]
        [row] = [r for r in outbox.history(node.ledger) if r["to"] == "a@example.com"]
        assert row["status"] == "failing" and row["attempts"] == 1
        assert "RuntimeError: a fault in the gateway" in row["error"]
        status, answer = await api.call("GET", "/notices", token=token)
        assert status == 200
        assert {r["to"]: r["status"] for r in answer} == {"a@example.com": "failing",
                                                          "b@example.com": "sent"}

    run_node(tmp_path, go)


def test_a_mailbox_the_server_refuses_for_good_is_not_tried_again_one_refused_for_now_is(
        tmp_path: Path) -> None:
    """The mail server's 5xx for a recipient is "never" (no such mailbox): the notice is
    kept as refused, with the server's answer, and not tried hourly for ever. Its 4xx
    (a full mailbox) is "not now": tried again, and sent once the mailbox takes it."""
    async def go(node: Node, api: Api, token: str, smtp: SmtpStandIn, clock: Clock) -> None:
        await add_member(api, token, "13900000000", "gone@example.com")
        await add_member(api, token, "13900000001", "full@example.com")
        smtp.refuse["gone@example.com"] = "550 5.1.1 no such user"
        smtp.refuse["full@example.com"] = "452 4.2.2 mailbox full"
        status, answer = await api.call("POST", "/notices/broadcast",
                                        {"subject": "双十二", "text": "{name} 好"}, token=token)
        assert status == 201 and answer["queued"] == 2, answer
        assert await tick(node) == 0
        status, rows = await api.call("GET", "/notices", token=token)
        assert status == 200
        by_to = {r["to"]: r for r in rows}
        assert by_to["gone@example.com"]["status"] == "refused"
        assert by_to["gone@example.com"]["error"].endswith("(550 5.1.1 no such user)")
        assert by_to["full@example.com"]["status"] == "failing"
        assert "tried again" in by_to["full@example.com"]["error"]

        del smtp.refuse["full@example.com"]
        for _ in range(3):
            clock.ms += 2 * 3_600_000
            await tick(node)
        assert [m["To"] for m in smtp.messages()] == ["full@example.com"]
        by_to = {r["to"]: r for r in outbox.history(node.ledger)}
        assert by_to["full@example.com"]["status"] == "sent"
        assert (by_to["gone@example.com"]["status"], by_to["gone@example.com"]["attempts"]
                ) == ("refused", 1), "never tried again"

    run_node(tmp_path, go)
