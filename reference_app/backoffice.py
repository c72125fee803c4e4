"""The back office: the owner's figures, the branches' sync, and the shop's data files.

Reports read the projections through crdtledger.views on the node's loop (reads need
no perform); each has a chart and a CSV export. The library leaves read permissions
to its callers (reports, backups and exports name no operator), so each page and
each export checks the operator's permission here, not only by hiding the entry.

CSV files are UTF-8 with a byte-order mark: without it Excel on a Chinese Windows
reads them as GBK and the names come out garbled. Amounts in CSV are plain yuan
("12.34") so that a spreadsheet can sum them.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import date, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any, cast

from nicegui import events, run, ui

from crdtledger import audit, closing, localtime, movements, operations, settlement, views
from crdtledger.errors import (
    ForeignChain,
    LedgerError,
    PermissionDenied,
    RemoteProtocolError,
    StoreDamaged,
)
from crdtledger.ledger import PREF_KEYS, Ledger
from crdtledger.money import format_yuan
from crdtledger.private import write_private
from crdtledger.syncfile import import_file, read_file
from crdtledger.trust import UntrustedSigner
from peer.files import csv_text, export_bytes, sealed_backup
from reference_app import layout
from reference_app.i18n import duration, money, tr
from reference_app.shop import amount, can, operator, purse_label, shop

# What an erased member's name became before erasure was the library's
# (crdtledger.erasure blanks it): such a member reads as erased too. Reports that
# list past sales by member still need a row to show.
ERASED_NAME = "已删除"
# Reports list at most this many rows on screen; the CSV carries them all.
SCREEN_ROWS = 200
TREND_DAYS = 14


# --- shared pieces ------------------------------------------------------------


def csv_bytes(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> bytes:
    """A report as a CSV file for a spreadsheet: UTF-8 with a byte-order mark (Excel
    reads Chinese text right only then), no cell that would run as a formula."""
    return ("\ufeff" + csv_text([header, *rows])).encode("utf-8")


def yuan(fen: int) -> str:
    return format_yuan(fen)


def require(permission: str | None) -> str:
    """The check the library leaves to callers of reads: a button press from a page
    opened before the operator lost the permission (or logged out, in another tab) is
    refused too. None: any operator on duty. Returns the operator."""
    op = operator()
    if op is None or (permission is not None
                      and permission not in shop().ledger.permissions(op)):
        raise PermissionDenied(f"operator {op} may not {permission or 'read this page'}")
    return op


def guarded(permission: str | None) -> Callable[[Callable[[], None]], Callable[[], None]]:
    """A page's part drawn again later (a date changed, a refresh): read only while its
    operator may still (`require`), else a sentence. A page left open after its session
    ended (a logout in another tab, a password reset) showed the day's takings again."""
    def wrap(draw: Callable[[], None]) -> Callable[[], None]:
        def drawn() -> None:
            try:
                require(permission)
            except PermissionDenied as e:
                ui.label(shop().refusal(e)).classes("text-negative").mark("not-allowed")
                return
            draw()
        return drawn
    return wrap


def refuse(e: LedgerError) -> None:
    ui.notify(shop().refusal(e), type="negative", multi_line=True)


def keep_file_refusal(operation: str, e: BaseException) -> None:
    """A sync file or a backup refused at the counter, kept as the command line's and
    the API's are (audit.note_file_refusal). A page left open after its session ended
    refuses for nobody's try: not kept."""
    op = operator()
    if op is not None:
        audit.note_file_refusal(shop().ledger, op, operation, e)


def local_time(ledger: Ledger, ms: int, *, with_day: bool = True) -> str:
    moment = datetime.fromtimestamp(ms / 1000, localtime.zone(ledger))
    return moment.strftime("%Y-%m-%d %H:%M" if with_day else "%H:%M")


def branches(ledger: Ledger, extra: Iterable[str] = ()) -> list[str]:
    """Branches worth a row: this one, the named ones, peers seen and `extra`."""
    named = ledger.rule("branches")
    return sorted({ledger.node, *named, *views.peers_seen(ledger), *extra})


def date_field(label: str, value: str) -> ui.input:
    """A date typed or picked; the views refuse what is not a date."""
    with ui.input(label, value=value).props("dense outlined").classes("w-44") as field:
        with ui.menu().props("no-parent-event") as menu:
            ui.date(mask="YYYY-MM-DD").bind_value(field)
        with field.add_slot("append"):
            ui.icon("event").on("click", menu.open).classes("cursor-pointer")
    return field


def follow_period(state: dict[str, str], start_in: ui.input, end_in: ui.input,
                  body: Any) -> None:
    """Draw `body` now and again whenever either end of the period changes, with the
    period it reads kept in `state`."""
    def on_change() -> None:
        state["start"] = str(start_in.value or "").strip()
        state["end"] = str(end_in.value or "").strip()
        body.refresh()

    start_in.on_value_change(on_change)
    end_in.on_value_change(on_change)
    body()


def export_button(label: str, make: Callable[[], tuple[bytes, str]], marker: str,
                  permission: str = "reports.view") -> ui.button:
    def download() -> None:
        try:
            require(permission)
            data, filename = make()
        except LedgerError as e:
            refuse(e)
            return
        ui.download.content(data, filename, "text/csv")

    return ui.button(label, icon="download", on_click=download).props("outline dense"
                                                                       ).mark(marker)


def bar_chart(categories: list[str], series: list[tuple[str, list[float]]], *,
              horizontal: bool = False, stack: bool = False, height: str = "h-72") -> ui.echart:
    """Money charts plot yuan (floats are fine for drawing; figures shown are exact)."""
    cat_axis = {"type": "category", "data": categories,
                "axisLabel": {"interval": 0, "overflow": "truncate", "width": 90}}
    val_axis = {"type": "value"}
    options: dict[str, Any] = {
        "tooltip": {"trigger": "axis"},
        "legend": {"show": len(series) > 1, "top": 0},
        "grid": {"left": 8, "right": 16, "top": 32 if len(series) > 1 else 12, "bottom": 8,
                 "containLabel": True},
        "xAxis": val_axis if horizontal else cat_axis,
        "yAxis": {**cat_axis, "inverse": True} if horizontal else val_axis,
        "series": [{"name": name, "type": "bar", "data": data,
                    **({"stack": "all"} if stack else {})} for name, data in series],
    }
    return ui.echart(options).classes(f"w-full {height}")


def fen_to_float(fen: int) -> float:
    return fen / 100


# --- daily summary --------------------------------------------------------------


DAILY_FIELDS: list[tuple[str, str, str, bool]] = [
    # key, zh, en, money?
    ("new_members", "新会员", "New members", False),
    ("sales", "消费额", "Sales", True),
    ("debits", "消费笔数", "Services", False),
    ("refunds", "退款", "Refunds", True),
    ("topup_cash", "充值收款", "Top-up cash", True),
    ("topups", "充值笔数", "Top-ups", False),
    ("cards_sold", "售卡", "Cards sold", False),
    ("card_sales", "售卡收入", "Card sales", True),
    # Paid back from the till: its figures by method are net of them (views.daily_report),
    # and without the column the drawer's shortfall had no line to be read from.
    ("exit_refunds", "退会退款", "Exit refunds", True),
]


HEADLINE = ("sales", "debits", "topup_cash", "new_members", "cards_sold")


def daily_rows(ledger: Ledger, day: str) -> list[dict[str, Any]]:
    """One row per branch that did anything that day (and this branch), then the total."""
    active = views.active_branches(ledger, day)
    rows = [views.daily_report(ledger, day, node) for node in branches(ledger, active)]
    rows.append(views.daily_report(ledger, day))
    return rows


# The daily report's splits by payment method: key, zh, en.
SPLITS = (("topup_by_method", "充值", "Top-up"), ("till_by_method", "收银", "Till"))


