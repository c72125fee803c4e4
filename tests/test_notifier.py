"""The node's notifier with real nodes (real TLS on loopback, real stores restarted on
the same data directories) and a real SMTP server (aiosmtpd, the local SMTP stand-in
on 127.0.0.1): the owner's daily report set at 21:00 goes out once per chain per day,
across restarts of every node; a gateway that fails is tried again later.

The hour is the notifier's clock (Config.notify_clock), set by the test; passes are
run by hand (`notifier.tick()`), the node's own loop waiting an hour between them.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from crdtledger import operations, outbox
from crdtledger.errors import InvalidInput
from crdtledger.ledger import Ledger
from peer.chain import enrol, init_chain
from peer.node import Config, Node
from peer.smtp_standin import SmtpStandIn, text_of

SHANGHAI = ZoneInfo("Asia/Shanghai")
# The notifier runs on the test's clock, but the ledger mints ids (and so books a new
# member to a day) on the real one: the test's days are the real today and tomorrow.
TODAY = datetime.now(SHANGHAI).date()
TOMORROW = TODAY + timedelta(days=1)


class Clock:
    """The notifier's wall clock, in ms, set by the test."""

    def __init__(self) -> None:
        self.ms = 0

    def at(self, text: str) -> None:
        self.ms = int(datetime.fromisoformat(text).replace(tzinfo=SHANGHAI).timestamp() * 1000)

    def __call__(self) -> int:
        return self.ms


def notify_toml(port: int) -> str:
    return ("[notify.email]\nkind = \"smtp\"\nhost = \"127.0.0.1\"\n"
            f"port = {port}\nstarttls = false\nsender = \"店 <shop@example.com>\"\n")


def make_chain(root: Path, smtp_port: int) -> None:
    chain = init_chain(root / "chain")
    for name in ("HQ", "SH01"):
        Ledger.create(root / name, name, chain.name)
        enrol(root / "chain", root / name, name, head_office=name == "HQ")
        (root / name / "node.toml").write_text(notify_toml(smtp_port), encoding="utf-8")


@asynccontextmanager
async def chain_nodes(root: Path, clock: Clock) -> AsyncIterator[tuple[Node, Node]]:
    """HQ and SH01 started on their stores (again, after a restart), SH01 dialling HQ."""
    def config(name: str, peers: list[str]) -> Config:
        return Config(root / name, listen=("127.0.0.1", 0), api=("127.0.0.1", 0),
                      mdns=False, peers=peers, notify_clock=clock,
                      notify_interval_s=3600.0)

    hq = Node(config("HQ", []))
    await hq.start()
    sh = Node(config("SH01", [f"wss://127.0.0.1:{hq.sync_port}"]))
    await sh.start()
    try:
        yield hq, sh
    finally:
        await sh.stop()
        await hq.stop()


async def settle(a: Node, b: Node) -> None:
    for _ in range(300):
        if a.connected() and a.digest() == b.digest():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("nodes did not converge")


async def tick(*nodes: Node) -> int:
    sent = 0
    for n in nodes:
        assert n.notifier is not None
        sent += await n.notifier.tick()
    return sent


async def run_op(node: Node, name: str, params: dict[str, object]) -> object:
    ledger = node.ledger
    return await node.perform(lambda: operations.run(ledger, ledger.owner, name, params))


REPORTS = {"daily": [{"branch": "all", "at": "21:00", "to": ["boss@example.com"]},
                     {"branch": "SH01", "at": "21:30", "to": ["sh01@example.com"]}],
           "language": "zh-CN"}


def reports_to(smtp: SmtpStandIn, to: str) -> list[str]:
    return [str(m["Subject"]) for m in smtp.messages() if m["To"] == to]


