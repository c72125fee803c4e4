"""Realistic demo data for the three-branch chain, written before the nodes start.

The three branch stores are opened side by side in this process, each with a clock
the seeding moves through the past in chronological order (`Ledger.open(now_ms=...)`),
so every entry carries the time it would have had: members who registered over the
last weeks, then a few days of top-ups, services, packages, points, a refund, a lost
card, and members served at branches other than their own. The stores are synced in
memory with the same state-vector diffs the nodes exchange, and a branch short of a
member's rights gets them the way a running node would (`Ledger.grant_rights` at the
holder), so the settlement statement shows what the branches owe each other.

Everything is a function of the seed and of today's date, so two fresh demos hold the
same members and the same history shifted to their day.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from functools import partial
from pathlib import Path
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

from crdtledger import bookings, views
from crdtledger.errors import InsufficientFunds, RightsElsewhere
from crdtledger.ledger import Ledger
from crdtledger.model import RULE_KINDS

T = TypeVar("T")

BRANCHES = {"SH01": "南京西路店", "SH02": "徐家汇店", "HZ01": "杭州西湖店"}
TIMEZONE = "Asia/Shanghai"
OWNER = ("demo", "demo1234")  # printed by the demo: the login of a new user
CASHIER = ("cashier", "cashier1")
# A manager: the second person who approves the owner's large corrections and top-ups
# (nobody approves their own).
MANAGER = ("manager", "manager1")
# The UID of the virtual PC/SC card in tests/vcard.py's example (`--uid 04A1B2C3`): inserting
# it while the demo runs shows 张伟 on the counter.
VIRTUAL_CARD_UID = "04A1B2C3"

# The goods the shops sell over the counter (code, name, unit, price, cost, barcode,
# points price, low-stock line), and what each branch bought in before the history.
GOODS: list[tuple[str, str, str, int, int, str, int, int]] = [
    ("G01", "薰衣草精油", "瓶", 8800, 3000, "6901234567892", 1800, 5),
    ("G02", "玫瑰精油", "瓶", 12800, 4500, "6901234567908", 0, 3),
    ("G03", "艾草足浴包", "盒", 2500, 800, "6901234567915", 500, 10),
    ("G04", "补水面膜", "盒", 6800, 2200, "6901234567922", 0, 5),
    ("G05", "红枣养生茶", "袋", 3800, 1200, "6901234567939", 800, 5),
]
GOODS_STOCKED = {"SH01": 20, "SH02": 14, "HZ01": 10}

SERVICES: dict[str, dict[str, Any]] = {
    # minutes: how long a booking holds a technician (crdtledger.bookings)
    "FOOT60": {"name": "足疗 60 分钟", "price": 12800, "minutes": 60},
    "FOOT90": {"name": "足疗 90 分钟", "price": 16800, "minutes": 90},
    "BODY60": {"name": "全身推拿 60 分钟", "price": 15800, "minutes": 60},
    "BODY90": {"name": "全身按摩 90 分钟", "price": 19800, "minutes": 90},
    "SPA90": {"name": "精油 SPA 90 分钟", "price": 29800, "minutes": 90},
    "HEAD30": {"name": "头疗 30 分钟", "price": 8800, "minutes": 30},
    "CUPPING": {"name": "拔罐", "price": 5800},
    "EAR": {"name": "采耳", "price": 4500},
}
LEVELS = [
    {"name": "普通会员", "threshold": 0, "discount": "1", "points_multiplier": "1"},
    {"name": "银卡", "threshold": 100000, "discount": "0.95", "points_multiplier": "1.2"},
    {"name": "金卡", "threshold": 300000, "discount": "0.9", "points_multiplier": "1.5"},
    {"name": "钻石卡", "threshold": 1000000, "discount": "0.85", "points_multiplier": "2"},
]
PROMOTIONS = [
    {"name": "充500送30", "min": 50000, "bonus": 3000},
    {"name": "充1000送100", "min": 100000, "bonus": 10000},
    {"name": "充3000送400", "min": 300000, "bonus": 40000},
    {"name": "充5000送800", "min": 500000, "bonus": 80000},
]
TOPUPS = (50000, 50000, 100000, 100000, 100000, 200000, 300000, 500000)  # fen

# Members a new user is told to look for: (name, phone, home, card, PIN).
FEATURED = [
    ("张伟", "13812345678", "SH01", "C10001", None),
    ("王芳", "13987654321", "SH02", "C10002", "8888"),
    ("李娜", "13700001111", "HZ01", "C10003", None),
]
FEATURED_NAMES = frozenset(f[0] for f in FEATURED)
SURNAMES = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾萧田董潘袁蔡蒋余杜叶程"
GIVEN_F = ["芳", "娜", "敏", "静", "丽", "艳", "婷", "雪", "慧", "玲", "倩", "颖", "欣怡", "梓涵",
           "雨桐", "晓燕", "佳琪", "思雨", "美玲", "秀英", "海燕", "丹"]
GIVEN_M = ["伟", "强", "磊", "军", "洋", "勇", "杰", "涛", "明", "超", "浩然", "子轩", "宇航",
           "志强", "建国", "俊杰", "国华", "文博", "鹏", "斌", "海波", "立新"]
STRENGTH = ["轻柔", "适中", "适中", "重一点", "很重"]
PREFERRED = ["FOOT60", "FOOT90", "BODY60", "BODY90", "SPA90", "HEAD30"]
TECHNICIANS = {"SH01": ["3号 小王", "7号 阿梅", "12号 老陈"],
               "SH02": ["5号 小周", "8号 阿芳", "15号 老李"],
               "HZ01": ["2号 小叶", "6号 阿杰", "9号 老孙"]}
# Technicians members can book (crdtledger.bookings), each added at its own branch:
# (code, name, services, hours). 小李 T01 at SH02 does 足疗 60 分钟.
BOOKABLE = {"SH01": [("T03", "小王", "FOOT60,FOOT90,HEAD30", "10:00-22:00"),
                     ("T07", "阿梅", "BODY60,BODY90,SPA90", "12:00-22:00")],
            "SH02": [("T01", "小李", "FOOT60,FOOT90,BODY90", "10:00-22:00"),
                     ("T05", "小周", "FOOT60,HEAD30", "10:00-18:00")],
            "HZ01": [("T02", "小叶", "FOOT60,BODY60", "10:00-22:00")]}
TAGS = ["常客", "VIP", "商务", "夜场", "周末"]
NOTES = ["颈椎不好，按肩颈轻一点", "怕冷，空调调高", "喜欢安静，不要推销", "常带朋友来",
         "对精油过敏", ""]

MEMBERS = 60
# Registered at two branches at once (Demo.specials): a duplicate for the owner to merge.
DUPLICATE = ("周敏", "13600002222")
NEW_DURING_HISTORY = 8
HISTORY_DAYS = 5  # full days before today, plus this morning until shortly before now
OPEN, CLOSE = time(10, 0), time(22, 0)


@dataclass
class Clock:
    """The seeding's simulated wall clock, shared by the three stores."""

    now_ms: int = 0

    def __call__(self) -> int:
        return self.now_ms


