"""The operation table reaches people the same way through the HTTP API and the CLI.

Every operation of `crdtledger.operations.TABLE` is called through a real aiohttp
server on 127.0.0.1 (the API as the node mounts it) and through the command line's
`main` (the parser generated from the same table), each against its own store set
up alike. Both must accept the same parameters, refuse an operator without the
permission with the same code, refuse a bad amount with the same code, and change
nothing when they refuse. Finally the command line's call to a running node is
checked to carry the operation's name and parameters, not a command line.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from aiohttp import web
from helpers import new_ledger, snapshot, sync
from test_api import Api, serving

from crdtledger import bookings, closing, operations
from crdtledger.errors import InvalidInput
from crdtledger.ledger import Ledger
from crdtledger.model import BUILTIN_ROLES
from crdtledger.operations import TABLE, Operation
from peer import cli, local
from peer.api import ROUTES, Standalone

BOSS_PW, AMY_PW, TECH_PW = "boss-secret", "amy-secret", "tech-secret"
PHONE = "13812345678"


@dataclass(frozen=True)
class Shop:
    """What a store is set up with: the ids differ from store to store."""

    member: str
    debit: str
    tech: str  # an operator whose only permission is sync
    twin: str  # the member again, the phone typed another way at SH02: a duplicate to merge
    coupon: str = ""  # the member's coupon, to show and redeem
    referral: str = ""  # a newcomer's referral by the member, recorded by the node's owner
    leaver: str = ""  # a member with an exit application (by the node's owner) waiting
    application: str = ""
    booking: str = ""  # the member's booking with T01 tomorrow, to show and cancel
    started: str = ""  # one whose slot began an hour ago: a no-show to record
    day: str = ""  # tomorrow, in the store's zone


def furnish(ledger: Ledger) -> Shop:
    owner = ledger.owner
    ledger.add_operator(owner, "boss", BOSS_PW, ["owner"])
    ledger.add_operator(owner, "amy", AMY_PW, ["cashier"])
    ledger.define_role(owner, "it", ["sync"])
    tech = ledger.add_operator(owner, "tech", TECH_PW, ["it"])
    member = ledger.add_member(owner, name="王芳", phone=PHONE)
    ledger.issue_card(owner, member, "C1", pin="1357")
    ledger.topup(owner, member, 100000)
    debit = ledger.debit(owner, member, amount=20000)["id"]
    # Goods, and some shipped here by another branch: stock.receive has units to take.
    ledger.add_goods(owner, "G01", "精油", 8800, 3000, points_price=5, low_stock=2)
    with new_ledger(ledger.storage.dir.parent / "sender", "SH02") as sender:
        # The twin: the member again, registered there before the branches first met
        # (here the phone typed another way is the member's, and refused).
        twin = sender.add_member(sender.owner, name="王芳", phone="138 1234 5678")
        sync(ledger, sender)
        sender.stock_in(sender.owner, "G01", 5)
        sender.ship_stock(sender.owner, "G01", 3, "SH01")
        closing.close_due_month(sender)  # both close the month due: report.balances
        sync(ledger, sender)
    closing.close_due_month(ledger)
    coupon = ledger.issue_coupon(owner, member, off=500)["coupon"]
    # A newcomer's, not the twin's: the twin is merged into the member by a sample
    # below, and a referral whose referrer is the member it refers is void.
    newcomer = ledger.add_member(owner, name="赵六", phone="13600000001")
    referral = ledger.refer(owner, newcomer, member)["id"]
    leaver = ledger.add_member(owner, name="李雷", phone="13700000009")
    application = ledger.apply_exit(owner, leaver, "搬家")["application"]
    bookings.add_technician(ledger, owner, "T01", "小李", ["FOOT60", "BODY90"])
    day = (date.fromisoformat(ledger.today()) + timedelta(days=1)).isoformat()
    booking = bookings.book(ledger, owner, member, "T01", "FOOT60", f"{day}T11:00")["booking"]
    # A slot that has begun: booked as if at 10:00 yesterday for 11:00 (the clock's
    # offset moves its wall time only; ids stay in order), for booking.noshow.
    yesterday = date.fromisoformat(ledger.today()) - timedelta(days=1)
    then = datetime.combine(yesterday, time(10), ledger.storage.tz).timestamp() * 1000
    ledger.clock.offset_ms = int(then) - ledger.clock.raw_wall()
    try:
        started = bookings.book(ledger, owner, member, "T01", "FOOT60",
                                f"{yesterday}T11:00")["booking"]
    finally:
        ledger.clock.offset_ms = 0
    return Shop(member, str(debit), tech, twin, str(coupon), str(referral), leaver,
                str(application), booking, started, day)


Params = dict[str, Any]

# One call of every operation, in an order that works (the card is lost before it
# is found, replaced before the new one is returned). Amounts are typed yuan: the
# form both the API and the command line take.
SAMPLES: dict[str, Callable[[Shop], Params]] = {
    "member.add": lambda s: {"name": "韩梅梅", "phone": "13700000002", "gender": "F",
                             "birthday": "05-17", "tags": ["vip"], "prefs": {"strength": "轻"},
                             "custom": {"来源": "大众点评"}},
    "member.show": lambda s: {"member": s.member},
    "member.find": lambda s: {"q": "5678", "limit": 5},
    "member.edit": lambda s: {"member": s.member, "notes": "喜欢安静", "tags_add": ["常客"]},
    "member.duplicates": lambda s: {},
    "member.merge": lambda s: {"member": s.twin, "into": s.member},
    "balance": lambda s: {"member": s.member},
    "history": lambda s: {"member": s.member, "limit": 2},
    "rights.show": lambda s: {"member": s.member, "purse": "points"},
    "rights.held": lambda s: {"node": "SH02"},
    "level": lambda s: {"member": s.member},
    "card.issue": lambda s: {"member": s.member, "card_no": "C2", "pin": "2468",
                             "fee_yuan": "5.00", "type": "stored_value"},
    "card.show": lambda s: {"card_no": "C2"},
    "card.lost": lambda s: {"card_no": "C2"},
    "card.found": lambda s: {"card_no": "c2"},
    "card.replace": lambda s: {"card_no": "C2", "new_no": "C3", "pin": "1111"},
    "card.return": lambda s: {"card_no": "C3"},
    "topup": lambda s: {"card": "C1", "pin": "1357", "yuan": "50.00", "pay": "wechat"},
    "debit": lambda s: {"member": s.member, "service": "HAIR", "qty": 1, "pay": "stored"},
    "refund": lambda s: {"debit_id": s.debit, "yuan": "1.00", "reason": "早退"},
    "quote.refund": lambda s: {"debit_id": s.debit, "yuan": "1.00"},
    "rights.transfer": lambda s: {"member": s.member, "to": "SH02", "yuan": "2.00"},
    "points.redeem": lambda s: {"member": s.member, "points": 5, "gift": "毛巾"},
    "points.convert": lambda s: {"member": s.member, "points": 100},
    "points.expire": lambda s: {"member": s.member},
    "clock.confirm": lambda s: {},
    "package.sell": lambda s: {"member": s.member, "service": "FOOT60", "uses": 3,
                               "price_yuan": "300.00", "pay": "alipay"},
    "correct": lambda s: {"member": s.member, "purse": "cash", "change_text": "-1.50",
                          "reason": "typo"},
    "coupon.issue": lambda s: {"member": s.member, "off_yuan": "10.00",
                               "min_spend_yuan": "20.00", "valid_to": "2099-12-31"},
    "coupon.list": lambda s: {"member": s.member},
    "coupon.show": lambda s: {"coupon": s.coupon},
    "coupon.redeem": lambda s: {"coupon": s.coupon, "member": s.member, "spend_yuan": "30.00"},
    "goods.add": lambda s: {"code": "G02", "name": "毛巾", "price_yuan": "15.00",
                            "cost_yuan": "5.00", "points_price": 100, "low_stock": 5},
    "goods.list": lambda s: {},
    "stock.receive": lambda s: {"goods": "G01"},
    "stock.in": lambda s: {"goods": "G02", "qty": 10, "cost_yuan": "5.50", "supplier": "甲"},
    "stock.return": lambda s: {"goods": "G02", "qty": 1, "supplier": "甲"},
    "stock.adjust": lambda s: {"goods": "G02", "change": -1, "reason": "盘点少一条"},
    "stock.ship": lambda s: {"goods": "G02", "qty": 2, "to": "SH02"},
    "sell": lambda s: {"goods": "G01", "qty": 1, "member": s.member, "pay": "stored"},
    "points.gift": lambda s: {"member": s.member, "goods": "G01"},
    "stock.show": lambda s: {"goods": "G01"},
    "stock.list": lambda s: {"branch": "SH01"},
    "report.goods": lambda s: {"by": "profit", "limit": 5},
    "report.daily": lambda s: {"branch": "SH01"},
    "report.settlement": lambda s: {},
    "report.books": lambda s: {},
    "report.balances": lambda s: {},
    "report.ranking": lambda s: {"by": "services", "limit": 3},
    "report.movements": lambda s: {},
    "report.packages": lambda s: {},
    "rule.show": lambda s: {"kind": "services"},
    "rule.set": lambda s: {"kind": "promotions",
                           "body": [{"min": 100000, "bonus": 10000, "name": "满千送百"}]},
    "notice.broadcast": lambda s: {"subject": "双12", "text": "{name}，全场八折",
                                   "tags": ["vip"], "dormant_days": 30},
    "notice.history": lambda s: {"kind": "broadcast", "limit": 5},
    # membership workflows: the owner recorded the referral and applied, boss decides
    "referral.add": lambda s: {"member": s.leaver, "referrer": s.member},
    "referral.approve1": lambda s: {"referral": s.referral, "reason": "核实"},
    "referral.approve2": lambda s: {"referral": s.referral, "reject": True},
    "referral.show": lambda s: {"referral": s.referral},
    "referral.list": lambda s: {"status": "rejected"},
    "referral.grant": lambda s: {},
    "activity.set": lambda s: {"code": "MORNING", "name": "晨练", "from": "2020-01-01T00:00",
                               "to": "2099-01-01T00:00", "points": 5, "repeat": "daily",
                               "per_day": 2},
    "activity.list": lambda s: {},
    "checkin": lambda s: {"activity": "MORNING", "member": s.member},
    "activity.report": lambda s: {"activity": "MORNING"},
    "activity.reconcile": lambda s: {},
    "exit.show": lambda s: {"application": s.application},
    "exit.approve": lambda s: {"application": s.application, "pay": "cash"},
    "exit.return": lambda s: {"member": s.leaver, "reason": "回来了"},
    "exit.list": lambda s: {"status": "pending"},
    "exit.apply": lambda s: {"member": s.member, "reason": "搬家"},
    # appointments (crdtledger.bookings)
    "technician.add": lambda s: {"code": "T02", "name": "小王", "services": "FOOT60,HAIR",
                                 "hours": "09:00-21:00"},
    "technician.list": lambda s: {"branch": "SH01"},
    "booking.add": lambda s: {"member": s.member, "technician": "T01", "service": "FOOT60",
                              "at": f"{s.day}T15:00"},
    "booking.show": lambda s: {"booking": s.booking},
    "booking.list": lambda s: {"day": s.day},
    "booking.slots": lambda s: {"technician": "T01@SH01", "day": s.day, "service": "BODY90"},
    "booking.noshow": lambda s: {"booking": s.started},
    "booking.cancel": lambda s: {"booking": s.booking, "member": s.member},
    "operator.add": lambda s: {"name": "bob", "password": "bob-secret", "roles": ["cashier"]},
    "operator.set": lambda s: {"id": s.tech, "roles": {"it": True}, "active": True},
    "role.define": lambda s: {"name": "front", "permissions": ["member.add", "topup"]},
    "audit": lambda s: {"operator": "boss", "kind": "debit", "limit": 5},
    # Next to last: the shop hands every member's rights to SH02 (it closes).
    "rights.handover": lambda s: {"to": "SH02"},
    # Last: the member who left (no stored value) has their personal data erased.
    "member.erase": lambda s: {"member": s.leaver},
}


def test_every_operation_has_a_sample() -> None:
    assert list(SAMPLES) and set(SAMPLES) == set(TABLE)


def test_the_command_line_is_the_table_and_a_few_file_and_node_commands() -> None:
    """Whatever the CLI can do to a ledger is an operation, hence also an HTTP route:
    only creating a node, its certificates, running it, its status and files on its
    machine (sync files, backups, the analytics export, its service unit, the
    counter's HTTPS certificate) are the command line's own."""
    commands: set[str] = set()

    def walk(parser: Any, words: tuple[str, ...]) -> None:
        actions = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"]
        if not actions:
            commands.add(".".join(words))
        for action in actions:
            for word, sub in action.choices.items():
                walk(sub, (*words, word))

    walk(cli.build_parser(), ())
    own = {"init", "chain.init", "chain.renew", "chain.revoke", "node.run", "status",
           "export", "import", "backup", "restore", "printer", "receipt",
           "export-analytics", "service.install", "service.remove", "https-cert"}
    assert commands - own == set(TABLE)
    routes = {(r.method, r.path) for r in ROUTES}
    assert all((op.method, op.path) in routes for op in TABLE.values())


# --- the two ways in -------------------------------------------------------------------


async def http(api: Api, token: str, op: Operation, params: Params) -> tuple[int, Any]:
    """The operation as an HTTP client calls it: path, then query or JSON body."""
    rest = dict(params)
    path = op.path
    for name in list(rest):
        if "{" + name + "}" in path:
            path = path.replace("{" + name + "}", str(rest.pop(name)))
    if op.method == "GET":
        query = {k: str(v) for k, v in rest.items()}
        return await api.call("GET", path + ("?" + urlencode(query) if query else ""),
                              token=token)
    return await api.call(op.method, path, rest if rest else None, token=token)


def argv(op: Operation, params: Params) -> list[str]:
    """The operation as a person types it: its words, then one option per parameter."""
    out = op.name.split(".")
    for name, value in params.items():
        p = op.param(name)
        assert p.flag is not None, f"{op.name}: {name} is not typed at the command line"
        flag = p.flag or f"--{name.replace('_', '-')}"
        if name == "approver":
            out += ["--approver", value["name"], "--approver-password", value["password"]]
        elif not flag.startswith("-"):
            out.append(str(value))
        elif p.switch:
            out.append(flag)
        elif p.schema.get("type") is None:  # any JSON, e.g. a rule's body
            out += [flag, json.dumps(value, ensure_ascii=False)]
        elif isinstance(value, list):
            for item in value:
                out += [flag, str(item)]
        elif isinstance(value, dict) and p.schema.get("type") == "object":
            for k, v in value.items():
                out += [flag, f"{k}={json.dumps(v) if isinstance(v, bool) else v}"]
        else:
            out += [flag, str(value)]
    return out


@dataclass(frozen=True)
class Typed:
    code: int  # the exit code
    data: Any  # what --json printed


def typed(data: Path, who: tuple[str, str], words: list[str]) -> Typed:
    """The command line's main, in this process: the generated parser and all."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(["--data", str(data), "--json", "--operator", who[0],
                         "--password", who[1], *words])
    text = out.getvalue()
    if code == 1:
        assert len(err.getvalue().strip().splitlines()) == 1, err.getvalue()
    return Typed(code, json.loads(text) if text.strip() else None)


