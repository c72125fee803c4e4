"""Member profiles: registration, field-by-field edits, search."""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Iterable, Mapping
from datetime import date
from typing import TYPE_CHECKING, Any, cast

from pycrdt import Map

from crdtledger import erasure, views
from crdtledger.auth import Auth
from crdtledger.commit import Write, note_edit, put, sub_map
from crdtledger.errors import InvalidInput, NotFound
from crdtledger.hlc import check_node_id
from crdtledger.inputs import MAX_TEXT, check_text, seen_as
from crdtledger.model import EDITS, GENDERS, PARTIAL_DATE, canonical_phone, member_doc
from crdtledger.notices import NOTICE_FIELDS, check_notice_fields

if TYPE_CHECKING:
    from crdtledger.ledger import Ledger

MEMBER_FIELDS = ("name", "phone", "gender", "birthday", "anniversary", "home", "level",
                 "notes", "deleted", "id_no", *NOTICE_FIELDS)
PREF_KEYS = ("strength", "service", "technician")
# 7 to 20 digits (a local landline has 7; a mobile 11), spaces and dashes between:
# "12345" was taken, and nobody could reach the member or find her by it. Counted
# without a lookahead, which the API's schema tests (hypothesis) generate slowly.
PHONE = re.compile(r"^\+?[0-9](?:[ -]{0,3}[0-9]){6,19}$")
PHONE_MAX = 21  # characters, as the pattern before digits were counted took them
# A resident ID card number (居民身份证号): 18 characters, the last a check digit or X
# (GB 11643, ISO 7064 MOD 11-2), or the old 15 digits. Optional; duplicates compare it.
ID_NO = re.compile(r"^([0-9]{17}[0-9Xx]|[0-9]{15})\Z")
# The earliest birthday taken: one before it is a typo (1890 for 1980).
BIRTH_FROM = "1900-01-01"
_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)


