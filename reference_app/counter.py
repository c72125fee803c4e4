"""The counter (`/`) and the login page: what the front desk works with all day.

A swipe or a search puts the member on screen: balances, level, packages, what they
like, whether today is their birthday, the card's state, the last visits. Each
action is a button and a dialog that shows what will happen (discount, points,
bonus) before the one confirming tap. Every write goes through `Shop.run`; a
refusal from the library is shown as a sentence and nothing changes. Buttons follow
the operator's permissions, but only as a courtesy: the library checks them again.

The member on screen follows the store: after records commit, here or at another
branch as sync brings them, the page reads the member again and redraws the panel
if anything it shows changed (`Counter.refresh`, called by `Shop.watchers`). A
refusal (toast and the dialog's line) stays until the cashier has changed what it
was about: a valid amount, another input, another member, the dialog closed.
"""

from __future__ import annotations

import asyncio
from collections import Counter as Tally
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, TypeVar

from nicegui import run, ui
from nicegui.elements.mixins.value_element import ValueElement

from crdtledger import audit, localtime, views
from crdtledger.auth import verify_login
from crdtledger.coupons import discount as coupon_discount
from crdtledger.errors import ApprovalRequired, InvalidAmount, LedgerError, NotFound
from crdtledger.model import ID
from crdtledger.money import apply_rate, given_away, points_for
from crdtledger.payments import refund_whole
from peer import receipts
from reference_app.i18n import mask_phone, money, parse_money, tr
from reference_app.layout import PRIMARY, follow, follow_reader, frame, once, one_approval
from reference_app.readers import ReaderEvent, WedgeParser
from reference_app.shop import Shop, TermsChanged, can, log_in, operator, shop

T = TypeVar("T")

QUICK_TOPUPS = (10000, 20000, 50000, 100000)  # fen: the amounts people usually top up
VISITS_SHOWN = 8
HISTORY_READ = 40  # entries the panel reads: the visits shown, refunds among them
TOAST_S = 10  # a refusal's toast, unless fixed or replaced sooner
AT_COUNTER = ", at the counter's login page"  # where a refused login was typed (audit)


def register() -> None:
    # `undone`: a write confirmed on a page whose session had ended (Counter.on_duty).
    @ui.page("/login")
    def login_page(undone: str = "") -> None:
        _login(bool(undone))

    @ui.page("/")
    def counter_page(undone: str = "") -> None:
        with frame(tr("收银台", "Counter")):
            Counter()
            if undone:
                _say_undone()


# The most units of one line a box takes (a package's uses, goods, services).
MOST_UNITS = 999


def _units(value: Any) -> int | None:
    """A number box's value as a whole number of at least 1, else None."""
    if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value) \
            or value < 1:
        return None
    return int(value)


def _units_upto(value: Any, most: int = MOST_UNITS) -> int | None:
    """A quantity box's whole number from 1 to `most`, else None (_units_refused)."""
    n = _units(value)
    return n if n is not None and n <= most else None


def _units_refused(most: int = MOST_UNITS) -> str:
    return tr("数量要填 1 到 {most} 的整数。", "Enter a whole number from 1 to {most}.",
              most=most)


def _pick_pay() -> str:
    return tr("请选择付款方式。", "Pick how it is paid.")


def _quantity_line(preview: ui.label, n: int | None) -> None:
    """A dialog's preview line for quantity `n` (_units_upto): the refusal confirming
    would give when there is none (1e3 priced ¥128,000.00, then confirming refused
    it), in the refusal's colour; else the caller's price, in the line's own."""
    preview.classes(replace="text-lg" + (" text-negative" if n is None else ""))
    if n is None:
        preview.set_text(_units_refused())


# --- login ----------------------------------------------------------------------


def _undone() -> str:
    return tr("刚才确认的操作没有执行：这一页的登录已经结束（在另一个标签页退出或换了操作员，"
              "或密码已重置）。请核对会员后重新操作。",
              "What you just confirmed was not done: this page's login had ended (logged "
              "out or another operator logged in in another tab, or the password was "
              "reset). Check the member and do it again.")


def _say_undone() -> None:
    """Said where a page whose session ended sent its cashier: the page went to the
    login, or to the counter of whoever logged in meanwhile, without a word, and the
    top-up just confirmed there (the money perhaps taken) was never written. The
    address loses its mark, so a reload does not say it again."""
    ui.notification(_undone(), type="warning", multi_line=True, close_button=True,
                    timeout=None)
    ui.run_javascript("history.replaceState(null, '', location.pathname)")


def _login(undone: bool = False) -> None:
    s = shop()
    ui.colors(primary=PRIMARY)
    if operator() is not None:
        ui.navigate.to("/?undone=1" if undone else "/")
        return
    with ui.card().classes("mx-auto mt-24 w-96 p-8 gap-4"):
        ui.label(s.branch_name(s.node.node_id)).classes("text-2xl font-bold")
        if undone:
            ui.label(_undone()).classes("text-orange-900 bg-orange-1 p-2 rounded") \
                .mark("login-undone")
            ui.run_javascript("history.replaceState(null, '', location.pathname)")
        ui.label(tr("请登录", "Please log in")).classes("text-gray-600")
        name = ui.input(tr("工号 / 姓名", "Operator name")).props("autofocus outlined") \
            .classes("w-full").mark("login-name")
        password = ui.input(tr("密码", "Password"), password=True) \
            .props("outlined").classes("w-full").mark("login-password")
        error = ui.label().classes("text-negative").mark("login-error")

        async def submit() -> None:
            who = name.value or ""
            request = ui.context.client.request
            address = request.client.host if request.client is not None else ""
            # The same throttle as the API's logins (crdtledger.throttle): a locked-out
            # attempt is refused before its password is looked at.
            wait = s.logins.begin(who, address)
            if wait:
                audit.note_failed_login(s.ledger, who, address, "too_many_attempts",
                                        f"too many failed logins; wait {wait} s", AT_COUNTER)
                error.set_text(tr("登录失败次数太多，请 {n} 秒后再试。",
                                  "Too many failed logins; try again in {n} s.", n=wait))
                return
            record = s.ledger.login_record(who)  # on the loop, which owns the store
            try:
                # scrypt (~30 ms) in a worker thread, so other tills and sync go on.
                op = await run.io_bound(verify_login, record, password.value or "")
                if op is not None:
                    s.ledger.still_current(who, record)
            except LedgerError as e:
                # Kept for the owner as the API's refused logins are (crdtledger.audit).
                audit.note_failed_login(s.ledger, who, address, "login_failed", str(e),
                                        AT_COUNTER)
                error.set_text(s.refusal(e))
                return
            if op is None:  # the app is stopping
                return
            s.logins.succeeded(who, address)
            log_in(op)
            ui.navigate.to("/")

        password.on("keydown.enter", submit)
        ui.button(tr("登录", "Log in"), on_click=submit).classes("w-full").mark("login")
        if not views.has_operators(s.ledger):
            ui.label(tr("还没有操作员。店主先在命令行添加一个：",
                        "No operators yet. The owner adds one at the shell first:")) \
                .classes("text-sm text-gray-600")
            ui.code(f"crdtledger operator add --data {s.node.data_dir} "
                    "--name NAME --password PASSWORD --role owner", language="sh") \
                .classes("w-full text-xs")


# --- the counter ----------------------------------------------------------------


@dataclass
class Trouble:
    """A refusal on screen: its toast, the dialog's line that repeats it, and how to
    tell that the cashier fixed it (any change of the dialog's inputs, by default)."""

    toast: ui.notification
    line: ui.label | None
    fixed: Callable[[], bool]



def _whole(text: str) -> bool:
    """ASCII digits only: str.isdigit() also takes "²" (int() then fails) and "１２"."""
    return text.isascii() and text.isdigit()


def _positive(text: str) -> bool:
    """A whole number above zero: "0" points went to the library, whose refusal
    reached the counter in English."""
    return _whole(text) and int(text) > 0


