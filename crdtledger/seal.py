"""Sealed files: what travels by USB stick or e-mail, signed by its writer and
encrypted for the chain.

A sync file or a backup holds every member's phone and the PIN and password hashes
that replicate. A lost stick must leak none of it, nor let anyone try PINs against
the hashes offline, and a file altered on the way (or written by a stranger in a
branch's name) must not reach a ledger. So the payload is encrypted with the chain
secret (AES-256-GCM under ``Trust.seal_key``, which every enrolled branch holds in
``DATA/tls/chain.key``) and the whole file is signed with the writer's node key,
certified by the chain CA (crdtledger.trust).

Layout::

    b"CRDTLEDGER-SEALED <kind> <format>\\n"  readable with `head -1`; checked first
    4 bytes, big-endian                      length of the header
    header                                   msgpack {chain, node, created, cert, nonce}
    8 bytes, big-endian                      length of the ciphertext
    ciphertext                               AES-256-GCM of the payload; the associated
                                             data is everything before it
    2 bytes, big-endian                      length of the signature
    signature                                ECDSA P-256 of SHA-256 of everything before
                                             it (domain-separated, see _signed)

The reader checks, in order, and refuses the file whole at the first failure, with a
sentence naming the file: that it is a sealed file of the expected kind; its format
(a newer one says to upgrade); that it is complete and well formed; that it belongs
to this store's chain; that its signer is a node the chain CA certified and did not
revoke; that the signature covers every byte; and that it decrypts with this
store's chain secret. Nothing of the payload is returned unless all of them hold.
(The signature is in fact checked before the chain and the signer, so that a file
altered on the way is told as altered. A file on disk, `read_sealed`, has its clear
line and header read and checked first, and, past TOLD_WHOLE_BYTES, its chain and
signer judged from them before the rest is read: another chain's file declaring a
gigabyte was read whole, twice, before its first kilobyte was looked at. Its
signature is then checked as it streams by, before any buffer of its size is
allocated: this chain's genuine header copied in front of a gigabyte was held whole
before it was told as altered.)

An **open store** (no chain CA, `Trust.ca` None) has no chain secret: its seal key is
derived from the chain id alone, which is written in the clear header. Its files are
signed (an altered file is still refused) but anyone who has the file can read
them, PIN hashes included. Only an enrolled chain (``crdtledger init --chain``) keeps
a lost stick's contents private.
"""

from __future__ import annotations

import hashlib
import os
import stat
import struct
from dataclasses import dataclass
from typing import Any

import msgpack
from cryptography import x509
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from crdtledger.errors import CorruptSyncFile, ForeignChain, InvalidInput
from crdtledger.hlc import NODE_ID
from crdtledger.trust import CERT_ERRORS, Trust, UntrustedSigner

FORMAT = 1
MAGIC = b"CRDTLEDGER-SEALED "
KINDS = ("sync", "backup")
# Read whole into memory, like a sync file (syncfile.MAX_FILE_BYTES); AES-GCM as
# OpenSSL exposes it through `cryptography` takes at most 2**31 - 1 bytes at once.
MAX_SEALED_BYTES = 2 * 1024**3
MAX_PAYLOAD_BYTES = 2**31 - 1 - 64 * 1024
MAX_HEADER_BYTES = 64 * 1024  # a certificate is about 700 bytes
MAX_SIGNATURE_BYTES = 160  # a DER ECDSA P-256 signature is at most 72
MAX_LINE_BYTES = 64
# The clear line, the header's length, the header and the content's length: all a
# reader needs to judge a file's form, chain and signer before reading its content.
HEAD_BYTES = MAX_LINE_BYTES + 4 + MAX_HEADER_BYTES + 8
# A file whose header names another chain or a signer this chain does not vouch for
# has its signature checked first up to this size, so that one altered on the way (a
# flipped byte in its chain's name) is told as altered, as `unseal` tells it. Past
# it, the header's word stands: a stranger's gigabyte is never read.
TOLD_WHOLE_BYTES = 64 * 1024**2
# What the signature check streams through at a time: the memory it holds.
CHUNK_BYTES = 1 << 20
NONCE_BYTES = 12  # AES-GCM's standard nonce; random, one per file
_ECDSA = ec.ECDSA(hashes.SHA256())
_DOMAIN = b"crdtledger sealed file\x00"  # so no other signature of a node fits here


