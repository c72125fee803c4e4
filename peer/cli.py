"""`crdtledger`: one node's ledger at the shell, for a shop owner and for scripts.

Each invocation opens the node's store, does one thing and closes it. An operation
is reported done only after the store committed it, so the command may be killed
at any moment and whatever it printed as done survives.

Exit codes: 0 done; 1 refused (by the ledger, or a damaged or foreign sync file);
2 usage error (argparse). A refusal is one line on stderr; with --json it is also
``{"error": code, "message": ...}`` on stdout, so scripts read one stream.

Commands are registered in a table (`@command`), each with its own options and a
small handler that calls one `Ledger` method and returns what to print.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sqlite3
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from crdtledger import views
from crdtledger.errors import (
    InvalidAmount,
    InvalidInput,
    LedgerError,
    NotFound,
    PermissionDenied,
    RemoteProtocolError,
)
from crdtledger.ledger import Ledger
from crdtledger.model import CARD_TYPES, MONEY_PURSES, RULE_KINDS
from crdtledger.money import check_count, format_purse, format_yuan, parse_yuan
from crdtledger.storage import backup as backup_store
from crdtledger.syncfile import export_file, import_file
from peer import local
from peer.chain import CA_CERT, enrol, init_chain, load_chain, revocations_rule, revoke
from peer.local import Running

if TYPE_CHECKING:
    from peer.node import Config, Node

PROG = "crdtledger"
ENV_DATA = "CRDTLEDGER_DATA"
ENV_PASSWORD = "CRDTLEDGER_PASSWORD"
EXIT_REFUSED = 1  # argparse owns 2 for usage errors

# How a command uses the store. Views open it without the directory lock, so a
# balance can be read while a daemon (or another CLI) holds the node for writing.
Access = Literal["write", "read"]


# --- the command table ------------------------------------------------------


@dataclass(frozen=True)
class Result:
    data: Any  # printed as JSON with --json
    text: str  # printed for a person otherwise


@dataclass(frozen=True)
class Ctx:
    ledger: Ledger
    operator: str  # operator id the library checks permissions against
    args: argparse.Namespace


class _Adder(Protocol):
    """A parser or an argument group: anything options can be added to."""

    def add_argument(self, *flags: str, **kwargs: Any) -> argparse.Action: ...


ArgSpec = Callable[[_Adder], object]
Handler = Callable[[Ctx], Result]


@dataclass(frozen=True)
class Command:
    path: tuple[str, ...]
    help: str
    args: tuple[ArgSpec, ...]
    handler: Handler
    access: Access


COMMANDS: list[Command] = []


def command(*path: str, help: str, args: Sequence[ArgSpec] = (), access: Access = "write"
            ) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        COMMANDS.append(Command(path, help, tuple(args), fn, access))
        return fn

    return register


def arg(*flags: str, **kwargs: Any) -> ArgSpec:
    return lambda p: p.add_argument(*flags, **kwargs)


def one_of(*specs: ArgSpec, required: bool = True) -> ArgSpec:
    def add(p: _Adder) -> None:
        # Only real parsers make groups; every table entry is added to one.
        assert isinstance(p, argparse.ArgumentParser)
        group = p.add_mutually_exclusive_group(required=required)
        for spec in specs:
            spec(group)

    return add


# --- argument types (argparse turns their ValueErrors into usage errors) -----


def card_number(text: str) -> str:
    # As the ledger stores it (upper-case), so output names the card the same way.
    return text.strip().upper()


def key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected key=value, not {text!r}")
    return key.strip(), value


MEMBER = arg("--member", metavar="ID", required=True, help="member id")
PIN = arg("--pin", help="card PIN, if the card has one")
# Either a member id or a card number (or, to look someone up, a phone number).
_MEMBER_ALT = arg("--member", metavar="ID", help="member id")
_CARD_ALT = arg("--card", metavar="NO", type=card_number, help="card number")
WHO = one_of(_MEMBER_ALT, _CARD_ALT, arg("--phone", help="member's phone number"))
PAYER = one_of(_MEMBER_ALT, _CARD_ALT)
AMOUNT = arg("--amount", required=True, metavar="YUAN", help="amount in yuan, e.g. 12.34")
APPROVER = (
    arg("--approver", metavar="NAME", help="operator approving a large amount"),
    arg("--approver-password", metavar="PW"),
)
PERIOD = (arg("--from", dest="start", metavar="YYYY-MM-DD"),
          arg("--to", dest="end", metavar="YYYY-MM-DD"))


# --- input the ledger judges (refusals, exit 1) -------------------------------


def yuan(text: str, *, allow_zero: bool = False) -> int:
    """A yuan amount for the ledger: exact to the fen, refused (not rounded) otherwise.

    parse_yuan refuses zero, which is right for money moved; a fee or a price may be free.
    """
    if allow_zero and re.fullmatch(r"0+(\.0{1,2})?", text.strip()):
        return 0
    return parse_yuan(text)


def purse_amount(purse: str, text: str) -> int:
    """Money purses take yuan; points and package uses are whole counts."""
    if purse in MONEY_PURSES:
        return yuan(text)
    try:
        return check_count(int(text), purse)
    except ValueError:
        raise InvalidAmount(f"{purse} amount {text!r} is not a whole number") from None


def signed_amount(purse: str, text: str) -> int:
    s = text.strip()
    sign = -1 if s.startswith("-") else 1
    return sign * purse_amount(purse, s[1:] if s[:1] in ("+", "-") else s)


def approver_of(args: argparse.Namespace) -> tuple[str, str] | None:
    if args.approver is None:
        return None
    if args.approver_password is None:
        raise InvalidInput("--approver needs --approver-password")
    return str(args.approver), str(args.approver_password)


def require(c: Ctx, permission: str) -> None:
    """For reads the library leaves to its callers: reports and backups read the
    store without naming an operator, so the CLI checks them here."""
    if permission not in c.ledger.permissions(c.operator):
        name = c.args.operator or c.operator
        raise PermissionDenied(f"operator {name} may not {permission}")


def member_of(c: Ctx) -> str:
    """The member named by --member, --card or --phone (checked to exist)."""
    a = c.args
    if getattr(a, "card", None):
        return str(c.ledger.card(a.card)["member"])
    if getattr(a, "phone", None):
        # Exact match: find_members also matches names and phone tails.
        row = c.ledger.storage.conn.execute(
            "SELECT id FROM members WHERE phone = ?", (a.phone.strip(),)).fetchone()
        if row is None:
            raise NotFound(f"no member with phone {a.phone.strip()}")
        return str(row[0])
    c.ledger.member(a.member)  # NotFound names the unknown id
    return str(a.member)


# --- human output -------------------------------------------------------------


def show_balance(bal: Mapping[str, Any]) -> str:
    line = (f"balance: cash {format_yuan(bal['cash'])}  bonus {format_yuan(bal['bonus'])}"
            f"  points {bal['points']}")
    packages = "  ".join(f"{pid} {left} left" for pid, left in bal["packages"].items() if left)
    return f"{line}\npackages: {packages}" if packages else line


def show_entry(entry: Mapping[str, Any], when: str = "") -> str:
    """One line per ledger entry: what changed in the member's money and points."""
    # A transfer moves rights between branches; the member's money does not change.
    money = 0 if entry["kind"] == "transfer" else sum(
        c for p, _n, c in entry["deltas"] if p in MONEY_PURSES)
    points = sum(c for p, _n, c in entry["deltas"] if p == "points")
    parts = [when, entry["node"], f"{entry['kind']:<10}"]
    if money:
        parts.append(f"{'+' if money > 0 else '-'}{format_yuan(abs(money))}")
    elif entry["kind"] in ("debit", "card", "package") and entry.get("amount"):
        parts.append(f"{format_yuan(entry['amount'])} paid at the till")
    if entry["kind"] == "transfer":
        purse = next(p for p, _n, _c in entry["deltas"])
        parts.append(f"{format_purse(purse, entry['amount'])} {purse} rights "
                     f"{entry['node']}→{entry['to']}")
    elif points:
        parts.append(f"points {points:+d}")
    for key in ("service", "reason", "gift"):
        if entry.get(key):
            parts.append(f"{key} {entry[key]}")
    parts.append(f"[{entry['id']}]")
    return "  ".join(p for p in parts if p)


