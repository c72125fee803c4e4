"""Redacting a record's update: the same structs, without an erased member's values.

A node's signed records (crdtledger.log) keep every update it wrote, and peers,
catch-ups and sync files are built from them. Once a member is erased
(crdtledger.erasure), each node rewrites the records it wrote into that member's Map
so that they carry no value of it, and says so in a signed entry (`redaction`), so
that its records can travel redacted and still be verified (Replica._verify_log).

`redact` is deterministic: every replica holding a record computes the same bytes,
so a replica that holds the original checks the writer's claim by redacting it too.
It reads the Yjs v1 update (lib0 encoding, as Yrs writes it) struct by struct and
writes each struct back with the same client, clock and length, so the document's
state vector is unchanged: the item that made the member's Map (a root-map entry
named by the member id) keeps its place and becomes deleted content, as Yrs' own
garbage collection leaves a deleted map entry; every other item of the record (the
fields, tags, preferences inside that Map) becomes a GC struct, as Yrs leaves the
children of a deleted type. The delete set is kept (ids only). pycrdt has no
struct-level access, hence this reader; it refuses what it does not know.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

from crdtledger.lib0 import read_varuint

# Struct kinds (Yjs: the low 5 bits of an item's info byte; 0 and 10 on their own).
GC, SKIP = 0, 10
DELETED, JSON, BINARY, STRING, EMBED, FORMAT, TYPE, ANY, DOC = range(1, 10)
_ORIGIN, _RIGHT_ORIGIN, _PARENT_SUB = 0x80, 0x40, 0x20
_XML_ELEMENT, _XML_HOOK = 3, 5  # type refs that carry a name


class NotRedactable(ValueError):
    """The update is not one this module can redact for that member (malformed, an
    unknown struct, or an item of another root entry)."""


def write_varuint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append(0x80 | (n & 0x7F))
        n >>= 7
    out.append(n)
    return bytes(out)


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def uint(self) -> int:
        try:
            value, self.pos = read_varuint(self.data, self.pos)
        except ValueError as e:
            raise NotRedactable(str(e)) from None
        return value

    def raw(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise NotRedactable("truncated update")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def string(self) -> str:
        try:
            return self.raw(self.uint()).decode()
        except UnicodeDecodeError:
            raise NotRedactable("a string that is not UTF-8") from None

    def skip_int(self) -> None:  # lib0's signed varint
        while self.raw(1)[0] & 0x80:
            pass

    def skip_any(self, depth: int = 0) -> None:
        if depth > 64:
            raise NotRedactable("value nested too deep")
        tag = self.raw(1)[0]
        if tag in (127, 126, 121, 120):  # undefined, null, false, true
            return
        if tag == 125:
            self.skip_int()
        elif tag == 124:
            self.raw(4)
        elif tag in (123, 122):
            self.raw(8)
        elif tag == 119:
            self.string()
        elif tag == 118:
            for _ in range(self.uint()):
                self.string()
                self.skip_any(depth + 1)
        elif tag == 117:
            for _ in range(self.uint()):
                self.skip_any(depth + 1)
        elif tag == 116:
            self.raw(self.uint())
        else:
            raise NotRedactable(f"unknown value tag {tag}")

    def content_length(self, kind: int) -> int:
        """Read an item's content; its length in clock ticks."""
        if kind == DELETED:
            return self.uint()
        if kind == JSON:
            n = self.uint()
            for _ in range(n):
                self.string()
            return n
        if kind == BINARY:
            self.raw(self.uint())
            return 1
        if kind == STRING:
            return len(self.string().encode("utf-16-le")) // 2  # UTF-16 code units
        if kind == EMBED:
            self.string()
            return 1
        if kind == FORMAT:
            self.string()
            self.string()
            return 1
        if kind == TYPE:
            if self.uint() in (_XML_ELEMENT, _XML_HOOK):
                self.string()
            return 1
        if kind == ANY:
            n = self.uint()
            for _ in range(n):
                self.skip_any()
            return n
        if kind == DOC:
            self.string()
            self.skip_any()
            return 1
        raise NotRedactable(f"unknown content kind {kind}")