class Members(Auth):
    """A member is a nested Map, so that concurrent edits of different fields at two
    branches both survive."""

    # --- members ------------------------------------------------------------

    def add_member(self, operator: str, *, name: str, phone: str, gender: str = "",
                   birthday: str = "", anniversary: str = "", home: str | None = None,
                   notes: str = "", tags: Iterable[str] = (),
                   prefs: Mapping[str, str] | None = None,
                   custom: Mapping[str, str] | None = None, id_no: str = "",
                   **notice: str) -> str:
        """`notice`: email, lang, promo (crdtledger.notices.NOTICE_FIELDS)."""
        self.authorise(operator, "member.add")
        fields = _member_fields(
            {"name": name, "phone": phone, "gender": gender, "birthday": birthday,
             "anniversary": anniversary, "home": home or self.node, "notes": notes,
             **({"id_no": id_no} if id_no else {}), **notice}, self.today())
        self._require_home(fields["home"])
        if _phone_holders(self.storage.conn, fields["phone"]):
            raise InvalidInput(f"phone {fields['phone']} is registered to another member")
        prefs_d = _prefs(prefs or {})
        custom_d = _custom_set({}, custom or {})
        tag_d = _tags_set({}, tags, True)
        mid = self.clock.mint()

        record = Map({**fields, "created_by": operator, "prefs": Map(prefs_d),
                      "tags": Map(tag_d), "custom": Map(custom_d), EDITS: Map()})
        self._write(put(member_doc(mid), "members", mid, record))
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
        held = views.member(self, member)  # type: ignore[arg-type]
        if held.get("erased"):
            raise InvalidInput(f"member {member} was erased: its data cannot be written again")
        fields = dict(fields or {})
        if "level" in fields:
            self.authorise(operator, "member.upgrade")
            names = [str(lv["name"]) for lv in self.rule("levels")]  # type: ignore[attr-defined]
            if fields["level"] not in ("", None, *names):
                # Kept as typed, it showed in the profile and counted for nothing.
                raise InvalidInput(f"level {str(fields['level'])[:40]!r} is none of the "
                                   f"chain's levels: {', '.join(names)}")
        if "deleted" in fields:
            self.authorise(operator, "member.delete")
        f = _member_fields(fields, self.today())
        if f.get("home"):  # a home kept as it was is not judged again (a retired branch)
            (home,) = self.storage.conn.execute(
                "SELECT home FROM members WHERE id = ?", (member,)).fetchone()
            if f["home"] != home:
                self._require_home(f["home"])
        # A duplicate merged into this member is her: she may take its phone (found
        # by ID number, the duplicate may hold the one she uses now).
        conn = self.storage.conn
        if f.get("phone") and _phone_holders(conn, f["phone"]) - set(
                views.member_group(conn, member)):
            raise InvalidInput(f"phone {f['phone']} is registered to another member")
        prefs_d = _prefs(prefs or {})
        custom_d = _custom_set(held.get("custom") or {}, custom or {})
        tags = _tags_set(held["tags"], tags_add, True)
        tags |= _tags_set(held["tags"], tags_remove, False)
        change = self.clock.mint()
        changed = [*f, *(f"prefs.{k}" for k in prefs_d), *(f"custom.{k}" for k in custom_d),
                   *(["tags"] if tags else [])]

        def mutate(root: Map[Any]) -> None:
            m = root[member]
            for k, v in f.items():
                m[k] = v
            for sub, values in (("prefs", prefs_d), ("custom", custom_d), ("tags", tags)):
                for k, v in values.items():
                    sub_map(m, sub)[k] = v
            note_edit(m, change, operator, changed)

        self._write(Write(member_doc(member), "members", member, mutate))

    def _require_home(self, home: str) -> None:
        """Refuse a home branch the chain does not know, by the very test rights and
        stock transfers pass (Payments._require_branch, on views.branches_known): a
        typo (SH99 for SH09) would file the member under a branch no report, segment
        or settlement ever shows, and nothing would say so. This node itself is always
        a home: a new branch registers members before anyone has listed it."""
        if home == self.node:
            return
        try:
            cast("Ledger", self)._require_branch(home, "a member's stored value")
        except InvalidInput as e:
            raise InvalidInput(f"{home} cannot be a member's home branch, nothing was "
                               f"changed: {e}") from None

    def erase_member(self, operator: str, member: str) -> dict[str, Any]:
        """Erase a member's personal data on every replica (crdtledger.erasure)."""
        return erasure.erase_member(self, operator, member)  # type: ignore[arg-type]

    def find_members(self, query: str, limit: int = 20) -> list[dict[str, Any]]:
        return views.find_members(self.storage.conn, check_text(query, "search"), limit,
                                  left=cast("Ledger", self).has_left)

    def _gone(self, member: str) -> str | None:
        """Why value given to `member` now would be stranded (deleted, erased or left),
        or None: nothing can be sold to or for them, so nothing could spend it."""
        row = self.storage.conn.execute(
            "SELECT body FROM members WHERE id = ?", (member,)).fetchone()
        if row is None:
            return None
        return _gone(member, json.loads(row[0]), cast("Ledger", self).has_left(member))

    def _live_member(self, member: str) -> tuple[dict[str, Any], tuple[int, int]]:
        """The member's profile and cumulative (spent, topped): one indexed read on the
        debit path, not the whole member view."""
        row = self.storage.conn.execute(
            "SELECT m.body, t.spent, t.topped FROM members m "
            "LEFT JOIN totals t ON t.member = m.id WHERE m.id = ?", (member,)).fetchone()
        if row is None:
            raise NotFound(f"unknown member {member}")
        profile: dict[str, Any] = json.loads(row[0])
        gone = _gone(member, profile, cast("Ledger", self).has_left(member))
        if gone:
            raise InvalidInput(gone)
        return profile, (int(row[1] or 0), int(row[2] or 0))


def _tags_set(held: Iterable[str], typed: Iterable[str], on: bool) -> dict[str, bool]:
    """The tags' keys to set to `on`, a tag as a reader sees it (inputs.seen_as): "ＶＩＰ"
    added to a member tagged VIP is hers already (two VIP tags were shown), "ｖｉｐ"
    removed takes VIP away (it was kept, and the edit said done)."""
    held_as = {seen_as(h): h for h in held}
    out: dict[str, bool] = {}
    for t in typed:
        tag = check_text(t, "tag", required=True, limit=40)
        seen = seen_as(tag)
        key = held_as.get(seen, tag)
        if on and (seen in held_as or any(seen_as(k) == seen for k in out)):
            continue
        out[key] = on
    return out