def done(c: Ctx, entry: Mapping[str, Any], what: str) -> Result:
    """An entry-writing operation: the entry for scripts, the new balance for people."""
    bal = c.ledger.balance(str(entry["member"]))
    return Result(dict(entry), f"{what} [{entry['id']}]\n{show_balance(bal)}")


# --- members ------------------------------------------------------------------

PROFILE = ("gender", "birthday", "anniversary", "notes")


@command("member", "add", help="register a member", args=(
    arg("--name", required=True), arg("--phone", required=True),
    arg("--gender", choices=("F", "M"), default=""), arg("--birthday", default=""),
    arg("--anniversary", default=""), arg("--notes", default=""),
    arg("--tag", action="append", default=[], help="repeatable"),
    arg("--pref", action="append", type=key_value, default=[], metavar="KEY=VALUE",
        help="strength, service or technician; repeatable"),
    arg("--custom", action="append", type=key_value, default=[], metavar="KEY=VALUE"),
))
def member_add(c: Ctx) -> Result:
    a = c.args
    mid = c.ledger.add_member(
        c.operator, name=a.name, phone=a.phone, tags=a.tag, prefs=dict(a.pref),
        custom=dict(a.custom), **{k: getattr(a, k) for k in PROFILE})
    return Result({"member_id": mid}, f"member {a.name} added: {mid}")


@command("member", "show", help="one member's profile, cards and balance", args=(WHO,),
         access="read")
