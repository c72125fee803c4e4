"""Replication: taking a peer's (or a sync file's) signed log records, and what a
peer lacks.

Records are verified (crdtledger.log: hash chains up to a signed head), judged
(crdtledger.writerules) and applied in one transaction. Remote updates take the same
projection as local writes, so a replica cannot derive different views from the
same documents.
"""

from __future__ import annotations

import base64
import gc
import hashlib
import json
import sqlite3
from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from itertools import pairwise
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, TypeVar, cast

import msgpack
from pycrdt import get_update

from crdtledger import erasure, lots, views
from crdtledger.commit import LedgerBase
from crdtledger.erasure import Claim, claims_in
from crdtledger.errors import ClockSkew, NotCaughtUp, RemoteProtocolError
from crdtledger.hlc import MAX_CLOCK_SKEW_MS, decode, id_floor, matched_id_time_ms
from crdtledger.lib0 import covered, decode_state_vector
from crdtledger.log import (
    APPLIED,
    CUT_DOC,
    FORK_MARK,
    HELD,
    MARK_DOCS,
    REFUSED,
    WAITING,
    Batch,
    Head,
    Record,
    head_message,
    mark_of,
    record_hash,
)
from crdtledger.model import (
    HANDOVER_REASON,
    ID,
    ZONE_SPAN,
    entry_doc,
    erased,
    ledger_doc,
    possible_ledger_docs,
)
from crdtledger.money import format_yuan
from crdtledger.projection import entry_change, project_deferred, project_entries, record_change
from crdtledger.redaction import NotRedactable, carries_nothing, needs
from crdtledger.storage import LoadedDoc
from crdtledger.trust import RevokedSigner, UntrustedSigner
from crdtledger.writerules import (
    GOVERNANCE_DOCS,
    InOrder,
    RuleBroken,
    check_change,
    check_header,
    check_ids_after_cut,
    check_ids_after_enrolment,
    check_mark,
    client_id_for,
    epoch_of,
    owns_client,
    writers,
)

if TYPE_CHECKING:
    from crdtledger.ledger import Ledger

_T = TypeVar("_T")
# Records hashed per step of a long batch's verification (Replica.verify_steps): about
# 0.25 s here, as long as applying one slice of it (sync.APPLY_SLICE).
VERIFY_STEP = 40_000
# Records whose listeners are told per call of a sliced apply (apply_verified with a
# limit): a few µs each (the relays, the core's booking check, the node's flush).
NOTIFY_STEP = 50_000


