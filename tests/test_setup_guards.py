"""Refusals a set-up probe found missing (15th round): an HTTPS certificate signed by
the chain's CA for hosts that name no one host, a service unit written for a Python
that cannot run it, and the SMS log gateway's file in the PC's zone. The real
command line on real data directories."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import pytest
from cluster import cluster, wait_for
from conftest import Cli, cli_env
from cryptography import x509
from test_install import _python_for

from peer import webcert


def run_cmd(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, encoding="utf-8",
                          env=cli_env(), timeout=120, check=False)


def test_an_https_certificate_names_only_hosts_and_addresses(cli: Cli, tmp_path: Path) -> None:
    """`https-cert --host '*.com'` (and `*`, `a b`, `192.0.2.2,evil.com`, `-1`) exited 0
    with a certificate for it, signed by the CA every till trusts as a root: whoever
    held the branch's https.key could pose as any .com site to those tills."""
    chain = tmp_path / "chain"
    assert cli("chain", "init", "--out", chain, "--name", "acme").code == 0
    data = tmp_path / "sh01"
    assert cli("init", "--node", "SH01", "--chain", chain, data=data).code == 0
    crt, key = webcert.files(data, webcert.COUNTER)
    bad = ["*.com", "*", "a b", "192.0.2.2,evil.com", "-1", "shop-.example", "a..b",
           "x" * 64 + ".example", "192.0.2.300", "shop_1.example", "fe80::1%eth0"]
    for host in bad:
        r = cli("https-cert", "--chain", chain, "--host", "till.local", "--host", host,
                data=data)
        assert r.code == 1 and "Traceback" not in r.err, (host, r)
        assert repr(host) in r.err and ("neither" in r.err or "zone" in r.err), (host, r)
        assert not crt.exists() and not key.exists(), host
    r = cli("https-cert", "--chain", chain, "--host", "Shop-1.example", "--host", "bücher.de",
            "--host", "192.0.2.2", "--host", "2001:db8::1", data=data)
    assert r.code == 0, r.err
    cert = x509.load_pem_x509_certificate(crt.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == \
        ["Shop-1.example", "xn--bcher-kva.de", "localhost"]
    assert [str(a) for a in san.get_values_for_type(x509.IPAddress)] == \
        ["192.0.2.2", "2001:db8::1", "127.0.0.1"]
    # A refused host leaves the certificate already made as it was.
    before = crt.read_bytes()
    r = cli("https-cert", "--chain", chain, "--host", "*.example", data=data)
    assert r.code == 1 and "'*.example'" in r.err, r
    assert crt.read_bytes() == before
    # The member port's certificate is made by the same function, from its own command.
    members = data / "tls" / "members.crt"
    r = run_cmd([sys.executable, "-m", "reference_app.members_portal", "--chain", str(chain),
                 "--data", str(data), "--host", "*.com"])
    assert r.returncode == 2 and "'*.com' is neither" in r.stdout, r
    assert not members.exists()


# The command line with the system's unit directory moved into the test's (and systemd
# taken as not running): what `service install` does where systemd would run the unit.
AS_SYSTEM = ("import pathlib, sys, peer.service as s; "
             "s.SYSTEM_UNIT_DIR = pathlib.Path(sys.argv[1]); s._systemd_runs = lambda: False; "
             "from peer.cli import main; sys.exit(main(sys.argv[2:]))")


def test_a_service_is_refused_a_python_or_a_directory_it_cannot_run_with(
        cli: Cli, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """`service install --python /usr/bin/python3` (no crdtledger in it) exited 0 with
    "enabled on boot", and the unit would fail every 5 s on ModuleNotFoundError; a data
    directory under /tmp was taken, which the unit's private /tmp hides from it."""
    chain = tmp_path / "chain"
    assert cli("chain", "init", "--out", chain, "--name", "acme").code == 0
    # Where the unit's user can enter: as root that is nobody (pytest's directories are
    # 0700), so the data goes in a 0755 directory of its own, as test_install's does.
    home = tmp_path
    user: list[str] = []
    if os.geteuid() == 0:
        home = Path(tempfile.mkdtemp(prefix="crdtledger-service-", dir="/tmp"))
        request.addfinalizer(lambda: shutil.rmtree(home, ignore_errors=True))
        home.chmod(0o755)
        user = ["--user", "nobody"]
    data = home / "sh01"
    assert cli("init", "--node", "SH01", "--chain", chain, data=data).code == 0
    units = tmp_path / "units"
    r = cli("service", "install", "--counter", "--unit-dir", units, "--no-start", *user,
            "--python", "/usr/bin/python3", data=data)
    assert r.code == 1 and "--python /usr/bin/python3 cannot run the unit" in r.err, r
    assert "No module named" in r.err and "Traceback" not in r.err, r
    assert not units.exists()

    good = _python_for(user[1], home / "venv") if user else Path(sys.executable)
    # Where systemd runs it, a data directory under /tmp is refused before anything is
    # written or handed to the unit's user.
    system = tmp_path / "system"
    owner = data.stat().st_uid
    argv = [sys.executable, "-c", AS_SYSTEM, str(system), "service", "install", "--data",
            str(data), "--python", str(good), *user]
    done = subprocess.run(argv, capture_output=True, text=True, encoding="utf-8",
                          env=cli_env(), timeout=120, check=False)
    assert done.returncode == 1, done
    assert f"{data} is under /tmp, which the service cannot reach" in done.stderr, done
    assert not system.exists() and data.stat().st_uid == owner
    # A unit written elsewhere (to be looked at, or copied) is written, with the warning.
    r = cli("service", "install", "--unit-dir", units, "--python", good, *user, "--json",
            data=data)
    assert r.code == 0, r.err
    info = json.loads(r.out)
    assert "cannot reach" in info["warning"] and (units / "crdtledger-SH01.service").exists()
    r = cli("service", "install", "--unit-dir", units, "--python", good, *user, data=data)
    assert r.code == 0 and "enabled on boot\nwarning: " in r.out, r


def test_the_sms_log_file_is_written_on_the_branchs_clock(tmp_path: Path) -> None:
    """The SMS log gateway's file (node.toml [notify.sms] kind = "log", file = ...) was
    stamped in the PC's own zone: on a PC set to UTC, eight hours off the node's log and
    everything shown to people (the chain's zone, Asia/Shanghai here)."""
    sms = tmp_path / "sms.log"
    with cluster(tmp_path) as c:
        sh01 = c.add("SH01")
        (sh01.data / "node.toml").write_text(
            f'[notify.sms]\nkind = "log"\nfile = "{sms}"\n', encoding="utf-8")
        sh01.env = {"TZ": "UTC"}
        sh01.start()
        before = int(time.time())  # whole seconds: the file's stamp has no fraction
        r = sh01.cli("member", "add", "--name", "王芳", "--phone", "13900001111",
                     "--promo", "yes")
        assert r.code == 0, r.err
        r = sh01.cli("notice", "broadcast", "--subject", "冬至", "--text", "{name}，冬至快乐")
        assert r.code == 0, r.err
        wait_for(lambda: sms.exists() and "13900001111" in sms.read_text(), 60,
                 "the SMS in the log gateway's file")
        wait_for(lambda: "sms to 13900001111" in sh01.logs(), 30, "the SMS in the node's log")
        logged = next(x for x in sh01.logs().splitlines() if "sms to 13900001111" in x)
    after = time.time()
    line = sms.read_text(encoding="utf-8").splitlines()[0]
    stamp = " ".join(line.split(" ")[:2])
    when = datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S%z")
    # The instant it names is the one it was written at (between the node's start and
    # the line read back), in the chain's zone: eight hours off read as UTC.
    assert stamp.endswith("+0800") and before <= when.timestamp() <= after, line
    # The node's log line of that message is on the same clock, in the same zone.
    said = datetime.strptime(logged.split(" INFO ")[0], "%Y-%m-%d %H:%M:%S,%f%z")
    assert said.utcoffset() == when.utcoffset() and before <= said.timestamp() <= after, \
        (logged, line)
