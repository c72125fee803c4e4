"""Issue 12's attacks, as a dishonest branch would make them, refused with nothing
changed: through a sync file and through a live websocket session.

The chain "acme" (real CA, peer.chain): HQ is the head office, SH01 the branch whose
name the forgers use (a member with a 1,000.00 top-up, an owner operator), SH02 a
running node (real process, mutual TLS) and SH04 a store that imports files. The
forgers: branches enrolled in the chain but not the head office (each live attack has
its own, since a branch caught once is blocked and its next record not even judged),
and a store made with `crdtledger init --node SH01 --chain acme` without a certificate
(an open store whose files and records say they are SH01's).

Each attack is a pycrdt update made on a copy of the honest document by the forger,
with its own client id or SH01's, chained from a log tip by crdtledger.log.record_hash
and covered by a head signed with the forger's key (tests/forgery.py). It travels in
the forger's own log, or as SH01's log. The store is compared whole before and after:
balances, rights, entries, operators, roles, rules (prices, the revocation list),
members, the documents themselves, and whether a revoked branch is still revoked.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shutil
import ssl
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cluster import NodeProc, free_port
from conftest import run_cli
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from forgery import ForgedLog, Mutate, forge_update, recs_frame, session, sync_file
from helpers import doc_content, snapshot, sync
from pycrdt import Map

from crdtledger import audit, syncfile
from crdtledger.auth import hash_secret
from crdtledger.errors import PermissionDenied, RemoteProtocolError
from crdtledger.hlc import HybridClock, id_time_ms
from crdtledger.ledger import Ledger
from crdtledger.log import Batch
from crdtledger.model import PERMISSIONS, ledger_doc, owner_of
from crdtledger.sync import parse_logs
from crdtledger.trust import Trust, UntrustedSigner, load_trust
from crdtledger.writerules import client_id_for
from peer.chain import enrol, init_chain, load_identity, revocations_rule, revoke

CHAIN = "acme"
TOPUP = 100_000  # 1,000.00
BOSS_PW = "boss-secret-1"


# --- the world ------------------------------------------------------------------------


@dataclass
class World:
    root: Path
    chain_dir: Path
    hq: Ledger
    sh01: Ledger
    member: str
    topup_id: str
    boss_id: str  # SH01's owner operator (HQ made it)
    old_crl: str  # the CA's first list, before R01 was revoked (a genuine, older list)
    r01_cert: bytes
    mallory_hash: str
    open_trust: Trust  # `crdtledger init --node SH01 --chain acme`, no certificate
    victim: NodeProc | None = None
    forgers: dict[str, Trust] = field(default_factory=dict)
    token: str | None = None

    def data(self, node: str) -> Path:
        return self.root / node.lower()

    def forger(self, node: str) -> Trust:
        """An enrolled branch of the chain (not the head office), made on first use."""
        if node not in self.forgers:
            enrol(self.chain_dir, self.data(node), node)
            self.forgers[node] = load_trust(self.data(node), CHAIN, node)
        return self.forgers[node]


def make_branch(w_root: Path, chain_dir: Path, node: str, head_office: bool = False) -> Ledger:
    data = w_root / node.lower()
    Ledger.create(data, node, CHAIN)
    enrol(chain_dir, data, node, head_office=head_office)
    return Ledger.open(data, synchronous="NORMAL")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("attacks")
    chain_dir = root / CHAIN
    init_chain(chain_dir)
    hq = make_branch(root, chain_dir, "HQ", head_office=True)
    sh01 = make_branch(root, chain_dir, "SH01")
    sh02 = make_branch(root, chain_dir, "SH02")
    sh04 = make_branch(root, chain_dir, "SH04")  # copied for each file attack
    # Governance, by the head office: prices, SH01's and SH02's owners, and two
    # revocation lists (X01, then R01 as well).
    o = hq.owner
    hq.set_rule(o, "services", {"FOOT60": {"name": "足疗 60 分钟", "price": 12800},
                                "BODY90": {"name": "全身按摩 90 分钟", "price": 19800}})
    boss = hq.add_operator(o, "sh01boss", BOSS_PW, ["owner"])
    hq.add_operator(o, "sh02boss", BOSS_PW, ["owner"])
    for node in ("X01", "R01"):
        enrol(chain_dir, root / node.lower(), node)
    old_crl = revocations_rule(revoke(chain_dir, "X01"))["crl"]
    hq.set_rule(o, "revocations", {"crl": old_crl})
    hq.set_rule(o, "revocations", revocations_rule(revoke(chain_dir, "R01")))
    # SH01's daily work.
    sync(hq, sh01)
    member = sh01.add_member(sh01.owner, name="王芳", phone="13800000001")
    topup = sh01.topup(sh01.owner, member, TOPUP)
    for a, b in ((sh01, sh02), (hq, sh02), (sh01, sh04), (hq, sh04)):
        sync(a, b)
    assert sh02.balance(member)["cash"] == TOPUP and sh04.balance(member)["cash"] == TOPUP
    assert not sh02.faults() and not sh04.faults()
    sh02.close()
    sh04.close()
    (root / "elsewhere").mkdir()  # where no directory is called "acme": just a name
    r = run_cli("init", "--node", "SH01", "--chain", CHAIN, data=root / "open-sh01",
                cwd=root / "elsewhere")
    assert r.code == 0 and "no certificate" in r.out, r.err
    w = World(root=root, chain_dir=chain_dir, hq=hq, sh01=sh01, member=member,
              topup_id=str(topup["id"]), boss_id=boss, old_crl=old_crl,
              r01_cert=(root / "r01" / "tls" / "node.crt").read_bytes(),
              mallory_hash=hash_secret("mallory-1"),
              open_trust=load_trust(root / "open-sh01", CHAIN, "SH01"))
    try:
        yield w
    finally:
        if w.victim is not None:
            w.victim.kill()
        hq.close()
        sh01.close()


@contextlib.contextmanager
def file_victim(w: World, tmp_path: Path) -> Iterator[Ledger]:
    """A branch that imports sync files: a copy of SH04, which holds the honest state."""
    data = tmp_path / "sh04"
    shutil.copytree(w.data("SH04"), data)
    with Ledger.open(data, synchronous="NORMAL") as ledger:
        yield ledger


# --- what must not change ---------------------------------------------------------------


def store_state(ledger: Ledger) -> dict[str, Any]:
    """Everything the attacks aim at: every projection (balances, rights, entries,
    members, operators, roles, rules with prices and the revocation list), the
    documents, and whether R01 is still revoked and X01 too."""
    out: dict[str, Any] = {t: audit.replica_rows(ledger, t) for t in audit.REPLICA_TABLES}
    out["documents"] = doc_content(ledger)
    out["state_vectors"] = ledger.state_vectors()
    out["revocations"] = ledger.rule("revocations")
    out["services"] = ledger.rule("services")
    return out


def r01_revoked(w: World, data: Path) -> bool:
    """Whether R01 is revoked as a node opening the store afresh (a restart) judges it:
    by the revocation list in force, which must be the newest the chain CA signed."""
    der = x509.load_pem_x509_certificate(w.r01_cert).public_bytes(serialization.Encoding.DER)
    with Ledger.open(data, lock=False) as fresh:
        try:
            fresh.trust.check_cert("R01", der)
        except UntrustedSigner as e:
            assert "revoked" in str(e)
            return True
    return False


def assert_unchanged(before: dict[str, Any], after: dict[str, Any], attack: str) -> None:
    """The store as before. A revocation list the chain CA signed carries its own
    authority (any branch may write one, commit 27a30fd), so the replayed list may
    stay in the rules' history: but the list in force must still be the newest."""
    if attack == "replace the revocation list":
        assert after["revocations"] == before["revocations"], (
            "an older revocation list (R01 not on it), replayed by a branch, is now the "
            "one in force")
        skip = {"rules", "documents", "state_vectors"}
        before = {k: v for k, v in before.items() if k not in skip}
        after = {k: v for k, v in after.items() if k not in skip}
    assert after == before


