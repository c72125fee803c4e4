"""Erasing a member's personal data on request (PIPL art. 47), on every replica.

An erasure is one write: the member's Map in its `members/NN` document is replaced by
a new Map that keeps only what the books need (home branch, level, merge links) and
says `erased` (the change id: when and at which branch). Replacing the Map deletes
the old one with every field inside it, so pycrdt's garbage collection drops their
contents; concurrent edits written into the old Map by a branch that had not heard
of the erasure land in a deleted Map and are never seen. Every replica that applies
the write compacts that document once the batch is in (Replica.apply_verified,
`recently_erased`), so the old values are gone from its update log and snapshot, and the store
runs with `secure_delete` so the freed pages are zeroed, not left readable.

Refused while the member (or a member merged into it: one person) still holds stored
value, cash, bonus or package uses, anywhere this replica knows of: the owner settles
it first (a refund through the ledger, or a member exit's forfeit), so the books stay
balanced with an anonymous member id in place of a name. An erased member cannot be
edited back nor sold to; its entries, cards and figures stay.

Not erased here (docs/design-notes.md, "Erasure"): the signed per-node records
(crdtledger.log) that carried the old values keep them, and so do the sync files and
catch-ups built from them, and backups taken before.
"""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING, Any

from pycrdt import Map

from crdtledger import views
from crdtledger.commit import put
from crdtledger.errors import InvalidInput, NotFound
from crdtledger.hlc import id_time_ms
from crdtledger.model import EDITS, ID, member_doc
from crdtledger.money import format_yuan

if TYPE_CHECKING:
    from crdtledger.ledger import Ledger

# What an erased member keeps: whose books it is in, and how it is linked to the
# members merged with it. Everything else (name, phone, birthday, id number, notes,
# preferences, tags and custom fields, whatever a later version adds) is dropped: a
# list of what to keep, so that a new personal field is erased without a change here.
KEPT = ("home", "level", "merged_into", "created_by")
# How long after an erasure a member document is compacted whenever records reach it.
RECENT_MS = 30 * 86_400_000
# The purses that hold value a member paid for (a package's uses: pkg:ID).
STORED = ("cash", "bonus")


def erase_member(ledger: Ledger, operator: str, member: str) -> dict[str, Any]:
    """Erase `member`'s personal data, and that of every member merged with it."""
    ledger.authorise(operator, "member.delete")
    conn = ledger.storage.conn
    if conn.execute("SELECT 1 FROM members WHERE id = ?", (member,)).fetchone() is None:
        raise NotFound(f"unknown member {member}")
    group = views.member_group(conn, member)
    held = views.balance(conn, group[0])
    owed = {p: held[p] for p in STORED if held[p]}
    uses = sum(held["packages"].values())
    if owed or uses:
        what = [f"{p} {format_yuan(v)}" for p, v in owed.items()]
        what += [f"{uses} package uses"] if uses else []
        raise InvalidInput(
            f"member {member} still holds {', '.join(what)}: settle it first (a refund, "
            "or a member exit that forfeits it), then erase")
    change = ledger.clock.mint()
    writes = []
    erased = []
    for mid in group:
        profile = views.member(ledger, mid)
        if profile.get("erased"):
            continue
        kept = {k: profile[k] for k in KEPT if k in profile}
        record = Map({**kept, "name": "", "phone": "", "deleted": True, "erased": change,
                      EDITS: Map({change: {"op": operator, "fields": ["erased"]}})})
        writes.append(put(member_doc(mid), "members", mid, record))
        erased.append(mid)
    if not writes:
        raise InvalidInput(f"member {member} was erased already")
    ledger._write(*writes)
    for doc in dict.fromkeys(member_doc(mid) for mid in erased):
        ledger.storage.compact(doc)
    ledger.storage.forget_freed()
    return {"member": member, "erased": erased, "change": change}


def recently_erased(conn: sqlite3.Connection, now_ms: int) -> set[str]:
    """The member documents with a member erased in the last RECENT_MS: a record
    applied to one of them may be an edit written before its branch heard of the
    erasure, whose values land in the deleted Map, so the document is compacted
    again. Later such edits (a till offline for longer) lose their values at the
    document's next regular compaction (Storage.maybe_compact)."""
    return {member_doc(mid) for mid, change in conn.execute(
        "SELECT id, json_extract(body, '$.erased') FROM members "
        "WHERE json_extract(body, '$.erased') IS NOT NULL")
        if isinstance(change, str) and ID.match(change)
        and id_time_ms(change) > now_ms - RECENT_MS}