def store_state(data: Path) -> dict[str, Any]:
    with Ledger.open(data, lock=False) as ledger:
        return snapshot(ledger)


@contextlib.asynccontextmanager
async def two_shops(tmp_path: Path) -> AsyncIterator[tuple[Ledger, Shop, Api, Path, Shop]]:
    """Node SH01 twice, set up alike: one served over HTTP, one for the command line."""
    cli_ledger = new_ledger(tmp_path / "cli", "SH01")
    try:
        cli_shop = furnish(cli_ledger)
    finally:
        cli_ledger.close()
    ledger = new_ledger(tmp_path / "api", "SH01")
    try:
        shop = furnish(ledger)
        async with serving(Standalone(ledger)) as api:
            yield ledger, shop, api, tmp_path / "cli" / "sh01", cli_shop
    finally:
        ledger.close()


def shape(value: Any) -> Any:
    """What a result looks like, ids and amounts aside: keys and types."""
    if isinstance(value, dict):
        return {k: type(v).__name__ for k, v in value.items()}
    if isinstance(value, list):
        return [shape(v) for v in value[:1]]
    return type(value).__name__


# --- the tests --------------------------------------------------------------------------


def test_every_operation_works_alike_through_http_and_the_command_line(tmp_path: Path
                                                                        ) -> None:
    async def main() -> None:
        async with two_shops(tmp_path) as (ledger, shop, api, data, cli_shop):
            token = await api.login("boss", BOSS_PW)
            for name, sample in SAMPLES.items():
                op = TABLE[name]
                status, body = await http(api, token, op, sample(shop))
                assert status == op.status, (name, body)
                r = typed(data, ("boss", BOSS_PW), argv(op, sample(cli_shop)))
                assert r.code == 0, (name, r.data)
                if name == "member.show":  # the newest card's id, the same keys
                    body["cards"], r.data["cards"] = body["cards"][:1], r.data["cards"][:1]
                assert shape(body) == shape(r.data), name
            # Both stores went through the same operations: the same money (the
            # package's id is the store's own).
            def money(bal: dict[str, Any]) -> Any:
                return {**bal, "packages": sorted(bal["packages"].values())}

            with Ledger.open(data, lock=False) as other:
                assert money(other.balance(cli_shop.member)) == money(ledger.balance(shop.member))
                assert money(ledger.balance(shop.member))["packages"] == [3]

    asyncio.run(main())