def member_show(c: Ctx) -> Result:
    m = c.ledger.member(member_of(c))
    m["balance"] = c.ledger.balance(m["id"])
    lines = [f"{m['name']}  {m['phone']}  home {m['home']}  level {m['level_info']['name']}"
             f"{'  (deleted)' if m.get('deleted') else ''}  [{m['id']}]"]
    lines += [f"card {k['card_no']} {k['status']}" for k in m["cards"]]
    if m["tags"]:
        lines.append(f"tags: {', '.join(m['tags'])}")
    for label in ("prefs", "custom"):
        if m.get(label):
            lines.append(f"{label}: {', '.join(f'{k}={v}' for k, v in m[label].items())}")
    lines.append(show_balance(m["balance"]))
    return Result(m, "\n".join(lines))


@command("member", "find", help="by card number, phone, phone tail or name (phones masked)",
         args=(arg("query"), arg("--limit", type=int, default=20)), access="read")
def member_find(c: Ctx) -> Result:
    found = c.ledger.find_members(c.args.query, c.args.limit)
    lines = [f"{m['name']}  {m['phone']}  home {m['home']}  [{m['id']}]" for m in found]
    return Result(found, "\n".join(lines) or f"no member matches {c.args.query!r}")


EDITABLE = ("name", "phone", "gender", "birthday", "anniversary", "notes", "home", "level")


@command("member", "edit", help="change profile fields, preferences, tags or level", args=(
    MEMBER, *(arg(f"--{f}") for f in EDITABLE),
    arg("--pref", action="append", type=key_value, default=[], metavar="KEY=VALUE"),
    arg("--custom", action="append", type=key_value, default=[], metavar="KEY=VALUE"),
    arg("--tag-add", action="append", default=[], metavar="TAG"),
    arg("--tag-remove", action="append", default=[], metavar="TAG"),
    arg("--delete", action="store_true", help="mark the member deleted"),
))
def member_edit(c: Ctx) -> Result:
    a = c.args
    fields: dict[str, Any] = {f: getattr(a, f) for f in EDITABLE if getattr(a, f) is not None}
    if a.delete:
        fields["deleted"] = True
    if not (fields or a.pref or a.custom or a.tag_add or a.tag_remove):
        raise InvalidInput("nothing to change: give a field, --pref, --tag-add or --tag-remove")
    c.ledger.edit_member(c.operator, a.member, fields=fields, prefs=dict(a.pref),
                         custom=dict(a.custom), tags_add=a.tag_add, tags_remove=a.tag_remove)
    return Result({"member_id": a.member}, f"member {a.member} updated")


# --- cards --------------------------------------------------------------------


@command("card", "issue", help="issue a card to a member", args=(
    MEMBER, arg("--card", required=True, type=card_number),
    arg("--type", dest="card_type", choices=CARD_TYPES, default="stored_value"), PIN,
    arg("--expiry", default="", metavar="YYYY-MM-DD"),
    arg("--fee", default="0", metavar="YUAN", help="card fee paid at the till"),
))
def card_issue(c: Ctx) -> Result:
    a = c.args
    cid = c.ledger.issue_card(c.operator, a.member, a.card, card_type=a.card_type,
                              pin=a.pin, expiry=a.expiry, fee=yuan(a.fee, allow_zero=True))
    return Result({"card_id": cid, "card_no": a.card}, f"card {a.card} issued [{cid}]")


# 挂失 / 取消挂失 / 退卡: the same shape, one Ledger method each.
CARD_EVENTS: dict[str, tuple[str, str, str]] = {
    "lost": ("report_lost", "reported lost", "report a card lost"),
    "found": ("report_found", "active again", "cancel a loss report"),
    "return": ("return_card", "returned", "take a card back"),
}


def _card_event(method: str, outcome: str) -> Handler:
    def handler(c: Ctx) -> Result:
        cid = getattr(c.ledger, method)(c.operator, c.args.card)
        return Result({"card_id": cid, "card_no": c.args.card}, f"card {c.args.card} {outcome}")

    return handler


for _name, (_method, _outcome, _help) in CARD_EVENTS.items():
    command("card", _name, help=_help, args=(arg("--card", required=True, type=card_number),)
            )(_card_event(_method, _outcome))


@command("card", "replace", help="补卡: a new card for the same member; balances stay", args=(
    arg("--card", required=True, type=card_number, help="the old card"),
    arg("--new", required=True, type=card_number, help="the new card"), PIN,
))
def card_replace(c: Ctx) -> Result:
    a = c.args
    cid = c.ledger.replace_card(c.operator, a.card, a.new, pin=a.pin)
    bal = c.ledger.balance(str(c.ledger.card(a.new)["member"]))
    return Result({"card_id": cid, "card_no": a.new, "replaces": a.card},
                  f"card {a.card} replaced by {a.new} [{cid}]\n{show_balance(bal)}")


# --- money --------------------------------------------------------------------


@command("topup", help="充值: stored value paid for here", args=(PAYER, PIN, AMOUNT, *APPROVER))
def topup(c: Ctx) -> Result:
    a = c.args
    amount = yuan(a.amount)
    member = a.member or str(c.ledger.card(a.card)["member"])  # topup re-checks card and PIN
    entry = c.ledger.topup(c.operator, member, amount, approver=approver_of(a), card=a.card,
                           pin=a.pin)
    bonus = f" + bonus {format_yuan(entry['bonus'])}" if entry.get("bonus") else ""
    return done(c, entry, f"topped up {format_yuan(amount)}{bonus}")


