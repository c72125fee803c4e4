"""Printed receipts (小票) on ESC/POS thermal printers: what a sale prints, and where.

Why it looks like this:

- A `Receipt` is data, built from one ledger entry and the member's balances around
  it: the shop, the branch's display name (rule `branches`), the branch's local time,
  the operator, lines (items, discount, bonus), the total, how it was paid, the purses
  before and after, and the entry id for the QR code. Lines have a kind, so goods,
  stock and coupons (issue 15, parts 1-2) add their lines ("item" with a quantity, a
  negative "coupon") without a new layout.
- The purses "after" are the member's purses summed over their entries up to and
  including this one in id order (the chain's order), "before" that less the entry's
  own change. A reprint a week later shows what the first print showed, whatever the
  member did since (only a branch cut off at the time that later delivers entries
  from before it can change it, and then the receipt follows the books).
- Rendering and sending are apart: `render` makes the bytes with python-escpos (its
  `Dummy` printer collects them), `deliver` sends them with python-escpos's `Network`
  or `Usb` printer. A test, and the demo's printer, read exactly what a printer gets.
- Chinese: the text goes out as GB18030 bytes after FS & (Chinese character mode),
  the code page of the thermal printers sold in China (Xprinter, GPrinter, Epson's
  Chinese models). python-escpos's magic encoder would send GB18030 only for text
  with a Han character and switch single-byte code pages (ESC t) for the rest, so
  "：", "→" or "¥" on a line without a Han character come out as "?" or as another
  code page's glyphs; one encoding for every line avoids both.
- Widths: font A is 12 dots wide, a Chinese character 24: 58 mm paper (384 dots)
  holds 32 columns, 80 mm (576 dots) 48; every non-ASCII character takes two.
- The printer is this PC's (DATA/printer.toml), not a chain rule: another branch's
  printer is none of the chain's business, and a branch without one prints nothing.
- Printing never holds up a sale: callers print after the commit, off the event loop,
  with a short timeout, and a printer that is off, absent or refusing is a reason in
  the result (`Printed`), never an exception.
"""

from __future__ import annotations

import asyncio
import json
import re
import tomllib
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from crdtledger import localtime, views
from crdtledger.errors import InvalidInput, LedgerError, PermissionDenied
from crdtledger.goods import is_walk_in
from crdtledger.inputs import check_text, printable
from crdtledger.ledger import Ledger
from crdtledger.model import DEFAULT_RULES
from crdtledger.money import format_yuan
from crdtledger.private import private_text_open

CONFIG_FILE = "printer.toml"
COLUMNS = {58: 32, 80: 48}  # paper width (mm) -> columns of font A
DEFAULT_PORT = 9100  # the raw-printing port of network receipt printers (JetDirect)
TIMEOUT_S = 3.0  # connect and send: a printer that is off must not keep the cashier
ENTER_CHINESE = b"\x1c\x26"  # FS &: Chinese character mode (two-byte GB18030 text)
INIT = b"\x1b\x40"  # ESC @: the printer's defaults, whatever the last job left
# Reading a receipt shows a member's name and balances: the permissions that serve
# members (crdtledger.operations.SERVES_MEMBERS) let an operator see one.
SERVES = frozenset({"debit", "topup", "refund", "package.sell", "points.redeem",
                    "member.add", "member.edit", "reports.view"})


class PrinterError(LedgerError):
    """No receipt printed: the reason says why (no printer set, off, refusing)."""

    code = "printer_unavailable"


# --- this PC's printer --------------------------------------------------------------


# A receipt's header: a shop's name, two lines of 58 mm paper at most. Ten thousand
# characters were taken and printed, a roll's worth of header on every receipt.
TITLE_LIMIT = 40


@dataclass(frozen=True)
class PrinterConfig:
    """Where this branch's receipts go: a network printer (host:port) or a USB one."""

    host: str = ""
    port: int = DEFAULT_PORT
    usb: tuple[int, int] | None = None  # (vendor id, product id)
    width: int = 58  # paper, mm
    title: str = ""  # the receipt's header; default the chain's shop name

    @property
    def columns(self) -> int:
        return COLUMNS[self.width]

    def describe(self) -> str:
        where = (f"USB {self.usb[0]:04x}:{self.usb[1]:04x}" if self.usb
                 else f"{self.host}:{self.port}")
        return f"{where}, {self.width} mm"


