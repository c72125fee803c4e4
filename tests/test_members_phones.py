"""One phone however it is typed: registration and edits compare canonical phones.

A cashier typing "138-0013-8000" or "+86 138 0013 8000" for a member registered as
13800138000 made the same person a second member at one branch, found only later by
`member duplicates`. The check now compares `model.canonical_phone` of both sides
(the projection's `members.phone_canonical`); the member's record keeps the phone
as typed. Real stores in tmp_path, the real command line for the refusal's sentence.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import Cli
from helpers import full_scans, new_ledger, snapshot, sync

from crdtledger import storage, views
from crdtledger.errors import InvalidInput
from crdtledger.ledger import Ledger

BARE = "13800138000"
TYPED = ["138-0013-8000", "138 0013 8000", "+86 138 0013 8000", "+8613800138000",
         "0086 138-0013-8000", "8613800138000"]


def refused(ledger: Ledger, members: list[str], call: Callable[[], object]) -> str:
    """`call()` is refused as a phone registered to another, changing nothing."""
    before = snapshot(ledger, members)
    with pytest.raises(InvalidInput, match="is registered to another member") as info:
        call()
    assert snapshot(ledger, members) == before
    return str(info.value)


@pytest.mark.parametrize("typed", TYPED)
def test_a_phone_typed_another_way_is_refused_at_the_branch_that_holds_it(
        a: Ledger, typed: str) -> None:
    m = a.add_member(a.owner, name="张三", phone=BARE)
    refused(a, [m], lambda: a.add_member(a.owner, name="张三", phone=typed))
    assert views.members_by_phone(a, BARE) == [m]


@pytest.mark.parametrize("typed", TYPED)
def test_a_phone_registered_with_dashes_refuses_the_bare_number(a: Ledger, typed: str) -> None:
    """The other way round: the record keeps the phone as typed, and the bare number
    (or another typing of it) is the same phone."""
    m = a.add_member(a.owner, name="张三", phone=typed)
    assert a.member(m)["phone"] == typed  # stored as typed, as before
    for again in (BARE, "+86 138-0013-8000"):
        refused(a, [m], lambda again=again: a.add_member(a.owner, name="李四", phone=again))


def test_an_edit_compares_the_canonical_phone_and_may_retype_its_own(a: Ledger) -> None:
    m = a.add_member(a.owner, name="张三", phone=BARE)
    other = a.add_member(a.owner, name="李四", phone="13900000000")
    refused(a, [m, other], lambda: a.edit_member(
        a.owner, other, fields={"phone": "+86 138-0013-8000"}))
    # Her own phone typed another way is still hers: kept as now typed.
    a.edit_member(a.owner, m, fields={"phone": "138 0013 8000"})
    assert a.member(m)["phone"] == "138 0013 8000"
    assert views.members_by_phone(a, BARE) == [m]


def test_a_deleted_members_phone_still_counts_as_before(a: Ledger) -> None:
    """As with the phone compared as typed: a deleted member may be edited back, and
    her phone stays hers."""
    m = a.add_member(a.owner, name="张三", phone="138-0013-8000")
    a.edit_member(a.owner, m, fields={"deleted": True})
    refused(a, [m], lambda: a.add_member(a.owner, name="张三", phone=BARE))


def test_another_countrys_number_is_not_a_chinese_mobile(a: Ledger) -> None:
    """"+1 650 253 0000" keeps its +: 16502530000 is another phone (a Chinese 165
    mobile), registered beside it."""
    us = a.add_member(a.owner, name="Sam", phone="+1 650-253-0000")
    cn = a.add_member(a.owner, name="王芳", phone="16502530000")
    assert us != cn
    refused(a, [us, cn], lambda: a.add_member(a.owner, name="Sam", phone="+16502530000"))


def test_a_phone_stored_by_another_branch_or_an_older_build_counts(
        a: Ledger, b: Ledger, tmp_path: Path) -> None:
    """A record that arrived by sync, typed "+86 138 0013 8000" at SH02, and a store
    made before the canonical column was kept (filled when it is opened): both
    refuse the bare number."""
    m = b.add_member(b.owner, name="张三", phone="+86 138 0013 8000")
    sync(a, b)
    refused(a, [m], lambda: a.add_member(a.owner, name="张三", phone=BARE))
    n = a.add_member(a.owner, name="李四", phone="139-0000-0000")
    path = a.storage.dir
    a.close()
    conn = sqlite3.connect(path / storage.DB_FILE)  # as the release before left it
    conn.execute("DROP INDEX members_phone_canonical")
    conn.execute("DROP INDEX members_phone_tail")
    conn.execute("ALTER TABLE members DROP COLUMN phone_canonical")
    conn.commit()
    conn.close()
    with Ledger.open(path) as old:
        for phone in (BARE, "13900000000", "+86 139 0000 0000"):
            refused(old, [m, n], lambda phone=phone: old.add_member(
                old.owner, name="王五", phone=phone))
        assert old.member(n)["phone"] == "139-0000-0000"


def test_a_search_by_a_phones_tail_reads_the_members_it_finds(a: Ledger) -> None:
    """The counter's search by a phone's last digits, or by a whole phone, read every
    member (LIKE '%8000'): about 0.9 s a search at 3M members. It reads its index now
    (the plans of what it runs, not a time), and finds what it found: by four digits
    or more of the tail, however the phone was typed, and a store from before the
    index gets it when opened."""
    m = a.add_member(a.owner, name="张三", phone="+86 138-0013-8000")
    n = a.add_member(a.owner, name="李四", phone="13900138000")
    a.add_member(a.owner, name="王五", phone="13900001234")

    def found(q: str) -> set[str]:
        return {r["id"] for r in a.find_members(q)}
    assert found("8000") == {m, n}
    assert found("138000") == {m, n}
    assert found("00138000") == {m, n}
    assert found("13800138000") == {m}
    assert found("１３８００１３８０００") == {m}  # full-width, as an input method types
    assert found("38000") == {m, n} and found("9999") == set()
    # A name's substring is still looked for in every name (its index: a name is
    # sometimes typed as the phone), but no longer the phones.
    scans = full_scans(a, lambda: a.find_members("13800138000"), "members")
    assert [sql for sql in scans if "name LIKE" not in sql] == []
    path = a.storage.dir
    a.close()
    conn = sqlite3.connect(path / storage.DB_FILE)  # as the release before left it
    conn.execute("DROP INDEX members_phone_tail")
    conn.commit()
    conn.close()
    with Ledger.open(path) as old:
        assert {r["id"] for r in old.find_members("8000")} == {m, n}
        assert [sql for sql in full_scans(old, lambda: old.find_members("8000"), "members")
                if "name LIKE" not in sql] == []


def test_a_merged_duplicate_lends_its_phone_however_typed(tmp_path: Path) -> None:
    """Registered apart at two branches (how duplicates arise), merged: the survivor
    may take the duplicate's phone, typed another way; another member may not."""
    a, b = new_ledger(tmp_path, "SH01"), new_ledger(tmp_path, "SH02")
    try:
        x = a.add_member(a.owner, name="甲", phone="13700000001", id_no="11010519491231002X")
        y = b.add_member(b.owner, name="甲", phone="138-0000-0001", id_no="11010519491231002X")
        sync(a, b)
        assert [[r["id"] for r in g["members"]] for g in views.duplicates(a)] == [
            sorted([x, y])]
        a.merge_member(a.owner, y, x)
        other = a.add_member(a.owner, name="乙", phone="13900000009")
        refused(a, [x, y, other], lambda: a.edit_member(
            a.owner, other, fields={"phone": "+86 13800000001"}))
        a.edit_member(a.owner, x, fields={"phone": "+86 13800000001"})
        assert a.member(x)["phone"] == "+86 13800000001"
    finally:
        a.close()
        b.close()


def test_the_command_line_refuses_with_a_sentence_and_writes_nothing(
        cli: Cli, make_node: Callable[..., Path]) -> None:
    data = make_node("SH01")
    first = cli("member", "add", "--name", "张三", "--phone", BARE, "--json", data=data)
    assert first.code == 0, first.err
    again = cli("member", "add", "--name", "张三", "--phone", "+86 138-0013-8000", data=data)
    assert again.code != 0
    assert "phone +86 138-0013-8000 is registered to another member" in again.err, again.err
    assert "Traceback" not in again.err
    found = cli("member", "find", "8000", "--json", data=data).json()
    assert [r["id"] for r in found] == [first.json()["member_id"]]
