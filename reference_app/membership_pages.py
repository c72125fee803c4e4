"""The membership workflows' pages (crdtledger.membership): check-in (签到) at the
counter with the card reader, referrals (老带新) and their two approvals, member exit
(退会) and return, in the back office.

Every write goes through the operation table (Shop.operation, run by the node, which
fetches rights another branch holds: an exit's value), so the pages take the same
checks, permissions and refusals as the command line and the API.
"""

from __future__ import annotations

import asyncio
from typing import Any

from nicegui import ui

from crdtledger import views
from crdtledger.errors import (
    CardInactive,
    CardLost,
    InvalidInput,
    LedgerError,
    NotFound,
    PermissionDenied,
)
from crdtledger.inputs import blank
from crdtledger.membership import REPEATS, attendance_csv_rows
from crdtledger.model import ID
from reference_app import layout
from reference_app.backoffice import csv_bytes, export_button, refuse
from reference_app.i18n import money, tr
from reference_app.readers import ReaderEvent
from reference_app.shop import can, operator, shop

_REFERRAL_STATUS = {"pending": ("待一级审批", "awaiting level 1"),
                    "approved1": ("待二级审批", "awaiting level 2"),
                    "approved": ("已批准，待发放", "approved, reward due"),
                    "granted": ("已发放奖励", "rewarded"), "rejected": ("已驳回", "rejected"),
                    "void": ("无效（重复推荐）", "void (a second referral)")}
_EXIT_STATUS = {"pending": ("待审核", "pending"), "approved": ("已批准", "approved"),
                "rejected": ("已驳回", "rejected")}


def member_of(text: str) -> str:
    """The one member a typed id, card number, phone or name names (exited members
    by their id only: the search hides them)."""
    ledger = shop().ledger
    q = text.strip()
    # Said in the session's language, as the bookings page says it (Shop.refusal puts
    # "找不到：" or "输入有误：" before): the cashier reads these, not the library.
    if not q:
        raise InvalidInput(tr("请输入会员的卡号、手机号或会员号。",
                              "enter the member's card number, phone or member id"))
    if ID.match(q):
        if not views.member_exists(ledger, q):
            raise NotFound(tr("会员号为 {q} 的会员", "a member with the id {q}", q=q))
        return q
    found = ledger.find_members(q, limit=3)
    if not found:
        raise NotFound(tr("与“{q}”相符的会员（请输入卡号、手机号或会员号）",
                          "a member matching “{q}” (enter a card number, phone or member "
                          "id)", q=q))
    if len(found) > 1:
        raise InvalidInput(tr("不止一位会员与“{q}”相符：请输入卡号、手机号或会员号。",
                              "more than one member matches “{q}”: enter a card number, "
                              "phone or member id", q=q))
    return str(found[0]["id"])


def _whole(value: Any, empty: int) -> Any:
    """A number box's value for an operation: a whole number as int, an empty box as
    `empty`, anything else as typed, for the operation to refuse (int() saved 2 for
    2.5, and 1 for a per-day of 0)."""
    if value is None:
        return empty
    return int(value) if float(value).is_integer() else value


def _attendance_status(row: dict[str, Any]) -> str:
    if row["status"] == "ok":
        return tr("有效", "ok")
    if row["status"] == "surplus":  # its branch reverses it at its next housekeeping
        return tr("超限（待冲回）", "surplus (to be reversed)")
    if row["unrecovered"]:  # spent or converted at that branch before the reversal
        return tr("超限（冲回 {r} 分，{u} 分未能冲回）",
                  "surplus ({r} points reversed, {u} not recovered)",
                  r=row["reversed"], u=row["unrecovered"])
    return tr("超限（已冲回 {r} 分）", "surplus ({r} points reversed)", r=row["reversed"])


def _name(member: str) -> str:
    name = views.member_names(shop().ledger, [member]).get(member)
    return f"{name} [{member}]" if name else member


async def _run(op_name: str, /, **params: Any) -> Any:
    """One operation as the operator logged in; None (and a notice) if refused."""
    s, op = shop(), operator()
    try:
        if op is None:  # this page's login ended: said, not a silent press
            raise PermissionDenied("nobody is logged in")
        return await s.run(s.operation(op, op_name, **params), op_name)
    except LedgerError as e:
        refuse(e)
        return None


# --- check-in (签到) ----------------------------------------------------------------------


