"""Progress of long work at the command line (issue 17 part 9): sync files, backups and
restores say each step on stderr, with the time since the command began; stdout keeps
only the result, so scripts and --json are unchanged. Real CLI processes; stderr is no
terminal here, so CRDTLEDGER_PROGRESS=1 asks for the lines (a terminal gets them
unasked) and without it nothing is said."""

from __future__ import annotations

import json
import re
from pathlib import Path

from cluster import cluster
from conftest import run_cli

from peer import progress

SHOW = {progress.ENV: "1"}
STEP = re.compile(r"^  \[ *\d+\.\d s\] \S")


def steps(err: str) -> list[str]:
    lines = err.splitlines()
    assert lines and all(STEP.match(ln) for ln in lines), err
    return [ln.split("] ", 1)[1] for ln in lines]


def test_sync_files_backups_and_restores_show_their_steps(tmp_path: Path) -> None:
    chain = tmp_path / "chain"
    assert run_cli("chain", "init", "--out", chain).code == 0
    sh01, sh02 = tmp_path / "sh01", tmp_path / "sh02"
    assert run_cli("init", "--node", "SH01", "--chain", chain, "--head-office",
                   data=sh01).code == 0
    assert run_cli("init", "--node", "SH02", "--chain", chain, data=sh02).code == 0
    r = run_cli("member", "add", "--name", "张伟", "--phone", "13800000001", data=sh01)
    assert r.code == 0, r.err

    # Not asked and no terminal: the command says its result only, as before.
    r = run_cli("export", "--out", tmp_path / "quiet.sync", data=sh01)
    assert r.code == 0 and r.err == "" and r.out.startswith("wrote "), r.err

    r = run_cli("export", "--out", tmp_path / "all.sync", data=sh01, env=SHOW)
    assert r.code == 0, r.err
    said = steps(r.err)
    assert said[0] == "gathering the records of every branch"
    assert re.fullmatch(r"[\d,]+ records to write; signing and encrypting them", said[1])
    assert said[2].startswith("writing ") and said[2].endswith(str(tmp_path / "all.sync"))
    assert r.out.startswith("wrote ") and len(r.out.splitlines()) == 1

    r = run_cli("import", tmp_path / "all.sync", "--json", data=sh02, env=SHOW)
    assert r.code == 0, r.err
    assert json.loads(r.out)["from"] == "SH01"  # stdout is the JSON alone
    said = steps(r.err)
    assert said[0].startswith(f"reading {tmp_path / 'all.sync'} (")
    assert said[1] == "checking its signature and decrypting it"
    assert re.fullmatch(r"verifying and applying [\d,]+ records from SH01 \(all or nothing\)",
                        said[2])

    r = run_cli("backup", "--out", tmp_path / "bk", data=sh02, env=SHOW)
    assert r.code == 0, r.err
    said = steps(r.err)
    assert said[0].startswith("copying the store (") and "keeps working" in said[0]
    assert said[1:] == ["checking the copy", "signing and encrypting the copy",
                        f"writing {(tmp_path / 'bk' / 'ledger.backup').stat().st_size:,} "
                        f"bytes to {tmp_path / 'bk' / 'ledger.backup'}"]

    r = run_cli("restore", "--from", tmp_path / "bk", "--chain", chain,
                data=tmp_path / "new", env=SHOW)
    assert r.code == 0, r.err
    said = steps(r.err)
    assert said[0].startswith(f"reading {tmp_path / 'bk' / 'ledger.backup'} (")
    assert said[1:] == ["checking its signature and decrypting it",
                        f"writing the store of node SH02 into {tmp_path / 'new'}"]
    assert r.out.startswith("restored node SH02 from the backup of ")


def test_work_handed_to_a_running_node_says_so(tmp_path: Path) -> None:
    with cluster(tmp_path) as c:
        node = c.add("SH01").start()
        r = run_cli("export", "--out", tmp_path / "x.sync", data=node.data, env=SHOW)
        assert r.code == 0, r.err
        assert steps(r.err)[0] == "export: handed to the running node"
        assert r.out.startswith("wrote ")
