"""Installing and running a release: the built wheel in a fresh virtual environment,
the systemd unit `crdtledger service install` writes, and two releases that cannot
speak one sync protocol refusing each other by name (real node processes)."""

from __future__ import annotations

import json
import os
import shutil
import site
import ssl
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.request
from datetime import datetime
from pathlib import Path

import pytest
from app_fixtures import CounterApp
from cluster import cluster, free_port, wait_for
from conftest import cli_env, run_cli

import crdtledger
from crdtledger import platform
from crdtledger.sync import PROTOCOL_VERSION

ROOT = Path(__file__).resolve().parent.parent
# What the wheel is built from: the project's metadata and its packages, nothing else
# (a copy, so the build writes no build/ or egg-info into the work tree).
SOURCES = ["pyproject.toml", "README.md", "crdtledger", "peer", "sim", "benchmarks",
           "reference_app"]


def _run(argv: list[str | os.PathLike[str]], **kw: object) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([str(a) for a in argv], capture_output=True, text=True,
                          timeout=300, check=False, **kw)  # type: ignore[call-overload]
    assert done.returncode == 0, f"{argv}: exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done  # type: ignore[no-any-return]


def _dependencies_dir(tmp: Path) -> Path:
    """The project's third-party packages as a plain directory for the fresh venv:
    links to everything in this venv's site-packages but crdtledger itself (its
    editable install and metadata) and the .pth hooks. The test machine needs no
    network; the wheel's own files are what the fresh venv imports crdtledger from."""
    deps = tmp / "deps"
    deps.mkdir()
    for entry in Path(site.getsitepackages()[0]).iterdir():
        name = entry.name
        if (name.startswith(("crdtledger", "__editable__", "_distutils_hack"))
                or name.endswith(".pth") or name == "__pycache__"):
            continue
        (deps / name).symlink_to(entry)
    return deps


def test_wheel_in_a_fresh_venv_runs_the_cli_and_the_counter(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns(
                "__pycache__", "out", "img", "*.png", "*.json"))
        else:
            shutil.copy2(path, src / name)
    wheels = tmp_path / "wheels"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
          "--no-index", "-q", "-w", wheels, src])
    (wheel,) = wheels.glob("crdtledger-*.whl")
    assert wheel.name.startswith(f"crdtledger-{crdtledger.__version__}-")

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv])
    py = venv / "bin" / "python"
    _run([sys.executable, "-m", "pip", "--python", py, "install", "--no-deps", "--no-index",
          "-q", wheel])
    purelib = _run([py, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"]
                   ).stdout.strip()
    deps = _dependencies_dir(tmp_path)
    (Path(purelib) / "zz-deps.pth").write_text(f"{deps}\n")
    # Every requirement the wheel declares is met by what this venv can import.
    _run([sys.executable, "-m", "pip", "--python", py, "check"])

    work = tmp_path / "work"  # no repository file reachable: not the cwd, not a path
    work.mkdir()
    env = {k: v for k, v in cli_env().items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    where = _run([py, "-c", "import crdtledger, peer, reference_app; "
                  "print(crdtledger.__file__, reference_app.__file__)"], cwd=work, env=env)
    assert str(ROOT) not in where.stdout and purelib in where.stdout, where.stdout

    cli = venv / "bin" / "crdtledger"
    version = _run([cli, "--version"], cwd=work, env=env).stdout
    assert version.strip() == f"crdtledger {crdtledger.__version__} (sync protocol " \
                              f"{PROTOCOL_VERSION})"
    assert "service" in _run([cli, "--help"], cwd=work, env=env).stdout
    _run([cli, "chain", "init", "--out", work / "chain", "--name", "wheel-chain"],
         cwd=work, env=env)
    _run([cli, "init", "--data", work / "hq", "--node", "HQ", "--chain", work / "chain",
          "--head-office"], cwd=work, env=env)
    _run([cli, "init", "--data", work / "sh01", "--node", "SH01", "--chain", work / "chain"],
         cwd=work, env=env)
    assert _run([venv / "bin" / "crdtledger-counter", "--version"], cwd=work, env=env
                ).stdout.strip() == version.strip().replace("crdtledger", "crdtledger-counter")

    # The branch's one process, over HTTPS with a certificate from the chain's CA.
    _run([cli, "https-cert", "--chain", work / "chain", "--data", work / "sh01",
          "--host", "127.0.0.1"], cwd=work, env=env)
    port, api = free_port(), free_port()
    log = work / "counter.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [str(venv / "bin" / "crdtledger-counter"), "--data", str(work / "sh01"),
             "--https", f"127.0.0.1:{port}", "--listen", f"127.0.0.1:{free_port()}",
             "--api", f"127.0.0.1:{api}", "--no-mdns"],
            cwd=work, env=env, stdout=out, stderr=out)
    try:
        trust = ssl.create_default_context(cafile=str(work / "chain" / "ca.crt"))

        def page() -> str | None:
            if proc.poll() is not None:
                raise AssertionError(f"counter exited {proc.returncode}: {log.read_text()}")
            try:
                with urllib.request.urlopen(f"https://127.0.0.1:{port}/login", timeout=5,
                                            context=trust) as resp:
                    return str(resp.read().decode())
            except OSError:
                return None

        html = wait_for(page, 60, "the counter page over HTTPS")
        assert "crdtledger" in html
        with urllib.request.urlopen(f"http://127.0.0.1:{api}/health", timeout=5) as resp:
            health = json.loads(resp.read())
        assert health["version"] == crdtledger.__version__
        assert health["protocol"] == PROTOCOL_VERSION and health["node"] == "SH01"
    finally:
        proc.terminate()
        proc.wait(30)


