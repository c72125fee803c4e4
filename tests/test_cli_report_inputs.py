"""Report inputs that name nothing, refused with a sentence through the real command
line: a branch nobody has heard of printed a whole report of zeros (read as a branch
that sold nothing), and a period whose first day is after its last said "nothing to
settle" (tester's findings, the thirteenth wave)."""

from __future__ import annotations

from pathlib import Path

from conftest import Cli


def test_a_daily_report_of_a_branch_never_heard_of_is_refused(cli: Cli, tmp_path: Path
                                                              ) -> None:
    data = tmp_path / "sh01"
    assert cli("init", "--node", "SH01", "--chain", "acme", data=data).code == 0
    assert cli("member", "add", "--name", "王芳", "--phone", "13800000001", data=data).code == 0
    r = cli("report", "daily", "--branch", "XX99", "--json", data=data)
    assert r.code == 1 and "XX99 is not a branch of this chain" in r.err, r
    assert "known here: SH01" in r.err and "Traceback" not in r.err, r
    assert "invalid_input" in r.out and "new_members" not in r.out, r  # --json: the refusal
    r = cli("report", "daily", "--branch", "SH01", data=data)
    assert r.code == 0 and "new members   1" in r.out, r
    # One the owner's rule names, before it has written anything: its day is a report.
    assert cli("rule", "set", "branches", "--json-body", '{"SH02": "徐家汇店"}',
               data=data).code == 0
    r = cli("report", "daily", "--branch", "SH02", data=data)
    assert r.code == 0 and "new members   0" in r.out, r


def test_a_reversed_period_is_refused(cli: Cli, tmp_path: Path) -> None:
    data = tmp_path / "sh01"
    assert cli("init", "--node", "SH01", "--chain", "acme", data=data).code == 0
    for args in (("report", "settlement"), ("report", "ranking")):
        r = cli(*args, "--from", "2026-02-01", "--to", "2026-01-01", data=data)
        assert r.code == 1 and "the period is reversed: from 2026-02-01 is after to " \
            "2026-01-01" in r.err, (args, r)
        assert "nothing to settle" not in r.out
        r = cli(*args, "--from", "2026-01-01", "--to", "2026-01-01", data=data)
        assert r.code == 0, (args, r)
