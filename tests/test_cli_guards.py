"""Refusals a command-line probe found missing (13th round): an export over a file
that is not a sync file of this chain, damaged key files, a role defined with
nothing, secrets echoed, analytics files the umask opened, names of invisible or
reordering characters, a card issued already expired. The real command line on real
data directories."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from conftest import Cli, free_port


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _chain_and_node(cli: Cli, tmp_path: Path, name: str = "acme") -> tuple[Path, Path]:
    chain = tmp_path / f"chain-{name}"
    assert cli("chain", "init", "--out", chain, "--name", name).code == 0
    data = tmp_path / f"{name}-sh01"
    r = cli("init", "--node", "SH01", "--chain", chain, data=data)
    assert r.code == 0, r.err
    return chain, data


def test_an_export_replaces_only_a_sync_file_of_this_chain(cli: Cli, tmp_path: Path) -> None:
    """`export --out chain/ca.key` exited 0 and put a sync file in place of the chain
    CA's key; `--out bk/ledger.backup` replaced the backup."""
    chain, data = _chain_and_node(cli, tmp_path)
    assert cli("backup", "--out", tmp_path / "bk", data=data).code == 0
    notes = tmp_path / "notes.txt"
    notes.write_text("the owner's own notes\n")
    for target in (chain / "ca.key", tmp_path / "bk" / "ledger.backup", notes):
        before = _digest(target)
        r = cli("export", "--out", target, data=data)
        assert r.code == 1 and "is not a sync file of this chain" in r.err, r
        assert "Traceback" not in r.err and _digest(target) == before
        assert not target.with_name(target.name + ".part").exists()
    # another chain's sync file is not this chain's to replace either
    _, other = _chain_and_node(cli, tmp_path, "other")
    theirs = tmp_path / "theirs.sync"
    assert cli("export", "--out", theirs, data=other).code == 0
    before = _digest(theirs)
    r = cli("export", "--out", theirs, data=data)
    assert r.code == 1 and "is not a sync file of this chain" in r.err, r
    assert _digest(theirs) == before
    # the evening's re-export over yesterday's file, and an empty file (mktemp's), go
    ours = tmp_path / "hq.sync"
    assert cli("export", "--out", ours, data=data).code == 0
    assert cli("member", "add", "--name", "王芳", "--phone", "13800000001", data=data).code == 0
    before = _digest(ours)
    r = cli("export", "--out", ours, data=data)
    assert r.code == 0 and _digest(ours) != before, r.err
    empty = tmp_path / "tmp.XXXX"
    empty.write_bytes(b"")
    assert cli("export", "--out", empty, data=data).code == 0
    assert cli("restore", "--from", tmp_path / "bk", "--data", tmp_path / "r",
               "--chain", chain).code == 0
    assert cli("chain", "renew", "--chain", chain, data=data).code == 0


def test_a_damaged_chain_ca_key_is_said_in_a_sentence(cli: Cli, tmp_path: Path) -> None:
    """An emptied, overwritten or plain-text `ca.key` gave a Python traceback
    (ValueError MalformedFraming) at every command that signs with it."""
    chain, data = _chain_and_node(cli, tmp_path)
    assert cli("init", "--node", "SH02", "--chain", chain, data=tmp_path / "sh02").code == 0
    other = tmp_path / "chain-other"
    assert cli("chain", "init", "--out", other, "--name", "other").code == 0
    good = (chain / "ca.key").read_bytes()
    for damage in (b"", b"\x00garbage\xff" * 10, b"hello\n", (other / "ca.key").read_bytes()):
        (chain / "ca.key").write_bytes(damage)
        for args in (("chain", "renew", "--chain", chain),
                     ("chain", "revoke", "--chain", chain, "--node", "SH02"),
                     ("https-cert", "--chain", chain, "--host", "a.local")):
            r = cli(*args, data=data)
            assert r.code == 1 and "Traceback" not in r.err, r
            assert str(chain / "ca.key") in r.err and "safe copy" in r.err, r
        r = cli("init", "--node", "SH08", "--chain", chain, data=tmp_path / "sh08")
        assert r.code == 1 and "Traceback" not in r.err and "safe copy" in r.err, r
        assert not (tmp_path / "sh08" / "tls").exists()
    (chain / "ca.key").write_bytes(good)
    assert cli("chain", "renew", "--chain", chain, data=data).code == 0


