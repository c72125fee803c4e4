"""Every operation on a node's ledger, declared once.

An operation is a name ("debit", "points.redeem"), its parameters as JSON Schema built
from the model's own constraints, the permission it takes, whether it writes, the
handler (ledger, operator, checked parameters -> a JSON-able result) and how its
result reads to a person. `describe` says how every refusal reads. From this one
table `peer/api.py` makes its routes and OpenAPI document, `peer/cli.py` its
subcommands (and the call to a running node, which sends the name and the
parameters), and the counter app calls `run` for its writes: so they cannot drift.

Money parameters come in two forms: integer fen (`amount`) or the yuan a person
typed (`yuan`, "12.34"), parsed exactly by `parse_yuan`; a third decimal or a sign
is refused, never rounded, and no float is ever involved.

No I/O, no aiohttp, no argparse: this is the library's side.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple

from crdtledger import (
    audit,
    closing,
    localtime,
    membership,
    movements,
    outbox,
    settlement,
    views,
)
from crdtledger import bookings as booking_lib
from crdtledger.auth import TooManyAttempts
from crdtledger.bookings import BOOKING_STATUSES
from crdtledger.coupons import COUPON_REASONS, COUPON_STATUSES, CouponRefused, describe_status
from crdtledger.errors import (
    ApprovalRequired,
    CardInactive,
    CardLost,
    InsufficientFunds,
    InvalidAmount,
    InvalidInput,
    LedgerError,
    NotFound,
    PermissionDenied,
    RemoteProtocolError,
    RightsElsewhere,
    WrongPin,
)
from crdtledger.goods import is_walk_in
from crdtledger.hlc import NODE_ID
from crdtledger.inputs import one_line
from crdtledger.ledger import MAX_TEXT, PHONE, PREF_KEYS, Ledger
from crdtledger.members import ID_NO
from crdtledger.model import (
    CARD_NO,
    CARD_STATUSES,
    CARD_TYPES,
    GENDERS,
    ID,
    MONEY_PURSES,
    MONTH,
    PARTIAL_DATE,
    PAY_CODE,
    PERMISSIONS,
    PIN,
    PURSE,
    RULE_KINDS,
    SERVICE_CODE,
)
from crdtledger.money import (
    MAX_AMOUNT,
    check_count,
    format_purse,
    format_purses,
    format_yuan,
    parse_yuan,
)
from crdtledger.rules import LINE_BREAKS, rule_help
from crdtledger.schema import Schema, array, check, ecma, obj, one_of, or_empty, text

Params = dict[str, Any]

# --- parameter schemas, from the model's constraints --------------------------------

MEMBER_ID = text(40, pattern=ecma(ID), description="a member id like 01J5Q8ZK3T7XM.SH01")
ENTRY_ID = text(40, pattern=ecma(ID), description="a ledger entry id like 01J5Q8ZK3T7XM.SH01")
OPERATOR_ID = text(40, pattern=ecma(ID), description="an operator id")
NODE = text(16, pattern=ecma(NODE_ID), description="a branch node id like SH01")
CARD = text(40, pattern=ecma(CARD_NO),
            description="a card number: letters, digits, colon, dash or underscore")
# A secret: refusals never repeat it (schema.check, writeOnly).
CARD_PIN = text(8, pattern=ecma(PIN), description="a card PIN of 4 to 8 digits",
                writeOnly=True)
PASSWORD = text(200, writeOnly=True)
PHONE_TEXT = text(20, pattern=ecma(PHONE), description="a phone number like 13812345678 "
                  "(ASCII digits, spaces or dashes, a leading + for a country code)")
SERVICE = text(20, pattern=ecma(SERVICE_CODE), description="a service code from the price list")
PURSE_NAME = text(40, pattern=ecma(PURSE),
                  description="cash, bonus, points, pkg:ID (a package) or cpn:ID (a coupon)")
DAY = text(10, format="date", description="a date like 2026-11-23")
MONTH_TEXT = text(7, pattern=ecma(MONTH), description="a month like 2026-11")
DAY_OF_YEAR = text(10, pattern=or_empty(ecma(PARTIAL_DATE)),
                   description="a date like 1990-05-17 or 05-17")
FEN = {"type": "integer", "minimum": 1, "maximum": MAX_AMOUNT, "x-error": "invalid_amount",
       "description": "a whole number of fen above zero"}
FEE = {**FEN, "minimum": 0, "description": "a whole number of fen, zero or more"}
COUNT = {**FEN, "description": "a whole number above zero"}
SIGNED = {**FEN, "minimum": -MAX_AMOUNT,
          "description": "a signed whole number: fen for cash and bonus, a count otherwise"}
_DIGITS = "[0-9]{1,11}(\\.[0-9]{1,2})?"
# Spaces at either end, as a paste brings them (" 12 "), read as 12.00 by every front
# end: parse_yuan strips them and the counter's boxes took them, where the command line
# and the API refused the shape. The spaces a keyboard or a paste gives (a tab from a
# spreadsheet, a no-break space from a page, an input method's full-width space), named
# one by one: ECMA's \s and Python's differ (U+FEFF).
_PAD = "[ \\t\\u00a0\\u3000]*"
# The limit is said: "9999999999999.99" is the right shape, refused for its size.
_MOST = "99999999999.99"  # 11 digits before the point: MAX_AMOUNT fen less one
YUAN = text(15, pattern=f"^{_PAD}{_DIGITS}{_PAD}$", **{"x-error": "invalid_amount"},
            description=f"a yuan amount like 12.34, at most two decimals and at most {_MOST}")
SIGNED_TEXT = text(16, pattern=f"^{_PAD}[+-]?{_DIGITS}{_PAD}$", **{"x-error": "invalid_amount"},
                   description="a signed amount like -1.50 (yuan) or 3 (points), at most "
                   f"{_MOST} either way")
# Text that must stay on one line: a subject becomes a mail header (a line break there
# starts a header of the writer's choosing, and the mail library refuses it at every
# pass of the notifier), names and labels fill lists, receipts, report lines and the
# command line's tables. No control character, and none of the other characters
# str.splitlines() breaks at (NEL, U+2028, U+2029). Free text (notes, reasons, a
# broadcast's text) may break lines and hold tabs, and nothing else of the kind: a NUL
# ends a string early in C code that shows it.
#
# Nor, in either, the controls that reorder what follows (RLO and the others, U+202A-E,
# U+2066-9, and the marks U+200E/F): "\u202e三张" shows as another name in every list,
# receipt and CSV, and a reason can be made to read backwards. And no text made of
# zero-width characters alone (with spaces): a name of one U+200B was taken where an
# empty name is refused. Within other text they stay (U+200D joins emoji).
_BIDI = "\\u200e\\u200f\\u202a-\\u202e\\u2066-\\u2069"
_ZERO_WIDTH = "\\u200b-\\u200d\\u2060\\ufeff"
_NOT_INVISIBLE = f"(?![\\s{_ZERO_WIDTH}]*[{_ZERO_WIDTH}][\\s{_ZERO_WIDTH}]*$)"
ONE_LINE = f"^{_NOT_INVISIBLE}[^{LINE_BREAKS}{_BIDI}]*$"
FREE_TEXT = f"^{_NOT_INVISIBLE}[^\\x00-\\x08\\x0b\\x0c\\x0e-\\x1f\\x7f-\\x9f{_BIDI}]*$"


def line(limit: int = 200, what: str = "", **more: Any) -> Schema:
    """`text` for a name, a label or a subject (`what`, the schema's title): refused
    with a sentence if it holds a line break or another control character."""
    return text(limit, pattern=ONE_LINE, **({"title": what} if what else {}),
                description="one line of text, without line breaks, control characters or "
                "direction overrides, and not of invisible characters alone",
                **more)


def free_text(limit: int = 200, **more: Any) -> Schema:
    """`text` that may span lines (notes, reasons, a message's text)."""
    return text(limit, pattern=FREE_TEXT, description="text: line breaks and tabs, but no "
                "other control characters nor direction overrides, and not of invisible "
                "characters alone", **more)


TAGS = array(line(40, "a tag", minLength=1), 50)
PREFS = obj({}, {k: line(60) for k in PREF_KEYS})
CUSTOM = {"type": "object", "additionalProperties": free_text(MAX_TEXT), "maxProperties": 50,
          "propertyNames": line(40, "a field's name", minLength=1)}
LIMIT = {"type": "integer", "minimum": 1, "maximum": 100}
APPROVER = obj({"name": line(40, "an operator's name"), "password": PASSWORD},
               description="an operator allowed to approve an amount above the limit")

# --- result schemas (documentation; schemathesis holds the API to them) -------------

INT = {"type": "integer"}
STR = {"type": "string"}
ANY_OBJECT = {"type": "object"}
AMOUNTS = {"type": "object", "additionalProperties": INT}
ENTRY = {
    "type": "object",
    "required": ["id", "kind", "member", "node", "op", "at", "amount", "deltas"],
    "properties": {
        "id": STR, "kind": STR, "member": STR, "node": STR, "op": STR, "at": INT,
        "amount": INT,
        "deltas": {"type": "array", "description": "[purse, node, change]: rights moved",
                   "items": {"type": "array", "minItems": 3, "maxItems": 3}},
    },
}
BALANCE = {"type": "object", "required": ["cash", "bonus", "points", "packages"],
           "properties": {"cash": INT, "bonus": INT, "points": INT, "packages": AMOUNTS}}
CARD_VIEW = {"type": "object", "required": ["id", "card_no", "member", "status", "type"],
             "properties": {"id": STR, "card_no": STR, "member": STR,
                            "status": {"type": "string", "enum": list(CARD_STATUSES)},
                            "type": STR, "expiry": STR, "has_pin": {"type": "boolean"}}}
LEVEL = {"type": "object",
         "required": ["name", "discount", "points_multiplier", "spent", "topped"],
         "properties": {"name": STR, "discount": STR, "points_multiplier": STR, "spent": INT,
                        "topped": INT}}
MEMBER_VIEW = {"type": "object",
          "required": ["id", "name", "phone", "home", "tags", "cards", "level_info",
                       "balance"],
          "properties": {"id": STR, "name": STR, "phone": STR, "home": STR,
                         "tags": {"type": "array", "items": STR},
                         "cards": {"type": "array", "items": ANY_OBJECT},
                         "level_info": LEVEL, "balance": BALANCE}}
MEMBER_LINE = {"type": "object", "required": ["id", "name", "phone", "home"],
               "properties": {"id": STR, "name": STR, "home": STR,
                              "phone": {"type": "string", "description": "masked"}}}
DAILY = {"type": "object",
         "required": ["day", "branch", "new_members", "sales", "debits", "refunds",
                      "topup_cash", "topups", "cards_sold", "card_sales", "topup_by_method",
                      "till_by_method"],
         "properties": {"day": STR, "branch": STR, **{k: INT for k in (
             "new_members", "sales", "debits", "refunds", "topup_cash", "topups",
             "cards_sold", "card_sales", "exit_refunds")},
             "topup_by_method": {**AMOUNTS, "description": "top-up cash by payment method"},
             "till_by_method": {**AMOUNTS, "description": "packages and services paid at "
                                "the till by payment method, less refunds of such services "
                                "and exits paid back"}}}
AUDIT_ROW = {"type": "object", "required": list(audit.AuditRow.__annotations__),
             "properties": {k: INT if k == "amount" else STR
                            for k in audit.AuditRow.__annotations__}}
REFUSED_ROW = {"type": "object", "required": list(audit.RefusedRow.__annotations__),
               "properties": {k: STR for k in audit.RefusedRow.__annotations__}}
SETTLEMENT = {"type": "object", "required": ["pairs", "branches", "net", "total"],
              "properties": {
                  "pairs": {"type": "array", "items": {
                      "type": "object", "required": ["owes", "to", *settlement.PAIR_FIGURES],
                      "properties": {"owes": STR, "to": STR,
                                     **{k: INT for k in settlement.PAIR_FIGURES}}}},
                  "branches": {"type": "object", "additionalProperties": {
                      "type": "object", "required": list(settlement.BRANCH_FIGURES),
                      "properties": {k: INT for k in settlement.BRANCH_FIGURES}}},
                  "net": AMOUNTS, "total": INT}}
RANKING = {"type": "array", "items": {"type": "object", "required": ["amount", "count"],
                                      "properties": {"amount": INT, "count": INT}}}


def _id_of(key: str) -> Schema:
    return {"type": "object", "required": [key], "properties": {key: STR}}


# --- the declaration ------------------------------------------------------------------


@dataclass(frozen=True)
class Param:
    name: str
    schema: Schema
    required: bool = False
    default: Any = None  # what the handler gets when the parameter is not given
    # The command line's spelling: "" for --name (underscores as dashes), a word
    # without dashes for a positional argument, None for no option at all (the
    # integer-fen form of an amount: a person types the yuan).
    flag: str | None = ""
    # False where the HTTP path already names the member (GET /members/{member}/...):
    # the command line may name them by card or phone instead.
    http: bool = True
    switch: bool = False  # a boolean the command line sets with a bare flag (--delete)
    help: str = ""


@dataclass(frozen=True)
class Form:
    """Exactly one of these parameters (at most one if optional)."""

    keys: tuple[str, ...]
    optional: bool = False


Handler = Callable[[Ledger, str, Params], Any]
Show = Callable[[Ledger, Any, Params], str]


@dataclass(frozen=True)
class Operation:
    name: str  # "points.redeem"; the command line's words, split at the dot
    summary: str
    needs: frozenset[str]  # any one of these permissions; empty: any operator
    write: bool
    params: tuple[Param, ...]
    handler: Handler
    show: Show
    method: str  # HTTP
    path: str  # HTTP, below /api; {name} names a parameter
    forms: tuple[Form, ...] = ()
    result: Schema = field(default_factory=lambda: ANY_OBJECT)
    status: int = 200  # HTTP status when done
    # OpenAPI links: which later operation takes what from this result (a debit's id
    # for its refund), so a client and schemathesis's stateful phase can chain them.
    links: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    # The result as a table, for the command line's --csv (a report's rows); None: none.
    table: Callable[[Any], list[list[str]]] | None = None
    # More for a person than the summary: formats and examples (the command line's
    # --help ends with it; the OpenAPI description too).
    more: str = ""

    def param(self, name: str) -> Param:
        return next(p for p in self.params if p.name == name)

    def schema(self, names: Sequence[str] | None = None) -> Schema:
        """The parameters (or those named) as one JSON object schema with its forms."""
        chosen = [p for p in self.params if names is None or p.name in names]
        s = obj({p.name: p.schema for p in chosen if p.required},
                {p.name: p.schema for p in chosen if not p.required})
        keys = {p.name for p in chosen}
        forms = [one_of(*(k for k in f.keys if k in keys), optional=f.optional)
                 for f in self.forms if len([k for k in f.keys if k in keys]) > 1]
        if len(forms) == 1:
            s.update(forms[0])
        elif forms:
            s["allOf"] = forms
        return s


TABLE: dict[str, Operation] = {}


def operation(name: str, summary: str, *, params: Sequence[Param] = (),
              permission: str | None = None, needs: frozenset[str] | None = None,
              http: str, show: Show, forms: Sequence[Form] = (), result: Schema = ANY_OBJECT,
              status: int = 200, links: Mapping[str, Mapping[str, Any]] | None = None,
              table: Callable[[Any], list[list[str]]] | None = None, more: str = ""
              ) -> Callable[[Handler], Handler]:
    """Declare an operation. A write names its `permission` (the ledger checks it too);
    a read names the permissions any one of which lets an operator see it (`needs`),
    since the ledger leaves read permissions to its callers."""
    method, path = http.split(" ", 1)

    def register(fn: Handler) -> Handler:
        if name in TABLE:  # a programming error, found at import
            raise ValueError(f"operation {name} declared twice")
        TABLE[name] = Operation(
            name, summary, frozenset({permission}) if permission else needs or frozenset(),
            permission is not None, tuple(params), fn, show, method, path, tuple(forms),
            result, status, links or {}, table, more)
        return fn

    return register


# --- running one ----------------------------------------------------------------------


def authorise(ledger: Ledger, operator: str, op: Operation) -> None:
    """Refuse an operator who holds none of the operation's permissions. A write is
    checked by the ledger as well; checking here first refuses it before any parameter
    is looked at, so a refusal has the same code whatever else is wrong."""
    if op.needs and not op.needs & ledger.permissions(operator):
        raise PermissionDenied(f"operator {operator} may not {' or '.join(sorted(op.needs))}")


def validate(op: Operation, params: Mapping[str, Any]) -> Params:
    """The parameters checked against the declaration, defaults filled in."""
    check(dict(params), _schema_of(op), "")
    if any(q is PERIOD[0] for q in op.params) and params.get("from") and params.get("to") \
            and params["from"] > params["to"]:  # YYYY-MM-DD: as text, in date order
        # A reversed period read as an empty one ("nothing to settle").
        raise InvalidInput(f"the period is reversed: from {params['from']} is after "
                           f"to {params['to']}")
    out = dict(params)
    for p in op.params:
        if p.name not in out and p.default is not None:
            out[p.name] = p.default
    return out


# Each operation's whole schema, built once (`Operation.schema` builds it anew: a
# caller may change what it is given), by the operation's identity.
_SCHEMAS: dict[int, tuple[Operation, Schema]] = {}


def _schema_of(op: Operation) -> Schema:
    kept = _SCHEMAS.get(id(op))
    if kept is None or kept[0] is not op:
        kept = _SCHEMAS[id(op)] = (op, op.schema())
    return kept[1]


def run(ledger: Ledger, operator: str, name: str, params: Mapping[str, Any]) -> Any:
    """Run operation `name` as `operator`: permission, parameters, then the handler.
    A write must run where its node's writes run (`Node.perform`).

    Every front end comes here (the API, the command line, the counter and the back
    office): a refusal that matters for security is kept here too (`_keep_refused`),
    once the operation's own transaction is over."""
    try:
        return _run(ledger, operator, name, params)
    except (PermissionDenied, WrongPin) as e:  # TooManyAttempts is a PermissionDenied
        _keep_refused(ledger, operator, name, params, e)
        raise


def _keep_refused(ledger: Ledger, operator: str, name: str, params: Mapping[str, Any],
                  e: LedgerError) -> None:
    """Keep a refused attempt in the node's own list (audit.note_refusal). Not an
    approval asked for and not given: the counter's and the back office's honest way to
    learn that an amount needs an approver (they then show the approver's fields). An
    approver named who may not approve (themselves, a cashier) is kept. Nor a card's
    PIN not given at all: no guess (cards.use_card counts none either)."""
    if (isinstance(e, ApprovalRequired) and not params.get("approver")) \
            or (isinstance(e, WrongPin) and params.get("pin") is None) \
            or e.code not in audit.SECURITY_CODES or name not in TABLE:
        return

    def named(key: str, pattern: re.Pattern[str]) -> str:
        # The parameters are not checked yet where permission is refused: only a
        # value of the right form is kept (a crafted one says nothing the row needs).
        value = params.get(key)
        return value if isinstance(value, str) and pattern.match(value) else ""

    audit.note_refusal(ledger, operator=operator, operation=name, code=e.code,
                       reason=describe(e).sentence, member=named("member", ID),
                       card=named("card", CARD_NO) or named("card_no", CARD_NO))


def _run(ledger: Ledger, operator: str, name: str, params: Mapping[str, Any]) -> Any:
    op = TABLE.get(name)
    if op is None:
        raise NotFound(f"no operation {name!r}")
    authorise(ledger, operator, op)
    p = validate(op, params)
    # An operation naming a merged member acts for its survivor (crdtledger.merge) and
    # says so, rather than failing on a member whose purses have moved.
    asked = p.get("member")
    if isinstance(asked, str) and name not in _OWN_RECORD:
        p["member"] = ledger.survivor_of(asked)
    with ledger.clock.pinned():  # judged on the day and minute its entries carry
        result = op.handler(ledger, operator, p)
    if isinstance(asked, str) and p["member"] != asked and isinstance(result, dict) \
            and not isinstance(op.result.get("additionalProperties"), dict):
        # Not into a map (a branch's rights by branch): `rights show` of a merged
        # member read "acted_for" as a branch and failed, text and JSON alike.
        result = {**result, "acted_for": {"asked": asked, "member": p["member"]}}
    return result


# Operations on the very member record named, merged or not: a profile edit (an
# erasure of a merged member's own data) and the merge itself.
_OWN_RECORD = frozenset({"member.edit", "member.merge", "member.erase"})


# Shown as JSON, which writes a line break in a value as \n: a rule's texts (a
# notice's template) read as they are, not flattened.
_SHOWN_AS_JSON = frozenset({"rule.show"})


def show(ledger: Ledger, name: str, result: Any, params: Mapping[str, Any]) -> str:
    """How the result of operation `name` reads to a person: each value on its row,
    whatever line breaks or controls another branch's records put in it (one_line)."""
    op = TABLE[name]
    if name not in _SHOWN_AS_JSON:
        result = one_line(result)
    text_ = op.show(ledger, result, one_line(validate(op, params)))
    if isinstance(result, dict) and "acted_for" in result:
        a = result["acted_for"]
        text_ = f"member {a['asked']} was merged into {a['member']}: done for {a['member']}\n" \
            + text_
    return text_


# --- refusals -------------------------------------------------------------------------


class Refusal(NamedTuple):
    code: str  # what a program branches on
    status: int  # the HTTP status
    sentence: str  # what a person reads: one line


# 409: the request is fine but the member's state refuses it now; 422: the request
# names something wrong for this card or debit. Other refusals: 422 as well.
_STATUS: dict[type[Exception], int] = {
    InvalidAmount: 400,
    InvalidInput: 400,
    PermissionDenied: 403,
    NotFound: 404,
    InsufficientFunds: 409,
    RightsElsewhere: 409,
    CardLost: 409,
    CardInactive: 409,
    WrongPin: 422,
    TooManyAttempts: 429,  # wrong PINs or approver passwords: wait (retry_after)
    CouponRefused: 409,  # expired, redeemed, another member's...: the coupon's state
    booking_lib.BookingRefused: 409,  # a slot taken, passed, outside the hours...
}


def describe(error: LedgerError | RemoteProtocolError,
             names: Mapping[str, str] | None = None) -> Refusal:
    """How a refusal reads: its code, HTTP status and one sentence. `names` maps
    operator ids to the names people know them by (the library names ids)."""
    status = next((_STATUS[c] for c in type(error).__mro__ if c in _STATUS), 422)
    sentence = " ".join((str(error) or type(error).__name__).split())
    for oid, name in (names or {}).items():
        sentence = sentence.replace(oid, name)
    return Refusal(error.code, status, sentence)


def details(error: Exception) -> dict[str, Any]:
    """What a program needs beyond the code: which branch holds the rights, which
    balance was too low."""
    if isinstance(error, RightsElsewhere):
        return {"branch": error.branch, "holders": error.holders, "purse": error.purse,
                "shortfall": error.shortfall}
    if isinstance(error, InsufficientFunds):
        return {"purse": error.purse, "balance": error.balance, "wanted": error.wanted}
    return {}


# --- shared pieces ----------------------------------------------------------------------

# Reading a member's data (privacy: the design asks that it be guarded) takes a
# permission that serves members; an operator who only runs backups or sync may not.
SERVES_MEMBERS = frozenset({
    "member.add", "member.edit", "member.delete", "member.upgrade", "card.issue",
    "card.lost", "card.replace", "card.return", "topup", "debit", "refund", "adjust",
    "points.redeem", "package.sell", "rights.transfer", "reports.view",
    "coupon.issue", "coupon.redeem",
})
REPORTS = frozenset({"reports.view"})
# A member's whole ID card number (居民身份证号) is read only by an operator who may
# fold two members into one person (member.merge: owner and manager among the
# built-in roles), the narrowest permission whose work turns on that identity (the
# back office's duplicates page, by ID number, is guarded by it). Everyone else sees
# it as lists do, the last four characters (views.mask_id_no): a cashier's
# member.show read any member's whole number at every branch. Entering or changing
# it (member.add, member.edit) needs no reading it back.
READS_ID_NO = "member.merge"


def yuan(text_: str, *, allow_zero: bool = False) -> int:
    """Typed yuan, exact to the fen. parse_yuan refuses zero, right for money moved;
    a fee or a price may be free."""
    if allow_zero and re.fullmatch(r"0+(\.0{1,2})?", text_.strip()):
        return 0
    return parse_yuan(text_)


def amount_of(p: Params, fen: str, typed: str, *, allow_zero: bool = False) -> int | None:
    """An amount given as integer fen or as typed yuan; None if neither."""
    if typed in p:
        return yuan(p[typed], allow_zero=allow_zero)
    value = p.get(fen)
    return None if value is None else int(value)


def required_amount(p: Params, fen: str, typed: str, *, allow_zero: bool = False) -> int:
    """`amount_of` where the operation cannot go on without one (its form asks for
    one; this holds even if a caller skips the form)."""
    amount = amount_of(p, fen, typed, allow_zero=allow_zero)
    if amount is None:
        raise InvalidAmount(f"give {fen} (fen) or {typed} (yuan)")
    return amount


def purse_amount(purse: str, typed: str) -> int:
    """Money purses take yuan; points and package uses are whole counts."""
    if purse in MONEY_PURSES:
        return yuan(typed)
    try:
        return check_count(int(typed), purse)
    except ValueError:
        raise InvalidAmount(f"{purse} amount {typed!r} is not a whole number") from None


def signed_amount(purse: str, typed: str) -> int:
    s = typed.strip()
    sign = -1 if s.startswith("-") else 1
    return sign * purse_amount(purse, s[1:] if s[:1] in ("+", "-") else s)


def member_of(ledger: Ledger, p: Params) -> str:
    """The member named by id, card number or phone, checked to exist; a merged
    member's survivor (crdtledger.merge)."""
    if p.get("card"):
        member = str(ledger.card(p["card"])["member"])
    elif p.get("phone"):
        found = views.member_by_phone(ledger, p["phone"])
        if found is None:
            raise NotFound(f"no member with phone {p['phone'].strip()}")
        member = found
    else:
        member = str(p["member"])
        if not views.member_exists(ledger, member):
            raise NotFound(f"unknown member {member}")
    return ledger.survivor_of(member)


def approver_of(p: Params) -> tuple[str, str] | None:
    a = p.get("approver")
    return (str(a["name"]), str(a["password"])) if a else None


def member_view(ledger: Ledger, operator: str, member: str) -> dict[str, Any]:
    """A member's profile as `operator` may read it (READS_ID_NO), and balance."""
    m = ledger.member(member)
    if m.get("id_no") and READS_ID_NO not in ledger.permissions(operator):
        m["id_no"] = views.mask_id_no(str(m["id_no"]))
    m["balance"] = ledger.balance(member)
    return m


def show_balance(bal: Mapping[str, Any]) -> str:
    line = (f"balance: cash {format_yuan(bal['cash'])}  bonus {format_yuan(bal['bonus'])}"
            f"  points {bal['points']}")
    packages = "  ".join(f"{pid} {left} left" for pid, left in bal["packages"].items() if left)
    return f"{line}\npackages: {packages}" if packages else line


def show_entry(entry: Mapping[str, Any], when: str = "", refunded_by: str | None = None
               ) -> str:
    """One line per ledger entry: what changed in the member's money and points.
    `refunded_by`: of a refund, how the sale it names was paid (its `pay`)."""
    # A transfer moves rights between branches, a merge pair between the members of
    # one group (crdtledger.merge): the member's money does not change.
    money = 0 if entry["kind"] in ("transfer", "merge") else sum(
        c for p, _n, c in entry["deltas"] if p in MONEY_PURSES)
    points = sum(c for p, _n, c in entry["deltas"] if p == "points")
    parts = [when, entry["node"], f"{entry['kind']:<10}"]
    if money:
        parts.append(f"{'+' if money > 0 else '-'}{format_yuan(abs(money))}")
    elif entry["kind"] in ("debit", "card", "package") and entry.get("amount"):
        parts.append(f"{format_yuan(entry['amount'])} paid at the till")
    elif entry["kind"] == "refund" and entry.get("amount"):
        # Of a sale paid at the till, back there by its method (the sale's `pay`, on
        # its line): the line said only the points it took back.
        parts.append(f"{format_yuan(entry['amount'])} refunded at the till "
                     + (f"by {refunded_by}, as the sale was paid" if refunded_by else
                        f"(as sale {entry.get('ref')} was paid)"))
    if entry["kind"] == "merge":
        moved = ", ".join(f"{p} {format_purse(p, abs(c))}" for p, _n, c in entry["deltas"])
        parts.append(f"{moved} moved from {entry['member']} to {entry['to']}" if "to" in entry
                     else f"{moved} moved in [{entry.get('ref')}]")
    elif entry["kind"] == "transfer":
        # Another branch's transfer may hold no deltas nor `to` (the record check lets
        # them be): shown as what it moved, nothing, not a traceback of the history.
        purse = next((p for p, _n, _c in entry["deltas"]), None)
        to = entry.get("to") or "?"
        parts.append(f"no rights moved {entry['node']}→{to}" if purse is None else
                     f"{format_purse(purse, entry['amount'])} {purse} rights "
                     f"{entry['node']}→{to}")
    elif points:
        parts.append(f"points {points:+d}")
    for key in ("service", "pay", "reason", "gift", "coupon"):  # pay: how it was paid
        if entry.get(key):
            parts.append(f"{key} {entry[key]}")
    parts.append(f"[{entry['id']}]")
    return "  ".join(p for p in parts if p)


def _done(what: Callable[[Mapping[str, Any], Params], str]) -> Show:
    """An entry-writing operation reads as what was done and the balance it left."""
    def show(ledger: Ledger, entry: Any, p: Params) -> str:
        if is_walk_in(str(entry["member"])):  # a walk-in customer has no balance
            return f"{what(entry, p)} [{entry['id']}]"
        bal = ledger.balance(str(entry["member"]))
        return f"{what(entry, p)} [{entry['id']}]\n{show_balance(bal)}"

    return show


def _says(template: str) -> Show:
    """A result that reads as one sentence of its own fields."""
    return lambda _ledger, result, p: template.format(**{**p, **result})


# Who a read is about: the HTTP path names the member; a person may give a card or
# a phone number instead.
WHO = (Param("member", MEMBER_ID, flag="--member", help="member id"),
       Param("card", CARD, http=False, help="card number"),
       Param("phone", text(20), http=False, help="member's phone number"))
WHO_FORM = Form(("member", "card", "phone"))
# Who pays: a member id, or a card (with its PIN if it has one).
PAYER = (Param("member", MEMBER_ID, help="member id"), Param("card", CARD, help="card number"),
         Param("pin", CARD_PIN, help="card PIN, if the card has one"))
PAYER_FORM = Form(("member", "card"))


def _card(p: Params) -> dict[str, Any]:
    """The card swiped and its PIN, as a payer's parameters give them (PAYER)."""
    return {"card": p.get("card"), "pin": p.get("pin")}
MEMBER = Param("member", MEMBER_ID, required=True, help="member id")
# Amounts: the fen a program sends, or the yuan a person types (--amount 12.34).
AMOUNT = (Param("amount", FEN, flag=None),
          Param("yuan", YUAN, flag="--amount", help="amount in yuan, e.g. 12.34"))
PERIOD = (Param("from", DAY, help="first day, YYYY-MM-DD"),
          Param("to", DAY, help="last day, YYYY-MM-DD"))
APPROVAL = Param("approver", APPROVER, help="an operator approving a large amount")
# How the till was paid: a code of the rule payment_methods, which the ledger checks
# against the rule in force (the chain may add or drop methods at any time).
METHODS = "a payment method of the rule payment_methods (cash, wechat, alipay, card, other)"
PAY_TEXT = text(16, pattern=ecma(PAY_CODE))
SAME_CARD = {"parameters": {"card_no": "$response.body#/card_no"}}

# --- members ----------------------------------------------------------------------------

PROFILE = (
    Param("gender", {"type": "string", "enum": ["", *GENDERS]}),
    Param("birthday", DAY_OF_YEAR),
    Param("anniversary", DAY_OF_YEAR),
    Param("home", NODE, help="the member's home branch (default: this one)"),
    Param("notes", free_text()),
    Param("id_no", text(18, pattern=or_empty(ecma(ID_NO)),
                        description="a resident ID card number (18 characters) or empty"),
          help="ID card number (duplicates are found by it too)"),
    # Notices (crdtledger.notices): where and in which language, and promotional
    # consent, which nobody has until they give it (PIPL).
    Param("email", line(254, "an e-mail address"), help="e-mail address for notices"),
    Param("lang", {"type": "string", "enum": ["", "zh-CN", "en"]},
          help="language of the member's notices (default: the chain's)"),
    Param("promo", {"type": "string", "enum": ["", "yes", "no"]},
          help="promotional messages: yes (consented), no (opted out); empty: never asked"),
)


@operation("member.add", "Register a member", permission="member.add",
           http="POST /members", status=201, result=_id_of("member_id"),
           params=(Param("name", line(MAX_TEXT, "a name", minLength=1), required=True),
                   Param("phone", PHONE_TEXT, required=True),
                   *PROFILE,
                   Param("tags", TAGS, flag="--tag", help="repeatable"),
                   Param("prefs", PREFS, flag="--pref",
                         help=f"{', '.join(PREF_KEYS)}=VALUE; repeatable"),
                   Param("custom", CUSTOM, flag="--custom", help="KEY=VALUE; repeatable"),
                   Param("referrer", MEMBER_ID,
                         help="the member who referred them (老带新; crdtledger.membership)")),
           show=_says("member {name} added: {member_id}"),
           links={"topup": {"requestBody": {"member": "$response.body#/member_id",
                                            "yuan": "100.00"}},
                  "debit": {"requestBody": {"member": "$response.body#/member_id",
                                            "amount": 100, "pay": "cash"}}})
def member_add(ledger: Ledger, operator: str, p: Params) -> dict[str, Any]:
    if p.get("referrer"):  # checked first: a refused referrer adds nobody
        ledger.check_referrer(p["referrer"])
    mid = ledger.add_member(
        operator, name=p["name"], phone=p["phone"], tags=p.get("tags", ()),
        prefs=p.get("prefs"), custom=p.get("custom"),
        **{k.name: p[k.name] for k in PROFILE if k.name in p})
    if p.get("referrer"):
        return {"member_id": mid, "referral": ledger.refer(operator, mid, p["referrer"])["id"]}
    return {"member_id": mid}


def _show_member(_ledger: Ledger, m: Any, _p: Params) -> str:
    lines = [f"{m['name']}  {m['phone']}  home {m['home']}  level {m['level_info']['name']}"
             f"{'  (deleted)' if m.get('deleted') else ''}  [{m['id']}]"]
    lines += [f"card {k['card_no']} {k['status']}" for k in m["cards"]]
    if m["tags"]:
        lines.append(f"tags: {', '.join(m['tags'])}")
    for label in ("prefs", "custom"):
        if m.get(label):
            lines.append(f"{label}: {', '.join(f'{k}={v}' for k, v in m[label].items())}")
    lines.append(show_balance(m["balance"]))
    return "\n".join(lines)


@operation("member.show", "A member's profile, cards, level and balance", needs=SERVES_MEMBERS,
           http="GET /members/{member}", params=WHO, forms=(WHO_FORM,), result=MEMBER_VIEW,
           show=_show_member)
def member_show(ledger: Ledger, operator: str, p: Params) -> dict[str, Any]:
    return member_view(ledger, operator, member_of(ledger, p))


@operation("member.find", "Find members by card number, phone, phone tail or name "
           "(phones masked)", needs=SERVES_MEMBERS, http="GET /members",
           params=(Param("q", text(100, minLength=1), required=True, flag="query"),
                   Param("limit", LIMIT, default=20)),
           result=array({"type": "object", **{k: v for k, v in MEMBER_LINE.items()
                                              if k != "type"}}),
           show=lambda _l, found, p: "\n".join(
               f"{m['name']}  {m['phone']}  home {m['home']}  [{m['id']}]" for m in found)
           or f"no member matches {p['q']!r}")
def member_find(ledger: Ledger, operator: str, p: Params) -> list[dict[str, Any]]:
    return ledger.find_members(p["q"], p["limit"])


EDIT = (
    Param("name", line(MAX_TEXT, "a name", minLength=1)),
    Param("phone", PHONE_TEXT),  # never emptied: erasure takes it off (crdtledger.members)
    *PROFILE,
    Param("level", line(MAX_TEXT, "a level name: a manual upgrade"),
          help="a level name: a manual upgrade"),
    Param("deleted", {"type": "boolean"}, flag="--delete", switch=True,
          help="mark the member deleted"),
)


@operation("member.edit", "Change profile fields, preferences, tags, level (member.upgrade) "
           "or deleted (member.delete)", permission="member.edit",
           http="PATCH /members/{member}", result=MEMBER_VIEW,
           params=(MEMBER, *EDIT, Param("prefs", PREFS, flag="--pref"),
                   Param("custom", CUSTOM, flag="--custom"),
                   Param("tags_add", TAGS, flag="--tag-add"),
                   Param("tags_remove", TAGS, flag="--tag-remove")),
           show=lambda _l, m, _p: f"member {m['id']} updated")
def member_edit(ledger: Ledger, operator: str, p: Params) -> dict[str, Any]:
    if set(p) <= {"member"}:
        raise InvalidInput("nothing to change: give a field, prefs, tags to add or remove")
    ledger.edit_member(operator, p["member"],
                       fields={k.name: p[k.name] for k in EDIT if k.name in p},
                       prefs=p.get("prefs"), custom=p.get("custom"),
                       tags_add=p.get("tags_add", ()), tags_remove=p.get("tags_remove", ()))
    return member_view(ledger, operator, p["member"])


# --- duplicate members and their merge (crdtledger.merge) --------------------------------

DUPLICATES = array({"type": "object", "required": ["shared", "members"], "properties": {
    "shared": {"type": "array", "items": {"type": "string", "enum": ["phone", "id_no"]}},
    "members": {"type": "array", "items": {
        "type": "object", "required": ["id", "name", "phone", "home", "day", "balance"],
        "properties": {"id": STR, "name": STR, "home": STR, "day": STR, "balance": BALANCE,
                       "phone": {"type": "string", "description": "masked"},
                       "id_no": {"type": "string", "description": "masked"}}}}}}, 10_000)
MERGED = {"type": "object", "required": ["member", "into", "group", "entries"],
          "properties": {"member": STR, "into": STR, "asked_into": STR,
                         "group": {"type": "array", "items": STR},
                         "entries": {"type": "array", "items": ENTRY}}}


def _show_duplicates(_ledger: Ledger, groups: Any, _p: Params) -> str:
    lines = []
    for i, g in enumerate(groups, 1):
        lines.append(f"group {i}: same {' and '.join(g['shared'])}")
        lines += [f"  {m['name']}  {m['phone']}  home {m['home']}  joined {m['day']}  "
                  f"cash {format_yuan(m['balance']['cash'])}  points {m['balance']['points']}"
                  f"  [{m['id']}]" for m in g["members"]]
    return "\n".join(lines) or "no duplicate members"


@operation("member.duplicates", "Members who look like one person (the same phone or ID "
           "card number), in groups to merge", needs=frozenset({"member.merge", "reports.view"}),
           http="GET /duplicates", result=DUPLICATES, show=_show_duplicates)
def member_duplicates(ledger: Ledger, operator: str, p: Params) -> list[dict[str, Any]]:
    return views.duplicates(ledger)


def _show_merged(ledger: Ledger, r: Any, _p: Params) -> str:
    moved: dict[str, int] = {}
    for e in r["entries"]:
        for purse, _node, change in e["deltas"] if "to" in e else ():
            moved[purse] = moved.get(purse, 0) - change
    here = ", ".join(f"{purse} {format_purse(purse, n)}" for purse, n in moved.items())
    return (f"member {r['member']} merged into {r['into']} (one member now: "
            f"{', '.join(r['group'])})" + (f"; this branch's rights moved: {here}" if here else "")
            + f"\n{show_balance(ledger.balance(r['into']))}")


@operation("member.merge", "Fold a duplicate member into another: cards, purses, packages, "
           "points and history then belong to the one who stays", permission="member.merge",
           http="POST /members/{member}/merge", result=MERGED, show=_show_merged,
           params=(Param("member", MEMBER_ID, required=True, help="the member to fold"),
                   Param("into", MEMBER_ID, required=True, help="the member who stays")))
def member_merge(ledger: Ledger, operator: str, p: Params) -> dict[str, Any]:
    return ledger.merge_member(operator, p["member"], p["into"])


ERASED = {"type": "object", "required": ["member", "erased", "change"],
          "properties": {"member": STR, "erased": {"type": "array", "items": STR},
                         "change": STR}}


@operation("member.erase", "Erase a member's personal data on every branch (PIPL): "
           "refused while it holds stored value; its figures stay, without a name",
           permission="member.delete", http="POST /members/{member}/erase", result=ERASED,
           params=(Param("member", MEMBER_ID, required=True, help="the member to erase"),),
           show=lambda _l, r, _p: f"erased the personal data of {', '.join(r['erased'])}")
def member_erase(ledger: Ledger, operator: str, p: Params) -> dict[str, Any]:
    return ledger.erase_member(operator, p["member"])


@operation("balance", "Cash (stored value), bonus, points and package uses left, in fen "
           "and counts", needs=SERVES_MEMBERS, http="GET /members/{member}/balance",
           params=WHO, forms=(WHO_FORM,), result=BALANCE,
           show=lambda _l, bal, _p: show_balance(bal))
def balance(ledger: Ledger, operator: str, p: Params) -> dict[str, Any]:
    return ledger.balance(member_of(ledger, p))


def _show_history(ledger: Ledger, entries: Any, _p: Params) -> str:
    tz = localtime.zone(ledger)  # the branch's clock, as the counter shows it

    def when(e: Mapping[str, Any]) -> str:
        return datetime.fromtimestamp(e["at"] / 1000, tz).strftime("%Y-%m-%d %H:%M")

    return "\n".join(show_entry(e, when(e), views.refund_paid_by(ledger, e)
                                 if e["kind"] == "refund" else None)
                      for e in entries) or "no entries"


@operation("history", "The member's ledger entries, newest first", needs=SERVES_MEMBERS,
           http="GET /members/{member}/history",
           # A member's whole history for an owner or an audit (the command line had
           # no cap); a year of weekly visits is a few hundred.
           params=(*WHO, Param("limit", {**LIMIT, "maximum": 10_000}, default=50)),
           forms=(WHO_FORM,), result=array(ENTRY, 500), show=_show_history)
def history(ledger: Ledger, operator: str, p: Params) -> list[dict[str, Any]]:
    return ledger.history(member_of(ledger, p), p["limit"])


@operation("rights.show", "Which branch holds how much of a purse (escrow rights)",
           needs=SERVES_MEMBERS, http="GET /members/{member}/rights",
           params=(*WHO, Param("purse", PURSE_NAME, default="cash")), forms=(WHO_FORM,),
           result=AMOUNTS,
           show=lambda _l, held, p: f"{p['purse']} rights: " + (
               "  ".join(f"{n} {format_purse(p['purse'], v)}" for n, v in held.items())
               or "none held"))
def rights_show(ledger: Ledger, operator: str, p: Params) -> dict[str, int]:
    return ledger.rights(member_of(ledger, p), p["purse"])


@operation("level", "The member's level, discount and the totals it is reached on",
           needs=SERVES_MEMBERS, http="GET /members/{member}/level", params=WHO,
           forms=(WHO_FORM,), result=LEVEL,
           show=lambda _l, lv, _p: f"level {lv['name']}  discount {lv['discount']}  points "
           f"x{lv['points_multiplier']}  topped up {format_yuan(lv['topped'])}  spent "
           f"{format_yuan(lv['spent'])}")
def level(ledger: Ledger, operator: str, p: Params) -> dict[str, Any]:
    return ledger.level(member_of(ledger, p))


# --- cards ------------------------------------------------------------------------------

CARD_NUMBER = Param("card_no", CARD, required=True, flag="--card", help="card number")


@operation("card.issue", "Issue a card to a member", permission="card.issue", status=201,
           http="POST /members/{member}/cards", result=CARD_VIEW,
           params=(MEMBER, CARD_NUMBER,
                   Param("type", {"type": "string", "enum": list(CARD_TYPES)},
                         default="stored_value"),
                   Param("pin", CARD_PIN), Param("expiry", DAY),
                   Param("fee", FEE, flag=None),
                   Param("fee_yuan", YUAN, flag="--fee", help="card fee paid at the till")),
           forms=(Form(("fee", "fee_yuan"), optional=True),),
           show=_says("card {card_no} issued [{id}]"),
           links={"card.lost": SAME_CARD, "card.return": SAME_CARD})
def card_issue(ledger: Ledger, operator: str, p: Params) -> dict[str, Any]:
    ledger.issue_card(operator, p["member"], p["card_no"], card_type=p["type"],
                      pin=p.get("pin"), expiry=p.get("expiry", ""),
                      fee=amount_of(p, "fee", "fee_yuan", allow_zero=True) or 0)
    return ledger.card(p["card_no"])


@operation("card.show", "The card with this number (the active one, else the newest)",
           needs=SERVES_MEMBERS, http="GET /cards/{card_no}", params=(CARD_NUMBER,),
           result=CARD_VIEW, show=_says("card {card_no} {status}: member {member} [{id}]"))
def card_show(ledger: Ledger, operator: str, p: Params) -> dict[str, Any]:
    return ledger.card(p["card_no"])


# Whose card: needed where two branches issued one number to two members while apart.
CARD_HOLDER = Param("member", MEMBER_ID, help="whose card, where two branches issued the "
                    "number to two members while apart")

# 挂失 / 取消挂失 / 退卡: one Ledger method each, the same shape.
for _event, _method, _permission, _summary, _outcome, _next in (
    ("lost", "report_lost", "card.lost", "Report a card lost (挂失)", "reported lost",
     ("card.found", "card.replace")),
    ("found", "report_found", "card.lost", "Cancel a loss report", "active again", ()),
    ("return", "return_card", "card.return", "Take a card back (退卡)", "returned", ()),
):
    def _card_event(ledger: Ledger, operator: str, p: Params, method: str = _method
                    ) -> dict[str, Any]:
        getattr(ledger, method)(operator, p["card_no"], p.get("member"))
        return ledger.card(p["card_no"], p.get("member"))

    operation(f"card.{_event}", _summary, permission=_permission,
              http=f"POST /cards/{{card_no}}/{_event}", params=(CARD_NUMBER, CARD_HOLDER),
              result=CARD_VIEW, show=_says("card {card_no} " + _outcome),
              links={n: SAME_CARD for n in _next})(_card_event)


@operation("card.replace", "Replace a card (补卡); balances stay with the member",
           permission="card.replace", http="POST /cards/{card_no}/replace", result=CARD_VIEW,
           params=(Param("card_no", CARD, required=True, flag="--card", help="the old card"),
                   Param("new_no", CARD, required=True, flag="--new", help="the new card"),
                   Param("pin", CARD_PIN,
                         help="a new PIN for the new card (else the old card's PIN is kept)"),
                   CARD_HOLDER),
           show=lambda ledger, card, p: f"card {p['card_no'].upper()} replaced by "
           f"{card['card_no']} [{card['id']}]\n{show_balance(ledger.balance(card['member']))}")
def card_replace(ledger: Ledger, operator: str, p: Params) -> dict[str, Any]:
    ledger.replace_card(operator, p["card_no"], p["new_no"], pin=p.get("pin"),
                        member=p.get("member"))
    return ledger.card(p["new_no"])


# --- money ------------------------------------------------------------------------------


@operation("topup", "Top up stored value (充值): paid here, held here", permission="topup",
           http="POST /topup",
           params=(*PAYER, *AMOUNT, APPROVAL,
                   Param("pay", {**PAY_TEXT, "description": f"how the till was paid: {METHODS}; "
                                 "default the rule's first"})),
           forms=(PAYER_FORM, Form(("amount", "yuan"))), result=ENTRY,
           show=_done(lambda e, _p: f"topped up {format_yuan(e['amount'])} ({e['pay']})" + (
               f" + bonus {format_yuan(e['bonus'])}" if e.get("bonus") else "")),
           links={"debit": {"requestBody": {"member": "$response.body#/member",
                                            "amount": 100}}})
def topup(ledger: Ledger, operator: str, p: Params) -> dict[str, Any]:
    amount = required_amount(p, "amount", "yuan")
    # Ledger.topup wants the member; it checks the card (status, PIN) against it.
    member = p["member"] if "member" in p else str(ledger.card(p["card"])["member"])
    return ledger.topup(operator, member, amount, **_card(p),
                        approver=approver_of(p), pay=p.get("pay"))


@operation("debit", "Charge (扣费): an amount as given, or a service from the price list at "
           "the member's level discount (pay=package: uses of a package of the service); "
           "no member nor card, paid at the till: to a walk-in customer (散客)",
           permission="debit", http="POST /debit",
           params=(*PAYER, *AMOUNT, Param("service", SERVICE, help="a service code"),
                   Param("qty", COUNT, default=1),
                   Param("pay", {**PAY_TEXT, "description": "stored (stored value), package "
                                 f"(a package's uses) or at the till by {METHODS}"},
                         default="stored"),
                   Param("package", ENTRY_ID,
                         help="which package to use (default: the first that fits)"),
                   Param("coupon", ENTRY_ID, help="a coupon of the member's that this "
                         "charge redeems: its discount comes off the price")),
           forms=(Form(("member", "card"), optional=True), Form(("amount", "yuan", "service"))),
           result=ENTRY, show=_done(lambda e, p: "charged " + (f"{e['service']} x{e['qty']}: "
                                                 if e.get("service") else "")
                      + f"{format_yuan(e['amount'])} ({e['pay']})"),
           links={"refund": {"requestBody": {"debit_id": "$response.body#/id"}}})
def debit(ledger: Ledger, operator: str, p: Params) -> dict[str, Any]:
    return ledger.debit(operator, p.get("member"), amount=amount_of(p, "amount", "yuan"),
                        service=p.get("service"), qty=p["qty"], pay=p["pay"],
                        package=p.get("package"), **_card(p),
                        coupon=p.get("coupon"))


@operation("refund", "Refund (退款) all or part of a debit made at this branch, or at a "
           "closed shop that handed its members' rights over to it: what is "
           "left of it by default; qty for uses of a package or units of a goods sale (they "
           "go back into this branch's stock)", permission="refund",
           http="POST /refund",
           params=(Param("debit_id", ENTRY_ID, required=True, flag="--debit"), *AMOUNT,
                   Param("qty", COUNT, help="package uses, or goods units"),
                   Param("reason", free_text())),
           forms=(Form(("amount", "yuan", "qty"), optional=True),), result=ENTRY,
           show=_done(lambda e, p: "refunded " + (
               f"{e['goods']} x{e['qty']}: {format_yuan(e['amount'])}" if e.get("goods")
               else f"{e['qty']} uses" if e.get("qty") else format_yuan(e["amount"]))
               + f" of {p['debit_id']}" + (
                   f" ({format_yuan(e['kept'])} kept for {e['spent']} points spent since)"
                   if e.get("kept") else "")))
def refund(ledger: Ledger, operator: str, p: Params) -> dict[str, Any]:
    return ledger.refund(operator, p["debit_id"], amount_of(p, "amount", "yuan"),
                         reason=p.get("reason", ""), qty=p.get("qty"))


REFUND_TERMS = {
    "type": "object",
    "required": ["debit", "member", "left", "share", "money", "points", "spent", "kept"],
    "properties": {
        "debit": STR, "member": STR, "left": INT, "share": INT, "money": INT,
        "points": INT, "spent": INT, "kept": INT,
        "units": {"type": ["integer", "null"]},
        "deltas": {"type": "array", "items": {"type": "array", "minItems": 3, "maxItems": 3}},
    },
}


def _show_quote(t: Mapping[str, Any], p: Params) -> str:
    part = format_yuan(t["share"]) if t["units"] is None else f"{t['units']} unit(s)"
    kept = (f", keeping {format_yuan(t['kept'])} for {t['spent']} points spent since"
            if t["kept"] else "")
    return f"refunding {part} of {p['debit_id']} pays back {format_yuan(t['money'])}{kept}"


@operation("quote.refund", "What a refund of a debit would give back, before it is made: "
           "the share refunded, the money paid back, the points taken back, and the worth "
           "kept for the sale's points the member has spent since", needs=frozenset({"refund"}),
           http="GET /refund/quote",
           params=(Param("debit_id", ENTRY_ID, required=True, flag="--debit"), *AMOUNT,
                   Param("qty", COUNT, help="package uses, or goods units")),
           forms=(Form(("amount", "yuan", "qty"), optional=True),), result=REFUND_TERMS,
           show=lambda _l, t, p: _show_quote(t, p))
def refund_quote(ledger: Ledger, operator: str, p: Params) -> dict[str, Any]:
    return ledger.refund_terms(p["debit_id"], amount_of(p, "amount", "yuan"), qty=p.get("qty"))


PURSE_PARAM = Param("purse", PURSE_NAME, default="cash")


@operation("rights.transfer", "Give some of this branch's rights on a member's purse to "
           "another branch", permission="rights.transfer", http="POST /rights/transfer",
           params=(MEMBER, PURSE_PARAM, Param("to", NODE, required=True),
                   Param("amount", {**COUNT, "description": "fen for cash and bonus, a "
                                    "whole count otherwise"}, flag=None),
                   Param("yuan", YUAN, flag="--amount",
                         help="yuan for cash and bonus, a whole count otherwise")),
           forms=(Form(("amount", "yuan")),), result=ENTRY,
           show=_done(lambda e, p: f"moved {format_purse(p['purse'], e['amount'])} of "
                      f"{p['purse']} rights {e['node']} → {e['to']}"))
def rights_transfer(ledger: Ledger, operator: str, p: Params) -> dict[str, Any]:
    amount = purse_amount(p["purse"], p["yuan"]) if "yuan" in p else int(p["amount"])
    return ledger.transfer_rights(operator, p["member"], p["to"], amount, purse=p["purse"])


HELD = {"type": "object", "required": ["node", "members", "held"], "properties": {
    "node": STR, "members": INT, "held": AMOUNTS}}


def _show_held(_ledger: Ledger, r: Any, _p: Params) -> str:
    if not r["held"]:
        return f"{r['node']} holds no member's rights"
    return f"{r['node']} holds rights of {r['members']} member(s): " + format_purses(r["held"])


@operation("rights.held", "What a branch holds of the members' purses, summed (escrow "
           "rights: stored value, bonus, points, packages, coupons): what is stranded if "
           "its certificate is revoked before it hands them over", needs=REPORTS,
           http="GET /rights/held",
           params=(Param("node", NODE, help="the branch (default: this one)"),),
           result=HELD, show=_show_held)
def rights_held(ledger: Ledger, operator: str, p: Params) -> dict[str, Any]:
    return views.rights_summary(ledger, p.get("node", ledger.node))


@operation("rights.handover", "A shop closing for good: give every member's rights this "
           "branch holds (stored value, bonus, points, packages, coupons; goods move by "
           "stock ship) to another branch, before the chain revokes its certificate; that "
           "branch, the same at every run, refunds this shop's sales from then on",
           permission="rights.transfer", http="POST /rights/handover",
           params=(Param("to", NODE, required=True),),
           result={"type": "object", "required": ["to", "members", "entries", "moved"],
                   "properties": {"to": STR, "members": INT, "entries": INT,
                                  "moved": AMOUNTS}},
           show=lambda _l, r, _p: (
               f"handed over to {r['to']}: rights of {r['members']} member(s) in "
               f"{r['entries']} transfer(s): " + (format_purses(r["moved"])
                                                   or "nothing was held here")))
def rights_handover(ledger: Ledger, operator: str, p: Params) -> dict[str, Any]:
    return ledger.hand_over_rights(operator, p["to"])


POINTS = Param("points", COUNT, required=True)


@operation("points.redeem", "积分兑换: spend points on a gift", permission="points.redeem",
           http="POST /points/redeem",
           # The gift is required (and blank refused by the library, after the card's
           # checks: a lost card is said first at the counter, whose box may be empty).
           params=(*PAYER, POINTS, Param("gift", line(what="a gift"), required=True,
                                         help="what was given for the points")),
           forms=(PAYER_FORM,),
           result=ENTRY, show=_done(lambda e, _p: f"redeemed {e['points']} points"))
def points_redeem(ledger: Ledger, operator: str, p: Params) -> dict[str, Any]:
    return ledger.redeem_points(operator, p.get("member"), p["points"], p["gift"], **_card(p))


@operation("points.convert", "积分转储值: turn points into bonus value",
           permission="points.redeem", http="POST /points/convert", params=(*PAYER, POINTS),
           forms=(PAYER_FORM,),
           result=ENTRY, show=_done(lambda e, _p: f"converted {e['points']} points into "
                                    f"{format_yuan(e['amount'])}"))
def points_convert(ledger: Ledger, operator: str, p: Params) -> dict[str, Any]:
    return ledger.convert_points(operator, p.get("member"), p["points"], **_card(p))


@operation("points.expire", "积分过期: write off the expired points this branch holds, for "
           "one member or all (the node also does it daily)", permission="adjust",
           http="POST /points/expire",
           params=(Param("member", MEMBER_ID, help="one member (default: every member)"),),
           result=array(ENTRY, 500),
           show=lambda _ledger, entries, _p: f"{sum(e['points'] for e in entries)} expired "
           f"points written off for {len({e['member'] for e in entries})} member(s)")
def points_expire(ledger: Ledger, operator: str, p: Params) -> list[dict[str, Any]]:
    if "member" in p:  # one nobody knows is refused, not answered "nothing due"
        return ledger.expire_points(operator, member_of(ledger, p))
    return ledger.expire_due_points(operator)


@operation("clock.confirm", "本机时钟已核对: say this PC's clock is right, so that with no "
           "other branch connected to confirm it (a branch that syncs by files) today's "
           "month-end cut and write-off of expired points go by it", permission="adjust",
           http="POST /clock/confirm",
           result=obj({"day": DAY, "at": {"type": "integer", "minimum": 0}}),
           show=lambda _ledger, r, _p: f"this PC's clock confirmed for {r['day']}: the "
           "daily pass closes the month due and writes off expired points by it today")
def clock_confirm(ledger: Ledger, operator: str, p: Params) -> dict[str, Any]:
    return ledger.confirm_clock(operator)


@operation("package.sell", "计次卡: sell a number of uses of a service",
           permission="package.sell", http="POST /packages",
           params=(*PAYER, Param("service", SERVICE, required=True),
                   Param("uses", COUNT, required=True), Param("price", FEE, flag=None),
                   Param("price_yuan", YUAN, flag="--price", help="price in yuan"),
                   Param("pay", {**PAY_TEXT, "description": "stored (from stored value) or "
                                 f"at the till by {METHODS}; default the rule's first"}),
                   APPROVAL),
           forms=(PAYER_FORM, Form(("price", "price_yuan"))), result=ENTRY,
           show=_done(lambda e, _p: f"sold {e['qty']} x {e['service']} for "
                      f"{format_yuan(e['amount'])} ({e['pay']})"))
def package_sell(ledger: Ledger, operator: str, p: Params) -> dict[str, Any]:
    price = required_amount(p, "price", "price_yuan", allow_zero=True)
    return ledger.sell_package(operator, p.get("member"), p["service"], p["uses"], price,
                               pay=p.get("pay"), approver=approver_of(p), **_card(p))


@operation("correct", "A manual adjustment of a purse (with an approver once the operator's "
           "corrections of the day without one pass the approval rule's correction_limit)",
           permission="adjust",
           http="POST /corrections",
           params=(MEMBER, PURSE_PARAM, Param("change", SIGNED, flag=None),
                   Param("change_text", SIGNED_TEXT, flag="--change",
                         help="signed: yuan for cash/bonus, a count otherwise"),
                   Param("reason", free_text(MAX_TEXT, minLength=1), required=True), APPROVAL),
           forms=(Form(("change", "change_text")),), result=ENTRY,
           show=_done(lambda e, p: f"corrected {p['purse']} by " + (
               p["change_text"].strip() if "change_text" in p
               else format_purse(p["purse"], p["change"]))))
def correct(ledger: Ledger, operator: str, p: Params) -> dict[str, Any]:
    change = (signed_amount(p["purse"], p["change_text"]) if "change_text" in p
              else int(p["change"]))
    return ledger.correct(operator, p["member"], p["purse"], change, p["reason"],
                          approver=approver_of(p))


# --- reports ----------------------------------------------------------------------------


def _open_note(ledger: Ledger, last_day: str | None) -> list[str]:
    """A line saying that a period reaching past the last closed month may still
    change (records of another branch's days arrive late: a sale at a branch cut off
    on the 31st moved March's settlement from "nothing to settle" to a debt a week
    after it was first printed). Nothing for a period inside a closed month."""
    through = closing.books(ledger)["closed_through"]
    if last_day is not None and through is not None and last_day[:7] <= through:
        return []
    return ["", "not closed yet: these figures may still change as other branches' "
                f"records arrive (books closed through {through or 'no month yet'})"]


def _show_daily(ledger: Ledger, r: Any, _p: Params) -> str:
    return "\n".join((
        f"{r['day']}  branch {r['branch']}",
        f"new members   {r['new_members']}",
        f"sales         {format_yuan(r['sales'])}  ({r['debits']} debits, "
        f"refunds {format_yuan(r['refunds'])})",
        f"top-up cash   {format_yuan(r['topup_cash'])}  ({r['topups']} top-ups)",
        f"  by method   {_by_method(r['topup_by_method'])}",
        f"at the till   {_by_method(r['till_by_method'])}  (packages and services, "
        "less their refunds and exits paid back)",
        f"cards sold    {r['cards_sold']}  ({format_yuan(r['card_sales'])})",
        f"exits paid    {format_yuan(r.get('exit_refunds', 0))}",
        *_open_note(ledger, r["day"]),
    ))


def _by_method(split: Mapping[str, int]) -> str:
    return "  ".join(f"{m} {format_yuan(v)}" for m, v in split.items()) or "-"


@operation("report.daily", "营业报表: one day's new members, sales, top-up cash, cards sold",
           needs=REPORTS, http="GET /reports/daily",
           params=(Param("day", DAY), Param("branch", NODE)), result=DAILY, show=_show_daily)
def report_daily(ledger: Ledger, operator: str, p: Params) -> dict[str, Any]:
    if p.get("branch"):
        views.require_heard_of(ledger, p["branch"], "no report for it")
    return views.daily_report(ledger, p.get("day") or ledger.today(), p.get("branch"))


def _show_settlement(ledger: Ledger, r: Any, p: Params) -> str:
    owed = [f"{x['owes']} owes {x['to']} {format_yuan(x['amount'])}  ({x['to']} served "
            f"{format_yuan(x['served'])} of {x['owes']}'s value, {x['owes']} served "
            f"{format_yuan(x['served_back'])} of {x['to']}'s)" for x in r["pairs"]]
    rows = settlement.csv_rows(r)
    table = rows[rows.index([]) + 1:]  # the branches, as --csv has them
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    lines = ["  ".join([row[0].ljust(widths[0]), *(c.rjust(w) for c, w in zip(
        row[1:], widths[1:], strict=True))]) for row in table]
    return "\n".join([*(owed or ["nothing to settle"]), "", *lines,
                      *_open_note(ledger, p.get("to"))])


@operation("report.settlement", "结算表: who owes whom for stored value paid in at one branch "
           "and served at another (rights transfers are no debt)",
           needs=REPORTS, http="GET /reports/settlement", params=PERIOD, result=SETTLEMENT,
           show=_show_settlement, table=settlement.csv_rows)
def report_settlement(ledger: Ledger, operator: str, p: Params) -> settlement.Statement:
    return views.settlement(ledger, p.get("from"), p.get("to"))


MONTH_OR_NONE = {"type": ["string", "null"], "pattern": ecma(MONTH)}
NODES = {"type": "array", "items": STR}
BOOKS = {"type": "object",
         "required": ["closed_through", "latest", "branches", "behind", "retired",
                      "closing", "blocked"],
         "properties": {"closed_through": MONTH_OR_NONE, "latest": MONTH_OR_NONE,
                        "branches": {"type": "object", "additionalProperties": MONTH_OR_NONE},
                        "behind": NODES, "retired": NODES, "blocked": NODES,
                        "closing": {"oneOf": [{"type": "null"}, {
                            "type": "object",
                            "required": ["month", "digest", "agree", "differ", "counted",
                                         "balances"],
                            "properties": {"month": STR, "digest": {"type": ["string", "null"]},
                                           "agree": NODES, "differ": NODES,
                                           "counted": {"type": "boolean"},
                                           "balances": {"oneOf": [{"type": "null"}, {
                                               "type": "object",
                                               "required": ["purses", "holders", "lots",
                                                            "lot_points", "pending"],
                                               "properties": {
                                                   "purses": {"type": "object",
                                                              "additionalProperties": INT},
                                                   "holders": INT, "lots": INT,
                                                   "lot_points": INT, "pending": INT}}]}}}]}}}


def _show_books(_ledger: Ledger, r: Any, _p: Params) -> str:
    head = (f"books closed through {r['closed_through']} at every branch"
            if r["closed_through"] else "no month is closed at every branch yet")
    if r["behind"]:
        head += f"; {r['latest']} waits for {', '.join(r['behind'])}"
    if r["retired"]:
        head += f" (not waiting for {', '.join(r['retired'])}: certificates revoked)"
    lines = [head]
    if r["blocked"]:
        lines.append(f"{', '.join(r['blocked'])} blocked here for a proven fault (crdtledger "
                     "status): the months after its last cut wait for it until head office "
                     "revokes its certificate (crdtledger chain revoke)")
    c = r["closing"]
    if c and c["digest"]:
        lines.append(f"closing of {c['month']}: digest {c['digest'][:16]}, signed alike by "
                     f"{', '.join(c['agree']) or 'nobody yet'}"
                     + ("; it counts (head office and a quorum signed it)" if c["counted"]
                        else "; it counts once head office and a quorum sign it"))
        if c["balances"]:
            lines.append(f"balances at the end of {c['month']}: "
                         + _month_end_line(c["balances"]))
        if c["differ"]:
            lines.append(f"WARNING: {', '.join(c['differ'])} signed another history of "
                         f"{c['month']} (a fork, or records that reached one side late)")
    return "\n".join([*lines, *(f"  {n:16} {m or 'nothing closed'}"
                                for n, m in r["branches"].items())])


# What each purse kind's sum is, for an owner and an accountant (model.PURSE).
_PURSE_KINDS = {"cash": "stored value {}", "bonus": "bonus value {}", "points": "{} points",
                "pkg": "{} package uses", "cpn": "{} coupons", "stock": "{} goods on shelves",
                "transit": "{} goods in transit"}


def _month_end_line(b: dict[str, Any]) -> str:
    sums = b["purses"]
    said = [text.format(format_yuan(sums[k]) if k in MONEY_PURSES else sums[k])
            for k, text in _PURSE_KINDS.items() if sums.get(k)]
    # The lots are cut by id at noon UTC of the 1st (the same instant in every zone, so
    # every branch signs one digest), the purses at the branch's own month end: a
    # morning's points on the 1st east of UTC-12 are in the lots and not the purses.
    lots = (f"; {b['lot_points']} points in {b['lots']} lots not yet spent or expired "
            "(the lots as of the 1st, 12:00 UTC)" if b.get("lots") else "")
    return (f"{', '.join(said) or 'nothing held'}, held by {b['holders']} members{lots}"
            + _pending(b["pending"]))


def _pending(n: int) -> str:
    return (f" ({n} records or entries of the month wait here for others not received "
            "yet: not counted)" if n else "")


@operation("report.books", "月结: how far each branch has closed its books (its month-end "
           "cut: nothing more can be written into a closed month, at any branch)",
           needs=REPORTS, http="GET /reports/books", result=BOOKS, show=_show_books,
           more="A branch closes a month on the 8th of the next one, in its daily pass. "
                "A month is final once every branch has closed it.")
def report_books(ledger: Ledger, operator: str, p: Params) -> dict[str, Any]:
    return closing.books(ledger)


MEMBER_BALANCE = {"type": "object", "required": ["member", "name", *closing.MEMBER_PURSES],
                  "properties": {"member": STR, "name": STR,
                                 **dict.fromkeys(closing.MEMBER_PURSES, INT)}}
BALANCES = {"type": "object", "required": ["month", "members", "total", "pending"],
            "properties": {"month": STR, "pending": INT,
                           "members": {"type": "array", "items": MEMBER_BALANCE},
                           "total": {"type": "object", "required": list(closing.MEMBER_PURSES),
                                     "properties": dict.fromkeys(closing.MEMBER_PURSES, INT)}}}


def _show_balances(_ledger: Ledger, r: Any, _p: Params) -> str:
    t = r["total"]
    head = (f"balances at the end of {r['month']} (closed at every branch), "
            f"{len(r['members'])} members: stored value {format_yuan(t['cash'])}, "
            f"bonus value {format_yuan(t['bonus'])}, {t['points']} points"
            + _pending(r["pending"]))
    return "\n".join([head, *(f"  {m['member']}  {m['name'] or '-'}  {format_yuan(m['cash'])}"
                              f"  bonus {format_yuan(m['bonus'])}  {m['points']} points"
                              for m in r["members"])])


@operation("report.balances", "月末余额: every member's stored value, bonus value and points "
           "at the end of a month closed at every branch (what the chain owes its members "
           "then, final)", needs=REPORTS, http="GET /reports/balances",
           params=(Param("month", MONTH_TEXT, help="YYYY-MM; the latest month closed at "
                                                   "every branch when left out"),),
           result=BALANCES, show=_show_balances, table=closing.balance_rows)
def report_balances(ledger: Ledger, operator: str, p: Params) -> dict[str, Any]:
    return closing.member_balances(ledger, p.get("month"))


MOVEMENT_ROW = {"type": "object",
                "required": ["purse", "branch", "opening", *movements.LINES, "closing", "check"],
                "properties": {"purse": {"type": "string", "enum": list(movements.PURSES)},
                               "branch": {"type": "string",
                                          "description": "a branch, or all: the chain"},
                               **{k: INT for k in ("opening", *movements.LINES, "closing",
                                                   "check")}}}
MOVEMENT = {"type": "object", "required": ["rows"],
            "properties": {"from": {"type": ["string", "null"]},
                           "to": {"type": ["string", "null"]},
                           "rows": {"type": "array", "items": MOVEMENT_ROW}}}
PACKAGE_ROW = {"type": "object", "required": ["service", *movements.PACKAGE_FIGURES],
               "properties": {"service": {"type": "string",
                                          "description": "a service, or all: the chain"},
                              **{k: INT for k in movements.PACKAGE_FIGURES}}}
PACKAGES_VALUE = {"type": "object", "required": ["rows"],
                  "properties": {"from": {"type": ["string", "null"]},
                                 "to": {"type": ["string", "null"]},
                                 "rows": {"type": "array", "items": PACKAGE_ROW}}}


def _said(purse: str, n: int) -> str:
    return str(n) if purse == "points" else format_yuan(n)


def _show_movements(_ledger: Ledger, r: Any, _p: Params) -> str:
    lines = [f"movement from {r['from'] or 'the first entry'} to {r['to'] or 'now'} "
             "(stored value and bonus value in yuan, points counted)"]
    for row in r["rows"]:
        said = [f"{k} {_said(row['purse'], row[k])}" for k in movements.LINES if row[k]]
        check = "ties" if row["check"] == 0 else f"DOES NOT TIE by {row['check']}"
        lines.append(f"  {row['purse']:<6} {row['branch']:<6} opening "
                     f"{_said(row['purse'], row['opening'])}  {', '.join(said) or 'no movement'}"
                     f"  closing {_said(row['purse'], row['closing'])}  ({check})")
    return "\n".join(lines)


def movement_rows(r: Any) -> list[list[str]]:
    return [["purse", "branch", "opening", *movements.LINES, "closing", "check"],
            *([row["purse"], row["branch"], *(_said(row["purse"], row[k]) for k in (
                "opening", *movements.LINES, "closing", "check"))] for row in r["rows"])]


@operation("report.movements", "余额变动: the movement of a period of stored value, bonus value "
           "and points, per branch and for the chain: opening, what came in and went out, "
           "closing, and a check that they tie", needs=REPORTS,
           http="GET /reports/movements", params=PERIOD, result=MOVEMENT,
           show=_show_movements, table=movement_rows,
           more="Opening and closing are the balances at the period's bounds (the chain's "
                "days): at a month's bounds, the month end's (report balances).")
def report_movements(ledger: Ledger, operator: str, p: Params) -> dict[str, Any]:
    return movements.movement(ledger, p.get("from"), p.get("to"))


def _show_packages(_ledger: Ledger, r: Any, _p: Params) -> str:
    lines = [f"packages from {r['from'] or 'the first entry'} to {r['to'] or 'now'}"]
    for row in r["rows"]:
        check = "ties" if row["check"] == 0 else f"DOES NOT TIE by {row['check']}"
        lines.append(
            f"  {row['service']}: {row['packages']} packages, {row['uses_sold']} uses sold; "
            f"unearned {format_yuan(row['opening'])}, sold {format_yuan(row['sold'])}, "
            f"served {row['served_uses']} uses {format_yuan(row['served'])}, breakage "
            f"{row['breakage_uses']} uses {format_yuan(row['breakage'])}, unearned "
            f"{format_yuan(row['closing'])} for {row['uses_left']} uses ({check})")
    return "\n".join(lines)


def package_rows(r: Any) -> list[list[str]]:
    uses = ("packages", "uses_sold", "served_uses", "breakage_uses", "uses_left")
    return [["service", *movements.PACKAGE_FIGURES],
            *([row["service"], *(str(row[k]) if k in uses else format_yuan(row[k])
                                 for k in movements.PACKAGE_FIGURES)] for row in r["rows"])]


@operation("report.packages", "套餐未消费: per service, the package uses sold and not yet "
           "served and their value at what was paid per use, and the value recognised in "
           "the period (uses served, and uses left at a member's exit)", needs=REPORTS,
           http="GET /reports/packages", params=PERIOD, result=PACKAGES_VALUE,
           show=_show_packages, table=package_rows,
           more="A package's price is split over its uses in whole fen, the remainder one "
                "fen each on the first uses served, so its uses sum to its price.")
def report_packages(ledger: Ledger, operator: str, p: Params) -> dict[str, Any]:
    return movements.packages(ledger, p.get("from"), p.get("to"))


def _show_ranking(_ledger: Ledger, rows: Any, p: Params) -> str:
    key = "member" if p["by"] == "members" else "service"
    return "\n".join(f"{i:>3}. {r.get('name') or r[key]}  {format_yuan(r['amount'])}  "
                     f"({r['count']}x)" for i, r in enumerate(rows, 1)) or "no sales yet"


@operation("report.ranking", "消费排名 by member or 销量排名 by service, net of refunds",
           needs=REPORTS, http="GET /reports/ranking",
           params=(Param("by", {"type": "string", "enum": ["members", "services"]},
                         default="members"), *PERIOD, Param("limit", LIMIT, default=10)),
           result=RANKING, show=_show_ranking)
def report_ranking(ledger: Ledger, operator: str, p: Params) -> list[dict[str, Any]]:
    return views.ranking(ledger, p["by"], p.get("from"), p.get("to"), p["limit"])


# --- goods and stock (crdtledger.goods) -------------------------------------------------

GOODS_CODE = text(40, pattern="^[A-Za-z0-9_-]{1,40}$",
                  description="a goods code from the catalogue (or its barcode)")
GOODS = Param("goods", GOODS_CODE, required=True, help="goods code or barcode")
QTY = Param("qty", COUNT, required=True, help="units")
UNITS = {**COUNT, "description": "units"}
GOODS_ITEM = {"type": "object", "required": ["code", "name", "price", "cost", "stock"],
              "properties": {"code": STR, "name": STR, "price": INT, "cost": INT,
                             "points_price": INT, "low_stock": INT, "stock": STR,
                             "barcode": STR, "unit": STR, "category": STR}}
STOCK_ROW = {"type": "object", "required": ["code", "name", "branch", "qty", "transit",
                                            "low_stock", "low"],
             "properties": {"code": STR, "name": STR, "branch": STR, "qty": INT,
                            "transit": INT, "low_stock": INT, "low": {"type": "boolean"}}}
GOODS_RANK = {"type": "object", "required": ["code", "name", "qty", "sales", "cost", "profit"],
              "properties": {"code": STR, "name": STR, "qty": INT, "sales": INT, "cost": INT,
                             "profit": INT}}
SALE = {  # an entry, and the stock entry committed with it
    "type": "object",
    "required": ["id", "kind", "member", "node", "op", "at", "amount", "deltas", "stock_entry"],
    "properties": {"id": STR, "kind": STR, "member": STR, "node": STR, "op": STR, "at": INT,
                   "amount": INT, "deltas": {"type": "array"}, "stock_entry": STR},
}


# Who may read the stock: whoever sells it, moves it, writes the catalogue or reads
# the reports.
STOCK_READERS = frozenset({"sale", "stock.write", "goods.write", "points.redeem",
                           "reports.view"})


def _stock_table(rows: Any) -> list[list[str]]:
    return [["code", "name", "branch", "qty", "transit", "low_stock", "low"],
            *([r["code"], r["name"], r["branch"], str(r["qty"]), str(r["transit"]),
               str(r["low_stock"]), "yes" if r["low"] else ""] for r in rows)]


def _show_stock(_ledger: Ledger, rows: Any, _p: Params) -> str:
    return "\n".join(f"{r['code']:<8} {r['name']}  {r['branch']}  {r['qty']}"
                     + (f"  (+{r['transit']} in transit)" if r["transit"] else "")
                     + ("  LOW" if r["low"] else "") for r in rows) or "no stock"


def _rank_table(rows: Any) -> list[list[str]]:
    return [["code", "name", "qty", "sales", "cost", "profit"],
            *([r["code"], r["name"], str(r["qty"]), format_yuan(r["sales"]),
               format_yuan(r["cost"]), format_yuan(r["profit"])] for r in rows)]


def _sold(e: Mapping[str, Any], _p: Params) -> str:
    """A sale; to a walk-in customer (散客) it has no balance to show."""
    return (f"sold {e['goods']} x{e['qty']}: {format_yuan(e['amount'])} ({e['pay']})"
            + (f" [{e['id']}]" if is_walk_in(str(e["member"])) else ""))


def _moved(e: Mapping[str, Any], _p: Params) -> str:
    return f"stock {e['reason']}: {e['goods']} x{e['qty']} [{e['id']}]"


@operation("goods.add", "商品资料: add a goods item to the chain's catalogue, or change one "
           "(head office)", permission="goods.write", http="POST /goods", status=201,
           params=(Param("code", text(20, pattern=ecma(SERVICE_CODE)), required=True),
                   Param("name", line(60, "a name", minLength=1), required=True),
                   Param("price", FEE, flag=None),
                   Param("price_yuan", YUAN, flag="--price", help="sale price in yuan"),
                   Param("cost", FEE, flag=None),
                   Param("cost_yuan", YUAN, flag="--cost", help="cost in yuan"),
                   Param("barcode", line(40, "a barcode")), Param("unit", line(10, "a unit")),
                   Param("category", line(40, "a category")),
                   Param("points_price", {**FEE, "description": "points a gift costs; 0: "
                                          "not a gift"}, default=0),
                   Param("low_stock", {**FEE, "description": "remind below this many "
                                       "units"}, default=0)),
           forms=(Form(("price", "price_yuan")), Form(("cost", "cost_yuan"), optional=True)),
           result=GOODS_ITEM,
           show=lambda _l, g, _p: f"goods {g['code']} {g['name']}: price "
           f"{format_yuan(g['price'])}, cost {format_yuan(g['cost'])} [{g['stock']}]")
def goods_add(ledger: Ledger, operator: str, p: Params) -> dict[str, Any]:
    return ledger.add_goods(
        operator, p["code"], p["name"], required_amount(p, "price", "price_yuan",
                                                        allow_zero=True),
        amount_of(p, "cost", "cost_yuan", allow_zero=True) or 0,
        barcode=p.get("barcode", ""), unit=p.get("unit", ""), category=p.get("category", ""),
        points_price=p["points_price"], low_stock=p["low_stock"])


@operation("goods.list", "The goods catalogue", http="GET /goods",
           result=array(GOODS_ITEM, 10_000),
           show=lambda _l, items, _p: "\n".join(
               f"{g['code']:<8} {g['name']}  {format_yuan(g['price'])}"
               + (f"  {g['points_price']} points" if g.get("points_price") else "")
               for g in items) or "no goods")
def goods_list(ledger: Ledger, operator: str, p: Params) -> list[dict[str, Any]]:
    return sorted(ledger.catalogue().values(), key=lambda g: g["code"])


@operation("stock.in", "商品进货单: units bought in at this branch", permission="stock.write",
           http="POST /stock/in",
           params=(GOODS, QTY, Param("cost", FEE, flag=None),
                   Param("cost_yuan", YUAN, flag="--cost",
                         help="unit cost in yuan (default the catalogue's)"),
                   Param("supplier", line(60, "a supplier"))),
           forms=(Form(("cost", "cost_yuan"), optional=True),), result=ENTRY,
           show=lambda _l, e, p: _moved(e, p))
def stock_in(ledger: Ledger, operator: str, p: Params) -> dict[str, Any]:
    return ledger.stock_in(operator, p["goods"], p["qty"],
                           amount_of(p, "cost", "cost_yuan", allow_zero=True),
                           p.get("supplier", ""))


@operation("stock.return", "商品退货单: units sent back to the supplier",
           permission="stock.write", http="POST /stock/return",
           params=(GOODS, QTY, Param("supplier", line(60, "a supplier"))), result=ENTRY,
           show=lambda _l, e, p: _moved(e, p))
def stock_return(ledger: Ledger, operator: str, p: Params) -> dict[str, Any]:
    return ledger.stock_return(operator, p["goods"], p["qty"], p.get("supplier", ""))


@operation("stock.adjust", "盘点: correct this branch's stock by a signed number of units "
           "(with an approver once the operator's adjustments of the day without one pass "
           "the approval rule's stock_adjust_limit at cost)",
           permission="stock.write", http="POST /stock/adjust",
           params=(GOODS, Param("change", {**SIGNED, "description": "signed units"},
                                required=True),
                   Param("reason", free_text(MAX_TEXT, minLength=1), required=True), APPROVAL),
           result=ENTRY, show=lambda _l, e, p: _moved(e, p))
def stock_adjust(ledger: Ledger, operator: str, p: Params) -> dict[str, Any]:
    return ledger.stock_adjust(operator, p["goods"], p["change"], p["reason"],
                               approver=approver_of(p))


@operation("stock.ship", "调拨: ship units from this branch to another (in transit there "
           "until received)", permission="stock.write", http="POST /stock/ship",
           params=(GOODS, QTY, Param("to", NODE, required=True)), result=ENTRY,
           show=lambda _l, e, p: _moved(e, p) + f" to {e['to']}")
def stock_ship(ledger: Ledger, operator: str, p: Params) -> dict[str, Any]:
    return ledger.ship_stock(operator, p["goods"], p["qty"], p["to"])


@operation("stock.receive", "调拨: take units shipped to this branch into its stock (all in "
           "transit by default)", permission="stock.write", http="POST /stock/receive",
           params=(GOODS, Param("qty", UNITS)), result=ENTRY,
           show=lambda _l, e, p: _moved(e, p))
def stock_receive(ledger: Ledger, operator: str, p: Params) -> dict[str, Any]:
    return ledger.receive_stock(operator, p["goods"], p.get("qty"))


@operation("stock.show", "Units of a goods item on hand at this branch (or another)",
           needs=STOCK_READERS, http="GET /goods/{goods}/stock",
           params=(GOODS, Param("branch", NODE)),
           result={"type": "object", "required": ["branch", "qty"],
                   "properties": {"branch": STR, "qty": INT}},
           show=_says("{goods} at {branch}: {qty}"))
def stock_show(ledger: Ledger, operator: str, p: Params) -> dict[str, Any]:
    return ledger.stock_of(p["goods"], p.get("branch"))


@operation("stock.list", "库存: stock on hand of every goods item per branch (low: at or "
           "below its threshold)", needs=STOCK_READERS, http="GET /stock",
           params=(Param("branch", NODE), Param("low", {"type": "boolean"}, switch=True,
                                                help="only what is low (库存提醒)")),
           result=array(STOCK_ROW, 100_000), show=_show_stock, table=_stock_table)
def stock_list(ledger: Ledger, operator: str, p: Params) -> list[dict[str, Any]]:
    return views.stock_levels(ledger, p.get("branch"), low_only=bool(p.get("low")))


@operation("sell", "商品销售: sell goods to a member (level discount, points; stored value "
           "by default) or a walk-in customer (散客: at the till), the stock and the money "
           "in one commit", permission="sale", http="POST /sales",
           params=(GOODS, Param("qty", COUNT, default=1), *PAYER,
                   Param("pay", {**PAY_TEXT, "description": "stored (a member's stored "
                                 f"value) or at the till by {METHODS}"}),
                   Param("coupon", ENTRY_ID, help="a coupon of the member's that this sale "
                         "redeems (its discount comes off)")),
           forms=(Form(("member", "card"), optional=True),), result=SALE,
           show=lambda ledger, e, p: _sold(e, p) if is_walk_in(e["member"])
           else _done(_sold)(ledger, e, p))
def sell(ledger: Ledger, operator: str, p: Params) -> dict[str, Any]:
    return ledger.sell_goods(operator, p["goods"], p["qty"], member=p.get("member"),
                             pay=p.get("pay"), **_card(p),
                             coupon=p.get("coupon"))


@operation("points.gift", "积分兑换: a goods item for its points price, from this branch's "
           "stock", permission="points.redeem", http="POST /points/gift",
           params=(*PAYER, GOODS, Param("qty", COUNT, default=1)), forms=(PAYER_FORM,),
           result=SALE,
           show=_done(lambda e, _p: f"gift {e['gift']} x{e['qty']} for {e['points']} points"))
def points_gift(ledger: Ledger, operator: str, p: Params) -> dict[str, Any]:
    return ledger.gift_goods(operator, p.get("member"), p["goods"], p["qty"], **_card(p))


@operation("report.goods", "商品销量排名 (by sales: units) and 商品利润排名 (by profit: sales "
           "net of refunds less cost)", needs=REPORTS, http="GET /reports/goods",
           params=(Param("by", {"type": "string", "enum": ["sales", "profit"]},
                         default="sales"), *PERIOD, Param("limit", LIMIT, default=10)),
           result=array(GOODS_RANK, 100), table=_rank_table,
           show=lambda _l, rows, _p: "\n".join(
               f"{i:>3}. {r['name']} ({r['code']})  {r['qty']} sold  {format_yuan(r['sales'])}"
               f"  profit {format_yuan(r['profit'])}" for i, r in enumerate(rows, 1))
           or "no goods sold")
def report_goods(ledger: Ledger, operator: str, p: Params) -> list[dict[str, Any]]:
    return views.goods_ranking(ledger, p["by"], p.get("from"), p.get("to"), p["limit"])


# --- rules, operators, roles --------------------------------------------------------------

RULE_KIND = Param("kind", {"type": "string", "enum": sorted(RULE_KINDS)}, required=True,
                  flag="kind")


def _json_lines(body: Any) -> str:
    """JSON whose line breaks are its own: json.dumps leaves U+2028 and U+2029 in a
    value as they are (_SHOWN_AS_JSON)."""
    return (json.dumps(body, ensure_ascii=False, indent=2)
            .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))


@operation("rule.show", "The version of a rule in force on a day (default today)",
           http="GET /rules/{kind}", params=(RULE_KIND, Param("day", DAY)), result={},
           show=lambda _l, body, _p: _json_lines(body))
def rule_show(ledger: Ledger, operator: str, p: Params) -> Any:
    return ledger.rule(p["kind"], p.get("day"))


@operation("rule.set", "A new version of a rule, in force from a day (default today)",
           permission="rules.manage", http="POST /rules", result=_id_of("rule_id"),
           params=(RULE_KIND, Param("body", {"description": "the rule, as JSON"}, required=True,
                                    flag="--json-body"),
                   Param("effective_from", DAY)),
           show=_says("rule {kind} set [{rule_id}]"), more=rule_help())
def rule_set(ledger: Ledger, operator: str, p: Params) -> dict[str, Any]:
    return {"rule_id": ledger.set_rule(operator, p["kind"], p["body"], p.get("effective_from"))}


ROLE_NAME = line(40, "a role's name", minLength=1)


@operation("operator.add", "An operator (工号) with a password and roles",
           permission="operators.manage", http="POST /operators", status=201,
           params=(Param("name", line(40, "an operator's name", minLength=1), required=True),
                   Param("password", PASSWORD, required=True),
                   Param("roles", array(ROLE_NAME, 20), default=["cashier"], flag="--role",
                         help="owner, manager, cashier or a defined role; repeatable")),
           result=_id_of("operator_id"), show=_says("operator {name} added [{operator_id}]"))
def operator_add(ledger: Ledger, operator: str, p: Params) -> dict[str, Any]:
    return {"operator_id": ledger.add_operator(operator, p["name"], p["password"], p["roles"])}


@operation("operator.set", "Change an operator's password, roles (role=true|false) or "
           "whether they may log in", permission="operators.manage",
           http="PATCH /operators/{id}",
           params=(Param("id", OPERATOR_ID, required=True, help="the operator's id"),
                   Param("password", PASSWORD),
                   Param("roles", {"type": "object", "additionalProperties": {"type": "boolean"},
                                   "maxProperties": 20, "propertyNames": ROLE_NAME},
                         flag="--role"),
                   Param("active", {"type": "boolean"})),
           result=_id_of("operator_id"), show=_says("operator {operator_id} updated"))
def operator_set(ledger: Ledger, operator: str, p: Params) -> dict[str, Any]:
    if set(p) <= {"id"}:
        raise InvalidInput("nothing to change: give a password, roles or active")
    ledger.set_operator(operator, p["id"], password=p.get("password"), roles=p.get("roles"),
                        active=p.get("active"))
    return {"operator_id": p["id"]}


@operation("role.define", "Define a role (or redefine one) as a set of permissions",
           permission="operators.manage", http="POST /roles",
           params=(Param("name", ROLE_NAME, required=True),
                   Param("permissions", array({"type": "string", "enum": sorted(PERMISSIONS)},
                                              len(PERMISSIONS)),
                         default=[], flag="--permission", help="repeatable")),
           result={"type": "object", "required": ["role", "permissions"],
                   "properties": {"role": STR, "permissions": {"type": "array", "items": STR}}},
           show=lambda _l, r, _p: f"role {r['role']}: {', '.join(r['permissions']) or 'nothing'}")
def role_define(ledger: Ledger, operator: str, p: Params) -> dict[str, Any]:
    ledger.define_role(operator, p["name"], p["permissions"])
    return {"role": p["name"].strip(), "permissions": sorted(set(p["permissions"]))}


# --- the audit trail ---------------------------------------------------------------------

AUDIT = frozenset({"audit.view"})


# --- notices (crdtledger.notices, crdtledger.outbox) ------------------------------------

NOTICE_ROW = {"type": "object", "required": ["key", "kind", "channel", "to", "status"],
              "properties": {"key": STR, "kind": STR, "channel": STR, "to": STR,
                             "member": STR, "subject": STR, "due": INT, "attempts": INT,
                             "sent": {"type": ["integer", "null"]}, "error": STR,
                             "status": {"type": "string",
                                        "enum": ["sent", "due", "failing", "refused"]}}}
SEGMENT = (Param("level", text(40), help="members of this level (its name)"),
           Param("home", NODE, help="members whose home branch this is"),
           Param("dormant_days", {**COUNT, "maximum": 3650},
                 help="members with no visit in this many days"),
           Param("tags", TAGS, flag="--tag", help="members with every one of these tags"))


def _show_notices(_ledger: Ledger, rows: Any, _p: Params) -> str:
    return "\n".join(
        f"{r['status']:8} {r['kind']:12} {r['channel']:5} {r['to']}  {r['subject']}"
        + (f"  ({r['error']})" if r["error"] else "") for r in rows) or "nothing sent yet"


@operation("notice.history", "What this node sent (or has due) to whom: notices it sends "
           "as their one sender in the chain", needs=REPORTS, http="GET /notices",
           params=(Param("member", MEMBER_ID), Param("kind", text(20)),
                   Param("limit", LIMIT, default=100)),
           result=array(NOTICE_ROW, 100), show=_show_notices)
def notice_history(ledger: Ledger, operator: str, p: Params) -> list[dict[str, Any]]:
    return outbox.history(ledger, member=p.get("member"), kind=p.get("kind"),
                          limit=p["limit"])


@operation("notice.broadcast", "Send a promotion to a segment (level, home branch, dormant "
           "days, tags): only members who consented get it (PIPL); {name} in the text is "
           "the member's name", permission="notice.broadcast", http="POST /notices/broadcast",
           status=201,
           params=(Param("subject", line(80, "a subject", minLength=1), required=True),
                   Param("text", free_text(500, minLength=1), required=True),
                   *SEGMENT),
           result={"type": "object", "required": ["broadcast", "segment", "queued"],
                   "properties": {"broadcast": STR, "segment": INT, "queued": INT,
                                  "without_consent_or_contact": INT}},
           show=_says("broadcast {broadcast}: {queued} of {segment} members queued "
                      "({without_consent_or_contact} without consent or contact)"))
def notice_broadcast(ledger: Ledger, operator: str, p: Params) -> dict[str, Any]:
    ledger.authorise(operator, "notice.broadcast")
    segment = {k.name: p[k.name] for k in SEGMENT if p.get(k.name)}
    return outbox.broadcast(ledger, segment, p["subject"], p["text"], ledger.clock.wall())

# --- membership workflows: referral, check-in, exit (crdtledger.membership) -----------------

REFERRAL_ID = text(40, pattern=ecma(ID), description="a referral id like 01J5Q8ZK3T7XM.SH01")
APPLICATION_ID = text(40, pattern=ecma(ID),
                      description="an exit or return application id like 01J5Q8ZK3T7XM.SH01")
ACTIVITY = text(20, pattern=ecma(SERVICE_CODE), description="a check-in activity's code")
LOCAL_MINUTE = text(16, pattern=ecma(membership.MINUTE),
                    description="a local time like 2026-12-03T09:00")
REFERRAL = {"type": "object",
            "required": ["referral", "member", "referrer", "branch", "status", "level1",
                         "level2", "reward"],
            "properties": {k: STR for k in (
                "referral", "member", "referrer", "branch", "recorded_by", "on", "status",
                "level1", "level2", "rejected_by", "reward", "taken_back")}}
EXIT_VIEW = {"type": "object",
             "required": ["application", "member", "step", "status", "paid", "forfeited"],
             "properties": {**{k: STR for k in ("application", "member", "step", "reason",
                                                 "by", "branch", "on", "status",
                                                 "decided_by", "settled")},
                            "paid": INT, "forfeited": INT}}
ATTENDANCE_ROW = {"type": "object",
                  "required": ["entry", "member", "name", "branch", "day", "time", "points",
                               "status", "reversed", "unrecovered"],
                  "properties": {**{k: STR for k in ("entry", "member", "name", "branch",
                                                      "day", "time")},
                                 "status": {"type": "string",
                                            "enum": ["ok", "surplus", "reversed"]},
                                 **{k: INT for k in ("points", "reversed", "unrecovered")}}}
_REASON = Param("reason", free_text(MAX_TEXT), help="why (kept with the decision)")


def _show_referral(_l: Ledger, v: Any, _p: Params) -> str:
    levels = "  ".join(f"{k} {v[k]}" for k in ("level1", "level2", "rejected_by") if v.get(k))
    return (f"referral {v['referral']}: {v['referrer']} referred {v['member']} at "
            f"{v['branch']}: {v['status']}" + (f"  ({levels})" if levels else "")
            + (f"  reward {v['reward']}" if v.get("reward") else "")
            + (f"  taken back {v['taken_back']}" if v.get("taken_back") else ""))


def _show_exit(_l: Ledger, v: Any, _p: Params) -> str:
    text_ = (f"{v['step']} application {v['application']} for {v['member']}: {v['status']}"
             + (f" by {v['decided_by']}" if v.get("decided_by") else ""))
    if v.get("settled") == "refund":
        text_ += f"; {format_yuan(v['paid'])} paid back in cash"
    if v.get("forfeited"):
        text_ += f"; {format_yuan(v['forfeited'])} forfeited"
    return text_


@operation("referral.add", "老带新: record who referred a member (once; never themself)",
           permission="member.add", http="POST /referrals", status=201, result=REFERRAL,
           params=(MEMBER, Param("referrer", MEMBER_ID, required=True,
                                 help="the member who brought them")),
           show=_show_referral)
def referral_add(ledger: Ledger, operator: str, p: Params) -> dict[str, Any]:
    entry = ledger.refer(operator, p["member"], p["referrer"])
    return ledger.referral_view(str(entry["id"]))


def _approve(level: int) -> Handler:
    def handler(ledger: Ledger, operator: str, p: Params) -> dict[str, Any]:
        return ledger.approve_referral(operator, p["referral"], level,
                                       reject=bool(p.get("reject")), reason=p.get("reason", ""))
    return handler


for _level in (1, 2):
    operation(
        f"referral.approve{_level}",
        f"A referral's level {_level} approval" + (
            " (by another operator than level 1): the reward is granted by the branch that "
            "recorded it" if _level == 2 else "") + "; --reject rejects it (nothing granted)",
        permission=f"referral.approve{_level}",
        http=f"POST /referrals/{{referral}}/approve{_level}", result=REFERRAL,
        params=(Param("referral", REFERRAL_ID, required=True, flag="--referral"),
                Param("reject", {"type": "boolean"}, switch=True, help="reject it instead"),
                _REASON),
        show=_show_referral)(_approve(_level))


@operation("referral.show", "A referral: its status (pending, approved1, approved, granted, "
           "rejected, void), approvers and reward", needs=SERVES_MEMBERS,
           http="GET /referrals/{referral}",
           params=(Param("referral", REFERRAL_ID, required=True, flag="--referral"),),
           result=REFERRAL, show=_show_referral)
def referral_show(ledger: Ledger, operator: str, p: Params) -> dict[str, Any]:
    return ledger.referral_view(p["referral"])


@operation("referral.list", "Referrals, newest first: all, of a status, or of a member (as "
           "referred or referrer)", needs=SERVES_MEMBERS, http="GET /referrals",
           params=(Param("member", MEMBER_ID, help="member id"),
                   Param("status", {"type": "string", "enum": [
                       "pending", "approved1", "approved", "granted", "rejected", "void"]})),
           result=array(REFERRAL, 100_000),
           show=lambda lg, vs, p: "\n".join(_show_referral(lg, v, p) for v in vs)
           or "no referrals")
def referral_list(ledger: Ledger, operator: str, p: Params) -> list[dict[str, Any]]:
    return ledger.referrals(p.get("status"), p.get("member"))


@operation("referral.grant", "Grant the rewards of the referrals this branch recorded that "
           "were approved twice elsewhere (the node does it at housekeeping too)",
           permission="referral.approve2", http="POST /referral-grants",
           result=array(ENTRY, 100_000),
           show=lambda _l, es, _p: f"{len(es)} reward(s) granted")
def referral_grant(ledger: Ledger, operator: str, p: Params) -> list[dict[str, Any]]:
    return ledger.grant_due_referrals(operator)


@operation("checkin", "签到: check a member in at an activity (its window and limit; its "
           "points are this branch's)", permission="checkin", http="POST /checkins",
           status=201, result=ENTRY,
           params=(Param("activity", ACTIVITY, required=True), *PAYER),
           forms=(PAYER_FORM,),
           show=_done(lambda e, _p: f"checked in at {e['activity']}"
                      + (f": +{e['points']} points" if e.get("points") else "")))
def checkin(ledger: Ledger, operator: str, p: Params) -> dict[str, Any]:
    return ledger.checkin(operator, p["activity"], p.get("member"), **_card(p))


@operation("activity.set", "Set a check-in activity (head office): its window in local "
           "time, points, and whether it repeats (once, or daily up to per-day times)",
           permission="rules.manage", http="PUT /activities/{code}", result=_id_of("rule"),
           params=(Param("code", ACTIVITY, required=True),
                   Param("name", line(60, "a name", minLength=1), required=True),
                   Param("from", LOCAL_MINUTE, required=True, help="opens, e.g. 2026-12-01T09:00"),
                   Param("to", LOCAL_MINUTE, required=True, help="closes, e.g. 2026-12-31T21:00"),
                   Param("points", {**FEE, "description": "points a check-in gives"},
                         default=0),
                   Param("repeat", {"type": "string", "enum": list(membership.REPEATS)},
                         default="once"),
                   Param("per_day", {**COUNT, "maximum": 100}, default=1,
                         help="check-ins a day when it repeats daily")),
           show=_says("activity {code} set (rule {rule})"))
def activity_set(ledger: Ledger, operator: str, p: Params) -> dict[str, Any]:
    a = {k: p[k] for k in ("name", "from", "to", "points", "repeat")}
    if p["repeat"] == "daily":
        a["per_day"] = p["per_day"]
    return {"rule": ledger.set_activity(operator, p["code"], a)}


@operation("activity.list", "The check-in activities in force", needs=frozenset(),
           http="GET /activities", result=ANY_OBJECT,
           show=lambda _l, acts, _p: "\n".join(
               f"{c}  {a['name']}  {a['from']} - {a['to']}  {a.get('points', 0)} points  "
               + ("once" if a["repeat"] == "once" else f"{a.get('per_day', 1)} a day")
               for c, a in sorted(acts.items())) or "no activities")
def activity_list(ledger: Ledger, operator: str, p: Params) -> dict[str, Any]:
    return ledger.activities()


@operation("activity.report", "签到记录: who checked in at an activity, when and where "
           "(surplus check-ins of cut-off branches marked)", needs=REPORTS,
           http="GET /activities/{activity}/report",
           params=(Param("activity", ACTIVITY, required=True, flag="--activity"), *PERIOD),
           result=array(ATTENDANCE_ROW, 1_000_000),
           show=lambda _l, rows, _p: "\n".join(
               f"{r['day']} {r['time']}  {r['branch']}  {r['name']}  +{r['points']}  "
               f"{r['status']}"
               + (f" (-{r['reversed']}, {r['unrecovered']} not recovered)"
                  if r["unrecovered"] else f" (-{r['reversed']})" if r["reversed"] else "")
               + f"  [{r['member']}]" for r in rows) or "no check-ins",
           table=membership.attendance_csv_rows)
def activity_report(ledger: Ledger, operator: str, p: Params) -> list[dict[str, Any]]:
    return ledger.attendance(p["activity"], p.get("from"), p.get("to"))


@operation("activity.reconcile", "Reverse the check-ins this branch wrote beyond an "
           "activity's limit while cut off (the node does it at housekeeping too)",
           permission="checkin", http="POST /checkins/reconcile",
           result=array(ENTRY, 100_000),
           show=lambda _l, es, _p: f"{len(es)} surplus check-in(s) reversed")
def activity_reconcile(ledger: Ledger, operator: str, p: Params) -> list[dict[str, Any]]:
    return ledger.reconcile_checkins(operator)


@operation("exit.apply", "退会申报: apply for a member's exit, with a reason (approved by "
           "another operator)", permission="member.exit", http="POST /exits", status=201,
           params=(MEMBER, Param("reason", free_text(MAX_TEXT, minLength=1), required=True)),
           result=EXIT_VIEW, show=_show_exit)
def exit_apply(ledger: Ledger, operator: str, p: Params) -> dict[str, Any]:
    return ledger.apply_exit(operator, p["member"], p["reason"])


@operation("exit.return", "Apply for the return of a member who left, with a reason "
           "(approved by another operator)", permission="member.exit",
           http="POST /returns", status=201,
           params=(MEMBER, Param("reason", free_text(MAX_TEXT, minLength=1), required=True)),
           result=EXIT_VIEW, show=_show_exit)
def exit_return(ledger: Ledger, operator: str, p: Params) -> dict[str, Any]:
    return ledger.apply_exit(operator, p["member"], p["reason"], step="return")


@operation("exit.approve", "退会审核: approve (or --reject) an exit or return application; an "
           "exit refunds the principal in cash or forfeits it, by the rule `exit`",
           permission="member.exit.approve", http="POST /exits/{application}/approve",
           params=(Param("application", APPLICATION_ID, required=True, flag="--application"),
                   Param("reject", {"type": "boolean"}, switch=True, help="reject it instead"),
                   _REASON,
                   Param("pay", text(16, pattern=ecma(PAY_CODE)),
                         help="how a refund is paid back: a payment method (the rule's first "
                         "by default)")),
           result=EXIT_VIEW, show=_show_exit)
def exit_approve(ledger: Ledger, operator: str, p: Params) -> dict[str, Any]:
    return ledger.decide_exit(operator, p["application"], reject=bool(p.get("reject")),
                              reason=p.get("reason", ""), pay=p.get("pay"))


@operation("exit.show", "An exit or return application and its decision",
           needs=SERVES_MEMBERS, http="GET /exits/{application}",
           params=(Param("application", APPLICATION_ID, required=True, flag="--application"),),
           result=EXIT_VIEW, show=_show_exit)
def exit_show(ledger: Ledger, operator: str, p: Params) -> dict[str, Any]:
    return ledger.exit_view(p["application"])


@operation("exit.list", "Exit and return applications, newest first (pending: those waiting)",
           needs=SERVES_MEMBERS, http="GET /exits",
           params=(Param("status", {"type": "string",
                                    "enum": ["pending", "approved", "rejected"]}),),
           result=array(EXIT_VIEW, 100_000),
           show=lambda lg, vs, p: "\n".join(_show_exit(lg, v, p) for v in vs)
           or "no applications")
def exit_list(ledger: Ledger, operator: str, p: Params) -> list[dict[str, Any]]:
    return ledger.exits(p.get("status"))


# --- appointments (crdtledger.bookings) ---------------------------------------------------

TECH_REF = text(40, pattern="^[A-Za-z0-9_.-]{1,40}(@[A-Z0-9][A-Z0-9_]{0,15})?$",
                description="a technician's code (T01), code at a branch (T01@SH02) or id")
BOOKING_ID = text(40, pattern=ecma(ID), description="a booking id like 01J5Q8ZK3T7XM.SH01")
WHEN_TEXT = text(16, pattern="^[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}$",
                 description="the start, the technician's local time (its branch's zone), "
                 "like 2026-12-03T14:00")
TECHNICIAN = {"type": "object",
              "required": ["id", "code", "name", "branch", "ref", "services", "hours", "active"],
              "properties": {"id": STR, "code": STR, "name": STR, "branch": STR, "ref": STR,
                             "services": {"type": "array", "items": STR}, "hours": STR,
                             "active": {"type": "boolean"},
                             "tz": {"type": "string", "description": "the zone its hours and "
                                    "bookings' times are in (its branch's); empty for one "
                                    "set before 0.3.0, read in the reader's zone"},
                             "closed": {"type": "boolean", "description":
                                        "its branch is closed for good (the chain revoked "
                                        "its certificate): it takes no bookings"}}}
BOOKING = {
    "type": "object",
    "required": ["booking", "status", "member", "technician", "technician_id",
                 "technician_name", "branch", "service", "service_name", "at", "day", "end",
                 "start", "minutes", "made_at", "op", "reason"],
    "properties": {
        "booking": STR, "status": {"type": "string", "enum": list(BOOKING_STATUSES)},
        "member": STR, "technician": {**STR, "description": "the technician's code"},
        "technician_id": STR, "technician_name": STR,
        "branch": {**STR, "description": "the technician's branch, which decides"},
        "service": STR, "service_name": STR,
        "at": {**STR, "description": "the start, local time"}, "day": STR,
        "end": {**STR, "description": "HH:MM"}, "start": {**INT, "description": "ms"},
        "minutes": INT, "made_at": {**STR, "description": "the branch that booked"},
        "op": STR, "reason": {**STR, "description": "why it was refused"}}}
SAME_BOOKING = {"parameters": {"booking": "$response.body#/booking"}}
BOOKING_READERS = SERVES_MEMBERS | {"booking.write", "technician.manage"}
_STATUS_ZH = {"pending": "待确认", "confirmed": "已确认", "refused": "已拒绝",
              "cancelled": "已取消", "no_show": "爽约", "done": "已完成"}


def _show_booking(_ledger: Ledger, b: Any, _p: Params) -> str:
    line = (f"{b['at']}-{b['end']} {b['technician']}@{b['branch']} {b['technician_name']} "
            f"{b['service']} member {b['member']}: {b['status']} "
            f"({_STATUS_ZH.get(b['status'], '')}) [{b['booking']}]")
    return line + (f"\n  {b['reason']}" if b.get("reason") else "")


@operation("technician.add", "技师: add a technician to this branch (or change one of its "
           "own: same code), with the services they do and their working hours",
           permission="technician.manage", http="POST /technicians", status=201,
           params=(Param("code", text(16, pattern="^[A-Za-z0-9_-]{1,16}$",
                                      description="1 to 16 letters, digits, _ or -, "
                                      "without @BRANCH"), required=True,
                         help="the technician's code at this branch, e.g. T01"),
                   Param("name", line(40, "a name", minLength=1), required=True),
                   Param("services", line(400, "service codes", minLength=1), required=True,
                         help="service codes of the price list, comma-separated: "
                         "FOOT60,BODY90"),
                   # Described: without it a refusal said "hours must be text" of text.
                   Param("hours", text(11, pattern=booking_lib.HOURS.pattern.replace("\\Z", "$"),
                                       description="HH:MM-HH:MM within one day, from 00:00 "
                                       "to 24:00 and the start before the end, like 10:00-22:00"),
                         default="10:00-22:00", help="working hours, e.g. 10:00-22:00")),
           result=TECHNICIAN,
           # (booking.add takes the technician in its body, with a member and a time
           # no response here gives: its stateful calls start from a member instead.)
           links={"booking.slots": {"parameters": {"technician": "$response.body#/id"}}},
           show=lambda _l, t, _p: f"technician {t['ref']} {t['name']}: "
           f"{','.join(t['services'])} {t['hours']} [{t['id']}]")
def technician_add(ledger: Ledger, operator: str, p: Params) -> dict[str, Any]:
    return booking_lib.add_technician(ledger, operator, p["code"], p["name"],
                                   p["services"].split(","), p["hours"])


@operation("technician.list", "The technicians (of a branch)", needs=BOOKING_READERS,
           http="GET /technicians", params=(Param("branch", NODE),),
           result=array(TECHNICIAN, 10_000),
           show=lambda _l, ts, _p: "\n".join(
               f"{t['ref']:<10} {t['name']}  {','.join(t['services'])}  {t['hours']}"
               for t in ts) or "no technicians")
def technician_list(ledger: Ledger, operator: str, p: Params) -> list[dict[str, Any]]:
    return booking_lib.technicians(ledger, p.get("branch"))


@operation("booking.add", "预约: book a technician's slot for a member; confirmed at once at "
           "the technician's branch if free, elsewhere pending until that branch decides",
           permission="booking.write", http="POST /bookings", status=201, result=BOOKING,
           params=(MEMBER, Param("technician", TECH_REF, required=True),
                   Param("service", SERVICE, required=True),
                   Param("at", WHEN_TEXT, required=True)),
           show=_show_booking,
           links={"booking.show": SAME_BOOKING, "booking.cancel": SAME_BOOKING})
def booking_add(ledger: Ledger, operator: str, p: Params) -> dict[str, Any]:
    return booking_lib.book(ledger, operator, p["member"], p["technician"], p["service"],
                         p["at"])


BOOKING_PARAM = Param("booking", BOOKING_ID, required=True, flag="--booking")


@operation("booking.show", "One booking and its status (pending, confirmed, refused, "
           "cancelled, no_show, done) as this branch knows it", needs=BOOKING_READERS,
           http="GET /bookings/{booking}", params=(BOOKING_PARAM,), result=BOOKING,
           show=_show_booking)
def booking_show(ledger: Ledger, operator: str, p: Params) -> dict[str, Any]:
    return booking_lib.show(ledger, p["booking"])


@operation("booking.cancel", "Cancel a booking (at any branch; the technician's branch frees "
           "the slot when it hears of it)", permission="booking.write",
           http="POST /bookings/{booking}/cancel", result=BOOKING,
           params=(BOOKING_PARAM,
                   Param("member", MEMBER_ID, help="the member asking (checked: their own)")),
           show=_show_booking)
def booking_cancel(ledger: Ledger, operator: str, p: Params) -> dict[str, Any]:
    return booking_lib.cancel(ledger, operator, p["booking"], member=p.get("member"))


@operation("booking.noshow", "爽约: the member did not come (at the technician's branch, once "
           "the slot has started)", permission="booking.write",
           http="POST /bookings/{booking}/noshow", params=(BOOKING_PARAM,), result=BOOKING,
           show=_show_booking)
def booking_noshow(ledger: Ledger, operator: str, p: Params) -> dict[str, Any]:
    return booking_lib.noshow(ledger, operator, p["booking"])


@operation("booking.list", "Bookings by member, technician, technician's branch and day "
           "(default: today's)", needs=BOOKING_READERS, http="GET /bookings",
           params=(Param("member", MEMBER_ID, flag="--member"), Param("technician", TECH_REF),
                   Param("branch", NODE), Param("day", DAY)),
           result=array(BOOKING, 10_000),
           show=lambda l_, bs, p: "\n".join(_show_booking(l_, b, p) for b in bs)
           or "no bookings")
def booking_list(ledger: Ledger, operator: str, p: Params) -> list[dict[str, Any]]:
    day = p.get("day")
    if not any(p.get(k) for k in ("member", "technician", "branch", "day")):
        day = ledger.today()
    return booking_lib.list_bookings(ledger, member=p.get("member"),
                                  technician=p.get("technician"), branch=p.get("branch"),
                                  day=day)


@operation("booking.slots", "A technician's free start times on a day (for a service: "
           "default 60 minutes), as this branch knows the technician's book",
           needs=BOOKING_READERS, http="GET /slots", result=array(STR, 1000),
           params=(Param("technician", TECH_REF, required=True),
                   Param("day", DAY, required=True), Param("service", SERVICE)),
           show=lambda _l, free, _p: " ".join(a[-5:] for a in free) or "no free time")
def booking_slots(ledger: Ledger, operator: str, p: Params) -> list[str]:
    return [f"{p['day']}T{hm}" for hm in booking_lib.slots(ledger, p["technician"], p["day"],
                                                        p.get("service"))]


def operator_id(ledger: Ledger, who: str) -> str:
    """An operator named by id (or a node's owner, owner@NODE) or by name."""
    if ID.match(who) or "@" in who:
        return who
    found = [o["id"] for o in views.operators(ledger) if o["name"] == who.strip()]
    if not found:
        raise NotFound(f"no operator named {who.strip()}")
    return found[0]


def _show_audit(_ledger: Ledger, rows: Any, p: Params) -> str:
    if p.get("refused"):
        table = audit.refused_table(rows)
        if len(table) == 1:
            return "no refused attempts"
    else:
        table = [[c for c in r[:-1]] for r in audit.table(rows)]  # without the id column
    if len(table) == 1:
        return "no actions"
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                     for r in table)


