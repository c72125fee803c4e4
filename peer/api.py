"""The branch node's HTTP JSON API, for point-of-sale systems and the counter app.

Why it looks like this:

- It is generated from the operation table (`crdtledger.operations.TABLE`): each
  operation's HTTP method and path, its parameters (path, query or JSON body), its
  permission and its result schema. The command line is generated from the same
  table, so the two cannot drift; this module only adds the HTTP: sessions, tokens,
  the body limit, refusals as JSON and the OpenAPI document.
- Permissions stay the library's: every operation runs as the logged-in operator,
  and `operations.run` refuses one who holds none of its permissions, as the Ledger
  does for its writes.
- Every write goes through `ApiHost.perform`, so a node that lacks a member's rights
  can fetch them from other branches and retry; the API never moves rights itself.
- Money in JSON is integer fen, as everywhere in the ledger. What a person typed is
  accepted as a yuan string ("12.34") and parsed exactly by `parse_yuan`; a JSON
  number with a fraction is refused, never rounded.
- The same schemas check every request and make up `/openapi.json`, so the document
  cannot drift from what the code accepts, and schemathesis can hold the API to it.
- A refusal is always ``{"error": code, "message": sentence}`` with the status
  `operations.describe` gives: a till shows the sentence and branches on the code.
  Nothing the client sends can cause a 5xx.
- Tokens live in memory only: a restart logs every counter out (it logs in again),
  and no secret is ever written to disk.
- Everything runs on the event-loop thread that owns the Ledger (pycrdt objects are
  bound to one thread); the SQLite reads behind a view are fast enough to do inline.
  The one slow step, a login's scrypt (~30 ms), runs in a worker thread on what was
  read on the loop (`Ledger.login_record`), so logins never stall sync or other tills.
- Failed logins are throttled per operator name and per client address
  (`crdtledger.throttle`): a locked-out attempt gets 429 with Retry-After and its
  password is not even checked.
- A write sent with an `Idempotency-Key` header is performed once per operator and
  key: a retry of the same request gets the first answer again
  (`Idempotent-Replayed: true`), another request under the key 422, a retry while
  the first still runs waits for it (`IdempotencyKeys`, `crdtledger.idempotency`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import secrets
import sqlite3
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from aiohttp import web

from crdtledger import audit, idempotency, operations, views
from crdtledger.auth import TooManyAttempts, verify_login
from crdtledger.errors import (
    InvalidAmount,
    InvalidInput,
    LedgerError,
    PermissionDenied,
    RemoteProtocolError,
)
from crdtledger.hlc import boot_clock_s
from crdtledger.inputs import NotJson, json_value, typed_half_width
from crdtledger.ledger import Ledger
from crdtledger.operations import ANY_OBJECT, ENTRY_ID, NODE, PASSWORD, STR, TABLE, Operation
from crdtledger.schema import Schema, check, obj, show, text
from crdtledger.sync import MAX_FRAME_BYTES
from crdtledger.throttle import LoginThrottle, too_many_attempts
from peer import receipts
from peer.files import export_bytes, import_bytes, sealed_backup

log = logging.getLogger("crdtledger.api")

T = TypeVar("T")
# How long a request's body may stop arriving (peer.node.IDLE_S for its head).
BODY_IDLE_S = 30.0

# A till sends a few hundred bytes; 64 KB leaves room for a long note and refuses a
# flood early. Set per request (Request.clone): a sub-app's own client_max_size is
# ignored, the mounting application's applies.
MAX_BODY = 64 * 1024
# A request line or header of up to 64 KB reaches the routes, which refuse a query
# that breaks its schema with a JSON error as documented; aiohttp's own 8 KB limit
# answered a long one (a list of many values) in plain text before any route saw it.
# Given to the server's runner as max_line_size and max_field_size.
MAX_REQUEST_LINE = 64 * 1024
TOKEN_TTL_S = 12 * 3600  # one working day, opening to closing
# Logins without logouts (a till that logs in per sale) must not grow memory for
# the 12 hours until their tokens expire: past this many, the oldest are dropped.
MAX_SESSIONS = 10_000
# Of one operator (a till that logs in per sale keeps its last 200 working).
MAX_SESSIONS_PER_OPERATOR = 200


class ApiHost(Protocol):
    """What the API needs from the node that mounts it."""

    @property
    def ledger(self) -> Ledger: ...

    async def perform(self, op: Callable[[], T], name: str | None = None) -> T:
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

    async def perform(self, op: Callable[[], T], name: str | None = None) -> T:
        return op()

    def sync_status(self) -> dict[str, Any]:
        return {"node": self._ledger.node, "chain": self._ledger.chain, "peers": [],
                "clock": None, **views.trust_status(self._ledger)}


# --- sessions -------------------------------------------------------------------


@dataclass(frozen=True)
class Session:
    operator: str  # the id the Ledger checks permissions against
    name: str  # what the operator typed at login: messages name people by it
    expires: float  # on the sessions' clock


SESSION = web.RequestKey("session", Session)  # of the request, for refusals to name people


class Sessions:
    """Bearer tokens of logged-in operators, in memory. An operator's tokens end when
    the operator's password changes or the operator is deactivated, at this branch
    or at another one (the ledgers tell: `crdtledger.auth.watch_credentials`)."""

    def __init__(self, ttl_s: float = TOKEN_TTL_S,
                 clock: Callable[[], float] = boot_clock_s,
                 throttle: LoginThrottle | None = None) -> None:
        # On the boot clock, which runs on while the PC sleeps: on the monotonic one a
        # token's hours stopped with a suspended till, and lasted the night.
        self.ttl_s = ttl_s
        self._clock = clock
        # Failed logins, on the same clock as the tokens (a test moves both).
        self.throttle = throttle if throttle is not None else LoginThrottle(clock=clock)
        self._by_token: dict[str, Session] = {}
        from crdtledger.auth import watch_credentials

        watch_credentials(self)

    def credentials_changed(self, operators: frozenset[str]) -> None:
        """These operators' passwords changed or they were deactivated: their tokens
        stop working now, not when they expire (a reset password is the usual answer
        to a leaked one)."""
        for token in [t for t, s in self._by_token.items() if s.operator in operators]:
            del self._by_token[token]

    def open(self, operator: str, name: str) -> str:
        now = self._clock()
        for token in [t for t, s in self._by_token.items() if s.expires <= now]:
            del self._by_token[token]
        # An operator's own oldest first: one cashier logging in in a loop ended every
        # other till's session once the node's MAX_SESSIONS were reached.
        mine = [t for t, s in self._by_token.items() if s.operator == operator]
        for token in mine[:max(0, len(mine) - MAX_SESSIONS_PER_OPERATOR + 1)]:
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


# --- idempotency keys -----------------------------------------------------------

IDEMPOTENCY_KEY = "Idempotency-Key"
REPLAYED = "Idempotent-Replayed"
Answer = tuple[int, Any]  # status and JSON body (None: no body)


class IdempotencyKeys:
    """The API's side of `crdtledger.idempotency`: which keys are running now, and
    what a request under a key gets.

    Choices, each what a cashier at a till expects:

    - A duplicate that arrives while the first request still runs (a till with a
      short timeout while the node fetches rights from another branch) waits for it
      and gets its answer, rather than a 409 it would have to retry by hand: the
      wait is bounded by the first request's own (the rights deadline).
    - A refusal is not remembered: the library refused it before writing anything,
      so the key is free again and the till retries the same sale with the same key
      once the cashier has fixed the PIN, the amount or the approver, or the member
      topped up. Stripe remembers any answer of a request that began executing,
      because its refusals may have had side effects; ours cannot (DESIGN.md: a
      refusal never half-applies), and a till would otherwise have to mint a new key
      for the corrected sale, losing the protection exactly where a retry is likely.
    - An answer that never came (the node stopped, or failed unexpectedly, between
      beginning and answering) is unknown: the key then answers 409 for a day, and
      the cashier looks at the member's history before selling again with a new key.
    - Keys are per operator (the id the ledger checks permissions of), not per
      token: a till that logs in again after the node restarted retries under its
      key, and another operator's same key is another key.
    """

    def __init__(self, clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        # A key's age is told by the time elapsed, not by the PC's clock: a clock set
        # right by two days between a debit and its retry made the key look expired,
        # and the retry sold again. So the clock (seconds since 1970: keys outlive the
        # process) is read once, and time runs on from it by the monotonic clock.
        # (A clock set while the node is stopped still moves the keys' ages by that.)
        self._start = (clock(), monotonic())
        self._monotonic = monotonic
        self._running: dict[tuple[str, str], tuple[str, asyncio.Future[None]]] = {}

    def now_ms(self) -> int:
        wall, mono = self._start
        return int((wall + self._monotonic() - mono) * 1000)

    async def run(self, ledger: Ledger, operator: str, key: str, request: str,
                  perform: Callable[[], Awaitable[Answer]]) -> tuple[int, Any, bool]:
        """(status, body, replayed): the remembered answer of this operator's key, or
        `perform`'s, kept for the key's retries."""
        slot = (operator, key)
        while True:
            running = self._running.get(slot)
            if running is not None:
                if running[0] != request:
                    raise _reused(key)
                # Shielded: a waiter whose client goes away must not cancel the first.
                await asyncio.shield(running[1])
                continue  # answered, refused (free again) or interrupted: look again
            kept = idempotency.look(ledger, operator, key, self.now_ms())
            if kept is None:
                before = idempotency.done_before_restore(ledger, operator, key, self.now_ms())
                if before is not None:
                    raise ApiError(409, "idempotency_unknown", (
                        f"the request first sent with Idempotency-Key {key} was done "
                        f"(entry {before}) before this branch's store was restored from a "
                        "backup, which kept no answer for it: it is not done again. Look "
                        "at the member's history, then send it with a new key if it "
                        "still needs doing"))
                break
            if kept.request != request:
                if idempotency.fingerprinted_before(ledger, kept):
                    raise ApiError(409, "idempotency_unknown", (
                        f"Idempotency-Key {key} was used before this branch's store was "
                        "restored from a backup: whether this is the same request cannot "
                        "be told. Look at the member's history, then send it with a new "
                        "key if it still needs doing"))
                raise _reused(key)
            if kept.status is None:
                raise ApiError(409, "idempotency_unknown", (
                    f"the request first sent with Idempotency-Key {key} was interrupted "
                    "before it answered (the node stopped): whether it was done is not "
                    "known. Look at the member's history, then send it with a new key "
                    "if it still needs doing"))
            return kept.status, kept.body, True
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._running[slot] = (request, done)
        try:
            idempotency.begin(ledger, operator, key, request, self.now_ms())
            try:
                status, body = await perform()
            except (LedgerError, ApiError):  # refused before anything was written
                idempotency.forget(ledger, operator, key)
                raise
            idempotency.finish(ledger, operator, key, status, body)
            return status, body, False
        finally:
            del self._running[slot]
            done.set_result(None)


def _reused(key: str) -> ApiError:
    return ApiError(422, "idempotency_key_reused", (
        f"Idempotency-Key {key} was already used for another request (another method, "
        "path or body) by this operator within the last 24 hours; nothing was done. "
        "Send a new key for a new request"))


# --- refusals -------------------------------------------------------------------


class ApiError(Exception):
    """A refusal of the HTTP layer itself (login, token, body), not of the ledger."""

    def __init__(self, status: int, code: str, message: str,
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.headers = dict(headers or {})


def _error(status: int, code: str, message: str, **extra: Any) -> web.Response:
    body = {"error": code, "message": " ".join(message.split()), **extra}
    return web.json_response(body, status=status, dumps=_dumps)


def _refusal(e: LedgerError, session: Session | None) -> web.Response:
    # The library names operators by id; people know the name they logged in with.
    names = {session.operator: session.name} if session is not None else {}
    code, status, sentence = operations.describe(e, names)
    response = _error(status, code, sentence, **operations.details(e))
    if isinstance(e, TooManyAttempts):
        response.headers["Retry-After"] = str(e.retry_after)
    return response


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
        response.headers.update(e.headers)
        if e.status == 401:
            response.headers["WWW-Authenticate"] = "Bearer"
        return response
    except sqlite3.OperationalError as e:  # the store itself: a disk full, a file locked
        log.exception("%s %s: the store failed", request.method, request.path)
        return _error(503, "storage_unavailable",
                      f"this branch's store could not be written ({e}): the operation was "
                      "not done. Free disk space, or close what holds the store, and try "
                      "again", retry=True)
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
    except Exception:  # a fault of ours: JSON as every answer, not aiohttp's page
        log.exception("%s %s failed", request.method, request.path)
        return _error(500, "internal_error",
                      "this branch failed to answer (a fault, written to its log): look "
                      "at the member or the entry before trying again")


def _dumps(data: Any) -> str:
    out = json.dumps(data, ensure_ascii=False)
    try:  # what a request carried and an answer quotes may hold a lone surrogate
        out.encode("utf-8")
    except UnicodeEncodeError:
        out = json.dumps(data)
    return out


# --- the routes: the operation table's, and the few of the HTTP itself ------------------

FAULT = {"type": "object", "required": ["node", "kind", "seq", "rule", "detail", "at"],
         "properties": {"node": STR, "kind": {"type": "string", "enum": ["rule", "fork"]},
                        "seq": {"type": "integer"}, "rule": STR, "detail": STR,
                        "at": {"type": "integer", "description": "ms since 1970"}}}
SYNC = {"type": "object", "required": ["node", "chain", "peers"],
        "properties": {"node": STR, "chain": STR,
                       "version": {"type": "string", "description": "this node's release"},
                       "protocol": {"type": "integer",
                                    "description": "the sync protocol version it speaks"},
                       "restored": {"type": "string", "nullable": True, "description":
                                    "restored from a backup of this time and not yet "
                                    "caught up with a peer: writes are refused"},
                       "another_pc": {"type": "string", "nullable": True, "description":
                                      "another PC seen selling as this branch (the same "
                                      "backup restored twice, or this PC's restore while "
                                      "it runs): writes here are refused once a record "
                                      "of that PC came, and the owner decides"},
                       "faults": {"type": "array", "items": FAULT, "description":
                                  "nodes caught breaking a write rule or forking their "
                                  "log: nothing more they write is applied"},
                       "refused": {"type": "array", "items": STR},
                       "revoked": {"type": "boolean", "description":
                                   "the chain revoked this branch's certificate (its list "
                                   "is held here): writes are refused"},
                       "certificate_expires": {
                           "type": "integer", "nullable": True, "description":
                           "when this branch's certificate ends (ms since 1970): past "
                           "it every branch refuses its records (crdtledger chain renew)"},
                       "rights_refused": {
                           "type": "object", "description":
                           "branch -> its rights requests answered none since this node "
                           "started, for asking faster than an honest branch sells "
                           "(crdtledger.escrow.GrantBudget)",
                           "additionalProperties": {"type": "integer"}},
                       "unfunded": {
                           "type": "object", "description":
                           "branch -> its ledger entries waiting here over ten minutes "
                           "for rights it never held (crdtledger.views.unfunded)",
                           "additionalProperties": {
                               "type": "object", "required": ["entries", "since"],
                               "properties": {"entries": {"type": "integer"},
                                              "since": {"type": "integer",
                                                        "description": "ms since 1970"}}}},
                       "closing_differs": {
                           "type": "object", "nullable": True, "description":
                           "the branches that signed another closing of the books of "
                           "`month` than this branch holds (a fork, or records that "
                           "reached one side late: crdtledger.closing)",
                           "required": ["month", "branches"],
                           "properties": {"month": STR,
                                          "branches": {"type": "array", "items": STR}}},
                       "clock": {"type": "object", "nullable": True, "description":
                                 "this machine's clock as its peers see it "
                                 "(crdtledger.peerclock); null without a node",
                                 "required": ["off_ms", "limit_ms", "peers", "disagree"],
                                 "properties": {
                                     "off_ms": {"type": "integer", "description":
                                                "the chain's time minus this clock when "
                                                "most peers say it is off by more than "
                                                "limit_ms (ids and sales then go by the "
                                                "chain's time), else 0"},
                                     "limit_ms": {"type": "integer"},
                                     "peers": {"type": "integer",
                                               "description": "peers whose hello counted"},
                                     "disagree": {"type": "object", "description":
                                                  "peer -> its clock minus this one, ms, "
                                                  "for peers off by more than limit_ms",
                                                  "additionalProperties": {
                                                      "type": "integer"}}}},
                       "peers": {"type": "array", "items": {
            "type": "object",
            "required": ["node", "address", "connected", "last_contact", "behind_in",
                         "behind_out"],
            "properties": {"node": STR, "address": STR, "connected": {"type": "boolean"},
                           "last_contact": {"type": "number", "nullable": True},
                           "behind_in": {"type": "integer", "nullable": True},
                           "behind_out": {"type": "integer", "nullable": True},
                           "release": {"type": "string", "nullable": True, "description":
                                       "the peer's crdtledger release (its hello)"},
                           "incompatible": {"type": "string", "nullable": True,
                                            "description": "why this node cannot sync "
                                            "with it: another protocol version"}}}}}}
LOGIN = {"type": "object",
         "required": ["token", "operator", "name", "node", "permissions", "expires_in"],
         "properties": {"token": STR, "operator": STR, "name": STR, "node": STR,
                        "permissions": {"type": "array", "items": STR},
                        "expires_in": {"type": "integer", "description": "seconds"}}}
ERROR = {"type": "object", "required": ["error", "message"],
         "properties": {"error": STR, "message": STR,
                        "branch": {"type": "string", "nullable": True,
                                   "description": "rights_elsewhere: the richest holder"},
                        "holders": {"type": "object", "additionalProperties": {"type": "integer"},
                                    "description": "rights_elsewhere: by branch"}}}


@dataclass(frozen=True)
class Query:
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
    params: dict[str, Any]  # path, query and body together
    key: str | None = None  # its Idempotency-Key, if it sent one

    @property
    def ledger(self) -> Ledger:
        return self.host.ledger

    @property
    def operator(self) -> str:
        """Who acts: every route but login (auth=False) runs with a session."""
        if self.session is None:
            raise ApiError(401, "unauthorized", "log in first")
        return self.session.operator


Handler = Callable[[Call], Awaitable[Any]]


@dataclass(frozen=True)
class Route:
    method: str
    path: str  # below the mount point; {name} for the path parameters
    name: str  # the OpenAPI operationId
    handler: Handler
    summary: str
    tag: str
    body: Schema | None
    path_params: Mapping[str, Schema]
    query: Mapping[str, Query]
    response: Schema | None  # None: 204, no body
    status: int = 200
    auth: bool = True
    description: str = ""
    # OpenAPI links: which later call takes what from this response.
    links: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    # Files (sync files, backups) travel as bytes, not JSON.
    binary_response: bool = False
    binary_body: bool = False
    # Honours an Idempotency-Key header: the writes (a read is its own retry).
    idempotent: bool = False


def _operation_id(name: str) -> str:
    return name.replace(".", "_")


# Undotted operations are about money or one member; dotted ones by their first word.
_TAGS = {"topup": "money", "debit": "money", "refund": "money", "correct": "money",
         "balance": "member", "history": "member", "level": "member"}


def _route_of(op: Operation) -> Route:
    in_path = re.findall(r"{(\w+)}", op.path)
    rest = [p for p in op.params if p.http and p.name not in in_path]
    query: dict[str, Query] = {}
    body = None
    if op.method == "GET":
        query = {p.name: Query(p.schema, p.required, p.default) for p in rest}
    elif rest:
        body = op.schema([p.name for p in rest])

    takes_approver = any(p.name == "approver" for p in op.params)

    async def handler(c: Call) -> Any:
        operator = c.operator

        def run() -> Any:
            with idempotency.tagging(operator, c.key):  # its entries carry the key's tag
                try:
                    return operations.run(c.ledger, operator, op.name, c.params)
                except (InvalidInput, InvalidAmount) as e:
                    said = _half_width_said(op, c.params, e)
                    if said is None:
                        raise
                    raise said from None

        if not op.write:
            return run()
        # An approver's password is checked before the operation, off the loop as a
        # login's is (crdtledger.auth.ApprovalCheck); the operation takes the answer.
        ahead = None
        a = c.params.get("approver") if takes_approver else None
        if isinstance(a, dict) and isinstance(a.get("name"), str) \
                and isinstance(a.get("password"), str):
            ahead = c.ledger.check_approver_ahead(operator, a["name"], a["password"])
            if ahead is not None:
                await asyncio.to_thread(ahead.run)
                c.ledger.checked_ahead(ahead)
        try:
            return await c.host.perform(run, op.name)
        finally:
            if ahead is not None:
                c.ledger.forget_check(ahead)

    needs = (f"Needs one of the permissions: {', '.join(sorted(op.needs))}."
             if op.needs else "Any operator.")
    return Route(op.method, op.path, _operation_id(op.name), handler, op.summary,
                 _TAGS.get(op.name, op.name.split(".")[0]), body,
                 {n: op.param(n).schema for n in in_path}, query, op.result, op.status,
                 description=f"{needs}\n\n{op.more}" if op.more else needs,
                 links={_operation_id(k): v for k, v in op.links.items()},
                 idempotent=op.write)


def _half_width_said(op: Operation, params: Mapping[str, Any], e: LedgerError
                     ) -> LedgerError | None:
    """The refusal of a field sent in full-width characters ("１２", "Ｃ００１": an input
    method's, from a till's box) that would fit sent half-width, saying so and how to
    send it, as the command line says it (`cli.as_typed`): the shape check refused it
    as "yuan must be a yuan amount like 12.34 ..., not "１２"", which reads as no
    amount. Only when the refusal is the very sentence that field's own check makes
    (found by making it): the ledger's own sentences stay. None otherwise."""
    for p in op.params:
        value = params.get(p.name)
        half = typed_half_width(value, p.schema)  # never a PIN's
        if half is None:
            continue
        try:
            check(value, p.schema, p.name)
        except LedgerError as own:
            if str(own) == str(e):
                # The check's own class: an amount's code stays invalid_amount.
                kind = InvalidAmount if isinstance(e, InvalidAmount) else InvalidInput
                return kind(_half_width_sentence(p.name, value, half))
    return None


