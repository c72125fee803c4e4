"""The partition simulator (sim/): deterministic, clean on every scenario, and able to
catch a broken node. Small chains and a 30 s anti-entropy interval keep CI short;
the big runs are in sim/README.md with the commands that reproduce them."""

from __future__ import annotations

import io
import json
import os
from typing import Any

import pytest

from crdtledger import escrow
from sim.cli import main
from sim.config import Config
from sim.faults import SCENARIOS
from sim.net import HEARTBEAT_TIMEOUT_US
from sim.shrink import report_violation
from sim.world import World, results_of, run

pytestmark = pytest.mark.slow

# Small and quick: 5 branches (a mesh) or 7 (two hubs), 40 customers each a day.
SMALL = Config(nodes=5, members=30, days=1, ops_per_node=40, ae_interval_s=30.0)


def go(**changes: Any) -> dict[str, Any]:
    result, _world = run(SMALL.with_(**changes))
    return result


def go_all(*changes: dict[str, Any], base: Config = SMALL) -> list[dict[str, Any]]:
    """Independent runs at once, one per CPU (the suite runs one test at a time)."""
    return list(results_of([base.with_(**c) for c in changes], os.cpu_count() or 1))


def assert_clean(r: dict[str, Any]) -> None:
    assert r["violations"] == 0, (r["violation"], r["reproduce"])
    assert r["converged"] is True, r["reproduce"]
    assert r["ops"] > 100


def test_same_seed_same_digest_and_different_seeds_differ() -> None:
    a = go(seed=11, scenario="partition-heal", nodes=7)  # here, and the same in other processes
    b, c = go_all(dict(seed=11, scenario="partition-heal", nodes=7),
                  dict(seed=12, scenario="partition-heal", nodes=7))
    assert_clean(a)
    assert a["trace_digest"] == b["trace_digest"]
    assert a["ops"] == b["ops"] and a["events"] == b["events"]
    assert a["convergence"] == b["convergence"]
    assert a["trace_digest"] != c["trace_digest"]


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_every_scenario_runs_clean(scenario: str) -> None:
    for r in go_all(*(dict(seed=seed, scenario=scenario, nodes=nodes)
                       for seed, nodes in ((1, 5), (2, 7), (3, 7)))):
        assert_clean(r)
        # Refusals for rights happen only while some node is cut off or down.
        assert r["refused_debits"]["connected"]["refused_rights"] == 0, r["reproduce"]
        if scenario not in ("steady", "hot-member"):
            assert r["faults"], "the scenario scheduled its faults"


def test_a_faulty_transport_is_tolerated() -> None:
    """Frames handed to the session twice or swapped: the library must not grant a
    rights request twice or lose anything; a frame out of order closes the
    connection (a new one heals), never the node."""
    r = go(seed=5, scenario="hot-member", nodes=7, dup=0.05, reorder=0.02)
    assert_clean(r)


def test_single_links_are_cut_while_their_ends_reach_each_other_through_a_third() -> None:
    """partition-heal also cuts one link at a time (sim.faults.link_cuts): A-B down for
    longer than the heartbeat while A and B both still reach some C."""
    world = World(SMALL.with_(seed=1, scenario="partition-heal", nodes=6))
    try:
        links = [f for f in world.faults if f.label == "link"]
        assert len(links) >= 10
        net = world.net
        for f in links:
            a, b = f.nodes
            assert f.end is not None and f.end - f.start > HEARTBEAT_TIMEOUT_US
            net.add_cuts(f.cuts)
            assert not net.reachable(a, b)
            assert any(net.reachable(a, c) and net.reachable(c, b) for c in world.by_name
                       if c not in f.nodes), f.describe()
            net.remove_cuts(f.cuts)
    finally:
        world._close()


def test_frames_out_of_order_exercise_funding_deferral() -> None:
    """Records flood every session in the order they were committed, over ordered
    links: a causal broadcast, so no network fault delivers an entry before its
    funding (none of the scenarios defers an entry). Frames swapped by a broken
    transport do, and the projection holds such an entry in `deferred` until its
    funding comes (crdtledger.projection, "Funding in log order"): counted from the
    stores themselves (sim.node), with the replicas clean and converged. A deferral
    that projects an entry unfunded, or never projects it, fails here."""
    r = go(seed=1, scenario="hot-member", nodes=7, reorder=0.2)
    assert_clean(r)
    assert r["deferred_entries"] >= 5, r["deferred_by_node"]


