"""What a chain tells people, and when: the notices due at a moment, their texts in
zh-CN and English, their idempotency keys, and which node sends each. Pure: no I/O;
the reads that feed it are crdtledger.outbox's, the sending is peer.notifier's.

Sent once per chain. Every notice has exactly one sender, a node every replica names
the same way from replicated data, so no two branches send it:

- a member's notices (greetings, low balance, expiry) by the member's home branch
  (the profile's `home`);
- an appointment reminder by the branch that confirms the booking (the technician's);
- a branch's daily report by that branch; the chain's by the node that set the rule
  `notifications` (a head office: rules are governance), or the rule's `sender`;
- a broadcast by the node where an operator issued it (one operation, one node).

And that sender sends it once: the key ("daily:CHAIN:2026-12-03",
"birthday:01J..SH01:2026") is written to its outbox before sending and marked sent
after (crdtledger.outbox), and travels with the message (the SMTP Message-ID, the SMS
provider's client reference) so that the one duplicate a crash between send and mark
can cause may be dropped by the provider.

Consent (PIPL art. 13-14, and the Advertising Law art. 43 on commercial messages): a
member's `promo` profile field is "yes" after the member consented, "no" after opting
out, "" when never asked; only "yes" receives anything promotional (greetings,
broadcasts). Service notices (a one-time code, an appointment reminder, low balance,
expiry of what the member paid for) are not promotional.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import date, datetime, timedelta
from typing import Any, NamedTuple

from crdtledger.errors import InvalidInput
from crdtledger.hlc import NODE_ID
from crdtledger.inputs import seen_as
from crdtledger.money import check_amount, format_yuan, half_width

LANGS = ("zh-CN", "en")
CHANNELS = ("email", "sms")
CHAIN = "CHAIN"  # the key's branch for the whole chain's report ("all" in the rule)
HHMM = re.compile(r"^([01][0-9]|2[0-3]):[0-5][0-9]\Z")
EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]{1,190}\.[^@\s]{1,60}\Z")
PHONE_TO = re.compile(r"^\+?[0-9][0-9 -]{4,19}\Z")
# A notice due at a set time is still sent this long after it (a node that was off at
# 21:00 sends the day's report when it starts at 23:00, or at 08:00 the next day), and
# no longer: a node started after a week off does not send a week of stale reports.
GRACE = timedelta(hours=12)
PROMO_VALUES = ("", "yes", "no")
# A member's profile fields for notices (crdtledger.members): an e-mail address, the
# language of their messages, and promotional consent (PROMO_VALUES; "" by default).
NOTICE_FIELDS = ("email", "lang", "promo")


def check_notice_fields(fields: Mapping[str, Any]) -> None:
    """Refuse a member's notice fields that could not be used (already checked text)."""
    email = fields.get("email")
    # Typed in an input method's full width ("ａｂｃ@qq.com"): taken, though it is
    # another mailbox than abc@qq.com, one no mail reaches the member at.
    if email and half_width(str(email)) != email:
        raise InvalidInput(f"email {email!r} is typed in full-width characters: type it "
                           f"as {half_width(str(email))}")
    if email and not EMAIL.match(str(email)):
        raise InvalidInput(f"email {email!r} is not an e-mail address")
    if fields.get("lang") and fields["lang"] not in LANGS:
        raise InvalidInput(f"lang is {' or '.join(LANGS)} or empty")
    if "promo" in fields and fields["promo"] not in PROMO_VALUES:
        raise InvalidInput("promo is yes (consented to promotional messages), no (opted "
                           "out) or empty (never asked: nothing promotional)")

# The rule `notifications` (crdtledger.rules): the chain's, replicated; the gateways'
# addresses and secrets are each node's own (peer.gateways).
DEFAULT_RULE: dict[str, Any] = {
    "language": "zh-CN",  # of the owner's reports, and of members with no `lang`
    "shop": "",  # the name greetings sign with ("" = the chain's id)
    # The owner's daily reports: [{"branch": "all" | NODE, "at": "21:00",
    # "to": ["owner@example.com", "+8613800000000"]}]
    "daily": [],
    "greet_at": "10:00",  # birthday/anniversary greetings and expiry notices go out
    "low_balance": 5000,  # fen: told when a debit takes stored value below it; 0 = never
    "expiry_days": 7,  # points and coupons expiring within this many days
    "remind_minutes": 120,  # appointment reminders this long before
    "sender": "",  # the node sending the chain's report ("" = the one that set the rule)
}


