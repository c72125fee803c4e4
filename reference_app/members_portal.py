"""Member self-service (会员自助): a member's own pages, on a port of their own, over HTTPS.

`python -m reference_app --data DIR --members 0.0.0.0:8443` serves, beside the counter,
the pages under `/m` on that port only. A member signs in with the phone number the
shop has on file and a one-time code sent to it through the node's notification
gateways (`Node.gateways`, peer/gateways.py), or with a card number and its PIN, and
then sees their own balance, bonus, points with expiry, packages, coupons, history and
appointments, and books or cancels appointments.

Two ports, one app. NiceGUI 3.18 runs one uvicorn server (`ui.run`); the member port is
a second `uvicorn.Server` on the same FastAPI app and the same event loop, started by
the app's startup hook (so the pages read the ledger on the loop that owns it), with
its own TLS certificate, no lifespan of its own (NiceGUI's runs once, on the counter's
server) and no signal handlers (the counter's server keeps Ctrl-C/SIGTERM and stops
this one from its shutdown hook). It serves `MembersSide(app)`: an ASGI wrapper that
marks every request as come in on the member port and lets through only the member
pages and what NiceGUI needs to draw them (its versioned static files and its
socket.io endpoint); every other path (the counter, the back office, admin pages,
/login, the API, uploads) gets a plain 404 there. `CounterSide`, a middleware on the
app itself, refuses the member pages to any request without that mark, so they are
not on the counter's port. NiceGUI addresses a page's events by its client id alone
(not by the socket that carries them), so on the member port every socket.io packet
is read too and one naming a client that is not a member page closes the socket.

Who is signed in lives in the browser's server-side session (`app.storage.user`,
key "member"): the member id, this node, and until when. No page takes a member id
from the browser; bookings are listed, made and cancelled for the session's member
only (a booking id of someone else's is refused as unknown).

Codes: 6 digits from `secrets`, kept only as a SHA-256 digest, good for 5 minutes and
once, void after 5 wrong tries; asking for codes and trying codes or PINs are
throttled per phone (or card) and per client address with crdtledger.throttle, as the
counter's logins are. Whether a phone belongs to a member is not told: the answer to
"send me a code" is the same either way.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import functools
import hashlib
import hmac
import json
import logging
import re
import secrets
import socket
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, MutableMapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

import uvicorn
from nicegui import Client, app, ui
from nicegui import __version__ as nicegui_version
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from crdtledger import localtime, operations, views
from crdtledger.auth import check_secret, hash_secret
from crdtledger.errors import LedgerError, NotFound, WrongPin
from crdtledger.hlc import boot_clock_s
from crdtledger.inputs import check_card_no
from crdtledger.members import PHONE
from crdtledger.model import canonical_phone, owner_of, self_service_of
from crdtledger.throttle import LoginThrottle, network_of
from peer import chain as chain_mod
from peer import webcert
from peer.node import HANDSHAKE_S
from reference_app.i18n import LANGS, Lang, lang, mask_phone, money, set_lang, tr
from reference_app.layout import follow, once
from reference_app.shop import Shop, shop

log = logging.getLogger("reference_app.members")

PATH = "/m"  # the member pages; nothing else is served on the member port
SCOPE_KEY = "crdtledger.members_port"  # set by MembersSide on every request it passes
CODE_DIGITS = 6
CODE_TTL_S = 300.0  # 5 minutes: long enough for a slow SMS, short for a stolen one
CODE_TRIES = 5  # wrong tries before a code is void (the throttle counts them too)
# Code requests taken by this node in an hour, whoever asked and for whatever phone:
# the per-phone and per-address throttles bound one phone and one address, not a
# stranger with many addresses and a list of members' phones, each code an SMS the
# shop pays for. Past it every request is refused alike until the hour has room
# again. Every request taken counts, a member's phone or not: counting only codes
# sent told a stranger near the cap whether the phone just asked for was a member's.
CODES_PER_HOUR = 600
# A request's head must arrive within this of the connection or of its first byte
# (the TLS handshake within peer.node.HANDSHAKE_S).
FIRST_REQUEST_S = 15.0
SESSION_S = 2 * 3600.0  # a member's sign-in lasts two hours, then asks again
# A sign-in's deadline is on the boot clock (hlc.boot_clock_s: never set, and running
# on while the PC sleeps, where the monotonic clock stops and a sign-in outlived a
# suspended night), as the login codes' and the API's tokens are: on the wall clock,
# a sign-in made while the PC's clock ran three days ahead lasted three days once it
# was set right. The boot clock counts from an
# unspecified start (the machine's), so a deadline kept in app.storage.user (a file,
# which outlives the process) is trusted only by the process that set it: a sign-in
# ends when the app restarts, and one kept before this rule (a wall-clock `until`)
# has no mark and is over. Signing in again is the cost; a reboot's clock could
# otherwise make a deadline hours, or years, away.
_PROCESS = secrets.token_hex(8)
CERT_FILE, KEY_FILE = "members.crt", "members.key"  # under DATA/tls, made by `issue_cert`
CERT_DAYS = webcert.CERT_DAYS
HISTORY_SHOWN = 20
# Longer than any phone (21 characters) or card number (40), however spaced: what a
# sign-in box holds beyond it is not looked at.
_TYPED_MAX = 64
BOOK_DAYS = 7  # how far ahead the booking dialog offers days
PRIMARY = "#00796b"
# NiceGUI's own routes a member page needs: its versioned static files, libraries,
# components and resources (not uploads or anything under /_nicegui/client).
_ASSETS = tuple(f"/_nicegui/{nicegui_version}/{k}/" for k in (
    "static", "libraries", "components", "resources", "dynamic_resources", "esm"))
_SOCKET = "/_nicegui_ws/"
_MAX_POLL_BODY = 1 << 20  # a socket.io polling POST read whole before it is passed on


# --- which port a request came in on --------------------------------------------------

def is_member_path(path: str) -> bool:
    return path == PATH or path.startswith(PATH + "/")


def allowed_on_member_port(path: str) -> bool:
    return (is_member_path(path) or path.startswith(_ASSETS) or path.startswith(_SOCKET)
            or path == "/favicon.ico")


def _member_client(client_id: object) -> bool:
    """Whether `client_id` names a page built for the member pages."""
    client = Client.instances.get(client_id) if isinstance(client_id, str) else None
    return client is not None and is_member_path(str(client.page.path))


def _client_ids(value: Any) -> Iterator[Any]:
    if isinstance(value, dict):
        for k, v in value.items():
            if k == "client_id":
                yield v
            yield from _client_ids(v)
    elif isinstance(value, list):
        for v in value:
            yield from _client_ids(v)


def socket_packet_ok(text: str) -> bool:
    """An engine.io message carrying a socket.io packet, as the member port lets it
    through: each client id it names (at any depth of its JSON, after JSON decoding,
    so an escaped key counts as well) must be a member page's. Binary packets, which
    NiceGUI does not use, and packets that do not parse are refused."""
    if not text.startswith("4"):  # engine.io open/ping/pong/close/upgrade: no data
        return True
    body = text[1:]
    if not body or body[0] in "5" "6":  # binary event / ack
        return False
    i = 1
    if i < len(body) and body[i] == "/":  # a namespace: "/ns,"
        comma = body.find(",", i)
        if comma < 0:
            return True  # a bare namespace connect/disconnect: no data
        i = comma + 1
    while i < len(body) and body[i].isdigit():  # an ack id
        i += 1
    payload = body[i:]
    if not payload:
        return True
    try:
        data = json.loads(payload)
    except ValueError:
        return False
    return all(_member_client(c) for c in _client_ids(data))


def polling_body_ok(body: bytes) -> bool:
    """A socket.io polling POST: engine.io packets separated by the record separator."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(socket_packet_ok(p) for p in text.split("\x1e") if p)


Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