# --- the attacks ------------------------------------------------------------------------


@dataclass(frozen=True)
class Ctx:
    """What a forger knows of the honest state (a copy of it) when it forges."""

    w: World
    log_node: str  # whose log carries the record
    forger: str  # who profits
    today: str
    day_of: Callable[[int], str]


def new_entry(c: Ctx, node: str, kind: str, amount: int, deltas: list[list[Any]],
              **extra: Any) -> tuple[str, dict[str, Any]]:
    clock = HybridClock(node)
    eid = clock.mint()
    at = id_time_ms(eid)
    entry = {"id": eid, "kind": kind, "member": c.w.member, "node": node,
             "op": owner_of(node), "at": at, "amount": amount, "deltas": deltas, **extra}
    return ledger_doc(c.day_of(at)[:7]), entry


def put_entry(doc_entry: tuple[str, dict[str, Any]]) -> tuple[str, Mutate]:
    doc, entry = doc_entry

    def mutate(roots: dict[str, Map[Any]]) -> None:
        roots["entries"][entry["id"]] = entry

    return doc, mutate


def transfer_sh01_rights(c: Ctx) -> tuple[str, Mutate]:
    """SH01's cash rights moved to the forger, in an entry of the log's writer."""
    return put_entry(new_entry(c, c.log_node, "transfer", TOPUP,
                               [["cash", "SH01", -TOPUP], ["cash", c.forger, TOPUP]]))


