"""Chain identity: who may talk to a branch node, decided by the chain's own CA.

Nodes find each other by mDNS on a shop's LAN and by configured addresses over the
WAN, so an address says nothing about who answers. What makes a peer a branch of
*this* chain is a certificate issued by the chain's certificate authority:

- `init_chain` makes the CA once, at the head office (`crdtledger chain init`): an
  ECDSA P-256 key (`ca.key`, kept off the branch machines) and a self-signed
  certificate (`ca.crt`). The chain is named by the SHA-256 fingerprint of that
  certificate, so two chains that both call themselves "default" stay apart. It
  also makes the chain secret (`chain.key`, 32 random bytes) that sync files and
  backups are encrypted with (crdtledger.seal).
- `enrol` gives one node a key of its own and a certificate naming its node id
  (`crdtledger init --chain CHAIN_DIR`). The node gets `ca.crt` to check others
  with and `chain.key` to read the chain's files, never `ca.key`: a stolen branch
  PC cannot mint new branches. The head office's node is enrolled with
  `head_office=True` (`--head-office`): its certificate carries the OU
  `head-office`, which alone lets a node write chain governance (crdtledger.trust).
- Every connection is mutual TLS against that CA alone (no system trust store).
  Hostname checking is off on purpose: peers are dialled by an IP address or a
  name the certificate does not and cannot know (DHCP, NAT, mDNS). What the peer
  must prove is its node id, carried in the certificate; `Identity.check_peer`
  reads it after the handshake and before any data moves, and compares it with
  the node that was meant to be dialled.
- Revocation (`revoke`, `crdtledger chain revoke`) is a CRL signed by the CA. There
  is no CRL server to fetch from in a masterless chain that must work offline, so
  the list travels inside the replicated ledger itself (rule kind `revocations`,
  `{"crl": base64(DER)}`). Any operator with `rules.manage` can write a rule, so a
  node trusts a list only for its CA signature, and keeps the highest CRL number
  it has seen: a replica that learns a newer list installs it, an older or forged
  one is refused with the reason.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import json
import os
import re
import ssl
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from crdtledger import trust
from crdtledger.errors import InvalidInput, LedgerError
from crdtledger.hlc import NODE_ID, check_node_id
from crdtledger.private import private_dir, write_private
from crdtledger.trust import revocations_rule

CA_KEY = "ca.key"
CA_CERT = "ca.crt"
CHAIN_KEY = trust.CHAIN_KEY  # the chain secret: 32 random bytes
CHAIN_SECRET_BYTES = trust.CHAIN_SECRET_BYTES
CHAIN_FILE = "chain.json"
CRL_FILE = "crl.der"  # the CA's own copy of the last list it signed
ISSUED_DIR = "issued"  # every node certificate the CA signed, so it can revoke by node id
TLS_DIR = "tls"  # under a node's data directory
NODE_KEY = "node.key"
NODE_CERT = "node.crt"

CA_DAYS = 7300  # 20 years: replacing a chain's CA means re-enrolling every branch
NODE_DAYS = 825  # the CA/Browser Forum's leaf limit of 2018-2020; renew by re-enrolling
SHORT_FINGERPRINT = 16  # hex digits in mDNS TXT records: 64 bits tell chains apart
NODE_URI = "urn:crdtledger:node:"
# Same rule as Ledger.create's chain id, since the chain name becomes that id.
CHAIN_NAME = re.compile(r"^[A-Za-z0-9._-]{1,64}\Z")
# Certificates start this far in the past, and a peer's is taken this long before
# it starts (check_peer): shop clocks set by hand are off by minutes to hours, and a
# branch enrolled at the head office on a PC whose clock ran ahead must still connect
# the same day. (Five minutes, the ledger's own tolerance, locked out a freshly
# enrolled branch whose clock was a few minutes behind.)
BACKDATE = dt.timedelta(days=1)
CLOCK_MARGIN = dt.timedelta(days=1)
# X509_V_FLAG_NO_CHECK_TIME (OpenSSL 1.1.0; Python names no constant for it): the
# handshake leaves dates to check_peer, which allows CLOCK_MARGIN and says that a
# clock is the likely cause. OpenSSL's own refusal is logged by asyncio at debug
# level only, so a branch whose clock was behind could not connect and nothing said
# why.
_NO_CHECK_TIME = 0x200000


class ChainError(LedgerError):
    """A chain or node identity directory is missing, partial, or already made."""

    code = "chain_error"


class PeerRejected(LedgerError):
    """A peer's certificate does not make it a live branch of this chain."""

    code = "peer_rejected"