@command("debit", help="扣费: charge an amount or a service from the price list", args=(
    PAYER, PIN,
    one_of(arg("--amount", metavar="YUAN"), arg("--service", metavar="CODE")),
    arg("--qty", type=int, default=1),
    arg("--pay", choices=("stored", "package", "cash"), default="stored"),
    arg("--package", metavar="ID", help="which package to use (default: the first that fits)"),
))
def debit(c: Ctx) -> Result:
    a = c.args
    amount = yuan(a.amount) if a.amount is not None else None
    entry = c.ledger.debit(c.operator, a.member, amount=amount, service=a.service, qty=a.qty,
                           pay=a.pay, package=a.package, card=a.card, pin=a.pin)
    what = f"{a.service} x{a.qty}: " if a.service else ""
    return done(c, entry, f"charged {what}{format_yuan(entry['amount'])} ({a.pay})")


@command("refund", help="退款: reverse all or part of a debit made at this branch", args=(
    arg("--debit", required=True, metavar="ENTRY_ID"),
    one_of(arg("--amount", metavar="YUAN"), arg("--qty", type=int, help="package uses"),
           required=False),
    arg("--reason", default=""),
))
def refund(c: Ctx) -> Result:
    a = c.args
    amount = yuan(a.amount) if a.amount is not None else a.qty
    entry = c.ledger.refund(c.operator, a.debit, amount, reason=a.reason)
    what = f"{entry['qty']} uses" if entry.get("qty") else format_yuan(entry["amount"])
    return done(c, entry, f"refunded {what} of {a.debit}")


@command("history", help="a member's ledger entries, newest first",
         args=(WHO, arg("--limit", type=int, default=50)), access="read")
def history(c: Ctx) -> Result:
    entries = c.ledger.history(member_of(c), c.args.limit)
    tz = c.ledger.storage.tz

    def when(e: Mapping[str, Any]) -> str:
        return datetime.fromtimestamp(e["at"] / 1000, tz).strftime("%Y-%m-%d %H:%M")

    return Result(entries, "\n".join(show_entry(e, when(e)) for e in entries) or "no entries")


@command("balance", help="cash (stored value), bonus, points and packages", args=(WHO,),
         access="read")
def balance(c: Ctx) -> Result:
    bal = c.ledger.balance(member_of(c))
    return Result(bal, show_balance(bal))


PURSE = arg("--purse", default="cash", help="cash, bonus, points or pkg:ID")


@command("rights", "show", help="which branch holds how much of a purse", args=(WHO, PURSE),
         access="read")
def rights_show(c: Ctx) -> Result:
    purse = c.args.purse
    held = c.ledger.rights(member_of(c), purse)
    text = "  ".join(f"{n} {format_purse(purse, v)}" for n, v in held.items())
    return Result(held, f"{purse} rights: {text or 'none held'}")


@command("rights", "transfer", help="give some of this branch's rights to another branch",
         args=(MEMBER, PURSE, arg("--to", required=True, metavar="NODE"), AMOUNT))
def rights_transfer(c: Ctx) -> Result:
    a = c.args
    entry = c.ledger.transfer_rights(c.operator, a.member, a.to, purse_amount(a.purse, a.amount),
                                     purse=a.purse)
    moved = format_purse(a.purse, entry["amount"])
    return done(c, entry, f"moved {moved} of {a.purse} rights {c.ledger.node} → {a.to}")


POINTS = arg("--points", required=True, type=int)


@command("points", "redeem", help="积分兑换: spend points on a gift",
         args=(MEMBER, POINTS, arg("--gift", default="")))
def points_redeem(c: Ctx) -> Result:
    entry = c.ledger.redeem_points(c.operator, c.args.member, c.args.points, c.args.gift)
    return done(c, entry, f"redeemed {c.args.points} points")


@command("points", "convert", help="积分转储值: turn points into bonus value",
         args=(MEMBER, POINTS))
def points_convert(c: Ctx) -> Result:
    entry = c.ledger.convert_points(c.operator, c.args.member, c.args.points)
    return done(c, entry, f"converted {c.args.points} points into {format_yuan(entry['amount'])}")


@command("package", "sell", help="计次卡: sell a number of uses of a service", args=(
    MEMBER, arg("--service", required=True, metavar="CODE"),
    arg("--uses", required=True, type=int),
    arg("--price", required=True, metavar="YUAN"),
    arg("--pay", choices=("cash", "stored"), default="cash"),
))
def package_sell(c: Ctx) -> Result:
    a = c.args
    entry = c.ledger.sell_package(c.operator, a.member, a.service, a.uses,
                                  yuan(a.price, allow_zero=True), pay=a.pay)
    return done(c, entry, f"sold {a.uses} x {a.service} for {format_yuan(entry['amount'])}")


