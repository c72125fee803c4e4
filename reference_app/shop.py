"""The shop as the app sees it: one branch node, this process's, and who is at the desk.

The app lives inside the node's process and on its event loop, so it never opens
the store a second time: reads go straight to `shop().ledger` on the loop, writes go
through `Shop.run` (= `Node.perform`), which also fetches escrow rights from the
branches holding them before giving up.

Card readers report from their own threads; `Shop.reader_event` hands each event to
the loop, where every open counter page that listens receives it.

The store's changes reach the pages the same way: the shop subscribes once to the
ledger (every committed record, this till's and every other branch's as sync brings
them) and, a moment after a burst of them, asks each open page to look again
(`Shop.watchers`). Nothing reads the store on a timer.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, TypeVar
from weakref import WeakKeyDictionary

from nicegui import app, context
from nicegui.client import Client

from crdtledger import operations, views
from crdtledger.auth import PasswordChanged, TooManyAttempts
from crdtledger.bookings import BookingRefused
from crdtledger.coupons import (
    CouponElsewhere,
    CouponExpired,
    CouponMinSpend,
    CouponNotYetValid,
    CouponOtherMember,
    CouponRedeemed,
    CouponRefused,
)
from crdtledger.errors import (
    ApprovalRequired,
    CardInactive,
    CardLost,
    ClockSkew,
    InsufficientFunds,
    InvalidAmount,
    InvalidInput,
    LedgerError,
    NotCaughtUp,
    NotFound,
    PermissionDenied,
    RightsElsewhere,
    StoreLocked,
    WrongPin,
)
from crdtledger.goods import OutOfStock
from crdtledger.ledger import Ledger
from crdtledger.model import DEFAULT_RULES
from crdtledger.money import format_purse, half_width
from crdtledger.rules import MAX_POINTS_PER_YUAN
from crdtledger.throttle import LoginThrottle
from peer.node import Node
from reference_app.i18n import money, parse_money, tr
from reference_app.readers import Reader, ReaderEvent, start_readers

log = logging.getLogger("reference_app")
T = TypeVar("T")
Listener = Callable[[ReaderEvent], None]
Watcher = Callable[[], None]
# After the first record of a burst (a catch-up brings thousands, a sale a few), the
# pages look again once: a page re-reads its member once per burst, not per record.
CHANGE_SETTLE_S = 0.25


class ReaderPages:
    """The open pages a card reader of this node's own machine (PC/SC) reports to, in
    the order they hold it: a card or code goes to one page, the last. A swipe went to
    every counter page in every browser: another till's panel switched to the swiped
    member under its cashier (its next top-up went to that member), a PIN dialog
    replaced a half-typed dialog there, and a check-in screen checked in every member
    who paid. A page opened takes the reader when nobody holds it, when its browser
    holds it (the cashier moved to another page), or when it runs on the reader's
    machine and the holder does not; any page takes it by `claim` (the 读卡 button).
    A keyboard-wedge reader types into its own browser's page and is not concerned."""

    def __init__(self) -> None:
        # page -> (its browser's id, opened on this machine); the last holds the reader.
        self._pages: dict[Listener, tuple[str, bool]] = {}

    def open(self, page: Listener, browser: str, here: bool) -> None:
        if page in self._pages:  # connected again: it keeps its place
            return
        holder = next(reversed(self._pages.values()), None)
        if holder is None or holder[0] == browser or (here and not holder[1]):
            self._pages[page] = (browser, here)
        else:  # below the holder: it holds the reader once those above it have gone
            self._pages = {page: (browser, here), **self._pages}

    def discard(self, page: Listener) -> None:
        self._pages.pop(page, None)

    def claim(self, page: Listener) -> None:
        if page in self._pages:
            self._pages[page] = self._pages.pop(page)

    def holds(self, page: Listener) -> bool:
        return next(reversed(self._pages), None) is page

    def holder(self) -> list[Listener]:
        return list(self._pages)[-1:]

    def __iter__(self) -> Iterator[Listener]:
        return iter(list(self._pages))


class TermsChanged(LedgerError):
    """A dialog's figures no longer hold: what they came from changed (the counter's
    `priced`, `held_by`, `none_issued`, `not_merged`). Its text is already the
    cashier's sentence, said as it is."""

    code = "terms_changed"