def _half_width_sentence(name: str, value: Any, half: Any) -> str:
    return (f"{name} {show(value)} is typed in full-width characters: send it as "
            f"{show(half)} (half-width)")


async def login(c: Call) -> dict[str, Any]:
    name, password = c.params["operator"], c.params["password"]
    address = c.request.remote or ""
    throttle = c.sessions.throttle
    wait = throttle.begin(name, address)
    if wait:  # refused before the password is looked at: a guess here teaches nothing
        _keep_failed_login(c, name, "too_many_attempts", too_many_attempts(wait))
        raise ApiError(429, "too_many_attempts", too_many_attempts(wait),
                       {"Retry-After": str(wait)})
    record = c.ledger.login_record(name)  # on the loop: the store is bound to its thread
    try:
        # scrypt off the loop: ~30 ms each would otherwise stall every other request.
        operator = await asyncio.to_thread(verify_login, record, password)
        c.ledger.still_current(name, record)
    except PermissionDenied as e:
        _keep_failed_login(c, name, "login_failed", str(e))
        raise ApiError(401, "login_failed", str(e)) from None
    throttle.succeeded(name, address)
    return {"token": c.sessions.open(operator, name), "operator": operator, "name": name,
            "node": c.ledger.node, "permissions": sorted(c.ledger.permissions(operator)),
            "expires_in": int(c.sessions.ttl_s)}