def test_a_damaged_chain_secret_in_the_data_directory_is_refused(
        cli: Cli, tmp_path: Path) -> None:
    """An emptied or overwritten `DATA/tls/chain.key` was read with no check: top-ups,
    exports and backups exited 0, sealed with a secret no branch holds (the import at
    SH02 and the restore refused them). Refused as a damaged node key is, by the
    command line and by the node, until the chain's copy is put back."""
    chain, data = _chain_and_node(cli, tmp_path)
    r = cli("member", "add", "--name", "王芳", "--phone", "13800000001", "--json", data=data)
    assert r.code == 0, r.err
    member = json.loads(r.out)["member_id"]
    store = _digest(data / "ledger.sqlite3")
    good = (data / "tls" / "chain.key").read_bytes()
    port = free_port(2)
    for damage in (b"", b"\x00garbage\xff" * 10, b"hello\n"):
        (data / "tls" / "chain.key").write_bytes(damage)
        for args in (("topup", "--member", member, "--amount", "1"),
                     ("export", "--out", tmp_path / "x.sync"),
                     ("backup", "--out", tmp_path / "bk"),
                     ("node", "run", "--listen", f"127.0.0.1:{port}", "--api",
                      f"127.0.0.1:{port + 1}", "--no-mdns")):
            r = cli(*args, data=data, timeout=30)
            assert r.code == 1 and "Traceback" not in r.err, r
            assert "chain.key is damaged" in r.err and f"{len(damage)} bytes" in r.err, r
        assert not (tmp_path / "x.sync").exists() and not (tmp_path / "bk").exists()
        assert _digest(data / "ledger.sqlite3") == store
    (data / "tls" / "chain.key").write_bytes(good)
    assert cli("topup", "--member", member, "--amount", "1", data=data).code == 0
    assert cli("export", "--out", tmp_path / "x.sync", data=data).code == 0
    other = tmp_path / "sh02"
    assert cli("init", "--node", "SH02", "--chain", chain, data=other).code == 0
    assert cli("import", tmp_path / "x.sync", data=other).code == 0


def test_a_role_is_not_emptied_and_owner_keeps_every_permission(cli: Cli, tmp_path: Path
                                                                 ) -> None:
    """`role define --name owner` with no --permission printed `role owner: nothing`,
    exit 0, and every named owner of the chain could no longer top up."""
    data = tmp_path / "sh01"  # a store of its own: no head office to ask
    assert cli("init", "--node", "SH01", "--chain", "acme", data=data).code == 0
    r = cli("member", "add", "--name", "王芳", "--phone", "13800000001", "--json", data=data)
    member = json.loads(r.out)["member_id"]
    assert cli("operator", "add", "--name", "boss", "--password", "BossPW12345", "--role",
               "owner", data=data).code == 0
    assert cli("operator", "add", "--name", "mia", "--password", "MiaPW12345", "--role",
               "manager", data=data).code == 0
    store = _digest(data / "ledger.sqlite3")
    for args, said in ((("--name", "owner"), "would grant nothing"),
                       (("--name", "manager"), "would grant nothing"),
                       (("--name", "owner", "--permission", "topup"), "every permission")):
        r = cli("role", "define", *args, data=data)
        assert r.code == 1 and said in r.err and "Traceback" not in r.err, r
    assert _digest(data / "ledger.sqlite3") == store
    for who, pw in (("boss", "BossPW12345"), ("mia", "MiaPW12345")):
        r = cli("topup", "--member", member, "--amount", "1", "--operator", who,
                "--password", pw, data=data)
        assert r.code == 0, r.err
    # a new role may start empty (the back office ticks it next); once it exists, not
    assert cli("role", "define", "--name", "night", data=data).code == 0
    assert cli("role", "define", "--name", "night", "--permission", "topup",
               data=data).code == 0
    r = cli("role", "define", "--name", "night", data=data)
    assert r.code == 1 and "would grant nothing" in r.err, r
    assert cli("role", "define", "--name", "manager", "--permission", "topup",
               data=data).code == 0  # manager may be narrowed, as before


def test_a_malformed_pin_or_password_is_not_said_back(cli: Cli, tmp_path: Path) -> None:
    """`pin must be a card PIN of 4 to 8 digits, not "SSSSSSSS"`: the refusal showed
    the PIN typed (a password of the wrong type, through the API, likewise)."""
    data = tmp_path / "sh01"
    assert cli("init", "--node", "SH01", "--chain", "acme", data=data).code == 0
    r = cli("member", "add", "--name", "王芳", "--phone", "13800000001", "--json", data=data)
    member = json.loads(r.out)["member_id"]
    assert cli("card", "issue", "--member", member, "--card", "C2001", "--pin", "2468",
               data=data).code == 0
    for pin in ("SSSSSSSS", "Sekr\x01t99"[:8], "12ab", "Sekr\u202et9"):
        for args in (("card", "issue", "--member", member, "--card", "PP1", "--pin", pin),
                     ("debit", "--card", "C2001", "--pin", pin, "--amount", "1")):
            r = cli(*args, data=data)
            assert r.code == 1 and "must be a card PIN of 4 to 8 digits" in r.err, r
            assert pin not in r.err and json.dumps(pin) not in r.err, r
            assert pin.encode("unicode_escape").decode() not in r.err, r