def _audit_table(rows: Any) -> list[list[str]]:
    """The trail's table, or the refused attempts' (their rows have an `operation`)."""
    if rows and "operation" in rows[0]:
        return audit.refused_table(rows)
    return audit.table(rows)


@operation("audit", "The audit trail: who did what, when, at which branch (operator, "
           "approver, action, member, amounts), newest first", needs=AUDIT, http="GET /audit",
           params=(Param("operator", text(60, minLength=1),
                         help="an operator's name or id: what they did or approved"),
                   Param("branch", NODE),
                   Param("kind", {"type": "string", "enum": list(audit.ACTIONS),
                                  "description": "an entry kind or a change of a record"}),
                   *PERIOD, Param("limit", {**LIMIT, "maximum": audit.TRAIL_LIMIT},
                                  default=500),
                   Param("refused", {"type": "boolean"}, switch=True,
                         help="the attempts refused at this branch instead (no permission, "
                         "a wrong PIN or password, throttled): kept here only, the newest "
                         f"{audit.REFUSALS_KEPT}")),
           result=array({"anyOf": [AUDIT_ROW, REFUSED_ROW]}, audit.TRAIL_LIMIT),
           show=_show_audit, table=_audit_table)
def audit_trail(ledger: Ledger, operator: str, p: Params
                ) -> list[audit.AuditRow] | list[audit.RefusedRow]:
    if p.get("refused"):
        if p.get("kind") or p.get("branch") not in (None, ledger.node):
            # Kept at the branch that refused them, and of no entry kind.
            raise InvalidInput("refused attempts are listed at the branch that refused "
                               f"them ({ledger.node}), by operator and day only: leave "
                               "out kind and branch")
        who = p.get("operator")
        if who is not None:  # a name typed at a login may be no operator's
            try:
                who = operator_id(ledger, who)
            except NotFound:
                who = who.strip()
        return audit.refused(ledger, who, p.get("from"), p.get("to"), p["limit"])
    who = operator_id(ledger, p["operator"]) if "operator" in p else None
    return audit.trail(ledger, who, p.get("branch"), p.get("kind"), p.get("from"), p.get("to"),
                       p["limit"])