def _python_for(user: str, venv: Path) -> Path:
    """A Python `user` can run that imports this code and the test's packages: a venv of
    the system's Python (the test's may be under /root), pointed at them by a .pth."""
    system = Path("/usr/bin/python3")
    same = subprocess.run([system, "-c", "import sys; print(sys.version_info[:2])"],
                          capture_output=True, text=True, check=False).stdout.strip()
    if same != str(sys.version_info[:2]):
        pytest.skip(f"{system} is not Python {sys.version_info[:2]}: no venv of it can "
                    "load this test's compiled packages")
    _run([system, "-m", "venv", "--without-pip", venv])
    purelib = _run([venv / "bin" / "python", "-c",
                    "import sysconfig; print(sysconfig.get_path('purelib'))"]).stdout.strip()
    found = [ROOT, Path(sysconfig.get_path("purelib"))]
    (Path(purelib) / "crdtledger-test.pth").write_text("".join(f"{p}\n" for p in found))
    for path in (venv / "bin" / "python", *found):
        if platform.closed_to(path, user) is not None:
            pytest.skip(f"{path} is closed to {user}")
    return venv / "bin" / "python"


def test_service_unit_is_accepted_by_systemd_analyze(tmp_path: Path,
                                                    request: pytest.FixtureRequest) -> None:
    from crdtledger.ledger import Ledger
    from peer.chain import enrol, init_chain

    init_chain(tmp_path / "chain", "test")
    data = tmp_path / "sh01"
    Ledger.create(data, "SH01", "test")
    enrol(tmp_path / "chain", data, "SH01")
    units = tmp_path / "units"
    python: list[str] = []
    if os.geteuid() == 0:  # the directory is root's: refused unless given to a user
        r = run_cli("service", "install", "--unit-dir", units, data=data)
        assert r.code == 1 and "must not run as root" in r.err, r.err
        user = "nobody"
        # pytest's temporary directories are 0700: closed to nobody, refused by name.
        r = run_cli("service", "install", "--unit-dir", units, "--user", user, data=data)
        assert r.code == 1 and "user nobody cannot reach" in r.err, r.err
        assert "is closed to it" in r.err and "/opt/crdtledger" in r.err
        # Somewhere nobody can enter, with a Python it can run (this test's own may live
        # under /root): a venv of the system's that finds this code and its packages.
        shared = Path(tempfile.mkdtemp(prefix="crdtledger-service-", dir="/tmp"))
        request.addfinalizer(lambda: shutil.rmtree(shared, ignore_errors=True))
        shared.chmod(0o755)
        data = Path(shutil.move(data, shared / "sh01"))
        system_python = _python_for(user, shared / "venv")
        # The unit's Python is run once, as its user: the system's own has no crdtledger.
        r = run_cli("service", "install", "--counter", "--unit-dir", units, "--user", user,
                    "--python", "/usr/bin/python3", data=data)
        assert r.code == 1 and "--python /usr/bin/python3 cannot run the unit" in r.err, r
        assert "No module named" in r.err and not units.exists()
        python = ["--python", str(system_python)]
    else:
        user = None  # the data directory's owner: whoever runs the test
    r = run_cli("service", "install", "--counter", "--unit-dir", units,
                "--args", "--https 0.0.0.0:8443", *(("--user", user) if user else ()),
                *python, "--json", data=data)
    info = r.json()
    unit = units / "crdtledger-SH01.service"
    assert info["unit"] == str(unit) and info["enabled"] and not info["started"]
    text = unit.read_text()
    interpreter = python[1] if python else sys.executable
    assert f"ExecStart={interpreter} -m reference_app --data {data} --https 0.0.0.0:8443" \
        in text
    for line in ("Restart=on-failure", "StandardOutput=journal", "ProtectSystem=strict",
                 f"ReadWritePaths={data}", "WantedBy=multi-user.target", "UMask=0077",
                 "LimitNOFILE=65536"):
        assert line in text.splitlines(), line
    owner = user or data.owner()
    assert f"User={owner}" in text
    assert data.owner() == owner and data.stat().st_mode & 0o777 == 0o700
    link = units / "multi-user.target.wants" / unit.name
    assert link.is_symlink() and link.resolve() == unit
    verify = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                            text=True, timeout=60, check=False)
    assert verify.returncode == 0, verify.stderr
    # Nothing but the known complaint about running as "nobody" (a test's stand-in).
    assert all("nobody" in line for line in verify.stderr.splitlines()), verify.stderr

    r = run_cli("service", "remove", "--unit-dir", units, data=data)
    assert r.code == 0, r.err
    assert not unit.exists() and not link.is_symlink()
    assert (data / "ledger.sqlite3").exists()  # the data stays
    r = run_cli("service", "remove", "--unit-dir", units, data=data)
    assert r.code == 1 and "nothing to remove" in r.err


