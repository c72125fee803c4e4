"""Sync files, backups and tables as bytes that travel: what the HTTP API, the command
line and the counter's back office hand to a browser, a spreadsheet or a
point-of-sale system, and take back.

The library writes and reads these files on disk (`crdtledger.syncfile`,
`crdtledger.backups`); here they pass through a private temporary directory,
so the API and the counter share one path and neither writes where a client
chose. Permissions are the library's: a sync file needs `sync`, a backup `backup`;
operator None is the node's owner at its own console.
"""

from __future__ import annotations

import csv
import io
import re
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from crdtledger.backups import write_backup
from crdtledger.errors import CorruptSyncFile, LedgerError, RemoteProtocolError
from crdtledger.ledger import Ledger
from crdtledger.private import write_private
from crdtledger.syncfile import MAX_FILE_BYTES, export_file, import_file


def export_bytes(ledger: Ledger, operator: str | None, for_node: str | None = None
                 ) -> tuple[bytes, dict[str, Any]]:
    """A sync file of what `for_node` lacks (or everything), and what it holds."""
    with tempfile.TemporaryDirectory(prefix="crdtledger-export-") as tmp:
        path = Path(tmp) / "export.sync"
        info = export_file(ledger, path, for_node, operator=operator)
        return path.read_bytes(), info


def import_bytes(ledger: Ledger, operator: str | None, data: bytes) -> dict[str, Any]:
    """Apply a sync file received as bytes, all or nothing (see `import_file`)."""
    if len(data) > MAX_FILE_BYTES:
        raise CorruptSyncFile(f"{len(data)} bytes is larger than any sync file")
    with tempfile.TemporaryDirectory(prefix="crdtledger-import-") as tmp:
        path = Path(tmp) / "import.sync"
        write_private(path, data)  # members' data: 0600 even inside a private dir
        try:
            info = import_file(ledger, path, operator=operator)
        except (LedgerError, RemoteProtocolError) as e:
            # The sentence names the file: the sender's is "the file sent", not a
            # path on this machine (which tells a stranger how the node is laid out).
            e.args = (str(e).replace(str(path), "the file sent"), *e.args[1:])
            raise
    info["file"] = ""  # the temporary name means nothing to the sender
    return info


def backup_bytes(ledger: Ledger, operator: str | None) -> bytes:
    """A consistent copy of the node (SQLite's online backup: one snapshot, no lock,
    so it may run off the event loop), sealed as one `ledger.backup` file
    (crdtledger.backups) for a download."""
    ledger.authorise(operator or ledger.owner, "backup")
    return sealed_backup(ledger.storage.dir)


def sealed_backup(data_dir: Path) -> bytes:
    """The sealed backup file of `data_dir`; the caller checked the permission.
    Restore it with `crdtledger restore --from FILE --data DIR [--chain CHAIN_DIR]`."""
    with tempfile.TemporaryDirectory(prefix="crdtledger-backup-") as tmp:
        return write_backup(data_dir, Path(tmp) / "backup").read_bytes()


# A cell a spreadsheet (Excel, WPS, LibreOffice) would run as a formula: one starting
# with = + - @ or a tab or carriage return. Names, notes and reasons are typed by
# cashiers and members, so "=HYPERLINK(...)" as a member's name would run on the
# owner's PC when the member list is opened. A plain number keeps its sign (a refund's
# -12.00 stays a number for the accountant).
_FORMULA = re.compile(r"[=+\-@\t\r]")
_NUMBER = re.compile(r"[+-]?[0-9]+(?:\.[0-9]+)?\Z")


def spreadsheet_cell(value: Any) -> Any:
    """`value` as a CSV cell that a spreadsheet shows as text, never runs: text that
    would start a formula gets a leading apostrophe (OWASP's advice); numbers and
    other text pass as they are."""
    if isinstance(value, str) and _FORMULA.match(value) and not _NUMBER.match(value):
        return "'" + value
    return value


def csv_text(rows: Iterable[Sequence[Any]]) -> str:
    """Rows as CSV text, every cell spreadsheet-safe (spreadsheet_cell)."""
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(
        [spreadsheet_cell(c) for c in row] for row in rows)
    return out.getvalue()
