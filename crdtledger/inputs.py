"""Checks of what a person typed, shared by the operations of every concept:
refused with InvalidInput before anything is written, so a bad value never reaches
a replicated document (where every replica would have to refuse it again)."""

from __future__ import annotations

import json
import re
import unicodedata
from datetime import date
from typing import Any

from crdtledger.errors import InvalidInput, LedgerError
from crdtledger.model import CARD_NO
from crdtledger.money import half_width
from crdtledger.schema import Schema, check

MAX_TEXT = 200
# C0 and C1 controls but a line break and a tab: printer and terminal commands (ESC p
# opens a cash drawer, ESC [2J clears a terminal). Rules may not hold them; what is
# printed or shown from elsewhere (a peer's record, a store written before) is made
# `printable`.
CONTROLS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")
# The controls that reorder what follows (operations._BIDI, which the API's one-line
# names refuse): "\u202e店路西京南" shows as another name on every receipt and report.
TURNS = re.compile("[\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def printable(text: str) -> str:
    """`text` with the controls and the direction overrides as "?": a name so written
    before they were refused (or by a peer of such a release) read turned around in
    the command line's tables, its CSV and on the receipt."""
    return TURNS.sub("?", CONTROLS.sub("?", text))


# What str.splitlines() and a terminal or printer break a line at, and the tab: a
# value shown in a text of rows goes on its row as a space (the receipt does the same).
BREAKS = {ord(c): " " for c in "\t\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"}


def one_line(value: Any) -> Any:
    """`value` with every text in it (a result's names, reasons, keys) made one line
    of printable characters, for a text report of rows: a name holding a line break
    ("甲\n  2. 李四 13900000000 ...") made rows of its own, forged, in the command
    line's reports. Other values as they are; the value itself is not changed."""
    if isinstance(value, str):
        return printable(value.translate(BREAKS))
    if isinstance(value, dict):
        return {one_line(k): one_line(v) for k, v in value.items()}
    if isinstance(value, list):
        return [one_line(v) for v in value]
    if isinstance(value, tuple):  # a NamedTuple keeps its type and fields
        items = [one_line(v) for v in value]
        return type(value)(*items) if hasattr(value, "_fields") else tuple(items)
    return value


# Letters that show as nothing (Unicode's default-ignorable code points outside the
# format and combining categories, and the braille blank).
_FILLERS = frozenset("\u115f\u1160\u17b4\u17b5\u3164\uffa0\u2800")
# What shows as nothing but spaces: format characters (zero-width, the soft hyphen,
# direction marks, variation selectors) and combining marks.
_UNSEEN = frozenset(("Cf", "Mn", "Me"))


# Cyrillic and Greek letters that print as a Latin one (after Unicode's confusables.txt,
# those that look so upright in a receipt's or a screen's font): a cashier named "bоss"
# with a Cyrillic о read as boss on every receipt and in the audit trail. Keyed by the
# case-folded letter, mapped to the Latin letter either of its cases looks like (Н as
# H, so н as h), so that the comparison stays blind to case. The few whose two cases
# look like two Latin letters (Ν N and ν v) are read before case folding, by _CASED.
_CASED = str.maketrans("ΝνΥυӀӏ", "NvYuIl")
_LOOKALIKES = str.maketrans(
    "авекмнорстухѕіјԁһԛԝүьѵԍѡ"  # Cyrillic
    "αβεζηικμορτχγϲϳϝ",  # Greek
    "abekmhopctyxsijdhqwybvgw"
    "abezhikmoptxycjf")


def seen_as(text: str) -> str:
    """`text` as a reader sees it: full-width letters as half (NFKC), nothing for what
    shows as nothing, case folded, a Cyrillic or Greek letter that looks like a Latin
    one as that one (_LOOKALIKES). Two names alike here read as one on a receipt or in
    the audit trail. Only compared, never stored."""
    return "".join(c for c in unicodedata.normalize("NFKC", text)
                   if unicodedata.category(c) not in _UNSEEN
                   and c not in _FILLERS).translate(_CASED).casefold().translate(_LOOKALIKES)


def blank(text: str) -> bool:
    """Whether `text` shows nothing: empty, or spaces (U+3000 too), controls and
    what `seen_as` drops, alone. (The API's and the command line's schemas refuse
    spaces and the zero-width ones alone, operations._ZERO_WIDTH; what they let by
    is refused here: a member named U+3164 alone was registered.)"""
    return all(c.isspace() or unicodedata.category(c) in ("Cc", "Zs", "Zl", "Zp")
               for c in seen_as(text))


def check_text(value: Any, what: str, *, required: bool = False, limit: int = MAX_TEXT) -> str:
    if value is None:
        value = ""
    if not isinstance(value, str):
        raise InvalidInput(f"{what} must be text")
    text: str = value.strip()
    if "\x00" in text or _unencodable(text):
        # A lone surrogate (valid JSON: "\ud800") makes pycrdt panic and SQLite
        # refuse; NUL ends strings early in C code that shows them.
        raise InvalidInput(f"{what} contains characters that are not text")
    if required and blank(text):
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


# YYYY-MM-DD only: dates are compared as text (a rule version's effective date), and
# Python 3.11's fromisoformat also takes "20260102" and "2026-W01-5", which then sort
# after every real date (a refunds rule "from 20260102" took effect in 2027).
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}\Z")


