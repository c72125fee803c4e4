"""How a node sends a message to a person: e-mail over SMTP, SMS over a provider's
HTTP API, or the log (the demo's, and a shop that has neither yet).

The gateways are this PC's, set in DATA/node.toml's `[notify]` section, never in the
replicated rules: an SMTP password or an SMS provider's secret key must not travel to
every branch. Each branch that sends (crdtledger.notices says which one sends what)
has its own.

    [notify.email]
    kind = "smtp"                 # or "log"
    host = "smtp.example.com"
    port = 587
    starttls = true               # upgrade the connection before logging in
    tls = false                   # implicit TLS (port 465) instead
    username = "shop@example.com" # optional: log in only when given
    password = "..."
    sender = "店 <shop@example.com>"
    timeout_s = 15

    [notify.sms]
    kind = "tencent"              # or "log" (file = "PATH": each message appended too)
    url = "https://sms.tencentcloudapi.com"   # a stand-in's address in tests
    secret_id = "AKID..."
    secret_key = "..."
    sdk_app_id = "1400000000"
    sign_name = "某某足疗"
    template_id = "1234567"       # a template of one parameter {1}: the text
    region = "ap-guangzhou"

The SMS shape is Tencent Cloud SMS API 3.0 `SendSms` (version 2021-01-11): a JSON
POST signed with TC3-HMAC-SHA256 in the Authorization header. Mainland SMS goes
through templates approved in advance, so the text travels as the one parameter of a
template the shop had approved; the notice's key travels as `SessionContext`, which
the provider echoes back (a client reference to drop a duplicate by).

A send that fails raises GatewayError, whose text is a sentence a person can act on;
the caller (peer.notifier) keeps the message and tries again later.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import re
import time
import tomllib
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import make_msgid
from pathlib import Path
from typing import Any, NamedTuple, Protocol

from crdtledger import platform
from crdtledger.errors import InvalidInput
from crdtledger.rules import LINE_BREAKS

log = logging.getLogger("crdtledger.notify")

CONFIG_FILE = "node.toml"
CHANNELS = ("email", "sms")


class Message(NamedTuple):
    key: str  # idempotency key: the same for a resend of the same notice
    channel: str  # "email" | "sms"
    to: str  # an e-mail address or a phone number
    subject: str
    body: str


class GatewayError(Exception):
    """A message not sent; its text says why in a sentence a person can act on.
    `permanent`: the gateway said this message will never go as it is (an address the
    mail server refuses for good, a number the SMS provider will not send to), so it
    is not tried again; anything else may go later."""

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


# The SMS provider's refusals that name this message or number, not the account or the
# moment (a number that unsubscribed, a number that is no number, a region it does
# not serve, words it refuses): trying again sends nothing and costs a request an hour.
SMS_REFUSED_FOR_GOOD = frozenset({
    "FailedOperation.PhoneNumberInBlacklist", "InvalidParameterValue.IncorrectPhoneNumber",
    "FailedOperation.ContainSensitiveWord", "InvalidParameterValue.ContentLengthLimit",
    "UnsupportedOperation.UnsupportedRegion"})


class SettingsError(InvalidInput):
    """[notify] settings that cannot work; the text names the setting (a refusal the
    CLI and the node's start print as they print any invalid input)."""


class Gateway(Protocol):
    channel: str

    async def send(self, msg: Message) -> None: ...


class LogGateway:
    """Writes each message to the log and keeps the last ones (the demo's, and a
    shop's that has no SMTP or SMS account yet: the owner reads them in the log)."""

    def __init__(self, channel: str, keep: int = 200, file: Path | None = None) -> None:
        self.channel = channel
        self.sent: deque[Message] = deque(maxlen=keep)
        self.file = file  # also appended to, one line a message (the demo shows it)

    async def send(self, msg: Message) -> None:
        # One line a message, whatever a stored subject or address holds.
        line = (f"{msg.channel} to {one_line(msg.to)} [{one_line(msg.key)}]: "
                f"{one_line(msg.subject)} | "
                f"{one_line(msg.body.strip().replace(chr(10), ' / '))}")
        log.info("%s", line)
        self.sent.append(msg)
        if self.file is not None:
            try:
                with open(self.file, "a", encoding="utf-8") as f:
                    f.write(f"{branch_now():%Y-%m-%d %H:%M:%S%z} {line}\n")
            except OSError as e:
                raise GatewayError(f"cannot write the message log {self.file}: "
                                   f"{e.strerror or e}") from None


def branch_now() -> datetime:
    """Now on the branch's clock, as the node's log writes it: in the chain's zone,
    which the node gives the log (platform.log_zone, from crdtledger.localtime) and
    moves with the settings rule. This PC's own zone only outside a node, as the log.
    A shop PC set to UTC wrote the message file eight hours off the log and the pages."""
    return platform.log_now()


# --- e-mail -------------------------------------------------------------------------


@dataclass(frozen=True)
class SmtpSettings:
    host: str
    port: int = 587
    starttls: bool = True
    tls: bool = False
    username: str = ""
    password: str = ""
    sender: str = ""
    timeout_s: float = 15.0


def message_id(key: str, sender: str) -> str:
    """The notice's key as the Message-ID, so a resend of one notice carries the same
    id and a mail system that drops duplicates by Message-ID drops it."""
    domain = sender.rpartition("@")[2].strip(" >") or "crdtledger.local"
    safe = "".join(c if c.isalnum() or c in "-._" else "." for c in key)
    return f"<{safe}@{domain}>"


# Control characters and whatever else str.splitlines() breaks a line at: in a header
# they would start a header of their own (the mail library refuses CR and LF, and
# passes a NUL through to the server).
_NOT_ONE_LINE = re.compile(f"[{LINE_BREAKS}]+")


def one_line(value: str) -> str:
    """A header's text on one line: each run of line breaks or control characters
    becomes a space. For what the node wrote itself from a stored value (a subject, a
    branch's name in it) that the API refuses today but an older version, or another
    branch's record, may have kept: the notice still goes, and only as one header."""
    return _NOT_ONE_LINE.sub(" ", value).strip()


class SmtpGateway:
    channel = "email"

    def __init__(self, settings: SmtpSettings) -> None:
        self.settings = settings

    def _mime(self, msg: Message) -> EmailMessage:
        """The mail; a recipient that is not one address on one line is a GatewayError
        (changing it would send the notice to someone else)."""
        s = self.settings
        if not msg.to or _NOT_ONE_LINE.search(msg.to) or any(c.isspace() for c in msg.to):
            raise GatewayError(f"{msg.to!r} is not an e-mail address: this notice cannot "
                               "be sent by mail", permanent=True)
        mail = EmailMessage()
        try:
            mail["From"] = s.sender
            mail["To"] = msg.to
            mail["Subject"] = one_line(msg.subject)
            mail["Message-ID"] = message_id(msg.key, s.sender) if msg.key else make_msgid()
            mail["X-Notice-Key"] = one_line(msg.key)
            mail.set_content(msg.body)
        except (ValueError, TypeError, LookupError) as e:  # the email package's refusals
            raise GatewayError(f"this notice cannot be put in a mail ({e}); it is kept "
                               "with this reason", permanent=True) from None
        return mail

    async def send(self, msg: Message) -> None:
        import aiosmtplib

        s = self.settings
        mail = self._mime(msg)
        try:
            await aiosmtplib.send(
                mail, hostname=s.host, port=s.port, use_tls=s.tls,
                start_tls=s.starttls and not s.tls, username=s.username or None,
                password=s.password or None, timeout=s.timeout_s)
        except aiosmtplib.SMTPAuthenticationError as e:
            raise GatewayError(f"the mail server {s.host} refused the login of "
                               f"{s.username!r} ({e.code}): check [notify.email] username "
                               "and password") from None
        except aiosmtplib.SMTPRecipientsRefused as e:
            # 5xx is the server's "never" (RFC 5321 4.2.1: no such mailbox), 4xx its
            # "not now" (a full mailbox, greylisting).
            codes = [r.code for r in e.recipients]
            never = bool(codes) and all(500 <= c < 600 for c in codes)
            answer = "; ".join(f"{r.code} {r.message}" for r in e.recipients)
            raise GatewayError(
                f"the mail server {s.host} refused the address {msg.to} ({answer})"
                + ("" if never else "; it will be tried again"), permanent=never) from None
        except aiosmtplib.SMTPConnectError as e:
            raise GatewayError(f"cannot reach the mail server {s.host}:{s.port} ({e}); "
                               "it will be tried again") from None
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as e:
            raise GatewayError(f"the mail server {s.host}:{s.port} did not take the "
                               f"message ({e or type(e).__name__}); it will be tried again"
                               ) from None


# --- SMS: Tencent Cloud SMS API 3.0 -----------------------------------------------------


@dataclass(frozen=True)
class TencentSmsSettings:
    secret_id: str
    secret_key: str
    sdk_app_id: str
    sign_name: str
    template_id: str
    url: str = "https://sms.tencentcloudapi.com"
    region: str = "ap-guangzhou"
    timeout_s: float = 15.0


TC3_SERVICE = "sms"
TC3_VERSION = "2021-01-11"


def tc3_authorization(secret_id: str, secret_key: str, host: str, payload: bytes,
                      timestamp: int, action: str = "SendSms") -> str:
    """The Authorization header of Tencent Cloud API 3.0 (TC3-HMAC-SHA256) for a JSON
    POST to `/`: the canonical request hashed, signed with a key derived from the date
    and the service."""
    date = datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d")
    signed_headers = "content-type;host;x-tc-action"
    canonical = "\n".join([
        "POST", "/", "",
        f"content-type:application/json; charset=utf-8\nhost:{host}\n"
        f"x-tc-action:{action.lower()}\n",
        signed_headers, hashlib.sha256(payload).hexdigest()])
    scope = f"{date}/{TC3_SERVICE}/tc3_request"
    to_sign = "\n".join(["TC3-HMAC-SHA256", str(timestamp), scope,
                         hashlib.sha256(canonical.encode()).hexdigest()])

    def mac(key: bytes, text: str) -> bytes:
        return hmac.new(key, text.encode(), hashlib.sha256).digest()

    k = mac(mac(mac(("TC3" + secret_key).encode(), date), TC3_SERVICE), "tc3_request")
    signature = hmac.new(k, to_sign.encode(), hashlib.sha256).hexdigest()
    return (f"TC3-HMAC-SHA256 Credential={secret_id}/{scope}, "
            f"SignedHeaders={signed_headers}, Signature={signature}")


def sms_phone(to: str) -> str:
    """E.164: a mainland number without its country code gets +86."""
    digits = to.strip().replace(" ", "").replace("-", "")
    if digits.startswith("+"):
        return digits
    return f"+86{digits}" if len(digits) == 11 and digits.startswith("1") else digits


class TencentSmsGateway:
    channel = "sms"

    def __init__(self, settings: TencentSmsSettings) -> None:
        self.settings = settings

    async def send(self, msg: Message) -> None:
        import aiohttp
        from yarl import URL

        s = self.settings
        host = URL(s.url).host or "sms.tencentcloudapi.com"
        payload = json.dumps({
            "PhoneNumberSet": [sms_phone(msg.to)], "SmsSdkAppId": s.sdk_app_id,
            "SignName": s.sign_name, "TemplateId": s.template_id,
            "TemplateParamSet": [msg.body], "SessionContext": msg.key,
        }, ensure_ascii=False).encode()
        ts = int(time.time())
        headers = {
            "Authorization": tc3_authorization(s.secret_id, s.secret_key, host, payload, ts),
            "Content-Type": "application/json; charset=utf-8", "Host": host,
            "X-TC-Action": "SendSms", "X-TC-Version": TC3_VERSION,
            "X-TC-Timestamp": str(ts), "X-TC-Region": s.region,
        }
        try:
            async with aiohttp.ClientSession(
                    timeout=aiohttp.ClientTimeout(total=s.timeout_s)) as http, \
                    http.post(s.url, data=payload, headers=headers) as r:
                text = await r.text()
                status = r.status
        except (aiohttp.ClientError, OSError, TimeoutError) as e:
            raise GatewayError(f"cannot reach the SMS provider at {s.url} "
                               f"({e or type(e).__name__}); it will be tried again") from None
        try:
            answer = json.loads(text)["Response"]
        except (ValueError, KeyError, TypeError):
            raise GatewayError(f"the SMS provider at {s.url} answered {status} with "
                               "something that is not its API's; it will be tried again"
                               ) from None
        if "Error" in answer:
            err = answer["Error"]
            raise GatewayError(f"the SMS provider refused the message to {msg.to}: "
                               f"{err.get('Code')} {err.get('Message')}",
                               permanent=err.get("Code") in SMS_REFUSED_FOR_GOOD)
        for one in answer.get("SendStatusSet") or []:
            if one.get("Code") != "Ok":
                raise GatewayError(f"the SMS provider did not send to {msg.to}: "
                                   f"{one.get('Code')} {one.get('Message')}",
                                   permanent=one.get("Code") in SMS_REFUSED_FOR_GOOD)


# --- settings -------------------------------------------------------------------------


def _get(section: Mapping[str, Any], name: str, kind: type, where: str,
         default: Any = None) -> Any:
    value = section.get(name, default)
    if value is None:
        raise SettingsError(f"{where}: {name} is missing")
    if kind is int and isinstance(value, bool):
        raise SettingsError(f"{where}: {name} is a number, not {value!r}")
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind):
        raise SettingsError(f"{where}: {name} is a {kind.__name__}, not {value!r}")
    return value


