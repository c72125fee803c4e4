"""`crdtledger`: one node's ledger at the shell, for a shop owner and for scripts.

Each invocation opens the node's store, does one thing and closes it. An operation
is reported done only after the store committed it, so the command may be killed
at any moment and whatever it printed as done survives. While a node runs, the
store is the node's: the command sends the operation's name and parameters to it
(peer/local.py), and the node runs the same operation.

Exit codes: 0 done; 1 refused (by the ledger, or a damaged or foreign sync file);
2 usage error (argparse). A refusal is one line on stderr; with --json it is also
``{"error": code, "message": ...}`` on stdout, so scripts read one stream.

The subcommands that work on the ledger are generated from the operation table
(`crdtledger.operations.TABLE`), which the HTTP API is generated from too: an
operation "points.redeem" is `crdtledger points redeem`, each parameter an option.
What is not a ledger operation stays here: creating a node, the chain's
certificates, running the node, its status, and sync files and backups (files on
this machine, which the HTTP API must not reach).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import sqlite3
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crdtledger import __version__, audit, localtime, operations, peerclock, platform, views
from crdtledger.backups import (
    BACKUP_FILE,
    DB_FILE,
    RESTORE_DAMAGED,
    restore,
    store_damage,
    write_backup,
)
from crdtledger.errors import InvalidInput, LedgerError, PermissionDenied, RemoteProtocolError
from crdtledger.inputs import json_value, printable, typed_half_width
from crdtledger.ledger import Ledger
from crdtledger.money import format_purses
from crdtledger.operations import TABLE, Operation, Param
from crdtledger.schema import Schema
from crdtledger.schema import check as check_schema
from crdtledger.sync import PROTOCOL_VERSION
from crdtledger.syncfile import export_file, import_file
from peer import local, progress, receipts, service, webcert
from peer.chain import (
    CA_CERT,
    NODE_CERT,
    enrol,
    ever_issued,
    first_enrolled_ms,
    head_office_mark,
    init_chain,
    issued_to,
    load_chain,
    publish_crl,
    revocations_rule,
    revoke,
)
from peer.files import csv_text
from peer.local import Running

if TYPE_CHECKING:
    from peer.node import Config, Node

PROG = "crdtledger"
ENV_DATA = "CRDTLEDGER_DATA"
ENV_PASSWORD = "CRDTLEDGER_PASSWORD"
EXIT_REFUSED = 1  # argparse owns 2 for usage errors
# A store `status` reads whole for damage unasked: about 5 s (`--check` for any size).
CHECK_UNASKED_BYTES = 256 * 2**20


@dataclass(frozen=True)
class Result:
    data: Any  # printed as JSON with --json
    text: str  # printed for a person otherwise


# --- sync files and backups: files on this machine, not ledger operations ------------

Params = dict[str, Any]


@dataclass(frozen=True)
class FileCommand:
    name: str
    help: str
    add: Callable[[argparse.ArgumentParser], None]  # its options; dests are parameter names
    handler: Callable[[Ledger, str, Params], Result]
    write: bool


def _export(ledger: Ledger, operator: str, p: Params) -> Result:
    info = export_file(ledger, Path(p["out"]), p.get("for_node"), operator=operator,
                       progress=progress.line)
    return Result(info, f"wrote {info['file']}: {info['documents']} documents, "
                        f"{info['bytes']} bytes")


def _import(ledger: Ledger, operator: str, p: Params) -> Result:
    before = {(f["node"], f["kind"], f["seq"]) for f in ledger.faults()}
    info = import_file(ledger, Path(p["file"]), operator=operator, progress=progress.line)
    n = len(info["changed"])
    changed = f"{n} document{'s' if n != 1 else ''} changed" if n else "nothing new"
    text = f"imported {info['file']} from {info['from']}: {changed}"
    # What the file proved against a branch (a fork, a broken rule) is news the owner
    # must not miss among "nothing new": `status` keeps saying it after.
    for f in ledger.faults():
        if (f["node"], f["kind"], f["seq"]) not in before:
            text += (f"\nWARNING: the file shows that branch {f['node']} "
                     + ("forked its log (two histories)" if f["kind"] == "fork"
                        else f"broke write rule {f['rule']}")
                     + f" at record {f['seq']}: nothing more it writes is taken here "
                     "(crdtledger status)")
    if info.get("revoked"):
        text += (f"\nnote: records of {', '.join(info['revoked'])} in the file were not "
                 "taken: the chain revoked its certificate")
    if info.get("blocked"):
        text += (f"\nnote: records of {', '.join(info['blocked'])} in the file were kept, "
                 "not taken: blocked here for a proven fault (crdtledger status)")
    if info["incomplete"]:
        text += (f"\nwarning: this node lacks earlier changes that the file builds on "
                 f"({', '.join(info['incomplete'])}); ask {info['from']} for a full export "
                 f"(without --for)")
    return Result(info, text)


def _backup(ledger: Ledger, operator: str, p: Params) -> Result:
    # The store is read without naming an operator, so the permission is checked here.
    if "backup" not in ledger.permissions(operator):
        raise PermissionDenied(f"operator {operator} may not backup")
    path = write_backup(ledger.storage.dir, Path(p["out"]), progress.line)
    enrolled = (ledger.storage.dir / "tls" / "node.crt").exists()
    how = ("signed, and encrypted for this chain's branches" if enrolled else
           "signed, but readable by anyone who has it: this node has no chain certificate")
    return Result({"backup": str(path), "encrypted": enrolled},
                  f"backup written to {path} ({how}); restore it with `{PROG} restore "
                  f"--from {path} --data DIR" + (" --chain CHAIN_DIR`" if enrolled else "`"))


def _export_analytics(ledger: Ledger, operator: str, p: Params) -> Result:
    """Parquet files for head office's tools (crdtledger.analytics): members'
    attributes anonymised, so `reports.view` is enough."""
    from crdtledger import analytics

    ledger.authorise(operator, "reports.view")
    info = analytics.export(ledger, Path(p["out"]), progress=progress.line)
    months = info["months_written"]
    text = (f"{info['out']}: {info['entries']} entries in {len(months) + info['months_unchanged']}"
            f" months, {info['members']} members; "
            + (f"written {info['entries_written']} entries of {', '.join(months)}" if months
               else "no month changed since the last export")
            + (f"; the cost of {info['goods_costs_left_out']} goods sales left out (too large "
               "to hold)" if info.get("goods_costs_left_out") else "")
            + (f"; written again, not the files the last export wrote (edited or damaged): "
               f"{', '.join(info['repaired'])}" if info.get("repaired") else "")
            + (f"; removed, no files of this export's: {', '.join(info['removed'])}"
               if info.get("removed") else ""))
    return Result(info, text)


def _receipt(ledger: Ledger, operator: str, p: Params) -> Result:
    """A ledger entry's receipt as data and text (peer/receipts.py); the printing is
    done by the command itself, in its own process: see `receipt_command`."""
    receipts.authorise(ledger, operator)
    config = receipts.load_config(ledger.storage.dir)
    receipt = receipts.build(ledger, p["entry"], title=config.title if config else "")
    width = config.columns if config else receipts.COLUMNS[58]
    return Result(receipt.as_dict(), receipts.text(receipt, width))


def _receipt_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=("print", "show"),
                   help="print: on this PC's receipt printer (a reprint); show: as text")
    p.add_argument("--entry", required=True, metavar="ID", help="the ledger entry's id")


def _export_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, type=Path, metavar="FILE")
    p.add_argument("--for", dest="for_node", metavar="NODE",
                   help="only what NODE lacks, as last seen")


def _import_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", type=Path)


def _backup_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, type=Path, metavar="DIR")


FILE_COMMANDS: dict[str, FileCommand] = {c.name: c for c in (
    FileCommand("export", "write a sync file for another branch (USB stick, e-mail)",
                _export_options, _export, True),
    FileCommand("import", "apply a sync file; importing it again changes nothing",
                _import_options, _import, True),
    FileCommand("backup", "a consistent copy of the node, taken while it keeps working",
                _backup_options, _backup, False),
    FileCommand("receipt", "a sale's receipt again: print it (a reprint) or show it",
                _receipt_options, _receipt, False),
    FileCommand("export-analytics", "entries, goods sales and anonymised members as "
                "Parquet files for head office's tools (DuckDB, ClickHouse); run again, "
                "it rewrites only the months that changed (docs/format.md)",
                _backup_options, _export_analytics, False),
)}
_FILE_PARAMS = ("out", "for_node", "file")
# The refusals of these are kept (audit.note_file_refusal) under these names.
_KEPT_AS = {"export": audit.SYNC_EXPORT, "import": audit.SYNC_IMPORT, "backup": audit.BACKUP,
            "export-analytics": audit.ANALYTICS_EXPORT}
# Long reads done in the command's own process even while a node holds the store: the
# node would run them on its event loop, and an export of a year stalls its tills.
# They only read (an open without the lock takes no write lock either: WAL readers),
# from one read transaction, so they see one consistent state of the store.
READ_HERE = frozenset({"export-analytics"})


# --- the operation table as subcommands --------------------------------------------


def key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected key=value, not {text!r}")
    return key.strip(), value


def _flag(p: Param) -> str:
    return p.flag or f"--{p.name.replace('_', '-')}"


def _dest(p: Param) -> str:
    return f"p_{p.name}"  # apart from the common options (--operator, --json, --data)


def add_operation(leaf: argparse.ArgumentParser, op: Operation) -> None:
    """One option per parameter a person types; alternatives as exclusive groups."""
    owner: dict[str, Any] = {}
    required = {p.name for p in op.params if p.required}
    for form in op.forms:
        typed = [k for k in form.keys if op.param(k).flag is not None]
        if len(typed) == 1 and not form.optional:
            required.add(typed[0])  # the other form is integer fen, for programs
        elif len(typed) > 1:
            group = leaf.add_mutually_exclusive_group(required=not form.optional)
            owner |= {k: group for k in typed}
    for p in op.params:
        if p.flag is None:
            continue
        target = owner.get(p.name, leaf)
        if p.name == "approver":  # an object of two fields: two options
            target.add_argument("--approver", dest="p_approver_name", metavar="NAME",
                                help=p.help)
            target.add_argument("--approver-password", dest="p_approver_password",
                                metavar="PW")
            continue
        kwargs: dict[str, Any] = {"help": p.help or p.schema.get("description")}
        kind = p.schema.get("type")
        if p.switch:
            kwargs |= {"action": "store_true", "default": None}
        elif kind == "array":
            kwargs |= {"action": "append"}
            if "enum" in p.schema["items"]:
                kwargs["choices"] = p.schema["items"]["enum"]
        elif kind == "object":
            kwargs |= {"action": "append", "type": key_value, "metavar": "KEY=VALUE"}
        elif "enum" in p.schema:
            kwargs["choices"] = p.schema["enum"]
        elif p.name.endswith("yuan"):
            kwargs["metavar"] = "YUAN"
        else:
            kwargs["metavar"] = p.name.upper()
        if not p.flag or p.flag.startswith("-"):
            target.add_argument(_flag(p), dest=_dest(p), required=p.name in required and
                                target is leaf, **kwargs)
        else:  # positional: its name is its dest
            kwargs.setdefault("metavar", p.flag if "choices" not in kwargs else None)
            target.add_argument(_dest(p), **kwargs)


def _value(schema: Schema, raw: Any, flag: str) -> Any:
    """What a person typed, as the parameter's JSON type. Text that does not convert
    is passed on as typed, for the operation to refuse with its own code."""
    kind = schema.get("type")
    if isinstance(raw, list) and kind == "array":
        return [_value(schema["items"], x, flag) for x in raw]
    if isinstance(raw, list) and kind == "object":
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        return {k: _value(props.get(k) or (extra if isinstance(extra, dict) else {}), v, flag)
                for k, v in raw}
    if not isinstance(raw, str):
        return raw
    if kind == "integer" and re.fullmatch(r"[+-]?[0-9]{1,18}", raw.strip()):
        return int(raw)
    if kind == "boolean":
        return {"true": True, "yes": True, "false": False, "no": False}.get(raw.lower(), raw)
    if kind is None:  # any JSON, e.g. a rule's body
        return json_value(raw, flag)
    return raw


def params_of(op: Operation, args: argparse.Namespace) -> Params:
    out: Params = {}
    for p in op.params:
        if p.name == "approver":
            name, password = getattr(args, "p_approver_name", None), getattr(
                args, "p_approver_password", None)
            if name is not None and password is None:
                raise InvalidInput("--approver needs --approver-password")
            if name is not None:
                out["approver"] = {"name": name, "password": password}
            continue
        raw = getattr(args, _dest(p), None)
        if p.flag is not None and raw is not None:
            out[p.name] = _value(p.schema, raw, _flag(p))
    return out


# The library's own checks of a text (inputs.check_text, outbox.broadcast), naming it
# by the field: past the schema, so the loop below never found them.
_LIBRARY_TEXT = re.compile(r"([a-z_]+) (is required|must be text|contains characters that "
                           r"are not text|is longer than [0-9]+ characters)")


def as_typed(args: argparse.Namespace, message: str) -> str:
    """A refusal of one parameter's value, naming the parameter as the person typed it.
    The library names it as the API does ("yuan must be a yuan amount ...",
    "change_text ...", "debit_id ..."), and what was typed is `--amount`, `--change`,
    `--debit`. Only the sentence the parameter's own check makes is said again, found
    by making it (the same whether the node or this process refused): "unknown member
    X" is the ledger's, and stays. A value typed in full-width characters ("１２", an
    input method's) that would fit typed half-width says how to type it, as
    money.parse_yuan says it: the shape check refused it before that was said. An
    integer option's too (`--limit １`: only ASCII digits are converted)."""
    cmd = getattr(args, "cmd", None)
    if not isinstance(cmd, Operation):
        return message
    try:
        params = params_of(cmd, args)
    except LedgerError:
        return message
    said = _LIBRARY_TEXT.fullmatch(message)
    for p in cmd.params:
        value = params.get(p.name)
        if p.flag is None or value is None or isinstance(value, dict | list):
            continue  # an object's or a list's parts are named by their keys
        if said and said[1] == p.name:  # "gift is required": --gift was typed blank
            return f"{_flag(p)} {said[2]}"
        try:
            check_schema(value, p.schema, p.name)
            continue
        except LedgerError as e:
            if str(e) != message:
                continue
        typed = _flag(p)
        half = typed_half_width(value, p.schema)  # never a PIN's
        if half is not None:
            return (f"{typed} {value!r} is typed in full-width characters: type it as "
                    f"{half} (half-width)")
        try:
            check_schema(value, p.schema, typed)
        except LedgerError as e:
            return str(e)
    return message


