"""A branch with a valid certificate that lies in the member documents (5 December,
last session).

Any branch may edit a member, issue a card or erase a member: the write rules judge
ledger and governance documents, not members/NN. What honest replicas do with a
member document must then depend on the record alone and stay within what an honest
branch's operation could have written:

- a card filed in another member's shard paid, with a PIN its writer chose, from the
  member it named, at honest branches, and could be neither reported lost nor
  replaced (those events go to the member's own shard);
- a member's copy filed in another shard was projected over the real one by
  whichever came last: honest replicas held different profiles for good;
- an `erased` flag set inside a member's Map made honest branches redact their own
  records of a member still holding value, and a replica catching up afterwards had
  no such member at all;
- a value nested 400 deep was taken or refused by the depth of the stack a replica
  applied it at (RecursionError rolled the whole batch back);
- `tags` or `edits` made a list broke the member's page, every tag segment of a
  broadcast, and every later edit of the member.

SH01 is honest, SH03 the liar (tests/helpers.Forger, its own valid key), SH02 and SH04
honest replicas (test_liar_round2.World). Real stores, real apply_batch.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import Forger, new_ledger, sync
from pycrdt import Array, Map
from test_funding_order import state
from test_liar_round2 import World
from test_membership import Staff

from crdtledger import outbox, views
from crdtledger.auth import hash_secret
from crdtledger.erasure import erase_member
from crdtledger.errors import NotFound
from crdtledger.hlc import HybridClock
from crdtledger.log import Batch, Record
from crdtledger.model import MAX_NESTING, member_doc


@pytest.fixture
def w(tmp_path: Path) -> Iterator[World]:
    world = World(tmp_path)
    yield world
    world.close()


def _other_shard(member: str) -> str:
    return "members/00" if member_doc(member) != "members/00" else "members/01"


def _to_all(w: World, *recs: Record) -> None:
    for r in (w.a, w.b, w.c):
        r.apply_batch(w.liar.batch(list(recs)))


def test_a_card_filed_outside_its_members_document_pays_nothing(w: World) -> None:
    cid = HybridClock("SH03", now_ms=w.clock).mint()

    def plant(d: Any) -> None:
        d.get("cards", type=Map)[cid] = Map({
            "card_no": "STEAL1", "member": w.member, "type": "stored_value",
            "pin": hash_secret("1234"), "expiry": "", "node": "SH03",
            "events": Array([[cid, "active", ""]])})

    _to_all(w, w.liar.write(_other_shard(w.member), plant))
    for r in (w.a, w.b, w.c):
        with pytest.raises(NotFound):
            r.debit(r.owner, card="STEAL1", pin="1234", amount=30_000)
        assert r.balance(w.member)["cash"] == 100_000
    assert state(w.b) == state(w.c)


def test_a_card_created_under_another_branchs_card_id_is_refused(w: World) -> None:
    """Filed in its own member's shard (so the shard check passes) under the id of a
    card SH01 issued to another member: the card table is keyed by id, so the card
    taken over depended on which record came last, and replicas differed for good."""
    other = next(m for m in (w.other, w.third) if member_doc(m) != member_doc(w.member))
    card = w.a.issue_card(w.a.owner, w.member, "VICTIM01", pin="1111")
    for r in (w.b, w.c, w.liar.ledger):
        sync(w.a, r)
    w.liar = Forger(w.liar.ledger)

    def plant(d: Any) -> None:
        d.get("cards", type=Map)[card] = Map({
            "card_no": "STEAL01", "member": other, "type": "stored_value",
            "pin": hash_secret("1234"), "expiry": "", "node": "SH03",
            "events": Array([[card, "active", ""]])})

    _to_all(w, w.liar.write(member_doc(other), plant))
    for r in (w.a, w.b, w.c):
        assert [f["rule"] for f in r.faults()] == ["record-writer"]
        assert r.card("VICTIM01")["member"] == w.member
        with pytest.raises(NotFound):
            r.card("STEAL01")


def test_a_members_copy_in_another_document_changes_nobody(w: World) -> None:
    """Whichever came last won: SH02 took the liar's copy first, SH04 last."""
    rec = w.liar.write(_other_shard(w.member), lambda d: d.get("members", type=Map).__setitem__(
        w.member, Map({"name": "王芳", "phone": "13999999999", "home": "SH03",
                       "deleted": True})))
    w.b.apply_batch(w.liar.batch([rec]))
    w.a.edit_member(w.a.owner, w.member, fields={"notes": "VIP"})
    sync(w.a, w.b)
    sync(w.a, w.c)
    w.c.apply_batch(w.liar.batch([rec]))
    for r in (w.a, w.b, w.c):
        m = views.member(r, w.member)
        assert (m["phone"], m["home"], m.get("deleted"), m["notes"]) == (
            "13800000001", "SH01", None, "VIP"), r.node
    assert views.member(w.b, w.member) == views.member(w.c, w.member)