class Replica(LedgerBase):
    """Applying remote updates, all or nothing, and answering what a peer lacks."""

    # How far our own log was read for a record written on another PC, and the first
    # found (_written_elsewhere): a restore that waits is asked again at every frame.
    _own_scanned: tuple[int, int | None] = (0, None)

    def _project(self, ld: LoadedDoc, change: Any,
                 pos: dict[str, tuple[int, bool]] | None = None) -> None:
        """`pos`: each new entry's record's position in its writer's log, and whether
        its funding waits for the transaction's end (_apply_run)."""
        conn, day_of = self.storage.conn, self.storage.day_of
        fresh: list[tuple[str, Any]] = []  # entries new to the document
        projected: list[dict[str, Any]] = []
        # Records (members, cards, rules, ...) set, removed or edited inside: each
        # projected once from the document as it now stands, however many of the
        # batch's updates touched it (a catch-up brings a member and then each of
        # its edits).
        records: dict[tuple[str, str], bool] = {}
        for root, key, old, new in change.added:
            if root == "entries":
                if old is None:
                    fresh.append((key, new))
                    continue
                # Rewritten (only a misbehaving peer does that): undone and redone.
                at = pos.get(key) if pos else None
                entry = entry_change(conn, ld.name, key, old, new, day_of,
                                     seq=at[0] if at else None)
                if entry is not None:
                    projected.append(entry)
            else:
                records[(root, key)] = True  # removed ones too: quarantined, as before
        # Each fresh entry's month was checked with the record that carried it
        # (_apply_run): not again here.
        fresh_done = project_entries(conn, ld.name, fresh, day_of, pos)
        self._fresh_entries += fresh_done
        projected += fresh_done
        self.redactions_due += (e for e in projected if e["kind"] == "redaction")
        for root in change.unsure:  # LoadedDoc.watching: Yrs could not say which keys
            if root == "entries":
                # Entries are written once: only a rewrite (a misbehaving peer) gets
                # here, and which entries are new cannot be told from the document.
                raise RemoteProtocolError(f"{ld.name}: a ledger entry rewritten")
            keys = ld.roots[root].keys()  # pycrdt types Map.__iter__ as an Iterable
            change.touched.update((root, str(key)) for key in keys)
        self._observe_clocks(projected)
        for rk in change.touched:
            records.setdefault(rk, False)  # an edit inside: projected only if still there
        if not records:
            return
        values = ld.plain_values(list(records))
        roots: set[str] = set()
        for (root, key), removed_too in records.items():
            value = values.get((root, key))
            if value is not None or removed_too:
                record_change(conn, ld.name, root, key, value, day_of)
                roots.add(root)
                if root == "members" and isinstance(value, dict) and erased(value):
                    self.erased_now.add(ld.name)  # compacted after the batch, however old
        if "members" in roots:
            self._merge_targets = self._merged_ids = None
        if "rules" in roots:
            self._rules = None

    def _observe_clocks(self, entries: list[dict[str, Any]]) -> None:
        """Move our clock past the remote entries just projected: once, to the latest
        of them, plus once for each stamped too far ahead, which is refused and kept
        (the latest few, without the traceback, which would keep this apply's frames
        and updates alive for as long as a peer's clock stays wrong)."""
        limit = self.clock.wall() + MAX_CLOCK_SKEW_MS
        # A projected entry's id is valid (model.ID): 13 base32 digits of its clock,
        # fixed width, which sort as the clocks do. So ids within the limit are told,
        # and the latest found, by comparing strings: a catch-up decodes one id, not
        # every one (wall_ms(ts) <= limit is ts < id_floor(limit + 1)'s clock).
        within = id_floor(limit + 1)
        latest = ""
        for e in entries:
            stamp = e["id"].split(".", 1)[0]
            if e["node"] == self.node:
                # Our own, come back: a node restored from a backup gets back what it
                # wrote after the backup, and must never mint those ids again,
                # however far ahead its clock ran then (hlc: eras).
                self.clock.minted(decode(stamp))
                continue
            if stamp < within:
                if stamp > latest:
                    latest = stamp
                continue
            try:
                self.clock.observe(decode(stamp))
            except ClockSkew as err:
                self.skew_events.append(err.with_traceback(None))
        if latest and (ts := decode(latest)):
            self.clock.observe(ts)

    # --- replication --------------------------------------------------------

    def state_vectors(self) -> dict[str, bytes]:
        """Every document's pycrdt state vector: what convergence checks compare."""
        return self.storage.state_vectors()

    def positions(self) -> dict[str, int]:
        """How far this replica holds each node's log (what a peer or file lacks is
        told by these)."""
        return self.storage.log.positions()

    def log_view(self) -> Mapping[str, tuple[int, bytes]]:
        """Each node's log as held here: (seq, first 8 bytes of its hash). Two
        replicas at one position with different hashes hold a fork between them.

        The same object while the logs stay as they are (both sides of every
        anti-entropy round ask for it, and a session's peer view is this one when
        the digests agree, so what was measured of it is not measured again), and
        read-only, since it is shared."""
        return self._logs()[1]

    def states_digest(self) -> bytes:
        """A digest of log_view: what a hello carries, so that a peer asks for the
        view only when it differs."""
        return self._logs()[2]

    def _logs(self) -> tuple[int, Mapping[str, tuple[int, bytes]], bytes]:
        """(log.changes, log_view, states_digest), made again when the logs moved."""
        log = self.storage.log
        if self._logs_seen is None or self._logs_seen[0] != log.changes:
            blocked = log.blocked()
            view = {n: (s, FORK_MARK if n in blocked else log.tip(n)[1][:8])
                    for n, s in log.positions().items()}
            h = hashlib.blake2b(digest_size=16)
            for node, (seq, tip) in sorted(view.items()):
                h.update(f"{node}\x00{seq}\x00".encode() + tip)
            self._logs_seen = (log.changes, MappingProxyType(view), h.digest())
        return self._logs_seen

    def own_head(self) -> Head:
        """The signed head of this node's own log (signed when it moved, once)."""
        seq, hash_ = self.storage.log.tip(self.node)
        if self._own_head is None or self._own_head.seq != seq:
            sig = self.trust.sign(head_message(self.chain, self.node, seq, hash_))
            # Before it leaves: a peer takes our records only as far as a head we
            # signed, so a store put back behind this is told (crdtledger.tipmark).
            self.storage.tip_mark.note(seq, hash_)
            self._own_head = Head(seq, hash_, sig)
        return self._own_head

    def batch(self, records: list[Record], *, show: Iterable[str] = (),
              prove: Iterable[str] = (),
              certs_sent: set[tuple[str, bytes]] | None = None) -> Batch:
        """Records with the heads that cover them and the certificates of their
        signers (except those in `certs_sent`, which is updated); plus our heads of
        the logs in `show` (see `behind`) and the proofs of the forks in `prove`."""
        out = Batch(recs=records)
        log = self.storage.log
        if prove:
            proofs = log.fork_proofs()
            for node in prove:
                if node in proofs:
                    out.proofs[node], out.certs[node] = proofs[node]
        short: dict[str, int] = {}  # logs held past their kept head: sent up to it
        for node in dict.fromkeys([*(r.node for r in records), *show]):
            if node == self.node:
                head, cert = self.own_head(), self.trust.cert_der
            else:
                kept = log.head(node)
                if kept is None or kept[0].seq < log.tip(node)[0]:
                    # A batch applied in slices keeps its heads with its last slice: a
                    # link lost before it leaves records no kept head covers yet. Not
                    # passed on (nothing here proves them) until the rest comes.
                    short[node] = kept[0].seq if kept else 0
                    if kept is None:
                        continue
                head, cert = kept
            out.heads[node] = head
            if certs_sent is None or (node, cert) not in certs_sent:
                out.certs[node] = cert
                if certs_sent is not None:
                    certs_sent.add((node, cert))
        if short:
            out.recs = [r for r in records if r.seq <= short.get(r.node, r.seq)]
        return out

    def lacking(self, theirs: Mapping[str, tuple[int, bytes] | int], *,
                applied_only: bool = False) -> list[Record]:
        """The records a replica whose logs are `theirs` lacks. A log it holds to a
        position where its hash differs from ours is sent whole: one of the two is
        a fork, and both replicas must see both sides to prove it."""
        return self.storage.log.records_after(self.lacking_after(theirs),
                                              applied_only=applied_only)

    def lacking_after(self, theirs: Mapping[str, tuple[int, bytes] | int]) -> dict[str, int]:
        """What `lacking` sends, as the position after which each log is sent (a
        session reads a long answer a slice at a time, sync._Answer)."""
        log = self.storage.log
        blocked = log.blocked()
        after: dict[str, int] = {}
        for node, seq in log.positions().items():
            held = theirs.get(node, 0)
            their_seq, their_tip = held if isinstance(held, tuple) else (held, b"")
            if their_seq > seq or (their_tip == FORK_MARK and node in blocked):
                continue  # they hold more (and `behind` shows our head), or both know
            after[node] = their_seq
            if (their_tip and their_tip != FORK_MARK and their_seq
                    and not self.agrees_at(node, their_seq, their_tip)):
                after[node] = 0
        return after

    def agrees_at(self, node: str, seq: int, tip: bytes) -> bool:
        """Our log of `node` ends at `seq` in `tip`, the tip a peer showed (log_view):
        up to there the two replicas hold the same records (a hash chain)."""
        return tip != FORK_MARK and (self.storage.log.hash_at(node, seq) or b"")[:8] == tip

    def to_prove(self, theirs: Mapping[str, tuple[int, bytes] | int]) -> list[str]:
        """The logs we caught forking that a replica whose logs are `theirs` holds
        without knowing (its tip is not the fork's mark): the other side's signed head
        goes to it, which proves the fork there if it holds our side."""
        blocked = self.storage.log.blocked()
        out = []
        for node, held in theirs.items():
            tip = held[1] if isinstance(held, tuple) else b""
            if node in blocked and tip != FORK_MARK:
                out.append(node)
        return out

    def behind(self, theirs: Mapping[str, tuple[int, bytes] | int]) -> list[str]:
        """The logs a replica whose logs are `theirs` holds further than we do. Our
        signed heads of those go to it: if our log differs from its below our tip
        (a fork), that head proves it there; if not, it costs one check."""
        out = []
        blocked = self.storage.log.blocked()
        for node, seq in self.positions().items():
            held = theirs.get(node, 0)
            their_seq, their_tip = held if isinstance(held, tuple) else (held, b"")
            if their_seq > seq and not (their_tip == FORK_MARK and node in blocked):
                out.append(node)
        return out

    def apply_batch(self, batch: Batch, origin: object = None, *, strict: bool = False
                    ) -> list[Record]:
        """Take a peer's or a file's records: check each log's hash chain up to a head
        its writer signed, judge every record by the write rules, apply those that
        pass, all in one transaction. Returns the records new here (to relay).

        A record that breaks a rule is kept (its writer signed it: evidence) but not
        applied, and its writer is blocked; so is a node caught forking its log.
        Records that cannot be verified (unknown or revoked signer, altered, broken
        chain) are dropped and reported in `self.refusals`; with `strict` (a file,
        which must be taken whole or not at all) they raise RemoteProtocolError."""
        new = self.apply_verified(self.verify_batch(batch, strict), origin, strict=strict)
        return new or []

    def verify_batch(self, batch: Batch, strict: bool = False) -> VerifiedBatch:
        """Check a batch (hash chains, signed heads, certificates) without applying
        anything: what `apply_verified` then applies, at once or in slices."""
        return _finish(self.verify_steps(batch, strict))

    def verify_steps(self, batch: Batch, strict: bool = False
                     ) -> Generator[None, None, VerifiedBatch]:
        """`verify_batch` a step at a time, for a driver that must keep answering: each
        `next` hashes about VERIFY_STEP records (a million took 4-6 s in one call, past
        the heartbeat); the plan is the generator's return value. A batch shorter than
        a step is verified by the first `next`. Between steps the store may move on
        (another session applies records); `apply_verified` skips what is held by then."""
        return self._verify(batch, strict)

    def apply_verified(self, plan: VerifiedBatch, origin: object = None, *, strict: bool = False,
                       limit: int | None = None, max_bytes: int | None = None
                       ) -> list[Record] | None:
        """Apply the next `limit` records of a verified batch (all when None), fewer if
        their data passes `max_bytes` (one at least), in one transaction. Returns the
        records new here once the whole batch is applied and its listeners told of
        them, None until then: a driver applies a long catch-up in slices, and with a
        `limit` the listeners are told NOTIFY_STEP records per call, so that its loop
        keeps answering in between."""
        if not (plan.accepted or plan.forks or plan.pins):
            # Nothing came that we lack (a second copy, an answer crossing a relay):
            # no write transaction. Records kept waiting wait for records, so there is
            # nothing to release either.
            return []
        if plan.new is None:
            if not self._apply_slice(plan, strict, limit, max_bytes):
                return None
            # Every one is kept, in the sender's order: new here unless applied meanwhile.
            plan.new = [rec for rec, _ in plan.accepted if (rec.node, rec.seq) not in plan.skipped]
            self.trust.pinned.update(plan.pins)
            if "rules" in plan.touched:
                self.refresh_revocations()
        if limit is not None and len(plan.new) - plan.notified > NOTIFY_STEP:
            # A driver's batch: listeners are told a step per call (a million records
            # told at once held the joining node's loop 7.6 s).
            self._notify(plan.new[plan.notified:plan.notified + NOTIFY_STEP], origin)
            plan.notified += NOTIFY_STEP
            return None
        self._notify(plan.new[plan.notified:] if plan.notified else plan.new, origin)
        for name in dict.fromkeys(plan.touched):
            self.storage.maybe_compact(name)
        # An erasure came, or an edit written before its branch heard of one.
        erasure.after_batch(cast("Ledger", self), plan.touched)
        return plan.new

    def _apply_slice(self, plan: VerifiedBatch, strict: bool, limit: int | None,
                     max_bytes: int | None) -> bool:
        """apply_verified's next slice, in one transaction: True once all are applied."""
        collecting = gc.isenabled()
        gc.disable()  # see docs/design-notes.md: a catch-up makes millions of objects
        try:
            hi = len(plan.accepted) if limit is None else min(len(plan.accepted),
                                                               plan.done + limit)
            if max_bytes is not None:
                size = 0
                for i in range(plan.done, hi):
                    size += len(plan.accepted[i][0].data)
                    if size > max_bytes and i > plan.done:
                        hi = i
                        break
            while True:
                try:
                    self._apply_plan(plan, plan.done, hi)
                    break
                except _Waits as w:  # rolled back: again, with that writer waiting
                    if w.stored:
                        plan.still_waiting.add(w.record.node)
                    else:
                        plan.wait_from[w.record.node] = min(
                            w.record.seq, plan.wait_from.get(w.record.node, w.record.seq))
                except _Broken as b:  # rolled back: again, with that record refused
                    if b.conflict and not plan.in_log_order:
                        # One entry in two records of its writer: the later one in its
                        # log is to blame, whatever order the documents went in.
                        plan.single = plan.in_log_order = True
                        continue
                    if strict and b.run == 1 and not b.released:
                        raise RemoteProtocolError(
                            f"record {b.record.seq} of node {b.record.node} breaks write "
                            f"rule {b.error.rule}: {b.error.detail}") from None
                    if b.run > 1:
                        plan.single = True
                    else:
                        plan.refused[(b.record.node, b.record.seq)] = b.error
            plan.done = hi
            return hi == len(plan.accepted)
        finally:
            if collecting:
                gc.enable()

    def _verify(self, batch: Batch, strict: bool) -> Generator[None, None, VerifiedBatch]:
        plan = VerifiedBatch()
        by_node: dict[str, list[Record]] = {}
        for rec in batch.recs:
            by_node.setdefault(rec.node, []).append(rec)
        in_order = True  # each log's records came in its order, once each (as sent)
        for node, head in batch.heads.items():
            recs = by_node.pop(node, [])
            if any(a.seq >= b.seq for a, b in pairwise(recs)):
                # Sorted by position, one per position (merged frames may repeat one).
                recs = sorted({r.seq: r for r in recs}.values(), key=lambda r: r.seq)
                in_order = False
            try:
                yield from self._verify_log(node, head, recs, batch.certs.get(node), plan,
                                            strict)
            except RemoteProtocolError as e:
                # A revoked writer's records are dropped, even from a file: an honest
                # branch's file carries what it took of that log before the revocation
                # reached it, and refusing the file whole would refuse every file it
                # writes from then on.
                if isinstance(e, RevokedSigner):
                    plan.revoked.append(node)
                elif strict:
                    raise
                self._refuse(f"records of {node} refused: {e}")
        for node, proof in batch.proofs.items():
            try:
                self._check_proof(node, proof, batch.certs.get(node), plan)
            except RemoteProtocolError as e:
                self._refuse(f"a proof of a fork of {node} refused: {e}")
        if by_node:
            stray = ", ".join(sorted(by_node))
            if strict:
                raise RemoteProtocolError(f"records of {stray} come without a signed head")
            self._refuse(f"records of {stray} came without a signed head")
        if len(batch.recs) > VERIFY_STEP:
            yield  # the reordering below is steps of their own (3 s at 1M records)
        if in_order:  # back in the sender's order (verified log by log)
            taken_at: dict[tuple[str, int], tuple[Record, bytes]] = {}
            acc, recs = plan.accepted, batch.recs
            for lo in range(0, len(acc), VERIFY_STEP):
                if lo:
                    yield
                taken_at.update({(r.node, r.seq): rh for rh in acc[lo:lo + VERIFY_STEP]
                                 for r in (rh[0],)})
            accepted: list[tuple[Record, bytes]] = []
            for lo in range(0, len(recs), VERIFY_STEP):
                if lo:
                    yield
                accepted += [taken_at[k] for k in ((r.node, r.seq)
                                                   for r in recs[lo:lo + VERIFY_STEP])
                             if k in taken_at]
            plan.accepted = accepted
            return plan
        # The sender's order, except that each log's records go in log order (a relay
        # may have shuffled them): the k-th record of a node in the batch's order
        # becomes its k-th lowest.
        by_writer: dict[str, list[tuple[Record, bytes]]] = {}
        for rh in sorted(plan.accepted, key=lambda rh: rh[0].seq):
            by_writer.setdefault(rh[0].node, []).append(rh)
        taken = {(r.node, r.seq) for r, _ in plan.accepted}
        nexts = {node: iter(rhs) for node, rhs in by_writer.items()}
        accepted = []
        for r in batch.recs:
            if (r.node, r.seq) in taken:
                taken.discard((r.node, r.seq))  # a record sent twice counts once
                accepted.append(next(nexts[r.node]))
        plan.accepted = accepted
        return plan

    def _verify_log(self, node: str, head: Head, recs: list[Record], cert: bytes | None,
                    plan: VerifiedBatch, strict: bool) -> Generator[None, None, None]:
        log = self.storage.log
        tip_seq = self._holds(node, head)
        if tip_seq is None:
            # A head we hold already (most often the second copy of a record: both hubs
            # relay it): nothing of this log can be new or a fork, so its signer's
            # standing now (revoked, expired since) changes nothing.
            return
        if cert is None:
            kept = log.head(node)
            if node == self.node:
                cert = self.trust.cert_der
            elif kept is not None:
                cert = kept[1]
            elif node in self._certs_seen:
                cert = self._certs_seen[node]
            else:
                raise UntrustedSigner(f"no certificate of node {node} came with its records")
        self.trust.verify(node, cert, head_message(self.chain, node, head.seq, head.hash),
                          head.sig, expiry=False)
        plan.certs[node] = cert
        # Kept even if none of its records are taken now (past a gap): a session sends
        # a certificate once, and the records it covers come later.
        self._certs_seen[node] = cert
        if not self.trust.enrolled and node != self.node and self.trust.pinned.get(node) != cert:
            plan.pins.append((node, cert))
        if head.seq <= tip_seq:
            # Nothing new of this log, and a hash unlike ours at that position: a fork.
            if not self._forked(node):
                chained = yield from self._chain(node, recs, tip_seq, {})
                plan.forks.append(self._fork(node, head, cert, chained))
            return
        chained = yield from self._chain(node, recs, tip_seq, {})
        by_seq = {r.seq: h for r, h in chained}
        if by_seq.get(head.seq) != head.hash:
            # Records its writer redacted after an erasure (crdtledger.erasure) hash
            # differently: its signed redaction entries, among what came, say where
            # each sits in its chain. Looked for only when the chain does not reach.
            claims = claims_in([r for r in recs if r.seq <= head.seq], node)
            if claims:
                chained = yield from self._chain(node, recs, tip_seq, claims)
                by_seq = {r.seq: h for r, h in chained}
        if by_seq.get(head.seq) != head.hash:
            if head.seq in by_seq or (chained and chained[0][0].seq <= tip_seq):
                raise RemoteProtocolError(f"node {node}'s records do not match the head it "
                                          f"signed at {head.seq} (altered on the way)")
            if strict and chained:
                raise RemoteProtocolError(
                    f"node {node}'s records from {chained[0][0].seq} do not reach the head "
                    f"it signed at {head.seq}: record {chained[-1][0].seq + 1} is missing "
                    "or altered (or its log forked)")
            if chained and chained[0][0].seq == tip_seq + 1:
                # Its chain from our tip does not reach its head: our log and its
                # diverge before our tip. The peer sends the whole log when it sees
                # our hash differ (lacking), which proves the fork.
                self._refuse(f"node {node}'s log as sent does not continue ours")
            return
        # Overlap with what we hold: the same positions must hold the same records.
        for rec, hash_ in chained:
            if rec.seq > tip_seq:
                break
            if log.hash_at(node, rec.seq) != hash_:
                if not self._forked(node):
                    plan.forks.append(self._fork(node, head, cert, chained))
                return
        plan.heads.append((node, head, cert))
        plan.accepted.extend((r, h) for r, h in chained if tip_seq < r.seq <= head.seq)

    def _chain(self, node: str, recs: list[Record], tip_seq: int, claims: Mapping[int, Claim]
               ) -> Generator[None, None, list[tuple[Record, bytes]]]:
        """The records that continue what we hold of `node`'s log, each with its hash:
        walked from the first one whose predecessor we know, up to a gap. A record its
        writer claims redacted, and which came redacted (its digest; a member
        document's record carrying no value: redaction.carries_nothing), takes the
        hash the claim gives, provided the chain before it reaches the claim's `prev`.
        The claim sits later in the same chain, at or before the signed head (claims_in
        takes only claims about earlier records), so that head vouches for it: a claim
        put in by anyone else breaks the chain after the record."""
        log = self.storage.log
        chained: list[tuple[Record, bytes]] = []
        prev: bytes | None = None
        expect = 0
        for rec in recs:
            if prev is None:
                prev = log.hash_at(node, rec.seq - 1) if rec.seq - 1 <= tip_seq else None
                if prev is None:
                    continue  # beyond a gap: wait for what precedes it
                expect = rec.seq
            if rec.seq != expect:
                break  # a gap in what came: what follows waits
            claim = claims.get(rec.seq)
            if (claim is not None and claim.prev == prev and rec.doc.startswith("members/")
                    and hashlib.sha256(rec.data).digest() == claim.digest
                    and carries_nothing(rec.data)):
                hash_ = claim.hash
            else:
                hash_ = record_hash(prev, node, rec.seq, rec.doc, rec.data)
            chained.append((rec, hash_))
            prev, expect = hash_, rec.seq + 1
            if not len(chained) % VERIFY_STEP:
                yield  # prev and expect carry the walk on; the store is not read again
        return chained

    def _holds(self, node: str, head: Head) -> int | None:
        """None if this replica holds `head` itself (its position, with that hash);
        else how far it holds `node`'s log."""
        tip_seq, _tip_hash = self.storage.log.tip(node)
        if head.seq <= tip_seq and self.storage.log.hash_at(node, head.seq) == head.hash:
            return None
        return tip_seq

    def _check_proof(self, node: str, head: Head, cert: bytes | None,
                     plan: VerifiedBatch) -> None:
        """A head of `node` that a peer holds as the other side of a fork: if it is
        signed by `node` and contradicts our copy of its log, the fork is proven here."""
        log = self.storage.log
        tip_seq = self._holds(node, head)
        if tip_seq is None:
            return  # the same as our copy: it proves nothing, whoever signed it
        if cert is None:
            kept = log.head(node)
            cert = kept[1] if kept else self._certs_seen.get(node)
        if cert is None:
            raise UntrustedSigner(f"no certificate of node {node} came with it")
        self.trust.verify(node, cert, head_message(self.chain, node, head.seq, head.hash),
                          head.sig, expiry=False)
        ours = log.hash_at(node, head.seq) if head.seq <= tip_seq else None
        if ours is not None and ours != head.hash and node not in log.blocked():
            plan.forks.append(self._fork(node, head, cert, []))

    def _forked(self, node: str) -> bool:
        """One proof blocks a forker for good: one signing another head at each
        position of its log held here added a fault row each, with up to 16 of its
        records as evidence (a blocked branch filling every store it reaches), and a
        repeated proof must cost nothing."""
        return self.storage.log.forked(node)

    def _fork(self, node: str, head: Head, cert: bytes, chained: list[tuple[Record, bytes]]
              ) -> _Fork:
        log = self.storage.log
        first = head.seq
        for rec, hash_ in chained:
            if log.hash_at(node, rec.seq) not in (None, hash_):
                first = rec.seq
                break
        evidence = msgpack.packb({"head": [head.seq, head.hash, head.sig], "cert": cert,
                                  "recs": [[r.seq, r.doc, r.data] for r, _ in chained
                                           if r.seq >= first][:16]})
        return _Fork(node, first, evidence)

    def _apply_plan(self, plan: VerifiedBatch, lo: int, hi: int) -> None:
        """Apply plan.accepted[lo:hi] in one transaction; the first slice also records
        the forks found, the last one the heads and what was waiting."""
        st, log = self.storage, self.storage.log
        touched: list[str] = []
        now = self.clock.wall()
        last = hi == len(plan.accepted)
        # By document (records of different documents commute; within one, the
        # sender's order, which respects what each builds on): one projection per
        # document, not one per writer's turn, in a catch-up where writers interleave.
        # Cuts first: they change no document, and the records after them in their
        # writers' logs are judged by them (log.cuts, as appended).
        part = plan.accepted[lo:hi]
        if not plan.in_log_order:
            order = {name: i for i, name in enumerate(dict.fromkeys(r.doc for r, _ in part))}
            order[CUT_DOC] = -1
            part.sort(key=lambda rh: order[rh[0].doc])
        # Entries are funded in their writers' log order (projection.py, "Funding in
        # log order"): a ledger record applied here before an earlier one of its writer
        # (whose month's document came later in the sender's order: a clock put back,
        # a liar, a slice starting with another writer's later months) leaves its
        # entries' funding to the transaction's end (project_deferred).
        self._funding_held = set()
        lowest: dict[str, int] = {}
        for rec, _ in reversed(part):
            if rec.doc.startswith("ledger/"):
                if rec.seq < lowest.get(rec.node, rec.seq + 1):
                    lowest[rec.node] = rec.seq
                else:
                    self._funding_held.add((rec.node, rec.seq))
        refused = plan.refused
        with st.transaction():
            self._fresh_entries = []
            if lo == 0:
                for node, cert in plan.pins:
                    log.pin(node, cert)
                for fork in plan.forks:
                    self._report_fork(fork, now)
            blocked = log.blocked()
            waiting = log.waiting_nodes()
            # A writer's records are judged by their place in its log, not by the
            # order documents are applied in (else a liar's good record applied here
            # before its bad one was reached would be held at a replica that got the
            # bad one first): from its first record that waits, all wait (judged in
            # order when released); else from its first refused, all are held and
            # that one alone is refused and blamed; those before are applied.
            stop: dict[str, tuple[int, bool]] = {}  # writer -> (from seq, waits)
            for (node, seq) in refused:
                stop[node] = min((seq, False), stop.get(node, (seq, False)))
            for node, seq in plan.wait_from.items():
                stop[node] = min((seq, True), stop.get(node, (seq, True)))
            for node in waiting:
                stop[node] = (0, True)
            newly_blocked: set[str] = set()
            # Between two slices of this batch another session may have applied some
            # of its records (both hubs answer a joining branch with the same history):
            # those are held now. Read before this slice appends anything: a log is
            # held as a prefix between transactions, not inside one (by document).
            tips = {node: log.tip(node)[0] for node in {r.node for r, _ in part}}
            run: list[tuple[Record, bytes]] = []
            kept: list[tuple[Record, bytes, int]] = []  # appended to the log in this order
            own: list[Record] = []  # records of our own log that came from elsewhere
            for rec, hash_ in part:
                if rec.seq <= tips[rec.node] or rec.node in plan.diverged:
                    if rec.node not in plan.diverged and log.hash_at(rec.node,
                                                                     rec.seq) != hash_:
                        # Another record held at this position: its writer forked. The
                        # rest of its log here continues the other side: none of it is
                        # taken from this batch, and the next round's tips prove it.
                        plan.diverged.add(rec.node)
                    plan.skipped.add((rec.node, rec.seq))
                    continue
                if rec.node == self.node:
                    own.append(rec)
                if run and (run[0][0].doc != rec.doc or plan.single):
                    log.extend(kept)
                    kept = []
                    self._apply_run(run, plan.certs)
                    touched.append(run[0][0].doc)
                    run = []
                at, waits = stop.get(rec.node, (1 << 62, False))
                if rec.node in blocked or (rec.seq >= at and not waits):
                    state = HELD
                    if rec.seq == at and rec.node not in blocked:
                        state = REFUSED
                        self._report_rule(rec, refused[(rec.node, rec.seq)], now)
                        newly_blocked.add(rec.node)
                    kept.append((rec, hash_, state))
                elif rec.seq >= at:
                    kept.append((rec, hash_, WAITING))
                    waiting.add(rec.node)
                else:
                    run.append((rec, hash_))
                    kept.append((rec, hash_, APPLIED))
            log.extend(kept)
            if run:
                self._apply_run(run, plan.certs)
                touched.append(run[0][0].doc)
            if own and self.restored is None:
                self._another_pc(own)
            self._funding_held = set()  # released records come after their writers' others
            if last:
                for node, head, cert in plan.heads:
                    kept_head = log.head(node)
                    if node not in plan.diverged and (  # nor one kept meanwhile
                            kept_head is None or kept_head[0].seq < head.seq):
                        log.keep_head(node, head, cert)
                if waiting:
                    touched += self._release(plan, refused, blocked | newly_blocked, now)
            if touched:
                try:
                    project_deferred(st.conn, st.day_of)  # entries whose funding just came
                except sqlite3.IntegrityError as e:
                    raise RemoteProtocolError(f"refused by the store ({e})") from None
            # Their points lots once, after every document's (a catch-up brings each
            # member's entries in many months' documents), with those noted meanwhile.
            lots.settle(st.conn, self._fresh_entries)
            self._fresh_entries = []  # a slice's entries are not kept past their apply
            st.keep_clock(self.clock.last, self.clock.eras_text)
        plan.touched += (name for name in touched if name not in MARK_DOCS)  # no document

    def _release(self, plan: VerifiedBatch, refused: dict[tuple[str, int], RuleBroken],
                 blocked: set[str], now: int) -> list[str]:
        """Apply the waiting records whose writers' dependencies came, in the order
        they came, each writer's in its log's order, until one still waits. Returns
        the documents changed."""
        log = self.storage.log
        stuck = set(plan.still_waiting) | blocked
        touched = []
        # Each writer's first waiting record (its others wait behind it), taken in the
        # order they came: reading every waiting record for every batch let a liar's
        # records that can never integrate slow every later batch at every branch.
        heads = {node: head for node in log.waiting_nodes() - stuck
                 if (head := log.waiting_head(node)) is not None}
        while heads:
            node = min(heads, key=lambda n: heads[n][0])
            _pos, rec, hash_ = heads.pop(node)
            broken = refused.get((rec.node, rec.seq))
            if broken is not None:
                log.set_state(rec.node, rec.seq, REFUSED)
                self._report_rule(rec, broken, now)
                stuck.add(rec.node)
                continue
            if not self._may_integrate(rec):
                # What it builds on is still not here: trying would only fail, and
                # roll the whole batch back to run it again without it.
                stuck.add(rec.node)
                continue
            cert = plan.certs.get(rec.node) or self._certs_seen.get(rec.node)
            kept = log.head(rec.node)
            try:
                self._apply_run([(rec, hash_)], {rec.node: cert or (kept[1] if kept else b"")})
            except _Waits as w:
                w.stored = True
                raise
            except _Broken as b:  # judged now, but it came earlier: not this batch's fault
                b.released = True
                raise
            log.set_state(rec.node, rec.seq, APPLIED)
            touched.append(rec.doc)
            if (head := log.waiting_head(node)) is not None:
                heads[node] = head
        return touched

    def _may_integrate(self, rec: Record) -> bool:
        """False if `rec`'s update surely cannot integrate yet: an id it refers to is
        past what its document holds of that writer (redaction.needs). True when it
        may (then applying it decides), or when its update cannot be read here."""
        key = (rec.node, rec.seq)
        if key not in self._needs:
            if len(self._needs) > 4096:  # heads applied long ago
                self._needs.clear()
            try:
                self._needs[key] = needs(rec.data)
            except NotRedactable:
                self._needs[key] = None
        wanted = self._needs[key]
        if not wanted:
            return True
        st = self.storage
        loaded = st.loaded(rec.doc)
        sv = loaded.doc.get_state() if loaded is not None else st.state_vectors().get(rec.doc)
        have = decode_state_vector(sv) if sv else {}
        return all(have.get(client, 0) >= clock for client, clock in wanted.items())

    def _apply_run(self, run: list[tuple[Record, bytes]], certs: dict[str, bytes]) -> None:
        """Apply consecutive records for one document (of any writers), each judged by
        the write rules on what it alone changed; project them together. A broken
        rule raises _Broken, a record that cannot integrate yet _Waits (the caller
        rolls back and runs the batch again without it)."""
        st = self.storage
        name = run[0][0].doc
        closed = st.log.closed_before
        if name in MARK_DOCS:  # a cut or a closing: no document to change
            for rec, _ in run:
                mark = mark_of(name, rec.data)
                try:
                    check_mark(rec.node, name, mark, closed(rec.node, rec.seq))
                except RuleBroken as e:
                    raise _Broken(rec, e, 1) from None
                if rec.node == self.node and name == CUT_DOC and mark:
                    self._cut_taken(mark[0])  # our own, back from a peer after a restore
            return
        ld = st.doc(name)
        ledger = name.startswith("ledger/")
        # A member's id says the day she joined (the members table's day, the day
        # report's new members): a writer's own new member dated before the month it
        # closed rewrote a closed day's report at every branch, as an entry would.
        members = name.startswith("members/")
        governs: dict[str, bool] = {}
        enrolled: dict[str, int | None] = {}
        pos: dict[str, tuple[int, bool]] = {}  # entry -> its record's seq, held
        order = InOrder(name, decode_state_vector(ld.doc.get_state()))
        named: set[str] = set()  # sweeps' outs named by an "in" of this run

        def earlier_out(ref: str) -> dict[str, Any] | None:
            """An out of a sweep written before 0.3.0 (two records): in this document
            already, and named by no "in" yet (projected, or of this run)."""
            out = ld.roots["entries"].get(ref) if ledger else None
            if (not isinstance(out, dict) or ref in named or st.conn.execute(
                    "SELECT 1 FROM entries WHERE ref = ? AND kind = 'merge'",
                    (ref,)).fetchone()):
                return None
            # An "in" that names it and waits for its funding names it too: else a
            # second "in" would pass while the first waits, and both be projected once
            # funded (tests/test_liar_round2.py).
            # (Such an "in" is of the member the out moves value to, merge-paired: an
            # index read, not the whole table.)
            if st.conn.execute(
                    "SELECT 1 FROM deferred WHERE json_extract(body, '$.member') = ? "
                    "AND json_extract(body, '$.kind') = 'merge' "
                    "AND json_extract(body, '$.ref') = ?", (out.get("to"), ref)).fetchone():
                return None
            return out
        def value_of(root: str, key: str) -> Any:
            """A record as the document holds it now (write rule record-writer)."""
            return ld.plain_values([(root, key)]).get((root, key))
        # Dropped if the transaction rolls back, even if nothing integrated: what Yrs
        # holds back inside the Doc would otherwise be released later, unjudged.
        ld.changed()
        with ld.watching() as change:
            for rec, _ in run:
                node = rec.node
                cut = closed(node, rec.seq) if ledger or members else None
                try:
                    if cut is not None and ledger:  # else no month to hold a record to
                        check_mark(node, name, None, cut)
                    written = check_header(node, name, rec.data)
                    if written is not None:
                        order.record(*written)
                except RuleBroken as e:
                    raise _Broken(rec, e, 1) from None
                first, other = len(change.added), change.other
                cards_set = len(change.card_keys_set)
                try:
                    ld.doc.apply_update(rec.data)
                except BaseException as e:  # pyo3 panics are BaseExceptions
                    if isinstance(e, KeyboardInterrupt | SystemExit):
                        raise
                    raise _Broken(rec, RuleBroken("own-client", f"malformed update: {e}"),
                                  1) from None
                if members:
                    # Integrated at its own turn, or it waits: held back, a record would
                    # be integrated by a later one of the run (a liar's replacement of a
                    # member sent before the record adding her), its change judged as
                    # that record's, by that writer (record-writer), so taken here and
                    # refused at a replica that got the two in the other order.
                    now = ld.doc.get_state()
                    if not covered(get_update(rec.data, now), decode_state_vector(now)):
                        raise _Waits(rec, 1)
                if node not in governs:
                    governs[node] = (name not in GOVERNANCE_DOCS
                                     or self._may_govern(node, certs.get(node)))
                added = change.added[first:]
                try:
                    named |= check_change(node, name, added, change.other - other,
                                          governs[node], self.trust.is_revocation_list,
                                          earlier_out, value_of,
                                          change.card_keys_set[cards_set:])
                    if ledger:
                        keys = [key for _r, key, _o, _n in added]
                        for key, others in _check_months(name, keys, st.day_of):
                            if _held_elsewhere(st.conn, key, others):
                                raise _Broken(rec, RuleBroken(
                                    "entry-insert-once", f"{name}: entry {key} is "
                                    "already in another month's document"), 1, conflict=True)
                    elif members:
                        keys = [key for root, key, old_, _n in added
                                if root == "members" and old_ is None]
                    if ledger or members:
                        if node not in enrolled:
                            enrolled[node] = self._enrolled_since(node, certs.get(node))
                        check_ids_after_cut(node, name, keys, cut)
                        check_ids_after_enrolment(node, name, keys, enrolled[node])
                        if ledger:
                            at = (rec.seq, (node, rec.seq) in self._funding_held)
                            pos.update(dict.fromkeys(keys, at))
                            _note_handover(st.conn, node, rec.seq, added)
                except RuleBroken as e:
                    raise _Broken(rec, e, 1) from None
                except RemoteProtocolError as e:  # an entry in another month's document
                    raise _Broken(rec, RuleBroken("entry-writer", str(e)), 1) from None
        # Each record must have integrated whole: one that builds on another writer's
        # records not here yet is held back by pycrdt; it waits (the caller rolls back
        # and keeps it `waiting`), it did nothing wrong. The first such is the one:
        # any after it that wait too may build on it.
        after = ld.doc.get_state()
        have = decode_state_vector(after)
        for rec, _ in [] if members else run:  # (a member record: at its own turn)
            if not covered(get_update(rec.data, after), have):
                raise _Waits(rec, 1)
        try:
            self._project(ld, change, pos)
        except (RemoteProtocolError, sqlite3.IntegrityError) as e:
            # Refused by a projection's key (an entry already in another month): the
            # writer's fault, like any broken rule; run again one record at a time to
            # tell whose.
            raise _Broken(run[0][0], RuleBroken("entry-insert-once", f"{name}: {e}"),
                          len(run), conflict=True) from None
        # The state read after applying (`after`) still stands: projecting changes
        # SQLite only.
        st.record(ld, [rec.data for rec, _ in run], after)

    def speaks_for_chain(self, node: str) -> bool:
        """May `node`'s word on how many clocks agree with it be taken (peerclock)? Only
        a head-office node's (the chain's hub): an ordinary branch that lied about it
        could otherwise move every branch it talks to onto its own clock. Judged by the
        certificate of its signed log, as a governance write is."""
        kept = self.storage.log.head(node)
        return self._may_govern(node, kept[1] if kept else self._certs_seen.get(node))

    def was_head_office(self, node: str) -> bool:
        """Was `node` head office by the certificate of its signed log, revocation
        aside? A decision it wrote (crdtledger.membership) stands once held: a revoked
        writer's records are refused on arrival (RevokedSigner, _verify_log), so any
        held were taken while its certificate stood. Judged by speaks_for_chain, every
        decision of a head-office PC retired (its certificate revoked once another was
        enrolled) read undecided again."""
        if node == self.node:
            return self.trust.marks_head_office(node, self.trust.cert_der)
        kept = self.storage.log.head(node)
        cert = kept[1] if kept else self._certs_seen.get(node)
        return cert is not None and self.trust.marks_head_office(node, cert)

    def enrolled_since(self, node: str) -> int | None:
        """When the chain enrolled `node`, by the certificate of its signed log (None
        where it does not say): nothing of it is dated earlier (write rule `enrolled`)."""
        kept = self.storage.log.head(node)
        return self._enrolled_since(node, kept[1] if kept else self._certs_seen.get(node))

    def _enrolled_since(self, node: str, cert: bytes | None) -> int | None:
        if node == self.node:
            return self.trust.enrolled_since(node, self.trust.cert_der)
        return self.trust.enrolled_since(node, cert)

    def _may_govern(self, node: str, cert: bytes | None) -> bool:
        """May `node`, whose records were verified under `cert`, write governance?"""
        if node == self.node:
            return self.trust.governs
        return cert is not None and self.trust.may_govern(node, cert)

    def _report_rule(self, rec: Record, broken: RuleBroken, now: int) -> None:
        detail = f"record {rec.seq} of node {rec.node} broke rule {broken.rule}: {broken.detail}"
        if self.storage.log.add_fault(rec.node, "rule", rec.seq, broken.rule, detail, now):
            self._refuse(detail)

    def _report_fork(self, fork: _Fork, now: int) -> None:
        if self._forked(fork.node):
            return  # the first proof stands (two in one batch, or one found meanwhile)
        stake = views.rights_held(self.storage.conn, fork.node)
        detail = (f"node {fork.node} wrote two different records at position {fork.seq} "
                  f"of its log (a restored backup, a cloned disk or a dishonest branch); "
                  f"at stake: the rights it held, {format_yuan(stake)}; nothing more it "
                  "writes is applied: the owner revokes it and enrols that PC under a new "
                  "node id")
        if self.storage.log.add_fault(fork.node, "fork", fork.seq, "fork", detail, now,
                                      fork.evidence):
            self._refuse(detail)

    def revocation_list(self) -> str:
        """The chain's revocation list in force (base64 DER, "" for none): of every
        version of the `revocations` rule, the highest-numbered list the chain CA
        signed. Not the latest written: any branch may write a CA-signed list, and one
        replaying an older list must not un-revoke anyone."""
        best, number = "", -1
        for _eff, _rid, body in self._versions("revocations"):  # type: ignore[attr-defined]
            crl = str(body.get("crl", "")) if isinstance(body, dict) else ""
            n = self.trust.crl_number_of(crl)
            if n is not None and n >= number:
                best, number = crl, n
        return best

    def refresh_revocations(self) -> None:
        """Install the chain's revocation list in force (revocation_list)."""
        self.trust.set_revocations(self.revocation_list())

    def _refuse(self, what: str) -> None:
        self.refusals.append(what)
        self.refused_total += 1

    def faults(self) -> list[dict[str, Any]]:
        """Proven faults of nodes (broken rules, forks), oldest first."""
        return self.storage.log.faults()

    def remember_peer(self, node: str, positions: Mapping[str, int]) -> None:
        self.storage.remember_peer(node, positions, self.clock.wall())

    def pull(self, other: Replica, origin: object = None) -> list[Record]:
        """Take from `other` (another ledger in this process) what we lack, as a
        session's round would: for seeding a demo chain and for tests."""
        view = self.log_view()
        new = self.apply_batch(other.batch(other.lacking(view), show=other.behind(view),
                                           prove=other.to_prove(view)), origin)
        self.peer_caught_up(other.log_view(), other.node)
        return new

    def _enrolled_waited(self) -> set[str]:
        """The branches the chain had enrolled when this store was restored from the
        chain directory, less those revoked since (every certificate it issued them,
        judged against the list in force: one never started has no head kept here)
        or blocked here."""
        enrolled = json.loads(self.storage.meta.get("restore_enrolled") or "{}")
        blocked = self.storage.log.blocked()
        return {n for n, certs in enrolled.items() if n not in blocked
                and not (certs and all(self.trust.revoked(n, base64.b64decode(c))
                                       for c in certs))
                and not self.retired(n)}

    def peer_caught_up(self, positions: Mapping[str, Any], peer: str | None = None,
                       as_of: int | None = None) -> None:
        """A peer (or a file from one) told how far it holds our own log: a restored
        node may sell again once `peer` shows this node's log past the backup's end and
        all of what it shows is here.

        Nothing less proves it. The restored node cannot know how far its lost log went,
        so a view at the backup's position or before it says nothing: it is just what a
        stale peer looks like (a branch that last heard of this one before the backup,
        while what it wrote after went elsewhere), and trusting it let a restored node
        sell money it had already served. A peer past the backup has heard from this
        node since; once all of its records of our log are here (our own, signed: a
        peer cannot show what we do not then hold), the next record goes past every
        position that peer holds. If the peer is stale the node stays locked, saying
        why (_check_may_write), until a branch that knows more is heard from, or the
        owner takes the risk (waive_catch_up). Our own files never come here
        (syncfile): they tell what this node held once, not what a branch holds.
        `as_of`: when another branch's file was made (None: a session, now). A file
        made before this store was put back cannot say that branch has heard nothing
        since the backup: the lost PC may have sent it more after the file was made
        (an old file of head office unlocked a restored branch, which sold again).
        A store never restored, or caught up already, is not concerned."""
        if self.restored is None:
            return
        held = positions.get(self.node, 0)
        seq, tip = (held[0], held[1]) if isinstance(held, tuple | list) else (held, b"")
        if not isinstance(seq, int):
            return
        st = self.storage
        # The backup's end of our log (backups.restore marks it); none in a store
        # restored before the mark: then any position of ours a peer shows is past it.
        backup = int(st.meta.get("restored_tip") or 0)
        # How far our log is known to have left this PC (crdtledger.tipmark): a store
        # put back by hand behind it waits for a branch that shows all of it.
        sent = int(st.meta.get("restored_sent") or 0)
        ours = st.log.tip(self.node)[0]
        who = f"branch {peer}" if peer else "the branch heard from"
        if seq < sent:
            why = (f"this branch's log had left this PC as far as record {sent}, and "
                   f"{who} holds it only to record {seq}: connect to a branch that holds "
                   "all of it, or import a sync file of one, before selling (or the owner: "
                   "crdtledger restore --sell-now, at the risk it states)")
        elif as_of is not None and as_of < int(st.meta.get("restored_seen") or 0):
            why = (f"{who}'s file was made before this branch was restored: it cannot show "
                   f"what {peer or 'that branch'} has heard from it since; import a file "
                   "it makes now, or connect to it, before selling")
        elif as_of is not None and as_of > self.clock.wall() + MAX_CLOCK_SKEW_MS:
            # Made "after the restore" by a clock days ahead: an old file of a PC whose
            # clock ran ahead ended the wait, and the node sold the same money again.
            made = datetime.fromtimestamp(as_of / 1000, st.tz).strftime("%Y-%m-%d %H:%M")
            why = (f"{who}'s file says it was made {made}, "
                   "later than this PC's clock: one of the two clocks is wrong, and a file "
                   "cannot show it was made after this branch was restored; set the clocks "
                   "right and import a file it makes then, or connect to it, before selling")
        elif seq <= backup:
            # Heard of nothing since the backup. Once every other branch known here has
            # said so, nothing this node wrote after it reached any of them: there is
            # nothing to fetch back, and what never left the lost disk nobody can.
            heard = set(json.loads(st.meta.get("restore_heard") or "[]"))
            heard.add(peer or "")
            # And every branch the chain enrolled (backups._enrolled), not revoked.
            others = views.branches_known(cast("Ledger", self)) | self._enrolled_waited()
            if others <= heard and self._written_elsewhere(backup, ours) is None:
                self._end_restore()
                return
            with st.transaction():
                st.set_meta("restore_heard", json.dumps(sorted(heard)))
            why = (f"{who} has heard nothing from this branch since the backup (it holds "
                   f"this branch's log to record {seq}, the backup to {backup}), and "
                   f"{', '.join(sorted(others - heard))} not yet: connect to them, or to a "
                   "branch that has heard from this one since the backup, before selling")
        elif seq > ours:
            why = (f"{who} holds this branch's log to record {seq}, only {ours} of it are "
                   f"here yet: take the rest from {peer or 'it'} (stay connected, or "
                   "import a full export of it) before selling")
        elif isinstance(tip, bytes) and tip and not self.agrees_at(self.node, seq, tip):
            why = (f"{who} holds another history of this branch's log at record {seq} "
                   "than this store (a fork): it cannot show this branch caught up")
        elif (other := self._written_elsewhere(backup, ours)) is not None:
            # Past the backup, records of a PC that a restore made (the same backup
            # restored twice: it may be selling now). Selling here would write at the
            # positions it writes at: a fork, the same money served twice.
            why = (f"another PC restored as branch {self.node} since this backup has sold "
                   f"as it (record {other} of this branch's log, which {who} holds): two "
                   "PCs must never sell as one branch; sell at that PC, or if it is gone "
                   "for good the owner ends this wait (crdtledger restore --sell-now)")
        else:
            self._end_restore()
            return
        if st.meta.get("restore_wait") != why:
            with st.transaction():
                st.set_meta("restore_wait", why)

    def _written_elsewhere(self, after: int, upto: int) -> int | None:
        """The position of the first record of our own log in (after, upto] written
        under another client epoch than this store writes under, None if none: written
        on another PC. A restore takes the next epoch as it ends its wait (_end_restore),
        so the epoch is the mark of the PC that wrote a record; a cut, a closing or an
        update that only deletes carries none."""
        scanned, found = self._own_scanned
        if found is not None and after < found <= upto:
            return found
        mine = epoch_of(self.storage.client_id)
        for seq, doc, data in self.storage.conn.execute(
                "SELECT seq, doc, data FROM records WHERE node = ? AND seq > ? AND seq <= ? "
                "ORDER BY seq", (self.node, max(after, scanned), upto)):
            said = None if doc in MARK_DOCS else writers(bytes(data))
            if said and said[0] and epoch_of(said[1]) != mine:
                self._own_scanned = (seq, seq)
                return int(seq)
        self._own_scanned = (max(scanned, upto), None)
        return None

    def _another_pc(self, own: list[Record]) -> None:
        """Records of our own log taken from a peer or a file (inside the apply's
        transaction). Under our own epoch they are ours, lost here (a power cut) and
        come back; under another, another PC sells as this branch: the same backup
        restored on a second PC, or this PC's restore while it still runs. This PC
        stops selling (_check_may_write), before its next sale forks the branch."""
        st = self.storage
        if st.meta.get("another_pc"):
            return
        mine = epoch_of(st.client_id)
        for rec in own:
            said = None if rec.doc in MARK_DOCS else writers(rec.data)
            if said and said[0] and epoch_of(said[1]) != mine:
                st.set_meta("another_pc", (
                    f"another PC sells as branch {self.node}: record {rec.seq} of its log "
                    "came from a branch, written on a PC restored from a backup of it (or "
                    "the PC this one was restored from); two PCs must never sell as one "
                    "branch, so this one stops: sell at the other, or if it is gone for "
                    "good the owner says so here (crdtledger restore --sell-now)"))
                return

    def waive_catch_up(self) -> None:
        """The owner's word that this restored node may sell although no branch showed it
        caught up with itself (one that wrote nothing after its backup gets no such
        branch), or that a PC stopped for another selling as its branch may sell again
        (the other is gone for good: it goes on under an epoch past the other's). The
        risk is the owner's: whatever it wrote after the backup that some
        branch holds and that has not come back here, it writes again at the same
        positions of its log: a fork, which every branch that sees both sides reports
        and blocks it for, and until then the same money may be served twice."""
        if self.restored is not None or self.storage.meta.get("another_pc"):
            self._end_restore()

    def _end_restore(self) -> None:
        """Caught up (or the owner's word): sell again, under a new epoch of our client
        id past every one our log holds: what the node wrote after the backup came back
        under the old one, and it must not write those clocks again."""
        st = self.storage
        epochs = [epoch_of(c) for sv in st.state_vectors().values()
                  for c in decode_state_vector(sv) if owns_client(self.node, c)]
        client = client_id_for(self.node, max(epochs, default=-1) + 1)
        with st.transaction():
            st.set_meta("restored_from", "")
            st.set_meta("restore_wait", "")
            st.set_meta("restore_heard", "")
            st.set_meta("restored_sent", "")
            st.set_meta("restored_seen", "")
            st.set_meta("another_pc", "")
            st.set_meta("client_id", str(client))
            # The log goes on from here (tipmark), lower than the mark only on the
            # owner's word. Before the commit: killed in between, the store is still
            # restored, never a caught-up store behind its mark.
            st.tip_mark.reset(*st.log.tip(self.node))
        st.client_id = client
        st.evict_all()  # loaded documents write with the old id
        self.restored = None
        self._own_scanned = (0, None)  # read against the old epoch

    def _check_may_write(self) -> None:
        """As LedgerBase's, but a restored node that heard from a branch which could not
        show it caught up says why, and what to do (peer_caught_up)."""
        why = self.storage.meta.get("restore_wait") if self.restored is not None else None
        if why:
            raise NotCaughtUp(f"restored from a backup of {self.restored}; {why}")
        super()._check_may_write()
        other = self.storage.meta.get("another_pc")
        if other:
            raise NotCaughtUp(other)


