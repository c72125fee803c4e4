"""The chain's rules: versions of each kind, the one in force on a day, and the
shape checks that keep a bad rule from breaking operations at other nodes."""

from __future__ import annotations

import json
import re
from decimal import Decimal
from typing import Any

from crdtledger.auth import Auth
from crdtledger.commit import put
from crdtledger.errors import InvalidAmount, InvalidInput, LedgerError
from crdtledger.inputs import check_date
from crdtledger.model import DEFAULT_RULES, RULE_KINDS
from crdtledger.money import check_amount


class Rules(Auth):
    """Rules are versions, never overwritten: the one in force is the latest
    `effective_from` on or before the day, ties by id (docs/design-notes.md)."""

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
        check_date(eff, "effective_from")
        rid = self.clock.mint()
        record = {"kind": kind, "effective_from": eff, "body": json.dumps(body, sort_keys=True)}
        self._write(put("rules", "rules", rid, record))
        return rid


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
