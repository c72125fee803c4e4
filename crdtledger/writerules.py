"""Who may write what: the one table of write rules every replica enforces.

A record (crdtledger.log) is judged before its update touches a document (what the
update's header says) and by what it changed (the document's events), inside the
transaction that applies it: a record that breaks any rule is refused whole, on
every replica alike, nothing of it is applied, and its writer is blocked and
reported (metric, `crdtledger status`, the counter's sync page, the node's log).
The writer itself checks the same rules before it commits (`check_local`), so an
honest node never writes what its peers would refuse.

Every rule depends only on the record and on what precedes it in its writer's log,
so honest replicas judge alike whatever order the logs reach them in.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from crdtledger.errors import PermissionDenied
from crdtledger.escrow import check_deltas_authorised
from crdtledger.hlc import id_floor
from crdtledger.lib0 import read_varuint
from crdtledger.log import CLOSING_DOC, CUT_DOC, MARK_DOCS
from crdtledger.model import ENTRY_KINDS, GOODS_PURSES, ID, erased, month_over_ms
from crdtledger.money import MAX_AMOUNT

# Documents of chain governance: operators and roles, rules (prices, services,
# levels, promotions, branch names, the revocation list).
GOVERNANCE_DOCS = frozenset({"rules", "operators"})
# A coupon's purse (crdtledger.coupons): cpn:<the id of the entry that issued it>.
COUPON_PREFIX = "cpn:"
# Entries only a technician's own branch writes (crdtledger.bookings).
BRANCH_KINDS = frozenset({"technician", "booking_decision"})
# Write rule value-raise: the stored value (cash, bonus, "pkg" a package's uses) each
# kind may add, in its writer's own rights; transfers and merges move it (judged by
# their own rules), every other kind only takes it.
VALUE_RAISES: dict[str, frozenset[str]] = {
    "topup": frozenset({"cash", "bonus"}),
    "correction": frozenset({"cash", "bonus", "pkg"}),
    "refund": frozenset({"cash", "bonus", "pkg"}),
    "reward": frozenset({"bonus"}),
    "convert": frozenset({"bonus"}),
    "package": frozenset({"pkg"}),
}
VALUE_MOVES = frozenset({"transfer", "merge"})
# isinstance(x, int | float), without making the union anew at every call: asked of
# every delta of every entry judged (a catch-up's, and each entry a till writes).
_NUMBER = (int, float)


@dataclass(frozen=True)
class WriteRule:
    name: str
    says: str


RULES: tuple[WriteRule, ...] = (
    WriteRule("own-client", "a record carries only structs of its writer's own pycrdt "
                            "client ids (derived from its node id: client_id_for)"),
    WriteRule("in-order", "a record's structs continue its writer's clock in that document"),
    WriteRule("entry-insert-once", "a ledger entry is written once: never overwritten or "
                                   "deleted"),
    WriteRule("entry-writer", "a ledger entry is keyed by its writer (its id and its node "
                              "name the node whose log carries it)"),
    WriteRule("own-rights", "a ledger entry lowers no rights but its writer's"),
    WriteRule("record-writer", "a card is created keyed by its writer (its id names the "
                               "node that minted it, as an entry's does), and never "
                               "replaced or removed whole (its status grows by events): a "
                               "card created under the id of a card another "
                               "branch issued, in another member's document, took that card "
                               "over at some replicas and not at others. A member's Map is "
                               "set whole only by the node its id names, creating it, or by "
                               "an erasure (a new Map in the erasure's shape, model.erased, "
                               "by any branch): a member created under an honest branch's "
                               "id, dated in a closed month, raised that branch's closed "
                               "day report, and a member's Map replaced whole lost her edit "
                               "notes and took the liar's `home` and `created_by`"),
    WriteRule("coupon-unit", "a coupon's one unit is created only by the entry that issues "
                             "it (purse cpn:<that entry's id>); every other record, and "
                             "every other entry but a sweep's paired \"in\", moves or "
                             "spends units and never adds any"),
    WriteRule("referral-reward", "a referral's reward (a `reward` entry, or a coupon naming "
                                 "a referral in `ref`) is written only by the branch that "
                                 "recorded the referral, so it is granted once "
                                 "(crdtledger.membership)"),
    WriteRule("refund-own", "a refund names in `ref` a debit of its own writer, or one "
                            "of the branch its `handover` names (the debit's): a debit's "
                            "refund rights stay with the branch that made it, so no other "
                            "branch can take back the lots that debit took, nor use up "
                            "what is left of it to refund, until it closes: then they go "
                            "with its members' rights to the branch its first hand-over "
                            "named (Payments.hand_over_rights), and on along that "
                            "branch's own first hand-over if it closes in turn, to the "
                            "open branch the chain ends at, and to no other (a chain "
                            "coming back on itself ends nowhere). Which branch that is "
                            "depends on the shops' records, so such a "
                            "refund waits, unprojected, until the hand-overs of the "
                            "chain are held (projection._backed, as a refund waits for "
                            "its debit); a refund by a branch of the chain made after "
                            "it handed over waits for ever. A closed shop's sale was "
                            "refunded nowhere: the manager's correction booked 70.00 "
                            "collected that no till took, and left the shop the income "
                            "and the member the sale's points"),
    WriteRule("reversal-own", "a check-in's reversal (a `checkin` naming one in `ref`, "
                              "crdtledger.membership) names a check-in of its own writer: "
                              "another branch's reversal made a once-a-day check-in read "
                              "reversed, so it was paid twice, and the report showed a "
                              "reversal nobody made"),
    WriteRule("give-back-own", "an `expiry` that raises points (a write-off's give-back: "
                               "Payments.give_back_write_offs) names in `ref` a write-off "
                               "of its own writer"),
    WriteRule("transfer-balanced", "a rights transfer moves rights: its changes to each "
                                   "purse sum to zero (rights raised by a transfer of "
                                   "nothing would spend other branches' prepaid value)"),
    WriteRule("value-raise", "a ledger entry raises stored value (cash, bonus, a "
                             "package's uses) only as the entries that add it do, and only "
                             "in its writer's own rights: cash by a top-up, a correction or "
                             "a refund; bonus also by a referral's reward or points "
                             "converted; a package's uses by its sale (its own uses, "
                             "pkg:<its id>, only), a correction or a refund. Transfers "
                             "and sweeps move value (transfer-balanced, "
                             "merge-paired). A branch's debit, check-in or anything else "
                             "that raised cash would be value nobody paid, served first in, "
                             "first out from other branches' prepaid lots"),
    WriteRule("raise-own", "a ledger entry raises no rights but its writer's (points, "
                           "stock, coupons, any purse), but for transfers and sweeps "
                           "(transfer-balanced, merge-paired; never of stock) and a "
                           "shipment (a `stock` entry), which puts in another branch's "
                           "`transit` no more units "
                           "than it takes, net, from its writer's `stock`: a branch that raised "
                           "another's shelf stock had it sell units it does not have, and "
                           "points raised on another's rights were that branch's to redeem"),
    WriteRule("merge-paired", "a merge entry that raises rights (a sweep's \"in\") names in "
                              "`ref` a merge entry of the same record that lowers exactly "
                              "those rights of its writer (the \"out\", whose `to` is the "
                              "\"in\"'s member), and no two name the same; a merge "
                              "entry that lowers rights (an \"out\") is named so by an "
                              "\"in\" of its record unless it is all its record adds (as "
                              "0.2.0 wrote a sweep: two records). A sweep moves rights "
                              "between members, it creates none, and a lone out moved "
                              "settlement lots to a member who never had them"),
    WriteRule("booking-branch", "a technician's versions and the decisions on its bookings "
                                "(confirmed, refused, released, no-show) are written only by "
                                "the branch it belongs to: the node part of the technician's "
                                "id, which is the entry's member"),
    WriteRule("closed-month", "a branch closes months in order (each `cut` record names a "
                              "month later than its cuts before), writes nothing more "
                              "into the ledger of a month it closed nor any entry with an "
                              "id before that month's end in every time zone, and signs "
                              "the closing only of a month it closed (crdtledger.closing)"),
    WriteRule("enrolled", "a branch writes no ledger entry nor member with an id before "
                          "the chain enrolled it (the time its certificate carries, which "
                          "every renewal keeps: trust.ENROLLED_OID): a liar enrolled today "
                          "backdated a top-up into a month every branch had closed and "
                          "signed, and every closing of it changed"),
    WriteRule("amount-moved", "a debit's and a transfer's `amount` is what their deltas "
                              "move, as the honest writers put it: a debit paid from "
                              "stored value (`pay` \"stored\") lowers cash and bonus by "
                              "its amount together; one paid otherwise (at the till, or "
                              "by a package's uses, whose amount is 0) lowers neither; a "
                              "transfer moves its amount of one purse to the branch its "
                              "`to` names. A liar's card sale of 90,000.00 took 1.00 of "
                              "stored value and its stored sale of 0.00 took 90.00: the "
                              "settlement (deltas) and the day report (amount, pay) "
                              "disagreed"),
    WriteRule("paid-moved", "a top-up's and a package sale's `paid` (what the till took, "
                            "which the day report reads) is what their deltas move, as "
                            "the honest writers put it: a top-up, paid at the till, adds "
                            "its `amount` = `paid` of cash and lowers no cash nor bonus; "
                            "a package paid from stored value (`pay` \"stored\") lowers "
                            "cash and bonus by its amount together and has `paid` 0, one "
                            "paid at the till lowers neither and has `paid` its amount. "
                            "A liar's top-up saying 0.01 taken by wechat added 1,000.00 "
                            "of cash, and its package said paid by wechat also took "
                            "500.00 of stored value: the day report (paid, pay) and the "
                            "settlement (deltas) disagreed, and an honest branch owed "
                            "for value nobody paid. A card's issue moves no purse and "
                            "has `paid` = `amount` (its fee); an exit's settlement has "
                            "`amount` the cash and bonus it lowers and, a refund, `paid` "
                            "the cash it lowers (else 0); neither is paid by a purse. A "
                            "liar's card said 1,000,000.00 of fees and one took 100.00 of "
                            "stored value the settlement never saw; its exit refund said "
                            "0 paid out and SH01 owed it 500.00, and a forfeit said "
                            "500.00 paid out of the till"),
    WriteRule("card-fixed", "a card's number, member, type, PIN, expiry, issuing node and "
                            "events list are set once, by the record that creates it "
                            "(record-writer); later records, of any branch, only add "
                            "events to that list (lost, found, returned, replaced), as "
                            "every version has: a liar re-pointed an honest branch's card "
                            "to another member of the same shard, whose money the card "
                            "then paid at the honest branch, set a PIN on it, and "
                            "renumbered it out of sight"),
    WriteRule("governance", "operators, roles and rules are written only by a node the "
                            "chain grants governance (the head office's certificate); a "
                            "revocation list signed by the chain CA, by any branch"),
)

# A node's pycrdt client ids are derived from its node id, so that whose they are is
# a fact every replica computes alike, whatever reaches it first (a binding learned
# from the first record seen would let a forger claim a new branch's id before the
# branch is heard of). The low bits count the node's epochs: a node restored from a
# backup takes the next one once it has caught up with itself.
EPOCH_BITS = 10
_NODE_BITS = 38


@lru_cache(maxsize=4096)  # every record's header is checked against it
def _node_part(node: str) -> int:
    digest = hashlib.sha256(b"crdtledger client\x00" + node.encode()).digest()
    return int.from_bytes(digest[:8], "big") >> (64 - _NODE_BITS)


def client_id_for(node: str, epoch: int) -> int:
    """The pycrdt client id of `node` in its `epoch` (0 to 1023)."""
    if not 0 <= epoch < 1 << EPOCH_BITS:
        raise ValueError(f"client epoch {epoch} out of range")
    return _node_part(node) << EPOCH_BITS | epoch


def owns_client(node: str, client: int) -> bool:
    return client >> EPOCH_BITS == _node_part(node)


def epoch_of(client: int) -> int:
    return client & ((1 << EPOCH_BITS) - 1)


class RuleBroken(Exception):
    """A record broke `rule`; `detail` says how."""

    def __init__(self, rule: str, detail: str) -> None:
        super().__init__(f"{rule}: {detail}")
        self.rule = rule
        self.detail = detail


def writers(update: bytes) -> tuple[int, int, int] | None:
    """(number of clients with structs, first client, its first clock) of a v1 update;
    (0, 0, 0) for one that only deletes; None if the header does not parse."""
    try:
        count, pos = read_varuint(update, 0)
        if count == 0:
            return 0, 0, 0
        _structs, pos = read_varuint(update, pos)
        client, pos = read_varuint(update, pos)
        return count, client, read_varuint(update, pos)[0]
    except ValueError:
        return None


def check_header(node: str, doc: str, update: bytes) -> tuple[int, int] | None:
    """Judge a record of `node` from its update's header, before it is applied.
    Returns (client id, first clock) it writes with (None if it only deletes);
    raises RuleBroken."""
    head = writers(update)
    if head is None:
        raise RuleBroken("own-client", f"the update for {doc} does not parse")
    count, client, clock = head
    if count == 0:
        return None
    if count != 1:
        raise RuleBroken("own-client", f"one update carries structs of {count} clients")
    if not owns_client(node, client):
        raise RuleBroken("own-client", f"writes as client {client}, which is not {node}'s")
    return client, clock


def check_mark(node: str, doc: str, mark: tuple[str, str] | None, closed: str | None
               ) -> None:
    """Judge a record of `node` against the months it closed before it in its log
    (`closed`: the latest). A ledger record must be of a later month; a cut (`mark`:
    the month and digest it says, None if it says none) must name a later one; a
    closing must be of a month its writer closed."""
    if doc in MARK_DOCS:
        if mark is None:
            raise RuleBroken("closed-month", f"node {node}'s {doc} record says no month")
        month = mark[0]
        if doc == CUT_DOC and closed is not None and month <= closed:
            raise RuleBroken("closed-month", f"node {node} closes {month} after closing "
                                             f"{closed}")
        if doc == CLOSING_DOC and (closed is None or month > closed):
            raise RuleBroken("closed-month", f"node {node} signs the closing of {month}, "
                                             "a month it has not closed")
    elif closed is not None and doc.startswith("ledger/") and doc[7:] <= closed:
        raise RuleBroken("closed-month", f"{doc}: node {node} closed its books through "
                                         f"{closed}")


def check_ids_after_cut(node: str, doc: str, keys: list[Any], closed: str | None) -> None:
    """Judge the entries a ledger record of `node` adds (or the members a member
    record adds) against the month it closed before it in its log (`closed`): once it
    closed a month, its clock mints no id before that month's end in every zone
    (model.month_over_ms), so an entry of its own below it is written after its word
    that the month was over, into the fold the closing's points lots are cut from (a
    later month's document, which the month rule above lets through, in a zone east of
    UTC-12); a member so dated joined on a closed day, in its report."""
    if closed is None:
        return
    key = _own_before(node, keys, month_over_ms(closed))
    if key is not None:
        raise RuleBroken("closed-month", f"{doc}: node {node} closed its books through "
                                         f"{closed}, then wrote {key}, before that "
                                         "month's end in every time zone")


def check_ids_after_enrolment(node: str, doc: str, keys: list[Any], since: int | None
                              ) -> None:
    """Judge the entries (or new members) a record of `node` adds against when the
    chain enrolled it (`since`, from its certificate: trust.Trust.enrolled_since; None
    where the certificate does not say). Its clock mints no id before (the store's
    floor starts there: crdtledger.commit), so one dated earlier is backdated: a liar
    enrolled today wrote a top-up dated in a month every branch had closed and signed,
    then its cut of it, and every closing of that month changed."""
    if since is None:
        return
    key = _own_before(node, keys, since)
    if key is not None:
        raise RuleBroken("enrolled", f"{doc}: node {node} wrote {key}, dated before the "
                                     "chain enrolled it")


def _own_before(node: str, keys: list[Any], ms: int) -> str | None:
    """The first of `keys` that is an id of `node` minted before wall time `ms`."""
    floor = id_floor(ms)
    own = "." + node
    for key in keys:
        if type(key) is str and key.endswith(own) and key < floor:
            return key
    return None


class InOrder:
    """The `in-order` rule over consecutive records applied to one document: each
    client's first record starts exactly where the document holds that client, the
    next ones start later. (That each record then integrated whole is checked after
    they are applied: one past a gap, or building on what is not here yet, is held
    back by Yrs and waits, see replica._apply_run.)"""

    def __init__(self, doc: str, have: dict[int, int]) -> None:
        self.doc = doc
        self.have = have
        self.starts: dict[int, int] = {}

    def record(self, client: int, clock: int) -> None:
        last = self.starts.get(client)
        if last is None and clock != self.have.get(client, 0):
            raise RuleBroken("in-order", f"{self.doc}: client {client} continues at clock "
                                         f"{clock}, this replica holds it to "
                                         f"{self.have.get(client, 0)}")
        if last is not None and clock <= last:
            raise RuleBroken("in-order", f"{self.doc}: client {client} goes back to {clock}")
        self.starts[client] = clock


def check_change(node: str, doc: str, added: list[tuple[str, str, Any, Any]], other: int,
                 may_govern: bool, ca_signed: Callable[[Any], bool],
                 earlier: Callable[[str], dict[str, Any] | None] | None = None,
                 value_of: Callable[[str, str], Any] | None = None,
                 cards_set: Sequence[str] = ()) -> set[str]:
    """Judge what applying one record of `node` changed: the records it set or
    removed (root, key, old, new, as storage.Change has them) and the number of
    `other` changes (edits inside a record, or keys Yrs could not tell). `ca_signed`
    says whether a rule record is a revocation list the chain CA signed; `earlier`
    is check_merges_paired's; `value_of(root, key)` a record's plain value as the
    document now holds it (check_member_records'); `cards_set`, the cards whose own
    keys it set or removed. Returns the sweeps' outs its merge entries named."""
    if doc in GOVERNANCE_DOCS:
        if may_govern or (doc == "rules" and not other
                          and all(old is None and ca_signed(new)
                                  for _r, _k, old, new in added)):
            return set()
        raise RuleBroken("governance", f"node {node} changed {doc} without the head "
                                       "office's grant")
    if doc.startswith("members/"):
        check_card_records(node, doc, added)
        if value_of is not None:
            check_member_records(node, doc, added, value_of)
        if cards_set:
            # An existing card's Map keys set or removed (an event added to its list is
            # not one): deterministic at every replica, since a card's keys are
            # created with it, so any replica holding the record's target holds them.
            raise RuleBroken("card-fixed", f"{doc}: node {node} rewrites card "
                                           f"{cards_set[0][:40]} (its number, member, PIN, "
                                           "expiry or events list)")
        return set()
    if not doc.startswith("ledger/"):
        return set()
    if other:
        raise RuleBroken("entry-insert-once", f"{doc}: an entry changed in place")
    coupons: dict[str, float] = {}  # units of each coupon this record adds (net)
    issued: set[str] = set()  # the coupons it issues
    merges: dict[Any, dict[str, Any]] = {}  # the merge entries it adds, by key
    for _root, key, old, new in added:
        if old is not None or new is None:
            raise RuleBroken("entry-insert-once", f"{doc}: entry {key} overwritten or deleted")
        if not isinstance(key, str) or not ID.match(key) or key.rsplit(".", 1)[1] != node:
            raise RuleBroken("entry-writer", f"{doc}: entry {str(key)[:40]} is not keyed by "
                                             f"{node}")
        if not isinstance(new, dict) or new.get("node") != node:
            raise RuleBroken("entry-writer", f"{doc}: entry {key} names node "
                                             f"{new.get('node') if isinstance(new, dict) else '?'}")
        kind = new.get("kind")  # read once: asked of every entry of a catch-up
        deltas = new.get("deltas")
        if isinstance(deltas, list):
            # Only what the schema could take (a purse and a node that are text): a
            # list for a purse was a TypeError out of apply_batch at every replica.
            counted = [tuple(d) for d in deltas if isinstance(d, list) and len(d) == 3
                       and isinstance(d[0], str) and isinstance(d[1], str)
                       and isinstance(d[2], _NUMBER)]
            try:
                check_deltas_authorised(node, counted)
            except ValueError as e:
                raise RuleBroken("own-rights", f"{doc}: entry {key}: {e}") from None
            units: dict[str, float] = {}  # this entry's net change of each coupon
            for purse, _n, change in counted:
                if isinstance(purse, str) and purse.startswith(COUPON_PREFIX):
                    coupons[purse] = coupons.get(purse, 0) + change
                    units[purse] = units.get(purse, 0) + change
            # Per entry too, not only per record: a record's entries of different
            # members are funded apart (projection.py, "Funding in log order"), so a
            # unit added for one member and "taken" from another's row the writer never
            # holds (waiting for ever) would be a unit from nothing. Only the issue
            # adds its one unit; a sweep's "in" carries the units its out lowered
            # (merge-paired, and projected only once that out is).
            if kind != "merge" or any(c < 0 for _p, _n, c in counted):
                own = COUPON_PREFIX + key if kind == "coupon" else None
                for purse, n in units.items():
                    if n > (1 if purse == own else 0):
                        raise RuleBroken("coupon-unit", f"{doc}: entry {key} adds {n:g} "
                                         f"unit(s) of coupon {purse[len(COUPON_PREFIX):]}")
            # A kind this version does not know is set aside by the schema (a newer
            # version's, perhaps), never projected: not judged here.
            if kind in VALUE_MOVES and any(p in GOODS_PURSES for p, _n, _c in counted):
                # Units move by a shipment only (its `transit`, which the receiver's
                # cashier takes in); no honest version transfers or sweeps them.
                raise RuleBroken("raise-own", f"{doc}: entry {key}: a {kind} moves stock")
            if kind in ENTRY_KINDS and kind not in VALUE_MOVES:
                may = VALUE_RAISES.get(kind, frozenset())
                shipped = 0  # units this entry puts in transit to other branches
                for purse, n, change in counted:
                    if change <= 0 or not isinstance(purse, str):
                        continue
                    if n != node:
                        if kind == "stock" and purse == "transit":
                            shipped += change
                            continue
                        raise RuleBroken("raise-own", f"{doc}: entry {key}: a {kind} "
                                         f"raises {purse[:40]} of {str(n)[:20]}")
                    value = "pkg" if purse.startswith("pkg:") else purse
                    if value in ("cash", "bonus", "pkg") and value not in may:
                        raise RuleBroken("value-raise", f"{doc}: entry {key}: a {kind} "
                                         f"raises {purse} of {str(n)[:20]}")
                    if kind == "package" and value == "pkg" and purse != "pkg:" + key:
                        # A liar's "package" added 90 uses to a package another branch
                        # sold (10 uses for 500.00), and a third branch served them.
                        raise RuleBroken("value-raise", f"{doc}: entry {key}: a package "
                                         f"raises {purse[:40]}, not its own uses")
                # The writer's stock, net: a liar lowered and raised it by five in one
                # entry (holding none) and put five in another branch's transit, four
                # times, and the receiver shelved twenty units from nothing.
                if shipped and shipped > -sum(c for p, n, c in counted
                                              if p == "stock" and n == node):
                    raise RuleBroken("raise-own", f"{doc}: entry {key}: ships more units "
                                     "than it takes from its writer's stock")
            if kind == "transfer":
                net: dict[Any, float] = {}
                for purse, _n, change in counted:
                    net[purse] = net.get(purse, 0) + change
                if any(net.values()):
                    raise RuleBroken("transfer-balanced", f"{doc}: entry {key}: a transfer "
                                                          "whose changes do not sum to zero")
            # After the rules above: a record they refuse keeps the reason they give.
            if kind in _AMOUNT_KINDS and len(counted) == len(deltas):
                # (An entry with a malformed delta is quarantined by normalise_entry.)
                check_amount_moved(doc, key, kind, new, counted)
            if kind in _PAID_KINDS and len(counted) == len(deltas):
                check_paid_moved(doc, key, kind, new, counted)
        if kind == "merge":
            merges[key] = new
        if kind == "expiry" and isinstance(deltas, list) and any(
                isinstance(d, list) and len(d) == 3 and isinstance(d[2], _NUMBER)
                and d[2] > 0 for d in deltas) and (
                not isinstance(new.get("ref"), str) or new["ref"].rsplit(".", 1)[-1] != node):
            raise RuleBroken("give-back-own", f"{doc}: entry {key}: an expiry raising "
                                              "points names no write-off of its writer")
        if kind == "checkin" and "ref" in new and (
                not isinstance(new["ref"], str) or new["ref"].rsplit(".", 1)[-1] != node):
            raise RuleBroken("reversal-own", f"{doc}: entry {key}: node {node} reverses a "
                                             "check-in another branch wrote")
        if kind == "refund" and (not isinstance(new.get("ref"), str) or (
                new["ref"].rsplit(".", 1)[-1] != node
                and new.get("handover") != new["ref"].rsplit(".", 1)[-1])):
            # (One naming the shop that made it waits for that shop's hand-over to it.)
            raise RuleBroken("refund-own", f"{doc}: entry {key}: node {node} refunds a "
                                           "debit another branch made")
        if kind == "coupon":
            issued.add(COUPON_PREFIX + key)
        elif kind in BRANCH_KINDS:
            # Only a technician's own branch decides its slots (crdtledger.bookings), so
            # two branches cut off from each other can never both confirm one slot.
            tech = new.get("member")
            if not isinstance(tech, str) or tech.rpartition(".")[2] != node:
                raise RuleBroken("booking-branch", f"{doc}: entry {key}: node {node} decides "
                                                   f"for technician {str(tech)[:40]}, which "
                                                   "belongs to another branch")
        # The referral's id names its writer: a pure check, the same on every replica.
        if (kind == "reward" or (kind == "coupon" and "ref" in new)) and (
                not isinstance(new.get("ref"), str) or new["ref"].rsplit(".", 1)[-1] != node):
            raise RuleBroken("referral-reward", f"{doc}: entry {key}: node {node} rewards a "
                                                "referral another branch recorded")
    named = (check_merges_paired(node, doc, merges, earlier, alone=len(added) == 1)
             if merges else set())
    # Like money, a coupon moves between branches and is spent; unlike money, nobody
    # may make more of it: one unit, made by its issue. (A branch could otherwise
    # give itself a new unit of a coupon already redeemed, in any member's name.)
    for purse, added_units in coupons.items():
        if added_units > (1 if purse in issued else 0):
            raise RuleBroken("coupon-unit", f"{doc}: node {node} adds {added_units:g} "
                                            f"unit(s) of coupon {purse[len(COUPON_PREFIX):]}")
    return named


_AMOUNT_KINDS = frozenset({"debit", "transfer"})
# What a debit's `pay` names when it spends no stored value, of the kinds the day
# report keeps off the till (views._till_by_method): a package's uses.
_PACKAGE_PAY = "package"


def check_amount_moved(doc: str, key: str, kind: str, entry: dict[str, Any],
                       counted: list[tuple[Any, ...]]) -> None:
    """Write rule amount-moved. The books read a debit twice: the settlement by its
    deltas (stored value served, owed between branches), the day report and the
    member's level by its `amount` and `pay` (sales, stored value against the till by
    method). Honest code writes them as one fact (Payments.debit, Goods.sell_goods,
    the only writers of a debit, as every version has): `pay` "stored" spends
    `amount` of cash then bonus (`_spend`, both deltas, a zero one dropped), so the
    two lower exactly `amount`; a till method or a package's uses lowers no cash nor
    bonus (a package's debit has amount 0: its uses are not money); a coupon's unit,
    a package's uses and points earned are other purses. A transfer is always
    [purse, writer, -amount], [purse, to, amount] (_transfer, hand_over_rights).
    No honest shape ever differed, so records from before this rule are judged
    alike: no version to be lenient for. A malformed amount or `pay` is left to
    model.normalise_entry, which quarantines the entry at every replica."""
    amount = entry.get("amount", 0)  # normalise_entry reads a missing one as 0
    if type(amount) not in _NUMBER:
        return
    if kind == "transfer":
        raised = [(p, n, c) for p, n, c in counted if c > 0]
        moved = sum(c for _p, _n, c in raised)
        if moved != amount:
            raise RuleBroken("amount-moved", f"{doc}: entry {key}: a transfer of amount "
                             f"{amount:g} moves {moved:g}")
        if raised and (len({p for p, _n, _c in counted}) != 1
                       or any(n != entry.get("to") for _p, n, _c in raised)):
            raise RuleBroken("amount-moved", f"{doc}: entry {key}: a transfer moves "
                             "other than one purse to the branch its `to` names")
        return
    pay = entry.get("pay")
    if pay is not None and not isinstance(pay, str):
        return
    lowered = -sum(c for p, _n, c in counted if p == "cash" or p == "bonus")
    # A debit without `pay` reads as paid in cash at the till (views._METHOD).
    wanted = amount if pay == "stored" else 0
    if lowered != wanted or (pay == _PACKAGE_PAY and amount != 0):
        raise RuleBroken("amount-moved", f"{doc}: entry {key}: a debit of amount "
                         f"{amount:g} paid by {str(pay)[:20]} lowers {lowered:g} of cash "
                         "and bonus")


_PAID_KINDS = frozenset({"topup", "package", "card", "exit_settle"})
# What `pay` names when nothing was taken at the till (model.PurseMethod; never a
# payment method of the rule: rules.check refuses them as codes).
_PURSE_PAYS = frozenset({"stored", _PACKAGE_PAY})


def _fen(v: Any) -> bool:
    """Whether `v` is what model.normalise_entry takes for an amount: whole fen, 0 to
    MAX_AMOUNT (else it quarantines the entry, and the write rule leaves it be)."""
    return type(v) in _NUMBER and 0 <= v <= MAX_AMOUNT and v == int(v)


def check_paid_moved(doc: str, key: str, kind: str, entry: dict[str, Any],
                     counted: list[tuple[Any, ...]]) -> None:
    """Write rule paid-moved. The books read a top-up and a package sale twice: the
    settlement by their deltas (cash collected, stored value served), the day report
    by `paid` and `pay` (top-up cash and the till by method) and `amount` (card
    sales, the member's level). Honest code writes them as one fact
    (Payments.topup, Payments.sell_package, the only writers of either kind, as every
    version has): a top-up adds `amount` of cash with `paid` = `amount` (plus a
    promotion's bonus, which no till took) and takes nothing; its `pay` is a payment
    method, never a purse (before methods were recorded it had none: read as cash). A
    package adds its own uses (value-raise) and, paid from stored value, spends
    `amount` of cash then bonus (`_spend`) with `paid` 0; paid at the till (any
    method, or none: read as cash) it spends neither and `paid` is `amount`. A
    missing `paid` reads as 0, as the day report reads it. A malformed `paid`,
    `amount` or `pay` is left to model.normalise_entry, which quarantines the entry
    at every replica. Refunds name debits only (Payments._debit), so no refund
    undoes a package sale or a top-up; a sweep moves value by `merge` entries.

    The other two kinds carrying a `paid` likewise (Cards.issue_card and
    Membership._decide_exit, their only writers, unchanged since each kind's first
    version): a `card` has no deltas and `amount` = `paid` = its fee (no `pay`: a
    card's fee names no method, and a method a newer build might name is let be); an
    `exit_settle` lowers its writer's cash, bonus and points whole, `amount` is the
    cash and bonus it lowers, and `paid` is the cash it lowers when its `step` is
    "refund" (absent when none), 0 otherwise (a forfeit), with `pay` the till's
    method only when it paid (absent reads as cash). Which method a code names is the
    rule's, which replicas may hold at different versions, so only a purse as `pay`
    is refused here (model.PAY_CODE: a replica accepts any short code)."""
    amount = entry.get("amount", 0)
    paid = entry.get("paid", 0)
    pay = entry.get("pay")
    if (not _fen(amount) or not _fen(paid) or (pay is not None and not isinstance(pay, str))
            or not all(_fen(abs(c)) for _p, _n, c in counted)):
        return
    cash = sum(c for p, _n, c in counted if p == "cash")
    lowered = -sum(c for p, _n, c in counted if (p == "cash" or p == "bonus") and c < 0)
    if kind == "card":
        # Issuing a card moves nothing (the day report's card sales read `paid`, the
        # receipt `amount`; the settlement reads no card at all).
        if counted or pay in _PURSE_PAYS or paid != amount:
            raise RuleBroken("paid-moved", f"{doc}: entry {key}: a card of fee {amount:g} "
                             f"paid {paid:g} by {str(pay)[:20]} moves {len(counted)} "
                             "purse(s)")
        return
    if kind == "exit_settle":
        # The settlement reads a refund's cash as served at its writer and anything else
        # as forfeited; the day report and the till read `paid` as cash paid out.
        took = -sum(c for p, _n, c in counted if p == "cash" and c < 0)
        if (pay in _PURSE_PAYS or lowered != amount
                or paid != (took if entry.get("step") == "refund" else 0)):
            raise RuleBroken("paid-moved", f"{doc}: entry {key}: an exit's "
                             f"{str(entry.get('step'))[:20]} of amount {amount:g} paid "
                             f"{paid:g} by {str(pay)[:20]} "
                             f"lowers {took:g} of cash ({lowered:g} with bonus)")
        return
    if kind == "topup":
        if pay in _PURSE_PAYS or lowered or not cash == paid == amount:
            raise RuleBroken("paid-moved", f"{doc}: entry {key}: a top-up of amount "
                             f"{amount:g} paid {paid:g} by {str(pay)[:20]} adds {cash:g} "
                             f"of cash and lowers {lowered:g}")
        return
    stored = pay == "stored"
    if (pay == _PACKAGE_PAY or lowered != (amount if stored else 0)
            or paid != (0 if stored else amount)):
        raise RuleBroken("paid-moved", f"{doc}: entry {key}: a package of amount "
                         f"{amount:g} paid {paid:g} by {str(pay)[:20]} lowers {lowered:g} "
                         "of cash and bonus")


def check_card_records(node: str, doc: str, added: list[tuple[str, str, Any, Any]]) -> None:
    """Write rule record-writer, for a member document's records: a card key set by a
    record is its writer's, created once. Judged alike at every replica: a writer's
    records arrive in its log's order, so a card it created is there when it sets the
    key again, and one of another node it sets is refused whether or not the replica
    holds it yet. (Not members: an erasure replaces a member's Map, and a replica that
    has not yet the member sees it created by whoever erased it.)"""
    for root, key, old, new in added:
        if root != "cards":
            continue
        if old is not None or new is None:
            raise RuleBroken("record-writer", f"{doc}: node {node} replaces or removes "
                                              f"card {str(key)[:40]} whole")
        if not isinstance(key, str) or not key.endswith("." + node):
            raise RuleBroken("record-writer", f"{doc}: node {node} creates card "
                                              f"{str(key)[:40]} under another's id")


def check_member_records(node: str, doc: str, added: list[tuple[str, str, Any, Any]],
                         value_of: Callable[[str, str], Any]) -> None:
    """Write rule record-writer, for a member's Map: set whole only by the node whose
    id it bears, creating it (Members.add_member mints the id), or by an erasure (a
    new Map of what is kept, model.erased, which any branch may write, even where
    the member is not yet: a replica that holds the erased member's redacted record
    sees the erasure create it). Honest code edits a member inside her Map
    (commit.note_edit), never replaces it otherwise. Judged on the record alone, as
    for cards: the writer's records arrive in its log's order, and a member new to
    the replica under another node's id is refused whether or not that node's member
    is held yet. A removal is left to the projection (set aside: not a map)."""
    for root, key, old, new in added:
        if root != "members" or new is None:
            continue
        if old is None and isinstance(key, str) and key.endswith("." + node):
            continue
        value = value_of(root, key)
        if isinstance(value, dict) and erased(value):
            continue
        raise RuleBroken("record-writer", f"{doc}: node {node} "
                         f"{'creates' if old is None else 'replaces'} member "
                         f"{str(key)[:40]} whole, under "
                         f"{'another node' if old is None else 'its'}'s id, not as an "
                         "erasure")


def check_merges_paired(node: str, doc: str, merges: dict[Any, dict[str, Any]],
                        earlier: Callable[[str], dict[str, Any] | None] | None = None,
                        alone: bool = False) -> set[str]:
    """A sweep (crdtledger.merge) writes each pair as one record, both entries in one
    month's document (Merges._sweep_writes mints them again if they straddle a month's
    turn): judged from that record alone, the same at every replica. A lone "in" would
    raise its writer's rights from nothing (value no branch collected, spent first in,
    first out from other branches' prepaid lots). Sweeps written before 0.3.0 are two
    consecutive records of one document: `earlier(ref)` gives the "out" an earlier
    record of this writer put in this document and no "in" has named yet (the
    replica's document and projection: the same at every replica, since a writer's
    records of a document are applied in its log's order). Returns the outs named.

    An "out" is named by an "in" of its record too, unless it is all its record adds
    (`alone`: 0.2.0's shape, its "in" in a later record, whatever came between). A
    lone out lowers only its writer's own rights, as a debit may, but it was read as
    value moved: the settlement moved the member's lots to `to` and a member who
    never had them spent them, so one branch owed another for value it served from
    its own till. The settlement moves an out's lots only once an "in" naming it is
    projected (crdtledger.settlement), which covers the 0.2.0 shape the rule takes."""
    named: set[str] = set()
    outs: list[Any] = []
    for key, e in merges.items():
        changes = _changes(e)
        if changes is None:
            continue  # malformed (model.normalise_entry's)
        if all(c < 0 for _p, _n, c in changes):
            if changes:  # an "out": lowers its own
                outs.append(key)
            continue
        ref = e.get("ref")
        out = None
        if isinstance(ref, str) and ref not in named:
            out = merges.get(ref) or (earlier(ref) if earlier is not None else None)
        lowered = _changes(out) if out is not None else None
        if (out is None or lowered is None or out.get("kind") != "merge"
                or out.get("node") != node or out.get("to") != e.get("member")
                or Counter((p, n, -c) for p, n, c in lowered) != Counter(changes)):
            raise RuleBroken("merge-paired", f"{doc}: entry {key}: node {node} raises rights "
                                             "by a merge that no out of its own lowers")
        named.add(str(ref))
    if not alone:
        for key in outs:
            if key not in named:
                raise RuleBroken("merge-paired", f"{doc}: entry {key}: node {node} lowers "
                                                 "rights by a merge that no in of its "
                                                 "record raises for its `to`")
    return named


def _changes(entry: dict[str, Any]) -> list[tuple[str, str, Any]] | None:
    """An entry's deltas as (purse, node, change), or None when malformed (refused by
    model.normalise_entry, which quarantines the entry at every replica)."""
    deltas = entry.get("deltas")
    if not isinstance(deltas, list):
        return None
    out = []
    for d in deltas:
        if (not isinstance(d, list) or len(d) != 3 or not isinstance(d[0], str)
                or not isinstance(d[1], str) or isinstance(d[2], bool)
                or not isinstance(d[2], _NUMBER)):
            return None
        out.append((d[0], d[1], d[2]))
    return out


def check_local(doc: str, governs: bool, value: Any, ca_signed: Callable[[Any], bool]
                ) -> None:
    """The writer's own check of the record it just wrote, before it commits: refuse
    here what every replica would refuse (PermissionDenied, with the reason)."""
    if doc in GOVERNANCE_DOCS and not governs and not (doc == "rules" and ca_signed(value)):
        raise PermissionDenied(
            f"only the head office may change the chain's {doc}: this branch's certificate "
            "does not grant it (at the PC holding the chain's ca.key: crdtledger chain "
            "renew --chain CHAIN_DIR --data DIR --head-office)")
