"""A closed shop's sales are refunded by the branch it handed its members' rights to.

The months probe (docs/design-notes.md, "A closed shop's sales cannot be refunded"):
SH02 sold 70.00 on 25 February, handed over to SH01 and closed; on 3 March, inside
the refund period, SH01 and SH03 both refused the refund (`RefundElsewhere`), and the
manager's +70.00 correction booked value collected that no till took, left SH02 the
income and the member the sale's points. The branch a shop first handed over to, and
it alone, refunds its sales (write rule refund-own); the refund is judged alike at
every replica: one that reaches a replica before the hand-over waits, then is taken.
Real stores, real sync sessions and record batches.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from app_fixtures import OWNER, CounterApp
from conftest import Cli
from helpers import FakeClock, name_branches, new_ledger, sync
from test_api import BOSS_PW, serving, with_operators
from test_goods_refund import stock_rows
from test_handover import exchange, out

from crdtledger import audit, views
from crdtledger.errors import InvalidAmount, InvalidInput, PermissionDenied, RefundElsewhere
from crdtledger.ledger import Ledger, owner_of
from peer.api import Standalone
from peer.chain import enrol

# 2026-02-25 10:00 in Shanghai.
FEB_25 = 1_771_984_800_000


def _records_of(src: Ledger, dst: Ledger, node: str) -> None:
    """`node`'s records that `src` holds and `dst` does not, and only those: what a
    third branch gets from a peer that relays the refund but not yet the hand-over."""
    have = dst.storage.log.tip(node)[0]
    recs = [r for r in src.storage.log.records_after({node: have}) if r.node == node]
    dst.apply_batch(src.batch(recs))


def _books(lg: Ledger, member: str) -> dict[str, Any]:
    """What every replica must agree on: balance, rights, points, the settlement."""
    conn = lg.storage.conn
    return {"balance": views.balance(conn, member),
            "rights": sorted(conn.execute("SELECT purse, node, amount FROM rights "
                                          "WHERE member = ? AND amount != 0", (member,))),
            "refunds": sorted(conn.execute("SELECT node, amount FROM entries "
                                           "WHERE kind = 'refund'")),
            "waiting": conn.execute("SELECT COUNT(*) FROM deferred").fetchone()[0],
            "settlement": views.settlement(lg)}


@pytest.fixture
def shops(tmp_path: Path) -> Any:
    """SH01, SH02 (closing) and SH03 in step. A member topped up 100.00 at SH01; SH02,
    given 80.00 of her rights, sold her 70.00 from stored value on 25 February and
    50.00 paid in cash at its till (120 points, a point a yuan); then SH02 handed
    every right it held over to SH01."""
    clock = FakeClock(FEB_25)
    a, b, c = (new_ledger(tmp_path, n, now_ms=clock) for n in ("SH01", "SH02", "SH03"))
    try:
        name_branches(a, "SH01", "SH02", "SH03")
        a.set_rule(a.owner, "earn", {"points_per_yuan": "1", "expire_days": 365},
                   effective_from="2025-01-01")
        a.set_rule(a.owner, "refunds", {"days": 30}, effective_from="2025-01-01")
        m = a.add_member(a.owner, name="王芳", phone="13800001111")
        a.topup(a.owner, m, 10_000)
        a.transfer_rights(a.owner, m, "SH02", 8_000)
        for x in (b, c):
            sync(a, x)
        sale = b.debit(b.owner, m, amount=7_000)
        till = b.debit(b.owner, m, amount=5_000, pay="cash")
        for x in (a, c):
            sync(b, x)  # the sale, not yet the hand-over
        b.hand_over_rights(b.owner, "SH01")
        clock.advance_days(6)  # 3 March: inside the refund period
        yield {"a": a, "b": b, "c": c, "m": m, "sale": sale["id"], "till": till["id"]}
    finally:
        for x in (a, b, c):
            x.close()


def test_the_receiving_branch_refunds_a_closed_shops_sale_and_the_books_say_it(
        shops: Any) -> None:
    a, b, c, m, sale = shops["a"], shops["b"], shops["c"], shops["m"], shops["sale"]
    # Before the hand-over reaches SH01, it refunds nothing of SH02's, with a sentence.
    with pytest.raises(RefundElsewhere, match="SH02"):
        a.refund(a.owner, sale)
    sync(a, b)  # the hand-over arrives first
    assert views.settlement(a)["pairs"] == [
        {"owes": "SH01", "to": "SH02", "amount": 7_000, "served": 7_000, "served_back": 0}]
    assert views.balance(a.storage.conn, m)["points"] == 120
    # SH03, which was not handed over to, still refuses, and says where it is refunded.
    sync(b, c)
    with pytest.raises(RefundElsewhere, match="SH01"):
        c.refund(c.owner, sale)
    # The closed shop itself refunds nothing any more: SH01 does.
    with pytest.raises(PermissionDenied, match="SH01"):
        b.refund(b.owner, sale)

    back = a.refund(a.owner, sale, reason="门店关闭")
    assert (back["amount"], back["handover"], back.get("points")) == (7_000, "SH02", 70)
    assert a.refund_left(sale) == 0
    bal = views.balance(a.storage.conn, m)
    assert (bal["cash"], bal["points"]) == (10_000, 50)  # her money and the points back
    # The settlement undoes SH02's income: nobody owes anybody for that sale.
    st = views.settlement(a)
    assert st["pairs"] == [] or all(p["amount"] == 0 for p in st["pairs"])
    assert st["branches"]["SH01"]["unspent"] == 10_000
    # The sale paid in cash is paid back from SH01's till, on its day; SH02's day of
    # sales stays as it was (a refund is booked on its own day, at its branch).
    a.refund(a.owner, shops["till"])
    assert views.balance(a.storage.conn, m)["points"] == 0
    day = views.daily_report(a, "2026-03-03", "SH01")
    assert (day["refunds"], day["sales"], day["till_by_method"]) == (
        12_000, -12_000, {"cash": -5_000})
    assert views.daily_report(a, "2026-02-25", "SH02")["sales"] == 12_000
    # Every replica takes it alike.
    for x in (b, c):
        sync(a, x)
    assert _books(a, m) == _books(b, m) == _books(c, m)
    assert _books(c, m)["waiting"] == 0
    # Each store's rows are its documents' projection (`status --check`).
    assert [audit.unprojected(x) for x in (a, b, c)] == [{}, {}, {}]


def test_a_refund_reaching_a_replica_before_the_hand_over_waits_then_is_taken(
        shops: Any) -> None:
    a, b, c, m, sale = shops["a"], shops["b"], shops["c"], shops["m"], shops["sale"]
    sync(a, b)
    a.refund(a.owner, sale, 3_000)
    # SH03 gets SH01's records (its refund), not yet SH02's hand-over.
    _records_of(a, c, "SH01")
    conn = c.storage.conn
    assert conn.execute("SELECT COUNT(*) FROM entries WHERE kind = 'refund'").fetchone()[0] == 0
    assert conn.execute("SELECT COUNT(*) FROM deferred").fetchone()[0] == 1
    assert views.balance(conn, m)["cash"] == 3_000  # the refund not yet in
    assert not c.storage.log.blocked()  # waiting, not refused: SH01 did nothing wrong
    sync(b, c)  # the hand-over comes
    assert conn.execute("SELECT COUNT(*) FROM deferred").fetchone()[0] == 0
    for x in (b, c):
        sync(a, x)
    assert _books(a, m) == _books(b, m) == _books(c, m)
    assert views.balance(conn, m)["cash"] == 6_000
    # What is left is refunded once only, at every replica alike.
    assert a.refund_left(sale) == c.refund_left(sale) == 4_000


def test_a_branch_not_handed_over_to_cannot_refund_the_closed_shops_sale(
        shops: Any) -> None:
    """SH03 (a liar, not the receiver) writes a refund of SH02's sale naming SH02's
    hand-over as the rule asks: it waits for ever at every replica, its money and
    points never projected, and SH01's own refund still takes the whole sale."""
    a, b, c, m, sale = shops["a"], shops["b"], shops["c"], shops["m"], shops["sale"]
    sync(b, c)
    sync(a, b)
    debit = c._debit(sale)
    terms = {"deltas": [("cash", "SH03", 7_000)], "money": 7_000}
    entry = c._entry("refund", m, deltas=terms["deltas"], amount=7_000, ref=sale,
                     handover="SH02", op=c.owner)
    c._commit(lambda: ([c._entry_write(entry)], entry))
    assert debit["node"] == "SH02"
    sync(c, a)
    sync(c, b)
    for x in (a, b):
        conn = x.storage.conn
        assert conn.execute("SELECT COUNT(*) FROM entries WHERE kind = 'refund'"
                            ).fetchone()[0] == 0
        assert views.balance(conn, m)["cash"] == 3_000
    back = a.refund(a.owner, sale)
    assert back["amount"] == 7_000
    sync(a, b)
    assert views.balance(b.storage.conn, m)["cash"] == 10_000
    assert b.storage.conn.execute("SELECT node FROM entries WHERE kind = 'refund'"
                                  ).fetchall() == [("SH01",)]


