"""Shop paths the simulator did not reach before (design notes: "Still unseen: the flush
delayed, the cut's grace, the revocation list"), each run in a short seeded day through
the code the node runs, with a check that fails when that code is broken."""

from __future__ import annotations

from typing import Any

import pytest
from test_sim import go_all

from crdtledger.trust import RevokedSigner, Trust
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
    its records head office revokes it, and the thief plugs it in again later. Its 14
    records beyond are refused at every honest replica (checks.revoked_now, every
    quarter hour), the 46 stay applied, none of the 13 entries its tills acknowledged
    after the revocation is money anywhere, and no honest branch gave it rights after
    (checks.revoked_final). The same seed gives the same digest in other processes."""
    r, again = go_all(dict(seed=2, revoked=1), dict(seed=2, revoked=1), base=SMALL)
    assert again["trace_digest"] == clean(r)["trace_digest"]
    b = r["byzantine"]
    assert b["nodes"] == {"B02": "revoked"}
    (s,) = b["revoked"]
    assert s["held"] > 0 and s["revoked_at_s"] is not None and s["plugged_at_s"] is not None
    assert s["beyond"] > 0 and s["acknowledged_since"] > 0, s
    # Its peers were offered those records and refused them.
    assert sum(b["records_refused"].values()) > 0
    assert "--revoked 1" in r["reproduce"]


def test_a_replica_taking_a_revoked_writers_records_is_caught(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The check's own test: a replica that verifies a revoked writer's head as if the
    list did not name it (the bug of a `_verify_log` that forgot RevokedSigner) takes
    the stolen PC's later records, and the run stops on a `revoked` violation."""
    verify = Trust.verify

    def lenient(self: Trust, node: str, der: bytes, message: bytes, signature: bytes, *,
                expiry: bool = True) -> Any:
        try:
            return verify(self, node, der, message, signature, expiry=expiry)
        except RevokedSigner:
            crl, self._crl = self._crl, None
            try:
                return verify(self, node, der, message, signature, expiry=expiry)
            finally:
                self._crl = crl

    monkeypatch.setattr(Trust, "verify", lenient)
    result, _world = run(SMALL.with_(seed=2, revoked=1))
    assert result["violations"] == 1
    assert result["violation"]["kind"] == "revoked", result["violation"]


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