class Notice(NamedTuple):
    key: str  # the idempotency key
    kind: str  # daily, birthday, anniversary, low_balance, expiry, reminder, broadcast
    sender: str  # the node that sends it
    channel: str  # email | sms
    to: str
    subject: str
    body: str
    member: str = ""  # "" for the owner's report
    promotional: bool = False


# --- the rule ---------------------------------------------------------------------------


def _req(ok: bool, what: str) -> None:
    if not ok:
        raise InvalidInput(what)  # rules.py says which rule


def check_rule(body: Any) -> None:
    """Refuse a rule `notifications` that could not work, naming the setting."""
    _req(isinstance(body, dict), "the rule is a map")
    unknown = sorted(set(body) - set(DEFAULT_RULE))
    _req(not unknown, f"unknown setting {unknown[0] if unknown else ''!r}; settings: "
         f"{', '.join(DEFAULT_RULE)}")
    rule = {**DEFAULT_RULE, **body}
    _req(rule["language"] in LANGS, f"language is one of {', '.join(LANGS)}")
    _req(isinstance(rule["shop"], str) and len(rule["shop"]) <= 40,
         "shop is a name of at most 40 characters")
    _req(isinstance(rule["greet_at"], str) and bool(HHMM.match(rule["greet_at"])),
         f"greet_at is a time like 10:00, not {rule['greet_at']!r}")
    for k, top in (("low_balance", None), ("expiry_days", 365), ("remind_minutes", 7 * 1440)):
        v = rule[k]
        _req(isinstance(v, int) and not isinstance(v, bool) and v >= 0,
             f"{k} is a whole number, zero or more, not {v!r}")
        if top is not None:
            _req(v <= top, f"{k} is at most {top}")
    if rule["low_balance"]:
        check_amount(rule["low_balance"])
    _req(isinstance(rule["sender"], str) and (
        rule["sender"] == "" or bool(NODE_ID.match(rule["sender"]))),
        f"sender is a node id like HQ, not {rule['sender']!r}")
    daily = rule["daily"]
    _req(isinstance(daily, list) and len(daily) <= 50, "daily is a list of at most 50 reports")
    seen: set[str] = set()
    for d in daily:
        _req(isinstance(d, dict) and set(d) <= {"branch", "at", "to"},
             "each daily report is {branch, at, to}")
        branch = d.get("branch", "all")
        _req(isinstance(branch, str) and (branch == "all" or bool(NODE_ID.match(branch))),
             f"a report's branch is all or a node id like SH01, not {branch!r}")
        _req(branch not in seen, f"two daily reports for {branch}")
        seen.add(branch)
        _req(isinstance(d.get("at"), str) and bool(HHMM.match(d["at"])),
             f"the report of {branch} is at a time like 21:00, not {d.get('at')!r}")
        to = d.get("to")
        _req(isinstance(to, list) and 0 < len(to) <= 10,
             f"the report of {branch} goes to 1 to 10 addresses")
        for a in to:
            _req(isinstance(a, str) and channel_of(a) is not None,
                 f"{a!r} is neither an e-mail address nor a phone number")


def check_branches(body: Any, branches: Any) -> None:
    """Refuse a daily report of a branch the rule `branches` (`branches`, as in force)
    does not name: SH1 for SH01 was taken, and its report, due at no node, never
    came, nor did anything say so. Without a branches rule the chain has not said
    which branches it has (a new branch may not have synced yet): any node id is
    taken. After check_rule."""
    if not isinstance(branches, dict) or not branches:
        return
    for d in body.get("daily") or ():
        branch = d.get("branch", "all")
        _req(branch == "all" or branch in branches,
             f"the daily report of {branch}: no branch {branch} is in the rule branches "
             f"({', '.join(sorted(branches))}), so it would never be sent; name one of "
             "them, or all, or add the branch to the rule branches first")