class Counter:
    """One counter page: the member on screen and the actions on them."""

    def __init__(self) -> None:
        self.shop: Shop = shop()
        self.op: str = operator() or ""
        self.member: str | None = None
        self.card_no: str | None = None  # the card swiped, once its PIN (if any) was given
        self.pin: str | None = None
        # What the panel shows of the member (PanelData), to tell whether a change in
        # the store concerns it.
        self.shown: dict[str, Any] | None = None
        self.trouble: Trouble | None = None
        self.reader_page = follow_reader(self.shop.listeners, self.on_reader_event)
        follow(self.shop.watchers, self.refresh)  # the store changed (Shop._on_commit)
        with ui.row().classes("w-full gap-4 items-start no-wrap"):
            with ui.column().classes("w-80 shrink-0 gap-3"):
                self._search_box()
            with ui.column().classes("grow gap-3 min-w-0"):
                # Whether the last receipt printed (and Reprint when it did not): apart
                # from the member panel, which every write redraws.
                self.receipt_bar = ui.row().classes("w-full items-center gap-3")
                self.receipt_bar.set_visibility(False)
                self.panel = ui.column().classes("w-full gap-3 min-w-0")
        self.dialogs = ui.element("div")
        self.draw(None)  # nobody on screen yet (frame has just checked the session)

    # --- finding the member ------------------------------------------------------

    def _search_box(self) -> None:
        with ui.card().classes("w-full gap-2"):
            ui.label(tr("刷卡，或输入手机号 / 姓名 / 卡号", "Swipe a card, or type a phone, "
                        "name or card number")).classes("text-sm text-gray-600")
            self.query = ui.input(placeholder=tr("搜索会员", "Find a member")) \
                .props("autofocus outlined clearable dense").classes("w-full").mark("search")
            self.query.on("keydown.enter", self.search)
            ui.button(tr("查找", "Search"), icon="search", on_click=self.search) \
                .classes("w-full").mark("search-go")
            self.results = ui.column().classes("w-full gap-1")
        statuses = self.shop.reader_status() or [tr("没有读卡器：请手工输入",
                                                     "No card reader: type the number")]
        self.reader_label = ui.label(" · ".join(statuses)).classes("text-xs text-gray-500")
        # The node's reader reports to one page (ReaderPages): another till's, or a
        # check-in screen's, until this one takes it.
        self.reader_here = ui.button(tr("在此收银台刷卡", "Swipe cards at this till"),
                                     icon="contactless", on_click=self.take_reader) \
            .props("flat dense size=sm").mark("reader-here")
        self.reader_here.set_visibility(not self.shop.listeners.holds(self.reader_page))
        if can("member.add"):
            ui.button(tr("新会员开卡", "New member"), icon="person_add",
                      on_click=lambda: self.new_member_dialog()) \
                .props("outline").classes("w-full").mark("new-member")
        if can("sale"):
            # 散客: goods sold to someone without a card, whoever is on screen.
            ui.button(tr("散客购物", "Walk-in sale"), icon="shopping_cart",
                      on_click=lambda: self.goods_dialog(walk_in=True)) \
                .props("outline").classes("w-full").mark("walk-in")
        if can("debit"):
            # 散客: a service paid at the till by someone without a card.
            ui.button(tr("散客消费", "Walk-in service"), icon="spa",
                      on_click=lambda: self.consume_dialog(walk_in=True)) \
                .props("outline").classes("w-full").mark("walk-in-service")

    def on_reader_event(self, event: ReaderEvent) -> None:
        """A card reader's event, on the loop, in this page's context."""
        if event.kind == "card":
            self.swipe(str(event.value))
        elif event.kind == "status":
            self.reader_label.set_text(" · ".join(self.shop.reader_status()) or event.value)
            self.reader_here.set_visibility(not self.shop.listeners.holds(self.reader_page))
        elif event.kind == "code":
            self.scanned(str(event.value))

    def take_reader(self) -> None:
        self.shop.listeners.claim(self.reader_page)
        # Every page looks again at whether it holds the reader.
        self.shop.reader_event(ReaderEvent("status", "", "claim"))
        ui.notify(tr("读卡器的刷卡现在到这个收银台", "Cards swiped on the reader now come "
                     "to this till"))

    def scanned(self, code: str) -> bool:
        """A code a scanner read (or typed into the search box): a service's code with
        a member on screen opens its consume dialog; a goods item's code or barcode
        opens its sale, to the member on screen or else to a walk-in customer.
        False: not a code we know."""
        services = self.shop.ledger.rule("services")
        key = next((c for c in services if c.upper() == code.strip().upper()), None)
        if key is None and self.member is not None and ID.match(code.strip()):
            # A coupon's id (its QR code, as printed or sent to the member's phone).
            try:
                view = self.shop.ledger.coupon_view(code.strip())
            except LedgerError:
                view = None
            if view is not None and can("debit"):
                self.consume_dialog(coupon=str(view["coupon"]))
                return True
        if key is None:
            item = self.shop.find_goods(code)
            if item is None:
                return False
            if can("sale"):
                self.goods_dialog(str(item["code"]))
            return True
        if self.member is None:
            self.say_trouble(tr("{what}：请先刷会员卡或查找会员。",
                                "{what}: swipe a member card or find the member first.",
                                what=self.shop.service_name(key)))
            return True
        if can("debit"):
            self.consume_dialog(service=key)
        return True

    def on_duty(self, acting: bool = False) -> bool:
        """Whether this page's operator is still the one logged in in this browser. A tab
        left open after a logout in another tab, a password reset or a deactivation
        neither shows members nor writes as its operator: it goes to the login, which
        says that what was being confirmed (`acting`) was not done."""
        if self.op and operator() == self.op:
            return True
        ui.navigate.to("/login?undone=1" if acting else "/login")
        return False

    def swipe(self, card_no: str) -> None:
        """A card presented: show its member, asking the PIN first if the card has one."""
        if not self.on_duty():
            return
        ledger = self.shop.ledger
        try:
            card = ledger.card(card_no)
        except LedgerError as e:
            if can("member.add") and not self.dialog_open():
                self.new_member_dialog(card_no=card_no.strip().upper())
            self.refused(e)  # after the dialog: a new dialog clears what was said before
            return
        if card["has_pin"] and card["status"] == "active":
            self.pin_dialog(str(card["card_no"]))
            return
        self.use_card(str(card["card_no"]), None)

    def use_card(self, card_no: str, pin: str | None, error: ui.label | None = None) -> bool:
        try:
            card = self.shop.ledger.use_card(card_no, pin)
        except LedgerError as e:
            if pin is not None and e.code in ("wrong_pin", "too_many_attempts"):
                # A guess, kept as the operations' wrong PINs are (the PIN dialog is no
                # operation of the table): the owner reads who tried which card.
                audit.note_refusal(self.shop.ledger, operator=self.op, operation="card.use",
                                   code=e.code, reason=str(e), card=card_no)
            try:  # a lost card still shows its member: the cashier must see who it is
                found = self.shop.ledger.card(card_no)
            except LedgerError:
                found = None
            if found is not None and found["status"] == "lost":
                self.show(str(found["member"]), card_no=card_no)
            self.refused(e, error)  # after show: another member clears what was said
            return False
        self.show(str(card["member"]), card_no=card_no, pin=pin)
        return True

    def search(self) -> None:
        q = str(self.query.value or "").strip()
        self.results.clear()
        if not q or not self.on_duty():
            return
        # A keyboard-wedge reader or scanner types into this box: a card it read
        # (magnetic stripe, member QR code) is a swipe; so is a known card number.
        event = WedgeParser().parse(q)
        for number in ([event.value] if event is not None and event.kind == "card" else []) + [q]:
            try:
                self.shop.ledger.card(number)
            except LedgerError:
                continue
            self.query.set_value("")
            self.swipe(number)
            return
        if self.scanned(q):  # a service's code (a scanner types into this box too)
            self.query.set_value("")
            return
        try:
            found = self.shop.ledger.find_members(q, limit=12)
        except LedgerError as e:
            self.refused(e)
            return
        if len(found) == 1:
            self.show(str(found[0]["id"]))
            return
        with self.results:
            if not found:
                ui.label(tr("没有找到会员", "No member found")).classes("text-gray-600")
            for m in found:
                home = self.shop.branch_name(str(m["home"]))
                with ui.item(on_click=lambda mid=m["id"]: self.show(str(mid))) \
                        .classes("w-full rounded hover:bg-teal-50").mark("result"), \
                        ui.item_section():
                    ui.item_label(str(m["name"])).classes("font-medium")
                    ui.item_label(f"{m['phone']} · {home}").props("caption")

    # --- the member on screen ----------------------------------------------------

    def show(self, member: str | None = None, *, card_no: str | None = None,
             pin: str | None = None) -> None:
        if not self.on_duty():
            return
        if member is not None:  # a merged member's card shows the one it was merged into
            member = self.shop.ledger.survivor_of(member)
        if member is not None and member != self.member:
            self.card_no, self.pin = None, None
            self.clear_trouble()  # what was said was about someone else
        if member is not None:
            self.member = member
        if card_no is not None:
            self.card_no, self.pin = card_no, pin
        self.results.clear()
        data = None
        if self.member is not None:
            try:
                data = self.read(self.member)
            except LedgerError as e:
                self.refused(e)
                return
        self.draw(data)

    def read(self, member: str) -> dict[str, Any]:
        """PanelData: everything the member panel shows of `member`, read once."""
        ledger = self.shop.ledger
        return {"profile": ledger.member(member), "balance": ledger.balance(member),
                "packages": [p for p in views.packages(ledger, member) if p["remaining"] > 0],
                "coupons": [c for c in ledger.coupons(member) if c["status"] == "available"],
                "history": ledger.history(member, limit=HISTORY_READ)}

    def draw(self, data: dict[str, Any] | None) -> None:
        self.shown = data
        self.panel.clear()
        with self.panel:
            if self.member is None or data is None:
                with ui.card().classes("w-full items-center p-12 bg-grey-1"):
                    ui.icon("contactless", size="4rem", color="teal-7")
                    ui.label(tr("请刷会员卡或查找会员", "Swipe a member card or search")) \
                        .classes("text-xl text-gray-600")
                return
            MemberPanel(self, self.member, data)

    def refresh(self) -> None:
        """The store changed (a sale here, or records from another branch): redraw the
        member if anything the panel shows of them changed, else leave the page be."""
        if self.member is None or not self.on_duty():
            return
        try:
            member = self.shop.ledger.survivor_of(self.member)  # merged meanwhile
            data = self.read(member)
        except LedgerError:
            return  # it says so at the next action; a background look says nothing
        if member == self.member and data == self.shown:
            return
        self.member = member
        self.draw(data)

    # --- refusals, until fixed ----------------------------------------------------

    def refused(self, e: LedgerError, error: ui.label | None = None,
                fixed: Callable[[], bool] | None = None) -> None:
        """A refusal as a toast (and on the dialog's line `error`): it goes once the
        cashier changed what it was about (`fixed`, checked at every change of the
        dialog's inputs; by default any change), or the dialog or the member changed."""
        self.say_trouble(self.shop.refusal(e), error, fixed)

    def say_trouble(self, sentence: str, error: ui.label | None = None,
                    fixed: Callable[[], bool] | None = None) -> None:
        self.clear_trouble()
        if error is not None:
            error.set_text(sentence)
        toast = ui.notification(sentence, type="negative", multi_line=True,
                                close_button=True, timeout=TOAST_S)
        self.trouble = Trouble(toast, error, fixed or (lambda: True))

    def clear_trouble(self) -> None:
        t, self.trouble = self.trouble, None
        if t is None:
            return
        if t.line is not None:
            t.line.set_text("")
        toast = t.toast
        if toast.is_deleted:
            return
        toast.dismiss()
        # The browser says when the toast is gone and NiceGUI then deletes it; a page
        # whose browser went away (or a test's simulated one) never says: delete it a
        # moment later, not at once (that would unmount it before it is dismissed).
        asyncio.get_running_loop().call_later(
            1.0, lambda: None if toast.is_deleted else toast.delete())

    def recheck(self) -> None:
        """An input of the dialog changed: the refusal goes if that fixed it."""
        if self.trouble is not None and self.trouble.fixed():
            self.clear_trouble()

    def dialog_open(self) -> bool:
        return any(isinstance(el, ui.dialog) and el.value
                   for el in self.dialogs.default_slot.children)

    def terms(self, *rules: str, goods: bool = False, level: str | None = None
              ) -> tuple[Any, ...]:
        """What a dialog's figures are worked out from, as the store holds it now: the
        rules named, the goods catalogue (`goods`), the level of member `level`; only
        what prices it (a new goods item refused every service sale chain-wide, and
        another till's top-up refused this one's). A dialog reads them as it opens."""
        ledger = self.shop.ledger
        lvl = ledger.level(level) if level else {}
        return (tuple(ledger.rule(r) for r in rules), self.shop.goods() if goods else None,
                tuple(lvl.get(k) for k in ("name", "discount", "points_multiplier")))

    def priced(self, run: Callable[[], T], seen: tuple[Any, ...], *rules: str,
               goods: str | None = None, service: str | None = None,
               level: str | None = None) -> Callable[[], T]:
        """`run`, refused if what its dialog's figures came from changed since the dialog
        opened (`terms`: a head office's price list synced in, a version taking effect
        at midnight): they were charged without a word against the figure the cashier
        had read out. Judged each time the node runs it, so also after a wait for
        another branch's rights, which a sync may arrive in. Of the goods catalogue and
        the price list only the item sold counts (`goods`, `service`: its code): another
        item added or repriced changes nothing this dialog read out."""
        def item(terms: tuple[Any, ...]) -> tuple[Any, ...]:
            rules_now, catalogue, lvl = terms
            if service is not None:
                rules_now = tuple((v or {}).get(service) if r == "services" else v
                                  for r, v in zip(rules, rules_now, strict=True))
            return rules_now, (catalogue or {}).get(goods) if goods else None, lvl

        def op() -> T:
            if item(self.terms(*rules, goods=goods is not None, level=level)) != item(seen):
                raise TermsChanged(tr(
                    "价格或优惠刚刚变了：请关闭后重新打开，看清新的金额再确认。",
                    "Prices or offers changed just now: close this and open it again to "
                    "see the new figures before confirming."))
            return run()
        return op

    def count(self, box: ui.number, error: ui.label, most: int = MOST_UNITS) -> int | None:
        """A quantity box's whole number from 1 to `most`, else None and why: an emptied
        box reads None, and `value or 1` sold one use of a package for its full price.
        The boxes clamp and round nothing themselves (NiceGUI's min, max and precision
        did it as the box lost focus, swallowing the click that caused it: 1.5 sold
        two)."""
        n = _units_upto(box.value, most)
        if n is None:
            self.say_trouble(_units_refused(most), error,
                             fixed=lambda: _units_upto(box.value, most) is not None)
            return None
        return n

    def chosen(self, box: ui.select | ui.radio, error: ui.label, sentence: str) -> str | None:
        """The option picked in `box`, else None and `sentence`: nothing picked (a select
        emptied, as a crafted event can set it) went to the library as the text "None"
        and was refused in its English words, or a goods sale's refusal raised looking
        "None" up in the catalogue, saying nothing."""
        def picked() -> bool:
            return box.value is not None and box.value in list(box.options)

        if not picked():
            self.say_trouble(sentence, error, fixed=picked)
            return None
        return str(box.value)

    @staticmethod
    def _payer(member: str, card: str | None, pin: str | None) -> dict[str, str | None]:
        """Who pays: the swiped card with its PIN (the ledger finds its member and checks
        both), else the member picked from a search."""
        return {"card": card, "pin": pin} if card else {"member": member}

    def held_by(self, run: Callable[[], T], member: str | None, card: str | None
                ) -> Callable[[], T]:
        """`run`, paid by the card a dialog for `member` was opened with (_payer), refused
        if that number is no longer `member`'s card, judged as the node runs it. The
        library pays by whoever holds the number now: returned (退卡) or replaced (补卡)
        at another till and issued to someone else while the dialog was open, it charged
        ¥128.00 of that other member's stored value in a dialog headed with this one's
        name (a top-up went to them). A card reported lost stays its member's: the
        library's own refusal says so."""
        if member is None or not card:
            return run

        def op() -> T:
            ledger = self.shop.ledger
            try:
                holder = str(ledger.card(card)["member"])
            except LedgerError:
                return run()  # the library's own refusal of the card
            if ledger.survivor_of(holder) != ledger.survivor_of(member):
                raise TermsChanged(tr(
                    "卡 {no} 刚刚在别处退卡或补卡，这个卡号现在是另一位会员的：请关闭后重新"
                    "刷会员的卡或按手机号查找。",
                    "Card {no} was returned or replaced elsewhere just now and its number "
                    "is another member's now: close this and swipe the member's card or "
                    "find them by phone.", no=card))
            return run()
        return op

    def entries_of(self, member: str) -> set[str]:
        """The ids of `member`'s last entries, as a dialog opens (not_twice)."""
        return {str(e["id"]) for e in self.shop.ledger.history(member, limit=HISTORY_READ)}

    def not_twice(self, run: Callable[[], T], member: str | None, seen: set[str],
                  **same: Any) -> Callable[[], T]:
        """`run`, refused if this operator wrote the same for `member` (an entry with the
        fields `same`) since the dialog opened (`seen`: entries_of then), judged as the
        node runs it. Two tabs of one till, each with its dialog on the same sale: both
        confirmed, a top-up paid once at the till went on the card twice and a service
        was charged twice. Another operator's is another till's customer (one card, a
        couple), as before. Meant twice, the dialog opened again takes it."""
        if member is None:
            return run

        def op() -> T:
            for e in self.shop.ledger.history(member, limit=HISTORY_READ):
                if str(e["id"]) not in seen and e.get("op") == self.op \
                        and all(e.get(k) == v for k, v in same.items()):
                    raise TermsChanged(tr(
                        "您刚刚在另一个页面给这位会员做了同样的一笔（{what} {amount}）：这一笔"
                        "没有执行，以免重复。确实要再做一笔的话，请关闭后重新打开再确认。",
                        "You did the same for this member on another page just now ({what} "
                        "{amount}): this one was not done, so nothing is done twice. To do "
                        "it again, close this and open it again.",
                        what=_describe(self.shop, e), amount=_entry_amount(e)[0]))
            return run()
        return op

    def _cards_held(self, member: str) -> dict[str, str]:
        """The member's cards in use (active or lost; a merged member's survivor's, as
        the library issues to it): id -> number."""
        ledger = self.shop.ledger
        return {str(c["id"]): str(c["card_no"])
                for c in ledger.member(ledger.survivor_of(member))["cards"]
                if c["status"] in ("active", "lost")}

    def none_issued(self, run: Callable[[], T], member: str, seen: dict[str, str]
                    ) -> Callable[[], T]:
        """`run`, a card's issue from a dialog opened on a member holding the cards
        `seen` (_cards_held: none, as the dialog offers 发卡), refused if another till
        issued one meanwhile, judged as the node runs it. The library lets a member
        hold several cards (of several types), so it took the second: an active card
        the cashier never meant to issue, one more to lose. A second card meant is
        issued from a dialog opened again, which shows the first."""
        def op() -> T:
            new = [no for cid, no in self._cards_held(member).items() if cid not in seen]
            if new:
                raise TermsChanged(tr(
                    "这位会员刚刚在别处发了卡 {no}：请关闭后重新查看；确实要再发一张的话，"
                    "重新打开再发。",
                    "This member was issued card {no} elsewhere just now: close this and "
                    "look again; to issue another as well, open it again.",
                    no="、".join(new) if _is_zh() else ", ".join(new)))
            return run()
        return op

    def not_merged(self, run: Callable[[], T], member: str, survivor: str
                   ) -> Callable[[], T]:
        """`run`, an edit of `member`'s profile from a dialog opened while `member` acted
        as `survivor`, refused if another till merged it away meanwhile, judged as the
        node runs it. The library lets an edit name a merged member's own record (the
        back office corrects it so, as decided): the counter's saved a note onto a record
        it shows no more, "资料已保存", the note nowhere to be seen."""
        def op() -> T:
            if self.shop.ledger.survivor_of(member) != survivor:
                raise TermsChanged(tr(
                    "这位会员刚刚在别处合并到了另一条会员资料：请关闭后重新刷卡或查找，再编辑。",
                    "This member was merged into another record elsewhere just now: close "
                    "this, swipe or find them again, then edit."))
            return run()
        return op

    async def act(self, op: Callable[[], T], name: str, done: Callable[[T], str],
                  error: ui.label | None = None,
                  explain: Callable[[LedgerError], str | None] | None = None) -> T | None:
        """One write: refused → the sentence (also in the dialog), nothing else happens.
        `explain`: a sentence of the dialog's own for a refusal, where it knows more."""
        if not self.on_duty(acting=True):
            return None
        try:
            result = await self.shop.run(op, name)
        except LedgerError as e:
            said = explain(e) if explain is not None else None
            self.say_trouble(said or self.shop.refusal(e), error)
            return None
        ui.notify(done(result), type="positive")
        self.show()
        return result

    async def print_receipt(self, entry_id: str, *, reprint: bool = False) -> None:
        """The receipt of a sale just committed (or a reprint), on this PC's printer:
        rendered and sent in a worker thread with a short timeout, so a printer that
        is off delays nothing; the bar says whether it printed and offers Reprint."""
        done: receipts.Printed | None
        if reprint and not self.on_duty():  # a tab left open prints nobody's receipt
            return
        try:
            done = await receipts.print_entry(self.shop.ledger, entry_id, reprint=reprint)
        except LedgerError as e:  # e.g. an entry this branch does not hold
            done = receipts.Printed(False, self.shop.refusal(e))
        bar = self.receipt_bar
        bar.clear()
        if done is None:  # no printer at this branch: nothing to say after a sale
            bar.set_visibility(False)
            if reprint:
                ui.notify(tr("本店没有设置小票打印机（crdtledger printer set）。",
                             "This branch has no receipt printer (crdtledger printer "
                             "set)."), type="warning")
            return
        bar.set_visibility(True)
        with bar:
            if done.printed:
                ui.icon("print", color="green-7")
                ui.label(tr("小票已打印", "Receipt printed")).classes("text-green-8") \
                    .mark("receipt-printed")
                return
            with ui.row().classes("w-full items-center gap-3 px-3 py-2 rounded bg-orange-1"):
                ui.icon("print_disabled", color="orange-9")
                ui.label(tr("小票未打印：{reason}", "Receipt not printed: {reason}",
                            reason=_printer_trouble(done))).classes("text-orange-10 grow") \
                    .mark("receipt-failed")
                ui.button(tr("重打小票", "Reprint"), icon="print",
                          on_click=lambda: self.print_receipt(entry_id, reprint=True)) \
                    .props("outline dense").mark("reprint-last")

    # --- dialogs -----------------------------------------------------------------

    def dialog(self, title: str) -> tuple[ui.dialog, ui.card, ui.label]:
        """A fresh dialog (the previous one goes, and what was said in it), its body, and
        its refusal line."""
        self.clear_trouble()
        self.dialogs.clear()
        with self.dialogs, ui.dialog() as d, \
                ui.card().classes("w-[32rem] max-w-full gap-3") as body:
            ui.label(title).classes("text-xl font-bold")
            # Last in the card whatever is added after it: next to the buttons.
            error = ui.label().classes("text-negative order-last").mark("dialog-error")
        d.open()
        return d, body, error

    def _who(self) -> str:
        """The member a dialog acts on, in its title, so nobody confirms for the wrong one."""
        if self.member is None:
            return ""
        return f" — {self.shop.ledger.member(self.member)['name']}"

    def buttons(self, d: ui.dialog, confirm: str, on_confirm: Callable[[], Awaitable[None]],
                marker: str) -> None:
        """Cancel and confirm, last in a dialog: then every input above them is known,
        and a change to any of them may have fixed what a refusal said."""
        with ui.row().classes("w-full justify-end gap-2"):
            ui.button(tr("取消", "Cancel"), on_click=d.close).props("flat")
            # Once at a time, and not after the dialog closed (layout.once).
            once(ui.button(confirm).mark(marker), on_confirm, d)
        self.watch_inputs(d)

    def watch_inputs(self, d: ui.dialog) -> None:
        for el in d.descendants():
            if isinstance(el, ValueElement):
                el.on_value_change(self.recheck)
        d.on_value_change(lambda e: None if e.value else self.clear_trouble())

    def pin_dialog(self, card_no: str) -> None:
        d, body, error = self.dialog(tr("请会员输入卡密码", "Card PIN, please"))
        with body:
            ui.label(tr("卡号 {no}", "Card {no}", no=card_no)).classes("text-gray-600")
            pin = ui.input(tr("密码", "PIN"), password=True).props("autofocus outlined") \
                .classes("w-full").mark("pin")

            async def confirm() -> None:
                if self.use_card(card_no, pin.value or "", error):
                    d.close()

            pin.on("keydown.enter", confirm)
            self.buttons(d, tr("确定", "OK"), confirm, "pin-ok")

    def consume_dialog(self, service: str | None = None, coupon: str | None = None, *,
                       walk_in: bool = False) -> None:
        """消费: a service to the member on screen (stored value, a package's uses or
        the till; level discount, points, coupons), or to a walk-in customer (散客:
        at the till only, list price, no points, no coupon: the library refuses the
        rest without a member)."""
        member = None if walk_in else self.member
        assert walk_in or member is not None
        ledger = self.shop.ledger
        services: dict[str, Any] = ledger.rule("services")
        if not services and member is None:
            self.say_trouble(tr("还没有服务项目。", "The price list has no services."))
            return
        lvl = ledger.level(member) if member else None
        earn = ledger.rule("earn")
        seen = self.terms("services", "earn", level=member)
        # Paid from a package's uses, the level prices nothing.
        seen_uses = self.terms("services", "earn")
        packages = ({p["id"]: p for p in views.packages(ledger, member) if p["remaining"] > 0}
                    if member else {})
        service = service or (self.favourite_service(member, services) if member
                               else next(iter(services), None))
        # A member with uses of this service left uses them first, as they expect.
        with_package = coupon is None and any(p["service"] == service
                                              for p in packages.values())
        card, pin = (self.card_no, self.pin) if member else (None, None)
        before = self.entries_of(member) if member else set()
        d, body, error = self.dialog(tr("消费", "Consume a service") + (
            self._who() if member else tr(" — 散客", " — walk-in customer")))
        with body:
            svc = ui.select({code: f"{v.get('name', code)}  {money(int(v['price']))}"
                             for code, v in services.items()},
                            value=service, label=tr("服务项目", "Service")) \
                .classes("w-full").mark("service")
            qty = ui.number(tr("数量", "Quantity"), value=1).classes("w-32").mark("qty")
            # From the card, from a package, or paid at the till by one of the
            # chain's methods (the history then says so, and the card is untouched).
            ui.label(tr("付款方式", "Paid by")).classes("text-sm text-gray-600")
            methods = self.shop.pay_methods()
            pay = ui.radio({**({"stored": tr("储值卡", "Stored value"),
                                "package": tr("套餐次数", "Package uses")} if member else {}),
                            **methods},
                           value="package" if with_package else "stored" if member
                           else next(iter(methods))).props("inline").mark("pay")
            ticket, coupons = self._coupon_select(member) if member else (None, {})
            if coupon is not None and ticket is None:  # scanned by who may not take it
                self.say_trouble(tr("您没有收优惠券的权限：这张券请有权限的同事来收。",
                                    "You may not take coupons: a colleague who may takes "
                                    "this one."), error)
            if coupon is not None and ticket is not None:
                if coupon not in coupons:  # another member's, used, or expired: say so
                    view = ledger.coupon_view(coupon)
                    self.say_trouble(tr("这张券不能用：{state}", "This coupon cannot be used: "
                                        "{state}", state=_coupon_state(self.shop, view)), error)
                else:
                    ticket.set_value(coupon)
            preview = ui.label().classes("text-lg").mark("preview")

            def update() -> None:
                code, n = svc.value, _units_upto(qty.value)
                _quantity_line(preview, n)
                if n is None:  # what confirming says, not a price
                    return
                # A package's uses pay nothing a coupon could take off.
                if ticket is not None:
                    ticket.set_visibility(bool(coupons) and pay.value != "package")
                if code not in services:
                    preview.set_text("")
                    return
                gross = int(services[code]["price"]) * n
                if lvl is None:
                    preview.set_text(tr("应付 {net}（散客：原价，不积分）",
                                        "To pay {net} (walk-in: list price, no points)",
                                        net=money(gross)))
                    return
                if pay.value == "package":
                    left = sum(p["remaining"] for p in packages.values() if p["service"] == code)
                    preview.set_text(tr("用套餐 {n} 次（剩 {left} 次）", "{n} package use(s) "
                                        "({left} left)", n=n, left=left))
                    return
                unit = apply_rate(int(services[code]["price"]), str(lvl["discount"]))
                chosen = coupons.get(str(ticket.value or "")) if ticket is not None else None
                off = self._coupon_off(chosen, apply_rate(gross, str(lvl["discount"])), unit,
                                       code)
                preview.set_text(self._price_line(gross, lvl, earn, off))

            for el in (svc, qty, pay, *([ticket] if ticket is not None else [])):
                el.on_value_change(update)
            update()

            async def confirm() -> None:
                n = self.count(qty, error)
                if n is None:
                    return
                code = self.chosen(svc, error, tr("请选择服务项目。", "Pick a service."))
                how = self.chosen(pay, error, _pick_pay()) if code is not None else None
                if code is None or how is None:
                    return
                cid = (ticket.value or None) if ticket is not None and how != "package" \
                    else None
                # No member nor card: the library sells to this branch's walk-in customer.
                payer = self._payer(member, card, pin) if member else {}
                sale = self.shop.operation(self.op, "debit", service=code, qty=n, pay=how,
                                           coupon=cid, **payer)
                sale = self.not_twice(self.held_by(sale, member, card), member, before,
                                      kind="debit", service=code, qty=n, pay=how)
                done = await self.act(
                    self.priced(sale, seen_uses, "services", "earn", service=code)
                    if how == "package"
                    else self.priced(sale, seen, "services", "earn", service=code, level=member),
                    "debit", lambda e: tr("已消费 {what}，实付 {paid}", "Done: {what}, "
                                          "paid {paid}", what=self.shop.service_name(code),
                                          paid=money(int(e["amount"]))), error,
                    lambda e: self.shop.short_of_stored(e, member))
                if done is not None:
                    d.close()
                    await self.print_receipt(str(done["id"]))

            self.buttons(d, tr("确认消费", "Confirm"), confirm, "consume-ok")

    def goods_dialog(self, code: str | None = None, *, walk_in: bool = False) -> None:
        """商品销售: goods from this branch's stock, to the member on screen (level
        discount and points, from stored value or at the till) or to a walk-in
        customer (散客: at the till, list price, no points). The stock and the money
        commit together or not at all (crdtledger.goods)."""
        ledger = self.shop.ledger
        items = self.shop.goods()
        member = None if walk_in else self.member
        seen = self.terms("earn", goods=True, level=member)
        card, pin = (self.card_no, self.pin) if member else (None, None)
        before = self.entries_of(member) if member else set()
        d, body, error = self.dialog(tr("商品销售", "Sell goods") + (
            self._who() if member else tr(" — 散客", " — walk-in customer")))
        with body:
            if not items:
                ui.label(tr("还没有商品资料：总店先添加商品（crdtledger goods add）。",
                            "The goods catalogue is empty: head office adds goods first "
                            "(crdtledger goods add).")).classes("text-gray-600")
                with ui.row().classes("w-full justify-end"):
                    ui.button(tr("关闭", "Close"), on_click=d.close).props("flat")
                return
            pick = ui.select({c: f"{i['name']}  {money(int(i['price']))}"
                              for c, i in items.items()},
                             value=code if code in items else next(iter(items)),
                             label=tr("商品", "Goods"), with_input=True) \
                .classes("w-full").mark("goods")
            with ui.row().classes("w-full items-center gap-4"):
                qty = ui.number(tr("数量", "Quantity"), value=1).classes("w-32") \
                    .mark("goods-qty")
                stock = ui.label().classes("text-gray-600").mark("stock-here")
            methods = self.shop.pay_methods()
            ui.label(tr("付款方式", "Paid by")).classes("text-sm text-gray-600")
            pay = ui.radio({**({"stored": tr("储值卡", "Stored value")} if member else {}),
                            **methods}, value="stored" if member else next(iter(methods))) \
                .props("inline").mark("goods-pay")
            ticket, coupons = self._coupon_select(member, services=False) if member \
                else (None, {})
            preview = ui.label().classes("text-lg").mark("goods-preview")
            lvl = ledger.level(member) if member else None
            earn = ledger.rule("earn")

            def update() -> None:
                item, n = items.get(str(pick.value)), _units_upto(qty.value)
                _quantity_line(preview, n)
                if n is None:  # what confirming says, not a price
                    return
                if item is None:
                    preview.set_text("")
                    stock.set_text("")
                    return
                unit = str(item.get("unit") or "")
                have = int(ledger.stock_of(str(item["code"]))["qty"])
                stock.set_text(tr("本店库存 {n}{unit}", "{n}{unit} in stock here", n=have,
                                  unit=unit))
                stock.classes(replace="text-negative" if have < n else "text-gray-600")
                gross = int(item["price"]) * n
                if lvl is None:
                    preview.set_text(tr("应付 {net}（散客：原价，不积分）",
                                        "To pay {net} (walk-in: list price, no points)",
                                        net=money(gross)))
                    return
                chosen = coupons.get(str(ticket.value or "")) if ticket is not None else None
                off = self._coupon_off(chosen, apply_rate(gross, str(lvl["discount"])), 0, None)
                preview.set_text(self._price_line(gross, lvl, earn, off))

            for el in (pick, qty, *([ticket] if ticket is not None else [])):
                el.on_value_change(update)
            update()

            async def confirm() -> None:
                n = self.count(qty, error)
                if n is None:
                    return
                c = self.chosen(pick, error, tr("请选择商品。", "Pick the goods."))
                how = self.chosen(pay, error, _pick_pay()) if c is not None else None
                if c is None or how is None:
                    return
                payer = self._payer(member, card, pin) if member else {}
                cid = (ticket.value or None) if ticket is not None else None
                done = await self.act(
                    self.priced(self.not_twice(self.held_by(self.shop.operation(
                        self.op, "sell", goods=c, qty=n, pay=how, coupon=cid, **payer),
                        member, card), member, before, kind="debit", goods=c, qty=n),
                        seen, "earn", goods=c, level=member),
                    "sell", lambda e: tr("已售 {what} ×{n}，实收 {paid}", "Sold {what} ×{n}, "
                                         "paid {paid}", what=self.shop.goods_name(c), n=n,
                                         paid=money(int(e["amount"]))), error,
                    lambda e: self.shop.out_of_stock(e, items[c])
                    or self.shop.short_of_stored(e, member))
                if done is not None:
                    d.close()
                    await self.print_receipt(str(done["id"]))

            self.buttons(d, tr("确认售出", "Sell"), confirm, "goods-ok")

    def _coupon_select(self, member: str, *, services: bool = True
                       ) -> tuple[ui.select | None, dict[str, dict[str, Any]]]:
        """The member's coupons that can be used (wherever their right sits: the node
        fetches it), to pick one for this sale; hidden when there are none, and none
        (no select) for an operator without coupon.redeem: the library refuses the
        sale they pick one for, and a button follows the operator's permissions.
        `services`: whether free-service coupons apply (not to goods)."""
        if not can("coupon.redeem"):
            return None, {}
        coupons = {str(c["coupon"]): c for c in self.shop.ledger.coupons(member)
                   if c["status"] == "available" and (services or not c["service"])}
        here = self.shop.node.node_id
        options = {"": tr("不用优惠券", "No coupon")}
        for cid, c in coupons.items():
            label = coupon_terms(self.shop, c["off"], c["percent"], c["service"],
                                 c["min_spend"])
            if c.get("valid_to"):
                label += tr("（至 {d}）", " (until {d})", d=c["valid_to"])
            if c.get("at") and c["at"] != here:
                label += tr("，在{b}", ", held at {b}", b=self.shop.branch_name(str(c["at"])))
            options[cid] = label
        select = ui.select(options, value="", label=tr("优惠券（{n} 张可用）", "Coupon ({n} "
                                                      "available)", n=len(coupons))) \
            .classes("w-full").mark("coupon")
        select.set_visibility(bool(coupons))
        return select, coupons

    @staticmethod
    def _coupon_off(c: dict[str, Any] | None, net: int, unit: int, service: str | None) -> int:
        """What a coupon (a coupon.list view) takes off `net`, by the library's rule
        (crdtledger.coupons.discount); 0 where the library will refuse it (another
        service's free coupon, a minimum spend not met): the refusal says why."""
        if c is None or (c["service"] and c["service"] != service) or net < c["min_spend"]:
            return 0
        terms = {"amount": c["off"], "percent": c["percent"], "service": c["service"]}
        return coupon_discount(terms, net, unit)

    def _price_line(self, gross: int, lvl: dict[str, Any], earn: dict[str, Any],
                    off: int = 0) -> str:
        """What the member pays for `gross` at their level, less a coupon's `off`, and
        the points it earns: the library's own arithmetic (crdtledger.money)."""
        net = max(0, apply_rate(gross, str(lvl["discount"])) - off)
        pts = points_for(net, str(earn["points_per_yuan"]), str(lvl["points_multiplier"]))
        rate = str(lvl["discount"])
        level = "" if Decimal(rate) == 1 else tr(
            "{level} {rate} 折，", "{level} discount ×{rate}, ", level=lvl["name"],
            rate=_zhe(rate) if _is_zh() else rate)
        coupon = tr("券减 {off}，", "coupon {off} off, ", off=money(off)) if off else ""
        return tr("原价 {gross}，{level}{coupon}应付 {net}，得 {pts} 积分",
                  "List price {gross}, {level}{coupon}to pay {net}, earns {pts} points",
                  gross=money(gross), level=level, coupon=coupon, net=money(net), pts=pts)

    def favourite_service(self, member: str, services: dict[str, Any]) -> str | None:
        """The service the consume dialog starts on: the one in the member's
        preferences (its code or name, as typed at the desk), else the one they had
        most often lately, else the price list's first."""
        profile = self.shown["profile"] if self.shown else self.shop.ledger.member(member)
        liked = str((profile.get("prefs") or {}).get("service") or "").strip()
        if liked:
            for exact in (True, False):
                for code, v in services.items():
                    name = str(v.get("name") or "") if isinstance(v, dict) else ""
                    if liked.upper() == code.upper() or liked == name or (
                            not exact and name and (liked in name or name in liked)):
                        return code
        history = self.shown["history"] if self.shown else self.shop.ledger.history(
            member, limit=HISTORY_READ)
        had = Tally(str(e["service"]) for e in history
                    if e["kind"] == "debit" and e.get("service") in services)
        if had:
            return had.most_common(1)[0][0]
        return next(iter(services), None)

    def topup_dialog(self) -> None:
        assert self.member is not None
        # The payer the dialog names, taken as it opens: a card swiped meanwhile (the
        # next customer's) switches the panel, not this top-up.
        member, card, pin = self.member, self.card_no, self.pin
        ledger = self.shop.ledger
        promotions = sorted(ledger.rule("promotions"), key=lambda p: int(p["min"]))

        def limit() -> int:
            """Read at each look: a lower limit that took effect while the dialog was
            open (head office's, or a version from midnight) was asked for by the
            library, and the dialog kept its approver's boxes hidden."""
            return int(ledger.rule("approval")["topup_limit"])

        seen = self.terms("promotions")  # a top-up's bonus: the level prices nothing
        before = self.entries_of(member)
        d, body, error = self.dialog(tr("充值", "Top up") + self._who())
        with body:
            amount = ui.input(tr("金额（元）", "Amount (yuan)"), placeholder="100.00") \
                .props("autofocus outlined inputmode=decimal").classes("w-full").mark("amount")
            with ui.row().classes("gap-2"):
                for fen in QUICK_TOPUPS:
                    ui.button(money(fen), on_click=lambda f=fen: amount.set_value(
                        f"{f // 100}.00")).props("outline dense")
            for p in promotions:
                ui.label(tr("活动：充 {min} 送 {bonus}", "Offer: top up {min}, get {bonus}",
                            min=money(int(p["min"])), bonus=money(int(p["bonus"])))
                         + (f"（{p['name']}）" if p.get("name") else "")) \
                    .classes("text-sm text-teal-800")
            methods = self.shop.pay_methods()
            ui.label(tr("收款方式", "Paid by")).classes("text-sm text-gray-600")
            method = ui.radio(methods, value=next(iter(methods))).props("inline") \
                .mark("topup-pay")
            preview = ui.label().classes("text-lg").mark("preview")
            approval, above, approver, approver_pw = self.approver_boxes("")
            # The library counts what this cashier topped up for the member today
            # without an approver: past the limit together, it asks for one whatever
            # this amount, and the boxes, shown only above the limit, were never offered.
            asked: list[bool] = [False]

            def parsed() -> int | None:
                return _money_or_none(amount.value)

            def update() -> None:
                fen, most = parsed(), limit()
                above.set_text(tr("超过 {limit}，需要审批人：",
                                  "Above {limit}: an approver must confirm:",
                                  limit=money(most)) if fen is None or fen > most else
                               tr("今天为这位会员充值的累计超过 {limit}，需要审批人：",
                                  "Above {limit} topped up for this member today: an "
                                  "approver must confirm:", limit=money(most)))
                approval.set_visibility(fen is not None and (fen > most or asked[0]))

                if fen is None:
                    preview.set_text("")
                    return
                bonus = max((int(p["bonus"]) for p in promotions if fen >= int(p["min"])),
                            default=0)
                preview.set_text(tr("收款 {cash}，赠送 {bonus}，卡内增加 {total}",
                                    "Take {cash}, bonus {bonus}, the card gets {total}",
                                    cash=money(fen), bonus=money(bonus), total=money(fen + bonus)))

            def approval_asked(e: LedgerError) -> None:
                asked[0] = asked[0] or isinstance(e, ApprovalRequired)

            amount.on_value_change(update)
            update()
            one_approval(approver_pw, parsed, amount)

            async def confirm() -> None:
                try:
                    fen = parse_money(amount.value or "")
                except InvalidAmount as e:
                    self.refused(e, error, fixed=lambda: parsed() is not None)
                    return
                done = await self.act(
                    self.priced(self.not_twice(self.held_by(self.shop.operation(
                        self.op, "topup", amount=fen, pay=str(method.value),
                        approver=_approval(approval, approver, approver_pw),
                        **self._payer(member, card, pin)), member, card), member, before,
                        kind="topup", amount=fen), seen, "promotions"),
                    "topup", lambda e: tr("已充值 {cash}，赠送 {bonus}", "Topped up {cash}, "
                                          "bonus {bonus}", cash=money(fen),
                                          bonus=money(int(e.get("bonus", 0)))), error,
                    approval_asked)
                if done is None:
                    update()  # the boxes, if the library asked for an approver
                    return
                d.close()
                await self.print_receipt(str(done["id"]))

            self.buttons(d, tr("确认充值", "Confirm top-up"), confirm, "topup-ok")

    def approver_boxes(self, say: str) -> tuple[ui.column, ui.label, ui.input, ui.input]:
        """An approver's name and password, under `say`, in a dialog being built."""
        with ui.column().classes("w-full gap-1") as approval:
            said = ui.label(say).classes("text-sm text-orange-800")
            approver = ui.input(tr("审批人", "Approver")).props("outlined dense") \
                .classes("w-full").mark("approver")
            approver_pw = ui.input(tr("审批人密码", "Approver's password"), password=True) \
                .props("outlined dense").classes("w-full").mark("approver-password")
        return approval, said, approver, approver_pw

    def package_dialog(self) -> None:
        """计次卡: uses of a service, paid from the card or at the till."""
        assert self.member is not None
        member, card, pin = self.member, self.card_no, self.pin
        services: dict[str, Any] = self.shop.ledger.rule("services")
        methods = self.shop.pay_methods()
        before = self.entries_of(member)
        d, body, error = self.dialog(tr("售套餐", "Sell a package") + self._who())
        with body:
            svc = ui.select({code: str(v.get("name", code)) for code, v in services.items()},
                            value=self.favourite_service(member, services),
                            label=tr("服务项目", "Service")) \
                .classes("w-full").mark("package-service")
            uses = ui.number(tr("次数", "Uses"), value=10).classes("w-32") \
                .mark("package-uses")
            price = ui.input(tr("价格（元）", "Price (yuan)"), placeholder="1000.00") \
                .props("outlined inputmode=decimal").classes("w-full").mark("package-price")
            pay = ui.radio({"stored": tr("储值卡", "Stored value"), **methods},
                           value=next(iter(methods))).props("inline").mark("package-pay")
            # Far below the list, the library may want an approver (what this cashier's
            # packages gave away today, past the top-up limit), and above the list it
            # always does: the boxes are offered.
            approval, _said, approver, approver_pw = self.approver_boxes(tr(
                "低于标价一半（超出当日限额）或高于标价：需要审批人", "Under half the list "
                "price (past the day's limit) or above it: an approver must confirm"))

            def below_half() -> None:
                n, fen = _units(uses.value), _money_or_none(price.value)
                item = services.get(str(svc.value)) or {}
                worth = (n or 0) * int(item.get("price") or 0)
                approval.set_visibility(fen is not None and (
                    given_away(worth, fen) > 0 or (bool(n and item) and fen > worth)))

            for el in (svc, uses, price):
                el.on_value_change(lambda _e: below_half())
            below_half()
            one_approval(approver_pw, lambda: (svc.value, uses.value, price.value),
                         svc, uses, price)

            async def confirm() -> None:
                try:
                    fen = parse_money(price.value or "")
                except InvalidAmount as e:
                    self.refused(e, error, fixed=lambda: _money_or_none(price.value) is not None)
                    return
                n = self.count(uses, error)
                if n is None:
                    return
                code = self.chosen(svc, error, tr("请选择服务项目。", "Pick a service."))
                how = self.chosen(pay, error, _pick_pay()) if code is not None else None
                if code is None or how is None:
                    return
                done = await self.act(
                    self.not_twice(self.held_by(self.shop.operation(
                        self.op, "package.sell", service=code, uses=n, price=fen, pay=how,
                        approver=_approval(approval, approver, approver_pw),
                        **self._payer(member, card, pin)), member, card), member, before,
                        kind="package", service=code, qty=n),
                    "package", lambda _e: tr("已售套餐 {what} ×{n}", "Sold {what} ×{n}",
                                             what=self.shop.service_name(code), n=n), error,
                    lambda e: self.shop.short_of_stored(e, member))
                if done is not None:
                    d.close()
                    await self.print_receipt(str(done["id"]))

            self.buttons(d, tr("确认售出", "Sell"), confirm, "package-ok")

    def redeem_dialog(self) -> None:
        assert self.member is not None
        member, card, pin = self.member, self.card_no, self.pin
        ledger = self.shop.ledger
        before = self.entries_of(member)
        d, body, error = self.dialog(tr("积分兑换", "Redeem points") + self._who())
        with body:
            ui.label(tr("现有积分 {n}", "{n} points available",
                        n=ledger.balance(member)["points"])).classes("text-gray-600")
            # Goods that are gifts for points (a points price in the catalogue) come
            # out of this branch's stock with the points (points.gift); anything else
            # is a number of points and what was given, as before.
            gifts = {c: i for c, i in self.shop.goods().items() if int(i["points_price"]) > 0}
            seen = self.terms(goods=True)  # a gift's points price
            item = ui.select({"": tr("其他礼品（填积分）", "Another gift (enter points)"),
                              **{c: tr("{name}  {p} 积分", "{name}  {p} points",
                                       name=i["name"], p=i["points_price"])
                                 for c, i in gifts.items()}},
                             value="", label=tr("兑换商品", "Goods gift")) \
                .classes("w-full").mark("gift-goods")
            item.set_visibility(bool(gifts))
            with ui.column().classes("w-full gap-3") as free:
                points = ui.input(tr("积分", "Points")) \
                    .props("autofocus outlined inputmode=numeric").classes("w-full") \
                    .mark("points")
                gift = ui.input(tr("礼品", "Gift")).props("outlined").classes("w-full") \
                    .mark("gift")
            item.on_value_change(lambda e: free.set_visibility(not e.value))

            async def confirm() -> None:
                if item.value:
                    code = str(item.value)
                    if await self.act(
                            self.priced(self.not_twice(self.held_by(self.shop.operation(
                                self.op, "points.gift", goods=code,
                                **self._payer(member, card, pin)), member, card), member,
                                before, kind="redeem", goods=code), seen, goods=code),
                            "redeem", lambda e: tr("已兑换 {what}，用 {n} 积分",
                                                   "Gave {what} for {n} points",
                                                   what=gifts[code]["name"], n=e["points"]),
                            error, lambda e: self.shop.out_of_stock(e, gifts[code])) is not None:
                        d.close()
                    return
                text = str(points.value or "").strip()
                if not _positive(text):
                    self.say_trouble(tr("积分要填正整数。", "Points are a whole number."), error,
                                     fixed=lambda: _positive(str(points.value or "").strip()))
                    return
                n = int(text)
                done = await self.act(
                    self.not_twice(self.held_by(self.shop.operation(
                        self.op, "points.redeem", points=n, gift=gift.value or "",
                        **self._payer(member, card, pin)), member, card), member, before,
                        kind="redeem", goods=None, points=n),
                    "redeem", lambda _e: tr("已兑换 {n} 积分", "Redeemed {n} points", n=n), error)
                if done is not None:
                    d.close()

            self.buttons(d, tr("确认兑换", "Redeem"), confirm, "redeem-ok")

    def refund_dialog(self, entry: dict[str, Any], left: int) -> None:
        """退款 of what is `left` of debit `entry` (Ledger.refund_left: its units, uses or fen
        not yet refunded). A goods sale is refunded by units (the library refuses an
        amount: its money is that share of what was paid, and the units go back on the
        shelf), a package by uses (all that is left), the rest by an amount: nothing
        typed, all that is left."""
        package = entry.get("pay") == "package"
        goods = entry.get("goods") is not None
        member = self.member
        before = self.entries_of(member) if member else set()
        d, body, error = self.dialog(tr("退款", "Refund"))
        with body:
            if goods:
                ui.label(f"{self.shop.goods_name(str(entry['goods']))} ×{entry.get('qty', 1)}  "
                         + money(int(entry["amount"]))).classes("text-lg")
            else:
                ui.label(f"{self.shop.service_name(entry.get('service'))}  "
                         + (tr("{n} 次", "{n} use(s)", n=entry.get("qty", 1)) if package
                            else money(int(entry["amount"])))).classes("text-lg")
            unit = str((self.shop.goods().get(str(entry.get("goods"))) or {}).get("unit") or "")
            rest = (tr("{n}{unit}", "{n}{unit}", n=left, unit=unit or tr(" 件", " unit(s)"))
                    if goods else tr("{n} 次", "{n} use(s)", n=left) if package else money(left))
            ui.label(tr("还可退 {rest}", "{rest} left to refund", rest=rest)
                     if left == refund_whole(entry)
                     else tr("已退过一部分，还可退 {rest}", "Partly refunded already: {rest} "
                             "left to refund", rest=rest)) \
                .classes("text-base text-gray-700").mark("refund-left")
            # The sale's points the member has spent since are paid for out of the
            # refund (Ledger.refund_terms): said before the cashier confirms.
            kept = ui.label("").classes("text-base text-orange-800").mark("refund-kept")
            # What the line said would be kept, by what was asked (fen, units): a refund
            # confirmed keeps that, or is refused (as_said).
            said_kept: dict[tuple[int | None, int | None], int] = {}

            def say_kept(fen: int | None = None, n: int | None = None) -> None:
                try:
                    t = self.shop.ledger.refund_terms(str(entry["id"]), fen, qty=n)
                    said_kept[(fen, n)] = int(t["kept"])
                except LedgerError:
                    t = {"kept": 0}
                kept.set_text(tr("会员已用掉这笔消费的 {p} 积分：按积分兑换价从退款中扣 {k}，"
                                 "实退 {m}",
                                 "The member has spent {p} of this sale's points: {k} is "
                                 "kept from the refund at the points' conversion rate, "
                                 "{m} is paid back", p=t.get("spent"), k=money(t["kept"]),
                                 m=money(t.get("money", 0))) if t["kept"] else "")
                kept.set_visibility(bool(t["kept"]))

            def units_typed(value: Any) -> None:
                n = _units_upto(value, max(1, left))
                if n is None:
                    kept.set_visibility(False)
                else:
                    say_kept(n=n)

            def amount_typed(value: Any) -> None:
                # Nothing typed: all that is left; what is no amount says nothing (the
                # whole refund's figures were shown for "abc").
                fen = _money_or_none(value)
                if fen is None and str(value or "").strip():
                    kept.set_visibility(False)
                else:
                    say_kept(fen)

            say_kept()
            amount = None
            units = None
            if goods:
                units = ui.number(tr("退货数量（退回库存）", "Units returned (back to stock)"),
                                  value=max(1, left), on_change=lambda ev: units_typed(ev.value)) \
                    .classes("w-48").mark("refund-qty")
            elif not package:
                amount = ui.input(tr("退款金额（不填则退 {rest}）", "Amount (empty: {rest})",
                                     rest=rest), on_change=lambda ev: amount_typed(ev.value)) \
                    .props("outlined inputmode=decimal").classes("w-full").mark("refund-amount")
            reason = ui.input(tr("原因", "Reason")).props("outlined").classes("w-full") \
                .mark("refund-reason")

            async def confirm() -> None:
                fen: int | None = None
                if amount is not None and str(amount.value or "").strip():
                    typed = amount
                    try:
                        fen = parse_money(amount.value)
                    except InvalidAmount as e:
                        self.refused(e, error, fixed=lambda: not str(typed.value or "").strip()
                                     or _money_or_none(typed.value) is not None)
                        return
                n = None if units is None else self.count(units, error, max(1, left))
                if units is not None and n is None:
                    return
                refund = self.shop.operation(self.op, "refund", debit_id=str(entry["id"]),
                                             amount=fen, qty=n, reason=reason.value or "")

                def as_said() -> Any:
                    """The refund the dialog said, judged as the node runs it. Nothing typed
                    refunds all that is left: another till's refund of part of it
                    meanwhile refunded less than the cashier had read out (and may pay
                    back at the till), without a word; so did points of the sale spent
                    meanwhile, kept from the money though the dialog said nothing was.
                    A sale refunded whole meanwhile, or less left than was typed, is the
                    library's own refusal."""
                    ledger = self.shop.ledger
                    now = ledger.refund_left(str(entry["id"]))
                    if fen is None and n is None and now is not None and 0 < now != left:
                        raise TermsChanged(tr(
                            "这笔消费刚刚在别处退过一部分：请关闭后重新打开，看清还可退多少再确认。",
                            "Part of this sale was refunded elsewhere just now: close this "
                            "and open it again to see what is left before confirming."))
                    # A goods sale's units box starts at all that is left: the line said
                    # the whole refund's.
                    shown = said_kept.get((fen, n), said_kept.get((None, None))
                                          if fen is None and n == left else None)
                    if shown is not None:
                        try:
                            keep = int(ledger.refund_terms(str(entry["id"]), fen, qty=n)["kept"])
                        except LedgerError:
                            keep = shown  # the refund itself says why it is refused
                        if keep != shown:
                            raise TermsChanged(tr(
                                "会员刚刚用掉了这笔消费的积分，退款要扣的金额变了：请关闭后重新打开，"
                                "看清实退金额再确认。",
                                "The member spent this sale's points just now, so what is "
                                "kept from the refund changed: close this and open it again "
                                "to see what is paid back before confirming."))
                    return refund()

                done = await self.act(
                    self.not_twice(as_said, member, before, kind="refund",
                                   ref=str(entry["id"])),
                    "refund", lambda e: tr("已退款", "Refunded") + (
                        f" {money(int(e['amount']))}" if e.get("amount") else "") + (
                        tr("（已用积分扣 {k}）", " ({k} kept for points spent)",
                           k=money(int(e["kept"]))) if e.get("kept") else ""), error)
                if done is not None:
                    d.close()
                    await self.print_receipt(str(done["id"]))

            self.buttons(d, tr("确认退款", "Refund"), confirm, "refund-ok")

    def new_member_dialog(self, card_no: str = "") -> None:
        d, body, error = self.dialog(tr("新会员开卡", "New member and card"))
        with body:
            name = ui.input(tr("姓名", "Name")).props("autofocus outlined dense") \
                .classes("w-full").mark("new-name")
            phone = ui.input(tr("手机号", "Phone")).props("outlined dense inputmode=tel") \
                .classes("w-full").mark("new-phone")
            with ui.row().classes("w-full gap-2 no-wrap"):
                gender = ui.select({"": "—", "F": tr("女", "female"), "M": tr("男", "male")},
                                   value="", label=tr("性别", "Gender")).classes("w-28")
                birthday = ui.input(tr("生日", "Birthday"), placeholder="1990-05-17") \
                    .props("outlined dense").classes("grow").mark("new-birthday")
            with ui.row().classes("w-full gap-2 no-wrap"):
                card = ui.input(tr("卡号（刷卡或输入）", "Card number (swipe or type)"),
                                value=card_no).props("outlined dense").classes("grow") \
                    .mark("new-card")
                pin = ui.input(tr("卡密码（可不设）", "Card PIN (optional)"), password=True) \
                    .props("outlined dense inputmode=numeric").classes("w-40").mark("new-pin")
            prefs = self._prefs_inputs({})
            # The member this dialog registered already: pressed again after their card
            # was refused (another card typed), it only issues the card. Adding them
            # again was refused as their phone's second member, and the card never issued.
            added: dict[str, str] = {}

            def card_taken(number: str) -> bool:
                """Whether `number` is held by a member already, said so: checked before
                the member is added, so a taken card registers nobody (another till
                may still issue it meanwhile: then `added` remembers the member)."""
                try:
                    held = self.shop.ledger.card(number)["status"] in ("active", "lost")
                except NotFound:
                    return False
                except LedgerError as e:  # a number no card carries
                    self.refused(e, error)
                    return True
                if held:
                    self.say_trouble(tr("卡 {no} 已经发过了（属于一位会员）：请换一张卡。",
                                        "Card {no} is already issued to a member: use "
                                        "another card.", no=number.upper()), error)
                return held

            async def confirm() -> None:
                op = self.op
                who = str(name.value or "")
                number = str(card.value or "").strip()
                if "member_id" not in added:
                    if number and card_taken(number):
                        return
                    pref_values = {k: v.value or "" for k, v in prefs.items() if v.value}
                    done = await self.act(
                        self.shop.operation(op, "member.add", name=who,
                                            # pasted from a chat, a phone comes
                                            # with spaces at its ends
                                            phone=str(phone.value or "").strip(),
                                            gender=str(gender.value or ""),
                                            birthday=str(birthday.value or ""),
                                            prefs=pref_values), "member",
                        lambda _m: tr("已登记会员 {name}", "Member {name} registered", name=who),
                        error)
                    if done is None:
                        return
                    added["member_id"] = str(done["member_id"])
                    self.show(added["member_id"])
                    # What was registered can no longer change here (the panel edits it).
                    gender.disable()
                    for box in (name, phone, birthday, *prefs.values()):
                        box.disable()
                mid = added["member_id"]
                if number:
                    issued = await self.act(
                        self.shop.operation(op, "card.issue", member=mid, card_no=number,
                                            pin=pin.value or None),
                        "card", lambda _c: tr("已发卡 {no}", "Card {no} issued", no=number.upper()),
                        error, lambda e: tr("会员 {name} 已登记，但{why}",
                                            "Member {name} is registered, but: {why}",
                                            name=who, why=self.shop.refusal(e)))
                    if issued is None:
                        return  # the member exists; another card, or the panel, issues it
                d.close()

            self.buttons(d, tr("登记", "Register"), confirm, "new-member-ok")

    def _prefs_inputs(self, current: dict[str, str]) -> dict[str, ui.input]:
        labels = {"strength": tr("力度", "Strength"), "service": tr("喜欢的项目", "Service type"),
                  "technician": tr("指定技师", "Favourite technician")}
        with ui.row().classes("w-full gap-2 no-wrap"):
            return {k: ui.input(label, value=current.get(k, "")).props("outlined dense")
                    .classes("grow").mark(f"pref-{k}") for k, label in labels.items()}

    def edit_dialog(self, profile: dict[str, Any]) -> None:
        member = str(profile["id"])
        survivor = self.shop.ledger.survivor_of(member)  # itself: the panel shows survivors
        d, body, error = self.dialog(tr("编辑资料", "Edit profile"))
        with body:
            inputs = {
                "name": ui.input(tr("姓名", "Name"), value=profile.get("name", "")),
                "phone": ui.input(tr("手机号", "Phone"), value=profile.get("phone", "")),
                "birthday": ui.input(tr("生日", "Birthday"), value=profile.get("birthday", "")),
                "anniversary": ui.input(tr("纪念日", "Anniversary"),
                                        value=profile.get("anniversary", "")),
                "notes": ui.input(tr("备注", "Notes"), value=profile.get("notes", "")),
                # Notices (crdtledger.notices): where to, and promotional consent, which
                # the member gives or withdraws (PIPL); never asked means none.
                "email": ui.input(tr("邮箱", "E-mail"), value=profile.get("email", "")),
                "promo": ui.select(
                    {"": tr("未询问（不发营销信息）", "Not asked (no promotions)"),
                     "yes": tr("同意接收营销信息", "Consents to promotions"),
                     "no": tr("已拒绝营销信息", "Opted out of promotions")},
                    value=profile.get("promo", ""), label=tr("营销信息", "Promotions")),
            }
            for key, el in inputs.items():
                el.props("outlined dense").classes("w-full").mark(f"edit-{key}")
            shown_prefs = dict(profile.get("prefs") or {})
            prefs = self._prefs_inputs(shown_prefs)

            async def confirm() -> None:
                # Text as typed, less the spaces at its ends (a phone pasted from a
                # chat was refused as no phone number for them).
                typed = {k: str(el.value or "").strip() for k, el in inputs.items()}
                changed = {k: v for k, v in typed.items() if v != profile.get(k, "")}
                # Only the preferences changed here, as the fields: each is its own key,
                # and all of them sent wrote back, over another till's edit made while
                # this dialog was open, what the cashier had not touched.
                pref_values = {k: el.value or "" for k, el in prefs.items()
                               if (el.value or "") != str(shown_prefs.get(k) or "")}
                if not changed and not pref_values:  # saved as it was: nothing to write
                    d.close()
                    ui.notify(tr("资料没有改动", "Nothing changed"))
                    return
                edit = self.shop.operation(self.op, "member.edit", member=member,
                                           prefs=pref_values or None, **changed)
                done = await self.act(self.not_merged(edit, member, survivor), "member",
                                      lambda _r: tr("资料已保存", "Profile saved"), error)
                if done is not None:
                    d.close()

            self.buttons(d, tr("保存", "Save"), confirm, "edit-ok")

    def card_dialog(self, card: dict[str, Any] | None) -> None:
        """Report the card lost, cancel the loss, or replace it (补卡) — or issue one."""
        assert self.member is not None
        member = self.member
        no = str(card["card_no"]) if card is not None else ""
        status = str(card["status"]) if card is not None else ""
        d, body, error = self.dialog(tr("会员卡", "Member card"))
        with body:
            if card is not None:
                ui.label(tr("卡号 {no}：{status}", "Card {no}: {status}", no=card["card_no"],
                            status=_card_status(str(card["status"])))).classes("text-lg")
            new_no = ui.input(tr("新卡号（刷卡或输入）", "New card number (swipe or type)")) \
                .props("outlined dense").classes("w-full").mark("new-card-no")
            new_pin = ui.input(tr("新卡密码（可不设）", "New card PIN (optional)"),
                               password=True).props("outlined dense").classes("w-full")
            with ui.row().classes("w-full justify-end gap-2"):
                ui.button(tr("关闭", "Close"), on_click=d.close).props("flat")
                if status == "active" and can("card.lost"):
                    async def lost() -> None:
                        if await self.act(self.shop.operation(self.op, "card.lost", card_no=no,
                                                              member=member),
                                          "card", lambda _r: tr("已挂失", "Reported lost"),
                                          error) is not None:
                            d.close()

                    once(ui.button(tr("挂失", "Report lost"), color="negative"), lost, d) \
                        .mark("report-lost")
                if status == "lost" and can("card.lost"):
                    async def found() -> None:
                        if await self.act(self.shop.operation(self.op, "card.found",
                                                              card_no=no, member=member),
                                          "card", lambda _r: tr("已解除挂失", "Loss cancelled"),
                                          error) is not None:
                            d.close()

                    once(ui.button(tr("解除挂失", "Card found")), found, d).props("outline")
                if status in ("active", "lost") and can("card.replace"):
                    async def replace() -> None:
                        number = str(new_no.value or "").strip()
                        if await self.act(
                                self.shop.operation(self.op, "card.replace", card_no=no,
                                                    new_no=number, pin=new_pin.value or None,
                                                    member=member),
                                "card", lambda _r: tr("已补卡 {no}", "Replaced by {no}",
                                                      no=number.upper()), error) is not None:
                            d.close()

                    once(ui.button(tr("补卡", "Replace")), replace, d).mark("replace-card")
                if status not in ("active", "lost") and can("card.issue"):
                    seen = self._cards_held(member)

                    async def issue() -> None:
                        number = str(new_no.value or "").strip()
                        if await self.act(
                                self.none_issued(self.shop.operation(
                                    self.op, "card.issue", member=member, card_no=number,
                                    pin=new_pin.value or None), member, seen),
                                "card", lambda _r: tr("已发卡 {no}", "Card {no} issued",
                                                      no=number.upper()), error) is not None:
                            d.close()

                    once(ui.button(tr("发卡", "Issue card")), issue, d).mark("issue-card")