def parse_net(text: str) -> tuple[str, int]:
    """'192.168.1.50' or '192.168.1.50:9100' -> (host, port)."""
    host, sep, port = text.strip().rpartition(":")
    if not sep:
        host, port = text.strip(), str(DEFAULT_PORT)
    if not host or not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
        raise InvalidInput(f"a network printer is HOST:PORT (port 9100 usually), not {text!r}")
    return host, int(port)


def parse_usb(text: str) -> tuple[int, int]:
    """'0416:5011' (vendor:product, hex, as lsusb prints them) -> (0x0416, 0x5011)."""
    m = re.fullmatch(r"(?:0x)?([0-9a-fA-F]{1,4}):(?:0x)?([0-9a-fA-F]{1,4})", text.strip())
    if not m:
        raise InvalidInput(f"a USB printer is VENDOR:PRODUCT in hex as lsusb shows it "
                           f"(e.g. 0416:5011), not {text!r}")
    return int(m.group(1), 16), int(m.group(2), 16)


def load_config(data_dir: Path) -> PrinterConfig | None:
    """This PC's printer, None if none is set (then nothing is printed)."""
    path = Path(data_dir) / CONFIG_FILE
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise PrinterError(f"{path}: {e}") from None
    except RecursionError:  # arrays nested thousands deep: the parser's traceback
        raise PrinterError(f"{path} is not a printer setting: it nests too deep to read "
                           "(UTF-8 TOML: host or usb, port, width, title)") from None
    try:
        width = int(raw.get("width", 58))
        if width not in COLUMNS:
            raise ValueError(f"width is 58 or 80 (mm), not {width}")
        title = check_text(raw.get("title", ""), "title", limit=TITLE_LIMIT)
        for key in ("host", "usb"):  # a table was printed as "receipts print on {'a': 1}"
            if key in raw and not isinstance(raw[key], str):
                raise ValueError(f"{key} is text, not {str(raw[key])[:40]}")
        if raw.get("usb"):
            return PrinterConfig(usb=parse_usb(str(raw["usb"])), width=width, title=title)
        host, port = parse_net(f"{raw['host']}:{int(raw.get('port', DEFAULT_PORT))}")
        return PrinterConfig(host=host, port=port, width=width, title=title)
    except (KeyError, TypeError, ValueError, InvalidInput) as e:
        raise PrinterError(f"{path}: {e}") from None
    except OverflowError:  # int(1e400): TOML reads it as infinity
        raise PrinterError(f"{path}: width is 58 or 80 (mm) and port a port number, not "
                           "an endless number") from None


def save_config(data_dir: Path, config: PrinterConfig | None) -> None:
    """Write (or, for None, remove) this PC's printer setting."""
    path = Path(data_dir) / CONFIG_FILE
    if config is None:
        path.unlink(missing_ok=True)
        return
    lines = ["# This PC's receipt printer: crdtledger printer set / show / test / off"]
    if config.usb:
        lines.append(f'usb = "{config.usb[0]:04x}:{config.usb[1]:04x}"')
    else:
        lines += [f"host = {json.dumps(config.host)}", f"port = {config.port}"]
    lines.append(f"width = {config.width}")
    if config.title:
        # A JSON string is a TOML basic string (the same escapes).
        lines.append(f"title = {json.dumps(config.title, ensure_ascii=False)}")
    tmp = path.with_suffix(".part")
    with private_text_open(tmp) as f:
        f.write("\n".join(lines) + "\n")
    tmp.replace(path)


# --- the receipt as data --------------------------------------------------------------


@dataclass(frozen=True)
class Line:
    """One line of what was sold or taken off. `amount` in fen (negative for a
    discount or a coupon), None where no money moved (a package use, points)."""

    kind: str  # item, discount, coupon, bonus, points
    label: str
    amount: int | None = None
    qty: int = 1
    unit: str = ""  # of qty: "" (×n), 次 (uses), 积分 (points)


@dataclass(frozen=True)
class Purse:
    label: str
    before: int
    after: int
    money: bool  # fen (shown as yuan), else a count