def test_an_erased_flag_set_in_place_is_no_erasure(w: World, tmp_path: Path) -> None:
    change = HybridClock("SH03", now_ms=w.clock).mint()
    _to_all(w, w.liar.write(member_doc(w.member), lambda d: d.get("members", type=Map)[
        w.member].__setitem__("erased", change)))
    assert not w.a.storage.conn.execute(
        "SELECT 1 FROM entries WHERE kind = 'redaction'").fetchone(), "nothing redacted"
    w.a.edit_member(w.a.owner, w.member, fields={"notes": "still here"})
    late = new_ledger(tmp_path, "SH05", now_ms=w.clock)
    try:
        sync(w.a, late)
        for r in (w.b, w.c):
            sync(w.a, r)
        for r in (w.a, w.b, w.c, late):
            m = views.member(r, w.member)
            assert (m["name"], m.get("erased"), r.balance(w.member)["cash"]) == (
                "王芳", None, 100_000), r.node
    finally:
        late.close()


@pytest.mark.parametrize("depth", [MAX_NESTING + 1, 400])
def test_a_value_nested_too_deep_is_set_aside_at_every_replica_alike(
        w: World, depth: int) -> None:
    deep: Any = "x"
    for _ in range(depth):
        deep = [deep]
    rec = w.liar.write(member_doc(w.member), lambda d: d.get("members", type=Map)[
        w.member].__setitem__("notes", deep))
    for r in (w.a, w.b):
        r.apply_batch(w.liar.batch([rec]))

    def deeper(n: int) -> None:  # the same batch applied further down the stack
        if n:
            deeper(n - 1)
        else:
            w.c.apply_batch(w.liar.batch([rec]))

    deeper(300)
    for r in (w.b, w.c):
        assert r.storage.conn.execute(
            "SELECT reason FROM quarantine WHERE key = ?", (w.member,)).fetchone() == (
            f"a value nested deeper than {MAX_NESTING} levels",)
    assert state(w.b) == state(w.c)
    w.a.edit_member(w.a.owner, w.member, fields={"notes": "fine"})  # over the liar's
    for r in (w.b, w.c):
        sync(w.a, r)
    for r in (w.a, w.b, w.c):
        assert views.member(r, w.member)["notes"] == "fine", "the next honest edit goes"


@pytest.mark.parametrize("field", ["tags", "edits", "prefs"])
def test_a_members_map_made_a_list_breaks_no_page_edit_or_broadcast(
        w: World, field: str) -> None:
    _to_all(w, w.liar.write(member_doc(w.member), lambda d: d.get("members", type=Map)[
        w.member].__setitem__(field, ["vip"])))
    for r in (w.a, w.b):
        assert views.member(r, w.member)["name"] == "王芳"
        assert outbox.segment_members(r, {"tags": ["vip"]}) == []
    w.a.edit_member(w.a.owner, w.member, fields={"notes": "n"}, tags_add=["vip"],
                    prefs={"strength": "重"})
    sync(w.a, w.b)
    m = views.member(w.b, w.member)
    assert (m["tags"], m["prefs"]) == (["vip"], {"strength": "重"})
    assert [x["id"] for x in outbox.segment_members(w.b, {"tags": ["vip"]})] == [w.member]

