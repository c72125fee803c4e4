"""Signed logs under Hypothesis: records mutated after signing are refused whole, and
honest histories, however they travel, converge.

1. A branch's real records (SH01 of chain "acme", real CA) are changed after SH01
   signed their head: a byte of a record's update, its document, its position, its
   node, records dropped, swapped or duplicated, the head's position, hash or
   signature, the certificate sent with it, or the signer (another branch of the
   chain, or an open store calling itself SH01). A replica (SH02, which holds the
   first records of SH01's log) refuses the batch whole: as a sync file would be
   (strict: an error, and the store exactly as before) and as a session would take
   it (nothing of it applied or kept).
2. Random honest histories of three branches and the head office (members, top-ups,
   debits, rights transfers, price changes), exchanged by sessions and sync files in
   random order, converge: every replica holds the same logs and projections, and no
   one is blamed for anything.
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from forgery import sign_head
from helpers import snapshot, sync
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crdtledger import audit, syncfile
from crdtledger.errors import LedgerError, RemoteProtocolError
from crdtledger.ledger import Ledger
from crdtledger.log import Batch, Head
from crdtledger.trust import Trust, load_trust
from peer.chain import enrol, init_chain

CHAIN = "acme"
HELD = 2  # SH02 holds SH01's first records up to here


@dataclass
class Signed:
    """SH01's log past what SH02 holds, as SH01 sent it, and what else may sign."""

    batch: Batch
    receiver: Ledger
    other: Trust  # SH03, a branch of the chain
    open_sh01: Trust  # a store without a certificate that calls itself SH01


@pytest.fixture(scope="module")
def signed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Signed]:
    root = tmp_path_factory.mktemp("mutation")
    init_chain(root / CHAIN)
    ledgers = []
    for node in ("SH01", "SH02", "SH03"):
        Ledger.create(root / node.lower(), node, CHAIN)
        enrol(root / CHAIN, root / node.lower(), node)
        ledgers.append(Ledger.open(root / node.lower(), synchronous="NORMAL"))
    a, b, c = ledgers
    o = a.owner
    members = [a.add_member(o, name=f"会员{i}", phone=f"1380000000{i}") for i in range(3)]
    for i, m in enumerate(members):
        a.topup(o, m, 10_000 * (i + 1))
    a.issue_card(o, members[0], "SH01-0001")
    a.debit(o, members[0], amount=2_500)
    a.debit(o, members[1], amount=100)
    records = a.storage.log.records_after({"SH01": 0})
    assert len(records) >= HELD + 5
    # SH02 holds the first records (and SH01's certificate), as after an earlier round.
    first = records[:HELD]
    head = sign_head(a.trust, CHAIN, "SH01", HELD, a.storage.log.hash_at("SH01", HELD) or b"")
    b.apply_batch(Batch(first, {"SH01": head}, {"SH01": a.trust.cert_der}), strict=True)
    assert b.storage.log.tip("SH01")[0] == HELD
    batch = a.batch(a.lacking(b.log_view()))
    assert [r.seq for r in batch.recs] == list(range(HELD + 1, len(records) + 1))
    Ledger.create(root / "open", "SH01", CHAIN)
    open_trust = load_trust(root / "open", CHAIN, "SH01")
    try:
        yield Signed(batch, b, c.trust, open_trust)
    finally:
        for ledger in ledgers:
            ledger.close()


DOCS = ("rules", "operators", "members/00", "members/31", "ledger/2026-01", "ledger/2027-12")