def refund_of_sh01s_entry(c: Ctx) -> tuple[str, Mutate]:
    """A refund to the forger's own rights naming SH01's entry: it would take back the
    lots SH01's sale took (settlement) and use up what SH01 may still refund."""
    return put_entry(new_entry(c, c.log_node, "refund", 10_000,
                               [["cash", c.log_node, 10_000]], ref=c.w.topup_id))


def transfer_of_nothing(c: Ctx) -> tuple[str, Mutate]:
    """Rights raised at the forger by a transfer that lowers nobody's: value no branch
    collected, which would spend SH01's prepaid lots (settlement is first in, first out)."""
    return put_entry(new_entry(c, c.log_node, "transfer", TOPUP, [["cash", c.log_node, TOPUP]]))


def merge_in_of_nothing(c: Ctx) -> tuple[str, Mutate]:
    """A sweep's "in" with no "out": rights raised at the forger for a member merged
    from nobody, spent first in, first out from SH01's prepaid lots as a transfer of
    nothing would be."""
    return put_entry(new_entry(c, c.log_node, "merge", TOPUP, [["cash", c.log_node, TOPUP]],
                               ref=c.w.topup_id))


def debit_by_sh01(c: Ctx) -> tuple[str, Mutate]:
    return put_entry(new_entry(c, "SH01", "debit", 10_000, [["cash", "SH01", -10_000]]))


def million_topup_by_sh01(c: Ctx) -> tuple[str, Mutate]:
    return put_entry(new_entry(c, "SH01", "topup", 100_000_000,
                               [["cash", "SH01", 100_000_000]], paid=100_000_000))


def the_topup(c: Ctx) -> tuple[str, str]:
    return ledger_doc(c.day_of(id_time_ms(c.w.topup_id))[:7]), c.w.topup_id


def rewrite_topup(c: Ctx) -> tuple[str, Mutate]:
    doc, eid = the_topup(c)

    def mutate(roots: dict[str, Map[Any]]) -> None:
        entry = dict(roots["entries"][eid])
        entry.update(amount=5_000_000, paid=5_000_000, deltas=[["cash", "SH01", 5_000_000]])
        roots["entries"][eid] = entry

    return doc, mutate


def delete_topup(c: Ctx) -> tuple[str, Mutate]:
    doc, eid = the_topup(c)

    def mutate(roots: dict[str, Map[Any]]) -> None:
        del roots["entries"][eid]

    return doc, mutate


def add_owner_operator(c: Ctx) -> tuple[str, Mutate]:
    oid = HybridClock(c.log_node).mint()

    def mutate(roots: dict[str, Map[Any]]) -> None:
        roots["operators"][oid] = Map({"name": "mallory", "password": c.w.mallory_hash,
                                       "active": True, "roles": Map({"owner": True})})

    return "operators", mutate


def set_sh01_owner_password(c: Ctx) -> tuple[str, Mutate]:
    def mutate(roots: dict[str, Map[Any]]) -> None:
        roots["operators"][c.w.boss_id]["password"] = c.w.mallory_hash

    return "operators", mutate


def cashier_every_permission(c: Ctx) -> tuple[str, Mutate]:
    def mutate(roots: dict[str, Map[Any]]) -> None:
        roots["roles"]["cashier"] = Map({p: True for p in sorted(PERMISSIONS)})

    return "operators", mutate


def new_rule(c: Ctx, kind: str, body: Any) -> tuple[str, Mutate]:
    rid = HybridClock(c.log_node).mint()
    record = {"kind": kind, "effective_from": c.today, "body": json.dumps(body, sort_keys=True)}

    def mutate(roots: dict[str, Map[Any]]) -> None:
        roots["rules"][rid] = record

    return "rules", mutate


def price_one_fen(c: Ctx) -> tuple[str, Mutate]:
    return new_rule(c, "services", {"FOOT60": {"name": "足疗 60 分钟", "price": 1},
                                    "BODY90": {"name": "全身按摩 90 分钟", "price": 1}})