def test_an_operator_without_the_permission_is_refused_alike(tmp_path: Path) -> None:
    async def main() -> None:
        async with two_shops(tmp_path) as (ledger, shop, api, data, cli_shop):
            tech = await api.login("tech", TECH_PW)  # may only sync
            amy = await api.login("amy", AMY_PW)  # a cashier
            cashier = BUILTIN_ROLES["cashier"]
            before, cli_before = snapshot(ledger), store_state(data)
            for name, sample in SAMPLES.items():
                op = TABLE[name]
                who = [(tech, ("tech", TECH_PW))]
                if op.needs and not op.needs & cashier:
                    who.append((amy, ("amy", AMY_PW)))
                for token, typed_as in who:
                    status, body = await http(api, token, op, sample(shop))
                    r = typed(data, typed_as, argv(op, sample(cli_shop)))
                    if not op.needs:  # anyone may read the rules in force
                        assert (status, r.code) == (200, 0), (name, body, r.data)
                        continue
                    assert (status, body["error"]) == (403, "permission_denied"), (name, body)
                    assert (r.code, r.data["error"]) == (1, "permission_denied"), name
                    # Both name the operator as they logged in, never by id.
                    assert typed_as[0] in body["message"] and typed_as[0] in r.data["message"]
                    assert body["message"] == r.data["message"], name
            assert snapshot(ledger) == before
            assert store_state(data) == cli_before

    asyncio.run(main())