@dataclass(frozen=True)
class Receipt:
    shop: str
    branch: str  # display name
    branch_id: str
    time: str  # the branch's local time
    operator: str
    title: str  # 消费, 充值, 退款...
    kind: str
    entry: str
    lines: tuple[Line, ...]
    total: int | None  # fen; None: nothing to pay (a package use, points)
    paid_by: str
    member: str = ""  # name; "" for a walk-in customer
    purses: tuple[Purse, ...] = ()
    ref: str = ""  # a refund's debit
    reprint: bool = False

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], **changes: Any) -> Receipt:
        fields = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        fields["lines"] = tuple(Line(**x) for x in d.get("lines", ()))
        fields["purses"] = tuple(Purse(**x) for x in d.get("purses", ()))
        return cls(**{**fields, **changes})


TITLES = {"debit": "消费", "topup": "充值", "refund": "退款", "package": "购买套餐",
          "redeem": "积分兑换", "convert": "积分转储值", "card": "办卡",
          "correction": "调整", "expiry": "积分过期", "sale": "销售",
          "exit_settle": "退会结算", "coupon": "优惠券", "checkin": "签到",
          "reward": "推荐奖励", "transfer": "权益转移", "merge": "会员合并"}
# Kinds whose receipt has a money total; any other entry's amount is no payment (a
# coupon's is the fen it takes off, a check-in's none) and its receipt shows none. A
# card's amount is its fee, paid (the day report counts it in card sales): a card sold
# for 10.00 printed "办卡" and no total. One issued free still prints none.
MONEY_KINDS = frozenset({"debit", "topup", "package", "refund", "exit_settle",
                         "correction", "card"})
# A correction's purses, as a receipt says them: money in yuan, the rest as counts.
_COUNTED = {"points": "积分"}


def authorise(ledger: Ledger, operator: str) -> None:
    if not SERVES & ledger.permissions(operator):
        raise PermissionDenied(f"operator {operator} may not see receipts")


def build(ledger: Ledger, entry_id: str, *, title: str = "", reprint: bool = False
          ) -> Receipt:
    """The receipt of one ledger entry, as this branch's books have it."""
    e = ledger.entry(entry_id)
    kind = str(e["kind"])
    member = str(e.get("member") or "")
    if is_walk_in(member):  # 散客: nobody's name, nobody's purses
        member = ""
    branch_id = str(e["node"])
    branches = ledger.rule("branches")
    settings = ledger.rule("settings")
    shop = title or str(settings.get("shop_name") or "") or ledger.chain
    when = datetime.fromtimestamp(int(e["at"]) / 1000, localtime.zone(ledger))
    lines, total = _lines(ledger, e)
    ref = str(e.get("ref") or "")
    return Receipt(
        shop=shop, branch=str(branches.get(branch_id) or branch_id) if isinstance(
            branches, dict) else branch_id, branch_id=branch_id,
        time=when.strftime("%Y-%m-%d %H:%M:%S"), operator=_operator(ledger, str(e["op"])),
        title=TITLES.get("sale" if e.get("goods") and kind == "debit" else kind, "记录"),
        kind=kind,
        entry=entry_id, lines=tuple(lines),
        total=total, paid_by=_paid_by(ledger, e), member=_member_name(ledger, member),
        purses=_purses(ledger, e) if member else (), ref=ref, reprint=reprint)


def _operator(ledger: Ledger, op: str) -> str:
    if op == ledger.owner:
        return "店主"
    return views.operator_name(ledger, op) or op.split("@")[0]


def _member_name(ledger: Ledger, member: str) -> str:
    if not member:
        return ""
    return views.member_names(ledger, [member]).get(member, "") or member


def _service(ledger: Ledger, code: Any) -> str:
    svc = ledger.rule("services").get(str(code)) if code else None
    return str(svc.get("name") or code) if isinstance(svc, dict) else str(code or "")


def _goods(ledger: Ledger, code: Any) -> str:
    item = ledger.catalogue().get(str(code)) if code else None
    return str(item.get("name") or code) if item else str(code or "")


