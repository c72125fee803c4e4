"""The CLI as a shop owner and a script meet it: real processes, real stores.

Refusals are the heart of it: every bad input exits 1 with one line saying why,
never a traceback, and leaves the store exactly as it was.
"""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import Cli, CliResult, run_cli

from crdtledger.ledger import Ledger

PHONE = "13812345678"
CASHIER = ("--operator", "cashier1", "--password", "secret1")


@dataclass(frozen=True)
class Shop:
    """One branch with a member, a PIN card, a debit, a cashier and sync files."""

    data: Path
    member: str
    debit: str
    files: dict[str, Path]  # sync files to refuse: damaged, missing, of another chain


def new_member(data: Path, name: str, phone: str, topup: str | None = None) -> str:
    member = str(run_cli("member", "add", "--name", name, "--phone", phone, "--json",
                         data=data).json()["member_id"])
    if topup:
        assert run_cli("topup", "--member", member, "--amount", topup, data=data).code == 0
    return member


def corrupt_files(src: Path, workdir: Path) -> dict[str, Path]:
    """A good sync file from `src`, then damaged copies of it."""
    good = workdir / "good.sync"
    assert run_cli("export", "--out", good, data=src).code == 0
    raw = good.read_bytes()
    flipped = bytearray(raw)
    flipped[len(raw) // 2] ^= 0x01
    files = {"flipped": workdir / "flipped.sync", "truncated": workdir / "truncated.sync",
             "missing": workdir / "missing.sync"}
    files["flipped"].write_bytes(bytes(flipped))
    files["truncated"].write_bytes(raw[: len(raw) * 2 // 3])
    return files


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Shop:
    root = tmp_path_factory.mktemp("shop")
    data, peer, foreign = root / "sh01", root / "sh02", root / "other"
    for d, node, chain in ((data, "SH01", "default"), (peer, "SH02", "default"),
                           (foreign, "SH09", "other")):
        assert run_cli("init", "--node", node, "--chain", chain, data=d).code == 0
    member = new_member(data, "李雷", PHONE, topup="100.00")
    assert run_cli("card", "issue", "--member", member, "--card", "C001", "--pin", "1234",
                   data=data).code == 0
    debit = run_cli("debit", "--member", member, "--amount", "10.00", "--json",
                    data=data).json()["id"]
    assert run_cli("operator", "add", "--name", "cashier1", "--password", "secret1",
                   "--role", "cashier", data=data).code == 0
    # Members only the refused files carry: importing them would change the store.
    new_member(peer, "韩梅梅", "13700007777", topup="50.00")
    new_member(foreign, "外人", "13700007777", topup="50.00")
    files = corrupt_files(peer, root)
    files["foreign"] = root / "foreign.sync"
    assert run_cli("export", "--out", files["foreign"], data=foreign).code == 0
    return Shop(data, member, debit, files)


# Every replicated and projected table: a refusal must leave each row as it was.
STORE_TABLES = ("docs", "log", "entries", "rights", "totals", "members", "cards", "rules",
                "operators", "roles", "peers", "quarantine")


def snapshot(data: Path) -> dict[str, list[Any]]:
    """The store's whole content, read in-process (a CLI round per table is slow)."""
    with Ledger.open(data, lock=False) as ledger:
        conn = ledger.storage.conn
        return {t: conn.execute(f"SELECT * FROM {t} ORDER BY 1").fetchall()
                for t in STORE_TABLES}


def assert_refused(r: CliResult, code: str | None = None) -> dict[str, Any]:
    assert r.code == 1, (r.code, r.out, r.err)
    assert "Traceback" not in r.err
    lines = r.err.strip().splitlines()
    assert len(lines) == 1, r.err
    if code is None:
        return {}
    error = json.loads(r.out)
    assert error["error"] == code, error
    assert error["message"] in lines[0]
    return dict(error)


BAD_AMOUNTS = ("12.345", "-5", "abc", "0")

REFUSALS: list[tuple[str, tuple[str, ...], str]] = [
    *((f"topup {a}", ("topup", "--member", "{member}", "--amount", a), "invalid_amount")
      for a in BAD_AMOUNTS),
    *((f"debit {a}", ("debit", "--member", "{member}", "--amount", a), "invalid_amount")
      for a in BAD_AMOUNTS),
    ("unknown member", ("debit", "--member", "0000000000000.SH01", "--amount", "1.00"),
     "not_found"),
    ("unknown card", ("debit", "--card", "NOPE", "--amount", "1.00"), "not_found"),
    ("wrong PIN", ("debit", "--card", "C001", "--pin", "9999", "--amount", "1.00"),
     "wrong_pin"),
    ("missing PIN", ("topup", "--card", "C001", "--amount", "1.00"), "wrong_pin"),
    ("overdraw", ("debit", "--member", "{member}", "--amount", "1000.00"),
     "insufficient_funds"),
    ("unknown service", ("debit", "--member", "{member}", "--service", "NOPE"), "not_found"),
    ("refund too much", ("refund", "--debit", "{debit}", "--amount", "10.01"),
     "invalid_amount"),
    ("refund unknown", ("refund", "--debit", "0000000000000.SH01"), "not_found"),
    ("transfer too much", ("rights", "transfer", "--member", "{member}", "--to", "SH02",
                           "--amount", "1000.00"), "invalid_amount"),
    ("transfer to self", ("rights", "transfer", "--member", "{member}", "--to", "SH01",
                          "--amount", "1.00"), "invalid_input"),
    ("card taken", ("card", "issue", "--member", "{member}", "--card", "c001"),
     "invalid_input"),
    ("phone taken", ("member", "add", "--name", "X", "--phone", PHONE), "invalid_input"),
    ("cashier refunds", ("refund", "--debit", "{debit}", *CASHIER), "permission_denied"),
    ("cashier sets rules", ("rule", "set", "promotions", "--json-body", "[]", *CASHIER),
     "permission_denied"),
    ("cashier reads reports", ("report", "daily", *CASHIER), "permission_denied"),
    ("wrong password", ("debit", "--member", "{member}", "--amount", "1.00", "--operator",
                        "cashier1", "--password", "guess!"), "permission_denied"),
    # "{{" is format() for a single "{": the JSON is cut short.
    ("bad rule JSON", ("rule", "set", "promotions", "--json-body", "[{{"), "invalid_input"),
    ("rule JSON field twice", ("rule", "set", "settings", "--json-body",
                               '{{"note": "a", "note": "b"}}'), "invalid_input"),
    ("corrupt file", ("import", "{flipped}"), "corrupt_sync_file"),
    ("truncated file", ("import", "{truncated}"), "corrupt_sync_file"),
    ("missing file", ("import", "{missing}"), "corrupt_sync_file"),
    ("foreign chain", ("import", "{foreign}"), "foreign_chain"),
]


@pytest.mark.parametrize(("argv", "code"), [(a, c) for _, a, c in REFUSALS],
                         ids=[name for name, _, _ in REFUSALS])
def test_refusal_changes_nothing(shop: Shop, argv: tuple[str, ...], code: str) -> None:
    names = {"member": shop.member, "debit": shop.debit, **shop.files}
    args = [a.format(**names) for a in argv]
    before = snapshot(shop.data)

    assert_refused(run_cli(*args, "--json", data=shop.data), code)
    assert snapshot(shop.data) == before


def test_refusal_without_json_keeps_stdout_empty(shop: Shop) -> None:
    for args in (("debit", "--member", shop.member, "--amount", "abc"),
                 ("import", str(shop.files["flipped"]))):
        r = run_cli(*args, data=shop.data)
        assert_refused(r)
        assert r.out == ""


def test_refusal_messages_name_the_problem(shop: Shop) -> None:
    r = run_cli("debit", "--member", shop.member, "--amount", "12.345", data=shop.data)
    assert "12.345" in r.err and "decimals" in r.err
    r = run_cli("refund", "--debit", shop.debit, *CASHIER, data=shop.data)
    assert "cashier1" in r.err and "refund" in r.err
    r = run_cli("import", shop.files["foreign"], data=shop.data)
    assert "'other'" in r.err


@pytest.mark.parametrize("argv", [
    # No payer is a walk-in customer at the till now, refused (exit 1) for stored
    # value: tests/test_goods_refund.py.
    ("debit", "--member", "M", "--card", "C001", "--amount", "1.00"),  # two payers
    ("member", "add", "--name", "X"),
    ("member", "add", "--name", "X", "--phone", "13000000000", "--pref", "firm"),
    ("debit", "--member", "M", "--amount", "1.00", "--operator", "cashier1"),  # no password
    ("card", "teleport", "--card", "C001"),
    # Read as the last: 500.00 topped up where the person read 1.00.
    ("topup", "--member", "M", "--amount", "1.00", "--amount=500.00"),
], ids=["two payers", "no phone", "pref without =", "no password", "no command",
        "amount twice"])
def test_usage_errors_exit_2(shop: Shop, argv: tuple[str, ...]) -> None:
    r = run_cli(*argv, data=shop.data)
    assert r.code == 2, (r.out, r.err)
    assert "Traceback" not in r.err and "usage:" in r.err
    if argv.count("--amount") + argv.count("--amount=500.00") > 1:
        assert "--amount is given twice: give it once" in r.err


def test_no_data_directory_is_a_usage_error(cli: Cli) -> None:
    r = cli("balance", "--member", "M")
    assert r.code == 2 and "CRDTLEDGER_DATA" in r.err


def test_uninitialised_directory_is_refused(cli: Cli, tmp_path: Path) -> None:
    r = cli("balance", "--member", "M", data=tmp_path / "nowhere")
    assert_refused(r)
    assert "crdtledger init" in r.err


def test_lost_card_cannot_pay_until_found(cli: Cli, make_node: Callable[..., Path]) -> None:
    data = make_node("SH01")
    member = new_member(data, "张三", PHONE, topup="100.00")
    assert cli("card", "issue", "--member", member, "--card", "L001", data=data).code == 0
    assert cli("card", "lost", "--card", "L001", data=data).code == 0
    before = cli("history", "--member", member, "--json", data=data).json()

    r = cli("debit", "--card", "L001", "--amount", "5.00", "--json", data=data)
    assert assert_refused(r, "card_lost")["message"].count("lost") == 1
    assert cli("history", "--member", member, "--json", data=data).json() == before

    assert cli("card", "found", "--card", "L001", data=data).code == 0
    assert cli("debit", "--card", "L001", "--amount", "5.00", data=data).code == 0
    assert cli("balance", "--member", member, "--json", data=data).json()["cash"] == 9500


# --- happy paths ----------------------------------------------------------------


def test_member_find_masks_phone(cli: Cli, make_node: Callable[..., Path]) -> None:
    data = make_node("SH01")
    member = new_member(data, "李雷", PHONE)
    for query in (PHONE, "5678", "李"):
        r = cli("member", "find", query, data=data)
        assert r.code == 0 and "138****5678" in r.out and PHONE not in r.out, (query, r.out)
        assert member in r.out
    found = cli("member", "find", PHONE, "--json", data=data).json()
    assert [m["phone"] for m in found] == ["138****5678"]
    # One member's own page shows the whole number, to call them back.
    assert PHONE in cli("member", "show", "--phone", PHONE, data=data).out


def test_member_edit(cli: Cli, make_node: Callable[..., Path]) -> None:
    data = make_node("SH01")
    member = new_member(data, "李雷", PHONE)
    r = cli("member", "edit", "--member", member, "--name", "李雷雷", "--pref", "strength=firm",
            "--tag-add", "vip", "--level", "银卡", data=data)
    assert r.code == 0, r.err
    shown = cli("member", "show", "--member", member, "--json", data=data).json()
    assert shown["name"] == "李雷雷" and shown["prefs"] == {"strength": "firm"}
    assert shown["tags"] == ["vip"] and shown["level_info"]["name"] == "银卡"
    assert cli("member", "edit", "--member", member, "--tag-remove", "vip",
               data=data).code == 0
    assert cli("member", "show", "--member", member, "--json", data=data).json()["tags"] == []


def test_card_replace_keeps_balance(cli: Cli, make_node: Callable[..., Path]) -> None:
    data = make_node("SH01")
    member = new_member(data, "李雷", PHONE, topup="88.00")
    assert cli("card", "issue", "--member", member, "--card", "c100", "--pin", "4321",
               "--fee", "10.00", data=data).code == 0
    before = cli("balance", "--card", "C100", "--json", data=data).json()
    assert before["cash"] == 8800  # the card fee is paid at the till, not from the card

    r = cli("card", "replace", "--card", "C100", "--new", "C101", "--pin", "1111", data=data)
    assert r.code == 0, r.err
    assert cli("balance", "--card", "C101", "--json", data=data).json() == before
    assert_refused(cli("debit", "--card", "C100", "--pin", "4321", "--amount", "1.00", "--json",
                       data=data), "card_inactive")
    assert cli("debit", "--card", "C101", "--pin", "1111", "--amount", "8.00",
               data=data).code == 0
    assert cli("balance", "--member", member, "--json", data=data).json()["cash"] == 8000


def test_service_debit_refund_and_package(cli: Cli, make_node: Callable[..., Path]) -> None:
    data = make_node("SH01")
    member = new_member(data, "李雷", PHONE, topup="300.00")
    entry = cli("debit", "--member", member, "--service", "FOOT60", "--json", data=data).json()
    assert (entry["service"], entry["amount"]) == ("FOOT60", 12800)  # the default price list
    assert cli("balance", "--member", member, "--json", data=data).json()["cash"] == 17200

    assert cli("refund", "--debit", entry["id"], "--amount", "28.00", "--reason", "slow",
               data=data).code == 0
    assert cli("balance", "--member", member, "--json", data=data).json()["cash"] == 20000

    sold = cli("package", "sell", "--member", member, "--service", "HAIR", "--uses", "3",
               "--price", "150.00", "--json", data=data).json()
    used = cli("debit", "--member", member, "--service", "HAIR", "--pay", "package", "--json",
               data=data).json()
    assert used["package"] == sold["id"]
    bal = cli("balance", "--member", member, "--json", data=data).json()
    assert bal["packages"] == {sold["id"]: 2} and bal["cash"] == 20000


def test_human_output_is_yuan(cli: Cli, make_node: Callable[..., Path]) -> None:
    data = make_node("SH01")
    member = new_member(data, "李雷", PHONE, topup="100.00")
    assert cli("debit", "--member", member, "--amount", "30.00", data=data).code == 0
    r = cli("balance", "--member", member, data=data)
    assert r.out.strip() == "balance: cash 70.00  bonus 0.00  points 30"
    lines = cli("history", "--member", member, data=data).out.splitlines()
    assert "debit" in lines[0] and "-30.00" in lines[0]
    assert "topup" in lines[1] and "+100.00" in lines[1]


def test_daily_report_shows_topup_cash(cli: Cli, make_node: Callable[..., Path]) -> None:
    data = make_node("SH01")
    for phone, amount in (("13800000001", "100.00"), ("13800000002", "250.50")):
        new_member(data, "会员", phone, topup=amount)
    report = cli("report", "daily", "--json", data=data).json()
    assert (report["topup_cash"], report["topups"], report["new_members"]) == (35050, 2, 2)
    assert "top-up cash   350.50" in cli("report", "daily", data=data).out


def test_operator_acts_by_env_password(cli: Cli, make_node: Callable[..., Path]) -> None:
    data = make_node("SH01")
    member = new_member(data, "李雷", PHONE, topup="50.00")
    assert cli("operator", "add", "--name", "amy", "--password", "secret1", data=data).code == 0
    env = {"CRDTLEDGER_DATA": str(data), "CRDTLEDGER_PASSWORD": "secret1"}
    entry = cli("debit", "--member", member, "--amount", "5.00", "--operator", "amy", "--json",
                env=env).json()
    with Ledger.open(data) as ledger:  # the entry names amy, for the audit trail
        assert entry["op"] == ledger.authenticate("amy", "secret1") != ledger.owner


def test_backup_while_store_is_held(cli: Cli, make_node: Callable[..., Path],
                                    tmp_path: Path) -> None:
    data = make_node("SH01")
    member = new_member(data, "李雷", PHONE, topup="66.60")
    with Ledger.open(data):  # a running node holds the data directory
        expected = cli("balance", "--member", member, "--json", data=data).json()
        r = cli("backup", "--out", tmp_path / "bk", data=data)
        assert r.code == 0, r.err
    r = cli("restore", "--from", tmp_path / "bk", data=tmp_path / "restored")
    assert r.code == 0 and "restored node SH01 from the backup of" in r.out, r.err
    assert cli("balance", "--member", member, "--json",
               data=tmp_path / "restored").json() == expected
    assert expected["cash"] == 6660
    assert_refused(cli("backup", "--out", tmp_path / "bk", data=data))  # never overwrites


def test_points_and_corrections(cli: Cli, make_node: Callable[..., Path]) -> None:
    data = make_node("SH01")
    member = new_member(data, "李雷", PHONE, topup="300.00")
    assert cli("debit", "--member", member, "--amount", "200.00", data=data).code == 0
    assert cli("points", "redeem", "--member", member, "--points", "50", "--gift", "towel",
               data=data).code == 0
    converted = cli("points", "convert", "--member", member, "--points", "100", "--json",
                    data=data).json()
    assert converted["amount"] == 100  # 100 points per yuan by default
    assert cli("correct", "--member", member, "--change", "-1.50", "--reason", "typo",
               data=data).code == 0
    bal = cli("balance", "--member", member, "--json", data=data).json()
    assert (bal["cash"], bal["bonus"], bal["points"]) == (9850, 100, 50)


def test_incremental_export_for_a_peer(cli: Cli, make_node: Callable[..., Path],
                                       tmp_path: Path) -> None:
    a, b = make_node("SH01"), make_node("SH02")
    new_member(a, "李雷", PHONE, topup="10.00")
    assert cli("export", "--out", tmp_path / "a.sync", data=a).code == 0
    assert cli("import", tmp_path / "a.sync", data=b).code == 0

    # B now knows what A holds: an export for A carries only what B wrote since.
    nothing = cli("export", "--out", tmp_path / "b0.sync", "--for", "SH01", "--json",
                  data=b).json()
    assert (nothing["documents"], nothing["incremental"]) == (0, True)
    new_member(b, "韩梅梅", "13700007777")
    some = cli("export", "--out", tmp_path / "b1.sync", "--for", "SH01", "--json",
               data=b).json()
    assert some["documents"] >= 1
    assert cli("import", tmp_path / "b1.sync", data=a).code == 0
    assert "137****7777" in cli("member", "find", "7777", data=a).out


def test_a_command_does_not_load_the_node_server() -> None:
    """The CLI reaches a running node with urllib (peer.local.call); aiohttp, a third of
    its start, is for the node's side only. Structural, not timed."""
    probe = "import sys, peer.cli; print(sorted(m for m in sys.modules if m.startswith('aiohttp')))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    assert out.strip() == "[]"


def test_a_file_named_as_a_data_directory_is_refused_and_left_as_it_was(
        cli: Cli, make_node: Callable[..., Path], tmp_path: Path) -> None:
    """`init --data F`, `backup --out F` with F an ordinary file: refused with a raw OS
    message, and F made 0700 on the way."""
    data = make_node("SH01")
    plain = tmp_path / "notes.txt"
    plain.write_text("mine")
    plain.chmod(0o644)
    for args in (("init", "--node", "SH09", "--data", plain),
                 ("backup", "--data", data, "--out", plain)):
        r = cli(*args)
        assert r.code != 0 and "is a file, not a directory" in r.err, r.err
        assert "Traceback" not in r.err
        assert stat.S_IMODE(plain.stat().st_mode) == 0o644 and plain.read_text() == "mine"