async def _not_here(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 1008})
        return
    body = b"Not found\n"
    await send({"type": "http.response.start", "status": 404,
                "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


# Page loads a client address may make on the member port in PAGE_LOADS_S: a page
# fetched holds its NiceGUI client about a minute whether or not its socket ever
# opens (about 180 kB; a signed-in member's follows every commit of the store), so
# fetches in a loop from one address held memory and work without bound.
PAGE_LOADS = 60
PAGE_LOADS_S = 60.0
PAGE_LOAD_KEYS = 10_000  # addresses remembered at most, the quietest dropped first


class PageLoads:
    """A sliding count of page loads per client network (crdtledger.throttle's
    network_of: an IPv6 subscriber's /64 is one)."""

    def __init__(self, limit: int = PAGE_LOADS, window_s: float = PAGE_LOADS_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.limit, self.window_s, self.clock = limit, window_s, clock
        self._seen: dict[str, deque[float]] = {}

    def take(self, address: str) -> bool:
        """Count a page load from `address`; False if past the limit (not counted)."""
        now = self.clock()
        key = network_of(address)
        times = self._seen.pop(key, None) or deque()
        while times and now - times[0] >= self.window_s:
            times.popleft()
        if len(times) >= self.limit:
            self._seen[key] = times
            return False
        times.append(now)
        self._seen[key] = times  # last in the dict: the most recent
        if len(self._seen) > PAGE_LOAD_KEYS:
            del self._seen[next(iter(self._seen))]
        return True


class MembersSide:
    """The member port's app: marks each request as come in there, and lets through
    the member pages and what they need only, each address's page loads counted."""

    def __init__(self, inner: ASGIApp, loads: PageLoads | None = None) -> None:
        self.inner = inner
        self.loads = loads or PageLoads()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.inner(scope, receive, send)
            return
        path = str(scope.get("path", ""))
        if path == "/" and scope["type"] == "http":  # the port's address alone: the pages
            await send({"type": "http.response.start", "status": 307,
                        "headers": [(b"location", PATH.encode()), (b"content-length", b"0")]})
            await send({"type": "http.response.body", "body": b""})
            return
        if not allowed_on_member_port(path):
            await _not_here(scope, receive, send)
            return
        scope = {**scope, SCOPE_KEY: True}
        if scope["type"] == "http":
            send = _secure_cookies(send)
            client = scope.get("client")
            if path == PATH and not self.loads.take(str(client[0]) if client else ""):
                await _too_many_loads(send)
                return
        if not path.startswith(_SOCKET):
            await self.inner(scope, receive, send)
            return
        query = dict(p.split("=", 1) for p in bytes(scope.get("query_string", b""))
                     .decode("latin-1").split("&") if "=" in p)
        if "client_id" in query and not _member_client(query["client_id"]):
            await _not_here(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await self.inner(scope, _checked_frames(receive), send)
            return
        if scope.get("method") == "POST":
            body = await _whole_body(receive)
            if body is None or not polling_body_ok(body):
                await _not_here(scope, receive, send)
                return
            await self.inner(scope, _replay(body, receive), send)
            return
        await self.inner(scope, receive, send)


async def _too_many_loads(send: Send) -> None:
    body = ("页面打开太频繁，请一分钟后再试。\nToo many page loads from this address; "
            "try again in a minute.\n").encode()
    await send({"type": "http.response.start", "status": 429,
                "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                            (b"retry-after", str(int(PAGE_LOADS_S)).encode()),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def _secure_cookies(send: Send) -> Send:
    """Cookies set on the member port marked Secure. The session cookie says who is
    signed in; the app's session settings follow the counter's port, plain HTTP by
    default, and a browser sends a cookie without Secure over plain HTTP to any port
    of its host, where anyone on the shop's Wi-Fi reads it. This port is HTTPS only."""
    async def secured(message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [
                (k, v + b"; secure") if k.lower() == b"set-cookie" and b"secure" not in
                [f.strip().lower() for f in v.split(b";")[1:]] else (k, v)
                for k, v in message.get("headers", [])]}
        await send(message)
    return secured


def _checked_frames(receive: Receive) -> Receive:
    async def checked() -> MutableMapping[str, Any]:
        message = await receive()
        if message["type"] == "websocket.receive":
            text = message.get("text")
            if (text is None and message.get("bytes")) or \
                    (text is not None and not socket_packet_ok(text)):
                log.warning("member port: a socket.io packet for a page that is not a "
                            "member page; socket closed")
                return {"type": "websocket.disconnect", "code": 1008}
        return message
    return checked


async def _whole_body(receive: Receive) -> bytes | None:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        chunk = bytes(message.get("body", b""))
        size += len(chunk)
        if size > _MAX_POLL_BODY:
            return None
        chunks.append(chunk)
        if not message.get("more_body"):
            return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def again() -> MutableMapping[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()
    return again


class CounterSide:
    """Middleware on the app: the member pages only for requests MembersSide marked."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket") and not scope.get(SCOPE_KEY) \
                and is_member_path(str(scope.get("path", ""))):
            await _not_here(scope, receive, send)
            return
        await self.app(scope, receive, send)


# --- the certificate -----------------------------------------------------------------

def issue_cert(chain_dir: Path | str, data_dir: Path | str, hosts: Sequence[str], *,
               days: int = CERT_DAYS) -> tuple[Path, Path]:
    """A server certificate for the member port, signed by the chain's CA (where its
    key is: the head office's chain directory), naming `hosts` (DNS names and IP
    addresses) as browsers check them. Written to DATA/tls/members.crt and .key (0600)
    and found there by `--members` without --members-cert. Replaces an older one.
    Made by peer.webcert, as the counter's HTTPS certificate is."""
    return webcert.issue(chain_dir, data_dir, hosts, stem=CERT_FILE.removesuffix(".crt"),
                         days=days, local=False)


@dataclass(frozen=True)
class MembersConfig:
    """Where the member pages are served and with which certificate."""

    host: str
    port: int
    cert: Path
    key: Path
    # Bound by members_config before the app starts, so a port in use stops the
    # process with a sentence rather than a line in the log of a running counter.
    sock: socket.socket | None = field(default=None, compare=False)


def members_config(data_dir: Path, address: str, cert: Path | None,
                   key: Path | None) -> MembersConfig:
    """From `--members HOST:PORT [--members-cert F --members-key F]`: the owner's
    certificate, else the one `issue_cert` left in DATA/tls; refused with how to
    make one when there is neither."""
    from peer.node import parse_address

    host, port = parse_address(address, 8443)
    # Its own certificate, else the counter's (`crdtledger https-cert`): both name this host.
    cert, key = webcert.pair(
        cert, key, [(data_dir / chain_mod.TLS_DIR / CERT_FILE,
                     data_dir / chain_mod.TLS_DIR / KEY_FILE),
                    webcert.files(data_dir, webcert.COUNTER)],
        role="the member port's certificate (--members-cert and --members-key)",
        missing="the member pages need an HTTPS certificate: give --members-cert and "
        "--members-key, or make one from the chain's CA at the head office with "
        f"`python -m reference_app.members_portal --chain CHAIN_DIR --data {data_dir} "
        "--host NAME_OR_IP`")
    try:
        sock = bind(host, port)
    except OSError as e:
        raise LedgerError(f"cannot serve the member pages on {host}:{port}: {e}") from None
    return MembersConfig(host, port, cert, key, sock)


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


# --- one-time codes and sign-in ----------------------------------------------------------

class SignedOut(LedgerError):
    """A page's member is no longer signed in in this browser."""


class SignInRefused(Exception):
    """A sign-in or code request refused; the message is for the member, in their language."""


@dataclass
class _Code:
    digest: bytes
    until: float
    tries: int = 0


def _digest(code: str) -> bytes:
    return hashlib.sha256(code.encode()).digest()


@dataclass
class Portal:
    shop: Shop
    config: MembersConfig | None
    clock: Callable[[], float] = boot_clock_s
    codes: dict[str, _Code] = field(default_factory=dict)
    # Asking for codes: 5 free per phone and per address, then a growing wait.
    sends: LoginThrottle = field(default_factory=lambda: LoginThrottle(
        free_failures=5, first_delay_s=60.0, max_delay_s=3600.0))
    # Wrong codes and wrong PINs: as the counter's logins.
    checks: LoginThrottle = field(default_factory=LoginThrottle)
    sent: deque[float] = field(default_factory=deque)  # code requests taken, the last hour
    server: uvicorn.Server | None = None
    port: int | None = None  # the member port as bound (a test asks for port 0)
    _sending: set[asyncio.Task[None]] = field(default_factory=set)
    _task: asyncio.Task[None] | None = None

    @property
    def operator(self) -> str:
        """Who reads for the signed-in member: this node's built-in owner (the pages
        name no other member)."""
        return owner_of(self.shop.node.node_id)

    @property
    def writer(self) -> str:
        """Who writes a member's own booking or check-in: the node's self-service
        operator, which may do only that (model.SELF_SERVICE), so the audit trail says
        a member did it on these pages."""
        return self_service_of(self.shop.node.node_id)

    # --- the member port ----------------------------------------------------------

    async def start(self) -> None:
        c = self.config
        if c is None:
            return
        # Our own socket: uvicorn's own bind would sys.exit inside this task.
        sock = c.sock if c.sock is not None else bind(c.host, c.port)
        self.port = int(sock.getsockname()[1])
        config = uvicorn.Config(MembersSide(app), ssl_certfile=str(c.cert),
                                ssl_keyfile=str(c.key), lifespan="off", log_config=None,
                                timeout_graceful_shutdown=2, proxy_headers=False,
                                access_log=False, http=_Deadlines)
        config.load()
        self.server = _MemberServer(config)
        self._task = asyncio.create_task(self.server.serve(sockets=[sock]))
        log.info("member pages on https://%s:%d%s", c.host, self.port, PATH)

    async def stop(self) -> None:
        if self.server is not None and self._task is not None:
            self.server.should_exit = True
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.server = self._task = None

    # --- codes ----------------------------------------------------------------------

    async def send_code(self, phone: str, address: str) -> None:
        """Send a code to `phone` if it is a member's; the same answer, as fast, if it
        is not: whose phone it is, the code and the message are all done in a task of
        its own (a gateway's failure is logged for the shop), so neither the words nor
        the time the answer takes tell whether a phone is a member's. Raises
        SignInRefused when asked too often or when this node has no gateway at all (a
        setting, the same for every phone)."""
        # As lookups compare it: a code asked for by "138 1234 5678" and tried as
        # "+8613812345678" is one phone, to its throttle too.
        phone = _typed_phone(phone)
        if not phone:
            raise SignInRefused(tr("请输入正确的手机号。", "Enter a valid phone number."))
        gateways = dict(getattr(self.shop.node, "gateways", None) or {})
        if not ({"sms", "email"} & set(gateways)):
            raise SignInRefused(tr("本店还没有开通验证码短信，请用卡号和密码登录。",
                                   "This shop cannot send codes yet; sign in with your "
                                   "card number and PIN."))
        wait = self.sends.begin(f"phone:{phone}", address)
        if not wait:
            hour_ago = self.clock() - 3600.0
            while self.sent and self.sent[0] <= hour_ago:
                self.sent.popleft()
            if len(self.sent) >= CODES_PER_HOUR:
                # In whole minutes: to the second, the wait told a second request
                # whether the first had been counted.
                wait = 60 * max(1, -int((hour_ago - self.sent[0]) // 60))
            else:
                self.sent.append(self.clock())
        if wait:
            raise SignInRefused(tr("验证码请求太频繁，请 {n} 秒后再试。",
                                   "Too many codes asked for; try again in {n} s.", n=wait))
        # The rest after the answer: looking up the phone's member and making a code
        # before it (241-258 SQLite steps against 13 for nobody's phone) told by the
        # answer's time whose phone it was.
        task = asyncio.create_task(self._code_for(phone, gateways))
        self._sending.add(task)  # held until done (the loop keeps weak references)
        task.add_done_callback(self._sending.discard)

    async def _code_for(self, phone: str, gateways: dict[str, Any]) -> None:
        """A code for the member whose phone this is, sent; nothing for nobody's."""
        ledger = self.shop.ledger
        try:
            holders = _phone_holders(ledger, phone)
            if not holders:
                return  # said as if sent
            email = str(ledger.member(min(holders)).get("email") or "")
        except LedgerError as e:  # after the answer: the shop's to read, in the log
            log.warning("member code for %s not made: %s", mask_phone(phone), e)
            return
        if "sms" in gateways:
            channel, to = "sms", phone
        elif email:
            channel, to = "email", email
        else:
            log.info("member code for %s: no e-mail on file and no SMS gateway",
                     mask_phone(phone))
            return
        code = f"{secrets.randbelow(10 ** CODE_DIGITS):0{CODE_DIGITS}d}"
        self.codes[phone] = _Code(_digest(code), self.clock() + CODE_TTL_S)
        body = tr("您的会员登录验证码：{code}，{m} 分钟内有效。请勿告诉他人。",
                  "Your member sign-in code: {code}. It is valid for {m} minutes; do not "
                  "share it.", code=code, m=int(CODE_TTL_S // 60))
        subject = tr("登录验证码", "Sign-in code")
        await self._send(gateways[channel], channel, to, phone, subject, body)

    async def _send(self, gateway: Any, channel: str, to: str, phone: str, subject: str,
                    body: str) -> None:
        from peer.gateways import GatewayError, Message

        key = f"member-code:{phone}:{secrets.token_hex(8)}"  # a new code, a new message
        try:
            await gateway.send(Message(key, channel, to, subject, body))
        except GatewayError as e:
            log.warning("member code to %s not sent: %s", mask_phone(phone), e)
        except Exception:  # a gateway's bug must not pass silently either
            log.exception("member code to %s not sent", mask_phone(phone))

    def check_code(self, phone: str, code: str, address: str) -> str:
        """The member whose phone this code was sent to, the code used up."""
        phone = _typed_phone(phone)
        # What cannot be a phone is no member's and has no code: all of it is counted
        # under one name. Keyed as typed, each box of a megabyte (what a socket.io
        # message carries) was a key of its own, kept a day.
        key = f"phone:{phone or '?'}"
        wait = self.checks.begin(key, address)
        if wait:
            raise SignInRefused(_too_many(wait))
        held = self.codes.get(phone)
        wrong = SignInRefused(tr("验证码不对或已过期。", "Wrong or expired code."))
        if held is None or held.until < self.clock():
            self.codes.pop(phone, None)
            raise wrong
        if not hmac.compare_digest(held.digest, _digest(code.strip())):
            held.tries += 1
            if held.tries >= CODE_TRIES:
                del self.codes[phone]
            raise wrong
        del self.codes[phone]  # once only
        ledger = self.shop.ledger
        holders = _phone_holders(ledger, phone)
        if not holders:
            raise wrong
        # The code proves the phone, not which of its members this is: a number typed
        # two ways for two people ("138 1234 5678") signed the second in to the first's
        # page. Told, since the one asking holds the phone.
        if len(holders) > 1:
            raise SignInRefused(tr("这个手机号登记在几位会员名下，请用卡号和密码登录，"
                                   "或请门店核对。",
                                   "This phone number is registered to several members: "
                                   "sign in with your card number and PIN, or ask a "
                                   "branch to sort it out."))
        # The phone's failures, and this attempt's on the address, not the address's
        # others: a stranger's own phone forgave their guesses at other phones.
        self.checks.proved(key, address)
        self.sends.proved(key, address)
        return holders.pop()

    async def check_card(self, card_no: str, pin: str,
                         address: str) -> tuple[str, dict[str, str]]:
        """The member of this card, its PIN right (a card without a PIN cannot sign in),
        and the card (its number and id: the sign-in lasts while it stays active).
        Every failure answers alike, after a PIN check's work: the words said whether
        a number was a card, lost, stopped or without a PIN, and an unknown number
        answered in 0.1 ms against a wrong PIN's 50-80 ms, to any stranger. The check
        (scrypt) runs in a worker thread, the store is read on the loop."""
        # What cannot be a card number is counted under one name, as for phones.
        key = f"card:{_typed_card(card_no) or '?'}"
        wait = self.checks.begin(key, address)
        if wait:
            raise SignInRefused(_too_many(wait))
        wrong = SignInRefused(tr("卡号或密码不对。没有设密码的卡请用手机验证码登录。",
                                 "Wrong card number or PIN. A card without a PIN signs in "
                                 "with the phone's code."))
        ledger = self.shop.ledger
        card, stored = _card_to_check(ledger, card_no)  # on the loop, which owns the store
        # scrypt (36-84 ms) in a worker thread, as the counter's login and the API's: on
        # the loop it held the node, the sync and every till's page for each attempt of
        # anyone on the member port. A card that may not sign in pays the same work.
        right = await asyncio.to_thread(_pin_right, pin.strip(), stored)
        if card is None or not right:
            raise wrong
        # Read again after the wait: a card reported lost, replaced or given a new PIN
        # while the old one was being checked signs nobody in.
        again, stored_now = _card_to_check(ledger, card_no)
        if again is None or again["id"] != card["id"] or stored_now != stored:
            raise wrong
        member = ledger.survivor_of(str(again["member"]))
        if _closed(ledger, member):
            raise wrong
        # The card's failures, and this attempt's on the address, not the address's
        # others: a stranger signing in with their own card every four guesses tried
        # PINs on every other card from one address.
        self.checks.proved(key, address)
        return member, {"card_no": str(card["card_no"]), "id": str(card["id"])}


def _card_to_check(ledger: Any, card_no: str) -> tuple[dict[str, Any] | None, str]:
    """The card a sign-in may use and its PIN's hash, or (None, "") for a number that
    may not sign in: unknown, malformed, lost, replaced, expired, issued to two members,
    or without a PIN. Read on the loop that owns the store; nothing checked or counted
    here (the node's PIN lock, shared by the till, let any stranger on the internet
    keep a member's card locked at the counter: this page throttles its own)."""
    try:
        card = ledger.card(card_no)
    except LedgerError:
        return None, ""
    if card["status"] != "active" or not card["has_pin"]:
        return None, ""
    try:
        # Every check of use_card but the PIN's: asked with no PIN at all, a card that
        # passes them all and has one raises WrongPin (not a guess: nothing counted).
        ledger.use_card(card_no, None, throttle=False)
    except WrongPin:
        return card, ledger._pin_hash(str(card["id"]))
    except LedgerError:
        pass
    return None, ""


def _pin_right(pin: str, stored: str) -> bool:
    """Whether `pin` is the one `stored` keeps; against a dummy of the same cost when
    there is none. Pure and slow (scrypt): run in a worker thread."""
    return check_secret(pin, stored or _no_card())


def _typed_phone(typed: str) -> str:
    """A typed phone as lookups compare it, or "" for what cannot be one. The length
    first: a phone has at most 21 characters however it is spaced, and canonicalising
    a megabyte typed as one was work on the loop for nothing."""
    if len(typed) > _TYPED_MAX:
        return ""
    phone = canonical_phone(typed)
    return phone if PHONE.match(phone) else ""


def _typed_card(typed: str) -> str:
    """A typed card number as cards are stored, or "" for what cannot be one."""
    if len(typed) > _TYPED_MAX:
        return ""
    try:
        return check_card_no(typed)
    except LedgerError:
        return ""


@functools.cache
def _no_card() -> str:
    """What an unknown card's PIN is checked against: the same work as a card's. Made
    at the first use, not at import (a scrypt on every start of the pages)."""
    return hash_secret("no such card")


class _MemberServer(uvicorn.Server):
    """The member port's server: the counter's server keeps the process's signals, and
    a stranger's connection is held no longer than `HANDSHAKE_S` for its TLS handshake
    and `FIRST_REQUEST_S` for a request's head (`_Deadlines`)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        # uvicorn passes asyncio no handshake deadline (60 s by default). Its listener
        # is made in this call, on this loop: the loop's `create_server` is wrapped for
        # the call's length, adding the deadline to a TLS listener only.
        loop = asyncio.get_running_loop()
        create = loop.create_server

        def with_deadline(*args: Any, **kwargs: Any) -> Any:
            if kwargs.get("ssl") is not None:
                kwargs.setdefault("ssl_handshake_timeout", HANDSHAKE_S)
            return create(*args, **kwargs)

        loop.create_server = with_deadline  # type: ignore[method-assign]
        try:
            await super().startup(sockets)
        finally:
            del loop.create_server  # the loop's own method again


class _Deadlines(HttpToolsProtocol):
    """uvicorn's HTTP protocol, with a deadline for each request's head: uvicorn starts
    no timer before a first request, nor while a request's head trickles in, so a
    stranger's idle or slow connections each held a descriptor for good."""

    _head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._start_head_timer()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._start_head_timer()

    def on_headers_complete(self) -> None:
        self._stop_head_timer()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._stop_head_timer()  # the request is whole: its answer takes what it takes
        super().on_message_complete()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)  # any byte cancels uvicorn's keep-alive timer
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete and cycle.more_body:
            # A body coming in: each part within FIRST_REQUEST_S of the one before.
            self._stop_head_timer()
            self._start_head_timer()
        elif (self._head_timer is None and self.timeout_keep_alive_task is None
              and (cycle is None or cycle.response_complete)):
            # Bytes after an answer that begin no request (the rest of a body declared
            # and never needed): they cancelled the only timer, and one byte held the
            # connection for good.
            self._start_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_head_timer()
        super().connection_lost(exc)

    def _start_head_timer(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(FIRST_REQUEST_S, self._late)

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _late(self) -> None:
        self._head_timer = None
        if not self.transport.is_closing():
            self.transport.close()


def _too_many(wait: int) -> str:
    return tr("尝试次数太多，请 {n} 秒后再试。", "Too many tries; try again in {n} s.", n=wait)


def _closed(ledger: Any, member: str) -> bool:
    """A member who may not sign in (nor stay signed in): deleted, erased, or who left
    (退会, crdtledger.membership: an approved exit; a return lets them in again)."""
    try:
        profile = ledger.member(member)
    except LedgerError:
        return True
    return bool(profile.get("deleted") or profile.get("erased") or profile.get("exited"))


# --- the process's portal and the browser's member ---------------------------------------

_portal: Portal | None = None


def portal() -> Portal:
    assert _portal is not None, "members_portal.install() has not run"
    return _portal


def signed_in() -> str | None:
    """The member signed in in this browser session, while the sign-in lasts."""
    try:
        data: dict[str, Any] = dict(app.storage.user.get("member") or {})
    except RuntimeError:
        return None
    member, node, until = data.get("id"), data.get("node"), data.get("deadline")
    s = shop()
    if not isinstance(member, str) or node != s.node.node_id or not isinstance(until, float) \
            or data.get("process") != _PROCESS or until < boot_clock_s():
        return None
    survivor = s.ledger.survivor_of(member)
    # The survivor too: merged into a member who then left, the page stayed open.
    if _closed(s.ledger, member) or _closed(s.ledger, survivor) \
            or not _card_still_active(s.ledger, member, data.get("card")) \
            or not _phone_still_theirs(s.ledger, survivor, data.get("phone")):
        return None
    return survivor


def _phone_still_theirs(ledger: Any, survivor: str, phone: Any) -> bool:
    """A sign-in made with the phone's code lasts while that phone is the member's: a
    thief holding a stolen phone kept booking in the member's name for the sign-in's
    two hours after the shop set the member's new number."""
    if phone is None:  # signed in by card (or before sign-ins kept the phone)
        return True
    return survivor in _phone_holders(ledger, str(phone))


def _phone_holders(ledger: Any, phone: str) -> set[str]:
    """The members (not merged away) whose own profile holds `phone` now: a duplicate
    merged into the member keeps the phone it was registered with, and signed in (and
    kept signed in) a stolen phone after the shop set her new number."""
    return {m for m in views.members_by_phone(ledger, phone)
            if ledger.survivor_of(m) == m and not _closed(ledger, m)}


def _card_still_active(ledger: Any, member: str, card: Any) -> bool:
    """A sign-in made with a card lasts while that card is active: a thief signed in
    with a stolen card and its PIN kept booking and cancelling in the member's name
    for the sign-in's two hours after the card was reported lost and replaced."""
    if card is None:  # signed in by the phone's code
        return True
    try:
        now = ledger.card(str(card["card_no"]), member)
    except (LedgerError, KeyError, TypeError):
        return False
    return bool(now["id"] == card.get("id") and now["status"] == "active")


def sign_in(member: str, card: dict[str, str] | None = None, *,
            phone: str | None = None) -> None:
    app.storage.user["member"] = {"id": member, "node": shop().node.node_id,
                                  "deadline": boot_clock_s() + SESSION_S,
                                  "process": _PROCESS, "card": card,
                                  "phone": phone}


def sign_out() -> None:
    app.storage.user.pop("member", None)


# --- pages -------------------------------------------------------------------------------

def install(s: Shop, config: MembersConfig | None) -> Portal:
    """The portal of this process; its pages and its gate. Called by app.build, before
    the app starts (middleware cannot be added later)."""
    global _portal
    _portal = Portal(s, config)
    app.add_middleware(CounterSide)
    app.on_startup(_portal.start)
    app.on_shutdown(_portal.stop)

    @ui.page(PATH, title="会员中心 · Members")
    def members_page() -> None:
        _page()

    return _portal


def _address() -> str:
    request = ui.context.client.request
    return request.client.host if request.client is not None else ""


def _page() -> None:
    ui.colors(primary=PRIMARY)
    member = signed_in()
    s = shop()
    with ui.header().classes("items-center gap-2 py-2 px-3 bg-teal-800"):
        ui.label(tr("会员中心", "Members")).classes("text-lg font-bold")
        ui.label(s.branch_name(s.node.node_id)).classes("text-sm opacity-80")
        ui.space()
        other: Lang = "en" if lang() == "zh" else "zh"
        ui.button(LANGS[other], on_click=lambda: _switch(other)) \
            .props("flat dense color=white no-caps").mark("lang")
        if member is not None:
            ui.button(icon="logout", on_click=_sign_out).props("flat dense round color=white") \
                .mark("sign-out")
    with ui.column().classes("w-full max-w-md mx-auto p-3 gap-3"):
        if member is None:
            _sign_in_form()
        else:
            Home(member)


def _switch(value: Lang) -> None:
    set_lang(value)
    ui.navigate.reload()


def _sign_out() -> None:
    sign_out()
    ui.navigate.to(PATH)


def _typed(box: ui.input) -> str:
    """What a sign-in box holds: text, whatever a hand-made socket event set it to (a
    list or a number raised AttributeError in the handlers)."""
    return box.value if isinstance(box.value, str) else ""


def _sign_in_form() -> None:
    p = portal()
    ui.label(tr("查询余额、积分和预约：请用在门店登记的手机号或会员卡登录。",
                "Your balance, points and appointments: sign in with the phone number "
                "the shop has for you, or with your card.")).classes("text-gray-700")
    with ui.tabs().props("no-caps").classes("w-full") as tabs:
        by_phone = ui.tab(tr("手机验证码", "Phone code")).mark("tab-phone")
        by_card = ui.tab(tr("卡号 + 密码", "Card + PIN")).mark("tab-card")
    with ui.tab_panels(tabs, value=by_phone).classes("w-full"):
        with ui.tab_panel(by_phone).classes("gap-3 p-1"):
            phone = ui.input(tr("手机号", "Phone number")) \
                .props('outlined inputmode=tel autocomplete=tel').classes("w-full") \
                .mark("phone")
            sent = ui.label().classes("text-sm text-gray-700").mark("code-sent")
            code = ui.input(tr("验证码（6 位）", "Code (6 digits)")) \
                .props('outlined inputmode=numeric autocomplete=one-time-code maxlength=6') \
                .classes("w-full").mark("code")
            phone_error = ui.label().classes("text-negative").mark("phone-error")

            async def ask() -> None:
                phone_error.set_text("")
                try:
                    await p.send_code(_typed(phone), _address())
                except SignInRefused as e:
                    phone_error.set_text(str(e))
                    return
                sent.set_text(tr("如果这个手机号是会员的，验证码已发到 {p}，{m} 分钟内有效。",
                                 "If this phone is a member's, a code was sent to {p}; it "
                                 "is valid for {m} minutes.", p=mask_phone(
                                     canonical_phone(_typed(phone))),
                                 m=int(CODE_TTL_S // 60)))

            def enter() -> None:
                try:
                    member = p.check_code(_typed(phone), _typed(code), _address())
                except SignInRefused as e:
                    phone_error.set_text(str(e))
                    return
                sign_in(member, phone=canonical_phone(_typed(phone)))
                ui.navigate.to(PATH)

            ui.button(tr("获取验证码", "Send me a code"), on_click=ask) \
                .props("outline no-caps").classes("w-full").mark("send-code")
            code.on("keydown.enter", enter)
            ui.button(tr("登录", "Sign in"), on_click=enter).props("no-caps") \
                .classes("w-full").mark("sign-in-phone")
        with ui.tab_panel(by_card).classes("gap-3 p-1"):
            card = ui.input(tr("卡号", "Card number")).props("outlined").classes("w-full") \
                .mark("card")
            pin = ui.input(tr("卡密码", "PIN"), password=True) \
                .props("outlined inputmode=numeric").classes("w-full").mark("pin")
            card_error = ui.label().classes("text-negative").mark("card-error")

            async def enter_card() -> None:
                try:
                    member, used = await p.check_card(_typed(card), _typed(pin), _address())
                except SignInRefused as e:
                    card_error.set_text(str(e))
                    return
                sign_in(member, used)
                ui.navigate.to(PATH)

            pin.on("keydown.enter", enter_card)
            ui.button(tr("登录", "Sign in"), on_click=enter_card).props("no-caps") \
                .classes("w-full").mark("sign-in-card")


def _bookings_available() -> bool:
    return all(n in operations.TABLE for n in ("booking.add", "booking.cancel",
                                                "booking.list", "booking.slots"))


class Home:
    """The signed-in member's page: theirs only, read from the session's member. It
    follows the store as the counter does (Shop.watchers): a top-up at a branch, a
    booking confirmed when its branch hears of it, show without a reload."""

    def __init__(self, member: str) -> None:
        self.member = member
        self.shop = shop()
        self.portal = portal()
        self.body = ui.column().classes("w-full gap-3")
        self.dialog = ui.dialog()
        self.shown: dict[str, Any] | None = None
        follow(self.shop.watchers, self.refresh)  # as this page's session
        self.draw(self.read_all())

    async def run(self, name: str, **params: Any) -> Any:
        """One of the table's operations, as this node's owner, for this member only,
        while the sign-in lasts: a page left open past it (or signed out in another tab)
        writes nothing and goes back to the sign-in."""
        if signed_in() != self.member:
            ui.navigate.to(PATH)
            raise SignedOut("the member's sign-in has ended")
        return await self.shop.run(self.shop.operation(self.portal.writer, name, **params),
                                   name)

    def read(self, name: str, **params: Any) -> Any:
        return operations.run(self.shop.ledger, self.portal.operator, name,
                              {k: v for k, v in params.items() if v is not None})

    def read_all(self) -> dict[str, Any]:
        """Everything the page shows of the member, read once."""
        ledger = self.shop.ledger
        m = self.member
        now = ledger.clock.next_ms()  # as booking.cancel tells a booking that has started
        bookings: list[dict[str, Any]] = []
        if _bookings_available():
            try:
                # Those to come only: one whose time has passed today stayed listed with
                # a Cancel button that the library then refused.
                bookings = [b for b in self.read("booking.list", member=m)
                            if int(b.get("start") or 0) > now
                            and b.get("status") in ("confirmed", "pending")]
            except LedgerError as e:
                log.warning("booking.list for a member: %s", e)
            bookings.sort(key=lambda b: str(b.get("at", "")))
        return {
            "checkins": self._open_activities(),
            "profile": ledger.member(m), "balance": ledger.balance(m),
            "points": views.points(ledger, m),
            "packages": [p for p in views.packages(ledger, m) if p["remaining"] > 0],
            "coupons": [c for c in ledger.coupons(m)
                        if c["status"] in ("available", "not_yet_valid")],
            "bookings": bookings,
            "history": [e for e in ledger.history(m, limit=HISTORY_SHOWN * 2)
                        if e["kind"] not in ("transfer", "merge")][:HISTORY_SHOWN],
        }

    def _open_activities(self) -> list[dict[str, Any]]:
        """Check-in activities (签到, crdtledger.membership) open now, each with how many
        more check-ins it allows this member today."""
        ledger = self.shop.ledger
        if "checkin" not in operations.TABLE:
            return []
        from crdtledger.membership import allowed_today

        now = ledger._local_minute()
        today = ledger.today()
        out = []
        for code, a in sorted(ledger.activities().items()):
            if isinstance(a, dict) and a.get("from", "") <= now < a.get("to", ""):
                left = allowed_today(a, ledger._checkin_days(self.member, code), today)
                out.append({"code": code, "name": str(a.get("name") or code),
                            "points": int(a.get("points") or 0), "left": left})
        return out

    def refresh(self) -> None:
        """The store changed: redraw if anything this member's page shows did."""
        if signed_in() != self.member:
            return  # signed out or expired meanwhile: the next action shows the sign-in
        try:
            data = self.read_all()
        except LedgerError:
            return
        if data != self.shown:
            self.draw(data)

    def redraw(self) -> None:
        self.draw(self.read_all())

    def draw(self, data: dict[str, Any]) -> None:
        self.shown = data
        profile, bal, pts = data["profile"], data["balance"], data["points"]
        self.body.clear()
        with self.body:
            with ui.card().classes("w-full gap-1"):
                ui.label(str(profile.get("name") or "")).classes("text-xl font-bold") \
                    .mark("member-name")
                lvl = profile.get("level_info") or {}
                ui.label(f"{lvl.get('name', '')} · {mask_phone(str(profile.get('phone') or ''))}"
                         ).classes("text-gray-600")
            with ui.grid(columns=2).classes("w-full gap-2"):
                _tile(tr("储值余额", "Stored value"), money(int(bal["cash"])), "cash")
                _tile(tr("赠送金额", "Bonus"), money(int(bal["bonus"])), "bonus")
                _tile(tr("可用积分", "Points"), str(pts["usable"]), "points")
                _tile(tr("30 天内到期", "Expiring in 30 days"), str(pts["expiring_30_days"]),
                      "points-expiring")
            if data["checkins"]:
                self._checkins(data["checkins"])
            if _bookings_available():
                self._bookings(data["bookings"])
            self._packages(data["packages"])
            self._coupons(data["coupons"])
            self._points(pts)
            self._history(data["history"])

    def _checkins(self, activities: list[dict[str, Any]]) -> None:
        with self._section(tr("签到活动", "Check in")):
            for a in activities:
                with ui.row().classes("w-full items-center justify-between no-wrap"):
                    with ui.column().classes("gap-0"):
                        ui.label(a["name"])
                        if a["points"]:
                            ui.label(tr("签到得 {n} 积分", "{n} points for checking in",
                                        n=a["points"])).classes("text-xs text-gray-600")
                    if a["left"] > 0:
                        once(ui.button(tr("签到", "Check in")),
                             partial(self.check_in, str(a["code"]))) \
                            .props("no-caps").mark("checkin")
                    else:
                        ui.label(tr("今天已签到", "Checked in")).classes("text-green-8") \
                            .mark("checked-in")

    async def check_in(self, activity: str) -> None:
        try:
            done = await self.run("checkin", activity=activity, member=self.member)
        except LedgerError as e:
            ui.notify(_refusal(self.shop, e), type="negative", multi_line=True)
            self.redraw()
            return
        pts = int(done.get("points") or 0) if isinstance(done, dict) else 0
        ui.notify(tr("签到成功", "Checked in") + (tr("，得 {n} 积分", ": {n} points", n=pts)
                                               if pts else ""), type="positive")
        self.redraw()

    def _section(self, title: str) -> ui.card:
        card = ui.card().classes("w-full gap-1")
        with card:
            ui.label(title).classes("text-base font-bold")
        return card

    def _points(self, pts: dict[str, Any]) -> None:
        today = self.shop.ledger.today()
        by_day: dict[str, int] = {}  # lots expiring the same day read as one line
        for lot in pts["lots"]:
            if lot["expires"] >= today:
                by_day[lot["expires"]] = by_day.get(lot["expires"], 0) + int(lot["points"])
        if not by_day:
            return
        with self._section(tr("积分有效期", "Points and when they expire")):
            for day, n in sorted(by_day.items()):
                until = day if day != "9999-12-31" else tr("长期有效", "no expiry")
                with ui.row().classes("w-full justify-between"):
                    ui.label(tr("{n} 积分", "{n} points", n=n))
                    ui.label(tr("到期：{d}", "expires {d}", d=until)).classes("text-gray-600") \
                        .mark("points-expiry")

    def _packages(self, packages: list[dict[str, Any]]) -> None:
        with self._section(tr("套餐", "Packages")):
            if not packages:
                ui.label(tr("没有可用的套餐", "No packages")).classes("text-gray-600")
            for pk in packages:
                with ui.row().classes("w-full justify-between"):
                    ui.label(self.shop.service_name(pk["service"]) or tr("套餐", "package"))
                    ui.label(tr("剩 {n} 次", "{n} uses left", n=pk["remaining"])) \
                        .mark("package-left")

    def _coupons(self, coupons: list[dict[str, Any]]) -> None:
        from reference_app.counter import coupon_terms

        with self._section(tr("优惠券", "Coupons")):
            if not coupons:
                ui.label(tr("没有可用的优惠券", "No coupons")).classes("text-gray-600")
            for c in coupons:
                with ui.column().classes("w-full gap-0"):
                    ui.label(coupon_terms(self.shop, c["off"], c["percent"], c["service"],
                                          c["min_spend"])).mark("coupon")
                    until = tr("有效期至 {d}", "valid until {d}", d=c["valid_to"]) \
                        if c["valid_to"] else tr("长期有效", "no end date")
                    ui.label(until).classes("text-sm text-gray-600")

    def _history(self, entries: list[dict[str, Any]]) -> None:
        from reference_app.counter import _describe, _entry_amount

        s = self.shop
        tz = localtime.zone(s.ledger)  # the chain's time-zone rule, as the CLI
        with self._section(tr("消费记录", "History")):
            if not entries:
                ui.label(tr("还没有记录", "Nothing yet")).classes("text-gray-600")
            for e in entries:
                when = datetime.fromtimestamp(int(e["at"]) / 1000, tz).strftime("%m-%d %H:%M")
                text, tone = _entry_amount(e)
                with ui.row().classes("w-full justify-between no-wrap gap-2"):
                    with ui.column().classes("gap-0"):
                        what = (tr("签到", "check-in") + " · " + _activity_name(s, e)
                                if e["kind"] == "checkin" else _describe(s, e))
                        ui.label(what).mark("history")
                        ui.label(f"{when} · {s.branch_name(str(e['node']))}") \
                            .classes("text-xs text-gray-600")
                    ui.label(text).classes(f"tabular-nums whitespace-nowrap shrink-0 {tone}")

    # --- appointments (helper A's operations, for this member only) ---------------

    def _bookings(self, upcoming: list[dict[str, Any]]) -> None:
        with self._section(tr("我的预约", "My appointments")):
            if not upcoming:
                ui.label(tr("没有预约", "No appointments")).classes("text-gray-600")
            for b in upcoming:
                with ui.row().classes("w-full items-center justify-between no-wrap"):
                    with ui.column().classes("gap-0"):
                        ui.label(f"{_day(str(b.get('at', ''))[:10])} "
                                 f"{str(b.get('at', ''))[11:16]} · "
                                 f"{self.shop.service_name(str(b.get('service') or ''))}") \
                            .mark("booking")
                        ui.label(f"{b.get('technician_name') or b.get('technician', '')} · "
                                 f"{self.shop.branch_name(str(b.get('branch') or ''))} · "
                                 f"{_status(str(b.get('status')))}") \
                            .classes("text-xs text-gray-600").mark("booking-status")
                    ui.button(tr("取消", "Cancel"),
                              on_click=lambda b=b: self.cancel_dialog(b)) \
                        .props("flat dense color=negative no-caps").mark("cancel-booking")
            ui.button(tr("预约服务", "Book a service"), icon="event",
                      on_click=self.book_dialog).props("no-caps").classes("w-full") \
                .mark("book")

    def cancel_dialog(self, b: dict[str, Any]) -> None:
        """A mistaken tap must not cancel: the member says so once more."""
        self.dialog.clear()
        with self.dialog, ui.card().classes("w-full max-w-md gap-2"):
            ui.label(tr("取消这个预约？", "Cancel this appointment?")) \
                .classes("text-lg font-bold")
            ui.label(f"{_day(str(b.get('at', ''))[:10])} {str(b.get('at', ''))[11:16]} · "
                     f"{self.shop.service_name(str(b.get('service') or ''))}")

            async def yes() -> None:
                self.dialog.close()
                await self.cancel(str(b["booking"]))

            with ui.row().classes("w-full justify-end"):
                ui.button(tr("保留", "Keep it"), on_click=self.dialog.close) \
                    .props("flat no-caps")
                once(ui.button(tr("取消预约", "Cancel it")), yes, self.dialog) \
                    .props("color=negative no-caps").mark("cancel-ok")
        self.dialog.open()

    async def cancel(self, booking: str) -> None:
        try:
            shown = self.read("booking.show", booking=booking)
            if self.shop.ledger.survivor_of(str(shown.get("member"))) != self.member:
                raise NotFound(f"unknown booking {booking}")  # not theirs: as unknown
            await self.run("booking.cancel", booking=booking, member=self.member)
        except LedgerError as e:
            ui.notify(_refusal(self.shop, e), type="negative")
            if not isinstance(e, SignedOut):
                self.redraw()  # started meanwhile: no longer listed
            return
        ui.notify(tr("预约已取消", "Appointment cancelled"), type="positive")
        self.redraw()

    def book_dialog(self) -> None:
        s = self.shop
        services = {str(k): str(v.get("name") or k) for k, v in
                    s.ledger.rule("services").items() if isinstance(v, dict)}
        try:
            techs = [t for t in self.read("technician.list") if isinstance(t, dict)]
        except LedgerError:
            techs = []
        today = dt.date.fromisoformat(s.ledger.today())
        days = {(today + dt.timedelta(days=i)).isoformat():
                _day((today + dt.timedelta(days=i)).isoformat()) for i in range(BOOK_DAYS)}
        self.dialog.clear()
        with self.dialog, ui.card().classes("w-full max-w-md gap-2"):
            ui.label(tr("预约服务", "Book a service")).classes("text-lg font-bold")
            service = ui.select(services, label=tr("服务", "Service")) \
                .props("outlined").classes("w-full").mark("book-service")
            tech = ui.select({}, label=tr("技师", "Technician")).props("outlined") \
                .classes("w-full").mark("book-technician")
            day = ui.select(days, value=next(iter(days)), label=tr("日期", "Day")) \
                .props("outlined").classes("w-full").mark("book-day")
            slot = ui.select({}, label=tr("时间", "Time")).props("outlined") \
                .classes("w-full").mark("book-slot")
            error = ui.label().classes("text-negative").mark("book-error")

            def techs_for_service() -> None:
                chosen = str(service.value or "")
                tech.set_options({str(t["ref"]): f"{t.get('name') or t.get('code')} · "
                                  f"{s.branch_name(str(t.get('branch') or ''))}"
                                  for t in techs if t.get("active", True)
                                  and (not chosen or chosen in (t.get("services") or []))},
                                 value=None)
                slots()

            def slots() -> None:
                slot.set_options({}, value=None)
                if not tech.value or not day.value:
                    return
                try:
                    free = self.read("booking.slots", technician=tech.value, day=day.value,
                                     service=service.value or None)
                except LedgerError as e:
                    error.set_text(s.refusal(e))
                    return
                error.set_text("" if free else tr("这一天没有空闲时间了。",
                                                  "No free time that day."))
                slot.set_options({str(at): str(at)[11:16] for at in free}, value=None)

            service.on_value_change(lambda _: techs_for_service())
            tech.on_value_change(lambda _: slots())
            day.on_value_change(lambda _: slots())
            techs_for_service()

            async def confirm() -> None:
                if not (service.value and tech.value and slot.value):
                    error.set_text(tr("请选择服务、技师和时间。",
                                      "Choose a service, a technician and a time."))
                    return
                try:
                    done = await self.run("booking.add", member=self.member,
                                          technician=tech.value, service=service.value,
                                          at=slot.value)
                except LedgerError as e:
                    slots()  # what is free now (a slot taken meanwhile goes)
                    error.set_text(_refusal(s, e))
                    return
                self.dialog.close()
                ui.notify(tr("已预约：{at}（{st}）", "Booked: {at} ({st})",
                             at=str(done.get("at", slot.value)).replace("T", " "),
                             st=_status(str(done.get("status")))), type="positive")
                self.redraw()

            with ui.row().classes("w-full justify-end"):
                ui.button(tr("取消", "Cancel"), on_click=self.dialog.close).props("flat no-caps")
                once(ui.button(tr("确认预约", "Book")), confirm, self.dialog).props("no-caps") \
                    .mark("book-ok")
        self.dialog.open()


def _refusal(s: Shop, e: LedgerError) -> str:
    """A refusal as the member reads it (the counter's sentences speak to a cashier)."""
    from crdtledger.bookings import BookingRefused, SlotTaken
    from crdtledger.errors import PermissionDenied

    if isinstance(e, SignedOut):
        return tr("登录已过期，请重新登录。", "Your sign-in has ended; sign in again.")
    if isinstance(e, SlotTaken):
        return tr("这个时间刚被约走了，请选别的时间。",
                  "That time was just taken; choose another.")
    if isinstance(e, (PermissionDenied, NotFound)):
        return tr("找不到这个预约。", "No such appointment.")
    if isinstance(e, BookingRefused):
        for pattern, say in _BOOKING_REFUSALS:
            m = pattern.fullmatch(str(e))
            if m:
                return say(m)
        return tr("没能完成：{what}", "Not done: {what}", what=str(e))
    return s.refusal(e)


# The library's refusals of a member's own booking or cancelling (crdtledger.bookings),
# as the member reads them: its sentences speak English to a cashier and name the
# booking's id, which a member on the Chinese page read as "没能完成：booking
# 038J…SH01 has started: it can no longer be cancelled".
_BOOKING_REFUSALS: tuple[tuple[re.Pattern[str], Callable[[re.Match[str]], str]], ...] = (
    (re.compile(r"(\d+) bookings to come are the most made here: .*"),
     lambda m: tr("在这里最多可以有 {n} 个还没到时间的预约：请先取消一个，或联系门店。",
                  "You can have at most {n} appointments to come booked here: cancel "
                  "one first, or ask the branch.", n=m[1])),
    (re.compile(r"(\d+) bookings made here today are the most a day: .*"),
     lambda m: tr("今天在这里已经预约了 {n} 次，是一天的上限：请联系门店。",
                  "You have made {n} bookings here today, the most in a day: ask the "
                  "branch.", n=m[1])),
    (re.compile(r"booking \S+ has started: .*"),
     lambda _m: tr("这个预约已经开始了，不能再取消。有需要请联系门店。",
                   "This appointment has started: it can no longer be cancelled. Ask the "
                   "branch if you need to.")),
    (re.compile(r"booking \S+ is (\w+): nothing to cancel"),
     lambda m: tr("这个预约{st}，不用再取消。", "This appointment is {st}: nothing to cancel.",
                  st=_status(m[1]))),
    (re.compile(r".* has passed: book a time to come"),
     lambda _m: tr("这个时间已经过了，请选以后的时间。",
                   "That time has passed: choose a time to come.")),
    (re.compile(r".* is more than (\d+) days ahead"),
     lambda m: tr("最多只能预约 {n} 天以内的时间。",
                  "Appointments can be booked at most {n} days ahead.", n=m[1])),
    (re.compile(r"technician .*|.* is outside technician .*"),
     lambda _m: tr("这位技师这个时间不能接这项预约，请选别的时间或技师。",
                   "The technician cannot take this booking at that time: choose another "
                   "time or technician.")),
    (re.compile(r"service \S+ has no duration .*"),
     lambda _m: tr("这项服务暂时不能在这里预约，请联系门店。",
                   "This service cannot be booked here yet: ask the branch.")),
)


def _activity_name(s: Shop, e: dict[str, Any]) -> str:
    code = str(e.get("activity") or "")
    acts = s.ledger.rule("checkin")
    a = acts.get(code) if isinstance(acts, dict) else None
    return str(a.get("name") or code) if isinstance(a, dict) else code


def _day(day: str) -> str:
    """2026-12-04 -> "12-04 周五" / "12-04 Fri": the day as a person picks it."""
    try:
        d = dt.date.fromisoformat(day)
    except ValueError:
        return day
    return d.strftime("%m-%d ") + tr("周" + "一二三四五六日"[d.weekday()], d.strftime("%a"))


def _status(status: str) -> str:
    return {"confirmed": tr("已确认", "confirmed"),
            "pending": tr("待门店确认", "pending: the branch confirms it when it gets it"),
            "refused": tr("未能预约", "refused"), "cancelled": tr("已取消", "cancelled"),
            "no_show": tr("未到店", "no-show"), "done": tr("已完成", "done")}.get(status, status)


def _tile(label: str, value: str, marker: str) -> None:
    with ui.column().classes("gap-0 px-3 py-2 bg-grey-2 rounded"):
        ui.label(label).classes("text-xs text-gray-600")
        ui.label(value).classes("text-xl font-bold").mark(marker)


# --- `python -m reference_app.members_portal`: the certificate --------------------------------

def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m reference_app.members_portal",
        description="Make the member port's HTTPS certificate from the chain's CA (at the "
        "head office, where CHAIN_DIR holds ca.key); `python -m reference_app --members "
        "HOST:PORT` then finds it in DATA/tls.")
    p.add_argument("--chain", required=True, type=Path, help="the chain directory")
    p.add_argument("--data", required=True, type=Path, help="the node's data directory")
    p.add_argument("--host", action="append", required=True, metavar="NAME_OR_IP",
                   help="a name or address members reach the node by (repeatable)")
    args = p.parse_args(argv)
    try:
        cert, _key = issue_cert(args.chain, args.data, args.host)
    except LedgerError as e:
        print(f"members_portal: {e}")
        return 2
    print(f"certificate for {', '.join(args.host)}: {cert}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