def _keep_failed_login(c: Call, name: str, code: str, sentence: str) -> None:
    audit.note_failed_login(c.ledger, name, c.request.remote or "", code, sentence)


async def logout(c: Call) -> None:
    c.sessions.close(_bearer(c.request))


async def sync_status(c: Call) -> dict[str, Any]:
    # Any operator: it holds no member data, and a counter shows whether the branch is
    # online (whether a debit can fetch rights from other branches).
    return c.host.sync_status()


# Sync files and backups: the counter's back office offers them, so the API does too.
# A sync file of a large chain is tens of MB (100k entries: 25 MB); an upload is held
# in memory whole, so it is bounded like a sync frame.
MAX_UPLOAD = MAX_FRAME_BYTES
BINARY = {"type": "string", "format": "binary"}
IMPORTED = {"type": "object", "required": ["from", "documents", "changed"],
            "properties": {"from": STR, "documents": {"type": "integer"},
                           "changed": {"type": "array", "items": STR},
                           "incomplete": {"type": "array", "items": STR},
                           "revoked": {"type": "array", "items": STR},
                           "blocked": {"type": "array", "items": STR}}}


def _download(data: bytes, name: str) -> web.Response:
    return web.Response(body=data, content_type="application/octet-stream",
                        headers={"Content-Disposition": f'attachment; filename="{name}"'})