@dataclass
class Member:
    id: str
    name: str
    home: str
    card: str
    technician: str
    preferred: str


@dataclass
class Seeded:
    """What the demo prints: who to log in as and whom to look for."""

    owner: tuple[str, str] = OWNER
    cashier: tuple[str, str] = CASHIER
    manager: tuple[str, str] = MANAGER
    members: int = 0
    entries: int = 0
    featured: list[tuple[str, str, str, str, str | None]] = field(
        default_factory=lambda: list(FEATURED))
    lost_card: str = ""
    birthdays: list[str] = field(default_factory=list)


class DemoChain:
    """The branch stores opened together, synced in memory."""

    def __init__(self, dirs: Mapping[str, Path], clock: Clock) -> None:
        self.clock = clock
        self.ledgers = {node: Ledger.open(d, now_ms=clock) for node, d in dirs.items()}
        self.tz = ZoneInfo(TIMEZONE)

    def close(self) -> None:
        for ledger in self.ledgers.values():
            ledger.close()

    def at(self, when: datetime) -> None:
        ms = int(when.timestamp() * 1000)
        self.clock.now_ms = max(ms, self.clock.now_ms + 1)  # never backwards

    def sync(self) -> None:
        """One full round: each store sends every other what it lacks. Each sends
        straight to each, so one round leaves all three equal."""
        for a in self.ledgers.values():
            for b in self.ledgers.values():
                if a is b:
                    continue
                b.pull(a, origin="demo seeding")

    def perform(self, node: str, op: Callable[[Ledger], T]) -> T:
        """Run a write at a branch; if its rights sit elsewhere, get them from the holders
        as a running node would (the holder writes the transfer), then run it again."""
        ledger = self.ledgers[node]
        for _ in range(len(self.ledgers)):
            try:
                return op(ledger)
            except RightsElsewhere as short:
                if short.member is None:
                    raise
                for holder in short.holders:
                    self.ledgers[holder].grant_rights(short.member, short.purse, node,
                                                      short.shortfall)
                self.sync()
        return op(ledger)


