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

from crdtledger import audit, bookings, closing, views
from crdtledger.ledger import Ledger
from crdtledger.log import APPLIED
from crdtledger.settlement import reconciles
from crdtledger.sync import decode_state_vector
from crdtledger.writerules import GOVERNANCE_DOCS
from sim.byzantine import BREAKS, credits_to, goods_held
from sim.workload import GOODS

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
    out["books"] = _digest(closing.books(ledger))
    out["settlement"] = _digest(views.settlement(ledger))
    out["daily"] = _digest([views.daily_report(ledger, d) for d in days])
    out["ranking"] = _digest([views.ranking(ledger, "members", limit=20),
                              views.ranking(ledger, "services")])
    if full_views:
        out["daily_by_branch"] = _digest([views.daily_report(ledger, d, n)
                                          for d in days for n in nodes])
        out["points"] = _digest({m: views.points(ledger, m) for m in members[:50]})
    return out


def document_keys(ledger: Ledger) -> tuple[set[str], set[str], set[str]]:
    """The keys the documents hold: ledger entries, members, cards."""
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
    return in_docs, members, cards


def projection_matches_documents(ledger: Ledger) -> str | None:
    """The projections are what the documents hold: every entry key in the ledger
    documents is a projected entry (none waiting), members and cards likewise, and
    the rights rows are the sums of the projected entries' deltas."""
    in_docs, members, cards = document_keys(ledger)
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


def blocked_anywhere(world: World) -> set[str]:
    """Nodes some honest replica holds a proven fault of (a broken rule, a fork)."""
    out: set[str] = set()
    for n in world.honest_nodes():
        if n.ledger is not None:
            out |= n.ledger.storage.log.blocked()
    return out


def honest_view(ledger: Ledger, excluded: set[str] | None = None) -> dict[str, Any]:
    """What honest replicas must agree on once converged, in a run with Byzantine
    nodes: `log_view()` without the logs of blocked nodes (those `excluded`, else
    this replica's blocked ones). A blocked log's position is not exchanged any more
    once both sides know (Replica.lacking), so it may stop at different records on
    different replicas; what of it was applied is checked apart (byzantine_final)."""
    skip = ledger.storage.log.blocked() if excluded is None else excluded
    return {n: v for n, v in ledger.log_view().items() if n not in skip}


def forked_state(ledger: Ledger, excluded_logs: set[str], fork_entries: set[str]
                 ) -> dict[str, str]:
    """replica_state for a run where a node forked its log: the two sides of a fork
    stay applied where each came first (the library cannot undo them; it stops taking
    more), so honest replicas are compared without them: the logs of blocked nodes,
    the fork's own entries and their deltas in the rights (the views derived from
    those entries, balances, totals, reports and settlement, are not compared)."""
    out: dict[str, str] = {"logs": _digest(honest_view(ledger, excluded_logs))}
    out["table:entries"] = _digest([r for r in audit.replica_rows(ledger, "entries")
                                    if r[0] not in fork_entries])
    rights = {(m, p, n): a for m, p, n, a in audit.replica_rows(ledger, "rights")}
    for e in audit.entries(ledger):
        if e["id"] in fork_entries:
            for purse, node, change in e["deltas"]:
                key = (e["member"], purse, node)
                rights[key] = rights.get(key, 0) - change
    out["rights"] = _digest(sorted((k, v) for k, v in rights.items() if v))
    for table in audit.REPLICA_TABLES:
        if table not in ("entries", "rights", "totals", "members"):
            out[f"table:{table}"] = _digest(audit.replica_rows(ledger, table))
    return out


