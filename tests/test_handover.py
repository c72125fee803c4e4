"""A shop closing for good hands its members' rights over before it is revoked.

Only a branch lowers its own rights (write rule own-rights), so whatever a revoked
branch still holds of a member's stored value, points or packages can never be spent
again anywhere: revoking a closed shop used to strand its members' money there.
`crdtledger rights handover --to BRANCH` gives all of it to another branch first, and
`chain revoke` says what it strands when it was not done. Through the command line,
real stores and sealed sync files.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from conftest import Cli
from cryptography import x509
from helpers import data_snapshot, name_branches, new_ledger, sync

from crdtledger import views
from crdtledger.errors import InvalidInput
from crdtledger.ledger import Ledger
from crdtledger.payments import HANDOVER_BATCH, walk_in


@pytest.fixture
def chain(cli: Cli, tmp_path: Path) -> dict[str, Path]:
    """HQ (head office), SH01 (closing) and SH02, each having seen the others' files."""
    ca = tmp_path / "chain"
    assert cli("chain", "init", "--out", ca, "--name", "acme").code == 0
    dirs = {n: tmp_path / n.lower() for n in ("HQ", "SH01", "SH02")}
    for n, d in dirs.items():
        extra = ["--head-office"] if n == "HQ" else []
        assert cli("init", "--node", n, "--chain", ca, *extra, data=d).code == 0
    # Operators are the head office's to add (governance); they reach SH01 by file.
    assert cli("operator", "add", "--name", "cashier1", "--password", "pw123456",
               "--role", "cashier", data=dirs["HQ"]).code == 0
    exchange(cli, tmp_path, dirs)
    return {"ca": ca, **dirs}


def exchange(cli: Cli, tmp: Path, dirs: dict[str, Path]) -> None:
    """Every store's sync file imported at every other store."""
    for n, d in dirs.items():
        r = cli("export", "--out", tmp / f"{n}.sync", data=d)
        assert r.code == 0, r.err
    for n, d in dirs.items():
        for other in dirs:
            if other != n:
                r = cli("import", tmp / f"{other}.sync", data=d)
                assert r.code == 0, r.err


def out(cli: Cli, *args: object, data: Path) -> dict:
    r = cli(*args, "--json", data=data)
    assert r.code == 0, r.err
    return json.loads(r.out)


def test_a_closing_shop_hands_its_members_money_over_and_nothing_is_stranded(
        cli: Cli, chain: dict[str, Path], tmp_path: Path) -> None:
    sh01, sh02, hq = chain["SH01"], chain["SH02"], chain["HQ"]
    members = [out(cli, "member", "add", "--name", f"会员{i}", "--phone",
                   f"1380000{i:04d}", data=sh01)["member_id"] for i in range(3)]
    for m in members:
        out(cli, "topup", "--member", m, "--amount", "100.00", data=sh01)
    out(cli, "debit", "--member", members[0], "--amount", "30.00", data=sh01)
    before = {m: out(cli, "balance", "--member", m, data=sh01) for m in members}
    held = out(cli, "rights", "held", data=sh01)
    assert held["members"] == 3 and held["held"]["cash"] == 27000

    # Refused, changing nothing: to itself, to a branch nobody knows, by a cashier.
    r = cli("rights", "handover", "--to", "SH01", data=sh01)
    assert r.code == 1 and "to itself" in r.err, r
    r = cli("rights", "handover", "--to", "ZZ99", data=sh01)
    assert r.code == 1 and "not a branch of this chain" in r.err, r
    r = cli("rights", "handover", "--to", "SH02", "--operator", "cashier1", "--password",
            "pw123456", data=sh01)
    assert r.code != 0 and "rights.transfer" in r.err, r
    assert out(cli, "rights", "held", data=sh01) == held

    done = out(cli, "rights", "handover", "--to", "SH02", data=sh01)
    assert done["to"] == "SH02" and done["members"] == 3
    assert done["moved"] == held["held"]
    assert out(cli, "rights", "held", data=sh01)["held"] == {}
    # Run again: nothing left to move, nothing written.
    again = out(cli, "rights", "handover", "--to", "SH02", data=sh01)
    assert again["entries"] == 0 and again["moved"] == {}
    # The members' balances are what they were, at every branch once synced.
    exchange(cli, tmp_path, {"HQ": hq, "SH01": sh01, "SH02": sh02})
    for d in (sh01, sh02, hq):
        assert {m: out(cli, "balance", "--member", m, data=d) for m in members} == before
    assert out(cli, "rights", "held", "--node", "SH02", data=hq)["held"]["cash"] == 27000

    # Revoked now, it strands nothing, and SH02 serves the whole balance on its own.
    r = cli("chain", "revoke", "--chain", chain["ca"], "--node", "SH01", data=hq)
    assert r.code == 0 and "warning" not in r.out, r
    exchange(cli, tmp_path, {"HQ": hq, "SH02": sh02})
    out(cli, "debit", "--member", members[0], "--amount", "70.00", data=sh02)
    assert out(cli, "balance", "--member", members[0], data=sh02)["cash"] == 0
    # A revoked branch is not one to hand over to either.
    r = cli("rights", "handover", "--to", "SH01", data=sh02)
    assert r.code == 1 and "revoked its certificate" in r.err, r


