"""HTTPS certificates for a node's web pages (the counter, the member pages), made from
the chain's CA, and the checks a certificate passes before a port is opened with it.

One function makes them all (`issue`), so the counter's certificate and the member
port's are the same kind: an ECDSA P-256 server certificate signed by the chain's CA,
naming the host names and addresses a browser will check (the subjectAltName; a
browser ignores the common name), valid 397 days (what browsers accept for a server
certificate, capped by the CA's own end). The CA's key is at the head office only
(peer/chain.py), so a branch's certificate is made there, like its node certificate
at enrolment, and carried to the branch with its data directory. A tablet or a second
till then trusts the chain's `ca.crt` once, or the owner gives a certificate of their
own (`--cert/--key`), e.g. one from a public CA for a name they own.

Files: DATA/tls/<stem>.crt and <stem>.key (the key 0600, in the 0700 tls directory,
as the node's own key is). `https` is the counter's (`crdtledger https-cert`),
`members` the member port's (`python -m reference_app.members_portal`); the member
port takes the counter's when it has none of its own, as both are this host's names.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
import ssl
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from crdtledger.errors import LedgerError
from crdtledger.private import private_dir
from peer import chain as chain_mod

CERT_DAYS = 397  # what browsers accept for a server certificate
COUNTER = "https"  # DATA/tls/https.crt: the counter pages' certificate
# Always named besides the given hosts: the till on the node's own PC reaches its
# pages as https://localhost:PORT, and a certificate naming them costs nothing.
LOCAL_NAMES = ("localhost", "127.0.0.1")
# One label of a host name (RFC 1123): letters, digits and inner hyphens, 1-63 long.
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?", re.IGNORECASE)


def files(data_dir: Path | str, stem: str) -> tuple[Path, Path]:
    tls = Path(data_dir) / chain_mod.TLS_DIR
    return tls / f"{stem}.crt", tls / f"{stem}.key"


def issue(chain_dir: Path | str, data_dir: Path | str, hosts: Sequence[str], *, stem: str,
          days: int = CERT_DAYS, local: bool = True) -> tuple[Path, Path]:
    """A server certificate signed by the chain's CA (where its key is: the head
    office's chain directory), naming `hosts` (DNS names and IP addresses), and with
    `local` also localhost and 127.0.0.1. Written to DATA/tls/<stem>.crt and .key;
    replaces an older one. Returns the two paths."""
    given = [h.strip() for h in hosts if h.strip()]
    if not given:
        raise LedgerError("an HTTPS certificate needs a host name or address that "
                          "browsers reach the node by (--host)")
    # Judged before the CA's key is read: a bad host writes and loads nothing.
    names = [_general_name(h) for h in dict.fromkeys([*given, *(LOCAL_NAMES if local else ())])]
    chain = chain_mod.load_chain(chain_dir)
    ca_key = chain_mod._load_ca_key(chain)
    ca = x509.load_pem_x509_certificate(chain.ca_cert)
    key = ec.generate_private_key(ec.SECP256R1())
    start = chain_mod._now() - chain_mod.BACKDATE
    end = min(start + dt.timedelta(days=days), ca.not_valid_after_utc)
    ca_ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, chain.name),
            x509.NameAttribute(NameOID.COMMON_NAME, given[0][:64]),
        ]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start).not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                       critical=False)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    private_dir(Path(data_dir) / chain_mod.TLS_DIR)
    cert_path, key_path = files(data_dir, stem)
    for path, data in ((key_path, chain_mod._key_pem(key)),
                       (cert_path, cert.public_bytes(serialization.Encoding.PEM))):
        path.unlink(missing_ok=True)
        chain_mod._write_new(path, data)
    return cert_path, key_path


def _general_name(host: str) -> x509.GeneralName:
    """`host` as one subjectAltName: an IP address, or one DNS host name (an IDNA name
    in its xn-- form). Anything else is refused: every till trusts the chain's CA as a
    root and the CA has no name constraints, so a wildcard (`*.com`), a list
    (`a,evil.com`) or a name no host has would let whoever holds the branch's
    https.key pose as sites that are not this node."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        if isinstance(address, ipaddress.IPv6Address) and address.scope_id:
            raise LedgerError(f"{host!r} is an address with a zone (%), which a "
                              "certificate cannot name: give the address without it")
        return x509.IPAddress(address)
    try:
        name = host.encode("idna").decode("ascii")
    except UnicodeError:
        name = ""
    labels = name.split(".")
    # 253 is the longest name DNS carries; an all-digit last label reads as an
    # IPv4 address to a browser (e.g. 192.0.2.300), not as a name.
    if (not name or len(name) > 253 or not all(_LABEL.fullmatch(label) for label in labels)
            or labels[-1].isdigit()):
        raise LedgerError(
            f"{host!r} is neither an IP address nor a host name: give one host per "
            "--host, as letters, digits and hyphens between dots (no *, spaces or "
            "commas, no - at either end of a part)")
    return x509.DNSName(name)


def pair(cert: Path | None, key: Path | None, defaults: Sequence[tuple[Path, Path]], *,
         role: str, missing: str) -> tuple[Path, Path]:
    """The certificate and key to serve with: the owner's (both or neither), else the
    first of `defaults` present; loaded once here, so a bad pair stops the program with
    a sentence before any port opens. `role` names the certificate in that sentence
    ("the counter's certificate"); `missing` is the sentence when there is none."""
    if (cert is None) != (key is None):
        raise LedgerError(f"give {role} and its key together")
    if cert is None or key is None:
        found = next(((c, k) for c, k in defaults if c.exists() and k.exists()), None)
        if found is None:
            raise LedgerError(missing)
        cert, key = found
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as e:
        raise LedgerError(f"cannot use {cert} / {key} as {role}: {e}") from None
    return cert, key


def command(chain_dir: Path, data_dir: Path, hosts: Sequence[str]) -> tuple[dict[str, str], str]:
    """`crdtledger https-cert --chain CHAIN_DIR --data DIR --host NAME_OR_IP...`: the
    counter's certificate for the node in DATA, made at the head office (where the CA's
    key is), before DATA is carried to the branch or while it is there on a USB stick."""
    identity = chain_mod.load_identity(data_dir)
    if identity is None:
        raise LedgerError(f"{data_dir} is not a node with a chain certificate (create one "
                          "with `crdtledger init --data DIR --node NODE --chain CHAIN_DIR`)")
    chain = chain_mod.load_chain(chain_dir)
    if chain.name != identity.chain:
        raise LedgerError(f"{data_dir} belongs to chain {identity.chain}, not to {chain_dir}")
    cert, key = issue(chain_dir, data_dir, hosts, stem=COUNTER)
    names = ", ".join(dict.fromkeys([*hosts, *LOCAL_NAMES]))
    return ({"node": identity.node, "cert": str(cert), "key": str(key)},
            f"HTTPS certificate of {identity.node} for {names}: {cert}\n"
            f"serve the counter with `--https 0.0.0.0:8443`; each till or tablet that "
            f"opens it trusts {Path(chain_dir) / chain_mod.CA_CERT} once (it is public; "
            f"the same file is {identity.ca_path})")
