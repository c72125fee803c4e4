"""Settings and stores edited by a hostile hand (16th round): node.toml, printer.toml and
chain.json that are not what they should be are each refused with a sentence naming the
file, nothing changed (they were tracebacks of the parser); a bad [notify] stops the
counter before its pages start (it stayed up with no node, /login a 500); a store whose
node id is not one writes no service unit; and the counter's sync import calls a backup
a backup. The real command line, counter and library on real data directories."""

from __future__ import annotations

import hashlib
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import cli_env

from crdtledger.errors import CorruptSyncFile
from crdtledger.ledger import Ledger
from crdtledger.storage import DB_FILE
from crdtledger.syncfile import read_file
from peer import cli as peer_cli
from peer import service
from peer.chain import enrol, init_chain
from peer.files import sealed_backup
from peer.gateways import SettingsError, gateways_from_config

DEEP = b"peers = " + b"[" * 5000 + b"]" * 5000 + b"\n"


def node(root: Path, name: str = "SH01") -> tuple[Path, Path]:
    """An enrolled node (data directory, chain directory), made in process."""
    chain, data = root / "chain", root / name.lower()
    if not chain.exists():
        init_chain(chain, "acme")
    Ledger.create(data, name, "acme")
    enrol(chain, data, name, head_office=name == "SH01")
    return data, chain


def digest(data: Path) -> str:
    """Every file of the data directory, so a refusal is seen to change nothing."""
    h = hashlib.sha256()
    for p in sorted(data.rglob("*")):
        if p.is_file() and not p.name.endswith(("-wal", "-shm")):
            h.update(str(p.relative_to(data)).encode() + p.read_bytes())
    return h.hexdigest()


def refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    capsys.readouterr()
    assert peer_cli.main(argv) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return err


@pytest.mark.parametrize(("body", "said"), [
    (b'listen = "127.0.0.1:0"\n# \xff\xfe caf\xe9\n', "is not UTF-8 TOML"),
    (DEEP, "nests too deep"),
    (b"listen = 8470\n", 'listen is an address as text, "HOST:PORT", not 8470'),
    (b'api = {host = "x"}\n', "api is an address as text"),
])
def test_node_toml_not_what_it_should_be_is_a_sentence_from_node_and_counter(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], body: bytes, said: str) -> None:
    """Not UTF-8 was a UnicodeDecodeError, an array nested 5,000 deep a RecursionError
    (from `node run` and the counter alike), `listen = 8470` "'int' object has no
    attribute 'rpartition'"."""
    from reference_app.app import main as counter_main

    data, _chain = node(tmp_path)
    (data / "node.toml").write_bytes(body)
    before = digest(data)
    err = refused(["node", "run", "--data", str(data), "--no-mdns"], capsys)
    assert "node.toml" in err and said in err, err
    # The counter reads the same file first: exit 2 with the same sentence.
    assert counter_main(["--data", str(data), "--no-mdns"]) == 2
    out = capsys.readouterr().out
    assert "node.toml" in out and said in out, out
    assert digest(data) == before
    if body in (DEEP,) or b"\xff" in body:
        with pytest.raises(SettingsError, match="not UTF-8 TOML"):
            gateways_from_config(data)


def _counter_refuses_to_start(data: Path, why: str) -> str:
    """Start the counter on `data`; it must exit 2 by itself. Returns what it said."""
    argv = [sys.executable, "-m", "reference_app", "--data", str(data), "--no-mdns",
            "--http", "127.0.0.1:0", "--listen", "127.0.0.1:0", "--api", "127.0.0.1:0"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, encoding="utf-8", env=cli_env())
    try:
        out, _ = proc.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        pytest.fail(f"the counter kept running on {why}: {out[-600:]}")
    assert proc.returncode == 2, out
    return out


@pytest.mark.parametrize(("body", "said"), [
    ('[notify.sms]\nkind = "carrier-pigeon"\n', "kind 'carrier-pigeon' is not one of"),
    ("notify = [1]\n", "[notify] is a table of settings"),
])
def test_a_bad_notify_stops_the_counter_before_its_pages_start(
        tmp_path: Path, body: str, said: str) -> None:
    """The counter started its pages and then its node, which refused the [notify]:
    the process stayed up, /login answered 500 ("the node is not started") and the
    service's restart-on-failure never fired. Now: exit 2 with the sentence."""
    data, _chain = node(tmp_path)
    (data / "node.toml").write_text(body, encoding="utf-8")
    out = _counter_refuses_to_start(data, "a bad [notify]")
    assert f"{data / 'node.toml'}" in out and said in out and "Traceback" not in out, out