def request_of(args: argparse.Namespace) -> tuple[str, Params]:
    """The operation the command line asks for, and its parameters."""
    cmd: Operation | FileCommand = args.cmd
    if isinstance(cmd, FileCommand):
        # Absolute: a running node resolves them, and its working directory is not ours.
        return cmd.name, {k: str(Path(v).absolute()) if isinstance(v, Path) else v
                          for k in _FILE_PARAMS if (v := getattr(args, k, None)) is not None}
    return cmd.name, params_of(cmd, args)


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
    renew.add_argument("--head-office", action="store_true",
                       help="mark the new certificate as the head office's (kept anyway if "
                       "any certificate the chain issued to the node had the mark)")
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

    st = top.add_parser("status", help="this node's peers: connected, last contact, lag; "
                        "whether the store is damaged")
    st.add_argument("--check", action="store_true",
                    help="read the whole store for damage however large it is (about 20 s "
                         "a GB; a store under 256 MB is read unasked), and its documents "
                         "against its tables (a running node's: it pauses its tills "
                         "for about 2 s per 100k entries)")
    add_common(st, operator=False, password=False)

    hc = top.add_parser("https-cert", help="the counter's HTTPS certificate, from the chain's "
                        "CA (at the head office), for `--https` on the LAN",
                        description="Make DATA/tls/https.crt for the node in DATA, signed by "
                        "the chain's CA and naming each --host (and localhost, 127.0.0.1). "
                        "Example: crdtledger https-cert --chain hq/chain --data sh02 "
                        "--host 192.168.1.20 --host till2.local")
    hc.add_argument("--chain", required=True, type=Path, metavar="CHAIN_DIR")
    hc.add_argument("--host", action="append", required=True, metavar="NAME_OR_IP",
                    help="a name or LAN address tills and tablets open the counter by "
                    "(repeatable)")
    add_common(hc, operator=False, password=False)


