"""A branch's own certificate revoked or ended, as the branch itself sees it.

The lifecycle probe: a branch that had imported the revocation list revoking it went
on selling (a top-up, a debit), and a branch not yet holding the list took those
records, so a member held 550.00 at one branch and 500.00 at head office for good;
`status` said nothing. A certificate past its end made every branch refuse the
branch's records while its `status` said nothing either, and nothing warned before.
Real stores of an enrolled chain, the real command line."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from conftest import Cli
from helpers import name_branches, sync

from crdtledger import views
from crdtledger.errors import NotCaughtUp
from crdtledger.ledger import Ledger
from peer.chain import enrol, init_chain, revocations_rule, revoke

BACK = datetime.now(UTC) - timedelta(days=120)


def chain(tmp_path: Path, ends: dict[str, datetime] | None = None) -> Path:
    ca = tmp_path / "acme"
    init_chain(ca)
    for node in ("HQ", "SH02"):
        Ledger.create(tmp_path / node, node, "acme")
        enrol(ca, tmp_path / node, node, head_office=node == "HQ", not_before=BACK,
              not_after=(ends or {}).get(node))
    return ca


def test_a_branch_holding_its_own_revocation_writes_nothing_and_says_so(
        tmp_path: Path, cli: Cli) -> None:
    ca = chain(tmp_path)
    with Ledger.open(tmp_path / "HQ") as hq, Ledger.open(tmp_path / "SH02") as sh:
        name_branches(hq, "HQ", "SH02")
        m = hq.add_member(hq.owner, name="王芳", phone="13800000001")
        sync(hq, sh)
        sh.topup(sh.owner, m, 50_000)
        hq.set_rule(hq.owner, "revocations", revocations_rule(revoke(ca, "SH02")))
        sync(hq, sh)
        assert views.trust_status(sh)["revoked"] is True
        assert views.trust_status(hq)["revoked"] is False
        before = sh.balance(m)
        with pytest.raises(NotCaughtUp, match="revoked branch SH02's certificate"):
            sh.topup(sh.owner, m, 10_000)
        with pytest.raises(NotCaughtUp, match="may not write any more"):
            sh.debit(sh.owner, m, amount=5_000)
        assert sh.balance(m) == before
    r = cli("status", data=tmp_path / "SH02")
    assert "REVOKED: the chain revoked SH02's certificate" in r.out, r.out
    assert "REVOKED" not in cli("status", data=tmp_path / "HQ").out


def test_a_certificate_ending_soon_or_ended_is_said_by_status(
        tmp_path: Path, cli: Cli) -> None:
    soon = datetime.now(UTC) + timedelta(days=10)
    chain(tmp_path, {"SH02": soon, "HQ": datetime.now(UTC) - timedelta(days=3)})
    r = cli("status", data=tmp_path / "SH02")
    assert "CERTIFICATE of SH02 ends" in r.out and "crdtledger chain renew" in r.out, r.out
    r = cli("status", data=tmp_path / "HQ")
    assert "CERTIFICATE of HQ ENDED" in r.out, r.out
    ends = cli("status", "--json", data=tmp_path / "SH02").json()["certificate_expires"]
    # The certificate keeps whole seconds: its end, as made, to the second.
    assert ends == int(soon.timestamp()) * 1000


def test_a_request_relayed_for_a_revoked_branch_is_granted_nothing(tmp_path: Path) -> None:
    """A hub that has not heard of the revocation yet relays a revoked branch's rights
    request (the asker) to head office, which has: it was judged by the hub that relays
    it alone, so head office gave the hub rights meant for a branch whose writes no
    branch takes any more. The asker is judged too."""
    ca = chain(tmp_path)
    Ledger.create(tmp_path / "SH01", "SH01", "acme")
    enrol(ca, tmp_path / "SH01", "SH01", not_before=BACK)
    with (Ledger.open(tmp_path / "HQ") as hq, Ledger.open(tmp_path / "SH02") as sh02,
          Ledger.open(tmp_path / "SH01") as sh01):
        name_branches(hq, "HQ", "SH01", "SH02")
        m = hq.add_member(hq.owner, name="王芳", phone="13800000001")
        hq.topup(hq.owner, m, 50_000)
        for x in (sh01, sh02):
            sync(hq, x)
        sh02.add_member(sh02.owner, name="李雷", phone="13800000002")  # its log, held at HQ
        sync(sh02, hq)
        # The asker's own request, and one relayed for a branch still in good standing.
        assert hq.grant_rights(m, "cash", "SH01", 1_000, asker="SH02") is not None
        hq.set_rule(hq.owner, "revocations", revocations_rule(revoke(ca, "SH02")))
        assert hq.retired("SH02") and not sh01.retired("SH02")
        before = hq.rights(m, "cash")
        assert hq.grant_rights(m, "cash", "SH02", 1_000) is None
        assert hq.grant_rights(m, "cash", "SH01", 1_000, asker="SH02") is None
        assert hq.rights(m, "cash") == before
        assert hq.grant_rights(m, "cash", "SH01", 1_000) is not None  # its own: as before