# --- members lied about whole (7 December, late) -------------------------------------------
#
# F2: SH03 set `exited` inside an honest member's Map with no exit application, approval
# or settlement: SH01 refused her debit and top-up ("has left (退会)"), the counter's
# search missed her, the back office listed her as left while she held 1,000.00.
# F3: SH03 created members under ids naming SH01, dated 35 days back: SH01's report of a
# closed day gained a new member at every replica. F4: SH03 replaced an honest member's
# Map whole (not an erasure): her edit notes gone, `created_by` and `home` the liar's.


def rules(r: Any) -> list[str]:
    return [f["rule"] for f in r.faults()]


def members_state(r: Any) -> list[tuple[Any, ...]]:
    return list(r.storage.conn.execute("SELECT * FROM members ORDER BY id").fetchall())


# --- F2: the `exited` flag alone ---------------------------------------------------------


def test_a_bare_exited_flag_does_not_make_a_member_leave(w: World) -> None:
    rec = w.liar.write(member_doc(w.member),
                       lambda d: d.get("members", type=Map)[w.member].__setitem__(
                           "exited", True))
    for r in (w.a, w.b):
        r.apply_batch(w.liar.batch([rec]))
        assert not views.member(r, w.member).get("exited")
        assert r.exited() == []
        assert [m["id"] for m in r.find_members("13800000001")] == [w.member]
    w.a.debit(w.a.owner, w.member, amount=100)
    w.a.topup(w.a.owner, w.member, 100)
    assert w.a.balance(w.member)["cash"] == 100_000
    # A return needs an exit to return from.
    with pytest.raises(Exception, match="has not left"):
        w.a.apply_exit(w.a.owner, w.member, "误操作", step="return")


def test_an_approved_exit_and_return_still_count(w: World) -> None:
    staff = Staff(w.a)
    app = w.a.apply_exit(staff.cashier, w.other, "搬家")["application"]
    assert w.a.decide_exit(staff.mgr, app, pay="cash")["status"] == "approved"
    sync(w.a, w.b)
    for r in (w.a, w.b):
        assert [m["id"] for m in r.exited()] == [w.other]
        assert r.find_members("13800000002") == []
    with pytest.raises(Exception, match="has left"):
        w.a.topup(w.a.owner, w.other, 100)
    back = w.a.apply_exit(staff.cashier, w.other, "回来了", step="return")["application"]
    w.a.decide_exit(staff.mgr, back)
    sync(w.a, w.b)
    for r in (w.a, w.b):
        assert r.exited() == []
    w.a.topup(w.a.owner, w.other, 100)


# --- F3: members under another branch's id -----------------------------------------------


def test_members_under_an_honest_branchs_id_are_refused(w: World) -> None:
    past = w.clock.ms - 35 * 86_400_000
    day = w.a.storage.day_of(past)
    before = [views.daily_report(r, day, "SH01")["new_members"] for r in (w.a, w.b)]
    mid = HybridClock("SH01", now_ms=lambda: past).mint()

    def put(d: Any) -> None:
        d.get("members", type=Map)[mid] = Map({"name": "假会员", "phone": "13900000099",
                                               "home": "SH01", "created_by": "SH01-owner"})

    rec = w.liar.write(member_doc(mid), put)
    for r in (w.a, w.b):
        r.apply_batch(w.liar.batch([rec]))
        assert "record-writer" in rules(r)
        assert not views.member_exists(r, mid)
    assert [views.daily_report(r, day, "SH01")["new_members"] for r in (w.a, w.b)] == before


def test_a_liars_own_member_and_an_erasure_by_another_branch_are_taken(w: World) -> None:
    """What honest branches write whole: a member under their own id, and the erasure
    of any member (a Map in the erasure's shape), even where the member is not yet."""
    liar = w.liar.ledger
    own = liar.add_member(liar.owner, name="赵六", phone="13800000009")
    sync(liar, w.b)
    assert views.member_exists(w.b, own)
    fresh = w.a.add_member(w.a.owner, name="钱七", phone="13800000010")
    sync(w.a, w.b)
    erase_member(w.b, w.b.owner, fresh)
    for r in (w.a, w.c):
        sync(w.b, r)
        assert views.member(r, fresh).get("erased")
        assert rules(r) == []


# --- F4: an honest member's Map replaced whole -----------------------------------------