def test_revoking_a_branch_that_still_holds_rights_says_what_is_stranded(
        cli: Cli, chain: dict[str, Path], tmp_path: Path) -> None:
    sh01, hq = chain["SH01"], chain["HQ"]
    m = out(cli, "member", "add", "--name", "王芳", "--phone", "13800000001",
            data=sh01)["member_id"]
    out(cli, "topup", "--member", m, "--amount", "50.00", data=sh01)
    exchange(cli, tmp_path, {"HQ": hq, "SH01": sh01})
    r = cli("chain", "revoke", "--chain", chain["ca"], "--node", "SH01", data=hq)
    assert r.code == 0, r.err
    assert "still holds the rights of 1 member(s) (cash 50.00)" in r.out, r.out
    assert "crdtledger rights handover --to" in r.out


def test_a_handover_of_many_members_goes_in_commits_of_a_batch(tmp_path: Path) -> None:
    """More members than one commit takes: every right moved, each commit one record;
    a member merged into another counts as its survivor."""
    a = new_ledger(tmp_path, "SH01")
    try:
        name_branches(a, "SH01", "SH02")
        o = a.owner
        n = HANDOVER_BATCH + 5
        ms = [a.add_member(o, name=f"会员{i}", phone=f"1390000{i:04d}") for i in range(n)]
        for m in ms:
            a.topup(o, m, 1000)
        a.merge_member(o, ms[1], into=ms[0])
        seq = a.storage.log.positions().get("SH01", 0)
        done = a.hand_over_rights(o, "SH02")
        assert done["moved"] == {"cash": 1000 * n}
        assert views.rights_summary(a, "SH01")["held"] == {}
        assert views.rights_summary(a, "SH02")["held"] == {"cash": 1000 * n}
        assert a.balance(ms[0])["cash"] == 2000  # the merged member's value with it
        # One record per batch of transfers (the merge swept the merged member's
        # rights to its survivor already: n - 1 members hold any).
        written = a.storage.log.positions()["SH01"] - seq
        assert written == -(-(n - 1) // HANDOVER_BATCH) == 2
    finally:
        a.close()


def test_a_store_holding_nothing_hands_over_nothing(tmp_path: Path) -> None:
    """It moves nothing, but its first hand-over is still written, naming the branch
    that refunds its sales from then on: one record, a transfer of nothing (of its
    walk-in customer); run again, nothing more."""
    a = new_ledger(tmp_path, "SH01")
    try:
        name_branches(a, "SH01", "SH02")
        seq = a.storage.log.positions().get("SH01", 0)
        assert a.hand_over_rights(a.owner, "SH02") == {
            "to": "SH02", "members": 0, "entries": 1, "moved": {}}
        assert a.storage.log.positions().get("SH01", 0) == seq + 1
        [e] = views.newest_entries(a, "SH01", "transfer", limit=5)
        assert (e["member"], e["to"], e["reason"], e["amount"], e["deltas"]) == (
            walk_in("SH01"), "SH02", "handover", 0, [])
        assert views.rights_summary(a, "SH02")["held"] == {}
        assert a.refunds_at({"node": "SH01"}) == "SH02"
        assert a.hand_over_rights(a.owner, "SH02")["entries"] == 0
        assert a.storage.log.positions().get("SH01", 0) == seq + 1
    finally:
        a.close()


def test_files_still_flow_after_a_branch_is_revoked(
        cli: Cli, chain: dict[str, Path], tmp_path: Path) -> None:
    """An honest branch's file carries what it took of a revoked branch's log, some of
    it after the importer's last look. That part is not taken (nothing a revoked branch
    signed is), and the rest of the file is: refusing it whole refused every file of
    every branch holding the revoked branch's history, from then on."""
    sh01, sh02, hq = chain["SH01"], chain["SH02"], chain["HQ"]
    m = out(cli, "member", "add", "--name", "王芳", "--phone", "13800000001",
            data=sh01)["member_id"]
    out(cli, "topup", "--member", m, "--amount", "50.00", data=sh01)
    exchange(cli, tmp_path, {"HQ": hq, "SH01": sh01, "SH02": sh02})
    # SH01 writes more; only SH02 hears of it before head office revokes SH01.
    out(cli, "topup", "--member", m, "--amount", "20.00", data=sh01)
    exchange(cli, tmp_path, {"SH01": sh01, "SH02": sh02})
    assert cli("chain", "revoke", "--chain", chain["ca"], "--node", "SH01",
               data=hq).code == 0
    n = out(cli, "member", "add", "--name", "李雷", "--phone", "13800000002",
            data=sh02)["member_id"]
    assert cli("export", "--out", tmp_path / "sh02.sync", data=sh02).code == 0
    r = cli("import", tmp_path / "sh02.sync", data=hq)
    assert r.code == 0, r.err
    assert "records of SH01 in the file were not taken" in r.out, r.out
    assert "lacks earlier changes" not in r.out
    assert out(cli, "member", "show", "--member", n, data=hq)["name"] == "李雷"
    assert out(cli, "balance", "--member", m, data=hq)["cash"] == 5000  # not the 20.00
    # The same file again, and one repeating only what head office holds: taken.
    r = cli("import", tmp_path / "sh02.sync", data=hq)
    assert r.code == 0 and "nothing new" in r.out, r
    assert cli("export", "--out", tmp_path / "hq.sync", data=hq).code == 0
    r = cli("import", tmp_path / "hq.sync", data=sh02)
    assert r.code == 0 and "not taken" not in r.out, r
    # A file the revoked branch sealed itself is still refused whole.
    assert cli("export", "--out", tmp_path / "sh01-late.sync", data=sh01).code == 0
    r = cli("import", tmp_path / "sh01-late.sync", data=hq)
    assert r.code == 1 and "revoked" in r.err, r


def test_every_kind_of_purse_goes_and_serves_at_the_receiver(tmp_path: Path) -> None:
    """Stored value, points, a package's uses and a coupon: each moved, and the
    receiving branch serves them on its own after a sync."""
    a, b = new_ledger(tmp_path, "SH01"), new_ledger(tmp_path, "SH02")
    try:
        name_branches(a, "SH01", "SH02")
        sync(a, b)
        o = a.owner
        m = a.add_member(o, name="王芳", phone="13800000001")
        a.topup(o, m, 50000)
        a.debit(o, m, amount=10000)  # earns points
        p = a.sell_package(o, m, "FOOT60", 3, 30000)
        c = a.issue_coupon(o, m, off=500)["coupon"]
        before = a.balance(m)
        assert before["points"] > 0
        done = a.hand_over_rights(o, "SH02")
        assert set(done["moved"]) == {"cash", "points", f"pkg:{p['id']}", f"cpn:{c}"}
        assert views.rights_summary(a, "SH01")["held"] == {}
        sync(a, b)
        assert b.balance(m) == before
        b.debit(b.owner, m, service="FOOT60", pay="package")
        b.debit(b.owner, m, amount=40000)
        assert b.balance(m)["cash"] == 0
        assert b.balance(m)["packages"][p["id"]] == 2
    finally:
        a.close()
        b.close()


def test_a_shop_that_handed_over_is_granted_only_what_its_sale_lacks(tmp_path: Path) -> None:
    """A closing shop that still sells asks for rights as any branch does; it gets the
    shortfall, not the cushion a holder adds for the next swipe (which would sit
    there, stranded, once it is revoked)."""
    a, b = new_ledger(tmp_path, "SH01"), new_ledger(tmp_path, "SH02")
    try:
        name_branches(a, "SH01", "SH02")
        sync(a, b)
        m = b.add_member(b.owner, name="王芳", phone="13800000001")
        b.topup(b.owner, m, 10000)
        other = b.add_member(b.owner, name="李雷", phone="13800000002")
        b.topup(b.owner, other, 10000)
        sync(a, b)
        granted = b.grant_rights(m, "cash", "SH01", 1000)
        assert granted is not None and granted["amount"] == 1000 + 9000 // 2  # a cushion
        sync(a, b)
        a.hand_over_rights(a.owner, "SH02")
        sync(a, b)
        granted = b.grant_rights(other, "cash", "SH01", 1000)
        assert granted is not None and granted["amount"] == 1000
        # An operator's hand-over or transfer to it was taken without a word, and
        # stranded once it was revoked.
        before = data_snapshot(b)
        with pytest.raises(InvalidInput, match="handed its members' rights over"):
            b.hand_over_rights(b.owner, "SH01")
        with pytest.raises(InvalidInput, match="handed its members' rights over"):
            b.transfer_rights(b.owner, m, "SH01", 100)
        assert data_snapshot(b) == before
    finally:
        a.close()
        b.close()


def test_a_refused_revocation_publishes_nothing_in_the_chain_directory(
        cli: Cli, chain: dict[str, Path]) -> None:
    """A cashier's `chain revoke` was refused (it may not change rules) after the new
    list was written to CHAIN/crl.der: `init` then enrolled a second machine under the
    id still in service, and the owner's next revocation carried it to every branch.
    The list is published only once the ledger took it."""
    hq, crl = chain["HQ"], chain["ca"] / "crl.der"
    assert cli("operator", "add", "--name", "amy", "--password", "amy-secret", "--role",
               "cashier", data=hq).code == 0
    before = crl.read_bytes() if crl.exists() else None
    r = cli("--operator", "amy", "--password", "amy-secret", "chain", "revoke", "--chain",
            chain["ca"], "--node", "SH02", data=hq)
    assert r.code != 0 and "rules.manage" in r.err, r.err
    assert (crl.read_bytes() if crl.exists() else None) == before
    assert cli("chain", "revoke", "--chain", chain["ca"], "--node", "SH01", data=hq).code == 0
    shown = out(cli, "rule", "show", "revocations", data=hq)
    assert base64.b64decode(shown["crl"]) == crl.read_bytes()
    assert len(list(x509.load_der_x509_crl(crl.read_bytes()))) == 1  # SH01's only


def test_a_log_signed_under_a_certificate_since_expired_is_still_taken(
        cli: Cli, tmp_path: Path) -> None:
    """A shop that went quiet (closed, or never renewed): once its certificate ran out,
    every branch's full export, which carries its history, was refused whole by a
    store that had not taken that history yet, for good; left out instead, every
    honest record building on it (an edit of its member) waited there for ever. A
    signed log stays what its writer signed; a file the expired branch seals itself
    is refused."""
    import datetime as dt
    import time

    from peer.chain import enrol

    ca = tmp_path / "ca"
    assert cli("chain", "init", "--out", ca, "--name", "acme").code == 0
    for node in ("SH01", "SH04"):
        assert cli("init", "--node", node, "--chain", ca, data=tmp_path / node).code == 0
    Ledger.create(tmp_path / "SH02", "SH02", "acme")
    ends = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=10)
    enrol(ca, tmp_path / "SH02", "SH02", not_after=ends)
    m = out(cli, "member", "add", "--name", "王芳", "--phone", "13800000001",
            data=tmp_path / "SH02")["member_id"]
    assert cli("export", "--out", tmp_path / "sh02.sync", data=tmp_path / "SH02").code == 0
    assert cli("import", tmp_path / "sh02.sync", data=tmp_path / "SH01").code == 0
    assert cli("member", "edit", "--member", m, "--name", "王芳芳",  # builds on SH02's
               data=tmp_path / "SH01").code == 0
    n = out(cli, "member", "add", "--name", "李雷", "--phone", "13800000002",
            data=tmp_path / "SH01")["member_id"]
    time.sleep(max(0.0, (ends - dt.datetime.now(dt.UTC)).total_seconds()) + 0.5)  # runs out
    assert cli("export", "--out", tmp_path / "sh01.sync", data=tmp_path / "SH01").code == 0
    r = cli("import", tmp_path / "sh01.sync", data=tmp_path / "SH04")
    assert r.code == 0, r.err
    assert "not taken" not in r.out and "lacks earlier changes" not in r.out, r.out
    assert out(cli, "member", "show", "--member", n, data=tmp_path / "SH04")["name"] == "李雷"
    assert out(cli, "member", "show", "--member", m, data=tmp_path / "SH04")["name"] == "王芳芳"
    assert cli("export", "--out", tmp_path / "sh02-late.sync", data=tmp_path / "SH02").code == 0
    r = cli("import", tmp_path / "sh02-late.sync", data=tmp_path / "SH04")
    assert r.code == 1 and "expired" in r.err, r