def replace_revocations(c: Ctx) -> tuple[str, Mutate]:
    """The CA's own older list (R01 not on it): genuine, but not the chain's word now."""
    return new_rule(c, "revocations", {"crl": c.w.old_crl})


ATTACKS: dict[str, tuple[Callable[[Ctx], tuple[str, Mutate]], str]] = {
    # name: (build, the rule the forger's own log breaks)
    "transfer SH01's rights to itself": (transfer_sh01_rights, "own-rights"),
    "refund SH01's entry": (refund_of_sh01s_entry, "refund-own"),
    "transfer of nothing to itself": (transfer_of_nothing, "transfer-balanced"),
    "merge into a member from nobody": (merge_in_of_nothing, "merge-paired"),
    "debit by SH01": (debit_by_sh01, "entry-writer"),
    "1,000,000.00 top-up by SH01": (million_topup_by_sh01, "entry-writer"),
    "rewrite SH01's top-up to 50,000.00": (rewrite_topup, "entry-insert-once"),
    "delete SH01's top-up": (delete_topup, "entry-insert-once"),
    "add an owner operator": (add_owner_operator, "governance"),
    "set SH01's owner password": (set_sh01_owner_password, "governance"),
    "cashier role gets every permission": (cashier_every_permission, "governance"),
    "a service's price to 0.01": (price_one_fen, "governance"),
    "replace the revocation list": (replace_revocations, "governance"),
}

# How the record travels:
#   own-log      the forger's own log, written with its own client id
#   sh01-client  the forger's own log, written with SH01's client id
#   sh01-log     as SH01's log (next position), head signed with the forger's key
#   open-store   as SH01's log, signed by the open store "SH01" (no certificate)
VARIANTS = ("own-log", "sh01-client", "sh01-log", "open-store")


def forger_client(node: str) -> int:
    """The pycrdt client id a forger writes with: its own (derived from its node id)."""
    return client_id_for(node, 0)


def may_be_taken(attack: str, variant: str) -> bool:
    """A revocation list the chain CA signed carries its own authority: any branch may
    write one (commit 27a30fd). An older one, replayed, may so be taken into the
    rules' history; what must not change is the list in force (assert_unchanged)."""
    return attack == "replace the revocation list" and variant == "own-log"


def expected_refusal(attack: str, variant: str, forger: str) -> str:
    if variant == "own-log":
        return ATTACKS[attack][1]
    if variant == "sh01-client":
        # A deletion carries no structs, so no client id: judged as the own-log one.
        return "entry-insert-once" if attack == "delete SH01's top-up" else "own-client"
    if variant == "sh01-log":
        return f"a certificate of node {forger} was given for SH01"
    return f"node SH01's key is not certified by chain {CHAIN}'s CA"


def forge(w: World, victim: Ledger, attack: str, variant: str, forger: str) -> Batch:
    """The forged record, on a copy of what `victim` holds (the honest state), with its
    head signed as `variant` says."""
    ftrust = w.forger(forger)
    log_node = forger if variant in ("own-log", "sh01-client") else "SH01"
    ctx = Ctx(w, log_node, forger, victim.today(), victim.storage.day_of)
    doc, mutate = ATTACKS[attack][0](ctx)
    client = forger_client(forger) if variant == "own-log" else w.sh01.storage.client_id
    state = bytes(victim.storage.doc(doc).doc.get_update())
    data = forge_update(state, doc, client, mutate)
    seq, prev = victim.storage.log.tip(log_node)
    signer = w.open_trust if variant == "open-store" else ftrust
    return ForgedLog(CHAIN, log_node, signer, seq, prev).batch([(doc, data)])


CASES = [pytest.param(a, v, id=f"{v}: {a}") for a in ATTACKS for v in VARIANTS]


# --- through a sync file ---------------------------------------------------------------


