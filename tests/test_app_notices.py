"""The counter's profile dialog edits a member's notice fields: e-mail and promotional
consent (crdtledger.notices), which nobody has until they give it."""

from __future__ import annotations

import asyncio

import pytest
from app_fixtures import CASHIER, CounterApp

pytestmark = pytest.mark.asyncio
CARD = "C10001"


async def test_the_counter_records_consent_and_its_withdrawal(counter_app: CounterApp) -> None:
    app = counter_app
    ledger = app.ledger
    mid = ledger.add_member(app.node_owner, name="张伟", phone="13812345678")
    ledger.issue_card(app.node_owner, mid, CARD)
    assert ledger.member(mid).get("promo", "") == "", "never asked: no consent"
    await app.login(*CASHIER)
    app.reader.insert(CARD)
    await app.user.should_see(marker="member-name")
    app.user.find(marker="edit").click()
    app.user.find(marker="edit-email").type("zw@example.com")
    app.user.find(marker="edit-promo").click()
    app.user.find("同意接收营销信息").click()
    app.user.find(marker="edit-ok").click()
    await app.user.should_see("资料已保存")
    m = ledger.member(mid)
    assert (m["email"], m["promo"]) == ("zw@example.com", "yes")

    app.user.find(marker="edit").click()
    app.user.find(marker="edit-promo").click()
    app.user.find("已拒绝营销信息").click()
    app.user.find(marker="edit-ok").click()
    for _ in range(100):  # "资料已保存" may still show from the first save
        if ledger.member(mid)["promo"] == "no":
            break
        await asyncio.sleep(0.05)
    assert ledger.member(mid)["promo"] == "no"


async def test_a_bad_email_is_refused_and_changes_nothing(counter_app: CounterApp) -> None:
    app = counter_app
    ledger = app.ledger
    mid = ledger.add_member(app.node_owner, name="张伟", phone="13812345678")
    ledger.issue_card(app.node_owner, mid, CARD)
    await app.login(*CASHIER)
    app.reader.insert(CARD)
    await app.user.should_see(marker="member-name")
    app.user.find(marker="edit").click()
    app.user.find(marker="edit-email").type("zw-at-example")
    app.user.find(marker="edit-ok").click()
    await app.user.should_see("不是邮箱地址")
    assert ledger.member(mid).get("email", "") == ""
