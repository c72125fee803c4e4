"""`crdtledger service install|remove`: a branch that starts on boot, under systemd.

`install --data DIR` writes `crdtledger-<NODE>.service` (the node alone, or with
`--counter` the node and its counter pages, i.e. `crdtledger-counter`) into
/etc/systemd/system, enables it (the `multi-user.target.wants` link `systemctl
enable` makes) and, where systemd runs, reloads it and (re)starts the unit.

What the unit says, and why:
* `User=`/`Group=`: the data directory's owner (or `--user`). The store and its keys
  are 0600 in a 0700 directory (crdtledger.private), so only that user can run the
  node; root is refused, a node needs no privilege. Run as root, install hands the
  directory to the user (chown) and tightens it to 0700 as every open would.
* `Restart=on-failure` after 5 s: a crash or a machine that came up before its disk
  restarts by itself; a clean stop (SIGTERM from `systemctl stop`) stays stopped.
* `ProtectSystem=strict` with `ReadWritePaths=` the data directory, `UMask=0077`,
  `NoNewPrivileges=`, `PrivateTmp=`: the node can write its own directory, its
  cache directory (/var/cache/crdtledger-NODE: matplotlib's font cache) and nothing
  else of the machine.
* Logs go to the journal (`journalctl -u crdtledger-SH01`), at INFO: connections,
  refusals and clock warnings an owner can read; the journal rotates them.
* `ExecStart=` this very Python (`sys.executable`), so the unit runs the release
  installed in the virtual environment `install` was run from. It (or `--python`) is
  run once first, as the unit's user, importing what the unit runs: a Python without
  crdtledger is refused rather than enabled to fail every 5 s.
* `PrivateTmp=` hides /tmp and /var/tmp from the node, and the system clears them:
  a data directory there is refused where systemd runs the unit, and written with a
  warning to another `--unit-dir` (a unit to look at or copy; the tests' units).

Tests write the unit elsewhere (`--unit-dir` or $CRDTLEDGER_UNIT_DIR) and check it
with `systemd-analyze verify`; systemd itself need not run there.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import sqlite3
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Any

from crdtledger import platform
from crdtledger.errors import InvalidInput
from crdtledger.hlc import NODE_ID
from crdtledger.private import DIR_MODE, tighten
from crdtledger.storage import DB_FILE

ENV_UNIT_DIR = "CRDTLEDGER_UNIT_DIR"
SYSTEM_UNIT_DIR = Path("/etc/systemd/system")
WANTS = "multi-user.target.wants"


class ServiceError(InvalidInput):
    code = "service_error"


def add_service_commands(top: argparse._SubParsersAction[argparse.ArgumentParser],
                         add_common: Any) -> None:
    svc = top.add_parser("service", help="start this node on boot: a systemd unit",
                         description="install or remove the systemd unit that runs this "
                         "node (or, with --counter, the node and its counter pages) on boot")
    actions = svc.add_subparsers(dest="action", metavar="ACTION", required=True)
    inst = actions.add_parser(
        "install", help="write, enable and start the unit",
        description="write crdtledger-NODE.service, enable it and (where systemd runs) "
        "start it. Example: sudo crdtledger service install --data /srv/crdtledger/SH01 "
        "--counter --args '--https 0.0.0.0:8443'")
    add_common(inst, operator=False, password=False)
    inst.add_argument("--counter", action="store_true",
                      help="run the node with its counter pages (crdtledger-counter)")
    inst.add_argument("--user", help="the user the node runs as (default: the owner of "
                      "the data directory; never root)")
    inst.add_argument("--args", default="", metavar="'FLAGS'",
                      help="more flags for the command, e.g. '--https 0.0.0.0:8443' "
                      "(node settings are best kept in DATA/node.toml)")
    inst.add_argument("--no-start", action="store_true",
                      help="enable only: start on the next boot")
    inst.add_argument("--python", type=Path, metavar="PATH",
                      help="the Python the unit runs, with crdtledger installed (default: "
                      "this one, i.e. the virtual environment this command comes from)")
    rem = actions.add_parser("remove", help="stop, disable and delete the unit (the data "
                             "directory is kept)")
    add_common(rem, operator=False, password=False)
    for p in (inst, rem):
        p.add_argument("--unit-dir", type=Path, metavar="DIR",
                       help=f"where units go (default ${ENV_UNIT_DIR}, else "
                       f"{SYSTEM_UNIT_DIR})")


def command(args: argparse.Namespace, data_dir: Path) -> tuple[dict[str, Any], str]:
    if platform.WINDOWS or sys.platform == "darwin":
        raise ServiceError(
            "`crdtledger service` writes systemd units (Linux): on this system start "
            f"`crdtledger-counter --data {data_dir}` with the system's own start-up "
            "tool (Task Scheduler at start-up on Windows, a launchd agent on macOS)")
    if args.action == "install":
        try:
            extra = shlex.split(args.args)
        except ValueError as e:  # an unbalanced quote
            raise ServiceError(f"--args {args.args!r}: {e}") from None
        return install(data_dir, counter=args.counter, user=args.user,
                       extra=extra, unit_dir=args.unit_dir,
                       start=not args.no_start, python=args.python)
    return remove(data_dir, unit_dir=args.unit_dir)


def node_of(data_dir: Path) -> str:
    """The node id in the store's meta table, read without opening the store (a
    running node may hold it)."""
    db = data_dir / DB_FILE
    if not db.exists():
        raise ServiceError(f"{data_dir} holds no node: create it first with `crdtledger "
                           "init --data DIR --node NODE --chain CHAIN_DIR`")
    try:
        conn = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True)
        try:
            row = conn.execute("SELECT value FROM meta WHERE key = 'node'").fetchone()
        finally:
            conn.close()
    except sqlite3.DatabaseError as e:
        raise ServiceError(f"the store in {data_dir} is unusable: {e}") from None
    if row is None:
        raise ServiceError(f"the store in {data_dir} names no node")
    # The id goes into the unit's name, its path and its lines: a store edited by hand
    # (an id with a newline and an `ExecStartPre=+...` line, or a "/") would write a
    # root command into the unit or outside the unit directory.
    if not isinstance(row[0], str) or not NODE_ID.match(row[0]):
        raise ServiceError(f"the store in {data_dir} names {str(row[0])[:40]!r} as its "
                           "node, which is not a node id (capitals, digits and _, at most "
                           "16): the store was edited; put back a backup")
    return row[0]


def unit_name(node: str) -> str:
    return f"crdtledger-{node}.service"


def _unit_dir(given: Path | None) -> Path:
    # Absolute: the enabling link points at the unit by its full path, as systemctl's.
    return (given or Path(os.environ.get(ENV_UNIT_DIR) or SYSTEM_UNIT_DIR)).absolute()


def _quote(arg: str) -> str:
    """One ExecStart word: `%` and `$` are systemd's specifiers and variables."""
    arg = arg.replace("%", "%%").replace("$", "$$")
    if arg and not any(c in arg for c in ' \t"\'\\;'):
        return arg
    return '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"'


