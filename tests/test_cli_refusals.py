"""Commands refused with a sentence that change nothing: an export aimed at the node's
own files, an enrolment the chain directory cannot make. The real command line on
real data directories (a tester's findings, 5 December)."""

from __future__ import annotations

import shutil
from pathlib import Path

from conftest import Cli


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
    for data in (tmp_path / "n1", tmp_path / "n2"):
        if data.name == "n2":
            data.mkdir()
            (data / "notes.txt").write_text("the owner's own file")
        r = cli("init", "--node", "SH05", "--chain", copy, data=data)
        assert r.code == 1 and "ca.key" in r.err, r
        assert (sorted(p.name for p in data.iterdir()) if data.exists() else None) == (
            ["notes.txt"] if data.name == "n2" else None)
        r = cli("init", "--node", "SH05", "--chain", chain, data=data)
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
