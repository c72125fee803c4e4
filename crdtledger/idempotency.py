"""Idempotency keys: a write retried under the same key answers as the first did.

A till that times out on a debit cannot tell "never arrived" from "done, answer
lost"; retrying without a key sells twice. With a key (the HTTP header
`Idempotency-Key`, as Stripe and the IETF draft "The Idempotency-Key HTTP Header
Field" have it) the node keeps, per (operator, key), a fingerprint of the request
and, once it is done, its status and body; the same request again gets that answer,
performed once.

Why it looks like this:

- The keys are this node's own and are never replicated: a till talks to one node,
  and a retry goes to the node that took the first request. They live in the node's
  SQLite store (a local table, like the outbox's), so a retry after a restart does
  not repeat what was acknowledged before it.
- A row is written, durably, *before* the operation runs (status NULL: begun) and
  given its answer after. A node that stops between the two (a crash, a power cut)
  leaves a begun row: the retry is told the outcome is unknown (409), never run a
  second time. Two commits more per keyed write (about 0.5 ms at synchronous=FULL),
  paid only by requests that send a key.
- A refusal (the library's LedgerError: nothing was written, DESIGN.md) forgets its
  row: the key is free again, so the cashier who fixes the PIN or the amount retries
  with the same key (peer/api.py says why that, not Stripe's "remember any answer").
- Keys expire after a day (KEY_TTL_MS) of time elapsed: a till retries within
  minutes; what was old goes when a new key is begun. The caller's `now_ms` runs on
  the monotonic clock from the PC's clock at start (peer.api.IdempotencyKeys), so a
  clock set right between a request and its retry does not end its key.
- An erasure (crdtledger.erasure) blanks the answers that name an erased member: an
  answer can hold what the erasure removes (a member added or edited answers with the
  profile). The key stays used, and a retry is told why (410), not run again.
- Nothing here runs inside a ledger write: each statement commits on its own, and a
  row begun in a ledger transaction would be rolled back with a refused write.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crdtledger.errors import InvalidInput
from crdtledger.hlc import id_floor
from crdtledger.private import write_private

if TYPE_CHECKING:
    from crdtledger.ledger import Ledger

# Stripe allows 255 characters and suggests a UUID (36); a till's own receipt number
# with a prefix fits in 100 and a row stays small. Printable ASCII (space to ~): what
# an HTTP header carries without encoding.
MAX_KEY = 100
KEY = re.compile(rf"[\x20-\x7e]{{1,{MAX_KEY}}}\Z")
# A day, as Stripe keeps them: longer than any till's retry, short enough that the
# table holds a day of keyed writes at most.
KEY_TTL_MS = 24 * 3600 * 1000

_SCHEMA = (
    # Local to this node (never replicated). status NULL: begun, not answered yet.
    "CREATE TABLE IF NOT EXISTS idempotency(operator TEXT NOT NULL, key TEXT NOT NULL, "
    "request TEXT NOT NULL, created INTEGER NOT NULL, status INTEGER, body TEXT, "
    "PRIMARY KEY(operator, key)) WITHOUT ROWID",
    "CREATE INDEX IF NOT EXISTS idempotency_created ON idempotency(created)",
)


@dataclass(frozen=True)
class Remembered:
    request: str  # the fingerprint of the request that began it
    status: int | None  # None: begun and never answered (the node stopped meanwhile)
    body: Any  # the JSON answer (None for a 204)
    created: int = field(default=0, compare=False)  # when begun (the caller's now_ms)


def check_key(raw: str) -> str:
    """The key as sent, or InvalidInput (400) saying what a key may be."""
    if not KEY.match(raw):
        why = (f"this one has {len(raw)}" if not 0 < len(raw) <= MAX_KEY
               else "this one has a character outside them")
        raise InvalidInput(f"Idempotency-Key must be 1 to {MAX_KEY} printable ASCII "
                           f"characters (a UUID will do): {why}; nothing was done")
    return raw


# Fields the fingerprint does not hash plainly, at any depth: the rest of a body is in
# the entry it wrote, so a plain hash kept for a day gave an approver's password (or a
# card's PIN) away in a few guesses to whoever read the store, which guards both with
# scrypt. They are keyed in (HMAC) with this node's own secret, kept beside the store
# in its data directory and not in its backups (SECRET_FILE): a request with another
# password or PIN is still another request (422), as it was.
SECRETS = frozenset({"password", "pin"})
SECRET_FILE = "idempotency.secret"


def fingerprint(method: str, path: str, query: Iterable[tuple[str, str]], body: Any, *,
                secret: bytes) -> str:
    """What makes two requests the same one: method, path, query and the body as JSON
    (keys sorted: the same body sent by another JSON library is the same request),
    its SECRETS keyed with `secret` (node_secret)."""
    hidden: list[Any] = []
    text = json.dumps([method.upper(), path, sorted(query), _without_secrets(body, hidden)],
                      sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    # A lone surrogate (JSON allows "\ud800") is kept as sent, not an error: the
    # request is refused by its validation, with or without a key (this raised
    # UnicodeEncodeError, a bare 500, before validation could).
    mac = hmac.new(secret, json.dumps(hidden, sort_keys=True, ensure_ascii=False).encode(
        "utf-8", "surrogatepass"), hashlib.sha256).hexdigest()
    return hashlib.sha256(f"{text}\n{mac}".encode("utf-8", "surrogatepass")).hexdigest()


def _without_secrets(value: Any, hidden: list[Any]) -> Any:
    """`value` without its SECRETS, which go to `hidden` in the order met."""
    if isinstance(value, dict):
        out = {}
        for k in sorted(value, key=str):
            if k in SECRETS:
                hidden.append([k, value[k]])
            else:
                out[k] = _without_secrets(value[k], hidden)
        return out
    if isinstance(value, list):
        return [_without_secrets(v, hidden) for v in value]
    return value


def node_secret(ledger: Ledger) -> bytes:
    """This node's key for the fingerprints' secrets: DATA/idempotency.secret (0600),
    made on first use. A store restored elsewhere makes a new one: its keys from
    before do not match again (they expire in a day anyway)."""
    path = ledger.storage.dir / SECRET_FILE
    if path in _node_secrets:  # read once a process, not on every keyed write
        return _node_secrets[path]
    try:
        secret = path.read_bytes()
    except FileNotFoundError:
        secret = secrets.token_bytes(32)
        try:
            write_private(path, secret, exclusive=True, sync=True)
        except FileExistsError:  # another process of this node made it first
            secret = path.read_bytes()
    _node_secrets[path] = secret
    return secret


_node_secrets: dict[Path, bytes] = {}


def _conn(ledger: Ledger) -> sqlite3.Connection:
    return ledger.storage.local(_SCHEMA, "idempotency keys are")


def look(ledger: Ledger, operator: str, key: str, now_ms: int) -> Remembered | None:
    """What this operator's key holds, unless it expired."""
    row = _conn(ledger).execute(
        "SELECT request, status, body, created FROM idempotency WHERE operator = ? "
        "AND key = ? AND created > ?", (operator, key, now_ms - KEY_TTL_MS)).fetchone()
    if row is None:
        return None
    return Remembered(str(row[0]), None if row[1] is None else int(row[1]),
                      None if row[2] is None else json.loads(row[2]), int(row[3]))