@command("correct", help="an approved manual adjustment of a purse", args=(
    MEMBER, PURSE, arg("--change", required=True, metavar="[-]AMOUNT",
                       help="signed: yuan for cash/bonus, a count otherwise"),
    arg("--reason", required=True), *APPROVER,
))
def correct(c: Ctx) -> Result:
    a = c.args
    change = signed_amount(a.purse, a.change)
    entry = c.ledger.correct(c.operator, a.member, a.purse, change, a.reason,
                             approver=approver_of(a))
    return done(c, entry, f"corrected {a.purse} by {a.change.strip()}")


# --- sync files and backups ---------------------------------------------------


@command("export", help="write a sync file for another branch (USB stick, e-mail)", args=(
    arg("--out", required=True, type=Path, metavar="FILE"),
    arg("--for", dest="for_node", metavar="NODE", help="only what NODE lacks, as last seen"),
))
def export(c: Ctx) -> Result:
    info = export_file(c.ledger, c.args.out, c.args.for_node, operator=c.operator)
    return Result(info, f"wrote {info['file']}: {info['documents']} documents, "
                        f"{info['bytes']} bytes")


@command("import", help="apply a sync file; importing it again changes nothing",
         args=(arg("file", type=Path),))
def import_(c: Ctx) -> Result:
    info = import_file(c.ledger, c.args.file, operator=c.operator)
    n = len(info["changed"])
    changed = f"{n} document{'s' if n != 1 else ''} changed" if n else "nothing new"
    text = f"imported {info['file']} from {info['from']}: {changed}"
    if info["incomplete"]:
        text += (f"\nwarning: this node lacks earlier changes that the file builds on "
                 f"({', '.join(info['incomplete'])}); ask {info['from']} for a full export "
                 f"(without --for)")
    return Result(info, text)


@command("backup", help="a consistent copy of the node, taken while it keeps working",
         args=(arg("--out", required=True, type=Path, metavar="DIR"),), access="read")
def backup(c: Ctx) -> Result:
    require(c, "backup")
    backup_store(c.ledger.storage.dir, c.args.out)
    return Result({"backup": str(c.args.out)},
                  f"backup written to {c.args.out} (open it with --data {c.args.out})")


# --- reports ------------------------------------------------------------------


@command("report", "daily", help="营业报表: one day's members, sales, top-ups, cards",
         args=(arg("--day", metavar="YYYY-MM-DD"), arg("--branch", metavar="NODE")),
         access="read")
def report_daily(c: Ctx) -> Result:
    require(c, "reports.view")
    r = views.daily_report(c.ledger, c.args.day or c.ledger.today(), c.args.branch)
    return Result(r, "\n".join((
        f"{r['day']}  branch {r['branch']}",
        f"new members   {r['new_members']}",
        f"sales         {format_yuan(r['sales'])}  ({r['debits']} debits, "
        f"refunds {format_yuan(r['refunds'])})",
        f"top-up cash   {format_yuan(r['topup_cash'])}  ({r['topups']} top-ups)",
        f"cards sold    {r['cards_sold']}  ({format_yuan(r['card_sales'])})",
    )))


@command("report", "settlement", help="结算表: who owes whom for value served elsewhere",
         args=PERIOD, access="read")
def report_settlement(c: Ctx) -> Result:
    require(c, "reports.view")
    r = views.settlement(c.ledger, c.args.start, c.args.end)
    lines = [f"{p['owes']} owes {p['to']} {format_yuan(p['amount'])}" for p in r["pairs"]]
    return Result(r, "\n".join(lines) or "nothing to settle")


@command("report", "ranking", help="消费排名 by member or 销量排名 by service", args=(
    arg("--by", choices=("members", "services"), default="members"), *PERIOD,
    arg("--limit", type=int, default=10),
), access="read")
def report_ranking(c: Ctx) -> Result:
    require(c, "reports.view")
    a = c.args
    rows = views.ranking(c.ledger, a.by, a.start, a.end, a.limit)
    key = "member" if a.by == "members" else "service"
    lines = [f"{i:>3}. {r.get('name') or r[key]}  {format_yuan(r['amount'])}  ({r['count']}x)"
             for i, r in enumerate(rows, 1)]
    return Result(rows, "\n".join(lines) or "no sales yet")


# --- operators and rules ------------------------------------------------------


@command("operator", "add", help="an operator (工号) with a password and roles", args=(
    arg("--name", required=True),
    # This command's --password is the new operator's; who acts gives theirs before
    # the command (crdtledger --operator boss --password .. operator add ..) or by env.
    arg("--password", dest="new_password", required=True),
    arg("--role", action="append", help="owner, manager, cashier or a defined role; repeatable"),
))
def operator_add(c: Ctx) -> Result:
    a = c.args
    oid = c.ledger.add_operator(c.operator, a.name, a.new_password, a.role or ["cashier"])
    return Result({"operator_id": oid}, f"operator {a.name} added [{oid}]")


@command("rule", "set", help="a new version of a rule, in force from a day", args=(
    arg("kind", choices=sorted(RULE_KINDS)),
    arg("--json-body", required=True, metavar="JSON"),
    arg("--effective-from", metavar="YYYY-MM-DD"),
))
def rule_set(c: Ctx) -> Result:
    a = c.args
    try:
        body = json.loads(a.json_body)
    except json.JSONDecodeError as e:
        raise InvalidInput(f"--json-body is not JSON: {e}") from None
    rid = c.ledger.set_rule(c.operator, a.kind, body, a.effective_from)
    return Result({"rule_id": rid}, f"rule {a.kind} set [{rid}]")