# Every amount a person types, and the parameters that are its alternatives.
TYPED_AMOUNTS = [(op.name, p.name) for op in TABLE.values() for p in op.params
                 if p.flag is not None and p.schema.get("x-error") == "invalid_amount"
                 and p.schema.get("type") == "string"]


def test_bad_amounts_are_refused_alike_and_change_nothing(tmp_path: Path) -> None:
    assert {n for n, _ in TYPED_AMOUNTS} >= {"topup", "debit", "refund", "rights.transfer",
                                             "package.sell", "correct", "card.issue"}

    async def main() -> None:
        async with two_shops(tmp_path) as (ledger, shop, api, data, cli_shop):
            boss = await api.login("boss", BOSS_PW)
            before, cli_before = snapshot(ledger), store_state(data)
            for name, param in TYPED_AMOUNTS:
                op = TABLE[name]
                rivals = {k for f in op.forms if param in f.keys for k in f.keys} - {param}
                bads = ["12.345", "1e3", "１２", "abc"]
                if param != "change_text":  # a correction is signed; else no sign at all
                    bads += ["-5", "+5"]
                def with_bad(s: Shop, bad: str, name: str = name, param: str = param,
                             rivals: set[str] = rivals) -> Params:
                    p = {k: v for k, v in SAMPLES[name](s).items() if k not in rivals}
                    return {**p, param: bad}

                for bad in bads:
                    status, body = await http(api, boss, op, with_bad(shop, bad))
                    r = typed(data, ("boss", BOSS_PW), argv(op, with_bad(cli_shop, bad)))
                    assert (status, body["error"]) == (400, "invalid_amount"), (name, bad, body)
                    assert (r.code, r.data["error"]) == (1, "invalid_amount"), (name, bad)
            assert snapshot(ledger) == before
            assert store_state(data) == cli_before

    asyncio.run(main())