class MemberPanel:
    """The member at a glance, the action buttons and the last visits."""

    def __init__(self, counter: Counter, member: str, data: dict[str, Any]) -> None:
        s = counter.shop
        ledger = s.ledger
        profile = data["profile"]
        bal = data["balance"]
        lvl = profile["level_info"]
        packages = data["packages"]
        card = _current_card(profile["cards"], counter.card_no)
        today = ledger.today()[5:]
        self.counter = counter

        if card is not None and card["status"] == "lost":
            ui.label(tr("⚠ 卡 {no} 已挂失！请核实身份，不要用这张卡消费。",
                        "⚠ Card {no} is reported LOST! Check who this is; do not serve on "
                        "this card.", no=card["card_no"])) \
                .classes("w-full bg-red-700 text-white text-xl font-bold p-3 rounded") \
                .mark("card-lost")
        with ui.card().classes("w-full gap-2"):
            with ui.row().classes("w-full items-center gap-3"):
                ui.label(str(profile["name"])).classes("text-3xl font-bold").mark("member-name")
                rate = str(lvl["discount"])
                ui.badge(str(lvl["name"]) + ("" if Decimal(rate) == 1 else tr(
                    " · {r} 折", " · ×{r}", r=_zhe(rate) if _is_zh() else rate)),
                    color="amber-8").classes("text-base px-2").mark("level")
                if profile.get("deleted"):
                    ui.badge(tr("已删除", "deleted"), color="grey")
                for key, icon, zh, en in (
                        ("birthday", "cake", "今天生日", "Birthday today"),
                        ("anniversary", "favorite", "今天纪念日", "Anniversary today")):
                    if str(profile.get(key, ""))[-5:] == today:
                        with ui.badge(color="pink-6").classes("text-base px-2 gap-1") \
                                .mark(f"{key}-today"):
                            ui.icon(icon)
                            ui.label(tr(zh, en))
                ui.space()
                if card is not None:
                    color = {"active": "green-7", "lost": "red-7"}.get(str(card["status"]),
                                                                         "grey-7")
                    ui.badge(tr("卡 {no} · {status}", "Card {no} · {status}", no=card["card_no"],
                                status=_card_status(str(card["status"]))), color=color) \
                        .classes("text-base px-2").mark("card-status")
                else:
                    ui.badge(tr("无卡", "no card"), color="grey-7").classes("text-base px-2")
            ui.label(f"{mask_phone(str(profile.get('phone', '')))} · "
                     + tr("开卡店：{b}", "home: {b}",
                          b=s.branch_name(str(profile.get("home", ""))))) \
                .classes("text-gray-600")
            with ui.row().classes("w-full gap-3"):
                _tile(tr("储值余额", "Stored value"), money(int(bal["cash"])), "balance-cash")
                _tile(tr("赠送余额", "Bonus"), money(int(bal["bonus"])), "balance-bonus")
                _tile(tr("积分", "Points"), str(bal["points"]), "balance-points")
                _tile(tr("套餐剩余", "Packages left"),
                      "、".join(f"{s.service_name(p['service'])} ×{p['remaining']}"
                               for p in packages) or "—", "packages")
                if data["coupons"]:
                    _tile(tr("优惠券", "Coupons"), tr("{n} 张", "{n}", n=len(data["coupons"])),
                          "coupons")
            prefs = profile.get("prefs") or {}
            shown = [f"{label}：{prefs[k]}" for k, label in (
                ("strength", tr("力度", "Strength")), ("service", tr("喜欢", "Likes")),
                ("technician", tr("技师", "Technician"))) if prefs.get(k)]
            if shown or profile.get("notes"):
                ui.label("　".join([*shown, *([str(profile["notes"])]
                                              if profile.get("notes") else [])])) \
                    .classes("text-base text-teal-900 bg-teal-50 px-3 py-1 rounded") \
                    .mark("prefs")
        self._actions(profile, card)
        self._visits(data["history"])

    def _actions(self, profile: dict[str, Any], card: dict[str, Any] | None) -> None:
        c = self.counter
        with ui.row().classes("w-full gap-3"):
            if can("debit"):
                ui.button(tr("消费", "Consume"), icon="spa", on_click=lambda: c.consume_dialog()) \
                    .props("size=lg").classes("px-8").mark("consume")
            if can("topup"):
                ui.button(tr("充值", "Top up"), icon="add_card", color="orange-8",
                          on_click=c.topup_dialog).props("size=lg").classes("px-8") \
                    .mark("topup")
            if can("sale") and c.shop.goods():
                ui.button(tr("卖商品", "Sell goods"), icon="shopping_bag",
                          on_click=lambda: c.goods_dialog()).props("outline size=lg") \
                    .mark("sell-goods")
            if can("package.sell"):
                ui.button(tr("售套餐", "Sell a package"), icon="confirmation_number",
                          on_click=c.package_dialog).props("outline size=lg") \
                    .mark("sell-package")
            if can("points.redeem"):
                ui.button(tr("积分兑换", "Redeem points"), icon="redeem",
                          on_click=c.redeem_dialog).props("outline size=lg").mark("redeem")
            if can("card.lost") or can("card.replace") or can("card.issue"):
                ui.button(tr("挂失 / 补卡", "Lost / replace") if card else tr("发卡", "Issue card"),
                          icon="credit_card", on_click=lambda: c.card_dialog(card)) \
                    .props("outline size=lg").mark("card")
            if can("member.edit"):
                ui.button(tr("编辑资料", "Edit profile"), icon="edit",
                          on_click=lambda: c.edit_dialog(profile)) \
                    .props("outline size=lg").mark("edit")

    def _visits(self, history: list[dict[str, Any]]) -> None:
        c = self.counter
        s = c.shop
        tz = localtime.zone(s.ledger)  # the chain's time-zone rule, as the CLI
        # Rights moved between branches or between merged members: no money changed.
        entries = [e for e in history if e["kind"] not in ("transfer", "merge")]
        # What is left to refund of each debit shown, as the library will refund it.
        left = {str(e["id"]): s.ledger.refund_left(str(e["id"]))
                for e in entries[:VISITS_SHOWN] if e["kind"] == "debit"}
        here = s.node.node_id
        with ui.card().classes("w-full gap-1"):
            ui.label(tr("最近记录", "Last visits")).classes("text-lg font-bold")
            if not entries:
                ui.label(tr("还没有记录", "Nothing yet")).classes("text-gray-600")
            with ui.grid(columns="auto auto 1fr auto auto auto").classes(
                    "w-full gap-x-6 gap-y-1 items-center"):
                for e in entries[:VISITS_SHOWN]:
                    when = datetime.fromtimestamp(int(e["at"]) / 1000, tz)
                    ui.label(when.strftime("%m-%d %H:%M")).classes("text-gray-600")
                    ui.label(s.branch_name(str(e["node"]))).classes("text-gray-600")
                    ui.label(_describe(s, e))
                    text, tone = _entry_amount(e)
                    ui.label(text).classes(f"text-right tabular-nums {tone}")
                    self._refund_cell(e, left.get(str(e["id"])), here)
                    # 重打小票: the receipt of any visit, printed again.
                    ui.button(icon="print", on_click=lambda e=e: c.print_receipt(
                        str(e["id"]), reprint=True)).props("flat dense round size=sm") \
                        .tooltip(tr("重打小票", "Reprint the receipt")).mark("reprint")

    def _refund_cell(self, e: dict[str, Any], left: int | None, here: str) -> None:
        """A debit's refund, offered only where the library would make it: a debit of
        this branch (the refund rights stay with the branch that made it), something
        of it left to refund, within the chain's refund period (rule refunds; past it
        a manager corrects the balance instead). Another branch's debit says where it
        is refunded; one refunded whole says so."""
        c = self.counter
        s = c.shop
        if e["kind"] != "debit" or left is None or not can("refund") \
                or s.ledger.refund_closed(str(e["id"])):  # left None: a debit of nothing
            ui.label("")
        elif left <= 0:
            ui.label(tr("已全部退款", "refunded")).classes("text-sm text-gray-500") \
                .mark("refunded")
        elif (at := s.ledger.refunds_at(e)) is None:  # hand-overs naming each other
            ui.label(tr("门店已关闭", "shop closed")).classes("text-sm text-gray-500") \
                .mark("refund-elsewhere") \
                .tooltip(tr("这笔消费的门店已关闭，没有门店可以退款；请经理调整会员余额。",
                            "This sale's shop has closed and no branch can refund it; a "
                            "manager corrects the member's balance instead."))
        elif at != here:
            # A closed shop's sales are refunded at the branch it handed over to.
            ui.label(tr("在{b}退款", "refund at {b}", b=s.branch_name(at))) \
                .classes("text-sm text-gray-500").mark("refund-elsewhere") \
                .tooltip(tr("这笔消费是在{b}做的，只能在那里退款。",
                            "This was sold at {b}; only that branch can refund it.",
                            b=s.branch_name(str(e["node"]))) if at == str(e["node"]) else
                         tr("这笔消费是在{s}做的，该店已关闭，由{b}退款。",
                            "This was sold at {s}, which has closed; {b} refunds it.",
                            s=s.branch_name(str(e["node"])), b=s.branch_name(at)))
        else:
            rest = left
            ui.button(tr("退款", "Refund"), on_click=lambda: c.refund_dialog(e, rest)) \
                .props("flat dense color=negative").classes("text-sm py-0").mark("refund")


