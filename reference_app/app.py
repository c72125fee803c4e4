"""`python -m reference_app --data DIR`: a branch node and its counter pages in one process.

The node is started on NiceGUI's event loop (`app.on_startup`) and stopped with it,
so the pages call the ledger on the loop that owns it (the store is opened once before,
to refuse one that does not open before any page is served).
The node's settings come from the same flags and DATA/node.toml as `crdtledger node
run` (peer/cli.py's `node_config`).
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from nicegui import app, ui

from crdtledger import __version__, platform
from crdtledger.errors import LedgerError, RemoteProtocolError
from crdtledger.ledger import Ledger
from crdtledger.private import private_text_open
from crdtledger.sync import PROTOCOL_VERSION
from peer import local, webcert
from peer.chain import load_identity
from peer.cli import CONFIG_FILE, add_node_options, node_config
from peer.gateways import SettingsError, gateways_from_config
from peer.node import Config, Node, parse_address
from reference_app import bookings_page, layout
from reference_app.members_portal import MembersConfig, bind, members_config
from reference_app.readers import Reader
from reference_app.shop import Shop, install

SECRET_FILE = "app-secret"  # signs the browsers' session cookies; kept with the node's data
SESSIONS_DIR = "app-sessions"  # NiceGUI's per-browser storage (operator, language)
DEFAULT_HTTP = "127.0.0.1:8080"
DEFAULT_HTTPS_PORT = 8443


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


def session_cookie(node: str, port: int) -> str:
    """The session cookie's name, this branch's own: browsers keep cookies per host, not
    per port, so two branches' counters on one host (or a branch and the demo) under
    one name would overwrite each other's cookie and log each other out."""
    return f"crdtledger-{node}-{port}"


@dataclass(frozen=True)
class Serving:
    """Where and how the counter pages are served (`--http`, or `--https` with a
    certificate)."""

    host: str
    port: int
    cert: Path | None = None  # None: plain HTTP
    key: Path | None = None

    @property
    def url(self) -> str:
        scheme = "https" if self.cert is not None else "http"
        return f"{scheme}://{self.host}:{self.port}"


def counter_file(data_dir: Path) -> dict[str, str]:
    """DATA/node.toml's [counter] table, so a service needs only --data:
        [counter]
        https = "0.0.0.0:8443"   # or http = "127.0.0.1:8080"
        cert = "/etc/ssl/shop.crt"   # optional, with key: the owner's own pair
        key = "/etc/ssl/shop.key"
    """
    import tomllib

    path = data_dir / CONFIG_FILE
    try:
        with open(path, "rb") as f:
            table = tomllib.load(f).get("counter", {})
    except FileNotFoundError:
        return {}
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise LedgerError(f"{path}: {e}") from None
    unknown = sorted(set(table) - {"http", "https", "cert", "key"}) if isinstance(
        table, dict) else ["(not a table)"]
    if unknown or not all(isinstance(v, str) for v in table.values()):
        raise LedgerError(f"{path}: [counter] takes http, https, cert and key as text, not "
                          f"{', '.join(unknown) or 'other values'}")
    return dict(table)


def serving(args: argparse.Namespace, data_dir: Path) -> Serving:
    """From --http or --https [--cert --key], else DATA/node.toml's [counter]; the
    certificate checked before anything starts, so a missing or bad one is a sentence
    saying how to make one. Flags on the command line win over the file."""
    file = counter_file(data_dir)
    if args.http is None and args.https is None:
        args.http, args.https = file.get("http"), file.get("https")
        if args.cert is None and args.key is None:
            args.cert, args.key = (Path(file[k]) if k in file else None for k in ("cert", "key"))
    if args.https is None:
        if args.cert is not None or args.key is not None:
            raise LedgerError("--cert and --key are for --https HOST:PORT")
        host, port = parse_address(args.http or DEFAULT_HTTP, 8080)
        return Serving(host, port)
    if args.http is not None:
        raise LedgerError("serve the counter over --http or --https, not both")
    host, port = parse_address(args.https, DEFAULT_HTTPS_PORT)
    cert, key = webcert.pair(
        args.cert, args.key, [webcert.files(data_dir, webcert.COUNTER)],
        role="the counter's certificate (--cert and --key)",
        missing="the counter needs an HTTPS certificate for --https: give --cert and "
        "--key, or make one from the chain's CA at the head office with `crdtledger "
        f"https-cert --chain CHAIN_DIR --data {data_dir} --host NAME_OR_IP`")
    return Serving(host, port, cert, key)


