"""A branch with a valid certificate that answers a rights request with a grant it
never sent (the nineteenth wave): real `peer.node.Node`s, mutual TLS on 127.0.0.1
(tests/transport_suite.py). The asking till keeps waiting for the honest giver and
asks it once; a claim past what one transfer can move closes the liar's link with
a sentence."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from transport_suite import WebsocketAdapter, digest

from crdtledger.errors import RightsElsewhere
from crdtledger.money import MAX_AMOUNT
from crdtledger.sync import SyncSession

TILL, LIAR, GIVER = "SH01", "SH02", "SH03"


@pytest.fixture
def net(tmp_path: Path) -> Iterator[WebsocketAdapter]:
    # A deadline far past the test: what ends the wait is an answer, never the clock.
    adapter = WebsocketAdapter(tmp_path, rights_deadline_s=60.0)
    try:
        yield adapter
    finally:
        adapter.close()


@pytest.mark.parametrize("claim", [7000, MAX_AMOUNT, 2**64 - 1])
def test_a_claimed_grant_never_ends_the_wait_for_an_honest_giver(
        net: WebsocketAdapter, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
        claim: int) -> None:
    for n in (TILL, LIAR, GIVER):
        net.add(n)
    for src, dst in ((GIVER, LIAR), (TILL, LIAR), (TILL, GIVER)):
        net.dial(src, dst)
    mid: str = net.perform(LIAR, lambda lg: lg.add_member(lg.owner, name="张伟",
                                                        phone="13812345678"))
    net.perform(LIAR, lambda lg: lg.topup(lg.owner, mid, 6000))
    net.settle()
    net.perform(GIVER, lambda lg: lg.topup(lg.owner, mid, 5000))
    net.settle()
    assert net.ledger(TILL).rights(mid) == {LIAR: 6000, GIVER: 5000}

    held: list[tuple[SyncSession, int]] = []  # the giver's answers, until let go
    answer = SyncSession.answer_rights

    def answer_rights(self: SyncSession, request: int) -> None:
        if self.ledger.node == GIVER:
            held.append((self, request))
        elif self.ledger.node == LIAR:  # no transfer: the word alone
            self._relaying.pop(request)
            self._queue({"t": "rrep", "id": request, "granted": claim})
        else:
            answer(self, request)

    monkeypatch.setattr(SyncSession, "answer_rights", answer_rights)
    giver_before = digest(net.ledger(GIVER))
    # 7000 at the till, which holds nothing: the liar is asked for 6000, the giver 1000.
    sale = net.loop.create_task(net.nodes[TILL].perform(
        lambda: net.ledger(TILL).debit(net.ledger(TILL).owner, mid, amount=7000)))
    net.until(lambda: held, "the giver asked")
    net.run(0.5)  # time enough for the liar's answer, and for a till looping on it
    # The till still waits for the giver, which it asked once, and has moved nothing.
    assert not sale.done()
    assert len(held) == 1, f"the giver was asked {len(held)} times"
    assert digest(net.ledger(GIVER)) == giver_before
    if claim > MAX_AMOUNT:  # refused with a sentence, the link closed
        assert (f"peer {LIAR} broke the protocol (rights reply 1 claims {claim} granted, "
                f"more than one transfer moves ({MAX_AMOUNT}))") in caplog.text
    # The giver answers: 1000 and half of what it keeps; the sale is still short of the
    # liar's 6000, and refused (not sold on the liar's word).
    monkeypatch.setattr(SyncSession, "answer_rights", _honest_only(answer))

    def let_go() -> None:
        for session, request in held:
            answer(session, request)
        net.nodes[GIVER].flush()

    net.in_loop(let_go)
    net.until(sale.done, "the sale ended")
    with pytest.raises(RightsElsewhere):
        sale.result()
    assert net.ledger(TILL).rights(mid)[TILL] == 3000
    assert net.ledger(TILL).balance(mid)["cash"] == 11000  # nothing sold


def _honest_only(answer: Any) -> Any:
    def answer_rights(self: SyncSession, request: int) -> None:
        if self.ledger.node == LIAR:
            self._relaying.pop(request)
            self._queue({"t": "rrep", "id": request, "granted": 0})
        else:
            answer(self, request)
    return answer_rights