@command("rule", "show", help="the version of a rule in force",
         args=(arg("kind", choices=sorted(RULE_KINDS)), arg("--day", metavar="YYYY-MM-DD")),
         access="read")
def rule_show(c: Ctx) -> Result:
    body = c.ledger.rule(c.args.kind, c.args.day)
    return Result(body, json.dumps(body, ensure_ascii=False, indent=2))


# --- the parser ---------------------------------------------------------------


def add_common(p: argparse.ArgumentParser, *, operator: bool = True,
               password: bool = True) -> None:
    """Options accepted both before and after the command.

    SUPPRESS keeps a subcommand's unset option from overwriting the value given
    before the command (argparse copies subparser defaults over the namespace).
    """
    s = argparse.SUPPRESS
    p.add_argument("--data", metavar="DIR", default=s,
                   help=f"the node's data directory (default: ${ENV_DATA})")
    p.add_argument("--json", action="store_true", default=s, help="machine-readable output")
    if operator:
        p.add_argument("--operator", metavar="NAME", default=s,
                       help="act as this operator instead of the node's owner")
    if password:
        p.add_argument("--password", dest="auth_password", metavar="PW", default=s,
                       help=f"the operator's password (default: ${ENV_PASSWORD})")


def add_node_commands(top: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The chain, the daemon and its status: outside the table, as they are not
    ledger operations and never go through a running node."""
    chain = top.add_parser("chain", help="the chain's certificate authority")
    actions = chain.add_subparsers(dest="action", metavar="ACTION", required=True)
    init = actions.add_parser("init", help="create the chain's certificate authority")
    init.add_argument("--out", required=True, type=Path, metavar="CHAIN_DIR")
    init.add_argument("--name", help="the chain's id (default: the directory's name)")
    add_common(init, operator=False, password=False)
    renew = actions.add_parser("renew", help="a new certificate for a node (before its "
                               "old one expires, or after it was revoked)")
    renew.add_argument("--chain", required=True, type=Path, metavar="CHAIN_DIR")
    add_common(renew, operator=False, password=False)
    rev = actions.add_parser("revoke", help="revoke a node's certificates chain-wide "
                             "(written into this node's ledger, which replicates it)")
    rev.add_argument("--chain", required=True, type=Path, metavar="CHAIN_DIR")
    rev.add_argument("--node", required=True, help="the node whose certificates to revoke")
    add_common(rev)

    node = top.add_parser("node", help="the branch node daemon")
    actions = node.add_subparsers(dest="action", metavar="ACTION", required=True)
    run = actions.add_parser("run", help="serve this node: sync with peers, HTTP API, metrics")
    add_node_options(run)
    add_common(run, operator=False, password=False)

    st = top.add_parser("status", help="this node's peers: connected, last contact, lag")
    add_common(st, operator=False, password=False)


def add_node_options(p: argparse.ArgumentParser) -> None:
    """The daemon's flags (read by `node_config`); the counter app takes the same."""
    p.add_argument("--listen", metavar="HOST:PORT",
                   help="sync endpoint, mutual TLS (default 0.0.0.0:8470)")
    p.add_argument("--api", metavar="HOST:PORT",
                   help="HTTP API, /metrics and /health (default 127.0.0.1:8480)")
    p.add_argument("--peer", action="append", default=[], metavar="wss://HOST:PORT",
                   help="a node to dial (repeatable); shops behind NAT dial out")
    p.add_argument("--no-mdns", action="store_true", help="no LAN discovery")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Member and stored-value ledger of one branch node.")
    add_common(parser)
    top = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    init = top.add_parser("init", help="create a node in an empty data directory")
    add_common(init, operator=False, password=False)
    init.add_argument("--node", required=True, help="this branch's node id, e.g. SH01")
    init.add_argument("--chain", default="default", metavar="CHAIN_DIR",
                      help="the chain directory from `chain init` (gives the node its "
                      "certificate), or just a chain name for a node that syncs by files")
    init.add_argument("--timezone", default="Asia/Shanghai")

    add_node_commands(top)
    groups: dict[str, argparse._SubParsersAction[argparse.ArgumentParser]] = {}
    for cmd in COMMANDS:
        owner = top
        if len(cmd.path) == 2:
            group = cmd.path[0]
            if group not in groups:
                gp = top.add_parser(group, help=f"{group} commands")
                groups[group] = gp.add_subparsers(dest="action", metavar="ACTION",
                                                  required=True)
            owner = groups[group]
        leaf = owner.add_parser(cmd.path[-1], help=cmd.help, description=cmd.help)
        add_common(leaf, password=cmd.path != ("operator", "add"))
        for spec in cmd.args:
            spec(leaf)
        leaf.set_defaults(cmd=cmd)
    return parser


# --- running a command --------------------------------------------------------


def emit(args: argparse.Namespace, result: Result) -> None:
    if getattr(args, "json", False):
        print(json.dumps(result.data, ensure_ascii=False, sort_keys=True))
    elif result.text:
        print(result.text)


def refuse(args: argparse.Namespace, code: str, message: str) -> int:
    message = " ".join(message.split())  # one line, whatever the exception carried
    if getattr(args, "json", False):
        print(json.dumps({"error": code, "message": message}, ensure_ascii=False))
    print(f"{PROG}: {message}", file=sys.stderr)
    return EXIT_REFUSED


class Refused(LedgerError):
    """A refusal the running node reported for a routed command, with its code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def execute(ledger: Ledger, args: argparse.Namespace) -> Result:
    """Run a table command against an open ledger: here, or inside a running node."""
    cmd: Command = args.cmd
    if args.operator is None:
        return cmd.handler(Ctx(ledger, ledger.owner, args))
    operator = ledger.authenticate(args.operator, args.auth_password)
    try:
        return cmd.handler(Ctx(ledger, operator, args))
    except PermissionDenied as e:
        # The library names operators by id; the person at the shell knows the name.
        raise type(e)(str(e).replace(operator, args.operator)) from None


def routed(node: Running, args: argparse.Namespace, argv: Sequence[str]) -> Result:
    """Hand the command line to the node that holds the directory (peer/local.py)."""
    reply = local.call(node, "/cli", {"argv": list(argv), "cwd": os.getcwd(),
                                      "operator": args.operator,
                                      "password": args.auth_password})
    if "error" in reply:
        raise Refused(str(reply["error"]), str(reply.get("message", "")))
    return Result(reply["data"], str(reply["text"]))


def init_node(args: argparse.Namespace, data_dir: Path) -> Result:
    chain_dir = Path(args.chain)
    if (chain_dir / CA_CERT).exists():
        # A chain directory from `chain init`: the node gets a certificate and can run.
        chain = load_chain(chain_dir)
        Ledger.create(data_dir, args.node, chain.name, args.timezone)
        enrol(chain_dir, data_dir, args.node)
        name, how = chain.name, f" with a certificate of chain {chain.name} ({chain.short})"
    elif "/" in args.chain or chain_dir.is_dir():
        raise InvalidInput(f"{chain_dir} is not a chain directory: create one with "
                           f"`{PROG} chain init --out {chain_dir}`")
    else:
        # Just a name: a node that syncs by files only (no certificate, cannot run).
        Ledger.create(data_dir, args.node, args.chain, args.timezone)
        name, how = args.chain, " (sync files only: no certificate)"
    return Result({"node": args.node, "chain": name, "data": str(data_dir)},
                  f"node {args.node} of chain {name} created in {data_dir}{how}")


def chain_command(args: argparse.Namespace) -> Result:
    if args.action == "init":
        chain = init_chain(args.out, args.name)
        return Result({"chain": chain.name, "fingerprint": chain.fingerprint,
                       "dir": str(args.out)},
                      f"chain {chain.name} created in {args.out}\n"
                      f"fingerprint {chain.fingerprint}\n"
                      f"keep {Path(args.out) / 'ca.key'} off the branch machines")
    data_dir = data_dir_of(args)
    if args.action == "renew":
        return renew_certificate(args.chain, data_dir)
    node = local.running(data_dir)
    if node is not None:
        current = routed(node, args, ["rule", "show", "revocations", "--json"]).data
    else:
        with Ledger.open(data_dir, lock=False) as ledger:
            current = ledger.rule("revocations")
    crl = revoke(args.chain, args.node, existing_crl=current.get("crl") or None)
    if node is not None:
        routed(node, args, ["rule", "set", "revocations",
                            "--json-body", json.dumps(revocations_rule(crl))])
    else:
        with Ledger.open(data_dir) as ledger:
            ledger.set_rule(ledger.owner, "revocations", revocations_rule(crl))
    return Result({"revoked": args.node, "crl_bytes": len(crl)},
                  f"certificates of {args.node} revoked; every node refuses it once the "
                  "revocation list reaches it")


def renew_certificate(chain_dir: Path, data_dir: Path) -> Result:
    """Enrol the node again; the old key and certificate are kept aside, not deleted."""
    with Ledger.open(data_dir, lock=False) as ledger:
        node_id, chain_name = ledger.node, ledger.chain
    if load_chain(chain_dir).name != chain_name:
        raise InvalidInput(f"{data_dir} belongs to chain {chain_name}, not to {chain_dir}")
    tls = data_dir / "tls"
    kept = None
    if tls.exists():
        kept = data_dir / f"tls.replaced-{datetime.now():%Y%m%d-%H%M%S}"
        tls.rename(kept)
    try:
        enrol(chain_dir, data_dir, node_id)
    except BaseException:
        if kept is not None:
            kept.rename(tls)
        raise
    running = local.running(data_dir)
    return Result({"node": node_id, "replaced": str(kept) if kept else None},
                  f"new certificate for {node_id}"
                  + (f"; the old one is in {kept}" if kept else "")
                  + ("; restart the node to use it" if running else ""))


def status(args: argparse.Namespace, data_dir: Path) -> Result:
    node = local.running(data_dir)
    data: dict[str, Any]
    if node is None:
        with Ledger.open(data_dir, lock=False) as ledger:
            known = ledger.storage.conn.execute(
                "SELECT node, seen_at FROM peers ORDER BY node").fetchall()
            data = {"node": ledger.node, "chain": ledger.chain, "running": False,
                    "peers": [{"node": n, "connected": False, "last_contact": (s or 0) / 1000,
                               "behind_in": None, "behind_out": None} for n, s in known]}
    else:
        data = {**local.call(node, "/status"), "running": True}
    lines = [f"node {data['node']} of chain {data['chain']}: "
             + ("running" if data["running"] else "not running")]
    for p in data["peers"]:
        seen = (datetime.fromtimestamp(p["last_contact"]).strftime("%Y-%m-%d %H:%M:%S")
                if p.get("last_contact") else "never")
        lag = ("" if p.get("behind_in") is None else
               f"  we lack {p['behind_in']} ops, it lacks {p['behind_out']}")
        state = "connected" if p["connected"] else "not connected"
        lines.append(f"  {p['node']:<8} {state:<14} last contact {seen}{lag}")
    if not data["peers"]:
        lines.append("  no peers known yet")
    return Result(data, "\n".join(lines))


CONFIG_FILE = "node.toml"


def node_config(args: argparse.Namespace, data_dir: Path) -> Config:
    """The daemon's settings: command line, else DATA/node.toml, else the defaults.

    node.toml (all keys optional), so a shop PC's service needs only --data:
        listen = "0.0.0.0:8470"
        api = "127.0.0.1:8480"
        peers = ["wss://hq.example.com:8470"]
        mdns = true
    """
    import tomllib

    from peer.node import Config, parse_address

    try:
        with open(data_dir / CONFIG_FILE, "rb") as f:
            file = tomllib.load(f)
    except FileNotFoundError:
        file = {}
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise InvalidInput(f"{data_dir / CONFIG_FILE}: {e}") from None
    peers = [*file.get("peers", []), *args.peer]
    try:
        if not all(isinstance(p, str) and p.startswith("wss://") for p in peers):
            raise ValueError(f"peers are wss://HOST:PORT addresses, not {peers!r}")
        return Config(data_dir,
                      listen=parse_address(args.listen or file.get("listen", "0.0.0.0"), 8470),
                      api=parse_address(args.api or file.get("api", "127.0.0.1"), 8480),
                      peers=list(dict.fromkeys(peers)),
                      mdns=not args.no_mdns and bool(file.get("mdns", True)))
    except (ValueError, AttributeError) as e:
        raise InvalidInput(f"node settings: {e}") from None


def node_run(args: argparse.Namespace, data_dir: Path) -> Result:
    import asyncio
    import logging

    from peer.node import run_until_signalled

    config = node_config(args, data_dir)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    def announce(node: Node) -> None:
        print(f"node {node.node_id} of chain {node.ledger.chain}: sync on port "
              f"{node.sync_port}, API on http://{config.api[0]}:{node.api_port}", flush=True)

    asyncio.run(run_until_signalled(config, announce))
    return Result({"stopped": True}, "node stopped")


def data_dir_of(args: argparse.Namespace) -> Path:
    data = getattr(args, "data", None) or os.environ.get(ENV_DATA)
    if not data:
        raise InvalidInput(f"no data directory: give --data DIR or set {ENV_DATA}")
    return Path(data)


def run(args: argparse.Namespace, data_dir: Path, argv: Sequence[str]) -> Result:
    if args.command == "init":
        return init_node(args, data_dir)
    if args.command == "node":
        return node_run(args, data_dir)
    if args.command == "status":
        return status(args, data_dir)
    node = local.running(data_dir)
    if node is not None:
        return routed(node, args, argv)
    with Ledger.open(data_dir, lock=args.cmd.access == "write") as ledger:
        return execute(ledger, args)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    data = getattr(args, "data", None) or os.environ.get(ENV_DATA)
    if not data and args.command != "chain":
        parser.error(f"no data directory: give --data DIR or set {ENV_DATA}")
    args.operator = getattr(args, "operator", None)
    args.auth_password = getattr(args, "auth_password", None) or os.environ.get(ENV_PASSWORD)
    if args.operator is not None and args.auth_password is None:
        parser.error(f"--operator needs --password or {ENV_PASSWORD}")
    try:
        if args.command == "chain":
            result = chain_command(args)
        else:
            result = run(args, Path(str(data)), argv)
    except (LedgerError, RemoteProtocolError) as e:
        return refuse(args, e.code, str(e) or type(e).__name__)
    except OSError as e:  # e.g. --out in a missing or read-only directory
        return refuse(args, "io_error", f"{e.strerror or e}: {e.filename or ''}".rstrip(": "))
    except sqlite3.DatabaseError as e:  # a damaged or foreign file where the store should be
        return refuse(args, "store_error", f"the store in {data} is unusable: {e}")
    except KeyboardInterrupt:
        return 130
    emit(args, result)
    return 0