def methods_in(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The payment methods a report names: the rule's, in its order, then any other
    an entry used (one the chain has since dropped)."""
    return views.methods_in(rows, shop().pay_methods())


def daily_csv(ledger: Ledger, day: str) -> bytes:
    rows = daily_rows(ledger, day)
    methods = methods_in(rows)
    header = [tr("日期", "Day"), tr("分店", "Branch"),
              *[tr(zh, en) for _k, zh, en, _m in DAILY_FIELDS],
              *[f"{tr(zh, en)} {shop().pay_label(m)}" for _k, zh, en in SPLITS for m in methods]]
    out = []
    for r in rows:
        name = tr("合计", "Total") if r["branch"] == "all" else shop().branch_name(r["branch"])
        out.append([day, name, *[yuan(r[k]) if is_money else r[k]
                                 for k, _zh, _en, is_money in DAILY_FIELDS],
                    *[yuan(r[k].get(m, 0)) for k, _zh, _en in SPLITS for m in methods]])
    return csv_bytes(header, out)


def methods_card(total: dict[str, Any]) -> None:
    """当天收款方式: what the till took by method, to reconcile with the drawer and the
    payment apps: top-ups, and packages and services paid at the till (less refunds)."""
    with ui.card().classes("min-w-96"):
        ui.label(tr("收款方式", "By payment method")).classes("font-medium")
        with ui.grid(columns=4).classes("gap-x-6 gap-y-1 items-center").mark("by-method"):
            for text in (tr("方式", "Method"), tr("充值收款", "Top-ups"),
                         tr("收银（服务、套餐，减退款、退会退款）",
                            "Till (services, packages, less refunds and exits)"),
                         tr("合计", "Total")):
                ui.label(text).classes("text-sm text-grey-7")
            for m in methods_in([total]):
                topup, till = total["topup_by_method"].get(m, 0), total["till_by_method"].get(m, 0)
                ui.label(shop().pay_label(m))
                for fen in (topup, till, topup + till):
                    ui.label(money(fen)).classes("text-right tabular-nums")


def daily_page() -> None:
    ledger = shop().ledger
    state = {"day": ledger.today()}

    with ui.row().classes("items-center gap-4"):
        day_input = date_field(tr("日期", "Day"), state["day"])
        ui.button(tr("今天", "Today"), on_click=lambda: day_input.set_value(ledger.today())
                  ).props("flat dense")
        export_button(tr("导出 CSV", "Export CSV"),
                      lambda: (daily_csv(ledger, state["day"]), f"daily-{state['day']}.csv"),
                      "export-daily")

    @ui.refreshable
    @guarded("reports.view")
    def body() -> None:
        day = state["day"]
        try:
            rows = daily_rows(ledger, day)
        except LedgerError as e:
            ui.label(shop().refusal(e)).classes("text-negative")
            return
        total = rows[-1]
        through = closing.books(ledger)["closed_through"]
        if through is None or day[:7] > through:
            # As `crdtledger report daily` says: a branch cut off that day is heard later.
            ui.label(tr("本月尚未结账：其他分店的记录到达后，这些数字还可能变化",
                        "Not closed yet: these figures may still change as other "
                        "branches' records arrive")).classes("text-sm text-grey-7")
        with ui.row().classes("w-full gap-4"):
            for key, zh, en, is_money in [f for f in DAILY_FIELDS if f[0] in HEADLINE]:
                with ui.card().classes("min-w-40"):
                    ui.label(tr(zh, en)).classes("text-sm text-grey-7")
                    value = money(total[key]) if is_money else str(total[key])
                    ui.label(value).classes("text-2xl font-semibold")
        methods_card(total)
        columns = [{"name": "branch", "label": tr("分店", "Branch"), "field": "branch",
                    "align": "left"}]
        columns += [{"name": k, "label": tr(zh, en), "field": k, "align": "right"}
                    for k, zh, en, _m in DAILY_FIELDS]
        table_rows = []
        for r in rows:
            name = tr("合计", "Total") if r["branch"] == "all" else shop().branch_name(r["branch"])
            table_rows.append({"branch": name, **{k: money(r[k]) if m else r[k]
                                                  for k, _z, _e, m in DAILY_FIELDS}})
        ui.table(columns=columns, rows=table_rows, row_key="branch").props(
            "flat bordered dense").classes("w-full")
        branch_rows = rows[:-1]
        with ui.row().classes("w-full gap-4 no-wrap max-lg:flex-wrap"):
            with ui.card().classes("flex-1 min-w-80"):
                ui.label(tr("{day} 各分店", "Branches on {day}", day=day)).classes("font-medium")
                bar_chart([shop().branch_name(r["branch"]) for r in branch_rows], [
                    (tr("消费额", "Sales"), [fen_to_float(r["sales"]) for r in branch_rows]),
                    (tr("充值收款", "Top-up cash"),
                     [fen_to_float(r["topup_cash"]) for r in branch_rows]),
                ])
            with ui.card().classes("flex-1 min-w-80"):
                ui.label(tr("近 {n} 天", "Last {n} days", n=TREND_DAYS)).classes("font-medium")
                days = [(date.fromisoformat(day) - timedelta(days=i)).isoformat()
                        for i in range(TREND_DAYS - 1, -1, -1)]
                trend = [views.daily_report(ledger, d) for d in days]
                chart = bar_chart([d[5:] for d in days], [
                    (tr("消费额", "Sales"), [fen_to_float(r["sales"]) for r in trend]),
                    (tr("充值收款", "Top-up cash"), [fen_to_float(r["topup_cash"]) for r in trend]),
                ])
                for s in chart.options["series"]:
                    s["type"] = "line"

    def on_day(e: events.ValueChangeEventArguments[Any]) -> None:
        state["day"] = str(e.value or "").strip()
        body.refresh()

    day_input.on_value_change(on_day)
    body()


# --- rankings -----------------------------------------------------------------


def default_period(ledger: Ledger, days: int = 30) -> tuple[str, str]:
    today = date.fromisoformat(ledger.today())
    return (today - timedelta(days=days - 1)).isoformat(), today.isoformat()


def member_label(row: dict[str, Any]) -> str:
    name = row.get("name")
    name = tr("已删除会员", "erased member") if name in ("", ERASED_NAME) else name or row["member"]
    return f"{name} {row.get('phone', '')}".strip()


def service_label(code: str) -> str:
    return shop().service_name(code) or code


def ranking_csv(ledger: Ledger, by: str, start: str, end: str) -> bytes:
    rows = views.ranking(ledger, by, start, end, limit=10_000)
    if by == "services":
        return csv_bytes(
            [tr("名次", "Rank"), tr("项目代码", "Code"), tr("项目", "Service"),
             tr("次数", "Count"), tr("金额", "Amount")],
            [[i, r["service"], service_label(r["service"]), r["count"], yuan(r["amount"])]
             for i, r in enumerate(rows, 1)])
    return csv_bytes(
        [tr("名次", "Rank"), tr("会员号", "Member id"), tr("姓名", "Name"), tr("手机", "Phone"),
         tr("次数", "Count"), tr("金额", "Amount")],
        [[i, r["member"], r.get("name", ""), r.get("phone", ""), r["count"], yuan(r["amount"])]
         for i, r in enumerate(rows, 1)])


def ranking_export(ledger: Ledger, by: str, state: dict[str, str]
                   ) -> Callable[[], tuple[bytes, str]]:
    return lambda: (ranking_csv(ledger, by, state["start"], state["end"]),
                    f"ranking-{by}-{state['start']}-{state['end']}.csv")


def ranking_page() -> None:
    ledger = shop().ledger
    start, end = default_period(ledger)
    state = {"start": start, "end": end}

    with ui.row().classes("items-center gap-4"):
        start_in = date_field(tr("从", "From"), start).mark("ranking-from")
        end_in = date_field(tr("到", "To"), end).mark("ranking-to")

    @ui.refreshable
    @guarded("reports.view")
    def body() -> None:
        try:
            services = views.ranking(ledger, "services", state["start"], state["end"], 10)
            members = views.ranking(ledger, "members", state["start"], state["end"], 10)
        except LedgerError as e:
            ui.label(shop().refusal(e)).classes("text-negative")
            return
        with ui.row().classes("w-full gap-4 no-wrap max-lg:flex-wrap items-start"):
            for by, title, rows, label in (
                ("services", tr("项目销量排名", "Services by sales"), services,
                 lambda r: service_label(r["service"])),
                ("members", tr("会员消费排名", "Members by spending"), members, member_label),
            ):
                with ui.card().classes("flex-1 min-w-80"):
                    with ui.row().classes("w-full items-center justify-between"):
                        ui.label(title).classes("text-lg font-medium")
                        export_button("CSV", ranking_export(ledger, by, state),
                                      f"export-{by}")
                    if not rows:
                        ui.label(tr("这段时间没有消费", "No sales in this period")
                                 ).classes("text-grey-7")
                        continue
                    labels = [label(r) for r in rows]
                    short = [r.get("name") or lab for r, lab in zip(rows, labels, strict=True)]
                    bar_chart(short, [(tr("金额", "Amount"),
                                        [fen_to_float(r["amount"]) for r in rows])],
                              horizontal=True, height="h-64")
                    ui.table(columns=[
                        {"name": "rank", "label": "#", "field": "rank", "align": "right"},
                        {"name": "name", "label": title.split()[0] if False else
                         tr("名称", "Name"), "field": "name", "align": "left"},
                        {"name": "count", "label": tr("次数", "Count"), "field": "count",
                         "align": "right"},
                        {"name": "amount", "label": tr("金额", "Amount"), "field": "amount",
                         "align": "right"},
                    ], rows=[{"rank": i, "name": lab, "count": r["count"],
                              "amount": money(r["amount"])}
                             for i, (lab, r) in enumerate(zip(labels, rows, strict=True), 1)],
                        row_key="rank").props("flat dense").classes("w-full")

    follow_period(state, start_in, end_in, body)


# --- goods: sales and profit rankings, stock on hand ---------------------------------
#
# The figures are the library's: `report.goods` (商品销量排名 / 商品利润排名) and
# `stock.list` (库存, low: at or below the item's threshold), run through the operation
# table as the command line and the HTTP API run them, so the page, its CSV and
# `crdtledger report goods --csv` / `stock list --csv` cannot disagree. Nothing here
# adds up sales or stock itself.

GOODS_ON_SCREEN = 10  # the CLI's default --limit; the CSV carries every item sold


def _period_params(start: str, end: str) -> dict[str, str]:
    """An end left empty is open, as on the command line."""
    return {k: v for k, v in (("from", start), ("to", end)) if v}


def goods_ranking(ledger: Ledger, by: str, start: str, end: str,
                  limit: int = GOODS_ON_SCREEN) -> list[dict[str, Any]]:
    """The first `limit` of `report goods --by sales|profit` for the period, with the
    operation's own permission (reports.view) and parameter checks."""
    return cast(list[dict[str, Any]], operations.run(
        ledger, operator() or "", "report.goods",
        {"by": by, "limit": limit, **_period_params(start, end)}))


def goods_label(row: Mapping[str, Any]) -> str:
    return f"{row['name']} ({row['code']})"


def goods_csv(ledger: Ledger, by: str, start: str, end: str) -> bytes:
    """`crdtledger report goods --by BY --csv` for every item sold in the period (the
    command line stops at 100), with a rank and the header in the session's language."""
    require("reports.view")
    rows = views.goods_ranking(ledger, by, start or None, end or None, limit=1_000_000)
    table = operations.TABLE["report.goods"].table
    assert table is not None  # declared with the operation
    return csv_bytes(
        [tr("名次", "Rank"), tr("商品代码", "Code"), tr("商品", "Goods"), tr("销量", "Units"),
         tr("销售额", "Sales"), tr("成本", "Cost"), tr("利润", "Profit")],
        [[i, *row] for i, row in enumerate(table(rows)[1:], 1)])


def stock_rows(ledger: Ledger) -> list[dict[str, Any]]:
    """`stock list`: every goods item per branch that ever held or was shipped it."""
    return cast(list[dict[str, Any]], operations.run(ledger, operator() or "", "stock.list",
                                                     {}))


def stock_csv(ledger: Ledger) -> bytes:
    """`crdtledger stock list --csv`, with the branch's name beside its node id."""
    table = operations.TABLE["stock.list"].table
    assert table is not None
    rows = table(stock_rows(ledger))[1:]
    return csv_bytes(
        [tr("商品代码", "Code"), tr("商品", "Goods"), tr("分店", "Branch"), tr("分店号", "Node"),
         tr("库存", "On hand"), tr("在途", "In transit"), tr("提醒下限", "Low at"),
         tr("库存不足", "Low")],
        [[code, name, shop().branch_name(node), node, qty, transit, low_at,
          tr("是", "yes") if low else ""]
         for code, name, node, qty, transit, low_at, low in rows])


def stock_matrix(ledger: Ledger, rows: Sequence[Mapping[str, Any]]
                 ) -> tuple[list[str], list[dict[str, Any]]]:
    """The stock rows as goods x branches: the branches (named ones too, so an empty
    column says a branch holds none) and one table row per item, a cell's text being
    its units on hand (and in transit), `low` the columns the library marked low. A
    branch that never held an item has no row in `stock list`: its cell is "—", not a
    reminder."""
    others = branches(ledger, {str(r["branch"]) for r in rows})
    nodes = [ledger.node, *(n for n in others if n != ledger.node)]  # this branch first
    items: dict[str, dict[str, Any]] = {}
    for r in rows:
        item = items.setdefault(str(r["code"]), {
            "code": r["code"], "name": r["name"], "low_stock": r["low_stock"] or "",
            "low": [], **{n: "—" for n in nodes}})
        cell = str(r["qty"])
        if r["transit"]:
            cell += tr("（在途 {n}）", " (+{n} in transit)", n=r["transit"])
        item[str(r["branch"])] = cell
        if r["low"]:
            item["low"].append(str(r["branch"]))
    return nodes, list(items.values())


# A cell of a low item at a branch stands out; `low` lists the row's low columns.
LOW_CELL = r"""
<q-td :props="props" :class="(props.row.low || []).includes(props.col.name)
                             ? 'bg-red-1 text-negative text-weight-bold' : ''">
  {{ props.value }}
</q-td>
"""


def ranking_card(ledger: Ledger, by: str, rows: list[dict[str, Any]],
                 state: dict[str, str]) -> None:
    sales = by == "sales"
    title = tr("商品销量排名", "Goods by units sold") if sales else tr("商品利润排名",
                                                                   "Goods by profit")
    with ui.card().classes("flex-1 min-w-80"):
        with ui.row().classes("w-full items-center justify-between"):
            ui.label(title).classes("text-lg font-medium")
            export_button("CSV", lambda: (goods_csv(ledger, by, state["start"], state["end"]),
                                          f"goods-{by}-{state['start']}-{state['end']}.csv"),
                          f"export-goods-{by}")
        ui.label(tr("按卖出件数排名；图为件数", "Ranked by units sold; the chart shows units")
                 if sales else
                 tr("利润 = 销售额（已扣退款）− 成本；图为利润（元）",
                    "Profit = sales (less refunds) − cost; the chart shows profit in yuan")
                 ).classes("text-sm text-grey-7")
        if not rows:
            ui.label(tr("这段时间没有卖出商品", "No goods sold in this period")
                     ).classes("text-grey-7").mark(f"no-goods-{by}")
            return
        bar_chart([r["name"] for r in rows],
                  [(tr("销量", "Units"), [float(r["qty"]) for r in rows])] if sales else
                  [(tr("利润", "Profit"), [fen_to_float(r["profit"]) for r in rows])],
                  horizontal=True, height="h-64").mark(f"chart-goods-{by}")
        figures = (("qty", tr("销量", "Units"), False), ("sales", tr("销售额", "Sales"), True),
                   *((("cost", tr("成本", "Cost"), True), ("profit", tr("利润", "Profit"), True))
                     if not sales else ()))
        ui.table(columns=[
            {"name": "rank", "label": "#", "field": "rank", "align": "right"},
            {"name": "name", "label": tr("商品", "Goods"), "field": "name", "align": "left"},
            *({"name": k, "label": label, "field": k, "align": "right"}
              for k, label, _m in figures),
        ], rows=[{"rank": i, "code": r["code"], "name": goods_label(r),
                  **{k: money(r[k]) if is_money else r[k] for k, _l, is_money in figures}}
                 for i, r in enumerate(rows, 1)],
            row_key="rank").props("flat dense").classes("w-full").mark(f"goods-{by}")


def stock_card(ledger: Ledger) -> None:
    with ui.card().classes("w-full"):
        with ui.row().classes("w-full items-center justify-between"):
            ui.label(tr("各分店库存", "Stock on hand per branch")).classes("text-lg font-medium")
            export_button("CSV", lambda: (stock_csv(ledger), f"stock-{ledger.today()}.csv"),
                          "export-stock")
        try:
            rows = stock_rows(ledger)
        except LedgerError as e:
            ui.label(shop().refusal(e)).classes("text-negative")
            return
        if not rows:
            ui.label(tr("还没有库存", "No stock yet")).classes("text-grey-7")
            return
        low = [r for r in rows if r["low"]]
        if low:
            with ui.row().classes("w-full items-center gap-2").mark("low-stock"):
                ui.icon("warning", color="negative").classes("text-xl")
                ui.label(tr("库存提醒", "Low stock")).classes("text-negative font-medium")
                for r in low:
                    ui.label(tr("{goods} {branch} 剩 {qty}（下限 {limit}）",
                                "{goods} at {branch}: {qty} (remind at {limit})",
                                goods=r["name"], branch=shop().branch_name(r["branch"]),
                                qty=r["qty"], limit=r["low_stock"])
                             ).classes("text-sm text-negative bg-red-1 rounded px-2 py-0.5")
        nodes, items = stock_matrix(ledger, rows)
        table = ui.table(columns=[
            {"name": "code", "label": tr("代码", "Code"), "field": "code", "align": "left"},
            {"name": "name", "label": tr("商品", "Goods"), "field": "name", "align": "left"},
            *({"name": n, "label": shop().branch_name(n), "field": n, "align": "right"}
              for n in nodes),
            {"name": "low_stock", "label": tr("提醒下限", "Low at"), "field": "low_stock",
             "align": "right"},
        ], rows=items, row_key="code", pagination=SCREEN_ROWS).props(
            "flat bordered dense" + (" hide-bottom" if len(items) <= SCREEN_ROWS else "")
        ).classes("w-full").mark("stock")
        table.add_slot("body-cell", LOW_CELL)


def goods_page() -> None:
    ledger = shop().ledger
    start, end = default_period(ledger)
    state = {"start": start, "end": end}

    with ui.row().classes("items-center gap-4"):
        start_in = date_field(tr("从", "From"), start).mark("goods-from")
        end_in = date_field(tr("到", "To"), end).mark("goods-to")

    @ui.refreshable
    @guarded("reports.view")
    def body() -> None:
        try:
            ranked = {by: goods_ranking(ledger, by, state["start"], state["end"])
                      for by in ("sales", "profit")}
        except LedgerError as e:
            ui.label(shop().refusal(e)).classes("text-negative")
            return
        with ui.row().classes("w-full gap-4 no-wrap max-lg:flex-wrap items-start"):
            for by, rows in ranked.items():
                ranking_card(ledger, by, rows, state)

    follow_period(state, start_in, end_in, body)
    stock_card(ledger)  # what is on the shelves now, whatever the period


# --- top-up receipts ----------------------------------------------------------------


def topups(ledger: Ledger, start: str, end: str) -> list[dict[str, Any]]:
    """Every top-up of the period, oldest first, with the member's name and masked phone."""
    return [{**t["entry"], "name": t["name"], "phone": t["phone"]}
            for t in views.topups(ledger, start, end)]


def topups_csv(ledger: Ledger, start: str, end: str) -> bytes:
    return csv_bytes(
        [tr("时间", "Time"), tr("分店", "Branch"), tr("会员号", "Member id"), tr("姓名", "Name"),
         tr("手机", "Phone"), tr("实收", "Cash received"), tr("赠送", "Bonus"),
         tr("促销", "Promotion"), tr("操作员", "Operator"), tr("单号", "Entry")],
        [[local_time(ledger, e["at"]), shop().branch_name(e["node"]), e["member"], e["name"],
          e["phone"], yuan(e.get("paid", e["amount"])), yuan(e.get("bonus", 0)),
          e.get("promotion", ""), shop().operator_name(e["op"]), e["id"]]
         for e in topups(ledger, start, end)])


def topups_page() -> None:
    ledger = shop().ledger
    start, end = default_period(ledger, 7)
    state = {"start": start, "end": end}
    with ui.row().classes("items-center gap-4"):
        start_in = date_field(tr("从", "From"), start).mark("topups-from")
        end_in = date_field(tr("到", "To"), end).mark("topups-to")
        export_button(tr("导出 CSV", "Export CSV"), lambda: (
            topups_csv(ledger, state["start"], state["end"]),
            f"topups-{state['start']}-{state['end']}.csv"), "export-topups")

    @ui.refreshable
    @guarded("reports.view")
    def body() -> None:
        try:
            rows = topups(ledger, state["start"], state["end"])
            days = _days(state["start"], state["end"])
        except (LedgerError, ValueError) as e:
            ui.label(shop().refusal(e) if isinstance(e, LedgerError) else str(e)
                     ).classes("text-negative")
            return
        cash = sum(int(e.get("paid", e["amount"])) for e in rows)
        bonus = sum(int(e.get("bonus", 0)) for e in rows)
        with ui.row().classes("gap-4"):
            for title, value in ((tr("充值笔数", "Top-ups"), str(len(rows))),
                                 (tr("实收", "Cash received"), money(cash)),
                                 (tr("赠送", "Bonus given"), money(bonus))):
                with ui.card().classes("min-w-40"):
                    ui.label(title).classes("text-sm text-grey-7")
                    ui.label(value).classes("text-2xl font-semibold")
        per: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        for t in rows:
            per[t["node"]][ledger.storage.day_of(t["at"])] += int(t.get("paid", t["amount"]))
        if len(days) <= 62:
            with ui.card().classes("w-full"):
                ui.label(tr("每日充值收款", "Top-up cash per day")).classes("font-medium")
                bar_chart([d[5:] for d in days],
                          [(shop().branch_name(n), [fen_to_float(per[n][d]) for d in days])
                           for n in sorted(per)] or [(tr("实收", "Cash"), [0.0] * len(days))],
                          stack=True, height="h-64")
        shown = rows[-SCREEN_ROWS:][::-1]
        if len(rows) > len(shown):
            ui.label(tr("显示最近 {n} 笔；CSV 包含全部 {m} 笔",
                        "Showing the latest {n}; the CSV has all {m}", n=len(shown), m=len(rows))
                     ).classes("text-sm text-grey-7")
        ui.table(columns=[
            {"name": "time", "label": tr("时间", "Time"), "field": "time", "align": "left"},
            {"name": "branch", "label": tr("分店", "Branch"), "field": "branch", "align": "left"},
            {"name": "member", "label": tr("会员", "Member"), "field": "member", "align": "left"},
            {"name": "paid", "label": tr("实收", "Cash"), "field": "paid", "align": "right"},
            {"name": "bonus", "label": tr("赠送", "Bonus"), "field": "bonus", "align": "right"},
            {"name": "promotion", "label": tr("促销", "Promotion"), "field": "promotion",
             "align": "left"},
            {"name": "op", "label": tr("操作员", "Operator"), "field": "op", "align": "left"},
        ], rows=[{"id": e["id"], "time": local_time(ledger, e["at"]),
                  "branch": shop().branch_name(e["node"]),
                  "member": member_label(e | {"member": e["member"]}),
                  "paid": money(int(e.get("paid", e["amount"]))),
                  "bonus": money(int(e.get("bonus", 0))) if e.get("bonus") else "",
                  "promotion": e.get("promotion", ""), "op": shop().operator_name(e["op"])}
                 for e in shown], row_key="id", pagination=20).props(
            "flat bordered dense").classes("w-full")

    follow_period(state, start_in, end_in, body)


def _days(start: str, end: str) -> list[str]:
    a, b = date.fromisoformat(start), date.fromisoformat(end)
    return [(a + timedelta(days=i)).isoformat() for i in range((b - a).days + 1)]


# --- settlement -----------------------------------------------------------------


def figure_labels() -> dict[str, str]:
    """The settlement statement's figures (crdtledger.settlement) as the counter names
    them."""
    return {
        "opening": tr("期初未消费储值", "Prepaid at start"),
        # Top-ups and positive corrections both open lots (调整本金, crdtledger.settlement);
        # negative corrections show apart, as 调减本金: "充值本金" hid the corrections.
        "collected": tr("充值及调整本金", "Collected (top-ups and corrections)"),
        "served_own": tr("本店充值本店消费", "Served own"),
        "served_for_others": tr("为他店会员服务", "Served for others"),
        "served_by_others": tr("他店为本店会员服务", "Served by others"),
        "net": tr("净额", "Net"),
        "removed": tr("调减本金", "Corrected away"),
        "unspent": tr("期末未消费储值（预收负债）", "Unspent (prepaid liability)"),
        "bonus_served": tr("赠送金额消费（不结算）", "Bonus served (not settled)"),
        "unattributed": tr("无来源消费", "Unattributed"),
        "served": tr("对方代为服务", "Served by the creditor"),
        "served_back": tr("本方代为服务", "Served back by the debtor"),
        "amount": tr("应付净额", "Owed, net"),
    }


def settlement_csv(ledger: Ledger, start: str | None, end: str | None) -> bytes:
    """The same figures as `crdtledger report settlement --csv`, branches by name."""
    r = views.settlement(ledger, start, end)
    labels, name = figure_labels(), shop().branch_name
    rows: list[list[Any]] = [
        [name(p["owes"]), p["owes"], name(p["to"]), p["to"],
         *settlement.yuan(p, settlement.PAIR_FIGURES)] for p in r["pairs"]]
    rows.append([])
    rows.append([tr("分店", "Branch"), tr("分店号", "Node"),
                 *(labels[k] for k in settlement.BRANCH_FIGURES)])
    rows += [[name(n), n, *settlement.yuan(f, settlement.BRANCH_FIGURES)]
             for n, f in r["branches"].items()]
    return csv_bytes([tr("应付分店", "Owing branch"), tr("分店号", "Node"),
                      tr("收款分店", "Owed to"), tr("分店号", "Node"),
                      *(labels[k] for k in settlement.PAIR_FIGURES)], rows)


def balances_csv(ledger: Ledger) -> tuple[bytes, str]:
    """Each member's balances at the end of the latest month closed at every branch
    (`crdtledger report balances --csv`), headers in the counter's language."""
    r = closing.member_balances(ledger)
    _header, *rows, total = closing.balance_rows(r)
    return csv_bytes([tr("会员号", "Member"), tr("姓名", "Name"), tr("储值", "Stored value"),
                      tr("赠送", "Bonus value"), tr("积分", "Points")],
                     [*rows, [tr("合计", "Total"), *total[1:]]]), f"balances-{r['month']}.csv"


def books_line(books: Mapping[str, Any], name: Callable[[str], str]) -> str:
    """How far the month-end closing has come (crdtledger.closing), for the owner."""
    through = books["closed_through"]
    line = (tr("月结：{m} 及以前的账所有分店都已结账，不会再变",
               "Month-end: the books through {m} are closed at every branch and will not "
               "change", m=through) if through else
            tr("月结：尚无月份在所有分店结账", "Month-end: no month is closed at every branch yet"))
    if books["behind"]:
        line += tr("；{m} 还在等：{b}", "; {m} waits for {b}", m=books["latest"],
                   b=tr("、", ", ").join(name(n) for n in books["behind"]))
    if books.get("blocked"):
        line += tr("。{b} 因违规已被本店拒收，之后的月份要等总部吊销其证书后才能结账",
                   ". {b} is blocked here for a proven fault: the months after its last cut "
                   "close once head office revokes its certificate",
                   b=tr("、", ", ").join(name(n) for n in books["blocked"]))
    closing = books["closing"]
    if closing and closing["differ"]:
        line += tr("。注意：{b} 签署的 {m} 账目与本店不一致（账本分叉，或有记录迟到）",
                   ". Warning: {b} signed other books of {m} than this branch holds (a "
                   "fork, or records that came late)", m=closing["month"],
                   b=tr("、", ", ").join(name(n) for n in closing["differ"]))
    elif closing and closing["counted"]:
        line += tr("（{n} 家分店核对一致，含总部：月结生效）",
                   " ({n} branches signed the same books, head office among them: the "
                   "closing counts)", n=len(closing["agree"]))
    elif closing and closing["agree"]:
        line += tr("（{n} 家分店核对一致，待总部与更多分店签署后生效）",
                   " ({n} branches signed the same books; it counts once head office and "
                   "a quorum sign)", n=len(closing["agree"]))
    if closing and closing["balances"] and not closing["balances"]["holders"]:
        line += tr("。{m} 月末：会员无余额", ". At the end of {m}: members held nothing",
                   m=closing["month"])
    elif closing and closing["balances"]:  # what that closing's digest covers
        sums = closing["balances"]["purses"]
        line += tr("。{m} 月末：储值 {c}，赠送 {b}，积分 {p}，{n} 位会员持有",
                   ". At the end of {m}: stored value {c}, bonus value {b}, {p} points, "
                   "held by {n} members", m=closing["month"], c=money(sums.get("cash", 0)),
                   b=money(sums.get("bonus", 0)), p=sums.get("points", 0),
                   n=closing["balances"]["holders"])
    if closing and closing["balances"] and closing["balances"]["pending"]:
        line += tr("（本店尚有 {n} 笔该月记录在等其他分店的数据，未计入）",
                   " ({n} records of the month wait here for other branches' data: not "
                   "counted yet)", n=closing["balances"]["pending"])
    return line


def settlement_page() -> None:
    ledger = shop().ledger
    state: dict[str, str] = {"start": "", "end": ""}
    with ui.row().classes("items-center gap-4"):
        start_in = date_field(tr("从（空 = 开业起）", "From (empty = ever)"), "").mark(
            "settlement-from")
        end_in = date_field(tr("到（空 = 至今）", "To (empty = now)"), "").mark("settlement-to")
        export_button(tr("导出 CSV", "Export CSV"), lambda: (
            settlement_csv(ledger, state["start"] or None, state["end"] or None),
            f"settlement-{state['start'] or 'all'}-{state['end'] or ledger.today()}.csv"),
            "export-settlement")
    ui.label(tr("按实际服务结算：会员在甲店充值的本金在乙店消费，甲店应付乙店这笔钱（先充先用）。"
                "分店之间调拨储值权利不产生欠款；赠送金额不结算；退款冲回原消费。",
                "Settled by value served: when principal a member paid in at branch A is "
                "spent at branch B, A owes B that amount (oldest top-up first). Moving "
                "rights between branches creates no debt; bonus value is not settled; a "
                "refund reverses what its debit took.")
             ).classes("text-sm text-grey-7 max-w-3xl")

    @ui.refreshable
    @guarded("reports.view")
    def body() -> None:
        try:
            r = views.settlement(ledger, state["start"] or None, state["end"] or None)
        except LedgerError as e:
            ui.label(shop().refusal(e)).classes("text-negative")
            return
        name, labels = shop().branch_name, figure_labels()
        books = closing.books(ledger)
        with ui.row().classes("items-center gap-4"):
            ui.label(books_line(books, name)).classes("text-sm")
            if books["closed_through"]:  # final figures only: a month closed everywhere
                export_button(tr("导出 {m} 月末余额", "Export balances at the end of {m}",
                                 m=books["closed_through"]),
                              lambda: balances_csv(ledger), "export-month-end")
        with ui.row().classes("w-full gap-4 no-wrap max-lg:flex-wrap items-start"):
            with ui.card().classes("flex-1 min-w-80"):
                ui.label(tr("应付款", "Who owes whom")).classes("text-lg font-medium")
                if not any(p["amount"] for p in r["pairs"]):
                    ui.label(tr("各分店之间没有需要结算的款项",
                                "Nothing to settle between branches")).classes("text-grey-7")
                for p in r["pairs"]:
                    with ui.row().classes("items-center gap-2 text-base"):
                        ui.label(name(p["owes"])).classes("font-medium")
                        ui.label(tr("应付", "owes"))
                        ui.label(name(p["to"])).classes("font-medium")
                        ui.label(money(p["amount"])).classes("text-lg font-semibold text-primary")
                    ui.label(tr("{b}为{a}的会员服务 {s}，{a}为{b}的会员服务 {t}",
                                "{b} served {s} of {a}'s value, {a} served {t} of {b}'s",
                                a=name(p["owes"]), b=name(p["to"]), s=money(p["served"]),
                                t=money(p["served_back"]))).classes("text-sm text-grey-7")
            with ui.card().classes("flex-1 min-w-80"):
                ui.label(tr("各分店净额（合计为零）", "Net position per branch (sums to zero)")
                         ).classes("text-lg font-medium")
                ui.label(tr("正数为应收，负数为应付", "Positive: to receive; negative: to pay")
                         ).classes("text-sm text-grey-7")
                nets = list(r["net"].items())
                chart = bar_chart([name(n) for n, _v in nets],
                                  [(tr("净额", "Net"), [fen_to_float(v) for _n, v in nets])],
                                  height="h-56")
                chart.options["series"][0]["data"] = [
                    {"value": fen_to_float(v), "itemStyle": {"color": "#21BA45" if v >= 0
                                                             else "#C10015"}} for _n, v in nets]
        with ui.card().classes("w-full"):
            ui.label(tr("各分店明细", "Per branch")).classes("text-lg font-medium")
            ui.label(tr("对账：期初未消费 + 充值及调整本金 − 本店服务 − 为他店服务 − 调减本金 = "
                        "期末未消费 − 净额",
                        "Reconciliation: prepaid at start + collected − served own − served "
                        "for others − corrected away = unspent − net")
                     ).classes("text-sm text-grey-7")
            columns = [{"name": "branch", "label": tr("分店", "Branch"), "field": "branch",
                        "align": "left"}]
            columns += [{"name": k, "label": labels[k], "field": k, "align": "right"}
                        for k in settlement.BRANCH_FIGURES]
            columns.append({"name": "check", "label": tr("对账", "Reconciles"),
                            "field": "check", "align": "center"})
            shown = [*((name(n), f) for n, f in r["branches"].items()),
                     (tr("合计", "Total"), settlement.chain_total(r))]
            rows = [{"branch": label, "check": "✓" if settlement.reconciles(f) else "✗",
                     **{k: money(v) for k, v in cast(Mapping[str, int], f).items()}}
                    for label, f in shown]
            ui.table(columns=columns, rows=rows, row_key="branch").props(
                "flat dense wrap-cells").classes("w-full")

    follow_period(state, start_in, end_in, body)


# --- movement of a period and packages' unearned value ----------------------------------


def movement_labels() -> dict[str, str]:
    """The lines of `crdtledger report movements` as the counter names them."""
    return {
        "opening": tr("期初余额", "Opening"), "topups": tr("充值", "Top-ups"),
        "earned": tr("消费得积分", "Earned on sales"),
        "rewards": tr("奖励与签到", "Rewards and check-ins"), "refunds": tr("退款", "Refunds"),
        "corrected_in": tr("调增", "Corrected up"), "spent": tr("消费", "Spent"),
        "converted": tr("积分转换", "Converted"), "expired": tr("过期", "Expired"),
        "exits": tr("退会", "Taken by exits"), "corrected_out": tr("调减", "Corrected down"),
        "merges": tr("合并会员", "Merges"), "transfers": tr("分店调拨", "Moved between branches"),
        "other": tr("其他", "Other"), "closing": tr("期末余额", "Closing"),
        "check": tr("核对（期初＋变动－期末）", "Check (opening + lines - closing)"),
    }


def package_labels() -> dict[str, str]:
    return {
        "packages": tr("套餐数", "Packages"), "uses_sold": tr("售出次数", "Uses sold"),
        "opening": tr("期初未消费", "Unearned at start"), "sold": tr("本期售出", "Sold"),
        "served_uses": tr("本期消费次数", "Uses served"),
        "served": tr("本期消费确认", "Recognised (served)"),
        "breakage_uses": tr("退会未用次数", "Uses left at exits"),
        "breakage": tr("退会确认", "Recognised (exits)"),
        "uses_left": tr("剩余次数", "Uses left"), "closing": tr("期末未消费", "Unearned at end"),
        "check": tr("核对", "Check"),
    }


PURSE_NAMES = {"cash": ("储值", "Stored value"), "bonus": ("赠送金额", "Bonus value"),
               "points": ("积分", "Points")}


def _figure(purse: str, n: int) -> str:
    return str(n) if purse == "points" else money(n)


def movements_csv(ledger: Ledger, start: str, end: str) -> bytes:
    """The same figures as `crdtledger report movements --csv`, branches by name."""
    r = movements.movement(ledger, start or None, end or None)
    labels = movement_labels()
    keys = ("opening", *movements.LINES, "closing", "check")
    return csv_bytes(
        [tr("余额", "Purse"), tr("分店", "Branch"), *(labels[k] for k in keys)],
        [[tr(*PURSE_NAMES[row["purse"]]), tr("合计", "Total") if row["branch"] == movements.CHAIN
          else shop().branch_name(row["branch"]),
          *(str(row[k]) if row["purse"] == "points" else yuan(row[k]) for k in keys)]
         for row in r["rows"]])


def packages_csv(ledger: Ledger, start: str, end: str) -> bytes:
    """`crdtledger report packages --csv`, services by name."""
    r = movements.packages(ledger, start or None, end or None)
    labels, money_keys = package_labels(), ("opening", "sold", "served", "breakage",
                                            "closing", "check")
    return csv_bytes(
        [tr("服务项目", "Service"), *(labels[k] for k in movements.PACKAGE_FIGURES)],
        [[tr("合计", "Total") if row["service"] == movements.CHAIN
          else service_label(row["service"]),
          *(yuan(row[k]) if k in money_keys else str(row[k])
            for k in movements.PACKAGE_FIGURES)] for row in r["rows"]])


def movements_page() -> None:
    ledger = shop().ledger
    today = ledger.today()
    state = {"start": today[:8] + "01", "end": today}
    with ui.row().classes("items-center gap-4"):
        start_in = date_field(tr("从", "From"), state["start"]).mark("movements-from")
        end_in = date_field(tr("到", "To"), state["end"]).mark("movements-to")
        export_button(tr("导出余额变动", "Export movements"), lambda: (
            movements_csv(ledger, state["start"], state["end"]),
            f"movements-{state['start']}-{state['end']}.csv"), "export-movements")
        export_button(tr("导出套餐未消费", "Export packages"), lambda: (
            packages_csv(ledger, state["start"], state["end"]),
            f"packages-{state['start']}-{state['end']}.csv"), "export-packages")
    ui.label(tr("期初与期末为该时点各分店持有的余额，月初月末与月结余额一致；分店调拨与合并会员在全连锁合计为零。"
                "套餐按实付金额平摊到每次（分的余数计入最先消费的几次），退会会员未用的次数在退会时确认。",
                "Opening and closing are the balances held at the period's bounds (at a "
                "month's, the month end's); moves between branches and merges net to zero "
                "for the chain. A package's price is split over its uses (the remainder's "
                "fen on the first uses); uses a member leaves at her exit are recognised "
                "then.")).classes("text-sm text-grey-7 max-w-3xl")

    @ui.refreshable
    @guarded("reports.view")
    def body() -> None:
        try:
            r = movements.movement(ledger, state["start"] or None, state["end"] or None)
            pk = movements.packages(ledger, state["start"] or None, state["end"] or None)
        except LedgerError as e:
            ui.label(shop().refusal(e)).classes("text-negative")
            return
        labels = movement_labels()
        for purse in movements.PURSES:
            rows = [row for row in r["rows"] if row["purse"] == purse]
            heads = [tr("合计", "Total") if row["branch"] == movements.CHAIN
                     else shop().branch_name(row["branch"]) for row in rows]
            keys = ["opening", *(k for k in movements.LINES if any(row[k] for row in rows)),
                    "closing", "check"]
            with ui.card().classes("w-full"):
                ui.label(tr(*PURSE_NAMES[purse])).classes("text-lg font-medium")
                ui.table(columns=[
                    {"name": "line", "label": "", "field": "line", "align": "left"},
                    *({"name": f"b{i}", "label": h, "field": f"b{i}", "align": "right"}
                      for i, h in enumerate(heads))],
                    rows=[{"key": k, "line": labels[k],
                           **{f"b{i}": ("✓" if not row[k] else "✗ " + _figure(purse, row[k]))
                              if k == "check" else _figure(purse, row[k])
                              for i, row in enumerate(rows)}} for k in keys],
                    row_key="key").props("flat dense").classes("w-full").mark(
                        f"movements-{purse}")
        plabels = package_labels()
        with ui.card().classes("w-full"):
            ui.label(tr("套餐未消费（预收）", "Packages: unearned value")
                     ).classes("text-lg font-medium")
            money_keys = ("opening", "sold", "served", "breakage", "closing")
            ui.table(columns=[
                {"name": "service", "label": tr("服务项目", "Service"), "field": "service",
                 "align": "left"},
                *({"name": k, "label": plabels[k], "field": k, "align": "right"}
                  for k in movements.PACKAGE_FIGURES)],
                rows=[{"service": tr("合计", "Total") if row["service"] == movements.CHAIN
                       else service_label(row["service"]),
                       **{k: money(row[k]) if k in money_keys else
                          ("✓" if not row[k] else "✗ " + money(row[k])) if k == "check"
                          else row[k] for k in movements.PACKAGE_FIGURES}}
                      for row in pk["rows"]],
                row_key="service").props("flat dense").classes("w-full").mark(
                    "movements-packages")

    follow_period(state, start_in, end_in, body)


# --- members: export and erasure ------------------------------------------------------


def members_csv(ledger: Ledger) -> bytes:
    """Every live member with whole phone numbers: for the owner's own records."""
    rows = []
    for rec in views.member_records(ledger):
        mid, m, day, p = rec["id"], rec["profile"], rec["day"], rec["purses"]
        prefs = m.get("prefs") or {}
        rows.append([
            mid, m.get("name", ""), m.get("phone", ""), m.get("gender", ""),
            m.get("birthday", ""), m.get("anniversary", ""),
            shop().branch_name(m.get("home", "")), views.level(ledger, mid, m)["name"],
            yuan(p.get("cash", 0)), yuan(p.get("bonus", 0)), p.get("points", 0), day,
            *[prefs.get(k, "") for k in PREF_KEYS],
            " ".join(sorted(t for t, on in (m.get("tags") or {}).items() if on)),
            m.get("notes", ""),
        ])
    return csv_bytes([
        tr("会员号", "Member id"), tr("姓名", "Name"), tr("手机", "Phone"),
        tr("性别", "Gender"), tr("生日", "Birthday"), tr("纪念日", "Anniversary"),
        tr("开卡分店", "Home branch"), tr("等级", "Level"), tr("储值", "Cash"),
        tr("赠送", "Bonus"), tr("积分", "Points"), tr("入会日期", "Joined"),
        tr("力度", "Strength"), tr("服务偏好", "Service"), tr("技师", "Technician"),
        tr("标签", "Tags"), tr("备注", "Notes")], rows)


async def confirmed_run(question: str, yes: str, marker: str, write: Callable[[str], Any],
                        what: str) -> bool:
    """Ask before a write that cannot be undone (an erasure, a merge), then run it as
    the logged-in operator on the node's thread; False if declined or refused."""
    with ui.dialog() as dialog, ui.card():
        ui.label(question)
        with ui.row():
            ui.button(yes, color="negative", on_click=lambda: dialog.submit(True)).mark(marker)
            ui.button(tr("取消", "Cancel"), on_click=lambda: dialog.submit(False)).props("flat")
    if not await dialog:
        return False
    op = operator()
    try:
        if op is None:
            raise PermissionDenied("nobody is logged in")
        await shop().run(lambda: write(op), what)
    except LedgerError as e:
        refuse(e)
        return False
    return True


def members_page() -> None:
    ledger = shop().ledger
    with ui.card().classes("w-full max-w-3xl"):
        ui.label(tr("会员资料导出", "Member export")).classes("text-lg font-medium")
        ui.label(tr("全部会员的资料（含完整手机号）和余额，CSV 文件，可用 Excel 打开。请妥善保管。",
                    "All members' details (whole phone numbers) and balances as CSV for Excel. "
                    "Keep the file safe.")).classes("text-sm text-grey-7")

        def export() -> None:
            try:
                require("backup")
                data = members_csv(ledger)
            except LedgerError as e:
                refuse(e)
                return
            ui.download.content(data, f"members-{ledger.today()}.csv", "text/csv")

        ui.button(tr("导出会员 CSV", "Export members CSV"), icon="download", on_click=export
                  ).props("outline").mark("export-members").set_visibility(can("backup"))
        if not can("backup"):
            ui.label(tr("需要「备份」权限", "Needs the backup permission")).classes("text-grey-7")

    with ui.card().classes("w-full max-w-3xl"):
        ui.label(tr("应会员要求删除个人资料", "Erase a member's personal data on request")
                 ).classes("text-lg font-medium")
        ui.label(tr(
            "姓名、手机、身份证号、生日、纪念日、偏好、标签和备注将被清空，所有分店同步生效；"
            "消费和充值记录（金额）保留用于对账。本店的历史记录立即清除旧资料，"
            "其他分店在下次整理存储时清除；之前做的备份和同步文件仍含旧资料。",
            "Name, phone, ID number, birthday, anniversary, preferences, tags and notes are "
            "blanked at "
            "every branch; the entries (amounts) stay for the accounts. This branch's stored "
            "history drops the old values now, other branches at their next compaction; "
            "backups and sync files made earlier still hold them.")).classes("text-sm text-grey-7")
        if not can("member.delete"):
            ui.label(tr("需要「删除会员」权限", "Needs the member.delete permission")
                     ).classes("text-grey-7")
            return
        def search() -> None:
            found.clear()
            try:
                require("member.delete")
                hits = ledger.find_members(query.value or "")
            except LedgerError as e:
                refuse(e)
                return
            with found:
                if not hits:
                    ui.label(tr("没有找到会员", "No member found")).classes("text-grey-7")
                for h in hits:
                    with ui.row().classes("items-center gap-4"):
                        ui.label(f"{h['name']}  {h['phone']}  {shop().branch_name(h['home'])}")
                        # Guarded while its question is open: one question, one erasure.
                        layout.once(ui.button(tr("删除个人资料", "Erase personal data"),
                                              color="negative"), partial(confirm, h)
                                    ).props("dense outline").mark("erase")

        async def confirm(h: dict[str, Any]) -> None:
            question = tr("确定删除 {name}（{phone}）的个人资料？此操作不能撤销。",
                          "Erase the personal data of {name} ({phone})? This cannot be undone.",
                          name=h["name"], phone=h["phone"])
            if await confirmed_run(question, tr("删除", "Erase"), "erase-confirm",
                                   lambda op: operations.run(
                                       ledger, op, "member.erase", {"member": h["id"]}),
                                   "erase member"):
                ui.notify(tr("已删除个人资料", "Personal data erased"), type="positive")
                search()

        with ui.row().classes("items-center gap-2"):
            query = ui.input(tr("手机、姓名或卡号", "Phone, name or card number")
                             ).props("dense outlined").on("keydown.enter", search
                                                          ).mark("erase-query")
            ui.button(tr("查找", "Find"), icon="search", on_click=search).props("dense"
                                                                                ).mark("erase-find")
        found = ui.column().classes("w-full")


# --- duplicate members -------------------------------------------------------------------


def merge_group(ledger: Ledger, op: str, keep: str, others: Iterable[str]) -> None:
    """Fold every other member of a duplicate group into `keep` (member.merge, the same
    checks and permission as the API and the command line)."""
    for other in others:
        operations.run(ledger, op, "member.merge", {"member": other, "into": keep})


def duplicates_page() -> None:
    ledger = shop().ledger
    ui.label(tr("同一个人在不同分店（或以不同写法的手机号）登记了两次时，会员会重复。选择保留哪一位，"
                "其余的合并到他名下：卡、储值、积分、套餐和消费记录都归他所有，各分店同步后生效。"
                "合并不能撤销。",
                "When one person was registered twice (at two branches, or with the phone "
                "typed another way), pick the member to keep and fold the others into them: "
                "cards, stored value, points, packages and history become theirs at every "
                "branch once synced. A merge cannot be undone.")
             ).classes("text-sm text-grey-7 max-w-3xl")

    @ui.refreshable
    @guarded("member.merge")
    def listing() -> None:
        groups = views.duplicates(ledger)
        if not groups:
            ui.label(tr("没有疑似重复的会员", "No duplicate members")).classes("text-grey-7")
        for g in groups:
            why = "、".join(tr("手机号", "phone") if k == "phone" else tr("身份证号", "ID number")
                           for k in g["shared"])
            with ui.card().classes("w-full max-w-3xl").mark("dup-group"):
                ui.label(tr("相同{why}", "Same {why}", why=why)).classes("font-medium")
                for m in g["members"]:
                    with ui.row().classes("items-center gap-4"):
                        ui.label(f"{m['name']}  {m['phone']}  {shop().branch_name(m['home'])}"
                                 f"  {m['day']}")
                        ui.label(tr("储值 {cash} 积分 {points}", "cash {cash} points {points}",
                                    cash=money(m["balance"]["cash"]),
                                    points=m["balance"]["points"])).classes("text-grey-7")
                        layout.once(ui.button(tr("保留此会员", "Keep this one")),
                                    partial(confirm, g, m)
                                    ).props("dense outline").mark(f"keep-{m['id']}")

    async def confirm(group: dict[str, Any], keep: dict[str, Any]) -> None:
        others = [m["id"] for m in group["members"] if m["id"] != keep["id"]]
        question = tr("将其余 {n} 位会员合并到 {name}（{phone}）名下？合并不能撤销。",
                      "Fold the other {n} member(s) into {name} ({phone})? A merge cannot "
                      "be undone.", n=len(others), name=keep["name"], phone=keep["phone"])
        if await confirmed_run(question, tr("合并", "Merge"), "merge-confirm",
                               lambda op: merge_group(ledger, op, keep["id"], others),
                               "merge members"):
            ui.notify(tr("已合并", "Merged"), type="positive")
            listing.refresh()

    listing()


# --- sync status, banner, sync files, backup -----------------------------------------


def ago(seconds: float) -> str:
    s = max(0, int(seconds))
    if s < 60:
        return tr("{n} 秒前", "{n} s ago", n=s)
    if s < 3600:
        return tr("{n} 分钟前", "{n} min ago", n=s // 60)
    if s < 86400:
        return tr("{n} 小时前", "{n} h ago", n=s // 3600)
    return tr("{n} 天前", "{n} days ago", n=s // 86400)


def last_contacts(ledger: Ledger, status: dict[str, Any]) -> dict[str, float]:
    """When each peer was last heard from, in wall seconds: this run's connections, and
    before them the last sync round or file the store remembers."""
    out = {n: ms / 1000 for n, ms in views.peers_seen(ledger).items() if ms is not None}
    for p in status["peers"]:
        if p["last_contact"] is not None:
            out[p["node"]] = max(out.get(p["node"], 0.0), float(p["last_contact"]))
    return out


def cut_off_banner() -> str | None:
    """The banner's text when this branch may not sell (restored from a backup and not
    caught up yet, or caught forking its log), or when no peer is connected though
    some are known; else None."""
    try:
        node = shop().node
        status = node.sync_status()
    except (AssertionError, RuntimeError):  # the node is not started (yet)
        return None
    ledger = node.ledger
    if status.get("restored"):
        return tr("本店由 {when} 的备份恢复：连上其他分店、取回备份之后的数据之前，不能收银",
                  "Restored from a backup of {when}: this branch cannot sell until it has "
                  "reached another branch and fetched what it wrote after the backup",
                  when=status["restored"])
    if status.get("revoked"):
        return tr("本店电脑的证书已被总部吊销：本机不能再收银或写入。"
                  "请总部为新电脑登记新的分店编号，或为本机续期证书（crdtledger chain renew）",
                  "The chain revoked this branch's certificate: this PC can no longer sell "
                  "or write. The head office enrols a new PC under a new branch id, or "
                  "renews this one (crdtledger chain renew)")
    ends = status.get("certificate_expires")
    if ends is not None and ends <= time.time() * 1000:
        return tr("本店证书已于 {when} 到期：其他分店不再接收本店的记录。请总部续期"
                  "（crdtledger chain renew）后把目录带回本店",
                  "This branch's certificate ended on {when}: the other branches no "
                  "longer take what it writes. The head office renews it (crdtledger "
                  "chain renew) and the directory is carried back",
                  when=localtime.show(ends / 1000, localtime.zone(ledger), "%Y-%m-%d"))
    if any(f["node"] == status["node"] for f in status.get("faults") or []):
        return tr("本店的数据出现两份不同的历史（备份恢复或复制的硬盘）：各分店已停止接收本店的"
                  "写入，请联系总部重新登记", "This branch wrote two different histories (a "
                  "restored backup or a copied disk): the chain no longer takes its writes; "
                  "ask the head office to enrol it again")
    clock = clock_banner(status.get("clock"))
    if clock is not None:
        return clock
    if any(p["connected"] for p in status["peers"]):
        return None
    if not status["peers"] and not node.config.peers:
        # A single branch, or one that syncs by files only: nothing to be cut off from.
        return None
    seen = last_contacts(ledger, status)
    since = max(seen.values(), default=None)
    keep = tr("可以继续收银，恢复后自动同步", "the counter keeps working and syncs once back")
    if since is None:
        return tr("本店还没有连上其他分店：{keep}", "This branch has not reached the other "
                  "branches yet: {keep}", keep=keep)
    when = local_time(ledger, int(since * 1000),
                      with_day=ledger.storage.day_of(int(since * 1000)) != ledger.today())
    return tr("本店与其他分店断开连接（自 {when} 起）：{keep}",
              "This branch is cut off from the other branches (since {when}): {keep}",
              when=when, keep=keep)


def clock_banner(clock: Mapping[str, Any] | None) -> str | None:
    """What the peers say of this machine's clock (crdtledger.peerclock), when it is off
    or some peer's clock disagrees with it: selling goes on either way."""
    if not clock:
        return None
    off = int(clock.get("off_ms") or 0)
    if off:
        return tr("本机时钟比连锁时间{side} {d}：收银照常，单据按连锁时间记账；请校准本机时钟",
                  "This machine's clock is {d} {side_en} the chain's time: the counter keeps "
                  "working and books sales by the chain's time; please set this clock right",
                  side="快" if off < 0 else "慢", side_en="ahead of" if off < 0 else "behind",
                  d=duration(off))
    disagree = clock.get("disagree") or {}
    if disagree:
        peer, diff = sorted(disagree.items())[0]
        return tr("本机时钟与 {branch} 相差 {d}：其中一台的时钟不准，请核对两边的时钟",
                  "This machine's clock and {branch}'s differ by {d}: one of them is wrong; "
                  "please check both clocks", branch=shop().branch_name(peer), d=duration(diff))
    floor = int(clock.get("floor_ahead_ms") or 0)
    if floor:
        return tr("本机时钟比本店最早可记账的时间（开通或上次月结）慢 {d}："
                  "单据在那之前都记在那一刻；请校准本机时钟（本店若刚开通，也请核对总部电脑的时钟）",
                  "This machine's clock reads {d} before the first moment this branch may "
                  "book (its enrolment or its latest month-end cut): sales are booked at "
                  "that moment until then; please set this clock right (and head office's, "
                  "if this branch was enrolled just now)", d=duration(floor))
    return None


def sync_page() -> None:
    ledger = shop().ledger

    @ui.refreshable
    @guarded(None)
    def peers() -> None:
        status = shop().node.sync_status()
        seen = last_contacts(ledger, status)
        now = time.time()
        live = {p["node"]: p for p in status["peers"]}
        with ui.row().classes("items-center gap-4 text-sm text-grey-8"):
            ui.label(tr("本店：{name}（{node}）", "This branch: {name} ({node})",
                        name=shop().branch_name(status["node"]), node=status["node"]))
            ui.label(tr("数据指纹 {d}", "Data digest {d}", d=status["digest"][:12]))
            if shop().node.config.peers:
                ui.label(tr("拨号地址：{urls}", "Dials: {urls}",
                            urls=", ".join(shop().node.config.peers)))
        for f in status.get("faults") or []:
            ui.label(tr("已停止接收 {branch}（{node}）的写入：{detail}",
                        "No longer taking what {branch} ({node}) writes: {detail}",
                        branch=shop().branch_name(f["node"]), node=f["node"],
                        detail=f["detail"])).classes("text-negative text-sm").mark("fault")
        for node, n in (status.get("rights_refused") or {}).items():
            ui.label(tr("{branch}（{node}）索取会员权益过快，已拒绝 {n} 次：请核实该店",
                        "{branch} ({node}) asked for members' rights faster than a branch "
                        "sells; refused {n} times: check that branch",
                        branch=shop().branch_name(node), node=node, n=n)
                     ).classes("text-negative text-sm").mark("rights-refused")
        for node, u in (status.get("unfunded") or {}).items():
            ui.label(tr("{branch}（{node}）有 {n} 笔单据动用了它没有的会员余额，"
                        "一直未入账：请核实该店",
                        "{n} entries of {branch} ({node}) spend members' value it never "
                        "held, and are not counted: check that branch",
                        branch=shop().branch_name(node), node=node, n=u["entries"])
                     ).classes("text-negative text-sm").mark("unfunded")
        for p in status["peers"]:  # another protocol version: one of the two needs upgrading
            if p.get("incompatible"):
                ui.label(tr("无法与 {branch}（{node}）同步：{detail}",
                            "Cannot sync with {branch} ({node}): {detail}",
                            branch=shop().branch_name(p["node"]), node=p["node"],
                            detail=p["incompatible"])).classes("text-negative text-sm"
                                                               ).mark("incompatible")
        nodes = sorted(set(live) | set(seen))
        if not nodes:
            ui.label(tr("还没有连上过其他分店。", "No other branch has been reached yet.")
                     ).classes("text-grey-7")
            return
        rows = []
        for n in nodes:
            p = live.get(n, {})
            lag = []
            if p.get("behind_in") is not None:
                lag.append(tr("待收 {n}", "to receive {n}", n=p["behind_in"]))
            if p.get("behind_out") is not None:
                lag.append(tr("待发 {n}", "to send {n}", n=p["behind_out"]))
            contact = seen.get(n)
            rows.append({
                "node": n, "branch": shop().branch_name(n), "address": p.get("address") or "",
                "connected": bool(p.get("connected")),
                "state": tr("已连接", "connected") if p.get("connected") else tr("未连接",
                                                                                "not connected"),
                "contact": (tr("{at}（{ago}）", "{at} ({ago})",
                               at=local_time(ledger, int(contact * 1000)), ago=ago(now - contact))
                            if contact else tr("从未", "never")),
                "lag": "，".join(lag) if lag else "—",
            })
        table = ui.table(columns=[
            {"name": "branch", "label": tr("分店", "Branch"), "field": "branch", "align": "left"},
            {"name": "node", "label": tr("分店号", "Node"), "field": "node", "align": "left"},
            {"name": "state", "label": tr("连接", "Link"), "field": "state", "align": "left"},
            {"name": "contact", "label": tr("最后联系", "Last contact"), "field": "contact",
             "align": "left"},
            {"name": "lag", "label": tr("差距（操作数）", "Lag (operations)"), "field": "lag",
             "align": "left"},
            {"name": "address", "label": tr("地址", "Address"), "field": "address",
             "align": "left"},
        ], rows=rows, row_key="node").props("flat bordered").classes("w-full")
        table.add_slot("body-cell-state", """
            <q-td :props="props">
              <q-badge :color="props.row.connected ? 'positive' : 'negative'"
                       :label="props.value" />
            </q-td>""")

    with ui.card().classes("w-full"):
        ui.label(tr("分店同步状态", "Branch sync status")).classes("text-lg font-medium")
        peers()
        ui.timer(3.0, peers.refresh)

    with ui.row().classes("w-full gap-4 no-wrap max-lg:flex-wrap items-start"):
        if can("sync"):
            sync_files_card(ledger)
        if can("backup"):
            backup_card(ledger)
    if can("adjust"):
        clock_card(ledger)
    if can("rights.transfer"):
        handover_card(ledger)


def clock_card(ledger: Ledger) -> None:
    """本机时钟已核对 (operation clock.confirm): with no other branch connected to judge
    this PC's clock, a manager's word that it is right lets the month-end cut, the
    write-off of expired points, booking decisions, and what a clock set back holds
    (coupons, refunds, points, check-ins: Ledger.check_clock_for) go on today."""
    with ui.card().classes("w-full max-w-3xl"):
        ui.label(tr("本机时钟", "This PC's clock")).classes("text-lg font-medium")
        ui.label(tr("没有其他分店连着核对本机时钟时（断网、只用同步文件），月结、过期积分清零、预约确认，"
                    "以及时钟被调慢后的优惠券、退款、积分和签到，都等待时钟核对。请先对照手机或电视上的"
                    "标准时间看一眼本机时钟，确实准确再确认；当天有效。",
                    "With no other branch connected to check this PC's clock (offline, sync "
                    "files only), the month-end cut, the write-off of expired points, "
                    "booking decisions, and coupons, refunds, points and check-ins after the "
                    "clock was set back all wait for it. Compare this PC's clock with a "
                    "phone's first; confirm only if it is right. It holds for today.")
                 ).classes("text-sm text-grey-7")
        now = ui.label().classes("text-sm").mark("clock-now")

        def show() -> None:
            now.set_text(tr("本机时间：{t}", "This PC's time: {t}",
                            t=local_time(ledger, int(time.time() * 1000))))
        show()
        ui.timer(1.0, show)

        async def confirm() -> None:
            question = tr("本机时钟准确吗？确认后今天按本机时钟结账和判断有效期。",
                          "Is this PC's clock right? Once confirmed, today's closing and "
                          "expiry judgements go by it.")
            if await confirmed_run(question, tr("时钟准确", "The clock is right"),
                                   "clock-confirm-yes",
                                   lambda op: operations.run(ledger, op, "clock.confirm", {}),
                                   "confirm the clock"):
                ui.notify(tr("已记录：本机时钟已核对（今天有效）",
                             "Noted: this PC's clock is confirmed (for today)"), type="positive")

        layout.once(ui.button(tr("本机时钟已核对", "This PC's clock is right")),
                    confirm).mark("clock-confirm")


def handover_card(ledger: Ledger) -> None:
    """A shop closing for good: its members' rights to another branch (rights.handover)
    before head office revokes it, or they are stranded."""
    with ui.card().classes("w-full max-w-3xl"):
        ui.label(tr("闭店移交", "Closing this shop")).classes("text-lg font-medium")
        ui.label(tr("本店永久停业前，把本店持有的全部会员权益（储值、赠送、积分、套餐、优惠券）移交给另一家"
                    "分店，再由总部吊销本店证书；未移交就吊销，这些钱在任何分店都无法再使用。商品库存请用"
                    "调拨发出。接收的分店也为本店的销售办理退款。",
                    "Before this shop closes for good, hand every member's rights it holds "
                    "(stored value, bonus, points, packages, coupons) to another branch, then "
                    "head office revokes its certificate; revoked first, that money can never "
                    "be spent anywhere. Ship the goods in stock separately. The branch that "
                    "receives them also refunds this shop's sales.")
                 ).classes("text-sm text-grey-7")

        @ui.refreshable
        @guarded(None)
        def held() -> None:
            h = views.rights_summary(ledger, ledger.node)
            if not h["held"]:
                # Handed over or not, it says who refunds this shop's sales: a shop that
                # holds nothing still hands over, to name that branch.
                receiver = ledger.refunds_at({"node": ledger.node})
                if receiver == ledger.node:
                    ui.label(tr("本店不持有任何会员权益；闭店前仍请移交，以指定为本店的销售办理退款的分店。",
                                "This shop holds no member's rights; hand over before it "
                                "closes all the same, to name the branch that refunds its "
                                "sales.")).mark("handover-held")
                elif receiver is None:
                    ui.label(tr("本店已移交。", "This shop has handed over.")
                             ).mark("handover-held")
                else:
                    ui.label(tr("本店已移交给 {name}（{node}），本店销售的退款由其办理。",
                                "This shop has handed over to {name} ({node}), which "
                                "refunds its sales.", name=shop().branch_name(receiver),
                                node=receiver)).mark("handover-held")
                return
            # Packages and coupons summed by kind ("pkg:", "cpn:"): one line, not one
            # per package.
            kinds: dict[str, int] = {}
            for purse, v in h["held"].items():
                kind = purse[:4] if purse[3:4] == ":" else purse
                kinds[kind] = kinds.get(kind, 0) + v
            what = "，".join(f"{purse_label(k)} {amount(k, v)}" for k, v in kinds.items())
            ui.label(tr("本店持有 {n} 位会员的权益：{what}", "This shop holds the rights of "
                        "{n} member(s): {what}", n=h["members"], what=what)
                     ).mark("handover-held")
        held()
        others = [b for b in branches(ledger) if b != ledger.node]
        with ui.row().classes("items-center gap-4"):
            to = ui.select({b: f"{shop().branch_name(b)} ({b})" for b in others},
                           label=tr("移交给", "Hand over to")).classes("min-w-60"
                                                                   ).mark("handover-to")

            async def hand_over() -> None:
                if not to.value:
                    ui.notify(tr("请选择接收的分店", "Choose the branch to receive them"),
                              type="warning")
                    return
                target = str(to.value)
                question = tr("把本店持有的全部会员权益移交给 {name}（{node}）？移交不能撤销。",
                              "Hand every member's rights this shop holds to {name} ({node})? "
                              "This cannot be undone.", name=shop().branch_name(target),
                              node=target)
                if await confirmed_run(question, tr("移交", "Hand over"), "handover-confirm",
                                       lambda op: operations.run(ledger, op, "rights.handover",
                                                                 {"to": target}),
                                       "hand over rights"):
                    ui.notify(tr("已移交", "Handed over"), type="positive")
                    held.refresh()

            layout.once(ui.button(tr("移交全部权益", "Hand over all rights"),
                                  color="negative"), hand_over).mark("handover")


def sync_files_card(ledger: Ledger) -> None:
    with ui.card().classes("flex-1 min-w-80"):
        ui.label(tr("同步文件（无网络的分店）", "Sync files (branches without a network)")
                 ).classes("text-lg font-medium")
        ui.label(tr("导出文件，用 U 盘或邮件带到另一家分店，在那里导入。重复导入不会重复记账。",
                    "Export a file, carry it to the other branch (USB stick, e-mail) and import "
                    "it there. Importing twice changes nothing.")).classes("text-sm text-grey-7")
        targets = {"": tr("全部数据", "everything")}
        targets |= {n: shop().branch_name(n) for n in branches(ledger) if n != ledger.node}
        target = ui.select(targets, value="", label=tr("给哪家分店", "For branch")
                           ).props("dense outlined").classes("w-64")
        progress = ui.linear_progress(value=0, show_value=False).classes("w-full")
        progress.set_visibility(False)
        status = ui.label().classes("text-sm").mark("sync-status")

        async def export() -> None:
            try:
                # export_bytes reads no operator as the node's owner at its console: a
                # page left open after its session ended must not hand it none.
                op = require("sync")
            except LedgerError as e:
                keep_file_refusal(audit.SYNC_EXPORT, e)
                refuse(e)
                return
            progress.set_visibility(True)
            progress.set_value(0.2)
            status.set_text(tr("正在导出…", "Exporting…"))
            await asyncio.sleep(0.05)  # let the bar show before the loop is busy
            try:
                data, info = export_bytes(ledger, op, target.value or None)
            except LedgerError as e:
                keep_file_refusal(audit.SYNC_EXPORT, e)
                progress.set_visibility(False)
                status.set_text("")
                refuse(e)
                return
            progress.set_value(1.0)
            who = target.value or "all"
            name = f"{ledger.node}-for-{who}-{ledger.today()}.crdtsync"
            status.set_text(tr("已导出 {docs} 个文档，{kb} KB",
                               "Exported {docs} documents, {kb} KB",
                               docs=info["documents"], kb=max(1, info["bytes"] // 1024)))
            ui.download.content(data, name, "application/octet-stream")

        ui.button(tr("导出同步文件", "Export sync file"), icon="file_download", on_click=export
                  ).props("outline").mark("sync-export")

        async def import_(e: events.UploadEventArguments) -> None:
            await import_sync_file(ledger, await e.file.read(), progress, status,
                                   name=e.file.name)
            upload.reset()

        upload = ui.upload(label=tr("导入同步文件", "Import a sync file"), auto_upload=True,
                           on_upload=import_, max_file_size=2 * 1024**3
                           ).props("accept=.crdtsync,*/*").classes("w-full").mark("sync-import")


async def import_sync_file(ledger: Ledger, data: bytes, progress: ui.linear_progress,
                           status: ui.label, *, name: str = "") -> dict[str, Any] | None:
    """Check the file off the loop (the counter keeps serving), then apply it whole.
    `name`: the file's as uploaded, which a refusal says (and keeps) for its path here."""
    op = operator()
    progress.set_visibility(True)
    progress.set_value(0.2)
    status.set_text(tr("正在检查文件…", "Checking the file…"))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "import.crdtsync"
        write_private(path, data)  # members' data: 0600 even inside a private dir
        try:
            require("sync")
            # read_file touches no document: the seal (signature, decryption) and the
            # parse run in a thread. import_file checks again before it applies
            # anything, on the loop that owns the ledger.
            head = await run.io_bound(read_file, ledger, path)
            if head is None:
                return None  # the app is shutting down
            progress.set_value(0.6)
            status.set_text(tr("正在导入 {name} 的 {n} 条记录…", "Importing {n} records from "
                               "{name}…", name=shop().branch_name(head["node"]),
                               n=len(head["batch"].recs)))
            await asyncio.sleep(0.05)
            info = await shop().run(lambda: import_file(ledger, path, operator=op),
                                    "import sync file")
        except RemoteProtocolError as e:  # damaged, foreign, untrusted, breaking a rule
            # Its sentence names the file as the owner knows it, not this temporary path.
            e.args = (str(e).replace(str(path), repr(name) if name else "the file uploaded"),
                      *e.args[1:])
            keep_file_refusal(audit.SYNC_IMPORT, e)
            progress.set_visibility(False)
            status.set_text(tr("文件被拒绝，未做任何更改：{why}", "File refused, nothing was "
                               "changed: {why}", why=_why(e)))
            status.classes(replace="text-sm text-negative")
            ui.notify(status.text, type="negative", multi_line=True)
            return None
        except LedgerError as e:
            keep_file_refusal(audit.SYNC_IMPORT, e)
            progress.set_visibility(False)
            status.set_text("")
            refuse(e)
            return None
    progress.set_value(1.0)
    status.classes(replace="text-sm text-positive")
    changed = info["records"]
    text = (tr("已导入 {name} 的文件：{n} 条新记录", "Imported the file of {name}: "
               "{n} new records", name=shop().branch_name(info["from"]), n=changed)
            if changed else tr("已导入：没有新内容", "Imported: nothing new"))
    if info.get("revoked"):
        text += tr("。已吊销证书的分店 {nodes} 的记录未导入", ". Records of {nodes}, whose "
                   "certificate the chain revoked, were not taken",
                   nodes=", ".join(info["revoked"]))
    if info["incomplete"]:
        text += tr("。本店缺少该文件所依赖的更早数据，请对方导出「全部数据」",
                   ". This branch lacks earlier changes the file builds on: ask for an export "
                   "of everything")
    status.set_text(text)
    ui.notify(text, type="positive" if not info["incomplete"] else "warning")
    return info


def _why(e: Exception) -> str:
    if isinstance(e, ForeignChain):
        return tr("它来自另一个连锁的分店", "it comes from another chain's branch")
    if isinstance(e, UntrustedSigner) or "not certified" in str(e) or "revoked" in str(e):
        return tr("签名者不是本连锁登记的分店（或已被吊销）：{e}",
                  "it is signed by a store not enrolled in this chain, or revoked: {e}", e=e)
    text = str(e)
    if "breaks write rule" in text:
        return tr("文件里有违反写入规则的记录：{e}", "a record in it breaks a write rule: {e}",
                  e=e)
    if "altered" in text or "incomplete" in text:
        return tr("文件已损坏或不完整", "the file is damaged or incomplete")
    if "not a crdtledger sync file" in text:
        return tr("这不是同步文件", "this is not a sync file")
    if "backup file, not a sync file" in text:
        # A backup picked by mistake is a file whole and good: "damaged" sent the owner
        # hunting for a fault; the import cannot restore, the command line does.
        return tr("这是备份文件，不是同步文件（恢复备份请用命令 crdtledger restore）",
                  "this is a backup file, not a sync file (put a backup back with the "
                  "command crdtledger restore)")
    if "newer" in text:
        return tr("文件由更新版本的软件生成，请先升级", "a newer version made it: upgrade first")
    return tr("文件内容损坏", "the file's content is damaged")


def backup_card(ledger: Ledger) -> None:
    with ui.card().classes("flex-1 min-w-80"):
        ui.label(tr("备份", "Backup")).classes("text-lg font-medium")
        ui.label(tr("下载本店数据的一致副本（已签名并加密，只有本连锁的门店能读取）；"
                    "备份时收银照常进行。",
                    "Download a consistent copy of this branch's data (signed and encrypted: "
                    "only this chain's branches can read it); the counter keeps working "
                    "meanwhile.")).classes("text-sm text-grey-7")
        status = ui.label().classes("text-sm")

        async def backup() -> None:
            try:
                require("backup")
            except LedgerError as e:
                keep_file_refusal(audit.BACKUP, e)
                refuse(e)
                return
            status.set_text(tr("正在备份…", "Backing up…"))
            status.classes(replace="text-sm")
            try:
                data = await run.io_bound(sealed_backup, ledger.storage.dir)
            except StoreDamaged as e:
                # The page said "backing up" for good, and the owner went on trusting a
                # backup that was never made.
                status.set_text(tr(
                    "没有生成备份，之前的备份仍完好：本店的数据已损坏（{why}）。请用最近一次完好的"
                    "备份恢复（命令 crdtledger restore），再让本店从其他分店取回之后的数据",
                    "No backup was made, the earlier ones are still whole: this branch's "
                    "data is damaged ({why}). Restore the last good backup (the command "
                    "crdtledger restore) and let the branch catch up from its peers",
                    why=e.found))
                status.classes(replace="text-sm text-negative")
                ui.notify(status.text, type="negative", multi_line=True)
                return
            if data is None:
                return  # the app is shutting down
            status.set_text(tr("备份完成，{kb} KB", "Backup done, {kb} KB",
                               kb=max(1, len(data) // 1024)))
            stamp = datetime.now(ledger.storage.tz).strftime("%Y%m%d-%H%M")
            ui.download.content(data, f"backup-{ledger.node}-{stamp}.ledger.backup",
                                "application/octet-stream")

        ui.button(tr("下载备份", "Download backup"), icon="backup", on_click=backup
                  ).props("outline").mark("backup")


# --- audit trail ------------------------------------------------------------------------


def action_labels() -> dict[str, str]:
    """The audit trail's actions (crdtledger.audit.ACTIONS) as the counter names them."""
    return {
        "topup": tr("充值", "top-up"), "debit": tr("消费", "service"),
        "refund": tr("退款", "refund"), "transfer": tr("转移储值权利", "rights moved"),
        "redeem": tr("积分兑换", "points redeemed"), "convert": tr("积分转储值", "points to value"),
        "correction": tr("调账", "correction"), "expiry": tr("积分过期", "points expired"),
        "package": tr("售套餐", "package sold"), "card": tr("发卡", "card issued"),
        "merge": tr("合并会员", "members merged"), "member.add": tr("新会员", "member added"),
        "member.edit": tr("修改会员资料", "member edited"), "card.lost": tr("挂失", "card lost"),
        "card.found": tr("解除挂失", "card found"), "card.return": tr("退卡", "card returned"),
        "card.replace": tr("补卡", "card replaced"),
        "operator.add": tr("添加操作员", "operator added"),
        "operator.set": tr("修改操作员", "operator changed"),
        "role.define": tr("设置角色权限", "role defined"), "rule.set": tr("修改规则", "rule set"),
    }


AUDIT_HEADERS = (("time", "时间", "Time"), ("branch", "分店", "Branch"),
                 ("action", "操作", "Action"), ("operator", "操作员", "Operator"),
                 ("approver", "审批人", "Approver"), ("member", "会员", "Member"),
                 ("amount", "金额", "Amount"), ("pay", "支付方式", "Paid by"),
                 ("service", "项目", "Service"), ("reason", "原因", "Reason"),
                 ("ref", "关联单号", "Refers to"), ("detail", "详情", "Detail"),
                 ("id", "单号", "Entry"))


def audit_rows(ledger: Ledger, f: Mapping[str, str], limit: int = audit.TRAIL_LIMIT
               ) -> list[list[str]]:
    """The newest `limit` actions of the trail with the filters `f` (empty: any), as the
    counter shows and exports them: the columns of `crdtledger audit --csv`
    (audit.COLUMNS), branches, actions, methods and services by name, members by name
    and id."""
    params = {"operator": f.get("operator"), "branch": f.get("branch"), "kind": f.get("kind"),
              "from": f.get("start"), "to": f.get("end")}
    rows = operations.run(ledger, operator() or "", "audit", {
        "limit": limit, **{k: v for k, v in params.items() if v}})
    labels = action_labels()
    names = views.member_names(ledger, (r["member"] for r in rows if r["member"]))
    out = []
    for r in rows:
        mid = r["member"]
        who = names.get(mid, "")
        if mid in names and who in ("", ERASED_NAME):
            who = tr("已删除会员", "erased member")
        out.append([r["time"], shop().branch_name(r["branch"]),
                    labels.get(r["action"], r["action"]),
                    shop().operator_name(r["operator"]) if r["operator"] else "",
                    shop().operator_name(r["approver"]) if r["approver"] else "",
                    f"{who} ({mid})" if who else mid, yuan(r["amount"]) if r["amount"] else "",
                    shop().pay_label(r["pay"]), shop().service_name(r["service"]),
                    r["reason"], r["ref"], r["detail"], r["id"]])
    return out


# A refused attempt's code (crdtledger.audit.SECURITY_CODES) as the counter says it.
REFUSAL_LABELS = {
    "permission_denied": ("无此权限", "no permission"),
    "approval_required": ("审批人不符", "approver not allowed"),
    "wrong_pin": ("卡密码错误", "wrong card PIN"),
    "login_failed": ("登录姓名或密码错误", "wrong name or password at login"),
    "too_many_attempts": ("错误次数过多，已暂停", "too many wrong tries: locked"),
    # a sync file refused whole at its import (audit.note_file_refusal)
    "foreign_chain": ("其他连锁的文件", "another chain's file"),
    "corrupt_sync_file": ("文件损坏或被改动", "file damaged or altered"),
    "untrusted_signer": ("签名者不受本连锁信任", "signed by a key the chain does not trust"),
    "remote_protocol_error": ("文件被拒绝", "file refused"),
    "protocol_version": ("文件版本不符", "file of another version"),
}
REFUSED_HEADERS = (("time", "时间", "Time"), ("operation", "操作", "Operation"),
                   ("operator", "操作员", "Operator"), ("member", "会员", "Member"),
                   ("card", "卡号", "Card"), ("code", "拒绝原因", "Refused as"),
                   ("reason", "详情", "Detail"))


def refused_labels() -> dict[str, str]:
    """Operations whose names are not the trail's actions (an entry's kind), and the
    login, as the counter names them; any other shows by its name."""
    return {
        "login": tr("登录", "login"), "correct": tr("调账", "correction"),
        "package.sell": tr("售套餐", "package sold"), "card.issue": tr("发卡", "card issued"),
        "member.merge": tr("合并会员", "members merged"),
        "rights.transfer": tr("转移储值权利", "rights moved"),
        "points.redeem": tr("积分兑换", "points redeemed"),
        "points.convert": tr("积分转储值", "points to value"),
        "audit": tr("查看操作日志", "audit trail read"),
        audit.SYNC_EXPORT: tr("导出同步文件", "sync file export"),
        audit.SYNC_IMPORT: tr("导入同步文件", "sync file import"),
        audit.BACKUP: tr("备份", "backup"), audit.ANALYTICS_EXPORT: tr("导出分析数据",
                                                                    "analytics export"),
    }


def refused_rows(ledger: Ledger, f: Mapping[str, str], limit: int) -> list[dict[str, str]]:
    """The newest `limit` attempts refused at this branch (`crdtledger audit --refused`)
    of the period and operator of `f`, as the page shows them. Kept at the branch that
    refused them: the branch and action filters do not apply."""
    params = {"operator": f.get("operator"), "from": f.get("start"), "to": f.get("end")}
    rows = operations.run(ledger, operator() or "", "audit", {
        "refused": True, "limit": limit, **{k: v for k, v in params.items() if v}})
    labels = {**action_labels(), **refused_labels()}
    return [{"time": r["time"], "operation": labels.get(r["operation"], r["operation"]),
             "operator": r["operator_name"], "member": r["member"], "card": r["card"],
             "code": tr(*REFUSAL_LABELS.get(r["code"], (r["code"], r["code"]))),
             "reason": r["reason"], "key": str(i)} for i, r in enumerate(rows)]


def audit_page() -> None:
    ledger = shop().ledger
    start, end = default_period(ledger, 7)
    state = {"start": start, "end": end, "operator": "", "branch": "", "kind": ""}
    labels = action_labels()
    with ui.row().classes("items-center gap-4"):
        start_in = date_field(tr("从", "From"), start)
        end_in = date_field(tr("到", "To"), end)
        everyone = {"": tr("全部", "all")}
        who = ui.select({**everyone, **{o["id"]: o["name"] for o in views.operators(ledger)},
                         ledger.owner: shop().operator_name(ledger.owner)},
                        value="", label=tr("操作员", "Operator")).props("dense outlined") \
            .classes("w-44").mark("audit-operator")
        where = ui.select({**everyone, **{n: shop().branch_name(n) for n in branches(ledger)}},
                          value="", label=tr("分店", "Branch")).props("dense outlined") \
            .classes("w-44").mark("audit-branch")
        kind = ui.select({**everyone, **{a: labels.get(a, a) for a in audit.ACTIONS}},
                         value="", label=tr("操作", "Action")).props("dense outlined") \
            .classes("w-44").mark("audit-kind")
        export_button(tr("导出 CSV", "Export CSV"), lambda: (
            csv_bytes([tr(zh, en) for _k, zh, en in AUDIT_HEADERS], audit_rows(ledger, state)),
            f"audit-{state['start'] or 'all'}-{state['end'] or ledger.today()}.csv"),
            "export-audit", permission="audit.view")

    @ui.refreshable
    @guarded("audit.view")
    def body() -> None:
        try:
            require("audit.view")
            rows = audit_rows(ledger, state, SCREEN_ROWS + 1)  # one more: are there more?
        except LedgerError as e:
            ui.label(shop().refusal(e)).classes("text-negative")
            return
        shown = rows[:SCREEN_ROWS]
        if len(rows) > len(shown):
            ui.label(tr("显示最近 {n} 条；CSV 包含全部（最多 {m} 条）",
                        "Showing the latest {n}; the CSV has them all (up to {m})",
                        n=len(shown), m=audit.TRAIL_LIMIT)).classes("text-sm text-grey-7")
        keys = [k for k, _zh, _en in AUDIT_HEADERS]
        ui.table(columns=[{"name": k, "label": tr(zh, en), "field": k,
                           "align": "right" if k == "amount" else "left"}
                          for k, zh, en in AUDIT_HEADERS if k not in ("ref", "id")],
                 rows=[dict(zip(keys, r, strict=True)) for r in shown], row_key="id",
                 pagination=50).props("flat bordered dense").classes("w-full").mark("audit")
        # What was tried here and refused (no permission, a wrong PIN or password,
        # locked): kept at this branch only, never in the books above.
        refused = refused_rows(ledger, state, SCREEN_ROWS)
        ui.label(tr("被拒绝的操作（本店）", "Refused attempts (this branch)")) \
            .classes("text-subtitle1 q-mt-md")
        if not refused:
            ui.label(tr("没有被拒绝的操作", "No refused attempts")) \
                .classes("text-sm text-grey-7").mark("audit-refused-none")
            return
        ui.table(columns=[{"name": k, "label": tr(zh, en), "field": k, "align": "left"}
                          for k, zh, en in REFUSED_HEADERS],
                 rows=refused, row_key="key", pagination=50) \
            .props("flat bordered dense").classes("w-full").mark("audit-refused")

    def choose(key: str) -> Callable[[events.ValueChangeEventArguments[Any]], None]:
        def on_change(e: events.ValueChangeEventArguments[Any]) -> None:
            state[key] = str(e.value or "")
            body.refresh()

        return on_change

    for field, key in ((who, "operator"), (where, "branch"), (kind, "kind")):
        field.on_value_change(choose(key))
    follow_period(state, start_in, end_in, body)


# --- registration -----------------------------------------------------------------------


def register() -> None:
    pages: list[tuple[str, str, str, str | None, str, Callable[[], None]]] = [
        ("/office", "营业日报", "Daily summary", "reports.view", "today", daily_page),
        ("/office/ranking", "排行榜", "Rankings", "reports.view", "leaderboard", ranking_page),
        ("/office/goods", "商品报表", "Goods reports", "reports.view", "inventory_2", goods_page),
        ("/office/topups", "充值收款", "Top-up receipts", "reports.view", "savings", topups_page),
        ("/office/settlement", "分店结算", "Settlement", "reports.view", "handshake",
         settlement_page),
        ("/office/movements", "余额变动", "Movements", "reports.view", "swap_vert",
         movements_page),
        ("/office/members", "会员资料", "Member data", "reports.view", "badge", members_page),
        ("/office/audit", "操作日志", "Audit trail", "audit.view", "policy", audit_page),
        ("/office/duplicates", "重复会员", "Duplicate members", "member.merge", "merge",
         duplicates_page),
        ("/office/sync", "同步与备份", "Sync and backup", None, "sync", sync_page),
    ]
    for path, zh, en, permission, icon, build in pages:
        layout.nav(path, zh, en, permission, icon)
        _page(path, zh, en, permission, build)
    layout.set_banner_source(cut_off_banner)


def _page(path: str, zh: str, en: str, permission: str | None, build: Callable[[], None]) -> None:
    @ui.page(path)
    def page() -> None:
        with layout.frame(tr(zh, en), permission=permission):
            build()