# --- coupons (crdtledger.coupons) ---------------------------------------------------------

COUPON_ID = text(40, pattern=ecma(ID), description="a coupon id like 01J5Q8ZK3T7XM.SH01")
COUPON = {
    "type": "object",
    "required": ["coupon", "member", "kind", "off", "percent", "service", "min_spend",
                 "valid_from", "valid_to", "reason", "issued_at", "issued_on", "terms",
                 "status", "at", "on", "entry"],
    "properties": {
        "coupon": STR, "member": STR,
        "kind": {"type": "string", "enum": ["amount", "percent", "service"]},
        "off": {**INT, "description": "fen off (an amount coupon)"},
        "percent": INT, "service": STR, "min_spend": {**INT, "description": "fen"},
        "valid_from": STR, "valid_to": STR, "reason": STR, "issued_at": STR,
        "issued_on": STR, "terms": STR,
        "status": {"type": "string", "enum": list(COUPON_STATUSES)},
        "at": {**STR, "description": "the branch holding it, or where it was redeemed"},
        "on": {**STR, "description": "the day it was redeemed"},
        "entry": {**STR, "description": "the entry that redeemed it"}}}
SAME_COUPON = {"parameters": {"coupon": "$response.body#/coupon"}}


@operation("coupon.issue", "优惠券: give a member a coupon (an amount off, a percent off or a "
           "free service), redeemable once in the whole chain", permission="coupon.issue",
           http="POST /coupons", status=201, result=COUPON,
           params=(MEMBER, Param("off", FEN, flag=None),
                   Param("off_yuan", YUAN, flag="--off", help="yuan off, e.g. 10.00"),
                   Param("percent", {"type": "integer", "minimum": 1, "maximum": 100,
                                     "x-error": "invalid_amount",
                                     "description": "a whole percent off"}),
                   Param("service", SERVICE, help="a free service (a code of the price list)"),
                   Param("min_spend", FEE, flag=None),
                   Param("min_spend_yuan", YUAN, flag="--min-spend",
                         help="the least the sale must come to, in yuan"),
                   Param("valid_from", DAY, help="first day it may be used, YYYY-MM-DD"),
                   Param("valid_to", DAY, help="last day it may be used, YYYY-MM-DD"),
                   Param("reason", {"type": "string", "enum": list(COUPON_REASONS)},
                         default="owner")),
           forms=(Form(("off", "off_yuan", "percent", "service")),
                  Form(("min_spend", "min_spend_yuan"), optional=True)),
           show=lambda _l, c, _p: f"coupon {c['coupon']}: {describe_status(c)}",
           links={"coupon.redeem": SAME_COUPON, "coupon.show": SAME_COUPON})
