"""A branch with a valid certificate that lies, about another branch's card.

No version ever set a card's own keys after the record that created it: its number,
member, type, PIN, expiry and issuing node are written once, and branches only add
events (lost, found, returned, replaced) to its list. A liar that set them anyway
re-pointed SH01's card to another member of the same shard, so that the card paid
from that member's money at SH01; set a PIN on it; emptied its events; renumbered it
out of sight. Write rule card-fixed refuses each at every replica and blocks the liar.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from helpers import sync
from pycrdt import Array, Map
from test_liar_round2 import World

from crdtledger.auth import hash_secret
from crdtledger.model import member_doc

EDITS = {
    "member": lambda card, other: card.__setitem__("member", other),
    "pin": lambda card, other: card.__setitem__("pin", hash_secret("0000")),
    "number": lambda card, other: card.__setitem__("card_no", "LIAR1"),
    "events": lambda card, other: card.__setitem__("events", Array([])),
    "removed": lambda card, other: card.pop("expiry"),
}


def _same_shard(w: World) -> str:
    """A member of the same shard as w.member: a card's member must be of its shard."""
    for k in range(1, 2_000):
        m = w.a.add_member(w.a.owner, name=f"同片{k}", phone=f"139{k:08d}")
        if member_doc(m) == member_doc(w.member):
            return m
    raise AssertionError("no member of the shard")


@pytest.mark.parametrize("edit", sorted(EDITS))
def test_a_liar_rewriting_an_honest_card_is_refused_everywhere(tmp_path: Path, edit: str
                                                               ) -> None:
    w = World(tmp_path)
    try:
        a, b = w.a, w.b
        other = _same_shard(w)
        a.topup(a.owner, other, 50_000)
        a.issue_card(a.owner, w.member, "C77", pin=None)
        a.report_lost(a.owner, "C77")  # an event added by its branch: not a rewrite
        a.report_found(a.owner, "C77")
        for r in (w.liar.ledger, b):
            sync(a, r)

        def rewrite(d: Any) -> None:
            card = d.get("cards", type=Map)
            EDITS[edit](card[next(k for k in card if k.endswith(".SH01"))], other)

        rec = w.liar.write(member_doc(w.member), rewrite)
        for r in (a, b):
            r.apply_batch(w.liar.batch([rec]))
            assert [(f["node"], f["rule"]) for f in r.faults()] == [("SH03", "card-fixed")]
            card = r.card("C77")
            assert (card["member"], card["status"], card["has_pin"]) == (
                w.member, "active", False)
        debit = a.debit(a.owner, a.use_card("C77")["member"], amount=1_000)
        assert a.balance(other)["cash"] == 50_000 and debit
    finally:
        w.close()


def test_branches_adding_events_to_a_card_break_no_rule(tmp_path: Path) -> None:
    """Lost at SH02, found at SH01, replaced at SH02, each synced: events only."""
    w = World(tmp_path)
    try:
        a, b = w.a, w.b
        a.issue_card(a.owner, w.member, "C78", pin="4321")
        sync(a, b)
        b.report_lost(b.owner, "C78")
        sync(b, a)
        a.report_found(a.owner, "C78")
        sync(a, b)
        b.replace_card(b.owner, "C78", "C79")
        for x, y in ((b, a), (a, w.c), (b, w.c)):
            sync(x, y)
        for r in (a, b, w.c):
            assert r.faults() == []
            assert r.card("C79")["status"] == "active" and r.card("C78")["status"] == "replaced"
    finally:
        w.close()