def tag_of(operator: str, key: str) -> str:
    """What an entry written under an operator's key carries (its field `idem`): enough
    to find it again, nothing of the key itself (a till's receipt number)."""
    return hashlib.sha256(f"{operator}\0{key}".encode()).hexdigest()[:24]


_TAG: ContextVar[str | None] = ContextVar("idempotency_tag", default=None)


@contextmanager
def tagging(operator: str, key: str | None) -> Iterator[None]:
    """The entries written meanwhile carry this operator's key's tag (commit._entry)."""
    if key is None:
        yield
        return
    token = _TAG.set(tag_of(operator, key))
    try:
        yield
    finally:
        _TAG.reset(token)


def current_tag() -> str | None:
    return _TAG.get()


def done_before_restore(ledger: Ledger, operator: str, key: str, now_ms: int) -> str | None:
    """The entry written under this operator's key before this store was restored from
    a backup, which keeps no key made after it, if it came back from a peer: a retry of
    a sale taken between the backup and the PC's end was sold again. Looked for only
    within a key's life after the restore (meta `keys_unknown_until`), among this
    node's entries of that last day."""
    until = ledger.storage.meta.get("keys_unknown_until", "")
    if not until.isdigit() or now_ms >= int(until):  # none, or a store edited by hand
        return None
    row = ledger.storage.conn.execute(
        "SELECT id FROM entries WHERE id >= ? AND node = ? AND instr(body, ?) LIMIT 1",
        (id_floor(now_ms - KEY_TTL_MS), ledger.node,
         f'"idem":"{tag_of(operator, key)}"')).fetchone()
    return None if row is None else str(row[0])