@st.composite
def mutations(draw: st.DrawFn, s: Signed) -> tuple[str, Batch]:
    """One change to SH01's batch after it was signed."""
    b = s.batch
    recs, head = list(b.recs), b.heads["SH01"]
    certs = dict(b.certs)
    n = len(recs)
    i = draw(st.integers(0, n - 1))
    kind = draw(st.sampled_from([
        "flip", "doc", "seq", "swap", "drop", "duplicate", "node", "truncate-data",
        "head-seq", "head-hash", "head-sig", "signed-by-other", "cert-of-other",
        "other-signs-as-itself", "open-store-signs", "no-head",
    ]))
    r = recs[i]
    if kind == "flip":
        pos = draw(st.integers(0, len(r.data) - 1))
        bit = draw(st.integers(0, 7))
        data = bytearray(r.data)
        data[pos] ^= 1 << bit
        recs[i] = dataclasses.replace(r, data=bytes(data))
    elif kind == "doc":
        recs[i] = dataclasses.replace(r, doc=draw(st.sampled_from(
            [d for d in DOCS if d != r.doc])))
    elif kind == "seq":
        d = draw(st.integers(-HELD - 3, 3).filter(lambda x: x != 0 and r.seq + x > 0))
        recs[i] = dataclasses.replace(r, seq=r.seq + d)
    elif kind == "swap":
        j = draw(st.integers(0, n - 1).filter(lambda x: recs[x].data != r.data))
        recs[i], recs[j] = (dataclasses.replace(r, data=recs[j].data, doc=recs[j].doc),
                            dataclasses.replace(recs[j], data=r.data, doc=r.doc))
    elif kind == "drop":
        del recs[i]
    elif kind == "duplicate":
        recs.insert(i + 1, dataclasses.replace(r, data=r.data + b"\x00"))
    elif kind == "node":
        recs[i] = dataclasses.replace(r, node="SH03")
    elif kind == "truncate-data":
        recs[i] = dataclasses.replace(r, data=r.data[:draw(st.integers(0, len(r.data) - 1))])
    elif kind == "head-seq":
        d = draw(st.integers(-3, 3).filter(lambda x: x != 0 and head.seq + x > 0))
        head = dataclasses.replace(head, seq=head.seq + d)
    elif kind == "head-hash":
        h = bytearray(head.hash)
        h[draw(st.integers(0, 31))] ^= 1 << draw(st.integers(0, 7))
        head = dataclasses.replace(head, hash=bytes(h))
    elif kind == "head-sig":
        sig = bytearray(head.sig)
        sig[draw(st.integers(0, len(sig) - 1))] ^= 1 << draw(st.integers(0, 7))
        head = dataclasses.replace(head, sig=bytes(sig))
    elif kind == "signed-by-other":  # SH03's signature, SH01's certificate
        head = sign_head(s.other, CHAIN, "SH01", head.seq, head.hash)
    elif kind == "cert-of-other":  # SH01's signature, SH03's certificate
        certs["SH01"] = s.other.cert_der
    elif kind == "other-signs-as-itself":  # SH03 signs SH01's log with its own
        head = sign_head(s.other, CHAIN, "SH01", head.seq, head.hash)
        certs["SH01"] = s.other.cert_der
    elif kind == "open-store-signs":
        head = sign_head(s.open_sh01, CHAIN, "SH01", head.seq, head.hash)
        certs["SH01"] = s.open_sh01.cert_der
    heads: dict[str, Head] = {} if kind == "no-head" else {"SH01": head}
    return kind, Batch(recs, heads, certs)


GAPS = frozenset({"drop", "seq"})


@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                   HealthCheck.too_slow])
@given(data=st.data())
def test_records_mutated_after_signing_are_refused_whole(signed: Signed,
                                                         data: st.DataObject) -> None:
    kind, batch = data.draw(mutations(signed))
    b = signed.receiver
    before = snapshot(b)
    # As a sync file takes it: all or nothing, with a reason. (A record dropped or moved
    # may leave a gap: records past one wait, as for a file made --for; tested below.)
    raised = False
    try:
        b.apply_batch(batch, origin="file", strict=True)
    except RemoteProtocolError:
        raised = True
    assert snapshot(b) == before, kind
    assert raised or kind in GAPS, f"{kind}: a file taken without a word"
    # As a session takes it: nothing of SH01's log beyond what was held is applied or
    # kept, and SH01 (whose signed log is intact) is not blamed.
    b.refusals.clear()
    new = b.apply_batch(batch, origin="session")
    assert new == [], kind
    assert snapshot(b) == before, kind
    assert b.refusals or kind in GAPS, f"{kind}: refused without a word"
    assert not b.faults()


