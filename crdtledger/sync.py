"""The sync protocol between two nodes, without I/O (in the manner of h11).

A `SyncSession` is one side of one connection. The code driving it (the aiohttp
transport, the simulator, a test) feeds it whole frames with `receive()`, ships what
`data_to_send()` returns, and reads `next_event()` for what happened. The session
talks to the local `Ledger` directly: it applies the peer's updates, answers its
rights requests, and, being subscribed to the ledger, forwards every update
committed here or learned from another peer, which is how updates travel hop by
hop. An update that adds nothing is not re-announced, so relays die out.

Conversation (every message: msgpack map with protocol version ``v`` and type ``t``):

    hello   {chain, node, now, digest, agree?, sw?}  first, and again for each
                                          anti-entropy round; `now` is the sender's
                                          time (the chain's, if its own clock is off),
                                          `agree` how many nodes' clocks agree with it
                                          (crdtledger.peerclock; absent: 1), `sw` the
                                          sender's release (first hello only)
    state   {logs: {node: [seq, tip]}, reply}  when digests differ; answered once
    recs    {recs, heads, certs, proofs?, more?}  log records the peer lacks / each new one,
                                          with the signed heads that cover them
                                          (crdtledger.log.Batch); `proofs`: the other
                                          side's signed head of a fork caught; `more`:
                                          a slice of a long answer, kept until its
                                          last slice
    rreq    {id, member, purse, amount, fwd?, for?}  "I am short of rights on this purse"
                                        (fwd: relayed for the branch `for` names)
    rrep    {id, granted}                 the transfer's record was sent before;
                                          0 <= granted <= money.MAX_AMOUNT

`tip` is the first 8 bytes of the hash of the last record held of that log: two
replicas at one position with different tips hold a fork, and each sends the other
that whole log so that both can prove it (Ledger.lacking). A round between nodes
already in sync is two hellos of under 100 bytes each.

A long answer to a state (a new branch joining a chain: a million records) goes in
slices of SEND_SLICE_BYTES / SEND_SLICE_RECORDS, one per turn of the driver's loop
(`busy`, `resume`), each marked `more` but the last. The receiver keeps the slices
unapplied until the last and then verifies and applies them as the one batch they
are: each log's hash chain only reaches the head its writer signed at the end of
the answer, so no slice before it can be proven on its own (docs/design-notes.md,
"A join in slices"), a step of verification or a slice of records per turn.
Frames that may depend on the answer (new records, a rights reply) wait for its
last slice; hellos and states do not.
"""

from __future__ import annotations

import sys
from collections import OrderedDict, deque
from collections.abc import Generator, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgpack

from crdtledger import __version__, platform
from crdtledger.errors import (
    ForeignChain,
    LedgerError,
    LocalProtocolError,
    RemoteProtocolError,
)
from crdtledger.hlc import MAX_CLOCK_SKEW_MS, NODE_ID

# Also re-exported: peer/, sim/, benchmarks/ and tests/ import them from here.
from crdtledger.lib0 import decode_state_vector as decode_state_vector
from crdtledger.lib0 import states_digest as states_digest
from crdtledger.log import MAX_BATCH_RECORDS, Batch, Record
from crdtledger.model import ID, PURSE
from crdtledger.money import MAX_AMOUNT
from crdtledger.peerclock import MAX_AGREE

if TYPE_CHECKING:
    from crdtledger.ledger import Ledger
    from crdtledger.replica import VerifiedBatch

# 3: `recs` slices marked `more` (a peer of 2 would apply each slice alone and drop
# what does not reach its head: refused by version instead).
# 4: month-end cuts in the logs (crdtledger.closing; a peer of 3 refuses the record).
PROTOCOL_VERSION = 4