def _zhe(rate: str) -> str:
    """"0.9" -> "9折": how Chinese shops write a discount; "" for what is no rate a
    level may hold (at most 1, 12 characters: crdtledger.rules), which only
    another branch's entry can carry: "x" made the receipt, its reprint and
    GET /api/receipts/{entry} fail (decimal.InvalidOperation), and "1e-999999" would
    print a million digits."""
    try:
        value = Decimal(rate) if len(rate) <= 12 else None
    except InvalidOperation:
        value = None
    if (value is None or not value.is_finite() or not 0 <= value <= 1
            or (value and value.adjusted() < -12)):  # "1e-999999": as many zeros
        return ""
    tenths = (value * 10).normalize()  # rates are Decimal, never float
    return f"{tenths:f}折"


def _lines(ledger: Ledger, e: Mapping[str, Any]) -> tuple[list[Line], int | None]:
    kind, amount = str(e["kind"]), int(e.get("amount") or 0)
    qty = int(e.get("qty") or 1)
    name = _service(ledger, e.get("service")) or _goods(ledger, e.get("goods"))
    if kind == "debit":
        if e.get("pay") == "package":
            return [Line("item", f"{name}（套餐）", None, qty, "次")], None
        gross = int(e.get("gross") or amount)
        lines = [Line("item", name or "消费", gross, qty)]
        off = int(e.get("off") or 0) if e.get("coupon") else 0  # after the level's
        if gross != amount + off:
            rate = str(e.get("discount") or "1")
            lines.append(Line("discount", f"{e.get('level') or '会员'} {_zhe(rate)}".rstrip(),
                              amount + off - gross))
        if off:
            lines.append(Line("coupon", "优惠券", -off))
        return lines, amount
    if kind == "topup":
        lines = [Line("item", "充值", amount)]
        if e.get("bonus"):
            promotion = f"（{e['promotion']}）" if e.get("promotion") else ""
            lines.append(Line("bonus", f"赠送{promotion}", int(e["bonus"])))
        return lines, int(e.get("paid") or amount)
    if kind == "package":
        return [Line("item", f"套餐 {name}", amount, qty, "次")], amount
    if kind == "refund":
        # The sale's points spent since are paid for out of it: the share of the sale
        # refunded, less what was kept for them (Ledger.refund_terms).
        kept = int(e.get("kept") or 0)
        less = [Line("discount", f"扣已用积分 {int(e.get('spent') or 0)} 分", -kept)] \
            if kept else []
        if e.get("goods"):  # units back on the shelf, and their money
            return [Line("item", f"退 {name}", amount + kept, int(e.get("qty") or 1)),
                    *less], amount
        if e.get("qty"):
            return [Line("item", f"退 {name}（套餐）", None, int(e["qty"]), "次")], None
        return [Line("item", f"退 {name}" if name else "退款", amount + kept), *less], amount
    if kind == "redeem" and e.get("goods"):  # goods given for points
        return [Line("item", name, None, qty),
                Line("points", "兑换积分", None, int(e.get("points") or 0), "积分")], None
    if kind in ("redeem", "expiry"):
        gift = str(e.get("gift") or "")
        return [Line("points", gift or TITLES[kind], None, int(e.get("points") or 0),
                     "积分")], None
    if kind == "convert":
        return [Line("points", "积分", None, int(e.get("points") or 0), "积分"),
                Line("bonus", "转为赠送金额", amount)], None
    if kind == "correction":  # signed, by purse: its `amount` is the change's size only
        lines, money = [], 0
        for purse, _node, delta in e["deltas"]:
            if purse in ("cash", "bonus"):
                lines.append(Line("item", "调整储值" if purse == "cash" else "调整赠送",
                                  int(delta)))
                money += int(delta)
            else:
                lines.append(Line("points", f"调整{_COUNTED.get(purse, '套餐次数')}", None,
                                  int(delta), _COUNTED.get(purse, "次")))
        return lines, money if any(p in ("cash", "bonus") for p, _n, _c in e["deltas"]) \
            else None
    if kind == "exit_settle":  # what was paid out, and what was given up
        paid = int(e.get("paid") or 0)
        lines = [Line("item", "退会退款", paid)] if paid else []
        if amount - paid:
            lines.append(Line("discount", "放弃余额", paid - amount))
        return lines, paid
    if kind not in MONEY_KINDS:
        return [Line("item", TITLES.get(kind, kind), None)], None
    return [Line("item", TITLES.get(kind, kind), amount or None)], amount or None