@pytest.mark.parametrize(("attack", "variant"), CASES)
def test_attack_in_a_sync_file_is_refused_and_changes_nothing(
        world: World, tmp_path: Path, attack: str, variant: str) -> None:
    with file_victim(world, tmp_path) as victim:
        batch = forge(world, victim, attack, variant, "F00")
        # Sealed by who the records say wrote them: the forger, or the open store "SH01".
        sealer = world.open_trust if variant == "open-store" else world.forger("F00")
        path = sync_file(tmp_path / "forged.sync", sealer, batch, victim.clock.wall())
        before, whole = store_state(victim), snapshot(victim, [world.member])
        if may_be_taken(attack, variant):
            with contextlib.suppress(RemoteProtocolError):
                syncfile.import_file(victim, path)
            assert_unchanged(before, store_state(victim), attack)
            assert r01_revoked(world, victim.storage.dir)
            return
        with pytest.raises(RemoteProtocolError) as refused:
            syncfile.import_file(victim, path)
        assert str(path) in str(refused.value)
        assert expected_refusal(attack, variant, "F00") in str(refused.value)
        assert_unchanged(before, store_state(victim), attack)
        assert snapshot(victim, [world.member]) == whole  # not even a fault row: refused whole
        assert r01_revoked(world, victim.storage.dir)


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_open_store_records_relayed_in_an_enrolled_branchs_file_are_refused(
        world: World, tmp_path: Path, attack: str) -> None:
    """The open store's records carried by a file an enrolled branch sealed."""
    with file_victim(world, tmp_path) as victim:
        batch = forge(world, victim, attack, "open-store", "F00")
        path = sync_file(tmp_path / "relayed.sync", world.forger("F00"), batch,
                         victim.clock.wall())
        whole = snapshot(victim, [world.member])
        with pytest.raises(RemoteProtocolError, match="not certified by chain acme's CA"):
            syncfile.import_file(victim, path)
        assert snapshot(victim, [world.member]) == whole


def test_the_open_stores_own_export_is_refused_by_the_cli(world: World, tmp_path: Path) -> None:
    """As a new user would try it: `crdtledger init --node SH01 --chain acme` without a
    certificate, a member and a 5,000.00 top-up there, exported, imported at a
    branch with `crdtledger import`: refused with a sentence, nothing changed."""
    open_data = world.root / "open-sh01"
    r = run_cli("member", "add", "--name", "李四", "--phone", "13900000009", "--json",
                data=open_data)
    assert r.code == 0, r.err
    member = r.json()["member_id"]
    r = run_cli("topup", "--member", member, "--amount", "5000.00", data=open_data)
    assert r.code == 0, r.err
    path = tmp_path / "open.sync"
    r = run_cli("export", "--out", path, data=open_data)
    assert r.code == 0, r.err
    with file_victim(world, tmp_path) as victim:
        whole = snapshot(victim, [world.member])
        data = victim.storage.dir
    r = run_cli("import", path, data=data)
    assert r.code != 0, r.out
    assert "not certified by chain acme's CA" in r.err and str(path) in r.err
    with Ledger.open(data, synchronous="NORMAL") as victim:
        assert snapshot(victim, [world.member]) == whole


def test_a_forged_governance_file_is_refused_by_the_cli(world: World, tmp_path: Path) -> None:
    with file_victim(world, tmp_path) as victim:
        batch = forge(world, victim, "add an owner operator", "own-log", "F00")
        whole = snapshot(victim, [world.member])
        data = victim.storage.dir
        path = sync_file(tmp_path / "gov.sync", world.forger("F00"), batch, victim.clock.wall())
    r = run_cli("import", path, data=data)
    assert r.code != 0, r.out
    assert "breaks write rule governance" in r.err and "head office" in r.err
    with Ledger.open(data, synchronous="NORMAL") as victim:
        assert snapshot(victim, [world.member]) == whole


# --- the head office may; a branch may not ---------------------------------------------


def test_a_branch_is_refused_governance_locally_with_a_sentence(world: World) -> None:
    branch = world.sh01
    whole = snapshot(branch, [world.member])
    o = branch.owner
    tries: list[tuple[str, Callable[[], Any]]] = [
        ("rules", lambda: branch.set_rule(o, "services", {"FOOT60": {"name": "x", "price": 1}})),
        ("operators", lambda: branch.add_operator(o, "mallory", "mallory-1", ["owner"])),
        ("operators", lambda: branch.set_operator(o, world.boss_id, password="mallory-1")),
        ("operators", lambda: branch.define_role(o, "cashier", PERMISSIONS)),
    ]
    for doc, attempt in tries:
        with pytest.raises(PermissionDenied) as e:
            attempt()
        assert str(e.value) == (
            f"only the head office may change the chain's {doc}: this branch's certificate "
            "does not grant it (at the PC holding the chain's ca.key: crdtledger chain "
            "renew --chain CHAIN_DIR --data DIR --head-office)")
    assert snapshot(branch, [world.member]) == whole


# --- through a live websocket session ----------------------------------------------------