def test_what_the_shop_refunded_before_its_hand_over_counts_and_after_it_never(
        tmp_path: Path) -> None:
    """SH02 refunds 20.00 of its 70.00 sale, then hands over to SH01; SH01 refunds the
    50.00 left, and no more. SH02, lying after its hand-over, writes a refund of its
    own sale of 50.00 too (past its own check, which refuses it): at every replica it
    waits for ever, whichever came first, so the sale gives back 70.00, not 120.00."""
    clock = FakeClock(FEB_25)
    a, b, c = (new_ledger(tmp_path, n, now_ms=clock) for n in ("SH01", "SH02", "SH03"))
    try:
        name_branches(a, "SH01", "SH02", "SH03")
        m = a.add_member(a.owner, name="王芳", phone="13800001111")
        a.topup(a.owner, m, 10_000)
        a.transfer_rights(a.owner, m, "SH02", 8_000)
        sync(a, b)
        sale = b.debit(b.owner, m, amount=7_000)["id"]
        b.refund(b.owner, sale, 2_000)
        b.hand_over_rights(b.owner, "SH01")
        with pytest.raises(PermissionDenied, match="SH01"):
            b.refund(b.owner, sale, 5_000)
        sync(a, b)
        assert a.refund_left(sale) == 5_000
        with pytest.raises(InvalidAmount, match=r"at most 50\.00"):
            a.refund(a.owner, sale, 5_001)
        a.refund(a.owner, sale)
        # The liar's own refund, after its hand-over in its log.
        e = b._entry("refund", m, deltas=[("cash", "SH02", 5_000)], amount=5_000, ref=sale,
                     op=b.owner)
        b._commit(lambda: ([b._entry_write(e)], e))
        sync(b, c)  # SH03: the liar's refund before SH01's
        sync(a, c)
        sync(a, b)
        for x in (a, c):
            conn = x.storage.conn
            assert sorted(conn.execute("SELECT node, amount FROM entries WHERE kind = "
                                       "'refund'")) == [("SH01", 5_000), ("SH02", 2_000)]
            assert views.balance(conn, m)["cash"] == 10_000
            assert conn.execute("SELECT COUNT(*) FROM deferred").fetchone()[0] == 1
        assert _books(a, m) == _books(c, m)
    finally:
        for x in (a, b, c):
            x.close()


