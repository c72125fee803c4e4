"""An operator's tokens end when the operator's password is changed or the operator is
deactivated: at once, not when they expire 12 hours later, and whether the change was
made at this branch or reached it from another one by sync.

The first tests run a real node (peer.node.Node) with its API on 127.0.0.1; the last
serves the API of a second branch's ledger (as tests/test_api.py does) and brings it
the change by a sync exchange.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import new_ledger, sync
from test_api import AMY_PW, Api, serving, with_operators
from test_approver_throttle import PW, Branch, branch

from crdtledger.ledger import Ledger
from peer.api import Sessions, Standalone

ROOT = Path(__file__).resolve().parent.parent

# What a token reaches: a read of no member, the money, and a member's data.
PATHS = ("/sync/status", "/goods", "/rules/approval")


async def works(api: Api, token: str, mid: str) -> list[int]:
    return [(await api.call("GET", path, token=token))[0]
            for path in (*PATHS, f"/members/{mid}")]


def operator_id(ledger: Ledger, name: str) -> str:
    oid = ledger.login_record(name).operator
    assert oid is not None
    return oid


async def setup(b: Branch) -> tuple[str, list[str], str]:
    """boss's token, two of amy's (two tills), and a member."""
    boss = await b.login("boss")
    amy = [await b.login("amy"), await b.login("amy")]
    status, body = await b.api.call("POST", "/members", {"name": "王芳", "phone": "13812345678"},
                                    token=boss)
    assert status == 201, body
    return boss, amy, str(body["member_id"])


@pytest.mark.asyncio
async def test_a_password_reset_ends_the_operators_sessions(tmp_path: Path) -> None:
    async with branch(tmp_path) as b:
        boss, amy, mid = await setup(b)
        assert await works(b.api, amy[0], mid) == [200] * 4
        status, body = await b.api.call("PATCH", f"/operators/{operator_id(b.ledger, 'amy')}",
                                        {"password": "new-secret-1"}, token=boss)
        assert status == 200, body
        for token in amy:
            assert await works(b.api, token, mid) == [401] * 4
            status, body = await b.api.call("POST", "/debit", {"member": mid, "amount": 1},
                                            token=token)
            assert (status, body["error"]) == (401, "unauthorized")
        # Others' sessions go on; amy logs in with her new password.
        assert await works(b.api, boss, mid) == [200] * 4
        token = await b.api.login("amy", "new-secret-1")
        assert await works(b.api, token, mid) == [200] * 4


@pytest.mark.asyncio
async def test_deactivation_ends_the_operators_sessions(tmp_path: Path) -> None:
    async with branch(tmp_path) as b:
        boss, amy, mid = await setup(b)
        status, body = await b.api.call("PATCH", f"/operators/{operator_id(b.ledger, 'amy')}",
                                        {"active": False}, token=boss)
        assert status == 200, body
        for token in amy:
            assert await works(b.api, token, mid) == [401] * 4
        assert await works(b.api, boss, mid) == [200] * 4


@pytest.mark.asyncio
async def test_a_change_of_roles_keeps_the_sessions(tmp_path: Path) -> None:
    # Roles are read on every request: nothing to end.
    async with branch(tmp_path) as b:
        boss, amy, mid = await setup(b)
        status, body = await b.api.call("PATCH", f"/operators/{operator_id(b.ledger, 'amy')}",
                                        {"roles": {"manager": True}}, token=boss)
        assert status == 200, body
        assert await works(b.api, amy[0], mid) == [200] * 4
        assert PW["amy"]  # her password still logs her in
        await b.login("amy")


def elsewhere(data: Path, operator: str, **change: object) -> None:
    """`set_operator` by the owner of the store in `data`, in another process: this
    process hears of it only by sync (a change made here is told to the sessions at
    once, whichever store it was made in)."""
    code = ("import sys; from crdtledger.ledger import Ledger\n"
            "with Ledger.open(sys.argv[1]) as l:\n"
            f"    l.set_operator(l.owner, sys.argv[2], **{change!r})\n")
    subprocess.run([sys.executable, "-c", code, str(data), operator], check=True,
                   cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60)


def test_a_change_made_at_another_branch_ends_the_sessions_here(tmp_path: Path) -> None:
    async def main() -> None:
        head = with_operators(new_ledger(tmp_path, "SH01"))
        here = new_ledger(tmp_path, "SH02")
        head_dir = head.storage.dir
        sync(head, here)
        head.close()
        amy_id = operator_id(here, "amy")
        try:
            async with serving(Standalone(here), Sessions()) as api:
                token = await api.login("amy", AMY_PW)
                assert (await api.call("GET", "/sync/status", token=token))[0] == 200
                elsewhere(head_dir, amy_id, password="new-secret-1")
                # Not here yet: the token works until the change arrives...
                assert (await api.call("GET", "/sync/status", token=token))[0] == 200
                with Ledger.open(head_dir) as head:
                    sync(head, here)
                # ...and ends when it does.
                assert (await api.call("GET", "/sync/status", token=token))[0] == 401
                token = await api.login("amy", "new-secret-1")
                elsewhere(head_dir, amy_id, active=False)
                assert (await api.call("GET", "/sync/status", token=token))[0] == 200
                with Ledger.open(head_dir) as head:
                    sync(head, here)
                assert (await api.call("GET", "/sync/status", token=token))[0] == 401
        finally:
            here.close()

    asyncio.run(main())