class Shop:
    def __init__(self, node: Node, readers: Sequence[Reader] | None = None) -> None:
        self.node = node
        # None: whatever readers this machine has (started with the node); tests give theirs.
        self.readers: list[Reader] = list(readers) if readers is not None else []
        self._find_readers = readers is None
        self.listeners = ReaderPages()
        # Open pages that show something the store's changes may alter (the counter's
        # member): called on the loop after records committed (Shop._on_commit).
        self.watchers: set[Watcher] = set()
        self._change_due = False
        self._loop: asyncio.AbstractEventLoop | None = None
        # Failed logins at the login page, per operator name and browser address: the
        # node's own count, shared with its HTTP API.
        self.logins: LoginThrottle = node.logins

    @property
    def ledger(self) -> Ledger:
        return self.node.ledger

    async def run(self, op: Callable[[], T], name: str) -> T:
        """One ledger write, with the rights it lacks fetched from other branches."""
        return await self.node.perform(op, name)

    def operation(self, operator: str, name: str, /, **params: Any) -> Callable[[], Any]:
        """An operation of the table (crdtledger.operations), for `run`: the counter's
        writes take the same parameters, checks and permissions as the HTTP API and
        the command line. A parameter given as None is left out (its default holds)."""
        given = {k: v for k, v in params.items() if v is not None}
        return lambda: operations.run(self.ledger, operator, name, given)

    # --- lifecycle (NiceGUI's startup and shutdown, on the loop) ----------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        await self.node.start()
        self.ledger.subscribe(self._on_commit)
        if self._find_readers:
            self.readers = start_readers(self.reader_event)
            return
        for reader in self.readers:
            reader.start(self.reader_event)

    async def stop(self) -> None:
        for reader in self.readers:
            reader.stop()
        await self.node.stop()

    # --- the store's changes ------------------------------------------------------

    def _on_commit(self, _record: object, _origin: object) -> None:
        """Every committed record (local or remote), on the loop that owns the ledger:
        only notes that the pages should look again, so a catch-up costs nothing here."""
        loop = self._loop
        if self._change_due or not self.watchers or loop is None or loop.is_closed():
            return
        self._change_due = True
        loop.call_later(CHANGE_SETTLE_S, self._changed)

    def _changed(self) -> None:
        self._change_due = False
        for watcher in list(self.watchers):
            try:
                watcher()
            except Exception:  # one broken page must not blind the others
                log.exception("refreshing a page after a change")

    # --- card readers -----------------------------------------------------------

    def reader_event(self, event: ReaderEvent) -> None:
        """Called by readers, from any thread: run the listeners on the loop."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            on_loop = asyncio.get_running_loop() is loop
        except RuntimeError:
            on_loop = False
        if on_loop:
            self._dispatch(event)
        else:
            loop.call_soon_threadsafe(self._dispatch, event)

    def _dispatch(self, event: ReaderEvent) -> None:
        # A card or a code goes to the page holding the reader alone; a status to all.
        pages = list(self.listeners) if event.kind == "status" else self.listeners.holder()
        for listener in pages:
            try:
                listener(event)
            except Exception:  # one broken page must not deafen the others
                log.exception("reader event %s", event)

    def reader_status(self) -> list[str]:
        """Each reader's state, as a sentence in the session's language."""
        return [tr(r.status_zh, r.status) for r in self.readers]

    # --- names ------------------------------------------------------------------

    def branch_name(self, node_id: str) -> str:
        """A branch's display name from the replicated rule `branches`, else its id."""
        names = self.ledger.rule("branches")
        name = names.get(node_id) if isinstance(names, dict) else None
        return str(name) if name else node_id

    def operator_name(self, operator_id: str) -> str:
        if operator_id == self.ledger.owner:
            return tr("店主", "owner")
        if operator_id.startswith("self@"):  # model.self_service_of
            return tr("会员自助", "member self-service")
        return views.operator_name(self.ledger, operator_id) or operator_id

    def service_name(self, code: str | None) -> str:
        if not code:
            return ""
        svc = self.ledger.rule("services").get(code)
        return str(svc.get("name") or code) if isinstance(svc, dict) else code

    def goods(self) -> dict[str, dict[str, Any]]:
        """The goods catalogue in force (code -> item), empty before any was added."""
        return self.ledger.catalogue()

    def find_goods(self, code: str) -> dict[str, Any] | None:
        """A goods item by its code (any case) or barcode, as a scanner types them."""
        code = code.strip()
        for item in self.goods().values():
            if code and (str(item["code"]).upper() == code.upper()
                         or item.get("barcode") == code):
                return item
        return None

    def goods_name(self, code: str | None) -> str:
        item = self.goods().get(code or "")
        return str(item["name"]) if item else code or ""

    def pay_methods(self) -> dict[str, str]:
        """The till's payment methods in force (code -> name), the default first."""
        return {str(m["code"]): self.pay_label(str(m["code"]))
                for m in self.ledger.rule("payment_methods")}

    def pay_label(self, code: str | None) -> str:
        """How something was paid, as the counter says it: from stored value, from a
        package, or by a method of the rule (of the default rule, for an old entry
        whose method the chain has since dropped; else its code)."""
        if code == "stored":
            return tr("储值", "stored value")
        if code == "package":
            return tr("套餐", "package")
        for m in [*self.ledger.rule("payment_methods"), *DEFAULT_RULES["payment_methods"]]:
            if m.get("code") == code:
                return tr(str(m.get("name_zh") or code), str(m.get("name_en") or code))
        return code or ""

    # --- refusals ---------------------------------------------------------------

    def refusal(self, e: LedgerError) -> str:
        """A refusal as a plain sentence the cashier can act on, in the session's language."""
        if isinstance(e, TermsChanged):  # the counter's own words: no "操作被拒绝：" before
            return str(e)
        if isinstance(e, CouponElsewhere):
            return self._coupon_elsewhere(e)
        if isinstance(e, RightsElsewhere):
            return self._rights_elsewhere(e)
        if isinstance(e, CouponRefused):
            return _coupon_refused(e)
        if isinstance(e, OutOfStock):  # the counter names the item (Shop.out_of_stock)
            return tr("库存不足：本店只有 {have}，本次要 {want}。",
                      "Not enough in stock: this branch has {have}, this needs {want}.",
                      have=e.balance, want=e.wanted)
        if isinstance(e, InsufficientFunds):
            if e.purse == "package uses":
                return tr("该会员没有这项服务可用的套餐次数。",
                          "The member has no package uses left for this service.")
            return tr("余额不足：{purse}余额 {have}，本次需要 {want}。",
                      "Not enough {purse}: the balance is {have}, this needs {want}.",
                      purse=purse_label(e.purse), have=amount(e.purse, e.balance),
                      want=amount(e.purse, e.wanted))
        if isinstance(e, CardLost):
            return tr("此卡已挂失，不能使用。请核实会员身份后补卡，或在找到卡后解除挂失。",
                      "This card is reported lost and cannot be used. Check the member's "
                      "identity and replace the card, or cancel the loss if it was found.")
        if isinstance(e, CardInactive):
            return tr("此卡已停用（已补换、已退或已过期）：请使用会员的新卡，或按手机号查找。",
                      "This card is no longer valid (replaced, returned or expired): use "
                      "the member's new card or search by phone.")
        if isinstance(e, WrongPin):
            return tr("卡密码不对，请会员重新输入。",
                      "Wrong card PIN; ask the member to try again.")
        if isinstance(e, ApprovalRequired):
            return _approval_refused(e)
        if isinstance(e, PasswordChanged):
            return tr("密码刚刚被修改，请用新密码再试。",
                      "The password was just changed; try again with the new one.")
        if isinstance(e, TooManyAttempts):
            # A PermissionDenied to the library: it read "您没有这项操作的权限，请找店长",
            # to a cashier whose member had typed a wrong PIN a few times.
            if str(e).startswith("too many wrong PINs"):
                return tr("卡密码错误次数太多：请 {n} 秒后再让会员输入。",
                          "Too many wrong PINs for this card: let the member try again in "
                          "{n} s.", n=e.retry_after)
            return tr("密码错误次数太多：请 {n} 秒后再试。",
                      "Too many wrong passwords: try again in {n} s.", n=e.retry_after)
        if isinstance(e, PermissionDenied):
            if "wrong operator name or password" in str(e):
                return tr("姓名或密码不对。", "Wrong name or password.")
            if "another operator must" in str(e) or "cannot change its own roles" in str(e):
                # Allowed, but not to this operator for this item: not "ask a manager"
                # (an owner read it when deciding an exit they had applied for).
                return tr("这一步要由另一位操作员来做：不能决定或修改自己经办的事项。",
                          "Another operator must do this: nobody decides or changes "
                          "what they did themselves.")
            if str(e) == "nobody is logged in":
                return tr("这一页的登录已经结束（在另一个标签页退出或换了操作员，或密码已重置）："
                          "刚才的操作没有执行，请刷新页面、登录后重新操作。",
                          "This page's login has ended (logged out or another operator "
                          "logged in in another tab, or the password was reset): nothing "
                          "was done. Reload the page, log in and do it again.")
            return tr("您没有这项操作的权限，请找店长。",
                      "You are not allowed to do this; ask a manager.")
        if isinstance(e, InvalidAmount) and str(e).startswith("amount"):
            # A typed amount of money; other whole numbers (points, a check-in's times a
            # day, uses) are said as they are refused, below: "金额" misnamed them.
            if m := _FULL_WIDTH_AMOUNT.search(str(e)):  # an input method's "１２．５０"
                return tr("金额请用半角数字输入，例如 {a}。", "Type the amount in half-width "
                          "digits, e.g. {a}.", a=m[1])
            return tr("金额不对：请输入大于零、最多两位小数的金额，例如 12.34。",
                      "Invalid amount: enter an amount above zero with at most two "
                      "decimals, e.g. 12.34.")
        if isinstance(e, NotFound):
            return tr("找不到：{what}", "Not found: {what}", what=_detail(e))
        if isinstance(e, InvalidInput | InvalidAmount):
            return self._referral_refused(e) or _invalid_input(e) or tr(
                "输入有误：{what}", "Please check the input: {what}", what=_detail(e))
        if isinstance(e, ClockSkew):
            return tr("本机时钟与其他分店相差太大，请校准电脑时间。",
                      "This computer's clock is far off the other branches'; set the time.")
        if isinstance(e, StoreLocked):
            return tr("数据正被其他程序占用，请稍后再试。",
                      "The data is busy in another program; try again in a moment.")
        if said := _clock_refused(e):
            return said
        if isinstance(e, NotCaughtUp) and (said := self._may_not_write(str(e))):
            return said
        return tr("操作被拒绝：{what}", "Refused: {what}", what=_detail(e))

    def _may_not_write(self, text: str) -> str | None:
        """Why this PC may not write at all (LedgerBase._check_may_write, the restore's
        waits of Replica.peer_caught_up), said to the cashier with what to do: the
        library's English reached the counter ("操作被拒绝：restored from a backup ...").
        None: not one of those."""
        if _REVOKED.fullmatch(text):
            return tr("本店电脑的证书已被总部吊销：本机不能再收银或记账。请联系总部为新电脑登记"
                      "新的分店编号，或为本机续期证书（crdtledger chain renew）。",
                      "The chain revoked this branch's certificate: this PC can no longer "
                      "sell or write. Ask the head office to enrol a new PC under a new "
                      "branch id, or to renew this one (crdtledger chain renew).")
        if _ANOTHER_PC.fullmatch(text):
            return tr("另一台电脑正以本店的身份收银（同一份备份恢复出的电脑，或本机由其备份恢复的"
                      "那台）：两台电脑不能同时作为一家分店收银，本机已停止。请到那台电脑上收银；"
                      "若那台已永久停用，请联系店长确认后再在本机收银。",
                      "Another PC sells as this branch (one restored from the same backup, "
                      "or the PC this one was restored from): two PCs must never sell as "
                      "one branch, so this one has stopped. Sell at the other; if it is gone "
                      "for good, ask a manager to confirm it before selling here.")
        if _FORKED.fullmatch(text):
            return tr("本店的数据出现了两份不同的历史（备份恢复或复制的硬盘）：各分店已停止接收"
                      "本店的记录，本机不能再收银。请联系总部重新登记本机。",
                      "This branch wrote two different histories (a restored backup or a "
                      "copied disk): the chain no longer takes its writes and this PC cannot "
                      "sell. Ask the head office to enrol it again.")
        m = _RESTORED.fullmatch(text)
        if m is None:
            return None
        lead = tr("本店电脑由 {when} 的备份恢复，暂不能收银：",
                  "This PC was restored from a backup of {when} and cannot sell yet: ",
                  when=m[1])
        return lead + self._restore_wait(m[2])

    def _restore_wait(self, why: str) -> str:
        """What a restored branch waits for (Replica.peer_caught_up's sentences)."""
        if m := _WAIT_SENT.fullmatch(why):
            return tr("本店的记录曾送出到第 {sent} 条，{who}只有到第 {seq} 条。要连上持有全部记录"
                      "的分店（或导入它的同步文件）才能继续；请联系店长。",
                      "its records had left this PC as far as number {sent}, and {who_en} "
                      "holds them only to {seq}. Connect to a branch that holds them all (or "
                      "import its sync file) first; ask a manager.",
                      sent=m[1], seq=m[3], **self._who(m[2]))
        if m := _WAIT_OLD_FILE.fullmatch(why):
            return tr("导入的{who}同步文件是在本店恢复之前做的，说明不了备份之后的记录。请让该"
                      "分店现在做一份同步文件再导入，或直接连上它；请联系店长。",
                      "the sync file of {who_en} was made before this branch was restored "
                      "and cannot show what came after the backup. Import a file that "
                      "branch makes now, or connect to it; ask a manager.", **self._who(m[1]))
        if m := _WAIT_FILE_AHEAD.fullmatch(why):
            return tr("导入的{who}同步文件标的时间（{made}）比本机时钟还晚，两台电脑中有一台时钟"
                      "不对。请校准时钟后让该分店重做一份同步文件再导入，或直接连上它；请联系店长。",
                      "the sync file of {who_en} says it was made {made}, later than this "
                      "PC's clock: one of the two clocks is wrong. Set them right and import "
                      "a file made then, or connect to that branch; ask a manager.",
                      made=m[2], **self._who(m[1]))
        if m := _WAIT_NOT_HEARD.fullmatch(why):
            others = [self.branch_name(n) for n in m[2].split(", ")]
            return tr("{who}在备份之后没有收到过本店的记录，还要等{others}确认。请连上这些分店"
                      "（或导入它们的同步文件）；请检查网络，或联系店长。",
                      "{who_en} has heard nothing from this branch since the backup; "
                      "{others_en} must still say so. Connect to them (or import their "
                      "sync files); check the network, or ask a manager.",
                      others=tr("、", ", ").join(others),
                      others_en=", ".join(others), **self._who(m[1]))
        if m := _WAIT_BEHIND.fullmatch(why):
            return tr("正在从{who}取回备份之后本店的记录（本机已有 {ours} 条，共 {seq} 条）。请保持"
                      "网络连接，取完即可收银。",
                      "fetching what it wrote after the backup from {who_en} ({ours} of "
                      "{seq} records here). Stay connected: the counter sells once they "
                      "are all here.", ours=m[3], seq=m[2], **self._who(m[1]))
        if _WAIT_OTHER_RESTORE.fullmatch(why):
            return tr("另一台电脑已由同一份备份恢复为本店，并已在收银：两台电脑不能同时作为一家"
                      "分店收银。请到那台电脑上收银；若那台已永久停用，请联系店长确认后再在本机收银。",
                      "another PC restored from this backup already sells as this branch: "
                      "two PCs must never sell as one branch. Sell at that PC; if it is "
                      "gone for good, ask a manager to confirm it before selling here.")
        if m := _WAIT_FORK.fullmatch(why):
            return tr("{who}持有本店另一份不同的历史（分叉），不能据此恢复收银。请联系总部。",
                      "{who_en} holds another history of this branch's records (a fork), "
                      "which cannot show it caught up. Ask the head office.", **self._who(m[1]))
        # No branch heard from yet (LedgerBase._check_may_write), or a wait said otherwise.
        return tr("要先连上其他分店（或导入其他分店的同步文件），取回备份之后本店记下的账，才能"
                  "继续。请检查网络，或联系店长。",
                  "it must first reach another branch (or import a branch's sync file) and "
                  "fetch back what this branch wrote after the backup. Check the network, "
                  "or ask a manager.")

    def _who(self, who: str) -> dict[str, str]:
        """The branch a restore wait names ("branch SH02"), by its display name."""
        node = who.removeprefix("branch ") if who.startswith("branch ") else None
        if node is None:
            return {"who": "刚连上的分店", "who_en": "the branch heard from"}
        name = self.branch_name(node)
        return {"who": f"分店「{name}」", "who_en": f"branch {name}"}

    def _referral_refused(self, e: LedgerError) -> str | None:
        """A second referral of a member, said with the members' names: the library
        names them by id, which the cashier never sees."""
        m = _REFERRED.fullmatch(str(e))
        if m is None:
            return None
        names = views.member_names(self.ledger, [m[1], m[2]])
        return tr("{member} 已经由 {referrer} 推荐过了：每位会员只能登记一次推荐。",
                  "{member} was referred already, by {referrer}: a member is referred "
                  "once.", member=names.get(m[1]) or tr("该会员", "the member"),
                  referrer=names.get(m[2]) or tr("另一位会员", "another member"))

    def short_of_stored(self, e: LedgerError, member: str | None) -> str | None:
        """A sale from stored value refused for want of it, with what the figure is:
        the library's is the member's stored value and bonus together (it spends
        cash first, then bonus: payments._spend), which the counter called 储值余额
        while the member's tile showed the stored value alone. None: not that."""
        if not isinstance(e, InsufficientFunds) or e.purse != "cash" or member is None:
            return None
        try:
            bal = self.ledger.balance(member)
        except LedgerError:
            return None
        cash, bonus = int(bal["cash"]), int(bal["bonus"])
        if cash + bonus != e.balance:  # not the figure of this member's purses
            return None
        if not bonus:
            return tr("余额不足：储值余额 {have}，本次需要 {want}。",
                      "Not enough stored value: the balance is {have}, this needs {want}.",
                      have=money(cash), want=money(e.wanted))
        return tr("余额不足：储值 {cash} 加赠送 {bonus}，共 {have}，本次需要 {want}。",
                  "Not enough stored value: {cash} plus {bonus} bonus, {have} in all; "
                  "this needs {want}.", cash=money(cash), bonus=money(bonus),
                  have=money(e.balance), want=money(e.wanted))

    def out_of_stock(self, e: LedgerError, item: Mapping[str, Any]) -> str | None:
        """A sale refused for want of stock, naming the item and where there is some
        (units never move by themselves: another branch ships them, 调拨)."""
        if not isinstance(e, OutOfStock) or e.purse != "stock":
            return None
        unit = str(item.get("unit") or "")
        held = self.ledger.stock_held(item)
        others = tr("、", ", ").join(f"{self.branch_name(n)} {q}{unit}"
                                    for n, q in held.items() if n != self.node.node_id and q > 0)
        return tr("库存不足：{name}，本店只有 {have}{unit}，本次要 {want}{unit}。{hint}",
                  "Not enough {name} in stock: this branch has {have}{unit}, this needs "
                  "{want}{unit}. {hint}", name=item["name"], have=e.balance, want=e.wanted,
                  unit=unit, hint=tr("其他分店有：{o}（需先调拨过来）。", "Other branches have "
                                     "{o} (to be shipped here first).", o=others)
                  if others else "")

    def _coupon_elsewhere(self, e: CouponElsewhere) -> str:
        connected = set(self.node.connected())
        where = tr("、", ", ").join(
            tr("{branch}（{state}）", "{branch} ({state})", branch=self.branch_name(n),
               state=_reach(n in connected)) for n in e.holders) or tr("别的分店", "another branch")
        return tr("这张优惠券在{where}：只有持有它的分店能用，本店没能从那里取来。"
                  "等连上后再试，或到那里使用。",
                  "This coupon is held at {where}: only the branch holding it may take it, "
                  "and this branch could not get it from there. Try again once connected, "
                  "or use it there.", where=where)

    def _rights_elsewhere(self, e: RightsElsewhere) -> str:
        connected = set(self.node.connected())
        if e.purse == "refund":  # a refund belongs to the branch that made the debit
            branch = e.branch or ""
            return tr("这笔消费是在{branch}做的，只能在那里退款（{state}）。",
                      "This consumption was made at {branch}; only it can refund it "
                      "({state}).", branch=self.branch_name(branch),
                      state=_reach(branch in connected))
        if not e.holders:
            return tr("{short}的{purse}不在本店，也没有别的分店持有。",
                      "{short} of this {purse} is held by no branch.",
                      short=amount(e.purse, e.shortfall), purse=purse_label(e.purse))
        parts = [tr("{branch}（{what}，{state}）", "{branch} ({what}, {state})",
                    branch=self.branch_name(node), what=amount(e.purse, held),
                    state=_reach(node in connected))
                 for node, held in e.holders.items()]
        if any(node in connected for node in e.holders):
            hint = tr("对方没有及时回应，请再试一次。", "It did not answer in time; try again.")
        else:
            hint = tr("等连上后再试，或付现金。", "Try again once it is back, or pay in cash.")
        return tr("本次差 {short}：这部分{purse}在{where}，本店只有 {here}。{hint}",
                  "{short} of this {purse} balance is held at {where}; this branch holds "
                  "{here}. {hint}", short=amount(e.purse, e.shortfall),
                  purse=purse_label(e.purse), where=tr("、", ", ").join(parts),
                  here=amount(e.purse, e.here), hint=hint)