def test_the_api_refunds_a_closed_shops_sale_at_the_receiving_branch(shops: Any) -> None:
    """POST /refund: refused at SH03 with the sentence naming SH01, done at SH01."""
    a, b, c, sale = shops["a"], shops["b"], shops["c"], shops["sale"]
    for x in (a, c):
        sync(b, x)
    with_operators(a)
    sync(a, c)

    async def main() -> None:
        async with serving(Standalone(a)) as api_a, serving(Standalone(c)) as api_c:
            status, body = await api_c.call("POST", "/refund", {"debit_id": sale},
                                            token=await api_c.login("boss", BOSS_PW))
            assert status != 200 and "SH01" in str(body), (status, body)
            status, body = await api_a.call("POST", "/refund", {"debit_id": sale},
                                            token=await api_a.login("boss", BOSS_PW))
            assert status == 200 and body["handover"] == "SH02", body

    asyncio.run(main())
    assert a.refund_left(sale) == 0


def test_a_shop_hands_over_to_one_branch_only(shops: Any) -> None:
    b = shops["b"]
    with pytest.raises(InvalidInput, match="SH01"):
        b.hand_over_rights(b.owner, "SH03")
    assert b.hand_over_rights(b.owner, "SH01")["entries"] == 0  # again: nothing twice