def _keep_file_refusal(c: Call, operation: str, e: BaseException) -> None:
    # Kept as the operations' are (operations.run): a cashier's try at every member's
    # data, a stranger's file sent (audit.note_file_refusal says which).
    audit.note_file_refusal(c.ledger, c.operator, operation, e,
                            "the file sent" if operation == audit.SYNC_IMPORT else "")


async def sync_export(c: Call) -> web.Response:
    ledger, target = c.ledger, c.params.get("for")
    if target is not None:
        check(target, NODE, "for")
    try:
        data, _info = export_bytes(ledger, c.operator, target)
    except LedgerError as e:
        _keep_file_refusal(c, audit.SYNC_EXPORT, e)
        raise
    return _download(data, f"{ledger.node}-for-{target or 'all'}-{ledger.today()}.crdtsync")


async def sync_import(c: Call) -> dict[str, Any]:
    operator = c.operator
    try:
        c.ledger.authorise(operator, "sync")  # before reading a large body from anyone
    except LedgerError as e:
        _keep_file_refusal(c, audit.SYNC_IMPORT, e)
        raise
    data = await _read_body(c.request, MAX_UPLOAD, "a sync file upload")
    try:
        info = await c.host.perform(lambda: import_bytes(c.ledger, operator, data),
                                    "sync.import")
    except RemoteProtocolError as e:  # damaged, foreign, newer format: nothing applied
        _keep_file_refusal(c, audit.SYNC_IMPORT, e)
        raise ApiError(400, e.code, f"the sync file was refused, nothing changed: {e}"
                       ) from None
    except LedgerError as e:
        _keep_file_refusal(c, audit.SYNC_IMPORT, e)
        raise
    return {k: info[k] for k in ("from", "documents", "changed", "incomplete", "revoked",
                                 "blocked") if k in info}