# Limits, so a broken or hostile peer cannot make us allocate without bound.
# A release number in a hello ("0.2.0", "1.10.3rc1"): shown on the sync page.
MAX_RELEASE = 32
# One frame can carry a month's ledger document to a node that has none of it:
# 1M entries of about 150 bytes (DESIGN.md) is well under this.
MAX_FRAME_BYTES = 256 * 1024 * 1024
# Logs named in a state message: one per node that ever wrote, a few hundred.
MAX_LOGS = 65536
# The times a hello may say (ms since 1970): years 2000 to 2199. A peer's time moves
# this node's clock once enough peers agree (crdtledger.peerclock); one past year
# 9999 made every date this node computes fail, and every sale with it.
HELLO_NOW_MS = (946_684_800_000, 7_258_118_400_000)
# Rights requests awaiting an answer, each way. A counter asks once per swipe.
MAX_OPEN_REQUESTS = 1024
# Records applied per transaction of a large batch, between which the driver's loop
# gets a turn (SyncSession.resume): 0.35 s on average on the 2-core VM, 0.4-0.56 s in
# a real join beside its hub (3 December: a 100k sync file's records in 52 slices took
# 18.5 s, in one transaction 16.5 s, in slices of 1,000 20.8 s). A 100k catch-up in one
# go held a node's loop 15 s, past its peer's heartbeat, which closed the link. A slice's
# commit also checkpoints its WAL (SQLite's, inline): 4,000 records made commits of
# 2 to 4.6 s in the 1M join on a busy disk, 2,000 at most 2.6 s; the cost, about 7%
# on a 100k catch-up (more transactions), for twice the margin to the heartbeat.
APPLY_SLICE = 2000
# ... and at most this much record data: a chain's members imported in bulk are
# records of 0.4 MB (780 members each), and the 128 of the 1M data set fell in one
# slice of 4,000 that took 14 s to project. Ledger records are 260 bytes on average.
APPLY_SLICE_BYTES = 512 * 1024
# What one frame of a long answer to a state carries (record data bytes, records):
# a few MB, packed in a few ms, so the sender's loop answers its heartbeat between
# slices, and far below MAX_FRAME_BYTES, which a 1M-record answer in one frame broke.
SEND_SLICE_BYTES = 4 * 1024 * 1024
SEND_SLICE_RECORDS = 16384
# The slices of one answer kept before its last one (record data bytes): held in
# memory, as one frame of it was. Records are bounded by MAX_BATCH_RECORDS (4M).
# At most an eighth of this machine's memory (2 GiB at the most, 256 MiB at the
# least): parsed, kept and verified, an answer takes a few times its bytes, and a
# branch with a valid certificate that lies could otherwise send a 4 GB shop PC
# 2 GiB of records of its own log, refused only once all had come. A 1M-entry join
# keeps 317 MB.
MAX_STAGED_BYTES = min(2 * 1024**3, max(256 * 1024**2,
                                        (platform.physical_memory() or 1 << 34) // 8))
# Per record on top of its data, for slicing by bytes (node, seq, doc and framing).
_RECORD_OVERHEAD = 48
# Frames a peer may send while its answer is applied (minutes, for a million records),
# kept for after it: live records and hellos, a few MB at a busy hub's rate.
MAX_BACKLOG_BYTES = 64 * 1024 * 1024
# Slices of one answer kept before its last: an answer of MAX_BATCH_RECORDS (4M) in
# slices of SEND_SLICE_RECORDS is 245; a liar's endless empty slices are refused.
MAX_STAGED_SLICES = 4096
# Per slice and per head kept, on top of records and certificates (the objects).
_SLICE_OVERHEAD = 512
_HEAD_OVERHEAD = 160


def _kept_bytes(batch: Batch) -> int:
    """What a slice kept until its answer's last costs, near enough: its records,
    certificates, heads and proofs."""
    return (_SLICE_OVERHEAD
            + sum(len(r.data) + len(r.doc) + _RECORD_OVERHEAD for r in batch.recs)
            + sum(len(c) + len(n) for n, c in batch.certs.items())
            + _HEAD_OVERHEAD * (len(batch.heads) + len(batch.proofs)))

_EMPTY_UPDATE = b"\x00\x00"


@dataclass(frozen=True)
class PeerHello:
    node: str
    chain: str
    skew_ms: int


@dataclass(frozen=True)
class ClockSkewSeen:
    node: str
    skew_ms: int


@dataclass(frozen=True)
class ClockHeard:
    """Every hello: the peer's time minus this machine's clock, and how many nodes'
    clocks agree with the peer's (crdtledger.peerclock)."""

    node: str
    offset_ms: int
    agree: int


@dataclass(frozen=True)
class UpdatesApplied:
    doc: str
    size: int
    new: bool


@dataclass(frozen=True)
class RightsGranted:
    request: int
    node: str
    amount: int


@dataclass(frozen=True)
class RightsAnswered:
    """A peer asked us for rights; `amount` is what we gave (0: nothing to spare)."""

    request: int
    node: str
    member: str
    purse: str
    amount: int


@dataclass(frozen=True)
class RightsRequested:
    """A peer asks for rights and this session relays (`relay_rights`): the driver may
    first fetch rights from its other peers, then must call `answer_rights(request)`."""

    request: int
    node: str
    member: str
    purse: str
    amount: int


Event = (PeerHello | ClockSkewSeen | ClockHeard | UpdatesApplied | RightsGranted
         | RightsAnswered | RightsRequested)


class VersionMismatch(RemoteProtocolError):
    """The peer speaks another version of this protocol: nothing it sends can be read.

    Its message names both sides' protocol and release (the release is in the first
    hello of a peer from 0.2.0 on), so an owner reading it on the sync page or in the
    log knows which node to upgrade; the session fails and the node redials with its
    backoff, which heals by itself once both run releases that speak one version."""

    code = "protocol_version"

    def __init__(self, theirs: object, release: object) -> None:
        said = (f"crdtledger {release}"
                if isinstance(release, str) and release.isprintable()
                and len(release) <= MAX_RELEASE else "an older crdtledger")
        shown = theirs if isinstance(theirs, int) and not isinstance(theirs, bool) else "?"
        super().__init__(
            f"the peer speaks sync protocol {shown} ({said}) and this node "
            f"protocol {PROTOCOL_VERSION} (crdtledger {__version__}): they cannot sync "
            "until both run releases that speak one version (see CHANGELOG.md)")
        self.theirs = theirs
        self.release = release


def pack(message: dict[str, Any]) -> bytes:
    return bytes(msgpack.packb({"v": PROTOCOL_VERSION, **message}, use_bin_type=True))


# The maps and lists a frame may make: a few, plus one per 16 bytes. msgpack makes an
# empty map of one byte, and a Python dict costs 64 bytes or more: one peer's 8 MiB
# frame of empty maps (8 KB on the wire, compressed) held 594 MiB, 18 GiB at the frame
# limit. Real frames make one per 25 bytes or fewer (a log's position, a record); the
# smallest a few in 18 bytes, hence the few.
FRAME_CONTAINERS_FREE = 256
FRAME_BYTES_PER_CONTAINER = 16


class TooManyContainers(Exception):
    """msgpack that makes more maps and lists than any message of its size."""


def unpackb_bounded(data: bytes | bytearray) -> Any:
    """`data` decoded as msgpack (keys text only, bin as bytes), raising
    TooManyContainers once it makes more maps and lists than FRAME_CONTAINERS_FREE
    plus one per FRAME_BYTES_PER_CONTAINER bytes: before they are all built. A sync
    file's body is read with it too (syncfile.read_file): it made the same dict per
    byte, 74 bytes of memory per byte of file (a 2 GiB file, some 150 GB)."""
    left = [FRAME_CONTAINERS_FREE + len(data) // FRAME_BYTES_PER_CONTAINER]

    def counted(container: Any) -> Any:  # called as each map or list is made
        left[0] -= 1
        if left[0] < 0:
            raise TooManyContainers
        return container

    return msgpack.unpackb(data, raw=False, strict_map_key=True, list_hook=counted,
                           object_hook=counted)


def unpack(frame: bytes) -> dict[str, Any]:
    if not isinstance(frame, bytes | bytearray):
        raise RemoteProtocolError("frame is not binary")
    if len(frame) > MAX_FRAME_BYTES:
        raise RemoteProtocolError(f"frame of {len(frame)} bytes exceeds {MAX_FRAME_BYTES}")
    try:
        msg = unpackb_bounded(frame)
    except TooManyContainers:
        raise RemoteProtocolError(f"frame of {len(frame)} bytes holds more maps and lists "
                                  "than any message of its size") from None
    except Exception as e:  # msgpack raises several unrelated types
        raise RemoteProtocolError(f"frame is not msgpack: {e}") from None
    if not isinstance(msg, dict):
        raise RemoteProtocolError("frame is not a map")
    if msg.get("v") != PROTOCOL_VERSION:
        raise VersionMismatch(msg.get("v"), msg.get("sw") if msg.get("t") == "hello" else None)
    return msg


def _get(msg: dict[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    value = msg.get(key)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise RemoteProtocolError(f"{msg.get('t')} message: field {key!r} missing or malformed")
    return value


def parse_logs(value: Any) -> dict[str, tuple[int, bytes]]:
    """A peer's or a file's view of the logs ({node: [seq, tip]}), checked."""
    if not isinstance(value, dict) or len(value) > MAX_LOGS:
        raise RemoteProtocolError("state: logs missing or malformed")
    out: dict[str, tuple[int, bytes]] = {}
    for node, held in value.items():
        if (not isinstance(node, str) or not NODE_ID.match(node) or not isinstance(held, list)
                or len(held) != 2 or isinstance(held[0], bool) or not isinstance(held[0], int)
                or not 0 <= held[0] < 2**62 or not isinstance(held[1], bytes)
                or len(held[1]) > 32):
            raise RemoteProtocolError(f"state: malformed log position of {str(node)[:20]}")
        out[node] = (held[0], bytes(held[1]))
    return out


def wire_logs(view: Mapping[str, tuple[int, bytes]]) -> dict[str, list[Any]]:
    return {n: [s, t] for n, (s, t) in view.items()}


class SyncSession:
    """One side of a sync conversation with one peer."""

    def __init__(self, ledger: Ledger, *, expect_node: str | None = None) -> None:
        self.ledger = ledger
        self.expect_node = expect_node
        self.peer: str | None = None
        # The peer's release as its first hello said (None: a peer before 0.2.0).
        self.peer_release: str | None = None
        self.closed = False
        # Why the session failed (a protocol error from the peer), else None. Like
        # h11's ERROR state: once the conversation is broken nothing later in it can
        # be trusted, so the session refuses every call itself rather than count on
        # its driver to close it.
        self.failed: str | None = None
        self._started = False
        self._out: list[bytes] = []
        self._events: deque[Event] = deque()
        self._next_request = 1
        self._open_requests: dict[int, tuple[str, str, int]] = {}
        # What we granted per request id of the peer: a request seen twice (a resent
        # or duplicated frame) gets the same answer, never a second transfer.
        self._answered: OrderedDict[int, int] = OrderedDict()
        # Requests handed to the driver to relay, until it answers them.
        self._relaying: dict[int, tuple[str, str, int]] = {}
        # Shops behind NAT dial a hub, never each other: a hub that holds too little
        # for a request can fetch the rest from its other peers before answering. A
        # relayed request is marked `fwd` and is never relayed again, so requests
        # cannot loop; one hop through a hub is what the deployment needs.
        self.relay_rights = False
        self.bytes_in = 0
        self.bytes_out = 0
        self.rounds = 0
        # The peer's view of the logs as of the last round (None before the first):
        # how far behind either side is, for a node's sync status.
        self.peer_states: Mapping[str, tuple[int, bytes]] | None = None
        # When both sides say hello at once, each gets the other's state twice (its
        # own and the reply) carrying the same view: what it lacks goes out once.
        self._answered_view: dict[str, tuple[int, bytes]] | None = None
        # How far each log went out in our answers on this link: a state the peer sent
        # before they reached it (its round crossed a long answer on the line, or came
        # while it applied one) does not bring them again. The link is ordered and
        # reliable, and a lost link starts a new session, with nothing marked.
        self._sent_through: dict[str, int] = {}
        # Records committed or learned here since the last frame, sent as one batch.
        self._pending: list[Record] = []
        self._certs_sent: set[tuple[str, bytes]] = set()
        # A batch being applied in slices, and the frames that came meanwhile.
        # What verifying it decided, or the verification still under way (its steps).
        self._applying: tuple[VerifiedBatch | Generator[None, None, VerifiedBatch],
                              Batch] | None = None
        self._backlog: list[bytes] = []
        self._late = False  # handling the backlog: a hello's time is not of now
        # A long answer being sent in slices: the whole batch (records, heads as of
        # when it was read) and how many records went; frames that must follow it.
        self._sending: _Answer | None = None
        self._after: list[bytes] = []
        # Slices of the peer's long answer received so far, and their record bytes.
        self._staged: list[Batch] = []
        self._staged_bytes = 0
        self._staged_records = 0
        self._backlog_bytes = 0  # of the frames in _backlog
        self._unsubscribe = ledger.subscribe(self._on_commit)

    # --- driving side --------------------------------------------------------

    def start(self) -> None:
        """Queue our hello. Call once, before anything else is sent."""
        if self._started:
            raise LocalProtocolError("session already started")
        self._started = True
        self._send_hello(first=True)

    def anti_entropy(self) -> None:
        """Queue a new round: a hello with our digest; the peer asks only if it differs."""
        self._require_open()
        self._send_hello()

    def request_rights(self, member: str, purse: str, amount: int, *,
                       forwarded: bool = False, asker: str | None = None) -> int:
        """Ask the peer for `amount` of rights on a purse; answered by RightsGranted.
        `forwarded`: asked on behalf of another peer (`asker`, whose budget the giver
        counts it against: escrow.GrantBudget); the peer must not relay it."""
        self._require_open()
        if self.peer is None:
            raise LocalProtocolError("peer has not said hello yet")
        if len(self._open_requests) >= MAX_OPEN_REQUESTS:
            raise LocalProtocolError("too many open rights requests")
        # Checked here, so that our own mistake is not sent and then blamed on us by
        # the peer as a malformed request (which closes the connection).
        if (not isinstance(member, str) or not ID.match(member) or not isinstance(purse, str)
                or not PURSE.match(purse) or isinstance(amount, bool)
                or not isinstance(amount, int) or not 0 < amount < 2**53):
            raise LocalProtocolError(f"bad rights request: {member!r} {purse!r} {amount!r}")
        rid = self._next_request
        self._next_request += 1
        self._open_requests[rid] = (member, purse, amount)
        self._queue({"t": "rreq", "id": rid, "member": member, "purse": purse, "amount": amount,
                     **({"fwd": True} if forwarded else {}),
                     **({"for": asker} if forwarded and asker else {})})
        return rid

    def answer_rights(self, request: int) -> None:
        """Grant what we can now to a request handed out as RightsRequested."""
        self._require_open()
        if request not in self._relaying:
            raise LocalProtocolError(f"no rights request {request} is waiting for an answer")
        member, purse, amount = self._relaying.pop(request)
        self._grant(request, member, purse, amount)

    @property
    def has_output(self) -> bool:
        """Might data_to_send return frames? False means it would not (cheaper to ask
        than to call it: a hub asks every session after every frame)."""
        return bool(self._out) or (bool(self._pending) and not self.closed)

    def data_to_send(self) -> list[bytes]:
        """Frames to ship, in order. Nothing once closed or failed: what a failed
        conversation queued (replies to frames before the bad one) is dropped with it."""
        self._flush()
        out, self._out = self._out, []
        return out

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    def close(self) -> None:
        """Stop forwarding ledger updates to this peer. Idempotent."""
        if not self.closed:
            self.closed = True
            self._unsubscribe()
            self._out.clear()
            self._pending.clear()
            work = self._applying[0] if self._applying is not None else None
            self._applying = None
            if not isinstance(work, Generator | None) and work.new is not None:
                # Applied whole, its listeners being told a step per turn: the rest
                # are told now, and its documents compacted (an erasure in it purged),
                # as its last step would have done.
                self.ledger.apply_verified(work, origin=self)
            self._backlog.clear()
            self._sending = None
            self._after.clear()
            self._staged.clear()

    def _fail(self, error: RemoteProtocolError) -> None:
        """Enter the failed state: closed (so drivers that test `closed` leave it
        alone), remembering why, so every later call says so."""
        if self.failed is None:
            self.failed = str(error) or type(error).__name__
        self.close()

    # --- receiving side ---------------------------------------------------------

    def receive(self, frame: bytes) -> None:
        """Handle one frame from the peer. Raises RemoteProtocolError on anything
        malformed or out of order; the session has then failed (every later call
        raises LocalProtocolError) and the caller should close the connection.
        Nothing is half-applied either way."""
        self._require_open()
        if self._applying is not None:  # after the batch being applied (resume)
            self._wait([frame])
            return
        try:
            msg = unpack(frame)
            self.bytes_in += len(frame)
            self._dispatch(msg)
        except RemoteProtocolError as e:  # ForeignChain included
            self._fail(e)
            raise

    def receive_frames(self, frames: Iterable[bytes]) -> None:
        """Handle frames that arrived together, in order, as `receive` would one by
        one, except that consecutive `recs` frames are taken as one batch (one
        verification, one transaction per slice): one commit for a catch-up burst
        instead of one per frame.

        A batch of more than APPLY_SLICE records is applied a slice at a time (and
        one of more than replica.VERIFY_STEP verified a step at a time): after the
        first, `busy` is True and the driver must call `resume()` (at its loop's
        next turn, so that it keeps answering meanwhile) until it is False; frames
        received meanwhile wait their turn.

        On a malformed frame, what came before it is handled (the pending records
        applied) and RemoteProtocolError is raised, as by `receive`; the session has
        then failed all the same."""
        self._require_open()
        if self._applying is not None:
            self._wait(frames)
            return
        pending = list(frames)
        run: list[Batch] = []
        more = False  # the run's last frame is a slice of a longer answer
        try:
            try:
                for i, frame in enumerate(pending):
                    msg = unpack(frame)
                    if msg.get("t") == "recs" and self.peer is not None:
                        self.bytes_in += len(frame)
                        # Both fields read before the batch joins the run: a frame
                        # whose `more` was malformed had its records applied with the
                        # run (the `finally` below) while the frame was refused.
                        batch, last_more = Batch.from_wire(msg), _more(msg)
                        run.append(batch)
                        more = last_more
                        continue
                    if run:
                        taken, run = run, []
                        if not self._take(taken, more):
                            self._backlog = pending[i:]  # after the batch's last slice
                            self._backlog_bytes = sum(len(f) for f in self._backlog)
                            return
                    self.bytes_in += len(frame)
                    self._dispatch(msg)
            finally:
                if run:  # the end of the frames, or a malformed one: apply what came
                    self._take(run, more, whole=sys.exc_info()[0] is not None)
        except RemoteProtocolError as e:
            self._fail(e)
            raise

    def _wait(self, frames: Iterable[bytes]) -> None:
        """Keep frames that came while a batch is applied, for after it; a peer that
        sends more than MAX_BACKLOG_BYTES meanwhile fails the session (a liar kept
        the batch unfinished by reading slowly and sent 4 MiB frames: all kept)."""
        for frame in frames:
            self._backlog.append(frame)
            self._backlog_bytes += len(frame)
        if self._backlog_bytes > MAX_BACKLOG_BYTES:
            error = RemoteProtocolError(
                f"more than {MAX_BACKLOG_BYTES >> 20} MiB sent while its answer was "
                "applied")
            self._fail(error)
            raise error

    @property
    def busy(self) -> bool:
        """A batch is being applied, or a long answer sent, in slices: call `resume()`."""
        return self._applying is not None or self._sending is not None

    def resume(self) -> None:
        """Queue the next slice of the answer being sent; apply the next slice of the
        batch being applied, and once it is done, handle the frames that waited."""
        self._require_open()
        self._send_slice()
        if self._applying is None:
            return
        try:
            if not self._step():
                return
        except RemoteProtocolError as e:
            self._fail(e)
            raise
        backlog, self._backlog, self._backlog_bytes = self._backlog, [], 0
        if backlog:
            # Handled now, they came while the batch was applied (minutes, a joining
            # branch's million records): the time in their hellos is that old.
            self._late = True
            try:
                self.receive_frames(backlog)
            finally:
                self._late = False

    def _take(self, run: list[Batch], more: bool, whole: bool = False) -> bool:
        """Consecutive `recs` frames: kept if the last is a slice of a longer answer
        (`more`), else applied with the slices kept before them, as one batch. True if
        nothing remains to apply (see `_apply`)."""
        self._staged.extend(run)
        # Everything a slice keeps counts, and is counted once: a liar's slices of no
        # records but 16 KiB certificates were kept uncounted (375 MiB, the limit never
        # reached), and re-counting every slice kept at each new one made 60,000 empty
        # slices cost quadratic time on the node's loop.
        self._staged_bytes += sum(_kept_bytes(b) for b in run)
        self._staged_records += sum(len(b.recs) for b in run)
        if (self._staged_bytes > MAX_STAGED_BYTES or self._staged_records > MAX_BATCH_RECORDS
                or len(self._staged) > MAX_STAGED_SLICES):
            raise RemoteProtocolError(
                f"records: an answer of more than {MAX_BATCH_RECORDS} records, "
                f"{MAX_STAGED_SLICES} slices or {MAX_STAGED_BYTES >> 20} MiB (a chain that "
                "large needs period closing)")
        if more:
            return True
        batch = _merge(self._staged)
        self._staged, self._staged_bytes, self._staged_records = [], 0, 0
        return self._apply(batch, whole)

    def _apply(self, batch: Batch, whole: bool = False) -> bool:
        """Start verifying and applying a batch; True if it is all applied already."""
        self._applying = (self.ledger.verify_steps(batch), batch)
        while not self._step():
            if not whole:
                return False
        return True

    def _step(self) -> bool:
        """One step of the batch: a step of its verification, or else (a short batch's
        whole verification included) a slice of its records applied."""
        if self._applying is None:
            return True
        work, batch = self._applying
        try:
            if isinstance(work, Generator):
                try:
                    next(work)
                    return False
                except StopIteration as done:
                    work = done.value
                    self._applying = (work, batch)
            new = self.ledger.apply_verified(work, origin=self, limit=APPLY_SLICE,
                                             max_bytes=APPLY_SLICE_BYTES)
        except BaseException:
            self._applying = None
            raise
        if new is None:
            return False
        self._applying = None
        fresh = {r.doc for r in new}
        sizes: dict[str, int] = {}
        for rec in batch.recs:
            sizes[rec.doc] = sizes.get(rec.doc, 0) + len(rec.data)
        for name, size in sizes.items():
            self._events.append(UpdatesApplied(name, size, name in fresh))
        if self.peer_states is not None:
            self.ledger.peer_caught_up(self.peer_states, self.peer)
        return True

    def _dispatch(self, msg: dict[str, Any]) -> None:
        kind = msg.get("t")
        if not isinstance(kind, str):  # a list or a map is no key of the table below
            raise RemoteProtocolError(f"message type {str(kind)[:40]} is not a name")
        if kind != "hello" and self.peer is None:
            raise RemoteProtocolError(f"{kind!r} before hello")
        handler = {
            "hello": self._on_hello,
            "state": self._on_state,
            "recs": self._on_recs,
            "rreq": self._on_rights_request,
            "rrep": self._on_rights_reply,
        }.get(kind)
        if handler is None:
            raise RemoteProtocolError(f"unknown message type {kind!r}")
        handler(msg)

    def _on_hello(self, msg: dict[str, Any]) -> None:
        self._answered_view = None  # a new round
        chain = _get(msg, "chain", str)
        node = _get(msg, "node", str)
        now = _get(msg, "now", int)
        digest = _get(msg, "digest", bytes)
        if chain != self.ledger.chain:
            raise ForeignChain(f"peer {node} belongs to chain {chain!r}, not {self.ledger.chain!r}")
        if not HELLO_NOW_MS[0] <= now < HELLO_NOW_MS[1]:
            raise RemoteProtocolError(f"hello message: {now} ms is no time a clock shows")
        if not NODE_ID.match(node) or node == self.ledger.node:
            raise RemoteProtocolError(f"peer claims node id {node!r}")
        if self.expect_node is not None and node != self.expect_node:
            raise RemoteProtocolError(f"peer claims {node}, expected {self.expect_node}")
        if self.peer is not None and node != self.peer:
            raise RemoteProtocolError(f"peer changed its node id from {self.peer} to {node}")
        agree = msg.get("agree", 1)  # optional: peers before it tell nothing
        if isinstance(agree, bool) or not isinstance(agree, int) or not 0 < agree <= MAX_AGREE:
            raise RemoteProtocolError("hello message: field 'agree' malformed")
        release = msg.get("sw")  # optional: peers before 0.2.0 tell nothing
        if release is not None:
            if not isinstance(release, str) or not 0 < len(release) <= MAX_RELEASE:
                raise RemoteProtocolError("hello message: field 'sw' malformed")
            self.peer_release = release
        # Against this machine's own clock, not the corrected one: the correction is
        # made from these offsets and must not feed back into them.
        skew = now - self.ledger.clock.raw_wall()
        first = self.peer is None
        if first:
            self.peer = node
            self._events.append(PeerHello(node, chain, skew))
        if not self._late:  # a late one's offset is its wait (2 min 20 s in a 1M join)
            if abs(skew) > MAX_CLOCK_SKEW_MS:
                self._events.append(ClockSkewSeen(node, skew))
            self._events.append(ClockHeard(node, skew, agree))
        self.rounds += 1
        view = self.ledger.log_view()
        if digest != self.ledger.states_digest():
            self._queue({"t": "state", "logs": wire_logs(view)})
        else:
            self.peer_states = view
            if first:  # a branch synced with is known here (payments._require_branch)
                self.ledger.remember_peer(node, {n: s for n, (s, _) in view.items()})
            self.ledger.peer_caught_up(view, node)  # the same logs as ours: its view

    def _on_state(self, msg: dict[str, Any]) -> None:
        theirs = parse_logs(msg.get("logs"))
        peer = self._peer()
        self.ledger.remember_peer(peer, {n: s for n, (s, _) in theirs.items()})
        self.peer_states = theirs
        self.ledger.peer_caught_up(theirs, peer)
        view = self.ledger.log_view()
        # When both sides say hello at once, each gets the other's state twice with
        # the same view: what it lacks goes out once; what we got since went live.
        # A long answer still going out covers this round too: the next round after
        # its last slice asks again for what came meanwhile.
        if theirs != self._answered_view and self._sending is None:
            self._answered_view = theirs
            after = self.ledger.lacking_after(theirs)
            for node, sent in self._sent_through.items():
                if after.get(node, sent) < sent:
                    after[node] = sent
            held = self.ledger.positions()
            show = self.ledger.behind(theirs)
            prove = self.ledger.to_prove(theirs)
            # With every certificate: a round is what heals a session that lost a
            # frame, the one that first carried a certificate included. The heads are
            # read now: a slice sent later must not carry a head that moved past what
            # the answer holds (records that came meanwhile are sent after it).
            if sum(held.get(n, 0) - a for n, a in after.items()) > SEND_SLICE_RECORDS:
                # Long: read a slice at a time from the store (a million records read
                # at once held the loop for tens of seconds).
                self._flush()
                whole = self.ledger.batch([], show=[*after, *show], prove=prove)
                self._sending = _Answer(self.ledger, whole, after)
                self._mark_sent(after, whole)
                self._send_slice()
            else:
                records = self.ledger.storage.log.records_after(after)
                if records or show or prove:
                    self._flush()
                    whole = self.ledger.batch(records, show=show, prove=prove)
                    self._mark_sent(after, whole)
                    if _fits(whole.recs):
                        self._queue_frame({"t": "recs", **whole.to_wire()})
                    else:
                        self._sending = _Answer(self.ledger, whole, None)
                        self._send_slice()
        # The peer's state answered our hello; answer with ours so it can send what
        # we lack. A reply is not answered again, which ends the round.
        if not msg.get("reply") and view != theirs:
            self._queue({"t": "state", "logs": wire_logs(view), "reply": True})

    def _mark_sent(self, after: Mapping[str, int], answer: Batch) -> None:
        """An answer queued: each log in it goes out up to the head it carries."""
        for node, head in answer.heads.items():
            if node in after and head.seq > self._sent_through.get(node, 0):
                self._sent_through[node] = head.seq

    def _on_recs(self, msg: dict[str, Any]) -> None:
        # One frame: `receive` has no resume.
        self._take([Batch.from_wire(msg)], _more(msg), whole=True)

    def _on_rights_request(self, msg: dict[str, Any]) -> None:
        rid = _get(msg, "id", int)
        member = _get(msg, "member", str)
        purse = _get(msg, "purse", str)
        amount = _get(msg, "amount", int)
        if not ID.match(member) or not PURSE.match(purse) or not 0 < amount < 2**53:
            raise RemoteProtocolError("malformed rights request")
        asker = msg.get("for")  # optional: a relayed request names whom it is for
        if asker is not None and (not msg.get("fwd") or not isinstance(asker, str)
                                  or not NODE_ID.match(asker)):
            raise RemoteProtocolError("malformed rights request: field 'for'")
        peer = self._peer()
        if rid in self._answered:
            self._queue({"t": "rrep", "id": rid, "granted": self._answered[rid]})
            return
        if rid in self._relaying:
            return  # a duplicate of a request being relayed: it is answered once
        if self.relay_rights and not msg.get("fwd"):
            if len(self._relaying) >= MAX_OPEN_REQUESTS:
                raise RemoteProtocolError("too many rights requests at once")
            self._relaying[rid] = (member, purse, amount)
            self._events.append(RightsRequested(rid, peer, member, purse, amount))
            return
        self._grant(rid, member, purse, amount, asker)

    def _grant(self, rid: int, member: str, purse: str, amount: int,
               asker: str | None = None) -> None:
        peer = self._peer()
        granted = 0
        try:
            entry = self.ledger.grant_rights(member, purse, peer, amount, asker=asker)
            granted = int(entry["amount"]) if entry else 0
        except LedgerError:
            granted = 0  # unknown member here, or nothing to spare: answer "none"
        self._answered[rid] = granted
        if len(self._answered) > MAX_OPEN_REQUESTS:
            self._answered.popitem(last=False)
        # The transfer's update was queued by _on_commit during grant_rights, so the
        # peer holds the rights before it reads this reply.
        self._queue({"t": "rrep", "id": rid, "granted": granted})
        self._events.append(RightsAnswered(rid, peer, member, purse, granted))

    def _on_rights_reply(self, msg: dict[str, Any]) -> None:
        rid = _get(msg, "id", int)
        granted = _get(msg, "granted", int)
        if not 0 < rid < self._next_request:
            raise RemoteProtocolError(f"reply to unknown rights request {rid}")
        if not 0 <= granted <= MAX_AMOUNT:
            # A grant is one transfer entry (escrow.grant_amount): nothing honest says
            # more. What a reply claims is not taken on its word either: the asker
            # counts what reached its store (core.NodeCore._arrived).
            raise RemoteProtocolError(f"rights reply {rid} claims {granted} granted, "
                                      f"more than one transfer moves ({MAX_AMOUNT})"
                                      if granted > 0 else
                                      f"rights reply {rid} claims {granted} granted")
        if rid not in self._open_requests:
            return  # a duplicate of a reply already handled
        del self._open_requests[rid]
        peer = self._peer()
        self._events.append(RightsGranted(rid, peer, granted))

    # --- internals -----------------------------------------------------------

    def _on_commit(self, record: Record, origin: object) -> None:
        if origin is self or self.closed or not self._started:
            return
        self._pending.append(record)

    def _flush(self) -> None:
        """Send the records committed or learned since the last frame, as one batch
        with the heads that cover them: one signature of our own log per batch."""
        if self._pending and not self.closed:
            records, self._pending = self._unheld(self._pending), []
            if records:
                self._queue_frame(self._batch_message(records))

    def _unheld(self, records: list[Record]) -> list[Record]:
        """`records` but those the peer said it holds (its last state): a branch that
        joined from one hub relayed the whole million-record answer to the other hub,
        which held it, in one batch built in one turn. A position counts as held only
        where our log's hash there is the peer's tip: below it, the chains agree, so
        a side of a fork still goes to the peer. A fresh record lies past the peer's
        tip and costs a lookup in a dict."""
        theirs = self.peer_states
        if not theirs:
            return records
        held: dict[str, int] = {}
        out = []
        for rec in records:
            seq, tip = theirs.get(rec.node, (0, b""))
            if rec.seq <= seq:
                if rec.node not in held:
                    held[rec.node] = seq if self.ledger.agrees_at(rec.node, seq, tip) else 0
                if rec.seq <= held[rec.node]:
                    continue
            out.append(rec)
        return out

    def _batch_message(self, records: list[Record]) -> dict[str, Any]:
        batch = self.ledger.batch(records, certs_sent=self._certs_sent)
        return {"t": "recs", **batch.to_wire()}

    def _send_hello(self, first: bool = False) -> None:
        self._answered_view = None
        self._queue({
            "t": "hello", "chain": self.ledger.chain, "node": self.ledger.node,
            "now": self.ledger.clock.wall(),
            "digest": self.ledger.states_digest(),
            **({"agree": self.ledger.clock.agree} if self.ledger.clock.agree > 1 else {}),
            # Our release, once per connection (rounds stay small): the peer shows it,
            # and names it if it cannot speak our protocol version.
            **({"sw": __version__} if first else {}),
        })

    def _queue(self, message: dict[str, Any]) -> None:
        self._flush()  # records before what may depend on them (a grant's reply)
        self._queue_frame(message)

    def _queue_frame(self, message: dict[str, Any]) -> None:
        frame = pack(message)
        self.bytes_out += len(frame)
        # While a long answer goes out, what may depend on it waits for its last
        # slice (the peer applies nothing before it); hellos and states carry the
        # time and the view of now.
        if self._sending is not None and message["t"] not in ("hello", "state"):
            self._after.append(frame)
        else:
            self._out.append(frame)

    def _send_slice(self) -> None:
        """Queue the next slice of the long answer being sent: its records, the heads
        (as read when the answer began) and certificates of their logs; the first also
        carries every head of the answer (those of `show` included) and its proofs.
        The receiver merges them all: each head is checked once."""
        answer = self._sending
        if answer is None:
            return
        recs, last = answer.next()
        whole = answer.whole
        part = Batch(recs=recs)
        logs = dict.fromkeys(r.node for r in recs)
        if answer.first:
            answer.first = False
            logs.update(dict.fromkeys(whole.heads))
            part.proofs = dict(whole.proofs)
            part.certs.update({n: c for n, c in whole.certs.items() if n in whole.proofs})
        part.heads = {n: whole.heads[n] for n in logs}
        part.certs.update({n: whole.certs[n] for n in logs if n in whole.certs})
        frame = pack({"t": "recs", **part.to_wire(), **({} if last else {"more": True})})
        self.bytes_out += len(frame)
        self._out.append(frame)
        if last:
            self._sending = None
            self._out.extend(self._after)
            self._after.clear()

    def _peer(self) -> str:
        """The peer's node id; only messages after its hello get here (`_dispatch`)."""
        if self.peer is None:
            raise RemoteProtocolError("message before hello")
        return self.peer

    def _require_open(self) -> None:
        if self.failed is not None:
            raise LocalProtocolError(f"session failed earlier: {self.failed}")
        if self.closed:
            raise LocalProtocolError("session is closed")
        if not self._started:
            raise LocalProtocolError("call start() first")


class _Answer:
    """A long answer being sent, a slice at a time: the heads and certificates read
    when it began (`whole`), and its records, either in `whole.recs` or, when `after`
    is given, read from the store in its order (`records.pos`, as `lacking` sorts
    them): each log past the position in `after` and up to the head read then."""

    def __init__(self, ledger: Ledger, whole: Batch, after: dict[str, int] | None) -> None:
        self.whole = whole
        self.first = True
        self._conn = ledger.storage.log.conn
        self._after = after
        self._caps = {n: h.seq for n, h in whole.heads.items()}
        self._buffer: deque[Record] = deque(whole.recs)
        self._pos = 0
        self._done = after is None
        if after:
            starts = [row[0] for n, a in after.items() if n in self._caps
                      for row in self._conn.execute(
                          "SELECT pos FROM records WHERE node = ? AND seq = ?", (n, a + 1))]
            self._pos = min(starts, default=0) - 1
            if not starts:
                self._done = True

    def _read(self) -> None:
        """The next SEND_SLICE_RECORDS rows of the store, those of the answer kept."""
        after, caps = self._after or {}, self._caps
        rows = self._conn.execute(
            "SELECT pos, node, seq, doc, data FROM records WHERE pos > ? ORDER BY pos "
            "LIMIT ?", (self._pos, SEND_SLICE_RECORDS)).fetchall()
        if not rows:
            self._done = True
            return
        self._pos = rows[-1][0]
        self._buffer.extend(Record(n, s, d, bytes(b)) for _, n, s, d, b in rows
                            if n in caps and after.get(n, 1 << 62) < s <= caps[n])

    def next(self) -> tuple[list[Record], bool]:
        """The next slice's records, and whether it is the answer's last."""
        while not self._buffer and not self._done:
            self._read()
        out: list[Record] = []
        size = 0
        while self._buffer and len(out) < SEND_SLICE_RECORDS:
            rec = self._buffer[0]
            cost = len(rec.data) + _RECORD_OVERHEAD
            if out and size + cost > SEND_SLICE_BYTES:
                break
            out.append(self._buffer.popleft())
            size += cost
        while not self._buffer and not self._done:  # is anything left?
            self._read()
        return out, not self._buffer


def _more(msg: dict[str, Any]) -> bool:
    more = msg.get("more", False)
    if not isinstance(more, bool):
        raise RemoteProtocolError("records: field 'more' malformed")
    return more


def _fits(records: list[Record]) -> bool:
    """Does an answer of these records go in one frame?"""
    if len(records) > SEND_SLICE_RECORDS:
        return False
    return sum(len(r.data) for r in records) + _RECORD_OVERHEAD * len(records) <= SEND_SLICE_BYTES


def _merge(batches: list[Batch]) -> Batch:
    """Consecutive batches as one (applied in one transaction): the records in order,
    for each log the highest head, which covers the records of the lower ones."""
    if len(batches) == 1:
        return batches[0]
    out = Batch()
    for b in batches:
        out.recs.extend(b.recs)
        out.certs.update(b.certs)
        for node, head in b.heads.items():
            if node not in out.heads or head.seq > out.heads[node].seq:
                out.heads[node] = head
        out.proofs.update(b.proofs)
    return out