class CheckinPage:
    """Pick the activity this counter runs; every card swiped checks its member in."""

    def __init__(self) -> None:
        self.shop = shop()
        acts = self.shop.ledger.activities()
        self.activity = ui.select({c: f"{a['name']} ({c})" for c, a in sorted(acts.items())},
                                  label=tr("签到活动", "Activity"),
                                  value=next(iter(sorted(acts)), None)).classes("w-80") \
            .mark("activity")
        if not acts:
            ui.label(tr("还没有签到活动：总店在下面设置。",
                        "No check-in activity yet: head office sets one below.")) \
                .mark("no-activity")
        ui.label(tr("请会员刷卡，或输入卡号/手机号：",
                    "Members swipe their card, or type a card number or phone:"))
        with ui.row().classes("items-center gap-2"):
            self.who = ui.input(tr("卡号 / 手机号 / 会员号", "Card / phone / member id")) \
                .classes("w-80").mark("checkin-who")
            layout.once(ui.button(tr("签到", "Check in"), icon="how_to_reg"), self.typed
                        ).mark("checkin-go")
        self.result = ui.label().classes("text-lg").mark("checkin-result")
        self.report = ui.column().classes("w-full")
        self.draw_report()
        self.activity.on_value_change(lambda _e: self.draw_report())
        self.listen()
        if can("rules.manage"):
            self.setup()

    def listen(self) -> None:
        """The node's card reader, once this page holds it (reference_app.shop.ReaderPages:
        a check-in screen in another browser checked in every member who paid at a till)."""
        def listener(event: ReaderEvent) -> None:
            if event.kind == "card":
                asyncio.get_running_loop().create_task(self.swiped(str(event.value)))
            elif event.kind == "status":
                here.set_visibility(not pages.holds(page))

        def take() -> None:
            pages.claim(page)
            self.shop.reader_event(ReaderEvent("status", "", "claim"))

        pages = self.shop.listeners
        page = layout.follow_reader(pages, listener)
        here = ui.button(tr("在此刷卡签到", "Swipe cards here to check in"),
                         icon="contactless", on_click=take).props("flat dense size=sm") \
            .mark("reader-here")
        here.set_visibility(not pages.holds(page))

    async def swiped(self, card_no: str) -> None:
        try:
            card = self.shop.ledger.card(card_no)
            # As the till refuses them (crdtledger.cards), for Shop.refusal's sentences.
            if card["status"] == "lost":
                raise CardLost(f"card {card_no} is reported lost")
            if card["status"] != "active":
                raise CardInactive(f"card {card_no} is {card['status']}")
        except LedgerError as e:
            self.result.set_text(self.shop.refusal(e))
            return
        await self.check_in(str(card["member"]))

    async def typed(self) -> None:
        try:
            member = member_of(str(self.who.value or ""))
        except LedgerError as e:
            self.result.set_text(self.shop.refusal(e))
            return
        await self.check_in(member)
        self.who.set_value("")

    async def check_in(self, member: str) -> None:
        code = self.activity.value
        if not code:
            self.result.set_text(tr("请先选择签到活动。", "Pick an activity first."))
            return
        s, op = self.shop, operator()
        try:
            if op is None:  # this page's login ended: said, not a silent press
                raise PermissionDenied("nobody is logged in")
            e = await s.run(s.operation(op, "checkin", activity=code, member=member), "checkin")
        except LedgerError as err:
            self.result.set_text(s.refusal(err))
            return
        self.result.set_text(tr("{name} 签到成功，积分 +{points}",
                                "{name} checked in, +{points} points",
                                name=_name(member), points=int(e.get("points") or 0)))
        self.draw_report()

    def draw_report(self) -> None:
        self.report.clear()
        code = self.activity.value
        if not code or not can("reports.view"):
            return
        ledger = self.shop.ledger
        rows = ledger.attendance(code)
        with self.report:
            ui.label(tr("签到记录", "Attendance")).classes("text-lg font-bold")
            ui.table(columns=[{"name": k, "label": label, "field": k} for k, label in (
                ("day", tr("日期", "Day")), ("time", tr("时间", "Time")),
                ("branch", tr("分店", "Branch")), ("name", tr("会员", "Member")),
                ("points", tr("积分", "Points")), ("status", tr("状态", "Status")))],
                rows=[{**r, "branch": self.shop.branch_name(r["branch"]),
                       "status": _attendance_status(r)} for r in rows],
                row_key="entry").classes("w-full").mark("attendance")
            csv_rows = attendance_csv_rows(rows)
            export_button(tr("导出 CSV", "Export CSV"),
                          lambda: (csv_bytes(csv_rows[0], csv_rows[1:]),
                                   f"checkin-{code}-{ledger.today()}.csv"),
                          "export-attendance")

    def setup(self) -> None:
        with ui.expansion(tr("设置签到活动（总店）", "Set an activity (head office)"),
                          icon="event").classes("w-full"):
            with ui.row().classes("gap-2 items-end"):
                code = ui.input(tr("代码", "Code")).mark("act-code")
                name = ui.input(tr("名称", "Name")).mark("act-name")
                start = ui.input(tr("开始", "From"), placeholder="2026-12-01T09:00") \
                    .mark("act-from")
                end = ui.input(tr("结束", "To"), placeholder="2026-12-31T21:00").mark("act-to")
                points = ui.number(tr("积分", "Points"), value=10, min=0, step=1) \
                    .mark("act-points")
                repeat = ui.select({"once": tr("只一次", "once"),
                                    "daily": tr("每天", "daily")}, value=REPEATS[0],
                                   label=tr("重复", "Repeat")).mark("act-repeat")
                per_day = ui.number(tr("每天次数", "Per day"), value=1, min=1, step=1) \
                    .mark("act-per-day")

            async def save() -> None:
                if blank(str(name.value or "")):
                    # Said here: the library's "name is required" reads as a member's
                    # name (姓名) on every other page.
                    ui.notify(tr("请填写活动名称（不能只有空格）。",
                                 "Give the activity a name (not spaces alone)."),
                              type="negative")
                    return
                got = await _run("activity.set", code=str(code.value or "").strip(),
                                 name=str(name.value or "").strip(),
                                 **{"from": str(start.value or "").strip(),
                                    "to": str(end.value or "").strip()},
                                 points=_whole(points.value, 0), repeat=repeat.value,
                                 per_day=_whole(per_day.value, 1))
                if got is not None:
                    ui.notify(tr("已保存，各分店同步后生效。",
                                 "Saved: branches apply it once synced."), type="positive")
                    ui.navigate.to("/checkin")

            layout.once(ui.button(tr("保存活动", "Save activity")), save).mark("act-save")