class RevocationRejected(LedgerError):
    """A revocation list was not installed: malformed, forged, or older than ours."""

    code = "crl_rejected"


@dataclass(frozen=True)
class Chain:
    """A chain CA directory as `load_chain` finds it."""

    name: str
    fingerprint: str  # hex SHA-256 of the CA certificate's DER
    ca_cert: bytes  # PEM
    dir: Path
    has_key: bool  # only the CA's home (the head office) can enrol and revoke

    @property
    def short(self) -> str:
        return self.fingerprint[:SHORT_FINGERPRINT]


def init_chain(out_dir: Path | str, name: str | None = None, *, days: int = CA_DAYS) -> Chain:
    """Create a chain CA in `out_dir` (for `crdtledger chain init --out DIR [--name]`).

    Writes `ca.key` (PEM, unencrypted: the directory is the secret, keep it
    at the head office), `ca.crt`, `chain.key` (the chain secret) and `chain.json`,
    all 0600 in a 0700 directory.
    The name defaults to the directory's name and becomes the chain id of every
    node enrolled from it.
    Refuses (ChainError) a directory that already holds a CA, so a second run can
    never orphan the branches enrolled under the first.
    """
    out = Path(out_dir).resolve()
    name = out.name if name is None else name
    if not CHAIN_NAME.match(name):
        raise InvalidInput(f"chain name {name!r} must be 1-64 letters, digits, . _ - "
                           "(give one with --name)")
    held = [f for f in (CA_KEY, CA_CERT, CHAIN_KEY, CHAIN_FILE) if (out / f).exists()]
    if held:
        raise ChainError(f"{out} already holds a chain CA ({', '.join(held)}); "
                         "choose another directory")
    private_dir(out)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, name),
        x509.NameAttribute(NameOID.COMMON_NAME, f"crdtledger chain {name}"),
    ])
    now = _now()
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + dt.timedelta(days=days))
        # path_len 0: the CA signs nodes only, never a sub-CA.
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_new(out / CA_KEY, _key_pem(key))
    _write_new(out / CA_CERT, cert.public_bytes(serialization.Encoding.PEM))
    _write_new(out / CHAIN_KEY, os.urandom(CHAIN_SECRET_BYTES))
    fingerprint = _fingerprint(cert)
    _write_new(out / CHAIN_FILE, json.dumps({"name": name, "fingerprint": fingerprint},
                                            indent=1).encode() + b"\n")
    return load_chain(out)


def load_chain(chain_dir: Path | str) -> Chain:
    """Read a chain directory; checks that `chain.json` describes the `ca.crt` beside it."""
    d = Path(chain_dir)
    try:
        meta = json.loads((d / CHAIN_FILE).read_text(encoding="utf-8"))
    except RecursionError:  # arrays nested thousands deep: the parser's traceback
        raise ChainError(f"{d / CHAIN_FILE} is not a chain's description (JSON with its name "
                         "and fingerprint): it nests too deep to read") from None
    except OSError as e:
        raise ChainError(f"{d} is not a chain directory (crdtledger chain init): {e}") from None
    except ValueError as e:  # not UTF-8, not JSON
        raise ChainError(f"{d / CHAIN_FILE} is not a chain's description (UTF-8 JSON with "
                         f"its name and fingerprint): {e}") from None
    if not (isinstance(meta, dict) and isinstance(meta.get("name"), str)
            and isinstance(meta.get("fingerprint"), str)):
        raise ChainError(f"{d / CHAIN_FILE} is not a chain's description: it is a JSON "
                         "object with the chain's name and its CA's fingerprint as text")
    try:
        pem = (d / CA_CERT).read_bytes()
        cert = x509.load_pem_x509_certificate(pem)
        name, fingerprint = meta["name"], meta["fingerprint"]
    except (OSError, KeyError, *trust.CERT_ERRORS) as e:
        raise ChainError(f"{d} is not a chain directory (crdtledger chain init): {e}") from None
    if fingerprint != _fingerprint(cert):
        raise ChainError(f"{d / CA_CERT} is not the CA that {d / CHAIN_FILE} names")
    return Chain(name=name, fingerprint=fingerprint, ca_cert=pem, dir=d,
                 has_key=(d / CA_KEY).exists())


