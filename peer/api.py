"""The branch node's HTTP JSON API, for point-of-sale systems and the counter app.

Why it looks like this:

- It is a thin skin over `crdtledger.ledger.Ledger`. A route checks the shape of its
  input, then makes one Ledger call. Permissions stay the library's: every write
  names the logged-in operator and the Ledger refuses what that operator may not do.
  Only reads the Ledger leaves to its callers (reports, a member's data) are checked
  here, against `Ledger.permissions`, as the CLI's `require()` does.
- Every write goes through `ApiHost.perform`, so a node that lacks a member's rights
  can fetch them from other branches and retry; the API never moves rights itself.
- Money in JSON is integer fen, as everywhere in the ledger. What a person typed is
  accepted as a yuan string ("12.34") and parsed exactly by `parse_yuan`; a JSON
  number with a fraction is refused, never rounded.
- The routes are one table (`ROUTES`), each with its request and response schemas.
  The same schemas check every request and make up `/openapi.json`, so the document
  cannot drift from what the code accepts, and schemathesis can hold the API to it.
- A refusal is always ``{"error": code, "message": sentence}`` with a 4xx status
  chosen by the ledger's error class: a till shows the sentence and branches on the
  code. Nothing the client sends can cause a 5xx.
- Tokens live in memory only: a restart logs every counter out (it logs in again),
  and no secret is ever written to disk.
- Everything runs on the event-loop thread that owns the Ledger (pycrdt objects are
  bound to one thread); the SQLite reads behind a view are fast enough to do inline.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import date
from typing import Any, Protocol, TypeVar

from aiohttp import web

from crdtledger import views
from crdtledger.errors import (
    CardInactive,
    CardLost,
    InsufficientFunds,
    InvalidAmount,
    InvalidInput,
    LedgerError,
    NotFound,
    PermissionDenied,
    RightsElsewhere,
    WrongPin,
)
from crdtledger.hlc import NODE_ID
from crdtledger.ledger import PHONE, Ledger
from crdtledger.model import CARD_TYPES, ID, PURSE
from crdtledger.money import MAX_AMOUNT, parse_yuan

T = TypeVar("T")

# A till sends a few hundred bytes; 64 KB leaves room for a long note and refuses a
# flood early. Set per request (Request.clone): a sub-app's own client_max_size is
# ignored, the mounting application's applies.
MAX_BODY = 64 * 1024
TOKEN_TTL_S = 12 * 3600  # one working day, opening to closing
# Logins without logouts (a till that logs in per sale) must not grow memory for
# the 12 hours until their tokens expire: past this many, the oldest are dropped.
MAX_SESSIONS = 10_000


class ApiHost(Protocol):
    """What the API needs from the node that mounts it."""

    @property
    def ledger(self) -> Ledger: ...

    async def perform(self, op: Callable[[], T]) -> T:
        """Run one ledger write; on RightsElsewhere fetch rights from peers and retry;
        raise the LedgerError of a refusal."""
        ...

    def sync_status(self) -> dict[str, Any]: ...


class Standalone:
    """A node without peers: a write runs at once, and a RightsElsewhere refusal
    stands, since there is nobody to ask. Serves the API of a lone node and tests."""

    def __init__(self, ledger: Ledger) -> None:
        self._ledger = ledger

    @property
    def ledger(self) -> Ledger:
        return self._ledger

    async def perform(self, op: Callable[[], T]) -> T:
        return op()

    def sync_status(self) -> dict[str, Any]:
        return {"node": self._ledger.node, "chain": self._ledger.chain, "peers": []}


# --- sessions -------------------------------------------------------------------


@dataclass(frozen=True)
class Session:
    operator: str  # the id the Ledger checks permissions against
    name: str  # what the operator typed at login: messages name people by it
    expires: float  # on the sessions' clock


SESSION = web.RequestKey("session", Session)  # of the request, for refusals to name people


class Sessions:
    """Bearer tokens of logged-in operators, in memory."""

    def __init__(self, ttl_s: float = TOKEN_TTL_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s = ttl_s
        self._clock = clock
        self._by_token: dict[str, Session] = {}

    def open(self, operator: str, name: str) -> str:
        now = self._clock()
        for token in [t for t, s in self._by_token.items() if s.expires <= now]:
            del self._by_token[token]
        while len(self._by_token) >= MAX_SESSIONS:
            del self._by_token[next(iter(self._by_token))]  # the oldest login
        token = secrets.token_urlsafe(32)
        self._by_token[token] = Session(operator, name, now + self.ttl_s)
        return token

    def get(self, token: str) -> Session | None:
        session = self._by_token.get(token)
        if session is not None and session.expires <= self._clock():
            del self._by_token[token]
            return None
        return session

    def close(self, token: str) -> None:
        self._by_token.pop(token, None)


# --- refusals -------------------------------------------------------------------


class ApiError(Exception):
    """A refusal of the HTTP layer itself (login, token, body), not of the ledger."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


