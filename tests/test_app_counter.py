"""The counter page driven as a cashier would, against a real node and store."""

from __future__ import annotations

import pytest
from app_fixtures import OWNER, CounterApp

pytestmark = pytest.mark.asyncio


def member_with_card(app: CounterApp, card: str = "C10001", cash: int = 0) -> str:
    ledger = app.ledger
    mid = ledger.add_member(app.node_owner, name="张伟", phone="13812345678",
                            prefs={"strength": "重", "technician": "8号"})
    ledger.issue_card(app.node_owner, mid, card)
    if cash:
        ledger.topup(app.node_owner, mid, cash)
    return mid


async def test_swipe_shows_member(counter_app: CounterApp) -> None:
    app = counter_app
    member_with_card(app, cash=50000)
    await app.login(*OWNER)
    app.reader.insert("C10001")
    await app.user.should_see("张伟")
    await app.user.should_see("¥500.00")
    await app.user.should_see("138****5678")
