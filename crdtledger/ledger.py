"""The ledger of one node: operations on members, cards and purses, and their views.

Every mutating operation follows one path (`_commit`): check permission and input,
check escrow rights against the projection, write to the pycrdt document, project
the change, log the update; all in one SQLite transaction, acknowledged only after
COMMIT. Remote updates take the same projection path (`apply_remote`), so a replica
cannot derive different views from the same documents.

One thread owns a Ledger (pycrdt objects are bound to their thread).
"""

from __future__ import annotations

import gc
import hashlib
import hmac
import json
import re
import secrets
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

from pycrdt import Array, Doc, Map, get_update

from crdtledger import escrow, views
from crdtledger.errors import (
    ApprovalRequired,
    CardInactive,
    CardLost,
    ClockSkew,
    InsufficientFunds,
    InvalidAmount,
    InvalidInput,
    LedgerError,
    NotFound,
    PermissionDenied,
    RemoteProtocolError,
    RightsElsewhere,
    WrongPin,
)
from crdtledger.hlc import (
    MAX_CLOCK_SKEW_MS,
    HybridClock,
    check_node_id,
    decode,
    id_time_ms,
    wall_ms,
)
from crdtledger.lib0 import decode_state_vector, read_varuint, states_digest, write_varuint
from crdtledger.model import (
    BUILTIN_ROLES,
    CARD_TYPES,
    DEFAULT_RULES,
    DOC_NAME,
    ID,
    MONEY_PURSES,
    PERMISSIONS,
    PURSE,
    RULE_KINDS,
    ledger_doc,
    member_doc,
)
from crdtledger.money import (
    MAX_AMOUNT,
    apply_rate,
    check_amount,
    check_count,
    format_purse,
    format_yuan,
    points_for,
)
from crdtledger.projection import (
    entry_change,
    project_deferred,
    project_entries,
    project_entry,
    record_change,
)
from crdtledger.storage import LoadedDoc, Storage

Listener = Callable[[str, bytes, object], None]
T = TypeVar("T")


@dataclass(frozen=True)
class Write:
    """One replicated record changed by a local operation: `mutate` gets the root Map
    of `doc`; the projection then rewrites that one record (or, for a ledger entry,
    projects `entry`, the very value written)."""

    doc: str
    root: str
    key: str
    mutate: Callable[[Map[Any]], None]
    entry: dict[str, Any] | None = None


def _put(doc: str, root: str, key: str, value: Any) -> Write:
    return Write(doc, root, key, lambda r: r.__setitem__(key, value))


def _spend(node: str, purses: Mapping[str, Mapping[str, int]], amount: int
           ) -> list[tuple[str, str, int]]:
    """Stored value spent at `node`: cash first, then bonus (the named rule)."""
    cash = sum(purses.get("cash", {}).values())
    bonus = sum(purses.get("bonus", {}).values())
    from_cash = min(amount, cash)
    if amount - from_cash > bonus:
        raise InsufficientFunds("cash", cash + bonus, amount)
    return [("cash", node, -from_cash), ("bonus", node, -(amount - from_cash))]


MEMBER_FIELDS = ("name", "phone", "gender", "birthday", "anniversary", "home", "level",
                 "notes", "deleted")
PREF_KEYS = ("strength", "service", "technician")
PHONE = re.compile(r"^\+?[0-9][0-9 -]{4,19}$")
MAX_TEXT = 200
# Remote entries stamped too far ahead of our clock: the latest are kept for a look.
SKEW_EVENTS_KEPT = 100
# Key stretching for operator passwords and card PINs. A PIN has few digits, so the
# hash is salted per card and deliberately slow (scrypt, ~30 ms).
_SCRYPT = {"n": 2**14, "r": 8, "p": 1}


def hash_secret(secret: str, salt: bytes | None = None) -> str:
    salt = salt or secrets.token_bytes(16)
    digest = hashlib.scrypt(secret.encode(), salt=salt, dklen=32, **_SCRYPT)
    return f"scrypt${salt.hex()}${digest.hex()}"


def check_secret(secret: str, stored: str) -> bool:
    try:
        _, salt, digest = stored.split("$")
        got = hashlib.scrypt(secret.encode(), salt=bytes.fromhex(salt), dklen=32, **_SCRYPT)
    except ValueError:
        return False
    return hmac.compare_digest(got.hex(), digest)


def owner_of(node: str) -> str:
    """The built-in operator a node's owner acts as at its own console."""
    return f"owner@{node}"


