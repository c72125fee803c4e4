"""Commands and inputs refused with a sentence that change nothing: an export aimed at
the node's own files, an enrolment the chain directory cannot make, a second node
under an id in service, a day no calendar has, a blank tag. The real command line on
real data directories (a tester's findings, 5 December)."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest
from conftest import Cli
from helpers import new_ledger

from crdtledger.errors import InvalidInput


def test_an_export_into_the_nodes_own_directory_is_refused(cli: Cli, tmp_path: Path) -> None:
    data = tmp_path / "sh01"
    assert cli("init", "--node", "SH01", "--chain", "acme", data=data).code == 0
    assert cli("member", "add", "--name", "王芳", "--phone", "13800000001", data=data).code == 0
    store = (data / "ledger.sqlite3").read_bytes()
    for target in (data / "ledger.sqlite3", data / "new.sync", data / "keys" / "x.sync", data):
        r = cli("export", "--out", target, data=data)
        assert r.code == 1 and "inside this node's data directory" in r.err, r
        assert "Traceback" not in r.err
    assert (data / "ledger.sqlite3").read_bytes() == store
    assert not (data / "new.sync").exists()
    r = cli("member", "find", "13800000001", data=data)
    assert r.code == 0 and "王芳" in r.out, r.err
    assert cli("export", "--out", tmp_path / "all.sync", data=data).code == 0


def test_an_enrolment_the_chain_copy_cannot_make_leaves_nothing(cli: Cli, tmp_path: Path
                                                               ) -> None:
    """A branch's copy of the chain directory has no CA key (as the README advises):
    `init` with it is refused, and leaves no store that would work as a node without a
    certificate and refuse the next `init`."""
    chain = tmp_path / "chain"
    assert cli("chain", "init", "--out", chain, "--name", "acme").code == 0
    copy = tmp_path / "branchcopy"
    copy.mkdir()
    for name in ("ca.crt", "chain.json", "chain.key"):
        if (chain / name).exists():
            shutil.copy(chain / name, copy / name)
    for data, node in ((tmp_path / "n1", "SH05"), (tmp_path / "n2", "SH06")):
        if data.name == "n2":
            data.mkdir()
            data.chmod(0o755)
            (data / "notes.txt").write_text("the owner's own file")
        r = cli("init", "--node", node, "--chain", copy, data=data)
        assert r.code == 1 and "ca.key" in r.err, r
        assert (sorted(p.name for p in data.iterdir()) if data.exists() else None) == (
            ["notes.txt"] if data.name == "n2" else None)
        if data.name == "n2":  # and its mode as it was (it was left 0700)
            assert data.stat().st_mode & 0o777 == 0o755
        r = cli("init", "--node", node, "--chain", chain, data=data)
        assert r.code == 0 and "with a certificate of chain acme" in r.out, r.err


def test_a_day_past_the_calendar_and_json_nested_too_deep_are_refused(
        cli: Cli, tmp_path: Path) -> None:
    data = tmp_path / "sh01"
    assert cli("init", "--node", "SH01", "--chain", "acme", data=data).code == 0
    r = cli("report", "daily", "--day", "9999-12-31", data=data)
    assert r.code == 1 and "past the last day" in r.err and "Traceback" not in r.err, r
    deep = "[" * 50_000 + "]" * 50_000
    r = cli("rule", "set", "services", "--json-body", deep, data=data)
    assert r.code == 1 and "nested too deeply" in r.err and "Traceback" not in r.err, r


def test_a_node_id_ever_issued_is_not_enrolled_again(cli: Cli, tmp_path: Path) -> None:
    """A second store under an id the chain's CA certified would write its own first
    records: a fork, and the real branch blocked everywhere. Revoked first (as the
    refusal used to advise), the new store's writes were refused as that fork at
    every branch that held the old log: its members and top-ups reached nobody."""
    chain = tmp_path / "chain"
    assert cli("chain", "init", "--out", chain, "--name", "acme").code == 0
    assert cli("init", "--node", "SH01", "--chain", chain, data=tmp_path / "a").code == 0
    r = cli("init", "--node", "SH01", "--chain", chain, data=tmp_path / "a2")
    assert r.code == 1 and "has had a node SH01" in r.err, r
    assert "new node id" in r.err and "revoke it first" not in r.err
    assert not (tmp_path / "a2").exists()
    hq = tmp_path / "hq"
    assert cli("init", "--node", "HQ", "--chain", chain, "--head-office", data=hq).code == 0
    r = cli("chain", "revoke", "--chain", chain, "--node", "SH01", data=hq)
    assert r.code == 0, r.err
    r = cli("init", "--node", "SH01", "--chain", chain, data=tmp_path / "a2")
    assert r.code == 1 and "has had a node SH01" in r.err, r
    assert not (tmp_path / "a2").exists()
    assert cli("init", "--node", "SH05", "--chain", chain, data=tmp_path / "a2").code == 0


def test_an_import_that_proves_a_fork_says_so(cli: Cli, tmp_path: Path) -> None:
    """A cloned disk: two stores of SH01 write at one position of its log. The branch
    importing both files is told, not only `status`."""
    chain = tmp_path / "chain"
    assert cli("chain", "init", "--out", chain, "--name", "acme").code == 0
    a, b = tmp_path / "a", tmp_path / "b"
    assert cli("init", "--node", "SH01", "--chain", chain, data=a).code == 0
    assert cli("init", "--node", "SH02", "--chain", chain, data=b).code == 0
    clone = tmp_path / "clone"
    shutil.copytree(a, clone)
    (clone / "lock").unlink(missing_ok=True)
    for data, phone in ((a, "13800000001"), (clone, "13800000002")):
        assert cli("member", "add", "--name", "王芳", "--phone", phone, data=data).code == 0
        assert cli("export", "--out", tmp_path / f"{data.name}.sync", data=data).code == 0
    r = cli("import", tmp_path / "a.sync", data=b)
    assert r.code == 0 and "WARNING" not in r.out, r.err
    r = cli("import", tmp_path / "clone.sync", data=b)
    assert "WARNING: the file shows that branch SH01 forked its log" in r.out, r


def test_a_birthday_no_calendar_has_is_refused(cli: Cli, tmp_path: Path) -> None:
    data = tmp_path / "sh01"
    assert cli("init", "--node", "SH01", "--chain", "acme", data=data).code == 0
    for day in ("02-30", "13-45", "00-00", "2026-02-30", "1991-02-29"):
        r = cli("member", "add", "--name", "王芳", "--phone", "13800000001",
                "--birthday", day, data=data)
        assert r.code == 1 and "a day of the calendar" in r.err, (day, r)
    r = cli("member", "add", "--name", "王芳", "--phone", "13800000001",
            "--birthday", "02-29", data=data)
    assert r.code == 0, r.err


def test_a_birthday_to_come_or_before_1900_is_refused(cli: Cli, tmp_path: Path) -> None:
    """2099-01-01 was kept as a member's birthday, on add and on edit."""
    data = tmp_path / "sh01"
    assert cli("init", "--node", "SH01", "--chain", "acme", data=data).code == 0
    for day in ("2099-01-01", "1899-12-31"):
        r = cli("member", "add", "--name", "王芳", "--phone", "13800000001",
                "--birthday", day, data=data)
        said = "birthday must be a day already past, from 1900-01-01 to today"
        assert r.code == 1 and said in r.err and repr(day) in r.err, (day, r)
    mid = cli("member", "add", "--name", "王芳", "--phone", "13800000001", "--birthday",
              "1900-01-01", "--json", data=data).json()["member_id"]
    r = cli("member", "edit", "--member", mid, "--birthday", "2099-01-01", data=data)
    assert r.code == 1 and "a day already past" in r.err, r
    for day in ("05-17", "2000-02-29"):
        assert cli("member", "edit", "--member", mid, "--birthday", day, data=data).code == 0
    shown = cli("member", "show", "--member", mid, "--json", data=data).json()
    assert shown["birthday"] == "2000-02-29", shown


