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

import re
from collections.abc import Callable
from functools import partial
from typing import Any

from nicegui import ui

from crdtledger import bookings, views
from crdtledger.bookings import BookingRefused
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
        ui.notify(_refusal(e) or s.refusal(e), type="negative", multi_line=True)
        return None
    return result


def _refusal(e: LedgerError) -> str | None:
    """The library's refusal of a booking, a cancel or a no-show as the cashier reads
    it (_REFUSALS), else None. Its sentences are English and name the booking's id: a
    booking cancelled at another till before this page's Cancel landed read "操作被拒绝：
    booking 038J…SH01 is cancelled: nothing to cancel"."""
    if not isinstance(e, BookingRefused):
        return None
    for pattern, say in _REFUSALS:
        m = pattern.fullmatch(str(e))
        if m:
            return say(m)
    return None


_REFUSALS: tuple[tuple[re.Pattern[str], Callable[[re.Match[str]], str]], ...] = (
    (re.compile(r"technician (\S+) \((.*)\) is booked (\S+) that day.*", re.S),
     lambda m: tr("技师 {code} {name} 当天 {when} 已有预约：请选别的时间或技师。",
                  "Technician {code} {name} is booked {when} that day: choose another "
                  "time or technician.", code=m[1], name=m[2], when=m[3])),
    (re.compile(r"booking \S+ is (\w+): nothing to cancel"),
     lambda m: tr("这个预约{st}，不用再取消。", "This booking is {st}: nothing to cancel.",
                  st=status_label(m[1]))),
    (re.compile(r"booking \S+ has started: .*"),
     lambda _m: tr("这个预约已经开始了，不能再取消。", "This booking has started: it can no "
                   "longer be cancelled.")),
    (re.compile(r"booking \S+ is (\w+): only a confirmed booking can be a no-show"),
     lambda m: tr("这个预约{st}：只有已确认的预约才能记爽约。", "This booking is {st}: only a "
                  "confirmed one can be a no-show.", st=status_label(m[1]))),
    (re.compile(r"booking \S+ has not started yet"),
     lambda _m: tr("这个预约还没到时间，不能记爽约。", "This booking has not started yet: it "
                   "cannot be a no-show.")),
    (re.compile(r"only (\S+), the technician's branch, records a no-show for booking \S+"),
     lambda m: tr("爽约由技师所在的{branch}记录。", "{branch}, the technician's branch, "
                  "records a no-show.", branch=shop().branch_name(m[1]))),
    (re.compile(r".* has passed: book a time to come"),
     lambda _m: tr("这个时间已经过了，请选以后的时间。", "That time has passed: choose a time "
                   "to come.")),
    (re.compile(r".* is more than (\d+) days ahead"),
     lambda m: tr("最多只能预约 {n} 天以内的时间。", "Bookings are made at most {n} days "
                  "ahead.", n=m[1])),
    (re.compile(r"technician .*|.* is outside technician .*", re.S),
     lambda _m: tr("这位技师这个时间不能接这项预约：请选别的时间或技师。",
                   "The technician cannot take this booking at that time: choose another "
                   "time or technician.")),
    (re.compile(r"service (\S+) has no duration .*", re.S),
     lambda m: tr("服务 {s} 在价目表里没有时长，总店设置之后才能预约。", "Service {s} has no "
                  "duration in the price list: it is booked once the head office sets one.",
                  s=m[1])),
)


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
        form["picked"] = False  # another day, service or technician: its first free time
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
    # `picked`: the time is one the cashier chose, not the first free one offered.
    form: dict[str, Any] = {"technician": next(iter(tech_options), None), "service": None,
                            "time": None, "picked": False}

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
            form["time"], form["picked"] = None, False  # booked: no longer free, nor said
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
                gone = form["picked"] and form["time"] is not None and form["time"] not in free
                if form["time"] not in free:
                    # A time the cashier picked and another till booked meanwhile is not
                    # swapped for the day's first free one: the page redrew itself
                    # under the cashier's hand and the click booked the member at a
                    # time nobody chose (14:00 picked, 10:00 booked).
                    form["time"] = None if gone else free[0] if free else None
                ui.select(free, label=tr("时间", "Time"), value=form["time"],
                          on_change=pick_time).classes("w-32").mark("booking-time")
                if gone:
                    ui.label(tr("刚选的时间已被约走，请另选时间。", "The time picked was just "
                                "booked: choose another.")).classes("text-negative") \
                        .mark("booking-time-gone")
                if not free:
                    ui.label(tr("当天没有空闲时段", "No free time that day")).classes("text-grey-7")
                layout.once(ui.button(tr("预约", "Book")), book).mark("booking-add")

        def pick_time(e: Any) -> None:
            form["time"], form["picked"] = e.value, e.value is not None

        def pick_service(value: Any) -> None:
            form["service"] = value
            form["picked"] = False
            slots_for.refresh()

        def pick_technician(value: Any) -> None:
            form["technician"] = value
            form["picked"] = False
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