async def backup(c: Call) -> web.Response:
    ledger = c.ledger
    try:
        ledger.authorise(c.operator, "backup")
    except LedgerError as e:
        _keep_file_refusal(c, audit.BACKUP, e)
        raise
    # SQLite's online backup reads its own snapshot: off the loop, the counter works on.
    data = await asyncio.to_thread(sealed_backup, ledger.storage.dir)
    stamp = ledger.today()
    # Sealed for the chain (crdtledger.backups); `crdtledger restore --from` takes it.
    return _download(data, f"backup-{ledger.node}-{stamp}.ledger.backup")


# Receipts (peer/receipts.py): a till shows or reprints one; printing goes to this
# node's own printer, off the loop, and a printer that is off is a reason, not an error.
RECEIPT = {"type": "object", "required": ["entry", "shop", "branch", "time", "lines", "text"],
           "properties": {"entry": STR, "shop": STR, "branch": STR, "time": STR,
                          "lines": {"type": "array", "items": ANY_OBJECT},
                          "purses": {"type": "array", "items": ANY_OBJECT},
                          "text": {"type": "string", "description": "as printed"}}}
PRINTED = {"type": "object", "required": ["entry", "printed", "reason", "printer"],
           "properties": {"entry": STR, "printed": {"type": "boolean"},
                          "reason": {"type": "string", "description": "why not printed"},
                          "printer": {"type": "string", "description": "empty: this node "
                                      "has no receipt printer"}}}


