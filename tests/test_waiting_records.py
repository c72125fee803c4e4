"""Records that wait for what they build on (crdtledger.replica._release): an honest
branch's edit that came before the record it edits waits, and is applied once that
record comes; a liar's records that build on what nobody will ever send wait for
ever, and must cost the batches after them nothing (each batch used to try the
first of them, fail, roll the whole batch back and run it again, and read every
waiting record: a branch holding one such record paid twice for every later sale).
Real SQLite stores, real apply_batch; work counted in SQLite's steps, not timed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from helpers import Forger, name_branches, new_ledger, sqlite_steps, sync
from pycrdt import Doc, Map

from crdtledger.ledger import Ledger
from crdtledger.log import WAITING
from crdtledger.model import member_doc
from crdtledger.redaction import needs


def waiting(ledger: Ledger) -> int:
    return int(ledger.storage.conn.execute(
        "SELECT COUNT(*) FROM records WHERE state = ?", (WAITING,)).fetchone()[0])


def test_records_built_on_what_never_comes_cost_later_batches_nothing(tmp_path: Path
                                                                      ) -> None:
    a, b, c = (new_ledger(tmp_path, n) for n in ("SH01", "SH02", "SH04"))
    name_branches(a, "SH01", "SH02", "SH03", "SH04")
    members = [a.add_member(a.owner, name=f"会员{i}", phone=f"1380000{i:04d}")
               for i in range(5)]
    for m in members:
        a.topup(a.owner, m, 100_000)
    for r in (b, c):
        sync(a, r)
    # SH03 edits inside a Map that a client no branch owns wrote: its update refers to
    # structs nobody will ever send, 200 times.
    liar = Forger(new_ledger(tmp_path, "SH03"))
    phantom = Doc(client_id=987_654_321)
    doc = member_doc(members[0])
    for i in range(200):
        before = phantom.get_state()
        with phantom.transaction():
            phantom.get("members", type=Map)[f"x{i}"] = Map({"v": 1})
        liar.doc(doc).apply_update(phantom.get_update(before))

        def edit(d: Doc[Any], i: int = i) -> None:
            d.get("members", type=Map)[f"x{i}"]["v"] = 2

        rec = liar.write(doc, edit)
        assert needs(rec.data).get(987_654_321)  # refers to the phantom's struct
    b.apply_batch(liar.batch(liar.records))
    assert waiting(b) == 200
    sales = []
    for i in range(3):
        a.debit(a.owner, members[i], amount=100)
        batch = a.batch(a.lacking(c.log_view()))
        sales.append([sqlite_steps(r, lambda r=r, bt=batch: r.apply_batch(bt)) for r in (b, c)])
    for with_them, without in sales:
        assert with_them < 1.5 * without + 5, sales
    assert waiting(b) == 200 and a.rights(members[2]) == b.rights(members[2])
    for x in (a, b, c, liar.ledger):
        x.close()


def test_an_edit_that_came_before_what_it_edits_is_applied_when_that_comes(
        tmp_path: Path) -> None:
    """SH02 edits a member SH01 just added; SH04 gets SH02's records first: the edit
    waits (it refers to SH01's structs), then SH01's come and both are applied."""
    a, b, c = (new_ledger(tmp_path, n) for n in ("SH01", "SH02", "SH04"))
    name_branches(a, "SH01", "SH02", "SH04")
    sync(a, c)
    m = a.add_member(a.owner, name="王芳", phone="13800000001")
    sync(a, b)
    b.edit_member(b.owner, m, fields={"notes": "喜欢安静"})
    own = b.storage.log.tip("SH02")[0]
    c.apply_batch(b.batch([r for r in b.lacking(c.log_view()) if r.node == "SH02"
                           and r.seq <= own]))
    assert waiting(c) >= 1
    sync(a, c)
    assert waiting(c) == 0
    assert c.member(m)["notes"] == "喜欢安静"
    for x in (a, b, c):
        x.close()
