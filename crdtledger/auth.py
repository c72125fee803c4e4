"""Operators, roles and permissions: who may do what at this node.

Passwords and card PINs are stored as salted scrypt hashes (`hash_secret`).
"""

from __future__ import annotations

import contextvars
import hashlib
import hmac
import json
import secrets
import weakref
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from pycrdt import Map

from crdtledger.commit import LedgerBase, Write, note_edit, put
from crdtledger.errors import ApprovalRequired, InvalidInput, NotFound, PermissionDenied
from crdtledger.inputs import check_text, seen_as
from crdtledger.log import Record
from crdtledger.model import BUILTIN_ROLES, EDITS, PERMISSIONS, SELF_SERVICE, self_service_of
from crdtledger.storage import Storage
from crdtledger.throttle import LoginThrottle

# Key stretching for operator passwords and card PINs. A PIN has few digits, so the
# hash is salted per card and deliberately slow (scrypt, ~30 ms).
_SCRYPT = {"n": 2**14, "r": 8, "p": 1}


def hash_secret(secret: str, salt: bytes | None = None) -> str:
    """`scrypt$salt$digest`, what an operator's or card's record keeps of a secret."""
    salt = salt or secrets.token_bytes(16)
    digest = hashlib.scrypt(secret.encode(), salt=salt, dklen=32, **_SCRYPT)
    return f"scrypt${salt.hex()}${digest.hex()}"


def check_secret(secret: str, stored: str) -> bool:
    """Whether `secret` matches what hash_secret stored; False for a malformed hash,
    compared in constant time."""
    try:
        _, salt, digest = stored.split("$")
        got = hashlib.scrypt(secret.encode(), salt=bytes.fromhex(salt), dklen=32, **_SCRYPT)
    except ValueError:
        return False
    return hmac.compare_digest(got.hex(), digest)


# What a login is checked against when there is no such active operator: a
# well-formed hash (same scrypt cost) that no password matches (scrypt's output is
# never all zeros in practice), so an unknown name costs the same ~30 ms as a known
# one and the time of the answer does not tell names apart.
DUMMY_HASH = f"scrypt${'00' * 16}${'00' * 32}"


@dataclass(frozen=True)
class LoginRecord:
    """What a login needs from the ledger, read on the ledger's thread (`login_record`),
    so that the slow part (`verify_login`) can run on any thread."""

    operator: str | None  # None: no active operator of that name
    stored: str  # the hash to check the password against (DUMMY_HASH if operator is None)


def verify_login(record: LoginRecord, password: str) -> str:
    """The operator id if `password` is right, else PermissionDenied. Pure and slow
    (scrypt): the node and the counter run it off the event loop. The hash is always
    checked, for unknown names too, so refusals take the same time."""
    ok = check_secret(password, record.stored)
    if record.operator is None or not ok:
        raise PermissionDenied("wrong operator name or password")
    return record.operator


@dataclass
class ApprovalCheck:
    """An approver's password checked ahead of the operation that needs it, so that the
    slow part runs off the event loop as a login's does: `Auth.check_approver_ahead`
    (on the ledger's thread) counts the attempt and reads the hash, `run` (any thread)
    checks it, `Auth.checked_ahead` (on the ledger's thread) counts the outcome. The
    operation's approval then takes this answer instead of hashing on the ledger's
    thread, until `Auth.forget_check` (after the operation, retries included)."""

    operator: str  # who asks
    name: str  # the approver, as typed
    password: str
    record: LoginRecord
    approver: str | None = None  # the approver's id once `run` found the password right

    def run(self) -> None:
        try:
            self.approver = verify_login(self.record, self.password)
        except PermissionDenied:
            self.approver = None


class PasswordChanged(PermissionDenied):
    """A password checked off the ledger's thread was replaced meanwhile (Auth.still_current)."""


class TooManyAttempts(PermissionDenied):
    """Refused unchecked: too many wrong passwords of an approver, or wrong PINs of a
    card, in a row (crdtledger.throttle). `retry_after`: whole seconds to wait."""

    code = "too_many_attempts"

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


# Who runs the operation under way (set by `Auth.authorise`, which every operation
# begins with): the "client" a throttle counts a wrong approver password or card PIN
# against, next to the name or card. A context variable, not an attribute of the
# ledger: a card checked outside any operation (the counter's PIN dialog) must not be
# charged to whoever ran the last operation on another till.
_ACTING: contextvars.ContextVar[str | None] = contextvars.ContextVar("acting", default=None)


