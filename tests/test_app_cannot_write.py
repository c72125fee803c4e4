"""What the counter says when this PC may not write at all: a store restored from a
backup, waiting for another branch to show it caught up (each of the waits
Replica.peer_caught_up tells), a branch whose certificate the chain revoked, a branch
caught forking its log. The library's English reached the till ("操作被拒绝：restored
from a backup of 2026-12-01 10:02; connect to another branch before selling ...").
NiceGUI's simulated user against a real node and store; the waits are the library's
own, set by peer_caught_up as a peer's positions or a sync file would."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from app_fixtures import CASHIER, NODE, CounterApp
from helpers import snapshot
from nicegui import ui
from test_app_counter import member_with_card, swipe
from test_app_counter_words import ENGLISH

from crdtledger.errors import NotCaughtUp
from crdtledger.ledger import Ledger
from peer.chain import revocations_rule, revoke

pytestmark = pytest.mark.asyncio

WHEN = "2026-12-01 10:02"


def meta(ledger: Ledger, **values: object) -> None:
    with ledger.storage.transaction():
        for k, v in values.items():
            ledger.storage.set_meta(k, str(v))


def restored(ledger: Ledger) -> None:
    ledger.restored = WHEN  # as a store opened from a backup says (test_app_office)


def heard_none(ledger: Ledger) -> None:
    restored(ledger)


def sent_further(ledger: Ledger) -> None:
    restored(ledger)
    meta(ledger, restored_sent=50)
    ledger.peer_caught_up({NODE: 3}, peer="SH02")


def old_file(ledger: Ledger) -> None:
    restored(ledger)
    meta(ledger, restored_seen=ledger.clock.wall())
    ledger.peer_caught_up({NODE: 1}, peer="SH02", as_of=ledger.clock.wall() - 86_400_000)


def file_ahead(ledger: Ledger) -> None:
    restored(ledger)
    ledger.peer_caught_up({NODE: 1}, peer="SH02", as_of=ledger.clock.wall() + 10 * 86_400_000)


def others_not_heard(ledger: Ledger) -> None:
    restored(ledger)
    meta(ledger, restored_tip=10_000, restore_enrolled='{"SH03": []}')
    ledger.peer_caught_up({NODE: 5}, peer="SH02")


def fetching(ledger: Ledger) -> None:
    restored(ledger)
    ledger.peer_caught_up({NODE: ledger.storage.log.tip(NODE)[0] + 7}, peer="SH02")


def forked(ledger: Ledger) -> None:
    restored(ledger)
    seq = ledger.storage.log.tip(NODE)[0]
    ledger.peer_caught_up({NODE: (seq, b"\x01" * 32)}, peer="SH02")


def revoked(ledger: Ledger, chain: str) -> None:
    ledger.set_rule(ledger.owner, "revocations", revocations_rule(revoke(chain, NODE)))


def blocked(ledger: Ledger) -> None:
    with ledger.storage.transaction():
        ledger.storage.log.add_fault(NODE, "fork", 3, "", f"node {NODE} forked at 3", 0)


# (how the store came to refuse, what the library says, what the counter must say)
CASES: list[tuple[Callable[[Ledger], None], str, str]] = [
    (heard_none, "connect to another branch before selling", "要先连上其他分店"),
    (sent_further, "holds it only to record 3", "只有到第 3 条"),
    (old_file, "file was made before this branch was restored", "是在本店恢复之前做的"),
    (file_ahead, "later than this PC's clock", "比本机时钟还晚"),
    (others_not_heard, "SH03 not yet", "还要等SH03确认"),
    (fetching, "of it are here yet", "正在从分店「徐家汇店」取回"),
    (forked, "holds another history", "分叉"),
]


async def sale_refused(app: CounterApp, mid: str, library: str, counter: str) -> None:
    ledger = app.ledger
    with pytest.raises(NotCaughtUp, match=library):  # the library's own refusal
        ledger.debit(app.node_owner, mid, amount=100)
    before = snapshot(ledger, [mid])
    await app.login(*CASHIER)
    await swipe(app)
    app.user.find(marker="consume").click()
    app.user.find(marker="consume-ok").click()
    # The refusal's toast (the banner above says the restore or revocation already).
    await app.user.should_see(kind=ui.notification, retries=100)
    said = " ".join(n.message for n in app.user.find(kind=ui.notification).elements)
    assert counter in said, said
    assert library not in said and "操作被拒绝" not in said, said
    assert snapshot(ledger, [mid]) == before


@pytest.mark.parametrize(("make", "library", "counter"), CASES,
                         ids=[c[0].__name__ for c in CASES])
async def test_a_restored_branch_says_at_the_till_what_it_waits_for(
        counter_app: CounterApp, make: Callable[[Ledger], None], library: str,
        counter: str) -> None:
    app = counter_app
    mid = member_with_card(app, cash=50000)
    make(app.ledger)
    await sale_refused(app, mid, library, counter)
    await app.user.should_see(f"本店电脑由 {WHEN} 的备份恢复，暂不能收银")


async def test_a_revoked_branch_says_at_the_till_it_may_not_sell(
        counter_app: CounterApp) -> None:
    app = counter_app
    mid = member_with_card(app, cash=50000)
    revoked(app.ledger, str(app.data_dir.parent / "chain"))
    await sale_refused(app, mid, "may not write any more", "本店电脑的证书已被总部吊销")


async def test_a_forked_branch_says_at_the_till_it_may_not_sell(
        counter_app: CounterApp) -> None:
    app = counter_app
    mid = member_with_card(app, cash=50000)
    blocked(app.ledger)
    await sale_refused(app, mid, "wrote two different histories", "本店的数据出现了两份不同的历史")


async def test_every_sentence_of_a_store_that_may_not_write_is_said_in_chinese() -> None:
    """The refusal alone, for each of the library's sentences as the library writes
    them (a branch not named, peer None, included): no English word left."""
    from reference_app.shop import Shop
    whys = [
        "connect to another branch before selling (it may hold what this branch wrote "
        "after the backup)",
        "this branch's log had left this PC as far as record 9, and the branch heard from "
        "holds it only to record 3: connect to a branch that holds all of it",
        "branch SH02's file was made before this branch was restored: it cannot show",
        "branch SH02's file says it was made 2026-12-20 10:00, later than this PC's clock: x",
        "branch SH02 has heard nothing from this branch since the backup (it holds this "
        "branch's log to record 3, the backup to 9), and SH03, SH04 not yet: connect",
        "the branch heard from holds this branch's log to record 12, only 5 of it are here "
        "yet: take the rest",
        "branch SH02 holds another history of this branch's log at record 4 than this store",
        "another PC restored as branch SH01 since this backup has sold as it (record 7 of "
        "this branch's log, which branch SH02 holds): two PCs must never sell as one branch",
    ]
    shop = Shop.__new__(Shop)
    shop.branch_name = lambda node: node  # type: ignore[method-assign]
    for why in whys:
        said = shop.refusal(NotCaughtUp(f"restored from a backup of {WHEN}; {why}"))
        assert not ENGLISH.findall(said.replace(WHEN, "").replace("SH0", "")), (why, said)
    assert "另一台电脑已由同一份备份恢复为本店" in said, said  # the last: restored twice
    # Stopped, not restored: another PC sells as this branch (Replica._another_pc).
    said = shop.refusal(NotCaughtUp("another PC sells as branch SH01: record 7 of its log "
                                    "came from a branch, written on a PC restored"))
    assert "另一台电脑正以本店的身份收银" in said and not ENGLISH.findall(said), said