def check_date(value: str, what: str) -> None:
    try:
        if not _DATE.match(value):
            raise ValueError(value)
        date.fromisoformat(value)
    except (TypeError, ValueError):
        raise InvalidInput(f"{what} must be a date like 2026-11-23, not {value!r}") from None


def check_card_no(value: str) -> str:
    value = check_text(value, "card number", required=True, limit=40)
    if not CARD_NO.match(value):
        raise InvalidInput(f"card number {value!r} has characters a card cannot carry")
    return value.upper()


def typed_half_width(value: Any, schema: Schema) -> Any:
    """What `value`, typed in full-width characters ("１２", "Ｃ００１", an input method's),
    is typed half-width, when that fits `schema`: text as text, an integer's digits as
    the number (the command line and the API's query convert only ASCII digits, so "１"
    was refused as no whole number). None when it is no full-width typing or would not
    fit either, and always for a secret: a PIN is not said back. For the sentence that
    says how to type it (the command line) or send it (the API), where the schema's
    check refused it before `money.parse_yuan` could say so; never to take it: an
    amount is read back as typed."""
    if not isinstance(value, str) or schema.get("writeOnly"):
        return None
    half: Any = half_width(value).strip()
    if half == value.strip():
        return None
    if schema.get("type") == "integer":
        if not re.fullmatch(r"[+-]?[0-9]{1,18}", half):
            return None
        half = int(half)
    try:
        check(half, schema, "")
    except LedgerError:
        return None
    return half


class NotJson(InvalidInput):
    """Text that is not JSON that can be read (json_value): the API answers it as
    `invalid_json`, the command line as any input refused."""


def json_value(text: str, what: str) -> Any:
    """`text` read as JSON, an object naming a field twice refused (unique_keys); text
    that is not JSON raises NotJson naming `what` and saying what is wrong in words of
    the text, not the decoder's ("Expecting value: line 1 column 1 (char 0)", "maximum
    recursion depth exceeded", and for a number of more than 4,300 digits, which
    Python will not read, a traceback where the caller caught only decode errors). The
    API's request body and the command line's JSON options read it."""
    try:
        return json.loads(text, object_pairs_hook=unique_keys)
    except json.JSONDecodeError as e:
        raise NotJson(f"{what} is not JSON: it goes wrong at line {e.lineno}, column "
                      f"{e.colno}") from None
    except RecursionError:  # [[[[...
        raise NotJson(f"{what} is nested too deeply to read (lists or objects within "
                      "each other)") from None
    except ValueError:
        raise NotJson(f"{what} is not JSON that can be read: it holds a number too long, "
                      "thousands of digits") from None


def unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """`json.loads(..., object_pairs_hook=unique_keys)`: an object naming a field twice
    is refused. Read as the last one wins, {"amount": 100, "amount": 50000} topped up
    500.00 where a reader of the request (a log, a proxy, the person who typed it) saw
    1.00."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise InvalidInput(f"field {printable(key)[:40]!r} is given twice: give it once")
        out[key] = value
    return out