def rule_of(body: Mapping[str, Any] | None) -> dict[str, Any]:
    return {**DEFAULT_RULE, **(body or {})}


def channel_of(address: str) -> str | None:
    if EMAIL.match(address):
        return "email"
    if PHONE_TO.match(address):
        return "sms"
    return None


# --- templates -----------------------------------------------------------------------------

# kind -> language -> (subject, body), str.format fields named in each.
TEMPLATES: dict[str, dict[str, tuple[str, str]]] = {
    "daily": {
        "zh-CN": ("{branch_name} 营业日报 {day}",
                  "{day} {branch_name}\n当天新增会员 {new_members} 人\n当天总销售额 {sales}\n"
                  "当天充值实收 {topup_cash}（{topups} 笔）\n当天售卡 {cards_sold} 张，"
                  "金额 {card_sales}\n当天退款 {refunds}，退会退款 {exit_refunds}\n"
                  "收款方式（充值加收银，收银已减退款和退会退款）：\n{by_method}"),
        "en": ("Daily report {day}: {branch_name}",
               "{day} {branch_name}\nNew members: {new_members}\nSales: {sales}\n"
               "Top-up cash received: {topup_cash} ({topups} top-ups)\n"
               "Cards sold: {cards_sold}, for {card_sales}\n"
               "Refunds: {refunds}; exits paid back: {exit_refunds}\n"
               "By payment method (top-ups and the till, the till less refunds and "
               "exits):\n{by_method}"),
    },
    "birthday": {
        "zh-CN": ("生日快乐", "{name}，{shop}祝您生日快乐！"),
        "en": ("Happy birthday", "Dear {name}, {shop} wishes you a happy birthday!"),
    },
    "anniversary": {
        "zh-CN": ("纪念日快乐", "{name}，{shop}祝您纪念日快乐！"),
        "en": ("Happy anniversary", "Dear {name}, {shop} wishes you a happy anniversary!"),
    },
    "low_balance": {
        "zh-CN": ("余额提醒", "{name}，您的会员储值余额为 {balance}，已低于 {threshold}。"),
        "en": ("Low balance", "Dear {name}, your stored value is {balance}, below "
               "{threshold}."),
    },
    "expiry": {
        "zh-CN": ("到期提醒", "{name}，您的{what_zh}即将到期，请及时使用。"),
        "en": ("Expiring soon", "Dear {name}, your {what_en} expire soon."),
    },
    "reminder": {
        "zh-CN": ("预约提醒", "{name}，您预约的{service}将于 {at} 在 {branch} 开始。"),
        "en": ("Appointment reminder", "Dear {name}, your {service} starts at {at} at "
               "{branch}."),
    },
    "otp": {
        "zh-CN": ("验证码", "您的验证码是 {code}，{minutes} 分钟内有效。请勿告诉他人。"),
        "en": ("Your sign-in code", "Your code is {code}, valid for {minutes} minutes. "
               "Do not share it."),
    },
}
PROMOTIONAL = frozenset({"birthday", "anniversary", "broadcast"})


def render(kind: str, lang: str, **fields: Any) -> tuple[str, str]:
    """A notice's subject and body in `lang` (English when a language is unknown)."""
    subject, body = TEMPLATES[kind].get(lang) or TEMPLATES[kind]["en"]
    return subject.format(**fields), body.format(**fields)


def lang_of(profile: Mapping[str, Any], rule: Mapping[str, Any]) -> str:
    lang = profile.get("lang") or rule.get("language") or "zh-CN"
    return str(lang) if lang in LANGS else "zh-CN"


# --- who may be told what, and how -------------------------------------------------------


def may_receive(profile: Mapping[str, Any], promotional: bool, left: bool) -> bool:
    """Deleted, erased and exited members get nothing; only a member who consented
    gets promotion. `left`: whether she has left (退会) by the decisions
    (Membership.has_left), which the caller asks: not the profile's `exited` flag,
    which any branch may set (her receipts and reminders stopped) or clear (a member
    who left was sent promotion again)."""
    if (profile.get("deleted") or profile.get("erased") or left
            or profile.get("merged_into")):  # a merged duplicate: its survivor is told
        return False
    return not promotional or profile.get("promo") == "yes"


