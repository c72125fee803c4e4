"""docs/format.md, tried as a point-of-sale vendor would: the stock JavaScript `yjs`
package from npm (pinned in tests/js/package-lock.json) reads a store's documents
from its SQLite file as the format describes (a document is its snapshot, then its
log rows after the snapshot, applied in order), and what it reads is what crdtledger
reports: every ledger entry, every member's profile and cards, the rules and the
operators, and a day's sales summed from the entries Yjs read."""

from __future__ import annotations

import base64
import json
import re
import shutil
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from demo_chain import make_demo_chain

from crdtledger import model, views
from crdtledger.hlc import id_time_ms
from crdtledger.ledger import Ledger
from crdtledger.model import ENTRY_KINDS, entry_doc, member_doc, normalise_entry

JS = Path(__file__).resolve().parent / "js"
NPM_TIMEOUT_S = 300


@pytest.fixture(scope="module")
def yjs() -> Path:
    """tests/js with its pinned yjs installed (./run setup does it; a fresh clone
    without it gets `npm ci` here, from the lock file)."""
    if not (JS / "node_modules" / "yjs" / "package.json").exists():
        npm = shutil.which("npm")
        assert npm, "npm is needed (./run setup installs it)"
        subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--silent"], cwd=JS,
                       check=True, timeout=NPM_TIMEOUT_S)
    return JS


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Head office's store of the demo chain, where some documents are a snapshot
    followed by log rows (a compaction, then more writes) and others log rows only."""
    data = make_demo_chain(tmp_path_factory.mktemp("demo"))["SH01"]
    with Ledger.open(data) as ledger:
        member = ledger.storage.conn.execute("SELECT id FROM members LIMIT 1").fetchone()[0]
        # This month's document exists (on the 1st before opening time, only after this).
        ledger.topup(ledger.owner, member, 10000, pay="cash")
        month = max(n for n in ledger.storage.doc_names() if n.startswith("ledger/"))
        for name in (month, member_doc(member), "operators"):
            ledger.storage.compact(name)
        ledger.topup(ledger.owner, member, 10000, pay="cash")
        ledger.edit_member(ledger.owner, member, fields={"notes": "after the snapshot"})
        (snapshots,) = ledger.storage.conn.execute("SELECT COUNT(*) FROM snapshots").fetchone()
        (after,) = ledger.storage.conn.execute(
            "SELECT COUNT(*) FROM log JOIN docs ON docs.name = log.doc "
            "WHERE docs.snapshot_seq > 0 AND log.seq > docs.snapshot_seq").fetchone()
        assert snapshots >= 3 and after >= 2
    yield data


def stored_updates(db: Path) -> list[dict[str, Any]]:
    """Each document's updates as docs/format.md says to read them from the file."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        docs = []
        for name, snapshot_seq in conn.execute(
                "SELECT name, snapshot_seq FROM docs ORDER BY name").fetchall():
            updates = [row[0] for row in conn.execute(
                "SELECT data FROM snapshots WHERE name = ?", (name,))]
            updates += [row[0] for row in conn.execute(
                "SELECT data FROM log WHERE doc = ? AND seq > ? ORDER BY seq",
                (name, snapshot_seq))]
            docs.append({"name": name,
                         "updates": [base64.b64encode(u).decode() for u in updates]})
        return docs
    finally:
        conn.close()


def read_with_yjs(yjs: Path, store: Path, tmp_path: Path) -> dict[str, Any]:
    given = tmp_path / "docs.json"
    given.write_text(json.dumps({"docs": stored_updates(store / "ledger.sqlite3")}))
    node = shutil.which("node")
    assert node, "node is needed (./run setup installs it)"
    out = subprocess.run([node, str(yjs / "read_docs.cjs"), str(given)], capture_output=True,
                         text=True, check=True, timeout=120)
    read = json.loads(out.stdout)
    assert read["yjs"] == json.loads((yjs / "package.json").read_text())["dependencies"]["yjs"]
    return dict(read["docs"])


