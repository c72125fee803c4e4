"""A card's status events cost a bounded amount of work to project, whatever a lying
branch appends to them.

Member documents have no write rule beyond client ids and order, so a branch with a
valid certificate can append status events to another branch's card. It once appended
8,000, each naming the next as seen: projection.card_frontier (a transitive closure
over bitsets) then took 93-120 s on every honest replica, in the sync session, and
again at every later change of the card. The frontier is now one linear pass, and a
card beyond MAX_CARD_EVENTS events (or an event listing more than MAX_SEEN) is
quarantined, alike everywhere, whatever the replica held before.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from forgery import hello, sync_file
from helpers import Forger, sync
from hypothesis import given, settings
from hypothesis import strategies as st
from pycrdt import Map

from crdtledger import syncfile
from crdtledger.errors import InvalidInput
from crdtledger.ledger import Ledger
from crdtledger.model import CARD_STATUSES, InvalidRecord, is_one_of, member_doc
from crdtledger.projection import (
    CARD_EVENTS_WRITABLE,
    MAX_CARD_EVENTS,
    MAX_SEEN,
    SEEN,
    card_frontier,
)
from crdtledger.sync import SyncSession
from peer.chain import enrol, init_chain

CHAIN = "acme"


# --- the frontier itself ---------------------------------------------------------------


def closure_frontier(events: list[Any]) -> list[list[Any]]:
    """card_frontier as it was (a transitive closure over bitsets, quadratic and
    worse): the reference the linear one must agree with on every input."""
    valid = sorted([e for e in events if isinstance(e, list) and len(e) >= 2
                    and isinstance(e[0], str) and is_one_of(e[1], CARD_STATUSES)],
                   key=lambda e: e[0])
    if not valid:
        return []
    first = events[0][0] if isinstance(events[0], list) and events[0] else None
    index = {e[0]: i for i, e in enumerate(valid)}
    seen: list[int] = []
    old = 0
    for i, e in enumerate(valid):
        listed = e[SEEN] if len(e) > SEEN else None
        if isinstance(listed, list):
            bits = 0
            for ident in listed:
                j = index.get(ident) if isinstance(ident, str) else None
                if j is not None and j != i:
                    bits |= 1 << j
            seen.append(bits)
        else:
            seen.append(0 if e[0] == first else old)
            old |= 1 << i
    changed = True
    while changed:
        changed = False
        for i, bits in enumerate(seen):
            wider, rest = bits, bits
            while rest:
                low = rest & -rest
                wider |= seen[low.bit_length() - 1]
                rest ^= low
            wider &= ~(1 << i)
            if wider != bits:
                seen[i] = wider
                changed = True
    hidden = 0
    for i, bits in enumerate(seen):
        rest = bits
        while rest:
            low = rest & -rest
            if not seen[low.bit_length() - 1] >> i & 1:
                hidden |= low
            rest ^= low
    return [e for i, e in enumerate(valid) if not hidden >> i & 1]


IDS = [f"E{i:02d}" for i in range(12)]  # few: duplicates, cycles and collisions happen
_seen = st.one_of(st.lists(st.one_of(st.sampled_from(IDS), st.just("nope"), st.just(7)),
                           max_size=5),
                  st.none(), st.just("E01"))
_event = st.one_of(
    st.builds(lambda i, s, seen, listed: [i, s, "", "op", seen] if listed else [i, s, ""],
              st.sampled_from(IDS), st.sampled_from([*CARD_STATUSES, "bogus"]), _seen,
              st.booleans()),
    st.just("junk"), st.just([]), st.just([3, "lost"]))


@settings(max_examples=600, deadline=None)
@given(st.lists(_event, max_size=14))
def test_the_linear_frontier_is_the_closures_on_any_events(events: list[Any]) -> None:
    assert card_frontier(events) == closure_frontier(events)


def test_a_long_chain_of_seen_costs_a_linear_pass() -> None:
    """The shape of the attack, at the limit: each event names the next as seen."""
    n = MAX_CARD_EVENTS
    ids = [f"E{i:06d}" for i in range(n)]
    events = [[ids[0], "active", "", "", []]] + [
        [ids[i], "lost" if i % 2 else "active", "", "x", [ids[i + 1]] if i + 1 < n else []]
        for i in range(1, n)]
    assert card_frontier(events) == [events[0], events[1]]
    old = [[ids[i], "lost", ""] for i in range(n)]  # from before `seen`: each saw all before
    assert card_frontier(old) == [old[-1]] == closure_frontier(old)


def test_beyond_the_bounds_a_card_is_malformed() -> None:
    ok = [["E0", "active", ""]] + [[f"E{i}", "lost", "", "x", []]
                                   for i in range(1, MAX_CARD_EVENTS)]
    assert card_frontier(ok)
    with pytest.raises(InvalidRecord, match="events"):
        card_frontier([*ok, ["F", "lost", "", "x", []]])
    listing = [["E0", "active", ""], ["E1", "lost", "", "x", ["E0"] * (MAX_SEEN + 1)]]
    with pytest.raises(InvalidRecord, match="seen"):
        card_frontier(listing)
    at_most = ["E1", "lost", "", "x", ["E0"] * MAX_SEEN]
    assert card_frontier([listing[0], at_most]) == [at_most]


def test_honest_writers_stay_well_inside_the_bound() -> None:
    # Return and replace end a card (one event each, past the writer's limit); ten
    # branches apart would each have to toggle one card ~90 times to pass the bound.
    assert CARD_EVENTS_WRITABLE * 10 <= MAX_CARD_EVENTS
    assert CARD_EVENTS_WRITABLE >= 100  # an honest card has a few dozen events
    assert MAX_SEEN >= 32  # one id per branch that changed the card concurrently


# --- real stores: a liar's events through the real sync paths ---------------------------


def _world(root: Path, nodes: tuple[str, ...]) -> dict[str, Ledger]:
    chain_dir = root / CHAIN
    init_chain(chain_dir)
    out = {}
    for node in nodes:
        data = root / node.lower()
        Ledger.create(data, node, CHAIN)
        enrol(chain_dir, data, node)
        out[node] = Ledger.open(data, synchronous="OFF")
    return out


def _deliver_live(liar: Ledger, forger: Forger, victim: Ledger) -> None:
    """The forger's records in a live session: the victim's real SyncSession."""
    s = SyncSession(victim, expect_node=liar.node)
    s.start()
    s.data_to_send()
    s.receive(hello(CHAIN, liar.node, victim.clock.wall()))
    s.data_to_send()
    s.receive(forger.frame())
    s.data_to_send()
    while s.next_event() is not None:
        pass
    s.close()


def _cards(ledger: Ledger) -> list[tuple[Any, ...]]:
    return ledger.storage.conn.execute(
        "SELECT id, card_no, member, status, body FROM cards ORDER BY id").fetchall()


def _quarantine(ledger: Ledger) -> list[tuple[Any, ...]]:
    return ledger.storage.conn.execute(
        "SELECT doc, key, reason FROM quarantine ORDER BY doc, key").fetchall()


def _events(ledger: Ledger, member: str, card: str) -> list[Any]:
    root = ledger.storage.doc(member_doc(member)).roots["cards"]
    return list(root[card]["events"].to_py())


def _liar_appends(forger: Forger, member: str, card: str, n: int) -> None:
    """n status events on a card the liar did not issue, each naming the next as seen."""
    ids = [f"Z{i:07d}" for i in range(n)]

    def mutate(d: Any) -> None:
        events = d.get("cards", type=Map)[card]["events"]
        events.extend([[ids[i], "active" if i == n - 1 else "lost", "", "x",
                        [ids[i + 1]] if i + 1 < n else []] for i in range(n)])
    forger.write(member_doc(member), mutate)


@pytest.fixture
def shop(tmp_path: Path) -> dict[str, Any]:
    w = _world(tmp_path, ("SH01", "F00", "V1", "V2", "V3"))
    sh01 = w["SH01"]
    member = sh01.add_member(sh01.owner, name="王芳", phone="13800000001")
    card = sh01.issue_card(sh01.owner, member, "C0001")
    other = sh01.issue_card(sh01.owner, member, "C0002")
    for node in ("F00", "V1", "V2"):  # V3 has seen nothing yet
        sync(sh01, w[node])
    return {**w, "root": tmp_path, "member": member, "card": card, "other": other}


def test_a_liars_8000_events_quarantine_the_card_alike_on_every_replica(
        shop: dict[str, Any]) -> None:
    liar, v1, v2, v3 = shop["F00"], shop["V1"], shop["V2"], shop["V3"]
    member, card = shop["member"], shop["card"]
    assert v1.card("C0001")["status"] == "active"
    forger = Forger(liar)
    _liar_appends(forger, member, card, 8000)
    path = sync_file(shop["root"] / "liar.sync", liar.trust, forger.batch(), v1.clock.wall())
    got = syncfile.import_file(v1, path)
    assert got["changed"] == [member_doc(member)] and not got["incomplete"]
    _deliver_live(liar, forger, v2)
    sync(v1, v3)  # V3 never saw the card well-formed: it takes the document whole
    for replica in (v1, v2, v3):
        assert len(_events(replica, member, card)) == 8001  # the record was taken...
        assert card not in {row[0] for row in _cards(replica)}  # ...the card was not
        assert [(d, k) for d, k, _ in _quarantine(replica)] == [(member_doc(member), card)]
        assert "more than" in _quarantine(replica)[0][2]
        assert replica.card("C0002")["status"] == "active"  # the member's other card
        assert not [f for f in replica.faults() if f["node"] == "SH01"]
    assert _cards(v1) == _cards(v2) == _cards(v3)
    assert _quarantine(v1) == _quarantine(v2) == _quarantine(v3)
    # A later honest change to the member's cards costs no more than the first did.
    sync(shop["SH01"], v1)
    shop["SH01"].report_lost(shop["SH01"].owner, "C0002")
    sync(shop["SH01"], v1)
    sync(v1, v2)
    assert v1.card("C0002")["status"] == v2.card("C0002")["status"] == "lost"
    assert _cards(v1) == _cards(v2) == _cards(shop["SH01"])


def test_a_liars_events_within_the_bound_are_projected_as_the_closure_would(
        shop: dict[str, Any]) -> None:
    liar, v1, v2, v3 = shop["F00"], shop["V1"], shop["V2"], shop["V3"]
    member, card = shop["member"], shop["card"]
    forger = Forger(liar)
    _liar_appends(forger, member, card, 300)
    path = sync_file(shop["root"] / "liar.sync", liar.trust, forger.batch(), v1.clock.wall())
    syncfile.import_file(v1, path)
    _deliver_live(liar, forger, v2)
    sync(v1, v3)
    for replica in (v1, v2, v3):
        events = _events(replica, member, card)
        frontier = closure_frontier(events)
        assert [e[0] for e in frontier] == [card, "Z0000000"]  # neither seen by any
        assert replica.card("C0001")["status"] == frontier[-1][1] == "lost"
        assert not _quarantine(replica)
    assert _cards(v1) == _cards(v2) == _cards(v3)


def test_honest_card_operations_work_and_replicas_agree(shop: dict[str, Any]) -> None:
    sh01, v1, v2 = shop["SH01"], shop["V1"], shop["V2"]
    o = sh01.owner
    sh01.report_lost(o, "C0001")
    sync(sh01, v1)
    assert v1.card("C0001")["status"] == "lost"
    v1.report_found(v1.owner, "C0001")  # found at another branch
    sync(v1, v2)
    v2.report_lost(v2.owner, "C0001")
    new = v2.replace_card(v2.owner, "C0001", "C0009")
    for a, b in ((v2, sh01), (sh01, v1), (v1, v2)):
        sync(a, b)
    for replica in (sh01, v1, v2):
        assert replica.card("C0001")["status"] == "replaced"
        assert replica.card("C0009") == {**replica.card("C0009"), "id": new, "status": "active"}
        assert not _quarantine(replica)
    assert _cards(sh01) == _cards(v1) == _cards(v2)


def test_a_writer_refuses_lost_and_found_past_its_limit_but_can_still_replace(
        shop: dict[str, Any]) -> None:
    sh01, v1 = shop["SH01"], shop["V1"]
    o = sh01.owner
    for i in range(CARD_EVENTS_WRITABLE - 1):  # the issue event is the first
        (sh01.report_lost if i % 2 == 0 else sh01.report_found)(o, "C0001")
    status = sh01.card("C0001")["status"]
    body = json.loads(sh01.storage.conn.execute(
        "SELECT body FROM cards WHERE id = ?", (shop["card"],)).fetchone()[0])
    assert len(body["events"]) == CARD_EVENTS_WRITABLE
    toggle = sh01.report_found if status == "lost" else sh01.report_lost
    with pytest.raises(InvalidInput, match="replace it"):
        toggle(o, "C0001")
    sh01.replace_card(o, "C0001", "C0010")
    sync(sh01, v1)
    for replica in (sh01, v1):
        assert replica.card("C0001")["status"] == "replaced"
        assert replica.card("C0010")["status"] == "active"
        assert not _quarantine(replica)
    assert _cards(sh01) == _cards(v1)