def _replace(w: World, member: str) -> Any:
    def put(d: Any) -> None:
        d.get("members", type=Map)[member] = Map(
            {"name": "王芳", "phone": "13800000001", "home": "SH03", "created_by": "liar",
             "prefs": Map(), "tags": Map(), "custom": Map(), "edits": Map()})

    return w.liar.write(member_doc(member), put)


def test_an_honest_members_map_replaced_whole_is_refused(w: World) -> None:
    w.a.edit_member(w.a.owner, w.member, fields={"name": "王芳芳"})
    sync(w.a, w.b)
    sync(w.a, w.liar.ledger)
    rec = _replace(w, w.member)
    for r in (w.a, w.b):
        r.apply_batch(w.liar.batch([rec]))
        assert "record-writer" in rules(r)
        prof = views.member(r, w.member)
        assert (prof["name"], prof["home"], prof["created_by"]) == ("王芳芳", "SH01",
                                                                   w.a.owner)
        body = json.loads(r.storage.conn.execute("SELECT body FROM members WHERE id = ?",
                                                 (w.member,)).fetchone()[0])
        assert len(body["edits"]) == 1  # the note of who renamed her
    assert members_state(w.a) == members_state(w.b)


def test_a_replaced_map_is_judged_alike_in_every_arrival_order(w: World, tmp_path: Path
                                                                ) -> None:
    """A member SH01 adds now, which SH04 has not: SH02 gets it before the liar's
    replacement, SH04 the replacement first (it waits for SH01's member), and a new
    replica both in one batch with the liar's record first."""
    new = w.a.add_member(w.a.owner, name="孙八", phone="13800000011")
    w.a.edit_member(w.a.owner, new, fields={"notes": "常客"})
    sync(w.a, w.liar.ledger)
    rec = _replace(w, new)
    sync(w.a, w.b)
    w.b.apply_batch(w.liar.batch([rec]))
    w.c.apply_batch(w.liar.batch([rec]))
    assert not views.member_exists(w.c, new)
    sync(w.a, w.c)
    # SH01's records SH04 lacked, behind the liar's record in one batch.
    d = new_ledger(tmp_path, "SH05", now_ms=w.clock)
    ours = w.a.batch(w.a.lacking(d.log_view()))
    theirs = w.liar.batch([rec])
    d.apply_batch(Batch(recs=[*theirs.recs, *ours.recs], heads={**ours.heads, **theirs.heads},
                        certs={**ours.certs, **theirs.certs}))
    for r in (w.b, w.c, d):
        assert "record-writer" in rules(r), r.node
        prof = views.member(r, new)
        assert (prof["home"], prof["created_by"], prof["notes"]) == ("SH01", w.a.owner, "常客")
    assert members_state(w.b) == members_state(w.c) == members_state(d)
    d.close()


# --- a flag cleared, or set, against the decisions (7 December, evening) -----------------
#
# F1: SH03 cleared `exited` in the Map of a member whose exit SH01 approved and settled:
# has_left read no decision once the flag was unset, so every honest branch served her
# again (a top-up took money for a member the chain had closed) and listed her as a
# member. F2: notices.may_receive read the raw flag: a liar's bare flag stopped an
# honest member's notices, and a cleared one let a broadcast reach a member who left.


def _exit_settled(w: World, member: str) -> Staff:
    staff = Staff(w.a)
    app = w.a.apply_exit(staff.cashier, member, "搬家")["application"]
    assert w.a.decide_exit(staff.mgr, app, pay="cash")["status"] == "approved"
    for r in (w.b, w.liar.ledger):
        sync(w.a, r)
    w.liar = Forger(w.liar.ledger)
    return staff


def _set_flag(w: World, member: str, value: bool) -> Record:
    return w.liar.write(member_doc(member), lambda d: d.get("members", type=Map)[
        member].__setitem__("exited", value))