@pytest.mark.parametrize("which", ["middle", "last"])
def test_a_file_with_a_record_removed_from_a_signed_log_is_refused_with_a_sentence(
        signed: Signed, which: str) -> None:
    """An honest writer's file holds its log whole up to the head it signed: one that
    lacks a record inside that span was altered, and says so (issue 12: a file that
    fails any check is refused whole with a sentence)."""
    recs = list(signed.batch.recs)
    del recs[len(recs) // 2 if which == "middle" else -1]
    batch = dataclasses.replace(signed.batch, recs=recs)
    b = signed.receiver
    before = snapshot(b)
    with pytest.raises(RemoteProtocolError):
        b.apply_batch(batch, origin="file", strict=True)
    assert snapshot(b) == before


def test_the_unmutated_batch_is_taken(signed: Signed, tmp_path: Path) -> None:
    """The control: the same batch, untouched, applies (on a copy of the replica)."""
    copy = tmp_path / "sh02"
    shutil.copytree(signed.receiver.storage.dir, copy)
    with Ledger.open(copy, synchronous="NORMAL") as b:
        new = b.apply_batch(signed.batch, strict=True)
        assert [r.seq for r in new] == [r.seq for r in signed.batch.recs]


# --- honest histories converge ----------------------------------------------------------

NODES = ("HQ", "SH01", "SH02", "SH03")
BRANCHES = NODES[1:]

ops = st.one_of(
    st.tuples(st.just("member"), st.sampled_from(BRANCHES)),
    st.tuples(st.just("topup"), st.sampled_from(BRANCHES), st.integers(0, 5),
              st.integers(1, 50_000)),
    st.tuples(st.just("debit"), st.sampled_from(BRANCHES), st.integers(0, 5),
              st.integers(1, 30_000)),
    st.tuples(st.just("transfer"), st.sampled_from(BRANCHES), st.sampled_from(BRANCHES),
              st.integers(0, 5), st.integers(1, 20_000)),
    st.tuples(st.just("price"), st.integers(1, 50_000)),
    st.tuples(st.just("sync"), st.sampled_from(NODES), st.sampled_from(NODES),
              st.sampled_from(["session", "file"])),
)


def run_op(nodes: dict[str, Ledger], members: list[str], op: tuple[Any, ...],
           files: Path) -> None:
    kind = op[0]
    try:
        if kind == "member":
            ledger = nodes[op[1]]
            members.append(ledger.add_member(ledger.owner, name="会员",
                                             phone=f"139{len(members):08d}"))
        elif kind in ("topup", "debit") and members:
            ledger, member = nodes[op[1]], members[op[2] % len(members)]
            if kind == "topup":
                ledger.topup(ledger.owner, member, op[3])
            else:
                ledger.debit(ledger.owner, member, amount=op[3])
        elif kind == "transfer" and members and op[1] != op[2]:
            ledger = nodes[op[1]]
            ledger.transfer_rights(ledger.owner, members[op[3] % len(members)], op[2], op[4],
                                   "cash")
        elif kind == "price":
            hq = nodes["HQ"]
            hq.set_rule(hq.owner, "services", {"FOOT60": {"name": "足疗", "price": op[1]}})
        elif kind == "sync" and op[1] != op[2]:
            x, y = nodes[op[1]], nodes[op[2]]
            if op[3] == "session":
                sync(x, y)
            else:
                path = files / f"{x.node}-{y.node}.sync"
                syncfile.export_file(x, path, y.node)
                syncfile.import_file(y, path)
    except LedgerError:
        pass  # unknown member here, rights elsewhere, not enough: refused as at a till


def replica(ledger: Ledger) -> dict[str, Any]:
    return {"positions": ledger.positions(),
            **{t: audit.replica_rows(ledger, t) for t in audit.REPLICA_TABLES}}


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(history=st.lists(ops, min_size=5, max_size=40))
def test_random_honest_histories_converge(history: list[tuple[Any, ...]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        init_chain(root / CHAIN)
        nodes: dict[str, Ledger] = {}
        try:
            for node in NODES:
                Ledger.create(root / node.lower(), node, CHAIN)
                enrol(root / CHAIN, root / node.lower(), node, head_office=node == "HQ")
                nodes[node] = Ledger.open(root / node.lower(), synchronous="OFF")
            (root / "files").mkdir()
            members: list[str] = []
            for op in history:
                run_op(nodes, members, op, root / "files")
            for _ in range(2):  # everyone with everyone, twice: what reached one reaches all
                for x in NODES:
                    for y in NODES:
                        if x < y:
                            sync(nodes[x], nodes[y])
            first = replica(nodes["HQ"])
            for node, ledger in nodes.items():
                assert replica(ledger) == first, f"{node} differs from HQ"
                assert not ledger.faults(), ledger.faults()
                assert not ledger.refusals, list(ledger.refusals)
                assert audit.negative_rights(ledger) is None
                assert not audit.quarantined(ledger)
        finally:
            for ledger in nodes.values():
                ledger.close()
