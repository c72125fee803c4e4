"""CSV exports opened in a spreadsheet run no formula typed by a cashier or a member
(peer.files.csv_text: the back office's exports and the command line's --csv).

A member named "=HYPERLINK(...)", or a correction's reason "@SUM(...)", would
otherwise run on the owner's PC when the owner opens the member list or the audit
trail in Excel or WPS (CSV injection, OWASP). Such a cell gets a leading apostrophe;
numbers keep their sign.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from pathlib import Path

import pytest
from app_fixtures import OWNER, CounterApp, downloaded, parse_csv
from conftest import Cli

from peer.files import csv_text, spreadsheet_cell

LINK = '=HYPERLINK("http://example.invalid/x","点我")'


@pytest.mark.parametrize(("cell", "shown"), [
    (LINK, "'" + LINK), ("@SUM(1+1)", "'@SUM(1+1)"), ("+1+1", "'+1+1"), ("-1+1", "'-1+1"),
    ("\t=1", "'\t=1"), ("-12.00", "-12.00"), ("+86", "+86"), ("12", "12"),
    ("王芳", "王芳"), ("a=1", "a=1"), ("", ""), (-1200, -1200)])
def test_a_cell_that_would_start_a_formula_is_text(cell: object, shown: object) -> None:
    assert spreadsheet_cell(cell) == shown
    assert next(csv.reader(io.StringIO(csv_text([["x", cell]]))))[1] == str(shown)
    assert spreadsheet_cell("\r=1") == "'\r=1"  # (a reader turns its \r into \n)


def test_the_command_line_csv_runs_no_formula(cli: Cli, make_node: Callable[..., Path]
                                              ) -> None:
    data = make_node("SH01")
    mid = cli("member", "add", "--name", LINK, "--phone", "13812345678", "--json",
              data=data).json()["member_id"]
    assert cli("topup", "--member", mid, "--amount", "30.00", data=data).code == 0
    assert cli("correct", "--member", mid, "--purse", "cash", "--change", "-10",
               "--reason", "@SUM(A1:A9)", data=data).code == 0
    table = list(csv.reader(io.StringIO(cli("audit", "--csv", data=data).out)))
    reasons = [row[9] for row in table[1:] if row[2] == "correction"]
    assert reasons == ["'@SUM(A1:A9)"]
    assert not any(cell[:1] in ("=", "@") for row in table for cell in row)


@pytest.mark.asyncio
async def test_the_back_office_member_export_runs_no_formula(counter_app: CounterApp) -> None:
    app = counter_app
    app.ledger.add_member(app.node_owner, name=LINK, phone="13900001111", notes="+1+1")
    await app.login(*OWNER)
    await app.user.open("/office/members")
    members = parse_csv(await downloaded(app, "export-members"))
    row = next(m for m in members[1:] if m[2] == "13900001111")
    assert (row[1], row[-1]) == ("'" + LINK, "'+1+1")