def _approval(shown: ui.column, name: ui.input, password: ui.input) -> dict[str, str] | None:
    """The approval typed in a dialog's approver boxes, if shown and filled; the
    password goes with the attempt (one approval, one attempt: layout.one_approval)."""
    typed = (str(name.value or ""), str(password.value or ""))
    password.set_value("")
    if not (shown.visible and all(typed)):
        return None
    return {"name": typed[0], "password": typed[1]}


def _money_or_none(text: Any) -> int | None:
    try:
        return parse_money(text or "")
    except InvalidAmount:
        return None


def _printer_trouble(done: receipts.Printed) -> str:
    """Why a receipt did not print, in the session's language where it is known."""
    where = done.printer.split(",")[0]
    if done.code == "refused":
        return tr("打印机 {where} 拒绝连接（打印机开着吗？）",
                  "the printer at {where} refused the connection (is it switched on?)",
                  where=where)
    if done.code == "timeout":
        return tr("打印机 {where} 没有响应", "the printer at {where} did not answer",
                  where=where)
    return done.reason


def _tile(label: str, value: str, marker: str) -> None:
    with ui.column().classes("gap-0 px-4 py-2 bg-grey-2 rounded min-w-36"):
        ui.label(label).classes("text-sm text-gray-600")
        ui.label(value).classes("text-2xl font-bold").mark(marker)