def http(node: NodeProc, method: str, path: str, body: Any = None,
         token: str | None = None) -> Any:
    req = urllib.request.Request(
        node.api + path, method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Content-Type": "application/json",
                 **({"Authorization": f"Bearer {token}"} if token else {})})
    with urllib.request.urlopen(req, timeout=10) as resp:
        raw = resp.read()
    return json.loads(raw) if raw[:1] in (b"{", b"[") else raw.decode()


@pytest.fixture(scope="module")
def live(world: World) -> World:
    """SH02 running as a real node (mutual TLS on 127.0.0.1), no peers of its own."""
    if world.victim is None:
        node = NodeProc("SH02", world.data("SH02"), free_port(), free_port())
        world.victim = node.start()
        world.token = http(node, "POST", "/api/login",
                           {"operator": "sh02boss", "password": BOSS_PW})["token"]
    return world


def client_ctx(data: Path) -> ssl.SSLContext:
    identity = load_identity(data)
    assert identity is not None
    return identity.client_ssl_context()


@contextlib.contextmanager
def reading(node: NodeProc) -> Iterator[Ledger]:
    """The running node's store, read beside it (as `crdtledger status` does)."""
    ledger = Ledger.open(node.data, lock=False)
    try:
        yield ledger
    finally:
        ledger.close()


def records_refused(node: NodeProc) -> float | None:
    text = str(http(node, "GET", "/metrics"))
    m = re.search(r"^crdtledger_records_refused(?:_total)?(?:\{[^}]*\})? ([0-9.e+]+)$", text,
                  re.M)
    return float(m.group(1)) if m else None


def speak(w: World, as_node: str, frames: list[bytes] | Callable[..., list[bytes]],
          now_ms: int) -> None:
    assert w.victim is not None
    reply = asyncio.run(session(w.victim.sync_port, client_ctx(w.data(as_node)), CHAIN,
                                as_node, now_ms, frames))
    assert len(reply.states()) == 2, f"the session ended early ({reply.close_code})"


LIVE_COUNTER = iter(range(1, 1000))


@pytest.mark.slow
@pytest.mark.parametrize(("attack", "variant"), CASES)
def test_attack_in_a_live_session_is_refused_and_changes_nothing(
        live: World, attack: str, variant: str) -> None:
    node = live.victim
    assert node is not None
    forger = f"F{next(LIVE_COUNTER):02d}"
    live.forger(forger)
    was_revoked = r01_revoked(live, node.data)
    with reading(node) as victim:
        before = store_state(victim)
        sh01_tip = victim.storage.log.tip("SH01")
        batch = forge(live, victim, attack, variant, forger)
        now = victim.clock.wall()
    speak(live, forger, [recs_frame(batch)], now)
    assert r01_revoked(live, node.data) == was_revoked
    with reading(node) as victim:
        assert_unchanged(before, store_state(victim), attack)
        faults = [f for f in victim.faults() if f["node"] == forger]
        log_node = forger if variant in ("own-log", "sh01-client") else "SH01"
        if may_be_taken(attack, variant):
            pass
        elif log_node == forger:
            # Its own signed log broke a rule: proven, blocked and reported.
            assert [f["rule"] for f in faults] == [expected_refusal(attack, variant, forger)]
            status = http(node, "GET", "/api/sync/status", token=live.token)
            assert forger in {f["node"] for f in status["faults"]}
        else:
            # Not SH01's signature: nothing of it is taken, SH01 is not blamed.
            assert not [f for f in victim.faults() if f["node"] == "SH01"]
            assert victim.storage.log.tip("SH01") == sh01_tip


@pytest.mark.slow
def test_a_refused_record_is_counted_in_the_metrics(live: World) -> None:
    """issue 12: the writer of a refused record is reported, among others by a metric."""
    node = live.victim
    assert node is not None
    forger = f"F{next(LIVE_COUNTER):02d}"
    live.forger(forger)
    with reading(node) as victim:
        batch = forge(live, victim, "a service's price to 0.01", "own-log", forger)
        now = victim.clock.wall()
    counted = records_refused(node) or 0.0
    speak(live, forger, [recs_frame(batch)], now)
    with reading(node) as victim:
        assert [f["rule"] for f in victim.faults() if f["node"] == forger] == ["governance"]
    status = http(node, "GET", "/api/sync/status", token=live.token)
    assert forger in {f["node"] for f in status["faults"]}
    after = records_refused(node)
    assert after is not None, "no crdtledger_records_refused metric at /metrics"
    assert after >= counted + 1