def _ports_free(ports: Sequence[tuple[str, tuple[str, int]]]) -> None:
    """Each port this process will listen on is free, tried before anything starts: a
    counter whose page port another program held printed "ready to go" on it, then the
    bind error and two tracebacks of its node stopped halfway, and exited 3."""
    for what, (host, port) in ports:
        if port == 0:
            continue
        try:
            bind(host, port).close()
        except OSError as e:
            raise LedgerError(f"cannot serve {what} on {host}:{port}: {e.strerror or e} "
                              "(another counter, node or program): stop it, or choose "
                              "another port") from None


def parser() -> argparse.ArgumentParser:
    # The installed console script, or `python -m reference_app` from a checkout.
    prog = "crdtledger-counter" if Path(sys.argv[0]).stem == "crdtledger-counter" \
        else "python -m reference_app"
    p = argparse.ArgumentParser(prog=prog, description="The counter app of one branch node: "
                                "its node and the counter pages, in one process.")
    p.add_argument("--version", action="version", version=f"{prog} {__version__} "
                   f"(sync protocol {PROTOCOL_VERSION})")
    p.add_argument("--data", required=True, type=Path, help="the node's data directory")
    p.add_argument("--http", metavar="HOST:PORT",
                   help=f"where the pages are served over plain HTTP (default {DEFAULT_HTTP}: "
                   "this PC only)")
    p.add_argument("--https", metavar="HOST:PORT",
                   help="serve the pages over HTTPS instead, e.g. 0.0.0.0:8443 for a second "
                   "till or a tablet on the LAN (certificate: DATA/tls/https.crt, made by "
                   "`crdtledger https-cert` at the head office, or --cert/--key); the "
                   "same as `https`, `cert`, `key` under [counter] in DATA/node.toml")
    p.add_argument("--cert", type=Path, metavar="PEM",
                   help="with --https: the owner's own certificate (full chain, PEM)")
    p.add_argument("--key", type=Path, metavar="PEM", help="with --https: its private key")
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
    platform.setup_logging()  # the journal's priorities under systemd (peer.service)
    try:
        identity = load_identity(args.data)
        if identity is None:
            raise LedgerError(
                f"{args.data} is not a node with a chain certificate (create one with "
                "`crdtledger init --data DIR --node NODE --chain CHAIN_DIR`)")
        config = node_config(args, args.data)
        # The node reads its [notify] gateways only once the pages run (Node.start): a
        # bad one left this process up with no node, /login a 500 and the reason in a
        # traceback in the log, so a service's restart-on-failure never fired.
        try:
            gateways_from_config(args.data)
        except SettingsError as e:
            where = str(args.data / CONFIG_FILE)
            raise LedgerError(str(e) if where in str(e) else f"{where}: {e}") from None
        served = serving(args, args.data)
        members = None if args.members is None else members_config(
            args.data, args.members, args.members_cert, args.members_key)
        _ports_free([("the counter pages", (served.host, served.port)),
                     ("sync (--listen)", config.listen), ("the API (--api)", config.api)])
    except (LedgerError, ValueError) as e:
        print(f"reference_app: {e}")
        return 2
    if local.in_use(args.data):
        # Refused before anything starts: a process that failed to open the store
        # stayed up with no node, and once stopped removed the running node's run file,
        # which the command line finds it by.
        print(f"reference_app: {args.data} is in use by another process (a node or a "
              "counter already runs on it): stop that one first")
        return 1
    try:
        # Opened once before the pages start: a store that does not open (another
        # branch's backup copied in to be restored, a damaged or newer store) left this
        # process up with no node, /login a 500 and the reason in a traceback.
        Ledger.open(args.data).close()
    except (LedgerError, RemoteProtocolError) as e:
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
    ui.run(host=served.host, port=served.port, reload=False, show=False, title="crdtledger",
           language="zh-CN", favicon="💳", show_welcome_message=True,
           storage_secret=args.storage_secret or storage_secret(args.data),
           # Over HTTPS the cookie is sent back over HTTPS only (Secure).
           session_middleware_kwargs={"session_cookie": session_cookie(identity.node,
                                                                        served.port),
                                      "https_only": served.cert is not None},
           ssl_certfile=None if served.cert is None else str(served.cert),
           ssl_keyfile=None if served.key is None else str(served.key))
    return 0
