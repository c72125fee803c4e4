"""Replication: applying a peer's updates (or a sync file's), and what a peer lacks.

Remote updates take the same projection as local writes, so a replica cannot derive
different views from the same documents. An update past a gap in a writer's clocks
is set aside whole (`_skips_clocks`), see docs/design-notes.md (Storage).
"""

from __future__ import annotations

import gc
import sqlite3
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from pycrdt import Doc, get_update

from crdtledger.commit import LedgerBase
from crdtledger.errors import ClockSkew, RemoteProtocolError
from crdtledger.hlc import MAX_CLOCK_SKEW_MS, decode, id_floor, id_time_ms, wall_ms
from crdtledger.lib0 import decode_state_vector, read_varuint, states_digest, write_varuint
from crdtledger.model import DOC_NAME, ID, entry_doc, ledger_doc
from crdtledger.projection import entry_change, project_deferred, project_entries, record_change
from crdtledger.storage import LoadedDoc


class Replica(LedgerBase):
    """Applying remote updates, all or nothing, and answering what a peer lacks."""

    def _project(self, ld: LoadedDoc, change: Any) -> None:
        conn, day_of = self.storage.conn, self.storage.day_of
        rules_changed = False
        fresh: list[tuple[str, Any]] = []  # entries new to the document
        projected: list[dict[str, Any]] = []
        for root, key, old, new in change.added:
            if root == "entries":
                if old is None:
                    fresh.append((key, new))
                    continue
                # Rewritten (only a misbehaving peer does that): undone and redone.
                entry = entry_change(conn, ld.name, key, old, new, day_of)
                if entry is not None:
                    projected.append(entry)
            else:
                # Read from the document, as pycrdt wraps it (the event's value is
                # the raw one, see LoadedDoc.watching).
                record_change(conn, ld.name, root, key, ld.roots[root].get(key), day_of)
                rules_changed |= root == "rules"
        if fresh:
            _check_months(ld.name, [key for key, _ in fresh], day_of)
        projected += project_entries(conn, ld.name, fresh, day_of)
        for root in change.unsure:  # LoadedDoc.watching: Yrs could not say which keys
            if root == "entries":
                # Entries are written once: only a rewrite (a misbehaving peer) gets
                # here, and which entries are new cannot be told from the document.
                raise RemoteProtocolError(f"{ld.name}: a ledger entry rewritten")
            keys = ld.roots[root].keys()  # pycrdt types Map.__iter__ as an Iterable
            change.touched.update((root, str(key)) for key in keys)
        self._observe_clocks(projected)
        for root, key in change.touched:
            value = ld.roots[root].get(key)
            if value is not None:
                record_change(conn, ld.name, root, key, value, day_of)
                rules_changed |= root == "rules"
        if rules_changed:
            self._rules = None

    def _observe_clocks(self, entries: list[dict[str, Any]]) -> None:
        """Move our clock past the remote entries just projected: once, to the latest
        of them, plus once for each stamped too far ahead, which is refused and kept
        (the latest few, without the traceback, which would keep this apply's frames
        and updates alive for as long as a peer's clock stays wrong)."""
        limit = self.clock.wall() + MAX_CLOCK_SKEW_MS
        latest = 0
        for e in entries:
            if e["node"] == self.node:
                continue
            ts = decode(e["id"].split(".", 1)[0])
            if wall_ms(ts) <= limit:
                latest = max(latest, ts)
                continue
            try:
                self.clock.observe(ts)
            except ClockSkew as err:
                self.skew_events.append(err.with_traceback(None))
        if latest:
            self.clock.observe(latest)

    # --- replication --------------------------------------------------------

    def state_vectors(self) -> dict[str, bytes]:
        return self.storage.state_vectors()

    def states_digest(self) -> bytes:
        """sync.states_digest of our state vectors, kept while the store records
        nothing: both sides of every anti-entropy round ask for it."""
        version = self.storage.version
        if self._digest is None or self._digest[0] != version:
            self._digest = (version, states_digest(self.storage.state_vectors()))
        return self._digest[1]

    def diff(self, name: str, state_vector: bytes = b"\x00") -> bytes:
        """What a peer at `state_vector` lacks of document `name`."""
        if not DOC_NAME.match(name):
            raise RemoteProtocolError(f"unknown document {name!r}")
        try:
            return bytes(self.storage.doc(name).doc.get_update(state_vector))
        except ValueError as e:
            raise RemoteProtocolError(f"bad state vector for {name}: {e}") from None

    def apply_remote(self, updates: Sequence[tuple[str, bytes]], origin: object = None
                     ) -> list[tuple[str, bytes]]:
        """Apply updates from a peer or a file, all or nothing.

        Returns what was new, per document (what to relay to other peers). A
        malformed update raises RemoteProtocolError and nothing is changed.
        """
        for name, data in updates:
            if not isinstance(name, str) or not DOC_NAME.match(name):
                raise RemoteProtocolError(f"unknown document {name!r}")
            if not isinstance(data, bytes | bytearray):
                raise RemoteProtocolError(f"update for {name} is not bytes")
        # A catch-up allocates millions of short-lived objects (events, entries), and
        # each full collection they trigger walks the whole heap: 8% of a catch-up.
        # They hold no cycles; any made meanwhile are collected after.
        collecting = gc.isenabled()
        gc.disable()
        try:
            try:
                return self._apply_remote(updates, origin, probe_first=False)
            except _GapFound:  # rolled back: again, checking every update first
                return self._apply_remote(updates, origin, probe_first=True)
        finally:
            if collecting:
                gc.enable()

    def _apply_remote(self, updates: Sequence[tuple[str, bytes]], origin: object,
                      probe_first: bool) -> list[tuple[str, bytes]]:
        """apply_remote. An update past a gap in a writer's clocks is set aside
        (_skips_clocks). Checking that costs a multi-writer update (a catch-up's diff)
        more than applying it, so unless `probe_first`, such an update is applied
        unchecked: if it integrated whole, it cannot have skipped (what integrates
        past a gap lies beyond the state vector); else it is checked then, and if it
        skipped, _GapFound rolls the whole call back to be run with `probe_first`."""
        st = self.storage
        new: list[tuple[str, bytes]] = []
        touched: list[str] = []
        with st.transaction():
            for name, received in updates:
                data = bytes(received)  # one copy, if a bytearray came
                ld = st.doc(name)
                before = ld.doc.get_state()
                checked = probe_first or _single_writer_start(data) is not None
                with ld.watching() as change:
                    try:
                        if checked and _skips_clocks(before, data):
                            continue  # wait for the diff that fills the gap (anti-entropy)
                        ld.doc.apply_update(data)
                    except BaseException as e:  # pyo3 panics are BaseExceptions
                        if isinstance(e, KeyboardInterrupt | SystemExit):
                            raise
                        raise RemoteProtocolError(f"malformed update for {name}: {e}") from None
                ld.take_updates()  # what is logged is the update or the diff, below
                after = ld.doc.get_state()
                whole = ld.settle(data, after)
                if not whole and not checked and _skips_clocks(before, data):
                    raise _GapFound
                if after == before and not (change.added or change.touched or change.unsure):
                    continue  # nothing new (a duplicate, or still waiting on a dependency)
                # What changed is logged and relayed: the update as received when it
                # integrated whole and released nothing held back before, else the diff
                # against `before`, which costs the document (its delete set is built
                # from every block) but also carries what Yrs released now and every
                # deletion we know of (LoadedDoc.settle).
                delta = data if whole else bytes(ld.doc.get_update(before))
                try:
                    self._project(ld, change)
                except sqlite3.IntegrityError as e:
                    # Remote data the checks above let through yet a projection's key
                    # refuses: the peer's fault, not a broken store (the CLI would say
                    # "store unusable", a node's loop would stop). Rolled back whole.
                    raise RemoteProtocolError(f"{name}: refused by the store ({e})") from None
                st.record(ld, [delta])
                new.append((name, delta))
                touched.append(name)
            if touched:
                try:
                    project_deferred(st.conn, st.day_of)  # entries whose funding just came
                except sqlite3.IntegrityError as e:  # as for _project above
                    raise RemoteProtocolError(f"refused by the store ({e})") from None
            st.keep_clock(self.clock.last)
        self._notify(new, origin)
        for name in dict.fromkeys(touched):
            st.maybe_compact(name)
        return new

    def remember_peer(self, node: str, states: dict[str, bytes]) -> None:
        with self.storage.transaction():
            self.storage.remember_peer(node, states, self.clock.wall())