def contact(profile: Mapping[str, Any], channels: Iterable[str]) -> tuple[str, str] | None:
    """(channel, address) to reach a member through: e-mail if the member gave one and
    the node can send mail, else SMS to the phone; None if neither."""
    have = set(channels)
    email = str(profile.get("email") or "")
    if "email" in have and EMAIL.match(email):
        return "email", email
    phone = str(profile.get("phone") or "")
    if "sms" in have and PHONE_TO.match(phone):
        return "sms", phone
    return None


def _member_notice(kind: str, key: str, sender: str, member: str,
                   profile: Mapping[str, Any], left: bool, rule: Mapping[str, Any],
                   channels: Iterable[str], **fields: Any) -> Notice | None:
    promotional = kind in PROMOTIONAL
    if not may_receive(profile, promotional, left):
        return None
    reach = contact(profile, channels)
    if reach is None:
        return None
    subject, body = render(kind, lang_of(profile, rule), name=profile.get("name", ""),
                           **fields)
    return Notice(key, kind, sender, reach[0], reach[1], subject, body, member, promotional)


# --- when ------------------------------------------------------------------------------


def _at(day: date, hhmm: str, tz: Any) -> datetime:
    h, m = map(int, hhmm.split(":"))
    return datetime(day.year, day.month, day.day, h, m, tzinfo=tz)


def due_day(hhmm: str, now: datetime) -> date | None:
    """The day whose `hhmm` has passed within GRACE of `now` (a zone-aware local
    time), else None: today's once its time came, or yesterday's still."""
    for day in (now.date(), now.date() - timedelta(days=1)):
        at = _at(day, hhmm, now.tzinfo)
        if at <= now < at + GRACE:
            return day
    return None


def chain_sender(rule: Mapping[str, Any], rule_id: str) -> str:
    """The node that sends the chain-wide report: the rule's `sender`, else the node
    that wrote the rule version in force (its id ends with the writer's node id)."""
    return str(rule.get("sender") or rule_id.rpartition(".")[2])


class DailyDue(NamedTuple):
    branch: str  # "all" or a node id
    day: str
    to: tuple[str, ...]

    @property
    def key(self) -> str:
        return f"daily:{CHAIN if self.branch == 'all' else self.branch}:{self.day}"


def daily_due(rule: Mapping[str, Any], rule_id: str, node: str, now: datetime
              ) -> list[DailyDue]:
    """The owner's reports this node sends at `now` (local time)."""
    out = []
    for d in rule.get("daily", ()):
        branch = d.get("branch", "all")
        sender = chain_sender(rule, rule_id) if branch == "all" else branch
        if sender != node:
            continue
        day = due_day(d["at"], now)
        if day is not None:
            out.append(DailyDue(branch, day.isoformat(), tuple(d["to"])))
    return out


def daily_notices(due: DailyDue, report: Mapping[str, Any], rule: Mapping[str, Any],
                  branch_name: str, channels: Iterable[str],
                  methods: Mapping[str, str] | None = None) -> list[Notice]:
    """The report `report` (crdtledger.views.daily_report) to each of its addresses
    whose channel this node has; the key names the address too, so that each is
    sent once. `methods`: the payment methods the report names, code -> name in its
    language, in the order said (crdtledger.views.methods_in)."""
    lang = str(rule.get("language") or "zh-CN")
    subject, body = render(
        "daily", lang, day=due.day, branch_name=branch_name,
        new_members=report["new_members"], sales=format_yuan(report["sales"]),
        topup_cash=format_yuan(report["topup_cash"]), topups=report["topups"],
        cards_sold=report["cards_sold"], card_sales=format_yuan(report["card_sales"]),
        refunds=format_yuan(report["refunds"]),
        exit_refunds=format_yuan(report["exit_refunds"]),
        by_method=_by_method(report, methods or {}, lang))
    have = set(channels)
    out = []
    for to in due.to:
        channel = channel_of(to)
        if channel in have:
            out.append(Notice(f"{due.key}:{to}", "daily", "", str(channel), to, subject,
                              body))
    return out


