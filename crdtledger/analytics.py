"""Head-office analytics: the ledger as Parquet files for the accountant's tools.

`export(ledger, out)` writes, under `out`:

- ``entries/month=YYYY-MM/part-0.parquet``: every ledger entry of the month, one row
  each, keyed by its id (docs/format.md lists the columns).
- ``goods_sales/month=YYYY-MM/part-0.parquet``: one row per goods sale, refund of a
  goods sale, and goods gift for points, with signed units, money and cost.
- ``members.parquet``: members' attributes, anonymised (no name, phone, notes, full
  birthday or card number; the member id replaced by a pseudonym).
- ``goods.parquet``: the goods catalogue in force.
- ``crdtledger-analytics.json``: what was written, for the next run.

Incremental and idempotent, keyed by entry id: an entry lives in the document of its
id's month (crdtledger.model.entry_doc) and never changes, so a month's rows change
only when its document does (its state vector moves) or when entries of it leave the
`deferred` or `quarantine` tables (projection.py). The manifest keeps that fingerprint
of each month; a run rewrites only the months whose fingerprint moved (entries synced
in late from another branch land in their own month, which is rewritten whole), each
file replaced atomically. So an unchanged chain costs a read of the state vectors (and
of the files, whose SHA-256 the manifest keeps: one edited in place, even at the same
size, is written again), and running it twice writes nothing the second time and never
duplicates a row. The table directories are the export's own: a file there the manifest
does not list (a sync tool's conflict copy, a stranger's month) is removed, since the
README's query reads every file there as the books; a symbolic link anywhere under `out`
is refused, never followed.

Pseudonyms: HMAC-SHA256 of the member id under a key derived from the chain secret
(crdtledger.trust), so every branch of a chain and every run give a member the same
pseudonym, and one who has the files but not a branch's keys cannot map them back to
member ids. A store without a chain secret (sync by files only) keeps a random key of
its own in DATA/analytics.key instead.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
from collections.abc import Callable, Mapping
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa  # type: ignore[import-untyped]  # no stubs shipped
import pyarrow.parquet as pq  # type: ignore[import-untyped]

from crdtledger.errors import InvalidInput
from crdtledger.private import FILE_MODE, private_dir, replacing, unlink_under

if TYPE_CHECKING:
    from crdtledger.ledger import Ledger

# The layout of the files; a change to any column bumps it, and every month is
# written again under the new layout. 2: a refund's `spent` and `kept`.
FORMAT = 2
MANIFEST = "crdtledger-analytics.json"
KEY_FILE = "analytics.key"
PART = "part-0.parquet"

# Entry fields copied as columns (crdtledger.model's optional fields), every one but
# those LEFT_OUT names (tests/test_analytics.py holds the two lists to the model's: a
# refund's `kept` missing made a sale refunded whole read as refunded in part).
INT_FIELDS = ("paid", "gross", "qty", "bonus", "points", "fee", "percent", "min_spend", "off",
              "start", "minutes", "spent", "kept")
STR_FIELDS = ("ref", "service", "pay", "goods", "package", "coupon", "promotion", "discount",
              "level", "to", "reason", "approver", "card", "expires", "gift", "valid_from",
              "valid_to", "referrer", "activity", "step", "code", "name", "services", "hours",
              "status")
LEFT_OUT = {
    "note": "a stock-take's free text",
    "records": "a redaction's claims of the records it redacted",
    "idem": "the tag of the Idempotency-Key a till sent: the till's, not the business's",
    "day": "a points spend's date in its writer's zone: the `day` column is the chain's",
    "tz": "the zone a technician's hours are in: their branch's",
    "version": "a technician's edit counter",
    "per_day": "the check-in limit an entry was allowed under (the rule says it)",
    "repeat": "the check-in limit an entry was allowed under (the rule says it)",
    "handover": "a refund's closed shop: the branch of the sale its `ref` names",
    "moved": "how far a sale's PC clock stood put forward by hand: its refund period's",
}
# Fields that may name a member: replaced by the member's pseudonym when they do.
MEMBER_FIELDS = ("member", "ref", "referrer", "to")
# The kinds whose `reason` the program writes (a stock movement's, "surplus",
# "referral", "given back", a booking decision's): exported. Elsewhere a person typed
# it (a refund's, a correction's, an exit's, an approval's, a cancellation's) and it
# may name the member or hold what they said: left out of an anonymised export.
REASON_KINDS = frozenset({"stock", "checkin", "reward", "expiry", "booking_decision"})

MS = pa.timestamp("ms", tz="UTC")
ENTRIES = pa.schema([
    ("id", pa.string()), ("day", pa.date32()), ("at", MS), ("kind", pa.string()),
    ("branch", pa.string()), ("member", pa.string()), ("operator", pa.string()),
    ("amount", pa.int64()),
    *((f, pa.int64()) for f in INT_FIELDS),
    *((f, pa.string()) for f in STR_FIELDS),
    ("deltas", pa.string()),
])
GOODS_SALES = pa.schema([
    ("id", pa.string()), ("day", pa.date32()), ("at", MS), ("kind", pa.string()),
    ("branch", pa.string()), ("member", pa.string()), ("operator", pa.string()),
    ("goods", pa.string()), ("qty", pa.int64()), ("amount", pa.int64()),
    ("cost", pa.int64()), ("pay", pa.string()), ("sale", pa.string()),
])
MEMBERS = pa.schema([
    ("member", pa.string()), ("home", pa.string()), ("joined", pa.date32()),
    ("gender", pa.string()), ("birth_year", pa.int32()), ("level", pa.string()),
    ("spent", pa.int64()), ("topped", pa.int64()), ("tags", pa.list_(pa.string())),
    ("preferred_service", pa.string()), ("erased", pa.bool_()), ("merged_into", pa.string()),
])
GOODS = pa.schema([
    ("code", pa.string()), ("name", pa.string()), ("unit", pa.string()),
    ("price", pa.int64()), ("cost", pa.int64()), ("barcode", pa.string()),
])

# The files of each month (`entries/month=YYYY-MM/part-0.parquet`...).
MONTH_TABLES = ("entries", "goods_sales")
Progress = Callable[[str], None]
BIRTHDAY = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
MONTH = re.compile(r"[0-9]{4}-[0-9]{2}")


def export(ledger: Ledger, out: Path | str, progress: Progress | None = None
           ) -> dict[str, Any]:
    """Bring the Parquet files under `out` up to date with this store; returns what was
    written (months rewritten, rows, months unchanged)."""
    out = Path(out)
    tell = progress or (lambda _text: None)
    _refuse_links(out)
    manifest = _read_manifest(out, ledger.chain)
    key = _pseudonym_key(ledger)
    layout = f"{FORMAT}:{hashlib.sha256(key).hexdigest()[:16]}"
    if manifest.get("layout") != layout:  # new layout or key: every month again
        manifest["months"] = {}
    manifest.update(format=FORMAT, layout=layout, chain=ledger.chain)
    kept: dict[str, Any] = manifest.setdefault("months", {})
    if not (out / MANIFEST).exists():
        # First, before any month: an export stopped part-way leaves a directory the
        # next run knows as its own (it was refused as holding other files).
        _write_manifest(out, manifest)
    conn = ledger.storage.conn
    own_read = not conn.in_transaction
    if own_read:  # one snapshot of the store for the whole export (WAL readers)
        conn.execute("BEGIN")
    try:
        members = {m: _pseudonym(key, m) for (m,) in conn.execute("SELECT id FROM members")}
        months = _fingerprints(ledger)
        written: list[str] = []
        repaired: list[str] = []
        rows = 0
        for month, fingerprint in months.items():
            have = kept.get(month)
            # An older (or edited) manifest records no sizes or hashes: written again.
            was, hashes = _recorded(have, "bytes"), _recorded(have, "sha256")
            if have is not None and have.get("fingerprint") == fingerprint:
                found = [f"{table}/month={month}/{PART}" for table in MONTH_TABLES
                         if not _intact(out / table / f"month={month}" / PART,
                                        was.get(table), hashes.get(table))]
                if not found:
                    continue
                # The store did not move, the file did: edited or damaged, said so.
                repaired += [f for f in found if hashes.get(f.split("/")[0]) is not None]
            entries = _month_entries(ledger, month)
            sales, left_out = _goods_sales(conn, entries, members)
            wrote = {table: _write(out, out / table / f"month={month}" / PART, rows_of)
                     for table, rows_of in (("entries", _entry_table(entries, members)),
                                            ("goods_sales", sales))}
            kept[month] = {"fingerprint": fingerprint, "entries": len(entries),
                           "goods_sales": sales.num_rows,
                           "bytes": {t: size for t, (size, _h) in wrote.items()},
                           "sha256": {t: h for t, (_size, h) in wrote.items()},
                           **({"costs_left_out": left_out} if left_out else {})}
            written.append(month)
            rows += len(entries)
            tell(f"{month}: {len(entries)} entries, {sales.num_rows} goods sales")
        # Months no longer there (a restored store of an older state): their files go.
        for month in sorted(set(kept) - set(months)):
            for table in MONTH_TABLES:
                unlink_under(out, Path(table) / f"month={month}" / PART)
            del kept[month]
        member_rows = _member_table(ledger, members)
        goods_rows = _goods_table(ledger)
    finally:
        if own_read:
            conn.execute("COMMIT")
    others = {}
    sizes, hashes = _recorded(manifest, "bytes"), _recorded(manifest, "sha256")
    for name, table in (("members", member_rows), ("goods", goods_rows)):
        digest = _table_digest(table)
        path = out / f"{name}.parquet"
        if manifest.get(name) != digest or not _intact(path, sizes.get(name),
                                                      hashes.get(name)):
            if manifest.get(name) == digest and hashes.get(name) is not None:
                repaired.append(path.name)
            sizes[name], hashes[name] = _write(out, path, table)
            manifest[name] = digest
            others[name] = table.num_rows
    manifest["bytes"], manifest["sha256"] = sizes, hashes
    removed = _sweep(out, kept)
    for name in repaired:
        tell(f"{name} was not the file the last export wrote (edited or damaged): written "
             "again")
    for name in removed:
        tell(f"{name} is no file of this export's: removed")
    _write_manifest(out, manifest)
    return {"out": str(out), "months_written": written, "entries_written": rows,
            "repaired": sorted(repaired), "removed": removed,
            "months_unchanged": len(months) - len(written),
            "entries": sum(int(m["entries"]) for m in kept.values()),
            "goods_costs_left_out": sum(int(m.get("costs_left_out", 0))
                                        for m in kept.values()),
            "members": member_rows.num_rows, "rewritten": sorted(others)}


# --- what is in the store ----------------------------------------------------------


def _fingerprints(ledger: Ledger) -> dict[str, str]:
    """Month -> what its rows depend on: the state vector of its ledger document, and
    how many of the document's entries wait in `deferred` (unfunded yet) or were put
    in `quarantine`. Every entry of the document is either projected or in one of
    those, and an entry never changes, so equal fingerprints mean equal rows. No
    entry is read: an unchanged chain costs one read per document."""
    conn = ledger.storage.conn
    waiting = {str(d): int(n) for d, n in conn.execute(
        "SELECT doc, COUNT(*) FROM deferred GROUP BY doc")}
    refused = {str(d): int(n) for d, n in conn.execute(
        "SELECT doc, COUNT(*) FROM quarantine GROUP BY doc")}
    docs = {}
    for name, sv in sorted(ledger.storage.state_vectors().items()):
        # A liar's `ledger/0000-01` or `ledger/9999-12` is a document name like any
        # month's (refusing it on the wire would split a chain upgraded branch by
        # branch), but no entry's day is in it, and the month next to it is no date:
        # every branch's export failed on it for good.
        if name.startswith("ledger/") and "0001-02" <= name[7:] <= "9998-12":
            h = hashlib.sha256(sv)
            h.update(f"|{waiting.get(name, 0)}|{refused.get(name, 0)}".encode())
            docs[name.removeprefix("ledger/")] = h.hexdigest()
    # A document is its writer's month, in the writer's zone; a month's rows here are
    # by this store's zone (`_month_entries`). A branch in another zone puts some of
    # its entries of one month into the next or the one before, less than a day from
    # the turn: so a month's rows depend on its neighbours' documents too, and a
    # neighbour with no document of its own may hold rows (a top-up at 10:00 on the
    # 1st in Shanghai is the 31st in Los Angeles; it was in no month's file).
    out = {}
    for month in sorted({n for m in docs for n in (_next(m, -1), m, _next(m, 1))}):
        if month not in docs and not _has_entries(ledger, month):
            continue
        out[month] = hashlib.sha256("|".join(
            docs.get(n, "") for n in (_next(month, -1), month, _next(month, 1))
        ).encode()).hexdigest()
    return out


def _next(month: str, step: int) -> str:
    """The month `step` (-1 or 1) from "YYYY-MM"."""
    n = int(month[:4]) * 12 + int(month[5:7]) - 1 + step
    return f"{n // 12:04d}-{n % 12 + 1:02d}"


def _month_ids(ledger: Ledger, month: str) -> tuple[str, str]:
    """The month's range of the primary key: an entry's month is its id's, in this
    store's time zone."""
    first = date.fromisoformat(f"{month}-01")
    after = date(first.year + first.month // 12, first.month % 12 + 1, 1)
    return (ledger.storage.day_start_id(first.isoformat()),
            ledger.storage.day_start_id(after.isoformat()))


def _month_entries(ledger: Ledger, month: str) -> list[tuple[str, dict[str, Any]]]:
    """The month's projected entries, in id order."""
    return [(day, json.loads(body)) for day, body in ledger.storage.conn.execute(
        "SELECT day, body FROM entries WHERE id >= ? AND id < ? ORDER BY id",
        _month_ids(ledger, month))]


def _has_entries(ledger: Ledger, month: str) -> bool:
    return ledger.storage.conn.execute(
        "SELECT 1 FROM entries WHERE id >= ? AND id < ? LIMIT 1",
        _month_ids(ledger, month)).fetchone() is not None


def _pseudonym_key(ledger: Ledger) -> bytes:
    trust = ledger.trust
    if trust.enrolled:
        return hmac.new(trust.seal_key, b"crdtledger analytics pseudonyms", "sha256").digest()
    path = ledger.storage.dir / KEY_FILE
    try:
        return bytes.fromhex(path.read_text().strip())
    except FileNotFoundError:
        key = secrets.token_bytes(32)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
        with os.fdopen(fd, "w") as f:
            f.write(key.hex())
        return key


def _pseudonym(key: bytes, member: str) -> str:
    return "M" + hmac.new(key, member.encode(), "sha256").hexdigest()[:20]


def _day(text: str) -> date:
    return date.fromisoformat(text)


def _entry_table(entries: list[tuple[str, dict[str, Any]]], members: Mapping[str, str]
                 ) -> pa.Table:
    cols: dict[str, list[Any]] = {f.name: [] for f in ENTRIES}
    for day, e in entries:
        e = _masked(e, members)
        cols["id"].append(e["id"])
        cols["day"].append(_day(day))
        cols["at"].append(e["at"])
        cols["kind"].append(e["kind"])
        cols["branch"].append(e["node"])
        cols["member"].append(e["member"])
        cols["operator"].append(e["op"])
        cols["amount"].append(e["amount"])
        for f in INT_FIELDS:
            cols[f].append(e.get(f))
        for f in STR_FIELDS:
            cols[f].append(e.get(f) if f != "reason" or e["kind"] in REASON_KINDS else None)
        cols["deltas"].append(json.dumps(e["deltas"], separators=(",", ":")))
    return pa.table(cols, schema=ENTRIES)


def _masked(e: dict[str, Any], members: Mapping[str, str]) -> dict[str, Any]:
    """The entry with every field that names a member holding its pseudonym instead."""
    return {**e, **{f: members[e[f]] for f in MEMBER_FIELDS if e.get(f) in members}}


def _goods_sales(conn: Any, entries: list[tuple[str, dict[str, Any]]],
                 members: Mapping[str, str]) -> tuple[pa.Table, int]:
    """Goods sold (a debit naming `goods`), refunded (a refund of such a debit: units,
    money and cost negative) and given for points (a redeem naming `goods`: no money).
    Cost is what the stock entries took the units out at (crdtledger.goods); a refund's
    at the unit cost of its sale, as the refund's own stock entry puts them back.
    Returns the rows and how many of them have their cost left out (`_int64`)."""
    from crdtledger.views import sale_stock  # only the sale's own branch's stock entries

    cols: dict[str, list[Any]] = {f.name: [] for f in GOODS_SALES}
    left_out = 0
    for day, e in entries:
        kind = e["kind"]
        if kind in ("debit", "redeem") and e.get("goods"):
            _units, cost = sale_stock(conn, e["id"], "sale" if kind == "debit" else "gift")
            row = ("sale" if kind == "debit" else "gift", e["goods"], int(e.get("qty") or 0),
                   e["amount"] if kind == "debit" else 0, cost, e.get("pay"), None)
        elif kind == "refund" and e.get("ref"):
            found = conn.execute("SELECT body FROM entries WHERE id = ? AND kind = 'debit'",
                                 (e["ref"],)).fetchone()
            sale = json.loads(found[0]) if found else {}
            if not sale.get("goods"):
                continue
            qty = int(e.get("qty") or 0)
            units, cost = sale_stock(conn, sale["id"], "sale")
            unit_cost = cost // units if units else 0
            row = ("refund", sale["goods"], -qty, -e["amount"], -unit_cost * qty,
                   sale.get("pay"), sale["id"])
        else:
            continue
        masked = _masked(e, members)
        for name, value in zip(("id", "day", "at", "branch", "member", "operator"),
                               (e["id"], _day(day), e["at"], e["node"], masked["member"],
                                e["op"]), strict=True):
            cols[name].append(value)
        held = _int64(row[4])
        left_out += held is None
        for name, value in zip(("kind", "goods", "qty", "amount", "cost", "pay", "sale"),
                               (*row[:4], held, *row[5:]), strict=True):
            cols[name].append(value)
    return pa.table(cols, schema=GOODS_SALES), left_out


# The most an int64 column holds. An entry's numbers are at most MAX_AMOUNT (10**13,
# crdtledger.model), but a cost is a product or a sum of them: a liar's refund of
# 10**13 units of a sale at a unit cost of 10**13 is a cost of -10**26, which stopped
# every branch's export for good (OverflowError; the month is written whole, and was
# never written again). Such a cost is left out (null) and counted in the manifest and
# the export's result (`goods_costs_left_out`), rather than clamped: a clamped figure
# reads as a real one and sums silently into every total over it, where a null is
# skipped by SUM, shown by COUNT(cost), and the row's units and money stay exact.
# Never a float: money is whole fen.
INT64 = 2**63 - 1


def _int64(value: int) -> int | None:
    return value if -INT64 <= value <= INT64 else None


def _member_table(ledger: Ledger, members: Mapping[str, str]) -> pa.Table:
    from crdtledger import views

    cols: dict[str, list[Any]] = {f.name: [] for f in MEMBERS}
    totals = {m: (int(s), int(t)) for m, s, t in ledger.storage.conn.execute(
        "SELECT member, spent, topped FROM totals")}
    survivors = views.merge_targets(ledger.storage.conn)  # whose level is a group's
    for mid, home, day, body in ledger.storage.conn.execute(
            "SELECT id, home, day, body FROM members ORDER BY id"):
        p = json.loads(body)
        merged = p.get("merged_into")
        prefs = p.get("prefs") if isinstance(p.get("prefs"), dict) else {}
        tags = p.get("tags") if isinstance(p.get("tags"), dict) else {}
        spent, topped = totals.get(mid, (0, 0))
        cols["member"].append(members[mid])
        cols["home"].append(home)
        cols["joined"].append(_day(day))
        cols["gender"].append(_text(p.get("gender")))
        cols["birth_year"].append(_birth_year(p.get("birthday")))
        # The level its group reached (merged duplicates count together), as the
        # ledger shows it; `spent` and `topped` are the member id's own. A member in
        # no merge (nearly all) is its own group: its totals, no more reads.
        alone = not merged and mid not in survivors
        cols["level"].append(None if p.get("erased") else views.level(
            ledger, mid, p if alone else None, (spent, topped) if alone else None)["name"])
        cols["spent"].append(spent)
        cols["topped"].append(topped)
        cols["tags"].append(sorted(str(t) for t, on in tags.items() if on))
        cols["preferred_service"].append(_text(prefs.get("service")))
        cols["erased"].append(bool(p.get("erased")))
        cols["merged_into"].append(members.get(str(merged)) if merged else None)
    return pa.table(cols, schema=MEMBERS)


# A member's fields are its record's contents, which no check holds to a shape on the
# way in (crdtledger.members checks what this program writes, not what another
# branch's record holds): a liar's birthday "ABCD-EF-GH", gender 5 or preferred
# service 7 stopped every branch's export for good, as members.parquet is written
# whole at each run. What is not the shape this program writes is exported null.


def _text(value: Any) -> str | None:
    """Non-empty text as it is; anything else (a number, a map, a list) null."""
    return value if isinstance(value, str) and value else None


def _birth_year(value: Any) -> int | None:
    """The year of a full birthday (1990-05-17), a day of the calendar; a day without
    a year (05-17), or anything not a date, none."""
    if not isinstance(value, str) or not BIRTHDAY.fullmatch(value):
        return None
    try:
        return date.fromisoformat(value).year
    except ValueError:  # 1990-13-45
        return None


def _goods_table(ledger: Ledger) -> pa.Table:
    items = sorted(ledger.catalogue().values(), key=lambda g: str(g["code"]))
    return pa.table({
        "code": [str(g["code"]) for g in items],
        "name": [str(g.get("name", "")) for g in items],
        "unit": [str(g.get("unit", "")) for g in items],
        "price": [int(g.get("price", 0)) for g in items],
        "cost": [int(g.get("cost", 0)) for g in items],
        "barcode": [str(g.get("barcode", "")) or None for g in items],
    }, schema=GOODS)


# --- files -------------------------------------------------------------------------


def _table_digest(table: pa.Table) -> str:
    h = hashlib.sha256()
    for row in table.to_pylist():
        h.update(json.dumps(row, sort_keys=True, default=str, ensure_ascii=False).encode())
    return h.hexdigest()


def _recorded(held: Any, key: str) -> dict[str, Any]:
    """A manifest's map of name -> size or hash (empty if an older or edited one has
    none)."""
    found = held.get(key) if isinstance(held, dict) else None
    return dict(found) if isinstance(found, dict) else {}


def _intact(path: Path, size: Any, digest: Any) -> bool:
    """Whether `path` is still the file an export wrote: of the size and SHA-256 the
    manifest recorded. A month's file emptied (a disk full, a copy cut short) was
    trusted by the manifest, "no month changed", and every query of the directory
    failed on it; one rewritten with a debit at 1 fen kept its size and was read as the
    books. A manifest of before hashes were kept: the file is written again, once."""
    if not isinstance(digest, str):
        return False
    try:
        if type(size) is int and path.stat().st_size != size:
            return False  # no need to read it
        return _file_sha256(path) == digest
    except OSError:  # gone, or not a file any more
        return False


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _refuse_links(out: Path) -> None:
    """A symbolic link anywhere under `out` (a month's directory replaced by one to a
    directory elsewhere, in a shared folder) made the export write its files there and
    make that directory 0700: refused, naming it, before anything is written."""
    if not out.is_dir():
        return
    for root, dirs, files in os.walk(out):  # a linked directory is listed, not entered
        for name in (*dirs, *files):
            if (Path(root) / name).is_symlink():
                raise InvalidInput(f"{Path(root) / name} is a symbolic link: the analytics "
                                   f"export writes only its own files under {out} and "
                                   "follows no link: remove it and export again")


def _sweep(out: Path, kept: Mapping[str, Any]) -> list[str]:
    """Remove what the month tables hold beyond the manifest's months: the README's
    query reads every Parquet file under `entries/` as the books, and a conflict copy
    (`part-0 (1).parquet`) or a stranger's `month=2020-01` was counted with them. The
    directories are the export's own (a first export refuses a directory holding other
    files); nothing there is lost, the store holds it all. Returns what went, relative
    to `out`."""
    removed: list[str] = []
    for table in MONTH_TABLES:
        top = out / table
        if not top.is_dir():
            continue
        for root, _dirs, files in os.walk(top, topdown=False):
            here = Path(root)
            rel = here.relative_to(top).parts
            ours = (len(rel) == 1 and rel[0].startswith("month=") and rel[0][6:] in kept)
            for name in files:
                if not (ours and name == PART):
                    (here / name).unlink()
                    removed.append(str((here / name).relative_to(out)))
            if rel and not ours:
                here.rmdir()  # emptied above (its directories first: bottom up)
    return sorted(removed)


def _write(out: Path, path: Path, table: pa.Table) -> tuple[int, str]:
    """Replace `path` (under `out`) whole: a reader (or a crash) sees the old file or the
    new one; its size and SHA-256, for the manifest (`_intact`).

    0600 in 0700 directories, as every other output (a backup, a sync file, a CSV):
    the files followed the umask (0644, 0755), and pseudonyms aside they hold every
    sale, amount and branch of the chain. Through no link below `out`, planted after
    `_refuse_links` looked (`replacing`)."""
    with replacing(path, under=out) as f:
        pq.write_table(table, f, compression="zstd")
        size = f.tell()
        f.seek(0)
        h = hashlib.sha256()
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return size, h.hexdigest()


def _read_manifest(out: Path, chain: str) -> dict[str, Any]:
    if out.exists() and not out.is_dir():
        raise InvalidInput(f"{out} is a file, not a directory for the analytics export")
    try:
        manifest = json.loads((out / MANIFEST).read_text(encoding="utf-8"))
    except FileNotFoundError:
        if out.is_dir() and any(p.name != MANIFEST for p in out.iterdir()):
            raise InvalidInput(f"{out} holds other files: give an empty or new directory, "
                               "or one an earlier export-analytics wrote") from None
        return {}
    except (ValueError, OSError) as e:
        raise InvalidInput(f"{out / MANIFEST} is unreadable ({e}): move the directory "
                           "aside and export again") from None
    except RecursionError:  # arrays nested thousands deep: the parser's traceback
        raise InvalidInput(f"{out / MANIFEST} is not the manifest an export writes (JSON "
                           "nested too deep to read): move the directory aside and export "
                           "again") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("months", {}), dict):
        raise InvalidInput(f"{out / MANIFEST} is unreadable (not the manifest an export "
                           "writes): move the directory aside and export again")
    if manifest.get("chain") not in (None, chain):
        raise InvalidInput(f"{out} holds the export of chain {manifest.get('chain')!r}, "
                           f"not of {chain!r}")
    # A month's key is joined into the paths of its files, which a month no longer in
    # the store has unlinked: "2026-01/../../../x", written by whoever can edit this
    # file (a shared folder), deleted a part-0.parquet outside `out`. Only YYYY-MM is
    # a month, and only with the map of what was written that an export writes (else
    # the month is written again); anything else is no month of this export's, dropped.
    months = manifest.get("months", {})
    return {**manifest, "months": {
        m: v for m, v in months.items()
        if isinstance(m, str) and MONTH.fullmatch(m) and isinstance(v, dict)
        and all(type(v.get(k, 0)) is int for k in ("entries", "costs_left_out"))
        and "entries" in v}}


def _write_manifest(out: Path, manifest: Mapping[str, Any]) -> None:
    # `out` 0700 (tightened too if an earlier export left it open): nothing under it
    # is then reachable by others, files an older version wrote 0644 included.
    private_dir(out)
    with replacing(out / MANIFEST) as f:
        f.write(json.dumps(manifest, indent=1, sort_keys=True).encode())