def acting_client(fallback: str) -> str:
    """The throttle's client key of the operation under way: its operator, else
    `fallback` (a key of the thing checked itself, so no two unrelated checks ever
    share a lock)."""
    operator = _ACTING.get()
    return _asker(operator) if operator is not None else fallback


def _asker(operator: str) -> str:
    """The throttle's client key of an operator asking (a PIN, an approver's password)."""
    return f"operator:{operator}"


# --- the end of sessions ------------------------------------------------------------
# A token given at a login must stop working when its operator's password changes or
# the operator is deactivated, here or at another branch (the change arrives by sync).
# Each ledger watches its `operators` document (local writes and applied records go
# through the same listeners) and tells every watcher which operators' credentials
# changed. Watchers are the session stores (peer.api.Sessions), which hold tokens but
# no ledger; they register here. Operator ids are unique in the chain, so a watcher
# told of an operator it has no session of has nothing to do.


class CredentialsWatcher(Protocol):
    def credentials_changed(self, operators: frozenset[str]) -> None: ...


_WATCHERS: weakref.WeakSet[CredentialsWatcher] = weakref.WeakSet()


def watch_credentials(watcher: CredentialsWatcher) -> None:
    """Tell `watcher` whenever an operator's password changes or the operator is
    deactivated (held weakly: a watcher dropped is forgotten)."""
    _WATCHERS.add(watcher)


def _credentials_changed(operators: frozenset[str]) -> None:
    for watcher in list(_WATCHERS):
        watcher.credentials_changed(operators)


def _credentials(body: Mapping[str, Any]) -> str:
    """What a session depends on in an operator's record: the password hash (a new
    salt each time it is set, so even the same password set again counts as a
    change), whether the operator is active, and every deactivation noted (model.EDITS):
    a cashier fired and later taken back found the till he had left open signed in
    again, the digest being what it was before. Roles are read on every request."""
    active = bool(body.get("active", True))
    edits = body.get(EDITS)
    ended = sorted(str(change) for change, note in
                   (edits.items() if isinstance(edits, dict) else ())
                   if isinstance(note, dict) and isinstance(note.get("fields"), list)
                   and "active=false" in note["fields"])
    return hashlib.sha256(json.dumps([active, str(body.get("password", "")), ended])
                          .encode()).hexdigest()


# The names the audit trail and the counter show for the built-in operators
# (reference_app.shop.Shop.operator_name), casefolded.
_BUILTIN_NAMES = frozenset({"店主", "owner", "会员自助", "member self-service"})


def _looks_built_in(name: str) -> bool:
    """Whether `name` reads as a built-in operator's, however it is written: full-width
    letters (NFKC), what shows as nothing (a zero-width space, a soft hyphen, a
    variation selector, a combining mark, a Hangul filler) and case do not make
    `ｏｗｎｅｒ`, `店\u200b主` or `店\ufe00主` another name. Only compared, never stored."""
    seen = seen_as(name)
    return seen.startswith(("owner@", "self@")) or seen in _BUILTIN_NAMES