def add_node_options(p: argparse.ArgumentParser) -> None:
    """The daemon's flags (read by `node_config`); the counter app takes the same."""
    p.add_argument("--listen", metavar="HOST:PORT",
                   help="sync endpoint, mutual TLS (default 0.0.0.0:8470)")
    p.add_argument("--api", metavar="HOST:PORT",
                   help="HTTP API, /metrics and /health (default 127.0.0.1:8480)")
    p.add_argument("--peer", action="append", default=[], metavar="wss://HOST:PORT",
                   help="a node to dial (repeatable); shops behind NAT dial out")
    p.add_argument("--no-mdns", action="store_true", help="no LAN discovery")


class _StoreOnce(argparse._StoreAction):
    """An option of one value given twice at one place of the command line is refused:
    argparse keeps the last, and `topup --amount 1.00 --amount 500.00` topped up 500.00
    where the person (or the script's log) read 1.00. (The options `add_common` takes
    before and after the command are two places: the one after wins, as said there.)"""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        held = getattr(namespace, self.dest, self.default)
        if held is not self.default and held != self.default:
            parser.error(f"{option_string} is given twice: give it once")
        super().__call__(parser, namespace, values, option_string)


class _Parser(argparse.ArgumentParser):
    """Every parser of the command line (its subcommands' too: argparse makes them of
    the parent's class), with options of one value given once."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.register("action", None, _StoreOnce)
        self.register("action", "store", _StoreOnce)


def build_parser() -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = _Parser(
        prog=PROG, description="Member and stored-value ledger of one branch node.")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__} "
                        f"(sync protocol {PROTOCOL_VERSION})")
    add_common(parser)
    top = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    init = top.add_parser("init", help="create a node in an empty data directory")
    add_common(init, operator=False, password=False)
    init.add_argument("--node", required=True, help="this branch's node id, e.g. SH01")
    init.add_argument("--chain", default="default", metavar="CHAIN_DIR",
                      help="the chain directory from `chain init` (gives the node its "
                      "certificate), or just a chain name for a node that syncs by files")
    init.add_argument("--timezone", default="Asia/Shanghai")
    init.add_argument("--head-office", action="store_true",
                      help="this node is the head office: it alone may change operators, "
                      "roles, rules, prices and revocations (needs a chain directory)")
    res = top.add_parser("restore", help="make a data directory the node a backup holds",
                         description="make a data directory the node a backup holds; a "
                         "store already there is kept aside, not deleted")
    add_common(res, operator=False, password=False)
    res.add_argument("--from", dest="source", type=Path, metavar="BACKUP",
                     help="a ledger.backup file, or the directory `backup --out` wrote")
    res.add_argument("--sell-now", action="store_true",
                     help="on a node restored already: sell without waiting for a branch "
                     "to show it has caught up with itself (when the branches it knows "
                     "cannot be reached). The owner's risk: what it wrote after the "
                     "backup that has not come back is written again, the same money "
                     "served twice until the branches see the fork and block it")
    res.add_argument("--chain", type=Path, metavar="CHAIN_DIR",
                     help="the chain directory, to open the backup where the node's own "
                     "keys are gone (a new or emptied data directory)")

    add_node_commands(top)
    service.add_service_commands(top, add_common)
    printer = top.add_parser("printer", help="this PC's receipt printer (ESC/POS): set, "
                             "show, test, off")
    add_common(printer, operator=False, password=False)
    receipts.printer_options(printer)
    groups: dict[str, argparse._SubParsersAction[argparse.ArgumentParser]] = {}
    for op in TABLE.values():
        *group, leaf_name = op.name.split(".")
        owner = top
        if group:
            if group[0] not in groups:
                gp = top.add_parser(group[0], help=f"{group[0]} commands")
                groups[group[0]] = gp.add_subparsers(dest="action", metavar="ACTION",
                                                     required=True)
            owner = groups[group[0]]
        help = op.summary[:1].lower() + op.summary[1:]
        leaf = owner.add_parser(leaf_name, help=help, description=op.summary,
                                epilog=op.more or None,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
        # An operation with a password of its own (a new operator's), or an operator of
        # its own (the audit trail's filter), takes the acting operator's before the
        # command (and the password from the environment).
        flags = {_flag(p) for p in op.params}
        add_common(leaf, operator="--operator" not in flags, password="--password" not in flags)
        add_operation(leaf, op)
        if op.table is not None:
            leaf.add_argument("--csv", action="store_true",
                              help="the result as CSV (amounts in yuan), for a spreadsheet")
        leaf.set_defaults(cmd=op)
    for cmd in FILE_COMMANDS.values():
        leaf = top.add_parser(cmd.name, help=cmd.help, description=cmd.help)
        add_common(leaf)
        cmd.add(leaf)
        leaf.set_defaults(cmd=cmd)
    return parser


# --- running a command --------------------------------------------------------


def emit(args: argparse.Namespace, result: Result) -> None:
    cmd = getattr(args, "cmd", None)
    if getattr(args, "csv", False) and isinstance(cmd, Operation) and cmd.table is not None:
        # Names and reasons come from other branches' records too: a liar's ESC [2J
        # cleared the owner's terminal through `audit --csv`.
        # `audit --refused` with none to list: the refused attempts' header, not the
        # trail's (a table is told its rows only, and no row says which it is).
        table = (audit.refused_table(result.data) if getattr(args, "p_refused", None)
                 else cmd.table(result.data))
        sys.stdout.write(printable(csv_text(table)))
    elif getattr(args, "json", False):
        print(_json_text(result.data))
    elif result.text:
        # Names and notes come from other branches' records too: shown, never obeyed.
        print(printable(result.text))


def _json_text(data: Any) -> str:
    """JSON for a terminal or a pipe: the C1 controls (U+0080-U+009F, which JSON leaves
    as they are) escaped as JSON escapes them, so a terminal obeys none. An output that
    cannot show the text (a pipe of another encoding: PYTHONIOENCODING, a Windows code
    page) gets it all as JSON escapes: a refusal holding Chinese was a traceback there,
    and the escapes the output would make of an emoji (\\U0001f600) are no JSON."""
    text = re.sub("[\x7f-\x9f]", lambda m: f"\\u{ord(m.group()):04x}",
                  json.dumps(data, ensure_ascii=False, sort_keys=True))
    encoding = (sys.stdout.encoding or "utf-8").lower().replace("_", "-")
    if encoding not in ("utf-8", "utf8"):  # UTF-8 shows all the text a value may hold
        try:
            text.encode(encoding)
        except (UnicodeEncodeError, LookupError):
            return json.dumps(data, ensure_ascii=True, sort_keys=True)
    return text


def refuse(args: argparse.Namespace, code: str, message: str) -> int:
    message = printable(" ".join(message.split()))  # one line, whatever it carried
    if getattr(args, "json", False):
        print(_json_text({"error": code, "message": message}))
    print(f"{PROG}: {message}", file=sys.stderr)
    return EXIT_REFUSED


class Refused(LedgerError):
    """A refusal the running node reported for a routed command, with its code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def execute(ledger: Ledger, name: str, params: Params, operator: str | None = None,
            password: str | None = None, *, verified: str | None = None) -> Result:
    """Run an operation (or a file command) against an open ledger: here, or inside a
    running node. `operator` None is the node's owner at its own console; `verified`
    is the operator id when the caller checked the password already (a node does, off
    its event loop)."""
    if verified is not None:
        who = verified
    elif operator is None:
        who = ledger.owner
    else:
        try:
            who = ledger.authenticate(operator, password or "")
        except PermissionDenied as e:
            audit.note_failed_login(ledger, operator, "", "login_failed", str(e),
                                    audit.AT_COMMAND_LINE)
            raise
    try:
        if name in FILE_COMMANDS:
            try:
                return FILE_COMMANDS[name].handler(ledger, who, params)
            except (LedgerError, RemoteProtocolError) as e:
                # Kept as operations.run keeps an operation's (a cashier's `export` of
                # every member's data, a stranger's file imported): by the file named.
                # A file to import that is not there (a path mistyped) is nobody's.
                file = str(params.get("file") or params.get("out") or "")
                if name in _KEPT_AS and (name != "import" or os.path.lexists(file)):
                    audit.note_file_refusal(ledger, who, _KEPT_AS[name], e, file)
                raise
        data = operations.run(ledger, who, name, params)
        return Result(data, operations.show(ledger, name, data, params))
    except PermissionDenied as e:
        if operator is None:
            raise
        # The library names operators by id; the person at the shell knows the name.
        raise type(e)(operations.describe(e, {who: operator}).sentence) from None


