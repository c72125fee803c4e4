"""One entry id in two month documents of one writer: whichever copy comes second in
the writer's log is refused and blamed, at every replica, however the records were
batched (a batch is applied document by document, for speed).

Ids within 14 hours of a month's turn may be filed under either month (a branch's
time zone is its own), so the write rules cannot tell the right document from the
id; the projection's key refuses the second copy. Three replicas take a dishonest
branch's two copies: one record at a time, both in one batch, and in one batch
behind an honest record of the later month, which is then applied first."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from helpers import FakeClock, Forger, name_branches, new_ledger, projections, sync
from pycrdt import Map

from crdtledger.hlc import HybridClock, id_time_ms
from crdtledger.ledger import Ledger
from crdtledger.log import Batch
from crdtledger.model import ledger_doc, owner_of

TURN = 1_769_875_200_000  # 2026-02-01T00:00+08:00: January's end in Shanghai


def _put(forger: Forger, doc: str, entry: dict[str, Any]) -> None:
    forger.write(doc, lambda d: d.get("entries", type=Map).__setitem__(entry["id"], entry))


def test_the_later_copy_in_the_writers_log_is_refused_however_batched(tmp_path: Path) -> None:
    clock = FakeClock(TURN - 3_600_000)
    liar = new_ledger(tmp_path, "SH02", now_ms=clock)
    honest = new_ledger(tmp_path, "SH01", now_ms=clock)
    m = honest.add_member(honest.owner, name="Ann", phone="13800138000")
    honest.topup(honest.owner, m, 10_000)
    sync(honest, liar)
    # The liar's top-up of its own rights, an hour before the turn in Shanghai, filed
    # under January (as SH02's zone would), then again under February.
    eid = HybridClock("SH02", now_ms=clock).mint()
    entry = {"id": eid, "kind": "topup", "member": m, "node": "SH02", "op": owner_of("SH02"),
             "at": id_time_ms(eid), "amount": 5_000, "paid": 5_000,
             "deltas": [["cash", "SH02", 5_000]]}
    forger = Forger(liar)
    _put(forger, ledger_doc("2026-01"), entry)
    _put(forger, ledger_doc("2026-02"), entry)
    first, second = forger.records

    def replica(name: str) -> Ledger:
        r = new_ledger(tmp_path, name, now_ms=clock)
        sync(r, honest)
        return r

    one_by_one, together, behind = replica("SH11"), replica("SH12"), replica("SH13")
    # An honest record of February, made after the turn, that `behind` lacks.
    view = behind.log_view()
    clock.ms = TURN + 60_000
    honest.topup(honest.owner, m, 100)
    feb = honest.batch(honest.lacking(view))
    feb_recs = [r for r in feb.recs if r.doc == ledger_doc("2026-02")]
    assert feb_recs
    one_by_one.apply_batch(forger.batch([first]))
    one_by_one.apply_batch(forger.batch([second]))
    together.apply_batch(forger.batch())
    mixed = forger.batch()
    behind.apply_batch(Batch(recs=[*feb_recs, first, second],
                             heads={**feb.heads, **mixed.heads},
                             certs={**feb.certs, **mixed.certs}))
    for r in (one_by_one, together, behind):
        assert [(f["node"], f["seq"], f["rule"]) for f in r.faults()] == [
            ("SH02", second.seq, "entry-insert-once")], r.node
    for r in (one_by_one, together):
        sync(r, honest)  # February's honest top-up, which `behind` took with them
    assert projections(one_by_one) == projections(together) == projections(behind)
    assert behind.balance(m)["cash"] == 10_000 + 5_000 + 100


def test_a_copy_waiting_for_its_funding_is_not_taken_twice(tmp_path: Path) -> None:
    """The liar's debit, not funded, waits in January's document; its copy in
    February's is refused (it would wait too, and once funded both would be projected:
    the store's key then refused every batch after, an honest branch's included)."""
    clock = FakeClock(TURN - 3_600_000)
    liar = new_ledger(tmp_path, "SH02", now_ms=clock)
    honest = new_ledger(tmp_path, "SH01", now_ms=clock)
    name_branches(honest, "SH02")
    m = honest.add_member(honest.owner, name="Ann", phone="13800138000")
    honest.topup(honest.owner, m, 10_000)
    sync(honest, liar)
    eid = HybridClock("SH02", now_ms=clock).mint()
    debit = {"id": eid, "kind": "debit", "member": m, "node": "SH02", "op": owner_of("SH02"),
             "at": id_time_ms(eid), "amount": 3_000, "deltas": [["cash", "SH02", -3_000]],
             "pay": "stored"}
    forger = Forger(liar)
    _put(forger, ledger_doc("2026-01"), debit)
    _put(forger, ledger_doc("2026-02"), debit)
    honest.apply_batch(forger.batch())
    assert [(f["seq"], f["rule"]) for f in honest.faults()] == [
        (forger.records[1].seq, "entry-insert-once")]
    # A third branch, not yet told of the fault, funds the January copy.
    third = new_ledger(tmp_path, "SH03", now_ms=clock)
    name_branches(third, "SH02")
    sync(third, liar)
    third.topup(third.owner, m, 3_000)
    third.transfer_rights(third.owner, m, "SH02", 3_000)
    third_recs = third.batch(third.lacking(honest.log_view()))
    honest.apply_batch(third_recs)
    clock.ms = TURN + 60_000
    honest.topup(honest.owner, m, 100)  # later batches still go through
    assert honest.balance(m)["cash"] == 10_000 + 3_000 - 3_000 + 100
    assert honest.rights(m) == {"SH01": 10_100}
    assert honest.storage.conn.execute("SELECT COUNT(*) FROM deferred").fetchone() == (0,)