def unit_text(data_dir: Path, node: str, user: str, group: str, *, counter: bool,
              extra: list[str], python: Path | None = None) -> str:
    module = "reference_app" if counter else "peer"
    run = [] if counter else ["node", "run"]
    argv = [str(python or sys.executable), "-m", module, *run, "--data", str(data_dir),
            *extra]
    what = "node and counter pages" if counter else "node"
    return "\n".join([
        "# Written by `crdtledger service install`; `crdtledger service remove` deletes it.",
        "[Unit]",
        f"Description=crdtledger branch {node} ({what})",
        "Wants=network-online.target",
        "After=network-online.target",
        "",
        "[Service]",
        "Type=simple",
        f"User={user}",
        f"Group={group}",
        f"ExecStart={' '.join(_quote(a) for a in argv)}",
        f"WorkingDirectory={_quote(str(data_dir))}",
        "Environment=PYTHONUNBUFFERED=1",
        # The rest of the system is read-only to it (ProtectSystem=strict), and a system
        # user's home may not exist: caches (matplotlib's fonts) go to its own
        # /var/cache directory, which systemd makes and gives to the user.
        f"CacheDirectory=crdtledger-{node}",
        f"Environment=XDG_CACHE_HOME=%C/crdtledger-{node} "
        f"MPLCONFIGDIR=%C/crdtledger-{node}/matplotlib",
        "Restart=on-failure",
        "RestartSec=5s",
        # Every peer, till and member page is a descriptor: systemd's soft limit of
        # 1,024 let a stranger holding idle connections to a public port leave none
        # for the tills (the node also raises its soft limit to the hard one).
        "LimitNOFILE=65536",
        "TimeoutStopSec=30s",
        "StandardOutput=journal",
        "StandardError=journal",
        f"SyslogIdentifier=crdtledger-{node}",
        "UMask=0077",
        "NoNewPrivileges=yes",
        "PrivateTmp=yes",
        "ProtectSystem=strict",
        f"ReadWritePaths={_quote(str(data_dir))}",
        "",
        "[Install]",
        "WantedBy=multi-user.target",
        "",
    ])