def routed(node: Running, args: argparse.Namespace, name: str, params: Params) -> Result:
    """Hand the operation to the node that holds the directory (peer/local.py)."""
    # Whether it may change the store: a read the node does not answer says nothing
    # was written, a write that it may still be done.
    op = FILE_COMMANDS.get(name) or operations.TABLE.get(name)
    writes = op is None or op.write
    with progress.waiting(name) if name in FILE_COMMANDS else contextlib.nullcontext():
        reply = local.call(node, "/op", {"op": name, "params": params,
                                         "operator": args.operator,
                                         "password": args.auth_password}, writes=writes)
    if "error" in reply:
        raise Refused(str(reply["error"]), str(reply.get("message", "")))
    return Result(reply["data"], str(reply["text"]))


def init_node(args: argparse.Namespace, data_dir: Path) -> Result:
    chain_dir = Path(args.chain)
    if (chain_dir / CA_CERT).exists():
        # A chain directory from `chain init`: the node gets a certificate and can run.
        chain = load_chain(chain_dir)
        if ever_issued(chain_dir, args.node):
            # A second store under that id writes its own first records: a fork, and
            # it is blocked at every branch that held the first one's log; revoked or
            # not, the log under that id is written (advising "revoke it first" made
            # exactly that fork).
            raise InvalidInput(
                f"chain {chain.name} has had a node {args.node} (a certificate was issued "
                f"to it, revoked or not): restore that branch from its backup (crdtledger "
                "restore), or enrol this PC under a new node id; a new store under an id "
                "already used forks its log and the chain takes nothing it writes")
        before = set(data_dir.iterdir()) if data_dir.is_dir() else None
        mode = data_dir.stat().st_mode & 0o7777 if before is not None else None
        try:
            Ledger.create(data_dir, args.node, chain.name, args.timezone)
            enrol(chain_dir, data_dir, args.node, head_office=args.head_office)
        except BaseException:
            # A refused enrolment (a chain copy without the CA's key, ...) leaves no
            # half-made node behind: the store alone would work as one without a
            # certificate, and the directory would refuse the next `init`. A
            # directory that was there gets its mode back (it was left 0700).
            _undo(data_dir, before)
            if mode is not None:
                with contextlib.suppress(OSError):
                    data_dir.chmod(mode)
            raise
        name, how = chain.name, f" with a certificate of chain {chain.name} ({chain.short})"
        if args.head_office:
            how += ", as the head office"
    elif "/" in args.chain or chain_dir.is_dir():
        raise InvalidInput(f"{chain_dir} is not a chain directory: create one with "
                           f"`{PROG} chain init --out {chain_dir}`")
    elif args.head_office:
        raise InvalidInput("--head-office needs a chain directory (--chain CHAIN_DIR): "
                           "without a chain CA every node may change the chain's rules")
    else:
        # Just a name: a node that syncs by files only (no certificate, cannot run).
        Ledger.create(data_dir, args.node, args.chain, args.timezone)
        name, how = args.chain, " (sync files only: no certificate)"
    return Result({"node": args.node, "chain": name, "data": str(data_dir)},
                  f"node {args.node} of chain {name} created in {data_dir}{how}")