@dataclass(frozen=True)
class Sealed:
    """What an accepted sealed file says: its writer, when, and its content."""

    node: str
    created_ms: int
    payload: bytes


def seal(trust: Trust, kind: str, payload: bytes, created_ms: int) -> bytes:
    """The sealed file of `payload`, signed by this store's node."""
    if kind not in KINDS:
        raise ValueError(f"unknown sealed-file kind {kind!r}")
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise InvalidInput(f"{len(payload)} bytes is more than a sealed file can carry "
                           f"({MAX_PAYLOAD_BYTES})")
    line = _line(kind, FORMAT)
    nonce = os.urandom(NONCE_BYTES)
    header: bytes = msgpack.packb({"chain": trust.chain, "node": trust.node, "created": created_ms,
                            "cert": trust.cert_der, "nonce": nonce}, use_bin_type=True)
    aad = line + struct.pack(">I", len(header)) + header
    ciphertext = AESGCM(trust.seal_key).encrypt(nonce, payload, aad)
    body = aad + struct.pack(">Q", len(ciphertext)) + ciphertext
    signature = trust.sign(_signed(body))
    return body + struct.pack(">H", len(signature)) + signature


def unseal(trust: Trust, data: bytes | bytearray, kind: str, *, what: str) -> Sealed:
    """The content of a sealed file of `kind`, after every check; else a typed error
    (CorruptSyncFile, ForeignChain, UntrustedSigner) whose sentence names `what`."""
    if len(data) > MAX_SEALED_BYTES:
        raise CorruptSyncFile(f"{what} is {len(data)} bytes, larger than any {kind} file")
    view = memoryview(data)
    # 1.-3. What it is, its format, complete and well formed.
    aad_end, header_raw, cipher_at, body_end = _clear_part(view, len(view), kind, what)
    sig_len, pos = _length(view, body_end, ">H", MAX_SIGNATURE_BYTES, what, "signature")
    if pos + sig_len != len(view):
        raise _incomplete(what, len(view), "its signature is cut short" if
                          pos + sig_len > len(view) else "bytes follow its signature")
    signature = bytes(view[pos:])
    header = _header(header_raw, what)
    node, created = header["node"], header["created"]
    # 4. Every byte as the key in its header signed it: an altered file is told as
    # such, before its (perhaps altered) chain or signer is judged.
    _verify(_signer_key(header, what), signature, _signed(view[:body_end]), node, what)
    # 5.-6. This chain's, by a signer this chain vouches for.
    _judge(trust, header, what)
    # 7. Readable with this chain's secret (the ciphertext is decrypted where it lies:
    # a copy of it was a second file's worth of memory).
    try:
        payload = AESGCM(trust.seal_key).decrypt(header["nonce"], view[cipher_at:body_end],
                                                 view[:aad_end])
    except InvalidTag:
        raise ForeignChain(
            f"{what} is intact and signed by node {node}, but sealed with another chain "
            f"secret than this store's: this store and node {node} do not share chain "
            f"{trust.chain}'s chain.key (enrolled from another chain directory, or one "
            "side is a store without a chain CA)") from None
    return Sealed(node=node, created_ms=created, payload=payload)


def read_head(path: Any, kind: str, limit: int = MAX_SEALED_BYTES, *,
              what: str | None = None) -> dict[str, Any]:
    """The clear header of the sealed file at `path` ({chain, node, created, cert,
    nonce}), its form checked as `unseal` checks it but nothing trusted: to choose the
    keys to read it with (a backup restored into an empty directory). Only the first
    bytes are read. Raises CorruptSyncFile, or OSError from the file."""
    with open(path, "rb", buffering=0) as f:
        _, header, _ = _read_clear_part(f, path, kind, limit, what)
    return header