def written_under(ledger: Ledger, tag: str, since_ms: int) -> list[str]:
    """The ids of this node's entries that carry `tag` (tag_of), written since
    `since_ms`: every entry one request wrote, those its answer does not name too (a
    sale's write-off of expired points). A primary-key range: ids start with their
    time."""
    return [str(eid) for (eid,) in ledger.storage.conn.execute(
        "SELECT id FROM entries WHERE id >= ? AND node = ? AND instr(body, ?) > 0",
        (id_floor(since_ms), ledger.node, f'"idem":"{tag}"'))]


def fingerprinted_before(ledger: Ledger, kept: Remembered) -> bool:
    """Whether `kept` was begun before this node's secret was made: a store restored
    from a backup (which leaves the secret out) makes a new one, and a retry of a
    request it took before can no longer be told from another request."""
    try:
        made = (ledger.storage.dir / SECRET_FILE).stat().st_mtime_ns // 1_000_000
    except FileNotFoundError:
        return True
    return kept.created < made


def begin(ledger: Ledger, operator: str, key: str, request: str, now_ms: int) -> None:
    """Keep the key as begun, durably, before its operation runs; expired keys go."""
    conn = _conn(ledger)
    conn.execute("DELETE FROM idempotency WHERE created <= ?", (now_ms - KEY_TTL_MS,))
    conn.execute("INSERT OR REPLACE INTO idempotency(operator, key, request, created) "
                 "VALUES (?, ?, ?, ?)", (operator, key, request, now_ms))


def finish(ledger: Ledger, operator: str, key: str, status: int, body: Any) -> None:
    """Keep the answer the first request got, for its retries."""
    _conn(ledger).execute(
        "UPDATE idempotency SET status = ?, body = ? WHERE operator = ? AND key = ?",
        (status, None if body is None else json.dumps(body, ensure_ascii=False),
         operator, key))


def forget(ledger: Ledger, operator: str, key: str) -> None:
    """The request was refused and wrote nothing: its key is free again."""
    _conn(ledger).execute("DELETE FROM idempotency WHERE operator = ? AND key = ?",
                          (operator, key))


# What a kept answer that named an erased member becomes: the key stays used (a retry
# of "add this member" must not add them again), and says why it answers no more.
ERASED_STATUS = 410


def forget_members(ledger: Ledger, members: Iterable[str]) -> int:
    """Blank the kept answers that name any of `members` (erased): a retry under such
    a key gets 410 and a sentence, and runs nothing. Returns how many. A store that
    never kept a key has no table, and gets none."""
    ids = [m for m in members if isinstance(m, str) and m]
    if not ids or ledger.storage.conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'idempotency'"
    ).fetchone() is None:
        return 0
    conn = _conn(ledger)
    gone = json.dumps({"error": "member_erased", "message": (
        "the answer kept for this key named a member whose data was erased since; "
        "the request was done once and is not done again")})
    # Ids are ASCII and the table holds a day of keyed writes: a scan per member.
    return sum(conn.execute("UPDATE idempotency SET status = ?, body = ? "
                            "WHERE instr(body, ?) > 0", (ERASED_STATUS, gone, mid)).rowcount
               for mid in ids)
