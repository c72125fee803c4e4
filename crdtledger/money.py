"""Exact money: integer fen in, integer fen out.

Amounts typed by people are yuan strings ("12.34"). They are parsed digit by digit;
anything that would need rounding ("12.345") is an error, never rounded.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from decimal import ROUND_FLOOR, ROUND_HALF_UP, Decimal

from crdtledger.errors import InvalidAmount

# pycrdt stores numbers as float64: integers beyond 2**53 lose precision and values of
# 2**64 and above panic inside Rust. Every count or amount we write stays well inside.
MAX_AMOUNT = 10**13  # 100 billion yuan in fen: far above any card, far below 2**53

# ASCII digits only: `\d` would also take full-width and other Unicode digits ("１２"):
# an amount is what a person reads back, so one typed full-width is refused, saying so.
_YUAN = re.compile(r"^([0-9]{1,11})(?:\.([0-9]{1,2}))?$")


# The full-width forms of ASCII (U+FF01-FF5E) and the ideographic space: what a Chinese
# input method types for digits and letters ("１２．５０", "Ｃ１０００１", "１３８…").
# Only these: NFKC would also make "1²" 12, and folding "，" or "（" in free text would
# change how a Chinese sentence reads.
_FULL_WIDTH = {c: c - 0xFEE0 for c in range(0xFF01, 0xFF5F)} | {0x3000: 0x20}


def half_width(text: str) -> str:
    """`text` with full-width digits, letters and signs as the ASCII they stand for: for
    searches, never names or notes (and never an amount taken: `parse_yuan` says so)."""
    return text.translate(_FULL_WIDTH)


def parse_yuan(text: str) -> int:
    """'12.34' -> 1234. Positive amounts only: signs, exponents and extra digits are refused."""
    if not isinstance(text, str):
        raise InvalidAmount(f"amount must be text like 12.34, not {type(text).__name__}")
    s = text.strip()
    m = _YUAN.match(s)
    if not m:
        if s != half_width(s) and _YUAN.match(half_width(s)):
            raise InvalidAmount(f"amount {text!r} is typed in full-width digits: type it "
                                f"as {half_width(s)} (half-width)")
        if re.match(r"^[0-9]+\.[0-9]{3,}$", s):
            raise InvalidAmount(f"amount {text!r} has more than two decimals (fen)")
        raise InvalidAmount(f"amount {text!r} is not a positive yuan amount like 12.34")
    fen = int(m.group(1)) * 100 + int((m.group(2) or "0").ljust(2, "0"))
    if fen <= 0:
        raise InvalidAmount(f"amount {text!r} must be above zero")
    return check_amount(fen)


def check_amount(fen: object, *, allow_zero: bool = False) -> int:
    """Validate an amount in fen coming from code or a form: an int, positive, in range."""
    if isinstance(fen, bool) or not isinstance(fen, int):
        raise InvalidAmount(f"amount must be a whole number of fen, not {fen!r}")
    if fen < 0 or (fen == 0 and not allow_zero):
        raise InvalidAmount(f"amount must be above zero, not {fen}")
    if fen > MAX_AMOUNT:
        raise InvalidAmount(f"amount {fen} is beyond the largest allowed ({MAX_AMOUNT})")
    return fen


def given_away(worth: int, price: int) -> int:
    """What a sale at `price` of what lists at `worth` gives away: the rest, when the
    price is under half the list (packages sell below it; under half, approvals count
    it: Payments.sell_package); else nothing."""
    return worth - price if 2 * price < worth else 0


def pieces(n: int) -> list[int]:
    """`n` in parts of at most MAX_AMOUNT, the most an entry may carry. A rights row
    may hold more (a liar's transfers of MAX_AMOUNT each to an honest branch add up),
    and moving it whole was refused: the holder could never hand it over, sweep it or
    grant from it, and every batch of a hand-over after it stopped."""
    q, r = divmod(n, MAX_AMOUNT)
    return [MAX_AMOUNT] * q + ([r] if r else [])


def check_count(n: object, what: str = "count") -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n <= 0 or n > MAX_AMOUNT:
        raise InvalidAmount(f"{what} must be a positive whole number, not {n!r}")
    return n


def format_yuan(fen: int) -> str:
    sign = "-" if fen < 0 else ""
    q, r = divmod(abs(fen), 100)
    return f"{sign}{q}.{r:02d}"


def format_purse(purse: str, amount: int) -> str:
    """Money purses print as yuan; points and package uses as plain counts."""
    return format_yuan(amount) if purse in ("cash", "bonus") else str(amount)


def format_purses(held: Mapping[str, int], sep: str = ", ") -> str:
    """Purses and amounts ("cash 50.00, points 120"): what a branch holds or moved."""
    return sep.join(f"{purse} {format_purse(purse, v)}" for purse, v in held.items())


def apply_rate(fen: int, rate: str) -> int:
    """fen * rate rounded half-up to the fen: the one rounding rule for discounts."""
    return int((Decimal(fen) * Decimal(rate)).to_integral_value(rounding=ROUND_HALF_UP))


def points_for(fen: int, points_per_yuan: str, multiplier: str) -> int:
    """Points earned on a spend, rounded down: a member never gets a fraction of a point."""
    value = Decimal(fen) / 100 * Decimal(points_per_yuan) * Decimal(multiplier)
    return int(value.to_integral_value(rounding=ROUND_FLOOR))


def from_crdt(value: object) -> int:
    """pycrdt hands numbers back as float64; turn them into exact ints or refuse."""
    if isinstance(value, bool):
        raise ValueError("boolean where a number was expected")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer() and abs(value) <= MAX_AMOUNT:
        return int(value)
    raise ValueError(f"not an exact integer: {value!r}")