def coupon_issue(ledger: Ledger, operator: str, p: Params) -> dict[str, Any]:
    return ledger.issue_coupon(
        operator, p["member"], off=amount_of(p, "off", "off_yuan"), percent=p.get("percent"),
        service=p.get("service"),
        min_spend=amount_of(p, "min_spend", "min_spend_yuan", allow_zero=True) or 0,
        valid_from=p.get("valid_from"), valid_to=p.get("valid_to"), reason=p["reason"])


@operation("coupon.redeem", "Redeem a coupon on its own (a sale in the ledger takes it with "
           "debit --coupon): only the branch holding it may, which asks for it if another "
           "does", permission="coupon.redeem", http="POST /coupons/{coupon}/redeem",
           params=(Param("coupon", COUPON_ID, required=True, flag="--coupon"),
                   Param("member", MEMBER_ID, help="the member presenting it (checked)"),
                   Param("spend", FEE, flag=None),
                   Param("spend_yuan", YUAN, flag="--spend",
                         help="the bill at the till, in yuan (for a minimum spend)")),
           forms=(Form(("spend", "spend_yuan"), optional=True),), result=ENTRY,
           show=_done(lambda e, _p: f"coupon {e['coupon']} redeemed" + (
               f": {format_yuan(e['off'])} off" if e.get("off") else "")))