def test_the_daily_report_at_2100_goes_once_per_chain_per_day_across_restarts(
        tmp_path: Path) -> None:
    clock = Clock()

    async def scenario(smtp: SmtpStandIn) -> None:
        clock.at(f"{TODAY}T20:59:00")
        async with chain_nodes(tmp_path, clock) as (hq, sh):
            await run_op(hq, "rule.set", {"kind": "notifications", "body": REPORTS})
            await run_op(sh, "member.add", {"name": "张伟", "phone": "13812345678"})
            await settle(hq, sh)
            assert await tick(hq, sh) == 0, "not yet 21:00"
            clock.at(f"{TODAY}T21:00:30")
            assert await tick(hq, sh) == 1
            assert await tick(sh, hq) == 0, "sent already: nothing again"
        assert reports_to(smtp, "boss@example.com") == [f"全部门店 营业日报 {TODAY}"]
        assert "当天新增会员 1 人" in text_of(smtp.messages()[0])
        message_id = smtp.messages()[0]["Message-ID"]
        assert f"daily.CHAIN.{TODAY}" in message_id, "the key travels as the Message-ID"

        # Every node restarted, at 21:05 and at 21:31: the chain's report is not sent
        # again; SH01's own report goes once, by SH01.
        for hhmm, sent in (("21:05", 0), ("21:31", 1), ("23:59", 0)):
            clock.at(f"{TODAY}T{hhmm}:00")
            async with chain_nodes(tmp_path, clock) as (hq, sh):
                await settle(hq, sh)
                assert await tick(hq, sh) == sent, hhmm
                if sent:
                    assert [h["kind"] for h in outbox.history(sh.ledger)] == ["daily"]
                    assert [h["to"] for h in outbox.history(hq.ledger)] == [
                        "boss@example.com"]
        assert reports_to(smtp, "boss@example.com") == [f"全部门店 营业日报 {TODAY}"]
        assert reports_to(smtp, "sh01@example.com") == [f"SH01 营业日报 {TODAY}"]

        # The next morning (the night's reports are not sent again), then the next
        # evening: one more each.
        clock.at(f"{TOMORROW}T08:00:00")
        async with chain_nodes(tmp_path, clock) as (hq, sh):
            assert await tick(hq, sh) == 0
            clock.at(f"{TOMORROW}T21:45:00")
            assert await tick(hq, sh) == 2
        assert reports_to(smtp, "boss@example.com") == [
            f"全部门店 营业日报 {TODAY}", f"全部门店 营业日报 {TOMORROW}"]
        assert len(reports_to(smtp, "sh01@example.com")) == 2

    with SmtpStandIn() as smtp:
        make_chain(tmp_path, smtp.port)
        asyncio.run(scenario(smtp))


def test_a_mail_server_that_is_down_is_tried_again_later_and_nothing_is_lost(
        tmp_path: Path) -> None:
    clock = Clock()
    smtp = SmtpStandIn()  # its port chosen, not yet listening: the mail server is down
    make_chain(tmp_path, smtp.port)

    async def scenario() -> None:
        clock.at(f"{TODAY}T20:00:00")
        async with chain_nodes(tmp_path, clock) as (hq, _sh):
            await run_op(hq, "rule.set", {"kind": "notifications", "body": REPORTS})
            clock.at(f"{TODAY}T21:00:00")
            assert await tick(hq) == 0
            [row] = outbox.history(hq.ledger)
            assert row["status"] == "failing"
            assert "cannot reach the mail server" in row["error"]
            assert "tried again" in row["error"]
        clock.at(f"{TODAY}T21:00:30")
        smtp.start()
        try:
            async with chain_nodes(tmp_path, clock) as (hq, _sh):
                assert await tick(hq) == 0, "not before its retry time"
                clock.at(f"{TODAY}T21:02:00")
                assert await tick(hq) == 1
                [row] = outbox.history(hq.ledger)
                assert row["status"] == "sent" and row["attempts"] == 2
        finally:
            smtp.stop()
        assert [str(m["Subject"]) for m in smtp.messages()] == [f"全部门店 营业日报 {TODAY}"]

    asyncio.run(scenario())


@pytest.mark.parametrize(("toml", "says"), [
    ("[notify.email]\nkind = \"smtp\"\nhost = \"mail.example.com\"\nport = 70000\n"
     "sender = \"a@b.cn\"\n", "port 70000 is not a TCP port"),
    ("[notify.sms]\nkind = \"tencent\"\nsecret_id = \"x\"\n", "secret_key is missing"),
    ("[notify.fax]\nkind = \"log\"\n", "unknown setting 'fax'"),
    ("[notify.email]\nkind = \"pigeon\"\n", "kind 'pigeon' is not one of smtp or log"),
])
def test_a_node_with_bad_notify_settings_is_refused_with_a_sentence(
        tmp_path: Path, toml: str, says: str) -> None:
    Ledger.create(tmp_path / "SH01", "SH01", "c")
    init_chain(tmp_path / "chain", "c")
    enrol(tmp_path / "chain", tmp_path / "SH01", "SH01")
    (tmp_path / "SH01" / "node.toml").write_text(toml, encoding="utf-8")

    async def scenario() -> None:
        node = Node(Config(tmp_path / "SH01", listen=("127.0.0.1", 0),
                           api=("127.0.0.1", 0), mdns=False))
        with pytest.raises(InvalidInput, match=says):
            await node.start()
        await node.stop()

    asyncio.run(scenario())