def _undo(data_dir: Path, before: set[Path] | None) -> None:
    """Remove what was made in `data_dir` since `before` (its entries then; None: it
    did not exist)."""
    if before is None:
        shutil.rmtree(data_dir, ignore_errors=True)
        return
    for path in set(data_dir.iterdir()) - before:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def restore_node(args: argparse.Namespace, data_dir: Path) -> Result:
    """`crdtledger restore`: never while a node serves the directory."""
    node = local.running(data_dir)
    if node is not None:
        raise InvalidInput(f"a node is running on {data_dir}: stop it before restoring")
    if args.sell_now:
        if args.source is not None:
            raise InvalidInput("--sell-now ends the wait of a node restored already: "
                               "restore first (--from), then decide")
        with Ledger.open(data_dir) as ledger:
            if ledger.restored is None and not ledger.storage.meta.get("another_pc"):
                raise InvalidInput(f"{data_dir} is not waiting to catch up: it sells already")
            ledger.waive_catch_up()
        return Result({"node": ledger.node, "selling": True},
                      f"node {ledger.node} sells again on the owner's word, without a "
                      "branch that showed it caught up with itself")
    if args.source is None:
        raise InvalidInput("give the backup to restore: --from BACKUP")
    info = restore(args.source, data_dir, chain_dir=args.chain, progress=progress.line)
    text = (f"restored node {info['node']} from the backup of {info['taken_at']}; it will "
            "catch up with the chain before it sells")
    if info["kept"]:
        text += f"\nthe store it replaced is kept as {info['kept']}"
    return Result(info, text)


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
        return renew_certificate(args.chain, data_dir, head_office=args.head_office)
    node = local.running(data_dir)
    show = ("rule.show", {"kind": "revocations"})
    # What it still holds of members' value, as this store sees it: stranded once it
    # is revoked (only a branch lowers its own rights), unless it handed them over.
    # Read first, and only said: an operator who may not read reports revokes alike.
    held = ("rights.held", {"node": args.node})
    stranded: dict[str, Any] = {"held": {}}
    if node is not None:
        own = node.node
    else:
        with Ledger.open(data_dir, lock=False) as ledger:
            own = ledger.node
    if args.node == own:
        # Its own id typed for another's: it went on selling, every other branch
        # refused it from then on, and its members' balances differed for good.
        raise InvalidInput(f"{own} is the node of {data_dir}: a node does not revoke "
                           "itself. Revoke it from the head office's data directory (or "
                           "another branch's) once it has handed its members' rights over")
    if node is not None:
        current = routed(node, args, *show).data
        with contextlib.suppress(Refused):
            stranded = routed(node, args, *held).data
    else:
        with Ledger.open(data_dir, lock=False) as ledger:
            current = execute(ledger, *show, args.operator, args.auth_password).data
            with contextlib.suppress(LedgerError):
                stranded = execute(ledger, *held, args.operator, args.auth_password).data
    # Published in the chain directory only once the ledger took it: a cashier's
    # refused revocation wrote the list there first, so a second machine could then
    # be enrolled under the id still in service, and the owner's next revocation
    # carried it to every branch.
    crl = revoke(args.chain, args.node, existing_crl=current.get("crl") or None,
                 publish=False)
    change = ("rule.set", {"kind": "revocations", "body": revocations_rule(crl)})
    if node is not None:
        routed(node, args, *change)
    else:
        with Ledger.open(data_dir) as ledger:
            execute(ledger, *change, args.operator, args.auth_password)
    publish_crl(args.chain, crl)
    text = (f"certificates of {args.node} revoked; every node refuses it once the "
            "revocation list reaches it")
    if stranded["held"]:
        text += (f"\nwarning: as this branch sees it, {args.node} still holds the rights of "
                 f"{stranded['members']} member(s) ({format_purses(stranded['held'])})"
                 ": nobody can spend them now. A shop closing for good hands them over "
                 "before it is revoked: at that branch, crdtledger rights handover --to "
                 "ANOTHER_BRANCH")
    return Result({"revoked": args.node, "crl_bytes": len(crl), "stranded": stranded}, text)


