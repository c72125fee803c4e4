"""The counter pages over HTTPS on the LAN (issue 17 part 3), against real processes.

A chain with two branches on one host, each enrolled and given its counter's
certificate by `crdtledger https-cert` at the head office, each served by
`python -m reference_app --https` as a process of its own. A real HTTPS client checks
the certificate against the chain's CA and the name it was opened by, on a second
address of the host (127.0.0.2: Linux answers all of 127/8 on the loopback, so it
stands for the PC's LAN address without a network), and that the two branches'
session cookies are their own: a browser that opens one branch keeps its session at
the other.
"""

from __future__ import annotations

import base64
import http.cookiejar
import json
import signal
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pytest
from cluster import wait_for
from conftest import free_port, run_cli
from cryptography import x509
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.keys import Keys
from test_browser import CHROMEDRIVER, CHROMIUM, type_into, xpath
from test_browser import wait_for as wait_for_page

from crdtledger.errors import LedgerError
from peer import webcert
from reference_app import app as counter_app
from reference_app.members_portal import members_config

LAN = "127.0.0.2"  # "another address on the host", as a till on the LAN would use
OWNER = ("王店长", "owner-pass-1")  # added at the head office, reaches SH02 by a sync file


@dataclass
class Counter:
    node: str
    data: Path
    port: int
    log: Path
    proc: subprocess.Popen[bytes]

    def url(self, host: str = LAN) -> str:
        return f"https://{host}:{self.port}"


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, list[Counter]]]:
    root = tmp_path_factory.mktemp("https")
    assert run_cli("chain", "init", "--out", root / "chain").code == 0
    base = free_port(2)
    counters: list[Counter] = []
    try:
        for i, node in enumerate(("SH01", "SH02")):
            data = root / node.lower()
            r = run_cli("init", "--node", node, "--chain", root / "chain",
                        *(("--head-office",) if i == 0 else ()), data=data)
            assert r.code == 0, r.err
            r = run_cli("https-cert", "--chain", root / "chain", "--host", LAN, data=data)
            assert r.code == 0, r.err
            assert "trusts" in r.out and str(root / "chain" / "ca.crt") in r.out
            if i == 0:
                r = run_cli("operator", "add", "--name", OWNER[0], "--password", OWNER[1],
                            "--role", "owner", data=data)
                assert r.code == 0, r.err
                assert run_cli("export", "--out", root / "hq.sync", data=data).code == 0
            else:
                r = run_cli("import", root / "hq.sync", data=data)
                assert r.code == 0, r.err
            log = root / f"{node}.log"
            with log.open("wb") as out:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "reference_app", "--data", str(data),
                     "--https", f"0.0.0.0:{base + i}", "--listen", "127.0.0.1:0",
                     "--api", "127.0.0.1:0", "--no-mdns"],
                    stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            counters.append(Counter(node, data, base + i, log, proc))
        trust = ca_context(root)
        for c in counters:
            wait_for(partial(answers, c, trust), 60, f"{c.node}'s counter over HTTPS")
        yield root, counters
    finally:
        for c in counters:
            c.proc.send_signal(signal.SIGTERM)
        for c in counters:
            try:
                assert c.proc.wait(30) in (0, -signal.SIGTERM), \
                    c.log.read_text(errors="replace")[-3000:]
            finally:
                if c.proc.poll() is None:
                    c.proc.kill()
                    c.proc.wait()


def ca_context(root: Path) -> ssl.SSLContext:
    """What a tablet does once: trust the chain's CA (and nothing else here)."""
    return ssl.create_default_context(cafile=str(root / "chain" / "ca.crt"))


def answers(c: Counter, trust: ssl.SSLContext) -> bool:
    assert c.proc.poll() is None, c.log.read_text(errors="replace")
    try:
        with urllib.request.urlopen(f"{c.url()}/login", context=trust, timeout=3) as r:
            return bool(r.status == 200)
    except OSError:
        return False


def session_id(jar: http.cookiejar.CookieJar, name: str) -> str:
    """The session id inside a Starlette session cookie (base64 JSON, then signature)."""
    value = next(str(c.value) for c in jar if c.name == name)
    payload = value.split(".", 1)[0]
    return str(json.loads(base64.b64decode(payload + "=" * (-len(payload) % 4)))["id"])


