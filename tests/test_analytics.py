"""`crdtledger export-analytics` over the demo chain: Parquet that the README's DuckDB
query reads, giving the same daily figures as `crdtledger report daily`; a second run
writes nothing and duplicates nothing; an entry written later, or synced in late into
an old month, rewrites just its month; members come out without names or phones."""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest
from cluster import NodeProc, free_port
from conftest import run_cli
from demo_chain import make_demo_chain
from helpers import FakeClock, sync, two_zones

from crdtledger import analytics
from crdtledger.analytics import MANIFEST
from crdtledger.ledger import Ledger
from peer import cli as peer_cli
from peer.chain import enrol

README = Path(__file__).resolve().parent.parent / "README.md"


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    yield make_demo_chain(tmp_path_factory.mktemp("demo"))


def readme_query() -> str:
    """The README's DuckDB query of daily sales per branch, as a reader copies it."""
    text = README.read_text(encoding="utf-8")
    blocks = re.findall(r"```sql\n(.*?)```", text, re.S)
    found = [b for b in blocks if "read_parquet('analytics/entries" in b]
    assert len(found) == 1, "the README shows one DuckDB query over analytics/entries"
    return found[0]


def export(data: Path, out: Path, capsys: pytest.CaptureFixture[str] | None = None
           ) -> dict[str, object]:
    """The real command, in its own process; with `capsys`, the same command line's
    code run here (a process costs seconds on a busy machine)."""
    if capsys is None:
        r = run_cli("export-analytics", "--out", out, "--json", data=data)
        assert r.code == 0, r.err
        return dict(r.json())
    capsys.readouterr()
    assert peer_cli.main(["export-analytics", "--data", str(data), "--out", str(out),
                          "--json"]) == 0
    return dict(json.loads(capsys.readouterr().out))


def report_daily(data: Path, day: str, branch: str, capsys: pytest.CaptureFixture[str]
                 ) -> dict[str, int]:
    """`crdtledger report daily --day DAY --branch BRANCH --json` (the command line's
    own code, run here: one process per day and branch would take a minute)."""
    capsys.readouterr()
    assert peer_cli.main(["report", "daily", "--data", str(data), "--day", day,
                          "--branch", branch, "--json"]) == 0
    return dict(json.loads(capsys.readouterr().out))


