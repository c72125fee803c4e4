"""A long catch-up is applied a slice at a time, so that the node's loop keeps
answering (its peer's heartbeat) in between; frames that come meanwhile wait their
turn, and the result is the same as taking the batch at once."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import new_ledger, sync

from crdtledger import sync as sync_mod
from crdtledger.core import NodeCore, Send, SetTimer
from crdtledger.sync import SyncSession, unpack


def _writer(tmp_path: Path, n: int) -> tuple[object, list[str]]:
    a = new_ledger(tmp_path, "SH01")
    members = [a.add_member(a.owner, name=f"m{i}", phone=f"138000001{i:02d}") for i in range(5)]
    for i in range(n):
        a.topup(a.owner, members[i % 5], 100 + i)
    return a, members


def test_a_batch_longer_than_a_slice_is_applied_in_slices(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    monkeypatch.setattr(sync_mod, "APPLY_SLICE", 7)
    a, members = _writer(tmp_path, 40)
    b = new_ledger(tmp_path, "SH02")
    sa, sb = SyncSession(a, expect_node="SH02"), SyncSession(b, expect_node="SH01")
    sa.start()
    sb.start()
    sb.receive_frames(sa.data_to_send())  # A's hello: B answers with its state
    sa.receive_frames(sb.data_to_send())  # A sends all it has, and its state
    frames = sa.data_to_send()
    assert any(unpack(f)["t"] == "recs" for f in frames)
    later = a.topup(a.owner, members[0], 1)  # live, behind the catch-up
    frames += sa.data_to_send()
    sb.receive_frames(frames)
    slices = 1
    while sb.busy:
        # Between slices: only whole slices are in the store, nothing is relayed yet.
        assert b.positions().get("SH01", 0) == 7 * slices
        sb.resume()
        slices += 1
    assert slices >= 6
    assert b.positions() == a.positions()
    assert b.balance(members[0]) == a.balance(members[0])
    assert any(e["id"] == later["id"] for e in b.history(members[0]))
    assert not b.faults() and not b.refusals


def test_the_core_resumes_at_the_drivers_next_turn(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sync_mod, "APPLY_SLICE", 10)
    a, members = _writer(tmp_path, 30)
    b = new_ledger(tmp_path, "SH02")
    ca, cb = NodeCore(a), NodeCore(b)
    ca.start(0.0, [])
    cb.start(0.0, [])
    out_a = ca.link_opened(1, "SH02", dialer="SH01", now=0.0)
    out_b = cb.link_opened(1, "SH01", dialer="SH01", now=0.0)
    resumed = 0
    for _ in range(200):
        to_b = [f for e in out_a if isinstance(e, Send) for f in e.frames]
        to_a = [f for e in out_b if isinstance(e, Send) for f in e.frames]
        timers = [e for e in out_b if isinstance(e, SetTimer) and e.key[0] == "resume"]
        out_a = ca.receive(1, to_a, 0.0) if to_a else []
        out_b = cb.receive(1, to_b, 0.0) if to_b else []
        for t in timers:
            resumed += 1
            out_b += cb.fire(t.key, t.token, 0.0)
        if not (to_a or to_b or timers):
            break
    assert resumed >= 2
    assert b.positions() == a.positions() and b.balance(members[1]) == a.balance(members[1])


def test_slices_end_where_taking_it_at_once_ends(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sync_mod, "APPLY_SLICE", 3)
    a, _ = _writer(tmp_path / "a", 20)
    b = new_ledger(tmp_path / "b", "SH02")
    c = new_ledger(tmp_path / "c", "SH02")
    sync(a, b)  # in slices
    c.pull(a)  # at once
    assert b.state_vectors() == c.state_vectors() and b.log_view() == c.log_view()