def test_a_backup_the_store_refuses_stops_the_counter_before_its_pages_start(
        tmp_path: Path) -> None:
    """Another branch's backup copied into the data directory (to be restored when the
    store opens): the store refused it, and the counter stayed up with no node, /login
    a 500 ("the node is not started"), the sentence saying what to do in a traceback
    in the log. Now: exit 2 with the sentence."""
    data, _chain = node(tmp_path)
    other, _chain = node(tmp_path, "SH02")
    (data / "ledger.backup").write_bytes(sealed_backup(other))
    out = _counter_refuses_to_start(data, "a store that does not open")
    assert f"{data} holds node SH01" in out and "of node SH02" in out, out
    assert "move" in out and "Traceback" not in out, out

@pytest.mark.parametrize(("body", "said"), [
    (b'host = "127.0.0.1"\nwidth = 1e400\n', "width is 58 or 80"),
    (b"x = " + b"[" * 5000 + b"]" * 5000 + b"\n", "nests too deep"),
    (b"host = {a = 1}\n", "host is text"),
])
def test_printer_toml_not_what_it_should_be_is_a_sentence(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], body: bytes, said: str) -> None:
    """`width = 1e400` was an OverflowError, nested 5,000 deep a RecursionError, and a
    table for the host was taken ("receipts print on {'a': 1}:9100")."""
    data, _chain = node(tmp_path)
    (data / "printer.toml").write_bytes(body)
    err = refused(["printer", "show", "--data", str(data)], capsys)
    assert "printer.toml" in err and said in err, err
    assert (data / "printer.toml").read_bytes() == body


@pytest.mark.parametrize(("body", "said"), [
    (b"[" * 100_000, "nests too deep"),
    (b'\xff\xfe{}', "UTF-8 JSON"),
    (b'{"name": "acme", "fingerprint": 5}', "is not a chain's description"),
    (b'["acme"]', "is not a chain's description"),
])
def test_chain_json_not_what_it_should_be_is_a_sentence(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], body: bytes, said: str) -> None:
    """chain.json of 100k '[' was a RecursionError at `init`."""
    _data, chain = node(tmp_path)
    (chain / "chain.json").write_bytes(body)
    new = tmp_path / "sh02"
    err = refused(["init", "--data", str(new), "--node", "SH02", "--chain", str(chain)],
                  capsys)
    assert "chain.json" in err and said in err, err
    assert not new.exists()


@pytest.mark.parametrize("bad", ["SH01\nExecStartPre=+/bin/touch /tmp/pwned-by-unit",
                                 "../../evil/x", ""])
def test_a_store_whose_node_id_is_not_one_writes_no_service_unit(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], bad: str) -> None:
    """The node id in the store's meta went into the unit unchecked: one with a newline
    wrote an `ExecStartPre=+...` line (run as root) into it, one with a "/" was a raw
    FileNotFoundError."""
    data, _chain = node(tmp_path)
    db = sqlite3.connect(data / DB_FILE)
    with db:
        db.execute("UPDATE meta SET value = ? WHERE key = 'node'", (bad,))
    db.close()
    with pytest.raises(service.ServiceError, match="which is not a node id"):
        service.node_of(data)
    units = tmp_path / "units"
    err = refused(["service", "install", "--data", str(data), "--unit-dir", str(units),
                   "--no-start"], capsys)
    assert "is not a node id" in err and "the store was edited" in err, err
    assert not units.exists() and not list(tmp_path.rglob("*.service"))


def test_the_counter_calls_a_backup_picked_for_a_sync_import_a_backup(
        tmp_path: Path) -> None:
    """The library says "is a crdtledger backup file, not a sync file"; the counter's
    import said 文件内容损坏 (damaged), and the owner went looking for a fault."""
    from reference_app.backoffice import _why

    data, _chain = node(tmp_path)
    other, _ = node(tmp_path, "SH02")
    backup = tmp_path / "ledger.backup"
    backup.write_bytes(sealed_backup(data))
    with Ledger.open(other) as ledger, pytest.raises(CorruptSyncFile) as caught:
        read_file(ledger, backup)
    assert "backup file, not a sync file" in str(caught.value)
    assert _why(caught.value) == "这是备份文件，不是同步文件（恢复备份请用命令 crdtledger restore）"
