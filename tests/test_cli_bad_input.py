"""Bad input at the command line, alone and handed to a running node (a tester's
findings, 7 December, late evening): a JSON number of more than 4,300 digits in
`--json-body` or `--pref` was a Python traceback; refusals named a parameter as the
library does (`yuan must be ...`, `change_text ...`, `debit_id ...`), not by the
option the person typed; an amount typed in full-width digits ("１２") was refused
without the "type it as 12" that `money.parse_yuan` says, the shape check refusing it
first. Real CLI processes on real data directories; the running node is a real node."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from conftest import CliResult, run_cli

from crdtledger.ledger import Ledger

LONG_NUMBER = "1" + "0" * 5000  # past int()'s 4,300 digits


def state(data: Path) -> dict[str, str]:
    """Every table of the store, as a digest each (the refused attempts' list aside)."""
    with Ledger.open(data, lock=False) as ledger:
        conn = ledger.storage.conn
        names = [n for (n,) in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' "
            "AND name NOT LIKE 'sqlite_%' AND name != 'refusals'")]
        return {t: hashlib.sha256(repr(conn.execute(
            f"SELECT * FROM {t} ORDER BY 1").fetchall()).encode()).hexdigest() for t in names}


def refused(r: CliResult) -> str:
    assert r.code == 1, (r.code, r.out, r.err)
    assert "Traceback" not in r.err, r.err
    lines = r.err.strip().splitlines()
    assert len(lines) == 1, r.err
    return lines[0]


@pytest.fixture
def shop(tmp_path: Path) -> tuple[Path, str]:
    data = tmp_path / "sh01"
    assert run_cli("init", "--node", "SH01", "--chain", "acme", data=data).code == 0
    member = run_cli("member", "add", "--name", "李雷", "--phone", "13800000001", "--json",
                     data=data).json()["member_id"]
    assert run_cli("topup", "--member", member, "--amount", "100.00", data=data).code == 0
    return data, str(member)


@pytest.mark.parametrize("argv", [
    ("rule", "set", "settings", "--json-body", f'{{"note": {LONG_NUMBER}}}'),
    ("rule", "set", "services", "--json-body", f"[-{LONG_NUMBER}]"),
    # A key misspelt: a preference it does not know is read as JSON.
    ("member", "edit", "--member", "{member}", "--pref", f"strenght={LONG_NUMBER}"),
], ids=["rule body", "negative in a list", "member pref misspelt"])
def test_a_json_number_too_long_to_read_is_refused_with_a_sentence(
        shop: tuple[Path, str], argv: tuple[str, ...]) -> None:
    data, member = shop
    before = state(data)
    said = refused(run_cli(*(a.replace("{member}", member) for a in argv), data=data))
    assert "too long" in said and "digits" not in said.split(":")[0], said
    assert state(data) == before