class Ledger:
    def __init__(self, storage: Storage, now_ms: Callable[[], int] | None = None) -> None:
        self.storage = storage
        self.node = storage.node
        self.chain = storage.chain
        self.clock = HybridClock(self.node, int(storage.meta.get("hlc", "0")), now_ms)
        self.owner = owner_of(self.node)
        self._listeners: list[Listener] = []
        self._rules: dict[str, list[tuple[str, str, Any]]] | None = None
        self.skew_events: deque[ClockSkew] = deque(maxlen=SKEW_EVENTS_KEPT)
        self._digest: tuple[int, bytes] | None = None  # (storage.version, states_digest)

    # --- lifecycle ----------------------------------------------------------

    @classmethod
    def create(cls, data_dir: Path | str, node: str, chain: str = "default",
               timezone: str = "Asia/Shanghai") -> None:
        check_node_id(node)
        if not re.match(r"^[A-Za-z0-9._-]{1,64}\Z", chain):
            raise InvalidInput(f"chain id {chain!r} must be 1-64 letters, digits, . _ -")
        try:
            Storage.create(Path(data_dir), node, chain, timezone)
        except (KeyError, ValueError) as e:  # ZoneInfoNotFoundError is a KeyError
            raise InvalidInput(f"unknown time zone {timezone!r}") from e

    @classmethod
    def open(cls, data_dir: Path | str, *, synchronous: str = "FULL",
             now_ms: Callable[[], int] | None = None, lock: bool = True) -> Ledger:
        return cls(Storage(Path(data_dir), synchronous=synchronous, lock=lock), now_ms)

    def close(self) -> None:
        self.storage.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call `listener(doc, update, origin)` after each committed change.

        `origin` is None for local operations, else what the caller of apply_remote
        passed (a sync session), so a session need not echo a peer's own updates.
        """
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None

    # --- the one write path -------------------------------------------------

    def _commit(self, plan: Callable[[], tuple[Sequence[Write], T]]) -> T:
        """Run `plan` inside the write transaction (so the rights it checks cannot move
        before its entry commits), write what it returns, project, log, commit; then
        hand the updates to listeners. Returns the plan's result."""
        st = self.storage
        committed: list[tuple[str, bytes]] = []
        with st.transaction():
            writes, result = plan()
            for w in writes:
                ld = st.doc(w.doc)
                with ld.doc.transaction():
                    w.mutate(ld.roots[w.root])
                updates = ld.take_updates()
                self._project_write(ld, w)
                st.record(ld, updates)
                committed.extend((w.doc, u) for u in updates)
            st.keep_clock(self.clock.last)
        self._notify(committed, None)
        for name in {w.doc for w in writes}:
            st.maybe_compact(name)
        return result

    def _write(self, *writes: Write) -> None:
        self._commit(lambda: (writes, None))

    def _project_write(self, ld: LoadedDoc, w: Write) -> None:
        """Project a local write from what it wrote. pycrdt's observers would tell the
        same, but converting their events costs more than the rest of a debit's CPU;
        remote updates, whose content we do not know, go through the observers."""
        conn, day_of = self.storage.conn, self.storage.day_of
        if w.entry is not None:
            # Built by _entry (exact ints, ranges checked, rights checked by the plan):
            # projected as is. Replicas run the full schema check (normalise_entry);
            # the state machine tests that they never disagree with the writer.
            project_entry(conn, w.entry, day_of(id_time_ms(w.key)), +1)
            return
        record_change(conn, ld.name, w.root, w.key, ld.roots[w.root][w.key], day_of)
        if w.root == "rules":
            self._rules = None

    def _notify(self, updates: Iterable[tuple[str, bytes]], origin: object) -> None:
        for name, update in updates:
            for fn in list(self._listeners):
                fn(name, update, origin)

    def _project(self, ld: LoadedDoc, change: Any) -> None:
        conn, day_of = self.storage.conn, self.storage.day_of
        rules_changed = False
        fresh: list[tuple[str, Any]] = []  # entries new to the document
        projected: list[dict[str, Any]] = []
        for root, key, old, new in change.added:
            if root == "entries":
                if old is None:
                    fresh.append((key, new))
                    continue
                # Rewritten (only a misbehaving peer does that): undone and redone.
                entry = entry_change(conn, ld.name, key, old, new, day_of)
                if entry is not None:
                    projected.append(entry)
            else:
                # Read from the document, as pycrdt wraps it (the event's value is
                # the raw one, see LoadedDoc.watching).
                record_change(conn, ld.name, root, key, ld.roots[root].get(key), day_of)
                rules_changed |= root == "rules"
        projected += project_entries(conn, ld.name, fresh, day_of)
        for root in change.unsure:  # LoadedDoc.watching: Yrs could not say which keys
            if root == "entries":
                # Entries are written once: only a rewrite (a misbehaving peer) gets
                # here, and which entries are new cannot be told from the document.
                raise RemoteProtocolError(f"{ld.name}: a ledger entry rewritten")
            keys = ld.roots[root].keys()  # pycrdt types Map.__iter__ as an Iterable
            change.touched.update((root, str(key)) for key in keys)
        self._observe_clocks(projected)
        for root, key in change.touched:
            value = ld.roots[root].get(key)
            if value is not None:
                record_change(conn, ld.name, root, key, value, day_of)
                rules_changed |= root == "rules"
        if rules_changed:
            self._rules = None

    def _observe_clocks(self, entries: list[dict[str, Any]]) -> None:
        """Move our clock past the remote entries just projected: once, to the latest
        of them, plus once for each stamped too far ahead, which is refused and kept
        (the latest few, without the traceback, which would keep this apply's frames
        and updates alive for as long as a peer's clock stays wrong)."""
        limit = self.clock.wall() + MAX_CLOCK_SKEW_MS
        latest = 0
        for e in entries:
            if e["node"] == self.node:
                continue
            ts = decode(e["id"].split(".", 1)[0])
            if wall_ms(ts) <= limit:
                latest = max(latest, ts)
                continue
            try:
                self.clock.observe(ts)
            except ClockSkew as err:
                self.skew_events.append(err.with_traceback(None))
        if latest:
            self.clock.observe(latest)

    # --- replication --------------------------------------------------------

    def state_vectors(self) -> dict[str, bytes]:
        return self.storage.state_vectors()

    def states_digest(self) -> bytes:
        """sync.states_digest of our state vectors, kept while the store records
        nothing: both sides of every anti-entropy round ask for it."""
        version = self.storage.version
        if self._digest is None or self._digest[0] != version:
            self._digest = (version, states_digest(self.storage.state_vectors()))
        return self._digest[1]

    def diff(self, name: str, state_vector: bytes = b"\x00") -> bytes:
        """What a peer at `state_vector` lacks of document `name`."""
        if not DOC_NAME.match(name):
            raise RemoteProtocolError(f"unknown document {name!r}")
        try:
            return bytes(self.storage.doc(name).doc.get_update(state_vector))
        except ValueError as e:
            raise RemoteProtocolError(f"bad state vector for {name}: {e}") from None

    def apply_remote(self, updates: Sequence[tuple[str, bytes]], origin: object = None
                     ) -> list[tuple[str, bytes]]:
        """Apply updates from a peer or a file, all or nothing.

        Returns what was new, per document (what to relay to other peers). A
        malformed update raises RemoteProtocolError and nothing is changed.
        """
        for name, data in updates:
            if not isinstance(name, str) or not DOC_NAME.match(name):
                raise RemoteProtocolError(f"unknown document {name!r}")
            if not isinstance(data, bytes | bytearray):
                raise RemoteProtocolError(f"update for {name} is not bytes")
        # A catch-up allocates millions of short-lived objects (events, entries), and
        # each full collection they trigger walks the whole heap: 8% of a catch-up.
        # They hold no cycles; any made meanwhile are collected after.
        collecting = gc.isenabled()
        gc.disable()
        try:
            try:
                return self._apply_remote(updates, origin, probe_first=False)
            except _GapFound:  # rolled back: again, checking every update first
                return self._apply_remote(updates, origin, probe_first=True)
        finally:
            if collecting:
                gc.enable()

    def _apply_remote(self, updates: Sequence[tuple[str, bytes]], origin: object,
                      probe_first: bool) -> list[tuple[str, bytes]]:
        """apply_remote. An update past a gap in a writer's clocks is set aside
        (_skips_clocks). Checking that costs a multi-writer update (a catch-up's diff)
        more than applying it, so unless `probe_first`, such an update is applied
        unchecked: if it integrated whole, it cannot have skipped (what integrates
        past a gap lies beyond the state vector); else it is checked then, and if it
        skipped, _GapFound rolls the whole call back to be run with `probe_first`."""
        st = self.storage
        new: list[tuple[str, bytes]] = []
        touched: list[str] = []
        with st.transaction():
            for name, received in updates:
                data = bytes(received)  # one copy, if a bytearray came
                ld = st.doc(name)
                before = ld.doc.get_state()
                checked = probe_first or _single_writer_start(data) is not None
                with ld.watching() as change:
                    try:
                        if checked and _skips_clocks(before, data):
                            continue  # wait for the diff that fills the gap (anti-entropy)
                        ld.doc.apply_update(data)
                    except BaseException as e:  # pyo3 panics are BaseExceptions
                        if isinstance(e, KeyboardInterrupt | SystemExit):
                            raise
                        raise RemoteProtocolError(f"malformed update for {name}: {e}") from None
                ld.take_updates()  # what is logged is the update or the diff, below
                after = ld.doc.get_state()
                whole = ld.settle(data, after)
                if not whole and not checked and _skips_clocks(before, data):
                    raise _GapFound
                if after == before and not (change.added or change.touched or change.unsure):
                    continue  # nothing new (a duplicate, or still waiting on a dependency)
                # What changed is logged and relayed: the update as received when it
                # integrated whole and released nothing held back before, else the diff
                # against `before`, which costs the document (its delete set is built
                # from every block) but also carries what Yrs released now and every
                # deletion we know of (LoadedDoc.settle).
                delta = data if whole else bytes(ld.doc.get_update(before))
                self._project(ld, change)
                st.record(ld, [delta])
                new.append((name, delta))
                touched.append(name)
            if touched:
                project_deferred(st.conn, st.day_of)  # entries whose funding just came
            st.keep_clock(self.clock.last)
        self._notify(new, origin)
        for name in dict.fromkeys(touched):
            st.maybe_compact(name)
        return new

    def remember_peer(self, node: str, states: dict[str, bytes]) -> None:
        with self.storage.transaction():
            self.storage.remember_peer(node, states, self.clock.wall())

    # --- permissions --------------------------------------------------------

    def permissions(self, operator: str) -> frozenset[str]:
        if operator == self.owner:
            return PERMISSIONS
        row = self.storage.conn.execute(
            "SELECT body FROM operators WHERE id = ?", (operator,)
        ).fetchone()
        if row is None:
            return frozenset()
        data = json.loads(row[0])
        if not data.get("active", True):
            return frozenset()
        perms: set[str] = set()
        for role, on in (data.get("roles") or {}).items():
            if not on:
                continue
            custom = self.storage.conn.execute(
                "SELECT body FROM roles WHERE name = ?", (role,)
            ).fetchone()
            if custom is not None:
                perms |= {p for p, v in json.loads(custom[0]).items() if v and p in PERMISSIONS}
            else:
                perms |= BUILTIN_ROLES.get(role, frozenset())
        return frozenset(perms)

    def authorise(self, operator: str, permission: str) -> None:
        if permission not in self.permissions(operator):
            raise PermissionDenied(f"operator {operator} may not {permission}")

    def _approve(self, operator: str, approver: tuple[str, str] | None, what: str) -> str:
        """Large amounts need someone allowed to approve: the operator or an approver."""
        if "approve" in self.permissions(operator):
            return operator
        if approver is None:
            raise ApprovalRequired(f"{what} needs an approver's password")
        approver_id = self.authenticate(*approver)
        if "approve" not in self.permissions(approver_id):
            raise ApprovalRequired(f"{approver[0]} may not approve {what}")
        return approver_id

    # --- rules --------------------------------------------------------------

    def rule(self, kind: str, day: str | None = None) -> Any:
        """The version of a rule in force on `day` (default today), else the default."""
        if kind not in RULE_KINDS:
            raise InvalidInput(f"unknown rule kind {kind!r}")
        if self._rules is None:
            cache: dict[str, list[tuple[str, str, Any]]] = {}
            for rid, k, eff, body in self.storage.conn.execute(
                "SELECT id, kind, effective_from, body FROM rules ORDER BY effective_from, id"
            ):
                cache.setdefault(k, []).append((eff, rid, json.loads(body)))
            self._rules = cache
        day = day or self.today()
        current = DEFAULT_RULES[kind]
        for eff, _rid, body in self._rules.get(kind, []):
            if eff <= day:
                current = body
        return current

    def set_rule(self, operator: str, kind: str, body: Any, effective_from: str | None = None
                 ) -> str:
        self.authorise(operator, "rules.manage")
        if kind not in RULE_KINDS:
            raise InvalidInput(f"unknown rule kind {kind!r}; one of {sorted(RULE_KINDS)}")
        _check_rule(kind, body)
        eff = effective_from or self.today()
        _check_date(eff, "effective_from")
        rid = self.clock.mint()
        record = {"kind": kind, "effective_from": eff, "body": json.dumps(body, sort_keys=True)}
        self._write(_put("rules", "rules", rid, record))
        return rid

    def today(self) -> str:
        return self.storage.day_of(self.clock.wall())

    # --- operators ----------------------------------------------------------

    def add_operator(self, operator: str, name: str, password: str,
                     roles: Iterable[str] = ("cashier",)) -> str:
        self.authorise(operator, "operators.manage")
        name = _text(name, "operator name", required=True, limit=40)
        if not isinstance(password, str) or len(password) < 6:
            raise InvalidInput("password must have at least 6 characters")
        if self._operator_by_name(name) is not None:
            raise InvalidInput(f"an operator named {name} exists already")
        role_map = {r: True for r in roles}
        for r in role_map:
            self._check_role_exists(r)
        oid = self.clock.mint()
        data = {"name": name, "password": hash_secret(password), "active": True,
                "roles": Map(role_map)}
        self._write(_put("operators", "operators", oid, Map(data)))
        return oid

    def set_operator(self, operator: str, target: str, *, password: str | None = None,
                     roles: Mapping[str, bool] | None = None, active: bool | None = None) -> None:
        self.authorise(operator, "operators.manage")
        if self.storage.conn.execute(
            "SELECT 1 FROM operators WHERE id = ?", (target,)
        ).fetchone() is None:
            raise NotFound(f"no operator {target}")
        for r in roles or {}:
            self._check_role_exists(r)
        if password is not None and (not isinstance(password, str) or len(password) < 6):
            raise InvalidInput("password must have at least 6 characters")
        pw = hash_secret(password) if password is not None else None

        def mutate(root: Map[Any]) -> None:
            m = root[target]
            if pw is not None:
                m["password"] = pw
            if active is not None:
                m["active"] = active
            for r, on in (roles or {}).items():
                m["roles"][r] = bool(on)

        self._write(Write("operators", "operators", target, mutate))

    def define_role(self, operator: str, name: str, permissions: Iterable[str]) -> None:
        self.authorise(operator, "operators.manage")
        perms = set(permissions)
        unknown = perms - PERMISSIONS
        if unknown:
            raise InvalidInput(f"unknown permissions {sorted(unknown)}")
        name = _text(name, "role name", required=True, limit=40)
        roles = self.storage.doc("operators").roots["roles"]
        exists = name in roles

        def mutate(root: Map[Any]) -> None:
            if exists:
                role = root[name]
                for p in PERMISSIONS:
                    role[p] = p in perms
            else:
                root[name] = Map({p: p in perms for p in PERMISSIONS})

        self._write(Write("operators", "roles", name, mutate))

    def _check_role_exists(self, role: str) -> None:
        if role in BUILTIN_ROLES:
            return
        if self.storage.conn.execute("SELECT 1 FROM roles WHERE name = ?", (role,)).fetchone():
            return
        raise InvalidInput(f"unknown role {role!r}")

    def _operator_by_name(self, name: str) -> tuple[str, dict[str, Any]] | None:
        row = self.storage.conn.execute(
            "SELECT id, body FROM operators WHERE name = ? ORDER BY id LIMIT 1", (name,)
        ).fetchone()
        return (row[0], json.loads(row[1])) if row else None

    def authenticate(self, name: str, password: str) -> str:
        found = self._operator_by_name(name)
        if found is None or not found[1].get("active", True) or not check_secret(
            password, str(found[1].get("password", ""))
        ):
            raise PermissionDenied("wrong operator name or password")
        return found[0]

    # --- members ------------------------------------------------------------

    def add_member(self, operator: str, *, name: str, phone: str, gender: str = "",
                   birthday: str = "", anniversary: str = "", home: str | None = None,
                   notes: str = "", tags: Iterable[str] = (),
                   prefs: Mapping[str, str] | None = None,
                   custom: Mapping[str, str] | None = None) -> str:
        self.authorise(operator, "member.add")
        fields = _member_fields(
            {"name": name, "phone": phone, "gender": gender, "birthday": birthday,
             "anniversary": anniversary, "home": home or self.node, "notes": notes},
            creating=True,
        )
        if self.storage.conn.execute(
            "SELECT id FROM members WHERE phone = ?", (fields["phone"],)
        ).fetchone():
            raise InvalidInput(f"phone {fields['phone']} is registered to another member")
        prefs_d = _prefs(prefs or {})
        custom_d = {_text(k, "field name", limit=40): _text(v, k) for k, v in
                    (custom or {}).items()}
        tag_d = {_text(t, "tag", limit=40): True for t in tags}
        mid = self.clock.mint()

        record = Map({**fields, "created_by": operator, "prefs": Map(prefs_d),
                      "tags": Map(tag_d), "custom": Map(custom_d)})
        self._write(_put(member_doc(mid), "members", mid, record))
        return mid

    def edit_member(self, operator: str, member: str, *, fields: Mapping[str, Any] | None = None,
                    prefs: Mapping[str, str] | None = None,
                    custom: Mapping[str, str] | None = None,
                    tags_add: Iterable[str] = (), tags_remove: Iterable[str] = ()) -> None:
        """Field by field, so concurrent edits of different fields at two branches
        both survive (each field is its own key in the member's Map)."""
        self.authorise(operator, "member.edit")
        if self.storage.conn.execute(
            "SELECT 1 FROM members WHERE id = ?", (member,)).fetchone() is None:
            raise NotFound(f"unknown member {member}")  # a deleted one may be edited back
        fields = dict(fields or {})
        if "level" in fields:
            self.authorise(operator, "member.upgrade")
        if "deleted" in fields:
            self.authorise(operator, "member.delete")
        f = _member_fields(fields, creating=False)
        if f.get("phone") and self.storage.conn.execute(
            "SELECT 1 FROM members WHERE phone = ? AND id != ?", (f["phone"], member)
        ).fetchone():
            raise InvalidInput(f"phone {f['phone']} is registered to another member")
        prefs_d = _prefs(prefs or {})
        custom_d = {_text(k, "field name", limit=40): _text(v, k) for k, v in
                    (custom or {}).items()}
        tags = {_text(t, "tag", limit=40): True for t in tags_add}
        tags |= {_text(t, "tag", limit=40): False for t in tags_remove}

        def mutate(root: Map[Any]) -> None:
            m = root[member]
            for k, v in f.items():
                m[k] = v
            for sub, values in (("prefs", prefs_d), ("custom", custom_d), ("tags", tags)):
                for k, v in values.items():
                    m[sub][k] = v

        self._write(Write(member_doc(member), "members", member, mutate))

    def member(self, member: str) -> dict[str, Any]:
        return views.member(self, member)

    def find_members(self, query: str, limit: int = 20) -> list[dict[str, Any]]:
        return views.find_members(self.storage.conn, _text(query, "search"), limit)

    def _live_member(self, member: str) -> tuple[dict[str, Any], tuple[int, int]]:
        """The member's profile and cumulative (spent, topped): one indexed read on the
        debit path, not the whole member view."""
        row = self.storage.conn.execute(
            "SELECT m.body, t.spent, t.topped FROM members m "
            "LEFT JOIN totals t ON t.member = m.id WHERE m.id = ?", (member,)).fetchone()
        if row is None:
            raise NotFound(f"unknown member {member}")
        profile: dict[str, Any] = json.loads(row[0])
        if profile.get("deleted"):
            raise InvalidInput(f"member {member} was deleted")
        return profile, (int(row[1] or 0), int(row[2] or 0))

    # --- cards --------------------------------------------------------------

    def issue_card(self, operator: str, member: str, card_no: str, *,
                   card_type: str = "stored_value", pin: str | None = None,
                   expiry: str = "", fee: int = 0) -> str:
        self.authorise(operator, "card.issue")
        self._live_member(member)
        card_no = _card_no(card_no)
        if card_type not in CARD_TYPES:
            raise InvalidInput(f"unknown card type {card_type!r}; one of {CARD_TYPES}")
        if expiry:
            _check_date(expiry, "expiry")
        fee = check_amount(fee, allow_zero=True)
        self._card_free(card_no)
        cid = self.clock.mint()
        card = self._card_record(cid, member, card_no, card_type, pin, expiry)
        entry = self._entry("card", member, amount=fee, paid=fee, card=cid)
        self._write(_put(member_doc(member), "cards", cid, Map(card)), self._entry_write(entry))
        return cid

    def _card_record(self, cid: str, member: str, card_no: str, card_type: str,
                     pin: str | None, expiry: str) -> dict[str, Any]:
        if pin is not None and not re.match(r"^[0-9]{4,8}\Z", pin):
            raise InvalidInput("a card PIN is 4 to 8 digits")
        return {"card_no": card_no, "member": member, "type": card_type,
                "pin": hash_secret(pin) if pin else "", "expiry": expiry, "node": self.node,
                "events": Array([[cid, "active", ""]])}

    def _card_free(self, card_no: str) -> None:
        row = self.storage.conn.execute(
            "SELECT member FROM cards WHERE card_no = ? AND status IN ('active', 'lost')",
            (card_no,),
        ).fetchone()
        if row:
            raise InvalidInput(f"card {card_no} is already issued (member {row[0]})")

    def card(self, card_no: str) -> dict[str, Any]:
        """The card with this number: the active one if any, else the newest."""
        card_no = _card_no(card_no)  # stored upper-case by issue_card
        rows = self.storage.conn.execute(
            "SELECT id, member, status, body FROM cards WHERE card_no = ? "
            "ORDER BY status = 'active' DESC, status = 'lost' DESC, id DESC",
            (card_no,),
        ).fetchall()
        if not rows:
            raise NotFound(f"unknown card {card_no}")
        cid, member, status, body = rows[0]
        data = json.loads(body)
        return {"id": cid, "card_no": card_no, "member": member, "status": status,
                "type": data.get("type"), "expiry": data.get("expiry", ""),
                "has_pin": bool(data.get("pin"))}

    def _pin_hash(self, card_id: str) -> str:
        row = self.storage.conn.execute(
            "SELECT body FROM cards WHERE id = ?", (card_id,)).fetchone()
        return str(json.loads(row[0]).get("pin", "")) if row else ""

    def use_card(self, card_no: str, pin: str | None = None) -> dict[str, Any]:
        """Resolve a swiped card to its member, refusing lost, replaced, expired cards
        and wrong PINs with a message for the cashier."""
        card = self.card(card_no)
        if card["status"] == "lost":
            raise CardLost(f"card {card_no} is reported lost")
        if card["status"] != "active":
            raise CardInactive(f"card {card_no} is {card['status']}")
        if card["expiry"] and card["expiry"] < self.today():
            raise CardInactive(f"card {card_no} expired on {card['expiry']}")
        pin_hash = self._pin_hash(card["id"]) if card["has_pin"] else ""
        if pin_hash and (pin is None or not check_secret(pin, pin_hash)):
            raise WrongPin(f"wrong PIN for card {card_no}")
        return card

    def _card_event(self, operator: str, permission: str, card_no: str, status: str,
                    allowed_from: tuple[str, ...], note: str = "") -> str:
        self.authorise(operator, permission)
        card = self.card(card_no)
        if card["status"] not in allowed_from:
            raise InvalidInput(f"card {card_no} is {card['status']}; cannot mark it {status}")
        eid = self.clock.mint()
        self._write(self._card_status(card, [eid, status, note]))
        return str(card["id"])

    def _card_status(self, card: Mapping[str, Any], event: list[str]) -> Write:
        """Card status is a growing list of events; the latest (by HLC id) holds."""
        cid = str(card["id"])
        return Write(member_doc(str(card["member"])), "cards", cid,
                     lambda root: root[cid]["events"].append(event))

    def report_lost(self, operator: str, card_no: str) -> str:
        return self._card_event(operator, "card.lost", card_no, "lost", ("active",))

    def report_found(self, operator: str, card_no: str) -> str:
        return self._card_event(operator, "card.lost", card_no, "active", ("lost",))

    def return_card(self, operator: str, card_no: str) -> str:
        return self._card_event(operator, "card.return", card_no, "returned", ("active", "lost"))

    def replace_card(self, operator: str, old_no: str, new_no: str, *,
                     pin: str | None = None) -> str:
        """补卡: a new card for the same member; the purses belong to the member and stay."""
        self.authorise(operator, "card.replace")
        old = self.card(old_no)
        if old["status"] not in ("active", "lost"):
            raise InvalidInput(f"card {old_no} is {old['status']}; cannot replace it")
        new_no = _card_no(new_no)
        self._card_free(new_no)
        cid = self.clock.mint()
        eid = self.clock.mint()
        card = self._card_record(cid, old["member"], new_no, str(old["type"]), pin,
                                 str(old["expiry"]))
        card["replaces"] = old["id"]
        self._write(self._card_status(old, [eid, "replaced", cid]),
                    _put(member_doc(str(old["member"])), "cards", cid, Map(card)))
        return cid

    # --- ledger entries -----------------------------------------------------

    def _entry(self, kind: str, member: str, *, deltas: Sequence[tuple[str, str, int]] = (),
               amount: int = 0, **extra: Any) -> dict[str, Any]:
        eid = self.clock.mint()
        # `amount` too: an entry out of range would be quarantined by every replica
        # (model.normalise_entry) after the operation was acknowledged here.
        for v in (amount, *extra.values()):
            if isinstance(v, int) and not isinstance(v, bool) and not 0 <= v <= MAX_AMOUNT:
                raise InvalidAmount(f"value {v} out of range")
        escrow.check_deltas_authorised(self.node, deltas)
        entry: dict[str, Any] = {
            "id": eid, "kind": kind, "member": member, "node": self.node,
            "op": extra.pop("op", self.owner), "at": wall_ms(self.clock.last),
            "amount": amount, "deltas": [list(d) for d in deltas if d[2] != 0],
        }
        entry.update({k: v for k, v in extra.items() if v is not None and v != ""})
        return entry

    def _entry_write(self, entry: dict[str, Any]) -> Write:
        month = self.storage.day_of(entry["at"])[:7]
        eid = entry["id"]
        return Write(ledger_doc(month), "entries", eid,
                     lambda root: root.__setitem__(eid, entry), entry=entry)

    def _rights(self, member: str, purse: str) -> dict[str, int]:
        return {n: a for n, a in self.storage.conn.execute(
            "SELECT node, amount FROM rights WHERE member = ? AND purse = ?", (member, purse))}

    def _purses(self, member: str) -> dict[str, dict[str, int]]:
        """Every purse of a member with its rights per node: one indexed read."""
        out: dict[str, dict[str, int]] = {}
        for purse, node, amount in self.storage.conn.execute(
            "SELECT purse, node, amount FROM rights WHERE member = ?", (member,)
        ):
            out.setdefault(purse, {})[node] = amount
        return out

    def _post(self, entry: dict[str, Any], needs: Mapping[str, int]) -> dict[str, Any]:
        """Commit an entry after checking, inside the write transaction, that this
        node's own rights cover every purse it lowers."""

        def plan() -> tuple[list[Write], dict[str, Any]]:
            purses = self._purses(entry["member"]) if any(v > 0 for v in needs.values()) else {}
            for purse, amount in needs.items():
                if amount > 0:
                    escrow.require(purse, self.node, purses.get(purse, {}), amount,
                                   entry["member"])
            return [self._entry_write(entry)], entry

        return self._commit(plan)

    def level(self, member: str) -> dict[str, Any]:
        return views.level(self, member)

    def topup(self, operator: str, member: str, amount: int, *,
              approver: tuple[str, str] | None = None, card: str | None = None,
              pin: str | None = None) -> dict[str, Any]:
        """充值: the cash paid becomes stored value here, plus any promotion's bonus."""
        self.authorise(operator, "topup")
        amount = check_amount(amount)
        member, _ = self._resolve(member, card, pin)
        approved = None
        if amount > int(self.rule("approval")["topup_limit"]):
            approved = self._approve(operator, approver, f"a top-up of {format_yuan(amount)}")
        bonus, promo = 0, None
        for p in self.rule("promotions"):
            if amount >= int(p["min"]) and int(p["bonus"]) > bonus:
                bonus, promo = int(p["bonus"]), str(p.get("name", ""))
        deltas = [("cash", self.node, amount), ("bonus", self.node, bonus)]
        entry = self._entry("topup", member, deltas=deltas, amount=amount, paid=amount,
                            bonus=bonus or None, promotion=promo, op=operator,
                            approver=approved if approved != operator else None)
        return self._post(entry, {})

    def debit(self, operator: str, member: str | None = None, *, amount: int | None = None,
              service: str | None = None, qty: int = 1, pay: str = "stored",
              package: str | None = None, card: str | None = None, pin: str | None = None
              ) -> dict[str, Any]:
        """扣费 / 消费. A plain `amount` is charged as given; a `service` from the price
        list gets the member's level discount. Stored value is spent cash first, then
        bonus. Points are earned on what is paid, by level multiplier."""
        self.authorise(operator, "debit")
        member, (profile, totals) = self._resolve(member, card, pin)
        if pay not in ("stored", "package", "cash"):
            raise InvalidInput("pay must be stored, package or cash")
        qty = check_count(qty, "quantity")
        lvl = views.level(self, member, profile, totals)
        rate, svc_name = "1", None
        if service is not None:
            services = self.rule("services")
            if service not in services:
                raise NotFound(f"no service {service} in the price list")
            gross = int(services[service]["price"]) * qty
            svc_name = service
            rate = str(lvl["discount"])
        elif amount is not None and pay != "package":
            gross = check_amount(amount)
        else:
            raise InvalidInput("give an amount or a service")
        net = apply_rate(gross, rate) if pay != "package" else 0
        earn = self.rule("earn")
        points = points_for(net, str(earn["points_per_yuan"]), str(lvl["points_multiplier"]))
        deltas: list[tuple[str, str, int]] = []
        if pay == "package":
            package = package or self._find_package(member, service, qty)
            row = self.storage.conn.execute(
                "SELECT service FROM entries WHERE id = ? AND kind = 'package' AND member = ?",
                (package, member)).fetchone()
            if row is None or row[0] != service:
                raise InvalidInput(f"{package} is not a {service} package of this member")
            deltas = [(f"pkg:{package}", self.node, -qty)]
        expires = self._points_expiry() if points else None

        def plan() -> tuple[list[Write], dict[str, Any]]:
            # Inside the write transaction: the balance split and the escrow check read
            # the rights once, and nothing can move them before the entry commits.
            purses = self._purses(member)
            paid = list(deltas)
            if pay == "stored":
                paid += _spend(self.node, purses, net)
            for purse, _node, change in paid:
                if change < 0:
                    escrow.require(purse, self.node, purses.get(purse, {}), -change, member)
            entry = self._entry(
                "debit", member, deltas=[*paid, ("points", self.node, points)], amount=net,
                gross=gross, discount=rate, level=str(lvl["name"]), service=svc_name, qty=qty,
                pay=pay, package=package, points=points or None, op=operator, expires=expires,
            )
            return [self._entry_write(entry)], entry

        return self._commit(plan)

    def _points_expiry(self) -> str | None:
        days = int(self.rule("earn").get("expire_days") or 0)
        if days <= 0:
            return None
        return (date.fromisoformat(self.today()) + timedelta(days=days)).isoformat()

    def _find_package(self, member: str, service: str | None, qty: int) -> str:
        for pkg in views.packages(self, member):
            if (service is None or pkg["service"] == service) and pkg["remaining"] >= qty:
                return str(pkg["id"])
        raise InsufficientFunds("package uses", 0, qty)

    def _resolve(self, member: str | None, card: str | None, pin: str | None
                 ) -> tuple[str, tuple[dict[str, Any], tuple[int, int]]]:
        """The member a counter operation is for, its profile and totals (one read)."""
        if card is not None:
            c = self.use_card(card, pin)
            if member is not None and member != c["member"]:
                raise InvalidInput(f"card {card} belongs to another member")
            member = str(c["member"])
        if member is None:
            raise InvalidInput("name a member or a card")
        return member, self._live_member(member)

    def refund(self, operator: str, debit_id: str, amount: int | None = None,
               reason: str = "") -> dict[str, Any]:
        """退款. A debit's refund rights stay with the branch that made the debit, so two
        branches can never both refund the same consumption."""
        self.authorise(operator, "refund")
        row = self.storage.conn.execute(
            "SELECT body FROM entries WHERE id = ? AND kind = 'debit'", (debit_id,)
        ).fetchone()
        if row is None:
            raise NotFound(f"no debit {debit_id}")
        debit = json.loads(row[0])
        prior = [json.loads(b) for (b,) in self.storage.conn.execute(
            "SELECT body FROM entries WHERE ref = ? AND kind = 'refund'", (debit_id,))]
        refunded = sum(int(p["amount"]) for p in prior)
        left = int(debit["amount"]) - refunded
        if debit.get("pay") == "package":
            left = int(debit["qty"]) - sum(int(p.get("qty", 0)) for p in prior)
        amount = left if amount is None else check_amount(amount)
        if amount <= 0 or amount > left:
            raise InvalidAmount(f"at most {left} of this debit can still be refunded")
        if debit["node"] != self.node:
            raise RightsElsewhere("refund", amount, 0, {debit["node"]: left})
        member = str(debit["member"])
        deltas: list[tuple[str, str, int]] = []
        qty = None
        if debit.get("pay") == "stored":
            cash_taken = -sum(c for p, _n, c in debit["deltas"] if p == "cash")
            # Earlier refunds credited cash (positive deltas): what is already back.
            cash_back = sum(c for q in prior for p, _n, c in q["deltas"] if p == "cash")
            to_cash = min(amount, cash_taken - cash_back)
            deltas += [("cash", self.node, to_cash), ("bonus", self.node, amount - to_cash)]
        elif debit.get("pay") == "package":
            qty = amount
            deltas.append((f"pkg:{debit['package']}", self.node, amount))
        points = 0
        if debit.get("points") and int(debit["amount"]) > 0:
            due = int(debit["points"]) * amount // int(debit["amount"])
            points = min(due, max(0, self._rights(member, "points").get(self.node, 0)))
            deltas.append(("points", self.node, -points))
        money = 0 if debit.get("pay") == "package" else amount
        entry = self._entry("refund", member, deltas=deltas, amount=money, ref=debit_id,
                            qty=qty, points=points or None, reason=_text(reason, "reason"),
                            op=operator, service=debit.get("service"))
        return self._post(entry, {"points": points})

    def transfer_rights(self, operator: str, member: str, to: str, amount: int,
                        purse: str = "cash") -> dict[str, Any]:
        """Give some of this node's rights on a purse to another branch. Only the holder
        can give its rights away, so this runs at the giving node."""
        self.authorise(operator, "rights.transfer")
        return self._transfer(member, purse, to, check_amount(amount), operator)

    def grant_rights(self, member: str, purse: str, to: str, shortfall: int
                     ) -> dict[str, Any] | None:
        """Answer a peer's request for rights (see escrow.grant_amount); None if none."""
        if not PURSE.match(purse) or not ID.match(member):
            raise RemoteProtocolError("bad rights request")
        check_node_id(to)
        own = self._rights(member, purse).get(self.node, 0)
        give = escrow.grant_amount(own, shortfall)
        if give <= 0 or to == self.node:
            return None
        return self._transfer(member, purse, to, give, f"sync@{self.node}")

    def _transfer(self, member: str, purse: str, to: str, amount: int, operator: str
                  ) -> dict[str, Any]:
        check_node_id(to)
        if to == self.node:
            raise InvalidInput("a branch cannot transfer rights to itself")
        if not PURSE.match(purse):
            raise InvalidInput(f"unknown purse {purse!r}")
        self._live_member(member)
        entry = self._entry("transfer", member, deltas=[(purse, self.node, -amount),
                                                        (purse, to, amount)],
                            amount=amount, to=to, op=operator)
        own = self._rights(member, purse).get(self.node, 0)
        if amount > own:
            raise InvalidAmount(
                f"this branch holds {format_purse(purse, own)} of the member's {purse}; "
                f"it cannot give {format_purse(purse, amount)}")
        return self._post(entry, {purse: amount})

    def redeem_points(self, operator: str, member: str, points: int, gift: str = ""
                      ) -> dict[str, Any]:
        self.authorise(operator, "points.redeem")
        points = check_count(points, "points")
        self._live_member(member)
        entry = self._entry("redeem", member, deltas=[("points", self.node, -points)],
                            points=points, gift=_text(gift, "gift"), op=operator)
        return self._post(entry, {"points": points})

    def convert_points(self, operator: str, member: str, points: int) -> dict[str, Any]:
        """积分转储值: points become bonus value at the chain's conversion rate."""
        self.authorise(operator, "points.redeem")
        points = check_count(points, "points")
        self._live_member(member)
        per_yuan = int(self.rule("conversion")["points_per_yuan"])
        value = points * 100 // per_yuan
        if value <= 0:
            raise InvalidAmount(f"{points} points are worth less than one fen")
        entry = self._entry("convert", member, deltas=[("points", self.node, -points),
                                                       ("bonus", self.node, value)],
                            amount=value, points=points, op=operator)
        return self._post(entry, {"points": points})

    def correct(self, operator: str, member: str, purse: str, change: int, reason: str,
                approver: tuple[str, str] | None = None) -> dict[str, Any]:
        """An approved manual adjustment; a decrease still needs this node's rights."""
        self.authorise(operator, "adjust")
        if not PURSE.match(purse):
            raise InvalidInput(f"unknown purse {purse!r}")
        if isinstance(change, bool) or not isinstance(change, int) or change == 0:
            raise InvalidAmount("a correction is a non-zero whole number")
        check_amount(abs(change))
        reason = _text(reason, "reason", required=True)
        self._live_member(member)
        approved = None
        if purse in MONEY_PURSES and abs(change) > int(self.rule("approval")["correction_limit"]):
            approved = self._approve(operator, approver, f"a correction of {format_yuan(change)}")
        entry = self._entry("correction", member, deltas=[(purse, self.node, change)],
                            amount=abs(change), reason=reason, op=operator,
                            approver=approved if approved != operator else None)
        return self._post(entry, {purse: -change})

    def sell_package(self, operator: str, member: str, service: str, uses: int, price: int,
                     pay: str = "cash") -> dict[str, Any]:
        """计次卡: `uses` of a service, paid at the till or from stored value."""
        self.authorise(operator, "package.sell")
        if service not in self.rule("services"):
            raise NotFound(f"no service {service} in the price list")
        uses = check_count(uses, "uses")
        price = check_amount(price, allow_zero=True)
        self._live_member(member)
        if pay not in ("cash", "stored"):
            raise InvalidInput("a package is paid in cash or from stored value")
        entry = self._entry("package", member, amount=price, service=service, qty=uses, pay=pay,
                            paid=price if pay == "cash" else 0, op=operator)
        deltas = [(f"pkg:{entry['id']}", self.node, uses)]
        needs: dict[str, int] = {}
        if pay == "stored" and price:
            spent = _spend(self.node, self._purses(member), price)
            needs = {purse: -change for purse, _node, change in spent}
            deltas += spent
        entry["deltas"] = [list(d) for d in deltas if d[2]]
        return self._post(entry, needs)

    def expire_points(self, operator: str, member: str) -> dict[str, Any] | None:
        """Write off points past their expiry, as far as this node holds them."""
        self.authorise(operator, "adjust")
        due = views.points(self, member)["expired_unwritten"]
        own = self._rights(member, "points").get(self.node, 0)
        n = min(due, own)
        if n <= 0:
            return None
        entry = self._entry("expiry", member, deltas=[("points", self.node, -n)], points=n,
                            op=operator)
        return self._post(entry, {"points": n})

    # --- views --------------------------------------------------------------

    def balance(self, member: str) -> dict[str, Any]:
        return views.balance(self.storage.conn, member)

    def rights(self, member: str, purse: str = "cash") -> dict[str, int]:
        return {n: a for n, a in sorted(self._rights(member, purse).items()) if a != 0}

    def history(self, member: str, limit: int = 50) -> list[dict[str, Any]]:
        return views.history(self.storage.conn, member, limit)

    def entry(self, entry_id: str) -> dict[str, Any]:
        row = self.storage.conn.execute(
            "SELECT body FROM entries WHERE id = ?", (entry_id,)).fetchone()
        if row is None:
            raise NotFound(f"no entry {entry_id}")
        return dict(json.loads(row[0]))


