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

from crdtledger import views
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
    row = ledger.storage.conn.execute(
        "SELECT member, purse, node, amount FROM rights WHERE amount < 0 LIMIT 1").fetchone()
    return tuple(row) if row is not None else None


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


def _rows(ledger: Ledger, sql: str) -> list[tuple[Any, ...]]:
    return [tuple(r) for r in ledger.storage.conn.execute(sql)]


def _digest(value: Any) -> str:
    h = hashlib.blake2b(digest_size=16)
    h.update(json.dumps(value, sort_keys=True, default=str, ensure_ascii=False).encode())
    return h.hexdigest()


TABLES = {
    "entries": "SELECT id, kind, member, node, op, at, day, amount, paid, ref, service, body "
               "FROM entries ORDER BY id",
    "rights": "SELECT member, purse, node, amount FROM rights WHERE amount != 0 "
              "ORDER BY member, purse, node",
    "totals": "SELECT member, spent, topped FROM totals WHERE spent != 0 OR topped != 0 "
              "ORDER BY member",
    "members": "SELECT * FROM members ORDER BY id",
    "cards": "SELECT * FROM cards ORDER BY id",
    "rules": "SELECT * FROM rules ORDER BY id",
    "operators": "SELECT * FROM operators ORDER BY id",
    "roles": "SELECT * FROM roles ORDER BY name",
    "quarantine": "SELECT * FROM quarantine ORDER BY doc, key",
    "deferred": "SELECT doc, key FROM deferred ORDER BY doc, key",
}


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
    for table, sql in TABLES.items():
        out[f"table:{table}"] = _digest(_rows(ledger, sql))
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
    projected = {r[0] for r in _rows(ledger, "SELECT id FROM entries")}
    if in_docs != projected:
        return (f"entries in documents but not projected: {sorted(in_docs - projected)[:5]}, "
                f"projected but not in documents: {sorted(projected - in_docs)[:5]}")
    if members != {r[0] for r in _rows(ledger, "SELECT id FROM members")}:
        return "members table differs from the member documents"
    if cards != {r[0] for r in _rows(ledger, "SELECT id FROM cards")}:
        return "cards table differs from the member documents"
    rights: dict[tuple[str, str, str], int] = {}
    for (body,) in _rows(ledger, "SELECT body FROM entries"):
        e = json.loads(body)
        for purse, node, change in e["deltas"]:
            key = (e["member"], purse, node)
            rights[key] = rights.get(key, 0) + change
    table = {(m, p, n): a for m, p, n, a in _rows(ledger, "SELECT * FROM rights")}
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
    members = sorted(r[0] for r in _rows(first, "SELECT id FROM members"))
    days = sorted({r[0] for r in _rows(first, "SELECT DISTINCT day FROM entries")})
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
    ids = [r[0] for r in _rows(first, "SELECT id FROM entries")]
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
    have_cards = {r[0] for r in _rows(first, "SELECT id FROM cards")}
    if world.acked_cards != have_cards:
        out.append(Violation("lost", f"cards differ from those acknowledged: "
                                     f"{sorted(world.acked_cards ^ have_cards)[:3]}"))
    have_rules = {r[0] for r in _rows(first, "SELECT id FROM rules")}
    if not world.acked_rules <= have_rules:
        out.append(Violation("lost", "an acknowledged rule is missing"))
    # Money.
    s = views.settlement(first)
    if s["total"] != 0:
        out.append(Violation("settlement", f"settlement positions sum to {s['total']}"))
    # Independently of the view: a branch's position is the cash rights transferred
    # into it minus those it gave away.
    moved: dict[str, int] = {}
    for (body,) in _rows(first, "SELECT body FROM entries WHERE kind = 'transfer'"):
        e = json.loads(body)
        for purse, node, change in e["deltas"]:
            if purse == "cash":
                moved[node] = moved.get(node, 0) + change
    expect = {n: v for n, v in sorted(moved.items()) if v}
    if expect != {n: v for n, v in s["net"].items() if v}:
        out.append(Violation("settlement", f"settlement {s['net']} is not the transfers' "
                                           f"net flows {expect}"))
    neg = _rows(first, "SELECT member, purse, SUM(amount) FROM rights GROUP BY member, purse "
                       "HAVING SUM(amount) < 0 LIMIT 3")
    if neg:
        out.append(Violation("negative", f"purse below zero after convergence: {neg}"))
    q = _rows(first, "SELECT doc, key, reason FROM quarantine LIMIT 3")
    if q:
        out.append(Violation("quarantine", f"entries of an honest chain quarantined: {q}"))
    d = _rows(first, "SELECT doc, key FROM deferred LIMIT 3")
    if d:
        out.append(Violation("deferred", f"entries still wait for funding after sync: {d}"))
    for node in (nodes[0], nodes[len(nodes) // 2], nodes[-1]):
        assert node.ledger is not None
        problem = projection_matches_documents(node.ledger)
        if problem:
            out.append(Violation("projection", f"{node.name}: {problem}", node.name))
    return out