@pytest.mark.slow
def test_the_head_office_changes_rules_and_operators_and_they_replicate(
        live: World, tmp_path: Path) -> None:
    hq = live.hq
    o = hq.owner
    hq.set_rule(o, "services", {"FOOT60": {"name": "足疗 60 分钟", "price": 13800},
                                "BODY90": {"name": "全身按摩 90 分钟", "price": 19800}})
    newboss = hq.add_operator(o, "newboss", BOSS_PW, ["manager"])
    hq.define_role(o, "cashier", {"member.add", "topup", "debit"})
    # By file, to (a copy of) SH04.
    path = tmp_path / "hq.sync"
    syncfile.export_file(hq, path)
    with file_victim(live, tmp_path) as files:
        syncfile.import_file(files, path)
        data = files.storage.dir
    # By a live session, to SH02: HQ's node as a client, sending what SH02 lacks.
    node = live.victim
    assert node is not None

    def lacking(frames: list[dict[str, Any]]) -> list[bytes]:
        theirs = parse_logs(frames[-1]["logs"])
        return [recs_frame(hq.batch(hq.lacking(theirs)))]

    speak(live, "HQ", lacking, hq.clock.wall())
    for reader in (Ledger.open(data, synchronous="NORMAL"), reading(node)):
        with reader as ledger:
            assert ledger is not None
            assert ledger.rule("services")["FOOT60"]["price"] == 13800
            assert ledger.permissions(newboss) == hq.permissions(newboss)
            assert audit.replica_rows(ledger, "operators") == audit.replica_rows(hq, "operators")
            assert audit.replica_rows(ledger, "roles") == audit.replica_rows(hq, "roles")
            # (SH02 may also hold a revocation list replayed by a branch, see above.)
            assert set(audit.replica_rows(hq, "rules")) <= set(audit.replica_rows(ledger, "rules"))
            assert not [f for f in ledger.faults() if f["node"] == "HQ"]




# --- attacks that race the honest record ------------------------------------------------
#
# A forger that has seen a branch's new records delivers its forgery to a replica that
# has not yet: a new branch, or one that was offline. The write rules must judge the
# forgery as they would in the other order (DESIGN.md: "every rule depends only on the
# record and on what precedes it in its writer's log, so honest replicas judge alike
# whatever order the logs reach them in").


def fresh_topup(w: World, phone: str) -> tuple[str, str]:
    """SH01 serves a new member a 1,000.00 top-up that no replica has seen yet."""
    member = w.sh01.add_member(w.sh01.owner, name="赵六", phone=phone)
    entry = w.sh01.topup(w.sh01.owner, member, TOPUP)
    return member, str(entry["id"])


def race_forgery(w: World, victim: Ledger, forger: str, eid: str, how: str) -> Batch:
    """The forger's own log, on its copy of SH01's document: the entry `eid` rewritten
    to 50,000.00 or deleted."""
    doc = ledger_doc(victim.storage.day_of(id_time_ms(eid))[:7])

    def mutate(roots: dict[str, Map[Any]]) -> None:
        if how == "delete":
            del roots["entries"][eid]
            return
        entry = dict(roots["entries"][eid])
        entry.update(amount=5_000_000, paid=5_000_000, deltas=[["cash", "SH01", 5_000_000]])
        roots["entries"][eid] = entry

    state = bytes(w.sh01.storage.doc(doc).doc.get_update())
    data = forge_update(state, doc, forger_client(forger), mutate)
    seq, prev = victim.storage.log.tip(forger)
    return ForgedLog(CHAIN, forger, w.forger(forger), seq, prev).batch([(doc, data)])


def holds_like(victim: Ledger, honest: Ledger, member: str) -> None:
    """The victim's books of `member` are the honest writer's."""
    assert victim.balance(member) == honest.balance(member)
    for table in ("entries", "rights", "totals"):
        assert ([r for r in audit.replica_rows(victim, table) if member in r]
                == [r for r in audit.replica_rows(honest, table) if member in r]), table


@pytest.mark.parametrize("how", ["rewrite", "delete"])
def test_a_forgery_filed_before_the_entry_it_changes_is_refused(
        world: World, tmp_path: Path, how: str) -> None:
    member, eid = fresh_topup(world, "13800000011" if how == "rewrite" else "13800000012")
    with file_victim(world, tmp_path) as victim:
        forged = sync_file(tmp_path / "forged.sync", world.forger("F00"),
                           race_forgery(world, victim, "F00", eid, how), victim.clock.wall())
        with contextlib.suppress(RemoteProtocolError):  # refused now, or judged later
            syncfile.import_file(victim, forged)
        honest = tmp_path / "sh01.sync"
        syncfile.export_file(world.sh01, honest)
        syncfile.import_file(victim, honest)
        holds_like(victim, world.sh01, member)
        assert victim.balance(member)["cash"] == TOPUP
        assert not [f for f in victim.faults() if f["node"] == "SH01"]