def _receipt_entry(c: Call) -> str:
    receipts.authorise(c.ledger, c.operator)
    entry = c.params["entry"]
    check(entry, ENTRY_ID, "entry")
    return str(entry)


async def receipt_show(c: Call) -> dict[str, Any]:
    entry = _receipt_entry(c)
    config = receipts.load_config(c.ledger.storage.dir)
    r = receipts.build(c.ledger, entry, title=config.title if config else "")
    return {**r.as_dict(), "text": receipts.text(r, config.columns if config else 32)}


async def receipt_print(c: Call) -> dict[str, Any]:
    entry = _receipt_entry(c)
    done = await receipts.print_entry(c.ledger, entry, reprint=True)
    if done is None:
        receipts.build(c.ledger, entry)  # an unknown entry is 404 all the same
        done = receipts.Printed(False, "this branch has no receipt printer")
    return {"entry": entry, **done.as_dict()}


async def openapi_document(c: Call) -> dict[str, Any]:
    # The mount point (the node mounts this app at /api) from the route as matched.
    resource = c.request.match_info.route.resource
    prefix = resource.canonical.removesuffix("/openapi.json") if resource else ""
    return openapi(prefix or "/")


ROUTES: list[Route] = [
    Route("POST", "/login", "login", login, "Log an operator in; returns a bearer token",
          "session", obj({"operator": text(40, minLength=1,
                                          description="the operator's name (工号)"),
                          "password": PASSWORD}), {}, {}, LOGIN, auth=False),
    Route("POST", "/logout", "logout", logout, "End this token's session", "session", None,
          {}, {}, None, status=204),
    *(_route_of(op) for op in TABLE.values()),
    Route("GET", "/sync/status", "sync_status", sync_status, "This node and its peers: "
          "connected, last contact, operations behind each way", "node", None, {}, {}, SYNC),
    Route("GET", "/sync/export", "sync_export", sync_export, "A sync file of what a branch "
          "lacks (as last seen from it), or of everything", "sync", None, {},
          {"for": Query(NODE)}, BINARY, description="Needs the permission sync.",
          binary_response=True),
    Route("POST", "/sync/import", "sync_import", sync_import, "Apply a sync file (the raw "
          "file as the body), all or nothing; importing it again changes nothing", "sync",
          None, {}, {}, IMPORTED, description="Needs the permission sync.", binary_body=True),
    Route("GET", "/backup", "backup", backup, "A consistent copy of this node (zip), taken "
          "while it keeps working", "node", None, {}, {}, BINARY,
          description="Needs the permission backup.", binary_response=True),
    Route("GET", "/receipts/{entry}", "receipt_show", receipt_show, "A ledger entry's "
          "receipt: shop, branch, time, operator, lines, payment, purses before and after",
          "receipts", None, {"entry": ENTRY_ID}, {}, RECEIPT,
          description="Needs a permission that serves members."),
    Route("POST", "/receipts/{entry}/print", "receipt_print", receipt_print, "Print a "
          "ledger entry's receipt again on this branch's printer (a reprint)", "receipts",
          None, {"entry": ENTRY_ID}, {}, PRINTED,
          description="Needs a permission that serves members. A printer that is off or "
          "absent gives printed false and the reason.", idempotent=True),
    Route("GET", "/openapi.json", "openapi_document", openapi_document, "This document",
          "node", None, {}, {}, ANY_OBJECT, auth=False),
]


# --- dispatch -----------------------------------------------------------------------


def _bearer(request: web.Request) -> str:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, "unauthorized",
                       "log in first: send Authorization: Bearer TOKEN from POST /login")
    return token.strip()


def _query_value(name: str, raw: str, param: Query) -> Any:
    """Query text as the schema's type: the operation checks the value itself.

    A boolean is true or false (any case), or 1 or 0; a bare name (`?low`, which
    reads the same as `?low=`) is true, as the command line's switch `--low` is."""
    kind = param.schema.get("type")
    if kind == "integer":
        if not re.fullmatch("[0-9]{1,15}", raw):
            half = typed_half_width(raw, param.schema)  # ?limit=１
            raise InvalidInput(_half_width_sentence(name, raw, half) if half is not None
                               else f"{name} must be a whole number, not {show(raw)}")
        return int(raw)
    if kind == "boolean":
        value = {"true": True, "1": True, "": True, "false": False, "0": False}.get(
            raw.lower())
        if value is None:
            raise InvalidInput(f"{name} must be true or false (or 1 or 0), not {show(raw)}")
        return value
    return raw