def _paid_by(ledger: Ledger, e: Mapping[str, Any]) -> str:
    pay = str(e.get("pay") or "")
    if e["kind"] == "refund" and e.get("ref"):
        try:
            pay = str(ledger.entry(str(e["ref"])).get("pay") or "")
        except LedgerError:
            pay = ""
        return {"stored": "退回储值", "package": "退回套餐次数"}.get(
            pay, f"退回 {_method(ledger, pay)}" if pay else "")
    if pay == "stored":
        return "储值卡"
    if pay == "package":
        return "套餐次数"
    return _method(ledger, pay)


def _method(ledger: Ledger, code: str) -> str:
    for m in [*ledger.rule("payment_methods"), *DEFAULT_RULES["payment_methods"]]:
        if m.get("code") == code:
            return str(m.get("name_zh") or code)
    return code


def _purses(ledger: Ledger, e: Mapping[str, Any]) -> tuple[Purse, ...]:
    """The member's purses after this entry in the chain's order, and before it: of
    the members that were one when it was written (a reprint after a merge showed
    the merged group's balances, not those the first print showed)."""
    after = ledger.purses_after(str(e["member"]), str(e["id"]), as_written=True)
    change: dict[str, int] = {}
    for purse, _node, delta in e["deltas"]:
        change[purse] = change.get(purse, 0) + int(delta)
    if e["kind"] in ("transfer", "merge"):
        change = {}  # rights moved; the member's purses did not change
    out = [Purse("储值余额", after.get("cash", 0) - change.get("cash", 0),
                 after.get("cash", 0), True)]
    if after.get("bonus") or change.get("bonus"):
        out.append(Purse("赠送余额", after.get("bonus", 0) - change.get("bonus", 0),
                          after.get("bonus", 0), True))
    out.append(Purse("积分", after.get("points", 0) - change.get("points", 0),
                     after.get("points", 0), False))
    for purse in change:
        if purse.startswith("pkg:"):
            try:
                name = _service(ledger, ledger.entry(purse[4:]).get("service"))
            except LedgerError:
                name = ""
            out.append(Purse(f"{name or '套餐'} 剩余",
                             after.get(purse, 0) - change[purse], after.get(purse, 0), False))
    return tuple(out)


# --- layout -----------------------------------------------------------------------------


def cols(text: str) -> int:
    """Columns a string takes in Chinese mode: ASCII one, everything else two."""
    return sum(1 if ord(c) < 0x80 else 2 for c in text)


def _cut(text: str, width: int) -> list[str]:
    """Text in pieces of at most `width` columns."""
    out, cur = [], ""
    for c in text:
        if cols(cur + c) > width:
            out.append(cur)
            cur = ""
        cur += c
    return [*out, cur] if cur or not out else out


# Every field is one line of the receipt: a liar's member named "王芳\n合计（元） 0.00\n
# 凭此票可退 500.00 元" printed lines of its own on an honest branch's receipt.
_BREAKS = {ord(c): " " for c in "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"}


def pair(left: str, right: str, width: int) -> list[str]:
    """`left` at the left, `right` at the right margin; a long left wraps above, and a
    right too long to share a line (a member's name of 20 characters is 40 columns of
    58 mm paper's 32) goes on lines of its own, to the right margin."""
    left, right = left.translate(_BREAKS), right.translate(_BREAKS)
    if cols(left) + cols(right) + 1 <= width:
        return [left + " " * (width - cols(left) - cols(right)) + right]
    if cols(right) + 2 > width:
        return [*_cut(left, width),
                *(" " * (width - cols(part)) + part for part in _cut(right, width))]
    *head, last = _cut(left, width)
    if cols(last) + cols(right) + 1 > width:
        head.append(last)
        last = ""
    return [*head, last + " " * (width - cols(last) - cols(right)) + right]


def _one_line(text: str, width: int) -> str:
    """`text` cut to `width` columns, an ellipsis saying so: a member's name is read
    from every branch's records, and one of a paragraph printed as lines of its own."""
    parts = _cut(text.translate(_BREAKS), width - cols("…"))
    return parts[0] + "…" if len(parts) > 1 else parts[0]