# By exception class, looked up along the MRO (ApprovalRequired is a PermissionDenied).
# 409: the request is fine but the member's state refuses it now; 422: the request
# names something wrong for this card or debit. Other refusals: 422 as well.
STATUS: dict[type[LedgerError], int] = {
    InvalidAmount: 400,
    InvalidInput: 400,
    PermissionDenied: 403,
    NotFound: 404,
    InsufficientFunds: 409,
    RightsElsewhere: 409,
    CardLost: 409,
    CardInactive: 409,
    WrongPin: 422,
}


def _error(status: int, code: str, message: str, **extra: Any) -> web.Response:
    body = {"error": code, "message": " ".join(message.split()), **extra}
    return web.json_response(body, status=status, dumps=_dumps)


def _refusal(e: LedgerError, session: Session | None) -> web.Response:
    status = next((STATUS[c] for c in type(e).__mro__ if c in STATUS), 422)
    message = str(e) or type(e).__name__
    if session is not None:  # the library names operators by id; people know the name
        message = message.replace(session.operator, session.name)
    extra: dict[str, Any] = {}
    if isinstance(e, RightsElsewhere):
        extra = {"branch": e.branch, "holders": e.holders, "purse": e.purse,
                 "shortfall": e.shortfall}
    elif isinstance(e, InsufficientFunds):
        extra = {"purse": e.purse, "balance": e.balance, "wanted": e.wanted}
    return _error(status, e.code, message, **extra)


@web.middleware
async def refusals(request: web.Request,
                   handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                   ) -> web.StreamResponse:
    """Every refusal as JSON: the ledger's, the API's and aiohttp's own (404, 405)."""
    try:
        return await handler(request)
    except LedgerError as e:
        return _refusal(e, request.get(SESSION))
    except ApiError as e:
        response = _error(e.status, e.code, str(e))
        if e.status == 401:
            response.headers["WWW-Authenticate"] = "Bearer"
        return response
    except web.HTTPException as e:  # from the router: no such path, or not that method
        if e.status < 400:
            raise
        code, message = {
            404: ("not_found", f"there is nothing at {request.path}"),
            405: ("method_not_allowed", f"{request.method} is not allowed at {request.path}"),
        }.get(e.status, ("http_error", e.reason))
        response = _error(e.status, code, message)
        if "Allow" in e.headers:
            response.headers["Allow"] = e.headers["Allow"]
        return response


def _dumps(data: Any) -> str:
    return json.dumps(data, ensure_ascii=False)


# --- schemas: the subset of JSON Schema the table uses, and its checker ------------

Schema = dict[str, Any]


def _ecma(pattern: re.Pattern[str]) -> str:
    """A library pattern as JSON Schema (ECMA-262) has it: `\\Z` is Python's only."""
    return pattern.pattern.removesuffix(r"\Z").removesuffix("$") + "$"


def _or_empty(pattern: str) -> str:
    return f"^(?:{pattern.removeprefix('^').removesuffix('$')})?$"


def text(limit: int = 200, **more: Any) -> Schema:
    return {"type": "string", "maxLength": limit, **more}


def obj(required: Mapping[str, Schema], optional: Mapping[str, Schema] | None = None,
        **more: Any) -> Schema:
    s: Schema = {"type": "object", "properties": {**required, **(optional or {})},
                 "additionalProperties": False, **more}
    if required:
        s["required"] = sorted(required)
    return s


def array(items: Schema, limit: int = 100) -> Schema:
    return {"type": "array", "items": items, "maxItems": limit}


MEMBER_ID = text(40, pattern=_ecma(ID), description="a member id like 01J5Q8ZK3T7XM.SH01")
ENTRY_ID = text(40, pattern=_ecma(ID), description="a ledger entry id like 01J5Q8ZK3T7XM.SH01")
NODE = text(16, pattern=_ecma(NODE_ID), description="a branch node id like SH01")
# As Ledger._card_no accepts them (it upper-cases).
CARD_NO = text(40, pattern="^[0-9A-Za-z:_-]{1,40}$",
               description="a card number: letters, digits, colon, dash or underscore")
PIN = text(8, pattern="^[0-9]{4,8}$", description="a card PIN of 4 to 8 digits")
DAY = text(10, format="date", description="a date like 2026-11-23")
PARTIAL_DATE = text(10, pattern=_or_empty("^([0-9]{4}-)?[0-9]{2}-[0-9]{2}$"),
                    description="a date like 1990-05-17 or 05-17")
# Amounts: integer fen, or the yuan a person typed. "x-error" makes a malformed amount
# refused as invalid_amount, the ledger's code for the same mistake.
FEN = {"type": "integer", "minimum": 1, "maximum": MAX_AMOUNT, "x-error": "invalid_amount",
       "description": "a whole number of fen above zero"}
FEE = {**FEN, "minimum": 0, "description": "a whole number of fen, zero or more"}
YUAN = text(15, pattern="^[0-9]{1,11}(\\.[0-9]{1,2})?$", **{"x-error": "invalid_amount"},
            description="a yuan amount like 12.34, at most two decimals")
COUNT = {**FEN, "description": "a whole number above zero"}
TAGS = array(text(40, minLength=1), 50)
PREFS = obj({}, {k: text(60) for k in ("strength", "service", "technician")})
CUSTOM = {"type": "object", "additionalProperties": text(200), "maxProperties": 50,
          "propertyNames": text(40, minLength=1)}