def read_sealed(path: Any, kind: str, limit: int = MAX_SEALED_BYTES, *,
                trust: Trust | None = None, what: str | None = None) -> bytearray:
    """The bytes of the sealed file at `path` (for `unseal`), never more than `limit`.

    Its clear line and header are read first, and checked as `unseal` checks them
    (with the file's size for the lengths they declare); with `trust`, past
    TOLD_WHOLE_BYTES, the chain and the signer its header names are judged too, before
    the rest is read. A gigabyte of something else, a device that never ends
    (/dev/zero), or another chain's file whose header declares a gigabyte of content
    were read whole (and copied once more) before they were refused; a stranger's file
    past TOLD_WHOLE_BYTES now costs its first kilobytes. The cost: such a file of this
    chain altered in exactly the header fields naming its chain or its signer is told
    by what they now say, rather than as altered (refused all the same). Then the
    signature is checked as the file streams by, CHUNK_BYTES at a time, and (with
    `trust`) the chain and the signer judged: this chain's genuine header copied in
    front of a gigabyte was read into memory whole before it was told as altered. Only
    a file that passes is read again, into one buffer of its size, never copied;
    `unseal` checks that buffer again (the file may change between the two reads).
    Raises CorruptSyncFile, ForeignChain, UntrustedSigner, or OSError from the file."""
    what = str(path) if what is None else what
    with open(path, "rb", buffering=0) as f:
        data, header, body_end = _read_clear_part(f, path, kind, limit, what)
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode) or len(data) >= st.st_size:
            return data  # read whole already (a pipe is, within `limit`): unseal tells
        size = st.st_size
        key = _signer_key(header, what)  # damaged, as `unseal` says, not a stranger's
        if trust is not None and size > TOLD_WHOLE_BYTES:
            _judge(trust, header, what)
        _verify_streamed(f, data, body_end, size, key, header["node"], what)
        if trust is not None:
            _judge(trust, header, what)  # after the signature, as `unseal` judges
        f.seek(len(data))
        whole = bytearray(size)
        whole[:len(data)] = data
        got = len(data)
        with memoryview(whole) as view:
            while got < size:
                n = f.readinto(view[got:])
                if not n:
                    break
                got += n
        if got < size:  # cut while read: unseal says where it ends
            del whole[got:]
        elif f.read(1):
            raise CorruptSyncFile(f"{what} grew while it was read (it is still being "
                                  "written?); copy it again once it is whole")
    return whole


# A node's private keys inside its backup are sealed once more, for the chain CA alone
# (ECDH with a key made for the one file, HKDF-SHA256, AES-256-GCM): the chain secret
# that opens the backup is held by every branch, and a branch that read another's
# backup signed as it (a rights transfer in its name, which the others took, and the
# fork blamed the branch robbed). Restoring on a new PC already needs the chain
# directory; its `ca.key` now opens the keys.
_FOR_CA_INFO = b"crdtledger backup keys for the chain CA\x00"


def seal_for_ca(ca_cert_pem: bytes, plaintext: bytes, context: bytes) -> bytes:
    """`plaintext` readable only with the private key of the CA whose certificate this
    is; `context` (the node and chain it belongs to) must be given again to open it."""
    ca = x509.load_pem_x509_certificate(ca_cert_pem).public_key()
    if not isinstance(ca, ec.EllipticCurvePublicKey):
        raise InvalidInput("the chain CA's key is not an elliptic-curve key")
    mine = ec.generate_private_key(ca.curve)
    nonce = os.urandom(NONCE_BYTES)
    ct = AESGCM(_ca_key(mine.exchange(ec.ECDH(), ca))).encrypt(nonce, plaintext, context)
    return bytes(msgpack.packb({"eph": mine.public_key().public_bytes(*_POINT),
                                "nonce": nonce, "ct": ct}, use_bin_type=True))


