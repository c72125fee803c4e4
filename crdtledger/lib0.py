"""lib0 encoding as Yjs and Yrs write it, and what we compute from state vectors.

It sits below both `storage` (which reads the delete set of an update) and `sync`
and the replica (which compare state vectors and read an update's first writer), so
neither has to import the other for a varint.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache

from crdtledger.errors import RemoteProtocolError

# A state vector carries ~3-8 bytes per writer; ten thousand writers per document.
MAX_STATE_VECTOR_BYTES = 128 * 1024


def read_varuint(data: bytes, pos: int) -> tuple[int, int]:
    """One lib0 unsigned varint at `pos`: (value, position after it). ValueError if
    the bytes end first or it runs past 64 bits."""
    shift = value = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueError("truncated or overlong varint")
        b = data[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, pos
        shift += 7


def write_varuint(n: int) -> bytes:
    """`n` as one lib0 unsigned varint (the inverse of read_varuint)."""
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def decode_state_vector(data: bytes) -> dict[int, int]:
    """Parse a Yjs v1 state vector (varint count, then client/clock varint pairs)."""
    # A copy of the remembered parse: callers may keep or change what they get.
    return dict(_decode_state_vector(bytes(decode_checked(data))))


# Every hello and state round decodes every document's state vector, on both sides:
# with fifty writers that is thousands of varints in Python per round, while most
# vectors have not changed since the last round. So parses are remembered (by their
# bytes; a vector is a few bytes per writer, bounded by MAX_STATE_VECTOR_BYTES).
@lru_cache(maxsize=4096)
def _decode_state_vector(data: bytes) -> dict[int, int]:
    try:
        count, pos = read_varuint(data, 0)
        out = {}
        for _ in range(count):
            client, pos = read_varuint(data, pos)
            out[client], pos = read_varuint(data, pos)
    except ValueError:
        raise RemoteProtocolError("truncated state vector") from None
    if pos != len(data):
        raise RemoteProtocolError("trailing bytes after state vector")
    return out


def missing(theirs: dict[str, bytes], ours: dict[str, bytes]) -> int:
    """How many operations (clock ticks) of ours a peer at `theirs` lacks."""
    # Measured at the start of every round with every peer: documents whose vectors
    # are the same bytes (most, between peers in sync) cost one comparison, and the
    # remembered parses are read, not copied.
    total = 0
    for name, sv in ours.items():
        their_sv = theirs.get(name, b"\x00")
        if their_sv == sv:
            continue
        their = _decode_state_vector(bytes(decode_checked(their_sv)))
        for client, clock in _decode_state_vector(bytes(decode_checked(sv))).items():
            if clock > their.get(client, 0):
                total += clock - their.get(client, 0)
    return total


def decode_checked(data: bytes) -> bytes:
    """`data`, if it may be parsed as a state vector at all (bytes, bounded)."""
    if not isinstance(data, bytes | bytearray) or len(data) > MAX_STATE_VECTOR_BYTES:
        raise RemoteProtocolError("state vector is not bytes or too large")
    return data


def covers(theirs: dict[int, int], ours: dict[int, int]) -> bool:
    """True if a peer at `theirs` has everything we have at `ours`."""
    return all(theirs.get(c, 0) >= clock for c, clock in ours.items())


def states_digest(states: dict[str, bytes]) -> bytes:
    # Hash the decoded vectors, sorted by client: Yrs encodes the same state vector
    # with its clients in an order that depends on the doc's history, so replicas in
    # sync would otherwise see different digests and exchange states every round.
    return _states_digest(tuple(sorted((n, bytes(sv)) for n, sv in states.items())))


# Remembered: both sides of every anti-entropy round digest their states, which
# rarely changed since the previous round.
@lru_cache(maxsize=1024)
def _states_digest(states: tuple[tuple[str, bytes], ...]) -> bytes:
    h = hashlib.blake2b(digest_size=16)
    for name, sv in states:
        h.update(name.encode())
        h.update(b"\x00")
        for client, clock in sorted(decode_state_vector(sv).items()):
            h.update(f"{client}:{clock},".encode())
        h.update(b"\x00")
    return h.digest()


__all__ = ["MAX_STATE_VECTOR_BYTES", "covers", "decode_state_vector", "missing",
           "read_varuint", "states_digest", "write_varuint"]


def covered(rest: bytes, have: dict[int, int]) -> bool:
    """True if `rest`, what of an update lies beyond a document's state (pycrdt's
    `get_update(update, state)`), holds no structs and its delete set names only
    clocks below `have` (that state, decoded): every part of the update was
    integrated, none is held back waiting for what it builds on."""
    try:
        writers, pos = read_varuint(rest, 0)
        if writers:
            return False
        clients, pos = read_varuint(rest, pos)
        for _ in range(clients):
            client, pos = read_varuint(rest, pos)
            ranges, pos = read_varuint(rest, pos)
            for _ in range(ranges):
                clock, pos = read_varuint(rest, pos)
                length, pos = read_varuint(rest, pos)
                if clock + length > have.get(client, 0):
                    return False
    except ValueError:
        return False
    return True