PROFILE: dict[str, Schema] = {
    "gender": {"type": "string", "enum": ["", "F", "M"]},
    "birthday": PARTIAL_DATE,
    "anniversary": PARTIAL_DATE,
    "home": NODE,
    "notes": text(),
}

_TYPES: dict[str, Callable[[Any], bool]] = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
}
_TYPE_NAMES = {"object": "a JSON object", "array": "a list", "string": "text",
               "integer": "a whole number", "boolean": "true or false"}


def check(value: Any, schema: Schema, where: str) -> None:
    """Refuse `value` unless it fits `schema` (the subset of JSON Schema used above)."""
    kind = schema.get("type")
    error = InvalidAmount if schema.get("x-error") == "invalid_amount" else InvalidInput
    wanted = schema.get("description") or (
        f"one of {', '.join(map(str, schema['enum']))}" if "enum" in schema
        else _TYPE_NAMES.get(kind or "", "valid"))
    if kind is not None and not _TYPES[kind](value):
        raise error(f"{where} must be {wanted}, not {_show(value)}")
    if isinstance(value, str):
        try:
            value.encode()
        except UnicodeEncodeError:  # lone surrogates: JSON allows them, pycrdt panics
            raise InvalidInput(f"{where} is not valid Unicode text") from None
        if len(value) > schema.get("maxLength", len(value)):
            raise error(f"{where} is longer than {schema['maxLength']} characters")
        if len(value) < schema.get("minLength", 0):
            raise error(f"{where} must not be empty")
        if not ((re.fullmatch(schema["pattern"], value) if "pattern" in schema else True)
                and value in schema.get("enum", [value])
                and (schema.get("format") != "date" or _is_date(value))):
            raise error(f"{where} must be {wanted}, not {_show(value)}")
    elif isinstance(value, int) and kind == "integer":
        if not schema.get("minimum", -MAX_AMOUNT) <= value <= schema.get("maximum", MAX_AMOUNT):
            raise error(f"{where} must be {wanted}, not {value}")
    elif isinstance(value, list):
        if len(value) > schema.get("maxItems", len(value)):
            raise InvalidInput(f"{where} has more than {schema['maxItems']} items")
        for i, item in enumerate(value):
            check(item, schema["items"], f"{where}[{i}]")
    elif isinstance(value, dict):
        _check_object(value, schema, where)
    for part in schema.get("allOf", ()):
        check(value, part, where)
    if "oneOf" in schema and sum(_fits(value, s) for s in schema["oneOf"]) != 1:
        keys = [k for s in schema["oneOf"] for k in s.get("required", ())]
        at_most = "at most " if any("not" in s for s in schema["oneOf"]) else ""
        raise InvalidInput(f"give {at_most}one of {', '.join(keys)}")
    if "anyOf" in schema and not any(_fits(value, s) for s in schema["anyOf"]):
        raise InvalidInput(f"{where} fits none of the forms allowed")
    if "not" in schema and _fits(value, schema["not"]):
        raise InvalidInput(f"{where} has a form that is not allowed")


def _fits(value: Any, schema: Schema) -> bool:
    try:
        check(value, schema, "")
    except LedgerError:
        return False
    return True


def one_of(*keys: str, optional: bool = False) -> Schema:
    """Exactly one of these fields (at most one, if `optional`), as JSON Schema says it."""
    forms: list[Schema] = [{"required": [k]} for k in keys]
    if optional:
        forms.append({"not": {"anyOf": [{"required": [k]} for k in keys]}})
    return {"oneOf": forms}


def _check_object(value: dict[str, Any], schema: Schema, where: str) -> None:
    props: dict[str, Schema] = schema.get("properties", {})
    missing = [k for k in schema.get("required", ()) if k not in value]
    if missing:
        raise InvalidInput(f"{where} lacks {', '.join(missing)}")
    extra = schema.get("additionalProperties", True)
    for k, v in value.items():
        if k in props:
            check(v, props[k], k if where == "body" else f"{where}.{k}")
        elif extra is False:
            raise InvalidInput(f"unknown field {_show(k)} in {where}; "
                               f"expected {', '.join(sorted(props))}")
        elif isinstance(extra, dict):
            check(k, schema.get("propertyNames", {}), f"a key of {where}")
            check(v, extra, f"{where}.{k}")
    if len(value) > schema.get("maxProperties", len(value)):
        raise InvalidInput(f"{where} has more than {schema['maxProperties']} fields")
    if len(value) < schema.get("minProperties", 0):
        raise InvalidInput(f"{where} is empty: nothing to change")


def _is_date(value: str) -> bool:
    try:
        date.fromisoformat(value)
    except ValueError:
        return False
    return re.fullmatch("[0-9]{4}-[0-9]{2}-[0-9]{2}", value) is not None


def _show(value: Any) -> str:
    shown = json.dumps(value, ensure_ascii=False)
    return shown if len(shown) <= 40 else shown[:37] + "..."


# --- response schemas (documentation; schemathesis checks the API against them) ----

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
MONEY = {"type": "object", "required": ["entry", "balance"],
         "properties": {"entry": ENTRY, "balance": BALANCE}}