def test_a_blank_tag_or_field_name_is_refused(tmp_path: Path) -> None:
    a = new_ledger(tmp_path, "SH01")
    try:
        with pytest.raises(InvalidInput, match="tag is required"):
            a.add_member(a.owner, name="王芳", phone="13800000001", tags=[" "])
        with pytest.raises(InvalidInput, match="field name is required"):
            a.add_member(a.owner, name="王芳", phone="13800000001", custom={" ": "x"})
        assert a.storage.conn.execute("SELECT count(*) FROM members").fetchone() == (0,)
    finally:
        a.close()


def test_a_done_write_exits_0_whatever_its_output_meets(cli: Cli, tmp_path: Path) -> None:
    """Exit 1 means refused. A member added, then its answer not encodable for the
    terminal (a Windows pipe, PYTHONIOENCODING=cp1252), or a top-up whose reader had
    gone (`| head`), printed a traceback and exited 1 though done: a cashier then
    tried the top-up again."""
    import subprocess

    from conftest import cli_command, cli_env

    data = tmp_path / "a"
    assert cli("init", "--node", "SH01", data=data).code == 0
    r = cli("member", "add", "--name", "张三", "--phone", "13800000001", data=data,
            env={"PYTHONIOENCODING": "cp1252"})
    assert r.code == 0 and "Traceback" not in r.err, r
    assert "\\u" in r.out and re.search(r"[0-9A-Z]{13}\.SH01", r.out), r.out  # escaped
    read, write = os.pipe()
    os.close(read)  # the reader has gone before anything is written
    proc = subprocess.run(cli_command("audit", "--limit", "50", "--data", data),
                          stdout=write, stderr=subprocess.PIPE, env=cli_env(), timeout=120,
                          check=False)
    os.close(write)
    assert proc.returncode == 0 and b"Traceback" not in proc.stderr, proc.stderr