class _GapFound(Exception):
    """An update applied unchecked turned out to skip clocks (Ledger._apply_remote)."""


def _single_writer_start(update: bytes) -> tuple[int, int] | None:
    """(client, first clock) of a v1 update whose structs all come from one writer,
    else None (several writers, none, or bytes that do not parse: the caller then
    takes the general path, which judges them properly)."""
    try:
        writers, pos = read_varuint(update, 0)
        if writers != 1:  # number of writers with structs in the update
            return None
        _structs, pos = read_varuint(update, pos)
        client, pos = read_varuint(update, pos)
        return client, read_varuint(update, pos)[0]
    except ValueError:
        return None


def _skips_clocks(state: bytes, update: bytes) -> bool:
    """True if `update` holds a writer's changes past a gap in what we have of that
    writer (it was sent after updates we never received).

    Yrs integrates such changes behind a hole without moving the state vector and,
    for later edits inside them, without firing events: the projection would miss
    them for good. So they are refused whole; the diff of the next hello/state round
    brings them with what precedes them. Checked on a scratch document that holds our
    clocks as garbage-collected ranges, so the cost is the update's, not the doc's.
    """
    ours = decode_state_vector(state)
    first = _single_writer_start(update)
    if first is not None and first[1] <= ours.get(first[0], 0):
        # The usual update (one commit of one writer) that starts within what we have
        # of its writer: nothing in it can lie past a hole. The probe below would say
        # the same, at the cost of a document holding every writer's clock.
        return False
    clocks = [(c, k) for c, k in ours.items() if k > 0]
    prefix = write_varuint(len(clocks)) + b"".join(
        write_varuint(1) + write_varuint(c) + write_varuint(0) + b"\x00" + write_varuint(k)
        for c, k in clocks
    ) + b"\x00"
    probe: Doc[Any] = Doc()
    probe.apply_update(prefix)
    probe.apply_update(update)
    # What the probe holds beyond its own state vector: blocks integrated past a hole.
    beyond = get_update(probe.get_update(), probe.get_state())
    return beyond[0] != 0