@pytest.fixture
def closing_chain(cli: Cli, tmp_path: Path) -> dict[str, Path]:
    """HQ (head office), SH01 (closing) and SH02, each having seen the others' files
    (test_handover's chain)."""
    ca = tmp_path / "chain"
    assert cli("chain", "init", "--out", ca, "--name", "acme").code == 0
    dirs = {n: tmp_path / n.lower() for n in ("HQ", "SH01", "SH02")}
    for n, d in dirs.items():
        extra = ["--head-office"] if n == "HQ" else []
        assert cli("init", "--node", n, "--chain", ca, *extra, data=d).code == 0
    exchange(cli, tmp_path, dirs)
    return dirs


def test_the_command_line_refunds_a_closed_shops_sale_at_the_receiving_branch(
        cli: Cli, closing_chain: dict[str, Path], tmp_path: Path) -> None:
    """Real stores under a chain's certificates, sealed sync files: SH01 sells 30.00
    and closes, handing over to SH02; SH02 refunds the sale, HQ and SH01 may not."""
    sh01, sh02, hq = (closing_chain[n] for n in ("SH01", "SH02", "HQ"))
    dirs = {"HQ": hq, "SH01": sh01, "SH02": sh02}
    m = out(cli, "member", "add", "--name", "王芳", "--phone", "13800000001",
            data=sh01)["member_id"]
    out(cli, "topup", "--member", m, "--amount", "100.00", data=sh01)
    sale = out(cli, "debit", "--member", m, "--amount", "30.00", data=sh01)["id"]
    exchange(cli, tmp_path, dirs)
    r = cli("refund", "--debit", sale, data=sh02)
    assert r.code != 0 and "SH01" in r.err, r  # not handed over yet
    out(cli, "rights", "handover", "--to", "SH02", data=sh01)
    r = cli("rights", "handover", "--to", "HQ", data=sh01)
    assert r.code != 0 and "SH02" in r.err, r  # one branch only
    exchange(cli, tmp_path, dirs)
    for d in (hq, sh01):
        r = cli("refund", "--debit", sale, data=d)
        assert r.code != 0 and "SH02" in r.err, r
    back = out(cli, "refund", "--debit", sale, "--reason", "门店关闭", data=sh02)
    assert (back["amount"], back["handover"]) == (3_000, "SH01")
    exchange(cli, tmp_path, dirs)
    for d in dirs.values():
        assert out(cli, "balance", "--member", m, data=d)["cash"] == 10_000


@pytest.mark.asyncio
async def test_the_counter_offers_the_refund_of_a_closed_shops_sale_where_it_is_made(
        counter_app: CounterApp, tmp_path: Path) -> None:
    """The counter at SH01 (南京西路店): SH02 (徐家汇店, enrolled in the same chain)
    sold 70.00 and handed over to SH01. The last visits offer its refund (退款)."""
    app = counter_app
    a = app.ledger
    data = tmp_path / "sh02"
    Ledger.create(data, "SH02", "test")
    enrol(tmp_path / "chain", data, "SH02",
          not_before=dt.datetime.now(dt.UTC) - dt.timedelta(days=7))
    b = Ledger.open(data)
    try:
        m = a.add_member(app.node_owner, name="张伟", phone="13812345678")
        a.issue_card(app.node_owner, m, "CARD-0001")
        a.topup(app.node_owner, m, 10_000)
        a.transfer_rights(app.node_owner, m, "SH02", 8_000)
        sync(a, b)
        sale = b.debit(owner_of("SH02"), m, amount=7_000)
        sync(a, b)
        await app.login(*OWNER)
        app.reader.insert("CARD-0001")
        await app.user.should_see(marker="member-name")
        await app.user.should_see(marker="refund-elsewhere")
        await app.user.should_not_see(marker="refund")
        b.hand_over_rights(owner_of("SH02"), "SH01")
        sync(a, b)
        app.reader.insert("CARD-0001")
        await app.user.should_see(marker="member-name")
        app.user.find(marker="refund").click()
        app.user.find(marker="refund-ok").click()
        await app.user.should_see("已退款 ¥70.00")
        assert a.balance(m)["cash"] == 10_000
        assert a.entry(a.storage.conn.execute(
            "SELECT id FROM entries WHERE kind = 'refund'").fetchone()[0])["ref"] == sale["id"]
    finally:
        b.close()


