"""lib0 encoding as Yjs and Yrs write it, and what we compute from state vectors.

It sits below `storage`, `sync`, the replica and the write rules (which read state
vectors, an update's first writer and what of an update is left unintegrated), so
none of them has to import another for a varint.
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
    if pos < len(data):  # one byte: most counts, lengths and small clocks
        b = data[pos]
        if b < 0x80:
            return b, pos + 1
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


def decode_checked(data: bytes) -> bytes:
    """`data`, if it may be parsed as a state vector at all (bytes, bounded)."""
    if not isinstance(data, bytes | bytearray) or len(data) > MAX_STATE_VECTOR_BYTES:
        raise RemoteProtocolError("state vector is not bytes or too large")
    return data


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


__all__ = ["MAX_STATE_VECTOR_BYTES", "covered", "decode_state_vector", "read_varuint",
           "states_digest"]