def _text(value: Any, what: str, *, required: bool = False, limit: int = MAX_TEXT) -> str:
    if value is None:
        value = ""
    if not isinstance(value, str):
        raise InvalidInput(f"{what} must be text")
    text: str = value.strip()
    if "\x00" in text or _unencodable(text):
        # A lone surrogate (valid JSON: "\ud800") makes pycrdt panic and SQLite
        # refuse; NUL ends strings early in C code that shows them.
        raise InvalidInput(f"{what} contains characters that are not text")
    if required and not text:
        raise InvalidInput(f"{what} is required")
    if len(text) > limit:
        raise InvalidInput(f"{what} is longer than {limit} characters")
    return text


def _unencodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _check_date(value: str, what: str) -> None:
    try:
        date.fromisoformat(value)
    except (TypeError, ValueError):
        raise InvalidInput(f"{what} must be a date like 2026-11-23, not {value!r}") from None


def _card_no(value: str) -> str:
    value = _text(value, "card number", required=True, limit=40)
    if not re.match(r"^[0-9A-Za-z:_-]{1,40}$", value):
        raise InvalidInput(f"card number {value!r} has characters a card cannot carry")
    return value.upper()


def _member_fields(fields: Mapping[str, Any], *, creating: bool) -> dict[str, Any]:
    unknown = set(fields) - set(MEMBER_FIELDS)
    if unknown:
        raise InvalidInput(f"unknown member fields {sorted(unknown)}")
    out: dict[str, Any] = {}
    for k, v in fields.items():
        if k == "deleted":
            if not isinstance(v, bool):  # bool("false") is True: a form's text must not delete
                raise InvalidInput(f"deleted must be true or false, not {v!r}")
            out[k] = v
            continue
        out[k] = _text(v, k, required=k == "name" or (creating and k == "phone"))
    if "phone" in out and out["phone"] and not PHONE.match(out["phone"]):
        raise InvalidInput(f"phone {out['phone']!r} is not a phone number")
    if out.get("gender") and out["gender"] not in ("F", "M"):
        raise InvalidInput("gender is F, M or empty")
    for k in ("birthday", "anniversary"):
        if out.get(k) and not re.match(r"^(\d{4}-)?\d{2}-\d{2}$", out[k]):
            raise InvalidInput(f"{k} must look like 1990-05-17 or 05-17")
    if out.get("home"):
        check_node_id(out["home"])
    return out


