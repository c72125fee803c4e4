"""Sync files and backups over the HTTP API (the counter's back office offers them, so
the API does too): real aiohttp servers on 127.0.0.1, real ledgers, real bytes."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
from helpers import new_ledger, snapshot
from test_api import AMY_PW, BOSS_PW, serving, with_operators

from crdtledger.backups import restore
from crdtledger.ledger import Ledger
from peer.api import Standalone


async def raw(http: aiohttp.ClientSession, method: str, url: str, token: str,
              data: bytes | None = None) -> tuple[int, bytes, str]:
    async with http.request(method, url, data=data,
                            headers={"Authorization": f"Bearer {token}"}) as r:
        return r.status, await r.read(), r.content_type


def test_a_sync_file_travels_through_the_api_and_a_bad_one_changes_nothing(
        tmp_path: Path) -> None:
    async def main() -> None:
        a = with_operators(new_ledger(tmp_path, "SH01"))
        b = with_operators(new_ledger(tmp_path, "SH02"))
        mid = a.add_member(a.owner, name="王芳", phone="13812345678")
        a.topup(a.owner, mid, 12_345)
        try:
            async with serving(Standalone(a)) as api_a, serving(Standalone(b)) as api_b:
                http = api_a.http
                boss_a = await api_a.login("boss", BOSS_PW)
                boss_b = await api_b.login("boss", BOSS_PW)
                amy_b = await api_b.login("amy", AMY_PW)

                status, data, kind = await raw(http, "GET", api_a.base + "/sync/export?for=SH02",
                                               boss_a)
                assert status == 200 and kind == "application/octet-stream"
                assert data.startswith(b"CRDTLEDGER-SEALED sync ")

                before = snapshot(b)
                # A cashier may not import (sync permission), and nothing is read.
                status, body, _ = await raw(http, "POST", api_b.base + "/sync/import", amy_b,
                                            data)
                assert status == 403, body
                # Damaged or truncated: refused whole with a sentence, nothing applied.
                for bad in (data[:-10], data[:40] + b"x" + data[41:], b"not a sync file"):
                    status, body, _ = await raw(http, "POST", api_b.base + "/sync/import",
                                                boss_b, bad)
                    assert status == 400, body
                    assert b"corrupt_sync_file" in body and b"nothing changed" in body
                    # The sender's file, not a path on this machine.
                    assert b"the file sent" in body and b"crdtledger-import" not in body
                assert snapshot(b) == before

                status, body, _ = await raw(http, "POST", api_b.base + "/sync/import", boss_b,
                                            data)
                assert status == 200, body
                assert b.balance(mid)["cash"] == 12_345
                # Importing it again is harmless.
                status, again, _ = await raw(http, "POST", api_b.base + "/sync/import",
                                             boss_b, data)
                assert status == 200 and b'"changed": []' in again
                assert b.balance(mid)["cash"] == 12_345
        finally:
            a.close()
            b.close()

    asyncio.run(main())


def test_a_backup_downloads_as_a_sealed_file_that_restores_the_node(tmp_path: Path) -> None:
    async def main() -> None:
        a = with_operators(new_ledger(tmp_path, "SH01"))
        mid = a.add_member(a.owner, name="王芳", phone="13812345678")
        a.topup(a.owner, mid, 50_000)
        try:
            async with serving(Standalone(a)) as api:
                boss = await api.login("boss", BOSS_PW)
                amy = await api.login("amy", AMY_PW)
                status, body, _ = await raw(api.http, "GET", api.base + "/backup", amy)
                assert status == 403, body
                status, data, kind = await raw(api.http, "GET", api.base + "/backup", boss)
                assert status == 200 and kind == "application/octet-stream"
        finally:
            a.close()
        assert data.startswith(b"CRDTLEDGER-SEALED backup 1\n") and b"13812345678" not in data
        (tmp_path / "download.ledger.backup").write_bytes(data)
        restore(tmp_path / "download.ledger.backup", tmp_path / "restored")
        copy = Ledger.open(tmp_path / "restored")
        try:
            got: dict[str, Any] = copy.balance(mid)
            assert got["cash"] == 50_000
        finally:
            copy.close()

    asyncio.run(main())


def test_the_file_routes_are_in_the_openapi_document() -> None:
    from peer.api import openapi

    paths = openapi("/api")["paths"]
    assert "application/octet-stream" in paths["/sync/import"]["post"]["requestBody"]["content"]
    assert "application/octet-stream" in paths["/sync/export"]["get"]["responses"]["200"][
        "content"]
    assert "application/octet-stream" in paths["/backup"]["get"]["responses"]["200"]["content"]