class Struct(NamedTuple):
    """One struct of an update, as `parse` reads it."""

    info: int  # the info byte; its low 5 bits are the kind
    header: bytes  # what follows the info byte up to the content: origins, parent
    parent_root: str | None  # the root type it names as its parent, if it names one
    sub: str | None  # its key in a Map parent, when written
    length: int  # clock ticks
    content: bytes  # as written (a GC, skip or deleted content: its length)
    # The ids (client, clock) it refers to: its left and right origins, or the type
    # it names as its parent.
    refs: tuple[tuple[int, int], ...] = ()

    @classmethod
    def gc(cls, length: int) -> Struct:
        return cls(GC, b"", None, None, length, write_varuint(length))

    def deleted(self) -> Struct:
        """This item with its content deleted (as Yrs' GC leaves one that it keeps)."""
        return self._replace(info=(self.info & 0xE0) | DELETED,
                             content=write_varuint(self.length))


def parse(update: bytes) -> tuple[list[tuple[int, int, list[Struct]]], bytes]:
    """An update's structs, per client block (client, first clock, structs), and the
    bytes of its delete set (ids only). NotRedactable if it cannot be read whole."""
    r = _Reader(update)
    blocks = []
    for _ in range(r.uint()):
        n, client, clock = r.uint(), r.uint(), r.uint()
        structs = []
        for _ in range(n):
            info = r.raw(1)[0]
            kind = info & 0x1F
            if kind in (GC, SKIP):
                start = r.pos
                length = r.uint()
                structs.append(Struct(info, b"", None, None, length, update[start:r.pos]))
                continue
            start = r.pos
            parent_root = sub = None
            refs = []
            if info & _ORIGIN:
                refs.append((r.uint(), r.uint()))
            if info & _RIGHT_ORIGIN:
                refs.append((r.uint(), r.uint()))
            if not info & (_ORIGIN | _RIGHT_ORIGIN):  # then the parent is written
                if r.uint() == 1:
                    parent_root = r.string()
                else:
                    refs.append((r.uint(), r.uint()))
                if info & _PARENT_SUB:
                    sub = r.string()
            header, start = update[start:r.pos], r.pos
            length = r.content_length(kind)
            structs.append(Struct(info, header, parent_root, sub, length, update[start:r.pos],
                                  tuple(refs)))
        blocks.append((client, clock, structs))
    ds_start = r.pos
    for _ in range(r.uint()):
        r.uint()
        for _ in range(r.uint()):
            r.uint(), r.uint()
    if r.pos != len(update):
        raise NotRedactable("bytes after the delete set")
    return blocks, update[ds_start:]


def needs(update: bytes) -> dict[int, int]:
    """What a document must hold before `update` can integrate there: for each other
    writer (client), one past the highest clock of the ids its structs refer to (left
    and right origins, parent types); its own earlier structs count as another's.
    Yrs holds back a struct any of whose ids is missing (Yjs' "missing"), and
    integrates it once they come: so an update whose needs a document's state vector
    does not cover waits there. NotRedactable if it cannot be read (this reader, kept
    here with the parser it needs, is about an update's structs, not about erasure)."""
    blocks, _ = parse(update)
    own = {client: (clock, clock + sum(s.length for s in structs))
           for client, clock, structs in blocks}
    out: dict[int, int] = {}
    for _client, _clock, structs in blocks:
        for st in structs:
            for client, clock in st.refs:
                lo, hi = own.get(client, (0, 0))
                if not lo <= clock < hi:
                    out[client] = max(out.get(client, 0), clock + 1)
    return out


def encode(blocks: list[tuple[int, int, list[Struct]]], delete_set: bytes) -> bytes:
    """`parse`'s inverse."""
    out = bytearray(write_varuint(len(blocks)))
    for client, clock, structs in blocks:
        out += write_varuint(len(structs)) + write_varuint(client) + write_varuint(clock)
        for st in structs:
            out += bytes([st.info]) + st.header + st.content
    return bytes(out + delete_set)