def _current_card(cards: list[dict[str, Any]], swiped: str | None) -> dict[str, Any] | None:
    """The card swiped, else the member's active (or lost) card, else the newest."""
    for c in cards:
        if swiped and c["card_no"] == swiped.upper():
            return c
    for status in ("active", "lost"):
        found = [c for c in cards if c["status"] == status]
        if found:
            return found[-1]
    return cards[-1] if cards else None


def _card_status(status: str) -> str:
    return {"active": tr("正常", "active"), "lost": tr("已挂失", "LOST"),
            "replaced": tr("已补换", "replaced"), "returned": tr("已退卡", "returned")} \
        .get(status, status)


def _describe(s: Shop, e: dict[str, Any]) -> str:
    kind = str(e["kind"])
    names = {"topup": tr("充值", "top-up"), "debit": tr("消费", "service"),
             "refund": tr("退款", "refund"), "redeem": tr("积分兑换", "points redeemed"),
             "convert": tr("积分转储值", "points to value"), "correction": tr("调整", "correction"),
             "expiry": tr("积分过期", "points expired"), "package": tr("购买套餐", "package"),
             "card": tr("发卡", "card issued"), "coupon": tr("获得优惠券", "coupon received"),
             "coupon_use": tr("使用优惠券", "coupon used"),
             "transfer": tr("储值权利转移", "rights moved"),
             "merge": tr("会员合并", "members merged"),
             "stock": tr("库存变动", "stock moved"),
             "referral": tr("推荐登记", "referral recorded"),
             "approval": tr("审批", "approval given"),
             "reward": tr("推荐奖励", "referral reward"),
             "checkin": tr("签到", "check-in"),
             "exit": tr("退会申请", "exit applied for"),
             "exit_settle": tr("退会结算", "exit settled"),
             "technician": tr("技师资料", "technician"),
             "booking": tr("预约", "appointment"),
             "booking_decision": tr("预约处理", "appointment decided"),
             "booking_cancel": tr("预约取消", "appointment cancelled"),
             "redaction": tr("个人资料已抹除", "personal data erased")}
    text = names.get(kind, kind)
    step = str(e.get("step") or "")
    if kind == "approval":  # of a referral (level 1 or 2) or of an exit or return
        text = {"1": tr("推荐审批（一级）", "referral approved (level 1)"),
                "2": tr("推荐审批（二级）", "referral approved (level 2)"),
                "approve": tr("审批通过", "approved"),
                "reject": tr("审批驳回", "rejected")}.get(step, text)
    if kind == "reward":  # given for a referral, taken back, or given again
        reason = str(e.get("reason") or "")
        text = {"void": tr("推荐奖励收回", "referral reward taken back"),
                "restored": tr("推荐奖励恢复", "referral reward given again")}.get(reason, text)
    if kind == "exit" and step == "return":
        text = tr("重新入会申请", "return applied for")
    if kind == "exit_settle":
        text += {"refund": tr("：退还储值", ": stored value paid back"),
                 "forfeit": tr("：余额作废", ": balance forfeited")}.get(step, "")
    if kind == "checkin":
        text += f" · {_activity_name(s, str(e.get('activity') or ''))}"
        if e.get("ref"):  # the reversal of a surplus check-in (crdtledger.membership)
            text += tr("（撤销）", " (reversed)")
    if kind == "expiry" and _given_back(e):
        text = tr("积分退回", "points given back")
    if kind == "debit" and e.get("goods"):
        text = tr("商品", "goods")
    if kind == "refund" and e.get("kept"):  # for the sale's points spent since
        text += tr("（已用积分扣 {k}）", " ({k} kept for points spent)", k=money(int(e["kept"])))
    if kind == "coupon":
        terms = coupon_terms(s, e.get("amount"), e.get("percent"), e.get("service"),
                             e.get("min_spend"))
        until = tr("，至 {d}", ", until {d}", d=e["valid_to"]) if e.get("valid_to") else ""
        return f"{text} · {terms}{until}"
    if e.get("goods"):
        text += f" · {s.goods_name(str(e['goods']))}"
        if int(e.get("qty") or 1) > 1:
            text += f" ×{e['qty']}"
    elif e.get("service"):
        text += f" · {s.service_name(str(e['service']))}"
        if int(e.get("qty") or 1) > 1:
            text += f" ×{e['qty']}"
    if kind == "debit" and e.get("pay") == "package":
        text += tr("（套餐）", " (package)")
    elif kind in ("debit", "topup", "package") and e.get("pay"):
        # How it was paid: from the card (储值) or at the till, and by what.
        text += f" · {s.pay_label(str(e['pay']))}"
    elif kind == "refund" and int(e.get("amount") or 0) > 0:
        # Where the money went back: onto the card, or at the till by the sale's own
        # method (the refund names only its sale): a wechat sale's refund read as
        # stored value put back.
        text += f" · {_refunded_by(s, e)}"
    if kind == "topup" and e.get("bonus"):
        text += tr("，送 {b}", ", bonus {b}", b=money(int(e["bonus"])))
    if kind == "redeem" and e.get("gift") and not e.get("goods"):
        text += f" · {e['gift']}"
    if e.get("coupon") and e.get("off"):
        text += tr("，券减 {off}", ", coupon {off} off", off=money(int(e["off"])))
    return text


