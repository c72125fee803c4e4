"""Names through the API: no direction override (U+202E and its kin), and none of
invisible characters alone (a command-line and API probe, 13th round). The real API
on 127.0.0.1 against a real SQLite store."""

from __future__ import annotations

from pathlib import Path

from test_api import BOSS_PW, Api, drive, new_member

from crdtledger.ledger import Ledger


def test_a_member_renamed_to_a_reordering_or_invisible_name_is_refused(
        tmp_path: Path) -> None:
    async def go(ledger: Ledger, api: Api) -> None:
        token = await api.login("boss", BOSS_PW)
        member = await new_member(api, token)
        for bad in ("\u202e三张", "\u200b", "\u2067王芳\u2069", " \u200d "):
            status, said = await api.call("PATCH", f"/members/{member}", {"name": bad},
                                          token=token)
            assert status == 400 and "direction overrides" in said["message"], said
            status, said = await api.call("POST", "/members", {"name": bad,
                                                               "phone": "13900000009"},
                                          token=token)
            assert status == 400, said
        assert ledger.member(member)["name"] == "王芳"
        status, said = await api.call("PATCH", f"/members/{member}",
                                      {"name": "王芳 🙂\u200d"}, token=token)
        assert status == 200 and said["name"] == "王芳 🙂\u200d", said

    drive(tmp_path, go)