def redact(update: bytes, member: str, root: str = "members") -> bytes:
    """`update` with every value it wrote into `member`'s Map (the entry `member` of
    the root Map `root`, and everything inside it) taken out; NotRedactable if it
    wrote anything else at the root (another member, a card) or cannot be read."""
    blocks, delete_set = parse(update)
    out = []
    for client, clock, structs in blocks:
        kept = []
        for st in structs:
            if st.info & 0x1F in (GC, SKIP):
                kept.append(st)
            elif st.parent_root is None:
                kept.append(Struct.gc(st.length))
            elif st.parent_root == root and st.sub == member:
                # The member's own entry in the root Map: kept, its content deleted.
                kept.append(st.deleted())
            else:
                raise NotRedactable(f"the update writes {st.parent_root}[{st.sub}] too")
        out.append((client, clock, kept))
    return encode(out, delete_set)


def carries_nothing(update: bytes) -> bool:
    """Whether `update` is of the shape `redact` makes: GC structs and items whose
    content is deleted, nothing else. What a replica requires of a record that comes
    redacted, since it cannot compare it with the original it never held: a writer
    can take its own values out of its records, never put others in."""
    try:
        blocks, _ = parse(update)
    except NotRedactable:
        return False
    return all(st.info & 0x1F in (GC, SKIP, DELETED) for _, _, sts in blocks for st in sts)


class _Ranges:
    """Sets of ids, as clock ranges per client."""

    def __init__(self) -> None:
        self._by: dict[int, list[tuple[int, int]]] = {}

    def add(self, client: int, clock: int, length: int) -> None:
        self._by.setdefault(client, []).append((clock, clock + length))

    def __contains__(self, id_: tuple[int, int]) -> bool:
        client, clock = id_
        return any(lo <= clock < hi for lo, hi in self._by.get(client, ()))


def records_into(rows: Iterable[tuple[str, int, bytes]], member: str,
                 redacted: set[tuple[str, int]], root: str = "members") -> list[tuple[str, int]]:
    """The records among `rows` (node, seq, update of one member document, in the order
    they were applied) that wrote into `member`'s Map and nothing else: told by the
    ids their items refer to, not by applying them, so a record whose neighbours are
    redacted already is still found. `redacted`: records whose writers said they
    redacted them for this member (their GC structs were in its Map).

    The member's Map is the item its adding record set at the root under its id; an
    item whose origin is such an entry sets the member's Map again (an erasure): not
    inside it, and its record is not one of these. An item refers into the Map when
    its parent or an origin is an id inside it (or the Map itself)."""
    entries = _Ranges()  # the member's root entries: its Map, then erasures' new Maps
    inside = _Ranges()
    found = []
    for node, seq, data in rows:
        try:
            blocks, _ = parse(data)
        except NotRedactable:
            continue
        into = other = False
        for client, clock, structs in blocks:
            for st in structs:
                at, clock = clock, clock + st.length
                if st.info & 0x1F in (GC, SKIP):
                    if (node, seq) in redacted:
                        inside.add(client, at, st.length)
                        into = True
                    continue
                if st.parent_root is not None:  # a root entry, with no origin
                    if st.parent_root == root and st.sub == member:
                        entries.add(client, at, st.length)
                        into = True
                    else:
                        other = True
                elif st.info & (_ORIGIN | _RIGHT_ORIGIN):  # placed by its neighbours
                    if any(ref in entries for ref in st.refs):
                        # Next to the member's root entry: the same key set again (an
                        # erasure): not inside the Map, and not this member's data.
                        entries.add(client, at, st.length)
                        other = True
                    elif any(ref in inside for ref in st.refs):
                        inside.add(client, at, st.length)
                        into = True
                    else:
                        other = True
                elif st.refs and (st.refs[0] in entries or st.refs[0] in inside):
                    inside.add(client, at, st.length)  # the first item of a key in it
                    into = True
                else:
                    other = True
        if into and not other:
            found.append((node, seq))
    return found