CARD = {"type": "object", "required": ["id", "card_no", "member", "status", "type"],
        "properties": {"id": STR, "card_no": STR, "member": STR,
                       "status": {"type": "string", "enum": ["active", "lost", "replaced",
                                                             "returned"]},
                       "type": STR, "expiry": STR, "has_pin": {"type": "boolean"}}}
LEVEL = {"type": "object",
         "required": ["name", "discount", "points_multiplier", "spent", "topped"],
         "properties": {"name": STR, "discount": STR, "points_multiplier": STR, "spent": INT,
                        "topped": INT}}
MEMBER = {"type": "object",
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
                      "topup_cash", "topups", "cards_sold", "card_sales"],
         "properties": {"day": STR, "branch": STR, **{k: INT for k in (
             "new_members", "sales", "debits", "refunds", "topup_cash", "topups",
             "cards_sold", "card_sales")}}}
SETTLEMENT = {"type": "object", "required": ["pairs", "matrix", "net", "total"],
              "properties": {
                  "pairs": {"type": "array", "items": {
                      "type": "object", "required": ["owes", "to", "amount"],
                      "properties": {"owes": STR, "to": STR, "amount": INT}}},
                  "matrix": {"type": "object", "additionalProperties": AMOUNTS},
                  "net": AMOUNTS, "total": INT}}
RANKING = {"type": "array", "items": {"type": "object", "required": ["amount", "count"],
                                      "properties": {"amount": INT, "count": INT}}}
SYNC = {"type": "object", "required": ["node", "chain", "peers"],
        "properties": {"node": STR, "chain": STR, "peers": {"type": "array", "items": {
            "type": "object",
            "required": ["node", "address", "connected", "last_contact", "behind_in",
                         "behind_out"],
            "properties": {"node": STR, "address": STR, "connected": {"type": "boolean"},
                           "last_contact": {"type": "number", "nullable": True},
                           "behind_in": {"type": "integer", "nullable": True},
                           "behind_out": {"type": "integer", "nullable": True}}}}}}
LOGIN = {"type": "object",
         "required": ["token", "operator", "name", "node", "permissions", "expires_in"],
         "properties": {"token": STR, "operator": STR, "name": STR, "node": STR,
                        "permissions": {"type": "array", "items": STR},
                        "expires_in": {"type": "integer", "description": "seconds"}}}
ERROR = {"type": "object", "required": ["error", "message"],
         "properties": {"error": STR, "message": STR,
                        "branch": {"type": "string", "nullable": True,
                                   "description": "rights_elsewhere: the richest holder"},
                        "holders": {**AMOUNTS, "description": "rights_elsewhere: by branch"}}}


# --- the route table --------------------------------------------------------------


@dataclass(frozen=True)
class Param:
    schema: Schema
    required: bool = False
    default: Any = None


@dataclass
class Call:
    """One request, checked: what a route handler gets."""

    host: ApiHost
    sessions: Sessions
    request: web.Request
    session: Session | None
    path: dict[str, str]
    query: dict[str, Any]
    body: dict[str, Any]

    @property
    def ledger(self) -> Ledger:
        return self.host.ledger

    @property
    def operator(self) -> str:
        assert self.session is not None, "only routes with auth=False have no session"
        return self.session.operator


Handler = Callable[[Call], Awaitable[Any]]


@dataclass(frozen=True)
class Route:
    method: str
    path: str  # below the mount point; {name} for the path parameters in PATH_PARAMS
    handler: Handler
    summary: str
    tag: str
    body: Schema | None
    query: Mapping[str, Param]
    response: Schema | None  # None: 204, no body
    status: int
    # Checked here, for reads the Ledger does not check itself: any one of these.
    needs: frozenset[str] | None
    auth: bool
    refusals: tuple[int, ...]  # statuses the ledger may refuse with, beyond the usual
    # OpenAPI links: which later call takes what from this response (a debit's id for
    # its refund), so a client, and schemathesis's stateful phase, can chain them.
    links: Mapping[str, Mapping[str, Any]]


ROUTES: list[Route] = []
PATH_PARAMS: dict[str, Schema] = {"member_id": MEMBER_ID, "card_no": CARD_NO}

# Reading a member's data (privacy: the design asks that it be guarded) takes a
# permission that serves members; an operator who only runs backups or sync may not.
SERVES_MEMBERS = frozenset({
    "member.add", "member.edit", "member.delete", "member.upgrade", "card.issue",
    "card.lost", "card.replace", "card.return", "topup", "debit", "refund", "adjust",
    "points.redeem", "package.sell", "rights.transfer", "reports.view",
})
REPORTS = frozenset({"reports.view"})
MONEY_REFUSALS = (404, 409, 422)


def route(method: str, path: str, *, summary: str, tag: str, body: Schema | None = None,
          query: Mapping[str, Param] | None = None, response: Schema | None = ANY_OBJECT,
          status: int = 200, needs: frozenset[str] | None = None, auth: bool = True,
          refusals: tuple[int, ...] = (), links: Mapping[str, Mapping[str, Any]] | None = None
          ) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        ROUTES.append(Route(method, path, fn, summary, tag, body, query or {}, response,
                            status, needs, auth, refusals, links or {}))
        return fn

    return register


