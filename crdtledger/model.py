"""The shape of the replicated data, and the checks every replica applies to it.

Documents (one pycrdt Doc each, synced independently by state vector):

- ``ledger/YYYY-MM``: root Map ``entries``: entry id -> immutable dict. Split by the
  month of the entry's timestamp, so years of history never have to be in memory.
- ``members/NN``: root Maps ``members`` (member id -> Map of profile fields) and
  ``cards`` (card id -> Map). 32 shards keep a member edit from loading every member.
- ``rules``: root Map ``rules``: rule version id -> immutable dict with effective_from.
- ``operators``: root Maps ``operators`` (id -> Map) and ``roles`` (name -> Map).

Nothing is ever deleted from a Map: a deletion does not move a state vector, so
two replicas could differ with equal state vectors. Removal is a written value.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, TypeGuard, TypeVar, get_args

from crdtledger.escrow import Delta, check_deltas_authorised
from crdtledger.hlc import NODE_ID, id_time_ms, matched_id_time_ms
from crdtledger.money import MAX_AMOUNT, from_crdt

T = TypeVar("T")

MEMBER_SHARDS = 32
# Anchored with \Z: "$" would also accept a name with a trailing newline ("rules\n").
_MONTH = r"[0-9]{4}-(?:0[1-9]|1[0-2])"
MONTH = re.compile(rf"^{_MONTH}\Z")  # of a ledger document, a cut, a closing
DOC_NAME = re.compile(rf"^(ledger/{_MONTH}|members/[0-9]{{2}}|rules|operators)\Z")
ID = re.compile(r"^[0-9A-HJKMNP-TV-Z]{13}\.[A-Z0-9][A-Z0-9_]{0,15}\Z")
# The walk-in customer (散客) of branch N is WALK_IN + N (crdtledger.payments.walk_in).
WALK_IN = "0" * 13 + "."
PURSE = re.compile(
    r"^(cash|bonus|points|stock|transit|(pkg|cpn):[0-9A-HJKMNP-TV-Z]{13}\.[A-Z0-9_]{1,16})\Z")
# pkg:ID a package's uses; cpn:ID a coupon's one right to be redeemed (crdtledger.coupons).
# A goods item's units (crdtledger.goods): its escrow "member" is the item's stock id,
# `stock` the units on a branch's shelf, `transit` those shipped to a branch and not yet
# received there. Moved only by stock entries (shipping is a stock entry, never a rights
# transfer: units do not move between shops because a ledger row says so).
GOODS_PURSES = frozenset({"stock", "transit"})
# A shop closing for good: the `reason` of its hand-over's transfers
# (Payments.hand_over_rights), which storage's handover_to and handed_over read.
HANDOVER_REASON = "handover"

# Each closed set of words the ledger uses is one Literal type, and its values at run
# time are derived from it (typing.get_args), so the two cannot drift apart.

MoneyPurse = Literal["cash", "bonus"]
MONEY_PURSES: tuple[MoneyPurse, ...] = get_args(MoneyPurse)

EntryKind = Literal[
    "topup",  # value sold: cash (+ bonus from a promotion)
    "debit",  # value consumed: service or amount, paid from purses or at the till
    "refund",  # reverses (part of) a debit, at the branch that holds its refund rights
    "transfer",  # rights moved from the writer to another branch
    "redeem",  # points spent on a gift
    "convert",  # points turned into bonus value
    "correction",  # an approved manual adjustment
    "expiry",  # points that ran out
    "package",  # a package (count card) sold
    "card",  # a card issued (and its fee, if any)
    # A merged member's rights moved by their holder to the survivor: a pair in one
    # commit, "out" (member = merged, `to` = survivor, the holder's rights lowered) and
    # "in" (member = survivor, `ref` = the out entry, the same rights raised). Only the
    # holder may lower its rights, so every branch sweeps its own (crdtledger.merge).
    "merge",
    # A coupon issued (crdtledger.coupons): its terms, and one unit of rights on
    # cpn:<its id> at the issuing branch. Redeemed by the entry that lowers that unit:
    # "coupon_use" on its own, or the debit it discounts (field `coupon`).
    "coupon",
    "coupon_use",
    # Units of a goods item at a branch (crdtledger.goods): `member` is the item's stock
    # id, `goods` its code, `qty` the units, `reason` in, return, adjust, ship, receive,
    # sale or gift, `ref` the sale's debit or the gift's redeem written with it.
    "stock",
    # Membership workflows (crdtledger.membership): a member's referrer (`referrer`);
    # an approval or rejection (`ref` the referral or application, `step`); a
    # referral's reward, written only by the branch that recorded the referral (write
    # rule referral-reward); a check-in at an activity (`activity`; with `ref`, the
    # reversal of a surplus one); an exit or return application (`step`); the stored
    # value settled when an exit is approved (`step` refund or forfeit, `paid` cash).
    "referral",
    "approval",
    "reward",
    "checkin",
    "exit",
    "exit_settle",
    # Appointments (crdtledger.bookings), no deltas: they move no money. `member` is the
    # technician's id (minted at the branch the technician belongs to, so its node part
    # names that branch), so a technician's whole book is one range of an index.
    # "technician" a version of a technician (code, name, services, hours; `ref` is
    # "technicians"); "booking" a slot asked for (`ref` the member, `service`, `start`
    # ms, `minutes`), confirmed by itself when its writer is the technician's branch;
    # "booking_decision" the technician's branch deciding on one (`ref` the booking,
    # `status`); "booking_cancel" a cancellation, by any branch.
    "technician",
    "booking",
    "booking_decision",
    "booking_cancel",
    # A node's own records that wrote into an erased member's Map, redacted
    # (crdtledger.erasure, crdtledger.redaction): `records` lists, for each, "seq prev
    # hash digest" (hex: its place in the writer's hash chain and the SHA-256 of its
    # redacted update), ";"-separated, so the records travel redacted and still verify.
    "redaction",
]
ENTRY_KINDS: frozenset[str] = frozenset(get_args(EntryKind))


def entry_kinds_text() -> str:
    """The entry kinds this build reads, as a store's meta `entry_kinds` keeps them: a
    store opened by a build that reads others judges again what it set aside
    (commit.LedgerBase, projection.rejudge_quarantined)."""
    return ",".join(sorted(ENTRY_KINDS))

# How something is paid (an entry's `pay`): from the member's purses, the fixed part
# (a debit from stored value or a package's uses; a package sold from stored value),
# or at the till by one of the chain's payment methods, the codes of the rule
# `payment_methods` (cash, wechat, alipay, card, other by default). A top-up is paid at
# the till only. The rule is checked when an entry is written; a replica accepts any
# short code it reads (one the chain has since dropped, or added after its own rule).
PurseMethod = Literal["stored", "package"]
PURSE_METHODS: tuple[PurseMethod, ...] = get_args(PurseMethod)
PAY_CODE = re.compile(r"^[a-z][a-z0-9_]{0,15}\Z")  # a method code of the rule

# A member's, operator's or role's Map keeps who changed it under this key: change id
# -> {"op": operator, "fields": [names]} (commit.note_edit). The id, minted for the
# change, says when and at which branch. Field names only, never values: an erased
# member's old data is not kept here. (A card's events carry their operator; a rule
# version its `by`; an entry its `op` and `approver`.)
EDITS = "edits"

CardType = Literal["stored_value", "points", "discount", "package", "trial"]
CARD_TYPES: tuple[CardType, ...] = get_args(CardType)
# A card's status is that of the events no later one has seen (projection.card_frontier).
CardStatus = Literal["active", "lost", "replaced", "returned"]
CARD_STATUSES: tuple[CardStatus, ...] = get_args(CardStatus)

# What a person may type for a card, its PIN, a service code, a member's gender and a
# day of the year: the ledger's checks and the operation table's parameters both
# read these (crdtledger/operations.py), so the API and the CLI cannot retype them.
CARD_NO = re.compile(r"^[0-9A-Za-z:_-]{1,40}\Z")  # stored upper-case
PIN = re.compile(r"^[0-9]{4,8}\Z")
SERVICE_CODE = re.compile(r"^[A-Za-z0-9_-]{1,20}\Z")
GENDERS = ("F", "M")
PARTIAL_DATE = re.compile(r"^([0-9]{4}-)?[0-9]{2}-[0-9]{2}\Z")  # 1990-05-17 or 05-17

# What a member's level is reached on (rule `level_basis`).
LevelBasis = Literal["topped", "spent"]
LEVEL_BASES: tuple[LevelBasis, ...] = get_args(LevelBasis)

PERMISSIONS = frozenset(
    {
        "member.add",
        "member.edit",
        "member.delete",
        "member.upgrade",
        "member.merge",  # fold a duplicate member into another (owner, manager)
        "card.issue",
        "card.lost",
        "card.replace",
        "card.return",
        "topup",
        "debit",
        "refund",
        "adjust",
        "points.redeem",
        "package.sell",
        "rights.transfer",
        "reports.view",
        "rules.manage",
        "operators.manage",
        "sync",
        "backup",
        "approve",
        "audit.view",  # the audit trail: who did what, when, where (owner, manager)
        "coupon.issue",  # give a member a coupon (owner, manager)
        "coupon.redeem",  # take a coupon, on its own or off a sale (cashiers too)
        "goods.write",  # the goods catalogue (a governance rule: head office only)
        "stock.write",  # purchase in and return, stock-take, shipping and receiving
        "sale",  # sell goods over the counter (crdtledger.goods)
        "notice.broadcast",  # send a promotion to a segment of members (owner, manager)
        "referral.approve1",  # a referral's first level of approval (store manager)
        "referral.approve2",  # its second level, by another operator (head office)
        "checkin",  # check a member in at an activity (签到; cashiers too)
        "member.exit",  # apply for a member's exit (退会) or return (cashiers too)
        "member.exit.approve",  # decide an exit or return application (owner, manager)
        "technician.manage",  # add or change this branch's technicians (crdtledger.bookings)
        "booking.write",  # book, cancel, record a no-show (crdtledger.bookings)
    }
)

BUILTIN_ROLES: dict[str, frozenset[str]] = {
    "owner": PERMISSIONS,
    "manager": PERMISSIONS - {"operators.manage"},
    "cashier": frozenset(
        {
            "member.add",
            "member.edit",
            "card.issue",
            "card.lost",
            "topup",
            "debit",
            "points.redeem",
            "package.sell",
            "coupon.redeem",
            "sale",
            "checkin",
            "member.exit",
            "booking.write",
        }
    ),
}

# Default rules, used until the chain writes its own version of a kind. Kept in code
# rather than written at init so that every node starts from the same rules without
# each writing a copy.
DEFAULT_RULES: dict[str, Any] = {
    "services": {
        # minutes: how long a booking of it holds a technician (crdtledger.bookings);
        # a service without it cannot be booked.
        "FOOT60": {"name": "足疗 60 分钟", "price": 12800, "minutes": 60},
        "BODY90": {"name": "全身按摩 90 分钟", "price": 19800, "minutes": 90},
        "HAIR": {"name": "洗剪吹", "price": 6800, "minutes": 45},
    },
    "levels": [
        {"name": "普通会员", "threshold": 0, "discount": "1", "points_multiplier": "1"},
        {"name": "银卡", "threshold": 100000, "discount": "0.95", "points_multiplier": "1.2"},
        {"name": "金卡", "threshold": 500000, "discount": "0.9", "points_multiplier": "1.5"},
    ],
    # Levels are reached on cumulative top-ups (the brochures' usual basis).
    "level_basis": {"basis": "topped"},
    "earn": {"points_per_yuan": "1", "expire_days": 365},
    "promotions": [],
    "conversion": {"points_per_yuan": "100"},
    "card_types": {t: {"fee": 0} for t in CARD_TYPES},
    # correction_limit, stock_adjust_limit: an operator's corrections (their worth) or
    # stock-takes (at cost) of a day without an approver, counted together, above this
    # (fen) need one (crdtledger.payments, crdtledger.goods).
    "approval": {"topup_limit": 500000, "correction_limit": 10000, "stock_adjust_limit": 10000},
    "settings": {"timezone": "Asia/Shanghai"},
    "branches": {},  # node id -> display name, e.g. {"SH01": "南京西路店"}; the id if absent
    # Who is told what, when (crdtledger.notices.DEFAULT_RULE fills what a version
    # leaves out; the gateways are each node's own: peer.gateways).
    "notifications": {},
    "revocations": {"crl": ""},  # base64 DER CRL of the chain CA (peer/chain.py); "" = none
    # The goods catalogue (crdtledger.goods): code -> item. Each version names only the
    # items it adds or changes; the catalogue is all versions folded per code.
    "goods": {},
    # How the till takes money, in the order the counter offers them (the first is the
    # default): a top-up, a package or a service paid at the till names one.
    "payment_methods": [
        {"code": "cash", "name_zh": "现金", "name_en": "cash"},
        {"code": "wechat", "name_zh": "微信", "name_en": "WeChat Pay"},
        {"code": "alipay", "name_zh": "支付宝", "name_en": "Alipay"},
        {"code": "card", "name_zh": "银行卡", "name_en": "bank card"},
        {"code": "other", "name_zh": "其他", "name_en": "other"},
    ],
    # Membership workflows (crdtledger.membership): the referrer's reward once a
    # referral is approved twice (none, points, bonus fen or a coupon of `off` fen),
    # the check-in activities (code -> window, points, repeat), and what an approved
    # exit does with the remaining principal (refund in cash, or forfeit).
    "referral": {"reward": "none"},
    "checkin": {},
    "exit": {"stored_value": "refund"},
    # How many days after a debit it may still be refunded, in the branch's dates
    # (0: no limit). Past it, a manager corrects the member's balance instead.
    "refunds": {"days": 0},
}
RULE_KINDS = frozenset(DEFAULT_RULES)


def is_one_of(value: object, allowed: tuple[T, ...]) -> TypeGuard[T]:
    """`value in allowed`, telling the type checker that `value` is then one of the
    Literal values `allowed` was derived from (PURSE_METHODS, CARD_STATUSES...)."""
    return value in allowed


def owner_of(node: str) -> str:
    """The built-in operator a node's owner acts as at its own console."""
    return f"owner@{node}"


