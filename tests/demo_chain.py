"""The demo chain (reference_app/demo_data.py) in a temporary directory, made the way
`./run demo` makes it (a chain CA, three enrolled branches, SH01 the head office) but
without starting any process: seeding takes about two seconds."""

from __future__ import annotations

from pathlib import Path

from crdtledger.ledger import Ledger
from peer.chain import enrol, init_chain
from reference_app.demo_data import BRANCHES, enrolled_since, seed

HEAD_OFFICE = "SH01"


def make_demo_chain(root: Path) -> dict[str, Path]:
    """Node id -> data directory of each seeded branch (synced: each holds it all)."""
    init_chain(root / "chain", "demo")
    dirs = {node: root / node for node in BRANCHES}
    for node, data in dirs.items():
        Ledger.create(data, node, "demo")
        enrol(root / "chain", data, node, head_office=node == HEAD_OFFICE,
              not_before=enrolled_since())
    seed(dirs)
    return dirs