def test_readme_duckdb_query_gives_report_daily_figures_and_rerun_duplicates_nothing(
        demo: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    head = demo["SH01"]
    out = tmp_path / "analytics"
    first = export(head, out)
    with Ledger.open(head, lock=False) as ledger:
        n_entries = ledger.storage.conn.execute("SELECT COUNT(*) FROM entries").fetchone()[0]
        n_members = ledger.storage.conn.execute("SELECT COUNT(*) FROM members").fetchone()[0]
        phones = {p for (p,) in ledger.storage.conn.execute("SELECT phone FROM members")}
        names = {p for (p,) in ledger.storage.conn.execute("SELECT name FROM members")}
    assert first["entries"] == first["entries_written"] == n_entries > 300
    assert first["members"] == n_members

    monkeypatch.chdir(tmp_path)  # the README's query names the relative directory
    rows = duckdb.sql(readme_query()).fetchall()
    assert len(rows) >= 10
    days = sorted({str(day) for day, *_ in rows})
    checked = 0
    for day in days:
        for branch in ("SH01", "SH02", "HZ01"):
            want = report_daily(head, day, branch, capsys)
            got = [r for r in rows if str(r[0]) == day and r[1] == branch]
            sales, topup = (got[0][2], got[0][3]) if got else (0, 0)
            assert (sales, topup) == (want["sales"], want["topup_cash"]), (day, branch)
            checked += bool(want["sales"])
    assert checked >= 10  # days with sales at each branch, not a run of zeros

    # Again: nothing written, nothing duplicated, the same answer.
    again = export(head, out, capsys)
    assert again["entries_written"] == 0 and again["months_written"] == []
    assert duckdb.sql(readme_query()).fetchall() == rows
    ids = duckdb.sql("SELECT id FROM read_parquet('analytics/entries/*/*.parquet')").fetchall()
    assert len(ids) == len(set(ids)) == n_entries

    # Anonymised: no member's name or phone anywhere in the members' file.
    members = pq.read_table(out / "members.parquet").to_pylist()
    assert len(members) == n_members
    cells = {str(v) for m in members for v in m.values()}
    assert not cells & phones and not cells & names
    assert all(re.fullmatch(r"M[0-9a-f]{20}", m["member"]) for m in members)
    # ...and the entries name members by the same pseudonyms.
    pseudonyms = {m["member"] for m in members}
    entry_members = {m for (m,) in duckdb.sql(
        "SELECT DISTINCT member FROM read_parquet('analytics/entries/*/*.parquet') "
        "WHERE kind IN ('topup', 'card')").fetchall()}
    assert entry_members and entry_members <= pseudonyms

    # Every branch of the chain gives a member the same pseudonym (a key from the
    # chain secret): head office's files join with a branch's.
    export(demo["HZ01"], tmp_path / "hz01", capsys)
    assert {m["member"] for m in pq.read_table(tmp_path / "hz01" / "members.parquet")
            .to_pylist()} == pseudonyms

    # Goods sales: units and money of the goods debits, the same as the report's.
    sold = duckdb.sql("SELECT goods, SUM(qty), SUM(amount) FROM "
                      "read_parquet('analytics/goods_sales/*/*.parquet') GROUP BY goods "
                      "ORDER BY goods").fetchall()
    capsys.readouterr()
    assert peer_cli.main(["report", "goods", "--data", str(head), "--json"]) == 0
    ranking = {r["code"]: (r["qty"], r["sales"]) for r in json.loads(capsys.readouterr().out)}
    assert sold and {g: (q, a) for g, q, a in sold} == ranking


def test_a_new_entry_or_a_late_one_rewrites_only_its_month_and_the_one_before(
        demo: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "analytics"
    head = demo["SH01"]
    export(head, out, capsys)
    manifest = json.loads((out / MANIFEST).read_text())
    months = sorted(manifest["months"])
    assert len(months) >= 2
    with Ledger.open(head) as ledger:  # a top-up today, at head office
        member = ledger.storage.conn.execute(
            "SELECT id FROM members ORDER BY id LIMIT 1").fetchone()[0]
        ledger.topup(ledger.owner, member, 10000, pay="cash")
        this_month = ledger.today()[:7]  # before today's opening hour, a month of its own
    after = export(head, out, capsys)
    # This month and the one before: another zone's branch may put a row of this
    # month's document into the month before here (the next test).
    before = [m for m in months if m < this_month][-1:]
    assert after["months_written"] == [*before, this_month]
    assert after["entries_written"] == sum(
        manifest["months"].get(m, {"entries": 0})["entries"] for m in before
    ) + manifest["months"].get(this_month, {"entries": 0})["entries"] + 1
    [total] = duckdb.sql(f"SELECT COUNT(*), COUNT(DISTINCT id) FROM read_parquet("
                         f"'{out}/entries/*/*.parquet')").fetchall()
    assert total[0] == total[1] == after["entries"]
    # A branch that was cut off since the first month syncs in at last: its entry
    # lands in that month, which is written again with its neighbour.
    first_day = min(d for d in manifest["months"])  # e.g. 2026-10
    with Ledger.open(head, lock=False) as ledger:
        (late_ms,) = ledger.storage.conn.execute(
            "SELECT MAX(at) FROM entries WHERE day < ?", (f"{months[1]}-01",)).fetchone()
    chain = head.parent / "chain"
    late_dir = tmp_path / "SH09"
    Ledger.create(late_dir, "SH09", "demo")
    # Enrolled then (nothing is booked before a branch's certificate starts).
    enrol(chain, late_dir, "SH09",
          not_before=dt.datetime.fromtimestamp(late_ms / 1000 - 86_400, dt.UTC))
    with Ledger.open(late_dir, now_ms=lambda: late_ms + 1000) as late:
        new = late.add_member(late.owner, name="迟到", phone="13900009999")
        late.topup(late.owner, new, 5000, pay="cash")
        with Ledger.open(head) as ledger:
            ledger.pull(late, origin="test")
    assert first_day == months[0]
    assert export(head, out, capsys)["months_written"] == months[:2]
    # A month's file deleted by hand comes back on the next run, and only it.
    (out / "entries" / f"month={months[0]}" / "part-0.parquet").unlink()
    assert export(head, out, capsys)["months_written"] == [months[0]]


def test_another_chains_export_directory_is_refused(
        demo: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    def refusal(out: Path) -> str:
        capsys.readouterr()
        assert peer_cli.main(["export-analytics", "--data", str(demo["SH02"]),
                              "--out", str(out)]) == 1
        return capsys.readouterr().err

    out = tmp_path / "analytics"
    out.mkdir()
    (out / MANIFEST).write_text(json.dumps({"chain": "other"}))
    assert "chain 'other'" in refusal(out)
    stray = tmp_path / "photos"
    stray.mkdir()
    (stray / "holiday.jpg").write_bytes(b"x")
    assert "holds other files" in refusal(stray)


def test_export_while_the_node_runs_reads_the_store_beside_it(
        demo: dict[str, Path], tmp_path: Path) -> None:
    """The export reads in its own process, not on the running node's loop (a long
    one would stall the tills): it sees what the node just wrote, and the node keeps
    serving."""
    node = NodeProc("HZ01", demo["HZ01"], free_port(), free_port()).start()
    try:
        member = node.cli("member", "add", "--name", "晚到", "--phone", "13700009999",
                          "--json").json()["member_id"]
        topup = node.cli("topup", "--member", member, "--amount", "88.00", "--json").json()
        out = tmp_path / "analytics"
        info = export(node.data, out)
        assert info["entries_written"] == info["entries"]
        [row] = duckdb.sql(f"SELECT kind, amount, branch FROM read_parquet("
                           f"'{out}/entries/*/*.parquet') WHERE id = "
                           f"'{topup['id']}'").fetchall()
        assert row == ("topup", 8800, "HZ01")
        assert node.http("GET", "/health")["status"] == "ok"
    finally:
        assert node.stop() == 0


def test_an_entry_of_another_zones_month_is_exported_into_this_stores_month(
        tmp_path: Path) -> None:
    """SH02 in Los Angeles exports January; SH01 in Shanghai then tops up at 10:00 on
    1 February (18:00 on 31 January in Los Angeles): its document is February's, its
    row here January's. The export rewrote only February's month and the top-up was
    in no file; January's rows depend on February's document too."""
    clock = FakeClock(1_768_874_400_000)  # 2026-01-20 10:00 in Shanghai
    sh, la = two_zones(tmp_path, clock, 365)
    try:
        m = sh.add_member(sh.owner, name="张伟", phone="13800000001")
        sh.topup(sh.owner, m, 100000)
        sync(sh, la)
        out = tmp_path / "analytics"
        assert analytics.export(la, out)["months_written"] == ["2026-01"]
        clock.ms = 1_769_911_200_000  # 2026-02-01 10:00 in Shanghai
        late = sh.topup(sh.owner, m, 50000)
        sync(sh, la)
        assert "2026-01" in analytics.export(la, out)["months_written"]
        january = pq.read_table(out / "entries" / "month=2026-01" / "part-0.parquet")
        assert late["id"] in january.column("id").to_pylist()
        assert analytics.export(la, out)["months_written"] == []  # nothing new: nothing
    finally:
        sh.close()
        la.close()


def test_typed_reasons_are_not_exported_and_levels_are_the_merge_groups(
        tmp_path: Path) -> None:
    """A refund's or a correction's reason is what a cashier typed ("王芳 13812345678
    投诉技师"): it went into the anonymised files beside the member's pseudonym. And a
    duplicate and its survivor, each 银卡 alone and 金卡 together (as the ledger shows
    them), were exported 银卡."""
    from helpers import new_ledger, registered_apart

    clock = FakeClock()
    a = new_ledger(tmp_path, "SH01", now_ms=clock)
    try:
        x = a.add_member(a.owner, name="王芳", phone="13812345678")
        y = registered_apart(a, tmp_path, name="王芳", phone="138 1234 5678", now_ms=clock)
        for m in (x, y):
            a.topup(a.owner, m, 300_000)
        sale = a.debit(a.owner, x, amount=5_000)
        a.refund(a.owner, sale["id"], reason="王芳 13812345678 投诉技师")
        a.merge_member(a.owner, x, y)
        shown = a.level(y)["name"]
        out = tmp_path / "analytics"
        analytics.export(a, out)
        rows = pq.read_table(out / "entries").to_pylist()
        assert not [r for r in rows if r["reason"] and "王芳" in r["reason"]]
        assert [r["reason"] for r in rows if r["kind"] == "checkin"] == []  # none here
        levels = pq.read_table(out / "members.parquet").column("level").to_pylist()
        assert levels == [shown, shown] and shown == a.level(x)["name"]
        text = b"".join(p.read_bytes() for p in out.rglob("*.parquet"))
        assert b"13812345678" not in text
    finally:
        a.close()


@pytest.mark.parametrize("manifest", ["null", "[]", '"x"', '{"months": []}', "[" * 100_000])
def test_a_manifest_not_an_exports_is_refused_with_a_sentence(tmp_path: Path,
                                                             manifest: str) -> None:
    from helpers import new_ledger

    from crdtledger.errors import InvalidInput

    a = new_ledger(tmp_path, "SH01")
    try:
        out = tmp_path / "analytics"
        out.mkdir()
        (out / MANIFEST).write_text(manifest, encoding="utf-8")
        with pytest.raises(InvalidInput, match="move the directory aside"):
            analytics.export(a, out)
    finally:
        a.close()


def test_an_export_stopped_after_its_first_month_is_carried_on(tmp_path: Path) -> None:
    """Stopped (Ctrl-C) after writing its first month, before its manifest: every
    later run refused the directory as "holding other files"."""
    from helpers import new_ledger

    clock = FakeClock()
    a = new_ledger(tmp_path, "SH01", now_ms=clock)
    try:
        m = a.add_member(a.owner, name="张伟", phone="13800000001")
        a.topup(a.owner, m, 10_000)
        out = tmp_path / "analytics"
        real, calls = analytics._write, []

        def stop_after_one(out: Path, path: Path, table: object) -> None:
            if calls:
                raise KeyboardInterrupt
            calls.append(path)
            real(out, path, table)  # type: ignore[arg-type]

        analytics._write = stop_after_one  # type: ignore[assignment]
        try:
            with pytest.raises(KeyboardInterrupt):
                analytics.export(a, out)
        finally:
            analytics._write = real  # type: ignore[assignment]
        assert analytics.export(a, out)["months_written"]
    finally:
        a.close()


def _liar_chain(tmp_path: Path) -> tuple[Ledger, Ledger]:
    """SH01 (honest: its export runs) and SH02, in sync. SH02 lies as a real store can:
    hand-made records committed into its own signed log, every write rule obeyed."""
    from helpers import name_branches, new_ledger

    clock = FakeClock()
    a = new_ledger(tmp_path, "SH01", now_ms=clock)
    b = new_ledger(tmp_path, "SH02", now_ms=clock)
    name_branches(a, "SH01", "SH02")
    sync(a, b)
    return a, b


@pytest.mark.parametrize("fields", [
    {"birthday": "ABCD-EF-GH"}, {"birthday": "1990-13-45"}, {"birthday": 19900517},
    {"gender": 5}, {"gender": {"x": 1}}, {"prefs": {"service": 7}},
    {"prefs": {"service": ["x"]}}])
def test_a_liars_member_fields_stop_no_export(tmp_path: Path, fields: dict[str, object]
                                             ) -> None:
    """A member's fields are its record's contents, unchecked on the way in: a liar's
    birthday "ABCD-EF-GH", gender 5 or preferred service 7 stopped every branch's
    export for good (ValueError, ArrowTypeError; members.parquet is written whole
    each run). What is not the expected shape is exported null; an honest member
    beside it as before."""
    from pycrdt import Map

    from crdtledger.commit import put
    from crdtledger.model import EDITS, member_doc

    a, b = _liar_chain(tmp_path)
    try:
        a.add_member(a.owner, name="张伟", phone="13800000001", gender="F",
                     birthday="1990-05-17", prefs={"service": "足疗"})
        mid = b.clock.mint()
        body: dict[str, object] = {
            "name": "x", "phone": "13800000002", "home": b.node, "created_by": b.owner,
            "prefs": Map({}), "tags": Map({}), "custom": Map({}), EDITS: Map()}
        body.update({k: Map(v) if isinstance(v, dict) else v for k, v in fields.items()})
        b._write(put(member_doc(mid), "members", mid, Map(body)))
        sync(a, b)
        out = tmp_path / "analytics"
        analytics.export(a, out)
        rows = pq.read_table(out / "members.parquet").to_pylist()
        assert len(rows) == 2
        liar = next(r for r in rows if r["home"] == "SH02")
        assert (liar["gender"], liar["birth_year"], liar["preferred_service"]) == (
            None, None, None)
        mine = next(r for r in rows if r["home"] == "SH01")
        assert (mine["gender"], mine["birth_year"], mine["preferred_service"]) == (
            "F", 1990, "足疗")
    finally:
        a.close()
        b.close()


def test_a_liars_goods_cost_past_int64_stops_no_export(tmp_path: Path) -> None:
    """A liar's goods sale of one unit at a cost of 10**13 fen, refunded 10**13 times
    (every number within the entry checks): the refund's cost, -(unit cost) * units =
    -10**26, overflowed the int64 column and stopped every branch's export for good
    (the month is written whole each run, and never was again). Its cost is left out
    (null), counted, and every other value of the month is exported."""
    a, b = _liar_chain(tmp_path)

    def lie(kind: str, member: str, **fields: object) -> dict[str, object]:
        e = b._entry(kind, member, op=b.owner)
        e.update(fields)
        b._commit(lambda: ([b._entry_write(e)], e))
        return e

    try:
        m = b.add_member(b.owner, name="m", phone="13800000009")
        sale = lie("debit", m, goods="G1", qty=1, amount=100, pay="cash")
        lie("stock", m, ref=sale["id"], reason="sale", qty=1, amount=10**13, goods="G1")
        lie("refund", m, ref=sale["id"], qty=10**13, amount=1)
        sync(a, b)
        out = tmp_path / "analytics"
        first = analytics.export(a, out)
        assert first["goods_costs_left_out"] == 1
        rows = pq.read_table(out / "goods_sales").to_pylist()
        assert sorted((r["kind"], r["qty"], r["amount"], r["cost"]) for r in rows) == [
            ("refund", -10**13, -1, None), ("sale", 1, 100, 10**13)]
        assert len(pq.read_table(out / "entries")) == first["entries"]
        again = analytics.export(a, out)  # nothing rewritten: still counted
        assert (again["months_written"], again["goods_costs_left_out"]) == ([], 1)
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize(("month", "value"), [
    ("{m}/../../../other-chain-analytics", {"fingerprint": "x", "entries": 1}),
    ("../x", {}), ("2026-1", {}), ("2026-01\n", {}), ("２０２６-01", {}), ("{m}", 5),
    ("{m}", {"fingerprint": "x"}), ("{m}", {"entries": "1", "costs_left_out": None})])
def test_a_manifests_month_not_yyyy_mm_is_no_month(tmp_path: Path, month: str,
                                                   value: object) -> None:
    """Whoever could edit OUT/crdtledger-analytics.json (a shared folder) made the next
    export delete a part-0.parquet outside OUT: a month key "2026-01/../../../x" was
    joined into the path of a month "no longer there" and unlinked. A key that is not
    YYYY-MM, or whose value is not a map, is no month of the export's: dropped, and
    nothing outside OUT touched."""
    from helpers import new_ledger

    a = new_ledger(tmp_path, "SH01")
    try:
        m = a.add_member(a.owner, name="x", phone="13800000001")
        a.topup(a.owner, m, 100)
        out = tmp_path / "analytics"
        analytics.export(a, out)
        victim = tmp_path / "other-chain-analytics" / "part-0.parquet"
        victim.parent.mkdir()
        victim.write_bytes(b"another export's data")
        manifest = json.loads((out / MANIFEST).read_text())
        months = dict(manifest["months"])
        first = next(iter(months))
        manifest["months"][month.format(m=first)] = value
        (out / MANIFEST).write_text(json.dumps(manifest))
        analytics.export(a, out)
        assert victim.read_bytes() == b"another export's data"
        assert json.loads((out / MANIFEST).read_text())["months"] == months
    finally:
        a.close()


def test_a_refund_keeping_spent_points_worth_is_exported_whole(tmp_path: Path) -> None:
    """A sale refunded whole after its points were converted gives back its amount
    less the points' worth (`kept`): without `kept` in the files the sale read as
    refunded in part, and the money kept for the points was nowhere."""
    from helpers import new_ledger

    a = new_ledger(tmp_path, "SH01")
    try:
        a.set_rule(a.owner, "earn", {"points_per_yuan": "1", "expire_days": 365})
        m = a.add_member(a.owner, name="王芳", phone="13700000001")
        a.topup(a.owner, m, 300_000)
        sale = a.debit(a.owner, m, amount=100_000)
        a.convert_points(a.owner, m, sale["points"])
        back = a.refund(a.owner, sale["id"])
        assert back["kept"] > 0 and a.refund_left(sale["id"]) == 0
        out = tmp_path / "analytics"
        analytics.export(a, out)
        [(amount, kept, spent)] = duckdb.sql(
            f"SELECT amount, kept, spent FROM read_parquet('{out}/entries/*/*.parquet') "
            "WHERE kind = 'refund'").fetchall()
        assert (amount, kept, spent) == (back["amount"], back["kept"], back["spent"])
        assert amount + kept == sale["amount"]  # the sale's share, as docs/format.md says
    finally:
        a.close()


def test_every_field_of_an_entry_is_exported_or_named_left_out() -> None:
    """A field added to the model must be decided here, not forgotten (`kept` was)."""
    from crdtledger import model

    fields = {*model._OPTIONAL_INTS, *model._OPTIONAL_STRS, *model._LONG_STRS}
    exported = {*analytics.INT_FIELDS, *analytics.STR_FIELDS}
    assert not exported & set(analytics.LEFT_OUT)
    assert fields == exported | set(analytics.LEFT_OUT), sorted(
        fields ^ (exported | set(analytics.LEFT_OUT)))
    assert not set(analytics.INT_FIELDS) - model._OPTIONAL_INTS


def test_a_file_emptied_or_cut_short_is_written_again(tmp_path: Path) -> None:
    """A month's file emptied (a disk full, a copy cut short): the next run said "no
    month changed", trusting the manifest, and DuckDB then failed on every query of the
    directory. A file not of the size the manifest recorded is written again, and one
    of a manifest from before sizes were kept, if it does not end as Parquet does."""
    from helpers import new_ledger

    a = new_ledger(tmp_path, "SH01")
    try:
        m = a.add_member(a.owner, name="张伟", phone="13800000001")
        a.topup(a.owner, m, 10_000)
    finally:
        a.close()
    data, out = tmp_path / "sh01", tmp_path / "analytics"
    first = export(data, out)
    [month] = first["months_written"]  # type: ignore[misc]
    part = out / "entries" / f"month={month}" / "part-0.parquet"
    rows = pq.read_table(part).num_rows
    assert rows == 1
    assert export(data, out)["months_written"] == []  # unchanged: nothing written
    part.write_bytes(b"")
    cut = out / "members.parquet"
    cut.write_bytes(cut.read_bytes()[:-1])  # the same size less a byte
    again = export(data, out)
    assert again["months_written"] == [month] and again["rewritten"] == ["members"], again
    assert pq.read_table(part).num_rows == rows and pq.read_table(cut).num_rows == 1
    # A manifest an older export wrote (no sizes): a file that is no Parquet is found too.
    manifest = json.loads((out / MANIFEST).read_text(encoding="utf-8"))
    for kept in manifest["months"].values():
        del kept["bytes"]
    del manifest["bytes"]
    (out / MANIFEST).write_text(json.dumps(manifest), encoding="utf-8")
    goods = out / "goods_sales" / f"month={month}" / "part-0.parquet"
    goods.write_bytes(b"PAR1")
    assert export(data, out)["months_written"] == [month]
    assert pq.read_table(goods).num_rows == 0
    assert export(data, out)["months_written"] == []


def test_an_export_edited_or_added_to_is_put_right_and_a_link_is_refused(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A month's file rewritten with the top-up at 1 fen, its size the same (the
    manifest's too): the next run wrote nothing (sizes only) and DuckDB read it as the
    books. A conflict copy `part-0 (1).parquet` and a stranger's `month=2020-01` were
    kept, and the README's query counted them. A month's directory replaced by a link
    made the export write outside --out and make that directory 0700."""
    import os

    import pyarrow as pa
    import pyarrow.compute as pc
    from helpers import new_ledger

    a = new_ledger(tmp_path, "SH01")
    try:
        m = a.add_member(a.owner, name="张伟", phone="13800000001")
        a.topup(a.owner, m, 10_000)
    finally:
        a.close()
    data, out = tmp_path / "sh01", tmp_path / "analytics"
    [month] = export(data, out, capsys)["months_written"]  # type: ignore[misc]
    rel = f"entries/month={month}/part-0.parquet"
    part = out / rel

    def total() -> int:
        return int(duckdb.sql(f"SELECT SUM(amount) FROM read_parquet('{out}/entries/*/*."
                              "parquet', hive_partitioning = true)").fetchall()[0][0])

    assert total() == 10_000
    table = pq.read_table(part)
    one = pa.scalar(1, table.schema.field("amount").type)
    pq.write_table(table.set_column(table.schema.get_field_index("amount"), "amount",
                                    pc.if_else(pc.is_valid(table["amount"]), one,
                                               table["amount"])), part, compression="zstd")
    manifest = json.loads((out / MANIFEST).read_text(encoding="utf-8"))
    manifest["months"][month]["bytes"]["entries"] = part.stat().st_size  # sizes agree
    (out / MANIFEST).write_text(json.dumps(manifest), encoding="utf-8")
    assert total() == 1
    again = export(data, out, capsys)
    assert again["months_written"] == [month] and again["repaired"] == [rel], again
    assert total() == 10_000

    # Strays under the tables: removed, named; the query reads the books alone again.
    (part.parent / "part-0 (1).parquet").write_bytes(part.read_bytes())
    (out / "entries" / "month=2020-01").mkdir()
    (out / "entries" / "month=2020-01" / "part-0.parquet").write_bytes(part.read_bytes())
    assert total() == 30_000
    capsys.readouterr()
    assert peer_cli.main(["export-analytics", "--data", str(data), "--out", str(out)]) == 0
    said = capsys.readouterr().out
    assert ("removed, no files of this export's: entries/month=2020-01/part-0.parquet, "
            f"entries/month={month}/part-0 (1).parquet") in said, said
    assert total() == 10_000 and not (out / "entries" / "month=2020-01").exists()
    assert export(data, out, capsys)["removed"] == []

    # A manifest an earlier version wrote (no hashes): every file written again, once.
    manifest = json.loads((out / MANIFEST).read_text(encoding="utf-8"))
    for kept in manifest["months"].values():
        del kept["sha256"]
    del manifest["sha256"]
    (out / MANIFEST).write_text(json.dumps(manifest), encoding="utf-8")
    once = export(data, out, capsys)
    assert once["months_written"] == [month] and once["repaired"] == [], once
    assert once["rewritten"] == ["goods", "members"], once
    assert export(data, out, capsys)["months_written"] == []

    # A month's directory a link to one elsewhere: refused, nothing written there.
    victim = tmp_path / "victim"
    victim.mkdir()
    victim.chmod(0o755)
    (victim / "keep.txt").write_text("x")
    for p in part.parent.iterdir():
        p.unlink()
    part.parent.rmdir()
    part.parent.symlink_to(victim)
    capsys.readouterr()
    assert peer_cli.main(["export-analytics", "--data", str(data), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert f"{part.parent} is a symbolic link" in err, err
    assert os.listdir(victim) == ["keep.txt"] and victim.stat().st_mode & 0o777 == 0o755
