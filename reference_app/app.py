"""`python -m reference_app --data DIR`: a branch node and its counter pages in one process.

The node is started on NiceGUI's event loop (`app.on_startup`) and stopped with it,
so the pages call the ledger on the loop that owns it and the store is opened once.
The node's settings come from the same flags and DATA/node.toml as `crdtledger node
run` (peer/cli.py's `node_config`).
"""

from __future__ import annotations

import argparse
import logging
import os
import secrets
from collections.abc import Sequence
from pathlib import Path

from nicegui import app, ui

from crdtledger.errors import LedgerError
from crdtledger.private import private_text_open
from peer.chain import load_identity
from peer.cli import add_node_options, node_config
from peer.node import Config, Node, parse_address
from reference_app import bookings_page, layout
from reference_app.members_portal import MembersConfig, members_config
from reference_app.readers import Reader
from reference_app.shop import Shop, install

SECRET_FILE = "app-secret"  # signs the browsers' session cookies; kept with the node's data
SESSIONS_DIR = "app-sessions"  # NiceGUI's per-browser storage (operator, language)
DEFAULT_HTTP = "127.0.0.1:8080"


def build(node_config: Config, *, readers: Sequence[Reader] | None = None,
          members: MembersConfig | None = None, member_pages: bool = False) -> Shop:
    """Register the pages and tie the node's life to the app's. `readers`: None for
    whatever this machine has; tests pass their own (readers.ScriptedReader).
    `members`: the member self-service port (members_portal), off by default;
    `member_pages`: their pages without a port of their own (tests)."""
    from reference_app import admin, backoffice, counter, members_portal, membership_pages

    layout.reset()
    s = Shop(Node(node_config), readers)
    install(s)
    app.on_startup(s.start)
    app.on_shutdown(s.stop)
    counter.register()
    bookings_page.register()
    backoffice.register()
    admin.register()
    membership_pages.register()
    if members is not None or member_pages:
        members_portal.install(s, members)
    return s


def storage_secret(data_dir: Path) -> str:
    """A secret made once per data directory, readable by its owner only, so sessions
    survive restarts and no two shops share one."""
    path = data_dir / SECRET_FILE
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        secret = secrets.token_urlsafe(32)
        with private_text_open(path, exclusive=True) as f:
            f.write(secret)
        return secret


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m reference_app",
                                description="The counter app of one branch node.")
    p.add_argument("--data", required=True, type=Path, help="the node's data directory")
    p.add_argument("--http", default=DEFAULT_HTTP, metavar="HOST:PORT",
                   help=f"where the pages are served (default {DEFAULT_HTTP})")
    add_node_options(p)
    p.add_argument("--members", metavar="HOST:PORT",
                   help="also serve the member self-service pages (/m) over HTTPS on this "
                   "port, e.g. 0.0.0.0:8443 (off by default)")
    p.add_argument("--members-cert", type=Path, metavar="PEM",
                   help="the member port's certificate (default: DATA/tls/members.crt, "
                   "made by `python -m reference_app.members_portal`)")
    p.add_argument("--members-key", type=Path, metavar="PEM", help="its private key")
    p.add_argument("--storage-secret", metavar="S",
                   help=f"signs session cookies (default: DATA/{SECRET_FILE}, made once)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        if load_identity(args.data) is None:
            raise LedgerError(
                f"{args.data} is not a node with a chain certificate (create one with "
                "`crdtledger init --data DIR --node NODE --chain CHAIN_DIR`)")
        config = node_config(args, args.data)
        host, port = parse_address(args.http, 8080)
        members = None if args.members is None else members_config(
            args.data, args.members, args.members_cert, args.members_key)
    except (LedgerError, ValueError) as e:
        print(f"reference_app: {e}")
        return 2
    from nicegui.storage import Storage

    # Sessions next to the node's data, not in whatever directory the app started in.
    Storage.path = (args.data / SESSIONS_DIR).resolve()
    app.storage = Storage()
    build(config, members=members)
    # NiceGUI takes PYTEST_CURRENT_TEST to mean it runs inside a pytest screen test and
    # ignores the port it is given; this process is a branch of its own, whoever started it.
    os.environ.pop("PYTEST_CURRENT_TEST", None)
    ui.run(host=host, port=port, reload=False, show=False, title="crdtledger",
           language="zh-CN", favicon="💳", show_welcome_message=True,
           storage_secret=args.storage_secret or storage_secret(args.data))
    return 0
