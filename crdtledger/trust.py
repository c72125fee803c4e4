"""Who wrote a record: node keys, the chain CA that certifies them, and what each may do.

mTLS decides who may connect; it says nothing about who wrote what a peer relays or
a USB stick carries. So every node signs the heads of its own log (crdtledger.log)
with the key the chain CA certified for it, and every replica checks those
signatures itself, for records from a session and from a file alike.

Two kinds of store:

- **Enrolled** (``crdtledger init --chain CHAIN_DIR``, what a shop runs): the key and
  certificate in ``DATA/tls/`` (peer.chain.enrol), the chain's ``ca.crt`` and its
  ``chain.key``. A head is accepted only under a certificate the chain CA issued
  for exactly that node, inside its validity, not on the CA's revocation list.
  Chain governance (operators, roles, rules, prices, revocations) is written only by
  a node whose certificate carries the head-office mark (OU ``head-office``), given
  by ``crdtledger init --chain ... --head-office``.
- **Open** (no chain CA: a single shop trying it out, library tests): the store makes
  itself a key and a self-signed certificate in ``DATA/keys/``. With no authority
  there is nothing to check a stranger's key against, so an open store trusts the
  first key it sees for each node and refuses any other later (trust on first use),
  and every node may govern. An enrolled store never accepts a self-signed key.

The chain secret (``chain.key``) is what sync files and backups are encrypted with
(crdtledger.seal): every branch of the chain holds it, a lost stick does not. An
open store has no secret; its files are signed but readable by anyone (said where
they are written).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from crdtledger.errors import RemoteProtocolError
from crdtledger.hlc import NODE_ID
from crdtledger.private import private_dir, write_private

# What cryptography raises for bytes that are not a certificate it can use: at load
# (a bad version field is InvalidVersion, no ValueError) or at a field's first read
# (parsed lazily: the key, the names, the extensions, one given twice). Found by
# flipping each byte of a certificate (tests/test_seal.py).
CERT_ERRORS = (ValueError, TypeError, UnsupportedAlgorithm, x509.InvalidVersion,
               x509.DuplicateExtension, x509.UnsupportedGeneralNameType)

TLS_DIR = "tls"  # enrolled: peer.chain.enrol writes it
OPEN_DIR = "keys"  # open store: made here on first open
NODE_KEY = "node.key"
NODE_CERT = "node.crt"
CA_CERT = "ca.crt"
CHAIN_KEY = "chain.key"
CHAIN_SECRET_BYTES = 32  # peer.chain.init_chain: os.urandom(32)
# 32 random bytes take ~30 different values; fewer than 16 happens to one key in
# about 10**15. A key of all zeros, all one byte or a short pattern repeated (typed by
# hand, a file zeroed by a tool) has no secrecy: anyone who guesses it reads every
# file the chain seals, and the chain's other branches refuse what it seals.
MIN_SECRET_VALUES = 16
NODE_URI = "urn:crdtledger:node:"
# The chain's word on when it enrolled a node (ms since the epoch, a DER INTEGER), in
# a certificate extension (an OID of the 2.25 UUID arc, needing no registration) that
# every renewal carries over (peer.chain.renew): no record of the node may carry a
# time before it (write rule `enrolled`). Not the certificate's start, which a renewal
# moves: a rule on that would refuse a renewed branch's older records and block it.
ENROLLED_OID = x509.ObjectIdentifier("2.25.292512414191748289010250245444857073995")
HEAD_OFFICE = "head-office"  # the certificate's OU that grants chain governance
_ECDSA = ec.ECDSA(hashes.SHA256())
# Signatures this process has verified, keyed by the exact bytes (certificate DER,
# message, signature). Whether a signature matches is a fact of those bytes alone (the
# key is the one the certificate holds), so it is remembered process-wide: every
# record reaches a shop through both hubs, and a simulated chain runs 20-50 stores in
# one process, each verifying the same head. Only the signature check is remembered:
# whether this store trusts the certificate (its CA, the node it names, its validity,
# the revocation list in force) is judged on every call, before the memo is read, so a
# certificate revoked after its signatures were remembered is still refused. Bounded,
# oldest first out: a head is re-verified within seconds of its first arrival.
VERIFIED_MAX = 8192
_verified: OrderedDict[tuple[bytes, bytes, bytes], None] = OrderedDict()


class UntrustedSigner(RemoteProtocolError):
    """A record, head or file is signed by a key this chain does not vouch for."""

    code = "untrusted_signer"


class RevokedSigner(UntrustedSigner):
    """Signed by a certificate the chain revoked: a branch closed for good or cut off
    by the owner. Nothing new it signed is taken, but a file that carries its records
    is not thereby altered: the rest of the file stands (replica._verify)."""


@dataclass
class _Known:
    node: str
    key: ec.EllipticCurvePublicKey
    serial: int
    not_after: dt.datetime
    governs: bool
    enrolled: int | None  # ENROLLED_OID's time; None in a certificate without it


@dataclass
class Trust:
    """The keys of one store and its judgement of others' keys."""

    chain: str
    node: str
    key: ec.EllipticCurvePrivateKey
    cert_der: bytes
    seal_key: bytes  # 32 bytes, the chain secret (derived from the chain id when open)
    ca: x509.Certificate | None  # None: an open store
    _crl: x509.CertificateRevocationList | None = field(default=None, repr=False)
    # Does the list installed revoke this store's own certificate? Judged when a list
    # is installed, not at every commit (Ledger._check_may_write asks it per write).
    self_revoked: bool = field(default=False, repr=False)
    _known: dict[bytes, _Known] = field(default_factory=dict, repr=False)
    # Open stores: the first certificate seen per node (persisted by the ledger).
    pinned: dict[str, bytes] = field(default_factory=dict, repr=False)
    now: Callable[[], dt.datetime] = field(default=lambda: dt.datetime.now(dt.UTC), repr=False)

    @classmethod
    def for_reading(cls, chain: str, ca_pem: bytes | None, chain_secret: bytes | None
                    ) -> Trust:
        """A Trust that checks and opens a chain's sealed files without being a node of
        it (restoring a backup from the chain directory, where no node key exists yet).
        `ca_pem` None: an open chain, whose files anyone can open. Its own key is a
        throwaway that no store trusts: what it signs is refused everywhere."""
        ca = None if ca_pem is None else x509.load_pem_x509_certificate(ca_pem)
        if ca is None:
            secret = b"open store: no chain secret"  # as _open_trust
        elif chain_secret is None:  # as load_trust for a node enrolled before chain.key
            secret = ca.public_bytes(serialization.Encoding.DER)
        else:
            secret = chain_secret
        return cls(chain=chain, node="", key=ec.generate_private_key(ec.SECP256R1()),
                   cert_der=b"", seal_key=_derive(secret, chain), ca=ca)

    @property
    def enrolled(self) -> bool:
        return self.ca is not None

    def enrolled_ms(self) -> int:
        """When the chain enrolled this node, by the head office's clock (its
        certificate's start, already a day back: peer.chain.BACKDATE); 0 for an open
        store, whose certificate it made itself by its own clock."""
        if self.ca is None or not self.cert_der:
            return 0
        return enrolment_of(x509.load_der_x509_certificate(self.cert_der))

    def expires_ms(self) -> int | None:
        """When this node's certificate ends (ms since 1970): past it, every branch
        refuses what it writes, so it says so before (`views.trust_status`). None for
        an open store, whose certificate is its own."""
        if self.ca is None or not self.cert_der:
            return None
        cert = x509.load_der_x509_certificate(self.cert_der)
        return int(cert.not_valid_after_utc.timestamp() * 1000)

    def enrolled_since(self, node: str, der: bytes | None) -> int | None:
        """When the chain enrolled `node`, by this certificate of it from our CA (its
        ENROLLED_OID extension): no record of it may carry an earlier time. None where
        the certificate does not say (one issued before the extension, an open store's,
        one not ours): such a writer is not judged by it."""
        if self.ca is None or not der:
            return None
        try:
            known = self._known.get(der) or self._judge(node, der)
        except UntrustedSigner:
            return None
        return known.enrolled if known.node == node else None

    @property
    def governs(self) -> bool:
        """May this node write chain governance (operators, roles, rules)?"""
        return self.may_govern(self.node, self.cert_der)

    def sign(self, message: bytes) -> bytes:
        return self.key.sign(message, _ECDSA)

    def check_cert(self, node: str, der: bytes, *, expiry: bool = True) -> _Known:
        """The key `der` certifies for `node`, or UntrustedSigner saying why not.
        `expiry=False`: a signed log's heads, which stay what their writer signed after
        its certificate runs out (as a signed commit does). Judged by the reader's
        clock, an expired shop's history was refused by every branch joining later,
        and every honest record building on it waited there for ever; revocation, not
        expiry, ends what a branch may write. Live links (peer.chain.check_peer) and
        files a node seals check the dates."""
        known = self._known.get(der)
        if known is None:
            known = self._judge(node, der)
            if len(self._known) > 4096:  # certificates of hundreds of branches, re-enrolled
                self._known.clear()
            self._known[der] = known
        if known.node != node:
            raise UntrustedSigner(f"a certificate of node {known.node} was given for {node}")
        if expiry and self.now() > known.not_after:
            raise UntrustedSigner(f"the certificate of node {node} expired on "
                                  f"{known.not_after:%Y-%m-%d}")
        if self._is_revoked(known):
            raise RevokedSigner(f"the certificate of node {node} (serial {known.serial:x}) "
                                "is revoked")
        return known

    def _is_revoked(self, known: _Known) -> bool:
        return self._crl is not None and (
            self._crl.get_revoked_certificate_by_serial_number(known.serial) is not None)

    def verify(self, node: str, der: bytes, message: bytes, signature: bytes, *,
               expiry: bool = True) -> _Known:
        known = self.check_cert(node, der, expiry=expiry)  # every time: revocation too
        memo = (der, message, signature)
        if memo in _verified:
            return known
        try:
            known.key.verify(signature, message, _ECDSA)
        except InvalidSignature:
            raise UntrustedSigner(f"a signature of node {node} does not match what it signs"
                                  ) from None
        _verified[memo] = None  # only what verified: a refusal is judged again each time
        while len(_verified) > VERIFIED_MAX:
            _verified.popitem(last=False)
        return known

    def revoked(self, node: str, der: bytes) -> bool:
        """Has the chain revoked this certificate of `node` (a branch closed for good:
        nothing signed under it is taken any more)?"""
        if self._crl is None:
            return False
        try:
            return self._is_revoked(self._known.get(der) or self._judge(node, der))
        except UntrustedSigner:
            return False

    def may_govern(self, node: str, der: bytes) -> bool:
        if self.ca is None:
            return True
        try:
            return self.check_cert(node, der, expiry=False).governs
        except UntrustedSigner:
            return False

    def marks_head_office(self, node: str, der: bytes) -> bool:
        """Does this certificate of `node`, issued by our CA, carry the head-office mark,
        revocation aside (what a decision it signed while in force is judged by)?"""
        if self.ca is None:
            return True
        try:
            known = self._known.get(der) or self._judge(node, der)
        except UntrustedSigner:
            return False
        return known.node == node and known.governs

    def is_revocation_list(self, record: Any) -> bool:
        """Is a rule record (as replicated) a revocation list signed by our CA? Such a
        list carries its own authority: any branch may write it."""
        if self.ca is None or not isinstance(record, dict) or record.get("kind") != "revocations":
            return False
        try:
            body = json.loads(record.get("body") or "")
            verified_crl(self.ca, base64.b64decode(body["crl"], validate=True))
        except (ValueError, TypeError, KeyError):
            return False
        return True

    def crl_number_of(self, crl_b64: str) -> int | None:
        """The number of a revocation list our CA signed, else None (in an open store,
        which has no CA, every list counts as 0: the latest written is in force)."""
        if self.ca is None:
            return 0 if crl_b64 else None
        try:
            return crl_number(verified_crl(self.ca, base64.b64decode(crl_b64, validate=True)))
        except ValueError:
            return None

    def set_revocations(self, crl_b64: str) -> bool:
        """Install the chain's revocation list from its rule (base64 DER), if it is
        signed by our CA and newer than ours. Returns whether it was installed."""
        if self.ca is None or not crl_b64:
            return False
        try:
            crl = verified_crl(self.ca, base64.b64decode(crl_b64, validate=True))
        except ValueError:
            return False
        if self._crl is not None and crl_number(crl) <= crl_number(self._crl):
            return False
        self._crl = crl
        self.self_revoked = bool(self.cert_der) and self.revoked(self.node, self.cert_der)
        return True

    def _judge(self, node: str, der: bytes) -> _Known:
        try:
            return self._judged(node, der, x509.load_der_x509_certificate(der))
        except CERT_ERRORS:  # someone's bytes: a certificate that does not parse
            raise UntrustedSigner(f"the certificate given for node {node} does not parse"
                                  ) from None

    def _judged(self, node: str, der: bytes, cert: x509.Certificate) -> _Known:
        if self.ca is None:
            pinned = self.pinned.get(node)
            if pinned is not None and pinned != der and node != self.node:
                raise UntrustedSigner(f"node {node} signed with a key other than the one this "
                                      "store first saw for it (a store without a chain CA "
                                      "trusts a node's first key)")
            if node == self.node and der != self.cert_der:
                raise UntrustedSigner(f"a key other than this store's own signed as {node}")
        else:
            try:
                cert.verify_directly_issued_by(self.ca)
            except (ValueError, TypeError, InvalidSignature):
                raise UntrustedSigner(
                    f"node {node}'s key is not certified by chain {self.chain}'s CA "
                    "(a store not enrolled in this chain, or another chain's)") from None
        named = node_of(cert)
        if named is None or named != node:
            raise UntrustedSigner(f"the certificate given for node {node} names {named}")
        key = cert.public_key()
        if not isinstance(key, ec.EllipticCurvePublicKey):
            raise UntrustedSigner(f"node {node}'s certificate holds no EC key")
        if self.now() < cert.not_valid_before_utc - dt.timedelta(days=1):
            raise UntrustedSigner(f"the certificate of node {node} is not valid before "
                                  f"{cert.not_valid_before_utc:%Y-%m-%d}")
        return _Known(node=node, key=key, serial=cert.serial_number,
                      not_after=cert.not_valid_after_utc,
                      governs=self.ca is None or marked_head_office(cert),
                      enrolled=None if self.ca is None else enrolled_since(cert))