def enrol(chain_dir: Path | str, data_dir: Path | str, node: str, *, days: int = NODE_DAYS,
          not_before: dt.datetime | None = None, not_after: dt.datetime | None = None,
          head_office: bool = False, enrolled_ms: int | None = None) -> Path:
    """Issue `node` its certificate (for `crdtledger init --data DIR --node N --chain C`).

    Writes `DATA/tls/node.key` (a fresh key that never leaves the node),
    `node.crt`, the chain's `ca.crt` and its secret `chain.key` (all 0600, `tls`
    0700), and returns that `tls` directory. The node id is in the subject CN and in
    a SAN URI `urn:crdtledger:node:NODE`; the chain name (which is also the node's
    ledger chain id) is the subject O; `head_office` adds the OU `head-office`, the
    right to write chain governance. A copy of the certificate stays in
    `CHAIN/issued/` so that `revoke` can name the node. A chain directory made before
    chains had a secret gets its `chain.key` here, on its first enrolment.
    `not_before`/`not_after` override `days` (tests make expired certificates).
    The certificate says when the chain enrolled the node (trust.ENROLLED_OID): its
    start, or `enrolled_ms` for a renewal (the first enrolment's), and no record of the
    node dated before it is taken anywhere (write rule `enrolled`).
    Refuses a data directory that already has an identity.
    """
    check_node_id(node)
    chain = load_chain(chain_dir)
    ca_key = _load_ca_key(chain)
    ca = x509.load_pem_x509_certificate(chain.ca_cert)
    tls = Path(data_dir) / TLS_DIR
    held = [f for f in (NODE_KEY, NODE_CERT, CA_CERT, CHAIN_KEY) if (tls / f).exists()]
    if held:
        raise ChainError(f"{tls} already holds a node identity ({', '.join(held)})")
    secret = _chain_secret(chain)
    key = ec.generate_private_key(ec.SECP256R1())
    start = not_before or _now() - BACKDATE
    if enrolled_ms is None:
        enrolled_ms = int(start.timestamp()) * 1000  # to the second, as the start is kept
    # A certificate cannot outlive the CA that vouches for it.
    end = not_after or min(start + dt.timedelta(days=days), ca.not_valid_after_utc)
    ca_ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, chain.name),
            *([x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, trust.HEAD_OFFICE)]
              if head_office else []),
            x509.NameAttribute(NameOID.COMMON_NAME, node),
        ]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        # Each node is a server to some peers and a client of others.
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                              ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(
            [x509.UniformResourceIdentifier(NODE_URI + node)]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
                       critical=False)
        .add_extension(trust.enrolment_extension(enrolled_ms), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = cert.public_bytes(serialization.Encoding.PEM)
    private_dir(tls)
    _write_new(tls / NODE_KEY, _key_pem(key))
    _write_new(tls / NODE_CERT, pem)
    _write_new(tls / CA_CERT, chain.ca_cert)
    _write_new(tls / CHAIN_KEY, secret)
    issued = chain.dir / ISSUED_DIR
    private_dir(issued)
    _write_new(issued / f"{node}-{cert.serial_number:x}.crt", pem)
    return tls


def node_serial(data_dir: Path | str) -> int:
    """The serial number of a node's certificate, as `revoke` takes it."""
    path = Path(data_dir) / TLS_DIR / NODE_CERT
    try:
        return x509.load_pem_x509_certificate(path.read_bytes()).serial_number
    except (OSError, *trust.CERT_ERRORS) as e:
        raise ChainError(f"no node certificate at {path}: {e}") from None


def revoke(chain_dir: Path | str, node_cert_pem_or_serial: int | bytes | str, *,
           existing_crl: bytes | str | None = None, publish: bool = True) -> bytes:
    """Sign a new CRL that adds one node's certificate(s); returns its DER.

    For `crdtledger chain revoke`. The target is a serial number, a node
    certificate in PEM, or a node id (every certificate `enrol` issued to it). The
    new list keeps every entry of the CA's last list (`CHAIN/crl.der`) and of
    `existing_crl` (the one in force in the ledger, DER or base64, which must be
    signed by this CA), and its number is one above both. Store it with
    `revocations_rule(der)` as rule `revocations`; nodes install it with
    `Identity.set_revocations`. `publish` False leaves `CHAIN/crl.der` as it was, for
    a caller that publishes it (`publish_crl`) only once the ledger took the rule.
    """
    chain = load_chain(chain_dir)
    ca_key = _load_ca_key(chain)
    ca = x509.load_pem_x509_certificate(chain.ca_cert)
    serials = _serials_to_revoke(chain, ca, node_cert_pem_or_serial)
    own = chain.dir / CRL_FILE
    sources = ([own.read_bytes()] if own.exists() else []) + ([existing_crl] if existing_crl
                                                                 else [])
    try:
        previous = [_verified_crl(ca, _crl_der(crl)) for crl in sources]
    except RevocationRejected as e:
        raise ChainError(f"cannot build on that revocation list: {e}") from None
    now = _now()
    revoked: dict[int, dt.datetime] = {}
    for crl in previous:
        for entry in crl:
            revoked.setdefault(entry.serial_number, entry.revocation_date_utc)
    for serial in serials:
        revoked.setdefault(serial, now)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.subject)
        .last_update(now - BACKDATE)
        # The list is replicated, not fetched, and a branch may be offline for
        # weeks: its authority is its number, so it stays valid as long as the CA.
        .next_update(ca.not_valid_after_utc)
        .add_extension(x509.CRLNumber(max((_crl_number(c) for c in previous), default=0) + 1),
                       critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                       critical=False)
    )
    for serial, when in sorted(revoked.items()):
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(when).build())
    der = builder.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)
    if publish:
        publish_crl(chain_dir, der)
    return der