def test_a_chain_of_hand_overs_passes_the_refund_on_to_its_last_open_branch(
        tmp_path: Path) -> None:
    """SH02 sells 80.00 and closes, handing over to SH01; SH01 closes in turn, handing
    over to SH03. The sale is refunded at SH03 and nowhere else (SH01 and SH02 refuse,
    naming SH03; a liar's refund by SH01 after its hand-over waits for ever). SH04 gets
    the records in the worst order: SH03's refund, then SH01's hand-over, then SH02's
    (which moves another member's rights only, so only the last link noted wakes the
    refund): it waits, then is taken, as at every replica."""
    clock = FakeClock(FEB_25)
    names = ("SH01", "SH02", "SH03", "SH04")
    a, b, c, d = (new_ledger(tmp_path, n, now_ms=clock) for n in names)
    try:
        name_branches(a, *names)
        a.set_rule(a.owner, "refunds", {"days": 30}, effective_from="2025-01-01")
        m = a.add_member(a.owner, name="王芳", phone="13800001111")
        other = a.add_member(a.owner, name="李明", phone="13800002222")
        a.topup(a.owner, m, 10_000)
        a.topup(a.owner, other, 1_000)
        a.transfer_rights(a.owner, m, "SH02", 8_000)
        a.transfer_rights(a.owner, other, "SH02", 1_000)
        for x in (b, c, d):
            sync(a, x)
        sale = b.debit(b.owner, m, amount=8_000)["id"]  # all she held at SH02
        for x in (a, c, d):
            sync(b, x)
        b.hand_over_rights(b.owner, "SH01")  # moves only the other member's rights
        sync(a, b)
        a.hand_over_rights(a.owner, "SH03")
        clock.advance_days(6)
        sync(a, c)
        sync(b, c)
        for x in (a, b):  # the closed shops (SH04, not yet in step, names SH02)
            with pytest.raises(PermissionDenied, match="SH03"):
                x.refund(x.owner, sale)
        assert c.refunds_at(c._debit(sale)) == "SH03"
        back = c.refund(c.owner, sale, reason="门店关闭")
        assert (back["amount"], back["handover"]) == (8_000, "SH02")
        assert views.balance(c.storage.conn, m)["cash"] == 10_000
        # SH01, lying after its own hand-over, refunds the sale too.
        lie = a._entry("refund", m, deltas=[("cash", "SH01", 8_000)], amount=8_000,
                       ref=sale, handover="SH02", op=a.owner)
        a._commit(lambda: ([a._entry_write(lie)], lie))
        # SH04: the refund first, then the links of the chain, last one first.
        _records_of(c, d, "SH03")
        _records_of(a, d, "SH01")
        conn = d.storage.conn
        assert conn.execute("SELECT COUNT(*) FROM deferred WHERE json_extract(body, "
                            "'$.kind') = 'refund'").fetchone()[0] == 2
        _records_of(b, d, "SH02")
        assert views.balance(conn, m)["cash"] == 10_000
        for x in (a, b, c, d):
            for y in (a, b, c, d):
                if x is not y:
                    sync(x, y)
        # (The liar's own store took its refund, as the liars' tests above leave it.)
        assert _books(b, m) == _books(c, m) == _books(d, m)
        assert _books(d, m)["waiting"] == 1  # the liar's, for ever
        assert _books(d, m)["refunds"] == [("SH03", 8_000)]
        with pytest.raises(RefundElsewhere, match="SH03"):
            d.refund(d.owner, sale)
        assert [audit.unprojected(x) for x in (b, c, d)] == [{}, {}, {}]
    finally:
        for x in (a, b, c, d):
            x.close()


