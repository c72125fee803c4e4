"""The README's main job, run as a new user would: `./run demo` brings up three branch
processes with their counter pages; Ctrl-C stops them all; a second run resumes the
same data (here the second run uses --exit, which stops once everything is up)."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import cli_env, free_port

from crdtledger.ledger import Ledger
from reference_app.demo_data import BRANCHES, MEMBERS

pytestmark = pytest.mark.slow

UP_TIMEOUT_S = 120  # generous: a hang is a failure, slowness on a shared box is not


def demo_argv(data: Path, port: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "reference_app.demo", "--data", str(data),
            "--port", str(port), *extra]


def processes_using(path: Path) -> list[str]:
    """Command lines of live processes that name `path`: what a stopped demo must not
    leave behind."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if str(path) in cmdline:
            found.append(f"{proc.name}: {cmdline}")
    return found


def lines_of(proc: subprocess.Popen[str]) -> queue.Queue[str | None]:
    """The process's output lines, read in a thread so the test never blocks on it."""
    q: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            q.put(line)
        q.put(None)

    threading.Thread(target=pump, daemon=True).start()
    return q


def read_until(q: queue.Queue[str | None], marker: str) -> str:
    out = ""
    deadline = time.monotonic() + UP_TIMEOUT_S
    while marker not in out:
        try:
            line = q.get(timeout=max(0.1, deadline - time.monotonic()))
        except queue.Empty:
            raise AssertionError(f"no {marker!r} in time; output so far:\n{out}") from None
        if line is None:
            raise AssertionError(f"the demo ended before {marker!r}:\n{out}")
        out += line
    return out


def http_get(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=10) as r:
        return int(r.status), r.read()


def digest(api_port: int) -> str:
    return str(json.loads(http_get(f"http://127.0.0.1:{api_port}/health")[1])["digest"])


@pytest.fixture
def demo_dir(tmp_path: Path) -> Iterator[Path]:
    data = tmp_path / "demo-data"
    yield data
    assert processes_using(data) == []


def test_demo_runs_three_branches_with_counter_pages_and_resumes(demo_dir: Path) -> None:
    port = free_port(3 * len(BRANCHES) + 1)  # and the member pages
    proc = subprocess.Popen(demo_argv(demo_dir, port), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=cli_env())
    try:
        out = read_until(lines_of(proc), "Ctrl-C stops")
        urls = re.findall(r"(SH01|SH02|HZ01) \S+ +(http://127\.0\.0\.1:\d+)", out)
        assert [u for _n, u in urls] == [f"http://127.0.0.1:{port + i}" for i in range(3)]
        assert "demo / demo1234" in out and "张伟" in out
        # Every counter page answers (the login page, for a browser without a session).
        for _node, url in urls:
            status, body = http_get(url)
            assert status == 200 and b"<html" in body.lower()
        # The branches hold the same data: the demo printed once they did. What their
        # first daily pass writes (a minute after they start: on a busy machine, just
        # after the demo printed) reaches the others a moment later.
        apis = [port + 6 + i for i in range(3)]
        deadline = time.monotonic() + 60
        while len(seen := {digest(api) for api in apis}) != 1:
            assert time.monotonic() < deadline, f"the branches never agreed: {seen}"
            time.sleep(0.5)
        assert processes_using(demo_dir)  # the three branches are running
        proc.send_signal(signal.SIGINT)  # what Ctrl-C at the terminal sends
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:  # a failed check: stop the branches too, as Ctrl-C does
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    assert processes_using(demo_dir) == []  # Ctrl-C left no branch behind

    with Ledger.open(demo_dir / "SH01", lock=False) as ledger:
        before = {r[0] for r in ledger.storage.conn.execute("SELECT id FROM entries")}
        members = ledger.storage.conn.execute("SELECT COUNT(*) FROM members").fetchone()[0]
    assert members == MEMBERS + 2 and len(before) > 300  # and a duplicate registered twice

    again = subprocess.run(demo_argv(demo_dir, port, "--exit"), capture_output=True,
                           text=True, env=cli_env(), timeout=UP_TIMEOUT_S, check=False)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "Demo data found" in again.stdout and "Creating" not in again.stdout
    with Ledger.open(demo_dir / "SH01", lock=False) as ledger:
        after = {r[0] for r in ledger.storage.conn.execute("SELECT id FROM entries")}
        (count,) = ledger.storage.conn.execute("SELECT COUNT(*) FROM members").fetchone()
        assert count == MEMBERS + 2
    assert before <= after  # the same data, not seeded again (new rights moves may add)


