"""The rule formats `crdtledger rule set --help` prints are rules the ledger takes."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import Cli
from helpers import new_ledger

from crdtledger.errors import InvalidInput
from crdtledger.model import RULE_KINDS
from crdtledger.rules import RULE_EXAMPLES


def test_every_rule_kind_has_an_example() -> None:
    assert set(RULE_EXAMPLES) == set(RULE_KINDS) - {"goods"}  # written by `goods add`


@pytest.mark.parametrize("kind", sorted(RULE_EXAMPLES))
def test_each_example_is_taken(kind: str, tmp_path: Path) -> None:
    with new_ledger(tmp_path, "SH01") as ledger:
        ledger.set_rule(ledger.owner, kind, RULE_EXAMPLES[kind])
        assert ledger.rule(kind) == RULE_EXAMPLES[kind]  # in force, as written


def test_the_help_prints_them(cli: Cli) -> None:
    out = cli("rule", "set", "--help")
    assert out.code == 0
    assert all(f"crdtledger rule set {kind} --json-body '" in out.out for kind in RULE_EXAMPLES)



def _broken(example: object) -> list[tuple[object, bool]]:
    """The example with each key of it (or of its first item) left out (some may be:
    the rule says so), and with a value of the wrong kind in its place (never good)."""
    if isinstance(example, list):
        return [([b, *example[1:]], must) for b, must in _broken(example[0])] + [([5], True)]
    if not isinstance(example, dict):
        return []
    out: list[tuple[object, bool]] = [([], True)]
    for key, value in example.items():
        out.append(({k: v for k, v in example.items() if k != key}, False))
        out.append(({**example, key: "x" if isinstance(value, list) else [1, 2]}, True))
    return out


@pytest.mark.parametrize("kind", sorted(RULE_EXAMPLES))
def test_a_malformed_version_is_refused_with_a_sentence_and_the_example(
        kind: str, tmp_path: Path) -> None:
    """An owner who leaves out a key or types a list for a number is told what is
    wrong and shown a good version, not Python's words ('int' object is not
    subscriptable, KeyError 'threshold'); nothing is written."""
    with new_ledger(tmp_path, "SH01") as ledger:
        for body, must_refuse in _broken(RULE_EXAMPLES[kind]):
            before = ledger.rule(kind)
            try:
                ledger.set_rule(ledger.owner, kind, body)
            except InvalidInput as e:
                said = str(e)
            else:
                assert not must_refuse, f"rule {kind} took {body!r}"
                continue  # a key the rule lets an owner leave out
            assert said.startswith(f"rule {kind} is malformed: "), said
            assert "a version looks like" in said, said
            assert not any(w in said for w in ("object", "subscriptable", "int()",
                                                "literal", "Error", "'NoneType'")), said
            assert ledger.rule(kind) == before