def test_a_node_does_not_revoke_itself(cli: Cli, tmp_path: Path) -> None:
    """Its own id typed for another's: head office went on selling, every branch
    refused it from then on, and balances differed for good."""
    chain = tmp_path / "chain"
    assert cli("chain", "init", "--out", chain, "--name", "acme").code == 0
    hq = tmp_path / "hq"
    assert cli("init", "--node", "HQ", "--chain", chain, "--head-office", data=hq).code == 0
    crl = chain / "crl.der"
    before = crl.read_bytes() if crl.exists() else None
    r = cli("chain", "revoke", "--chain", chain, "--node", "HQ", data=hq)
    assert r.code == 1 and "does not revoke itself" in r.err, r
    assert (crl.read_bytes() if crl.exists() else None) == before


def test_export_over_a_link_or_a_device_is_refused(cli: Cli, tmp_path: Path) -> None:
    """`--out /dev/stdout` (a link) or a device: the export replaced it with a file of
    every member's data (as root, /dev/null went for the whole machine)."""
    data = tmp_path / "a"
    assert cli("init", "--node", "SH01", data=data).code == 0
    target = tmp_path / "usb.sync"
    target.write_bytes(b"")
    link = tmp_path / "link.sync"
    link.symlink_to(target)
    r = cli("export", "--out", link, data=data)
    assert r.code == 1 and "not a regular file" in r.err, r
    assert link.is_symlink() and target.read_bytes() == b""
    fifo = tmp_path / "pipe.sync"  # a special file of the test's own, never /dev's
    os.mkfifo(fifo)
    r = cli("export", "--out", fifo, data=data)
    assert r.code == 1 and "not a regular file" in r.err, r
    assert fifo.is_fifo()


def test_service_args_with_an_unbalanced_quote_are_refused_with_a_sentence(
        cli: Cli, tmp_path: Path) -> None:
    data = tmp_path / "a"
    assert cli("init", "--node", "SH01", data=data).code == 0
    r = cli("service", "install", "--args", '--title "Shop', "--unit-dir", tmp_path / "units",
            "--no-start", data=data)
    assert r.code != 0 and "Traceback" not in r.err and "quotation" in r.err, r


