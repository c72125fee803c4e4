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

An **open store** (no chain CA, `Trust.ca` None) has no chain secret: its seal key is
derived from the chain id alone, which is written in the clear header. Its files are
signed (an altered file is still refused) but anyone who has the file can read
them, PIN hashes included. Only an enrolled chain (``crdtledger init --chain``) keeps
a lost stick's contents private.
"""

from __future__ import annotations

import hashlib
import os
import struct
from dataclasses import dataclass
from typing import Any

import msgpack
from cryptography import x509
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

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


def unseal(trust: Trust, data: bytes, kind: str, *, what: str) -> Sealed:
    """The content of a sealed file of `kind`, after every check; else a typed error
    (CorruptSyncFile, ForeignChain, UntrustedSigner) whose sentence names `what`."""
    if len(data) > MAX_SEALED_BYTES:
        raise CorruptSyncFile(f"{what} is {len(data)} bytes, larger than any {kind} file")
    view = memoryview(data)
    # 1. What it is, in the clear line.
    end = bytes(view[:MAX_LINE_BYTES]).find(b"\n")
    line = bytes(view[:end]) if end >= 0 else b""
    if not line.startswith(MAGIC):
        if data and bytes(view[:len(MAGIC)]) == MAGIC[:min(len(data), len(MAGIC))]:
            raise _incomplete(what, len(data), "it ends within its first line")
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
    # 3. Complete and well formed.
    pos = end + 1
    header_len, pos = _length(view, pos, ">I", MAX_HEADER_BYTES, what, "header")
    header_raw = bytes(view[pos:pos + header_len])
    pos += header_len
    aad_end = pos
    cipher_len, pos = _length(view, pos, ">Q", MAX_SEALED_BYTES, what, "content")
    if cipher_len < 16 or pos + cipher_len > len(view):
        raise _incomplete(what, len(view), "its content is cut short")
    cipher_at = pos
    pos += cipher_len
    body_end = pos
    sig_len, pos = _length(view, pos, ">H", MAX_SIGNATURE_BYTES, what, "signature")
    if pos + sig_len != len(view):
        raise _incomplete(what, len(view), "its signature is cut short" if
                          pos + sig_len > len(view) else "bytes follow its signature")
    signature = bytes(view[pos:])
    header = _header(header_raw, what)
    node, created = header["node"], header["created"]
    # 4. Every byte as the key in its header signed it: an altered file is told as
    # such, before its (perhaps altered) chain or signer is judged.
    try:
        signer_key = x509.load_der_x509_certificate(header["cert"]).public_key()
        if not isinstance(signer_key, ec.EllipticCurvePublicKey):
            raise ValueError("not an EC key")
        signer_key.verify(signature, _signed(view[:body_end]), _ECDSA)
    except CERT_ERRORS:
        raise CorruptSyncFile(f"{what} is damaged (the signer's certificate in it does not "
                              "parse)") from None
    except InvalidSignature:
        raise CorruptSyncFile(f"{what} was altered after it was signed (the signature "
                              f"of node {node}, as it says, does not match its content); "
                              "ask for it again") from None
    # 5. This chain's.
    if header["chain"] != trust.chain:
        raise ForeignChain(f"{what} comes from chain {header['chain'][:80]!r}, this node is in "
                           f"chain {trust.chain!r}; it was not made for this chain")
    # 6. A signer this chain vouches for (the key that signed it is that signer's).
    try:
        trust.check_cert(node, header["cert"])
    except UntrustedSigner as e:
        raise UntrustedSigner(f"{what} is refused: {e}") from None
    # 7. Readable with this chain's secret.
    try:
        payload = AESGCM(trust.seal_key).decrypt(header["nonce"],
                                                 bytes(view[cipher_at:body_end]),
                                                 bytes(view[:aad_end]))
    except InvalidTag:
        raise ForeignChain(
            f"{what} is intact and signed by node {node}, but sealed with another chain "
            f"secret than this store's: this store and node {node} do not share chain "
            f"{trust.chain}'s chain.key (enrolled from another chain directory, or one "
            "side is a store without a chain CA)") from None
    return Sealed(node=node, created_ms=created, payload=payload)


def read_sealed(path: Any, kind: str, limit: int = MAX_SEALED_BYTES) -> bytes:
    """The bytes of the file at `path`, read only once its first bytes say it is a
    sealed file, and never more than `limit`: a gigabyte of something else was read
    whole before it was refused, and a device that never ends (/dev/zero) was read
    until the process was killed. Raises CorruptSyncFile, or OSError from the file."""
    with open(path, "rb") as f:
        start = f.read(len(MAGIC))
        if start != MAGIC[:len(start)] or not start:
            raise CorruptSyncFile(f"{path} is not a crdtledger {kind} file")
        data = start + f.read(limit + 1 - len(start))
    if len(data) > limit:
        raise CorruptSyncFile(f"{path} is larger than any {kind} file ({limit:,} bytes)")
    return data


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
    return _DOMAIN + hashlib.sha256(body).digest()


def _length(view: memoryview, pos: int, fmt: str, limit: int, what: str, part: str
            ) -> tuple[int, int]:
    size = struct.calcsize(fmt)
    if pos + size > len(view):
        raise _incomplete(what, len(view), f"it ends before its {part}")
    (n,) = struct.unpack(fmt, view[pos:pos + size])
    if n > limit:
        raise _incomplete(what, len(view), f"its {part} claims {n} bytes")
    if pos + size + n > len(view) and part == "header":
        raise _incomplete(what, len(view), "its header is cut short")
    return int(n), pos + size


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
