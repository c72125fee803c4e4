"""A till's operation done at once answers before its frames to the peers are built
(NodeCore.submit(reply_first=True), as Node.perform calls it): they stay queued on
the sessions until the driver's next flush, and then go as they would have."""

from __future__ import annotations

from pathlib import Path

from helpers import new_ledger

from crdtledger.core import Done, Effect, NodeCore, Send
from crdtledger.sync import unpack


def _frames(effects: list[Effect]) -> list[bytes]:
    return [f for e in effects if isinstance(e, Send) for f in e.frames]


def _linked(tmp_path: Path) -> tuple[NodeCore, NodeCore]:
    a, b = new_ledger(tmp_path, "SH01"), new_ledger(tmp_path, "SH02")
    ca, cb = NodeCore(a), NodeCore(b)
    ca.start(0.0, [])
    cb.start(0.0, [])
    out_a = ca.link_opened(1, "SH02", dialer="SH01", now=0.0)
    out_b = cb.link_opened(1, "SH01", dialer="SH01", now=0.0)
    for _ in range(50):  # hellos and catch-up until both are quiet
        to_b, to_a = _frames(out_a), _frames(out_b)
        if not (to_a or to_b):
            break
        out_a = ca.receive(1, to_a, 0.0) if to_a else []
        out_b = cb.receive(1, to_b, 0.0) if to_b else []
    return ca, cb


def test_frames_of_an_operation_done_at_once_wait_for_the_flush(tmp_path: Path) -> None:
    ca, cb = _linked(tmp_path)
    a = ca.ledger
    m = a.add_member(a.owner, name="m", phone="13800000101")
    cb.receive(1, _frames(ca.flush()), 0.0)  # the member, sent as a write outside submit
    oid, effects = ca.submit(lambda: a.topup(a.owner, m, 500), 0.0, reply_first=True)
    done = [e for e in effects if isinstance(e, Done)]
    assert [d.op for d in done] == [oid] and done[0].error is None
    assert _frames(effects) == []  # the answer first
    later = ca.flush()
    frames = _frames(later)
    assert any(unpack(f)["t"] == "recs" for f in frames)
    cb.receive(1, frames, 0.0)
    assert cb.ledger.balance(m) == a.balance(m)


def test_without_reply_first_the_frames_come_with_the_answer(tmp_path: Path) -> None:
    ca, _cb = _linked(tmp_path)
    a = ca.ledger
    m = a.add_member(a.owner, name="m", phone="13800000102")
    ca.flush()
    _oid, effects = ca.submit(lambda: a.topup(a.owner, m, 500), 0.0)
    assert any(unpack(f)["t"] == "recs" for f in _frames(effects))