def _coupon_refused(e: CouponRefused) -> str:
    if isinstance(e, CouponRedeemed):
        return tr("这张优惠券已经用过了。", "This coupon was used already.")
    if isinstance(e, CouponExpired):
        return tr("这张优惠券已过期。", "This coupon has expired.")
    if isinstance(e, CouponNotYetValid):
        return tr("这张优惠券还没到可用的日期。", "This coupon is not valid yet.")
    if isinstance(e, CouponOtherMember):
        return tr("这张优惠券是别的会员的。", "This coupon is another member's.")
    if isinstance(e, CouponMinSpend):
        return tr("没有达到这张优惠券的最低消费。",
                  "This sale does not reach the coupon's minimum spend.")
    return tr("这张优惠券不能用于这笔：{what}", "This coupon cannot be used here: {what}",
              what=_detail(e))


def _approval_refused(e: ApprovalRequired) -> str:
    """Why an approval was wanted or not taken (crdtledger.auth._approve): none was
    given, the approver is the operator asking (demo approving demo's top-up heard
    that someone allowed to approve must type their name, and held the permission),
    or the approver may not approve."""
    text = str(e)
    own = re.fullmatch(r"(.+) cannot approve their own .+", text, re.S)
    if own:
        return tr("{name} 不能审批自己经办的这笔：请另一位有审批权限的人输入姓名和密码。",
                  "{name} cannot approve their own operation: someone else allowed to "
                  "approve must enter their name and password.", name=own[1])
    other = re.fullmatch(r"(.+) may not approve .+", text, re.S)
    if other:
        return tr("{name} 没有审批权限：请有审批权限的人输入姓名和密码。",
                  "{name} is not allowed to approve this: someone who is must enter "
                  "their name and password.", name=other[1])
    if "above its list price" in text:  # crdtledger: a package sold above the list
        return tr("售价高于标价，需要有审批权限的人输入姓名和密码。",
                  "The price is above the list price: someone allowed to approve must "
                  "enter their name and password.")
    if "today without one" in text:  # crdtledger: counted with the day's earlier ones
        return tr("今天未经审批的累计金额已超过限额，需要有审批权限的人输入姓名和密码。",
                  "Together with today's earlier ones without an approver this is above "
                  "the limit: someone allowed to approve must enter their name and "
                  "password.")
    return tr("金额超过限额，需要有审批权限的人输入姓名和密码。",
              "This amount is above the limit: someone allowed to approve must "
              "enter their name and password.")