# --- sessions -----------------------------------------------------------------------


@route("POST", "/login", summary="Log an operator in; returns a bearer token", tag="session",
       body=obj({"operator": text(40, minLength=1, description="the operator's name (工号)"),
                 "password": text(200)}),
       response=LOGIN, auth=False, refusals=(401,))
async def login(c: Call) -> dict[str, Any]:
    name, password = c.body["operator"], c.body["password"]
    try:
        operator = c.ledger.authenticate(name, password)
    except PermissionDenied as e:
        raise ApiError(401, "login_failed", str(e)) from None
    return {"token": c.sessions.open(operator, name), "operator": operator, "name": name,
            "node": c.ledger.node, "permissions": sorted(c.ledger.permissions(operator)),
            "expires_in": int(c.sessions.ttl_s)}


@route("POST", "/logout", summary="End this token's session", tag="session", response=None,
       status=204)
async def logout(c: Call) -> None:
    c.sessions.close(_bearer(c.request))


# --- members ------------------------------------------------------------------------


def _member_view(ledger: Ledger, member_id: str) -> dict[str, Any]:
    m = ledger.member(member_id)
    m["balance"] = ledger.balance(member_id)
    return m


def _known_member(ledger: Ledger, member_id: str) -> str:
    """Refuse an unknown member (a view alone would show an empty balance)."""
    if ledger.storage.conn.execute(
            "SELECT 1 FROM members WHERE id = ?", (member_id,)).fetchone() is None:
        raise NotFound(f"unknown member {member_id}")
    return member_id


@route("POST", "/members", summary="Register a member", tag="members", status=201,
       body=obj({"name": text(200, minLength=1), "phone": text(20, pattern=_ecma(PHONE))},
                {**PROFILE, "tags": TAGS, "prefs": PREFS, "custom": CUSTOM}),
       response=MEMBER, links={
           "topup": {"requestBody": {"member": "$response.body#/id", "yuan": "100.00"}},
           "debit": {"requestBody": {"member": "$response.body#/id", "amount": 100,
                                     "pay": "cash"}}})
async def add_member(c: Call) -> dict[str, Any]:
    b = c.body
    mid = await c.host.perform(lambda: c.ledger.add_member(
        c.operator, name=b["name"], phone=b["phone"], tags=b.get("tags", ()),
        prefs=b.get("prefs"), custom=b.get("custom"),
        **{k: b[k] for k in PROFILE if k in b}))
    return _member_view(c.ledger, mid)


@route("GET", "/members", summary="Find members by card number, phone, phone tail or name "
       "(phones masked)", tag="members", needs=SERVES_MEMBERS,
       query={"q": Param(text(100, minLength=1), required=True),
              "limit": Param({"type": "integer", "minimum": 1, "maximum": 100}, default=20)},
       response=array(MEMBER_LINE))
async def find_members(c: Call) -> list[dict[str, Any]]:
    return c.ledger.find_members(c.query["q"], c.query["limit"])


@route("GET", "/members/{member_id}", summary="A member's profile, cards, level and balance",
       tag="members", needs=SERVES_MEMBERS, response=MEMBER)
async def get_member(c: Call) -> dict[str, Any]:
    return _member_view(c.ledger, c.path["member_id"])


EDIT_FIELDS: dict[str, Schema] = {
    "name": text(200, minLength=1),
    "phone": text(20, pattern=_or_empty(_ecma(PHONE))),
    **PROFILE,
    "level": text(200, description="a level name: a manual upgrade"),
    "deleted": {"type": "boolean"},
}


@route("PATCH", "/members/{member_id}", summary="Change profile fields, preferences, tags, "
       "level (member.upgrade) or deleted (member.delete)", tag="members",
       body=obj({}, {**EDIT_FIELDS, "prefs": PREFS, "custom": CUSTOM, "tags_add": TAGS,
                     "tags_remove": TAGS}, minProperties=1),
       response=MEMBER)
async def edit_member(c: Call) -> dict[str, Any]:
    b, mid = c.body, c.path["member_id"]
    await c.host.perform(lambda: c.ledger.edit_member(
        c.operator, mid, fields={k: b[k] for k in EDIT_FIELDS if k in b},
        prefs=b.get("prefs"), custom=b.get("custom"), tags_add=b.get("tags_add", ()),
        tags_remove=b.get("tags_remove", ())))
    return _member_view(c.ledger, mid)


@route("GET", "/members/{member_id}/balance", summary="Cash (stored value), bonus, points "
       "and package uses left, in fen and counts", tag="members", needs=SERVES_MEMBERS,
       response=BALANCE)
async def balance(c: Call) -> dict[str, Any]:
    return c.ledger.balance(_known_member(c.ledger, c.path["member_id"]))


@route("GET", "/members/{member_id}/history", summary="The member's ledger entries, newest "
       "first", tag="members", needs=SERVES_MEMBERS,
       query={"limit": Param({"type": "integer", "minimum": 1, "maximum": 500}, default=50)},
       response=array(ENTRY, 500))
async def history(c: Call) -> list[dict[str, Any]]:
    return c.ledger.history(_known_member(c.ledger, c.path["member_id"]), c.query["limit"])