def marked_head_office(cert: x509.Certificate) -> bool:
    """Whether a certificate carries the head-office mark (its OU)."""
    return HEAD_OFFICE in [a.value for a in cert.subject.get_attributes_for_oid(
        NameOID.ORGANIZATIONAL_UNIT_NAME)]


def enrolment_extension(ms: int) -> x509.UnrecognizedExtension:
    """The ENROLLED_OID extension saying `ms` (peer.chain.enrol adds it)."""
    if ms < 0:
        raise ValueError("an enrolment time before 1970")
    body = ms.to_bytes(ms.bit_length() // 8 + 1, "big")  # a leading 0 keeps it positive
    return x509.UnrecognizedExtension(ENROLLED_OID, b"\x02" + bytes([len(body)]) + body)


def enrolled_since(cert: x509.Certificate) -> int | None:
    """The enrolment time a certificate carries (ENROLLED_OID), or None: none there,
    or not a small positive DER INTEGER (our CA writes no other; a certificate that
    carries another is judged as one without)."""
    try:
        value = cert.extensions.get_extension_for_oid(ENROLLED_OID).value
    except x509.ExtensionNotFound:
        return None
    raw = getattr(value, "value", b"")
    if len(raw) < 3 or raw[0] != 2 or raw[1] != len(raw) - 2 or raw[1] > 9 or raw[2] & 0x80:
        return None
    return int.from_bytes(raw[2:], "big")


def enrolment_of(cert: x509.Certificate) -> int:
    """When a certificate says its node was enrolled: its extension, else (one issued
    before the extension) its start."""
    since = enrolled_since(cert)
    return since if since is not None else int(cert.not_valid_before_utc.timestamp() * 1000)


def node_of(cert: x509.Certificate) -> str | None:
    """The node id a certificate names in its SAN URI, or None."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    nodes = [u.removeprefix(NODE_URI) for u in san.get_values_for_type(
        x509.UniformResourceIdentifier) if u.startswith(NODE_URI)]
    if len(nodes) != 1 or not NODE_ID.match(nodes[0]):
        return None
    return nodes[0]


def revocations_rule(crl_der: bytes) -> dict[str, str]:
    """The body of the ledger rule `revocations` that carries a CRL to every node
    (what `Trust.is_revocation_list` and `set_revocations` read)."""
    return {"crl": base64.b64encode(crl_der).decode("ascii")}


def verified_crl(ca: x509.Certificate, der: bytes) -> x509.CertificateRevocationList:
    """A revocation list signed by `ca`, else ValueError saying why."""
    public_key = ca.public_key()
    if not isinstance(public_key, ec.EllipticCurvePublicKey):
        raise ValueError("this chain's CA key cannot sign revocation lists")
    try:
        crl = x509.load_der_x509_crl(der)
        signed = crl.issuer == ca.subject and crl.is_signature_valid(public_key)
        crl_number(crl)
    except (*CERT_ERRORS, x509.ExtensionNotFound):
        raise ValueError("the revocation list does not parse or has no number") from None
    if not signed:
        raise ValueError("the revocation list is not signed by this chain's CA")
    return crl


def crl_number(crl: x509.CertificateRevocationList) -> int:
    return int(crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number)


def load_trust(data_dir: Path, chain: str, node: str) -> Trust:
    """The store's keys: enrolled from ``DATA/tls``, else open (made on first use)."""
    tls = Path(data_dir) / TLS_DIR
    if (tls / NODE_CERT).exists():
        try:
            ca = x509.load_pem_x509_certificate((tls / CA_CERT).read_bytes())
            cert = x509.load_pem_x509_certificate((tls / NODE_CERT).read_bytes())
            key = serialization.load_pem_private_key((tls / NODE_KEY).read_bytes(), None)
        except (OSError, *CERT_ERRORS) as e:
            raise UntrustedSigner(f"{tls} does not hold a usable node identity: {e}") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise UntrustedSigner(f"{tls / NODE_KEY} is not an EC key")
        # The store must be this directory's node's, of its chain: a store file copied
        # from another branch (or chain) into it was opened and sold from, under keys
        # that name another node, and no branch ever took what it wrote.
        named = node_of(cert)
        orgs = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
        of_chain = str(orgs[0].value) if orgs else chain
        if named != node or of_chain != chain:
            raise UntrustedSigner(
                f"the store in {data_dir} is node {node} of chain {chain!r}, but this "
                f"directory's certificate is node {named} of chain {of_chain!r}: a store "
                "file copied from another branch? Put back this branch's own store "
                "(crdtledger restore, from its backup)")
        try:
            secret = (tls / CHAIN_KEY).read_bytes()
        except FileNotFoundError:
            # Enrolled before chains had a secret: the CA certificate, which only the
            # chain's machines hold, stands in (re-enrol to get a real one).
            secret = ca.public_bytes(serialization.Encoding.DER)
        except OSError as e:
            raise UntrustedSigner(f"cannot read {tls / CHAIN_KEY}: {e.strerror}") from None
        else:
            # An emptied or overwritten secret sealed sync files and backups that no
            # branch could open (nor this one, once it was put right), with exit 0:
            # refused as a damaged key is. The chain directory's copy is the same
            # 32 bytes (peer.chain.enrol copies it), so that copy is the cure.
            # All zeros or one byte over and over is 32 bytes too, and sealed as
            # surely what no branch could open (nor anyone fail to).
            fault = secret_fault(secret)
            if fault is not None:
                raise UntrustedSigner(
                    f"{tls / CHAIN_KEY} is damaged (not a chain secret: {fault}); copy "
                    "chain.key from the chain directory this branch was enrolled with "
                    "over it")
        return Trust(chain=chain, node=node, key=key,
                     cert_der=cert.public_bytes(serialization.Encoding.DER),
                     seal_key=_derive(secret, chain), ca=ca)
    return _open_trust(Path(data_dir) / OPEN_DIR, chain, node)


def _open_trust(keys: Path, chain: str, node: str) -> Trust:
    key_path, cert_path = keys / NODE_KEY, keys / NODE_CERT
    if not cert_path.exists():
        private_dir(keys)
        new_key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, chain),
                          x509.NameAttribute(NameOID.COMMON_NAME, node)])
        now = dt.datetime.now(dt.UTC)
        new_cert = (
            x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(new_key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=36500))
            .add_extension(x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(NODE_URI + node)]), critical=False)
            .sign(new_key, hashes.SHA256()))
        write_private(key_path, new_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()), sync=True)
        write_private(cert_path, new_cert.public_bytes(serialization.Encoding.PEM), sync=True)
    try:
        key = serialization.load_pem_private_key(key_path.read_bytes(), None)
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except (OSError, *CERT_ERRORS) as e:
        raise UntrustedSigner(f"{keys} does not hold a usable key: {e}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise UntrustedSigner(f"{key_path} is not an EC key")
    return Trust(chain=chain, node=node, key=key,
                 cert_der=cert.public_bytes(serialization.Encoding.DER),
                 seal_key=_derive(b"open store: no chain secret", chain), ca=None)


def secret_fault(secret: bytes) -> str | None:
    """Why `secret` (a chain.key's bytes) cannot be a chain secret, as the end of a
    sentence naming its file; None if it can."""
    if len(secret) != CHAIN_SECRET_BYTES:
        return f"{len(secret)} bytes, not {CHAIN_SECRET_BYTES}"
    if len(set(secret)) < MIN_SECRET_VALUES:
        what = (f"all bytes {secret[0]:#04x}" if len(set(secret)) == 1
                else f"only {len(set(secret))} different byte values")
        return f"{what}, not random: anyone could guess it"
    return None


def _derive(secret: bytes, chain: str) -> bytes:
    return hashlib.sha256(b"crdtledger seal key\x00" + chain.encode() + b"\x00" + secret
                          ).digest()
