"""A route of no fields takes no body, or {} (as the routes of optional fields take
"nothing"), and refuses anything else before it writes: `{"a":`, an array, text/plain
or a chunked upload of megabytes confirmed the clock (a command-line and API probe,
13th round). The real API on 127.0.0.1 against a real SQLite store."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

from test_api import BOSS_PW, Api, drive, topped_up

from crdtledger.ledger import Ledger
from peer.api import MAX_BODY


def _digest(ledger: Ledger) -> str:
    h = hashlib.sha256()
    conn = ledger.storage.conn
    for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' "
                                "ORDER BY name"):
        for row in conn.execute(f'SELECT * FROM "{name}" ORDER BY 1'):
            h.update(repr(row).encode())
    return h.hexdigest()


async def _megabytes() -> AsyncIterator[bytes]:
    for _ in range(32):  # 32 times the limit, chunked: no Content-Length to refuse by
        yield b"{" + b" " * (MAX_BODY - 1)


def test_a_route_of_no_fields_refuses_a_body_it_cannot_take(tmp_path: Path) -> None:
    async def go(ledger: Ledger, api: Api) -> None:
        token = await api.login("boss", BOSS_PW)
        member = await topped_up(api, token)
        entry = ledger.storage.conn.execute(
            "SELECT id FROM entries WHERE member = ? LIMIT 1", (member,)).fetchone()[0]
        auth = {"Authorization": f"Bearer {token}"}
        as_json = {**auth, "Content-Type": "application/json"}
        bad = [(b'{"a":', as_json, 400), (b"[]", as_json, 400), (b"null", as_json, 400),
               (b'{"day": "2020-01-01"}', as_json, 400), (b"\xff\xfe", as_json, 400),
               (b"{}", {**auth, "Content-Type": "text/plain"}, 415),
               (b"a=1", {**auth, "Content-Type": "application/x-www-form-urlencoded"}, 415)]
        for path in ("/clock/confirm", "/referral-grants", "/checkins/reconcile",
                     f"/receipts/{entry}/print"):
            before = _digest(ledger)
            for data, headers, status in bad:
                async with api.http.post(api.base + path, data=data, headers=headers) as r:
                    said = await r.json()
                    assert r.status == status, (path, data, r.status, said)
                    assert said["message"], said
            async with api.http.post(api.base + path, data=_megabytes(),
                                     headers=as_json) as r:
                assert r.status == 413, (path, r.status, await r.text())
            assert _digest(ledger) == before, path
            # nothing, or {}, as before
            for body in (None, {}):
                status, said = await api.call("POST", path, body, token=token)
                assert status == 200, (path, body, said)

    drive(tmp_path, go)