@route("GET", "/members/{member_id}/rights", summary="Which branch holds how much of a purse "
       "(escrow rights)", tag="members", needs=SERVES_MEMBERS,
       query={"purse": Param(text(40, pattern=_ecma(PURSE),
                                  description="cash, bonus, points or pkg:ID"), default="cash")},
       response={"type": "object", "required": ["purse", "rights"],
                 "properties": {"purse": STR, "rights": AMOUNTS}})
async def rights(c: Call) -> dict[str, Any]:
    purse = c.query["purse"]
    return {"purse": purse,
            "rights": c.ledger.rights(_known_member(c.ledger, c.path["member_id"]), purse)}


@route("GET", "/members/{member_id}/level", summary="The member's level, discount and the "
       "totals it is reached on", tag="members", needs=SERVES_MEMBERS, response=LEVEL)
async def level(c: Call) -> dict[str, Any]:
    return c.ledger.level(_known_member(c.ledger, c.path["member_id"]))


# --- cards --------------------------------------------------------------------------

SAME_CARD = {"parameters": {"card_no": "$response.body#/card_no"}}  # a link to what's next


@route("POST", "/members/{member_id}/cards", summary="Issue a card to a member", tag="cards",
       status=201, body=obj({"card_no": CARD_NO}, {
           "type": {"type": "string", "enum": list(CARD_TYPES)}, "pin": PIN,
           "expiry": DAY, "fee": FEE}),
       response=CARD, links={op: SAME_CARD for op in ("report_lost", "return_card")})
async def issue_card(c: Call) -> dict[str, Any]:
    b = c.body
    await c.host.perform(lambda: c.ledger.issue_card(
        c.operator, c.path["member_id"], b["card_no"], card_type=b.get("type", "stored_value"),
        pin=b.get("pin"), expiry=b.get("expiry", ""), fee=b.get("fee", 0)))
    return c.ledger.card(b["card_no"])


@route("GET", "/cards/{card_no}", summary="The card with this number (the active one, else "
       "the newest)", tag="cards", needs=SERVES_MEMBERS, response=CARD)
async def get_card(c: Call) -> dict[str, Any]:
    return c.ledger.card(c.path["card_no"])


def _card_event(method: str) -> Handler:
    async def handler(c: Call) -> dict[str, Any]:
        no = c.path["card_no"]
        await c.host.perform(lambda: getattr(c.ledger, method)(c.operator, no))
        return c.ledger.card(no)

    handler.__name__ = method  # the operationId
    return handler


# 挂失 / 取消挂失 / 退卡: one Ledger method each, the same shape.
for _event, _method, _summary, _next in (
    ("lost", "report_lost", "Report a card lost (挂失)", ("report_found", "replace_card")),
    ("found", "report_found", "Cancel a loss report", ()),
    ("return", "return_card", "Take a card back (退卡)", ()),
):
    route("POST", f"/cards/{{card_no}}/{_event}", summary=_summary, tag="cards",
          response=CARD, links={op: SAME_CARD for op in _next})(_card_event(_method))


@route("POST", "/cards/{card_no}/replace", summary="Replace a card (补卡); balances stay with "
       "the member", tag="cards", body=obj({"new_no": CARD_NO}, {"pin": PIN}), response=CARD)
async def replace_card(c: Call) -> dict[str, Any]:
    b = c.body
    await c.host.perform(lambda: c.ledger.replace_card(
        c.operator, c.path["card_no"], b["new_no"], pin=b.get("pin")))
    return c.ledger.card(b["new_no"])


# --- money --------------------------------------------------------------------------

WHO = {"member": MEMBER_ID, "card": CARD_NO, "pin": PIN}
AMOUNT = {"amount": FEN, "yuan": YUAN}


def _amount(body: Mapping[str, Any]) -> int | None:
    """Fen as sent, or the typed yuan parsed exactly (parse_yuan also refuses 0.00)."""
    return parse_yuan(body["yuan"]) if "yuan" in body else body.get("amount")


def _done(ledger: Ledger, entry: dict[str, Any]) -> dict[str, Any]:
    """An entry-writing operation: the entry, and the balance it left for the receipt."""
    return {"entry": entry, "balance": ledger.balance(str(entry["member"]))}


@route("POST", "/topup", summary="Top up stored value (充值): paid here, held here",
       tag="money", body=obj({}, {**WHO, **AMOUNT, "approver": obj(
           {"name": text(40), "password": text(200)},
           description="an operator allowed to approve a top-up above the limit")},
           allOf=[one_of("member", "card"), one_of("amount", "yuan")]),
       response=MONEY, refusals=MONEY_REFUSALS,
       links={"debit": {"requestBody": {"member": "$response.body#/entry/member",
                                        "amount": 100}}})
async def topup(c: Call) -> dict[str, Any]:
    b = c.body
    amount = _amount(b)
    assert amount is not None  # the schema asks for one
    # Ledger.topup wants the member; it checks the card (status, PIN) against it.
    member = b["member"] if "member" in b else str(c.ledger.card(b["card"])["member"])
    approver = (b["approver"]["name"], b["approver"]["password"]) if "approver" in b else None
    entry = await c.host.perform(lambda: c.ledger.topup(
        c.operator, member, amount, card=b.get("card"), pin=b.get("pin"), approver=approver))
    return _done(c.ledger, entry)