async def _read_body(request: web.Request, limit: int, what: str) -> bytes:
    """The request's body, at most `limit` bytes, each part coming within BODY_IDLE_S
    of the one before: a whole head and then a body never sent held the connection
    (and its descriptor) for good, aiohttp's keep-alive deadline watching only the
    wait for a next request. A slow upload that keeps moving gets through."""
    if (request.content_length or 0) > limit:
        raise ApiError(413, "body_too_large", f"{what} is limited to {limit} bytes")
    parts: list[bytes] = []
    size = 0
    while True:
        try:
            async with asyncio.timeout(BODY_IDLE_S):
                part = await request.content.readany()
        except TimeoutError:
            raise ApiError(408, "request_timeout", f"{what} stopped arriving for "
                           f"{BODY_IDLE_S:g} s: nothing was done") from None
        if not part:
            return b"".join(parts)
        size += len(part)
        if size > limit:
            raise ApiError(413, "body_too_large", f"{what} is limited to {limit} bytes")
        parts.append(part)


def _check_query_names(r: Route, query: Mapping[str, str]) -> None:
    """Refuse a query naming a parameter twice, or one the route does not take, as a
    body naming a field twice or an unknown one is (`unique_keys`, `schema.check`):
    read as its first value, `?for=SH01&for=SH02` exported for SH01 alone and
    `?limit=1&limit=500` listed one; a mistyped filter (`?dya=`, `?operatr=`) was
    dropped, and the unfiltered answer given as the one asked for."""
    seen: set[str] = set()
    for name, _value in query.items():  # every pair, repeats too
        if name in seen:
            raise InvalidInput(f"query parameter {show(name)} is given twice: give it once")
        seen.add(name)
        if name not in r.query:
            takes = (f"; it takes {', '.join(sorted(r.query))}" if r.query
                     else ": this request takes its fields in a JSON body, none in the query"
                     if r.body is not None else ": this request takes no query parameters")
            raise InvalidInput(f"unknown query parameter {show(name)}{takes}")


def _body_required(r: Route) -> bool:
    """Whether a route's JSON body must be sent: not when every field is optional (a
    card's loss report names its member only where two members hold the number)."""
    return r.body is None or bool(r.body.get("required"))


async def _json_body(request: web.Request) -> dict[str, Any]:
    if request.content_type != "application/json":
        raise ApiError(415, "unsupported_media_type",
                       f"send JSON with Content-Type: application/json, "
                       f"not {request.content_type}")
    raw = await _read_body(request, MAX_BODY, "a request body")
    # Each failure said in words of the request, not json.loads's own ("'utf-16-le'
    # codec can't decode byte 0x00 in position 2", "maximum recursion depth exceeded
    # while decoding a JSON array from a unicode string"). UTF-8 as RFC 8259 has it
    # (a byte-order mark before it read as before): json.loads also guessed UTF-16
    # and UTF-32 from the first bytes.
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ApiError(400, "invalid_json", f"the request body is not UTF-8 text (byte "
                       f"{e.start + 1} is not), as JSON must be") from None
    if not text.strip():
        raise ApiError(400, "invalid_json", "the request body is empty: send a JSON object")
    try:
        body = json_value(text, "the request body")
    except NotJson as e:
        raise ApiError(400, "invalid_json", str(e)) from None
    if not isinstance(body, dict):
        check(body, {"type": "object"}, "the request body")  # refuses it, in words
    return dict(body)