# A release that speaks the next protocol version, as a real node process: this very
# code with the version numbers a future release would have.
FUTURE = ("import sys, crdtledger, crdtledger.sync as s, peer.node as n; "
          f"s.PROTOCOL_VERSION = {PROTOCOL_VERSION + 1}; "
          "s.__version__ = n.__version__ = '9.0.0'; "
          "from peer.cli import main; sys.exit(main(sys.argv[1:]))")


@pytest.mark.slow
def test_nodes_of_two_protocol_versions_refuse_each_other_by_name(tmp_path: Path) -> None:
    with cluster(tmp_path) as c:
        sh01 = c.add("SH01").start()
        sh02 = c.add("SH02")
        sh02.peers = [sh01.url]
        log = tmp_path / "sh02.log"
        with open(log, "wb") as out:
            future = subprocess.Popen(
                [sys.executable, "-c", FUTURE, "node", "run", "--data", str(sh02.data),
                 "--listen", f"127.0.0.1:{sh02.sync_port}", "--api",
                 f"127.0.0.1:{sh02.api_port}", "--peer", sh01.url, "--no-mdns"],
                env=cli_env(), stdout=out, stderr=out)
        try:
            def refused(node_data: Path) -> str | None:
                r = run_cli("status", data=node_data)
                return next((line for line in r.out.splitlines()
                             if line.startswith("CANNOT SYNC")), None)

            said = wait_for(lambda: refused(sh01.data), 60, "SH01 to refuse SH02")
            assert said == (
                f"CANNOT SYNC with SH02: the peer speaks sync protocol {PROTOCOL_VERSION + 1} "
                "(crdtledger 9.0.0) "
                f"and this node protocol {PROTOCOL_VERSION} (crdtledger "
                f"{crdtledger.__version__}): they cannot sync until both run releases that "
                "speak one version (see CHANGELOG.md)")
            theirs = wait_for(lambda: refused(sh02.data), 60, "SH02 to refuse SH01")
            assert f"the peer speaks sync protocol {PROTOCOL_VERSION} (crdtledger " \
                   f"{crdtledger.__version__}) and this node protocol {PROTOCOL_VERSION + 1} " \
                   "(crdtledger 9.0.0)" \
                   in theirs
            status = sh01.status()
            (peer,) = [p for p in status["peers"] if p["node"] == "SH02"]
            assert not peer["connected"]
            assert f"protocol {PROTOCOL_VERSION + 1}" in peer["incompatible"]
            assert status["version"] == crdtledger.__version__
            assert "cannot sync with SH02" in sh01.logs()
        finally:
            future.terminate()
            future.wait(30)
        assert "Traceback" not in sh01.logs() + log.read_text()