def test_liars_hand_overs_naming_each_other_end_nowhere(shops: Any) -> None:
    """SH02 handed over to SH01; a hand-over noted from SH01 back to SH02 (a liar's)
    makes a cycle: the chain is walked once round, and no branch refunds the sale."""
    a, b, c, sale = shops["a"], shops["b"], shops["c"], shops["sale"]
    sync(a, b)
    sync(b, c)
    for x in (a, c):
        x.storage.conn.execute('INSERT INTO handover_to VALUES (\'SH01\', \'SH02\', NULL)')
        assert x.refunds_at(x._debit(sale)) is None
    with pytest.raises(PermissionDenied, match="no branch"):
        a.refund(a.owner, sale)
    with pytest.raises(RefundElsewhere, match="no branch"):
        c.refund(c.owner, sale)


def test_the_receiving_branch_refunds_a_closed_shops_goods_sale_onto_its_shelf(
        tmp_path: Path) -> None:
    """SH02 sells two bottles from its shelf and closes, handing over to SH01, which
    refunds them: the money and the points come back, the two bottles go onto SH01's
    shelf (SH02's three left stay where they are), and the goods report of every
    replica takes the sale back, as its stock figures do. SH03 takes SH01's refund
    before SH02's hand-over: it waits, then every book agrees."""
    clock = FakeClock(FEB_25)
    a, b, c = (new_ledger(tmp_path, n, now_ms=clock) for n in ("SH01", "SH02", "SH03"))
    try:
        name_branches(a, "SH01", "SH02", "SH03")
        a.set_rule(a.owner, "refunds", {"days": 30}, effective_from="2025-01-01")
        a.add_goods(a.owner, "G01", "精油", 3_000, 1_200, unit="瓶")
        m = a.add_member(a.owner, name="王芳", phone="13800001111")
        a.topup(a.owner, m, 10_000)
        a.transfer_rights(a.owner, m, "SH02", 8_000)
        for x in (b, c):
            sync(a, x)
        b.stock_in(b.owner, "G01", 5)
        sale = b.sell_goods(b.owner, "G01", 2, member=m)["id"]
        for x in (a, c):
            sync(b, x)
        b.hand_over_rights(b.owner, "SH01")
        clock.advance_days(6)
        sync(a, b)
        assert a.refunds_at(a._debit(sale)) == "SH01"
        back = a.refund(a.owner, sale, reason="门店关闭")
        assert (back["qty"], back["amount"], back["handover"]) == (2, 6_000, "SH02")
        assert a.stock_of("G01")["qty"] == 2 and a.stock_of("G01", "SH02")["qty"] == 3
        assert views.balance(a.storage.conn, m)["cash"] == 10_000
        _records_of(a, c, "SH01")  # the refund before the hand-over
        sync(b, c)
        sync(a, c)
        for x in (a, b, c):
            assert views.goods_ranking(x, "sales") == [
                {"code": "G01", "name": "精油", "qty": 0, "sales": 0, "cost": 0,
                 "profit": 0}]
            assert x.stock_of("G01", "SH01")["qty"] == 2
        assert stock_rows(a) == stock_rows(b) == stock_rows(c)
        assert _books(a, m) == _books(b, m) == _books(c, m)
        assert [audit.unprojected(x) for x in (a, b, c)] == [{}, {}, {}]
    finally:
        for x in (a, b, c):
            x.close()