def _custom_set(held: Mapping[str, Any], typed: Mapping[str, Any]) -> dict[str, str]:
    """The custom fields to write, a field's name as a reader sees it (inputs.seen_as):
    "来源\u200b" or "ＳＯＵＲＣＥ" beside a member's 来源 or source wrote a second field,
    shown as the first with another value. Written to the field she holds; two typed
    in one go that read as one are refused (which one meant, no one can tell)."""
    held_as = {seen_as(k): k for k in held}
    out: dict[str, str] = {}
    typed_as: dict[str, str] = {}
    for k, v in typed.items():
        name = check_text(k, "field name", required=True, limit=40)
        seen = seen_as(name)
        if seen in typed_as:
            raise InvalidInput(f"custom fields {typed_as[seen]} and {name} read as one: "
                               "give it once")
        typed_as[seen] = name
        out[held_as.get(seen, name)] = check_text(v, name)
    return out


def _phone_holders(conn: sqlite3.Connection, phone: str) -> set[str]:
    """Every member (deleted and merged ones too) whose phone is this one however
    either was typed: "+86 138 0013 8000" is 13800138000's phone, and a phone stored
    as "138-0013-8000", by this build or an older one, is found by its canonical form
    (`members.phone_canonical`, filled for an older store when it is opened). The
    record keeps the phone as typed; only the comparison is canonical."""
    return {m for (m,) in conn.execute(
        "SELECT id FROM members WHERE phone_canonical = ?", (canonical_phone(phone),))}


def _gone(member: str, profile: Mapping[str, Any], left: bool) -> str | None:
    """Why nothing can be sold to or for this member any more, or None. `left`: an
    approved exit (Membership.has_left: the profile's flag is any branch's word)."""
    if profile.get("deleted"):
        return f"member {member} was deleted"
    if left:
        return (f"member {member} has left (退会): nothing can be sold to or for them "
                "until a return is approved")
    return None


def _member_fields(fields: Mapping[str, Any], today: str) -> dict[str, Any]:
    """The fields checked; `today` the branch's day, after which no one was born."""
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
        # A phone once given is never taken off by an edit: the member could no longer
        # be found by it nor sign in to the members' pages; erasure removes it.
        out[k] = check_text(v, k, required=k in ("name", "phone"),
                            limit=PHONE_MAX if k == "phone" else MAX_TEXT)
    if out.get("phone") and not PHONE.match(out["phone"]):
        raise InvalidInput(f"phone {out['phone']!r} is not a phone number")
    if out.get("gender") and out["gender"] not in GENDERS:
        raise InvalidInput(f"gender is {', '.join(GENDERS)} or empty")
    for k in ("birthday", "anniversary"):
        if out.get(k) and not _calendar_day(out[k]):
            raise InvalidInput(f"{k} must be a day of the calendar like 1990-05-17 or 05-17, "
                               f"not {out[k]!r}")
    # A day of the calendar, but no one's birthday: 2099-01-01 was kept, and the
    # member's age and greetings read from it. Only a whole date: 05-17 has no year.
    born = out.get("birthday")
    if born and len(born) == 10 and not BIRTH_FROM <= born <= today:
        raise InvalidInput(f"birthday must be a day already past, from {BIRTH_FROM} to "
                           f"today ({today}), like 1990-05-17 or 05-17, not {born!r}")
    if out.get("home"):
        check_node_id(out["home"])
    if out.get("id_no"):
        out["id_no"] = check_id_no(out["id_no"])
    check_notice_fields(out)
    return out


def _calendar_day(text: str) -> bool:
    """1990-05-17 or 05-17, a day some year has (02-29 is a leap year's): a birthday
    of 02-30 would never come, and its greetings never go out."""
    if not PARTIAL_DATE.match(text):
        return False
    try:
        date.fromisoformat(text if len(text) == 10 else f"2000-{text}")
    except ValueError:
        return False
    return True


def check_id_no(id_no: str) -> str:
    """An ID card number as stored (X upper-case), or InvalidInput: a typo in the check
    digit would hide a duplicate."""
    if not ID_NO.match(id_no):
        raise InvalidInput("an ID card number is 18 characters (17 digits and a digit or X) "
                           "or 15 digits")
    id_no = id_no.upper()
    if len(id_no) == 18:
        total = sum(int(c) * w for c, w in zip(id_no, _ID_WEIGHTS, strict=False))
        if "10X98765432"[total % 11] != id_no[-1]:
            raise InvalidInput(f"ID card number {id_no} has a wrong check digit")
    return id_no


def _prefs(prefs: Mapping[str, str]) -> dict[str, str]:
    unknown = set(prefs) - set(PREF_KEYS)
    if unknown:
        raise InvalidInput(f"unknown preferences {sorted(unknown)}; one of {PREF_KEYS}")
    return {k: check_text(v, k, limit=60) for k, v in prefs.items()}