def publish_crl(chain_dir: Path | str, der: bytes) -> None:
    """Make `der` the chain's last revocation list (`CHAIN/crl.der`): the one the next
    revocation builds on and `init` reads before it enrols a node id again."""
    own = load_chain(chain_dir).dir / CRL_FILE
    tmp = own.with_suffix(".new")
    write_private(tmp, der, sync=True)
    os.replace(tmp, own)


@dataclass(eq=False)
class Identity:
    """What a running node needs to accept and dial peers (from `load_identity`).

    The daemon must check `node` and `chain` against its ledger's own node and
    chain id, and feed every `revocations` rule version it sees to
    `set_revocations` (older ones are refused, so feeding them all is safe).
    """

    node: str
    chain: str
    fingerprint: str  # of the chain CA, as in chain.json and mDNS TXT (`short`)
    tls_dir: Path
    ca_cert: x509.Certificate
    _crl: x509.CertificateRevocationList | None = field(default=None, init=False, repr=False)

    @property
    def cert_path(self) -> Path:
        return self.tls_dir / NODE_CERT

    @property
    def key_path(self) -> Path:
        return self.tls_dir / NODE_KEY

    @property
    def ca_path(self) -> Path:
        return self.tls_dir / CA_CERT

    @property
    def short(self) -> str:
        return self.fingerprint[:SHORT_FINGERPRINT]

    @property
    def crl_number(self) -> int:
        """Number of the installed revocation list; 0 while none is."""
        return 0 if self._crl is None else _crl_number(self._crl)

    def server_ssl_context(self) -> ssl.SSLContext:
        """TLS for the node's listener: a client must present a certificate of this chain."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.verify_mode = ssl.CERT_REQUIRED
        return self._with_chain(ctx)

    def client_ssl_context(self) -> ssl.SSLContext:
        """TLS for dialling a peer: present our certificate, require one of this chain.

        check_hostname is off: the address dialled is not in the peer's certificate.
        Call `check_peer(..., expect_node=...)` on the server's certificate instead.
        """
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies the server by default
        ctx.check_hostname = False
        return self._with_chain(ctx)

    def _with_chain(self, ctx: ssl.SSLContext) -> ssl.SSLContext:
        # OpenSSL negotiates 1.3 whenever both sides have it; 1.2 admits older builds.
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        # Strict RFC 5280 checks (Python 3.13's default) keep our certificates
        # acceptable to stricter verifiers than today's.
        ctx.verify_flags |= ssl.VERIFY_X509_STRICT
        ctx.verify_flags |= _NO_CHECK_TIME
        # The chain CA is the only trust anchor: no system store, no public CA.
        ctx.load_verify_locations(cadata=self.ca_cert.public_bytes(
            serialization.Encoding.PEM).decode("ascii"))
        ctx.load_cert_chain(self.cert_path, self.key_path)
        return ctx

    def check_peer(self, der_cert: bytes | None, *, expect_node: str | None = None) -> str:
        """The node id of a peer from its certificate, once the TLS handshake is done.

        Server side (aiohttp): `request.transport.get_extra_info("ssl_object")
        .getpeercert(binary_form=True)`, before `WebSocketResponse.prepare`; client
        side `ws.get_extra_info("ssl_object")` on what `ws_connect` returned, before
        the first send (a plain response's `connection` is already released once a
        short body has arrived, so it cannot be relied on).

        Raises PeerRejected if the certificate is not issued by this chain's CA, is
        outside its validity, is revoked by the installed list, or names another
        node than `expect_node`. The handshake already checked the issuer; it is
        checked again so that this check holds on its own, whatever context produced
        the certificate. The dates are checked here only (see _NO_CHECK_TIME), a
        certificate being taken from CLOCK_MARGIN before it starts.
        """
        if not der_cert:
            raise PeerRejected("the peer presented no certificate")
        try:
            cert = x509.load_der_x509_certificate(der_cert)
        except trust.CERT_ERRORS:
            raise PeerRejected("the peer's certificate does not parse") from None
        try:
            cert.verify_directly_issued_by(self.ca_cert)
        except (ValueError, TypeError, InvalidSignature):
            raise PeerRejected(f"the peer's certificate is not from chain {self.chain} "
                               f"({self.short})") from None
        node = _node_of(cert)
        now = _now()
        if not cert.not_valid_before_utc - CLOCK_MARGIN <= now <= cert.not_valid_after_utc:
            early = now < cert.not_valid_before_utc
            raise PeerRejected(
                f"the certificate of node {node} is valid only from "
                f"{cert.not_valid_before_utc:%Y-%m-%d %H:%M} to "
                f"{cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC, and this machine's clock "
                f"reads {now:%Y-%m-%d %H:%M} UTC: "
                + ("if it was issued just now, this clock is behind (or the CA's was "
                   "ahead): check the clocks" if early else
                   "renew it (crdtledger chain renew --chain CHAIN_DIR), or check this "
                   "machine's clock"))
        if self._crl is not None and (
                self._crl.get_revoked_certificate_by_serial_number(cert.serial_number)
                is not None):
            raise PeerRejected(f"the certificate of node {node} (serial "
                               f"{cert.serial_number:x}) is revoked")
        if expect_node is not None and node != expect_node:
            raise PeerRejected(f"expected node {expect_node}, the peer is node {node}")
        return node

    def set_revocations(self, crl_der_or_b64: bytes | str) -> int:
        """Install a revocation list (DER, or the base64 text of the ledger rule).

        Returns the number of the list now installed. "" (the rule's default)
        installs nothing. Raises RevocationRejected, changing nothing, for a list
        that does not parse, is not signed by this chain's CA, or has a lower
        number than the installed one (rule versions replicate in any order).
        """
        if not crl_der_or_b64:
            return self.crl_number
        crl = _verified_crl(self.ca_cert, _crl_der(crl_der_or_b64))
        number = _crl_number(crl)
        if number < self.crl_number:
            raise RevocationRejected(f"revocation list {number} is older than the installed "
                                     f"list {self.crl_number}")
        self._crl = crl
        return number


Link = TypeVar("Link")


def apply_revocations(identity: Identity, crl: str, installed: str,
                      links: Iterable[tuple[Link, bytes | None]]
                      ) -> tuple[str, str | None, list[tuple[Link, str]]]:
    """What a node does when the replicated rule `revocations` may have changed: `crl`
    the list in force in its store (Ledger.revocation_list), `installed` the one it
    took last. A new list is installed for the handshake's check (check_peer), and
    the live `links` (each with the certificate its peer presented) that it now
    refuses are returned with the reason, to be closed: a revoked branch must not keep
    its link and our members' data. Returns the list taken (a list that does not
    install is not tried again), why it was not installed (None if it was, or if
    nothing changed), and the links to close. The node (peer.node) and the simulator
    (sim.node) both call this."""
    if not crl or crl == installed:
        return installed, None, []
    try:
        identity.set_revocations(base64.b64decode(crl))
    except (LedgerError, ValueError) as e:
        return crl, str(e), []
    refused: list[tuple[Link, str]] = []
    for link, cert in links:
        try:
            identity.check_peer(cert)
        except PeerRejected as e:
            refused.append((link, str(e)))
    return crl, None, refused


def load_identity(data_dir: Path | str) -> Identity | None:
    """A node's identity from `DATA/tls/`, or None for a node made without a chain CA."""
    tls = Path(data_dir) / TLS_DIR
    if not tls.exists():
        return None
    try:
        ca = x509.load_pem_x509_certificate((tls / CA_CERT).read_bytes())
        cert = x509.load_pem_x509_certificate((tls / NODE_CERT).read_bytes())
        serialization.load_pem_private_key((tls / NODE_KEY).read_bytes(), password=None)
        cert.verify_directly_issued_by(ca)
        chain = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value
    except (OSError, IndexError, InvalidSignature, *trust.CERT_ERRORS) as e:
        raise ChainError(f"{tls} does not hold a usable node identity: {e}") from None
    try:
        node = _node_of(cert)
    except PeerRejected as e:
        raise ChainError(f"{tls / NODE_CERT}: {e}") from None
    return Identity(node=node, chain=str(chain), fingerprint=_fingerprint(ca), tls_dir=tls,
                    ca_cert=ca)