def test_the_analytics_export_is_private_whatever_the_umask(cli: Cli, tmp_path: Path) -> None:
    """`export-analytics` wrote 0755 directories and 0644 Parquet files (the umask's),
    where every other output is 0700/0600; an export an older version left open is
    closed by the next one."""
    data = tmp_path / "sh01"
    assert cli("init", "--node", "SH01", "--chain", "acme", data=data).code == 0
    r = cli("member", "add", "--name", "王芳", "--phone", "13800000001", "--json", data=data)
    member = json.loads(r.out)["member_id"]
    assert cli("topup", "--member", member, "--amount", "100", data=data).code == 0
    out = tmp_path / "analytics"
    old = os.umask(0o022)  # the child's, as a shop PC's shell has it
    try:
        assert cli("export-analytics", "--out", out, data=data).code == 0
        made = [out, *out.rglob("*")]
        assert len([p for p in made if p.suffix == ".parquet"]) >= 3
        modes = {str(p.relative_to(tmp_path)): oct(p.stat().st_mode & 0o777) for p in made
                 if p.stat().st_mode & 0o077}
        assert modes == {}, modes
        out.chmod(0o755)  # as an older version left it
        (out / "members.parquet").chmod(0o644)
        assert cli("topup", "--member", member, "--amount", "1", data=data).code == 0
        assert cli("export-analytics", "--out", out, data=data).code == 0
        assert out.stat().st_mode & 0o777 == 0o700
    finally:
        os.umask(old)


def test_names_and_reasons_of_invisible_or_reordering_characters_are_refused(
        cli: Cli, tmp_path: Path) -> None:
    """A member named one zero-width space (U+200B) was added where an empty name is
    refused; U+202E (right-to-left override) was taken in member and role names and
    reasons, and turned what follows it around in every list and receipt."""
    data = tmp_path / "sh01"
    assert cli("init", "--node", "SH01", "--chain", "acme", data=data).code == 0
    r = cli("member", "add", "--name", "王芳", "--phone", "13800000001", "--json", data=data)
    member = json.loads(r.out)["member_id"]
    assert cli("topup", "--member", member, "--amount", "100", data=data).code == 0
    r = cli("debit", "--member", member, "--amount", "10", "--json", data=data)
    debit = json.loads(r.out)["id"]
    store = _digest(data / "ledger.sqlite3")
    for bad in ("\u200b", " \u200b\u2060 ", "\ufeff", "\u202e三张", "a\u2066b", "x\u200f"):
        for args in (("member", "add", "--name", bad, "--phone", "13300000001"),
                     ("member", "edit", "--member", member, "--name", bad),
                     ("role", "define", "--name", bad, "--permission", "topup"),
                     ("refund", "--debit", debit, "--amount", "1", "--reason", bad)):
            r = cli(*args, data=data)
            assert r.code == 1 and "Traceback" not in r.err, (args, r)
            assert "direction overrides" in r.err, (args, r)
    assert _digest(data / "ledger.sqlite3") == store
    # Chinese, emoji (joined by U+200D), spaces and a zero-width space inside a name
    for i, name in enumerate(("李 小明", "👨\u200d👩\u200d👧 张家", "Zoë O'Neil", "王\u200b芳")):
        r = cli("member", "add", "--name", name, "--phone", f"1330000001{i}", data=data)
        assert r.code == 0, r.err
    assert cli("refund", "--debit", debit, "--amount", "1", "--reason", "顾客退回 🙂\n第二行",
               data=data).code == 0


def test_a_card_is_not_issued_already_expired(cli: Cli, tmp_path: Path) -> None:
    """`card issue --expiry 2020-01-01` issued a card (and took its fee) that every
    swipe then refused as expired; a coupon's past valid-to is refused."""
    data = tmp_path / "sh01"
    assert cli("init", "--node", "SH01", "--chain", "acme", data=data).code == 0
    r = cli("member", "add", "--name", "王芳", "--phone", "13800000001", "--json", data=data)
    member = json.loads(r.out)["member_id"]
    store = _digest(data / "ledger.sqlite3")
    r = cli("card", "issue", "--member", member, "--card", "PAST1", "--expiry", "2020-01-01",
            "--fee", "5", data=data)
    assert r.code == 1 and "has passed already" in r.err, r
    assert _digest(data / "ledger.sqlite3") == store
    r = cli("card", "issue", "--member", member, "--card", "NEXT1", "--expiry", "2099-12-31",
            data=data)
    assert r.code == 0, r.err