def _finish(steps: Generator[None, None, _T]) -> _T:
    """Run a computation made of steps to its end, in one go."""
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return cast("_T", done.value)


def _note_handover(conn: sqlite3.Connection, node: str, seq: int,
                   added: list[tuple[str, str, Any, Any]]) -> None:
    """Note the branch a record's hand-over transfers name (storage's handover_to),
    as it is applied, funded or not: the one named by the shop's earliest hand-over
    record in its log stands (the receiving branch alone refunds its sales)."""
    for _root, _key, _old, new in added:
        if (isinstance(new, dict) and new.get("kind") == "transfer"
                and new.get("reason") == HANDOVER_REASON and isinstance(new.get("to"), str)):
            conn.execute('INSERT INTO handover_to VALUES (?, ?, ?) ON CONFLICT(node) DO '
                         'UPDATE SET "to" = excluded."to", seq = excluded.seq '
                         'WHERE excluded.seq < handover_to.seq', (node, new["to"], seq))
            return


def _check_months(doc: str, keys: Sequence[str], day_of: Callable[[int], str]
                  ) -> list[tuple[str, set[str]]]:
    """Refuse (RemoteProtocolError) an update that puts an entry in a document no
    writer could have chosen for it: its writer files it under the month of its id's
    time in the writer's own time zone (commit._entry_write).

    The zone is each store's (`init --timezone`), not a chain setting, so a replica
    accepts the id's month as seen from any zone in use on Earth (UTC-12 to UTC+14):
    a branch set to another zone is honest, and refusing its entries around a month's
    turn would fail its link for hours. An id is so held to one month, or to two
    neighbours within 14 hours of their turn; the projection's key refuses the same
    entry in both (turned into RemoteProtocolError by the caller). A key that is no
    entry id at all is left to the schema check (quarantined, never projected). Ids
    well inside the month (the 2nd to the 27th in UTC) are told by comparing
    strings: a catch-up brings a month of them. `day_of` is the store's own zone,
    for the message only. Returns the keys that may also be in a neighbour's
    document, with those documents (_held_elsewhere)."""
    lo, hi = _inner_ids(doc)
    window = _month_window(doc)
    either: list[tuple[str, set[str]]] = []
    for key in keys:
        if not isinstance(key, str) or not ID.match(key) or lo <= key[:13] < hi:
            continue
        if window is not None:  # what possible_ledger_docs says, without a datetime per key
            t = matched_id_time_ms(key)
            if window[0] <= t < window[3]:
                if t < window[1]:
                    either.append((key, {window[4]}))
                elif t >= window[2]:
                    either.append((key, {window[5]}))
                continue
        try:
            homes = possible_ledger_docs(key)
            home = entry_doc(key, day_of)
        except (ValueError, OverflowError, OSError):  # a time no calendar holds
            homes, home = set(), "no month"
        if doc not in homes:
            raise RemoteProtocolError(
                f"{doc}: ledger entry {key} belongs in {home}, by its id's time")
        if len(homes) > 1:
            either.append((key, homes - {doc}))
    return either