def _by_method(report: Mapping[str, Any], names: Mapping[str, str], lang: str) -> str:
    """The till's takings by payment method, a line each, as the back office's 收款方式
    shows them: the owner counts the drawer and the payment apps by it, and the mail
    said only the cash of top-ups (an exit paid back in cash left the drawer short
    with nothing to say why)."""
    topups, till = report["topup_by_method"], report["till_by_method"]
    zh = lang == "zh-CN"
    lines = []
    for code, name in names.items():
        t, s = int(topups.get(code, 0)), int(till.get(code, 0))
        lines.append(f"  {name} {format_yuan(t + s)}（充值 {format_yuan(t)}，收银 "
                     f"{format_yuan(s)}）" if zh else
                     f"  {name} {format_yuan(t + s)} (top-ups {format_yuan(t)}, till "
                     f"{format_yuan(s)})")
    return "\n".join(lines) or ("  无" if zh else "  none")


def greetings_due(rule: Mapping[str, Any], now: datetime) -> str | None:
    """The day whose greetings and expiry notices are due at `now`, if any."""
    day = due_day(str(rule["greet_at"]), now)
    return None if day is None else day.isoformat()


def _same_day(partial: str, day: str) -> bool:
    """A birthday like 1990-05-17 or 05-17 falls on `day` (29 Feb on 28 Feb otherwise)."""
    if not partial:
        return False
    md = partial[-5:]
    if md == day[5:]:
        return True
    year = int(day[:4])
    leap = year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
    return md == "02-29" and day[5:] == "02-28" and not leap


def member_day_notices(node: str, day: str, members: Iterable[Mapping[str, Any]],
                       rule: Mapping[str, Any], channels: Sequence[str], shop: str
                       ) -> list[Notice]:
    """Greetings and expiry notices of `day` for the members whose home is `node`.
    Each member: {"id", "profile", "left" (Membership.has_left), "expiring": [{"what":
    points|coupon, "n" or "terms", "expires"}]} (what expires within the rule's
    expiry_days, read by the caller)."""
    out: list[Notice] = []
    year = day[:4]
    for m in members:
        p, mid = m["profile"], str(m["id"])
        if p.get("home") != node:
            continue
        for kind in ("birthday", "anniversary"):
            if _same_day(str(p.get(kind) or ""), day):
                n = _member_notice(kind, f"{kind}:{mid}:{year}", node, mid, p, m["left"], rule,
                                   channels, shop=shop)
                if n:
                    out.append(n)
        # One notice a day for all that expires: one per coupon let another branch
        # (a liar, at no cost) issue 200 coupons of 0.01 expiring tomorrow and have
        # the member's home branch send 200 text messages, every member, every day.
        expiring = sorted(m.get("expiring", ()), key=lambda x: str(x["expires"]))
        if expiring:
            zh, en = [], []
            for x in expiring[:EXPIRING_NAMED]:
                if x["what"] == "points":
                    zh.append(f"{x['n']} 积分（{x['expires']}）")
                    en.append(f"{x['n']} points ({x['expires']})")
                else:
                    zh.append(f"优惠券（{x['terms']}，{x['expires']}）")
                    en.append(f"coupon ({x['terms']}, {x['expires']})")
            if len(expiring) > EXPIRING_NAMED:
                zh.append(f"等 {len(expiring)} 项")
                en.append(f"and {len(expiring) - EXPIRING_NAMED} more")
            n = _member_notice("expiry", f"expiry:{mid}:{day}", node, mid, p, m["left"], rule,
                               channels,
                               what_zh="、".join(zh), what_en=", ".join(en),
                               expires=expiring[0]["expires"])
            if n:
                out.append(n)
    return out


# What one expiry notice names at most (the rest counted).
EXPIRING_NAMED = 3