def _systemd_runs() -> bool:
    return Path("/run/systemd/system").is_dir() and shutil.which("systemctl") is not None


def _systemctl(*argv: str) -> None:
    done = subprocess.run(["systemctl", *argv], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise ServiceError(f"systemctl {' '.join(argv)}: "
                           f"{(done.stderr or done.stdout).strip() or done.returncode}")


def install(data_dir: Path, *, counter: bool = False, user: str | None = None,
            extra: list[str] | None = None, unit_dir: Path | None = None,
            start: bool = True, python: Path | None = None) -> tuple[dict[str, Any], str]:
    data_dir = data_dir.resolve()
    node = node_of(data_dir)
    if python is not None and not (python.is_absolute() and os.access(python, os.X_OK)):
        raise ServiceError(f"--python {python}: not an absolute path to a program")
    owner = platform.owner_of(data_dir)
    user = user or owner[0]
    try:
        uid, gid, group = platform.account(user)
    except KeyError:
        raise ServiceError(f"no user {user!r} on this machine (create one, e.g. "
                           "`adduser --system --group crdtledger`)") from None
    if uid == 0:
        raise ServiceError(
            f"a node must not run as root ({data_dir} belongs to {owner[0]}): create a user "
            "(`adduser --system --group crdtledger`) and pass --user crdtledger")
    # A unit whose user cannot reach its Python or its data would fail at every start
    # (a venv made in /root, say): refused now, with where it is closed.
    reach = [("the Python the unit runs", python or Path(sys.executable)),
             ("the data directory", data_dir.parent)]
    if python is None:
        reach.append(("crdtledger's packages", Path(sysconfig.get_path("purelib"))))
    for what, path in reach:
        closed = platform.closed_to(path, user)
        if closed is not None:
            raise ServiceError(
                f"user {user} cannot reach {what}, {path} ({closed} is closed to it): "
                f"install crdtledger where {user} can read it, e.g. `python3 -m venv "
                "/opt/crdtledger` then `/opt/crdtledger/bin/pip install crdtledger-*.whl`, "
                f"and keep the data in a directory {user} can enter, e.g. /srv/crdtledger")
    _check_python(python or Path(sys.executable), counter=counter, uid=uid, gid=gid)
    directory = _unit_dir(unit_dir)
    scratch = _under_tmp(data_dir)
    if scratch is not None and directory == SYSTEM_UNIT_DIR:
        raise ServiceError(scratch)
    if owner[1] != uid:
        if os.geteuid() != 0:
            raise ServiceError(f"{data_dir} belongs to {owner[0]}, not {user}: run this as "
                               f"root to hand it to {user}, or pass --user {owner[0]}")
        platform.chown_tree(data_dir, uid, gid)
    tighten(data_dir, DIR_MODE)  # the rest is tightened by the node's own open
    name = unit_name(node)
    directory.mkdir(parents=True, exist_ok=True)
    unit = directory / name
    unit.write_text(unit_text(data_dir, node, user, group, counter=counter,
                              extra=extra or [], python=python))
    unit.chmod(0o644)  # systemd's units are world-readable; it holds no secret
    # Enabled exactly as `systemctl enable` does it: the target wants the unit.
    wants = directory / WANTS
    wants.mkdir(exist_ok=True)
    link = wants / name
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(unit)
    started = False
    if _systemd_runs() and directory == SYSTEM_UNIT_DIR:
        _systemctl("daemon-reload")
        if start:
            _systemctl("restart", name)  # a reinstall picks up the new unit
            started = True
    text = (f"wrote {unit} ({'node and counter pages' if counter else 'node'} of {node}, "
            f"as {user}), enabled on boot"
            + ("; started: `journalctl -u " + name.removesuffix(".service") + " -f` for its log"
               if started else
               "; start it with `systemctl start " + name + "`" if directory == SYSTEM_UNIT_DIR
               else "")
            + (f"\nwarning: {scratch}" if scratch else ""))
    return ({"unit": str(unit), "node": node, "user": user, "counter": counter,
             "enabled": True, "started": started,
             **({"warning": scratch} if scratch else {})}, text)


# What the unit's Python must import: the module its ExecStart runs (`python -m peer`
# imports peer.cli, `python -m reference_app` reference_app.app) and so every package
# they need. Importing the counter's pages takes seconds; a first run in a new venv
# compiles them, hence the room.
IMPORT_CHECK_S = 60


def _check_python(python: Path, *, counter: bool, uid: int, gid: int) -> None:
    """Run the unit's Python once as the unit will (as its user where this runs as
    root, without this shell's PYTHON* variables): a Python without crdtledger wrote a
    unit that said "enabled on boot" and then failed every 5 s on ModuleNotFoundError."""
    module = "reference_app.app" if counter else "peer.cli"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    as_user: dict[str, Any] = {}
    if os.geteuid() == 0 and uid != 0:
        as_user = {"user": uid, "group": gid, "extra_groups": []}
    try:
        done = subprocess.run([str(python), "-c", f"import {module}"], capture_output=True,
                              text=True, env=env, cwd="/", timeout=IMPORT_CHECK_S,
                              check=False, **as_user)
    except subprocess.TimeoutExpired:
        why = f"importing {module} took over {IMPORT_CHECK_S} s"
    except OSError as e:
        why = e.strerror or str(e)
    else:
        if done.returncode == 0:
            return
        lines = (done.stderr or done.stdout).strip().splitlines()
        why = lines[-1] if lines else f"exit status {done.returncode}"
    raise ServiceError(
        f"--python {python} cannot run the unit ({why}): give the Python of the virtual "
        "environment crdtledger is installed in, e.g. /opt/crdtledger/bin/python after "
        "`/opt/crdtledger/bin/pip install crdtledger-*.whl`")


def _under_tmp(data_dir: Path) -> str | None:
    """The sentence for a data directory under /tmp or /var/tmp, else None. The unit has
    PrivateTmp=yes, so the node would see an empty /tmp of its own and fail to start;
    and what is kept there is cleared at boot or after days of no use."""
    for scratch in (Path("/tmp"), Path("/var/tmp")):
        if data_dir.is_relative_to(scratch.resolve()):
            return (f"{data_dir} is under {scratch}, which the service cannot reach (it "
                    f"has a private {scratch}) and the system clears: move the data "
                    "directory, e.g. to /srv/crdtledger, and install from there")
    return None


def remove(data_dir: Path, *, unit_dir: Path | None = None) -> tuple[dict[str, Any], str]:
    node = node_of(data_dir.resolve())
    directory = _unit_dir(unit_dir)
    name = unit_name(node)
    unit = directory / name
    if not unit.exists():
        raise ServiceError(f"no unit {unit}: nothing to remove")
    if _systemd_runs() and directory == SYSTEM_UNIT_DIR:
        _systemctl("disable", "--now", name)
    link = directory / WANTS / name
    if link.is_symlink() or link.exists():
        link.unlink()
    unit.unlink()
    if _systemd_runs() and directory == SYSTEM_UNIT_DIR:
        _systemctl("daemon-reload")
    return ({"unit": str(unit), "node": node, "removed": True},
            f"removed {unit}; the data directory {data_dir} is kept")
