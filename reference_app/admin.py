"""The owner's settings: operators and roles, and the replicated rules.

Every change is a library call through `Shop.run` (the library checks
`operators.manage` / `rules.manage` / `adjust` itself; the pages only hide what the
operator may not do). A rule change writes a new version of the whole rule kind, in
force from the day chosen (today by default), and replicates to every branch.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from decimal import Decimal, InvalidOperation
from functools import partial
from typing import Any

from nicegui import ui

from crdtledger import operations, views
from crdtledger.errors import (
    ApprovalRequired,
    InvalidAmount,
    InvalidInput,
    LedgerError,
    PermissionDenied,
)
from crdtledger.hlc import check_node_id
from crdtledger.inputs import seen_as
from crdtledger.ledger import Ledger
from crdtledger.model import BUILTIN_ROLES, PERMISSIONS
from crdtledger.money import half_width
from reference_app import layout
from reference_app.i18n import money, parse_money, tr
from reference_app.shop import ROLE_LABELS, operator, shop

PERMISSION_LABELS: dict[str, tuple[str, str]] = {
    "member.add": ("新建会员", "add members"),
    "member.edit": ("修改会员资料", "edit members"),
    "member.delete": ("删除会员资料", "erase members"),
    "member.upgrade": ("调整会员等级", "change member levels"),
    "member.merge": ("合并重复会员", "merge duplicate members"),
    "card.issue": ("发卡", "issue cards"),
    "card.lost": ("挂失/解挂", "report cards lost"),
    "card.replace": ("补卡", "replace cards"),
    "card.return": ("退卡", "take cards back"),
    "topup": ("充值", "top up"),
    "debit": ("消费扣费", "charge services"),
    "refund": ("退款", "refund"),
    "adjust": ("调账", "correct balances"),
    "points.redeem": ("积分兑换", "redeem points"),
    "package.sell": ("售套餐", "sell packages"),
    "rights.transfer": ("转移余额权利", "move balance rights"),
    "reports.view": ("查看报表", "view reports"),
    "rules.manage": ("管理价目与规则", "manage prices and rules"),
    "operators.manage": ("管理操作员", "manage operators"),
    "sync": ("同步文件", "sync files"),
    "backup": ("备份与导出", "backups and exports"),
    "approve": ("审批大额", "approve large amounts"),
    "audit.view": ("查看操作日志", "view the audit trail"),
}
def refuse(e: LedgerError) -> None:
    ui.notify(shop().refusal(e), type="negative", multi_line=True)


def current_operator() -> str:
    op = operator()
    if op is None:
        raise PermissionDenied("nobody is logged in")
    return op


async def write(action: Callable[[str], Any], name: str, done: str,
                refused: Callable[[LedgerError], None] | None = None) -> bool:
    """Run one library write as the logged-in operator; a refusal becomes a sentence
    (and is handed to `refused`, for a page that changes with it)."""
    try:
        op = current_operator()
        await shop().run(lambda: action(op), name)
    except LedgerError as e:
        refuse(e)
        if refused is not None:
            refused(e)
        return False
    ui.notify(done, type="positive")
    return True


def operation(name: str, /, **params: Any) -> Callable[[str], Any]:
    """An operation of the table (crdtledger.operations) as `write` runs it: the same
    checks and permission as the HTTP API and the command line. A parameter given
    as None is left out."""
    given = {k: v for k, v in params.items() if v is not None}
    return lambda op: operations.run(shop().ledger, op, name, given)


def role_label(role: str) -> str:
    zh_en = ROLE_LABELS.get(role)
    return tr(*zh_en) if zh_en else role


def roles(ledger: Ledger) -> dict[str, frozenset[str]]:
    """Every role with its permissions: a defined role of a built-in name replaces it,
    as Ledger.permissions reads them."""
    return {**BUILTIN_ROLES, **views.defined_roles(ledger)}


def operators(ledger: Ledger) -> list[dict[str, Any]]:
    """Every operator by name with the roles ticked; never the hashes."""
    return [dict(o) for o in views.operators(ledger)]


def yuan_text(fen: int) -> str:
    return money(fen).lstrip("¥")


def parse_price(text: str) -> int:
    """A price may be zero (a free service); otherwise as any amount."""
    return 0 if text.strip().lstrip("¥") in ("0", "0.0", "0.00") else parse_money(text)


def parse_rate(text: str, what: str, lo: Decimal, hi: Decimal) -> str:
    try:
        value = Decimal(text.strip())
    except InvalidOperation:
        raise InvalidInput(f"{what} must be a number like 0.95, not {text!r}") from None
    if not value.is_finite() or not lo <= value <= hi:
        raise InvalidInput(f"{what} must be between {lo} and {hi}")
    return str(value)


def parse_int(text: str, what: str) -> int:
    t = text.strip()
    if not (t.isascii() and t.isdigit()):  # "²" and "١٢" are digits to str.isdigit
        raise InvalidInput(f"{what} must be a whole number, not {text!r}")
    return int(t)


# --- operators and roles ------------------------------------------------------------


def operators_page() -> None:
    ledger = shop().ledger

    @ui.refreshable
    def listing() -> None:
        ops = operators(ledger)
        me = operator()
        all_roles = sorted(roles(ledger))
        with ui.card().classes("w-full"):
            ui.label(tr("操作员", "Operators")).classes("text-lg font-medium")
            if not ops:
                ui.label(tr("还没有操作员。", "No operators yet.")).classes("text-grey-7")
            with ui.grid(columns="auto auto auto auto auto").classes("items-center gap-x-6"):
                for head in (tr("姓名", "Name"), tr("角色", "Role"), tr("状态", "State"), "", ""):
                    ui.label(head).classes("text-sm text-grey-7")
                for o in ops:
                    ui.label(o["name"]).classes("font-medium")
                    ui.select({r: role_label(r) for r in all_roles},
                              value=o["roles"][0] if o["roles"] else None,
                              on_change=lambda e, o=o: change_role(o, e.value)
                              ).props("dense outlined").classes("w-36")
                    ui.badge(tr("在用", "active") if o["active"] else tr("已停用", "disabled"),
                             color="positive" if o["active"] else "grey")
                    layout.once(ui.button(tr("重设密码", "Reset password"), icon="key"),
                                partial(reset_password, o)).props("flat dense no-caps")
                    if o["id"] == me:
                        ui.label(tr("（您本人）", "(you)")).classes("text-grey-7")
                    else:
                        layout.once(ui.button(tr("停用", "Disable") if o["active"]
                                              else tr("启用", "Enable")),
                                    partial(set_active, o, not o["active"])
                                    ).props("flat dense no-caps").classes(
                            "text-negative" if o["active"] else "")

    async def change_role(o: dict[str, Any], role: str | None) -> None:
        if not role or o["roles"] == [role]:
            return
        if o["id"] == operator() and "operators.manage" not in roles(ledger).get(role, set()):
            ui.notify(tr("不能把自己改成无法管理操作员的角色。",
                         "You cannot give yourself a role that cannot manage operators."),
                      type="warning")
            listing.refresh()
            return
        change = {r: r == role for r in {*o["roles"], role}}
        await write(operation("operator.set", id=o["id"], roles=change), "operator role",
                    tr("{name} 现在是{role}", "{name} is now {role}", name=o["name"],
                       role=role_label(role)))
        listing.refresh()

    async def set_active(o: dict[str, Any], active: bool) -> None:
        await write(operation("operator.set", id=o["id"], active=active), "operator state",
                    tr("已启用 {name}", "{name} enabled", name=o["name"]) if active
                    else tr("已停用 {name}", "{name} disabled", name=o["name"]))
        listing.refresh()

    async def reset_password(o: dict[str, Any]) -> None:
        with ui.dialog() as dialog, ui.card().classes("w-96"):
            ui.label(tr("为 {name} 设置新密码", "New password for {name}", name=o["name"])
                     ).classes("text-lg")
            pw = ui.input(tr("新密码（至少 6 位）", "New password (6+ characters)"),
                          password=True, password_toggle_button=True).classes("w-full")
            with ui.row():
                ui.button(tr("保存", "Save"), on_click=lambda: dialog.submit(pw.value))
                ui.button(tr("取消", "Cancel"), on_click=lambda: dialog.submit(None)).props("flat")
        new = await dialog
        if new is None:
            return
        await write(operation("operator.set", id=o["id"], password=str(new)),
                    "operator password", tr("密码已更新", "Password changed"))

    listing()

    with ui.card().classes("w-full max-w-2xl"):
        ui.label(tr("新增操作员", "Add an operator")).classes("text-lg font-medium")
        with ui.row().classes("items-end gap-4"):
            name = ui.input(tr("姓名/工号", "Name")).props("dense outlined").mark("op-name")
            password = ui.input(tr("密码（至少 6 位）", "Password (6+ characters)"),
                                password=True, password_toggle_button=True
                                ).props("dense outlined").mark("op-password")
            role = ui.select({r: role_label(r) for r in sorted(roles(ledger))}, value="cashier",
                             label=tr("角色", "Role")).props("dense outlined").classes("w-36")

            async def add() -> None:
                if await write(operation(
                        "operator.add", name=name.value or "", password=password.value or "",
                        roles=[role.value or "cashier"]),
                        "add operator", tr("已添加 {name}", "{name} added", name=name.value)):
                    name.set_value("")
                    password.set_value("")
                    listing.refresh()

            layout.once(ui.button(tr("添加", "Add"), icon="person_add"), add).mark("op-add")


def roles_page() -> None:
    ledger = shop().ledger
    # Grouped as a shop thinks of them (members, cards, money, back office), not A-Z.
    perms = [p for p in PERMISSION_LABELS if p in PERMISSIONS]
    perms += sorted(PERMISSIONS - set(perms))

    @ui.refreshable
    def grid() -> None:
        defined = roles(ledger)
        custom = set(views.defined_roles(ledger))
        builtin = list(ROLE_LABELS)  # owner, manager, cashier
        names = sorted(defined, key=lambda r: (builtin.index(r) if r in builtin else 9, r))
        with ui.card().classes("w-full overflow-x-auto"):
            ui.label(tr("角色与权限", "Roles and permissions")).classes("text-lg font-medium")
            ui.label(tr("勾选后点「保存」。内置角色也可以修改（修改后以新设置为准）。",
                        "Tick and save. Built-in roles may be changed too (the change then "
                        "holds).")).classes("text-sm text-grey-7")
            columns = f"12rem repeat({len(names)}, 7rem)"
            with ui.grid(columns=columns).classes("gap-y-0 items-center"):
                ui.label(tr("权限", "Permission")).classes("text-sm text-grey-7")
                for r in names:
                    ui.label(role_label(r) + (" *" if r in custom else "")
                             ).classes("font-medium text-center")
                boxes: dict[tuple[str, str], ui.checkbox] = {}
                for p in perms:
                    ui.label(tr(*PERMISSION_LABELS.get(p, (p, p)))).classes("text-sm")
                    for r in names:
                        boxes[(r, p)] = ui.checkbox(value=p in defined[r]).classes("mx-auto")
                ui.label("")

                async def save_ticked(r: str) -> None:
                    await save(r, {p for p in perms if boxes[(r, p)].value})

                for r in names:
                    layout.once(ui.button(tr("保存", "Save")), partial(save_ticked, r)
                                ).props("dense flat no-caps")

    async def save(role: str, chosen: set[str]) -> None:
        me = operator()
        if me is not None and role in {r for o in operators(ledger) if o["id"] == me
                                       for r in o["roles"]} and "operators.manage" not in chosen:
            ui.notify(tr("不能去掉自己角色的「管理操作员」权限。",
                         "You cannot remove “manage operators” from your own role."),
                      type="warning")
            return
        await write(operation("role.define", name=role, permissions=sorted(chosen)),
                    "define role",
                    tr("角色 {role} 已保存", "Role {role} saved", role=role_label(role)))
        grid.refresh()

    grid()
    with ui.card().classes("w-full max-w-xl"):
        ui.label(tr("新建角色", "New role")).classes("text-lg font-medium")
        with ui.row().classes("items-end gap-4"):
            name = ui.input(tr("角色名称", "Role name")).props("dense outlined").mark(
                "role-name")

            async def add() -> None:
                # The library knows the built-in roles by their codes; this page shows
                # them as 店主, 店长, 收银员: a role named so was a second 店长 in the list.
                typed = seen_as(str(name.value or "").strip())
                for role, labels in ROLE_LABELS.items():
                    if typed != role and typed in {seen_as(x) for x in labels}:
                        refuse(InvalidInput(f"role name {name.value} reads as {role}'s, a "
                                            "role that exists already: choose another, "
                                            f"or redefine {role}"))
                        return
                if await write(operation("role.define", name=name.value or ""),
                               "define role", tr("已新建角色，请勾选权限后保存",
                                                 "Role created: tick its permissions and save")):
                    name.set_value("")
                    grid.refresh()

            layout.once(ui.button(tr("新建", "Create"), icon="add"), add).mark("role-add")


# --- rules ---------------------------------------------------------------------------


def effective_field() -> ui.input:
    ledger = shop().ledger
    field = ui.input(tr("生效日期", "In force from"), value=ledger.today()
                     ).props("dense outlined").classes("w-44")
    with field, ui.menu().props("no-parent-event") as menu:
        ui.date(mask="YYYY-MM-DD").bind_value(field)
    with field.add_slot("append"):
        ui.icon("event").on("click", menu.open).classes("cursor-pointer")
    return field


async def save_rules(bodies: Callable[[], dict[str, Any]], effective: ui.input,
                     also: Callable[[], str] = lambda: "") -> bool:
    """Write each rule kind whose body changed, all checked before any is written;
    `also` adds to the sentence saying so what the bodies took away."""
    ledger = shop().ledger
    try:
        wanted = bodies()
        day = str(effective.value or "").strip() or None
        changed = {k: b for k, b in wanted.items() if b != ledger.rule(k, day)}
    except LedgerError as e:
        refuse(e)
        return False
    if not changed:
        ui.notify(tr("没有改动", "Nothing changed"))
        return False

    def apply(op: str) -> None:
        for kind, body in changed.items():
            operations.run(ledger, op, "rule.set", {"kind": kind, "body": body} | (
                {"effective_from": day} if day else {}))

    return await write(apply, "set rules", tr("已保存，所有分店同步生效",
                                              "Saved; every branch gets it") + also())


class RowsEditor:
    """An editable list of rows (inputs per column), with add and remove."""

    def __init__(self, columns: list[tuple[str, str, str]], rows: list[dict[str, str]]) -> None:
        self.columns = columns  # key, label, tailwind width
        self.rows = [dict(r) for r in rows]
        self.container = ui.column().classes("gap-1")
        self.render()

    def render(self) -> None:
        self.container.clear()
        with self.container:
            with ui.row().classes("gap-2 no-wrap"):
                for _key, label, width in self.columns:
                    ui.label(label).classes(f"{width} text-sm text-grey-7")
            for i, row in enumerate(self.rows):
                with ui.row().classes("gap-2 no-wrap items-center"):
                    for key, _label, width in self.columns:
                        ui.input(value=row.get(key, "")).bind_value(row, key).props(
                            "dense outlined").classes(width).mark(f"row-{i}-{key}")
                    ui.button(icon="delete", on_click=lambda r=row: self.remove(r)
                              ).props("flat dense round color=grey-7").mark(f"row-{i}-delete")
            ui.button(tr("添加一行", "Add a row"), icon="add",
                      on_click=self.add).props("flat dense no-caps")

    def add(self) -> None:
        self.rows.append({k: "" for k, _l, _w in self.columns})
        self.render()

    def texts(self) -> list[dict[str, str]]:
        """The rows as text: an input set to what no keyboard types (None, a number, a
        list, by a page's socket) reads as its text, not as a traceback in a handler."""
        return [{k: v if isinstance(v, str) else "" if v is None else str(v)
                 for k, v in r.items()} for r in self.rows]

    def remove(self, row: dict[str, str]) -> None:
        self.rows.remove(row)
        self.render()


def services_page() -> None:
    ledger = shop().ledger
    services = ledger.rule("services")
    with ui.card().classes("w-full max-w-3xl"):
        ui.label(tr("价目表", "Price list")).classes("text-lg font-medium")
        ui.label(tr("项目代码用于记账，改名或改价不影响历史记录；会员等级折扣在收银时自动计算。",
                    "The code is what the books keep: renaming or repricing leaves history as "
                    "it was; level discounts apply at the counter.")).classes("text-sm text-grey-7")
        editor = RowsEditor(
            [("code", tr("代码", "Code"), "w-32"), ("name", tr("名称", "Name"), "w-64"),
             ("price", tr("价格（元）", "Price (yuan)"), "w-32")],
            [{"code": c, "name": str(s.get("name", "")), "price": yuan_text(int(s["price"]))}
             for c, s in services.items()])
        effective = effective_field()

        def bodies() -> dict[str, Any]:
            out: dict[str, Any] = {}
            for r in editor.texts():
                code = r["code"].strip().upper()
                if not code and not r["name"].strip():
                    continue
                if code in out:
                    raise InvalidInput(f"service code {code} appears twice")
                svc = dict(services.get(code, {}))  # keep fields this page does not edit
                svc.update({"name": r["name"].strip(), "price": parse_price(r["price"])})
                out[code] = svc
            if not out:
                raise InvalidInput("the price list needs at least one service")
            return {"services": out}

        layout.once(ui.button(tr("保存价目表", "Save the price list"), icon="save"),
                    lambda: save_rules(bodies, effective)).mark("save-rules")


def levels_page() -> None:
    ledger = shop().ledger
    levels = sorted(ledger.rule("levels"), key=lambda lv: int(lv["threshold"]))
    basis = ledger.rule("level_basis")["basis"]
    earn, approval = ledger.rule("earn"), ledger.rule("approval")
    conversion = ledger.rule("conversion")
    with ui.card().classes("w-full max-w-3xl"):
        ui.label(tr("会员等级", "Member levels")).classes("text-lg font-medium")
        ui.label(tr("累计金额达到门槛即升到该等级；折扣 0.9 即九折；积分倍数乘在每元积分上。",
                    "A member reaches a level when the cumulative amount passes its threshold; "
                    "discount 0.9 means 10% off; the multiplier scales the points per yuan.")
                 ).classes("text-sm text-grey-7")
        editor = RowsEditor(
            [("name", tr("等级名称", "Level"), "w-40"),
             ("threshold", tr("门槛（元）", "Threshold (yuan)"), "w-32"),
             ("discount", tr("折扣", "Discount"), "w-24"),
             ("points_multiplier", tr("积分倍数", "Points ×"), "w-24")],
            [{"name": lv["name"], "threshold": yuan_text(int(lv["threshold"])),
              "discount": str(lv["discount"]), "points_multiplier": str(lv["points_multiplier"])}
             for lv in levels])
        basis_in = ui.select({"topped": tr("按累计充值", "cumulative top-ups"),
                              "spent": tr("按累计消费", "cumulative spending")}, value=basis,
                             label=tr("升级依据", "Levels follow")).props("dense outlined"
                                                                         ).classes("w-56")
    with ui.card().classes("w-full max-w-3xl"):
        ui.label(tr("积分与审批", "Points and approvals")).classes("text-lg font-medium")
        with ui.row().classes("gap-4"):
            per_yuan = ui.input(tr("每消费 1 元得积分", "Points per yuan spent"),
                                value=str(earn["points_per_yuan"])).props("dense outlined")
            expire = ui.input(tr("积分有效天数（0 = 不过期）", "Points last (days, 0 = ever)"),
                              value=str(earn["expire_days"])).props("dense outlined")
            convert = ui.input(tr("多少积分换 1 元", "Points for 1 yuan of value"),
                               value=str(conversion["points_per_yuan"])).props("dense outlined")
        with ui.row().classes("gap-4"):
            topup_limit = ui.input(tr("充值超过此金额需审批（元）",
                                      "Top-ups above need approval (yuan)"),
                                   value=yuan_text(int(approval["topup_limit"]))
                                   ).props("dense outlined").classes("w-72").mark("topup-limit")
            correction_limit = ui.input(
                tr("调账超过此金额需审批（元）", "Corrections above need approval (yuan)"),
                value=yuan_text(int(approval["correction_limit"]))).props(
                "dense outlined").classes("w-72")
        effective = effective_field()

        def bodies() -> dict[str, Any]:
            lv_rows: list[dict[str, Any]] = []
            for r in editor.texts():
                if not r["name"].strip():
                    continue
                lv_rows.append({
                    "name": r["name"].strip(),
                    "threshold": parse_price(r["threshold"]),
                    "discount": parse_rate(r["discount"], "discount", Decimal("0.01"),
                                           Decimal(1)),
                    "points_multiplier": parse_rate(r["points_multiplier"], "points multiplier",
                                                    Decimal(0), Decimal(100)),
                })
            if not lv_rows:
                raise InvalidInput("at least one level is needed")
            if min(int(lv["threshold"]) for lv in lv_rows) != 0:
                raise InvalidInput("the first level must start at 0 (every member has a level)")
            conv = parse_int(convert.value or "", "points for one yuan")
            if conv <= 0:
                raise InvalidAmount("points for one yuan must be above zero")
            return {
                "levels": lv_rows,
                "level_basis": {"basis": basis_in.value},
                "earn": {"points_per_yuan": parse_rate(per_yuan.value or "", "points per yuan",
                                                       Decimal(0), Decimal(1000)),
                         "expire_days": parse_int(expire.value or "", "expiry days")},
                "conversion": {"points_per_yuan": str(conv)},
                # What this page does not show (a stock-take's limit) is kept as it is:
                # saving the page reset one set by the command line to its default.
                "approval": {**approval, "topup_limit": parse_money(topup_limit.value or ""),
                             "correction_limit": parse_money(correction_limit.value or "")},
            }

        layout.once(ui.button(tr("保存", "Save"), icon="save"),
                    lambda: save_rules(bodies, effective)).mark("save-rules")


def promotions_page() -> None:
    ledger = shop().ledger
    promos = ledger.rule("promotions")
    with ui.card().classes("w-full max-w-3xl"):
        ui.label(tr("充值促销", "Top-up promotions")).classes("text-lg font-medium")
        ui.label(tr("充值金额达到「满」即送「赠送」金额（记入赠送余额）；同时满足几条时，"
                    "只取赠送最多的一条。",
                    "A top-up of at least “From” earns the “Bonus” (as bonus value); when "
                    "several apply, only the largest bonus is given.")
                 ).classes("text-sm text-grey-7")
        editor = RowsEditor(
            [("name", tr("名称", "Name"), "w-56"), ("min", tr("满（元）", "From (yuan)"), "w-32"),
             ("bonus", tr("赠送（元）", "Bonus (yuan)"), "w-32")],
            [{"name": str(p.get("name", "")), "min": yuan_text(int(p["min"])),
              "bonus": yuan_text(int(p["bonus"]))} for p in promos])
        effective = effective_field()

        def bodies() -> dict[str, Any]:
            rows = [r for r in editor.texts() if any(v.strip() for v in r.values())]
            body = [{"name": r["name"].strip(), "min": parse_money(r["min"]),
                     "bonus": parse_money(r["bonus"])} for r in rows]
            return {"promotions": sorted(body, key=lambda p: int(p["min"]))}

        layout.once(ui.button(tr("保存促销", "Save promotions"), icon="save"),
                    lambda: save_rules(bodies, effective)).mark("save-rules")


def branches_page() -> None:
    ledger = shop().ledger
    names = dict(ledger.rule("branches"))
    known = {ledger.node, *names,
             *views.peers_seen(ledger)}
    with ui.card().classes("w-full max-w-2xl"):
        ui.label(tr("分店名称", "Branch names")).classes("text-lg font-medium")
        ui.label(tr("分店号是证书里的节点号，不能改；名称显示在收银台、报表和结算表上。",
                    "The node id is the one in the branch's certificate; the name is what "
                    "the counter, the reports and the settlement show.")
                 ).classes("text-sm text-grey-7")
        editor = RowsEditor(
            [("node", tr("分店号", "Node id"), "w-32"), ("name", tr("名称", "Name"), "w-64")],
            [{"node": n, "name": names.get(n, "")} for n in sorted(known)])
        effective = effective_field()
        removed: list[str] = []

        def bodies() -> dict[str, Any]:
            out: dict[str, str] = {}
            for r in editor.texts():
                node, name = r["node"].strip().upper(), r["name"].strip()
                if not node and not name:
                    continue
                # A row without one of the two was dropped: a name cleared by a stray
                # key took the branch out of the rule, "saved" and nothing more. Taking
                # a name away is the row's delete button, said when saved.
                if not node:
                    raise InvalidInput(f"name {name} has no node id")
                if not name and node in names:
                    raise InvalidInput(f"branch {node}'s name was cleared")
                if not name and node in known:
                    continue  # a branch seen, never named: the page offers its row
                if not name:
                    raise InvalidInput(f"branch {node} has no name")
                try:
                    check_node_id(node)
                except ValueError as e:
                    raise InvalidInput(str(e)) from None
                # A dict keeps the last: two rows of SH01 saved the second's name and
                # said nothing of the first.
                if node in out:
                    raise InvalidInput(f"branch {node} appears twice")
                out[node] = name
            removed[:] = sorted(set(names) - set(out))
            return {"branches": out}

        def also() -> str:
            return tr("；已去掉分店 {b} 的名称", "; the name of {b} is taken away",
                      b="、".join(removed)) if removed else ""

        layout.once(ui.button(tr("保存", "Save"), icon="save"),
                    lambda: save_rules(bodies, effective, also)).mark("save-rules")


def payment_methods_page() -> None:
    """How the till takes money: the counter offers these, in this order (the first is
    the default), and the daily report splits what it took by them."""
    ledger = shop().ledger
    with ui.card().classes("w-full max-w-2xl"):
        ui.label(tr("收款方式", "Payment methods")).classes("text-lg font-medium")
        ui.label(tr("充值、售套餐和现场付款的消费记下收款方式，营业日报按方式分列，便于和钱箱、"
                    "微信、支付宝对账。代码用于记账，第一项为默认。",
                    "Top-ups, packages and services paid at the till record the method; the "
                    "daily summary splits by it, to reconcile with the drawer and the payment "
                    "apps. The code is what the books keep; the first is the default.")
                 ).classes("text-sm text-grey-7")
        editor = RowsEditor(
            [("code", tr("代码", "Code"), "w-32"),
             ("name_zh", tr("中文名", "Chinese name"), "w-40"),
             ("name_en", tr("英文名", "English name"), "w-40")],
            [{k: str(m.get(k, "")) for k in ("code", "name_zh", "name_en")}
             for m in ledger.rule("payment_methods")])
        effective = effective_field()

        def bodies() -> dict[str, Any]:
            methods = [{"code": r["code"].strip().lower(), "name_zh": r["name_zh"].strip(),
                        "name_en": r["name_en"].strip()}
                       for r in editor.texts() if r["code"].strip()]
            if not methods:
                raise InvalidInput("the till needs at least one payment method")
            return {"payment_methods": methods}

        layout.once(ui.button(tr("保存收款方式", "Save the payment methods"), icon="save"),
                    lambda: save_rules(bodies, effective)).mark("save-rules")


# --- corrections ------------------------------------------------------------------------


PURSES = {"cash": ("储值", "stored value"), "bonus": ("赠送金额", "bonus value"),
          "points": ("积分", "points")}


def parse_change(purse: str, text: str) -> int:
    """A signed change: "-12.50" yuan for money purses, "-300" points."""
    t = text.strip()
    sign = -1 if t.startswith("-") else 1
    # One sign at most: every sign was stripped, so "+-5" added ¥5.00 and "--5" took it
    # away; the rest, a second sign and all, is then an amount or refused as one.
    t = t[1:].strip() if t.startswith(("+", "-")) else t
    change = sign * (parse_int(t, "points") if purse == "points" else parse_money(t))
    if not change:  # parse_int takes "0"; the library would refuse it as an amount
        raise InvalidAmount("a correction changes the balance: it is not zero")
    return change


def change_refused(purse: str, typed: str) -> str:
    """Why a typed change is refused, as the page asks for it: a signed amount (the
    counter's sentence for amounts asks for one "above zero", and told the manager a
    negative correction was wrong, which is how value is taken away)."""
    if not typed.strip().isascii():
        return tr("调整请用半角数字输入，例如 {a}。", "Type the change in half-width digits, "
                  "e.g. {a}.", a=half_width(typed.strip()))
    if purse == "points":
        return tr("积分调整要填不为零的整数，负数为扣减，例如 -300 或 50。",
                  "A change of points is a whole number other than zero, negative to take "
                  "away, e.g. -300 or 50.")
    return tr("调整金额不对：请输入不为零、最多两位小数的金额，负数为扣减，例如 -12.50 或 30。",
              "Invalid change: enter an amount other than zero with at most two decimals, "
              "negative to take away, e.g. -12.50 or 30.")


def corrections_page() -> None:
    ledger = shop().ledger
    limit = int(ledger.rule("approval")["correction_limit"])
    chosen: dict[str, Any] = {}
    with ui.card().classes("w-full max-w-2xl"):
        ui.label(tr("调账", "Balance correction")).classes("text-lg font-medium")
        ui.label(tr("正数增加、负数减少；每人每天未经审批的调账累计超过 {limit}，需要有审批权限的人"
                    "输入姓名和密码。",
                    "Positive adds, negative takes away; once an operator's corrections of the "
                    "day without an approver add up to more than {limit}, someone allowed to "
                    "approve must enter their name and password.", limit=money(limit))
                 ).classes("text-sm text-grey-7")
        with ui.row().classes("items-end gap-2"):
            query = ui.input(tr("手机、姓名或卡号", "Phone, name or card number")
                             ).props("dense outlined").mark("corr-query")
            ui.button(tr("查找", "Find"), icon="search", on_click=lambda: search()
                      ).props("dense").mark("corr-find")
        hits = ui.column()
        who = ui.label(tr("未选会员", "No member chosen")).classes("font-medium")
        with ui.row().classes("items-end gap-4"):
            purse = ui.select({k: tr(*v) for k, v in PURSES.items()}, value="cash",
                              label=tr("账户", "Purse")).props("dense outlined").classes("w-36")
            change = ui.input(tr("调整（如 -12.50）", "Change (e.g. -12.50)")
                              ).props("dense outlined").classes("w-40").mark("corr-change")
            reason = ui.input(tr("原因（必填）", "Reason (required)")).props(
                "dense outlined").classes("w-64").mark("corr-reason")
        approval = ui.row().classes("items-end gap-4")
        with approval:
            approver = ui.input(tr("审批人", "Approver")).props("dense outlined"
                                                               ).mark("corr-approver")
            approver_pw = ui.input(tr("审批人密码", "Approver's password"), password=True
                                   ).props("dense outlined").mark("corr-approver-password")
        approval.set_visibility(False)
        # The library decides (points at the conversion rate, a package's uses at their
        # worth, the operator's corrections today counted together): once it has asked
        # for an approver the fields stay, whatever the figure typed next.
        asked = [False]

        def needs_approval() -> bool:
            if asked[0]:
                return True
            try:
                amount = abs(parse_change(purse.value, change.value or ""))
            except LedgerError:
                return False
            return purse.value != "points" and amount > limit

        def refused(e: LedgerError) -> None:
            if isinstance(e, ApprovalRequired):
                asked[0] = True
                update_approval()

        def update_approval() -> None:
            approval.set_visibility(needs_approval())

        change.on_value_change(update_approval)
        purse.on_value_change(update_approval)
        layout.one_approval(approver_pw, lambda: (purse.value, change.value), change, purse)

        def search() -> None:
            hits.clear()
            try:
                found = ledger.find_members(query.value or "")
            except LedgerError as e:
                refuse(e)
                return
            with hits:
                if not found:
                    ui.label(tr("没有找到会员", "No member found")).classes("text-grey-7")
                for h in found:
                    ui.button(f"{h['name']}  {h['phone']}", on_click=lambda h=h: pick(h)
                              ).props("flat dense no-caps").mark("corr-pick")

        def pick(h: dict[str, Any]) -> None:
            if chosen.get("id") != h["id"]:
                approver_pw.set_value("")  # approved for another member
            chosen.clear()
            chosen.update(h)
            bal = ledger.balance(h["id"])
            who.set_text(tr("{name}：储值 {cash}，赠送 {bonus}，积分 {points}",
                            "{name}: stored {cash}, bonus {bonus}, points {points}",
                            name=h["name"], cash=money(bal["cash"]), bonus=money(bal["bonus"]),
                            points=bal["points"]))
            hits.clear()

        async def submit() -> None:
            if not chosen:
                ui.notify(tr("请先选会员", "Choose a member first"), type="warning")
                return
            if purse.value not in PURSES:
                # A purse the select does not offer reads None, and the operation's
                # default (stored value) was corrected instead.
                ui.notify(tr("请选择账户", "Choose a purse"), type="warning")
                return
            try:
                delta = parse_change(purse.value, change.value or "")
            except LedgerError:
                ui.notify(change_refused(purse.value, str(change.value or "")),
                          type="negative", multi_line=True)
                return
            ap = (approver.value or "", approver_pw.value or "") if needs_approval() else None
            approver_pw.set_value("")  # one approval, one attempt
            if await write(operation("correct", member=chosen["id"], purse=purse.value,
                                     change=delta, reason=reason.value or "",
                                     approver=ap and {"name": ap[0], "password": ap[1]}),
                           "correction", tr("已调账", "Corrected"), refused):
                change.set_value("")
                reason.set_value("")
                pick(dict(chosen))  # a copy: pick clears `chosen` before it fills it

        layout.once(ui.button(tr("确认调账", "Apply correction"), icon="check"), submit
                    ).mark("corr-submit")


# --- registration -------------------------------------------------------------------------


def register() -> None:
    pages: list[tuple[str, str, str, str, str, Callable[[], Awaitable[None] | None]]] = [
        ("/admin/operators", "操作员", "Operators", "operators.manage", "manage_accounts",
         operators_page),
        ("/admin/roles", "角色权限", "Roles", "operators.manage", "admin_panel_settings",
         roles_page),
        ("/admin/services", "价目表", "Price list", "rules.manage", "sell", services_page),
        ("/admin/levels", "等级与积分", "Levels and points", "rules.manage", "military_tech",
         levels_page),
        ("/admin/promotions", "充值促销", "Promotions", "rules.manage", "redeem",
         promotions_page),
        ("/admin/branches", "分店名称", "Branch names", "rules.manage", "store", branches_page),
        ("/admin/payments", "收款方式", "Payment methods", "rules.manage", "payments",
         payment_methods_page),
        ("/admin/corrections", "调账", "Corrections", "adjust", "build", corrections_page),
    ]
    for path, zh, en, permission, icon, build in pages:
        layout.nav(path, zh, en, permission, icon)
        _page(path, zh, en, permission, build)


def _page(path: str, zh: str, en: str, permission: str,
          build: Callable[[], Awaitable[None] | None]) -> None:
    @ui.page(path)
    def page() -> None:
        with layout.frame(tr(zh, en), permission=permission):
            build()
