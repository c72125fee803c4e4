"""The simulator runs what runs in the shop (sim/README.md, "Tills as in the shop"):
the tills act as each branch's cashier or manager through `operations.run` under
Idempotency-Keys, a lost answer is sent again under its key, and the books (daily
reports, a closed month's member balances) are worked out again from the entries the
tills were told of. The library is monkeypatched in the test only, by name, to show
each check fires."""

from __future__ import annotations

from typing import Any

import pytest

from crdtledger import closing, idempotency, operations, views
from sim.config import Config
from sim.world import World

# A month's last day (the default start): the holiday week closes January in the run.
TINY = Config(nodes=4, members=30, days=1, ops_per_node=60, ae_interval_s=30.0, seed=2,
              scenario="partition-heal", lost_answers=0.05)


def caught(kind: str) -> str:
    """Run the tiny day with what the test patched, and return the message of the
    violation it must stop at, of `kind`."""
    v = World(TINY).run()["violation"]
    assert v and v["kind"] == kind, v
    return str(v["message"])


@pytest.mark.slow
def test_tills_run_as_operators_under_keys_and_the_books_hold() -> None:
    ran: list[tuple[str, str]] = []
    real = operations.run

    def spied(ledger: Any, operator: str, name: str, params: Any) -> Any:
        ran.append((operator, name))
        return real(ledger, operator, name, params)

    mp = pytest.MonkeyPatch()
    mp.setattr(operations, "run", spied)
    try:
        world = World(TINY)
        result = world.run()
    finally:
        mp.undo()
    assert result["violations"] == 0, result["violation"]
    assert result["answers_lost"] > 0, result  # and sent again: no phantom, no duplicate
    cashiers = {ops["cashier"] for ops in world.operators.values()}
    managers = {ops["manager"] for ops in world.operators.values()}
    assert {n for o, n in ran if o in cashiers} >= {"debit", "topup", "member.add"}
    assert {n for o, n in ran if o in managers} >= {"refund"}
    assert result["holidays"] == ["2026-01"]
    assert result["written_off"] > 0  # lots earned before the holiday, by the daily pass
    # Sync files carried across the partitions, imported (or found already held).
    assert result["couriered"] and all(isinstance(c.get("imported"), list | str)
                                       for c in result["couriered"]), result["couriered"]
    assert result["books"]["closed_through"] == "2026-01"
    books = result["oracles"]["books_checked"]
    assert books["daily"] >= 8 and books["month_end_members"] > 20, books


@pytest.mark.slow
def test_a_key_that_does_not_hold_leaves_a_phantom(monkeypatch: pytest.MonkeyPatch) -> None:
    """idempotency.look forgets every key (in this test): a lost answer's retry is
    written again, and the first entry is one nobody was told of."""
    monkeypatch.setattr(idempotency, "look", lambda *a, **k: None)
    caught("phantom")


@pytest.mark.slow
def test_a_daily_report_ignoring_refunds_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """views.daily_report's sales without the refunds taken off (in this test)."""
    real = views.daily_report

    def report(ledger: Any, day: str, node: str | None = None) -> dict[str, Any]:
        r = real(ledger, day, node)
        return {**r, "sales": r["sales"] + r["refunds"]}

    monkeypatch.setattr(views, "daily_report", report)
    assert "says sales" in caught("books")


@pytest.mark.slow
def test_month_end_balances_adding_later_movements_are_caught(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """closing.member_balances with a member's cash one fen off (in this test), as the
    probe's sign error in the later movements gives."""
    real = closing.member_balances

    def balances(ledger: Any, month: str | None = None) -> dict[str, Any]:
        b = real(ledger, month)
        rows = [dict(r) for r in b["members"]]
        rows[0]["cash"] += 1
        return {**b, "members": rows}

    monkeypatch.setattr(closing, "member_balances", balances)
    assert "balances at the end of 2026-01" in caught("books")


@pytest.mark.slow
def test_both_ends_dial_some_links_and_the_crossing_rule_decides(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Some links are dialled from both ends (sim.world.BOTH_DIAL): NodeCore.link_opened
    meets a second connection to a peer and keeps the one the smaller id dialled."""
    from crdtledger.core import NodeCore

    said: list[str] = []
    real = NodeCore._decide

    def decide(self: Any, what: str) -> None:
        said.append(what)
        real(self, what)

    monkeypatch.setattr(NodeCore, "_decide", decide)
    world = World(TINY)
    assert any(world.nodes[i].name in world.nodes[j].dial_edges
               and world.nodes[j].name in world.nodes[i].dial_edges
               for i in range(4) for j in range(i))
    result = world.run()
    assert result["violations"] == 0, result["violation"]
    assert any("keep the link" in w or "replace the link" in w for w in said), said[:5]


@pytest.mark.slow
def test_a_closing_whose_balances_are_off_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """The closing's month-end cash one fen off (in this test), as the probe's extra fen
    per rights row in closing.MonthEnd.of gives."""
    real = closing.MonthEnd.of.__func__  # type: ignore[attr-defined]

    def of(cls: Any, *a: Any, **k: Any) -> Any:
        end = real(cls, *a, **k)
        return closing.replace(end, purses={**end.purses,
                                            "cash": end.purses.get("cash", 0) + 1})

    monkeypatch.setattr(closing.MonthEnd, "of", classmethod(of))
    assert "the closing of 2026-01 sums" in caught("books")


@pytest.mark.slow
def test_a_request_the_schema_refuses_must_be_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """operations.validate checking no schema (in this test): an older till's unknown
    field is taken, and the simulator says so."""
    def no_schema(op: Any, params: Any) -> dict[str, Any]:
        out = dict(params)  # the defaults still filled in, nothing checked
        for p in op.params:
            if p.name not in out and p.default is not None:
                out[p.name] = p.default
        return out

    monkeypatch.setattr(operations, "validate", no_schema)
    result = World(TINY.with_(ops_per_node=120)).run()
    assert result["violation"] and result["violation"]["kind"] == "refusal", \
        result["violation"]


@pytest.mark.slow
def test_a_sync_file_import_that_takes_what_verifies_is_caught(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """crdtledger.syncfile's import verifying and applying non-strictly (in this test):
    a file with one record altered on the way is taken in part, where it must be
    refused whole. Every couriered file is honest, so the simulator carries a copy
    altered and sealed again before each (sim.world._altered)."""
    from crdtledger import syncfile
    from crdtledger.ledger import Ledger

    verify, apply = Ledger.verify_batch, Ledger.apply_verified
    monkeypatch.setattr(Ledger, "verify_batch",
                        lambda self, batch, strict=False: verify(self, batch, False))
    monkeypatch.setattr(Ledger, "apply_verified",
                        lambda self, plan, origin=None, *, strict=False, **kw:
                        apply(self, plan, origin, strict=False, **kw))
    assert syncfile.import_file  # the path under test: it calls both with strict=True
    assert "altered" in caught("syncfile")


@pytest.mark.slow
def test_stock_raised_beyond_what_was_bought_in_is_caught(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A delivery booked one unit more than the till entered (in this test): every
    entry is acknowledged and every replica agrees, so only the shelf counted against
    what the tills were told finds it."""
    from crdtledger.goods import Goods

    real = Goods.stock_in
    monkeypatch.setattr(Goods, "stock_in", lambda self, operator, code, qty, *a, **k:
                        real(self, operator, code, qty + 1, *a, **k))
    caught("stock")
