"""What the counter says, in the session's language, and how it writes money.

Simplified Chinese is the default (the people at the desk read it); English is one
click away and stored per browser in `app.storage.user["lang"]`. Texts sit next to
the code that shows them, as `tr("中文", "English")` pairs, rather than in a catalogue:
two languages do not need one, and the pair keeps both in view when either changes.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from nicegui import app

from crdtledger.errors import InvalidAmount
from crdtledger.money import parse_yuan
from crdtledger.peerclock import span
from crdtledger.views import mask_phone as _mask_phone

Lang = Literal["zh", "en"]
LANGS: dict[Lang, str] = {"zh": "中文", "en": "English"}
DEFAULT_LANG: Lang = "zh"


def lang() -> Lang:
    """The session's language; the default outside a browser session (e.g. at startup)."""
    try:
        value = app.storage.user.get("lang", DEFAULT_LANG)
    except RuntimeError:  # no request in this context
        return DEFAULT_LANG
    return "en" if value == "en" else "zh"


def set_lang(value: Lang) -> None:
    app.storage.user["lang"] = value


def tr(zh: str, en: str, **kw: Any) -> str:
    text = en if lang() == "en" else zh
    return text.format(**kw) if kw else text


def money(fen: int) -> str:
    """1234 -> "¥12.34", -123456789 -> "-¥1,234,567.89": grouped, as a price tag reads."""
    whole, cents = divmod(abs(fen), 100)
    return f"{'-' if fen < 0 else ''}¥{whole:,}.{cents:02d}"


# Commas only as thousands separators: "1,234.50". Any other comma ("12,34" meant as a
# decimal comma, "1,2,3") is refused, not dropped (it made 12,34 into 1,234.00).
_GROUPED = re.compile(r"[0-9]{1,3}(,[0-9]{3})+(\.[0-9]*)?\Z")


def parse_money(text: object) -> int:
    """A yuan amount typed at the counter, in fen. "12.345", "-5", "12,34", "abc" and "0"
    raise InvalidAmount: an amount is exact to the fen and above zero, never rounded.
    So does anything but text (a box set to a list by a hand-made socket event)."""
    if not isinstance(text, str):
        raise InvalidAmount("an amount is typed as text, like 12.50")
    # ¥ as on a price tag, or ￥ (full width) as a Chinese input method types it.
    amount = text.strip().lstrip("¥￥")
    if "," in amount:
        if not _GROUPED.match(amount):
            raise InvalidAmount(f"amount {text!r} is not like 1,234.50 (a comma separates "
                                "thousands only; the decimal point is a point)")
        amount = amount.replace(",", "")
    return parse_yuan(amount)


def mask_phone(phone: str) -> str:
    return _mask_phone(phone)


def duration(ms: int) -> str:
    """A clock difference: "2 天 3 小时" / "2 d 3 h" (crdtledger.peerclock.span)."""
    ms = abs(ms)
    if lang() == "en":
        return span(ms)
    if ms >= 86_400_000:
        return f"{ms // 86_400_000} 天 {ms % 86_400_000 // 3_600_000} 小时"
    if ms >= 3_600_000:
        return f"{ms // 3_600_000} 小时 {ms % 3_600_000 // 60_000} 分钟"
    return f"{ms // 60_000} 分 {ms % 60_000 // 1000} 秒"