def _check_months(doc: str, keys: Sequence[str], day_of: Callable[[int], str]) -> None:
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
    for the message only."""
    lo = hi = ""  # before 1970 (or year 0000) no id is that old: each taken carefully
    year = int(doc[7:11])
    if year > 1970:  # from the 2nd to the 27th (every month has 28 days), in UTC
        start = datetime(year, int(doc[12:14]), 2, tzinfo=UTC)
        lo, hi = (id_floor(int(t.timestamp() * 1000)) for t in (start, start + _26_DAYS))
    for key in keys:
        if not isinstance(key, str) or not ID.match(key) or lo <= key[:13] < hi:
            continue
        try:
            homes = _possible_months(key)
            home = entry_doc(key, day_of)
        except (ValueError, OverflowError, OSError):  # a time no calendar holds
            homes, home = set(), "no month"
        if doc not in homes:
            raise RemoteProtocolError(
                f"{doc}: ledger entry {key} belongs in {home}, by its id's time")


# The widest offsets of civil time from UTC (Etc/GMT+12, Pacific/Kiritimati).
_ZONE_SPAN = (timedelta(hours=-12), timedelta(hours=14))


def _possible_months(entry_id: str) -> set[str]:
    """The ledger documents of the id's month in every time zone."""
    at = datetime.fromtimestamp(id_time_ms(entry_id) / 1000, UTC)
    return {ledger_doc(f"{t.year:04d}-{t.month:02d}") for t in (at + off for off in _ZONE_SPAN)}