def test_a_write_the_node_did_not_answer_in_time_may_still_be_done(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A routed top-up that timed out said only "did not answer", and the node did it
    once it went on (a store held by another program, a PC that stalled): tried
    again, it was done twice. The sentence says it may still be done, and where to
    look first."""
    import socket
    import threading

    from peer import local

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    held: list[object] = []
    threading.Thread(target=lambda: held.append(server.accept()), daemon=True).start()
    monkeypatch.setattr(local, "TIMEOUT_S", 0.3)
    node = local.Running(f"http://127.0.0.1:{server.getsockname()[1]}", "token", "SH01", 1)
    with pytest.raises(local.NodeUnreachable, match="may still do it"):
        local.call(node, "/op", {"name": "topup"})
    server.close()


@pytest.mark.parametrize("setting", [
    'peers = 5', 'peers = "wss://hq:8470"', 'mdns = "false"',
    'peers = ["wss://127.0.0.1:99999"]', 'peers = ["wss://"]', 'peers = ["wss://a b:1"]',
    'peers = ["wss://127.0.0.1:9/some/path"]', 'peers = ["https://hq:8470"]',
    # No port: it dialled 443; a misspelt key was passed over; a listen address no
    # PC has said only "Name or service not known".
    'peers = ["wss://127.0.0.1"]', 'lisen = "0.0.0.0:8470"', 'listen = "abc"'])
def test_node_settings_a_dial_cannot_take_are_refused_with_a_sentence(
        cli: Cli, tmp_path: Path, setting: str) -> None:
    """`peers = 5` was a traceback; `mdns = "false"` turned discovery on (bool of a
    string); a peer no dial can reach (a port past 65535, no host, a path) was taken
    without a word and redialled for ever."""
    data = tmp_path / "a"
    assert cli("init", "--node", "SH01", data=data).code == 0
    (data / "node.toml").write_text(setting + "\n", encoding="utf-8")
    r = cli("node", "run", data=data, timeout=60)
    assert r.code == 1 and "node settings" in r.err and "Traceback" not in r.err, r


def test_a_renewed_head_office_keeps_governing(cli: Cli, tmp_path: Path) -> None:
    """`chain renew` issued the head office a certificate without its mark: it could
    change no rule any more, and a branch joining afterwards judged its old rules by
    the new certificate and blocked the head office for good."""
    from helpers import sync

    from crdtledger.ledger import Ledger

    chain = tmp_path / "chain"
    assert cli("chain", "init", "--out", chain, "--name", "acme").code == 0
    for node, extra in (("HQ", ["--head-office"]), ("SH03", [])):
        assert cli("init", "--node", node, "--chain", chain, *extra,
                   data=tmp_path / node).code == 0
    with Ledger.open(tmp_path / "HQ") as hq:
        hq.set_rule(hq.owner, "branches", {"HQ": "总部", "SH03": "三店"})
    r = cli("chain", "renew", "--chain", chain, data=tmp_path / "HQ")
    assert r.code == 0, r.err
    with Ledger.open(tmp_path / "HQ") as hq, Ledger.open(tmp_path / "SH03") as joiner:
        assert hq.trust.governs
        hq.set_rule(hq.owner, "branches", {"HQ": "总部", "SH03": "三店", "SH04": "四店"})
        sync(hq, joiner)
        assert not joiner.storage.log.blocked()
        assert joiner.rule("branches") == hq.rule("branches")
    # Renewed by an older build (no mark): the next renewal finds it on a certificate
    # the chain issued before. And one never marked gets it by --head-office.
    from peer.chain import enrol
    (tmp_path / "HQ" / "tls").rename(tmp_path / "HQ" / "tls.older-build")
    enrol(chain, tmp_path / "HQ", "HQ")
    assert cli("chain", "renew", "--chain", chain, data=tmp_path / "HQ").code == 0
    with Ledger.open(tmp_path / "HQ") as hq:
        assert hq.trust.governs
    assert cli("chain", "renew", "--chain", chain, "--head-office",
               data=tmp_path / "SH03").code == 0
    with Ledger.open(tmp_path / "SH03") as sh03:
        assert sh03.trust.governs