def _refund_rest(rest: str) -> str:
    """What payments.refund says is left of a debit ("1182.40", "2 uses", "3 units"),
    as the counter says it."""
    n, _, unit = rest.partition(" ")
    if unit == "uses":
        return tr("{n} 次", "{n} use(s)", n=n)
    if unit == "units":
        return tr("{n} 件", "{n} unit(s)", n=n)
    try:
        return money(parse_money(n))
    except InvalidAmount:
        return rest


def _left_of(rest: str) -> str:
    if rest.split(" ")[0] in ("0", "0.00"):
        return tr("这笔消费已经全部退过了，不能再退。",
                  "This sale has been refunded in full already.")
    return tr("这笔消费最多还能退 {rest}。", "At most {rest} of this sale can still be "
              "refunded.", rest=_refund_rest(rest))


_FIELDS = {"name": ("姓名", "the name"), "phone": ("手机号", "the phone number"),
           "birthday": ("生日", "the birthday"), "anniversary": ("纪念日", "the anniversary"),
           "card_no": ("卡号", "the card number"), "card number": ("卡号", "the card number"),
           "new_no": ("新卡号", "the new card number"), "pin": ("卡密码", "the card PIN"),
           "email": ("邮箱", "the e-mail address"), "notes": ("备注", "the notes"),
           "gender": ("性别", "the gender"), "home": ("所属分店", "the home branch"),
           "id_no": ("身份证号", "the ID card number"), "level": ("等级", "the level"),
           "lang": ("通知语言", "the notices' language"),
           "promo": ("营销信息", "the promotions choice"),
           "tags": ("标签", "the tag"), "tag": ("标签", "the tag"),
           "tags_add": ("标签", "the tag"), "tags_remove": ("标签", "the tag"),
           "strength": ("力度", "the strength"), "service": ("喜欢的项目", "the service"),
           "technician": ("指定技师", "the technician"), "reason": ("原因", "the reason"),
           "gift": ("礼品", "the gift"), "points": ("积分", "the points"),
           "qty": ("数量", "the quantity"), "uses": ("次数", "the uses"),
           "per_day": ("每天次数", "the check-ins a day"),
           "search": ("查找内容", "the search"), "q": ("查找内容", "the search"),
           "field name": ("自定义项的名称", "the field's name")}


def _field(name: str) -> str:
    """A field the library names ("prefs.strength", "tags[2]", "custom.房号"), as the
    counter's forms label it; one it does not know is "this field", not English."""
    name = re.sub(r"\[[0-9]+\]\Z", "", name)
    if name.startswith("custom."):
        return tr("“{k}”", "“{k}”", k=name.removeprefix("custom."))
    zh, en = _FIELDS.get(name.removeprefix("prefs."), ("这一项", name))
    return tr(zh, en)


def _of_field(name: str, zh: str, en: str, **kw: Any) -> str | None:
    """A sentence of one of the forms every field's check shares, naming the field
    as the forms label it; None for a field the table does not know."""
    bare = re.sub(r"\[[0-9]+\]\Z", "", name).removeprefix("prefs.")
    if bare not in _FIELDS and not bare.startswith("custom."):
        return None
    said = tr(zh, en, what=_field(name), **kw)
    return said[:1].upper() + said[1:]  # "The name is too long"


# A second referral (crdtledger.membership.refer): said with the members' names
# (Shop._referral_refused).
_REFERRED = re.compile(r"member (\S+) was referred already, by (\S+) \(\S+\)")
# A field as the library's checks name it (crdtledger.schema.check: "prefs.strength",
# "tags[0]"; crdtledger.inputs.check_text: "card number").
_F = r"(card number|field name|[\w.\[\]]+)"


# A card's state and what was asked of it, as the card refusals above say them.
_CARD_STATES = {"active": {"state": "正常使用中", "state_en": "in use"},
                "lost": {"state": "已挂失", "state_en": "reported lost"},
                "replaced": {"state": "已补换新卡", "state_en": "replaced"},
                "returned": {"state": "已退卡", "state_en": "returned"}}
# How an application or a referral was decided, as the refusals above say it.
_DECIDED = {"approved": {"st": "批准", "st_en": "approved"},
            "granted": {"st": "批准", "st_en": "approved"},
            "rejected": {"st": "驳回", "st_en": "rejected"},
            "void": {"st": "作废", "st_en": "voided"}}