def gateway_from_section(channel: str, section: Mapping[str, Any]) -> Gateway:
    """One channel's gateway from its settings; a setting that cannot work is a
    SettingsError naming it."""
    where = f"[notify.{channel}]"
    if not isinstance(section, Mapping):
        raise SettingsError(f"{where} is a table of settings")
    kind = _get(section, "kind", str, where, "log")
    if kind == "log":
        file = _get(section, "file", str, where, "")
        return LogGateway(channel, file=Path(file) if file else None)
    if channel == "email" and kind == "smtp":
        port = _get(section, "port", int, where, 587)
        if not 0 < port < 65536:
            raise SettingsError(f"{where}: port {port} is not a TCP port")
        sender = _get(section, "sender", str, where)
        if "@" not in sender:
            raise SettingsError(f"{where}: sender {sender!r} is not an e-mail address")
        username = _get(section, "username", str, where, "")
        password = _get(section, "password", str, where, "")
        if bool(username) != bool(password):
            raise SettingsError(f"{where}: username and password go together")
        timeout = _get(section, "timeout_s", float, where, 15.0)
        if timeout <= 0:
            raise SettingsError(f"{where}: timeout_s must be above 0")
        host = _get(section, "host", str, where)
        if not host:
            raise SettingsError(f"{where}: host is empty")
        return SmtpGateway(SmtpSettings(
            host=host, port=port, starttls=_get(section, "starttls", bool, where, True),
            tls=_get(section, "tls", bool, where, False), username=username,
            password=password, sender=sender, timeout_s=timeout))
    if channel == "sms" and kind == "tencent":
        url = _get(section, "url", str, where, "https://sms.tencentcloudapi.com")
        if not url.startswith(("https://", "http://")):
            raise SettingsError(f"{where}: url {url!r} is not an http(s) address")
        fields = {k: _get(section, k, str, where) for k in
                  ("secret_id", "secret_key", "sdk_app_id", "sign_name", "template_id")}
        for k, v in fields.items():
            if not v:
                raise SettingsError(f"{where}: {k} is empty")
        return TencentSmsGateway(TencentSmsSettings(
            url=url, region=_get(section, "region", str, where, "ap-guangzhou"),
            timeout_s=_get(section, "timeout_s", float, where, 15.0), **fields))
    kinds = "smtp or log" if channel == "email" else "tencent or log"
    raise SettingsError(f"{where}: kind {kind!r} is not one of {kinds}")


