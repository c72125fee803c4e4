"""Sealed files (crdtledger.seal): signed by the writing node, encrypted for the chain,
and refused whole, with a sentence, when anything about them is wrong.

The chains are real (peer.chain.init_chain / enrol): "acme" with branches SH01 (the
head office), SH02 and SH03, a foreign chain also called "acme" with its own SH02
(names prove nothing, only the CA does), and stores without a chain CA.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path

import msgpack
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID
from hypothesis import given
from hypothesis import strategies as st

from crdtledger.errors import CorruptSyncFile, ForeignChain, RemoteProtocolError
from crdtledger.seal import FORMAT, MAGIC, Sealed, kind_of, peek_header, seal, unseal
from crdtledger.trust import HEAD_OFFICE, Trust, UntrustedSigner, load_trust
from peer.chain import (
    CHAIN_KEY,
    ChainError,
    enrol,
    init_chain,
    load_chain,
    load_identity,
    revocations_rule,
    revoke,
)

CREATED = 1_796_000_000_000
PAYLOAD = "会员 13812345678 PIN-hash ".encode() * 40
WHAT = "sync file /media/usb/sh01.sync"


@dataclass
class World:
    root: Path
    chain: Path
    foreign_chain: Path

    def data(self, node: str, chain: str = "acme") -> Path:
        return self.root / chain / node.lower()

    def trust(self, node: str, chain: str = "acme", *, foreign: bool = False) -> Trust:
        return load_trust(self.data(node, "foreign" if foreign else chain), chain, node)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    root = tmp_path_factory.mktemp("seal")
    w = World(root, root / "chains" / "acme", root / "elsewhere" / "acme")
    init_chain(w.chain)
    init_chain(w.foreign_chain)
    enrol(w.chain, w.data("SH01"), "SH01", head_office=True)
    enrol(w.chain, w.data("SH02"), "SH02")
    enrol(w.chain, w.data("SH03"), "SH03")
    enrol(w.foreign_chain, w.data("SH02", "foreign"), "SH02")
    return w


def sealed_by(w: World, node: str = "SH01", kind: str = "sync") -> bytes:
    return seal(w.trust(node), kind, PAYLOAD, CREATED)


def refused(trust: Trust, data: bytes, kind: str = "sync") -> RemoteProtocolError:
    with pytest.raises(RemoteProtocolError) as e:
        unseal(trust, data, kind, what=WHAT)
    assert WHAT in str(e.value)  # the sentence names the file
    return e.value


def header_span(data: bytes) -> tuple[int, int]:
    start = data.index(b"\n") + 1 + 4
    return start, start + int.from_bytes(data[start - 4:start], "big")


# --- round trip ----------------------------------------------------------------------


def test_a_branch_reads_what_another_branch_sealed(world: World) -> None:
    data = sealed_by(world, "SH01")
    assert data.split(b"\n", 1)[0] == MAGIC + b"sync " + str(FORMAT).encode()
    assert kind_of(data) == ("sync", FORMAT)
    assert unseal(world.trust("SH02"), data, "sync", what=WHAT) == Sealed(
        node="SH01", created_ms=CREATED, payload=PAYLOAD)
    # Its own files too, and a backup is a kind of its own.
    backup = sealed_by(world, "SH02", "backup")
    assert unseal(world.trust("SH02"), backup, "backup", what=WHAT).payload == PAYLOAD
    # Two seals of the same content differ (a fresh nonce each time).
    assert sealed_by(world) != data


def test_nothing_of_the_content_is_in_the_clear(world: World) -> None:
    data = sealed_by(world)
    assert b"13812345678" not in data and "会员".encode() not in data
    header = peek_header(data)
    assert header is not None and header["chain"] == "acme" and header["node"] == "SH01"


# --- refusals, in the order they are checked -----------------------------------------


def test_not_a_sealed_file_or_the_wrong_kind(world: World) -> None:
    reader = world.trust("SH02")
    for junk in (b"", b"hello\n", b"CRDTLEDGER-SYNC 1\n" + bytes(40), os.urandom(300)):
        e = refused(reader, junk)
        assert isinstance(e, CorruptSyncFile) and "not a crdtledger sync file" in str(e)
    e = refused(reader, sealed_by(world, kind="backup"), "sync")
    assert isinstance(e, CorruptSyncFile) and "a crdtledger backup file, not a sync file" in str(e)
    e = refused(reader, sealed_by(world).replace(b"SEALED sync", b"SEALED film", 1))
    assert "unknown kind" in str(e)


def test_a_newer_format_says_to_upgrade(world: World) -> None:
    data = sealed_by(world)
    newer = data.replace(b"sync 1\n", b"sync 2\n", 1)
    e = refused(world.trust("SH02"), newer)
    assert isinstance(e, CorruptSyncFile)
    assert "format 2, made by a newer crdtledger" in str(e) and "upgrade" in str(e)
    e = refused(world.trust("SH02"), data.replace(b"sync 1\n", b"sync x\n", 1))
    assert "unreadable format" in str(e)
    e = refused(world.trust("SH02"), data.replace(b"sync 1\n", b"sync 0\n", 1))
    assert "does not read" in str(e)


def test_a_truncated_file_is_refused_at_any_length(world: World) -> None:
    data = sealed_by(world)
    line = data.index(b"\n") + 1
    h0, h1 = header_span(data)
    cuts = [1, 10, line - 1, line, line + 2, h0 + 5, h1, h1 + 3, h1 + 8, h1 + 100,
            len(data) - 80, len(data) - 2, len(data) - 1]
    for cut in cuts:
        e = refused(world.trust("SH02"), data[:cut])
        assert isinstance(e, CorruptSyncFile), cut
        assert "incomplete" in str(e) or "damaged" in str(e), (cut, str(e))
    e = refused(world.trust("SH02"), data + b"\0")
    assert "bytes follow its signature" in str(e)


@pytest.mark.parametrize("where", ["header", "body", "signature"])
def test_an_altered_byte_is_refused(world: World, where: str) -> None:
    data = bytearray(sealed_by(world))
    h0, h1 = header_span(bytes(data))
    nonce = peek_header(bytes(data))
    assert nonce is not None
    at = {"header": bytes(data).index(nonce["nonce"], h0, h1) + 3,  # inside the nonce
          "body": h1 + 8 + 200,
          "signature": len(data) - 5}[where]
    data[at] ^= 0x01
    e = refused(world.trust("SH02"), bytes(data))
    assert isinstance(e, CorruptSyncFile)
    assert "was altered after it was signed (the signature of node SH01" in str(e)


def test_the_created_time_and_the_signer_are_covered_too(world: World) -> None:
    data = sealed_by(world)
    h0, h1 = header_span(data)
    header = data[h0:h1]
    # Another writer named, with SH01's certificate and signature: altered, said so
    # before its signer is judged.
    forged = header.replace(b"SH01", b"SH02", 1)
    e = refused(world.trust("SH02"), data[:h0] + forged + data[h1:])
    assert isinstance(e, CorruptSyncFile)
    assert "altered after it was signed (the signature of node SH02" in str(e)
    # Another time.
    packed = msgpack.packb(CREATED)
    later = header.replace(packed, msgpack.packb(CREATED + 3_600_000), 1)
    assert later != header and len(later) == len(header)
    e = refused(world.trust("SH02"), data[:h0] + later + data[h1:])
    assert "was altered after it was signed (the signature of node SH01" in str(e)


def test_a_file_of_another_chain_is_refused_naming_both(world: World, tmp_path: Path) -> None:
    west = seal(load_trust(tmp_path / "west", "west", "SH01"), "sync", PAYLOAD, CREATED)
    e = refused(world.trust("SH02"), west)
    assert isinstance(e, ForeignChain)
    assert "'west'" in str(e) and "'acme'" in str(e)
    # Another chain that is also called acme: its CA did not certify the signer.
    foreign = seal(world.trust("SH02", foreign=True), "sync", PAYLOAD, CREATED)
    e = refused(world.trust("SH02"), foreign)
    assert isinstance(e, UntrustedSigner)
    assert "not certified by chain acme's CA" in str(e)


def test_a_store_not_enrolled_in_the_chain_is_refused(world: World, tmp_path: Path) -> None:
    # A store without a chain CA that calls itself SH09 of acme: a self-signed key.
    stranger = seal(load_trust(tmp_path / "sh09", "acme", "SH09"), "sync", PAYLOAD, CREATED)
    e = refused(world.trust("SH02"), stranger)
    assert isinstance(e, UntrustedSigner) and "SH09" in str(e)
    # Or one that claims to be an enrolled branch.
    fake = seal(load_trust(tmp_path / "sh01", "acme", "SH01"), "sync", PAYLOAD, CREATED)
    assert isinstance(refused(world.trust("SH02"), fake), UntrustedSigner)


def test_a_revoked_signer_is_refused(world: World) -> None:
    data = sealed_by(world, "SH03")
    reader = world.trust("SH02")
    assert unseal(reader, data, "sync", what=WHAT).node == "SH03"
    crl = revoke(world.chain, "SH03")
    reader = world.trust("SH02")
    assert reader.set_revocations(revocations_rule(crl)["crl"])
    e = refused(reader, data)
    assert isinstance(e, UntrustedSigner) and "revoked" in str(e) and "SH03" in str(e)


def test_a_revocation_list_with_any_byte_flipped_is_no_list(world: World) -> None:
    """A liar's `revocations` rule: whatever its bytes, never raised, and installed
    only if it is still what the CA signed."""
    crl = revoke(world.chain, "SH03")  # as the test above: SH03 is revoked already
    signed = x509.load_der_x509_crl(crl).tbs_certlist_bytes
    reader = world.trust("SH02")
    for at in range(len(crl)):
        for mask in (0x01, 0x04, 0x80):
            bad = flipped(crl, at, mask)
            rule = revocations_rule(bad)
            taken = (reader.is_revocation_list({"kind": "revocations",
                                                "body": json.dumps(rule)}),
                     world.trust("SH02").set_revocations(rule["crl"]))
            if any(taken):  # a flip outside what the CA signed (the signature's
                # unused-bits byte): still the CA's list, the same one
                assert x509.load_der_x509_crl(bad).tbs_certlist_bytes == signed
    assert reader.set_revocations(revocations_rule(crl)["crl"])


def test_a_file_sealed_with_another_chain_secret_does_not_open(world: World) -> None:
    writer = dataclasses.replace(world.trust("SH01"), seal_key=os.urandom(32))
    e = refused(world.trust("SH02"), seal(writer, "sync", PAYLOAD, CREATED))
    assert isinstance(e, ForeignChain) and "another chain secret" in str(e)


def test_without_the_chain_secret_a_file_does_not_open(world: World) -> None:
    """What a lost stick gives its finder: the CA certificate is public, the secret
    is not."""
    data = sealed_by(world)
    ca_pem = (world.chain / "ca.crt").read_bytes()
    e = refused(Trust.for_reading("acme", ca_pem, os.urandom(32)), data)
    assert isinstance(e, ForeignChain)
    e = refused(Trust.for_reading("acme", ca_pem, None), data)
    assert isinstance(e, ForeignChain)
    # With the chain directory's secret, it opens (a restore from the chain directory).
    secret = (world.chain / CHAIN_KEY).read_bytes()
    assert unseal(Trust.for_reading("acme", ca_pem, secret), data, "sync",
                  what=WHAT).payload == PAYLOAD


def test_an_open_store_signs_but_anyone_can_read(tmp_path: Path) -> None:
    """Documented in crdtledger.seal: no chain CA, no chain secret."""
    data = seal(load_trust(tmp_path / "sh01", "trial", "SH01"), "sync", PAYLOAD, CREATED)
    assert unseal(Trust.for_reading("trial", None, None), data, "sync",
                  what=WHAT).payload == PAYLOAD
    body = bytearray(data)
    body[-100] ^= 0x10
    assert isinstance(refused(Trust.for_reading("trial", None, None), bytes(body)),
                      CorruptSyncFile)


def flipped(data: bytes, at: int, mask: int) -> bytes:
    out = bytearray(data)
    out[at] ^= mask
    return bytes(out)


@pytest.mark.parametrize("chain", ["acme", None], ids=["chain CA", "no chain CA"])
def test_a_certificate_with_any_byte_flipped_is_refused_with_a_sentence(
        world: World, tmp_path: Path, chain: str | None) -> None:
    """A peer's head or a file names its signer's certificate. cryptography raises
    InvalidVersion (no ValueError) for a bad version field, and ValueError or
    UnsupportedAlgorithm only when a field is first read (the key, the names): each
    must be the signer refused, never an exception the session does not expect."""
    der = world.trust("SH02").cert_der
    reader = world.trust("SH03") if chain else load_trust(tmp_path / "open", "trial", "SH03")
    accepted = 0
    for at in range(len(der)):
        for mask in (0x01, 0x04, 0x80):
            try:
                reader.check_cert("SH02", flipped(der, at, mask))
                accepted += 1  # a flip in the outer DER that changes nothing signed
            except UntrustedSigner:
                pass
    # With a chain CA nearly every flip breaks the CA's signature or the parse (one
    # outside what the CA signed can leave both whole); a store with none takes a
    # node's first key as it is (crdtledger.trust), flipped or not.
    assert accepted < len(der) if chain else accepted > 0


def test_a_sealed_file_whose_certificate_version_is_flipped_is_damaged(world: World) -> None:
    data = sealed_by(world)
    der = world.trust("SH01").cert_der
    # Two SEQUENCE headers, [0] EXPLICIT, INTEGER of length 1: the version, 2 (v3).
    version = data.index(der) + 12
    assert data[version:version + 1] == b"\x02"
    assert isinstance(refused(world.trust("SH02"), flipped(data, version, 0x04)),
                      CorruptSyncFile)


def damaged_pem(path: Path, dest: Path) -> Path:
    """A copy of the PEM certificate at `path` whose version field says 6 (a flipped
    bit, as a disk or a hand-copied backup may give)."""
    der = x509.load_pem_x509_certificate(path.read_bytes()).public_bytes(Encoding.DER)
    dest.write_bytes(x509_pem(flipped(der, 12, 0x04)))
    return dest


def x509_pem(der: bytes) -> bytes:
    body = base64.encodebytes(der).decode("ascii").replace("\n", "")
    lines = [body[i:i + 64] for i in range(0, len(body), 64)]
    return ("-----BEGIN CERTIFICATE-----\n" + "\n".join(lines)
            + "\n-----END CERTIFICATE-----\n").encode("ascii")


def test_a_damaged_certificate_file_is_said_so_not_a_traceback(world: World,
                                                                tmp_path: Path) -> None:
    """A node's own certificate, or a chain directory's CA, damaged on disk: opening
    the node's keys, its identity, the chain directory or restoring from it says
    which file is unusable."""
    node = tmp_path / "sh02"
    shutil.copytree(world.data("SH02"), node)
    damaged_pem(node / "tls" / "node.crt", node / "tls" / "node.crt")
    with pytest.raises(UntrustedSigner, match="usable"):
        load_trust(node, "acme", "SH02")
    with pytest.raises(ChainError, match="usable"):
        load_identity(node)
    chain = tmp_path / "chain"
    shutil.copytree(world.chain, chain)
    damaged_pem(chain / "ca.crt", chain / "ca.crt")
    with pytest.raises(ChainError, match="not a chain directory"):
        load_chain(chain)


@given(st.data())
def test_any_flipped_byte_or_cut_is_refused(world: World, data: st.DataObject) -> None:
    original = SEALED_ONCE.setdefault("file", sealed_by(world))
    reader = READER.setdefault("trust", world.trust("SH02"))
    mutated = bytearray(original)
    if data.draw(st.booleans(), label="cut"):
        mutated = mutated[:data.draw(st.integers(0, len(original) - 1), label="length")]
    else:
        for _ in range(data.draw(st.integers(1, 3), label="flips")):
            at = data.draw(st.integers(0, len(original) - 1), label="at")
            mutated[at] ^= data.draw(st.integers(1, 255), label="mask")
        if bytes(mutated) == original:
            return  # flips that cancel out
    with pytest.raises(RemoteProtocolError):
        unseal(reader, bytes(mutated), "sync", what=WHAT)


SEALED_ONCE: dict[str, bytes] = {}
READER: dict[str, Trust] = {}


# --- the chain secret and the head office (peer.chain) -------------------------------


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_chain_secret_is_made_once_and_given_to_every_branch(world: World) -> None:
    secret = (world.chain / CHAIN_KEY).read_bytes()
    assert len(secret) == 32 and mode(world.chain / CHAIN_KEY) == 0o600
    for node in ("SH01", "SH02"):
        tls = world.data(node) / "tls"
        assert (tls / CHAIN_KEY).read_bytes() == secret and mode(tls / CHAIN_KEY) == 0o600
    assert (world.foreign_chain / CHAIN_KEY).read_bytes() != secret


def test_a_chain_made_before_chain_secrets_gets_one_at_its_next_enrolment(
        tmp_path: Path) -> None:
    chain = tmp_path / "old"
    init_chain(chain)
    (chain / CHAIN_KEY).unlink()  # as chains were made before
    enrol(chain, tmp_path / "a", "SH01")
    secret = (chain / CHAIN_KEY).read_bytes()
    assert len(secret) == 32 and mode(chain / CHAIN_KEY) == 0o600
    enrol(chain, tmp_path / "b", "SH02")
    assert (tmp_path / "a" / "tls" / CHAIN_KEY).read_bytes() == secret
    assert (tmp_path / "b" / "tls" / CHAIN_KEY).read_bytes() == secret
    a, b = load_trust(tmp_path / "a", "old", "SH01"), load_trust(tmp_path / "b", "old", "SH02")
    assert unseal(b, seal(a, "sync", PAYLOAD, CREATED), "sync", what=WHAT).node == "SH01"


def test_only_the_head_office_certificate_governs(world: World) -> None:
    def ous(node: str) -> list[str]:
        cert = x509.load_pem_x509_certificate(
            (world.data(node) / "tls" / "node.crt").read_bytes())
        return [str(a.value) for a in cert.subject.get_attributes_for_oid(
            NameOID.ORGANIZATIONAL_UNIT_NAME)]

    assert ous("SH01") == [HEAD_OFFICE] and ous("SH02") == []
    hq, branch = world.trust("SH01"), world.trust("SH02")
    assert hq.governs and not branch.governs
    assert branch.may_govern("SH01", hq.cert_der)
    assert not hq.may_govern("SH02", branch.cert_der)