class Auth(LedgerBase):
    """Operators and roles (replicated in the `operators` document), permissions,
    and approvals of large amounts."""

    def __init__(self, storage: Storage, now_ms: Callable[[], int] | None = None) -> None:
        super().__init__(storage, now_ms)
        # Failed approver passwords, per approver name and per operator asking: the
        # node gives its login throttle (`logins`), so a name locked at /login is
        # locked for approvals too and the other way round.
        self.logins = LoginThrottle()
        self._ahead: list[ApprovalCheck] = []  # approver checks run off the loop
        # Wrong card PINs, per card and per operator asking (`use_card`).
        self.pins = LoginThrottle()
        self._credentials_seen = self._read_credentials()
        self.subscribe(self._watch_credentials)

    def _read_credentials(self) -> dict[str, str]:
        return {oid: _credentials(json.loads(body)) for oid, body in
                self.storage.conn.execute("SELECT id, body FROM operators")}

    def _watch_credentials(self, record: Record, _origin: object) -> None:
        """After each committed record, local or from a peer: if it touched the
        operators, end the sessions of those whose password or active flag changed."""
        if record.doc != "operators":
            return
        now = self._read_credentials()
        changed = frozenset(oid for oid, seen in self._credentials_seen.items()
                            if now.get(oid) != seen)
        self._credentials_seen = now
        if changed:
            _credentials_changed(changed)

    def credentials(self, operator: str) -> str | None:
        """What a session of `operator` rests on, as a digest that changes when its
        password is set or it is deactivated (None: no such operator). Sessions kept
        by callers without a watcher (the counter's browser sessions) compare it on
        each use, as `watch_credentials` ends the API's tokens."""
        row = self.storage.conn.execute(
            "SELECT body FROM operators WHERE id = ?", (operator,)
        ).fetchone()
        return None if row is None else _credentials(json.loads(row[0]))

    # --- permissions --------------------------------------------------------

    def permissions(self, operator: str) -> frozenset[str]:
        if operator == self.owner:
            return PERMISSIONS
        if operator == self_service_of(self.node):  # a member on the self-service pages
            return SELF_SERVICE
        data = self._operator_data(operator)
        if data is None or not data.get("active", True):
            return frozenset()
        return self._granted(data)

    def granted_to(self, operator: str) -> frozenset[str]:
        """What an operator's roles grant, active now or not: what a decision it made
        is judged by, so that it stands after the operator leaves (a referral rejected
        by a manager later deactivated was paid)."""
        if operator == self.owner:
            return PERMISSIONS
        data = self._operator_data(operator)
        return frozenset() if data is None else self._granted(data)

    def _operator_data(self, operator: str) -> dict[str, Any] | None:
        row = self.storage.conn.execute(
            "SELECT body FROM operators WHERE id = ?", (operator,)).fetchone()
        return None if row is None else dict(json.loads(row[0]))

    def _granted(self, data: Mapping[str, Any]) -> frozenset[str]:
        """What an operator's roles grant, active or not."""
        perms: set[str] = set()
        roles = data.get("roles")
        for role, on in (roles.items() if isinstance(roles, dict) else ()):
            if on:
                perms |= self._role_permissions(role)
        return frozenset(perms)

    def _role_permissions(self, role: str) -> frozenset[str]:
        custom = self.storage.conn.execute(
            "SELECT body FROM roles WHERE name = ?", (role,)).fetchone()
        if custom is not None:
            return frozenset(p for p, v in json.loads(custom[0]).items()
                             if v and p in PERMISSIONS)
        return BUILTIN_ROLES.get(role, frozenset())

    def _may_grant(self, operator: str, perms: Iterable[str], what: str) -> None:
        """Whoever manages operators gives nobody more than they hold themselves: an
        operator given only `operators.manage` made itself owner (and a role of every
        permission), then raised the approval limits and approved its own."""
        beyond = sorted(set(perms) - self.permissions(operator))
        if beyond:
            raise PermissionDenied(f"operator {operator} cannot give {what}: it would grant "
                                   f"{', '.join(beyond)}, which {operator} does not hold")

    def authorise(self, operator: str, permission: str) -> None:
        # Every operation starts here: a sweep an operation refused before its commit
        # still owed (merge.Merges._owe_sweep) is not this one's to write.
        self._owed = None
        _ACTING.set(operator)  # whom a wrong PIN or approver password counts against
        if permission not in self.permissions(operator):
            raise PermissionDenied(f"operator {operator} may not {permission}")

    def _approve(self, operator: str, approver: tuple[str, str] | None, what: str) -> str:
        """Amounts above a limit need a second person: another operator allowed to
        approve, who types their own password at this till. It binds everyone, the
        built-in owner at the console included, and nobody approves their own
        operation: the approver is recorded on the entry."""
        if approver is None:
            raise ApprovalRequired(f"{what} needs an approver: another operator allowed "
                                   "to approve, with their name and password")
        # A login by another door: throttled as one (crdtledger.throttle), by the
        # approver's name and by the operator asking. Locked, it is refused before
        # the password is looked at, so a guesser learns nothing, not even a right
        # guess; a wrong password counts against the name's logins too, once the
        # node shares its login throttle (`logins`).
        name, password = approver
        ahead = self._checked_ahead_for(operator, name, password)
        if ahead is not None:  # checked (and counted) off the loop before the operation
            if ahead.approver is None:
                raise PermissionDenied("wrong operator name or password")
            self.still_current(name, ahead.record)
            approver_id = ahead.approver
        else:
            client = _asker(operator)
            wait = self.logins.begin(name, client)
            if wait:
                raise TooManyAttempts(
                    f"too many failed logins or approvals for {name} or by this operator; "
                    f"try again in {wait} s", wait)
            # scrypt on this thread (the command line, the counter, an API without
            # `check_approver_ahead`): an operation is one synchronous ledger write.
            # The throttle bounds it: a run of wrong passwords costs at most
            # FREE_FAILURES checks before the name and the asker are locked.
            approver_id = verify_login(self.login_record(name), password)
            self.logins.succeeded(name, client)
        if approver_id == operator:
            own = what.split(" ", 1)[1] if what.startswith(("a ", "an ")) else what
            raise ApprovalRequired(f"{approver[0]} cannot approve their own {own}")
        if "approve" not in self.permissions(approver_id):
            raise ApprovalRequired(f"{approver[0]} may not approve {what}")
        return approver_id

    def check_approver_ahead(self, operator: str, name: str, password: str
                             ) -> ApprovalCheck | None:
        """The first half of checking an approver's password before the operation that
        may need it (see ApprovalCheck), on the ledger's thread: the attempt counted
        as a failure until `checked_ahead` says otherwise. None while the name or the
        operator asking is locked out: the operation refuses it then, if it needs an
        approver at all."""
        if self.logins.begin(name, _asker(operator)):
            return None
        return ApprovalCheck(operator, name, password, self.login_record(name))

    def checked_ahead(self, check: ApprovalCheck) -> None:
        """The last half, on the ledger's thread once `check.run` is done: a right
        password forgives the name's and the asker's failures; the answer waits for
        the operation."""
        if check.approver is not None:
            self.logins.succeeded(check.name, _asker(check.operator))
        self._ahead.append(check)

    def forget_check(self, check: ApprovalCheck) -> None:
        """The operation is over: its approver check is no one else's."""
        self._ahead = [c for c in self._ahead if c is not check]

    def _checked_ahead_for(self, operator: str, name: str, password: str
                           ) -> ApprovalCheck | None:
        for c in self._ahead:
            if (c.operator, c.name) == (operator, name) and hmac.compare_digest(
                    c.password.encode("utf-8", "surrogatepass"),
                    password.encode("utf-8", "surrogatepass")):
                return c
        return None

    # --- operators ----------------------------------------------------------

    def add_operator(self, operator: str, name: str, password: str,
                     roles: Iterable[str] = ("cashier",)) -> str:
        self.authorise(operator, "operators.manage")
        name = check_text(name, "operator name", required=True, limit=40)
        if _looks_built_in(name):
            # The audit trail and the counter show the built-in operators so: a cashier
            # so named read, in the trail, as the owner at the console.
            raise InvalidInput(f"operator name {name!r} is how the built-in operators "
                               "(the owner at the console, member self-service) are shown: "
                               "choose another")
        if not isinstance(password, str) or len(password) < 6:
            raise InvalidInput("password must have at least 6 characters")
        if self._operator_by_name(name) is not None:
            raise InvalidInput(f"an operator named {name} exists already")
        # Nor one only written otherwise: "ａｍｙ" (an input method's full width) or
        # "Amy" beside amy read as amy in the audit trail and the counter's lists, so
        # what one did was read as the other's. Operators are few: all are looked at.
        for (other,) in self.storage.conn.execute("SELECT name FROM operators"):
            if isinstance(other, str) and seen_as(other) == seen_as(name):
                raise InvalidInput(f"operator name {name} reads as {other}'s, an operator "
                                   "who exists already: choose another")
        role_map = {r: True for r in roles}
        for r in role_map:
            self._check_role_exists(r)
            self._may_grant(operator, self._role_permissions(r), f"role {r}")
        oid = self.clock.mint()
        data = {"name": name, "password": hash_secret(password), "active": True,
                "roles": Map(role_map), "created_by": operator, EDITS: Map()}
        self._write(put("operators", "operators", oid, Map(data)))
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
        if roles and target == operator and operator != self.owner:
            raise PermissionDenied("an operator cannot change its own roles: another "
                                   "operator who manages operators does")
        for r, on in (roles or {}).items():
            if on:
                self._may_grant(operator, self._role_permissions(r), f"role {r}")
        if target != operator:
            # Nor take over one who holds more (a new password, then its approvals),
            # active or not: a retired owner given a new password and made active again
            # by one who manages operators only was an owner account in her hands.
            row = self.storage.conn.execute(
                "SELECT body FROM operators WHERE id = ?", (target,)).fetchone()
            self._may_grant(operator, self._granted(json.loads(row[0])),
                            f"operator {target}'s account a change")
        if password is not None and (not isinstance(password, str) or len(password) < 6):
            raise InvalidInput("password must have at least 6 characters")
        pw = hash_secret(password) if password is not None else None
        change = self.clock.mint()
        changed = [*(["password"] if pw is not None else []),
                   *([f"active={str(bool(active)).lower()}"] if active is not None else []),
                   *(f"roles.{r}={str(bool(on)).lower()}" for r, on in (roles or {}).items())]

        def mutate(root: Map[Any]) -> None:
            m = root[target]
            if pw is not None:
                m["password"] = pw
            if active is not None:
                m["active"] = active
            for r, on in (roles or {}).items():
                m["roles"][r] = bool(on)
            note_edit(m, change, operator, changed)

        self._write(Write("operators", "operators", target, mutate))

    def define_role(self, operator: str, name: str, permissions: Iterable[str]) -> None:
        self.authorise(operator, "operators.manage")
        perms = set(permissions)
        unknown = perms - PERMISSIONS
        if unknown:
            raise InvalidInput(f"unknown permissions {sorted(unknown)}")
        name = check_text(name, "role name", required=True, limit=40)
        self._may_grant(operator, perms, f"role {name}")
        # Nor take from a role what one does not hold: redefining `owner` as
        # `operators.manage` alone, by one who holds only that, stripped every owner
        # of the chain and left their accounts within her reach.
        self._may_grant(operator, self._role_permissions(name), f"role {name} a change")
        for oid, body in self.storage.conn.execute("SELECT id, body FROM operators"):
            data = json.loads(body)
            roles = data.get("roles")
            if oid != operator and isinstance(roles, dict) and roles.get(name):
                self._may_grant(operator, self._granted(data),
                                f"role {name}, held by operator {oid}, a change")
        roles = self.storage.doc("operators").roots["roles"]
        exists = name in roles
        # Nor a new one that reads as another ("owner" with a Cyrillic о, "Manager", "前台"
        # with a zero-width space): the operators' list said a cashier held owner, and whoever
        # granted a role picked by a name that read as the other's.
        if not exists and name not in BUILTIN_ROLES:
            for other in (*BUILTIN_ROLES, *roles.keys()):
                if seen_as(other) == seen_as(name):
                    raise InvalidInput(f"role name {name} reads as {other}'s, a role that "
                                       f"exists already: choose another, or redefine {other}")
        # `role define --name owner` with no permission printed "role owner: nothing",
        # exit 0, and every named owner of the chain could do nothing. A role that
        # exists (built in or defined) is not emptied: take the role from its holders,
        # or deactivate them. A new role may start empty (the back office makes one,
        # then ticks its permissions): nobody holds it yet.
        if not perms and (exists or name in BUILTIN_ROLES):
            raise InvalidInput(f"role {name} would grant nothing: name at least one "
                               "permission (--permission), or take the role from its "
                               "operators instead")
        # The built-in `owner` keeps every permission: it is what restores every other
        # role (one who redefines a role must hold all it grants), and a narrowed owner
        # stored as a list would lack each permission a later release adds. Manager and
        # cashier may be narrowed (design notes, staff: redefined only by one who holds
        # more); a chain wanting a lesser owner defines a role of its own.
        if name == "owner" and perms != PERMISSIONS:
            raise InvalidInput("role owner always holds every permission (it restores every "
                               "other role): define a role of your own for less, and give it "
                               "instead")
        change = self.clock.mint()

        def mutate(root: Map[Any]) -> None:
            # A role's Map holds its permissions and, beside them, who changed which
            # (EDITS: not a permission, so permission checks pass it over).
            was = {p: bool(root[name].get(p)) for p in PERMISSIONS} if exists else {}
            if exists:
                for p in PERMISSIONS:
                    root[name][p] = p in perms
            else:
                root[name] = Map({p: p in perms for p in PERMISSIONS})
            note_edit(root[name], change, operator, [
                f"{p}={str(p in perms).lower()}" for p in PERMISSIONS
                if was.get(p, False) != (p in perms)])

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

    def login_record(self, name: str) -> LoginRecord:
        """The first half of a login, a fast read: whom `name` names and the hash to
        check. An unknown or disabled name, or one without a usable hash, gets
        DUMMY_HASH, so checking it costs the same."""
        found = self._operator_by_name(name)
        if found is None or not found[1].get("active", True):
            return LoginRecord(None, DUMMY_HASH)
        stored = str(found[1].get("password", ""))
        if stored.count("$") != 2:
            return LoginRecord(None, DUMMY_HASH)
        return LoginRecord(found[0], stored)

    def still_current(self, name: str, record: LoginRecord) -> None:
        """After a password was checked off this thread against `record`: refused if
        `name`'s record changed meanwhile (its password set, or the operator turned
        off). A reset ends the sessions it finds; a login checked against the old
        password while the reset committed opened its session after, and kept it."""
        if self.login_record(name) != record:
            raise PasswordChanged(f"the password of {name} changed while it was being "
                                  "checked: try again with the new one")

    def authenticate(self, name: str, password: str) -> str:
        """Both halves on this thread, for the command line on its own store (no loop
        to keep responsive). The node and the counter split them."""
        return verify_login(self.login_record(name), password)