def gateways_from_settings(notify: Mapping[str, Any]) -> dict[str, Gateway]:
    """The gateways of a `[notify]` table: a channel without settings has none."""
    if not isinstance(notify, Mapping):
        raise SettingsError("[notify] is a table of settings")
    unknown = [k for k in notify if k not in CHANNELS]
    if unknown:
        raise SettingsError(f"[notify]: unknown setting {unknown[0]!r} (channels: "
                            "[notify.email], [notify.sms])")
    return {c: gateway_from_section(c, notify[c]) for c in CHANNELS if c in notify}


def read_notify(data_dir: Path) -> dict[str, Any]:
    """The `[notify]` table of DATA/node.toml (empty when there is none)."""
    try:
        with open(Path(data_dir) / CONFIG_FILE, "rb") as f:
            table = tomllib.load(f)
    except FileNotFoundError:
        return {}
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise SettingsError(f"{Path(data_dir) / CONFIG_FILE}: {e}") from None
    except (UnicodeDecodeError, RecursionError):
        # The parser's own traceback otherwise (bytes not UTF-8, arrays nested deep).
        raise SettingsError(f"{Path(data_dir) / CONFIG_FILE} is not a settings file: it is "
                            "not UTF-8 TOML (or nests too deep to read)") from None
    notify = table.get("notify", {})
    if not isinstance(notify, dict):
        raise SettingsError(f"{Path(data_dir) / CONFIG_FILE}: [notify] is a table of "
                            f"settings ([notify.email], [notify.sms]), not {str(notify)[:40]}")
    return notify


def gateways_from_config(data_dir: Path) -> dict[str, Gateway]:
    """This node's gateways, channel -> Gateway, from DATA/node.toml's [notify]
    (possibly empty: a node with no [notify] sends nothing)."""
    return gateways_from_settings(read_notify(data_dir))


async def send_all(gateways: Mapping[str, Gateway], msg: Message) -> None:
    """Send through the channel's gateway (for callers that have a Message only)."""
    gateway = gateways.get(msg.channel)
    if gateway is None:
        raise GatewayError(f"this node has no {msg.channel} gateway: set [notify."
                           f"{msg.channel}] in its node.toml")
    await asyncio.wait_for(gateway.send(msg), timeout=60)