def test_the_counter_is_served_over_https_with_the_chain_certificate(
        chain: tuple[Path, list[Counter]]) -> None:
    root, (sh01, _sh02) = chain
    trust = ca_context(root)
    for host in (LAN, "localhost", "127.0.0.1"):  # the LAN address and the PC itself
        with urllib.request.urlopen(f"{sh01.url(host)}/login", context=trust,
                                    timeout=10) as r:
            assert r.status == 200
            assert "crdtledger" in r.read().decode()
            cookie = r.headers["set-cookie"]
    # The session cookie is named after the branch and port, and over HTTPS it is Secure.
    assert cookie.startswith(f"crdtledger-SH01-{sh01.port}=")
    assert "secure" in cookie.lower() and "httponly" in cookie.lower()
    # The certificate is the chain's, naming the address it was made for.
    pem = ssl.get_server_certificate((LAN, sh01.port))
    cert = x509.load_pem_x509_certificate(pem.encode())
    ca = x509.load_pem_x509_certificate((root / "chain" / "ca.crt").read_bytes())
    cert.verify_directly_issued_by(ca)
    # A client that does not trust the chain's CA is refused, as is an address the
    # certificate does not name (127.0.0.3 reaches the same port).
    with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
        urllib.request.urlopen(f"{sh01.url()}/login", context=ssl.create_default_context(),
                               timeout=10)
    with pytest.raises(urllib.error.URLError, match=r"CERTIFICATE_VERIFY_FAILED|match"):
        urllib.request.urlopen(f"{sh01.url('127.0.0.3')}/login", context=trust, timeout=10)
    # Plain HTTP gets no page on the HTTPS port.
    with pytest.raises((urllib.error.URLError, ConnectionError)):
        urllib.request.urlopen(f"http://{LAN}:{sh01.port}/login", timeout=10)


def test_two_branches_on_one_host_keep_their_own_sessions(
        chain: tuple[Path, list[Counter]]) -> None:
    """One browser (one cookie jar: cookies are per host, not per port) opens SH01,
    then SH02, then SH01 again: SH01 still sees the same session, so whoever was
    logged in there still is."""
    root, (sh01, sh02) = chain
    jar = http.cookiejar.CookieJar()
    browser = urllib.request.build_opener(urllib.request.HTTPSHandler(context=ca_context(root)),
                                          urllib.request.HTTPCookieProcessor(jar))
    one, two = f"crdtledger-SH01-{sh01.port}", f"crdtledger-SH02-{sh02.port}"
    browser.open(f"{sh01.url()}/login", timeout=10).read()
    first = session_id(jar, one)
    browser.open(f"{sh02.url()}/login", timeout=10).read()
    assert {c.name for c in jar} == {one, two}
    browser.open(f"{sh01.url()}/login", timeout=10).read()
    assert session_id(jar, one) == first
    assert session_id(jar, two) != first


