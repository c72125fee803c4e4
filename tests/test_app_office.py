"""The back office and admin pages, driven as the owner would, against a real node and store."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from app_fixtures import CASHIER, NODE, OWNER, CounterApp, downloaded, parse_csv
from nicegui import ui
from nicegui.elements.upload_files import SmallFileUpload

from crdtledger import closing, settlement, views
from crdtledger.errors import InvalidInput, NotCaughtUp
from crdtledger.ledger import Ledger
from crdtledger.model import member_doc
from crdtledger.syncfile import export_file, import_file
from peer.chain import enrol, init_chain

pytestmark = pytest.mark.asyncio


def seed(app: CounterApp) -> str:
    """A member who topped up 500.00 (below the first discount level), had a foot
    massage, and the rights to 200.00 of whose stored value this branch handed to
    SH02 (logistics: no debt until SH02 serves him)."""
    ledger, op = app.ledger, app.node_owner
    mid = ledger.add_member(op, name="王芳", phone="13812345678", birthday="1990-05-17",
                            prefs={"strength": "重"})
    ledger.topup(op, mid, 50000)
    ledger.debit(op, mid, service="FOOT60")
    ledger.transfer_rights(op, mid, "SH02", 20000)
    return mid


def table_rows(app: CounterApp) -> list[dict[str, Any]]:
    return [row for t in app.user.find(ui.table).elements for row in t.rows]


async def test_reports_show_real_figures_and_export_csv(counter_app: CounterApp,
                                                        tmp_path: Path) -> None:
    app = counter_app
    mid = seed(app)
    await app.login(*OWNER)

    await app.user.open("/office")
    await app.user.should_see("营业日报")
    await app.user.should_see("本月尚未结账")  # today's figures may still change
    rows = {r["branch"]: r for r in table_rows(app)}
    assert rows["南京西路店"]["sales"] == "¥128.00"
    assert rows["南京西路店"]["topup_cash"] == "¥500.00"
    assert rows["合计"]["new_members"] == 1
    daily = parse_csv(await downloaded(app, "export-daily"))
    assert daily[0][:3] == ["日期", "分店", "新会员"]
    assert daily[1][1:4] == ["南京西路店", "1", "128.00"]

    await app.user.open("/office/ranking")
    names = [r["name"] for r in table_rows(app)]
    assert "足疗 60 分钟" in names and "王芳 138****5678" in names
    services = parse_csv(await downloaded(app, "export-services"))
    assert services[1] == ["1", "FOOT60", "足疗 60 分钟", "1", "128.00"]

    await app.user.open("/office/topups")
    [topup] = table_rows(app)
    assert (topup["member"], topup["paid"]) == ("王芳 138****5678", "¥500.00")
    receipts = parse_csv(await downloaded(app, "export-topups"))
    assert receipts[1][3:6] == ["王芳", "138****5678", "500.00"]

    await app.user.open("/office/settlement")
    await app.user.should_see("各分店之间没有需要结算的款项")  # rights moved, nobody served
    # SH02 serves the member 200.00 of what SH01 collected: now SH01 owes SH02.
    export_file(app.ledger, tmp_path / "to-sh02.crdtsync")
    other = second_store(tmp_path / "sh02", tmp_path / "chain")
    try:
        import_file(other, tmp_path / "to-sh02.crdtsync")
        other.debit(other.owner, mid, amount=20000)
        export_file(other, tmp_path / "from-sh02.crdtsync")
    finally:
        other.close()
    import_file(app.ledger, tmp_path / "from-sh02.crdtsync")
    app.ledger.housekeeping()  # this branch closes the month due; SH02 has not yet
    await app.user.open("/office/settlement")
    await app.user.should_see("应付")
    await app.user.should_see("月结：尚无月份在所有分店结账；"
                              f"{closing.due_month(app.ledger.today())} 还在等：徐家汇店")
    await app.user.should_see("徐家汇店为南京西路店的会员服务 ¥200.00")
    rows = {r["branch"]: r for r in table_rows(app)}
    assert {b: r["net"] for b, r in rows.items()} == {
        "南京西路店": "-¥200.00", "徐家汇店": "¥200.00", "合计": "¥0.00"}
    # 500.00 collected, 128.00 served here, 200.00 there: 172.00 still prepaid here.
    assert (rows["南京西路店"]["collected"], rows["南京西路店"]["served_own"],
            rows["南京西路店"]["unspent"]) == ("¥500.00", "¥128.00", "¥172.00")
    assert {r["check"] for r in rows.values()} == {"✓"}
    statement = parse_csv(await downloaded(app, "export-settlement"))
    assert statement[1] == ["南京西路店", NODE, "徐家汇店", "SH02", "200.00", "0.00", "200.00"]
    assert statement[4][:2] == ["南京西路店", NODE]
    assert statement[4][2:] == settlement.csv_rows(views.settlement(app.ledger))[4][1:]

    app.ledger.add_member(app.node_owner, name="李娜", phone="13900001111")
    await app.user.open("/office/members")
    members = parse_csv(await downloaded(app, "export-members"))
    assert {(m[1], m[2]) for m in members[1:]} == {("王芳", "13812345678"),
                                                   ("李娜", "13900001111")}



async def test_the_daily_summary_shows_the_exit_refunds_the_till_is_short_of(
        counter_app: CounterApp) -> None:
    """A member's exit paid 300.00 back in cash: `crdtledger report daily` says "exits
    paid 300.00" and its till figure is net of them, but the back office's summary
    and CSV showed the till's cash as 128.00 against 428.00 of services paid in cash,
    with nothing to say why (the books probe of the twentieth wave)."""
    app = counter_app
    ledger, op = app.ledger, app.node_owner
    mgr = ledger.add_operator(op, "经理王", "pw-manager-123456", ["manager"])
    leaver = ledger.add_member(op, name="李雷", phone="13700000001")
    ledger.topup(op, leaver, 30000, pay="cash")
    ledger.debit(op, amount=42800, pay="cash")  # a walk-in customer's 428.00
    ledger.decide_exit(mgr, ledger.apply_exit(op, leaver, "搬家")["application"],
                       pay="cash")
    report = views.daily_report(ledger, ledger.today())
    assert (report["exit_refunds"], report["till_by_method"]) == (30000, {"cash": 12800})
    await app.login(*OWNER)
    await app.user.open("/office")
    rows = {r["branch"]: r for r in table_rows(app)}
    assert rows["合计"]["exit_refunds"] == "¥300.00"
    daily = parse_csv(await downloaded(app, "export-daily"))
    column = daily[0].index("退会退款")
    assert daily[-1][column] == "300.00"


@pytest.mark.parametrize(("path", "mark", "empty"), [
    ("/office/ranking", "ranking", "这段时间没有消费"),
    ("/office/topups", "topups", "¥0.00"),
    ("/office/settlement", "settlement", "各分店之间没有需要结算的款项"),
])
async def test_a_reversed_period_is_refused_on_the_office_pages_as_everywhere(
        counter_app: CounterApp, path: str, mark: str, empty: str) -> None:
    """From the 10th to the 1st: `crdtledger report ranking|settlement`, the API and
    the goods page refuse a reversed period, but the rankings said "no sales in this
    period", the top-up receipts 0 top-ups of ¥0.00 and the settlement "nothing to
    settle" with every branch's prepaid value as it stood, an accountant's typo read as
    a month of nothing (the books probe of the twenty-first wave)."""
    app = counter_app
    seed(app)
    await app.login(*OWNER)
    await app.user.open(path)
    app.user.find(marker=f"{mark}-from").clear().type("2026-01-10")
    app.user.find(marker=f"{mark}-to").clear().type("2026-01-01")
    await app.user.should_see("起止日期反了：开始日 2026-01-10 在结束日 2026-01-01 之后。")
    await app.user.should_not_see(empty)


async def test_the_settlement_page_says_what_the_closed_months_end_held(
        counter_app: CounterApp, monkeypatch: pytest.MonkeyPatch) -> None:
    """Once a month is closed and its closing signed, the owner reads on the settlement
    page what members held at its end: the stored value the chain owes them."""
    app = counter_app
    mid = app.ledger.add_member(app.node_owner, name="王芳", phone="13812345678")
    app.ledger.topup(app.node_owner, mid, 50000)
    app.ledger.debit(app.node_owner, mid, amount=12800)
    clock = app.ledger.clock
    later = clock.raw_wall() + 70 * 86_400_000  # past the 7th of the month after next
    monkeypatch.setattr(clock, "_now_ms", lambda: later)
    app.ledger.topup(app.node_owner, mid, 10000)  # after the closed month: not in it
    app.ledger.housekeeping()  # closes the month due and signs its closing
    month = closing.books(app.ledger)["closing"]["month"]
    await app.login(*OWNER)
    await app.user.open("/office/settlement")
    await app.user.should_see(f"{month} 月末：储值 ¥372.00，赠送 ¥0.00，积分 128，"
                              "1 位会员持有")
    # Each member's, for the accountant: `crdtledger report balances --csv`.
    rows = parse_csv(await downloaded(app, "export-month-end"))
    assert rows == [["会员号", "姓名", "储值", "赠送", "积分"],
                    [mid, "王芳", "372.00", "0.00", "128"], ["合计", "", "372.00", "0.00", "128"]]

async def test_month_end_balances_wait_for_a_month_closed_everywhere(
        counter_app: CounterApp) -> None:
    """Before any month is closed at every branch the page says so and offers no
    month-end balances: figures that could still change are not handed out."""
    app = counter_app
    await app.login(*OWNER)
    await app.user.open("/office/settlement")
    await app.user.should_see("月结：尚无月份在所有分店结账")
    await app.user.should_see(marker="export-settlement")
    await app.user.should_not_see(marker="export-month-end")


async def test_erasure_blanks_personal_data_and_keeps_the_figures(
        counter_app: CounterApp) -> None:
    app = counter_app
    ledger, op = app.ledger, app.node_owner
    mid = ledger.add_member(op, name="王芳", phone="13812345678", birthday="1990-05-17",
                            prefs={"strength": "重"})
    ledger.topup(op, mid, 12800)
    # Refused while the member holds stored value: the owner settles it first.
    with pytest.raises(InvalidInput, match="settle it first"):
        ledger.erase_member(op, mid)
    ledger.debit(op, mid, service="FOOT60")
    balance = ledger.balance(mid)
    assert balance["cash"] == 0
    await app.login(*OWNER)
    await app.user.open("/office/members")
    app.user.find(marker="erase-query").type("13812345678")
    app.user.find(marker="erase-find").click()
    await app.user.should_see("王芳")
    app.user.find(marker="erase").click()
    await app.user.should_see(marker="erase-confirm")
    app.user.find(marker="erase-confirm").click()
    await app.user.should_see("已删除个人资料")

    member = app.ledger.member(mid)
    assert (member["name"], member["phone"], member.get("birthday")) == ("", "", None)
    assert member["deleted"] is True and member["erased"] and not member.get("prefs")
    assert app.ledger.find_members("13812345678") == []
    assert app.ledger.balance(mid) == balance  # the accounts keep their figures
    doc = member_doc(mid)
    stored = b"".join(row[0] for row in app.ledger.storage.conn.execute(
        "SELECT data FROM log WHERE doc = ? UNION ALL SELECT data FROM snapshots WHERE name = ?",
        (doc, doc)))
    assert b"13812345678" not in stored and "王芳".encode() not in stored


def second_store(root: Path, chain_dir: Path, chain: str = "test") -> Ledger:
    """Another branch, enrolled in `chain_dir`'s chain: an enrolled store takes records
    only from keys its chain certifies (an open store's are self-signed). Enrolled
    120 days back: the month due is one it must close (one enrolled after a month is
    not waited for in it)."""
    Ledger.create(root, "SH02", chain)
    enrol(chain_dir, root, "SH02", not_before=datetime.now(UTC) - timedelta(days=120))
    return Ledger.open(root)


async def test_sync_file_round_trip_and_bad_files_change_nothing(
        counter_app: CounterApp, tmp_path: Path) -> None:
    app = counter_app
    mid = seed(app)
    await app.login(*OWNER)
    await app.user.open("/office/sync")

    # Export here, import at a branch without a network: it holds what we hold.
    data = await downloaded(app, "sync-export")
    other = second_store(tmp_path / "sh02", tmp_path / "chain")  # make_store's chain
    try:
        (tmp_path / "in.crdtsync").write_bytes(data)
        import_file(other, tmp_path / "in.crdtsync")
        assert other.state_vectors() == app.ledger.state_vectors()
        assert other.balance(mid) == app.ledger.balance(mid)

        # The other branch serves a member; its file comes back through the page.
        other_member = other.add_member(other.owner, name="赵磊", phone="13700002222")
        export_file(other, tmp_path / "back.crdtsync")
        upload = app.user.find(ui.upload).elements.pop()
        good = (tmp_path / "back.crdtsync").read_bytes()
        await upload.handle_uploads([SmallFileUpload("back.crdtsync", "", good)])
        await app.user.should_see("已导入")
        assert app.ledger.member(other_member)["name"] == "赵磊"
        assert app.ledger.states_digest() == other.states_digest()
    finally:
        other.close()

    before = app.ledger.state_vectors()
    damaged = bytearray(good)
    damaged[-5] ^= 0xFF
    await upload.handle_uploads([SmallFileUpload("bad.crdtsync", "", bytes(damaged))])
    await app.user.should_see("文件已损坏或不完整")
    await app.user.should_see("未做任何更改")
    assert app.ledger.state_vectors() == before

    init_chain(tmp_path / "other-chain", "elsewhere")
    foreign = second_store(tmp_path / "foreign", tmp_path / "other-chain", chain="elsewhere")
    try:
        foreign.add_member(foreign.owner, name="陌生人", phone="13600003333")
        export_file(foreign, tmp_path / "foreign.crdtsync")
    finally:
        foreign.close()
    await upload.handle_uploads([SmallFileUpload(
        "foreign.crdtsync", "", (tmp_path / "foreign.crdtsync").read_bytes())])
    await app.user.should_see("另一个连锁")
    assert app.ledger.state_vectors() == before


async def test_backup_downloads_a_store_that_opens(counter_app: CounterApp,
                                                   tmp_path: Path) -> None:
    from crdtledger.backups import restore

    app = counter_app
    mid = seed(app)
    await app.login(*OWNER)
    await app.user.open("/office/sync")
    data = await downloaded(app, "backup")
    assert data.startswith(b"CRDTLEDGER-SEALED backup 1\n")
    (tmp_path / "download.ledger.backup").write_bytes(data)
    # Sealed with the chain's secret: opened with the chain directory (make_store's).
    restore(tmp_path / "download.ledger.backup", tmp_path / "restored",
            chain_dir=tmp_path / "chain")
    with Ledger.open(tmp_path / "restored") as restored:
        assert restored.balance(mid) == app.ledger.balance(mid)



async def test_a_backup_refused_for_a_damaged_store_says_so(counter_app: CounterApp) -> None:
    """The store damaged (a record of its own log edited by hand): the backup refused,
    and the page said 正在备份… for good, the owner trusting a backup never made."""
    app = counter_app
    seed(app)
    conn = app.ledger.storage.conn
    seq, data = conn.execute("SELECT seq, data FROM records WHERE node = ? AND doc LIKE "
                             "'ledger/%' ORDER BY seq LIMIT 1", (NODE,)).fetchone()
    edited = bytearray(data)
    edited[len(edited) // 2] ^= 1
    with app.ledger.storage.transaction():
        conn.execute("UPDATE records SET data = ? WHERE node = ? AND seq = ?",
                     (bytes(edited), NODE, seq))
    await app.login(*OWNER)
    await app.user.open("/office/sync")
    app.user.find(marker="backup").click()
    await app.user.should_see("没有生成备份，之前的备份仍完好：本店的数据已损坏（record "
                              f"{seq} of this branch's own log ({NODE}) was changed")
    await app.user.should_see("请用最近一次完好的备份恢复（命令 crdtledger restore）")
    await app.user.should_not_see("正在备份")

async def test_cashier_sees_no_reports_or_admin_and_pages_refuse(
        counter_app: CounterApp) -> None:
    app = counter_app
    seed(app)
    await app.login(*CASHIER)
    await app.user.should_not_see("营业日报")
    await app.user.should_not_see("操作员")
    for path in ("/office", "/office/settlement", "/admin/operators", "/admin/services"):
        await app.user.open(path)
        await app.user.should_see("您没有打开")
        await app.user.should_not_see(marker="export-daily")
        await app.user.should_not_see(ui.table)
    # The sync page is open to all (is the branch connected?), its files are not.
    await app.user.open("/office/sync")
    await app.user.should_see("分店同步状态")
    await app.user.should_not_see(marker="sync-export")
    await app.user.should_not_see(marker="backup")


async def test_saving_the_levels_page_keeps_what_it_does_not_show(
        counter_app: CounterApp) -> None:
    """The page shows the top-up and correction limits of the approval rule, not a
    stock-take's: saving it reset one set by the command line to its default."""
    app = counter_app
    app.ledger.set_rule(app.node_owner, "approval", {
        **app.ledger.rule("approval"), "stock_adjust_limit": 50000})
    await app.login(*OWNER)
    await app.user.open("/admin/levels")
    app.user.find(marker="topup-limit").clear().type("6000.00")
    app.user.find(marker="save-rules").click()
    await app.user.should_see("已保存")
    approval = app.ledger.rule("approval")
    assert (approval["topup_limit"], approval["stock_adjust_limit"]) == (600000, 50000)


async def test_owner_adds_an_operator_and_changes_a_price(counter_app: CounterApp) -> None:
    app = counter_app
    mid = seed(app)
    await app.login(*OWNER)
    await app.user.should_see("营业日报")  # in the navigation

    await app.user.open("/admin/operators")
    app.user.find(marker="op-name").type("小李")
    app.user.find(marker="op-password").type("xiaoli-pw")
    app.user.find(marker="op-add").click()
    await app.user.should_see("已添加 小李")
    new_op = app.ledger.authenticate("小李", "xiaoli-pw")
    assert "debit" in app.ledger.permissions(new_op)
    assert "reports.view" not in app.ledger.permissions(new_op)

    await app.user.open("/admin/services")
    codes = {app.user.find(kind=ui.input, marker=f"row-{i}-code").elements.pop().value: i
             for i in range(3)}
    price = app.user.find(marker=f"row-{codes['FOOT60']}-price")
    price.clear().type("150")
    app.user.find(marker="save-rules").click()
    await app.user.should_see("已保存")
    assert app.ledger.rule("services")["FOOT60"]["price"] == 15000
    assert app.ledger.debit(new_op, mid, service="FOOT60")["amount"] == 15000

    price.clear().type("12.345")
    app.user.find(marker="save-rules").click()
    await app.user.should_see("金额不对")
    assert app.ledger.rule("services")["FOOT60"]["price"] == 15000


async def test_cut_off_banner_when_no_peer_is_reachable(counter_app: CounterApp) -> None:
    import socket

    app = counter_app
    await app.login(*OWNER)
    await app.user.should_not_see("断开连接")
    # A peer to dial whose port nobody listens on (taken and released: closed now).
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"wss://127.0.0.1:{port}"
    app.shop.node.config.peers.append(url)
    app.shop.node.dial(url)
    await app.user.open("/office/sync")
    await app.user.should_see("本店还没有连上其他分店")
    # Once the store remembers a sync round with SH02, the banner says since when.
    app.ledger.remember_peer("SH02", {})
    await app.user.open("/office/sync")
    await app.user.should_see("本店与其他分店断开连接（自")
    await app.user.should_see("可以继续收银")


async def test_large_correction_asks_for_an_approver(counter_app: CounterApp) -> None:
    app = counter_app
    mid = seed(app)  # 500.00 topped up, 128.00 spent: 372.00 (172.00 of it held here)
    ledger = app.ledger
    ledger.define_role(app.node_owner, "clerk", {"adjust"})
    ledger.add_operator(app.node_owner, "clerk1", "clerk-secret", ["clerk"])
    await app.login("clerk1", "clerk-secret")
    await app.user.open("/admin/corrections")
    app.user.find(marker="corr-query").type("13812345678")
    app.user.find(marker="corr-find").click()
    app.user.find(marker="corr-pick").click()
    await app.user.should_see("储值 ¥372.00")
    # 150.00 is above the default correction limit of 100.00: approver fields appear.
    app.user.find(marker="corr-change").type("-150")
    app.user.find(marker="corr-reason").type("记错了一笔")
    await app.user.should_see(marker="corr-approver")
    app.user.find(marker="corr-submit").click()
    await app.user.should_see("需要有审批权限的人")
    assert ledger.balance(mid)["cash"] == 37200

    app.user.find(marker="corr-approver").type(OWNER[0])
    app.user.find(marker="corr-approver-password").type(OWNER[1])
    app.user.find(marker="corr-submit").click()
    await app.user.should_see("已调账")
    assert ledger.balance(mid)["cash"] == 22200
    [entry] = [e for e in ledger.history(mid) if e["kind"] == "correction"]
    assert entry["approver"] == app.owner_id


async def test_corrections_counted_together_ask_for_an_approver(counter_app: CounterApp
                                                                 ) -> None:
    """Small corrections of a day count together against the limit: the page shows the
    approver's fields when the library asks for them, whatever the figure typed."""
    app = counter_app
    mid = seed(app)
    ledger = app.ledger
    ledger.define_role(app.node_owner, "clerk", {"adjust"})
    clerk = ledger.add_operator(app.node_owner, "clerk1", "clerk-secret", ["clerk"])
    ledger.correct(clerk, mid, "cash", 9000, "找零记错")  # 90.00 of the day's 100.00
    await app.login("clerk1", "clerk-secret")
    await app.user.open("/admin/corrections")
    app.user.find(marker="corr-query").type("13812345678")
    app.user.find(marker="corr-find").click()
    app.user.find(marker="corr-pick").click()
    app.user.find(marker="corr-change").type("20")
    app.user.find(marker="corr-reason").type("又记错了一笔")
    await app.user.should_not_see(marker="corr-approver")
    app.user.find(marker="corr-submit").click()
    await app.user.should_see("今天未经审批的累计金额已超过限额")
    assert ledger.balance(mid)["cash"] == 37200 + 9000
    await app.user.should_see(marker="corr-approver")
    app.user.find(marker="corr-approver").type(OWNER[0])
    app.user.find(marker="corr-approver-password").type(OWNER[1])
    app.user.find(marker="corr-submit").click()
    await app.user.should_see("已调账")
    assert ledger.balance(mid)["cash"] == 37200 + 9000 + 2000


async def test_a_restored_branch_says_it_cannot_sell_yet(counter_app: CounterApp) -> None:
    """The counter shows what the library enforces: a store restored from a backup
    refuses to sell until it has caught up with another branch."""
    app = counter_app
    mid = seed(app)
    await app.login(*OWNER)
    await app.user.should_not_see("备份恢复")
    app.ledger.restored = "2026-12-01 10:02"  # as a store opened from a backup says
    await app.user.open("/office/sync")
    await app.user.should_see("本店由 2026-12-01 10:02 的备份恢复")
    with pytest.raises(NotCaughtUp, match="connect to another branch before selling"):
        app.ledger.debit(app.node_owner, mid, amount=100)


async def test_the_sync_page_names_a_blocked_branch(counter_app: CounterApp) -> None:
    app = counter_app
    await app.login(*OWNER)
    with app.ledger.storage.transaction():
        app.ledger.storage.log.add_fault(
            "SH09", "rule", 3, "entry-writer",
            "record 3 of node SH09 broke rule entry-writer: an entry in SH01's name", 0)
    await app.user.open("/office/sync")
    await app.user.should_see(marker="fault")
    await app.user.should_see("SH09")


async def test_the_owner_hands_a_closing_shops_rights_over_from_the_sync_page(
        counter_app: CounterApp) -> None:
    """The sync page's hand-over: what this shop holds, a branch to choose, a question
    before it; a cashier is not offered it."""
    app = counter_app
    ledger, op = app.ledger, app.node_owner
    mid = ledger.add_member(op, name="王芳", phone="13812345678")
    ledger.topup(op, mid, 12800)
    await app.login(*CASHIER)
    await app.user.open("/office/sync")
    await app.user.should_not_see(marker="handover")
    await app.logout()
    await app.login(*OWNER)
    await app.user.open("/office/sync")
    await app.user.should_see("本店持有 1 位会员的权益：储值 ¥128.00")
    app.user.find(marker="handover").click()  # no branch chosen: nothing happens
    await app.user.should_see("请选择接收的分店")
    assert views.rights_summary(ledger, NODE)["held"] == {"cash": 12800}
    await hand_over_to(app, "SH02")
    await app.user.should_see("已移交")
    await app.user.should_see("本店已移交给")
    await app.user.should_see("本店销售的退款由其办理")
    assert ledger.rights(mid, "cash") == {"SH02": 12800}
    assert ledger.balance(mid)["cash"] == 12800


async def test_a_shop_holding_nothing_is_asked_to_hand_over_to_name_who_refunds(
        counter_app: CounterApp) -> None:
    """A shop that holds no member's rights (all spent, or it sold only at the till)
    still hands over, to name the branch that refunds its sales: the card says so, and
    once done, which branch that is."""
    app = counter_app
    ledger = app.ledger
    await app.login(*OWNER)
    await app.user.open("/office/sync")
    await app.user.should_see("闭店前仍请移交，以指定为本店的销售办理退款的分店")
    await hand_over_to(app, "SH02")
    await app.user.should_see("本店已移交给")
    assert ledger.refunds_at({"node": NODE}) == "SH02"


async def hand_over_to(app: CounterApp, branch: str) -> None:
    """The sync page's hand-over card: `branch` chosen, the button, the question
    answered yes."""
    to = app.user.find(marker="handover-to").elements.pop()
    assert isinstance(to, ui.select)
    to.set_value(branch)
    app.user.find(marker="handover").click()
    await app.user.should_see(marker="handover-confirm")
    app.user.find(marker="handover-confirm").click()


async def test_a_manager_confirms_this_pcs_clock_from_the_sync_page(
        counter_app: CounterApp) -> None:
    """What waits for a confirmed clock with no peer connected (the month-end cut, a
    clock set back: Ledger.check_clock_for) named `本机时钟已核对` as the way on, and
    no page offered it: only the command line. The sync page does, to an operator
    allowed to adjust, with a question first; a cashier is not offered it."""
    app = counter_app
    await app.login(*CASHIER)
    await app.user.open("/office/sync")
    await app.user.should_not_see(marker="clock-confirm")
    await app.logout()
    await app.login(*OWNER)
    await app.user.open("/office/sync")
    await app.user.should_see(marker="clock-now")
    assert not app.ledger.clock_confirmed_today()
    app.user.find(marker="clock-confirm").click()
    await app.user.should_see(marker="clock-confirm-yes")
    app.user.find(marker="clock-confirm-yes").click()
    await app.user.should_see("已记录：本机时钟已核对（今天有效）")
    assert app.ledger.clock_confirmed_today()


async def test_a_role_named_as_another_is_said_in_chinese(counter_app: CounterApp) -> None:
    """A new role "Manager", "\u043ewner" (a Cyrillic о) or "店长" (as this page names
    the built-in manager) was created: the role list showed two 店长 or two 店主, of
    other permissions, for whoever grants one to pick from."""
    app = counter_app
    await app.login(*OWNER)
    await app.user.open("/admin/roles")
    held = views.defined_roles(app.ledger)
    for typed, said in (("Manager", "店长"), ("\u043ewner", "店主"), ("店长", "店长"),
                        ("ｃａｓｈｉｅｒ", "收银员")):
        app.user.find(marker="role-name").clear().type(typed)
        app.user.find(marker="role-add").click()
        await app.user.should_see(f"已有角色叫 {said}：请换一个名字（全角半角、大小写不同，"
                                  "或用了样子相同的俄文、希腊字母，也算同名）。")
        app.user.notify.messages.clear()
    assert views.defined_roles(app.ledger) == held


async def test_an_operator_or_a_level_named_as_another_is_said_in_chinese(
        counter_app: CounterApp) -> None:
    """An operator "ＢＯＳＳ" beside boss, and two levels named alike ("金卡" and "金卡 "),
    are refused by the library: the office pages say so in Chinese, not its English."""
    app = counter_app
    await app.login(*OWNER)
    await app.user.open("/admin/operators")
    app.user.find(marker="op-name").type("ＢＯＳＳ")
    app.user.find(marker="op-password").type("another-pw")
    app.user.find(marker="op-add").click()
    await app.user.should_see("已有操作员叫 boss")
    # A Cyrillic о in it reads as boss on every receipt too (operators are few: the
    # list shows each once).
    app.user.find(marker="op-name").clear().type("b\u043ess")
    app.user.find(marker="op-add").click()
    await app.user.should_see("已有操作员叫 boss：请换一个名字（全角半角、大小写不同，"
                              "或用了样子相同的俄文、希腊字母，也算同名）。")
    assert [n for (n,) in app.ledger.storage.conn.execute(
        "SELECT name FROM operators")].count("b\u043ess") == 0
    assert app.ledger.authenticate("boss", OWNER[1])
    levels = app.ledger.rule("levels")
    await app.user.open("/admin/levels")
    app.user.find(marker="row-1-name").clear().type(f"{levels[0]['name']} ")
    app.user.find(marker="save-rules").click()
    await app.user.should_see(f"有两个会员等级都叫“{levels[0]['name']}”")
    assert app.ledger.rule("levels") == levels
