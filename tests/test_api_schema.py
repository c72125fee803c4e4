"""Schemathesis against the live API and its own /api/openapi.json.

The document is built from the same route table whose schemas check each request,
so this holds the code and the document to each other: no 5xx whatever is sent,
every status, content type and body as documented, data the schema forbids refused,
a request without a token refused, other methods 405. The run is the `schemathesis`
command against a real server on 127.0.0.1; the server runs on this test's event
loop, which also owns the ledger, while the command runs as a child process.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest
from helpers import new_ledger
from test_api import BOSS_PW, serving, with_operators

from peer.api import Standalone

pytestmark = pytest.mark.slow

# Every check but one: data that fits the schema may still be refused, rightly, by the
# ledger (an unknown member is 404, a debit beyond the balance 409).
EXCLUDED_CHECKS = "positive_data_acceptance"
# About 16 s on 2 cores: 22 operations, positive and negative data, then chains of
# calls along the document's links (member -> top-up -> debit -> refund, card -> lost).
MAX_EXAMPLES = 50
RUN_TIMEOUT_S = 300


def test_schemathesis_finds_no_server_error_and_no_drift(tmp_path: Path) -> None:
    async def main() -> tuple[int, str, int]:
        ledger = with_operators(new_ledger(tmp_path, "SH01"))
        try:
            async with serving(Standalone(ledger)) as api:
                token = await api.login("boss", BOSS_PW)  # an owner: every route is open
                proc = await asyncio.create_subprocess_exec(
                    sys.executable, "-c", "from schemathesis.cli import schemathesis as st; "
                    "st(prog_name='schemathesis')",
                    "run", f"{api.base}/openapi.json",
                    "--header", f"Authorization: Bearer {token}",
                    "--checks", "all", "--exclude-checks", EXCLUDED_CHECKS,
                    "--max-examples", str(MAX_EXAMPLES),
                    # Logging out would end the token the rest of the run uses.
                    "--exclude-path", "/logout",
                    "--request-timeout", "10",
                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
                    cwd=tmp_path, env={**os.environ, "NO_COLOR": "1"})
                out, _ = await asyncio.wait_for(proc.communicate(), RUN_TIMEOUT_S)
                # Still serving, and no purse went below zero whatever the run did.
                assert (await api.call("GET", "/sync/status", token=token))[0] == 200
                (negative,) = ledger.storage.conn.execute(
                    "SELECT COUNT(*) FROM rights WHERE amount < 0").fetchone()
                return int(proc.returncode or 0), out.decode(errors="replace"), int(negative)
        finally:
            ledger.close()

    code, out, negative = asyncio.run(main())
    assert code == 0, out[-6000:]
    assert "passed" in out, out[-3000:]
    assert negative == 0
