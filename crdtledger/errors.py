"""Typed errors. Each carries a message a cashier (or an operator at a shell) can act on.

Two families, as in h11: `LedgerError` for refusals of a request made here (bad
amount, not enough money, no permission), and `RemoteProtocolError` for a peer or a
file that misbehaves. Neither ever leaves the store half-changed.
"""

from __future__ import annotations

from collections.abc import Mapping


class LedgerError(Exception):
    """A request was refused; nothing was changed."""

    code = "refused"


class InvalidAmount(LedgerError):
    code = "invalid_amount"


class InvalidInput(LedgerError):
    code = "invalid_input"


class NotFound(LedgerError):
    code = "not_found"


class InsufficientFunds(LedgerError):
    code = "insufficient_funds"

    def __init__(self, purse: str, balance: int, wanted: int, note: str = "") -> None:
        from crdtledger.money import format_purse

        self.purse = purse
        self.balance = balance
        self.wanted = wanted
        super().__init__(
            f"insufficient {purse}: balance {format_purse(purse, balance)}, "
            f"asked for {format_purse(purse, wanted)}{note}"
        )


class RightsElsewhere(LedgerError):
    """This node holds too little of a purse; the rest sits at other branches.

    `holders` maps each other branch to what it holds, richest first; `branch` and
    `amount` name the richest one, which is where a transfer should come from.
    """

    code = "rights_elsewhere"

    def __init__(self, purse: str, shortfall: int, here: int, holders: Mapping[str, int],
                 member: str | None = None) -> None:
        from crdtledger.money import format_purse

        self.member = member  # so a node can ask the holders for this member's rights
        self.purse = purse
        self.shortfall = shortfall
        self.here = here
        self.holders = dict(sorted(holders.items(), key=lambda kv: (-kv[1], kv[0])))
        self.branch = next(iter(self.holders), None)
        self.amount = self.holders.get(self.branch, 0) if self.branch else 0
        where = ", ".join(f"{n} ({format_purse(purse, a)})" for n, a in self.holders.items())
        super().__init__(
            f"{format_purse(purse, shortfall)} of this {purse} balance is held at "
            f"{where or 'no reachable branch'}; this branch holds {format_purse(purse, here)}"
        )


class RefundElsewhere(RightsElsewhere):
    """A sale is refunded only at the branch that made it (its refund rights stay
    there): `branch`, where `left` of it is still to refund, in `unit` ("fen", "uses"
    of a package's debit, "units" of a goods sale). A RightsElsewhere of purse "refund"
    for what reads it so (the counter, the API's details); no branch is asked for
    rights (no member is named), and the sentence says the amount as money, not as
    a count: "100 of this refund balance is held at SH01 (1833)" read as neither."""

    def __init__(self, branch: str, share: int, left: int, unit: str = "fen",
                 made_at: str | None = None) -> None:
        from crdtledger.money import format_yuan

        super().__init__("refund", share, 0, {branch: left})
        rest = format_yuan(left) if unit == "fen" else f"{left} {unit}"
        self.args = (f"this sale was made at {branch} and is refunded only there, at the "
                     f"branch that made it ({rest} of it left to refund); this branch "
                     "cannot refund it",)
        if made_at is not None:  # a closed shop's: `branch` is the one it handed over to
            self.args = (f"this sale was made at {made_at}, which handed its members' "
                         f"rights over to {branch}: it is refunded only there ({rest} of "
                         "it left to refund); this branch cannot refund it",)


class CardLost(LedgerError):
    code = "card_lost"


class CardInactive(LedgerError):
    code = "card_inactive"


class WrongPin(LedgerError):
    code = "wrong_pin"


class PermissionDenied(LedgerError):
    code = "permission_denied"


class ApprovalRequired(PermissionDenied):
    code = "approval_required"


class ClockSkew(LedgerError):
    code = "clock_skew"

    def __init__(self, remote_ms: int, local_ms: int) -> None:
        self.skew_ms = remote_ms - local_ms
        super().__init__(f"remote clock is {self.skew_ms / 1000:.1f} s ahead of this node")


class NotCaughtUp(LedgerError):
    """This node may not write now: restored from a backup and not yet caught up with
    its own log from a peer, or caught forking its log."""

    code = "not_caught_up"


class StoreLocked(LedgerError):
    code = "store_locked"


class StoreError(LedgerError):
    """The data directory is missing, of another format or otherwise unusable."""

    code = "store_error"


class StoreDamaged(StoreError):
    """A store that no longer reads as it was written; `found` says what is wrong."""

    def __init__(self, text: str, found: str = "") -> None:
        super().__init__(text)
        self.found = found


class RemoteProtocolError(Exception):
    """A peer or a sync file sent something malformed; the connection or file is refused."""

    code = "remote_protocol_error"


class CorruptSyncFile(RemoteProtocolError):
    code = "corrupt_sync_file"


class ForeignChain(RemoteProtocolError):
    code = "foreign_chain"


class LocalProtocolError(Exception):
    """Misuse of the sync session by the code driving it (a bug here, not at the peer)."""