def open_for_ca(ca_key_pem: bytes, sealed: bytes, context: bytes, *, what: str) -> bytes:
    """What `seal_for_ca` sealed, with the CA's private key; refused with a sentence
    naming `what` if the key is another CA's or the bytes were altered."""
    try:
        ca = serialization.load_pem_private_key(ca_key_pem, password=None)
    except (ValueError, TypeError):
        ca = None
    if not isinstance(ca, ec.EllipticCurvePrivateKey):
        raise InvalidInput(f"{what}: the chain's ca.key does not read as its CA's key")
    try:
        body = msgpack.unpackb(sealed, raw=False, strict_map_key=True)
        eph = ec.EllipticCurvePublicKey.from_encoded_point(ca.curve, body["eph"])
        key = _ca_key(ca.exchange(ec.ECDH(), eph))
        return bytes(AESGCM(key).decrypt(body["nonce"], body["ct"], context))
    except InvalidTag:
        raise InvalidInput(f"{what}: its keys do not open with this ca.key (sealed for "
                           "another chain CA, or altered)") from None
    except Exception:
        raise CorruptSyncFile(f"{what}: its sealed keys are damaged") from None


_POINT = (serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)


def _ca_key(shared: bytes) -> bytes:
    return HKDF(hashes.SHA256(), 32, salt=None, info=_FOR_CA_INFO).derive(shared)


def kind_of(data: bytes) -> tuple[str, int] | None:
    """The kind and format a sealed file's clear line announces, or None: enough to
    tell a sealed file from anything else without any key."""
    end = data[:MAX_LINE_BYTES].find(b"\n")
    line = data[:end] if end >= 0 else b""
    parts = line[len(MAGIC):].split(b" ") if line.startswith(MAGIC) else []
    if len(parts) != 2 or not parts[1].isdigit():
        return None
    return parts[0].decode("ascii", "replace"), int(parts[1])


def peek_header(data: bytes) -> dict[str, Any] | None:
    """The clear header of a well-formed sealed file ({chain, node, created, ...}), not
    checked in any way: to choose which keys to unseal it with, never to trust."""
    if kind_of(data) is None:
        return None
    view = memoryview(data)
    pos = data.find(b"\n") + 1
    try:
        header_len, pos = _length(view, pos, ">I", MAX_HEADER_BYTES, "", "header")
        return _header(bytes(view[pos:pos + header_len]), "")
    except CorruptSyncFile:
        return None


# --- helpers ------------------------------------------------------------------


def _line(kind: str, fmt: int) -> bytes:
    return MAGIC + f"{kind} {fmt}".encode("ascii") + b"\n"


def _signed(body: bytes | memoryview) -> bytes:
    # What is signed: the domain, then the SHA-256 of the body (_verify_streamed
    # builds the same from the body read in chunks).
    return _DOMAIN + hashlib.sha256(body).digest()