def test_stock_yjs_reads_what_crdtledger_reports(yjs: Path, store: Path,
                                                   tmp_path: Path) -> None:
    docs = read_with_yjs(yjs, store, tmp_path)
    with Ledger.open(store, lock=False) as ledger:
        conn = ledger.storage.conn
        assert set(docs) == set(ledger.storage.doc_names())
        assert {n.split("/")[0] for n in docs} == {"ledger", "members", "rules", "operators"}

        # Every entry, field for field (integers as JSON numbers).
        read_entries = {k: v for name, d in docs.items() if name.startswith("ledger/")
                        for k, v in d["entries"].items()}
        reported = {i: json.loads(b) for i, b in conn.execute("SELECT id, body FROM entries")}
        assert len(reported) > 300
        assert read_entries == reported
        # ...each in the document of its id's month, and each one the ledger's own
        # check accepts as it came out of Yjs.
        for name, d in docs.items():
            if name.startswith("ledger/"):
                for key, e in d["entries"].items():
                    assert name == entry_doc(key, ledger.storage.day_of)
                    assert normalise_entry(key, e) == e

        # Members and cards: what `member show` reports of each.
        read_members = {k: v for name, d in docs.items() if name.startswith("members/")
                        for k, v in d["members"].items()}
        read_cards = {k: v for name, d in docs.items() if name.startswith("members/")
                      for k, v in d["cards"].items()}
        ids = [m for (m,) in conn.execute("SELECT id FROM members")]
        assert sorted(read_members) == sorted(ids) and len(ids) > 50
        for mid in ids:
            shown = ledger.member(mid)
            for field in ("name", "phone", "home", "gender", "birthday", "notes"):
                assert read_members[mid].get(field, "") == shown.get(field, ""), (mid, field)
        cards = {c: (n, m) for c, n, m in conn.execute("SELECT id, card_no, member FROM cards")}
        assert {c: (v["card_no"], v["member"]) for c, v in read_cards.items()} == cards

        # Rules and operators, by id.
        read_rules = docs["rules"]["rules"]
        assert {i: (r["kind"], r["effective_from"], json.loads(r["body"]))
                for i, r in read_rules.items()} == {
            i: (k, f, json.loads(b)) for i, k, f, b in conn.execute(
                "SELECT id, kind, effective_from, body FROM rules")}
        assert ledger.rule("services") == json.loads(max(
            (r["effective_from"], i, r["body"]) for i, r in read_rules.items()
            if r["kind"] == "services" and r["effective_from"] <= ledger.today())[2])
        names = {i: n for i, n in conn.execute("SELECT id, name FROM operators")}
        assert {i: o["name"] for i, o in docs["operators"]["operators"].items()} == names

        # A report recomputed from what Yjs read: a day's sales at a branch.
        # An entry's day is that of its id's time in the chain's time zone.
        def day_of(entry_id: str) -> str:
            return ledger.storage.day_of(id_time_ms(entry_id))

        # Whole days only: how much of today the demo's history holds depends on the
        # hour it was made (before opening time, none of it).
        days = sorted({day_of(i) for i, e in read_entries.items()
                       if e["kind"] == "debit"} - {ledger.today()})
        for day in days[-3:]:
            for branch in ("SH01", "SH02", "HZ01"):
                sales = sum((e["amount"] if e["kind"] == "debit" else -e["amount"])
                            for i, e in read_entries.items()
                            if e["kind"] in ("debit", "refund") and e["node"] == branch
                            and day_of(i) == day)
                assert sales == views.daily_report(ledger, day, branch)["sales"] > 0


def test_format_md_names_every_entry_kind_and_field() -> None:
    """docs/format.md stays whole as kinds and fields are added to the model."""
    text = (Path(__file__).resolve().parent.parent / "docs" / "format.md").read_text(
        encoding="utf-8")
    described = set(re.findall(r"^\| `([a-z_]+)` \|", text, re.M))
    assert not ENTRY_KINDS - described, sorted(ENTRY_KINDS - described)
    # The optional fields, as the entries section lists them (between backquotes).
    listed = set(re.findall(r"`([a-z_]+)`", text.split("## Ledger entries")[1].split("##")[0]))
    fields = {*model._OPTIONAL_INTS, *model._OPTIONAL_STRS, *model._LONG_STRS}
    assert not fields - listed, sorted(fields - listed)
