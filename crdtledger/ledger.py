"""The ledger of one node: a thin facade over its concepts.

`Ledger` is what callers hold (the node, the simulator, the counter app, the
command line, tests). Its operations live by concept, each a mixin of the one write
path (`commit.LedgerBase._commit`):

- `replica`: applying a peer's or a file's updates, gap checks, what a peer lacks;
- `auth`: operators, roles, permissions, approvals, password and PIN hashes;
- `rules`: rule versions and their shape checks;
- `members`, `cards`: profiles and cards;
- `payments`: top-ups, debits, refunds, rights transfers, points, packages,
  corrections, and the reads of a member's purses;
- `merge`: duplicate members folded into one, and the sweep of their rights;
- `goods`: the goods catalogue, stock at each branch, goods sales and gifts;
- `coupons`: coupons issued to members, each redeemed at most once chain-wide;
- `membership`: referral (two approvals), check-in activities, member exit and return.

Mixins rather than delegating objects: a debit is benchmarked, and a method found
through the class's MRO costs nothing per call, where a forwarding call would. And
`Ledger` keeps every attribute callers and tests use, private ones included.

One thread owns a Ledger (pycrdt objects are bound to their thread).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from crdtledger import backups, closing, erasure, outbox, views
from crdtledger.commit import CLOCK_CONFIRMED, SKEW_EVENTS_KEPT, Write
from crdtledger.errors import InvalidInput
from crdtledger.goods import Goods
from crdtledger.hlc import check_node_id
from crdtledger.inputs import MAX_TEXT
from crdtledger.members import PHONE, PREF_KEYS
from crdtledger.membership import Membership
from crdtledger.model import owner_of
from crdtledger.replica import Replica
from crdtledger.storage import Storage


class Ledger(Membership, Goods, Replica):
    """One node's ledger: members, cards and purses, their operations and views."""

    # --- lifecycle ----------------------------------------------------------

    @classmethod
    def create(cls, data_dir: Path | str, node: str, chain: str = "default",
               timezone: str = "Asia/Shanghai") -> None:
        check_node_id(node)
        if not re.match(r"^[A-Za-z0-9._-]{1,64}\Z", chain):
            raise InvalidInput(f"chain id {chain!r} must be 1-64 letters, digits, . _ -")
        try:
            Storage.create(Path(data_dir), node, chain, timezone)
        except (KeyError, ValueError) as e:  # ZoneInfoNotFoundError is a KeyError
            raise InvalidInput(f"unknown time zone {timezone!r}") from e

    @classmethod
    def open(cls, data_dir: Path | str, *, synchronous: str = "FULL",
             now_ms: Callable[[], int] | None = None, lock: bool = True) -> Ledger:
        ledger = cls(Storage(Path(data_dir), synchronous=synchronous, lock=lock), now_ms)
        ledger.refresh_revocations()
        return ledger

    def close(self) -> None:
        self.storage.close(self.clock.last)

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- views that take the whole ledger -------------------------------------

    def member(self, member: str) -> dict[str, Any]:
        return views.member(self, member)

    def level(self, member: str) -> dict[str, Any]:
        return views.level(self, member)

    # --- housekeeping -------------------------------------------------------

    def housekeeping(self) -> list[dict[str, Any]]:
        """What this node owes the chain on a schedule, without a till asking: it
        sweeps the rights it holds of merged members to their survivors
        (crdtledger.merge), then writes off the expired points it owes
        (views.expired_points_owed: lots earned here, or whose earner holds no rights
        of the member any more; not whatever expired lot its rights could pay for,
        which let a liar's lot be paid from an honest branch's). The node core
        runs it a minute after start and once a day (core.HOUSEKEEPING_S); returns the entries
        written."""
        # First it closes the month due and signs the latest closing it can
        # (crdtledger.closing), and removes what a restore put aside a month ago
        # (crdtledger.backups.drop_kept_aside). Before the sweep, this node's records into members
        # erased lately are redacted (crdtledger.erasure); after the write-offs come
        # the referral rewards this branch owes (approved at other branches) and the
        # surplus check-ins it wrote while cut off (crdtledger.membership).
        return [e for step in self.housekeeping_steps() for e in step]

    def housekeeping_steps(self, budget: int | None = None, timed: bool = True
                           ) -> Iterator[list[dict[str, Any]]]:
        """`housekeeping` in steps, each writing off the expired points of at most
        `budget` members (all when None) and yielding the entries written: the node's
        loop takes one per turn (core.HOUSEKEEPING_STEP). The first pass on a store of
        two years wrote thousands of durable write-offs in one turn, 42 s in which the
        node answered nobody. Each member's write-off is worked out when its turn
        comes, so what happened meanwhile (a redemption wrote it off) counts.

        `timed` False leaves out what this PC's clock alone must not decide, since it
        cannot be undone: the month-end cut (a clock a year ahead cut eleven months
        early, and the branch then booked every sale on the first day after them) and
        the write-off of expired points (a member's valid points written off for
        good). The node core passes False until the peers have confirmed the clock
        (NodeCore._clock_confirmed)."""
        self.erasure_seen = False
        if timed:
            closing.close_due_month(self)
            backups.drop_kept_aside(self.storage.dir, self.clock.wall())
        closing.sign_closing(self)
        # Erased members' notices leave the outbox at the erasure (crdtledger.erasure);
        # this takes those a store kept from before that, notifier or not.
        outbox.forget_erased(self)
        yield [*erasure.redact_erased(self), *self.sweep_merged()]
        due = (views.members_with_expired_points(self, self.node, self.today()) if timed
               else [])
        step = budget or len(due) or 1
        for i in range(0, len(due), step):
            yield self.write_off_expired(due[i:i + step])
        yield [*self.give_back_write_offs(), *self.grant_due_referrals(),
               *self.settle_referral_rewards(), *self.reconcile_checkins()]

    def confirm_clock(self, operator: str) -> dict[str, Any]:
        """本机时钟已核对: an operator allowed to adjust (who may write off expired
        points by hand) looked at this PC's clock and says it is right. With no other
        branch connected to judge it, the node's daily pass then closes the month due
        and writes off expired points by it, today only (core.NodeCore._clock_confirmed):
        a branch that syncs by files alone never met a peer, and never closed a month,
        so the chain's books stayed open at every branch. What is judged by the day
        on a clock reading earlier than it did goes on by it too, today
        (`check_clock_for`). Kept in this store only: it is this PC's clock."""
        self.authorise(operator, "adjust")
        day = self.today()
        with self.storage.transaction():
            self.storage.set_meta(CLOCK_CONFIRMED, json.dumps({"day": day, "op": operator}))
        return {"day": day, "at": self.clock.wall()}


# Besides Ledger, names peer/, reference_app/, benchmarks/, tests/ and
# crdtledger.operations import from here, from before the split.
__all__ = ["MAX_TEXT", "PHONE", "PREF_KEYS", "SKEW_EVENTS_KEPT", "Ledger", "Write", "owner_of"]