def _refunded_by(s: Shop, e: dict[str, Any]) -> str:
    """How a refund's money went back: to the card's stored value, or by the method
    its sale was paid with at the till."""
    if _onto_card(e):
        return tr("退回储值", "back to stored value")
    pay = views.refund_paid_by(s.ledger, e)
    if not pay or pay in ("stored", "package"):
        return tr("收银台退回", "paid back at the till")
    return tr("{m}（原路退回）", "{m} (paid back the way it was paid)", m=s.pay_label(pay))


def _onto_card(e: dict[str, Any]) -> bool:
    """Did this entry put money on the card (stored value or bonus)?"""
    return any(p in ("cash", "bonus") and int(c) > 0 for p, _n, c in e.get("deltas", ()))


def _activity_name(s: Shop, code: str) -> str:
    """A check-in activity's name from the rule `checkin`, else its code."""
    acts = s.ledger.rule("checkin")
    a = acts.get(code) if isinstance(acts, dict) else None
    return str(a.get("name") or code) if isinstance(a, dict) else code


def _coupon_state(s: Shop, v: dict[str, Any]) -> str:
    """Why a coupon (a coupon.list view) is not among those a member can use now."""
    status = str(v["status"])
    if status == "redeemed":
        return tr("已于 {on} 在{at}使用", "used on {on} at {at}", on=v["on"],
                  at=s.branch_name(str(v["at"])))
    if status == "expired":
        return tr("已于 {d} 过期", "expired on {d}", d=v["valid_to"])
    if status == "not_yet_valid":
        return tr("{d} 起才能用", "valid from {d}", d=v["valid_from"])
    return tr("不是这位会员的券", "it is another member's")