# --- helpers ------------------------------------------------------------------


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _fingerprint(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex()


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not cert_sign, content_commitment=False, key_encipherment=False,
        data_encipherment=False, key_agreement=False, key_cert_sign=cert_sign,
        crl_sign=cert_sign, encipher_only=False, decipher_only=False)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _write_new(path: Path, data: bytes) -> None:
    # O_EXCL, 0600 from the start whatever the umask: a key is never, even briefly,
    # readable by others, and an existing file is never overwritten. Certificates
    # are public, but 0600 like the rest keeps one rule for a chain or data directory
    # (nothing but the node's own user reads them).
    write_private(path, data, exclusive=True, sync=True)


def _chain_secret(chain: Chain) -> bytes:
    """The chain's secret, made now for a chain directory older than chain secrets
    (only where the CA key is, so only once: every later node gets the same)."""
    path = chain.dir / CHAIN_KEY
    if not path.exists():
        # Made meanwhile by another enrolment: that one is the secret.
        with contextlib.suppress(FileExistsError):
            _write_new(path, os.urandom(CHAIN_SECRET_BYTES))
    secret = path.read_bytes()
    # A secret of all zeros (or one byte over and over) was copied to the branch, which
    # then sealed files every other branch refused and anyone could open: refused here,
    # before the node is made.
    fault = trust.secret_fault(secret)
    if fault is not None:
        raise ChainError(f"{path} is not a chain secret ({fault}): put the chain's own "
                         "chain.key back (every enrolled branch holds a copy in its "
                         "data directory's tls/)")
    return secret