def low_balance_notices(node: str, debits: Iterable[Mapping[str, Any]],
                        rule: Mapping[str, Any], channels: Sequence[str]) -> list[Notice]:
    """After a debit took a member's stored value (cash + bonus) below the rule's
    low_balance: each debit {"entry", "member", "profile", "left", "paid" (fen taken from
    stored value), "balance" (cash + bonus now), "day" (its own)}. Told when the
    balance before this debit was at or above the threshold, and at most once a day
    per member (the notice's key names the day): any branch's debit counts, and a
    branch that lies could otherwise raise a member's bonus and take it below the
    threshold again and again, each time a message the home branch pays for."""
    threshold = int(rule.get("low_balance") or 0)
    out: list[Notice] = []
    if threshold <= 0:
        return out
    told: set[str] = set()
    for d in debits:
        p = d["profile"]
        key = f"low_balance:{d['member']}:{d['day']}"
        if p.get("home") != node or key in told:
            continue
        if not d["balance"] < threshold <= d["balance"] + d["paid"]:
            continue
        n = _member_notice("low_balance", key, node, str(d["member"]), p, d["left"], rule,
                           channels,
                           balance=format_yuan(d["balance"]), threshold=format_yuan(threshold))
        if n:
            told.add(key)
            out.append(n)
    return out


def reminder_notices(node: str, bookings: Iterable[Mapping[str, Any]],
                     rule: Mapping[str, Any], channels: Sequence[str]) -> list[Notice]:
    """Reminders of confirmed bookings starting soon, sent by the booking's branch
    (the one that confirmed it; a booking still pending there is not reminded of):
    crdtledger.bookings' views {"booking", "member", "branch", "service",
    "service_name", "at" (local), "status"} with the member's "profile" and "left"
    and the branch's "branch_name"."""
    out: list[Notice] = []
    for b in bookings:
        if b.get("branch") != node or b.get("status", "confirmed") != "confirmed":
            continue
        n = _member_notice("reminder", f"reminder:{b['booking']}", node, str(b["member"]),
                           b["profile"], b["left"], rule, channels,
                           service=b.get("service_name") or b.get("service", ""),
                           at=str(b.get("at", "")).replace("T", " "),
                           branch=b.get("branch_name") or b["branch"])
        if n:
            out.append(n)
    return out


# --- segments and broadcasts -----------------------------------------------------------


SEGMENT_KEYS = ("level", "home", "dormant_days", "tags")


def check_segment(segment: Mapping[str, Any]) -> None:
    unknown = sorted(set(segment) - set(SEGMENT_KEYS))
    if unknown:
        raise InvalidInput(f"unknown segment field {unknown[0]!r}; one of "
                           f"{', '.join(SEGMENT_KEYS)}")


def in_segment(m: Mapping[str, Any], segment: Mapping[str, Any], today: str) -> bool:
    """Does member `m` ({"profile", "level", "last_visit" (a day or "")}) fall in the
    segment? Every given criterion must hold: level name, home branch, no visit in
    the last dormant_days days, every tag."""
    p = m["profile"]
    # Levels and tags as a reader sees them: "ＶＩＰ" typed by one cashier's input method
    # and "vip" by another are the owner's VIP, who reached only those typed "VIP".
    if segment.get("level") and seen_as(str(m.get("level") or "")) != seen_as(
            str(segment["level"])):
        return False
    if segment.get("home") and p.get("home") != segment["home"]:
        return False
    days = segment.get("dormant_days")
    if days:
        since = (date.fromisoformat(today) - timedelta(days=int(days))).isoformat()
        if (m.get("last_visit") or "") >= since:
            return False
    held = {seen_as(t) for t, on in (p.get("tags") or {}).items() if on}
    return all(seen_as(t) in held for t in segment.get("tags", ()))


def broadcast_notices(broadcast: str, node: str, members: Iterable[Mapping[str, Any]],
                      subject: str, text: str, rule: Mapping[str, Any],
                      channels: Sequence[str]) -> tuple[list[Notice], int]:
    """A broadcast's notices (promotional: consenting members only) and how many
    members of the segment were left out for want of consent or a contact. Each
    member {"id", "profile", "left"}; `{name}` in the text is the member's name."""
    out: list[Notice] = []
    skipped = 0
    for m in members:
        p, mid = m["profile"], str(m["id"])
        reach = contact(p, channels) if may_receive(p, True, m["left"]) else None
        if reach is None:
            skipped += 1
            continue
        body = text.replace("{name}", str(p.get("name", "")))
        out.append(Notice(f"broadcast:{broadcast}:{mid}", "broadcast", node, reach[0],
                          reach[1], subject, body, mid, True))
    return out, skipped
