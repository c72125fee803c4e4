"""Which version of a rule is in force when several share an `effective_from`: the one
written after seeing the others (its `rev`), whatever the writers' clocks said; the id
only among versions written apart. The same at every replica."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from helpers import FakeClock, new_ledger, sync

from crdtledger.commit import put
from crdtledger.errors import InvalidInput
from crdtledger.ledger import Ledger
from crdtledger.rules import MAX_REV, _rev

DAY = 86_400_000
# 2026-01-18T02:00Z: 10:00 in Shanghai.
REAL = 1_768_701_600_000
TYPO = [{"min": 50_000, "bonus": 50_000, "name": "充500送500"}]
FIXED = [{"min": 50_000, "bonus": 5_000, "name": "充500送50"}]


def _raw_version(ledger: Ledger, rid: str, kind: str, eff: str, body: Any,
                 **extra: Any) -> None:
    """A version written as a node before `rev` wrote it, or as a misbehaving one
    might (`extra`): straight into the rules document."""
    record = {"kind": kind, "effective_from": eff, "body": json.dumps(body), "by": "x",
              **extra}
    ledger._write(put("rules", "rules", rid, record))


def test_a_correction_made_after_the_clock_was_put_right_is_in_force_everywhere(
        tmp_path: Path) -> None:
    """The head office, its clock 3 days ahead, sets a promotion with a typo; its clock
    is put right (a new era: lower ids) and the owner corrects it, same effective date.
    The correction is in force at both stores, and a top-up gets its bonus."""
    good, ahead = FakeClock(REAL), FakeClock(REAL + 3 * DAY)
    with new_ledger(tmp_path, "SH01", now_ms=ahead) as hq, \
            new_ledger(tmp_path, "SH02", now_ms=good) as shop:
        typo = hq.set_rule(hq.owner, "promotions", TYPO, effective_from="2026-01-20")
        ahead.ms = good.ms  # the clock put right
        fixed = hq.set_rule(hq.owner, "promotions", FIXED, effective_from="2026-01-20")
        assert fixed < typo  # what made the typo win: its id is the larger
        sync(hq, shop)
        good.advance_days(3)
        ahead.ms = good.ms
        for ledger in (hq, shop):
            assert ledger.today() == "2026-01-21"
            assert ledger.rule("promotions") == FIXED, ledger.node
            assert ledger.rule("promotions", "2026-01-20") == FIXED, ledger.node
            assert ledger.rule("promotions", "2026-01-19") == []  # the default
        m = shop.add_member(shop.owner, name="张伟", phone="13800000001")
        assert shop.topup(shop.owner, m, 50_000)["bonus"] == 5_000


def test_versions_written_apart_are_ordered_by_id_and_one_written_after_wins(
        tmp_path: Path) -> None:
    """Two stores set the rule apart (neither saw the other's): the larger id wins at
    both. A version written after seeing both wins over both, at both, though its
    writer's clock is behind."""
    good, ahead = FakeClock(REAL), FakeClock(REAL + 3 * DAY)
    with new_ledger(tmp_path, "SH01", now_ms=ahead) as a, \
            new_ledger(tmp_path, "SH02", now_ms=good) as b:
        a.set_rule(a.owner, "promotions", TYPO, effective_from="2026-01-20")
        b.set_rule(b.owner, "promotions", FIXED, effective_from="2026-01-20")
        sync(a, b)
        assert a.rule("promotions", "2026-01-20") == b.rule("promotions", "2026-01-20") == TYPO
        later = [{"min": 50_000, "bonus": 8_000, "name": "充500送80"}]
        b.set_rule(b.owner, "promotions", later, effective_from="2026-01-20")
        sync(a, b)
        assert a.rule("promotions", "2026-01-20") == b.rule("promotions", "2026-01-20") == later
        # A later effective date still comes in force on its day, and not before.
        a.set_rule(a.owner, "promotions", TYPO, effective_from="2026-02-01")
        b.set_rule(b.owner, "promotions", FIXED, effective_from="2026-01-25")
        sync(a, b)
        for ledger in (a, b):
            assert ledger.rule("promotions", "2026-01-24") == later
            assert ledger.rule("promotions", "2026-01-25") == FIXED
            assert ledger.rule("promotions", "2026-02-01") == TYPO


def test_versions_without_rev_read_as_before_and_a_new_one_wins_over_them(
        tmp_path: Path) -> None:
    """Versions written before the field: the larger id wins among them, as it did.
    A version written after them wins over them whatever its id."""
    with new_ledger(tmp_path, "SH01", now_ms=FakeClock(REAL)) as ledger:
        _raw_version(ledger, "036YY8YTG0000.SH01", "promotions", "2026-01-20", TYPO)
        _raw_version(ledger, "036YY8YTG0001.SH01", "promotions", "2026-01-20", FIXED)
        _raw_version(ledger, "036YY8YTG0002.SH01", "promotions", "2026-01-10", [])
        assert ledger.rule("promotions", "2026-01-20") == FIXED
        assert ledger.rule("promotions", "2026-01-15") == []
        rid = ledger.set_rule(ledger.owner, "promotions", TYPO, effective_from="2026-01-20")
        assert rid < "036YY8YTG0000.SH01"
        assert ledger.rule("promotions", "2026-01-20") == TYPO


@pytest.mark.parametrize("rev", ["9", True, -1, 0, 1.5, math.inf, -math.inf, math.nan,
                                 MAX_REV + 1, 2**62, [5], {"n": 5}, None])
def test_a_malformed_rev_reads_as_none(rev: Any, tmp_path: Path) -> None:
    """Whatever a writer put in `rev`, reading rules never raises: it counts as 0."""
    assert _rev({"rev": rev}) == 0
    with new_ledger(tmp_path, "SH01", now_ms=FakeClock(REAL)) as ledger:
        _raw_version(ledger, "036YY8YTG0001.SH01", "promotions", "2026-01-20", TYPO, rev=rev)
        _raw_version(ledger, "036YY8YTG0000.SH01", "promotions", "2026-01-20", FIXED)
        assert ledger.rule("promotions", "2026-01-20") == TYPO  # by id
        ledger.set_rule(ledger.owner, "promotions", FIXED, effective_from="2026-01-20")
        assert ledger.rule("promotions", "2026-01-20") == FIXED


def test_rev_reads_whole_numbers_as_stored() -> None:
    assert _rev({"rev": 3}) == _rev({"rev": 3.0}) == 3
    assert _rev({"rev": MAX_REV}) == MAX_REV
    assert _rev({}) == _rev("not a map") == _rev(None) == 0


def test_a_rev_at_the_cap_does_not_stop_later_versions(tmp_path: Path) -> None:
    """A version at MAX_REV (only a misbehaving writer gets there): a later one takes
    the cap too, and the id decides between them, as for versions written apart."""
    with new_ledger(tmp_path, "SH01", now_ms=FakeClock(REAL)) as ledger:
        _raw_version(ledger, "0000000000000.SH01", "promotions", "2026-01-20", TYPO,
                     rev=MAX_REV)
        ledger.set_rule(ledger.owner, "promotions", FIXED, effective_from="2026-01-20")
        doc = ledger.storage.doc("rules").roots["rules"]
        assert sorted(_rev(rec) for rec in doc.values()) == [MAX_REV, MAX_REV]
        assert ledger.rule("promotions", "2026-01-20") == FIXED  # the larger id


def test_a_goods_change_after_the_clock_was_put_back_the_same_day_is_kept(
        tmp_path: Path) -> None:
    """Goods versions fold per code in order: a price corrected the same day, after the
    head office's clock was put back two hours (lower ids), is the price in force."""
    good, ahead = FakeClock(REAL), FakeClock(REAL + 2 * 3_600_000)
    with new_ledger(tmp_path, "SH01", now_ms=ahead) as hq, \
            new_ledger(tmp_path, "SH02", now_ms=good) as shop:
        first = hq.add_goods(hq.owner, "TEA", "茶", 99_900)
        ahead.ms = good.ms
        second = hq.add_goods(hq.owner, "TEA", "茶", 999)
        assert second["rule_id"] < first["rule_id"]
        sync(hq, shop)
        for ledger in (hq, shop):
            assert ledger.goods_item("TEA")["price"] == 999, ledger.node


@pytest.mark.parametrize("when", ["20260102", "2026-W01-5", "2026-01-02T00:00", "2026-1-2"])
def test_an_effective_date_is_a_date_like_2026_01_02_only(tmp_path: Path, when: str) -> None:
    """Python's fromisoformat takes "20260102" and "2026-W01-5"; versions are picked by
    comparing dates as text, so such a version took effect a year late, unsaid."""
    ledger = new_ledger(tmp_path, "SH01")
    try:
        before = ledger.rule("refunds")
        with pytest.raises(InvalidInput, match="must be a date like 2026-11-23"):
            ledger.set_rule(ledger.owner, "refunds", {"days": 7}, effective_from=when)
        assert ledger.rule("refunds") == before
    finally:
        ledger.close()