def test_logs_carry_the_journals_priorities_under_systemd() -> None:
    said = ("import logging; from crdtledger import platform; platform.setup_logging(); "
            "logging.getLogger('crdtledger.node').error('cannot sync\\nwith SH02'); "
            "logging.getLogger('crdtledger.node').info('connected'); "
            "logging.getLogger('crdtledger.node').debug('not shown')")
    journal = subprocess.run([sys.executable, "-c", said], capture_output=True, text=True,
                             env=cli_env({"JOURNAL_STREAM": "8:12345"}), check=True)
    # A message is one line whatever it quotes (a peer's line breaks, escaped); the
    # lines of a traceback each keep the priority (tests/test_liar_round5.py).
    assert journal.stderr == ("<3>crdtledger.node: cannot sync\\x0awith SH02\n"
                              "<6>crdtledger.node: connected\n")
    outside = {k: v for k, v in cli_env().items() if k != "JOURNAL_STREAM"}
    terminal = subprocess.run([sys.executable, "-c", said], capture_output=True, text=True,
                              env=outside, check=True)
    first, *_ = terminal.stderr.splitlines()
    assert first.endswith(" ERROR crdtledger.node cannot sync\\x0awith SH02")
    assert not first.startswith("<")


def test_a_nodes_log_times_are_the_chains_zone_on_a_pc_set_to_utc(tmp_path: Path) -> None:
    """A shop PC whose system zone is UTC wrote its log eight hours off the receipts
    and the counter's pages (the chain's zone, Asia/Shanghai by default): each line's
    time is the chain's now, with its UTC offset."""
    with cluster(tmp_path / "a", "chain-a") as a, cluster(tmp_path / "b", "chain-b") as b:
        sh01 = a.add("SH01").start()
        stranger = b.add("SH09")
        stranger.peers = [sh01.url]  # another chain's node: its dial is refused, and said
        stranger.env = {"TZ": "UTC"}
        stranger.start()
        wait_for(lambda: "TLS handshake" in stranger.logs(), 60, "the refused dial, logged")
    line = next(x for x in stranger.logs().splitlines() if "TLS handshake" in x)
    stamp = line.split(" WARNING ")[0]
    when = datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f%z")
    assert stamp.endswith("+0800") and abs(when.timestamp() - time.time()) < 300, line


