"""Byzantine branches: a forger, an equivocator, a branch restored from an old backup.

Honest nodes run exactly the production core; so do the Byzantine ones for their
normal traffic (they sell, relay and answer rights requests like everyone). What
makes them Byzantine is done here, at seeded times, with the node's own key (a
dishonest branch holds its own key, never another's):

- **forger**: every 3-12 minutes of business hours, a record of its own log that
  breaks a write rule, in turn (from a seeded start): an entry keyed by and naming
  another branch (`entry-writer`), an entry of its own moving another branch's
  rights to itself (`own-rights`), a rewrite or a deletion of another branch's
  entry (`entry-insert-once`), a new owner operator (`governance`: the sim chain is
  enrolled with a CA and only the head office, the first node, governs), a top-up
  of its own back-dated into a month it has closed (`closed-month`), rights raised
  at itself by a merge's "in" with no "out" (`merge-paired`) or by a transfer of
  nothing (`transfer-balanced`) or by a debit (`value-raise`), a refund of another
  branch's debit (`refund-own`), and the rest of BREAKS: every write rule, and a
  second arm of some (a card's and an exit settlement's `paid`, a package's, beside a
  top-up's; a debit's `amount` beside a transfer's; a member, beside a card, under
  another's id; a revocation list the CA did not sign, beside an operator; an entry
  keyed by its writer naming another; stock moved by a transfer), and the arms only
  a writer's earlier record opens (LED: a cut, then a cut of the month before, a
  closing of the month after, or an entry dated before the cut month's end; a
  member, then another version of her from the same clock; a sweep's lone "out",
  then its "in"). Built as
  tests/helpers.Forger builds one (a pycrdt document of the forger's client id from
  its own copy, chained from its tip, its head signed with its key), sent as a
  `recs` frame on every link it has, and taken into its own store too, so that its
  log stays one line (its own replica refuses it and blocks itself: nothing it
  writes later is applied anywhere, which is what honest replicas do too).
- **equivocator**: once, at a seeded time, two different records at the same
  position of its log: record B is a debit (or, if it holds no rights, a top-up) made
  on a copy of its store, sent as a crafted frame to half of its peers; record A is
  another debit made on its store, which its sessions send to everyone. It then
  takes B into its own store, which proves the fork there and blocks its own writes.
- **closed**: a shop closing for good, as the README's "Closing a shop for good" has
  it: at a seeded time of business hours no customer comes any more, and it hands
  its members' rights over to another branch (`rights handover`, the same
  operation). The owner waits until every branch has what it wrote and no branch
  sees it holding anything (a grant answered late, a rebalancer that had not heard:
  the hand-over runs again), then switches its PC off for good and head office
  revokes its certificate (`chain revoke`: rule `revocations`). Honest throughout;
  once retired it is left out of the end checks, except that no replica may see it
  holding anything: its members' money is served elsewhere.
- **revoked**: a PC stolen (or a branch the owner cuts off) and revoked while it runs
  on: at a seeded time of business hours it is cut off from every other node and its
  tills sell on. Once every honest replica holds the same length of its log (the
  owner phoning round: the simulator reads them), head office revokes its certificate
  (`chain revoke`, rule `revocations`); once every honest replica has installed the
  list, the thief plugs it in again. Its records beyond that length, written before
  or after the revocation, must be refused at every honest replica, its earlier ones
  stay applied, and nothing it acknowledged after the theft is money anywhere
  (sim.checks.revoked_now, revoked_final). Not honest from the start: left out of
  the honest replicas' checks, as a forger is.
  With `--revoked-live` it is not cut off from head office (only from the others),
  and head office revokes it while its link is live: in the instant a rights request
  of it that head office could serve has come in (read in the same turn as the
  owner's write of the list, before the node installs the list for its TLS layer), or
  at a look two hours on if none came. The request is refused (Payments.grant_rights:
  nothing to a branch the chain revoked) and the link dropped (peer.chain.
  apply_revocations, as the node runs it) by the node's own code; a grant, or a link
  kept, is a violation (`answered`, sim.checks.live_links_now). Only head office:
  its records reach the others through it, so none takes what it wrote after.
- **restored**: a backup (crdtledger.backups.write_backup) taken between 10:30 and
  12:00; one to four hours later the node dies and its store is replaced by that
  backup (crdtledger.backups.restore), and it restarts: honest from then on, it
  refuses to sell until it has caught up with its own log from a peer.

Nodes are chosen by the seed among the branches that are neither a hub nor the head
office, one role each.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import random
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgpack
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from pycrdt import Map, merge_updates

from crdtledger import audit, views
from crdtledger.backups import restore, write_backup
from crdtledger.closing import due_month
from crdtledger.errors import LedgerError, RemoteProtocolError
from crdtledger.hlc import HybridClock, id_time_ms
from crdtledger.ledger import Ledger
from crdtledger.log import (
    CLOSING_DOC,
    CUT_DOC,
    Batch,
    Head,
    Record,
    closing_data,
    head_message,
    record_hash,
)
from crdtledger.model import GOODS_PURSES, entry_doc, member_doc, month_over_ms, owner_of
from crdtledger.storage import DB_FILE, LoadedDoc
from crdtledger.sync import RightsAnswered, pack
from crdtledger.trust import revocations_rule
from crdtledger.writerules import client_id_for
from peer.files import export_bytes, import_bytes
from sim.chainca import NOT_AFTER
from sim.engine import DAY, HOUR, MINUTE, MS, SECOND
from sim.net import Connection, Cut, End
from sim.workload import GOODS

if TYPE_CHECKING:
    from sim.node import SimNode
    from sim.world import World

ROLES = ("forger", "equivocator", "restored", "closed", "revoked")
# How often the owner of a closing shop looks whether it may be switched off.
CLOSING_LOOK = 5 * MINUTE
# --revoked-live: how long head office waits for a rights request of the stolen PC it
# could serve before it revokes it at its next look anyway (its link dropped all the same).
LIVE_WAIT = 2 * HOUR
# The rule each forgery breaks (crdtledger.writerules.RULES): every rule, some twice.
BREAKS = {"entry-as-other": "entry-writer", "others-rights": "own-rights",
          "rewrite": "entry-insert-once", "delete": "entry-insert-once",
          "governance": "governance", "closed-month": "closed-month",
          "merge-in": "merge-paired", "transfer-nothing": "transfer-balanced",
          "refund-other": "refund-own", "debit-raise": "value-raise",
          "other-client": "own-client", "clock-skip": "in-order",
          "card-as-other": "record-writer", "coupon-made": "coupon-unit",
          "reward-other": "referral-reward", "reversal-other": "reversal-own",
          "give-back-other": "give-back-own", "points-raise": "raise-own",
          "booking-other": "booking-branch", "amount-claimed": "amount-moved",
          "before-enrolled": "enrolled", "paid-claimed": "paid-moved",
          "card-rewritten": "card-fixed",
          # The other arms of rules the kinds above break one way only.
          "card-paid-claimed": "paid-moved", "exit-paid-claimed": "paid-moved",
          "package-paid-claimed": "paid-moved", "debit-amount-claimed": "amount-moved",
          "package-other-uses": "value-raise", "ship-from-nothing": "raise-own",
          "member-as-other": "record-writer", "revocation-forged": "governance",
          "entry-naming-other": "entry-writer", "stock-transferred": "raise-own",
          "card-replaced": "record-writer", "card-repointed": "card-fixed",
          "merge-outs": "merge-paired", "coupon-ref-other": "referral-reward",
          "refund-handover-other": "refund-own", "transfer-elsewhere": "amount-moved",
          "two-clients": "own-client", "garbage-update": "own-client",
          "member-before-enrolled": "enrolled",
          # Two records each (LED): a first one every replica takes, then the forgery.
          "clock-back": "in-order", "coupon-swept-in": "coupon-unit",
          "cut-again": "closed-month", "closing-unclosed": "closed-month",
          "id-before-cut": "closed-month", "cut-no-month": "closed-month"}
FORGERIES = tuple(BREAKS)
# Forgeries of records in no document (a cut, a closing) or of more than one record of
# their writer's log (`_led`): most arms a record breaks only after an earlier one of
# the same writer. The closed-month ones open
# with a cut of the month a branch's daily pass would cut (closing.due_month): an
# identity that closes months as a branch does, so each arm gets a writer of its own (the
# branch's own key closes months too, but its first forgery blocks it for good).
LED = frozenset({"clock-back", "coupon-swept-in", "cut-again", "closing-unclosed",
                 "id-before-cut", "cut-no-month"})
# A writer is judged by its first broken rule only (its later records are held,
# unjudged), so each forgery is written by an identity of its own: the forger's
# owner has one more PC enrolled per forgery (sim.chainca.ChainCA.identity), named
# after the branch (B03X1, B03X2, ...). Only `closed-month` is written with the
# branch's own key, into a month its own daily pass closed.
OWN_KEY = frozenset({"closed-month"})
Mutate = Callable[[dict[str, Map[Any]]], None]
# Forgeries that are one entry of the writer's own, wrong only in what it says: the
# fields besides id, member, node, op, at and amount, from (an id of the victim's,
# the entry's own id, the writer, the victim).
PLAIN: dict[str, Callable[[str, str, str, str], dict[str, Any]]] = {
    # A coupon's unit from nothing: only the entry that issues a coupon adds it.
    "coupon-made": lambda theirs, mine, me, victim: {
        "kind": "correction", "deltas": [[f"cpn:{theirs}", me, 1]]},
    # A referral's reward, for a referral another branch recorded.
    "reward-other": lambda theirs, mine, me, victim: {
        "kind": "reward", "ref": theirs, "deltas": [["bonus", me, 100]]},
    # The reversal of another branch's check-in.
    "reversal-other": lambda theirs, mine, me, victim: {
        "kind": "checkin", "ref": theirs, "deltas": []},
    # Points given back for another branch's write-off.
    "give-back-other": lambda theirs, mine, me, victim: {
        "kind": "expiry", "ref": theirs, "deltas": [["points", me, 100]]},
    # Points raised in another branch's rights.
    "points-raise": lambda theirs, mine, me, victim: {
        "kind": "debit", "deltas": [["points", victim, 100]]},
    # A decision for a technician of another branch.
    "booking-other": lambda theirs, mine, me, victim: {
        "kind": "booking_decision", "member": theirs, "deltas": []},
    # A transfer of 1,000.00 that moves nothing (the audit trail showed the amount).
    "amount-claimed": lambda theirs, mine, me, victim: {
        "kind": "transfer", "amount": 100_000, "to": victim, "deltas": []},
    # A top-up saying 0.01 taken by wechat that adds 1,000.00 of cash (the day report
    # read the 0.01, the settlement the 1,000.00).
    "paid-claimed": lambda theirs, mine, me, victim: {
        "kind": "topup", "amount": 1, "paid": 1, "pay": "wechat",
        "deltas": [["cash", me, 100_000]]},
    # A card of fee 0 saying 1,000,000.00 paid (the day report's card sales read it).
    "card-paid-claimed": lambda theirs, mine, me, victim: {
        "kind": "card", "card": mine, "paid": 100_000_000, "deltas": []},
    # An exit refund taking 500.00 of cash saying nothing paid out (the settlement read
    # it as served here, so another branch owed it; the till short of nothing).
    "exit-paid-claimed": lambda theirs, mine, me, victim: {
        "kind": "exit_settle", "ref": mine, "step": "refund", "amount": 50_000,
        "deltas": [["cash", me, -50_000]]},
    # A package said paid 500.00 by wechat that also takes 500.00 of stored value (the
    # till said wechat, the settlement stored value served: paid twice in the books).
    "package-paid-claimed": lambda theirs, mine, me, victim: {
        "kind": "package", "service": "FORGED", "qty": 10, "amount": 50_000,
        "paid": 50_000, "pay": "wechat",
        "deltas": [[f"pkg:{mine}", me, 10], ["cash", me, -50_000]]},
    # A sale of 90,000.00 from stored value that takes 1.00 of it (the day report read
    # the 90,000.00, the settlement the 1.00).
    "debit-amount-claimed": lambda theirs, mine, me, victim: {
        "kind": "debit", "amount": 9_000_000, "pay": "stored",
        "deltas": [["cash", me, -100]]},
    # 90 uses added to a package another branch sold (a third branch would serve them).
    "package-other-uses": lambda theirs, mine, me, victim: {
        "kind": "package", "service": "FORGED", "qty": 90, "paid": 0,
        "deltas": [[f"pkg:{theirs}", me, 90]]},
    # 5 units put in transit to another branch, taken from no stock (its receiver
    # would shelve units from nothing).
    "ship-from-nothing": lambda theirs, mine, me, victim: {
        "kind": "stock", "goods": GOODS, "qty": 5, "reason": "ship",
        "deltas": [["transit", victim, 5]]},
    # A top-up of 1,000.00 keyed by the writer, naming another branch as its node.
    "entry-naming-other": lambda theirs, mine, me, victim: {
        "kind": "topup", "node": victim, "op": owner_of(victim), "amount": 100_000,
        "paid": 100_000, "deltas": [["cash", victim, 100_000]]},
    # 5 units of stock moved to another branch by a transfer (only a shipment moves
    # units: its receiver takes them in).
    "stock-transferred": lambda theirs, mine, me, victim: {
        "kind": "transfer", "amount": 5, "to": victim,
        "deltas": [["stock", me, -5], ["stock", victim, 5]]},
    # A coupon issued for a referral another branch recorded (its reward granted twice).
    "coupon-ref-other": lambda theirs, mine, me, victim: {
        "kind": "coupon", "ref": theirs, "deltas": [[f"cpn:{mine}", me, 1]]},
    # A refund of another branch's debit, naming as the hand-over that gave it the
    # debit's refund rights a branch that did not make the debit (itself).
    "refund-handover-other": lambda theirs, mine, me, victim: {
        "kind": "refund", "ref": theirs, "handover": me, "deltas": [["cash", me, 100]]},
    # A transfer of 1.00 to another branch that moves it back to its writer.
    "transfer-elsewhere": lambda theirs, mine, me, victim: {
        "kind": "transfer", "amount": 100, "to": victim,
        "deltas": [["cash", me, -100], ["cash", me, 100]]},
}


def _join(mid: str, name: str, home: str, roots: dict[str, Map[Any]]) -> None:
    """A member of `home`'s own joins (Members.add_member's shape, in short)."""
    roots["members"][mid] = Map({"name": name, "phone": "13800000002", "home": home,
                                 "created_by": owner_of(home)})


def _month_next(month: str, step: int) -> str:
    """The month `step` months after `month` (YYYY-MM), before if negative."""
    n = int(month[:4]) * 12 + int(month[5:]) - 1 + step
    return f"{n // 12:04d}-{n % 12 + 1:02d}"


@dataclass
class Forged:
    node: str  # the writer: the forger's own id, or an identity of its (OWN_KEY)
    by: str  # the forger's branch
    seq: int
    hash: bytes
    kind: str
    doc: str
    at: int


@dataclass
class Fork:
    node: str
    seq: int  # the first position holding two records
    last: int  # the highest position either side reached
    entries: set[str]  # the entries the two sides carry (not acknowledged to anyone)
    hashes: tuple[bytes, bytes]  # of side A's and side B's records at `seq`
    sent_to: list[str]  # peers that got side B first
    at: int


@dataclass
class Restored:
    node: str
    backup: Path
    backup_at: int
    acked_at_backup: set[str]
    restored_at: int | None = None
    window: set[str] = field(default_factory=set)  # acknowledged after the backup


def credits_to(ledger: Ledger, node: str, *, writer: str | None = None) -> set[str]:
    """The entries (of `writer` only, if given) that give `node` rights."""
    return {str(e["id"]) for e in audit.entries(ledger)
            if (writer is None or e["node"] == writer)
            and any(n == node and change > 0 for _p, n, change in e["deltas"])}


def goods_held(ledger: Ledger, node: str) -> int:
    """Units of the workload's goods item `node` holds, on the shelf or in transit to it
    (none before head office writes the catalogue)."""
    try:
        item = ledger.goods_item(GOODS)
    except LedgerError:
        return 0
    return sum(ledger.stock_held(item, purse).get(node, 0) for purse in ("stock", "transit"))


@dataclass
class Closing:
    node: str
    to: str  # the branch its members' rights go to
    closed_at: int | None = None
    handovers: list[dict[str, Any]] = field(default_factory=list)
    retired_at: int | None = None  # switched off
    revoked_at: int | None = None  # the revocation written at head office


@dataclass
class Stolen:
    """A branch whose PC is stolen and revoked while it runs on (role "revoked")."""

    node: str
    plug_after: int  # how long after every replica knows the thief plugs it in again
    stolen_at: int | None = None
    cut: list[Cut] = field(default_factory=list)
    # Its log's length at every honest replica when head office revoked it: what of it
    # stays; nothing beyond may be taken anywhere.
    held: int | None = None
    acked_at_revocation: set[str] = field(default_factory=set)
    revoked_at: int | None = None  # the revocation written at head office
    plugged_at: int | None = None  # cut no more: its sessions reach every peer again
    # Entries of honest writers giving it rights, each writer's own, when it came back:
    # no honest branch may give a revoked one anything after (payments: "never one the
    # chain revoked").
    credits_at_plug: set[str] = field(default_factory=set)
    file: dict[str, Any] = field(default_factory=dict)  # the thief's sync file, and its fate
    # --revoked-live: connected to head office until revoked, which waits (`armed`) for
    # a rights request of it head office could serve; "request" or "look", once done.
    armed: bool = False
    revoked_on: str | None = None
    requests_refused: int = 0  # its rights requests an honest node answered "none"


class Byzantine:
    """The Byzantine roles of one run and what they did."""

    def __init__(self, world: World, counts: dict[str, int]) -> None:
        self.world = world
        cfg = world.config
        self.rng = random.Random(f"{cfg.seed}:byzantine")
        eligible = [n.name for n in world.nodes if not n.hub and n.index != 0]
        wanted = sum(counts.values())
        if wanted > len(eligible):
            raise ValueError(f"{wanted} branches with a role (Byzantine or closing) asked for, "
                             f"but only {len(eligible)} are neither a hub nor the head office")
        chosen = self.rng.sample(eligible, wanted)
        self.roles: dict[str, str] = {}
        for role in ROLES:
            for _ in range(counts.get(role, 0)):
                self.roles[chosen.pop(0)] = role
        self.forged: list[Forged] = []
        self.identities: dict[str, str] = {}  # a forger's extra identity -> its branch
        # Entries of the records a forgery opens with (LED): taken everywhere, as they
        # break no rule, and acknowledged to nobody.
        self.led_entries: set[str] = set()
        self.forks: list[Fork] = []
        self.restores: dict[str, Restored] = {}
        self.closings: dict[str, Closing] = {}
        self.stolen: dict[str, Stolen] = {}

    # --- who is what ------------------------------------------------------------

    def honest(self, name: str) -> bool:
        """Forgers and equivocators are not, nor a forger's extra identities; a
        restored branch is (after its restore it runs the honest node as it is)."""
        return self.roles.get(name) not in ("forger", "equivocator", "revoked") \
            and name not in self.identities

    def writers(self) -> list[tuple[str, str]]:
        """The dishonest writers (branch or identity) and their roles."""
        out = [(n, r) for n, r in self.roles.items() if r in ("forger", "equivocator")]
        return sorted(out + [(n, "forger") for n in self.identities])

    def closing_shops(self, *, retired: bool) -> set[str]:
        """The shops closing for good since they closed, or since they were switched
        off (`retired`)."""
        return {c.node for c in self.closings.values()
                if (c.retired_at if retired else c.closed_at) is not None}

    def role(self, name: str) -> str | None:
        return self.roles.get(name)

    # --- schedule ---------------------------------------------------------------

    def schedule(self) -> None:
        w = self.world
        end = w.workload_end
        for name, role in sorted(self.roles.items()):
            rng = random.Random(f"{w.config.seed}:byzantine:{name}")
            node = w.by_name[name]
            if role == "forger":
                # Every kind once, in turn from a seeded start; one with nothing to
                # forge from yet goes to the back of the queue.
                start = rng.randrange(len(FORGERIES))
                queue = [FORGERIES[(start + i) % len(FORGERIES)]
                         for i in range(len(FORGERIES))]
                t = 11 * HOUR + rng.randrange(4 * HOUR)
                w.engine.at(min(t, end - HOUR), partial(self._forge, node, queue, rng, 0))
            elif role == "equivocator":
                t = 11 * HOUR + rng.randrange(5 * HOUR)
                w.engine.at(min(t, end - HOUR), partial(self._equivocate, node, rng))
            elif role == "closed":
                t = 12 * HOUR + rng.randrange(4 * HOUR)
                others = [n.name for n in w.nodes if n.name != name
                          and self.roles.get(n.name) is None]
                closing = Closing(name, to=rng.choice(others))
                self.closings[name] = closing
                w.engine.at(min(t, end - 4 * HOUR), partial(self._close, node, closing))
            elif role == "revoked":
                t = 10 * HOUR + 30 * MINUTE + rng.randrange(2 * HOUR)
                stolen = self.stolen[name] = Stolen(name, 20 * MINUTE
                                                    + rng.randrange(100 * MINUTE))
                w.engine.at(min(t, end - 4 * HOUR), partial(self._steal, node, stolen))
            elif role == "restored":
                t = 10 * HOUR + 30 * MINUTE + rng.randrange(90 * MINUTE)
                later = t + HOUR + rng.randrange(3 * HOUR)
                down = 30 * SECOND + rng.randrange(90 * SECOND)
                w.engine.at(min(t, end - 2 * HOUR), partial(self._backup, node))
                w.engine.at(min(later, end - HOUR), partial(self._die, node, down))

    # --- the forger -------------------------------------------------------------

    def _forge(self, node: SimNode, queue: list[str], rng: random.Random, tries: int) -> None:
        """The next forgery of the queue, then the one after 5-20 minutes later."""
        w = self.world
        if not queue or w.engine.now >= w.workload_end - HOUR:
            return
        # Every 3-12 minutes: the 48 kinds forged before the day's last hour from a
        # start as late as 15:00.
        later = w.engine.now + 3 * MINUTE + rng.randrange(9 * MINUTE)
        if not node.up or node.ledger is None or node.core is None:
            w.engine.at(later, partial(self._forge, node, queue, rng, tries))
            return
        kind = queue.pop(0)
        lg = node.ledger
        node.run(node.core.flush())
        if kind in OWN_KEY:
            writer, key, cert = node.name, lg.trust.key, lg.trust.cert_der
        else:
            writer = f"{node.name}X{sum(b == node.name for b in self.identities.values()) + 1}"
            key, certificate = w.ca.identity(writer)
            cert = certificate.public_bytes(serialization.Encoding.DER)
        if kind in LED:
            built = self._led(lg, kind, rng, writer)
        else:
            one = self._forgery(lg, kind, rng, writer)
            built = None if one is None else [one]
        if built is None:
            w.trace(w.engine.now, f"{node.name} byzantine forgery {kind} skipped: nothing "
                                  "to forge from yet")
            if tries < 3 * len(FORGERIES):
                queue.append(kind)
            w.engine.at(later, partial(self._forge, node, queue, rng, tries + 1))
            return
        if writer != node.name:
            self.identities[writer] = node.name
        seq, hash_ = lg.storage.log.tip(writer)
        recs = []
        for doc, data in built:  # chained from its tip, the forgery last
            seq += 1
            recs.append(Record(writer, seq, doc, data))
            hash_ = record_hash(hash_, writer, seq, doc, data)
        rec = recs[-1]
        # Signed as Trust.sign does, deterministically (RFC 6979): the same seed, the
        # same bytes.
        signature = key.sign(head_message(lg.chain, writer, rec.seq, hash_),
                             ec.ECDSA(hashes.SHA256(), deterministic_signing=True))
        batch = Batch(recs, {writer: Head(rec.seq, hash_, signature)}, {writer: cert})
        self.forged.append(Forged(writer, node.name, rec.seq, hash_, kind, rec.doc,
                                  w.engine.now))
        sent = self._inject(node, pack({"t": "recs", **batch.to_wire()}), None)
        w.trace(w.engine.now, f"{node.name} byzantine forged {kind} as record {rec.seq} of "
                              f"{writer} in {rec.doc}, sent to {','.join(sent) or 'nobody'}")
        lg.apply_batch(batch)  # its own store judges it too (a log of its own: one line)
        node.run(node.core.flush())
        w.engine.at(later, partial(self._forge, node, queue, rng, tries))

    def _forgery(self, lg: Ledger, kind: str, rng: random.Random, me: str
                 ) -> tuple[str, bytes] | None:
        """The document and update of a forgery of `kind` written by `me`."""
        others = [n.name for n in self.world.nodes if n.name != me]
        victim = rng.choice(others)
        members = audit.ids(lg, "members")
        if not members:
            return None
        member = rng.choice(members)
        client = client_id_for(me, 0)
        base = lg.clock.mint().rsplit(".", 1)[0]  # an id's time part, minted now
        if kind in PLAIN:  # an entry of its own whose content breaks the rule
            eid = f"{base}.{me}"
            plain: dict[str, Any] = {"id": eid, "member": member, "node": me,
                                     "op": owner_of(me), "at": id_time_ms(eid), "amount": 0,
                                     **PLAIN[kind](f"{base}.{victim}", eid, me, victim)}
            return self._put(lg, plain, client)
        if kind == "other-client":  # its entry, written with another node's client id
            eid = f"{base}.{me}"
            return self._put(lg, {"id": eid, "kind": "topup", "member": member, "node": me,
                                  "op": owner_of(me), "at": id_time_ms(eid), "amount": 100,
                                  "paid": 100, "deltas": [["cash", me, 100]]},
                             client_id_for(victim, 0))
        if kind == "clock-skip":  # its entry, after a change of its own never sent
            eid = f"{base}.{me}"
            topup = {"id": eid, "kind": "topup", "member": member, "node": me,
                     "op": owner_of(me), "at": id_time_ms(eid), "amount": 100, "paid": 100,
                     "deltas": [["cash", me, 100]]}
            doc = entry_doc(eid, lg.storage.day_of)
            ld = LoadedDoc(doc, client)
            ld.doc.apply_update(lg.storage.doc(doc).doc.get_update())
            with ld.doc.transaction():
                ld.roots["entries"][f"{base}.{me}x"] = 1
            before = ld.doc.get_state()
            with ld.doc.transaction():
                ld.roots["entries"][eid] = topup
            return doc, bytes(ld.doc.get_update(before))
        if kind == "card-as-other":  # a card created under another branch's id
            card = f"{base}.{victim}"

            def issue(roots: dict[str, Map[Any]]) -> None:
                roots["cards"][card] = {"member": member, "status": "active"}

            return self._update(lg, member_doc(member), issue, client)
        if kind == "card-rewritten":  # a card held here given a PIN the forger chose
            cards = audit.tables(lg).execute("SELECT id, member FROM cards ORDER BY id").fetchall()
            if not cards:
                return None
            cid, holder = rng.choice(cards)

            def rewrite(roots: dict[str, Map[Any]]) -> None:
                roots["cards"][cid]["pin"] = "forged"

            return self._update(lg, member_doc(holder), rewrite, client)
        if kind in ("card-replaced", "card-repointed"):
            cards = audit.tables(lg).execute("SELECT id, member FROM cards ORDER BY id").fetchall()
            if not cards:
                return None
            cid, holder = rng.choice(cards)
            other = next((m for m in members if m != holder), holder)

            def repoint(roots: dict[str, Map[Any]]) -> None:
                if kind == "card-replaced":  # a new card under its id, of another member
                    roots["cards"][cid] = {"member": other, "status": "active"}
                else:  # the card of one member made another's
                    roots["cards"][cid]["member"] = other

            return self._update(lg, member_doc(holder), repoint, client)
        if kind == "merge-outs":  # two sweeps' outs in one record, no "in" for either
            outs: list[dict[str, Any]] = [
                {"id": f"{b}.{me}", "kind": "merge", "member": member, "to": member,
                 "node": me, "op": owner_of(me), "at": id_time_ms(f"{b}.{me}"),
                 "amount": 100, "deltas": [["cash", me, -100]]}
                for b in (base, lg.clock.mint().rsplit(".", 1)[0])]

            def sweep(roots: dict[str, Map[Any]]) -> None:
                for out in outs:
                    roots["entries"][out["id"]] = out

            return self._update(lg, entry_doc(outs[0]["id"], lg.storage.day_of), sweep, client)
        if kind == "two-clients":
            # One update of its own client and of another branch's, as its next epoch
            # (a restored branch's: none in a run without one, so that a replica that
            # took it would not refuse that branch's own records after).
            doc = entry_doc(f"{base}.{me}", lg.storage.day_of)
            parts = []
            for n, as_client in enumerate((client, client_id_for(victim, 1))):
                eid = f"{lg.clock.mint().rsplit('.', 1)[0] if n else base}.{me}"
                parts.append(self._put(lg, {
                    "id": eid, "kind": "topup", "member": member, "node": me,
                    "op": owner_of(me), "at": id_time_ms(eid), "amount": 100, "paid": 100,
                    "deltas": [["cash", me, 100]]}, as_client)[1])
            return doc, bytes(merge_updates(*parts))
        if kind == "garbage-update":  # an update cut short after its first byte
            return entry_doc(f"{base}.{me}", lg.storage.day_of), b"\x01"
        if kind == "member-before-enrolled":  # a member of its own, dated before enrolment
            since = self.world.ca.enrolled_ms
            if since is None:
                return None
            at = since - 10 * DAY // MS
            mid = HybridClock(me, now_ms=lambda: at).mint()

            def enrol_late(roots: dict[str, Map[Any]]) -> None:
                roots["members"][mid] = Map({"name": "mallory", "phone": "13800000001",
                                             "home": victim, "created_by": owner_of(me)})

            return self._update(lg, member_doc(mid), enrol_late, client)
        if kind == "closed-month":
            if lg.closed_through is None:
                return None
            # Ten days before the month after the one it closed: inside that month.
            at = month_over_ms(lg.closed_through) - 10 * DAY // MS
            eid = HybridClock(me, now_ms=lambda: at).mint()
            back = {"id": eid, "kind": "topup", "member": member, "node": me,
                    "op": owner_of(me), "at": id_time_ms(eid), "amount": 100_000,
                    "paid": 100_000, "deltas": [["cash", me, 100_000]]}
            return self._put(lg, back, client)
        if kind == "before-enrolled":  # a top-up dated ten days before its enrolment
            since = self.world.ca.enrolled_ms
            if since is None:
                return None
            at = since - 10 * DAY // MS
            eid = HybridClock(me, now_ms=lambda: at).mint()
            early = {"id": eid, "kind": "topup", "member": member, "node": me,
                     "op": owner_of(me), "at": id_time_ms(eid), "amount": 100_000,
                     "paid": 100_000, "deltas": [["cash", me, 100_000]]}
            return self._put(lg, early, client)
        if kind in ("merge-in", "transfer-nothing", "refund-other", "debit-raise"):
            eid = f"{base}.{me}"
            raised: dict[str, Any] = {
                "id": eid, "kind": kind.split("-")[0], "member": member, "node": me,
                "op": owner_of(me), "at": id_time_ms(eid), "amount": 100_000,
                "deltas": [["cash", me, 100_000]]}
            if kind == "refund-other":  # names a debit another branch wrote
                debits = [e["id"] for m in members[:50] for e in lg.history(m, 50)
                          if e["kind"] == "debit" and e["node"] != me]
                if not debits:
                    return None
                raised["ref"] = min(debits)
            # (merge-in names no "out": there is none of its own to name.)
            return self._put(lg, raised, client)
        if kind in ("entry-as-other", "others-rights"):
            if kind == "entry-as-other":
                eid = f"{base}.{victim}"
                entry: dict[str, Any] = {
                    "id": eid, "kind": "topup", "member": member, "node": victim,
                    "op": owner_of(victim), "at": id_time_ms(eid), "amount": 100_000_000,
                    "paid": 100_000_000, "deltas": [["cash", victim, 100_000_000]]}
            else:
                eid = f"{base}.{me}"
                held = [(m, lg.rights(m, "cash").get(victim, 0)) for m in members[:200]]
                held = [(m, a) for m, a in held if a > 0]
                member, amount = held[0] if held else (member, 10_000)
                entry = {"id": eid, "kind": "transfer", "member": member, "node": me,
                         "op": f"sync@{me}", "at": id_time_ms(eid), "amount": amount,
                         "to": me, "deltas": [["cash", victim, -amount], ["cash", me, amount]]}
            return self._put(lg, entry, client)
        if kind in ("rewrite", "delete"):
            docs = sorted(n for n in lg.state_vectors() if n.startswith("ledger/"))
            if not docs:
                return None
            doc = docs[-1]
            keys = sorted(str(k) for k in lg.storage.doc(doc).roots["entries"].keys()  # noqa: SIM118
                          if not str(k).endswith(f".{me}"))
            if not keys:
                return None
            target = rng.choice(keys)

            def change(roots: dict[str, Map[Any]]) -> None:
                if kind == "delete":
                    del roots["entries"][target]
                    return
                old = dict(roots["entries"][target])
                old.update(amount=50_000_000)
                roots["entries"][target] = old

            return self._update(lg, doc, change, client)
        if kind == "member-as-other":  # a member created under another branch's id
            mid = f"{base}.{victim}"

            def join(roots: dict[str, Map[Any]]) -> None:
                roots["members"][mid] = Map({"name": "mallory", "phone": "13800000000",
                                             "home": victim, "created_by": owner_of(me)})

            return self._update(lg, member_doc(mid), join, client)
        if kind == "revocation-forged":
            # A revocation list of head office, named as the chain CA's but signed by
            # the forger's key: only a list the CA signed may be written by any branch.
            ca = self.world.ca
            when = dt.datetime.fromtimestamp((self.world.epoch_ms + self.world.engine.now
                                              // 1000) // 1000, dt.UTC)
            head = self.world.nodes[0].name
            crl = (x509.CertificateRevocationListBuilder().issuer_name(ca.cert.subject)
                   .last_update(when).next_update(NOT_AFTER)
                   .add_extension(x509.CRLNumber(ca.crl_number + 1), critical=False)
                   .add_revoked_certificate(
                       x509.RevokedCertificateBuilder()
                       .serial_number(ca.identity(head, head_office=True)[1].serial_number)
                       .revocation_date(when).build())
                   .sign(ca.identity(me)[0], hashes.SHA256(), ecdsa_deterministic=True))
            body = revocations_rule(crl.public_bytes(serialization.Encoding.DER))
            rid = f"{base}.{me}"

            def revoke(roots: dict[str, Map[Any]]) -> None:
                roots["rules"][rid] = {"kind": "revocations", "effective_from": "2000-01-01",
                                       "body": json.dumps(body, sort_keys=True),
                                       "by": owner_of(me), "rev": 1}

            return self._update(lg, "rules", revoke, client)
        oid = f"{base}.{me}"

        def owner(roots: dict[str, Map[Any]]) -> None:
            roots["operators"][oid] = Map({"name": "mallory", "password": "x" * 20,
                                           "active": True, "roles": Map({"owner": True})})

        return self._update(lg, "operators", owner, client)

    def _led(self, lg: Ledger, kind: str, rng: random.Random, me: str
             ) -> list[tuple[str, bytes]] | None:
        """The records of a forgery of `kind` (LED) written by `me`, the forgery last."""
        members = audit.ids(lg, "members")
        if not members:
            return None
        member = rng.choice(members)
        client = client_id_for(me, 0)
        base = lg.clock.mint().rsplit(".", 1)[0]
        if kind == "clock-back":
            # A member of its own, then another version of her from before it: the
            # second record starts its clock in her document where the first began.
            mid = f"{base}.{me}"
            return [self._update(lg, member_doc(mid), partial(_join, mid, name, me), client)
                    for name in ("mallory", "eve")]
        if kind == "coupon-swept-in":
            # A coupon of its own issued, then swept as 0.2.0 swept: the "out" alone in
            # a record (taken), then the "in" naming it, whose unit that record adds
            # from nothing (an "out" of an earlier record adds none back to its record).
            ids = [f"{base}.{me}"] + [f"{lg.clock.mint().rsplit('.', 1)[0]}.{me}"
                                      for _ in range(2)]
            coupon, to = f"cpn:{ids[0]}", rng.choice(members)
            entries: list[dict[str, Any]] = [
                {"kind": "coupon", "member": member, "amount": 100, "reason": "owner",
                 "deltas": [[coupon, me, 1]]},
                {"kind": "merge", "member": member, "to": to, "amount": 0,
                 "deltas": [[coupon, me, -1]]},
                {"kind": "merge", "member": to, "ref": ids[1], "amount": 0,
                 "deltas": [[coupon, me, 1]]}]
            doc = entry_doc(ids[0], lg.storage.day_of)
            ld = LoadedDoc(doc, client)
            ld.doc.apply_update(lg.storage.doc(doc).doc.get_update())
            records = []
            for eid, entry in zip(ids, entries, strict=True):
                before = ld.doc.get_state()
                with ld.doc.transaction():
                    ld.roots["entries"][eid] = {"id": eid, "node": me, "op": owner_of(me),
                                                "at": id_time_ms(eid), **entry}
                records.append((doc, bytes(ld.doc.get_update(before))))
            self.led_entries |= set(ids[:2])
            return records
        if kind == "cut-no-month":
            return [(CUT_DOC, b"soon")]
        # A cut of the month its daily pass would cut now, then the forgery.
        month = due_month(lg.today())
        cut = (CUT_DOC, month.encode("ascii"))
        if kind == "cut-again":  # a cut of the month before, after it
            return [cut, (CUT_DOC, _month_next(month, -1).encode("ascii"))]
        if kind == "closing-unclosed":  # a closing of the month after
            digest = hashlib.sha256(f"{me} {month}".encode()).hexdigest()
            return [cut, (CLOSING_DOC, closing_data(_month_next(month, 1), digest))]
        # A top-up of 1,000.00 dated an hour before the month's end in UTC-12: on the
        # 1st of the next month where the chain's PCs are (Asia/Shanghai), so in the
        # next month's document, but before the month it closed is over everywhere.
        at = month_over_ms(month) - HOUR // MS
        eid = HybridClock(me, now_ms=lambda: at).mint()
        late = {"id": eid, "kind": "topup", "member": member, "node": me,
                "op": owner_of(me), "at": id_time_ms(eid), "amount": 100_000,
                "paid": 100_000, "deltas": [["cash", me, 100_000]]}
        return [cut, self._put(lg, late, client)]

    @classmethod
    def _put(cls, lg: Ledger, entry: dict[str, Any], client: int) -> tuple[str, bytes]:
        """The update that adds `entry` to the ledger document of its id's day."""
        eid = str(entry["id"])

        def put(roots: dict[str, Map[Any]]) -> None:
            roots["entries"][eid] = entry

        return cls._update(lg, entry_doc(eid, lg.storage.day_of), put, client)

    @staticmethod
    def _update(lg: Ledger, doc: str, mutate: Mutate, client: int) -> tuple[str, bytes]:
        """The update a node writing as pycrdt `client` makes when it runs `mutate` on
        its copy of `doc` (as tests/forgery.forge_update)."""
        ld = LoadedDoc(doc, client)
        ld.doc.apply_update(lg.storage.doc(doc).doc.get_update())
        before = ld.doc.get_state()
        with ld.doc.transaction():
            mutate(ld.roots)
        return doc, bytes(ld.doc.get_update(before))

    def _inject(self, node: SimNode, frame: bytes, only: list[str] | None) -> list[str]:
        """Send a crafted frame on the node's links to its peers (all, or `only`),
        behind what its sessions sent before. Returns the peers."""
        assert node.core is not None
        sent = []
        for peer in node.core.connected():
            if only is not None and peer not in only:
                continue
            state = node.core.peers.get(peer)
            conn = node.conns.get(state.link) if state is not None and state.link is not None \
                else None
            if conn is not None:
                End(self.world.net, conn, node.name).send([frame])
                sent.append(peer)
        return sent

    # --- the equivocator ----------------------------------------------------------

    def _equivocate(self, node: SimNode, rng: random.Random) -> None:
        w = self.world
        if not node.up or node.ledger is None or node.core is None or not node.core.connected():
            w.engine.after(MINUTE, partial(self._equivocate, node, rng))  # needs a peer
            return
        lg = node.ledger
        node.run(node.core.flush())
        seq, _ = lg.storage.log.tip(node.name)
        members = audit.ids(lg, "members")
        rights = sorted(((lg.rights(m, "cash").get(node.name, 0), m) for m in members),
                        reverse=True)
        held, member = rights[0] if rights else (0, "")
        if not member:
            w.engine.after(MINUTE, partial(self._equivocate, node, rng))
            return

        def spend(ledger: Ledger, amount: int) -> dict[str, Any]:
            if held >= 200:  # the same rights spent twice
                return ledger.debit(ledger.owner, member, amount=amount)
            return ledger.topup(ledger.owner, member, amount)

        # Side B, on a copy of its store (its key files included).
        copy = w.root / f"{node.name}-fork-{w.engine.now}"
        shutil.copytree(node.path, copy, ignore=shutil.ignore_patterns("lock"))
        clone = Ledger.open(copy, synchronous="OFF", now_ms=node.now_ms, lock=False)
        try:
            side_b = spend(clone, held - 100 if held >= 200 else 20_000)
            batch_b = clone.batch(clone.storage.log.records_after({node.name: seq}))
            hash_b = clone.storage.log.hash_at(node.name, seq + 1) or b""
        finally:
            clone.close()
            shutil.rmtree(copy, ignore_errors=True)
        peers = node.core.connected()
        first = rng.sample(peers, max(1, len(peers) // 2))
        sent = self._inject(node, pack({"t": "recs", **batch_b.to_wire()}), first)
        # Side A, on its store: its sessions send it to every peer (behind B for those).
        try:
            side_a = spend(lg, held if held >= 200 else 10_000)
        except LedgerError as e:
            w.trace(w.engine.now, f"{node.name} byzantine fork side A refused: {e}")
            return
        node.run(node.core.flush())
        last = max(lg.storage.log.tip(node.name)[0], max(r.seq for r in batch_b.recs))
        hash_a = lg.storage.log.hash_at(node.name, seq + 1) or b""
        self.forks.append(Fork(node.name, seq + 1, last, {str(side_a["id"]), str(side_b["id"])},
                               (hash_a, hash_b), sorted(sent), w.engine.now))
        w.trace(w.engine.now, f"{node.name} byzantine fork at record {seq + 1}: "
                              f"{side_a['id']} to all, {side_b['id']} first to "
                              f"{','.join(sorted(sent))}")
        lg.apply_batch(batch_b)  # proves the fork in its own store: it stops writing
        node.run(node.core.flush())

    # --- the shop closing for good -------------------------------------------------------

    def _close(self, node: SimNode, c: Closing) -> None:
        w = self.world
        c.closed_at = w.engine.now
        w.trace(w.engine.now, f"{node.name} closing for good, hands over to {c.to}")
        self._hand_over(node, c)

    def _hand_over(self, node: SimNode, c: Closing) -> None:
        """Its goods shipped (`stock ship`), then its members' rights handed over."""
        w = self.world
        assert node.ledger is not None
        units = goods_held(node.ledger, node.name)
        if units:
            def shipped(outcome: Any, attempt: Any) -> None:
                if isinstance(outcome, dict):
                    for eid in outcome.get("stock_entries") or [outcome["id"]]:
                        w._ack(str(eid), node.name)
                w.trace(w.engine.now, f"{node.name} shipped {units} {GOODS} to {c.to}: "
                                      f"{outcome}")
                if node.up:
                    self._hand_over_rights(node, c)

            node.perform("stock.ship", lambda lg: lg.ship_stock(lg.owner, GOODS, units, c.to),
                         shipped)
            return
        self._hand_over_rights(node, c)

    def _hand_over_rights(self, node: SimNode, c: Closing) -> None:
        w = self.world

        def done(outcome: Any, attempt: Any) -> None:
            if isinstance(outcome, dict) and outcome["entries"]:
                # Acknowledged like any write: its transfers must reach every replica.
                assert node.ledger is not None
                for e in views.newest_entries(node.ledger, node.name, "transfer",
                                              limit=outcome["entries"]):
                    w._ack(str(e["id"]), node.name)
                c.handovers.append(outcome)
            w.trace(w.engine.now, f"{node.name} handover {outcome}")
            w.engine.after(CLOSING_LOOK, partial(self._look, node, c))

        node.perform("handover", lambda lg: lg.hand_over_rights(lg.owner, c.to), done)

    def _look(self, node: SimNode, c: Closing) -> None:
        """The owner looks: hand over what came in since, or switch off and revoke
        once every branch holds all the shop wrote and none sees it holding anything."""
        w = self.world
        if w.engine.now >= w.workload_end - HOUR:
            return  # not done by closing time: it stays a branch, and is checked as one
        head = w.nodes[0]
        if not node.up or node.attempts or not head.up:
            w.engine.after(CLOSING_LOOK, partial(self._look, node, c))
            return
        step = self._owner_sees(node)
        if step == "hand over":
            self._hand_over(node, c)
            return
        if step == "wait":
            w.engine.after(CLOSING_LOOK, partial(self._look, node, c))
            return
        c.retired_at = w.engine.now
        node.crash()  # switched off for good
        crl = w.ca.revoke(node.name, dt.datetime.fromtimestamp(
            (w.epoch_ms + w.engine.now // 1000) / 1000, dt.UTC).replace(microsecond=0))
        w.trace(w.engine.now, f"{node.name} switched off; {head.name} revokes it")
        self._revoke(c, revocations_rule(crl))

    def _revoke(self, c: Closing, rule: dict[str, str]) -> None:
        """Head office writes the revocation list; again a little later if it could not
        (down, or its write lost in a crash)."""
        w = self.world

        def revoked(outcome: Any, attempt: Any) -> None:
            w.op_done(0, "rule", outcome, attempt, debit=False)
            if isinstance(outcome, str):
                c.revoked_at = w.engine.now
            else:
                w.engine.after(CLOSING_LOOK, partial(self._revoke, c, rule))

        w.nodes[0].perform("rule", lambda lg: lg.set_rule(lg.owner, "revocations", rule),
                           revoked)

    def _owner_sees(self, node: SimNode) -> str:
        """"hand over" if the shop holds rights again; "retire" once every other branch
        holds all it wrote and none sees it holding anything (the owner phoning round:
        the simulator reads the replicas); else "wait"."""
        assert node.ledger is not None
        if views.rights_held_rows(node.ledger, node.name, 1) or goods_held(node.ledger,
                                                                            node.name):
            return "hand over"
        tip = node.ledger.positions().get(node.name, 0)
        for other in self.world.nodes:
            if other is node or other.name in self.world.retired:
                continue
            if other.name in self.stolen and self.stolen[other.name].stolen_at is not None:
                continue  # a stolen PC (role "revoked"): nobody asks it
            lg = other.ledger
            if (lg is None or lg.positions().get(node.name, 0) != tip
                    or views.rights_held_rows(lg, node.name, 1)
                    or goods_held(lg, node.name)):
                return "wait"
        return "retire"

    # --- the PC stolen and revoked ----------------------------------------------------

    def _steal(self, node: SimNode, s: Stolen) -> None:
        """Cut off from every other node; its tills go on selling (the thief's)."""
        w = self.world
        s.stolen_at = w.engine.now
        if w.config.revoked_live:
            # Not from head office: its only link, through which the others hear of it.
            head = w.nodes[0].name
            others = frozenset(n.name for n in w.nodes) - {node.name, head}
            me = frozenset({node.name})
            label = f"stolen {node.name}"
            s.cut = [Cut(me, others, label=label), Cut(others, me, label=label)]
            w.net.add_cuts(s.cut)
            s.armed = True
            w.trace(w.engine.now, f"{node.name} stolen: connected to {head} only, selling on")
            w.engine.after(LIVE_WAIT, partial(self._revoke_stolen, node, s))
            return
        s.cut = Cut.split({node.name}, [n.name for n in w.nodes], label=f"stolen {node.name}")
        w.net.add_cuts(s.cut)
        w.trace(w.engine.now, f"{node.name} stolen: cut off, selling on")
        w.engine.after(CLOSING_LOOK, partial(self._revoke_stolen, node, s))

    def _revoke_stolen(self, node: SimNode, s: Stolen) -> None:
        """The owner has head office revoke it once every honest replica holds the same
        length of its log (else a replica still taking its records as they come by
        another would end with more of it than the others: sim/README, "--closed")."""
        w = self.world
        if s.held is not None:
            return  # --revoked-live: revoked at a request of it already
        if w.engine.now >= w.workload_end - 2 * HOUR:
            s.armed = False
            w.trace(w.engine.now, f"{node.name} not revoked by closing time")
            return  # plugged in again at the heal, unrevoked: it stays a branch
        held = self._agreed(node)
        if held is None:
            w.engine.after(CLOSING_LOOK, partial(self._revoke_stolen, node, s))
            return
        self._revoke_at(node, s, held, "look")

    def _agreed(self, node: SimNode) -> int | None:
        """The length of its log every honest replica holds, if they agree (the owner
        phoning round: the simulator reads them); None if not, or one is down."""
        w = self.world
        others = [n for n in w.honest_nodes() if n.name not in w.retired]
        if any(not n.up or n.ledger is None for n in others):
            return None
        held = {n.ledger.positions().get(node.name, 0) for n in others if n.ledger}
        return held.pop() if len(held) == 1 else None

    def _revoke_at(self, node: SimNode, s: Stolen, held: int, on: str) -> None:
        w = self.world
        s.held = held
        s.armed = False
        s.revoked_on = on
        s.acked_at_revocation = self._acked(node.name)
        crl = w.ca.revoke(node.name, dt.datetime.fromtimestamp(
            (w.epoch_ms + w.engine.now // 1000) / 1000, dt.UTC).replace(microsecond=0))
        w.trace(w.engine.now, f"{w.nodes[0].name} revokes {node.name}, stolen, at record "
                              f"{s.held} of its log")
        self._revoke_written(s, revocations_rule(crl))

    def arriving(self, conn: Connection, to: str, frames: list[bytes]) -> None:
        """--revoked-live: frames of a stolen PC reach head office. If among them is a
        rights request head office could serve at once from its own rights, and every
        honest replica holds the same length of its log, head office writes the list
        now, before it reads them: the owner's write and the request in one turn of the
        node's loop (peer.node installs the list for its TLS layer at the next turn,
        `_rules_arrived`). The request then reaches Payments.grant_rights from a branch
        the store holds revoked, and the link is dropped after."""
        w = self.world
        head = w.nodes[0]
        if to != head.name or head.ledger is None:
            return
        s = self.stolen.get(conn.other(to))
        if s is None or not s.armed:
            return
        if not any(self._servable(head.ledger, s.node, f) for f in frames):
            return
        held = self._agreed(w.by_name[s.node])
        if held is not None:
            w.trace(w.engine.now, f"{s.node} asks {to} for rights as {to} revokes it")
            self._revoke_at(w.by_name[s.node], s, held, "request")

    @staticmethod
    def _servable(lg: Ledger, asker: str, frame: bytes) -> bool:
        """A rights request of `asker`'s own (not relayed) that this store would grant
        in full at once, were `asker` not revoked: holding it all, within the asker's
        budget, so its answer is given in the same turn (core._relay)."""
        if b"\xa4rreq" not in frame[:16]:  # cheap: most frames are records
            return False
        try:
            msg = msgpack.unpackb(frame, raw=False)
            member, purse, amount = msg["member"], msg["purse"], int(msg["amount"])
            if msg.get("fwd") or purse in GOODS_PURSES:
                return False
            have = lg.grantable(member, purse).get(lg.node, 0)
        except (LedgerError, KeyError, TypeError, ValueError):
            return False
        return have >= amount > 0 and lg.grants.allows(asker)

    def answered(self, node: SimNode, event: RightsAnswered) -> None:
        """An honest node answered a stolen PC's rights request: once its store holds
        the PC revoked, the answer must be "none" (Payments.grant_rights)."""
        s = self.stolen[event.node]
        if node.ledger is None or not self.world.honest(node.name) \
                or not node.ledger.retired(s.node):
            return
        if event.amount <= 0:
            s.requests_refused += 1
            return
        from sim.checks import Violation  # (sim.checks imports this module)

        self.world.fail(Violation("revoked", f"{node.name} granted {s.node}, which it holds "
                                             f"revoked, {event.amount} {event.purse} of "
                                             f"{event.member}", node.name))

    def _revoke_written(self, s: Stolen, rule: dict[str, str]) -> None:
        """Head office writes the list (as `chain revoke`); again later if it could not."""
        w = self.world

        def revoked(outcome: Any, attempt: Any) -> None:
            w.op_done(0, "rule", outcome, attempt, debit=False)
            if isinstance(outcome, str):
                s.revoked_at = w.engine.now
                w.engine.after(CLOSING_LOOK, partial(self._plug_in, s))
            else:
                w.engine.after(CLOSING_LOOK, partial(self._revoke_written, s, rule))

        w.nodes[0].perform("rule", lambda lg: lg.set_rule(lg.owner, "revocations", rule),
                           revoked)

    def _plug_in(self, s: Stolen) -> None:
        """The thief plugs the PC in again, `plug_after` once every honest replica has
        installed the list (at once if the workload is over): its sessions then offer
        every peer what it wrote meanwhile (the simulator has no TLS, which would
        refuse the handshake: the replicas' own check is what is left when a relay or
        a file carries its records)."""
        w = self.world
        others = [n for n in w.honest_nodes() if n.name not in w.retired]
        if any(n.ledger is None or not n.ledger.retired(s.node) for n in others):
            w.engine.after(CLOSING_LOOK, partial(self._plug_in, s))
            return
        if w.engine.now < w.workload_end:
            w.engine.after(s.plug_after, partial(self._plug_at, s))
        else:
            self._plug_at(s)

    def _plug_at(self, s: Stolen) -> None:
        w = self.world
        if s.plugged_at is not None:
            return
        others = [n for n in w.honest_nodes() if n.name not in w.retired]
        if any(n.ledger is None for n in others):
            # Not while a branch is down (the holiday's switch-off at 14:00): what it
            # gave the PC before would be missing from `credits_at_plug`, and the end
            # check would take it for a gift after the revocation.
            w.engine.after(MINUTE, partial(self._plug_at, s))
            return
        for n in others:
            if n.ledger is not None:
                s.credits_at_plug |= credits_to(n.ledger, s.node, writer=n.name)
        w.net.remove_cuts(s.cut)
        s.plugged_at = w.engine.now
        w.trace(w.engine.now, f"{s.node} plugged in again, revoked")
        if w.engine.now < w.workload_end - 20 * MINUTE:
            w.engine.after(10 * MINUTE, partial(self._thief_file, s))

    def _thief_file(self, s: Stolen) -> None:
        """Its links refused, the thief carries a sync file of the PC to a branch
        (peer.files, as the API's download and upload): sealed by a revoked signer, it
        must be refused whole there, nothing of it taken (crdtledger.seal)."""
        w = self.world
        thief = w.by_name[s.node]
        to = next((n for n in w.honest_nodes() if n.index != 0 and n.name not in w.retired
                   and n.up and n.ledger is not None), None)
        if to is None or not thief.up or thief.ledger is None:
            return
        data, info = export_bytes(thief.ledger, thief.operator("manager"), to.name)
        s.file = {"to": to.name, "records": info.get("records")}
        w.trace(w.engine.now, f"{s.node} (stolen) hands {to.name} a sync file of "
                              f"{info.get('records')} records")
        manager = to.operator("manager")

        def take(lg: Ledger) -> Any:
            held = lg.positions()
            try:
                outcome = import_bytes(lg, manager, data)
            except (RemoteProtocolError, LedgerError) as e:
                outcome = {"refused": type(e).__name__}
            if lg.positions() != held:
                outcome["changed_positions"] = True
            return outcome

        def done(outcome: Any, attempt: Any) -> None:
            if isinstance(outcome, dict):
                s.file.update(outcome)
                if "refused" not in outcome or outcome.get("changed_positions"):
                    from sim.checks import Violation  # (sim.checks imports this module)

                    w.fail(Violation("revoked", f"{to.name} took a sync file sealed by "
                                                f"{s.node}, revoked: {outcome}", to.name))

        to.perform("sync.import", take, done)

    def healed(self) -> None:
        """The run's end heals every cut: a stolen PC revoked stays off the network
        until every honest replica knows (`_plug_in`, still scheduled), then is plugged
        in at once."""
        for s in self.stolen.values():
            if s.held is not None and s.plugged_at is None:
                self.world.net.add_cuts(s.cut)
                if s.revoked_at is not None:
                    self._plug_in(s)

    def _beyond(self, s: Stolen) -> int:
        lg = self.world.by_name[s.node].ledger
        if s.held is None or lg is None:
            return 0
        return lg.positions().get(s.node, 0) - s.held

    def lost_to_revocation(self, missing: set[str]) -> set[str]:
        """Of the acknowledged entries missing at the end, those a revoked branch wrote:
        beyond the length of its log the chain held when it was revoked."""
        return {e for e in missing if self.world.acked_entries.get(e) in self.stolen
                and self.stolen[self.world.acked_entries[e]].held is not None}

    # --- the restored branch ----------------------------------------------------------

    def _acked(self, name: str) -> set[str]:
        return {e for e, n in self.world.acked_entries.items() if n == name}

    def _backup(self, node: SimNode) -> None:
        w = self.world
        if not node.up:
            w.engine.after(MINUTE, partial(self._backup, node))
            return
        target = w.root / "backups" / node.name
        path = write_backup(node.path, target)
        self.restores[node.name] = Restored(node.name, path, w.engine.now,
                                            self._acked(node.name))
        w.trace(w.engine.now, f"{node.name} byzantine backup taken")

    def _die(self, node: SimNode, down: int) -> None:
        w = self.world
        r = self.restores.get(node.name)
        if r is None:
            return
        if node.up:
            node.crash()
        w.node_down(node)
        w.trace(w.engine.now, f"{node.name} byzantine dies; restored from its backup in "
                              f"{down / SECOND:.0f}s")
        w.engine.after(down, partial(self._restore, node, r))

    def _restore(self, node: SimNode, r: Restored) -> None:
        w = self.world
        if node.up:  # a scheduled crash's end restarted it meanwhile
            node.crash()
        # The PC's disk is lost (a restore over the node's own newer store is refused:
        # it would put aside what the branch wrote since the backup).
        for name in (DB_FILE, f"{DB_FILE}-wal", f"{DB_FILE}-shm"):
            (node.path / name).unlink(missing_ok=True)
        restore(r.backup, node.path, lock=False)
        r.restored_at = w.engine.now
        r.window = self._acked(node.name) - r.acked_at_backup
        w.trace(w.engine.now, f"{node.name} byzantine restored from the backup of "
                              f"{r.backup_at / SECOND:.0f}s ({len(r.window)} entries "
                              "acknowledged since)")
        w.node_restarted(node, check=False)

    # --- the report --------------------------------------------------------------------

    def lost_to_restore(self, missing: set[str]) -> set[str]:
        """Of the acknowledged entries missing at the end, those a restore may lose:
        written by the restored node after its backup, before its restore (and never
        sent to a peer)."""
        out: set[str] = set()
        for r in self.restores.values():
            out |= missing & r.window
        return out

    def fork_entries(self) -> set[str]:
        out: set[str] = set()
        for f in self.forks:
            out |= f.entries
        return out

    def summary(self) -> dict[str, Any]:
        return {
            "nodes": dict(sorted(self.roles.items())),
            "forged": [{"node": f.node, "by": f.by, "seq": f.seq, "kind": f.kind,
                        "breaks": BREAKS[f.kind],
                        "doc": f.doc, "at_s": f.at / SECOND} for f in self.forged],
            "forks": [{"node": f.node, "seq": f.seq, "entries": sorted(f.entries),
                       "side_b_first_to": f.sent_to, "at_s": f.at / SECOND}
                      for f in self.forks],
            "closings": [{"node": c.node, "to": c.to,
                          "closed_at_s": None if c.closed_at is None else c.closed_at / SECOND,
                          "handovers": c.handovers,
                          "retired_at_s": None if c.retired_at is None
                          else c.retired_at / SECOND,
                          "revoked_at_s": None if c.revoked_at is None
                          else c.revoked_at / SECOND}
                         for c in self.closings.values()],
            "restores": [{"node": r.node, "backup_at_s": r.backup_at / SECOND,
                          "restored_at_s": None if r.restored_at is None
                          else r.restored_at / SECOND,
                          "acknowledged_since_backup": len(r.window)}
                         for r in self.restores.values()],
            "revoked": [{"node": s.node,
                         "stolen_at_s": None if s.stolen_at is None else s.stolen_at / SECOND,
                         "held": s.held,
                         "revoked_at_s": None if s.revoked_at is None
                         else s.revoked_at / SECOND,
                         "plugged_at_s": None if s.plugged_at is None
                         else s.plugged_at / SECOND,
                         "acknowledged_since": len(self._acked(s.node) - s.acked_at_revocation)
                         if s.held is not None else 0,
                         # Records of its log beyond `held`, refused at every replica.
                         "beyond": self._beyond(s),
                         "handshakes_refused": self.world.handshakes_refused.get(s.node, 0),
                         "revoked_on": s.revoked_on,
                         "links_dropped": self.world.links_dropped.get(s.node, 0),
                         "requests_refused": s.requests_refused,
                         "file": s.file}
                        for s in self.stolen.values()],
        }
