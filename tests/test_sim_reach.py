"""Shop paths the simulator did not reach before (design notes: "Still unseen: the flush
delayed, the cut's grace, the revocation list"; then "a live link dropped as a new
revocation list arrives, nor a rights request from a revoked branch"), each run in a
short seeded day through the code the node runs, with a check that fails when that code
is broken."""

from __future__ import annotations

from typing import Any

import pytest
from test_sim import go_all

import sim.node
from crdtledger.payments import Payments
from crdtledger.trust import Trust
from peer.chain import Identity
from sim.config import Config
from sim.world import run

pytestmark = pytest.mark.slow

SMALL = Config(nodes=5, members=30, days=1, ops_per_node=40, ae_interval_s=30.0,
               scenario="partition-heal")


def clean(result: dict[str, Any]) -> dict[str, Any]:
    assert result["violations"] == 0, (result["violation"], result["reproduce"])
    assert result["converged"] is True, result["reproduce"]
    return result


# --- the revocation list: a PC stolen and revoked while it runs on (--revoked) ----------


def test_a_stolen_pc_revoked_has_its_later_records_refused_everywhere() -> None:
    """B02's PC is stolen at 11:01 and sells on cut off; once every replica holds 46 of
    its records head office revokes it, and the thief plugs it in again later. Every
    handshake with it is refused (peer.chain.Identity.check_peer, the list installed by
    peer.chain.apply_revocations as the node does), and the sync file the thief then
    carries to a branch is refused whole (sealed by a revoked signer). Its records
    beyond the 46 are at no honest replica (checks.revoked_now, every quarter hour),
    the 46 stay applied, none of the entries its tills acknowledged after the
    revocation is money anywhere, and no honest branch gave it rights after
    (checks.revoked_final). The same seed gives the same digest in two processes."""
    r, again = go_all(dict(seed=2, revoked=1), dict(seed=2, revoked=1), base=SMALL)
    assert again["trace_digest"] == clean(r)["trace_digest"]
    b = r["byzantine"]
    assert b["nodes"] == {"B02": "revoked"}
    (s,) = b["revoked"]
    assert s["held"] > 0 and s["revoked_at_s"] is not None and s["plugged_at_s"] is not None
    assert s["beyond"] > 0 and s["acknowledged_since"] > 0, s
    assert s["handshakes_refused"] > 0, s
    assert s["file"]["records"] > 0 and s["file"]["refused"] == "UntrustedSigner", s
    assert "--revoked 1" in r["reproduce"]


def test_a_chain_that_forgets_the_list_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """The check's own test: every node installs the list but judges a certificate as
    if it did not name it, at the handshake (`Identity.check_peer`) and for records and
    files (`Trust.check_cert`). The stolen PC's sessions then deliver what it wrote
    after the revocation, and the run stops on a `revoked` violation."""
    check_peer, check_cert = Identity.check_peer, Trust.check_cert

    def peer_lenient(self: Identity, der: bytes | None, *, expect_node: str | None = None
                     ) -> str:
        crl, self._crl = self._crl, None
        try:
            return check_peer(self, der, expect_node=expect_node)
        finally:
            self._crl = crl

    def cert_lenient(self: Trust, node: str, der: bytes, *, expiry: bool = True) -> Any:
        crl, self._crl = self._crl, None
        try:
            return check_cert(self, node, der, expiry=expiry)
        finally:
            self._crl = crl

    monkeypatch.setattr(Identity, "check_peer", peer_lenient)
    monkeypatch.setattr(Trust, "check_cert", cert_lenient)
    result, _world = run(SMALL.with_(seed=2, revoked=1))
    assert result["violations"] == 1
    assert result["violation"]["kind"] == "revoked", result["violation"]


# --- the list reaching a PC still connected (--revoked-live) -------------------------------

LIVE = SMALL.with_(seed=5, revoked=1, revoked_live=True)


def test_a_pc_revoked_while_connected_is_dropped_and_its_request_refused() -> None:
    """`--revoked 1 --revoked-live`: B03's PC is stolen and cut off from every branch but
    head office, through which it sells on. Head office revokes it in the instant one of
    its rights requests comes in that head office could serve from its own rights (the
    owner's write and the request in one turn of the node's loop): the request reaches
    Payments.grant_rights from a branch the store holds revoked and is answered "none"
    (checked by Byzantine.answered: a grant stops the run), and head office's node drops
    the live link as it installs the list (peer.chain.apply_revocations, run by
    SimNode._load_revocations as peer.node runs it; checked by checks.live_links_now).
    The rest goes as with `--revoked`: its handshakes refused, its file refused, nothing
    of it beyond the length held at the revocation anywhere."""
    r, _world = run(LIVE)
    clean(r)
    (s,) = r["byzantine"]["revoked"]
    assert s["revoked_on"] == "request", s
    assert s["links_dropped"] == 1 and s["requests_refused"] == 1, s
    assert s["held"] > 0 and s["beyond"] > 0 and s["handshakes_refused"] > 0, s
    assert s["file"]["refused"] == "UntrustedSigner", s
    assert "--revoked 1 --revoked-live" in r["reproduce"]


def test_a_node_that_keeps_a_revoked_peers_link_is_caught(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The check's own test: the node installs the list but closes no live link (the
    links `apply_revocations` returns are dropped on the floor). Head office keeps the
    stolen PC's link, and the quarter hour's check stops the run."""
    apply = sim.node.apply_revocations

    def keep_links(*args: Any) -> Any:
        taken, ignored, _refused = apply(*args)
        return taken, ignored, []

    monkeypatch.setattr(sim.node, "apply_revocations", keep_links)
    result, _world = run(LIVE)
    assert result["violations"] == 1
    assert result["violation"]["kind"] == "revoked", result["violation"]
    assert "keeps its live link" in result["violation"]["message"], result["violation"]


def test_a_grant_to_a_revoked_branch_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """The check's own test: `grant_rights` judges the asker as if the chain had not
    revoked it. Head office then grants the stolen PC's request, and the run stops."""
    grant = Payments.grant_rights

    def lenient(self: Payments, *args: Any, **kwargs: Any) -> Any:
        self.retired = lambda node: False  # type: ignore[method-assign]
        try:
            return grant(self, *args, **kwargs)
        finally:
            del self.retired

    monkeypatch.setattr(Payments, "grant_rights", lenient)
    result, _world = run(LIVE)
    assert result["violations"] == 1
    assert result["violation"]["kind"] == "revoked", result["violation"]
    assert "granted" in result["violation"]["message"], result["violation"]


# --- the delayed flush: killed between the acknowledgement and the flush -----------------


def test_a_node_killed_before_its_flush_loses_no_acknowledged_write() -> None:
    """`--kill-before-flush 6`: six times in the day a node dies right after its till
    got the answer to a write, before the flush of the frames that write queued (the
    node's `call_soon(_flush_queued)`, SimNode._flush_queued here). Its commit is kept,
    its frames die with it; after its restart every write it acknowledged is in its
    store and documents (World._restart) and at the end at every replica (checks.final,
    each killed write by name). Frames were really queued at each kill (a flush that
    sent nothing would leave none), and the same seed gives the same digest."""
    a, b = go_all(dict(seed=1, kill_before_flush=6), dict(seed=1, kill_before_flush=6),
                  base=SMALL)
    assert b["trace_digest"] == clean(a)["trace_digest"]
    kills = a["killed_before_flush"]
    assert len(kills) == 6
    assert all(k["frames_unsent"] > 0 for k in kills), kills
    assert sum(k["wrote"] is not None for k in kills) >= 3, kills
    assert "--kill-before-flush 6" in a["reproduce"]