# What a member may write on the self-service pages: the built-in operator those
# pages act as at a node, so the audit trail says a member did it there, not the owner.
SELF_SERVICE = frozenset({"booking.write", "checkin"})


def self_service_of(node: str) -> str:
    return f"self@{node}"


# What an erased member keeps (crdtledger.erasure): whose books it is in, and how it
# is linked to the members merged with it. Everything else is dropped: a list of what
# to keep, so that a new personal field is erased without a change here.
ERASURE_KEEPS = ("home", "level", "merged_into", "created_by")
_ERASED_FIELDS = frozenset({*ERASURE_KEEPS, "name", "phone", "deleted", "erased", EDITS})


def erased(profile: Mapping[str, Any]) -> bool:
    """Whether a member's value is an erasure as erasure.erase_member writes it: a new
    Map of what is kept, name and phone empty, saying `erased`. A flag set inside the
    member's Map with everything else left in place (a liar's) made honest branches
    redact their own records of the member, and new replicas, taking those, lost the
    member while old ones still showed the name: it is no erasure."""
    return (bool(profile.get("erased")) and profile.get("name") == ""
            and profile.get("phone") == "" and profile.keys() <= _ERASED_FIELDS)


def member_doc(member_id: str) -> str:
    """Stable shard of a member (and its cards), the same on every node."""
    return f"members/{zlib.crc32(member_id.encode()) % MEMBER_SHARDS:02d}"