@route("POST", "/debit", summary="Charge (扣费): an amount as given, or a service from the "
       "price list at the member's level discount (pay=package: uses of a package of the "
       "service)", tag="money",
       body=obj({}, {**WHO, **AMOUNT,
                     "service": text(20, pattern="^[A-Za-z0-9_-]{1,20}$",
                                     description="a service code from the price list"),
                     "qty": COUNT,
                     "pay": {"type": "string", "enum": ["stored", "package", "cash"]},
                     "package": ENTRY_ID},
                allOf=[one_of("member", "card"), one_of("amount", "yuan", "service")]),
       response=MONEY, refusals=MONEY_REFUSALS,
       links={"refund": {"requestBody": {"debit_id": "$response.body#/entry/id"}}})
async def debit(c: Call) -> dict[str, Any]:
    b = c.body
    amount = _amount(b)
    entry = await c.host.perform(lambda: c.ledger.debit(
        c.operator, b.get("member"), amount=amount, service=b.get("service"),
        qty=b.get("qty", 1), pay=b.get("pay", "stored"), package=b.get("package"),
        card=b.get("card"), pin=b.get("pin")))
    return _done(c.ledger, entry)


@route("POST", "/refund", summary="Refund (退款) all or part of a debit made at this branch: "
       "what is left of it by default; qty for uses of a package", tag="money",
       body=obj({"debit_id": ENTRY_ID}, {**AMOUNT, "qty": COUNT, "reason": text()},
                **one_of("amount", "yuan", "qty", optional=True)),
       response=MONEY, refusals=MONEY_REFUSALS)
async def refund(c: Call) -> dict[str, Any]:
    b = c.body
    amount = b["qty"] if "qty" in b else _amount(b)
    entry = await c.host.perform(lambda: c.ledger.refund(
        c.operator, b["debit_id"], amount, reason=b.get("reason", "")))
    return _done(c.ledger, entry)


# --- reports ------------------------------------------------------------------------

PERIOD = {"from": Param(DAY), "to": Param(DAY)}


@route("GET", "/reports/daily", summary="营业报表: one day's new members, sales, top-up cash, "
       "cards sold", tag="reports", needs=REPORTS,
       query={"day": Param(DAY), "branch": Param(NODE)}, response=DAILY)
async def report_daily(c: Call) -> dict[str, Any]:
    return views.daily_report(c.ledger, c.query["day"] or c.ledger.today(), c.query["branch"])


@route("GET", "/reports/settlement", summary="结算表: who owes whom for value served at "
       "another branch", tag="reports", needs=REPORTS, query=PERIOD, response=SETTLEMENT)
async def report_settlement(c: Call) -> dict[str, Any]:
    return views.settlement(c.ledger, c.query["from"], c.query["to"])


@route("GET", "/reports/ranking", summary="消费排名 by member or 销量排名 by service, net of "
       "refunds", tag="reports", needs=REPORTS,
       query={"by": Param({"type": "string", "enum": ["members", "services"]},
                          default="members"),
              **PERIOD,
              "limit": Param({"type": "integer", "minimum": 1, "maximum": 100}, default=10)},
       response=RANKING)
async def report_ranking(c: Call) -> list[dict[str, Any]]:
    q = c.query
    return views.ranking(c.ledger, q["by"], q["from"], q["to"], q["limit"])


# --- the node -----------------------------------------------------------------------


@route("GET", "/sync/status", summary="This node and its peers: connected, last contact, "
       "operations behind each way", tag="node", response=SYNC)
async def sync_status(c: Call) -> dict[str, Any]:
    # Any operator: it holds no member data, and a counter shows whether the branch is
    # online (whether a debit can fetch rights from other branches).
    return c.host.sync_status()


@route("GET", "/openapi.json", summary="This document", tag="node", auth=False)
async def openapi_document(c: Call) -> dict[str, Any]:
    # The mount point (the node mounts this app at /api) from the route as matched.
    resource = c.request.match_info.route.resource
    prefix = resource.canonical.removesuffix("/openapi.json") if resource else ""
    return openapi(prefix or "/")


# --- dispatch -----------------------------------------------------------------------


def _bearer(request: web.Request) -> str:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, "unauthorized",
                       "log in first: send Authorization: Bearer TOKEN from POST /login")
    return token.strip()


def _query_value(name: str, raw: str, param: Param) -> Any:
    if param.schema["type"] == "integer":
        if not re.fullmatch("[0-9]{1,15}", raw):
            raise InvalidInput(f"{name} must be a whole number, not {_show(raw)}")
        value: Any = int(raw)
    else:
        value = raw
    check(value, param.schema, name)
    return value


