"""Checkers: what must hold of the real replicas, read from their real state.

Continuously (after every step of every node): no rights row below zero, hence no
purse below zero (a purse is the sum of its rights rows); no protocol error on a
faithful transport; after a restart, everything the node acknowledged is still
there. At the end, after healing and quiescence: every replica holds the same
documents (state vectors and the keys of every root map) and the same derived
views (entries, rights, totals, members, cards, rules, balances, daily reports,
rankings, settlement, points); every acknowledged operation is present and nothing
else is (no duplicates, no phantom entries); the settlement sums to zero; the
projections are what the documents say.
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any

from crdtledger import audit, views
from crdtledger.ledger import Ledger
from crdtledger.sync import decode_state_vector

if TYPE_CHECKING:
    from sim.world import World


class Violation(Exception):
    def __init__(self, kind: str, message: str, node: str | None = None) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind = kind
        self.message = message
        self.node = node


def negative_rights(ledger: Ledger) -> tuple[Any, ...] | None:
    return audit.negative_rights(ledger)


_SV_CACHE: dict[bytes, dict[int, int]] = {}


def decoded(sv: bytes) -> dict[int, int]:
    """decode_state_vector, remembered: most documents do not change between checks."""
    hit = _SV_CACHE.get(sv)
    if hit is None:
        if len(_SV_CACHE) > 200_000:
            _SV_CACHE.clear()
        hit = _SV_CACHE[sv] = decode_state_vector(sv)
    return hit


def clocks(ledger: Ledger) -> dict[tuple[str, int], int]:
    out: dict[tuple[str, int], int] = {}
    for name, sv in ledger.state_vectors().items():
        for client, clock in decoded(sv).items():
            out[(name, client)] = clock
    return out


def covers(ledger: Ledger, target: dict[tuple[str, int], int]) -> bool:
    svs = ledger.state_vectors()
    cache: dict[str, dict[int, int]] = {}
    for (name, client), clock in target.items():
        d = cache.get(name)
        if d is None:
            sv = svs.get(name)
            d = cache[name] = decoded(sv) if sv is not None else {}
        if d.get(client, 0) < clock:
            return False
    return True


def _digest(value: Any) -> str:
    h = hashlib.blake2b(digest_size=16)
    h.update(json.dumps(value, sort_keys=True, default=str, ensure_ascii=False).encode())
    return h.hexdigest()


def replica_state(ledger: Ledger, days: list[str], nodes: list[str], members: list[str],
                  full_views: bool) -> dict[str, str]:
    """Digests of everything converged replicas must agree on."""
    out: dict[str, str] = {}
    svs = ledger.state_vectors()
    out["state_vectors"] = _digest({n: sorted(decoded(sv).items()) for n, sv in svs.items()})
    keys: dict[str, list[str]] = {}
    for name in sorted(svs):
        for root_name, root in sorted(ledger.storage.doc(name).roots.items()):
            keys[f"{name}:{root_name}"] = sorted(root.keys())
    out["document_keys"] = _digest(keys)
    for table in audit.REPLICA_TABLES:
        out[f"table:{table}"] = _digest(audit.replica_rows(ledger, table))
    out["balances"] = _digest({m: ledger.balance(m) for m in members})
    out["settlement"] = _digest(views.settlement(ledger))
    out["daily"] = _digest([views.daily_report(ledger, d) for d in days])
    out["ranking"] = _digest([views.ranking(ledger, "members", limit=20),
                              views.ranking(ledger, "services")])
    if full_views:
        out["daily_by_branch"] = _digest([views.daily_report(ledger, d, n)
                                          for d in days for n in nodes])
        out["points"] = _digest({m: views.points(ledger, m) for m in members[:50]})
    return out


def projection_matches_documents(ledger: Ledger) -> str | None:
    """The projections are what the documents hold: every entry key in the ledger
    documents is a projected entry (none waiting), members and cards likewise, and
    the rights rows are the sums of the projected entries' deltas."""
    in_docs: set[str] = set()
    members: set[str] = set()
    cards: set[str] = set()
    for name in ledger.state_vectors():
        roots = ledger.storage.doc(name).roots
        if name.startswith("ledger/"):
            in_docs |= set(roots["entries"].keys())
        elif name.startswith("members/"):
            members |= set(roots["members"].keys())
            cards |= set(roots["cards"].keys())
    projected = set(audit.ids(ledger, "entries"))
    if in_docs != projected:
        return (f"entries in documents but not projected: {sorted(in_docs - projected)[:5]}, "
                f"projected but not in documents: {sorted(projected - in_docs)[:5]}")
    if members != set(audit.ids(ledger, "members")):
        return "members table differs from the member documents"
    if cards != set(audit.ids(ledger, "cards")):
        return "cards table differs from the member documents"
    rights: dict[tuple[str, str, str], int] = {}
    for e in audit.entries(ledger):
        for purse, node, change in e["deltas"]:
            key = (e["member"], purse, node)
            rights[key] = rights.get(key, 0) + change
    table = {(m, p, n): a for m, p, n, a in audit.replica_rows(ledger, "rights")}
    if {k: v for k, v in table.items() if v} != {k: v for k, v in rights.items() if v}:
        return "rights table is not the sum of the entries' deltas"
    return None


