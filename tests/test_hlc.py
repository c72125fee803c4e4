"""Hybrid logical clock and node-minted ids (crdtledger.hlc)."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crdtledger.errors import ClockSkew, InvalidInput
from crdtledger.hlc import (
    MAX_CLOCK_SKEW_MS,
    HybridClock,
    check_node_id,
    decode,
    encode,
    era_of,
    id_node,
    id_time_ms,
    wall_ms,
)
from crdtledger.model import ID

T0 = 1_767_225_600_000  # 2026-01-01T00:00Z


class Wall:
    def __init__(self, ms: int = T0) -> None:
        self.ms = ms

    def __call__(self) -> int:
        return self.ms


def test_monotonic_when_the_wall_clock_goes_back_a_little() -> None:
    wall = Wall()
    clock = HybridClock("SH01", now_ms=wall)
    seen = [clock.now()]
    for step in (-1, -1000, -120_000, 0, +5, -60_000, +10_000_000):  # < 5 min in all
        wall.ms += step
        for _ in range(3):
            seen.append(clock.now())
    assert seen == sorted(seen)
    assert len(set(seen)) == len(seen)
    # While the wall clock is behind, time does not run backwards in the ids either.
    assert all(wall_ms(b) >= wall_ms(a) for a, b in itertools.pairwise(seen))


def test_a_clock_set_back_far_mints_at_the_wall_clock_and_never_repeats() -> None:
    """A clock that ran ahead and was fixed: the next ids are at the right time (a
    new era), not ahead until real time catches up; none repeats, however often the
    clock jumps, and within an era they only grow."""
    wall = Wall()
    clock = HybridClock("SH01", now_ms=wall)
    seen = []
    for step in (0, -86_400_000, +3_600_000, -3_600_000, +2 * 86_400_000, -86_400_000):
        wall.ms += step
        for _ in range(3):
            seen.append(clock.now())
        if step < -MAX_CLOCK_SKEW_MS:
            assert wall_ms(seen[-3]) == wall.ms
    assert len(set(seen)) == len(seen)
    for era in {era_of(ts) for ts in seen}:
        mine = [ts for ts in seen if era_of(ts) == era]
        assert mine == sorted(mine)
    assert len({era_of(ts) for ts in seen}) == 3


def test_ids_minted_while_clock_is_behind_still_sort_after() -> None:
    wall = Wall()
    clock = HybridClock("SH01", now_ms=wall)
    first = clock.mint()
    wall.ms -= 60_000
    second = clock.mint()
    assert second > first


def test_counter_rollover_borrows_the_next_millisecond() -> None:
    wall = Wall()
    clock = HybridClock("SH01", now_ms=wall)
    stamps = [clock.now() for _ in range(2_000)]  # frozen wall clock
    assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)
    assert wall_ms(stamps[0]) == T0
    assert wall_ms(stamps[-1]) == T0 + 1  # borrowed, never wrapped into the era bits
    assert {era_of(s) for s in stamps} == {0}
    # When the real clock catches up the clock keeps going forward.
    wall.ms += 1
    assert clock.now() > stamps[-1]
    wall.ms += 10
    assert wall_ms(clock.now()) == T0 + 11


def test_ids_sort_by_time_and_carry_their_node() -> None:
    wall = Wall()
    a = HybridClock("SH01", now_ms=wall)
    b = HybridClock("BJ02", now_ms=wall)
    ids = []
    for i in range(50):
        wall.ms = T0 + i * 7
        ids.append(a.mint() if i % 2 else b.mint())
    assert ids == sorted(ids)
    for i, ident in enumerate(ids):
        assert ID.match(ident)
        assert id_time_ms(ident) == T0 + i * 7
        assert id_node(ident) == ("SH01" if i % 2 else "BJ02")


def test_mint_is_unique_across_nodes_at_the_same_instant() -> None:
    wall = Wall()
    a, b = HybridClock("SH01", now_ms=wall), HybridClock("SH02", now_ms=wall)
    ids = {a.mint() for _ in range(100)} | {b.mint() for _ in range(100)}
    assert len(ids) == 200


def test_observe_moves_past_a_remote_clock_within_bounds() -> None:
    wall = Wall()
    clock = HybridClock("SH01", now_ms=wall)
    remote = (T0 + 30_000) << 16 | 5
    clock.observe(remote)
    assert clock.last == remote
    assert clock.now() > remote
    # An older remote stamp changes nothing.
    last = clock.last
    clock.observe(T0 << 16)
    assert clock.last == last


def test_observe_refuses_a_clock_too_far_ahead() -> None:
    wall = Wall()
    clock = HybridClock("SH01", now_ms=wall)
    clock.now()
    last = clock.last
    ahead = MAX_CLOCK_SKEW_MS + 60_000
    with pytest.raises(ClockSkew) as err:
        clock.observe((T0 + ahead) << 16)
    assert err.value.skew_ms == ahead
    assert "ahead" in str(err.value) and f"{ahead / 1000:.1f}" in str(err.value)
    assert clock.last == last  # not adopted
    assert clock.max_skew_seen_ms == ahead
    # Exactly at the limit is still accepted.
    clock.observe((T0 + MAX_CLOCK_SKEW_MS) << 16)
    assert wall_ms(clock.last) == T0 + MAX_CLOCK_SKEW_MS


def test_restart_continues_from_persisted_last() -> None:
    wall = Wall()
    c1 = HybridClock("SH01", now_ms=wall)
    for _ in range(5):
        c1.now()
    wall.ms -= 10_000  # the machine's clock was set back while the node was down
    c2 = HybridClock("SH01", last=c1.last, now_ms=wall)
    assert c2.now() > c1.last


@given(st.integers(min_value=0, max_value=2**64 - 1))
def test_encode_decode_round_trip(ts: int) -> None:
    text = encode(ts)
    assert len(text) == 13
    assert decode(text) == ts


@given(st.integers(min_value=0, max_value=2**64 - 1), st.integers(min_value=0, max_value=2**64 - 1))
def test_encoding_preserves_order(x: int, y: int) -> None:
    assert (encode(x) < encode(y)) == (x < y)


@pytest.mark.parametrize("node", ["SH01", "A", "BJ_02", "X" * 16, "0"])
def test_node_ids_accepted(node: str) -> None:
    assert check_node_id(node) == node


@pytest.mark.parametrize("node", ["", "sh01", "_A", "X" * 17, "SH 01", "SH-01", "ＳＨ01", None, 5,
                                  "SH01\n"])
def test_node_ids_refused(node: object) -> None:
    with pytest.raises(InvalidInput):
        check_node_id(node)  # type: ignore[arg-type]
    with pytest.raises(InvalidInput):
        HybridClock(node)  # type: ignore[arg-type]


def test_commands_run_one_after_another_keep_ids_at_the_wall_clock(tmp_path: Path) -> None:
    """Each command of the command line (a store opened, one write, closed) started
    at the ceiling the last one leased 2 s ahead and leased on from there: 250 debits
    in 129 s were dated 274 s ahead, then a new era began and the next ones sorted
    before them. Closed cleanly, the ceiling comes down to the last id minted; ids
    still only go up."""
    from crdtledger.hlc import id_time_ms
    from crdtledger.ledger import Ledger

    wall = Wall()
    Ledger.create(tmp_path / "sh01", "SH01", "test")
    with Ledger.open(tmp_path / "sh01", now_ms=wall) as ledger:
        member = ledger.add_member(ledger.owner, name="王芳", phone="13800000001")
    ids = []
    for _ in range(60):
        wall.ms += 100  # one command every 100 ms
        with Ledger.open(tmp_path / "sh01", now_ms=wall) as ledger:
            ids.append(ledger.topup(ledger.owner, member, 100)["id"])
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert id_time_ms(ids[-1]) - wall.ms < 1_000, id_time_ms(ids[-1]) - wall.ms