def _load_ca_key(chain: Chain) -> ec.EllipticCurvePrivateKey:
    if not chain.has_key:
        raise ChainError(f"{chain.dir} has no {CA_KEY}: enrol and revoke where the chain CA "
                         "key is kept")
    path = chain.dir / CA_KEY
    # An emptied, overwritten or hand-edited key file raised ValueError through
    # `chain renew`, `chain revoke`, `https-cert --chain` and `init` as a traceback.
    # The cure is the head office's copy of the chain directory (README, chain), never
    # a new key: every certificate and revocation list is signed by this one.
    cure = ("restore it from the head office's safe copy of the chain directory (a new "
            "key would not be this chain's CA)")
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except OSError as e:
        raise ChainError(f"cannot read {path}: {e.strerror}") from None
    except trust.CERT_ERRORS:
        raise ChainError(f"{path} is damaged (it is not a chain CA key): {cure}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ChainError(f"{path} is not an EC key: {cure}")
    ca_public = x509.load_pem_x509_certificate(chain.ca_cert).public_key()
    if key.public_key() != ca_public:
        raise ChainError(f"{path} is not the key of {chain.dir / CA_CERT} (another chain's, "
                         f"or replaced): {cure}")
    return key


def _node_of(cert: x509.Certificate) -> str:
    node = trust.node_of(cert)
    if node is None:
        raise PeerRejected("the certificate does not name exactly one node")
    return node


def _serials_to_revoke(chain: Chain, ca: x509.Certificate,
                       target: int | bytes | str) -> list[int]:
    if isinstance(target, int):
        return [target]
    text = target.decode("ascii", "replace") if isinstance(target, bytes) else target
    if "-----BEGIN CERTIFICATE-----" in text:
        try:
            cert = x509.load_pem_x509_certificate(text.encode("ascii"))
            cert.verify_directly_issued_by(ca)
        except (*trust.CERT_ERRORS, InvalidSignature):
            raise ChainError(f"that certificate was not issued by chain {chain.name}") from None
        return [cert.serial_number]
    if isinstance(target, str) and NODE_ID.match(target):
        found = [int(p.stem.rsplit("-", 1)[1], 16) for p in _issued(chain, target)]
        if not found:
            raise ChainError(f"chain {chain.name} has issued no certificate to node {target}")
        return found
    raise InvalidInput("revoke takes a serial number, a PEM certificate or a node id")


def head_office_mark(cert_file: Path) -> bool:
    """Whether the certificate in `cert_file` carries the head-office mark (False for
    none there or one that does not read)."""
    try:
        cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
    except (OSError, *trust.CERT_ERRORS):
        return False
    return trust.marked_head_office(cert)


def ever_issued(chain_dir: Path | str, node: str) -> bool:
    """Whether the chain CA issued `node` a certificate, valid, expired or revoked:
    its log exists somewhere, so a new store must not take that id."""
    return bool(issued_to(chain_dir, node))


def issued_to(chain_dir: Path | str, node: str) -> list[Path]:
    """The copies of the certificates the chain CA issued to `node`."""
    return _issued(load_chain(chain_dir), node)


def first_enrolled_ms(cert_files: list[Path]) -> int | None:
    """The earliest enrolment these certificates of one node say (their enrolment
    extension, else their start: one issued before the extension), None if none
    reads."""
    times = []
    for path in cert_files:
        try:
            cert = x509.load_pem_x509_certificate(path.read_bytes())
        except (OSError, *trust.CERT_ERRORS):
            continue
        times.append(trust.enrolment_of(cert))
    return min(times, default=None)


def _issued(chain: Chain, node: str) -> list[Path]:
    """The copies of every certificate the CA issued to `node` (`enrol` keeps them)."""
    return sorted((chain.dir / ISSUED_DIR).glob(f"{node}-*.crt"))


def _crl_der(crl: bytes | str) -> bytes:
    if isinstance(crl, bytes):
        return crl
    try:
        return base64.b64decode(crl, validate=True)
    except ValueError:
        raise RevocationRejected("the revocation list is not base64") from None


def _verified_crl(ca: x509.Certificate, der: bytes) -> x509.CertificateRevocationList:
    try:
        return trust.verified_crl(ca, der)
    except ValueError as e:
        raise RevocationRejected(str(e)) from None


def _crl_number(crl: x509.CertificateRevocationList) -> int:
    return trust.crl_number(crl)


__all__ = [
    "Chain",
    "ChainError",
    "Identity",
    "PeerRejected",
    "RevocationRejected",
    "enrol",
    "init_chain",
    "load_chain",
    "load_identity",
    "node_serial",
    "revocations_rule",
    "revoke",
]