_CARD_ACTS = {"mark it active": {"act": "解除挂失", "act_en": "marked found"},
              "mark it lost": {"act": "挂失", "act_en": "reported lost"},
              "mark it returned": {"act": "退卡", "act_en": "returned"},
              "replace it": {"act": "补卡", "act_en": "replaced"}}
# The built-in roles as the pages name them (reference_app.admin's role list).
ROLE_LABELS = {"owner": ("店主", "owner"), "manager": ("店长", "manager"),
               "cashier": ("收银员", "cashier")}

# The library's refusals of what a cashier types or does at the counter, by their
# words (they carry no code of their own: crdtledger.errors.InvalidInput), each with
# a sentence in the session's language. Those not here are shown as the library says.
# The specific first, then the forms the library's checks of every field share
# (crdtledger.schema.check, crdtledger.inputs.check_text): tests/test_app_counter_words.py
# runs every refusal of a member's fields through them.
_INVALID: tuple[tuple[re.Pattern[str], Callable[[re.Match[str]], str | None]], ...] = (
    (re.compile(r"at most (.+) of this debit can still be refunded"),
     lambda m: _left_of(m[1])),
    (re.compile(r".*: this sale can no longer be refunded to their card"),
     lambda _m: tr("该会员已退会或已删除：这笔消费不能再退回卡里。",
                   "The member has left or was deleted: this sale can no longer be "
                   "refunded to their card.")),
    (re.compile(r"member \S+ was deleted"),
     lambda _m: tr("该会员已删除，不能再为其办理。", "This member was deleted.")),
    (re.compile(r"member \S+ has left \(退会\).*"),
     lambda _m: tr("该会员已退会：重新入会获批准之前，不能为其办理任何业务。",
                   "This member has left: nothing can be sold to or for them until a "
                   "return is approved.")),
    (re.compile(r"member \S+ was erased: .*"),
     lambda _m: tr("该会员的个人信息已经删除，不能再写入。",
                   "This member's personal data was erased: it cannot be written again.")),
    (re.compile(r"a member cannot refer themself"),
     lambda _m: tr("会员不能推荐自己：请输入另一位会员作为推荐人。",
                   "A member cannot refer themself: enter another member as the referrer.")),
    (re.compile(r"\S+ joined on .+, after member \S+ \(on .+\), and cannot have "
                r"referred them.*"),
     lambda _m: tr("推荐人入会晚于这位会员，不可能是其推荐人：未作记录。",
                   "The referrer joined after this member and cannot have referred them: "
                   "nothing was recorded.")),
    (re.compile(r"\S+ was referred by member \S+ \(\S+\): two members cannot refer "
                r"each other.*"),
     lambda _m: tr("两位会员不能互相推荐：未作记录。",
                   "Two members cannot refer each other: nothing was recorded.")),
    (re.compile(r"\S+ joined on .+, later than this branch's clock reads .*"),
     lambda _m: tr("推荐人的入会时间晚于本机时钟：请店长核对本机时间。未登记任何人。",
                   "The referrer joined later than this PC's clock reads: ask the manager "
                   "to check the clock. Nobody was registered.")),
    (re.compile(r"\d+ x .+ come to .+, more than one entry may hold \((.+)\): take "
                r"fewer at a time"),
     lambda m: tr("金额超过一笔能记的上限（{max}）：请分几次办理。",
                  "More than one entry may hold ({max}): take fewer at a time.",
                  max=m[1])),
    (re.compile(r"birthday must be a day already past, from (\S+) to today .*"),
     lambda m: tr("生日不能晚于今天，也不能早于 {first}。",
                  "A birthday cannot be after today nor before {first}.", first=m[1])),
    (re.compile(r'phone must be a phone number like .*?, not "(.*)"'),  # its pattern
     lambda m: (tr("手机号请用半角数字输入：{p}", "Type the phone in half-width digits: {p}",
                   p=half_width(m[1])) if m[1] != half_width(m[1])
                else tr("“{p}” 不是手机号码。", "“{p}” is not a phone number.", p=m[1]))
     if m[1] else tr("请填写手机号。", "Please enter the phone number.")),
    (re.compile(r"phone '(.*)' is not a phone number"),  # crdtledger.members' own check
     lambda m: tr("“{p}” 不是手机号码。", "“{p}” is not a phone number.", p=m[1])),
    (re.compile(r"phone (.+) is registered to another member"),
     lambda m: tr("手机号 {p} 已登记给另一位会员：请先按手机号查找。",
                  "Phone {p} is registered to another member: search for it first.",
                  p=m[1])),
    (re.compile(r"(birthday|anniversary) must be a date like .*"),
     lambda m: tr("{what}要写成 1990-05-17 或 05-17 这样的日期。", "Write {what} as a date "
                  "like 1990-05-17 or 05-17.", what=_field(m[1]))),
    # crdtledger.members: of the right form, but no day of the calendar (2026-13-45,
    # 02-30).
    (re.compile(r"(birthday|anniversary) must be a day of the calendar like .*"),
     lambda m: tr("{what}不是日历上有的日子：要写成 1990-05-17 或 05-17 这样的日期。",
                  "{what} is no day of the calendar: write a date like 1990-05-17 or "
                  "05-17.", what=_field(m[1]))),
    (re.compile(r"email .* is typed in full-width characters: type it as (.*)"),
     lambda m: tr("邮箱请用半角字母和符号输入：{e}", "Type the e-mail address in half-width "
                  "characters: {e}", e=m[1])),
    (re.compile(r"email ['\"]?(.*?)['\"]? is not an e-mail address"),
     lambda m: tr("“{e}” 不是邮箱地址：要写成 name@example.com 这样。",
                  "“{e}” is not an e-mail address: write it like name@example.com.",
                  e=m[1])),
    # A card dialog left open while another till changed the card (reported it lost,
    # found or replaced it): the library's words reached the counter as
    # "输入有误：card C10001 is lost; cannot mark it lost".
    (re.compile(r"card (\S+) is (active|lost|replaced|returned); cannot "
                r"(mark it active|mark it lost|mark it returned|replace it)"),
     lambda m: tr("卡 {no} 现在{state}，不能{act}：可能刚在别的收银台办过了。"
                  "请关闭后重新查看这张卡。",
                  "Card {no} is {state_en} now and cannot be {act_en}: another till may "
                  "have just done it. Close this and look at the card again.", no=m[1],
                  **_CARD_STATES[m[2]], **_CARD_ACTS[m[3]])),
    # An exit or a referral decided at another till (or in another tab) while this
    # page still offered it: "输入有误：application 038J…SH01 was approved already, by
    # 038J…SH01".
    (re.compile(r"application \S+ was (approved|rejected) already, by \S+"),
     lambda m: tr("这份申请刚刚已经{st}了（可能在别的电脑上），不用再处理。",
                  "This application was {st_en} already (perhaps at another PC): "
                  "nothing to do.", **_DECIDED[m[1]])),
    (re.compile(r"referral \S+ (?:is (granted|rejected|void)|was (rejected) here) already"),
     lambda m: tr("这条推荐刚刚已经{st}了（可能在别的电脑上），不用再处理。",
                  "This referral was {st_en} already (perhaps at another PC): nothing "
                  "to do.", **_DECIDED[m[1] or m[2]])),
    (re.compile(r"member \S+ has left already"),
     lambda _m: tr("该会员已经退会了。", "The member has left already.")),
    (re.compile(r"card (\S+) has been reported lost and found too often \(([0-9]+) "
                r"changes\).*"),
     lambda m: tr("卡 {no} 挂失、解除挂失的次数太多（{n} 次）：请补卡。",
                  "Card {no} has been reported lost and found too often ({n} times): "
                  "replace it.", no=m[1], n=m[2])),
    (re.compile(r"card (\S+) is already issued.*"),
     lambda m: tr("卡 {no} 已经发过了（属于一位会员）：请换一张卡。",
                  "Card {no} is already issued to a member: use another card.", no=m[1])),
    (re.compile(r'(?:card_no|new_no) must be a card number: .*, not "(.*)"'),
     lambda m: tr("卡号 {no} 里有卡上不会有的字符：只能是字母、数字和 - _ :。",
                  "Card number {no} has characters a card cannot carry: letters, digits "
                  "and - _ : only.", no=m[1]) if m[1]
     else tr("请填写卡号。", "Please enter the card number.")),
    (re.compile(r"card number '(.*)' has characters a card cannot carry"),
     lambda m: tr("卡号 {no} 里有卡上不会有的字符：只能是字母、数字和 - _ :。",
                  "Card number {no} has characters a card cannot carry: letters, digits "
                  "and - _ : only.", no=m[1])),
    (re.compile(r"pin must be a card PIN of 4 to 8 digits.*|pin is longer than 8 characters"),
     lambda _m: tr("卡密码要 4 到 8 位数字。", "A card PIN is 4 to 8 digits.")),
    (re.compile(r"an ID card number is 18 characters.*|id_no must be a resident ID card "
                r"number.*"),
     lambda _m: tr("身份证号是 18 位（17 位数字加一位数字或 X），或旧的 15 位数字。",
                   "An ID card number is 18 characters (17 digits and a digit or X) or "
                   "the old 15 digits.")),
    (re.compile(r"ID card number (\S+) has a wrong check digit"),
     lambda m: tr("身份证号 {n} 的校验位不对：请核对。",
                  "ID card number {n} has a wrong check digit: check it.", n=m[1])),
    (re.compile(r"level '(.*)' is none of the chain's levels: (.*)"),
     lambda m: tr("“{lv}” 不是本店设定的会员等级（{all}）。",
                  "“{lv}” is none of the chain's levels ({all}).", lv=m[1], all=m[2])),
    (re.compile(r"(\S+) cannot be a member's home branch.*"),
     lambda m: tr("{b} 不是本连锁已知的分店，不能作为会员的所属分店。",
                  "{b} is no branch known to the chain: it cannot be a member's home.",
                  b=m[1])),
    (re.compile(r"the period is reversed: from (\S+) is after to (\S+)"),
     lambda m: tr("起止日期反了：开始日 {a} 在结束日 {b} 之后。",
                  "The period is reversed: its first day {a} is after its last, {b}.",
                  a=m[1], b=m[2])),
    # A role's likewise (auth.define_role), the built-in ones by the names the pages
    # give them.
    (re.compile(r"role name .+ reads as (.+)'s, a role that exists already: choose "
                r"another, or redefine .+"),
     lambda m: tr("已有角色叫 {n}：请换一个名字（全角半角、大小写不同，或用了样子相同的"
                  "俄文、希腊字母，也算同名）。",
                  "There is a role named {n} already: choose another name (one written in "
                  "full width, another case or Cyrillic or Greek letters that look alike "
                  "is the same name).", n=tr(*ROLE_LABELS.get(m[1], (m[1], m[1]))))),
    # A name another already has, however written (auth.add_operator; rules' levels):
    # the office pages said it in the library's English.
    (re.compile(r"an operator named (.+) exists already|operator name .+ reads as (.+)'s, "
                r"an operator who exists already: choose another"),
     lambda m: tr("已有操作员叫 {n}：请换一个名字（全角半角、大小写不同，或用了样子相同的"
                  "俄文、希腊字母，也算同名）。",
                  "There is an operator named {n} already: choose another name (one "
                  "written in full width, another case or Cyrillic or Greek letters that "
                  "look alike is the same name).",
                  n=m[1] or m[2])),
    (re.compile(r"rule levels is malformed: two levels are named (.+?); .*"),
     lambda m: tr("有两个会员等级都叫“{n}”：每个等级的名称要不同。",
                  "Two levels are named “{n}”: give each level a name of its own.", n=m[1])),
    # The back office's rule pages (reference_app.admin): a rule the library refused
    # as malformed, and what the pages check themselves, by the boxes' labels; they
    # read "输入有误：rule levels is malformed: …; a version looks like [{…}]".
    (re.compile(r"rule (\w+) is malformed: (.*?)(?:; a version looks like .*)?", re.S),
     lambda m: _rule_refused(m[1], m[2])),
    (re.compile(r'effective_from must be a date like (\S+), not "(.*)"', re.S),
     lambda m: tr("生效日期要写成 {d} 这样的日期（半角数字）。",
                  "Write the day it is in force from as a date like {d}.", d=m[1])),
    (re.compile(r"'.*': a rule's text holds no direction overrides .*", re.S),
     lambda _m: tr("规则里的文字不能有方向控制字符（会把后面的字倒过来显示）：请重新输入。",
                   "A rule's text cannot hold direction overrides (they turn what follows "
                   "around): type it again.")),
    (re.compile(r"'.*': a rule's text holds no control characters .*", re.S),
     lambda _m: tr("规则里的文字不能有控制字符（换行、打印机或终端命令）：请重新输入。",
                   "A rule's text cannot hold control characters (printer or terminal "
                   "commands): type it again.")),
    (re.compile(r"service code (\S+) appears twice"),
     lambda m: tr("价目表里项目代码 {c} 出现了两次：每个项目只写一行。",
                  "Service code {c} is in the price list twice: one row a service.",
                  c=m[1])),
    (re.compile(r"branch (\S+)'s name was cleared"),
     lambda m: tr("分店 {b} 的名称被清空了：名称显示在收银台、报表和结算表上。确实要去掉这个"
                  "名称，请点这一行右边的删除按钮。",
                  "The name of {b} is cleared: it is what the counter, the reports and the "
                  "settlement show. To take it away, use the row's delete button.", b=m[1])),
    (re.compile(r"branch (\S+) has no name"),
     lambda m: tr("请填写分店 {b} 的名称。", "Give {b} a name.", b=m[1])),
    (re.compile(r"name (.+) has no node id", re.S),
     lambda m: tr("名称“{n}”没有填分店号：请填上，或删除这一行。",
                  "The name “{n}” has no node id: fill it in, or delete the row.", n=m[1])),
    (re.compile(r"branch (\S+) appears twice"),
     lambda m: tr("分店号 {b} 出现了两次：每家分店只写一行。",
                  "Node id {b} is there twice: one row a branch.", b=m[1])),
    (re.compile(r"the price list needs at least one service"),
     lambda _m: tr("价目表至少要有一个项目。", "The price list needs at least one service.")),
    (re.compile(r"at least one level is needed"),
     lambda _m: tr("至少要有一个会员等级。", "At least one level is needed.")),
    (re.compile(r"the first level must start at 0 .*"),
     lambda _m: tr("最低的等级门槛要是 0（每位会员都有一个等级）。",
                   "The lowest level's threshold must be 0 (every member has a level).")),
    (re.compile(r"the till needs at least one payment method"),
     lambda _m: tr("至少要有一种收款方式。", "The till needs at least one payment method.")),
    (re.compile(r"(discount|points multiplier|points per yuan) must be between (\S+) and "
                r"(\S+)"),
     lambda m: tr("{what}要在 {lo} 到 {hi} 之间。", "{what} must be between {lo} and {hi}.",
                  what=_rate_label(m[1]), lo=m[2], hi=m[3])),
    (re.compile(r"(discount|points multiplier|points per yuan) must be a number like 0\.95, "
                r"not .*", re.S),
     lambda m: tr("{what}要填 0.95 这样的数（半角数字）。",
                  "{what} must be a number like 0.95.", what=_rate_label(m[1]))),
    (re.compile(r"(expiry days|points for one yuan) must be a whole number, not .*", re.S),
     lambda m: tr("{what}要填整数（半角数字），例如 {e}。",
                  "{what} must be a whole number, e.g. {e}.", what=_rate_label(m[1]),
                  e="365" if m[1] == "expiry days" else "100")),
    (re.compile(r"points for one yuan must be above zero"),
     lambda _m: tr("“多少积分换 1 元”要大于零。",
                   "“Points for 1 yuan of value” must be above zero.")),
    (re.compile(r"node id '(.*)' must be 1-16 capital letters, digits or _ .*", re.S),
     lambda m: tr("分店号“{n}”只能是 1 到 16 个大写字母、数字或 _，例如 SH01。",
                  "Node id “{n}” is 1 to 16 capital letters, digits or _, e.g. SH01.",
                  n=m[1])),
    # The check-in activity's form (membership_pages.CheckinDesk.setup).
    (re.compile(r'(from|to) must be a local time like (\S+), not "(.*)"', re.S),
     lambda m: tr("{what}要写成 {ex} 这样（半角数字，日期和时间之间用 T）。",
                  "Write {what} like {ex}.", what=_WINDOW[m[1]], ex=m[2])),
    (re.compile(r"\S+: (from|to) (\S+) is not a time"),
     lambda m: tr("{what} {t} 不是日历上有的时间：要写成 2026-12-03T09:00 这样。",
                  "{what} {t} is no time of the calendar: write it like 2026-12-03T09:00.",
                  what=_WINDOW[m[1]], t=m[2])),
    (re.compile(r"\S+: the window ends before it starts"),
     lambda _m: tr("结束时间要晚于开始时间。", "The end must be after the start.")),
    (re.compile(r"code (?:must not be empty|is required)"),
     lambda _m: tr("请填写代码。", "Please enter the code.")),
    (re.compile(r"code is longer than ([0-9]+) characters"),
     lambda m: tr("代码太长了：最多 {n} 个字。", "The code is too long: {n} characters at "
                  "most.", n=m[1])),
    (re.compile(r"code must be a check-in activity's code, not .*", re.S),
     lambda _m: tr("活动代码只能是 1 到 20 个字母、数字、_ 或 -（不能有汉字或空格）。",
                   "An activity's code is 1 to 20 letters, digits, _ or -.")),
    # The forms every field's checks share, for the fields the forms have (_FIELDS):
    # another (an admin page's "code") keeps the library's words, which name it.
    (re.compile(rf"{_F} (?:must not be empty|is required)"),
     lambda m: _of_field(m[1], "请填写{what}。", "Please enter {what}.")),
    (re.compile(rf"{_F} is longer than ([0-9]+) characters"),
     lambda m: _of_field(m[1], "{what}太长了：最多 {n} 个字。",
                         "{what} is too long: {n} characters at most.", n=m[2])),
    (re.compile(rf"{_F} (?:contains characters that are not text|is not valid Unicode "
                r"text|must be (?:one line of )?text[,:].*)"),
     lambda m: _of_field(m[1], "{what}里有不能保存的字符（换行或控制字符）：请重新输入。",
                         "{what} holds characters that cannot be kept (a line break or a "
                         "control character): type it again.")),
    (re.compile(rf"{_F} must be a whole number above zero.*"),
     lambda m: _of_field(m[1], "{what}要填正整数。", "{what} must be a whole number above "
                         "zero.")),
    (re.compile(rf"{_F} (?:must be (?:one of .*|true or false.*)|is .* or empty.*)"),
     lambda m: _of_field(m[1], "请从给出的选项里选{what}。",
                         "Choose {what} from the options given.")),
    (re.compile(rf"{_F} must be .*, not .*"),
     lambda m: _of_field(m[1], "{what}的写法不对：请核对后重新输入。",
                         "{what} is not written as it should be: check it and type it "
                         "again.")),
)