def test_a_second_demo_on_the_same_data_changes_nothing(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A second `./run demo` on the data of one running deleted its stores (--fresh)
    or rewrote each branch's printer and mail settings, then said "running" about the
    first demo's pages and exited 0. It is refused before it touches anything."""
    from reference_app import demo

    root = tmp_path / "demo-data"
    head = next(iter(BRANCHES))
    Ledger.create(root / head, head)
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    try:
        with Ledger.open(root / head):  # the demo that runs
            code = demo.main(["--data", str(root), "--fresh", "--exit"])
    finally:
        signal.signal(signal.SIGINT, handlers[0])
        signal.signal(signal.SIGTERM, handlers[1])
    assert code == 1
    assert "a demo already runs" in capsys.readouterr().err
    assert (root / head / "ledger.sqlite3").exists()
    assert sorted(p.name for p in root.iterdir()) == [head]


def test_the_counter_app_refuses_a_directory_a_node_runs_on(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`crdtledger-counter --data D` on the directory of a running node stayed up with
    no node, and once stopped removed the node's run file, cutting the command line off
    from it. It says so and exits 1 before it starts anything."""
    from peer.chain import enrol, init_chain
    from peer.local import RUN_FILE
    from reference_app import app

    chain = init_chain(tmp_path / "chain")
    Ledger.create(tmp_path / "SH01", "SH01", chain.name)
    enrol(tmp_path / "chain", tmp_path / "SH01", "SH01")
    (tmp_path / "SH01" / RUN_FILE).write_text("{}")  # the running node's
    with Ledger.open(tmp_path / "SH01"):
        assert app.main(["--data", str(tmp_path / "SH01")]) == 1
    assert "in use by another process" in capsys.readouterr().out
    assert (tmp_path / "SH01" / RUN_FILE).exists()


@pytest.mark.parametrize("taken", ["--http", "--listen", "--api"])
def test_the_counter_app_names_a_port_another_program_holds(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], taken: str) -> None:
    """A counter whose page port another program held printed "ready to go" on it,
    then the bind error and two tracebacks of its node stopped halfway, and exited 3.
    Each port it will listen on is tried first: a sentence naming it, exit 2, and no
    store opened."""
    import socket

    from peer.chain import enrol, init_chain
    from reference_app import app

    init_chain(tmp_path / "chain")
    Ledger.create(tmp_path / "SH01", "SH01", "chain")
    enrol(tmp_path / "chain", tmp_path / "SH01", "SH01")
    ports = {flag: free_port() for flag in ("--http", "--listen", "--api")}
    with socket.socket() as other:
        other.bind(("127.0.0.1", ports[taken]))
        other.listen()
        argv = ["--data", str(tmp_path / "SH01")]
        for flag, port in ports.items():
            argv += [flag, f"127.0.0.1:{port}"]
        assert app.main(argv) == 2
    out = capsys.readouterr().out
    assert f"on 127.0.0.1:{ports[taken]}: Address already in use" in out
    assert "Traceback" not in out
    assert not (tmp_path / "SH01" / app.SESSIONS_DIR).exists()


def test_a_demo_whose_ports_are_taken_says_so_before_it_starts(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A second demo on other data but the same ports: its branches could not bind and
    stopped, but the first demo's pages and health answers on those ports read as its
    own ("running"). It names the port taken and creates nothing."""
    import socket

    from reference_app import demo

    base = free_port()
    root = tmp_path / "demo-data"
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with socket.socket() as other:  # another program listens on the API port of HZ01
        other.bind(("127.0.0.1", base + 2 * len(BRANCHES)))
        other.listen()
        try:
            code = demo.main(["--data", str(root), "--port", str(base), "--exit"])
        finally:
            signal.signal(signal.SIGINT, handlers[0])
            signal.signal(signal.SIGTERM, handlers[1])
    assert code == 1
    assert f"port {base + 2 * len(BRANCHES)} on 127.0.0.1 already in use" in (
        capsys.readouterr().err)
    assert not root.exists()


def test_the_demos_printer_and_mail_stand_ins_keep_off_its_ports(tmp_path: Path) -> None:
    """`./run demo --port 9100` (or a base whose ten ports take in 2525): the receipt
    printer stand-in took 9100 before SH01's counter started, and SH01 stopped on a
    bind error the demo could only report as a time-out. The stand-ins take any free
    port where the branches' ports lie."""
    from reference_app import demo

    for base in (demo.PRINTER_PORT, demo.SMTP_PORT - 3):
        d = demo.Demo(tmp_path / str(base), base)
        for name in demo.BRANCHES:
            d.data(name).mkdir(parents=True)
        d.start_printer()
        d.start_mail()
        try:
            assert d.printer.port not in d.ports() and d.smtp.port not in d.ports()
        finally:
            d.printer.stop()
            d.smtp.stop()
