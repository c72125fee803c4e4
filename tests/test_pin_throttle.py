"""Wrong card PINs are throttled as logins are (crdtledger.throttle), per card and per
operator asking, at every door that takes a card and its PIN: the API's debit, top-up,
sale and check-in, the counter's PIN dialog (`Ledger.use_card`) and the command line
(the node runs its operations). Locked, the PIN is not even checked, and the answer
says when to try again.

The API tests run a real node (peer.node.Node) with its API on 127.0.0.1; time is the
throttle's injected clock.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import new_ledger
from test_api import with_operators
from test_approver_throttle import Branch, Clock, branch, member

from crdtledger import auth, cards, operations
from crdtledger.auth import TooManyAttempts
from crdtledger.errors import WrongPin
from crdtledger.ledger import Ledger
from crdtledger.throttle import LoginThrottle

PIN = "0299"


@pytest.fixture
def checked(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The PIN hashes checked, in order."""
    real = auth.check_secret
    calls: list[str] = []

    def check(secret: str, stored: str) -> bool:
        calls.append(stored)
        return real(secret, stored)

    monkeypatch.setattr(cards, "check_secret", check)
    yield calls


async def member_with_cards(b: Branch, token: str) -> str:
    mid = await member(b, token)
    status, body = await b.api.call("POST", "/topup", {"member": mid, "yuan": "100.00"},
                                    token=token)
    assert status == 200, body
    for no in ("C1001", "C1002"):
        status, body = await b.api.call("POST", f"/members/{mid}/cards",
                                        {"card_no": no, "pin": PIN}, token=token)
        assert status == 201, body
    return mid


async def cashier_with_cards(b: Branch) -> str:
    """amy's token; boss registered a member with cards C1001 and C1002."""
    boss, amy = await b.login("boss"), await b.login("amy")
    await member_with_cards(b, boss)
    return amy


async def debit(b: Branch, token: str, card: str, pin: str) -> tuple[int, Any]:
    return await b.api.call("POST", "/debit", {"card": card, "pin": pin, "amount": 1},
                            token=token)


@pytest.mark.asyncio
async def test_guessing_a_cards_pin_at_the_api_is_locked_out(
        tmp_path: Path, checked: list[str]) -> None:
    async with branch(tmp_path) as b:
        boss, amy, bob = await b.login("boss"), await b.login("amy"), await b.login("bob")
        mid = await member_with_cards(b, boss)
        answers = [await debit(b, amy, "C1001", f"{i:04d}") for i in range(299)]
        assert [s for s, _ in answers[:5]] == [422] * 5
        assert {body["error"] for _, body in answers[:5]} == {"wrong_pin"}
        assert [s for s, _ in answers[5:]] == [429] * 294
        status, body = answers[-1]
        assert body["error"] == "too_many_attempts"
        assert "card C1001" in body["message"]
        assert "try again in 1 s" in body["message"]
        assert b.api.last_headers["Retry-After"] == "1"
        assert len(checked) == 5  # locked: the PIN is not even checked

        # The right PIN is refused too while the card is locked, for any cashier...
        assert (await debit(b, amy, "C1001", PIN))[0] == 429
        assert (await debit(b, bob, "C1001", PIN))[0] == 429
        # ...and the guesser is locked for other cards (per operator asking)...
        assert (await debit(b, amy, "C1002", PIN))[0] == 429
        # ...the same through a top-up, which takes a card and its PIN too.
        status, body = await b.api.call("POST", "/topup", {"card": "C1001", "pin": PIN,
                                                           "yuan": "1.00"}, token=bob)
        assert (status, body["error"]) == (429, "too_many_attempts")
        assert len(checked) == 5
        # Another cashier uses another card.
        status, body = await debit(b, bob, "C1002", PIN)
        assert status == 200, body
        assert b.ledger.balance(mid)["cash"] == 10000 - 1

        b.clock.now += 1.01  # the lock ends
        status, body = await debit(b, bob, "C1001", PIN)
        assert status == 200, body


@pytest.mark.asyncio
async def test_a_right_pin_forgives_earlier_mistakes(tmp_path: Path) -> None:
    async with branch(tmp_path) as b:
        amy = await cashier_with_cards(b)
        for _ in range(3):
            for i in range(4):  # a member mistyping four times: never locked
                assert (await debit(b, amy, "C1001", f"{i:04d}"))[0] == 422
            status, body = await debit(b, amy, "C1001", PIN)
            assert status == 200, body


@pytest.mark.asyncio
async def test_a_forgotten_pin_is_not_counted(tmp_path: Path) -> None:
    # A cashier who sends no PIN at all guessed nothing.
    async with branch(tmp_path) as b:
        amy = await cashier_with_cards(b)
        for _ in range(10):
            status, body = await b.api.call("POST", "/debit", {"card": "C1001", "amount": 1},
                                            token=amy)
            assert (status, body["error"]) == (422, "wrong_pin")
        assert (await debit(b, amy, "C1001", PIN))[0] == 200


def test_the_counters_pin_dialog_and_the_operations_share_the_lock(tmp_path: Path) -> None:
    # The counter's PIN dialog asks the ledger directly (Ledger.use_card); the command
    # line runs the operations (on the node's ledger while a node runs).
    ledger: Ledger = with_operators(new_ledger(tmp_path, "SH01"))
    try:
        clock = Clock()
        ledger.pins = LoginThrottle(clock=clock)
        boss = ledger.login_record("boss").operator
        assert boss is not None
        mid = ledger.add_member(boss, name="王芳", phone="13812345678")
        ledger.topup(boss, mid, 10000)
        ledger.issue_card(boss, mid, "C1001", pin=PIN)
        for i in range(5):
            with pytest.raises(WrongPin):
                ledger.use_card("C1001", f"{i:04d}")
        with pytest.raises(TooManyAttempts, match="try again in 1 s") as e:
            ledger.use_card("C1001", PIN)
        assert e.value.retry_after == 1
        with pytest.raises(TooManyAttempts):
            operations.run(ledger, boss, "debit", {"card": "C1001", "pin": PIN, "amount": 1})
        assert ledger.balance(mid)["cash"] == 10000
        clock.now += 1.01
        assert ledger.use_card("C1001", PIN)["member"] == mid
    finally:
        ledger.close()