# The back office's boxes a refusal names (reference_app.admin), as they are labelled.
_RATES: dict[str, tuple[str, str]] = {"discount": ("折扣", "The discount"),
          "points multiplier": ("积分倍数", "The points multiplier"),
          "points per yuan": ("“每消费 1 元得积分”", "“Points per yuan spent”"),
          "expiry days": ("“积分有效天数”", "“Points last (days)”"),
          "points for one yuan": ("“多少积分换 1 元”", "“Points for 1 yuan of value”")}
_WINDOW: dict[str, str] = {"from": "开始时间", "to": "结束时间"}


def _rate_label(name: str) -> str:
    return tr(*_RATES[name])


# Why the library refused a rule as malformed (crdtledger.rules._check_rule), for the
# rules the back office's pages write, by the page's labels. Kinds the pages do not
# write keep the library's words, which name the setting.
_MALFORMED: tuple[tuple[str, re.Pattern[str], Callable[[re.Match[str]], str]], ...] = (
    ("services", re.compile(r"service code '(.*)' is not 1-20 letters, digits, _ or -", re.S),
     lambda m: tr("项目代码“{c}”只能是 1 到 20 个字母、数字、_ 或 -（不能有汉字或空格）。",
                  "Service code “{c}” is 1 to 20 letters, digits, _ or -.", c=m[1])),
    ("services", re.compile(r"(\S+): name is text of at most 60 characters"),
     lambda m: tr("项目 {c} 的名称太长了：最多 60 个字。",
                  "Service {c}'s name is too long: 60 characters at most.", c=m[1])),
    ("levels", re.compile(r"levels (.+) and (.+) start at one threshold, ([0-9]+) fen", re.S),
     lambda m: tr("等级“{a}”和“{b}”的门槛都是 {t}：每个等级的门槛要不同。",
                  "Levels “{a}” and “{b}” both start at {t}: give each level a threshold "
                  "of its own.", a=m[1], b=m[2], t=money(int(m[3])))),
    ("levels", re.compile(r"a level's name is text of 1 to 40 characters.*", re.S),
     lambda _m: tr("等级名称要 1 到 40 个字，不能只有空格或看不见的字符，也不能有方向控制字符。",
                   "A level's name is 1 to 40 characters, not spaces or invisible "
                   "characters alone, without direction overrides.")),
    ("levels", re.compile(r"a discount is above 0 and at most 1"),
     lambda _m: tr("折扣要大于 0、最多为 1，例如 0.9 即九折。",
                   "A discount is above 0 and at most 1: 0.9 is 10% off.")),
    ("levels", re.compile(r"a points multiplier is from 0 to 100"),
     lambda _m: tr("积分倍数要在 0 到 100 之间。", "A points multiplier is from 0 to 100.")),
    ("levels", re.compile(r"'.*' is not a number like 0\.95|a discount or points multiplier "
                          r"is at most 12 characters.*", re.S),
     lambda _m: tr("折扣和积分倍数要写成 0.95 这样的数：最多 6 位小数。",
                   "Discounts and points multipliers are numbers like 0.95, with at most "
                   "6 decimals.")),
    ("earn", re.compile(r"'.*' is not a number like 0\.95|points per yuan are from 0 to "
                        r"1000", re.S),
     lambda _m: tr("“每消费 1 元得积分”要填 0 到 1000 之间、最多 6 位小数的数，例如 1 或 0.5。",
                   "“Points per yuan spent” is a number from 0 to 1000 with at most 6 "
                   "decimals, like 1 or 0.5.")),
    ("earn", re.compile(r"points expire after 0 to 36500 days"),
     lambda _m: tr("“积分有效天数”要在 0 到 36500 之间（0 = 不过期）。",
                   "“Points last (days)” is from 0 to 36500 (0 = for ever).")),
    ("conversion", re.compile(r"points per yuan .*", re.S),
     lambda _m: tr("“多少积分换 1 元”要填 1 到 {n} 之间的整数。",
                   "“Points for 1 yuan of value” is a whole number from 1 to {n}.",
                   n=MAX_POINTS_PER_YUAN)),
    ("promotions", re.compile(r"a promotion's name is text of at most 40 characters"),
     lambda _m: tr("促销名称太长了：最多 40 个字。",
                   "A promotion's name is too long: 40 characters at most.")),
    ("branches", re.compile(r"branch '(.*)': its name is text of 1 to 40 characters.*", re.S),
     lambda m: tr("分店 {b} 的名称要 1 到 40 个字，不能只有空格或看不见的字符，也不能有方向"
                  "控制字符。", "Branch {b}'s name is 1 to 40 characters, not spaces or "
                  "invisible characters alone, without direction overrides.", b=m[1])),
    ("branches", re.compile(r"branch '(.*)': its id and name are one line each.*", re.S),
     lambda m: tr("分店 {b} 的名称里不能有换行或控制字符。",
                  "Branch {b}'s name cannot hold line breaks or control characters.",
                  b=m[1])),
    ("payment_methods", re.compile(r"method code '(.*)' is not 1-16 lower-case letters, "
                                   r"digits or _", re.S),
     lambda m: tr("收款方式代码“{c}”要以小写字母开头，只能用 1 到 16 个小写字母、数字或 _，"
                  "例如 wechat。", "Method code “{c}” starts with a lower-case letter and "
                  "is 1 to 16 lower-case letters, digits or _, e.g. wechat.", c=m[1])),
    ("payment_methods", re.compile(r"method (\S+) appears twice"),
     lambda m: tr("收款方式代码 {c} 出现了两次：每种方式只写一行。",
                  "Method code {c} is there twice: one row a method.", c=m[1])),
    ("payment_methods", re.compile(r"(\S+) is paid from the member's purses, not at the till"),
     lambda m: tr("{c} 是从会员卡里扣款的方式，不能作为收款方式代码：请换一个代码。",
                  "{c} is paid from the member's card, not at the till: choose another "
                  "code.", c=m[1])),
    ("payment_methods", re.compile(r"(\S+): name_(zh|en) is text of at most 40 characters"),
     lambda m: tr("收款方式 {c} 的{n}太长了：最多 40 个字。",
                  "Method {c}'s {n_en} name is too long: 40 characters at most.", c=m[1],
                  n="中文名" if m[2] == "zh" else "英文名",
                  n_en="Chinese" if m[2] == "zh" else "English")),
    ("payment_methods", re.compile(r"payment methods are a list of 1 to 20"),
     lambda _m: tr("收款方式要有 1 到 20 种。", "There are 1 to 20 payment methods.")),
)