@pytest.mark.parametrize("op", ["member.add", "member.edit"])
def test_a_phone_typed_wrong_says_what_a_phone_is(op: str) -> None:
    """A phone in full-width digits (an input method's) was refused as "phone must be
    text, not ..." though it was text: the refusal says what a phone is."""
    given = {"member": "01J5Q8ZK3T7XM.SH01"} if op == "member.edit" else {"name": "李"}
    with pytest.raises(InvalidInput, match=r"phone must be a phone number like "
                                           r'13812345678 \(ASCII digits.*not "１３９'):
        operations.validate(TABLE[op], {**given, "phone": "１３９１１１１２２２２"})


def test_describe_gives_one_code_status_and_sentence() -> None:
    from crdtledger.errors import ApprovalRequired, InsufficientFunds, InvalidAmount, LedgerError

    assert operations.describe(InvalidAmount("amount 12.345 has\nthree decimals")) == (
        "invalid_amount", 400, "amount 12.345 has three decimals")
    assert operations.describe(ApprovalRequired("operator 01X.SH01 may not"),
                               {"01X.SH01": "amy"}) == ("approval_required", 403,
                                                        "operator amy may not")
    assert operations.describe(InsufficientFunds("cash", 100, 200))[:2] == (
        "insufficient_funds", 409)
    assert operations.describe(LedgerError())[:2] == ("refused", 422)