@pytest.mark.slow
@pytest.mark.parametrize("how", ["rewrite", "delete"])
def test_a_forgery_sent_live_before_the_entry_it_changes_is_refused(
        live: World, how: str) -> None:
    node = live.victim
    assert node is not None
    member, eid = fresh_topup(live, "13800000021" if how == "rewrite" else "13800000022")
    forger = f"F{next(LIVE_COUNTER):02d}"
    live.forger(forger)
    with reading(node) as victim:
        batch = race_forgery(live, victim, forger, eid, how)
        now = victim.clock.wall()
    speak(live, forger, [recs_frame(batch)], now)
    sh01 = live.sh01

    def lacking(frames: list[dict[str, Any]]) -> list[bytes]:
        return [recs_frame(sh01.batch(sh01.lacking(parse_logs(frames[-1]["logs"]))))]

    speak(live, "SH01", lacking, sh01.clock.wall())
    with reading(node) as victim:
        holds_like(victim, sh01, member)
        assert victim.balance(member)["cash"] == TOPUP
        assert not [f for f in victim.faults() if f["node"] == "SH01"]


def claim_client(w: World, victim: Ledger, forger: str, client: int) -> Batch:
    """The forger's own log writes first with another branch's pycrdt client id (which
    it learned from that branch's records) at a replica that has not yet seen them."""
    fid = HybridClock(forger).mint()

    def mutate(roots: dict[str, Map[Any]]) -> None:
        roots["members"][fid] = Map({"name": "x", "phone": "13800000000", "home": forger})

    data = forge_update(b"", "members/00", client, mutate)
    seq, prev = victim.storage.log.tip(forger)
    return ForgedLog(CHAIN, forger, w.forger(forger), seq, prev).batch([("members/00", data)])


def new_branch(w: World, node: str) -> tuple[Ledger, str]:
    """A branch that opens today: its first member and top-up, seen by no one yet."""
    ledger = make_branch(w.root, w.chain_dir, node)
    member = ledger.add_member(ledger.owner, name="钱七", phone="13800000031")
    ledger.topup(ledger.owner, member, TOPUP)
    return ledger, member


def test_a_forger_claiming_a_new_branchs_client_id_first_does_not_block_it(
        world: World, tmp_path: Path) -> None:
    branch, member = new_branch(world, "SH09")
    try:
        with file_victim(world, tmp_path) as victim:
            forged = sync_file(tmp_path / "claim.sync", world.forger("F00"),
                               claim_client(world, victim, "F00", branch.storage.client_id),
                               victim.clock.wall())
            with contextlib.suppress(RemoteProtocolError):
                syncfile.import_file(victim, forged)
            honest = tmp_path / "sh09.sync"
            syncfile.export_file(branch, honest)
            with contextlib.suppress(RemoteProtocolError):
                syncfile.import_file(victim, honest)
            assert not [f for f in victim.faults() if f["node"] == "SH09"], (
                "the honest branch is blamed for the forger's claim of its client id")
            holds_like(victim, branch, member)
    finally:
        branch.close()


@pytest.mark.slow
def test_a_forger_claiming_a_new_branchs_client_id_live_does_not_block_it(
        live: World) -> None:
    node = live.victim
    assert node is not None
    branch, member = new_branch(live, "SH08")
    try:
        forger = f"F{next(LIVE_COUNTER):02d}"
        live.forger(forger)
        with reading(node) as victim:
            batch = claim_client(live, victim, forger, branch.storage.client_id)
        speak(live, forger, [recs_frame(batch)], branch.clock.wall())

        def lacking(frames: list[dict[str, Any]]) -> list[bytes]:
            return [recs_frame(branch.batch(branch.lacking(parse_logs(frames[-1]["logs"]))))]

        speak(live, "SH08", lacking, branch.clock.wall())
        with reading(node) as victim:
            assert not [f for f in victim.faults() if f["node"] == "SH08"], (
                "the honest branch is blamed for the forger's claim of its client id")
            holds_like(victim, branch, member)
    finally:
        branch.close()