def _rule_refused(kind: str, why: str) -> str | None:
    for k, pattern, say in _MALFORMED:
        if k == kind and (m := pattern.fullmatch(why)):
            return say(m)
    return None


# crdtledger.money.parse_yuan's refusal of an amount typed full-width, and how to type it.
_FULL_WIDTH_AMOUNT = re.compile(r"typed in full-width digits: type it as (\S+) ")


def _invalid_input(e: LedgerError) -> str | None:
    """A sentence for a refusal of what was typed that the library words (_INVALID)."""
    text = str(e)
    for pattern, say in _INVALID:
        m = pattern.fullmatch(text)
        said = say(m) if m else None
        if said is not None:
            return said
    return None


# What this PC's clock alone must not decide, as the library refuses it: what is judged
# by the day on a clock reading earlier than it did (Ledger.check_clock_for), a no-show
# on a clock nobody confirmed (bookings.noshow). Both go on once another branch
# connects, or a manager confirms the clock (clock.confirm, 本机时钟已核对).
_CLOCK_BACK = re.compile(r"this PC's clock reads (.+?) earlier than it did \(it had booked "
                         r"up to ([0-9: -]+)\): .*")
_NOSHOW_UNCONFIRMED = re.compile(r"booking \S+ has started by this PC's clock, which no "
                                 r"other branch has confirmed yet.*")