@pytest.mark.asyncio
async def test_counters_sync_page_says_which_branch_speaks_another_version(
        counter_app: CounterApp, tmp_path: Path) -> None:
    from app_fixtures import OWNER

    from crdtledger.ledger import Ledger
    from peer.chain import enrol

    app = counter_app
    sh02 = tmp_path / "sh02"
    Ledger.create(sh02, "SH02", "test")
    enrol(tmp_path / "chain", sh02, "SH02")  # make_store's chain
    await app.login(*OWNER)  # the node has started by then: its sync port is known
    log = tmp_path / "sh02.log"
    with open(log, "wb") as out:
        future = subprocess.Popen(
            [sys.executable, "-c", FUTURE, "node", "run", "--data", str(sh02), "--listen",
             "127.0.0.1:0", "--api", "127.0.0.1:0", "--no-mdns",
             "--peer", f"wss://127.0.0.1:{app.shop.node.sync_port}"],
            env=cli_env(), stdout=out, stderr=out)
    try:
        await app.user.open("/office/sync")
        await app.user.should_see(marker="incompatible", retries=600)
        shown = " ".join(app.user.find(marker="incompatible").elements.pop().text.split())
        assert shown.startswith("无法与 徐家汇店（SH02）同步：the peer speaks sync protocol "
                                f"{PROTOCOL_VERSION + 1} (crdtledger 9.0.0)"), shown
    finally:
        future.terminate()
        future.wait(30)
    said = log.read_text()
    assert "cannot sync with SH01" in said and "Traceback" not in said, said


def test_store_lock_keeps_another_process_out_and_names_its_holder(tmp_path: Path) -> None:
    """The lock through portalocker (crdtledger.platform), between real processes."""
    from crdtledger.ledger import Ledger

    Ledger.create(tmp_path / "sh01", "SH01", "test")
    other = ("import sys; from crdtledger import storage; from crdtledger.ledger import "
             "Ledger; from peer.local import in_use; storage.LOCK_WAIT_S = 0\n"
             "print(in_use(storage.Path(sys.argv[1])))\n"
             "try:\n    Ledger.open(sys.argv[1]).close()\n"
             "except storage.StoreLocked as e:\n    print(e)\n")

    def try_it() -> list[str]:
        done = subprocess.run([sys.executable, "-c", other, str(tmp_path / "sh01")],
                              capture_output=True, text=True, env=cli_env(), check=True)
        return done.stdout.splitlines()

    with Ledger.open(tmp_path / "sh01"):
        held, refused = try_it()
        assert held == "True"
        assert refused == f"data directory {tmp_path / 'sh01'} is in use by another " \
                          f"process (pid {os.getpid()})"
    assert try_it() == ["False"]  # closed: free again, and the other opens it


def test_a_node_raises_its_open_files_limit_to_the_hard_one() -> None:
    """At systemd's soft limit of 1,024 a stranger holding idle connections to a public
    port left no descriptor for the tills; a node raises its soft limit to the hard one
    (and the unit asks for 65,536). A real process started at 1,024 of 4,096."""
    import resource

    def low() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 4096))

    out = subprocess.run(
        [sys.executable, "-c", "from crdtledger import platform; "
         "print(platform.raise_open_files_limit())"],
        capture_output=True, text=True, check=True, preexec_fn=low)
    assert out.stdout.strip() == "4096"


def test_a_node_whose_disk_went_read_only_is_still_seen_running(tmp_path: Path) -> None:
    """With the data directory made immutable under a running node (chattr +i: every
    write EPERM, as a disk gone read-only), `status` said "not running" and opened the
    store itself: the lock file did not open for writing. Stand-in: in the other
    process, `os.open` refuses the lock file writable (chattr needs root and a file
    system with attributes; the lock and the processes are real)."""
    from crdtledger.ledger import Ledger

    Ledger.create(tmp_path / "sh01", "SH01", "test")
    other = ("import errno, os, sys; from peer import local\n"
             "real = os.open\n"
             "def read_only(path, flags, *a, **k):\n"
             "    if str(path).endswith(local.LOCK_FILE) and flags & (os.O_RDWR | os.O_WRONLY):\n"
             "        raise PermissionError(errno.EPERM, 'Operation not permitted', str(path))\n"
             "    return real(path, flags, *a, **k)\n"
             "os.open = read_only\n"
             "print(local.in_use(local.Path(sys.argv[1])))\n")

    def held() -> str:
        return subprocess.run([sys.executable, "-c", other, str(tmp_path / "sh01")],
                              capture_output=True, text=True, env=cli_env(),
                              check=True).stdout.strip()

    with Ledger.open(tmp_path / "sh01"):
        assert held() == "True"
    assert held() == "False"
