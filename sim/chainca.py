"""The simulated chain's CA: every node enrolled as a shop's is (DATA/tls/ with
node.key, node.crt, ca.crt, chain.key, the files peer.chain.enrol writes), the
first node as the head office (the only one that may write chain governance).

Built here with `cryptography` rather than by peer.chain (the simulator drives the
library and the node core, not the daemon), and from the seed: keys derived from it,
certificates signed deterministically (RFC 6979) with fixed validity, so that a
seed gives the same certificates, byte for byte, in every run (their sizes are in
the frames the trace digest counts). Revocation lists too (`revoke`), dated by the
simulated clock.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from crdtledger.private import private_dir, write_private
from crdtledger.trust import (
    CA_CERT,
    CHAIN_KEY,
    HEAD_OFFICE,
    NODE_CERT,
    NODE_KEY,
    NODE_URI,
    TLS_DIR,
    enrolment_extension,
)

# Wide enough for any wall clock the run's checks read (Trust checks validity
# against the real time, not the simulated one).
NOT_BEFORE = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)
NOT_AFTER = dt.datetime(2200, 1, 1, tzinfo=dt.UTC)
_ORDER = int("FFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551", 16)


def _key(seed: int, what: str) -> ec.EllipticCurvePrivateKey:
    digest = hashlib.sha256(f"crdtledger sim key\x00{seed}\x00{what}".encode()).digest()
    return ec.derive_private_key(int.from_bytes(digest, "big") % (_ORDER - 1) + 1,
                                 ec.SECP256R1())


def _serial(seed: int, what: str) -> int:
    digest = hashlib.sha256(f"crdtledger sim serial\x00{seed}\x00{what}".encode()).digest()
    return int.from_bytes(digest[:16], "big") | 1 << 126  # positive, fixed length


def _pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


class ChainCA:
    """One chain CA for a run; `enrol` writes a node's identity into its directory."""

    def __init__(self, chain: str, seed: int, enrolled: dt.datetime | None = None) -> None:
        """`enrolled`: when the chain enrolled its nodes, said in each certificate as
        peer.chain.enrol says it (write rule `enrolled`); None: not said."""
        self.chain = chain
        self.seed = seed
        self.enrolled_ms = None if enrolled is None else int(enrolled.timestamp()) * 1000
        self.key = _key(seed, "ca")
        subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, chain),
                             x509.NameAttribute(NameOID.COMMON_NAME, f"crdtledger chain {chain}")])
        ski = x509.SubjectKeyIdentifier.from_public_key(self.key.public_key())
        self.cert = (
            x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(self.key.public_key()).serial_number(_serial(seed, "ca"))
            .not_valid_before(NOT_BEFORE).not_valid_after(NOT_AFTER)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(ski, critical=False)
            .sign(self.key, hashes.SHA256(), ecdsa_deterministic=True))
        self.secret = hashlib.sha256(f"crdtledger sim chain secret\x00{seed}".encode()).digest()
        self.revoked: dict[str, dt.datetime] = {}  # node -> when
        self.crl_number = 0

    def enrol(self, data_dir: Path, node: str, *, head_office: bool = False) -> None:
        key, cert = self.identity(node, head_office=head_office)
        tls = Path(data_dir) / TLS_DIR
        private_dir(tls)
        write_private(tls / NODE_KEY, _pem(key))
        write_private(tls / NODE_CERT, cert.public_bytes(serialization.Encoding.PEM))
        write_private(tls / CA_CERT, self.cert.public_bytes(serialization.Encoding.PEM))
        write_private(tls / CHAIN_KEY, self.secret)

    def identity(self, node: str, *, head_office: bool = False
                 ) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        """A node's key and its certificate from this CA, derived from the seed and the
        node id: what `enrol` writes, or, for a writer with no directory of its own (a
        forger's extra identity, sim.byzantine), what it signs with."""
        key = _key(self.seed, f"node {node}")
        subject = x509.Name([
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, self.chain),
            *([x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, HEAD_OFFICE)]
              if head_office else []),
            x509.NameAttribute(NameOID.COMMON_NAME, node)])
        builder = (
            x509.CertificateBuilder().subject_name(subject).issuer_name(self.cert.subject)
            .public_key(key.public_key()).serial_number(_serial(self.seed, node))
            .not_valid_before(NOT_BEFORE).not_valid_after(NOT_AFTER)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                  ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .add_extension(x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(NODE_URI + node)]), critical=False))
        if self.enrolled_ms is not None:
            builder = builder.add_extension(enrolment_extension(self.enrolled_ms),
                                            critical=False)
        return key, builder.sign(self.key, hashes.SHA256(), ecdsa_deterministic=True)

    def revoke(self, node: str, when: dt.datetime) -> bytes:
        """A revocation list (DER) of every node revoked so far and `node`, numbered one
        above the last, as `crdtledger chain revoke` signs it (peer.chain.revoke)."""
        self.revoked.setdefault(node, when)
        self.crl_number += 1
        builder = (
            x509.CertificateRevocationListBuilder().issuer_name(self.cert.subject)
            .last_update(when).next_update(NOT_AFTER)
            .add_extension(x509.CRLNumber(self.crl_number), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                self.key.public_key()), critical=False))
        for name, at in sorted(self.revoked.items()):
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(_serial(self.seed, name))
                .revocation_date(at).build())
        crl = builder.sign(self.key, hashes.SHA256(), ecdsa_deterministic=True)
        return crl.public_bytes(serialization.Encoding.DER)