def _prefs(prefs: Mapping[str, str]) -> dict[str, str]:
    unknown = set(prefs) - set(PREF_KEYS)
    if unknown:
        raise InvalidInput(f"unknown preferences {sorted(unknown)}; one of {PREF_KEYS}")
    return {k: _text(v, k, limit=60) for k, v in prefs.items()}


def _whole(value: Any) -> int:
    """A rule's amount in fen: int() would silently cut 12.7 (or yuan typed as 128.5)."""
    if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
        raise InvalidAmount(f"{value!r} is not a whole number of fen")
    return int(value)


def _check_rule(kind: str, body: Any) -> None:
    """Enough shape checking that a bad rule cannot break operations at other nodes."""
    try:
        if kind == "services":
            assert isinstance(body, dict) and body
            for code, svc in body.items():
                assert re.match(r"^[A-Za-z0-9_-]{1,20}\Z", code)
                check_amount(_whole(svc["price"]), allow_zero=True)
                assert isinstance(svc.get("name", ""), str)
        elif kind == "levels":
            assert isinstance(body, list) and body
            for lv in body:
                check_amount(int(lv["threshold"]), allow_zero=True)
                assert 0 < Decimal(str(lv["discount"])) <= 1
                # Bounded, so finite: an "Infinity" multiplier or earn rate would
                # overflow in every debit at every branch once the rule replicates.
                assert 0 <= Decimal(str(lv["points_multiplier"])) <= 100
                assert isinstance(lv["name"], str)
        elif kind == "promotions":
            assert isinstance(body, list)
            for p in body:
                check_amount(_whole(p["min"]))
                check_amount(_whole(p["bonus"]))
        elif kind == "earn":
            assert 0 <= Decimal(str(body["points_per_yuan"])) <= 1000
            assert 0 <= int(body["expire_days"]) <= 36500  # far below timedelta's limit
        elif kind == "conversion":
            assert int(body["points_per_yuan"]) > 0
        elif kind == "approval":
            check_amount(int(body["topup_limit"]))
            check_amount(int(body["correction_limit"]))
        elif kind == "level_basis":
            assert body["basis"] in ("topped", "spent")
        elif kind == "revocations":
            # Base64 text only: whether it is a CRL signed by the chain CA is checked
            # by each node before installing it (peer/chain.py), not here.
            assert isinstance(body, dict) and isinstance(body["crl"], str)
            assert re.match(r"^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?\Z",
                            body["crl"])
        else:
            assert isinstance(body, dict)
    except (AssertionError, KeyError, TypeError, ValueError, ArithmeticError, LedgerError) as e:
        raise InvalidInput(f"rule {kind} is malformed: {e or 'bad shape'}") from None


__all__ = ["Ledger", "Write", "check_secret", "hash_secret", "owner_of"]