def test_https_flags_are_refused_with_how_to_make_a_certificate(tmp_path: Path) -> None:
    assert run_cli("chain", "init", "--out", tmp_path / "chain").code == 0
    data = tmp_path / "sh03"
    assert run_cli("init", "--node", "SH03", "--chain", tmp_path / "chain", data=data).code == 0

    def serving(*argv: str) -> counter_app.Serving:
        args = counter_app.parser().parse_args(["--data", str(data), *argv])
        return counter_app.serving(args, data)

    assert serving().url == "http://127.0.0.1:8080"  # unchanged without --https
    with pytest.raises(LedgerError, match="crdtledger https-cert --chain CHAIN_DIR"):
        serving("--https", "0.0.0.0:8443")
    with pytest.raises(LedgerError, match="--http or --https, not both"):
        serving("--https", "0.0.0.0:8443", "--http", "127.0.0.1:8080")
    with pytest.raises(LedgerError, match="are for --https"):
        serving("--cert", str(data / "tls" / "node.crt"))
    with pytest.raises(LedgerError, match="together"):
        serving("--https", "0.0.0.0:8443", "--cert", str(data / "tls" / "node.crt"))
    with pytest.raises(LedgerError, match=r"cannot use .* as the counter's certificate"):
        serving("--https", "0.0.0.0:8443", "--cert", str(data / "tls" / "node.crt"),
                "--key", str(data / "tls" / "ca.crt"))
    # The owner's own pair is taken as given (here the node's, which loads).
    own = serving("--https", "0.0.0.0:8443", "--cert", str(data / "tls" / "node.crt"),
                  "--key", str(data / "tls" / "node.key"))
    assert own.cert == data / "tls" / "node.crt" and own.url == "https://0.0.0.0:8443"
    # A certificate of another chain's CA is refused where it is made.
    assert run_cli("chain", "init", "--out", tmp_path / "other").code == 0
    r = run_cli("https-cert", "--chain", tmp_path / "other", "--host", "till2", data=data)
    assert r.code == 1 and "belongs to chain chain, not to" in r.err
    r = run_cli("https-cert", "--chain", tmp_path / "chain", "--host", "till2.local",
                "--host", "192.168.1.20", data=data)
    assert r.code == 0, r.err
    made = serving("--https", "0.0.0.0:8443")
    assert made.cert == webcert.files(data, webcert.COUNTER)[0]
    cert = x509.load_pem_x509_certificate(made.cert.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["till2.local", "localhost"]
    assert [str(a) for a in san.get_values_for_type(x509.IPAddress)] == \
        ["192.168.1.20", "127.0.0.1"]
    assert made.key is not None and made.key.stat().st_mode & 0o077 == 0
    # DATA/node.toml's [counter] is enough for a service started with --data alone;
    # the command line wins over it.
    (data / "node.toml").write_text('[counter]\nhttps = "0.0.0.0:9443"\n', encoding="utf-8")
    assert serving().url == "https://0.0.0.0:9443" and serving().cert == made.cert
    assert serving("--http", "127.0.0.1:8081").url == "http://127.0.0.1:8081"
    (data / "node.toml").write_text(f'[counter]\nhttps = "0.0.0.0:9443"\ncert = "{made.cert}"\n',
                                    encoding="utf-8")
    with pytest.raises(LedgerError, match="together"):
        serving()
    (data / "node.toml").write_text('[counter]\nport = 8443\n', encoding="utf-8")
    with pytest.raises(LedgerError, match=r"\[counter\] takes http, https, cert and key"):
        serving()
    (data / "node.toml").unlink()
    # The member port takes the counter's certificate when it has none of its own.
    members = members_config(data, "127.0.0.1:0", None, None)
    assert members.sock is not None
    members.sock.close()
    assert members.cert == made.cert


def test_cookie_names_differ_by_branch_and_port() -> None:
    names = {counter_app.session_cookie(n, p) for n in ("SH01", "SH02") for p in (8080, 8443)}
    assert len(names) == 4


@pytest.mark.slow
def test_logged_in_at_both_branches_in_one_browser(chain: tuple[Path, list[Counter]],
                                                   tmp_path: Path) -> None:
    """What the owner saw: log in at SH01, then at SH02 in the same browser, and SH01's
    counter is still open (with one cookie name for both, SH02's login replaced SH01's
    cookie and SH01 asked for the login again)."""
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.fail(f"{CHROMIUM} and {CHROMEDRIVER} are needed: ./run setup installs them")
    _root, (sh01, sh02) = chain
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    # The certificate is checked against the chain's CA by the test above; Chromium
    # here does not know that CA.
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--window-size=1400,1000",
                 "--ignore-certificate-errors", f"--user-data-dir={tmp_path / 'chromium'}",
                 "--lang=zh-CN"):
        options.add_argument(flag)
    d = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    counter = "//input[@placeholder='搜索会员']"
    try:
        for c in (sh01, sh02):
            d.get(f"{c.url()}/")  # no session yet there: the login page
            type_into(d, "//input[@type='text' or not(@type)]", OWNER[0],
                      what=f"{c.node}'s login page")
            type_into(d, "//input[@type='password']", OWNER[1], Keys.ENTER,
                      what="the password")
            wait_for_page(d, lambda d: xpath(d, counter), f"{c.node}'s counter")
        d.get(f"{sh01.url()}/")
        wait_for_page(d, lambda d: xpath(d, counter), "SH01's counter, still logged in")
        assert xpath(d, "//input[@type='password']") is None
    finally:
        d.quit()