# --- the command line's call to a running node ----------------------------------------------


class FakeNode:
    """What the local route needs of a node: its ledger, perform and a token."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self.local_token = "t0ken"
        self.performed: list[str | None] = []

    async def perform(self, op: Callable[[], Any], name: str | None = None) -> Any:
        self.performed.append(name)
        return op()

    def sync_status(self) -> dict[str, Any]:
        return {"node": self.ledger.node, "chain": self.ledger.chain, "peers": []}


def test_the_command_line_sends_a_running_node_the_operation(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch
                                                              ) -> None:
    sent: list[dict[str, Any]] = []
    real_call = local.call

    def spy(node: local.Running, path: str, body: dict[str, Any] | None = None,
            **how: Any) -> dict[str, Any]:
        sent.append({"path": path, "body": body, **how})
        return real_call(node, path, body, **how)

    monkeypatch.setattr(local, "call", spy)

    async def main() -> None:
        ledger = new_ledger(tmp_path, "SH01")  # held open: the node holds the directory
        try:
            shop = furnish(ledger)
            node = FakeNode(ledger)
            root = web.Application()
            root.add_subapp("/local", local.local_app(node))  # type: ignore[arg-type]
            runner = web.AppRunner(root, access_log=None)
            await runner.setup()
            try:
                await web.TCPSite(runner, "127.0.0.1", 0).start()
                port = runner.addresses[0][1]
                data = tmp_path / "sh01"
                local.write_run_file(data, node="SH01", host="127.0.0.1", port=port,
                                     token=node.local_token)
                words = ["debit", "--member", shop.member, "--amount", "12.50"]
                r = await asyncio.to_thread(typed, data, ("amy", AMY_PW), words)
                assert r.code == 0, r.data
                assert ledger.balance(shop.member)["cash"] == 100000 - 20000 - 1250
                assert r.data["op"] == ledger.authenticate("amy", AMY_PW)
                bad = await asyncio.to_thread(typed, data, ("amy", AMY_PW),
                                              ["refund", "--debit", shop.debit])
                assert (bad.code, bad.data["error"]) == (1, "permission_denied")
                assert "amy" in bad.data["message"]
                # A wrong password is refused before anything runs (checked off the loop).
                before = ledger.balance(shop.member)
                wrong = await asyncio.to_thread(typed, data, ("amy", "not-her-password"), words)
                assert (wrong.code, wrong.data["error"]) == (1, "permission_denied")
                assert ledger.balance(shop.member) == before
            finally:
                await runner.cleanup()
        finally:
            ledger.close()
        assert node.performed == ["debit", "refund"]

    asyncio.run(main())
    assert [s["path"] for s in sent] == ["/op", "/op", "/op"]
    assert [s["writes"] for s in sent] == [True, True, True]  # a debit, a refund: writes
    assert sent[0]["body"] == {"op": "debit", "params": {"member": sent[0]["body"]["params"][
        "member"], "yuan": "12.50"}, "operator": "amy", "password": AMY_PW}