def _clear_part(view: memoryview, size: int, kind: str, what: str
                ) -> tuple[int, bytes, int, int]:
    """Checks 1 to 3 of a sealed file of `size` bytes whose first bytes are `view`
    (all of them, or at least HEAD_BYTES): where the associated data ends, the raw
    header, and where the ciphertext starts and ends."""
    # 1. What it is, in the clear line.
    end = bytes(view[:MAX_LINE_BYTES]).find(b"\n")
    line = bytes(view[:end]) if end >= 0 else b""
    if not line.startswith(MAGIC):
        if size and bytes(view[:len(MAGIC)]) == MAGIC[:min(size, len(MAGIC))]:
            raise _incomplete(what, size, "it ends within its first line")
        raise CorruptSyncFile(f"{what} is not a crdtledger {kind} file")
    parts = line[len(MAGIC):].split(b" ")
    if len(parts) != 2 or parts[0].decode("ascii", "replace") not in KINDS:
        raise CorruptSyncFile(f"{what} is a sealed file of an unknown kind; it is damaged "
                              "or comes from another program")
    found = parts[0].decode("ascii")
    if found != kind:
        raise CorruptSyncFile(f"{what} is a crdtledger {found} file, not a {kind} file")
    # 2. Its format, before reading anything else.
    if not parts[1].isdigit() or len(parts[1]) > 9:
        raise CorruptSyncFile(f"{what} has an unreadable format number")
    fmt = int(parts[1])
    if fmt > FORMAT:
        raise CorruptSyncFile(f"{what} is {kind} format {fmt}, made by a newer crdtledger; "
                              f"this one reads format {FORMAT}: upgrade to read it")
    if fmt != FORMAT:
        raise CorruptSyncFile(f"{what} is {kind} format {fmt}, which this version does "
                              "not read")
    # 3. Complete and well formed (the signature's length is checked by the caller).
    pos = end + 1
    header_len, pos = _length(view, pos, ">I", MAX_HEADER_BYTES, what, "header", size)
    header_raw = bytes(view[pos:pos + header_len])
    pos += header_len
    aad_end = pos
    cipher_len, pos = _length(view, pos, ">Q", MAX_SEALED_BYTES, what, "content", size)
    if cipher_len < 16 or pos + cipher_len > size:
        raise _incomplete(what, size, "its content is cut short")
    return aad_end, header_raw, pos, pos + cipher_len


def _read_clear_part(f: Any, path: Any, kind: str, limit: int, what: str | None
                     ) -> tuple[bytearray, dict[str, Any], int]:
    """The first bytes of the open file `f` (all of it if it is not a regular file,
    within `limit`), its header and where its signed body ends, after checks 1 to 3
    against its size."""
    what = str(path) if what is None else what
    start = f.read(len(MAGIC))
    if not start or start != MAGIC[:len(start)]:
        raise CorruptSyncFile(f"{what} is not a crdtledger {kind} file")
    data = bytearray(start)
    st = os.fstat(f.fileno())
    regular = stat.S_ISREG(st.st_mode)
    # A pipe or a device tells no size: read whole, within the limit, as before.
    want = min(st.st_size, HEAD_BYTES) if regular else limit + 1
    while len(data) < want:
        chunk = f.read(min(want - len(data), 1 << 20))
        if not chunk:
            break
        data += chunk
    size = st.st_size if regular else len(data)
    if size > limit:
        raise CorruptSyncFile(f"{what} is larger than any {kind} file ({limit:,} bytes)")
    if regular and len(data) < want:  # cut while read
        size = len(data)
    _, header_raw, _, body_end = _clear_part(memoryview(data), size, kind, what)
    tail = bytes(data[body_end:body_end + 2]) if len(data) == size else os.pread(
        f.fileno(), 2, body_end)
    sig_len, _ = _length(memoryview(tail), 0, ">H", MAX_SIGNATURE_BYTES, what,
                         "signature", size)
    if body_end + 2 + sig_len != size:
        raise _incomplete(what, size, "its signature is cut short" if
                          body_end + 2 + sig_len > size else "bytes follow its signature")
    return data, _header(header_raw, what), body_end


def _signer_key(header: dict[str, Any], what: str) -> ec.EllipticCurvePublicKey:
    try:
        key = x509.load_der_x509_certificate(header["cert"]).public_key()
        if not isinstance(key, ec.EllipticCurvePublicKey):
            raise ValueError("not an EC key")
    except CERT_ERRORS:
        raise CorruptSyncFile(f"{what} is damaged (the signer's certificate in it does not "
                              "parse)") from None
    return key