def coupon_redeem(ledger: Ledger, operator: str, p: Params) -> dict[str, Any]:
    return ledger.redeem_coupon(operator, p["coupon"], member=p.get("member"),
                                spend=amount_of(p, "spend", "spend_yuan", allow_zero=True))


@operation("coupon.list", "A member's coupons: available at a branch, redeemed where and when, "
           "or expired", needs=SERVES_MEMBERS, http="GET /members/{member}/coupons",
           params=WHO, forms=(WHO_FORM,), result=array(COUPON, 10_000),
           show=lambda _l, cs, _p: "\n".join(describe_status(c) for c in cs) or "no coupons")
def coupon_list(ledger: Ledger, operator: str, p: Params) -> list[dict[str, Any]]:
    return ledger.coupons(member_of(ledger, p))


@operation("coupon.show", "One coupon: its terms and where it stands", needs=SERVES_MEMBERS,
           http="GET /coupons/{coupon}",
           params=(Param("coupon", COUPON_ID, required=True, flag="--coupon"),),
           result=COUPON, show=lambda _l, c, _p: describe_status(c))
def coupon_show(ledger: Ledger, operator: str, p: Params) -> dict[str, Any]:
    return ledger.coupon_view(p["coupon"])


__all__ = ["TABLE", "Form", "Operation", "Param", "Refusal", "authorise", "describe",
           "details", "run", "show", "validate"]