_26_DAYS = timedelta(days=26)


class _GapFound(Exception):
    """An update applied unchecked turned out to skip clocks (Ledger._apply_remote)."""


def _single_writer_start(update: bytes) -> tuple[int, int] | None:
    """(client, first clock) of a v1 update whose structs all come from one writer,
    else None (several writers, none, or bytes that do not parse: the caller then
    takes the general path, which judges them properly)."""
    try:
        writers, pos = read_varuint(update, 0)
        if writers != 1:  # number of writers with structs in the update
            return None
        _structs, pos = read_varuint(update, pos)
        client, pos = read_varuint(update, pos)
        return client, read_varuint(update, pos)[0]
    except ValueError:
        return None


def _skips_clocks(state: bytes, update: bytes) -> bool:
    """True if `update` holds a writer's changes past a gap in what we have of that
    writer (it was sent after updates we never received).

    Yrs integrates such changes behind a hole without moving the state vector and,
    for later edits inside them, without firing events: the projection would miss
    them for good. So they are refused whole; the diff of the next hello/state round
    brings them with what precedes them. Checked on a scratch document that holds our
    clocks as garbage-collected ranges, so the cost is the update's, not the doc's.
    """
    ours = decode_state_vector(state)
    first = _single_writer_start(update)
    if first is not None and first[1] <= ours.get(first[0], 0):
        # The usual update (one commit of one writer) that starts within what we have
        # of its writer: nothing in it can lie past a hole. The probe below would say
        # the same, at the cost of a document holding every writer's clock.
        return False
    clocks = [(c, k) for c, k in ours.items() if k > 0]
    prefix = write_varuint(len(clocks)) + b"".join(
        write_varuint(1) + write_varuint(c) + write_varuint(0) + b"\x00" + write_varuint(k)
        for c, k in clocks
    ) + b"\x00"
    probe: Doc[Any] = Doc()
    probe.apply_update(prefix)
    probe.apply_update(update)
    # What the probe holds beyond its own state vector: blocks integrated past a hole.
    beyond = get_update(probe.get_update(), probe.get_state())
    return beyond[0] != 0