def renew_certificate(chain_dir: Path, data_dir: Path, *, head_office: bool = False) -> Result:
    """Enrol the node again; the old key and certificate are kept aside, not deleted."""
    with Ledger.open(data_dir, lock=False) as ledger:
        node_id, chain_name = ledger.node, ledger.chain
        written = views.first_written_ms(ledger)
    if load_chain(chain_dir).name != chain_name:
        raise InvalidInput(f"{data_dir} belongs to chain {chain_name}, not to {chain_dir}")
    tls = data_dir / "tls"
    # The new certificate keeps the head-office mark of any the chain issued the node
    # (one renewed by an older build lost it): without it the head office could no
    # longer govern, and a branch joining later judged its governance records by the
    # renewed certificate and blocked it for good. --head-office gives it (an `init`
    # that forgot it, the id now taken for good).
    head_office = head_office or any(
        head_office_mark(p) for p in [tls / NODE_CERT, *issued_to(chain_dir, node_id)])
    # It keeps the node's first enrolment too (none of its records is dated before it:
    # write rule `enrolled`), as the chain's copies and its own records say.
    since = min((t for t in (first_enrolled_ms([tls / NODE_CERT, *issued_to(chain_dir,
                                                                              node_id)]),
                             written) if t is not None), default=None)
    kept = None
    if tls.exists():
        kept = data_dir / f"tls.replaced-{datetime.now():%Y%m%d-%H%M%S-%f}"  # twice a second too
        tls.rename(kept)
    try:
        enrol(chain_dir, data_dir, node_id, head_office=head_office, enrolled_ms=since)
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
    try:
        size = (data_dir / DB_FILE).stat().st_size
    except OSError:  # no store: opening it says so, with what to do
        size = 0
    checked = args.check or size <= CHECK_UNASKED_BYTES
    if node is None:
        try:
            with Ledger.open(data_dir, lock=False) as ledger:
                data = {"node": ledger.node, "chain": ledger.chain, "running": False,
                        "timezone": localtime.zone(ledger).key, **views.trust_status(ledger),
                        "peers": [{"node": n, "connected": False,
                                   "last_contact": (s or 0) / 1000,
                                   "behind_in": None, "behind_out": None}
                                  for n, s in views.peers_seen(ledger).items()]}
                # Rows deleted by hand: only a stopped store's documents are read here
                # (a running node's are its own, in its process).
                if checked:
                    data["store_unprojected"] = {
                        t: len(keys) for t, keys in audit.unprojected(ledger).items()}
        except sqlite3.DatabaseError as unopened:
            # Too damaged to open: said as damaged, with what to do, as one that opens.
            try:
                found = store_damage(data_dir)
            except sqlite3.DatabaseError:
                found = None
            if found is None:
                raise unopened
            return Result({"running": False, "store_checked": True, "store_damaged": found},
                          f"the store in {data_dir} cannot be opened: "
                          + _damaged_line(found))
    else:
        # Its documents are in its process: it reads them against its tables itself,
        # asked only (seconds per 100k entries during which its tills wait).
        data = {**local.call(node, "/status?check=1" if args.check else "/status"),
                "running": True}
    # A torn page or a file put back beside another's log: the node may go on selling
    # from the pages it reads while each night's backup is refused.
    data["store_checked"] = checked
    data["store_damaged"] = None
    if data["store_checked"]:
        try:
            data["store_damaged"] = store_damage(data_dir)
        except sqlite3.DatabaseError:  # not read for the check (busy, permissions):
            data["store_checked"] = False  # said as not checked, never as damaged
    # Times as the branch reads them (the chain's time-zone rule), the zone said once.
    tz = str(data.get("timezone") or "")
    lines = [f"node {data['node']} of chain {data['chain']}: "
             + ("running" if data["running"] else "not running")
             + (f" (times in {tz})" if tz else "")]
    for p in data["peers"]:
        seen = (localtime.show(p["last_contact"], tz) if p.get("last_contact") else "never")
        lag = ("" if p.get("behind_in") is None else
               f"  we lack {p['behind_in']} ops, it lacks {p['behind_out']}")
        state = "connected" if p["connected"] else "not connected"
        lines.append(f"  {p['node']:<8} {state:<14} last contact {seen}{lag}")
    if not data["peers"]:
        lines.append("  no peers known yet")
    if data.get("revoked"):
        lines.append(f"REVOKED: the chain revoked {data['node']}'s certificate: this PC "
                     "writes nothing more (the owner enrols a PC under a new node id, or "
                     "renews this one: crdtledger chain renew)")
    ends = data.get("certificate_expires")
    if ends is not None and ends - time.time() * 1000 < views.CERT_WARN_MS:
        when = localtime.show(ends / 1000, tz)
        lines.append(f"CERTIFICATE of {data['node']} "
                     + ("ENDED" if ends <= time.time() * 1000 else "ends")
                     + f" {when}: past it every branch refuses what this one writes; "
                     "renew it at the PC holding the chain's ca.key (crdtledger chain renew "
                     "--chain CHAIN_DIR --data DIR), then carry the directory back")
    if data.get("restored"):
        lines.append(f"RESTORED from a backup of {data['restored']}: not selling until it "
                     "has caught up with another branch")
    # One copied in to be restored: refused, it stops the node from starting, and
    # `status` said only "not running".
    pending = data_dir / BACKUP_FILE
    data["backup_waiting"] = str(pending) if pending.is_file() else None
    if data["backup_waiting"]:
        lines.append(f"BACKUP waiting: {pending} is restored when the node next starts, "
                     "which it does not if the backup is refused (another branch's, or older "
                     f"than this store): move it out of {data_dir} to start the store as it is")
    if data.get("another_pc"):
        said = str(data["another_pc"]).removeprefix(f"another PC sells as branch {data['node']}: ")
        lines.append(f"ANOTHER PC sells as {data['node']}: {said}")
    for f in data.get("faults") or []:
        lines.append(f"BLOCKED {f['node']}: {f['detail']}")
    differs = data.get("closing_differs")
    if differs:
        lines.append(f"BOOKS of {differs['month']} signed otherwise by "
                     f"{', '.join(differs['branches'])}: a fork, or records that reached "
                     "one side late (crdtledger report books)")
    for p in data["peers"]:
        if p.get("incompatible"):
            lines.append(f"CANNOT SYNC with {p['node']}: {p['incompatible']}")
    for node, n in (data.get("rights_refused") or {}).items():
        lines.append(f"RIGHTS REQUESTS of {node} refused: {n}, for asking faster than a "
                     "branch sells (members' rights taken this way stay at that branch)")
    for node, u in (data.get("unfunded") or {}).items():
        n = u["entries"]
        lines.append(f"UNFUNDED: {n} {'entry' if n == 1 else 'entries'} of {node} "
                     f"{'waits' if n == 1 else 'wait'} here for rights it "
                     f"never held, since {localtime.show(u['since'] / 1000, tz)}: it sold "
                     "money or goods it does not have (a store edited by hand, or a "
                     "dishonest branch); nothing of them is counted")
    clock = peerclock.tell(data["clock"]) if data.get("clock") else None
    if clock:
        lines.append(f"CLOCK: {clock}")
    if data["store_damaged"]:
        lines.append(_damaged_line(data["store_damaged"]))
    missing = dict(data.get("store_unprojected") or {})
    unread = missing.pop("documents", 0)
    changed = {t.removesuffix(audit.CHANGED): missing.pop(t) for t in sorted(missing)
               if t.endswith(audit.CHANGED)}
    if changed:
        # Rights, totals and points lots are each member's sums or fold: said by member.
        told = ", ".join(f"{table} ({n} "
                         f"{'member' if table in ('rights', 'totals', 'points_lots') else 'row'}"
                         f"{'s' if n != 1 else ''})" for table, n in changed.items())
        lines.append(f"EDITED store: rows of its tables differ from its documents, changed by "
                     f"hand: {told}: reports, balances, points, levels, cards and refunds "
                     f"read them as changed. {RESTORE_DAMAGED}.")
    if unread:
        lines.append(f"EDITED store: {unread} of its documents do not decode (edited by hand, "
                     f"or damaged). {RESTORE_DAMAGED}.")
    if missing:
        one = {"entries": "entry", "members": "member", "cards": "card"}
        told = ", ".join(f"{n} {table if n != 1 else one.get(table, table)}"
                         for table, n in sorted(missing.items()))
        lines.append(f"EDITED store: its documents hold {told} its tables lack (rows "
                     "deleted by hand): reports, balances and refunds read without them. "
                     f"{RESTORE_DAMAGED}.")
    elif not data["store_checked"]:
        lines.append(f"store not checked for damage ({size // 2**20} MB): "
                     "crdtledger status --check reads it whole")
    elif "store_unprojected" not in data:
        lines.append("the node's documents not read against its tables (rows deleted by "
                     "hand): crdtledger status --check reads them, its tills waiting")
    return Result(data, "\n".join(lines))