def final(world: World) -> list[Violation]:
    """The end-of-run checks, on converged replicas."""
    out: list[Violation] = []
    nodes = [n for n in world.nodes if n.up and n.ledger is not None]
    if len(nodes) != len(world.nodes):
        out.append(Violation("liveness", "a node is still down at the end"))
        return out
    first = nodes[0].ledger
    assert first is not None
    names = [n.name for n in world.nodes]
    members = audit.ids(first, "members")
    days = audit.entry_days(first)
    every = max(1, world.config.check_views_every)
    reference: dict[str, str] | None = None
    for i, node in enumerate(nodes):
        assert node.ledger is not None
        full = i == 0 or i == len(nodes) - 1 or i % every == 0
        state = replica_state(node.ledger, days, names, members, full)
        if reference is None:
            reference = state
            continue
        for key, value in state.items():
            if key in reference and reference[key] != value:
                out.append(Violation("divergence", f"{node.name} differs from {nodes[0].name} "
                                                   f"in {key}", node.name))
                break
    # Acknowledged, present; present, acknowledged (no duplicates, nothing phantom).
    ids = audit.ids(first, "entries")
    present = set(ids)
    acked = world.acked_entries
    lost = sorted(set(acked) - present)
    phantom = sorted(present - set(acked))
    if lost:
        out.append(Violation("lost", f"{len(lost)} acknowledged entries missing, e.g. "
                                     f"{lost[:3]}"))
    if phantom:
        out.append(Violation("phantom", f"{len(phantom)} entries nobody acknowledged "
                                        f"(a duplicate?), e.g. {phantom[:3]}"))
    have_members = set(members)
    if not world.acked_members <= have_members:
        out.append(Violation("lost", f"acknowledged members missing: "
                                     f"{sorted(world.acked_members - have_members)[:3]}"))
    have_cards = set(audit.ids(first, "cards"))
    if world.acked_cards != have_cards:
        out.append(Violation("lost", f"cards differ from those acknowledged: "
                                     f"{sorted(world.acked_cards ^ have_cards)[:3]}"))
    have_rules = set(audit.ids(first, "rules"))
    if not world.acked_rules <= have_rules:
        out.append(Violation("lost", "an acknowledged rule is missing"))
    # Money.
    s = views.settlement(first)
    if s["total"] != 0:
        out.append(Violation("settlement", f"settlement positions sum to {s['total']}"))
    # Independently of the view: a branch's position is the cash rights transferred
    # into it minus those it gave away.
    moved: dict[str, int] = {}
    for e in audit.entries(first, "transfer"):
        for purse, node, change in e["deltas"]:
            if purse == "cash":
                moved[node] = moved.get(node, 0) + change
    expect = {n: v for n, v in sorted(moved.items()) if v}
    if expect != {n: v for n, v in s["net"].items() if v}:
        out.append(Violation("settlement", f"settlement {s['net']} is not the transfers' "
                                           f"net flows {expect}"))
    neg = audit.negative_purses(first, limit=3)
    if neg:
        out.append(Violation("negative", f"purse below zero after convergence: {neg}"))
    q = audit.quarantined(first, limit=3)
    if q:
        out.append(Violation("quarantine", f"entries of an honest chain quarantined: {q}"))
    d = audit.waiting(first, limit=3)
    if d:
        out.append(Violation("deferred", f"entries still wait for funding after sync: {d}"))
    for node in (nodes[0], nodes[len(nodes) // 2], nodes[-1]):
        assert node.ledger is not None
        problem = projection_matches_documents(node.ledger)
        if problem:
            out.append(Violation("projection", f"{node.name}: {problem}", node.name))
    return out