def test_a_shop_holding_no_rights_still_hands_over_and_its_till_sale_is_refunded(
        tmp_path: Path) -> None:
    """SH02 sold only at its till (50.00 in cash to a walk-in customer) and spent all
    of the 80.00 of a member's value it was given, so it holds no rights when it closes.
    Its hand-over still names SH01, once: SH01 refunds both sales, SH02 refuses its
    own, SH03 (handed nothing) refuses and says SH01, and every replica agrees. It
    wrote no hand-over before, so its customers were turned away at every branch."""
    clock = FakeClock(FEB_25)
    a, b, c = (new_ledger(tmp_path, n, now_ms=clock) for n in ("SH01", "SH02", "SH03"))
    try:
        name_branches(a, "SH01", "SH02", "SH03")
        a.set_rule(a.owner, "refunds", {"days": 30}, effective_from="2025-01-01")
        # No points earned: they would be rights it holds.
        a.set_rule(a.owner, "earn", {"points_per_yuan": "0", "expire_days": 365},
                   effective_from="2025-01-01")
        m = a.add_member(a.owner, name="王芳", phone="13800001111")
        a.topup(a.owner, m, 10_000)
        a.transfer_rights(a.owner, m, "SH02", 8_000)
        for x in (b, c):
            sync(a, x)
        till = b.debit(b.owner, amount=5_000, pay="cash")["id"]
        sale = b.debit(b.owner, m, amount=8_000)["id"]  # all it held
        assert views.rights_summary(b, "SH02")["held"] == {}
        done = b.hand_over_rights(b.owner, "SH01")
        assert (done["members"], done["moved"], done["entries"]) == (0, {}, 1)
        # The first hand-over stands: not another branch, and nothing written twice.
        with pytest.raises(InvalidInput, match="SH01"):
            b.hand_over_rights(b.owner, "SH03")
        assert b.hand_over_rights(b.owner, "SH01")["entries"] == 0
        with pytest.raises(PermissionDenied, match="SH01"):
            b.refund(b.owner, till)
        clock.advance_days(6)  # 3 March: inside the refund period
        for x in (a, c):
            sync(b, x)
        with pytest.raises(RefundElsewhere, match="SH01"):
            c.refund(c.owner, till)
        assert a.refunds_at(a._debit(till)) == c.refunds_at(c._debit(till)) == "SH01"
        back = a.refund(a.owner, till, reason="门店关闭")
        assert (back["amount"], back["handover"]) == (5_000, "SH02")
        assert a.refund(a.owner, sale)["amount"] == 8_000
        day = views.daily_report(a, "2026-03-03", "SH01")
        assert (day["refunds"], day["till_by_method"]) == (13_000, {"cash": -5_000})
        assert views.balance(a.storage.conn, m)["cash"] == 10_000
        # The hand-over moved nothing: no branch's rights or balances changed by it.
        assert views.rights_summary(a, "SH02")["held"] == {}
        assert "SH02" in views.handed_over(a)
        # The audit trail says what it was: no rights, to SH01.
        (row,) = [r for r in audit.trail(a, branch="SH02") if r["action"] == "transfer"]
        assert row["detail"] == "no rights → SH01"
        for x in (b, c):
            sync(a, x)
        assert _books(a, m) == _books(b, m) == _books(c, m)
        assert _books(c, m)["waiting"] == 0
        assert [audit.unprojected(x) for x in (a, b, c)] == [{}, {}, {}]
    finally:
        for x in (a, b, c):
            x.close()


def test_the_command_line_hands_over_a_shop_holding_nothing_and_its_receiver_refunds(
        cli: Cli, closing_chain: dict[str, Path], tmp_path: Path) -> None:
    """Sealed sync files: SH01 sold 30.00 in cash at its till and holds no rights; its
    hand-over to SH02 writes one record, and SH02 refunds the sale, HQ and SH01 not."""
    sh01, sh02, hq = (closing_chain[n] for n in ("SH01", "SH02", "HQ"))
    dirs = {"HQ": hq, "SH01": sh01, "SH02": sh02}
    sale = out(cli, "debit", "--amount", "30.00", "--pay", "cash", data=sh01)["id"]
    assert out(cli, "rights", "held", data=sh01)["held"] == {}
    done = out(cli, "rights", "handover", "--to", "SH02", data=sh01)
    assert (done["entries"], done["moved"]) == (1, {})
    exchange(cli, tmp_path, dirs)
    for d in (hq, sh01):
        r = cli("refund", "--debit", sale, data=d)
        assert r.code != 0 and "SH02" in r.err, r
    back = out(cli, "refund", "--debit", sale, data=sh02)
    assert (back["amount"], back["handover"]) == (3_000, "SH01")