def final(world: World) -> list[Violation]:
    """The end-of-run checks, on converged replicas (the honest ones, in a run with
    Byzantine nodes)."""
    out: list[Violation] = []
    running = [n for n in world.nodes if n.name not in world.retired]
    nodes = [n for n in running if n.up and n.ledger is not None]
    if len(nodes) != len(running):
        out.append(Violation("liveness", "a node is still down at the end"))
        return out
    byz = world.byz
    nodes = [n for n in nodes if world.honest(n.name)]
    fork_entries = byz.fork_entries() if byz is not None else set()
    excluded = blocked_anywhere(world) if byz is not None else set()
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
        state = (forked_state(node.ledger, excluded, fork_entries) if fork_entries
                 else replica_state(node.ledger, days, names, members, full))
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
    missing = set(acked) - present
    excused = (byz.lost_to_restore(missing) | byz.lost_to_revocation(missing)
               if byz is not None else set())
    lost = sorted(missing - excused)
    phantom = sorted(present - set(acked) - fork_entries
                     - (byz.led_entries if byz is not None else set()))
    if lost:
        out.append(Violation("lost", f"{len(lost)} acknowledged entries missing, e.g. "
                                     f"{lost[:3]}"))
    # Each write whose node was killed between its acknowledgement and its flush
    # (World.killed_before_flush) is at every replica, though its frames died unsent.
    for kill in world.kills:
        wrote = kill["wrote"]
        if wrote in acked and wrote not in excused:
            without = [n.name for n in nodes if n.ledger is not None
                       and wrote not in set(audit.ids(n.ledger, "entries"))]
            if without:
                out.append(Violation("lost", f"entry {wrote}, acknowledged at {kill['node']} "
                                             f"killed before its flush, is missing at "
                                             f"{without}"))
    if phantom:
        out.append(Violation("phantom", f"{len(phantom)} entries nobody acknowledged "
                                        f"(a duplicate?), e.g. {phantom[:3]}"))
    have_members = set(members)
    # What a restored node acknowledged may be lost with it (sim.byzantine).
    # So may what a stolen PC acknowledged beyond what the chain held when it was
    # revoked (its end checks: revoked_final).
    restored = set(byz.restores) if byz is not None else set()
    if byz is not None:
        restored |= {s.node for s in byz.stolen.values() if s.held is not None}
    if not world.acked_members - have_members <= {
            m for m in world.acked_members if world.acked_where.get(m) in restored}:
        out.append(Violation("lost", f"acknowledged members missing: "
                                     f"{sorted(world.acked_members - have_members)[:3]}"))
    have_cards = set(audit.ids(first, "cards"))
    unexcused = {c for c in world.acked_cards - have_cards
                 if world.acked_where.get(c) not in restored}
    if unexcused or have_cards - world.acked_cards:
        out.append(Violation("lost", f"cards differ from those acknowledged: "
                                     f"{sorted(world.acked_cards ^ have_cards)[:3]}"))
    have_rules = set(audit.ids(first, "rules"))
    if not world.acked_rules <= have_rules:
        out.append(Violation("lost", "an acknowledged rule is missing"))
    # Money.
    s = views.settlement(first)
    if s["total"] != 0:
        out.append(Violation("settlement", f"settlement positions sum to {s['total']}"))
    # Settlement is by value served (crdtledger/settlement.py): each branch's figures
    # reconcile, and independently of the view, the cash each branch collected is what
    # its top-ups and positive corrections say, and the value still prepaid at all
    # branches together is every member's cash. Honest writers never spend cash that
    # no top-up paid for, so nothing is unattributed.
    collected: dict[str, int] = {}
    cash = 0
    for e in audit.entries(first):
        change = sum(c for purse, _node, c in e["deltas"] if purse == "cash")
        cash += change
        if e["kind"] == "topup" or (e["kind"] == "correction" and change > 0):
            collected[e["node"]] = collected.get(e["node"], 0) + change
    figures = s["branches"]
    if collected != {n: f["collected"] for n, f in figures.items() if f["collected"]}:
        out.append(Violation("settlement", f"settlement collected {s['branches']} is not "
                                           f"what the top-ups took {collected}"))
    if sum(f["unspent"] for f in figures.values()) != cash:
        out.append(Violation("settlement", f"settlement leaves {s['branches']} unspent, "
                                           f"members hold {cash}"))
    wrong = [n for n, f in figures.items() if not reconciles(f) or f["unattributed"]]
    if wrong:
        out.append(Violation("settlement", f"settlement of {wrong} does not reconcile: "
                                           f"{[figures[n] for n in wrong]}"))
    neg = audit.negative_purses(first, limit=3)
    if neg:
        out.append(Violation("negative", f"purse below zero after convergence: {neg}"))
    for node in nodes:  # a technician's slot confirmed twice (crdtledger.bookings)
        assert node.ledger is not None
        twice = bookings.double_booked(node.ledger)
        if twice:
            out.append(Violation("double-booked", f"{node.name}: {twice[:3]}", node.name))
    q = audit.quarantined(first, limit=3)
    if q:
        out.append(Violation("quarantine", f"entries of an honest chain quarantined: {q}"))
    d = audit.waiting(first, limit=3)
    if d:
        out.append(Violation("deferred", f"entries still wait for funding after sync: {d}"))
    # Goods on each shelf: what the tills were told was bought in, sold and refunded.
    # (A shop closing hands its shelf over; a restored store forgets what it was told.)
    if GOODS in first.catalogue() and not world.closed:
        held = first.stock_held(first.goods_item(GOODS))
        told = world.stock_told
        unsure = world.stock_unsure | restored
        wrong_stock = {b: (held.get(b, 0), told.get(b, 0)) for b in set(held) | set(told)
                       if held.get(b, 0) != told.get(b, 0) and world.honest(b)
                       and b not in unsure}
        if wrong_stock:
            out.append(Violation("stock", "units held, against what the tills were told: "
                                          f"{dict(sorted(wrong_stock.items()))}"))
    for node in (nodes[0], nodes[len(nodes) // 2], nodes[-1]):
        assert node.ledger is not None
        problem = projection_matches_documents(node.ledger)
        if problem:
            out.append(Violation("projection", f"{node.name}: {problem}", node.name))
    out += world.oracle.final(nodes)  # sim/oracles.py: settlement first in, first out
    if not fork_entries:  # the books by the acknowledged entries (a fork's nobody's)
        out += world.oracle.books(first, nodes[0].name, excused)
    if byz is not None:
        out += byzantine_final(world, nodes) + revoked_final(world, nodes)
    return out


# --- Byzantine runs (sim.byzantine) ---------------------------------------------------


def byzantine_now(world: World) -> list[Violation]:
    """Cheap enough to run every quarter hour: no honest replica has applied a record
    the simulator forged (each breaks a write rule), and none holds a fault of an
    honest node (a broken rule or a fork nobody made)."""
    byz = world.byz
    out: list[Violation] = []
    if byz is None:
        return out
    for n in world.honest_nodes():
        if n.ledger is None:
            continue
        log = n.ledger.storage.log
        for f in byz.forged:
            if log.state_of(f.node, f.seq) == APPLIED:
                out.append(Violation("rule", f"{n.name} applied record {f.seq} of {f.node}, "
                                             f"forged ({f.kind}) to break rule "
                                             f"{BREAKS[f.kind]}", n.name))
        for fault in log.faults():
            if world.honest(fault["node"]):
                out.append(Violation("blamed", f"{n.name} holds a fault of honest node "
                                               f"{fault['node']}: {fault['detail']}", n.name))
    return out + revoked_now(world)


def byzantine_final(world: World, honest: list[Any]) -> list[Violation]:
    """At the end, on every honest replica: (1) nothing that breaks a write rule is
    applied: of each Byzantine writer only the records before its first forgery (or up
    to its fork), none in a governance document, and every entry keyed by and naming
    one node and lowering no other node's rights; (2) every fork is known to every
    honest replica holding either side of it while another honest replica holds the
    other; every forger is known to every honest replica; (4) no purse below zero."""
    byz = world.byz
    assert byz is not None
    out = byzantine_now(world)
    sides: dict[int, set[bytes]] = {}
    for i, f in enumerate(byz.forks):
        sides[i] = {h for n in honest if n.ledger is not None
                    for h in [n.ledger.storage.log.hash_at(f.node, f.seq)] if h in f.hashes}
    for k, n in enumerate(honest):
        lg = n.ledger
        assert lg is not None
        log = lg.storage.log
        for writer, role in byz.writers():
            forged = [f.seq for f in byz.forged if f.node == writer]
            limit = min(forged) - 1 if forged else None
            for f in byz.forks:
                if f.node == writer:
                    limit = f.last
            for rec in log.records_after({writer: 0}, applied_only=True):
                if limit is not None and rec.seq > limit:
                    out.append(Violation("rule", f"{n.name} applied record {rec.seq} of "
                                                 f"{writer} ({role}), past {limit}", n.name))
                    break
                if rec.doc in GOVERNANCE_DOCS:
                    out.append(Violation("rule", f"{n.name} applied a governance record "
                                                 f"{rec.seq} of {writer}", n.name))
                    break
        faults = log.faults()
        for i, f in enumerate(byz.forks):
            held = log.hash_at(f.node, f.seq)
            known = any(x["node"] == f.node and x["kind"] == "fork" for x in faults)
            if held in f.hashes and len(sides[i]) == 2 and not known:
                out.append(Violation("fork", f"{n.name} holds one side of {f.node}'s fork at "
                                             f"record {f.seq}, another honest replica the "
                                             "other, and it has not detected the fork",
                                     n.name))
        for forger in sorted({f.node for f in byz.forged}):
            if not any(x["node"] == forger for x in faults):
                out.append(Violation("rule", f"{n.name} never detected forger {forger}",
                                     n.name))
            # Judged by its place in the log, whatever batch it came in: every replica
            # blames the same record, the first forged.
            first = min(f.seq for f in byz.forged if f.node == forger)
            blamed = sorted(x["seq"] for x in faults
                            if x["node"] == forger and x["kind"] == "rule")
            if blamed and blamed != [first]:
                out.append(Violation("blamed", f"{n.name} blames records {blamed} of "
                                               f"forger {forger}, not its first forgery "
                                               f"{first}", n.name))
            # And for the rule that forgery aims at: one refused by another rule (an arm
            # of the aimed rule gone, a check before it that catches the forgery) leaves
            # that arm untried by the run.
            (kind,) = {f.kind for f in byz.forged if f.node == forger and f.seq == first}
            rules = sorted({x["rule"] for x in faults
                            if x["node"] == forger and x["kind"] == "rule"})
            if rules and rules != [BREAKS[kind]]:
                out.append(Violation("blamed", f"{n.name} blames forger {forger}'s {kind} "
                                               f"on rule {', '.join(rules)}, not "
                                               f"{BREAKS[kind]}", n.name))
        neg = audit.negative_purses(lg, limit=3)
        if neg:
            out.append(Violation("negative", f"{n.name}: purse below zero: {neg}", n.name))
        for closed in sorted(world.retired):  # a shop closed for good strands nothing
            kept: list[Any] = views.rights_held_rows(lg, closed, 3)
            units = goods_held(lg, closed)
            if units:
                kept.append(("goods", GOODS, units))
            if kept or not lg.retired(closed):
                what = f"holding {kept}" if kept else "not revoked"
                out.append(Violation("stranded", f"{n.name} sees {closed}, closed for good, "
                                                 f"{what}", n.name))
        if k in (0, len(honest) // 2, len(honest) - 1):  # the entries, re-judged
            for e in audit.entries(lg):
                writer = str(e["id"]).rsplit(".", 1)[-1]
                lowered = {str(node) for _p, node, change in e["deltas"] if change < 0}
                if e["node"] != writer or not lowered <= {writer}:
                    out.append(Violation("rule", f"{n.name} holds entry {e['id']} of "
                                                 f"{e['node']} lowering {sorted(lowered)}",
                                         n.name))
                    break
    return out


def revoked_now(world: World) -> list[Violation]:
    """A stolen PC revoked (sim.byzantine, role "revoked"): no honest replica takes a
    record of its log beyond the length every one held when head office revoked it,
    whatever it wrote meanwhile and sends once plugged in again; and none keeps a live
    link to a peer it holds revoked (live_links_now)."""
    out: list[Violation] = []
    if world.byz is None:
        return out
    out += live_links_now(world)
    for s in world.byz.stolen.values():
        if s.held is None:
            continue
        for n in world.honest_nodes():
            pos = n.ledger.positions().get(s.node, 0) if n.ledger is not None else 0
            if pos > s.held:
                out.append(Violation("revoked", f"{n.name} took record {pos} of {s.node}, "
                                                f"revoked at record {s.held} of its log",
                                     n.name))
    return out


def live_links_now(world: World) -> list[Violation]:
    """No honest node keeps a live link to a peer its store holds revoked: the node
    drops it when it installs the list (peer.chain.apply_revocations, run by
    SimNode._load_revocations as peer.node runs it), the turn after the list commits
    (`_crl_soon` while that is due). A stolen PC with `--revoked-live` is connected to
    head office when head office revokes it."""
    out: list[Violation] = []
    for n in world.honest_nodes():
        if n.ledger is None or n._crl_soon:
            continue
        for conn in sorted(n.conns.values(), key=lambda c: c.id):
            peer = conn.other(n.name)
            if n.ledger.retired(peer):
                out.append(Violation("revoked", f"{n.name} keeps its live link #{conn.id} "
                                                f"to {peer}, which the chain revoked",
                                     n.name))
    return out


def revoked_final(world: World, honest: list[Any]) -> list[Violation]:
    """At the end, for each stolen PC revoked, on every honest replica: it is revoked;
    its log's records up to the length held at the revocation all stay applied (the
    earlier ones), none beyond (revoked_now); no entry it acknowledged after its
    revocation is there (no money from them); and no honest branch gave it rights
    after it came back (each writer's own such entries as they were then)."""
    byz = world.byz
    assert byz is not None
    out: list[Violation] = []
    for s in byz.stolen.values():
        if s.held is None:
            continue
        later = byz._acked(s.node) - s.acked_at_revocation
        for n in honest:
            lg = n.ledger
            assert lg is not None
            if not lg.retired(s.node):
                out.append(Violation("revoked", f"{n.name} does not see {s.node} revoked",
                                     n.name))
            applied = len(lg.storage.log.records_after({s.node: 0}, applied_only=True))
            if applied != s.held:
                out.append(Violation("revoked", f"{n.name} holds {applied} records of "
                                                f"{s.node} applied, {s.held} when it was "
                                                "revoked", n.name))
            taken = sorted(later & set(audit.ids(lg, "entries")))
            if taken:
                out.append(Violation("revoked", f"{n.name} holds {len(taken)} entries "
                                                f"{s.node} acknowledged after its "
                                                f"revocation, e.g. {taken[:3]}", n.name))
            if s.plugged_at is not None:
                given = sorted(e for e in credits_to(lg, s.node) - s.credits_at_plug
                               if world.honest(e.rsplit(".", 1)[-1]))
                if given:
                    out.append(Violation("revoked", f"{n.name} holds entries of honest "
                                                    f"branches giving {s.node} rights after "
                                                    f"its revocation: {given[:3]}", n.name))
    return out


def byzantine_report(world: World) -> dict[str, Any]:
    """What the Byzantine nodes did and what the honest replicas found."""
    byz = world.byz
    assert byz is not None
    detected: dict[str, list[dict[str, Any]]] = {}
    for n in world.honest_nodes():
        if n.ledger is not None:
            detected[n.name] = [{"node": x["node"], "kind": x["kind"], "rule": x["rule"],
                                 "seq": x["seq"]} for x in n.ledger.faults()]
    acked = world.acked_entries
    first = world.honest_nodes()[0].ledger
    present = set(audit.ids(first, "entries")) if first is not None else set()
    return {**byz.summary(),
            "faults_detected": {k: len(v) for k, v in detected.items()},
            "faults": detected,
            "records_refused": dict(sorted(world.records_refused.items())),
            "lost_to_restore": len(byz.lost_to_restore(set(acked) - present))}