def test_a_cleared_exited_flag_does_not_bring_a_member_back(w: World) -> None:
    staff = _exit_settled(w, w.other)
    rec = _set_flag(w, w.other, False)
    for r in (w.a, w.b):
        r.apply_batch(w.liar.batch([rec]))
        assert views.member(r, w.other)["exited"] is True, r.node
        assert [m["id"] for m in r.exited()] == [w.other], r.node
        assert r.find_members("13800000002") == [], r.node
        with pytest.raises(Exception, match="has left"):
            r.topup(r.owner, w.other, 10_000)
        assert r.balance(w.other)["cash"] == 0
        with pytest.raises(Exception, match="has left already"):
            r.apply_exit(r.owner, w.other, "再退一次")
    # Only an approved return brings her back.
    back = w.b.apply_exit(staff.cashier, w.other, "回来了", step="return")["application"]
    w.b.decide_exit(staff.mgr, back)
    sync(w.b, w.a)
    for r in (w.a, w.b):
        assert r.exited() == [] and not views.member(r, w.other)["exited"]
    w.a.topup(w.a.owner, w.other, 100)


def test_a_member_who_never_applied_is_read_without_her_entries(w: World) -> None:
    """The debit path reads no entry for a member who never applied to leave: her flag
    (set by a liar or not) is answered from the exit applications' index alone."""
    _to_all(w, _set_flag(w, w.member, True))
    plans: list[str] = []
    conn = w.a.storage.conn
    conn.set_trace_callback(plans.append)
    try:
        assert w.a.has_left(w.member) is False
    finally:
        conn.set_trace_callback(None)
    [sql] = [s for s in plans if "entries" in s]
    detail = " ".join(str(r[-1]) for r in conn.execute(f"EXPLAIN QUERY PLAN {sql}"))
    assert "entries_exit" in detail, detail
    w.a.debit(w.a.owner, w.member, amount=100)


def _low_balance(r: Any, member: str) -> list[str]:
    outbox.keep(r, outbox.collect(r, r.clock.wall(), ["email", "sms"]), r.clock.wall())
    r.debit(r.owner, member, amount=r.balance(member)["cash"] - 1_000)
    due = outbox.collect(r, r.clock.wall(), ["email", "sms"])
    return [n.member for n in due.notices if n.kind == "low_balance"]


def test_a_bare_exited_flag_stops_no_notice(w: World) -> None:
    w.a.apply_batch(w.liar.batch([_set_flag(w, w.member, True)]))
    assert _low_balance(w.a, w.member) == [w.member]


def test_a_cleared_flag_lets_no_broadcast_reach_a_member_who_left(w: World) -> None:
    w.a.edit_member(w.a.owner, w.other, fields={"promo": "yes"})
    w.a.edit_member(w.a.owner, w.member, fields={"promo": "yes"})
    _exit_settled(w, w.other)
    w.a.apply_batch(w.liar.batch([_set_flag(w, w.other, False)]))
    done = outbox.broadcast(w.a, {}, "双12", "{name}，全场八折", w.a.clock.wall())
    assert {h["member"] for h in outbox.history(w.a, kind="broadcast")} == {w.member}
    assert done["queued"] == 1


def test_a_cleared_flag_does_not_pick_the_rejection_of_an_exit_decided_apart(
        w: World) -> None:
    """SH02 rejects, SH01 (a little later) approves and pays her: the approval stands.
    Which took effect was read from the flag, so the liar's clear made the rejection
    (first by id) stand and her a member again at every branch."""
    staff = Staff(w.a)
    app = w.a.apply_exit(staff.cashier, w.other, "搬家")["application"]
    sync(w.a, w.b)
    assert w.b.decide_exit(staff.mgr2, app, reject=True)["status"] == "rejected"
    w.clock.ms += 1000
    assert w.a.decide_exit(staff.mgr, app, pay="cash")["status"] == "approved"
    for r in (w.b, w.liar.ledger):
        sync(w.a, r)
    sync(w.b, w.a)
    sync(w.b, w.liar.ledger)
    w.liar = Forger(w.liar.ledger)
    rec = _set_flag(w, w.other, False)
    for r in (w.a, w.b):
        r.apply_batch(w.liar.batch([rec]))
        assert r.exit_view(app)["status"] == "approved", r.node
        assert [m["id"] for m in r.exited()] == [w.other], r.node
        with pytest.raises(Exception, match="has left"):
            r.topup(r.owner, w.other, 10_000)