def month_over_ms(month: str) -> int:
    """The first millisecond after `month` (YYYY-MM) in every time zone: the 1st of
    the next month, 00:00 in the latest zone (UTC-12), which is 12:00 UTC. A branch
    that closed `month` mints no id before it (commit.LedgerBase._cut_taken: even with its
    clock set back; a branch east of UTC-12 could before 4 December), and the closing's
    points lots are cut there. A month a liar's cut may name that no calendar
    turns: 0 before 1970, past every id after 9999-11."""
    if month < "1970-01":
        return 0
    if month > "9999-11":
        return 2**48
    year, mon = int(month[:4]), int(month[5:7]) + 1
    after = datetime(year + mon // 13, (mon - 1) % 12 + 1, 1, 12, tzinfo=UTC)
    return int(after.timestamp() * 1000)


def ledger_doc(month: str) -> str:
    return f"ledger/{month}"


# The widest offsets of civil time from UTC (Etc/GMT+12, Pacific/Kiritimati).
ZONE_SPAN = (timedelta(hours=-12), timedelta(hours=14))


def possible_ledger_docs(entry_id: str) -> set[str]:
    """The ledger documents of the id's month in every time zone: where a writer in
    any zone may have filed the entry (`entry_doc` in its own)."""
    at = datetime.fromtimestamp(id_time_ms(entry_id) / 1000, UTC)
    return {ledger_doc(f"{t.year:04d}-{t.month:02d}") for t in (at + off for off in ZONE_SPAN)}


def entry_doc(entry_id: str, day_of: Callable[[int], str]) -> str:
    """The one document an entry may live in: that of its id's month in the chain's
    time zone (`day_of`), as its writer chose it (commit._entry_write: `at` is the
    id's wall time). ValueError for an id no month holds (a time past year 9999)."""
    return ledger_doc(day_of(id_time_ms(entry_id))[:7])


class InvalidRecord(ValueError):
    """A replicated record that breaks the schema; every replica rejects it alike."""


def _int(value: Any, *, lo: int = -MAX_AMOUNT, hi: int = MAX_AMOUNT) -> int:
    try:
        n = from_crdt(value)
    except ValueError as e:
        raise InvalidRecord(str(e)) from None
    if not lo <= n <= hi:
        raise InvalidRecord(f"number {n} out of range")
    return n


def _str(value: Any, limit: int = 200) -> str:
    if not isinstance(value, str) or len(value) > limit:
        raise InvalidRecord(f"expected text of at most {limit} characters")
    return value


_OPTIONAL_INTS = frozenset({"percent", "min_spend", "off",  # coupons
                            "paid", "gross", "qty", "bonus", "points", "fee",
                            "start", "minutes",  # a booking's slot (crdtledger.bookings)
                            "version",  # a technician's (crdtledger.bookings)
                            "per_day",  # the limit a check-in was allowed under
                            # a refund's: the sale's points the member had spent, and
                            # the fen kept for them (crdtledger.payments.refund_terms)
                            "spent", "kept",
                            # a debit's: how far (ms) its writer's clock stood put
                            # forward by hand (crdtledger.payments.refund_closed)
                            "moved"})
_OPTIONAL_STRS = frozenset({
    "day",
    "idem",  # the tag of the Idempotency-Key it was written under (crdtledger.idempotency)
    "ref",
    "service",
    "discount",
    "level",
    "to",
    "reason",
    "approver",
    "card",
    "expires",
    "promotion",
    "pay",
    "package",
    "gift",
    "coupon",  # the coupon an entry redeems; a coupon's first and last days:
    "valid_from",
    "valid_to",
    "goods",  # a sale's or a stock entry's goods code (crdtledger.goods)
    "note",  # a stock-take's reason (crdtledger.goods)
    "referrer",  # a referral's referrer; a check-in's activity; an approval's or
    "activity",  # application's step (crdtledger.membership)
    "step",
    # a technician's code, name, services and hours; a booking decision's status
    # (crdtledger.bookings)
    "code",
    "name",
    "services",
    "hours",
    "status",
    "tz",  # the zone a technician's hours are in (its branch's)
    "repeat",  # the limit a check-in was allowed under (crdtledger.membership)
    "handover",  # a refund's: the closed shop whose sale it refunds (write rule refund-own)
})


# Text fields longer than the others: a redaction's claims (about 200 characters a
# record).
_LONG_STRS = {"records": 64 * 1024}


def canonical_phone(phone: str) -> str:
    """A phone as lookups compare it: spaces and dashes out, China's +86 / 0086
    dropped, and a bare 86 before an 11-digit mobile ("+86 138-0013-8000",
    "008613800138000" and "13800138000" are one phone). Another country keeps its +:
    "+16502530000" without it would read as a Chinese mobile. Members keep their
    phone as typed (docs/design-notes.md, "Duplicate members"); the projection keeps
    this form beside it (`members.phone_canonical`), which lookups ask for."""
    s = "".join(c for c in phone.strip() if c not in " -")
    for prefix in ("+86", "0086"):
        if s.startswith(prefix):
            return s[len(prefix):]
    if s.startswith("861") and len(s) == 13:
        return s[2:]
    return s


def normalise_entry(key: str, value: Any) -> dict[str, Any]:
    """Validate a ledger entry read from a document; return it with exact ints.

    The check depends on the entry alone, so every replica accepts or rejects the
    same entries and projections converge even when a bad peer wrote one.
    """
    # A catch-up checks every entry of a peer's history: take the common well-formed
    # shape quickly (about 30% cheaper: no call per field), and anything the quick
    # check is not sure of through the careful one, which alone decides what is
    # refused and with which message. tests/test_entry_check.py holds them equal.
    if type(value) is dict:
        out = _quick_entry(key, value)
        if out is not None:
            return out
    return _checked_entry(key, value)


def _quick_int(v: Any, lo: int, hi: int) -> int | None:
    """What _int(v, lo=lo, hi=hi) returns, for a plain int or float; else None."""
    t = type(v)
    if t is float:
        if not -MAX_AMOUNT <= v <= MAX_AMOUNT or not v.is_integer():
            return None
        v = int(v)
    elif t is not int:
        return None  # bools, int subclasses, anything else: the careful path
    return v if lo <= v <= hi else None


# PURSE matches them: no regex
_SIMPLE_PURSES = frozenset({"cash", "bonus", "points", "stock", "transit"})


def _quick_entry(key: str, value: dict[str, Any]) -> dict[str, Any] | None:
    """_checked_entry's result for a plain, well-formed entry; None when unsure.

    Never raises and never refuses: whatever it does not accept goes to the careful
    path. Only exact builtin types pass (a subclass of str or int, or a bool, is left
    to the careful path, which may keep it as is)."""
    get = value.get
    if type(key) is not str or not ID.match(key) or get("id") != key:
        return None
    kind = get("kind")
    node = get("node")
    member = get("member")
    op = get("op")
    if (type(kind) is not str or kind not in ENTRY_KINDS
            or type(node) is not str or key.split(".", 1)[1] != node  # so NODE_ID matches
            or type(member) is not str or not ID.match(member)  # so at most 40 characters
            or type(op) is not str or len(op) > 60):
        return None
    raw_deltas = get("deltas")
    if type(raw_deltas) is not list or len(raw_deltas) > 8:
        return None
    deltas: list[list[Any]] = []
    for d in raw_deltas:
        if type(d) is not list or len(d) != 3:
            return None
        purse, dnode, change = d
        if (type(purse) is not str or len(purse) > 40
                or (purse not in _SIMPLE_PURSES and not PURSE.match(purse))
                or type(dnode) is not str
                or (dnode != node and (len(dnode) > 16 or not NODE_ID.match(dnode)))):
            return None
        if type(change) is float:  # _quick_int inlined: most numbers of an entry are here
            if not -MAX_AMOUNT <= change <= MAX_AMOUNT or not change.is_integer():
                return None
            change = int(change)
        elif type(change) is not int or not -MAX_AMOUNT <= change <= MAX_AMOUNT:
            return None
        if not change or (change < 0 and dnode != node):  # 0, or another node's rights
            return None
        deltas.append([purse, dnode, change])
    at = _quick_int(get("at"), 0, 2**48)
    amount = _quick_int(get("amount", 0), 0, MAX_AMOUNT)
    if at is None or amount is None or at != matched_id_time_ms(key):  # ID matched it
        return None
    out: dict[str, Any] = {"id": key, "kind": kind, "node": node, "member": member, "op": op,
                           "at": at, "amount": amount, "deltas": deltas}
    for f, v in value.items():  # other keys are not part of an entry: dropped
        if f in _OPTIONAL_INTS:
            v = _quick_int(v, 0, MAX_AMOUNT)
            if v is None:
                return None
            out[f] = v
        elif f in _OPTIONAL_STRS:
            if type(v) is not str or len(v) > 200:
                return None
            out[f] = v
        elif f in _LONG_STRS:
            if type(v) is not str or len(v) > _LONG_STRS[f]:
                return None
            out[f] = v
    return out


def _checked_entry(key: str, value: Any) -> dict[str, Any]:
    """The careful check: every field in turn, with the message a refusal records."""
    if not isinstance(value, dict | Mapping):  # dict first: the ABC check is slow
        raise InvalidRecord("entry is not a map")
    if not ID.match(key) or value.get("id") != key:
        raise InvalidRecord("entry id does not match its key")
    kind = value.get("kind")
    if kind not in ENTRY_KINDS:
        raise InvalidRecord(f"unknown entry kind {kind!r}")
    node = _str(value.get("node"), 16)
    if not NODE_ID.match(node) or key.split(".", 1)[1] != node:
        raise InvalidRecord("entry node does not match its id")
    member = _str(value.get("member"), 40)
    if not ID.match(member):
        raise InvalidRecord("bad member id")
    raw_deltas = value.get("deltas")
    if not isinstance(raw_deltas, list) or len(raw_deltas) > 8:
        raise InvalidRecord("bad deltas")
    deltas: list[Delta] = []
    for d in raw_deltas:
        if not isinstance(d, list) or len(d) != 3:
            raise InvalidRecord("bad delta")
        purse, dnode, change = _str(d[0], 40), _str(d[1], 16), _int(d[2])
        if not PURSE.match(purse) or not NODE_ID.match(dnode) or change == 0:
            raise InvalidRecord("bad delta")
        deltas.append((purse, dnode, change))
    try:
        check_deltas_authorised(node, deltas)
    except ValueError as e:
        raise InvalidRecord(str(e)) from None
    out: dict[str, Any] = {
        "id": key,
        "kind": kind,
        "node": node,
        "member": member,
        "op": _str(value.get("op"), 60),
        "at": _int(value.get("at"), lo=0, hi=2**48),
        "amount": _int(value.get("amount", 0), lo=0),
        "deltas": [list(d) for d in deltas],
    }
    if out["at"] != id_time_ms(key):
        # Its writer sets `at` to its id's time (Commit._entry), which the day, the
        # month and every report take; a liar's `at` days ahead of its id was read as
        # a check-in on each of those days, refusing the member's real ones.
        raise InvalidRecord("entry time `at` is not its id's time")
    for f, v in value.items():  # other keys are not part of an entry: dropped
        if f in _OPTIONAL_INTS:
            out[f] = _int(v, lo=0)
        elif f in _OPTIONAL_STRS:
            out[f] = _str(v)
        elif f in _LONG_STRS:
            out[f] = _str(v, _LONG_STRS[f])
    return out


# How deep a value of a record may nest. Honest records nest three or four levels; a
# liar's list 400 deep was taken or refused by the depth of the Python stack the
# replica happened to apply it at (RecursionError), so replicas differed, and one that
# refused it refused every batch carrying it. Beyond this, every replica sets it aside.
MAX_NESTING = 32


def normalise(value: Any, depth: int = 0) -> Any:
    """Turn a plain value read back from pycrdt into exact Python: integral floats -> int.
    InvalidRecord for a value nested deeper than MAX_NESTING."""
    if isinstance(value, float):
        return int(value) if value.is_integer() and abs(value) <= MAX_AMOUNT else value
    if isinstance(value, str | int) or value is None:
        return value  # most leaves: skip the (slow) abstract Mapping check below
    if depth >= MAX_NESTING:
        raise InvalidRecord(f"a value nested deeper than {MAX_NESTING} levels")
    if isinstance(value, dict | Mapping):
        return {str(k): normalise(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [normalise(v, depth + 1) for v in value]
    return value