def coupon_terms(s: Shop, off: Any, percent: Any, service: Any, min_spend: Any) -> str:
    """What a coupon gives, as the desk says it: ¥10.00 off, 8.5 折 (15% off), a
    free service; with its minimum spend."""
    if percent:
        pct = int(percent)
        what = tr("{zhe} 折", "{p}% off", zhe=f"{(100 - pct) / 10:g}", p=pct)
    elif service:
        what = tr("免费 {svc}", "a free {svc}", svc=s.service_name(str(service)))
    else:
        what = tr("减 {off}", "{off} off", off=money(int(off or 0)))
    if min_spend:
        what = tr("满 {m} {what}", "{what} on {m} or more", m=money(int(min_spend)),
                  what=what)
    return what


def _given_back(e: dict[str, Any]) -> bool:
    """A write-off's give-back (crdtledger.payments.give_back_write_offs): an `expiry`
    that raises points, which must not read as more points expired."""
    return any(p == "points" and c > 0 for p, _n, c in e.get("deltas", ()))


def _entry_amount(e: dict[str, Any]) -> tuple[str, str]:
    """What an entry moved, and its colour: money in green, money spent plain."""
    kind, amount = e["kind"], int(e.get("amount", 0))
    if kind in ("coupon", "coupon_use"):  # a coupon's terms, not money that moved
        return "", ""
    if kind == "expiry" and _given_back(e):
        return tr("+{n} 积分", "+{n} pts", n=e.get("points", 0)), "text-green-8"
    if kind in ("redeem", "expiry"):
        return tr("-{n} 积分", "-{n} pts", n=e.get("points", 0)), ""
    if kind == "debit" and e.get("pay") == "package":
        return tr("{n} 次", "{n} use(s)", n=e.get("qty", 1)), ""
    if kind in ("reward", "checkin"):  # points or bonus given (or taken back)
        moved: dict[str, int] = {}
        for p, _n, c in e.get("deltas", ()):
            moved[p] = moved.get(p, 0) + int(c)
        if moved.get("points"):
            n = moved["points"]
            return (tr("+{n} 积分", "+{n} pts", n=n), "text-green-8") if n > 0 else \
                (tr("-{n} 积分", "-{n} pts", n=-n), "")
        if moved.get("bonus"):
            n = moved["bonus"]
            return (f"+{money(n)}", "text-green-8") if n > 0 else (f"-{money(-n)}", "")
        return "", ""
    if kind == "correction":  # signed: its deltas say which way (amount is its size)
        return _corrected(e)
    if kind == "exit_settle":  # the balance taken off the card (paid back, or forfeit)
        return (f"-{money(amount)}", "") if amount else ("", "")
    if not amount:
        return "", ""
    if kind in ("debit", "package") and e.get("pay") == "stored":  # off the card
        return f"-{money(amount)}", ""
    if kind in ("topup", "convert") or (kind == "refund" and _onto_card(e)):
        return f"+{money(amount)}", "text-green-8"
    # A refund of a sale paid at the till went back there (_refunded_by): the card
    # is untouched, as by the sale.
    # Paid at the till (a service, a package, a card fee): the card is untouched.
    return money(amount), "text-gray-600"


