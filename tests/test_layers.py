"""The layers stay layers (DESIGN.md, "Layers"; issue 11, item 4).

1. **Nothing outside the library reads or writes the node's store with SQL.** The
   projection tables are the library's own: their columns change with the storage
   (docs/design-notes.md, "Storage"). The node, the counter, the simulator and the
   benchmarks read through the named queries of `crdtledger.views` and
   `crdtledger.audit`, so that a change of the tables changes those functions and
   nothing else. A file under peer/, reference_app/, sim/ or benchmarks/ breaks the
   rule when it
   - contains the text `storage.conn` (the issue's acceptance grep), or
   - takes a `.conn` attribute of an expression that names a ledger or its storage
     (`ledger.conn`, `self.node.ledger.storage.conn`), or of a variable bound to a
     `.storage` (`st = ledger.storage; st.conn`), or
   - opens the store's file itself: `sqlite3.connect(...)` with `DB_FILE` in its
     arguments (the file the library owns, behind the library's back).
   A baseline that opens its own SQLite database (benchmarks/debit.py) is not the
   node's store and is allowed. Tests keep raw SQL for white-box assertions.

2. **Imports go one way: reference_app -> peer -> crdtledger.** The library imports
   nothing from the node, the counter, the simulator or the benchmarks; the node
   nothing from the counter, the simulator or the benchmarks; the simulator nothing
   from the counter or the benchmarks. Imports inside functions and under
   TYPE_CHECKING count too: a cycle hidden in a function is still a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUTSIDE = ("peer", "reference_app", "sim", "benchmarks")

# Files that still touch the store, each owned by work in progress (issue 11). Remove
# a file from here when it is fixed; a test fails while a listed file is already
# clean, so the list only shrinks.
PENDING: dict[str, str] = {
}

# Who may not import whom (top-level packages).
FORBIDDEN_IMPORTS: dict[str, frozenset[str]] = {
    "crdtledger": frozenset({"peer", "reference_app", "sim", "benchmarks"}),
    "peer": frozenset({"reference_app", "sim", "benchmarks"}),
    "sim": frozenset({"reference_app", "benchmarks"}),
}


def _sources(*packages: str) -> list[Path]:
    return sorted(p for pkg in packages for p in (ROOT / pkg).rglob("*.py"))


def _rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def _names_store(expr: ast.expr) -> bool:
    text = ast.unparse(expr)
    return "ledger" in text.lower() or "storage" in text


def store_access(source: str) -> list[tuple[int, str]]:
    """(line, what) for every way `source` reaches the node's store around the
    library; see the module docstring for the rule."""
    out: list[tuple[int, str]] = []
    if "storage.conn" in source:
        out += [(i, "storage.conn") for i, line in enumerate(source.splitlines(), 1)
                if "storage.conn" in line]
    tree = ast.parse(source)
    # Names bound to a Storage anywhere in the file (a coarse scope: enough here).
    storages = {t.id for node in ast.walk(tree) if isinstance(node, ast.Assign)
                and isinstance(node.value, ast.Attribute) and node.value.attr == "storage"
                for t in node.targets if isinstance(t, ast.Name)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr == "conn":
            base = node.value
            if _names_store(base) or (isinstance(base, ast.Name) and base.id in storages):
                out.append((node.lineno, f"{ast.unparse(node)}"))
        elif isinstance(node, ast.Call):
            func = ast.unparse(node.func)
            if func in ("sqlite3.connect", "connect") and any(
                    "DB_FILE" in ast.unparse(a) or "ledger.sqlite3" in ast.unparse(a)
                    for a in [*node.args, *(k.value for k in node.keywords)]):
                out.append((node.lineno, f"{func}(...DB_FILE...)"))
    return sorted(set(out))


def _offenders() -> dict[str, list[tuple[int, str]]]:
    found = {}
    for path in _sources(*OUTSIDE):
        hits = store_access(path.read_text(encoding="utf-8"))
        if hits:
            found[_rel(path)] = hits
    return found


def test_the_rule_sees_each_way_around_the_library() -> None:
    """The checker itself: each form it must catch, and what it must let pass."""
    caught = [
        "x = ledger.storage.conn.execute('SELECT 1')",
        "rows = self.node.ledger.storage.conn.execute('SELECT id FROM entries')",
        "st = self.ledger.storage\nfor r in st.conn.execute('SELECT 1'): pass",
        "conn = ledger.conn",
        "with sqlite3.connect(path / DB_FILE) as db: pass",
        "c = sqlite3.connect(f'file:{d / DB_FILE}?mode=ro', uri=True)",
    ]
    for src in caught:
        assert store_access(src), src
    allowed = [
        "self.conn = sqlite3.connect(path, isolation_level=None)",  # a baseline's own file
        "self.conn.execute('PRAGMA journal_mode=WAL')",
        "views.member_ids(ledger)",
        "self.node.handle_events(self.conn, self.session)",  # a link, not the store
    ]
    for src in allowed:
        assert not store_access(src), src


def test_nothing_outside_the_library_reads_the_store_with_sql() -> None:
    found = {f: hits for f, hits in _offenders().items() if f not in PENDING}
    assert not found, (
        "raw SQL on the node's store outside crdtledger/ (use or add a named query in "
        f"crdtledger/views.py or crdtledger/audit.py): {found}")


def test_pending_list_only_shrinks() -> None:
    offenders = _offenders()
    clean = sorted(f for f in PENDING if f not in offenders)
    assert not clean, f"{clean} no longer touch the store: remove them from PENDING"


def _imports(path: Path) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.lineno, node.module))
    return out


def test_imports_go_one_way() -> None:
    wrong = []
    for package, forbidden in FORBIDDEN_IMPORTS.items():
        for path in _sources(package):
            for line, module in _imports(path):
                if module.split(".")[0] in forbidden:
                    wrong.append(f"{_rel(path)}:{line} imports {module}")
    assert not wrong, "imports against the layers (reference_app -> peer -> crdtledger): " \
        + "; ".join(wrong)