def _verify(key: ec.EllipticCurvePublicKey, signature: bytes, signed: bytes, node: str,
            what: str) -> None:
    """Check 4: `signature` is the key's over `signed`, as `_signed` made it."""
    try:
        key.verify(signature, signed, _ECDSA)
    except InvalidSignature:
        raise CorruptSyncFile(f"{what} was altered after it was signed (the signature "
                              f"of node {node}, as it says, does not match its content); "
                              "ask for it again") from None


def _verify_streamed(f: Any, data: bytearray, body_end: int, size: int,
                     key: ec.EllipticCurvePublicKey, node: str, what: str) -> None:
    """Check 4 on the regular file `f` of `size` bytes, whose first bytes `data` were
    read and whose read position is just past them: the rest is hashed as it is read,
    CHUNK_BYTES at a time, never held whole."""
    digest = hashlib.sha256(data[:body_end])
    got = len(data)
    buf = bytearray(min(CHUNK_BYTES, max(body_end - got, 0)) or 1)
    with memoryview(buf) as chunk:
        while got < body_end:
            n = f.readinto(chunk[:min(len(buf), body_end - got)])
            if not n:  # cut while read: said as `unseal` says a file of `got` bytes
                raise _incomplete(what, got, "its content is cut short")
            digest.update(chunk[:n])
            got += n
    tail = bytes(data[body_end:]) if got > body_end else b""
    while len(tail) < size - body_end:
        more = f.read(size - body_end - len(tail))
        if not more:
            raise _incomplete(what, body_end + len(tail), "its signature is cut short"
                              if len(tail) >= 2 else "it ends before its signature")
        tail += more
    _verify(key, tail[2:], _DOMAIN + digest.digest(), node, what)


def _judge(trust: Trust, header: dict[str, Any], what: str) -> None:
    """Checks 5 and 6: the chain and the signer a (well-formed) header names."""
    if header["chain"] != trust.chain:
        raise ForeignChain(f"{what} comes from chain {header['chain'][:80]!r}, this node is in "
                           f"chain {trust.chain!r}; it was not made for this chain")
    # The key that signed it is that signer's.
    try:
        trust.check_cert(header["node"], header["cert"])
    except UntrustedSigner as e:
        raise UntrustedSigner(f"{what} is refused: {e}") from None


def _length(view: memoryview, pos: int, fmt: str, limit: int, what: str, part: str,
            size: int | None = None) -> tuple[int, int]:
    """The length at `pos`; `size` is the whole file's, when `view` holds its first
    bytes only (a bound then never falls beyond them: see HEAD_BYTES)."""
    total = len(view) if size is None else size
    size_of = struct.calcsize(fmt)
    if pos + size_of > len(view):
        raise _incomplete(what, total, f"it ends before its {part}")
    (n,) = struct.unpack(fmt, view[pos:pos + size_of])
    if n > limit:
        raise _incomplete(what, total, f"its {part} claims {n} bytes")
    if pos + size_of + n > len(view) and part == "header":
        raise _incomplete(what, total, "its header is cut short")
    return int(n), pos + size_of


def _header(raw: bytes, what: str) -> dict[str, Any]:
    try:
        header = msgpack.unpackb(raw, raw=False, strict_map_key=True)
    except Exception:
        raise CorruptSyncFile(f"{what} is damaged or incomplete: its header does not read"
                              ) from None
    if (not isinstance(header, dict)
            or not isinstance(header.get("chain"), str)
            or not isinstance(header.get("node"), str) or not NODE_ID.match(header["node"])
            or not isinstance(header.get("created"), int) or isinstance(header["created"], bool)
            or not isinstance(header.get("cert"), bytes)
            or not isinstance(header.get("nonce"), bytes)
            or len(header["nonce"]) != NONCE_BYTES):
        raise CorruptSyncFile(f"{what} is damaged or incomplete: its header lacks what a "
                              "sealed file carries")
    return header


def _incomplete(what: str, size: int, detail: str) -> CorruptSyncFile:
    return CorruptSyncFile(f"{what} is damaged or incomplete ({detail}, at {size} bytes): "
                           "it was cut short or altered in copying; copy it again")
