"""Operators, roles and permissions: who may do what at this node.

Passwords and card PINs are stored as salted scrypt hashes (`hash_secret`).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pycrdt import Map

from crdtledger.commit import LedgerBase, Write, note_edit, put
from crdtledger.errors import ApprovalRequired, InvalidInput, NotFound, PermissionDenied
from crdtledger.inputs import check_text
from crdtledger.model import BUILTIN_ROLES, EDITS, PERMISSIONS, SELF_SERVICE, self_service_of

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


class Auth(LedgerBase):
    """Operators and roles (replicated in the `operators` document), permissions,
    and approvals of large amounts."""

    # --- permissions --------------------------------------------------------

    def permissions(self, operator: str) -> frozenset[str]:
        if operator == self.owner:
            return PERMISSIONS
        if operator == self_service_of(self.node):  # a member on the self-service pages
            return SELF_SERVICE
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
        # Every operation starts here: a sweep an operation refused before its commit
        # still owed (merge.Merges._owe_sweep) is not this one's to write.
        self._owed = None
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
        approver_id = self.authenticate(*approver)
        if approver_id == operator:
            raise ApprovalRequired(f"{approver[0]} cannot approve their own {what}")
        if "approve" not in self.permissions(approver_id):
            raise ApprovalRequired(f"{approver[0]} may not approve {what}")
        return approver_id

    # --- operators ----------------------------------------------------------

    def add_operator(self, operator: str, name: str, password: str,
                     roles: Iterable[str] = ("cashier",)) -> str:
        self.authorise(operator, "operators.manage")
        name = check_text(name, "operator name", required=True, limit=40)
        if not isinstance(password, str) or len(password) < 6:
            raise InvalidInput("password must have at least 6 characters")
        if self._operator_by_name(name) is not None:
            raise InvalidInput(f"an operator named {name} exists already")
        role_map = {r: True for r in roles}
        for r in role_map:
            self._check_role_exists(r)
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
        roles = self.storage.doc("operators").roots["roles"]
        exists = name in roles
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

    def authenticate(self, name: str, password: str) -> str:
        """Both halves on this thread, for the command line on its own store (no loop
        to keep responsive). The node and the counter split them."""
        return verify_login(self.login_record(name), password)