def _endpoint(r: Route, host: ApiHost, sessions: Sessions, keys: IdempotencyKeys
              ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handle(request: web.Request) -> web.StreamResponse:
        session = None
        if r.auth:
            session = sessions.get(_bearer(request))
            if session is None:
                raise ApiError(401, "unauthorized", "the token is unknown or expired; log in")
            request[SESSION] = session
        key = request.headers.get(IDEMPOTENCY_KEY) if r.idempotent else None
        if key is not None:
            key = idempotency.check_key(key)  # a bad key is refused before anything
        params: dict[str, Any] = dict(request.match_info)
        _check_query_names(r, request.query)
        missing = [n for n, p in r.query.items() if p.required and n not in request.query]
        if missing:
            raise InvalidInput(f"give {', '.join(missing)} in the query")
        params |= {n: _query_value(n, raw, p) for n, p in r.query.items()
                   if (raw := request.query.get(n)) is not None}
        sent: dict[str, Any] | None = None  # the JSON body, for a key's fingerprint
        if r.body is not None and not request.body_exists and not _body_required(r):
            body = sent = {}  # every field optional: no body is an empty one
        elif r.body is not None:
            body = sent = await _json_body(request)
            if r.handler is login:
                check(body, r.body, "")  # an operation checks its own parameters
            named = sorted(set(body) & set(r.path_params))
            if named:
                raise InvalidInput(f"unknown field {show(named[0])} in the request body: "
                                   f"the path names it")
            params |= body
        # A route of no fields ignored its body: `{"a":`, an array, text/plain or a
        # 200 MB chunked upload confirmed the clock (or printed, reconciled, granted)
        # all the same. What the routes of optional fields take for "nothing" is taken
        # here too (no body, or {}), read as they read theirs (MAX_BODY).
        elif request.body_exists and not r.binary_body and await _json_body(request):
            raise InvalidInput("this request takes no fields: send no body, or {}")
        call = Call(host, sessions, request, session, params, key)
        if key is not None and session is not None:
            async def perform() -> Answer:
                result = await r.handler(call)
                return r.status, result if r.response is not None else None

            fingerprint = idempotency.fingerprint(
                request.method, request.path, request.query.items(), sent,
                secret=idempotency.node_secret(host.ledger))
            status, answer, replayed = await keys.run(host.ledger, session.operator, key,
                                                      fingerprint, perform)
            response = (web.Response(status=status) if answer is None and r.response is None
                        else web.json_response(answer, status=status, dumps=_dumps))
            if replayed:
                response.headers[REPLAYED] = "true"
            return response
        result = await r.handler(call)
        if isinstance(result, web.StreamResponse):  # a file
            return result
        if r.response is None:
            return web.Response(status=r.status)
        return web.json_response(result, status=r.status, dumps=_dumps)

    return handle


def api_app(host: ApiHost, *, sessions: Sessions | None = None,
            keys: IdempotencyKeys | None = None) -> web.Application:
    """The API as an aiohttp application, for the node to mount at /api."""
    app = web.Application(middlewares=[refusals])
    sessions = sessions or Sessions()
    keys = keys or IdempotencyKeys()
    for r in ROUTES:
        app.router.add_route(r.method, r.path, _endpoint(r, host, sessions, keys),
                             name=r.name)
    return app


# --- the OpenAPI document -----------------------------------------------------------

ERROR_MEANING = {
    400: "Invalid input (error invalid_input, invalid_amount or invalid_json), or a "
         "malformed Idempotency-Key",
    401: "No valid token (log in); at login, a wrong operator name or password",
    403: "The operator lacks the permission (permission_denied, approval_required)",
    404: "No such member, card, debit, service or operator (not_found)",
    409: "The member's state refuses it now: insufficient_funds, rights_elsewhere (with "
         "branch and holders), card_lost, card_inactive; idempotency_unknown: the "
         "first request under this Idempotency-Key never answered (the node stopped)",
    410: "member_erased: the answer kept for this Idempotency-Key named a member "
         "erased since; the request was done once and is not done again",
    408: "The request body stopped arriving (30 s without a byte): nothing was done",
    413: "The request body is too large (64 KB of JSON; a sync file upload 256 MB)",
    415: "The request body is not application/json",
    422: "Refused for this card or debit, e.g. wrong_pin; idempotency_key_reused: the "
         "Idempotency-Key was used for another request",
    429: "Too many failed logins for this operator or from this address, or wrong "
         "approver passwords or card PINs (too_many_attempts); the Retry-After header "
         "says when to try again",
}


def _refusal_statuses(r: Route) -> set[int]:
    if r.name in ("login",):
        return {400, 401, 408, 413, 415, 429}
    out: set[int] = set()
    if r.auth:
        out |= {401, 403}
    if r.name not in ("logout", "sync_status", "openapi_document"):
        out |= {400, 404, 409, 422, 429}  # whatever the ledger may refuse with
    if r.body is not None:
        out |= {408, 413, 415}
    if r.idempotent:
        out |= {410}  # a kept answer that named a member erased since
    if r.binary_body:
        out |= {408, 413}
    return out


def _operation(r: Route) -> dict[str, Any]:
    params = [{"name": n, "in": "path", "required": True, "schema": s}
              for n, s in r.path_params.items()]
    # A boolean's bare name (`?low`, `?low=`) reads as true (_query_value): the document
    # says the empty value is allowed, as OpenAPI's `allowEmptyValue` has it.
    params += [{"name": n, "in": "query", "required": p.required,
                "schema": p.schema if p.default is None else {**p.schema, "default": p.default},
                **({"allowEmptyValue": True} if p.schema.get("type") == "boolean" else {})}
               for n, p in r.query.items()]
    op: dict[str, Any] = {"operationId": r.name, "summary": r.summary, "tags": [r.tag]}
    if r.description:
        op["description"] = r.description
    if r.idempotent:
        params.append({"name": IDEMPOTENCY_KEY, "in": "header", "required": False,
                       "schema": {"type": "string", "minLength": 1,
                                  "maxLength": idempotency.MAX_KEY, "pattern": "^[ -~]+$"},
                       "description": "Performed once per operator and key (24 hours): "
                       "a retry of the same request gets the first answer again, with "
                       f"the header {REPLAYED}: true; another request under the key is "
                       "refused (422 idempotency_key_reused); one whose first answer was "
                       "lost to a stopped node gets 409 idempotency_unknown, one whose "
                       "answer named a member erased since 410 member_erased. A refusal "
                       "is not remembered: fix the request and retry under the key."})
    if params:
        op["parameters"] = params
    if r.body is not None:
        op["requestBody"] = {"required": _body_required(r),
                             "content": {"application/json": {"schema": r.body}}}
    if r.binary_body:
        op["requestBody"] = {"required": True,
                             "content": {"application/octet-stream": {"schema": BINARY}}}
    if not r.auth:
        op["security"] = []
    ok: dict[str, Any] = {"description": "Done"}
    if r.response is not None:
        media = "application/octet-stream" if r.binary_response else "application/json"
        ok["content"] = {media: {"schema": r.response}}
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
                 "description": "Members, cards, money, points, packages, corrections, "
                                "rights, reports, rules and operators of one branch node. "
                                "Money is integer fen; a request may give an amount as "
                                "yuan text instead (\"yuan\": \"12.34\")."},
        "servers": [{"url": prefix}],
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                           "description": "a token from POST /login"}},
            "schemas": {"Error": ERROR},
        },
    }


__all__ = ["ROUTES", "ApiHost", "IdempotencyKeys", "Sessions", "Standalone", "api_app",
           "openapi"]