# The story starts this long before today's history (the members who joined in the
# weeks before it); the branches are enrolled a day before that.
LEAD_DAYS = 45


def enrolled_since() -> datetime:
    """When the demo's branches count as enrolled (their certificates' start): before
    the story's first day, since nothing is booked before a branch was enrolled."""
    return datetime.now(UTC) - timedelta(days=HISTORY_DAYS + LEAD_DAYS + 2)


def seed(dirs: Mapping[str, Path], today: date | None = None, rng_seed: int = 6) -> Seeded:
    """Fill three new branch stores (node id -> data directory) with the demo's data."""
    clock = Clock()
    chain = DemoChain(dirs, clock)
    try:
        return _Story(chain, random.Random(rng_seed), today).run()
    finally:
        chain.close()


class _Story:
    def __init__(self, chain: DemoChain, rng: random.Random, today: date | None) -> None:
        self.chain = chain
        self.rng = rng
        self.now = datetime.now(chain.tz)
        self.today = today or self.now.date()
        self.members: list[Member] = []
        self.operator: dict[str, str] = {}
        self.out = Seeded()
        # How customers pay at the till, from a stream of its own: the story's other
        # draws (who visits, what they buy) stay as they were before methods existed.
        self.till = random.Random(repr(rng.getstate()))  # seeded without drawing
        # Goods sales too (they came after the story was written).
        self.shelf = random.Random(repr(rng.getstate()) + "goods")

    def method(self, rng: random.Random | None = None) -> str:
        """A payment method as a Shanghai shop sees them: mostly WeChat Pay and Alipay."""
        return (rng or self.till).choices(("wechat", "alipay", "cash", "card"), (5, 3, 1, 1))[0]

    def local(self, day: date, at: time) -> datetime:
        return datetime.combine(day, at, self.chain.tz)

    def run(self) -> Seeded:
        start = self.today - timedelta(days=HISTORY_DAYS)
        self.chain.at(self.local(start - timedelta(days=LEAD_DAYS), time(9, 0)))
        self.rules_and_operators()
        self.history(start)
        self.chain.sync()
        # Synced: every branch holds them all, so the first one's count is the chain's.
        first = next(iter(self.chain.ledgers.values()))
        self.out.members = len(views.member_ids(first))
        self.out.entries = views.count_entries(first)
        return self.out

    # --- head office, before the branches open ------------------------------

    def rules_and_operators(self) -> None:
        hq = self.chain.ledgers["SH01"]
        boss = hq.owner
        rules: dict[str, Any] = {"services": SERVICES, "levels": LEVELS,
                                 "promotions": PROMOTIONS}
        if "branches" in RULE_KINDS:  # display names, where the app's rule kind exists
            rules["branches"] = BRANCHES
        # 老带新: 500 points to the referrer once two operators approved (membership).
        rules["referral"] = {"reward": "points", "points": 500}
        for kind, body in rules.items():
            hq.set_rule(boss, kind, body)  # in force from the (simulated) day it is set
        # 签到: a daily check-in at the counter's reader, open around the demo's today.
        hq.set_activity(boss, "CHECKIN", {
            "name": "每日签到送积分", "points": 10, "repeat": "daily", "per_day": 1,
            "from": f"{(self.today - timedelta(days=7)).isoformat()}T09:00",
            "to": f"{(self.today + timedelta(days=60)).isoformat()}T22:00"})
        self.operator["owner"] = hq.add_operator(boss, OWNER[0], OWNER[1], roles=["owner"])
        self.operator["cashier"] = hq.add_operator(boss, CASHIER[0], CASHIER[1],
                                                   roles=["cashier"])
        self.operator["manager"] = hq.add_operator(boss, MANAGER[0], MANAGER[1],
                                                   roles=["manager"])
        for code, name, unit, price, cost, barcode, points_price, low in GOODS:
            hq.add_goods(boss, code, name, price, cost, unit=unit, barcode=barcode,
                         category="精油" if "精油" in name else "养生",
                         points_price=points_price, low_stock=low)
        self.chain.sync()
        for node, techs in BOOKABLE.items():  # at its own branch: only it decides its slots
            for code, name, services, hours in techs:
                branch = self.chain.ledgers[node]
                bookings.add_technician(branch, branch.owner, code, name, services.split(","),
                                        hours)
        for node, qty in GOODS_STOCKED.items():
            for item in GOODS:
                self.chain.ledgers[node].stock_in(self.operator["manager"], item[0], qty,
                                                  supplier="上海芳香供应链")

    def people(self) -> list[tuple[str, str, str, str, str | None]]:
        """(name, phone, home, card, PIN) of every member, the featured ones first."""
        rng = self.rng
        people = list(FEATURED)
        names = {p[0] for p in people}
        phones = {p[1] for p in people}
        homes = ["SH01"] * 5 + ["SH02"] * 4 + ["HZ01"] * 3
        while len(people) < MEMBERS:
            female = rng.random() < 0.6
            name = rng.choice(SURNAMES) + rng.choice(GIVEN_F if female else GIVEN_M)
            phone = rng.choice(["13", "15", "18", "17", "19"]) + "".join(
                rng.choice("0123456789") for _ in range(9))
            if name in names or phone in phones:
                continue
            names.add(name)
            phones.add(phone)
            n = len(people) + 1
            pin = f"{rng.randrange(10000):04d}" if n % 9 == 0 else None
            people.append((name, phone, rng.choice(homes), f"C1{n:04d}", pin))
        return people

    def new_member(self, name: str, phone: str, home: str, card: str, pin: str | None,
                   birthday_today: bool = False, anniversary_today: bool = False) -> None:
        rng = self.rng
        ledger = self.chain.ledgers[home]
        female = name[1:] in GIVEN_F
        year = rng.choice([1976, 1980, 1984, 1988, 1992, 1996, 2000])  # leap: 02-29 too
        if birthday_today:
            birthday = f"{year}-{self.today:%m-%d}"
            self.out.birthdays.append(name)
        else:
            birthday = (date(year, 1, 1) + timedelta(days=rng.randrange(365))).isoformat()
        technician = rng.choice(TECHNICIANS[home])
        preferred = rng.choice(PREFERRED)
        wedding = min(year + rng.randrange(24, 32), self.today.year - 1)
        anniversary = ""
        if anniversary_today:
            anniversary = f"{wedding}-{self.today:%m-%d}"
        elif rng.random() < 0.3:
            anniversary = f"{wedding}-{rng.randrange(1, 13):02d}-{rng.randrange(1, 29):02d}"
        mid = ledger.add_member(
            self.operator["cashier"], name=name, phone=phone, gender="F" if female else "M",
            birthday=birthday, anniversary=anniversary,
            notes=rng.choice(NOTES), tags=rng.sample(TAGS, rng.randrange(0, 3)),
            prefs={"strength": rng.choice(STRENGTH), "service": SERVICES[preferred]["name"],
                   "technician": technician},
            # Promotional consent (crdtledger.notices): the featured members (who have
            # an e-mail address too) and those with a birthday today gave it, so the
            # demo's greetings and broadcasts reach someone; the rest never were asked.
            promo="yes" if birthday_today or name in FEATURED_NAMES else "",
            email=f"c{card[1:]}@demo.example" if name in FEATURED_NAMES else "")
        if name == "张伟":  # first, so the counter shows his printed card as the current one
            ledger.issue_card(self.operator["cashier"], mid, VIRTUAL_CARD_UID)
        ledger.issue_card(self.operator["cashier"], mid, card, pin=pin)
        ledger.topup(self.operator["cashier"], mid, rng.choice(TOPUPS), pay=self.method())
        self.members.append(Member(mid, name, home, card, technician, preferred))

    def shop_time(self) -> time:
        minutes = self.rng.randrange(OPEN.hour * 60, CLOSE.hour * 60 - 30)
        return time(minutes // 60, minutes % 60, self.rng.randrange(60))

    # --- the days shown ------------------------------------------------------

    def history(self, start: date) -> None:
        """Everything that happens, as timed events run in order of time: members
        joining (most in the weeks before, a few on the days shown), visits at each
        branch in opening hours, and the special moments."""
        rng = self.rng
        events: list[tuple[datetime, Callable[[], None]]] = []
        birthdays_today = {5, 17, 33}  # a few members have their birthday today
        anniversary_today = 41
        for i, person in enumerate(self.people()):
            before = i < MEMBERS - NEW_DURING_HISTORY
            day = (start - timedelta(days=rng.randrange(1, 40)) if before
                   else start + timedelta(days=rng.randrange(HISTORY_DAYS)))
            events.append((self.local(day, self.shop_time()),
                           partial(self.new_member, *person, i in birthdays_today,
                                   i == anniversary_today)))
        for d in range(HISTORY_DAYS + 1):
            day = start + timedelta(days=d)
            for node in BRANCHES:
                for _ in range(rng.randrange(8, 15)):
                    events.append((self.local(day, self.shop_time()), partial(self.visit, node)))
        shelf = self.shelf
        for d in range(HISTORY_DAYS + 1):
            day = start + timedelta(days=d)
            for node in BRANCHES:
                for _ in range(shelf.randrange(1, 4)):
                    at = time(shelf.randrange(10, 21), shelf.randrange(60))
                    events.append((self.local(day, at), partial(self.sell_goods, node)))
        events += self.specials(start)
        for when, action in sorted(events, key=lambda e: e[0]):
            if when >= self.now - timedelta(minutes=10):
                continue  # today's history ends shortly before the demo starts
            self.chain.at(when)
            action()

    def visitor(self, node: str) -> Member:
        """Mostly the branch's own members. SH01's members often cross town to SH02
        (so SH01 ends up owing SH02), a few come the other way, and some Shanghai
        members visit Hangzhou."""
        rng = self.rng
        own = [m for m in self.members if m.home == node]
        visitors = {"SH01": ("SH02",), "SH02": ("SH01",), "HZ01": ("SH01", "SH02")}[node]
        others = [m for m in self.members if m.home in visitors]
        cross = {"SH01": 0.06, "SH02": 0.35, "HZ01": 0.1}[node]
        return rng.choice(others if rng.random() < cross else own)

    def visit(self, node: str) -> None:
        rng = self.rng
        m = self.visitor(node)
        ledger = self.chain.ledgers[node]
        if m.home != node:
            self.chain.sync()  # the visiting member's records reach this branch first
        cashier = self.operator["cashier"]
        balance = ledger.balance(m.id)
        roll = rng.random()
        try:
            if roll < 0.12 or (balance["cash"] + balance["bonus"] < 20000 and roll < 0.5):
                ledger.topup(cashier, m.id, rng.choice(TOPUPS), pay=self.method())
            elif roll < 0.17 and m.home == node:
                ledger.sell_package(cashier, m.id, "FOOT60", 10, 108000, pay=self.method())
            elif roll < 0.22 and balance["points"] >= 300 and m.home == node:
                self.chain.perform(node, lambda lg: lg.redeem_points(
                    cashier, m.id, 300, gift=rng.choice(["精油小样", "足浴包", "毛巾礼盒"])))
            else:
                self.serve(node, m, balance)
        except InsufficientFunds:
            pass  # a rare combination the story does not need

    def sell_goods(self, node: str) -> None:
        """A goods sale at the till: to a walk-in customer (散客) or a member of the
        branch, paid at the till."""
        shelf = self.shelf
        code = shelf.choice(GOODS)[0]
        own = [m.id for m in self.members if m.home == node]
        member = shelf.choice(own) if own and shelf.random() < 0.5 else None
        qty, pay = shelf.choice((1, 1, 1, 2)), self.method(shelf)
        with suppress(InsufficientFunds):  # sold out: the shelf is empty until restocked
            self.chain.perform(node, lambda lg: lg.sell_goods(
                self.operator["cashier"], code, qty, member=member, pay=pay))

    def serve(self, node: str, m: Member, balance: Mapping[str, Any]) -> None:
        cashier = self.operator["cashier"]
        service = m.preferred if self.rng.random() < 0.7 else self.rng.choice(list(SERVICES))
        if service == "FOOT60" and any(v > 0 for v in balance["packages"].values()):
            pay = "package"
        else:
            pay = "stored"
        try:
            self.chain.perform(node, lambda lg: lg.debit(cashier, m.id, service=service,
                                                         pay=pay))
        except InsufficientFunds:
            self.chain.perform(node, lambda lg: lg.debit(cashier, m.id, service=service,
                                                         pay=self.method()))
        if self.rng.random() < 0.15:  # 加钟: an extra for the same visit
            extra = self.rng.choice(["CUPPING", "EAR", "HEAD30"])
            with suppress(InsufficientFunds):
                self.chain.perform(node, lambda lg: lg.debit(cashier, m.id, service=extra))

    def specials(self, start: date) -> list[tuple[datetime, Callable[[], None]]]:
        """The moments a demo should show: a refund, a lost card and a replaced one,
        points turned into stored value, a top-up big enough for the top promotion."""
        def named(name: str) -> Member:  # looked up when the moment comes
            return next(m for m in self.members if m.name == name)

        def other(home: str) -> Member:
            featured = {f[0] for f in FEATURED}
            return next(m for m in self.members if m.home == home and m.name not in featured)

        cashier, owner = self.operator["cashier"], self.operator["owner"]
        ledgers = self.chain.ledgers
        out: list[tuple[datetime, Callable[[], None]]] = []

        served: dict[str, Any] = {}

        def serve_wang() -> None:
            served.update(self.chain.perform("SH02", lambda lg: lg.debit(
                cashier, named("王芳").id, service="BODY90")))

        def refund() -> None:
            # 王芳's 全身按摩 at SH02 ended early: half of it back, by the owner.
            ledgers["SH02"].refund(owner, served["id"], amount=int(served["amount"]) // 2,
                                   reason="技师临时有事，服务只做了一半")

        def lose() -> None:
            lost = other("SH01")
            ledgers["SH01"].report_lost(cashier, lost.card)
            self.out.lost_card = f"{lost.name} ({lost.card})"

        def replace() -> None:
            replaced = other("SH02")
            ledgers["SH02"].report_lost(cashier, replaced.card)
            ledgers["SH02"].replace_card(owner, replaced.card, replaced.card + "R")

        def convert() -> None:
            # 李娜 (or whoever at HZ01 has the most points) turns 500 points into value.
            hz = ledgers["HZ01"]
            who = max((m for m in self.members if m.home == "HZ01"),
                      key=lambda m: (hz.balance(m.id)["points"] >= 500, m.name == "李娜",
                                     hz.balance(m.id)["points"]))
            if hz.balance(who.id)["points"] >= 500:
                self.chain.perform("HZ01", lambda lg: lg.convert_points(cashier, who.id, 500))

        def big_topup() -> None:
            ledgers["SH01"].topup(owner, named("张伟").id, 500000)

        def twice() -> None:
            # The same customer registered at SH01 and at HZ01 before the two had
            # synced (as during a partition): the back office lists them as duplicate
            # members for the owner to merge.
            for node, amount in (("SH01", 100000), ("HZ01", 50000)):
                mid = ledgers[node].add_member(cashier, name=DUPLICATE[0], phone=DUPLICATE[1],
                                               gender="F", home=node)
                ledgers[node].topup(cashier, mid, amount, pay="wechat")

        def referred() -> None:
            # 老带新: 张伟 brought a friend to SH01; the referral waits for its two
            # approvals in the back office (推荐审批, crdtledger.membership).
            # The newcomer: the latest to join SH01 (a referrer joined before them:
            # crdtledger.membership.refer).
            newcomer = [m for m in self.members if m.home == "SH01"
                        and m.name not in FEATURED_NAMES][-1]
            ledgers["SH01"].refer(cashier, newcomer.id, named("张伟").id)

        out.append((self.local(start + timedelta(days=4), time(18, 0)), referred))
        out.append((self.local(start + timedelta(days=1), time(11, 5)), big_topup))
        out.append((self.local(start + timedelta(days=2), time(15, 10)), serve_wang))
        out.append((self.local(start + timedelta(days=2), time(16, 40)), refund))
        out.append((self.local(start + timedelta(days=3), time(19, 30)), lose))
        out.append((self.local(start + timedelta(days=3), time(20, 15)), replace))
        out.append((self.local(start + timedelta(days=4), time(14, 0)), convert))
        out.append((self.local(start + timedelta(days=4), time(17, 20)), twice))
        return out
