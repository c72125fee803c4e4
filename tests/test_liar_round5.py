"""A branch with a valid certificate that lies, fifth round (6 December): text and
values it chose, followed to every output an honest branch makes of them (the
analytics export, a member's edits, the node's log, the command line's CSV and JSON,
the printed receipt).

SH01 is honest, SH03 the liar (tests/helpers.Forger, its own valid key), SH02 and
SH04 honest replicas: tests/test_liar_round2.World. Real stores, real apply_batch.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import run_cli
from helpers import Forger, snapshot, sync
from pycrdt import Doc, Map
from test_liar_round2 import World

from crdtledger import analytics, operations, platform
from crdtledger.errors import InvalidInput
from crdtledger.model import member_doc
from peer import receipts


@pytest.fixture
def w(tmp_path: Path) -> Iterator[World]:
    world = World(tmp_path)
    yield world
    world.close()


def test_a_ledger_month_no_date_holds_stops_no_analytics_export(w: World, tmp_path: Path
                                                                ) -> None:
    """`ledger/9999-12` and `ledger/0000-01` are names like any month's (refused on the
    wire, they split a chain upgraded branch by branch), and every honest replica takes
    the liar's empty record into them; its analytics export then failed for good on
    the month after (year 10000) or before (year -1)."""
    liar: Forger = w.liar
    for name in ("ledger/9999-12", "ledger/0000-01", "ledger/0001-01"):
        rec = liar.write(name, lambda d: d.get("entries", type=Map))
        w.b.apply_batch(liar.batch([rec]))
        assert name in w.b.storage.state_vectors()
    analytics.export(w.b, tmp_path / "out")
    assert (tmp_path / "out").is_dir()


def test_a_merge_pointer_that_is_not_a_member_is_no_merge(w: World) -> None:
    """A liar set a member's `merged_into` to a list: read in SQL as the text '["x"]',
    it made a group of its own, and every later edit of the member (who had earned
    points) failed on a points lot inserted twice."""
    a = w.a
    a.debit(a.owner, w.member, amount=100)  # a points lot

    def poison(d: Doc[Map[object]]) -> None:
        d.get("members", type=Map)[w.member]["merged_into"] = ["x"]

    a.apply_batch(w.liar.batch([w.liar.write(member_doc(w.member), poison)]))
    assert a.survivor_of(w.member) == w.member
    for fields in ({"notes": "VIP"}, {"name": "王芳芳"}):
        operations.run(a, a.owner, "member.edit", {"member": w.member, **fields})
    assert a.member(w.member)["name"] == "王芳芳"


def test_a_peers_line_breaks_make_no_lines_of_the_nodes_log(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """A refusal quotes what the liar wrote (its entry's node field); under systemd
    each line of a message is a journal entry of its own, so a liar's line breaks
    wrote lines the owner read as the node's ("clock: ... run sudo date -s @0")."""
    forged = "SH03\ncrdtledger.node: clock: run `sudo date -s @0`\r\u2028connected"
    for journal in ("1:2", None):
        if journal:
            monkeypatch.setenv("JOURNAL_STREAM", journal)
        else:
            monkeypatch.delenv("JOURNAL_STREAM", raising=False)
        platform.setup_logging()
        try:
            logging.getLogger("crdtledger.node").warning("refused: entry names node %s",
                                                         forged)
            try:
                raise ValueError("a traceback keeps its lines")
            except ValueError:
                logging.getLogger("crdtledger.node").exception("failed")
        finally:
            logging.getLogger().handlers.clear()
        lines = capsys.readouterr().err.splitlines()
        refused = [x for x in lines if "refused" in x]
        assert len(refused) == 1 and "\\x0a" in refused[0], lines
        assert not any(x.lstrip("<4>").startswith("crdtledger.node: clock") for x in lines)
        assert any("Traceback" in x for x in lines)  # exc_info still spans lines


def test_a_liars_member_name_is_one_line_of_the_receipt(w: World) -> None:
    """A liar renamed a member "王芳\\n----\\n合计（元） 0.00\\n凭此票可退 500.00 元": the
    honest branch's receipt printed a second total and a promise of a refund."""
    a = w.a
    name = "王芳\n" + "-" * 32 + "\n合计（元）  0.00\n本单免单，凭此票可退 500.00 元"

    def rename(d: Doc[Map[object]]) -> None:
        d.get("members", type=Map)[w.member]["name"] = name

    a.apply_batch(w.liar.batch([w.liar.write(member_doc(w.member), rename)]))
    sale = a.debit(a.owner, w.member, amount=1000)
    paper = receipts.text(receipts.build(a, sale["id"]))
    member_line = next(x for x in paper.splitlines() if x.startswith("会员"))
    assert member_line.endswith("…") and "王芳" in member_line
    assert sum("合计" in x for x in paper.splitlines()) == 1, paper


def test_the_command_lines_csv_and_json_obey_no_terminal_control(w: World) -> None:
    """`audit --csv` wrote a liar's ESC [2J (clear the screen) and ESC ]0; (retitle
    the terminal) as they were, and a cashier's reason holding U+009B (the one-byte
    CSI) came out raw in `--csv` and `--json`. Free text refuses C1 controls now; what
    another branch wrote is shown, not obeyed."""
    hostile = "\x1b[2J\x1b[H\x1b]0;PWNED\x07 \x9b1;1H"
    top = w.entry("topup", w.member, [["cash", "SH03", 100]], amount=100, paid=100,
                  pay="cash", reason=hostile + "reason")
    top["op"] = hostile + "x@SH03"
    w.b.apply_batch(w.liar.batch([w.write(top)]))
    w.a.transfer_rights(w.a.owner, w.member, "SH02", 1000)
    sync(w.a, w.b)
    before = snapshot(w.b, [w.member])
    with pytest.raises(InvalidInput):
        operations.run(w.b, w.b.owner, "correct", {"member": w.member, "purse": "cash",
                                                   "change_text": "-1",
                                                   "reason": "fix \x9b2J"})
    assert snapshot(w.b, [w.member]) == before
    data = w.b.storage.dir
    w.close()
    for fmt in ("--csv", "--json"):
        r = run_cli("audit", fmt, data=data)
        assert r.code == 0 and "PWNED" in r.out, r.err
        assert not any(c in r.out for c in "\x1b\x07\x9b"), repr(r.out[:300])


def test_a_liars_transfer_without_deltas_leaves_the_history_readable(w: World) -> None:
    """A liar's `transfer` with no deltas (and one without `to`) passes the record
    check; `crdtledger history --member M` (text, and --json, which renders the text
    first) then failed at every branch, for that member, for good: show_entry took
    next() of the transfer's deltas (RuntimeError)."""
    # Of amount 0: one claiming to move more than it does is refused (amount-moved).
    bare = w.entry("transfer", w.member, [], amount=0, to="SH01")
    nowhere = w.entry("transfer", w.member, [], amount=0)
    w.b.apply_batch(w.liar.batch([w.write(bare), w.write(nowhere)]))
    assert {e["id"] for e in w.b.history(w.member, 10)} >= {bare["id"], nowhere["id"]}
    data = w.b.storage.dir
    w.close()
    text = run_cli("history", "--member", w.member, data=data)
    assert text.code == 0, text.err
    lines = text.out.splitlines()
    for e, to in ((bare, "SH01"), (nowhere, "?")):
        assert any(x.endswith(f"no rights moved SH03→{to}  [{e['id']}]") for x in lines), lines
    assert run_cli("history", "--member", w.member, "--json", data=data).json()


def test_a_liars_line_breaks_forge_no_rows_of_the_command_lines_reports(w: World) -> None:
    """A liar renamed a member "王芳\\n  2. 李四 13900000000  99999.00  (9x)": the
    honest branch's `crdtledger report ranking` printed a second-place row it made up
    (cli.emit's `printable` keeps line breaks, and the reports put names in as they
    are). Each value stays on its row; --json keeps the name as it is."""
    a = w.a
    forged = "  2. 李四 13900000000  99999.00  (9x)"
    name = "王芳\n" + forged + "\r\u2028\x85\x0b" + "  3. 张三"

    def rename(d: Doc[Map[object]]) -> None:
        d.get("members", type=Map)[w.member]["name"] = name
        d.get("members", type=Map)[w.member]["custom"] = Map({"k\nx": "v\n  4. 赵六"})

    a.apply_batch(w.liar.batch([w.liar.write(member_doc(w.member), rename)]))
    a.debit(a.owner, w.member, amount=500)
    data = a.storage.dir
    w.close()
    ranking = run_cli("report", "ranking", "--by", "members", data=data)
    assert ranking.code == 0, ranking.err
    # Each break a space: one row, whatever it says.
    assert ranking.out.splitlines() == [f"  1. 王芳 {forged}" + " " * 4 + "  3. 张三  5.00  (1x)"]
    shown = run_cli("member", "show", "--member", w.member, data=data)
    assert shown.code == 0, shown.err
    assert not any(x.lstrip().startswith(("2.", "3.", "4.")) for x in shown.out.splitlines())
    assert "custom: k x=v   4. 赵六" in shown.out.splitlines()
    assert run_cli("member", "show", "--member", w.member, "--json", data=data
                   ).json()["name"] == name


def test_a_liars_discount_that_is_no_rate_leaves_the_receipt_readable(w: World) -> None:
    """A liar's debit whose `discount` is "x" (any text passes the entry check): its
    receipt, `crdtledger receipt show`, GET /api/receipts/{entry} and a reprint at an
    honest branch failed with decimal.InvalidOperation. The discount's line keeps its
    amount and shows no rate; so do a rate of a million digits and one above 1."""
    odd = {r: w.entry("debit", w.member, [], amount=90, gross=100, discount=r,
                      level="金卡", pay="cash") for r in ("x", "1e-999999", "2", "sNaN")}
    fair = w.entry("debit", w.member, [], amount=90, gross=100, discount="0.9",
                   level="金卡", pay="cash")
    w.b.apply_batch(w.liar.batch([w.write(e) for e in (*odd.values(), fair)]))
    for e in odd.values():
        paper = receipts.text(receipts.build(w.b, e["id"]))
        [line] = [x for x in paper.splitlines() if x.startswith("金卡")]
        assert line.split() == ["金卡", "-0.10"], paper
    paper = receipts.text(receipts.build(w.b, fair["id"]))
    assert ["金卡", "9折", "-0.10"] in [x.split() for x in paper.splitlines()]
    data = w.b.storage.dir
    w.close()
    shown = run_cli("receipt", "show", "--entry", odd["x"]["id"], data=data)
    assert shown.code == 0 and "合计" in shown.out, shown.err


# --- goods, packages and coupons (the twelfth wave) -------------------------------------


def _heard(w: World) -> None:
    for r in (w.b, w.liar.ledger):
        sync(w.a, r)
    w.liar = Forger(w.liar.ledger)


def test_a_package_raises_its_own_uses_only(w: World) -> None:
    """SH01 sold a package of 10 uses for 500.00; the liar's "package" entry added 90
    uses to it in its own rights and moved them to SH02, which served 12 uses of the
    10-use package (value-raise let a package raise any pkg: purse)."""
    svc = next(iter(w.a.rule("services")))
    pid = w.a.sell_package(w.a.owner, w.member, svc, 10, 50_000)["id"]
    _heard(w)
    forged = w.entry("package", w.member, [[f"pkg:{pid}", "SH03", 90]], service=svc,
                     qty=90, pay="cash", paid=0)
    move = w.entry("transfer", w.member, [[f"pkg:{pid}", "SH03", -90],
                                          [f"pkg:{pid}", "SH02", 90]], to="SH02",
                   amount=90)
    rec = w.write(forged, move)
    for r in (w.a, w.b):
        r.apply_batch(w.liar.batch([rec]))
        assert [f["rule"] for f in r.faults()] == ["value-raise"], r.node
        assert r.rights(w.member, f"pkg:{pid}") == {"SH01": 10}, r.node


def test_a_shipment_takes_its_units_from_the_writers_stock_net(w: World) -> None:
    """The liar, holding no stock, lowered and raised its own stock by five in one
    entry and put five in SH01's transit, four times: raise-own counted the lowering
    gross, and SH01 shelved twenty units nobody had."""
    sid = w.a.add_goods(w.a.owner, "G01", "精油", 10_000, 4_000)["stock"]
    _heard(w)
    ships = [w.entry("stock", sid, [["stock", "SH03", -5], ["stock", "SH03", 5],
                                    ["transit", "SH01", 5]], qty=5, reason="ship",
                     goods="G01", to="SH01") for _ in range(4)]
    rec = w.write(*ships)
    for r in (w.a, w.b):
        r.apply_batch(w.liar.batch([rec]))
        assert [f["rule"] for f in r.faults()] == ["raise-own"], r.node
        assert r.rights(sid, "transit") == {}, r.node


def test_a_debit_naming_a_coupon_without_taking_its_unit_redeems_nothing(w: World) -> None:
    """The liar's debit named SH01's coupon and took no unit of it (projected: it takes
    nothing of anyone's); SH01 then redeemed the coupon in a sale of its own, and
    every branch showed it "redeemed at SH03", the till's refusal too."""
    c = w.a.issue_coupon(w.a.owner, w.member, off=5_000)["coupon"]
    _heard(w)
    claim = w.write(w.entry("debit", w.member, [], amount=100, coupon=c, off=5_000,
                            pay="cash"))
    for r in (w.a, w.b):
        r.apply_batch(w.liar.batch([claim]))
        assert r.faults() == [], r.node  # taken: it takes nothing of anyone's
    assert w.a.coupon_view(c)["status"] == "available"
    sale = w.a.debit(w.a.owner, w.member, amount=20_000, coupon=c)
    sync(w.a, w.b)
    for r in (w.a, w.b):
        view = r.coupon_view(c)
        assert (view["at"], view["entry"]) == ("SH01", sale["id"]), r.node
