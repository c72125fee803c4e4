"""Fork proofs whose content lies, every signature valid (the nineteenth wave): real
stores, real SyncSessions, a branch signing two records at one position of its log
with its own key (tests/forgery.py). An honest branch is never reported forked, a
real fork is reported wherever it is shown, relayed or not, and a proof shown again,
or another one of a branch caught already, costs no row."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from forgery import hello, recs_frame, sign_head
from helpers import new_ledger, sync

from crdtledger.ledger import Ledger
from crdtledger.log import GENESIS, Batch, Head, Record, head_message, record_hash
from crdtledger.sync import SyncSession

LIAR, HONEST, VICTIM, RELAY = "SH01", "SH02", "SH03", "SH04"


@pytest.fixture
def chain(tmp_path: Path) -> Iterator[dict[str, Ledger]]:
    ls = {n: new_ledger(tmp_path, n) for n in (LIAR, HONEST, VICTIM, RELAY)}
    m = ls[LIAR].add_member(ls[LIAR].owner, name="客", phone="13800001234")
    ls[LIAR].topup(ls[LIAR].owner, m, 10000)
    ls[HONEST].add_member(ls[HONEST].owner, name="乙", phone="13800001235")
    for n in (HONEST, VICTIM, RELAY):
        sync(ls[LIAR], ls[n])
    sync(ls[HONEST], ls[VICTIM])
    sync(ls[HONEST], ls[RELAY])
    try:
        yield ls
    finally:
        for lg in ls.values():
            lg.close()


def _deliver(to: Ledger, peer: str, batch: Batch, times: int = 1) -> None:
    """`batch` as a `recs` frame from `peer`, `times` times, on one session."""
    s = SyncSession(to)
    s.start()
    s.receive(hello(to.chain, peer, to.clock.wall()))
    for _ in range(times):
        s.receive(recs_frame(batch))


def _faults(lg: Ledger) -> tuple[int, int]:
    """Fault rows, and the bytes of their evidence."""
    n, size = lg.storage.conn.execute(
        "SELECT COUNT(*), COALESCE(SUM(LENGTH(evidence)), 0) FROM faults").fetchone()
    return int(n), int(size)


def _other_side(liar: Ledger, seq: int, data: bytes) -> tuple[Record, Head]:
    """A record of the liar's at `seq` other than the one it wrote there, chained from
    its record before, and its head there, signed with its own key."""
    prev = liar.storage.log.hash_at(liar.node, seq - 1) if seq > 1 else GENESIS
    assert prev is not None
    hash_ = record_hash(prev, liar.node, seq, "rules", data)
    return Record(liar.node, seq, "rules", data), sign_head(liar.trust, liar.chain, liar.node,
                                                             seq, hash_)


def test_a_proof_naming_an_honest_branch_proves_nothing(chain: dict[str, Ledger]) -> None:
    liar, honest, victim = chain[LIAR], chain[HONEST], chain[VICTIM]
    n_h, tip_h = honest.storage.log.tip(HONEST)
    seq = liar.storage.log.tip(LIAR)[0]
    _rec, fork_head = _other_side(liar, seq, b"\x00\x00")
    made_up = b"\x11" * 32
    by_liar = Head(n_h, made_up, liar.trust.sign(head_message(liar.chain, HONEST, n_h, made_up)))
    honest_again = sign_head(honest.trust, honest.chain, HONEST, n_h, tip_h)  # signed twice
    earlier = sign_head(honest.trust, honest.chain, HONEST, 1,
                        honest.storage.log.hash_at(HONEST, 1) or b"")
    before = (victim.states_digest(), _faults(victim))
    for cert, proof in (
            (liar.trust.cert_der, fork_head),  # the liar's own fork, named the honest's
            (honest.trust.cert_der, by_liar),  # a head naming it, signed by the liar
            (liar.trust.cert_der, by_liar),
            (honest.trust.cert_der, honest_again),  # the same head, signed again
            (honest.trust.cert_der, earlier)):  # its own head at an earlier position
        _deliver(victim, LIAR, Batch(certs={HONEST: cert}, proofs={HONEST: proof}))
    # The honest branch's head, named the liar's.
    _deliver(victim, HONEST, Batch(certs={LIAR: honest.trust.cert_der},
                                   proofs={LIAR: honest_again}))
    assert (victim.states_digest(), _faults(victim)) == before
    assert not victim.faults()


def test_a_real_fork_relayed_is_reported_once_however_often_shown(
        chain: dict[str, Ledger]) -> None:
    liar, victim, honest = chain[LIAR], chain[VICTIM], chain[HONEST]
    seq = liar.storage.log.tip(LIAR)[0]
    _rec, fork_head = _other_side(liar, seq, b"\x00\x00")
    # Relayed by a third branch: the liar's own signature proves it.
    proof = Batch(certs={LIAR: liar.trust.cert_der}, proofs={LIAR: fork_head})
    _deliver(victim, RELAY, proof)
    assert [(f["node"], f["kind"]) for f in victim.faults()] == [(LIAR, "fork")]
    caught = (victim.states_digest(), _faults(victim))
    _deliver(victim, RELAY, proof, times=1000)
    assert (victim.states_digest(), _faults(victim)) == caught
    # It reaches a branch holding the same side as the victim through a round.
    sync(victim, honest)
    assert [f["node"] for f in honest.faults()] == [LIAR]


def test_a_forker_caught_adds_no_row_by_forking_again(chain: dict[str, Ledger]) -> None:
    """Each head the forker signs at another position of its log, with records there
    of its choosing, was another fault row and their bytes kept as evidence: a branch
    caught, and blocked, still filled every store it reached (60 kB a frame here)."""
    liar, victim = chain[LIAR], chain[VICTIM]
    for i in range(20):  # a longer log of the liar's, held by the victim
        liar.add_member(liar.owner, name="客", phone=f"139000000{i:02d}")
    sync(liar, victim)
    tip = liar.storage.log.tip(LIAR)[0]
    _rec, fork_head = _other_side(liar, tip, b"\x00\x00")
    _deliver(victim, LIAR, Batch(certs={LIAR: liar.trust.cert_der}, proofs={LIAR: fork_head}))
    caught = (victim.states_digest(), _faults(victim))
    assert caught[1][0] == 1
    for seq in range(1, tip):
        rec, head = _other_side(liar, seq, bytes([seq]) * 60_000)
        _deliver(victim, LIAR, Batch(recs=[rec], heads={LIAR: head},
                                     certs={LIAR: liar.trust.cert_der}))
    assert (victim.states_digest(), _faults(victim)) == caught


def test_a_proof_from_another_branch_under_the_forkers_name_is_refused(
        chain: dict[str, Ledger]) -> None:
    """A head the relay signs itself, naming the liar, is no proof: refused with a
    sentence, nothing kept."""
    relay, victim = chain[RELAY], chain[VICTIM]
    seq = chain[LIAR].storage.log.tip(LIAR)[0]
    fake = sign_head(relay.trust, relay.chain, LIAR, seq, b"\x22" * 32)
    before = (victim.states_digest(), _faults(victim))
    _deliver(victim, RELAY, Batch(certs={LIAR: relay.trust.cert_der}, proofs={LIAR: fake}))
    assert (victim.states_digest(), _faults(victim)) == before
    assert victim.refusals[-1].startswith("a proof of a fork of SH01 refused: ")