# --- referrals (老带新) ---------------------------------------------------------------------


def referrals_page() -> None:
    ledger = shop().ledger
    if can("member.add"):
        with ui.row().classes("items-end gap-2"):
            member = ui.input(tr("新会员（手机/卡号/会员号）", "New member (phone/card/id)")) \
                .classes("w-72").mark("ref-member")
            referrer = ui.input(tr("推荐人（手机/卡号/会员号）", "Referrer (phone/card/id)")) \
                .classes("w-72").mark("ref-referrer")

            async def record() -> None:
                try:
                    m, r = member_of(str(member.value or "")), member_of(str(referrer.value or ""))
                except LedgerError as e:
                    refuse(e)
                    return
                if await _run("referral.add", member=m, referrer=r) is not None:
                    ui.navigate.to("/office/referrals")

            layout.once(ui.button(tr("登记推荐", "Record referral")), record).mark("ref-add")
    if can("referral.approve2"):
        async def grant() -> None:
            got = await _run("referral.grant")
            if got is not None:
                ui.notify(tr("发放了 {n} 笔奖励", "{n} reward(s) granted", n=len(got)))
                ui.navigate.to("/office/referrals")

        layout.once(ui.button(tr("发放已批准的奖励", "Grant approved rewards")), grant) \
            .props("outline").mark("ref-grant")
    rows = ledger.referrals()
    if not rows:
        ui.label(tr("还没有推荐记录。", "No referrals yet.")).mark("no-referrals")
    for v in rows:
        rid = str(v["referral"])
        zh, en = _REFERRAL_STATUS[str(v["status"])]
        with ui.card().classes("w-full").mark(f"referral-{rid}"):
            ui.label(tr("{referrer} 推荐了 {member}（{branch}，{on}）：{status}",
                        "{referrer} referred {member} ({branch}, {on}): {status}",
                        referrer=_name(str(v["referrer"])), member=_name(str(v["member"])),
                        branch=shop().branch_name(str(v["branch"])), on=v["on"],
                        status=tr(zh, en))).mark(f"referral-status-{rid}")
            with ui.row():
                for level in (1, 2):
                    if can(f"referral.approve{level}") and v["status"] in (
                            "pending", "approved1"):
                        _decide_buttons(rid, level)


def _decide_buttons(rid: str, level: int) -> None:
    async def decide(reject: bool) -> None:
        if await _run(f"referral.approve{level}", referral=rid, reject=reject) is not None:
            ui.navigate.to("/office/referrals")

    layout.once(ui.button(tr("{level}级批准", "Approve (level {level})", level=level)),
                lambda: decide(False)).mark(f"approve{level}-{rid}")
    layout.once(ui.button(tr("{level}级驳回", "Reject (level {level})", level=level)),
                lambda: decide(True)).props("flat color=negative") \
        .mark(f"reject{level}-{rid}")


# --- exit and return (退会) -------------------------------------------------------------------


