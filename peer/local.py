"""The owner's local route into a running node, so the CLI never opens a store twice.

While `crdtledger node run` holds a data directory, the store is that process's: a
second process writing it would hold pycrdt documents the node does not see. So
the CLI sends the node the operation's name and its parameters (never its command
line: the node needs no parser), and the node runs the same operation against its
own ledger (through `Node.perform`, so a debit there fetches rights like any
other), and sends back the result and what to print.

The node writes `node.run.json` (mode 0600) with its local port and a random
token: whoever can read the data directory is the node's owner at the console,
exactly as when the CLI opens the store itself, and nobody else gets in.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crdtledger import audit, platform
from crdtledger.auth import verify_login
from crdtledger.errors import LedgerError, PermissionDenied, RemoteProtocolError
from crdtledger.private import private_text_open
from crdtledger.storage import LOCK_FILE

if TYPE_CHECKING:
    from aiohttp import web
    from aiohttp.typedefs import Handler

    from peer.node import Node

log = logging.getLogger("crdtledger.node")

RUN_FILE = "node.run.json"
TOKEN_HEADER = "X-Crdtledger-Local"
TIMEOUT_S = 120.0  # an import of a large sync file runs inside the call


@dataclass(frozen=True)
class Running:
    """How to reach the node that holds a data directory."""

    url: str
    token: str
    node: str
    pid: int


def write_run_file(data_dir: Path, *, node: str, host: str, port: int, token: str) -> None:
    path = data_dir / RUN_FILE
    tmp = path.with_suffix(".part")
    # The token in it lets a caller act as the node's owner: 0600 whatever the umask.
    with private_text_open(tmp) as f:
        host = "127.0.0.1" if host in ("0.0.0.0", "", "::") else host  # connectable
        json.dump({"pid": os.getpid(), "node": node, "api_host": host, "api": port,
                   "token": token}, f)
    os.replace(tmp, path)


def running(data_dir: Path) -> Running | None:
    """The node serving `data_dir`, or None if no node holds it.

    A node killed with SIGKILL leaves its run file behind; the directory lock,
    which dies with the process, tells a live node from a stale file.
    """
    try:
        info = json.loads((data_dir / RUN_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not in_use(data_dir):
        return None
    try:
        return Running(f"http://{info['api_host']}:{int(info['api'])}", str(info["token"]),
                       str(info["node"]), int(info["pid"]))
    except (KeyError, TypeError, ValueError):
        return None


def in_use(data_dir: Path) -> bool:
    """Whether a process (a node, a counter, a command) holds `data_dir`'s lock."""
    try:
        fd = os.open(data_dir / LOCK_FILE, os.O_RDWR)
    except OSError:
        # A disk gone read-only (EROFS, EPERM) under a running node: the lock is still
        # held and still tells, read-only (flock needs no write access); `status` said
        # "not running" of a node serving and connected, and opened its store itself.
        try:
            fd = os.open(data_dir / LOCK_FILE, os.O_RDONLY)
        except OSError:
            return False
    try:
        return platform.held_elsewhere(fd)
    finally:
        os.close(fd)


class NodeUnreachable(LedgerError):
    code = "node_unreachable"


def call(node: Running, path: str, body: dict[str, Any] | None = None, *,
         writes: bool = True) -> dict[str, Any]:
    """POST (or GET without a body) to the node's local route; the reply as a dict.
    `writes`: whether what is sent may change the store, which a call not answered in
    time must say."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(
        node.url + "/local" + path, data=data, method="GET" if body is None else "POST",
        headers={TOKEN_HEADER: node.token, "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT_S) as resp:
            reply: dict[str, Any] = json.loads(resp.read())
    except urllib.error.HTTPError as e:
        try:
            reply = json.loads(e.read())
        except ValueError:
            reply = {"error": "node_error", "message": f"node {node.node} answered {e}"}
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        if body is not None and isinstance(reason, TimeoutError) and not writes:
            # A read (a balance, a report) told "it may still do it" sent a cashier to
            # the history for a write that never was: there is nothing to look for.
            raise NodeUnreachable(
                f"node {node.node} (pid {node.pid}) did not answer in {TIMEOUT_S:g} s: "
                "this command only reads, nothing was written. The node is stopped or "
                "stalled (a store held by another program, a PC that froze); ask again "
                "once it answers") from None
        if body is not None and isinstance(reason, TimeoutError):
            # Sent, and not answered in time: the node may still do it (a store held
            # by another program, a PC that stalled). Said, so that nobody does it
            # twice (a top-up retried after "did not answer" was then done twice).
            raise NodeUnreachable(
                f"node {node.node} (pid {node.pid}) did not answer in {TIMEOUT_S:g} s: it "
                "may still do it. Look at the member's history (crdtledger history) "
                "before trying again") from None
        raise NodeUnreachable(f"node {node.node} (pid {node.pid}) did not answer: {e}") from None
    return reply


# --- the node's side ------------------------------------------------------------


def local_app(node: Node) -> web.Application:
    # Imported here: the CLI imports this module for `call` (urllib), and aiohttp was
    # a third of every command's start (0.3 s of 0.9 s).
    from aiohttp import web

    app = web.Application(client_max_size=1024 * 1024)

    @web.middleware
    async def owner_only(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not hmac.compare_digest(request.headers.get(TOKEN_HEADER, ""), node.local_token):
            raise web.HTTPForbidden(text="the local route is for the node's owner")
        return await handler(request)

    async def status(request: web.Request) -> web.Response:
        data = node.sync_status()
        if request.query.get("check"):
            from crdtledger import audit

            # The documents live here, not in the file the command reads; read in one
            # go of the loop, so no write lands between a document and its rows.
            data["store_unprojected"] = {
                t: len(keys) for t, keys in audit.unprojected(node.ledger).items()}
        return web.json_response(data)

    async def op(request: web.Request) -> web.Response:
        """One operation by name with its parameters (and who acts), as the command
        line sent it: the node runs it through `perform` like any write of its own."""
        from peer.cli import Result, execute

        try:
            body = await request.json()
            name, params = str(body["op"]), dict(body.get("params") or {})
            operator, password = body.get("operator"), body.get("password")
        except (ValueError, KeyError, TypeError):
            return web.json_response({"error": "usage", "message": "bad operation request"},
                                     status=400)
        try:
            who = None
            if operator is not None:  # scrypt off the loop, as for the API's logins
                record = node.ledger.login_record(str(operator))
                try:
                    who = await asyncio.to_thread(verify_login, record, str(password or ""))
                except PermissionDenied as e:
                    audit.note_failed_login(node.ledger, str(operator), "", "login_failed",
                                            str(e), audit.AT_COMMAND_LINE)
                    raise
                node.ledger.still_current(str(operator), record)
            result: Result = await node.perform(
                lambda: execute(node.ledger, name, params, operator, password, verified=who),
                name)
        except (LedgerError, RemoteProtocolError) as e:
            return web.json_response({"error": e.code, "message": str(e) or type(e).__name__})
        except OSError as e:
            return web.json_response({"error": "io_error",
                                      "message": f"{e.strerror or e}: {e.filename or ''}"})
        except Exception:
            log.exception("operation %s failed", name)
            return web.json_response(
                {"error": "internal_error", "message": "the node failed; see its log"},
                status=500)
        return web.json_response({"data": result.data, "text": result.text})

    app.middlewares.append(owner_only)
    app.router.add_get("/status", status)
    app.router.add_post("/op", op)
    return app