async def _json_body(request: web.Request, schema: Schema) -> dict[str, Any]:
    if request.content_type != "application/json":
        raise ApiError(415, "unsupported_media_type",
                       f"send JSON with Content-Type: application/json, "
                       f"not {request.content_type}")
    try:
        raw = await request.clone(client_max_size=MAX_BODY).read()
    except web.HTTPRequestEntityTooLarge:
        raise ApiError(413, "body_too_large",
                       f"the request body is larger than {MAX_BODY} bytes") from None
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError) as e:  # bad UTF-8 too; RecursionError: [[[[...
        raise ApiError(400, "invalid_json", f"the request body is not JSON: {e}") from None
    check(body, schema, "body")
    assert isinstance(body, dict)  # the table's bodies are objects
    return body


def _endpoint(r: Route, host: ApiHost, sessions: Sessions
              ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handle(request: web.Request) -> web.StreamResponse:
        session = None
        if r.auth:
            session = sessions.get(_bearer(request))
            if session is None:
                raise ApiError(401, "unauthorized", "the token is unknown or expired; log in")
            request[SESSION] = session
            if r.needs is not None and not r.needs & host.ledger.permissions(session.operator):
                raise PermissionDenied(f"operator {session.name} may not "
                                       f"{' or '.join(sorted(r.needs))}")
        path = dict(request.match_info)
        for name, value in path.items():
            check(value, PATH_PARAMS[name], name)
        missing = [n for n, p in r.query.items() if p.required and n not in request.query]
        if missing:
            raise InvalidInput(f"give {', '.join(missing)} in the query")
        query = {name: param.default if (raw := request.query.get(name)) is None
                 else _query_value(name, raw, param) for name, param in r.query.items()}
        body = await _json_body(request, r.body) if r.body is not None else {}
        result = await r.handler(Call(host, sessions, request, session, path, query, body))
        if r.response is None:
            return web.Response(status=r.status)
        return web.json_response(result, status=r.status, dumps=_dumps)

    return handle


def api_app(host: ApiHost, *, sessions: Sessions | None = None) -> web.Application:
    """The API as an aiohttp application, for the node to mount at /api."""
    app = web.Application(middlewares=[refusals])
    sessions = sessions or Sessions()
    for r in ROUTES:
        app.router.add_route(r.method, r.path, _endpoint(r, host, sessions),
                             name=r.handler.__name__)
    return app


# --- the OpenAPI document -----------------------------------------------------------

ERROR_MEANING = {
    400: "Invalid input (error invalid_input, invalid_amount or invalid_json)",
    401: "No valid token (log in); at login, a wrong operator name or password",
    403: "The operator lacks the permission (permission_denied, approval_required)",
    404: "No such member, card, debit or service (not_found)",
    409: "The member's state refuses it now: insufficient_funds, rights_elsewhere (with "
         "branch and holders), card_lost, card_inactive",
    413: "The request body is larger than 64 KB",
    415: "The request body is not application/json",
    422: "Refused for this card or debit, e.g. wrong_pin",
}


def _refusal_statuses(r: Route) -> set[int]:
    out = set(r.refusals)
    if r.body is not None or r.query or "{" in r.path:
        out.add(400)
    if r.body is not None:
        out |= {413, 415}
    if "{" in r.path:
        out.add(404)
    if r.auth:
        out |= {401, 403}
    return out


def _operation(r: Route) -> dict[str, Any]:
    params = [{"name": n, "in": "path", "required": True, "schema": PATH_PARAMS[n]}
              for n in re.findall(r"{(\w+)}", r.path)]
    params += [{"name": n, "in": "query", "required": p.required,
                "schema": p.schema if p.default is None else {**p.schema, "default": p.default}}
               for n, p in r.query.items()]
    op: dict[str, Any] = {"operationId": r.handler.__name__, "summary": r.summary,
                          "tags": [r.tag]}
    if params:
        op["parameters"] = params
    if r.body is not None:
        op["requestBody"] = {"required": True,
                             "content": {"application/json": {"schema": r.body}}}
    if not r.auth:
        op["security"] = []
    if r.needs is not None:
        op["description"] = f"Needs one of the permissions: {', '.join(sorted(r.needs))}."
    ok: dict[str, Any] = {"description": "Done"}
    if r.response is not None:
        ok["content"] = {"application/json": {"schema": r.response}}
    if r.links:
        ok["links"] = {name: {**link, "operationId": name} for name, link in r.links.items()}
    error = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    op["responses"] = {str(r.status): ok, **{
        str(s): {"description": ERROR_MEANING[s], "content": error}
        for s in sorted(_refusal_statuses(r))}}
    return op


def openapi(prefix: str) -> dict[str, Any]:
    """The OpenAPI 3.0 document of ROUTES, for the API mounted at `prefix`."""
    paths: dict[str, dict[str, Any]] = {}
    for r in ROUTES:
        paths.setdefault(r.path, {})[r.method.lower()] = _operation(r)
    return {
        "openapi": "3.0.3",
        "info": {"title": "crdtledger branch node API", "version": "1",
                 "description": "Members, cards, top-ups, debits, refunds and reports of "
                                "one branch node. Money is integer fen; a request may give "
                                "an amount as yuan text instead (\"yuan\": \"12.34\")."},
        "servers": [{"url": prefix}],
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                           "description": "a token from POST /login"}},
            "schemas": {"Error": ERROR},
        },
    }


__all__ = ["ROUTES", "ApiHost", "Sessions", "Standalone", "api_app", "openapi"]