def exits_page() -> None:
    ledger = shop().ledger
    rule = str(ledger.rule("exit")["stored_value"])
    ui.label(tr("退会时剩余储值：{rule}（赠送金额不退）",
                "Stored value on exit: {rule} (bonus value is never paid out)",
                rule=tr("退还现金", "refunded in cash") if rule == "refund"
                else tr("不退（转为收入）", "forfeited (income)")))
    if can("member.exit"):
        with ui.row().classes("items-end gap-2"):
            who = ui.input(tr("会员（手机/卡号/会员号）", "Member (phone/card/id)")) \
                .classes("w-72").mark("exit-member")
            reason = ui.input(tr("原因", "Reason")).classes("w-72").mark("exit-reason")

            async def apply() -> None:
                try:
                    m = member_of(str(who.value or ""))
                except LedgerError as e:
                    refuse(e)
                    return
                if await _run("exit.apply", member=m,
                              reason=str(reason.value or "").strip()) is not None:
                    ui.navigate.to("/office/exits")

            layout.once(ui.button(tr("提交退会申请", "Apply for exit")), apply
                        ).mark("exit-apply")
    ui.label(tr("申请", "Applications")).classes("text-lg font-bold")
    apps = ledger.exits()
    if not apps:
        ui.label(tr("没有申请。", "No applications.")).mark("no-exits")
    for v in apps:
        aid = str(v["application"])
        zh, en = _EXIT_STATUS[str(v["status"])]
        what = tr("退会", "exit") if v["step"] == "exit" else tr("恢复", "return")
        with ui.card().classes("w-full").mark(f"exit-{aid}"):
            line = tr("{what}：{member}，原因：{reason}；申请人 {by}（{on}）：{status}",
                      "{what}: {member}, reason: {reason}; by {by} ({on}): {status}",
                      what=what, member=_name(str(v["member"])), reason=v["reason"],
                      by=shop().operator_name(str(v["by"])), on=v["on"], status=tr(zh, en))
            if v["settled"] == "refund":
                line += tr("；退还现金 {paid}", "; {paid} paid back in cash",
                           paid=money(int(v["paid"])))
            if v["forfeited"]:
                line += tr("；不退金额 {f}", "; {f} forfeited", f=money(int(v["forfeited"])))
            ui.label(line).mark(f"exit-status-{aid}")
            if v["status"] == "pending" and can("member.exit.approve"):
                with ui.row():
                    _exit_buttons(aid)
    ui.label(tr("已退会会员", "Members who left")).classes("text-lg font-bold")
    gone = ledger.exited()
    if not gone:
        ui.label(tr("没有。", "None.")).mark("no-exited")
    for m in gone:
        with ui.row().classes("items-center gap-2").mark(f"exited-{m['id']}"):
            ui.label(f"{m['name']} {m['phone']} [{m['id']}]")
            if can("member.exit"):
                _return_button(str(m["id"]))


def _exit_buttons(aid: str) -> None:
    async def decide(reject: bool) -> None:
        if await _run("exit.approve", application=aid, reject=reject) is not None:
            ui.navigate.to("/office/exits")

    layout.once(ui.button(tr("批准", "Approve")), lambda: decide(False)
                ).mark(f"exit-approve-{aid}")
    layout.once(ui.button(tr("驳回", "Reject")), lambda: decide(True)) \
        .props("flat color=negative").mark(f"exit-reject-{aid}")


def _return_button(member: str) -> None:
    async def back() -> None:
        if await _run("exit.return", member=member,
                      reason=tr("会员回来了", "the member came back")) is not None:
            ui.navigate.to("/office/exits")

    layout.once(ui.button(tr("申请恢复", "Apply for return")), back) \
        .props("outline dense").mark(f"return-{member}")


# --- registration --------------------------------------------------------------------------


def register() -> None:
    """The pages and their entries in the navigation (app.build calls this)."""
    layout.nav("/checkin", "签到", "Check-in", "checkin", "how_to_reg")
    layout.nav("/office/referrals", "推荐审批", "Referrals", "member.add", "group_add")
    layout.nav("/office/exits", "退会", "Member exit", "member.exit", "person_off")

    @ui.page("/checkin")
    def checkin() -> None:
        with layout.frame(tr("签到", "Check-in"), permission="checkin"):
            CheckinPage()

    @ui.page("/office/referrals")
    def referrals() -> None:
        # Approvers at head office may hold only referral.approve2: either opens it.
        perm = "member.add" if can("member.add") else "referral.approve2"
        with layout.frame(tr("推荐审批", "Referrals"), permission=perm):
            referrals_page()

    @ui.page("/office/exits")
    def exits() -> None:
        perm = "member.exit" if can("member.exit") else "member.exit.approve"
        with layout.frame(tr("退会", "Member exit"), permission=perm):
            exits_page()


__all__ = ["CheckinPage", "member_of", "register"]