def _corrected(e: dict[str, Any]) -> tuple[str, str]:
    """A correction's change of the purse it corrected, with its sign, as the other
    rows say theirs: "+¥5.00" green, "-¥5.00" plain, "-300 积分". Its `amount` has no
    sign: a correction taking ¥5.00 off read "¥5.00", grey, like a sale paid at the
    till."""
    moved: dict[str, int] = {}
    for p, _n, c in e.get("deltas", ()):
        moved[str(p)] = moved.get(str(p), 0) + int(c)
    purse, n = next(((p, c) for p, c in moved.items() if c), ("", 0))
    if not n:
        return "", ""
    if purse in ("cash", "bonus"):
        said = money(abs(n))
    elif purse == "points":
        said = tr("{n} 积分", "{n} pts", n=abs(n))
    elif purse.startswith("pkg:"):
        said = tr("{n} 次", "{n} use(s)", n=abs(n))
    else:  # a coupon (cpn:ID): corrections take coupons away only
        said = tr("{n} 张券", "{n} coupon(s)", n=abs(n))
    return (f"+{said}", "text-green-8") if n > 0 else (f"-{said}", "")


def _is_zh() -> bool:
    return tr("zh", "en") == "zh"


def _zhe(rate: str) -> str:
    """0.95 -> "9.5", 0.9 -> "9": how Chinese shops write a discount (折)."""
    tenths = float(rate) * 10
    return f"{tenths:g}"


