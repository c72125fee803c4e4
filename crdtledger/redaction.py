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


def redact(update: bytes, member: str, root: str = "members") -> bytes:
    """`update` with every value it wrote into `member`'s Map (the entry `member` of
    the root Map `root`, and everything inside it) taken out; NotRedactable if it
    wrote anything else at the root (another member, a card) or cannot be read."""
    r = _Reader(update)
    out = bytearray()
    clients = r.uint()
    out += write_varuint(clients)
    for _ in range(clients):
        n, client, clock = r.uint(), r.uint(), r.uint()
        out += write_varuint(n) + write_varuint(client) + write_varuint(clock)
        for _ in range(n):
            start = r.pos
            info = r.raw(1)[0]
            kind = info & 0x1F
            if kind in (GC, SKIP):
                length = r.uint()
                out += bytes([info]) + write_varuint(length)
                continue
            parent_root = None
            if info & _ORIGIN:
                r.uint(), r.uint()
            if info & _RIGHT_ORIGIN:
                r.uint(), r.uint()
            if not info & (_ORIGIN | _RIGHT_ORIGIN):
                if r.uint() == 1:
                    parent_root = r.string()
                else:
                    r.uint(), r.uint()
            sub = r.string() if info & _PARENT_SUB and not info & (
                _ORIGIN | _RIGHT_ORIGIN) else None
            header = update[start + 1:r.pos]
            length = r.content_length(kind)
            if parent_root is None:
                out += bytes([GC]) + write_varuint(length)
            elif parent_root == root and sub == member:
                # The member's own entry in the root Map: kept, its content deleted.
                out += bytes([(info & 0xE0) | DELETED]) + header + write_varuint(length)
            else:
                raise NotRedactable(f"the update writes {parent_root}[{sub}] too")
    out += r.data[r.pos:]  # the delete set: ids only
    _check_delete_set(r)
    return bytes(out)


def carries_nothing(update: bytes) -> bool:
    """Whether `update` is of the shape `redact` makes: GC structs and items whose
    content is deleted, nothing else. What a replica requires of a record that comes
    redacted, since it cannot compare it with the original it never held: a writer
    can take its own values out of its records, never put others in."""
    r = _Reader(update)
    try:
        for _ in range(r.uint()):
            n, _client, _clock = r.uint(), r.uint(), r.uint()
            for _ in range(n):
                info = r.raw(1)[0]
                kind = info & 0x1F
                if kind in (GC, SKIP):
                    r.uint()
                    continue
                if kind != DELETED:
                    return False
                if info & _ORIGIN:
                    r.uint(), r.uint()
                if info & _RIGHT_ORIGIN:
                    r.uint(), r.uint()
                if not info & (_ORIGIN | _RIGHT_ORIGIN):
                    if r.uint() == 1:
                        r.string()
                    else:
                        r.uint(), r.uint()
                    if info & _PARENT_SUB:
                        r.string()
                r.uint()
        _check_delete_set(r)
    except NotRedactable:
        return False
    return True


def _check_delete_set(r: _Reader) -> None:
    for _ in range(r.uint()):
        r.uint()
        for _ in range(r.uint()):
            r.uint(), r.uint()
    if r.pos != len(r.data):
        raise NotRedactable("bytes after the delete set")
