"""Erasing a member's personal data on request (PIPL art. 47), on every replica.

An erasure is one write: the member's Map in its `members/NN` document is replaced by
a new Map that keeps only what the books need (home branch, level, merge links) and
says `erased` (the change id: when and at which branch). Replacing the Map deletes
the old one with every field inside it, so pycrdt's garbage collection drops their
contents; concurrent edits written into the old Map by a branch that had not heard
of the erasure land in a deleted Map and are never seen. Every replica that applies
the write compacts that document once the batch is in (`after_batch`), so the old
values are gone from its update log and snapshot, and the store runs with
`secure_delete` so the freed pages are zeroed, not left readable.

Refused while the member (or a member merged into it: one person) still holds stored
value, cash, bonus or package uses, anywhere this replica knows of: the owner settles
it first (a refund through the ledger, or a member exit's forfeit), so the books stay
balanced with an anonymous member id in place of a name. An erased member cannot be
edited back nor sold to; its entries, cards and figures stay.

The signed per-node records (crdtledger.log) that carried the old values are
redacted by their writers: each node, when an erasure reaches it, rewrites its own
records that wrote into the member (crdtledger.redaction: contents out, clocks kept)
and writes a `redaction` entry naming each one's place in its hash chain and the
digest of its redacted bytes; every replica holding the original checks that claim by
redacting it too and then keeps only the redacted bytes, and a replica that never
held it takes it redacted, verified under the writer's signed head
(Replica._verify_log). So peers, catch-ups and sync files built later carry none of
the old values. A branch that never comes back keeps its own records as they were,
and backups taken before keep everything (docs/design-notes.md, "Erasure").
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

from pycrdt import Doc, Map

from crdtledger import bookings, idempotency, lots, outbox, views
from crdtledger.commit import put
from crdtledger.errors import InvalidInput, LedgerError, NotFound
from crdtledger.hlc import id_time_ms
from crdtledger.log import APPLIED, Record
from crdtledger.model import EDITS, ERASURE_KEEPS, ID, member_doc
from crdtledger.money import format_yuan
from crdtledger.redaction import NotRedactable, records_into, redact

if TYPE_CHECKING:
    from crdtledger.ledger import Ledger

# What an erased member keeps (everything else, name, phone, birthday, id number,
# notes, preferences, tags and custom fields, whatever a later version adds, goes).
KEPT = ERASURE_KEEPS
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
            "or a member exit that forfeits it"
            + ("; package uses by a correction of the package, with an approver" if uses
               else "") + "), then erase")
    change = ledger.clock.mint()
    writes = []
    erased = []
    for mid in group:
        body = json.loads(conn.execute("SELECT body FROM members WHERE id = ?",
                                       (mid,)).fetchone()[0])
        if body.get("erased"):
            continue
        # The record's own pointer, and the notes of when it was merged: the points
        # lots fold each member apart until then (crdtledger.lots.merged_at).
        kept = {k: body[k] for k in KEPT if k in body}
        notes = {**lots.merge_notes(body.get(EDITS)),
                 change: {"op": operator, "fields": ["erased"]}}
        record = Map({**kept, "name": "", "phone": "", "deleted": True, "erased": change,
                      EDITS: Map(notes)})
        writes.append(put(member_doc(mid), "members", mid, record))
        erased.append(mid)
    if not writes:
        raise InvalidInput(f"member {member} was erased already")
    ledger._write(*writes, *bookings.member_cancellations(ledger, operator, group[0],
                                                          "member erased"))
    for doc in dict.fromkeys(member_doc(mid) for mid in erased):
        ledger.storage.compact(doc)
    ledger.storage.forget_freed()
    idempotency.forget_members(ledger, erased)
    outbox.forget_members(ledger, erased)
    # This node's own records into them, at once; other branches redact theirs when
    # the erasure reaches them (their housekeeping: redact_erased).
    redactions = [e["id"] for mid in erased for e in redact_own(ledger, mid)]
    ledger.redaction_checked.update(erased)
    return {"member": member, "erased": erased, "change": change, "redactions": redactions}


def recently_erased(conn: sqlite3.Connection, now_ms: int) -> dict[str, str]:
    """Each member erased in the last RECENT_MS, with its document: a record applied
    to one of them may be an edit written before its branch heard of the erasure,
    whose values land in the deleted Map, so the document is compacted again. Later
    such edits (a till offline for longer) lose their values at the document's next
    regular compaction (Storage.maybe_compact)."""
    return {mid: member_doc(mid) for mid, change in _erased(conn)
            if id_time_ms(change) > now_ms - RECENT_MS}


def _erased(conn: sqlite3.Connection) -> list[tuple[str, str]]:
    """(member, the erasure's change id) of every erased member (a partial index)."""
    return [(mid, change) for mid, change in conn.execute(
        "SELECT id, json_extract(body, '$.erased') FROM members "
        "WHERE json_extract(body, '$.erased') IS NOT NULL")
        if isinstance(change, str) and ID.match(change)]


def after_batch(ledger: Ledger, touched: Iterable[str]) -> None:
    """What a batch of records applied here owes the erasures (Replica.apply_verified):
    the member documents it erased in, and those of members erased lately that it
    touched, are compacted; this node's
    own records into a member whose erasure just came are redacted and said so, before
    the other writers' redactions are carried out here (finding its own records
    replays the document, which needs the others' records as they were written); then
    those. A node that cannot write yet (restored, not caught up) leaves its own to
    its next housekeeping."""
    members = {n for n in touched if n.startswith("members/")}
    recent = recently_erased(ledger.storage.conn, ledger.clock.wall()) if members else {}
    # An erasure applied now, however old (a node restored from a backup taken before
    # it, catching up), or a late edit into a member erased lately.
    docs = (members & set(recent.values())) | ledger.erased_now
    ledger.erased_now = set()
    if docs:
        for name in sorted(docs):
            ledger.storage.compact(name)
        ledger.storage.forget_freed()
        gone = [mid for mid, _change in _erased(ledger.storage.conn)
                if member_doc(mid) in docs]
        idempotency.forget_members(ledger, gone)
        outbox.forget_members(ledger, gone)
        for mid in gone:
            try:
                _redact_once(ledger, mid)
            except LedgerError:
                ledger.erasure_seen = True
    if ledger.redactions_due:
        due, ledger.redactions_due = ledger.redactions_due, []
        for problem in apply_redactions(ledger, due):
            ledger.refusals.append(problem)
            ledger.refused_total += 1


# --- the signed records --------------------------------------------------------------


def own_records_into(ledger: Ledger, member: str) -> list[int]:
    """The seqs of this node's records that wrote into `member`'s Map and nothing else
    (crdtledger.redaction.records_into: by the ids their items refer to, so an edit
    this node wrote before it heard of the erasure counts, and so does a record whose
    neighbours other writers have redacted already)."""
    conn = ledger.storage.conn
    rows = [(n, s, bytes(d)) for n, s, d in conn.execute(
        "SELECT node, seq, data FROM records WHERE doc = ? AND state = ? ORDER BY pos",
        (member_doc(member), APPLIED))]
    redacted = {(node, seq) for node, text in conn.execute(
        "SELECT node, json_extract(body, '$.records') FROM entries "
        "WHERE kind = 'redaction' AND member = ?", (member,))
        for seq in parse_claims(text)}
    return [seq for node, seq in records_into(rows, member, redacted) if node == ledger.node]


class Claim(NamedTuple):
    """A writer's word on one of its records it redacted: its place in the writer's
    hash chain (the hash before it and its own) and the SHA-256 of its redacted bytes."""

    prev: bytes
    hash: bytes
    digest: bytes


# Claims per redaction entry: the entry's text stays well under model._LONG_STRS.
CLAIMS_PER_ENTRY = 250


def parse_claims(text: Any) -> dict[int, Claim]:
    """A redaction entry's `records`; {} if malformed (then nothing it names can be
    taken redacted: the records must come whole)."""
    out: dict[int, Claim] = {}
    if not isinstance(text, str):
        return {}
    try:
        for part in text.split(";"):
            seq, prev, hash_, digest = part.split(" ")
            fields = bytes.fromhex(prev), bytes.fromhex(hash_), bytes.fromhex(digest)
            if not seq.isdigit() or any(len(f) != 32 for f in fields):
                return {}
            out[int(seq)] = Claim(*fields)
    except ValueError:
        return {}
    return out


def claims_in(records: Iterable[Record], node: str) -> dict[int, Claim]:
    """What `node`'s redaction entries among `records` (its own, as they came) claim.
    Each ledger record is read alone in a scratch document: an entry is a new key of
    the root Map, which needs nothing before it. Asked only when a log's records do
    not reach the head its writer signed."""
    out: dict[int, Claim] = {}
    for rec in records:
        if rec.node != node or not rec.doc.startswith("ledger/"):
            continue
        doc: Doc[Any] = Doc()
        try:
            doc.apply_update(rec.data)
            entries = doc.get("entries", type=Map).to_py() or {}
        except BaseException as e:  # a malformed update claims nothing (pyo3 panics
            if isinstance(e, KeyboardInterrupt | SystemExit):  # are BaseExceptions)
                raise
            continue
        for value in entries.values():
            if (isinstance(value, dict) and value.get("kind") == "redaction"
                    and value.get("node") == node):
                # Only about records before it in the chain: a claim must be covered
                # by the chain from the record it names to the signed head.
                out.update({s: c for s, c in parse_claims(value.get("records")).items()
                            if s < rec.seq})
    return out


def redact_own(ledger: Ledger, member: str) -> list[dict[str, Any]]:
    """Redact this node's records that wrote into the erased `member`'s Map: write the
    signed entries that say so (the hash chain's places and the redacted bytes'
    digests), then replace the records' data (apply_redactions). Returns the entries."""
    log, node = ledger.storage.log, ledger.node
    claims = []
    for seq in own_records_into(ledger, member):
        row = ledger.storage.conn.execute(
            "SELECT data, hash FROM records WHERE node = ? AND seq = ?", (node, seq)).fetchone()
        prev = log.hash_at(node, seq - 1)
        try:
            red = redact(bytes(row[0]), member)
        except NotRedactable:
            continue
        if red != bytes(row[0]) and prev is not None:
            claims.append(f"{seq} {prev.hex()} {bytes(row[1]).hex()} "
                          f"{hashlib.sha256(red).hexdigest()}")
    entries = []
    for i in range(0, len(claims), CLAIMS_PER_ENTRY):
        entry = ledger._entry("redaction", member, op=f"erasure@{node}",
                              records=";".join(claims[i:i + CLAIMS_PER_ENTRY]))
        ledger._write(ledger._entry_write(entry))
        entries.append(entry)
    apply_redactions(ledger, entries)
    return entries


def apply_redactions(ledger: Ledger, entries: Iterable[Mapping[str, Any]]) -> list[str]:
    """Replace the data of the records these redaction entries name by their redacted
    form, each checked: the record held here must be the one the entry names (its
    hash), and redacting it here must give the digest its writer signed. Returns what
    did not check (for the node's log); such a record is kept as it is."""
    conn, problems = ledger.storage.conn, []
    with ledger.storage.transaction():
        for e in entries:
            node, member = e["node"], e["member"]
            for seq, claim in parse_claims(e.get("records")).items():
                row = conn.execute("SELECT data, hash FROM records WHERE node = ? AND seq = ?",
                                   (node, seq)).fetchone()
                if row is None:
                    continue  # not here yet: it will come redacted
                data = bytes(row[0])
                if hashlib.sha256(data).digest() == claim.digest:
                    continue  # redacted already
                try:
                    red = redact(data, member)
                except NotRedactable as err:
                    red, why = b"", str(err)
                else:
                    why = "its redaction does not give the digest signed"
                if bytes(row[1]) != claim.hash or hashlib.sha256(red).digest() != claim.digest:
                    problems.append(f"record {seq} of {node} not redacted: "
                                    f"{'another record' if bytes(row[1]) != claim.hash else why}")
                    continue
                conn.execute("UPDATE records SET data = ? WHERE node = ? AND seq = ?",
                             (red, node, seq))
    if entries:
        ledger.storage.forget_freed()
    return problems


def redact_erased(ledger: Ledger) -> list[dict[str, Any]]:
    """Housekeeping: for each member erased in the last RECENT_MS, this node's records
    into it redacted, once (a member this node never wrote to costs one replay of its
    document per process)."""
    written: list[dict[str, Any]] = []
    for mid in recently_erased(ledger.storage.conn, ledger.clock.wall()):
        written += _redact_once(ledger, mid)
    return written


def _redact_once(ledger: Ledger, member: str) -> list[dict[str, Any]]:
    """This node's redaction of `member`, once: written if it is not yet, carried out
    on the records if it is (a crash between the entry and the records leaves them
    whole: this finishes it)."""
    if member in ledger.redaction_checked:
        return []
    done = [json.loads(body) for (body,) in ledger.storage.conn.execute(
        "SELECT body FROM entries WHERE kind = 'redaction' AND node = ? AND member = ?",
        (ledger.node, member))]
    written: list[dict[str, Any]] = []
    if done:
        for problem in apply_redactions(ledger, done):
            ledger.refusals.append(problem)
    else:
        written = redact_own(ledger, member)
    ledger.redaction_checked.add(member)
    return written
