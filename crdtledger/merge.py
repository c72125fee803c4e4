"""Duplicate members folded into one (会员合并).

During a partition the same person can be registered at two branches (the phone
check at registration sees only what has arrived). The owner lists such members
(`views.duplicates`: the same phone or ID card number) and merges one into another.

The merge is a fact on the merged member's profile (`merged_into` = the survivor),
written like any profile field, who and when in its audit notes (commit.note_edit). Everything reads
through `views.canonical`, which follows those pointers: the same merge made at two
branches writes the same value, and two opposite merges made at once form a cycle
whose smallest id survives, on every replica alike.

Money cannot follow by itself: only a branch may lower its own rights (escrow), so
the merging branch cannot move what another branch holds for the merged member.
Each branch therefore *sweeps* its own rights of merged members to their survivor,
every purse (cash, bonus, points, pkg:ID), as a pair of `merge` entries in one
commit: "out" (member = merged, its rights here lowered, `to` = survivor) and "in"
(member = survivor, the same rights raised here, `ref` = the out entry). The pair
nets to zero at the sweeping branch, so no money appears or vanishes, and the "in"
entry only raises rights, so it is always funded. A branch sweeps right after it
merges, at every housekeeping pass (`Ledger.housekeeping`), and in the commit of an
operation that acts for a survivor (`_acting`), before its plan reads the rights: a
debit spends what this branch held for either member, and a refused one writes no
sweep. Until then reads add the merged members' unswept rights to the survivor's
(`views.member_group`), so the member sees his whole money at once.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, cast

from pycrdt import Map

from crdtledger import views
from crdtledger.cards import Cards
from crdtledger.commit import Write, note_edit
from crdtledger.errors import InvalidInput
from crdtledger.model import ID, member_doc
from crdtledger.money import pieces

if TYPE_CHECKING:
    from crdtledger.ledger import Ledger

# model.normalise_entry refuses an entry with more deltas: a member with many
# packages is swept in several pairs (all in the one commit).
MAX_DELTAS = 8


class Merges(Cards):
    """Member merge, and the sweep of merged members' rights held here."""

    def merge_member(self, operator: str, member: str, into: str) -> dict[str, Any]:
        """Fold `member` into `into` (or into the member `into` was merged into): its
        cards, purses, packages, points and history then act for the survivor. This
        branch sweeps its own rights of it at once; the others when they learn of it."""
        self.authorise(operator, "member.merge")
        for m in (member, into):
            if not isinstance(m, str) or not ID.match(m):
                raise InvalidInput(f"{str(m)[:40]!r} is not a member id")
        if member == into:
            raise InvalidInput("a member cannot be merged into itself")
        conn = self.storage.conn
        self._live_member(member)  # NotFound for an unknown id, refused if deleted
        self._live_member(into)
        head = views.canonical(conn, member)
        if head != member:
            raise InvalidInput(f"member {member} is already merged into {head}")
        survivor = views.canonical(conn, into)
        if survivor == member:
            raise InvalidInput(f"member {into} is merged into {member}: merging {member} "
                               f"into it would make a cycle")
        self._live_member(survivor)
        folded = views.member_group(conn, member)  # with whoever was merged into it
        change = self.clock.mint()

        def mutate(root: Map[Any]) -> None:
            m = root[member]
            m["merged_into"] = survivor
            note_edit(m, change, operator, ["merged_into"])  # who and when: the trail

        self._write(Write(member_doc(member), "members", member, mutate))
        moved = self._sweep(folded, operator)
        return {"member": member, "into": survivor, "asked_into": into,
                "group": views.member_group(conn, survivor), "entries": moved}

    def survivor_of(self, member: str) -> str:
        """The member `member` acts as (itself unless merged): views.canonical, read
        only for a member whose `merged_into` is set (asked of every operation that
        names a member: operations.run)."""
        self._merges_current()
        if self._merged_ids is None:
            self._merged_ids = views.merged_ids(self.storage.conn)
        if member not in self._merged_ids:
            return member
        return views.canonical(self.storage.conn, member)

    def _merges_current(self) -> None:
        """Drop what was read of the merges (`_merge_targets`, `_merged_ids`) if a
        transaction failed since (it may have been read inside it) or, without the
        store's lock, another connection committed (a merge the node made: `member
        show` answered for the duplicate)."""
        mark = self.storage.read_mark()
        if self._merges_read != mark:
            self._merges_read = mark
            self._merge_targets = self._merged_ids = None

    def sweep_merged(self) -> list[dict[str, Any]]:
        """Housekeeping: move every merged member's rights this branch holds to the
        survivor; returns the entries written (none when nothing is left here)."""
        return self._sweep(views.merged_members(cast("Ledger", self)))

    def _held(self, member: str) -> list[tuple[str, int]]:
        return [(str(p), int(a)) for p, a in self.storage.conn.execute(
            "SELECT purse, amount FROM rights WHERE member = ? AND node = ? AND amount > 0 "
            "ORDER BY purse", (member, self.node))]

    def _sweep(self, members: Iterable[str], operator: str | None = None
               ) -> list[dict[str, Any]]:
        """This branch's rights of each merged member in `members`, moved to its
        survivor in pairs of `merge` entries, all in one commit."""
        members = list(members)
        owing = self._owing(members)
        if not owing:
            return []
        # Booked after the members and what it moves, as a refund after its sale: a
        # top-up made while this PC ran ahead was swept, its clock put right, by a
        # pair dated before it, and the month's closing gave the merged member minus
        # that cash and the survivor that cash, neither of which they held then.
        with self._booked_after(*self._moves(owing)):
            return self._commit(lambda: self._sweep_writes(self._owing(members), operator))

    def _moves(self, owing: list[tuple[str, str, list[tuple[str, int]]]]) -> list[str]:
        """What a sweep of `owing` names: each merged member, its survivor, and the
        latest entry of the merged member this branch wrote (what its rights here
        came from)."""
        return [n for m, head, _held in owing for n in (m, head, *self._latest_here(m))]

    def _latest_here(self, member: str) -> list[str]:
        """The id of the latest entry of `member` this branch wrote (what its rights
        here came from), if any: what moves them all is booked after it."""
        row = self.storage.conn.execute(
            "SELECT id FROM entries WHERE member = ? AND node = ? ORDER BY id DESC LIMIT 1",
            (member, self.node)).fetchone()
        return [] if row is None else [str(row[0])]

    def _owing(self, members: Iterable[str]) -> list[tuple[str, str, list[tuple[str, int]]]]:
        """(member, its survivor, the rights this branch holds of it) of each merged
        member of `members` it holds any for: what a sweep moves (no id minted)."""
        conn = self.storage.conn
        memo: dict[str, str] = {}
        return [(m, head, held) for m in members
                if (head := views.canonical(conn, m, memo)) != m and (held := self._held(m))]

    def _sweep_writes(self, owing: list[tuple[str, str, list[tuple[str, int]]]],
                      operator: str | None = None
                      ) -> tuple[list[Write], list[dict[str, Any]]]:
        """The writes of a sweep of what `_owing` says, and their entries."""
        op = operator or f"merge@{self.node}"
        writes: list[Write] = []
        done: list[dict[str, Any]] = []
        for m, head, held in owing:
            for chunk in _chunks(held):
                # `amount`: the cash (stored value paid in) moved, as a transfer's.
                cash = sum(a for p, a in chunk if p == "cash")
                while True:
                    out = self._entry("merge", m, amount=cash, to=head, op=op,
                                      deltas=[(p, self.node, -a) for p, a in chunk])
                    into = self._entry("merge", head, amount=cash, ref=out["id"], op=op,
                                       deltas=[(p, self.node, a) for p, a in chunk])
                    # One record, judged whole (writerules `merge-paired`): a pair
                    # minted across a month's turn is minted again, both after it.
                    pair = self._together(out, into)
                    if pair[0].doc == pair[1].doc:
                        break
                writes += pair
                done += [out, into]
        return writes, done

    def _survivor(self, member: str) -> list[str]:
        """The group of the member an operation on `member` acts for, survivor first
        (views.member_group), with this branch's rights of the members merged into it
        owed to it (`_owe_sweep`): its own rights here are then all the group holds
        here, once the operation's transaction has begun."""
        group = views.member_group(self.storage.conn, member)
        self._owe_sweep(group[1:])
        return group

    def _owe_sweep(self, members: list[str]) -> None:
        """Sweep `members` in the next commit's transaction, before its plan reads
        the rights (commit._commit): an operation refused after this writes nothing.
        The entries are made now, so their ids come before the operation's own (a
        settlement replay in id order then moves the lots before the sale takes them)."""
        owing = self._owing(members)
        writes = self._sweep_writes(owing)[0]
        self._owed = (members, writes, owing, self.closed_through) if writes else None

    def _owed_writes(self) -> Sequence[Write]:
        """The sweep an operation owes (`_owe_sweep`), inside its transaction: as made
        if nothing moved those rights since (and no month closed), else made again."""
        owed, self._owed = self._owed, None
        if owed is None:
            return ()
        members, writes, owing, closed = owed
        now = self._owing(members)
        return writes if closed == self.closed_through and now == owing else (
            self._sweep_writes(now)[0])

    def _acting(self, member: str) -> tuple[str, tuple[dict[str, Any], tuple[int, int]]]:
        """The survivor `member` acts as, its profile (refused if deleted) and its
        group's cumulative (spent, topped), which its level is reached on; this
        branch's rights of the members merged into it are owed to it (`_owe_sweep`).
        On a debit's path: for a member neither merged nor merged into, one indexed
        read beyond the profile's."""
        conn = self.storage.conn
        profile, totals = self._live_member(member)
        if "merged_into" in profile:  # rare: read the survivor's instead
            member = views.canonical(conn, member)
            profile, totals = self._live_member(member)
        group = self._folded(member)
        if len(group) > 1:
            self._owe_sweep(group[1:])
            totals = views.group_totals(conn, group)
        return member, (profile, totals)

    def _folded(self, member: str) -> list[str]:
        """views.folded_into(member), asking the store only for a member someone was
        merged into: the debit's path, for the members (nearly all) nobody was."""
        self._merges_current()
        if self._merge_targets is None:
            self._merge_targets = views.merge_targets(self.storage.conn)
        if member not in self._merge_targets:
            return [member]
        return views.folded_into(self.storage.conn, member)


def _chunks(held: list[tuple[str, int]]) -> list[list[tuple[str, int]]]:
    """A sweep's (purse, amount) rows as the deltas of merge pairs: at most MAX_DELTAS
    each, one per purse (so no delta nor `amount` above MAX_AMOUNT: a row a liar
    raised beyond it moves in pieces, money.pieces)."""
    out: list[list[tuple[str, int]]] = []
    chunk: list[tuple[str, int]] = []
    for purse, amount in held:
        for n in pieces(amount):
            if len(chunk) == MAX_DELTAS or any(p == purse for p, _ in chunk):
                out.append(chunk)
                chunk = []
            chunk.append((purse, n))
    if chunk:
        out.append(chunk)
    return out
