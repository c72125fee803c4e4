"""The named queries of the read model (crdtledger.views and crdtledger.audit) answer
what their callers used to compute with their own SQL: each is checked here against
the operations that produced the data, on two replicas."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import FakeClock, new_ledger, sync

from crdtledger import audit, views
from crdtledger.hlc import id_floor


def test_people_and_peers(tmp_path: Path) -> None:
    a = new_ledger(tmp_path, "SH01")
    assert not views.has_operators(a)
    assert views.operators(a) == []
    ann = a.add_operator(a.owner, "Ann", "pw-ann-123", roles=("cashier",))
    a.add_operator(a.owner, "Bob", "pw-bob-123", roles=("manager", "cashier"))
    a.define_role(a.owner, "night", ["debit", "topup"])
    assert views.has_operators(a)
    ops = views.operators(a)
    assert [o["name"] for o in ops] == ["Ann", "Bob"]
    assert ops[1]["roles"] == ["cashier", "manager"] and ops[1]["active"]
    assert views.operator_name(a, ann) == "Ann"
    assert views.operator_name(a, "nobody") is None
    assert views.defined_roles(a) == {"night": frozenset({"debit", "topup"})}

    m = a.add_member(a.owner, name="Li Lei", phone="13800001234")
    assert views.member_exists(a, m) and not views.member_exists(a, "nobody")
    assert views.member_by_phone(a, " 13800001234 ") == m
    assert views.member_by_phone(a, "1234") is None  # a tail is find_members' business
    assert views.member_ids(a) == [m]

    b = new_ledger(tmp_path, "SH02")
    assert views.peers_seen(b) == {}
    sync(a, b)
    seen = views.peers_seen(b)
    assert list(seen) == ["SH01"]
    assert views.member_ids(b) == [m]


def test_money_queries(tmp_path: Path) -> None:
    clock = FakeClock()
    a = new_ledger(tmp_path, "SH01", now_ms=clock)
    b = new_ledger(tmp_path, "SH02", now_ms=clock)
    m = a.add_member(a.owner, name="Han Meimei", phone="13900005678")
    n = a.add_member(a.owner, name="Wang Fang", phone="13700009999")
    assert views.max_entry_id(a) == "" and views.entry_ids_after(a, "") == []  # no money yet
    today = a.today()
    topup = a.topup(a.owner, m, 100_000)
    second = a.topup(a.owner, n, 50_000)
    assert views.entry_ids_after(a, "") == [topup["id"], second["id"]]
    assert views.entry_ids_after(a, topup["id"]) == [second["id"]]
    sync(a, b)  # rights go only to a branch the chain knows: SH02 has synced here
    a.transfer_rights(a.owner, m, "SH02", 40_000)
    sync(a, b)
    start = views.max_entry_id(a)
    assert views.debited_elsewhere_since(a, "SH01", start, 100) == ([], start, False)

    debit = b.debit(b.owner, m, amount=10_000)
    b.debit(b.owner, m, amount=5_000)
    sync(a, b)
    members, new_mark, more = views.debited_elsewhere_since(a, "SH01", start, 100)
    assert members == [m] and new_mark == views.max_entry_id(a) > start and not more
    assert views.debited_elsewhere_since(a, "SH01", new_mark, 100) == ([], new_mark, False)
    assert views.debited_elsewhere_since(a, "SH02", start, 100) == ([], new_mark, False)  # its own
    # A read at a time: the first debit alone, then the second; more remained after one.
    first = views.debited_elsewhere_since(a, "SH01", start, 1)
    assert first == ([m], debit["id"], True)
    assert views.debited_elsewhere_since(a, "SH01", first[1], 1) == ([m], new_mark, True)
    # What the member's debits took there (the rebalancer's weight), not how many.
    assert views.visits(a, m, id_floor(clock.ms - 86_400_000)) == {"SH02": 15_000}
    assert views.visits(a, m, id_floor(clock.ms + 86_400_000)) == {}
    assert debit["id"] in views.entry_ids_after(a, start)

    rows = views.topups(a, today, today)
    assert [r["entry"]["id"] for r in rows] == [topup["id"], second["id"]]
    assert rows[0]["name"] == "Han Meimei" and rows[0]["phone"] == "139****5678"
    assert views.topups(a, "2020-01-01", "2020-01-02") == []
    assert views.active_branches(a, today) == {"SH01", "SH02"}

    records = {r["id"]: r for r in views.member_records(a)}
    assert records[m]["purses"]["cash"] == 85_000 and records[m]["day"] == today
    assert records[m]["profile"]["phone"] == "13900005678"  # the export's whole number

    assert views.count_entries(a) == views.count_entries(b)
    assert views.count_entries(a, node="SH02") == 2
    assert views.count_entries(a, since_day="2099-01-01") == 0
    newest = views.newest_entries(a, "SH02", "debit", member=m, limit=1)
    assert [e["id"] for e in newest] == [views.entry_ids_after(a, start)[-1]]
    assert views.funded_members(a, "SH01", at_least=50_000, limit=5) == sorted([m, n])
    assert views.funded_members(b, "SH02", at_least=1, limit=5) == [m]
    # Once SH01 holds none of m's rights, it has nothing of m's to move.
    a.transfer_rights(a.owner, m, "SH02", a.rights(m)["SH01"])
    assert views.debited_elsewhere_since(a, "SH01", start, 100)[0] == []


def test_audit_queries(tmp_path: Path) -> None:
    a = new_ledger(tmp_path, "SH01")
    m = a.add_member(a.owner, name="Li Lei", phone="13800001234")
    a.topup(a.owner, m, 10_000)
    a.debit(a.owner, m, amount=2_500)
    assert audit.negative_rights(a) is None
    assert audit.negative_purses(a) == [] and audit.quarantined(a) == []
    assert audit.waiting(a) == []
    assert audit.ids(a, "members") == [m]
    assert [e["kind"] for e in audit.entries(a)] == ["topup", "debit"]
    assert [e["kind"] for e in audit.entries(a, "debit")] == ["debit"]
    assert audit.entry_days(a) == [a.today()]
    assert (m, "cash", "SH01", 7_500) in audit.replica_rows(a, "rights")
    stats = audit.store_stats(a)
    assert (stats["members"], stats["entries"], stats["negative_rights"]) == (1, 2, 0)
    assert stats["db_bytes"] > 0 and stats["log_rows"] > 0
    assert set(audit.logged_documents(a)) <= set(a.storage.doc_names())
    month = max(n for n in a.storage.doc_names() if n.startswith("ledger/"))
    doc = audit.document_stats(a, month)
    assert doc["log_updates"] > 0 and doc["log_bytes"] > 0
    a.storage.compact(month)
    doc = audit.document_stats(a, month)
    assert doc["log_updates"] == 0 and doc["snapshot_bytes"] > 0
    # The check the simulator makes after every step finds a row below zero, by index.
    plan = a.storage.conn.execute(
        "EXPLAIN QUERY PLAN SELECT member, purse, node, amount FROM rights WHERE amount < 0 "
        "LIMIT 1").fetchall()
    assert "rights_negative" in str(plan)
    a.storage.conn.execute("UPDATE rights SET amount = -1 WHERE member = ? AND purse = 'cash'",
                           (m,))
    assert audit.negative_rights(a) == (m, "cash", "SH01", -1)
    assert audit.negative_purses(a) == [(m, "cash", -1)]


def test_the_rebalancer_reads_a_long_history_a_scan_per_turn(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A branch that has just joined holds the chain's history above its mark: the
    rebalancer reads it REBALANCE_SCAN entries per turn, and queues only members whose
    rights it holds (once a list tested member by member: 43 s in one turn at 1M)."""
    from crdtledger import core
    from crdtledger.core import NodeCore, SetTimer

    monkeypatch.setattr(core, "REBALANCE_SCAN", 2)
    a = new_ledger(tmp_path, "SH01")
    b = new_ledger(tmp_path, "SH02")
    node = NodeCore(a)  # its mark: nothing held yet
    node.start(0.0, [])
    members = [a.add_member(a.owner, name=f"m{i}", phone=f"1390000{i:04d}") for i in range(3)]
    sync(a, b)  # rights go only to a branch the chain knows: SH02 has synced here
    for m in members:
        a.topup(a.owner, m, 10_000)
        # SH02 is given half of each member's value, and all of m2's.
        a.transfer_rights(a.owner, m, "SH02", 10_000 if m == members[2] else 5_000)
    sync(a, b)
    for m in members:
        b.debit(b.owner, m, amount=100)
    sync(a, b)
    scans = 0
    effects = node.fire(("rebalance",), node._timers[("rebalance",)], 60.0)
    while True:
        timers = {e.key: e for e in effects if isinstance(e, SetTimer)}
        if ("rebalance-scan",) not in timers:
            break
        scans += 1
        effects = node.fire(("rebalance-scan",), timers[("rebalance-scan",)].token, 60.0)
    # It reads the queue of other branches' debits as they arrived (not the whole
    # history above a mark): SH02's 3 debits, 2 a turn: the pass's own turn reads 2
    # (a full read: more may remain), one scan reads the last.
    assert scans == 1
    assert set(node._rebalance_queue) == set(members[:2])