def _damaged_line(found: str) -> str:
    return f"DAMAGED store ({found}): each backup is refused while it is. {RESTORE_DAMAGED}."


def receipt_command(args: argparse.Namespace, data_dir: Path) -> Result:
    """`crdtledger receipt print|show --entry ID`: the receipt read where the store is
    (the running node, else here), printed from this process, so a printer that is
    off never holds up the node's loop."""
    params = {"entry": args.entry}
    node = local.running(data_dir)
    if node is not None:
        shown = routed(node, args, "receipt", params)
    else:
        with Ledger.open(data_dir, lock=False) as ledger:
            shown = execute(ledger, "receipt", params, args.operator, args.auth_password)
    if args.action == "show":
        return shown
    config = receipts.load_config(data_dir)
    if config is None:
        raise receipts.PrinterError("no receipt printer is set on this PC: `crdtledger "
                                    "printer set --net HOST:9100 --width 58`")
    receipt = receipts.Receipt.from_dict(shown.data, reprint=True)
    done = receipts.print_receipt(config, receipt)
    if not done.printed:
        raise receipts.PrinterError(f"receipt not printed: {done.reason}")
    return Result({**done.as_dict(), "entry": receipt.entry},
                  f"receipt of {receipt.entry} printed on {done.printer}")


CONFIG_FILE = "node.toml"
# Its keys: the node's own, and the tables the counter ([counter], reference_app.app)
# and the notices' gateways ([notify], peer.gateways) read.
NODE_SETTINGS = frozenset({"listen", "api", "peers", "mdns", "counter", "notify"})


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
    except (UnicodeDecodeError, RecursionError):
        # Bytes that are not UTF-8, or arrays nested thousands deep, were a traceback
        # of the parser from `node run` and the counter alike.
        raise InvalidInput(f"{data_dir / CONFIG_FILE} is not a settings file: it is not "
                           "UTF-8 TOML (or nests too deep to read)") from None
    unknown = sorted(set(file) - NODE_SETTINGS)
    if unknown:
        # A misspelt key (`lisen`) was passed over without a word, and the node
        # listened where the owner had not said.
        raise InvalidInput(f"node settings: {data_dir / CONFIG_FILE}: unknown setting "
                           f"{', '.join(map(repr, unknown))}; it takes "
                           f"{', '.join(sorted(NODE_SETTINGS))}")
    try:
        listed = file.get("peers", [])
        if not isinstance(listed, list):
            raise ValueError(f"peers is a list of wss://HOST:PORT addresses, not {listed!r}")
        peers = [*listed, *args.peer]
        for p in peers:
            _check_peer_url(p)
        mdns = file.get("mdns", True)
        if not isinstance(mdns, bool):  # bool("false") is True
            raise ValueError(f"mdns is true or false, not {mdns!r}")
        for key in ("listen", "api"):
            # `listen = 8470` was said as "'int' object has no attribute 'rpartition'".
            if key in file and not isinstance(file[key], str):
                raise ValueError(f"{data_dir / CONFIG_FILE}: {key} is an address as text, "
                                 f"\"HOST:PORT\", not {str(file[key])[:40]}")
        return Config(data_dir,
                      listen=parse_address(args.listen or file.get("listen", "0.0.0.0"), 8470),
                      api=parse_address(args.api or file.get("api", "127.0.0.1"), 8480),
                      peers=list(dict.fromkeys(peers)),
                      mdns=not args.no_mdns and mdns)
    except (ValueError, AttributeError) as e:
        raise InvalidInput(f"node settings: {e}") from None