# Why this PC may not write at all (LedgerBase._check_may_write), and what a restored
# one waits for (Replica.peer_caught_up): Shop._may_not_write says them.
_REVOKED = re.compile(r"the chain revoked branch \S+'s certificate .*", re.S)
_FORKED = re.compile(r"branch \S+ wrote two different histories .*", re.S)
_ANOTHER_PC = re.compile(r"another PC sells as branch \S+: .*", re.S)
_WAIT_OTHER_RESTORE = re.compile(r"another PC restored as branch \S+ since this backup .*",
                                 re.S)
_RESTORED = re.compile(r"restored from a backup of (.+?); (.*)", re.S)
_WAIT_SENT = re.compile(r"this branch's log had left this PC as far as record (\d+), and "
                        r"(.+?) holds it only to record (\d+): .*", re.S)
_WAIT_OLD_FILE = re.compile(r"(.+?)'s file was made before this branch was restored: .*",
                            re.S)
_WAIT_FILE_AHEAD = re.compile(r"(.+?)'s file says it was made ([0-9: -]+), later than this "
                              r"PC's clock: .*", re.S)
_WAIT_NOT_HEARD = re.compile(r"(.+?) has heard nothing from this branch since the backup "
                             r"\(.*?\), and (.+?) not yet: .*", re.S)
_WAIT_BEHIND = re.compile(r"(.+?) holds this branch's log to record (\d+), only (\d+) of "
                          r"it are here yet: .*", re.S)
_WAIT_FORK = re.compile(r"(.+?) holds another history of this branch's log at record .*",
                        re.S)
_SPAN_ZH = {"d": "天", "h": "小时", "min": "分钟", "s": "秒"}


def _clock_refused(e: LedgerError) -> str | None:
    text = str(e)
    if isinstance(e, NotCaughtUp) and (m := _CLOCK_BACK.fullmatch(text)):
        span = re.sub(r"\b(d|h|min|s)\b", lambda u: _SPAN_ZH[u[1]], m[1])
        return tr("本机时钟比之前慢了 {d}（本机已记账到 {at}），可能被调回过：优惠券、退款、积分、"
                  "签到等按日期判断的业务先暂停。等其他分店连上并确认时钟，或店长核对时钟后确认"
                  "（本机时钟已核对：crdtledger clock confirm），即可继续。",
                  "This PC's clock reads {d_en} earlier than it did (it had booked up to "
                  "{at}): coupons, refunds, points and check-ins, judged by the day, wait "
                  "until another branch connects and confirms the clock, or a manager "
                  "confirms it (crdtledger clock confirm).",
                  d=span.replace(" ", ""), d_en=m[1], at=m[2])
    if isinstance(e, BookingRefused) and _NOSHOW_UNCONFIRMED.fullmatch(text):
        return tr("本机时钟还没有经其他分店确认：要等连上的分店确认时钟，或店长核对时钟后确认"
                  "（本机时钟已核对：crdtledger clock confirm），才能记爽约。",
                  "No other branch has confirmed this PC's clock yet: a no-show is recorded "
                  "once one connected has, or a manager confirms the clock (crdtledger clock "
                  "confirm).")
    return None


def _reach(connected: bool) -> str:
    return tr("现在连得上", "connected now") if connected else tr("现在连不上",
                                                                    "unreachable now")


def _detail(e: LedgerError) -> str:
    return str(e) or type(e).__name__


def purse_label(purse: str) -> str:
    if purse == "cash":
        return tr("储值", "stored value")
    if purse == "bonus":
        return tr("赠送金额", "bonus value")
    if purse == "points":
        return tr("积分", "points")
    if purse.startswith("pkg:"):
        return tr("套餐次数", "package uses")
    if purse.startswith("cpn:"):
        return tr("优惠券", "coupons")
    return purse


def amount(purse: str, value: int) -> str:
    return money(value) if purse in ("cash", "bonus") else format_purse(purse, value)


# --- the process's shop and the browser session's operator ---------------------

_shop: Shop | None = None


def install(s: Shop | None) -> None:
    global _shop
    _shop = s


def shop() -> Shop:
    assert _shop is not None, "reference_app.app.build() has not run"
    return _shop


# The operator each page was built for (layout.frame), by its client.
_PAGE_OPERATOR: WeakKeyDictionary[Client, str] = WeakKeyDictionary()


def page_built_for(op: str) -> None:
    _PAGE_OPERATOR[context.client] = op


def operator() -> str | None:
    """The operator logged in in this browser session, if it may still act here."""
    try:
        data: dict[str, Any] = dict(app.storage.user.get("operator") or {})
    except RuntimeError:
        return None
    op, node = data.get("id"), data.get("node")
    s = shop()
    if not isinstance(op, str) or node != s.node.node_id:
        return None  # a session from another store (or none)
    # A page is its operator's: after another operator logged in in another tab, a
    # page left open wrote in the new one's name under the old one's header (a
    # booking, a check-in), or was refused for the old one's permissions.
    try:
        built_for = _PAGE_OPERATOR.get(context.client, op)
    except RuntimeError:  # no page: a background task
        built_for = op
    if built_for != op:
        return None
    # A password reset (here or at another branch) ends the sessions that logged in
    # with the old one, as it ends the API's tokens; disabled operators drop out.
    if data.get("credentials") != s.ledger.credentials(op):
        return None
    return op if s.ledger.permissions(op) else None


def log_in(operator_id: str) -> None:
    s = shop()
    app.storage.user["operator"] = {"id": operator_id, "node": s.node.node_id,
                                    "credentials": s.ledger.credentials(operator_id)}


def log_out() -> None:
    app.storage.user.pop("operator", None)


def can(permission: str) -> bool:
    op = operator()
    return op is not None and permission in shop().ledger.permissions(op)