def test_quick_sweep_of_thirty_seeds(capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 4: a quick sweep of at least 30 seeds in CI (short days, so that it costs
    what 12 longer ones did)."""
    code = main(["sweep", "--seeds", "30", "--nodes", "4", "--scenario", "partition-heal",
                 "--members", "12", "--ops-per-node", "10", "--ae-interval", "30"])
    out = capsys.readouterr()
    summary = json.loads(out.out[:out.out.rindex("}") + 1])
    assert code == 0, out.out
    assert summary["runs"] == 30 and summary["violations"] == 0
    assert summary["not_converged"] == 0
    assert len(set(summary["digests"].values())) == 30
    assert "30/30" in out.err  # the progress line


def test_a_sweep_in_parallel_processes_gives_what_one_process_gives(
        capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["sweep", "--seeds", "2", "--nodes", "4", "--scenario", "steady", "--members", "12",
            "--ops-per-node", "10", "--ae-interval", "60"]
    summaries = []
    for jobs in ("1", "2"):
        assert main([*argv, "--jobs", jobs]) == 0
        summary = json.loads(capsys.readouterr().out)
        del summary["wall_seconds"]
        summaries.append(summary)
    assert summaries[0] == summaries[1] and len(summaries[0]["digests"]) == 2
    with pytest.raises(SystemExit, match="--jobs must be at least 1"):
        main([*argv, "--jobs", "0"])


def test_every_branch_closes_december_on_the_eighth_of_january() -> None:
    """Month-end cuts (crdtledger.closing) through the node core's daily pass, across
    a partition: every replica agrees on the books (a digest of the end check), and
    they are closed through December once the 8th has come everywhere, every branch
    has signed the same closing, and it counts."""
    result, _world = run(SMALL.with_(seed=6, scenario="partition-heal", nodes=7,
                                     start="2026-01-07", days=2))
    assert_clean(result)
    assert result["books"] == {"closed_through": "2025-12", "behind": [], "closing": {
        "month": "2025-12", "counted": True, "differ": []}}


def test_a_node_that_spends_rights_it_lacks_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """Break the escrow check (in this test only): a node then debits rights held
    elsewhere. The continuous checker must stop the run with the reproducing seed,
    and the shrinker must find a smaller run that still fails."""

    def no_check(purse: str, here: str, rights: Any, amount: int,
                 member: str | None = None) -> None:
        return None

    monkeypatch.setattr(escrow, "require", no_check)
    cfg = SMALL.with_(seed=4, scenario="partition-heal", nodes=7)
    result, world = run(cfg)
    assert result["violations"] == 1
    v = result["violation"]
    assert v["kind"] == "negative", v
    assert "--seed 4" in result["reproduce"]
    out = io.StringIO()
    report_violation(cfg, result, world, out=out)
    text = out.getvalue()
    assert "VIOLATION (negative)" in text and "seed 4" in text
    assert "reproduce the short run: python -m sim run" in text and "--max-ops" in text
    # The run stops at the very debit; the shortest reproduction needs no faults.
    shrunk = int(text.split("shrunk to ")[1].split(" ops")[0])
    assert shrunk <= result["ops"]
    n = len(result["faults"])  # three partitions, and a day of single-link cuts
    assert n > 3 and "faults []" in text
    assert "--drop-faults " + ",".join(str(i) for i in range(n)) in text
    assert "rights row below zero" in text


def test_the_cli_prints_json_with_the_named_fields(capsys: pytest.CaptureFixture[str],
                                                   tmp_path: Any) -> None:
    code = main(["run", "--nodes", "4", "--members", "20", "--ops-per-node", "25",
                 "--ae-interval", "30", "--seed", "3", "--scenario", "partition-heal",
                 "--json", "--plot", str(tmp_path)])
    r = json.loads(capsys.readouterr().out)
    assert code == 0
    for key in ("violations", "converged", "trace_digest", "ops", "convergence",
                "refused_debits", "rights_transfer", "traffic"):
        assert key in r
    assert r["violations"] == 0 and r["converged"] is True
    for name in ("refused.png", "convergence.png", "report.md"):
        assert (tmp_path / name).stat().st_size > 1000, name


@pytest.mark.parametrize("argv", [
    ["run", "--days", "0"], ["run", "--ops-per-node", "0"], ["run", "--ops-per-node", "-5"],
    ["run", "--ae-interval", "0"], ["run", "--max-ops", "-1"], ["run", "--dup", "2"],
    ["run", "--reorder", "-1"], ["run", "--members", "-3"], ["run", "--hubs", "0"],
    ["run", "--drop-faults", "abc"], ["sweep", "--seeds", "0"], ["sweep", "--nodes", "1"],
    ["sweep", "--nodes", "2,,3"], ["sweep", "--start", "2026-02-30"],
    ["run", "--plot", "/dev/null/x", "--nodes", "2"],
])
def test_the_simulators_command_line_refuses_what_no_run_can_mean(
        argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """A run of no days or no customers reported a false divergence (or a traceback)
    and shrank it; a negative count or no anti-entropy interval hung; `--max-ops -1`
    and `sweep --seeds 0` said "0 violations" for runs that did nothing; a bad list or
    date was a traceback, and a bad --plot failed after the whole run. Each is a
    sentence, at once, and a non-zero exit."""
    from sim.cli import main

    with pytest.raises(SystemExit) as refused:
        main(argv)
    assert refused.value.code not in (0, None)
    said = str(refused.value.code) + capsys.readouterr().err
    assert "Traceback" not in said and said.strip()


def test_a_rebalancer_moving_rights_out_of_reach_is_caught(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Drop the rebalancer's "only to a branch it reaches" (in this test only): rights
    then sit at a branch cut off from the giver, spendable nowhere else until the
    partition heals. Nothing caught it; the world checks each transfer's receiver."""
    from crdtledger.core import NodeCore

    step = NodeCore._rebalance_step

    def out_of_reach(self: NodeCore) -> int:
        self.connected = lambda: sorted(self.ledger.positions())  # type: ignore[method-assign]
        try:
            return step(self)
        finally:
            del self.connected

    monkeypatch.setattr(NodeCore, "_rebalance_step", out_of_reach)
    result, _world = run(SMALL.with_(seed=1, scenario="partition-heal", nodes=6,
                                     ops_per_node=120))
    assert result["violations"] == 1 and result["violation"]["kind"] == "rebalance", result
