"""The small subset of JSON Schema the operation table declares its parameters in.

One description serves three readers: `check` refuses what does not fit (with the
ledger's own error classes, so a refusal has the same code wherever it is made),
the HTTP API publishes it as its OpenAPI document, and the command line builds its
options from it. No I/O here.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from datetime import date
from typing import Any

from crdtledger.errors import InvalidAmount, InvalidInput, LedgerError
from crdtledger.money import MAX_AMOUNT

Schema = dict[str, Any]


def ecma(pattern: re.Pattern[str]) -> str:
    """A library pattern as JSON Schema (ECMA-262) has it: `\\Z` is Python's only."""
    return pattern.pattern.removesuffix(r"\Z").removesuffix("$") + "$"


def or_empty(pattern: str) -> str:
    return f"^(?:{pattern.removeprefix('^').removesuffix('$')})?$"


def text(limit: int = 200, **more: Any) -> Schema:
    return {"type": "string", "maxLength": limit, **more}


def obj(required: Mapping[str, Schema], optional: Mapping[str, Schema] | None = None,
        **more: Any) -> Schema:
    s: Schema = {"type": "object", "properties": {**required, **(optional or {})},
                 "additionalProperties": False, **more}
    if required:
        s["required"] = sorted(required)
    return s


def array(items: Schema, limit: int = 100) -> Schema:
    return {"type": "array", "items": items, "maxItems": limit}


def one_of(*keys: str, optional: bool = False) -> Schema:
    """Exactly one of these fields (at most one, if `optional`), as JSON Schema says it."""
    forms: list[Schema] = [{"required": [k]} for k in keys]
    if optional:
        forms.append({"not": {"anyOf": [{"required": [k]} for k in keys]}})
    return {"oneOf": forms}


_TYPES: dict[str, Callable[[Any], bool]] = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
}
_TYPE_NAMES = {"object": "a JSON object", "array": "a list", "string": "text",
               "integer": "a whole number", "boolean": "true or false"}


def check(value: Any, schema: Schema, where: str) -> None:
    """Refuse `value` unless it fits `schema`. `where` names it in the refusal; ""
    is the whole request, whose fields are then named bare."""
    kind = schema.get("type")
    # "x-error" makes a malformed amount refused as invalid_amount, the ledger's code
    # for the same mistake made past this check.
    error = InvalidAmount if schema.get("x-error") == "invalid_amount" else InvalidInput
    # A secret (writeOnly: a PIN, a password) is never said back: "pin must be a card
    # PIN of 4 to 8 digits, not "SSSSSSSS"" showed the PIN typed to whoever reads the
    # screen, the terminal's scrollback or the client's log.
    sent = "" if schema.get("writeOnly") else f", not {show(value)}"
    if kind is not None and not _TYPES[kind](value):
        raise error(f"{where or 'the request'} must be {_wanted(schema)}{sent}")
    if isinstance(value, str):
        try:
            value.encode()
        except UnicodeEncodeError:  # lone surrogates: JSON allows them, pycrdt panics
            raise InvalidInput(f"{where} is not valid Unicode text") from None
        if len(value) > schema.get("maxLength", len(value)):
            raise error(f"{where} is longer than {schema['maxLength']} characters")
        if len(value) < schema.get("minLength", 0):
            raise error(f"{where} must not be empty")
        if not ((re.fullmatch(schema["pattern"], value) if "pattern" in schema else True)
                and value in schema.get("enum", [value])
                and (schema.get("format") != "date" or is_date(value))):
            raise error(f"{where} must be {_wanted(schema)}{sent}")
    elif isinstance(value, int) and kind == "integer":
        low, high = schema.get("minimum", -MAX_AMOUNT), schema.get("maximum", MAX_AMOUNT)
        if not low <= value <= high:
            # Say the range: "a whole number" alone reads as nonsense next to 1000.
            raise error(f"{where} must be {_wanted(schema)} from {low} to {high}, not {value}")
    elif isinstance(value, list) and "items" in schema:
        if len(value) > schema.get("maxItems", len(value)):
            raise InvalidInput(f"{where} has more than {schema['maxItems']} items")
        for i, item in enumerate(value):
            check(item, schema["items"], f"{where}[{i}]")
    elif isinstance(value, dict) and kind in ("object", None) \
            and not _OBJECT_KEYS.isdisjoint(schema):  # None: {"required": [..]}
        # (Without any of these, as in a bare {"oneOf": ..}, _check_object finds nothing.)
        _check_object(value, schema, where)
    for part in schema.get("allOf", ()):
        check(value, part, where)
    if "oneOf" in schema and sum(_fits(value, s) for s in schema["oneOf"]) != 1:
        keys = [k for s in schema["oneOf"] for k in s.get("required", ())]
        at_most = "at most " if any("not" in s for s in schema["oneOf"]) else ""
        raise InvalidInput(f"give {at_most}one of {', '.join(keys)}")
    if "anyOf" in schema and not any(_fits(value, s) for s in schema["anyOf"]):
        raise InvalidInput(f"{where} fits none of the forms allowed")
    if "not" in schema and _fits(value, schema["not"]):
        raise InvalidInput(f"{where} has a form that is not allowed")