def _check_peer_url(url: object) -> None:
    """A peer's address as a dial takes it, wss://HOST:PORT and nothing more: one that
    can never be dialled (no host, a port past 65535, a path) was taken without a word
    and redialled for ever, its reason logged only at debug level."""
    from yarl import URL

    try:
        parsed = URL(url) if isinstance(url, str) else None
        # Only a port written out: wss://HOST alone dialled 443, not the sync port.
        port = parsed.explicit_port if parsed is not None else None
    except ValueError:
        parsed = port = None
    if (parsed is None or parsed.scheme != "wss" or not parsed.host or port is None
            or not 0 < port < 65536 or parsed.path not in ("", "/") or parsed.query_string
            or " " in str(url)):
        raise ValueError(f"a peer is wss://HOST:PORT (e.g. wss://hq.example.com:8470), "
                         f"not {url!r}")


def node_run(args: argparse.Namespace, data_dir: Path) -> Result:
    import asyncio

    from peer.node import run_until_signalled

    config = node_config(args, data_dir)
    platform.setup_logging()  # the journal's priorities under systemd (peer.service)

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


def run(args: argparse.Namespace, data_dir: Path) -> Result:
    if args.command == "init":
        return init_node(args, data_dir)
    if args.command == "restore":
        return restore_node(args, data_dir)
    if args.command == "node":
        return node_run(args, data_dir)
    if args.command == "status":
        return status(args, data_dir)
    if args.command == "service":
        return Result(*service.command(args, data_dir))
    if args.command == "https-cert":
        return Result(*webcert.command(args.chain, data_dir, args.host))
    if args.command == "printer":
        return Result(*receipts.printer_command(args, data_dir))
    if args.command == "receipt":
        return receipt_command(args, data_dir)
    name, params = request_of(args)
    node = local.running(data_dir)
    if node is not None and name not in READ_HERE:
        return routed(node, args, name, params)
    write = args.cmd.write
    with Ledger.open(data_dir, lock=write) as ledger:
        return execute(ledger, name, params, args.operator, args.auth_password)


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
        result = chain_command(args) if args.command == "chain" else run(args, Path(str(data)))
    except (LedgerError, RemoteProtocolError) as e:
        return refuse(args, e.code, as_typed(args, str(e) or type(e).__name__))
    except OSError as e:  # e.g. --out in a missing or read-only directory
        return refuse(args, "io_error", f"{e.strerror or e}: {e.filename or ''}".rstrip(": "))
    except sqlite3.DatabaseError as e:  # a damaged or foreign file where the store should be
        return refuse(args, "store_error", f"the store in {data} is unusable: {e}")
    except KeyboardInterrupt:
        return 130
    # Done: what is left is to say so. Exit 1 means refused, so saying it must not
    # fail: a terminal that cannot show Chinese gets escapes, and a reader gone
    # (`| head`) gets nothing more (a traceback and exit 1 there made a cashier try a
    # committed top-up again).
    with contextlib.suppress(AttributeError, ValueError):
        sys.stdout.reconfigure(errors="backslashreplace")  # type: ignore[union-attr]
    try:
        emit(args, result)
        sys.stdout.flush()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0
