"""The counter's bookings page (预约): the day's appointments of this branch's
technicians, booking a slot for a member, cancelling, and marking a no-show.

Every write is an operation of the table (booking.add, booking.cancel, booking.noshow)
run on the node (`Shop.run`), as the command line and the API run them. Requests made
at other branches for this branch's technicians are decided by the node as they
arrive (crdtledger.bookings.decide); one still undecided is shown marked. Bookings
made here for another branch's technician are listed apart: they stay pending until
that branch hears of them.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from nicegui import ui

from crdtledger import bookings, views
from crdtledger.errors import LedgerError, NotFound, PermissionDenied
from crdtledger.schema import is_date
from reference_app import layout
from reference_app.i18n import tr
from reference_app.shop import operator, shop

PATH = "/bookings"
PERMISSION = "booking.write"

STATUS = {  # status -> (zh, en, colour)
    "pending": ("待确认", "pending", "orange"),
    "confirmed": ("已确认", "confirmed", "positive"),
    "refused": ("已拒绝", "refused", "negative"),
    "cancelled": ("已取消", "cancelled", "grey"),
    "no_show": ("爽约", "no-show", "deep-orange"),
    "done": ("已完成", "done", "teal"),
}


def status_label(status: str) -> str:
    zh, en, _ = STATUS.get(status, (status, status, "grey"))
    return tr(zh, en)


def _member_line(b: dict[str, Any]) -> str:
    try:
        m = shop().ledger.member(b["member"])
    except LedgerError:
        return str(b["member"])
    return f"{m.get('name', '')} {views.mask_phone(str(m.get('phone', '')))}"


def _find_member(text: str) -> str:
    """A member by phone or id, as the cashier typed it."""
    ledger = shop().ledger
    text = text.strip()
    if views.member_exists(ledger, text):
        return text
    found = views.member_by_phone(ledger, text)
    if found is None:
        raise NotFound(tr("没有手机号或会员号为 {t} 的会员", "no member with phone or id {t}",
                          t=text))
    return found


async def _write(name: str, **params: Any) -> dict[str, Any] | None:
    op = operator()
    s = shop()
    try:
        if op is None:
            raise PermissionDenied("nobody is logged in")
        result: dict[str, Any] = await s.run(s.operation(op, name, **params), name)
    except LedgerError as e:
        ui.notify(s.refusal(e), type="negative", multi_line=True)
        return None
    return result


# The days the page shows: any real date of these years (the library turns a day into
# a time of the chain's zone, which year 1 is out of range for).
FIRST_DAY, LAST_DAY = "1970-01-01", "9998-12-31"


def _a_day(value: Any) -> bool:
    """Whether `value` is a day the page can show: YYYY-MM-DD, a real date, in range."""
    return isinstance(value, str) and is_date(value) and FIRST_DAY <= value <= LAST_DAY


def _quoted(value: Any) -> str:
    """A value typed or sent, as a notice quotes it: a few characters on one line."""
    text = "".join(c for c in " ".join(str(value).split()) if c.isprintable())
    return text if len(text) <= 12 else text[:10] + "…"


def page() -> None:
    s = shop()
    ledger = s.ledger
    here = ledger.node
    state: dict[str, Any] = {"day": ledger.today()}
    ui.label(tr("本店技师当天的预约；其他分店为本店技师约的时段由本店确认（未确认的标为待确认）。"
                "本店为其他分店技师约的时段，要等那家分店确认。",
                "The day's appointments of this branch's technicians; a slot another branch "
                "asks for is confirmed by this branch (marked pending until then). A slot "
                "booked here with another branch's technician waits for that branch.")
             ).classes("text-sm text-grey-7 max-w-3xl")

    with ui.row().classes("items-center gap-4"):
        day_input = ui.input(tr("日期", "Day"), value=state["day"]).props("type=date") \
            .mark("booking-day")

    def set_day() -> None:
        value = day_input.value
        if value and not _a_day(value):
            # The date picker sends a whole date or nothing; anything else was made up
            # in the browser ("2026-02-30", 3,000 x's): said in the counter's words,
            # the text quoted short, and the day shown stays.
            ui.notify(tr("日期不对（{typed}）：请按 2026-12-03 的格式输入",
                         "Not a date ({typed}): type it like 2026-12-03",
                         typed=_quoted(value)), type="warning")
            return
        state["day"] = value or ledger.today()
        listing.refresh()
        slots_for.refresh()

    day_input.on_value_change(lambda _e: set_day())

    @ui.refreshable
    def listing() -> None:
        day = state["day"]
        try:
            ours = bookings.list_bookings(ledger, branch=here, day=day)
            theirs = [b for b in bookings.list_bookings(ledger, day=day)
                      if b["branch"] != here and b["made_at"] == here]
        except LedgerError as e:
            ui.label(s.refusal(e)).classes("text-negative")
            return
        with ui.card().classes("w-full max-w-5xl"):
            ui.label(tr("本店技师的预约", "This branch's technicians")) \
                .classes("text-lg font-medium")
            if not ours:
                ui.label(tr("当天没有预约", "No bookings that day")).classes("text-grey-7")
            for b in ours:
                _row(b, own=True)
        if theirs:
            with ui.card().classes("w-full max-w-5xl"):
                ui.label(tr("本店为其他分店技师约的", "Booked here with other branches' "
                            "technicians")).classes("text-lg font-medium")
                for b in theirs:
                    _row(b, own=False)

    def _row(b: dict[str, Any], *, own: bool) -> None:
        _zh, _en, colour = STATUS.get(b["status"], ("", "", "grey"))
        with ui.row().classes("items-center gap-3 w-full").mark(f"booking-{b['booking']}"):
            ui.label(f"{b['at'][-5:]}-{b['end']}").classes("font-mono w-28")
            ui.label(f"{b['technician']} {b['technician_name']}").classes("w-32")
            if not own:
                ui.label(s.branch_name(b["branch"])).classes("w-28 text-grey-7")
            ui.label(s.service_name(b["service"]) or b["service"]).classes("w-40")
            ui.label(_member_line(b)).classes("w-44")
            ui.badge(status_label(b["status"]), color=colour).mark(f"status-{b['booking']}")
            if b["made_at"] != here:
                ui.label(tr("{branch}约的", "from {branch}",
                            branch=s.branch_name(b["made_at"]))).classes("text-grey-7 text-sm")
            if b.get("reason"):
                ui.label(b["reason"]).classes("text-sm text-grey-7")
            ui.space()
            if b["status"] in ("pending", "confirmed"):
                layout.once(ui.button(tr("取消", "Cancel")), partial(cancel, b["booking"])) \
                    .props("dense outline").mark(f"cancel-{b['booking']}")
            if own and b["status"] in ("confirmed", "done") \
                    and b["start"] <= ledger.clock.wall():
                layout.once(ui.button(tr("爽约", "No-show")), partial(noshow, b["booking"])) \
                    .props("dense outline color=deep-orange").mark(f"noshow-{b['booking']}")

    async def cancel(bid: str) -> None:
        if await _write("booking.cancel", booking=bid) is not None:
            ui.notify(tr("预约已取消", "Booking cancelled"), type="positive")
            refresh_all()

    async def noshow(bid: str) -> None:
        if await _write("booking.noshow", booking=bid) is not None:
            ui.notify(tr("已记为爽约", "Recorded as a no-show"), type="positive")
            refresh_all()

    techs = {t["id"]: t for t in bookings.technicians(ledger) if t["active"]}
    tech_options = {tid: f"{t['code']} {t['name']} · {s.branch_name(t['branch'])}"
                    for tid, t in sorted(techs.items(),
                                         key=lambda kv: (kv[1]["branch"] != here,
                                                         kv[1]["branch"], kv[1]["code"]))}
    form: dict[str, Any] = {"technician": next(iter(tech_options), None), "service": None,
                            "time": None}

    async def book() -> None:
        try:
            member = _find_member(member_input.value or "")
        except LedgerError as e:
            ui.notify(str(e), type="negative")
            return
        if not form["technician"] or not form["service"] or not form["time"]:
            ui.notify(tr("请选择技师、服务和时间", "Choose a technician, a service and a time"),
                      type="warning")
            return
        done = await _write("booking.add", member=member, technician=form["technician"],
                            service=form["service"], at=f"{state['day']}T{form['time']}")
        if done is not None:
            if done["status"] == "confirmed":
                ui.notify(tr("预约成功：{at} {tech}", "Booked: {at} {tech}", at=done["at"],
                             tech=done["technician_name"]), type="positive")
            else:
                ui.notify(tr("已发给{branch}确认（待确认）",
                             "Sent to {branch} to confirm (pending)",
                             branch=s.branch_name(done["branch"])), type="info")
            # The form is cleared by its write: the Book button is drawn again where it
            # was, and a double click's second click booked the member again at the
            # day's first free time, which nobody chose.
            member_input.set_value("")
            refresh_all()

    def refresh_all() -> None:
        listing.refresh()
        slots_for.refresh()

    with ui.card().classes("w-full max-w-5xl"):
        ui.label(tr("为会员预约", "Book for a member")).classes("text-lg font-medium")
        if not techs:
            ui.label(tr("还没有技师。请在命令行用 crdtledger technician add 添加。",
                        "No technicians yet: add them with crdtledger technician add.")) \
                .classes("text-grey-7")
        with ui.row().classes("items-end gap-4"):
            member_input = ui.input(tr("会员手机号或会员号", "Member phone or id")) \
                .mark("booking-member")
            tech_select = ui.select(tech_options, label=tr("技师", "Technician"),
                                    value=form["technician"]).classes("w-64") \
                .mark("booking-technician")

        @ui.refreshable
        def slots_for() -> None:
            tech = techs.get(form["technician"] or "")
            if tech is None:
                return
            services = {c: f"{c} {s.service_name(c)}" for c in tech["services"]}
            if form["service"] not in services:
                form["service"] = next(iter(services), None)
            with ui.row().classes("items-end gap-4"):
                ui.select(services, label=tr("服务", "Service"), value=form["service"],
                          on_change=lambda e: pick_service(e.value)) \
                    .classes("w-64").mark("booking-service")
                try:
                    free = bookings.slots(ledger, tech["id"], state["day"], form["service"])
                except LedgerError as e:
                    ui.label(s.refusal(e)).classes("text-negative")
                    return
                if form["time"] not in free:
                    form["time"] = free[0] if free else None
                ui.select(free, label=tr("时间", "Time"), value=form["time"],
                          on_change=lambda e: form.__setitem__("time", e.value)) \
                    .classes("w-32").mark("booking-time")
                if not free:
                    ui.label(tr("当天没有空闲时段", "No free time that day")).classes("text-grey-7")
                layout.once(ui.button(tr("预约", "Book")), book).mark("booking-add")

        def pick_service(value: Any) -> None:
            form["service"] = value
            slots_for.refresh()

        def pick_technician(value: Any) -> None:
            form["technician"] = value
            slots_for.refresh()

        tech_select.on_value_change(lambda e: pick_technician(e.value))
        slots_for()

    listing()

    # The store changed (a request decided here, a confirmation from the technician's
    # branch): read the day again.
    layout.follow(s.watchers, refresh_all)


def register() -> None:
    layout.nav(PATH, "预约", "Bookings", PERMISSION, "event")

    @ui.page(PATH)
    def bookings_page() -> None:
        with layout.frame(tr("预约", "Bookings"), permission=PERMISSION):
            page()