def _wanted(schema: Schema) -> str:
    """What a value of `schema` must be, as a refusal says it."""
    return str(schema.get("description") or (
        f"one of {', '.join(map(str, schema['enum']))}" if "enum" in schema
        else _TYPE_NAMES.get(schema.get("type") or "", "valid")))


# What _check_object looks at: a schema with none of them asks nothing of an object.
_OBJECT_KEYS = frozenset({"properties", "required", "additionalProperties", "propertyNames",
                          "maxProperties", "minProperties"})


def _fits(value: Any, schema: Schema) -> bool:
    if type(value) is dict and len(schema) == 1 and "required" in schema:
        # An operation's forms ("one of member, card"): what `check` concludes of an
        # object against `required` alone, without raising a refusal per form missed.
        return all(k in value for k in schema["required"])
    try:
        check(value, schema, "")
    except LedgerError:
        return False
    return True


def _check_object(value: dict[str, Any], schema: Schema, where: str) -> None:
    props: dict[str, Schema] = schema.get("properties", {})
    missing = [k for k in schema.get("required", ()) if k not in value]
    if missing:
        raise InvalidInput(f"{where or 'the request'} lacks {', '.join(missing)}")
    extra = schema.get("additionalProperties", True)
    for k, v in value.items():
        if k in props:
            check(v, props[k], f"{where}.{k}" if where else k)
        elif extra is False:
            raise InvalidInput(f"unknown field {show(k)} in {where or 'the request'}; "
                               + (f"expected {', '.join(sorted(props))}" if props else
                                  "it takes no fields"))
        elif isinstance(extra, dict):
            check(k, schema.get("propertyNames", {}), f"a key of {where}")
            check(v, extra, f"{where}.{k}" if where else k)
    if len(value) > schema.get("maxProperties", len(value)):
        raise InvalidInput(f"{where} has more than {schema['maxProperties']} fields")
    if len(value) < schema.get("minProperties", 0):
        raise InvalidInput(f"{where or 'the request'} is empty: nothing to change")


def is_date(value: str) -> bool:
    try:
        date.fromisoformat(value)
    except ValueError:
        return False
    return re.fullmatch("[0-9]{4}-[0-9]{2}-[0-9]{2}", value) is not None


def show(value: Any) -> str:
    """A refused value, as a refusal's sentence quotes it: as typed, escaped where it is
    no text (a lone surrogate, valid JSON, could not be sent back in UTF-8: the refusal
    itself failed, a 500)."""
    shown = json.dumps(value, ensure_ascii=False)
    if not shown.isascii():
        try:
            shown.encode("utf-8")
        except UnicodeEncodeError:
            shown = json.dumps(value)
    return shown if len(shown) <= 40 else shown[:37] + "..."