def _held_elsewhere(conn: sqlite3.Connection, key: str, others: set[str]) -> bool:
    """Is entry `key`, new to a document, already projected (from another month's
    document: a document holds a key once) or waiting for its funding in `others`?
    Asked of the few ids near a month's turn only. The waiting copy matters: two
    copies deferred in two documents would both be projected once funded, and the
    store's key would then refuse every batch after."""
    return conn.execute("SELECT 1 FROM entries WHERE id = ?", (key,)).fetchone() is not None \
        or any(conn.execute("SELECT 1 FROM deferred WHERE doc = ? AND key = ?",
                            (d, key)).fetchone() for d in sorted(others))


@lru_cache(maxsize=256)
def _inner_ids(doc: str) -> tuple[str, str]:
    """The id prefixes (13 characters) of the 2nd to the 27th of the month of a ledger
    document, in UTC: ids in that range belong to it in every zone. ("", "") before
    1970 (or year 0000): no id is that old, each is taken carefully."""
    year = int(doc[7:11])
    if year <= 1970:
        return "", ""
    start = datetime(year, int(doc[12:14]), 2, tzinfo=UTC)
    lo, hi = (id_floor(int(t.timestamp() * 1000)) for t in (start, start + _26_DAYS))
    return lo, hi




@lru_cache(maxsize=256)
def _month_window(doc: str) -> tuple[int, int, int, int, str, str] | None:
    """possible_ledger_docs turned round, for the ids of a ledger document of month M
    outside its inner days (a catch-up brings some 15% of a month's there): M is among
    an id's months iff its time t (ms) is in [m0 - 14 h, m1 + 12 h), m0 and m1 the
    UTC starts of M and of the month after; it is also in the month before's document
    iff t < m0 + 12 h, in the month after's iff t >= m1 - 14 h. Returns (m0 - 14 h,
    m0 + 12 h, m1 - 14 h, m1 + 12 h, the month before's document, the month after's),
    or None for a name that is not a month's from 1971 to 9999 (each id then the
    careful way)."""
    try:
        year, month = int(doc[7:11]), int(doc[12:14])
        if year <= 1970 or doc != ledger_doc(f"{year:04d}-{month:02d}"):
            return None
        m0 = datetime(year, month, 1, tzinfo=UTC)
        m1 = datetime(year + month // 12, month % 12 + 1, 1, tzinfo=UTC)
        before = m0 - timedelta(days=1)
    except (ValueError, OverflowError):
        return None
    start, end = int(m0.timestamp()) * 1000, int(m1.timestamp()) * 1000
    west, east = -ZONE_SPAN[0] // _MS, ZONE_SPAN[1] // _MS
    return (start - east, start + west, end - east, end + west,
            ledger_doc(f"{before.year:04d}-{before.month:02d}"),
            ledger_doc(f"{m1.year:04d}-{m1.month:02d}"))


_MS = timedelta(milliseconds=1)


_26_DAYS = timedelta(days=26)


@dataclass
class _Fork:
    node: str
    seq: int
    evidence: bytes


@dataclass
class VerifiedBatch:
    """What verifying a batch decided, before anything is applied."""

    accepted: list[tuple[Record, bytes]] = field(default_factory=list)
    heads: list[tuple[str, Head, bytes]] = field(default_factory=list)
    forks: list[_Fork] = field(default_factory=list)
    pins: list[tuple[str, bytes]] = field(default_factory=list)
    certs: dict[str, bytes] = field(default_factory=dict)  # each verified log's signer
    revoked: list[str] = field(default_factory=list)  # logs dropped: their signer is revoked
    wait_from: dict[str, int] = field(default_factory=dict)  # node -> first record that waits
    still_waiting: set[str] = field(default_factory=set)  # writers whose kept records wait
    refused: dict[tuple[str, int], RuleBroken] = field(default_factory=dict)
    single: bool = False  # apply one record per run (to tell whose a projection refused)
    in_log_order: bool = False  # in the sender's order (each log's own), not by document
    done: int = 0  # accepted records applied so far (slices)
    skipped: set[tuple[str, int]] = field(default_factory=set)  # held by then, or past a fork
    diverged: set[str] = field(default_factory=set)  # logs another session forked from
    touched: list[str] = field(default_factory=list)  # documents changed so far
    new: list[Record] | None = None  # once all are applied: those new here
    notified: int = 0  # of `new`, those the listeners were told of (slices)

class _Waits(Exception):
    """A record did not integrate whole: it builds on records not here yet. `run`: how
    many records were applied with it; `stored`: it was already kept waiting."""

    def __init__(self, record: Record, run: int) -> None:
        super().__init__(f"record {record.seq} of {record.node} waits")
        self.record = record
        self.run = run
        self.stored = False


class _Broken(Exception):
    """A record broke a write rule while a batch was applied (rolled back and run
    again with it refused). `run`: how many records were applied with it."""

    def __init__(self, record: Record, error: RuleBroken, run: int,
                 conflict: bool = False) -> None:
        super().__init__(str(error))
        self.record = record
        self.error = error
        self.run = run
        # One entry in two of its writer's records: blamed on the one applied second,
        # which is the later in its writer's log only when applied in log order.
        self.conflict = conflict
        self.released = False  # a record kept waiting from an earlier batch
