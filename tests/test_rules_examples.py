"""The rule formats `crdtledger rule set --help` prints are rules the ledger takes."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import Cli
from helpers import new_ledger

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