def center(text: str, width: int) -> list[str]:
    text = text.translate(_BREAKS)
    return [" " * max(0, (width - cols(p)) // 2) + p for p in _cut(text, width)]


@dataclass
class Layout:
    """The receipt as lines of text with a style each, and the QR code's data."""

    rows: list[tuple[str, str]] = field(default_factory=list)  # (style, text)
    qr: str = ""
    footer: list[str] = field(default_factory=list)

    def add(self, style: str, lines: list[str]) -> None:
        self.rows += [(style, x) for x in lines]

    def text(self) -> str:
        qr = [f"[二维码 QR: {self.qr}]"] if self.qr else []
        return "\n".join([*(t for _s, t in self.rows), *qr, *self.footer])


def _amount(line: Line) -> str:
    if line.amount is None:
        return f"{line.qty}{line.unit}" if line.unit else f"×{line.qty}"
    text = format_yuan(line.amount)
    return f"+{text}" if line.kind == "bonus" else text


def layout(r: Receipt, width: int) -> Layout:
    rule = "-" * width
    out = Layout(qr=r.entry)
    out.add("title", center(r.shop, width))
    out.add("center", center(r.branch if r.branch == r.branch_id
                             else f"{r.branch}（{r.branch_id}）", width))
    out.add("bold", center(f"{r.title}小票" + ("（重打）" if r.reprint else ""), width))
    out.add("plain", [rule])
    out.add("plain", pair("时间", r.time, width))
    out.add("plain", pair("收银员", r.operator, width))
    out.add("plain", pair("会员", _one_line(r.member or "散客", width - cols("会员") - 1),
                          width))
    out.add("plain", [rule])
    for line in r.lines:
        label = line.label
        if line.amount is not None and line.qty > 1:
            label += f" ×{line.qty}{line.unit}"
        out.add("plain", pair(label, _amount(line), width))
    out.add("plain", [rule])
    if r.total is not None:
        out.add("bold", pair("合计（元）", format_yuan(r.total), width))
    if r.paid_by:
        out.add("plain", pair("支付方式", r.paid_by, width))
    if r.ref:
        out.add("plain", pair("原单", r.ref, width))
    if r.purses:
        out.add("plain", [rule])
        for p in r.purses:
            shown = [format_yuan(v) if p.money else str(v) for v in (p.before, p.after)]
            unit = "次" if p.label.endswith("剩余") else ""
            out.add("plain", pair(p.label, f"{shown[0]} → {shown[1]}{unit}", width))
    out.add("plain", [rule])
    out.footer = [*pair("单号", r.entry, width), *center("谢谢惠顾，欢迎再来", width)]
    return out


def text(r: Receipt, width: int = COLUMNS[58]) -> str:
    """The receipt as plain text (the command line's `receipt show`, the API)."""
    return printable(layout(r, width).text())


# --- ESC/POS ------------------------------------------------------------------------------


def _escpos(lay: Layout) -> bytes:
    from escpos.constants import QR_ECLEVEL_M
    from escpos.printer import Dummy

    p = Dummy()

    def say(line: str) -> None:
        # Text only: a control byte in a name is a printer command (ESC p opens the
        # drawer). The stores refuse them; a store written before that may hold some.
        p._raw(printable(line).encode("gb18030", errors="replace") + b"\n")

    p._raw(INIT + ENTER_CHINESE)
    for style, line in lay.rows:
        if style == "title":
            p.set(bold=True, double_height=True)
        elif style == "bold":
            p.set(bold=True)
        say(line)
        if style in ("title", "bold"):
            p.set(bold=False, normal_textsize=True)
    if lay.qr:
        # Printed by the printer itself (GS ( k): a few bytes rather than an image, and
        # the data reads back from the byte stream (the demo's printer shows it).
        p.set(align="center")
        p.qr(lay.qr, ec=QR_ECLEVEL_M, size=6, native=True)
        p._raw(b"\n")
        p.set(align="left")
    for line in lay.footer:
        say(line)
    p.cut()
    return bytes(p.output)


def render(r: Receipt, width_mm: int = 58) -> bytes:
    """The receipt as the bytes an ESC/POS printer of that paper width takes."""
    return _escpos(layout(r, COLUMNS[width_mm]))


def sample_page(config: PrinterConfig) -> bytes:
    """What `crdtledger printer test` prints: the header, a ruler of the width, Chinese
    text and a QR code, so the paper shows whether width and code page are right."""
    width = config.columns
    lay = Layout(qr="crdtledger printer test")
    lay.add("title", center(config.title or "打印测试", width))
    lay.add("center", center("打印测试 printer test", width))
    lay.add("plain", ["0123456789" * (width // 10) + "0123456789"[:width % 10]])
    lay.add("plain", pair("中文：储值余额", "128.00", width))
    lay.add("plain", pair("纸宽", f"{config.width} mm, {width} 列", width))
    lay.footer = center("如果上面的尺子正好一行，宽度就对了", width)
    return _escpos(lay)


# --- sending ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Printed:
    printed: bool
    reason: str = ""  # why not, in English (the API's and the command line's)
    printer: str = ""
    # Why not, for a counter to say in its language: refused (off, or nothing at that
    # address), timeout, settings (printer.toml unreadable), error (anything else).
    code: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def deliver(config: PrinterConfig, data: bytes, timeout: float = TIMEOUT_S) -> Printed:
    """Send the bytes to the printer; blocking (run it off the event loop)."""
    where = config.describe()
    try:
        if config.usb:
            _usb(config.usb, data, timeout)
        else:
            _network(config.host, config.port, data, timeout)
    except Exception as e:  # any failure of the printer is a reason, never a crash
        return Printed(False, _reason(e, config), where, _code(e))
    return Printed(True, "", where)


def _network(host: str, port: int, data: bytes, timeout: float) -> None:
    from escpos.printer import Network

    printer = Network(host, port, timeout=timeout)
    printer.open()
    try:
        printer._raw(data)
    finally:
        printer.close()


def _usb(ids: tuple[int, int], data: bytes, timeout: float) -> None:
    from escpos.printer import Usb

    if not Usb.is_usable():
        raise PrinterError("USB printing needs libusb on this PC "
                           "(apt install libusb-1.0-0)")
    from escpos.exceptions import DeviceNotFoundError, USBNotFoundError

    printer = Usb(ids[0], ids[1], timeout=int(timeout * 1000))
    try:
        printer.open()
    except (DeviceNotFoundError, USBNotFoundError) as e:
        raise _NotPluggedIn() from e
    try:
        printer._raw(data)
    finally:
        printer.close()


def _os_error(e: BaseException) -> OSError | None:
    # python-escpos wraps the socket's error in its own, without `from`: the cause
    # is the exception it was handling.
    cause: BaseException | None = e
    while cause is not None and not isinstance(cause, OSError):
        cause = cause.__cause__ or cause.__context__
    return cause


class _NotPluggedIn(Exception):
    """No USB device with the printer's ids (python-escpos raises the same error for
    a network printer that refuses, so only `_usb` can tell)."""


def _code(e: BaseException) -> str:
    cause = _os_error(e)
    if isinstance(e, _NotPluggedIn):
        return "not_found"
    if isinstance(cause, ConnectionRefusedError):
        return "refused"
    if isinstance(cause, TimeoutError):
        return "timeout"
    return "error"


def _reason(e: BaseException, config: PrinterConfig) -> str:
    cause = _os_error(e)
    where = config.describe().split(",")[0]
    if isinstance(e, _NotPluggedIn):
        return (f"no printer {where} is plugged into this PC (check its cable and "
                "power: `lsusb` lists it when it is there)")
    if isinstance(cause, ConnectionRefusedError):
        return f"the printer at {where} refused the connection (is it switched on?)"
    if isinstance(cause, TimeoutError):
        return f"the printer at {where} did not answer within {TIMEOUT_S:g} s"
    if isinstance(cause, OSError):
        return f"the printer at {where}: {cause.strerror or cause}"
    return f"the printer at {where}: {' '.join(str(e).split()) or type(e).__name__}"


def print_receipt(config: PrinterConfig, receipt: Receipt) -> Printed:
    """Render and send; blocking (a worker thread's job)."""
    return deliver(config, render(receipt, config.width))


async def print_entry(ledger: Ledger, entry_id: str, *, reprint: bool = False
                      ) -> Printed | None:
    """Print an entry's receipt on this PC's printer, None if it has none. Read on
    the loop (which owns the store), rendered and sent in a worker thread."""
    try:
        config = load_config(ledger.storage.dir)
    except PrinterError as e:
        return Printed(False, str(e), code="settings")
    if config is None:
        return None
    receipt = build(ledger, entry_id, title=config.title, reprint=reprint)
    return await asyncio.get_running_loop().run_in_executor(_PRINTING, print_receipt, config,
                                                            receipt)


# One thread sends to the printer, jobs in turn: on the loop's default pool, a dozen
# prints to a printer that hung (3 s each) held every thread its logins check
# passwords in, and a login took 6 s at every till.
_PRINTING = ThreadPoolExecutor(max_workers=1, thread_name_prefix="receipt-printer")



# --- the command line: `crdtledger printer ...` (peer/cli.py wires it in) ---------------


def printer_options(p: Any) -> None:
    """`crdtledger printer set|show|test|off`: this PC's printer, no ledger needed."""
    p.add_argument("action", choices=("set", "show", "test", "off"),
                   help="set: where receipts go; show: the setting; test: print a test "
                   "page; off: print nothing")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--net", metavar="HOST:PORT",
                       help="a network printer (raw port 9100)")
    where.add_argument("--usb", metavar="VENDOR:PRODUCT",
                       help="a USB printer, ids in hex as lsusb shows them")
    p.add_argument("--width", type=int, choices=sorted(COLUMNS), help="paper width, mm "
                   "(default 58)")
    p.add_argument("--title", help="the receipt's header (default: the rule settings' "
                   "shop_name, else the chain's name)")


def printer_command(args: Any, data_dir: Path) -> tuple[dict[str, Any], str]:
    """What `crdtledger printer ACTION` does: (data for --json, text for a person)."""
    if not Path(data_dir).is_dir():
        raise InvalidInput(f"{data_dir} is not a node's data directory")
    current = load_config(data_dir)
    if args.action == "set":
        if args.net is None and args.usb is None and current is None:
            raise InvalidInput("say where the printer is: --net HOST:PORT or --usb "
                               "VENDOR:PRODUCT")
        base = current or PrinterConfig()
        if args.net is not None:
            host, port = parse_net(args.net)
            base = PrinterConfig(host=host, port=port, width=base.width, title=base.title)
        elif args.usb is not None:
            base = PrinterConfig(usb=parse_usb(args.usb), width=base.width, title=base.title)
        config = PrinterConfig(base.host, base.port, base.usb,
                               args.width or base.width,
                               base.title if args.title is None
                               else check_text(args.title, "--title", limit=TITLE_LIMIT))
        save_config(data_dir, config)
        return _shown(config), f"receipts print on {config.describe()}"
    if args.action == "off":
        save_config(data_dir, None)
        return {"printer": None}, "no receipt printer: receipts are not printed"
    if current is None:
        text_ = ("no receipt printer: receipts are not printed (set one with "
                 "`crdtledger printer set --net HOST:9100 --width 58`)")
        if args.action == "test":
            raise PrinterError(text_)
        return {"printer": None}, text_
    if args.action == "show":
        return _shown(current), f"receipts print on {current.describe()}" + (
            f", header {current.title!r}" if current.title else "")
    done = deliver(current, sample_page(current))
    if not done.printed:
        raise PrinterError(f"test page not printed: {done.reason}")
    return done.as_dict(), f"test page printed on {done.printer}"


def _shown(config: PrinterConfig) -> dict[str, Any]:
    return {"printer": config.describe(), "host": config.host or None,
            "port": config.port if not config.usb else None,
            "usb": f"{config.usb[0]:04x}:{config.usb[1]:04x}" if config.usb else None,
            "width": config.width, "columns": config.columns, "title": config.title}

__all__ = ["COLUMNS", "Line", "Printed", "PrinterConfig", "PrinterError", "Purse", "Receipt",
           "build", "deliver", "load_config", "print_entry", "render", "save_config", "text"]