def test_purses_after_an_entry_are_its_history_summed_up_to_it(tmp_path: Path) -> None:
    """views.purses_after (a receipt's "balance after") reads the rights now less the
    entries since; it says what summing the group's history up to the entry says, for
    every entry: top-ups, debits, a package and its uses, points, rights moved from
    another branch, and a member merged into another after it all."""
    a, b = new_ledger(tmp_path, "SH01"), new_ledger(tmp_path, "SH02")
    try:
        m = a.add_member(a.owner, name="Li Lei", phone="13800001234")
        other = a.add_member(a.owner, name="Li Lei", phone="13800004321")
        a.topup(a.owner, m, 50_000)
        a.topup(a.owner, other, 20_000)
        pkg = a.sell_package(a.owner, m, "FOOT60", 5, 30_000, pay="stored")["id"]
        a.debit(a.owner, m, service="FOOT60", package=pkg, pay="package")
        a.debit(a.owner, m, amount=1_234)
        sync(a, b)  # rights go only to a branch the chain knows: SH02 has synced here
        a.transfer_rights(a.owner, m, "SH02", 5_000)
        sync(a, b)
        b.debit(b.owner, m, amount=2_000)
        sync(a, b)
        a.merge_member(a.owner, other, m)
        a.debit(a.owner, m, amount=100)
        sync(a, b)
        conn = b.storage.conn
        history = sorted(b.history(m, limit=1000), key=lambda e: e["id"])
        assert len(history) >= 8
        summed: dict[str, int] = {}
        for e in history:
            for purse, _node, delta in e["deltas"]:
                summed[purse] = summed.get(purse, 0) + int(delta)
            after = views.purses_after(conn, m, e["id"])
            assert {k: v for k, v in after.items() if v} == {
                k: v for k, v in summed.items() if v}, e["kind"]
    finally:
        a.close()
        b.close()
