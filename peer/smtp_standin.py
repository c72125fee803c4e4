"""A local SMTP stand-in for a mail server: a real aiosmtpd server on 127.0.0.1 that
keeps every message it receives (and prints it, if asked). The demo starts one so the
owner's daily report is seen arriving; the tests send to one. Not a mail server: it
delivers nothing anywhere.
"""

from __future__ import annotations

import email
import email.policy
import socket
import threading
from collections.abc import Callable
from email.message import EmailMessage
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword


class _Keeper:
    def __init__(self, standin: SmtpStandIn) -> None:
        self.standin = standin

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str,
                          rcpt_options: list[str]) -> str:
        refusal = self.standin.refuse.get(address)
        if refusal is not None:
            return refusal
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        raw = envelope.content if isinstance(envelope.content, bytes) else \
            str(envelope.content).encode()
        msg = email.message_from_bytes(raw, policy=email.policy.default)
        if not isinstance(msg, EmailMessage):  # policy.default always makes one
            return "554 Transaction failed: the message could not be parsed"
        with self.standin.lock:
            self.standin.received.append(msg)
        if self.standin.on_message is not None:
            self.standin.on_message(msg)
        return "250 Message accepted for delivery"


class SmtpStandIn:
    """`with SmtpStandIn() as smtp:` ... `smtp.port`, `smtp.received`."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0,
                 on_message: Callable[[EmailMessage], None] | None = None,
                 login: tuple[str, str] | None = None) -> None:
        """`login`: the one user and password it takes, over plain text (a stand-in
        on loopback); with it, mail is accepted only after AUTH."""
        self.host = host
        self.received: list[EmailMessage] = []
        self.lock = threading.Lock()
        self.on_message = on_message
        # Recipients it refuses, with the reply it gives ("550 5.1.1 no such user").
        self.refuse: dict[str, str] = {}
        if port == 0:  # aiosmtpd checks it is up by connecting to the port it was given
            with socket.socket() as sock:
                sock.bind((host, 0))
                port = int(sock.getsockname()[1])
        self.port = port
        auth: dict[str, Any] = {}
        if login is not None:
            def check(server: Any, session: Any, envelope: Any, mechanism: str,
                      data: Any) -> AuthResult:
                ok = isinstance(data, LoginPassword) and (
                    data.login.decode(), data.password.decode()) == login
                return AuthResult(success=ok, handled=False)

            auth = {"authenticator": check, "auth_required": True,
                    "auth_require_tls": False}
        self.controller = Controller(_Keeper(self), hostname=host, port=port, **auth)

    def start(self) -> SmtpStandIn:
        self.controller.start()
        return self

    def stop(self) -> None:
        self.controller.stop()

    def __enter__(self) -> SmtpStandIn:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def messages(self) -> list[EmailMessage]:
        with self.lock:
            return list(self.received)


def text_of(msg: EmailMessage) -> str:
    body = msg.get_body(("plain",))
    return str(body.get_content()) if body is not None else ""
