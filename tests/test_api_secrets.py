"""A refusal never says back a secret sent: a PIN, a password, an approver's password
(a command-line and API probe, 13th round: "not "SSSSSSSS""). The real API on
127.0.0.1 against a real SQLite store."""

from __future__ import annotations

from pathlib import Path

from test_api import BOSS_PW, Api, drive, new_member

from crdtledger.ledger import Ledger


def test_a_malformed_secret_is_not_said_back(tmp_path: Path) -> None:
    async def go(ledger: Ledger, api: Api) -> None:
        token = await api.login("boss", BOSS_PW)
        member = await new_member(api, token)
        secrets = ("98765x32", "Sekr\u202et9", 98765432, [98765432], {"x": "98765432"})
        for secret in secrets:
            status, said = await api.call("POST", "/login", {"operator": "boss",
                                                              "password": secret})
            if isinstance(secret, str):  # a wrong password of the right form
                assert status == 401, said
            else:
                assert status == 400 and "password must be" in said["message"], said
            asked = [("POST", f"/members/{member}/cards", {"card_no": "PP1", "pin": secret}),
                     ("POST", "/debit", {"card": "PP1", "pin": secret, "amount": 1}),
                     ("POST", "/operators", {"name": "zed", "password": secret,
                                             "roles": ["cashier"]}),
                     ("POST", "/topup", {"member": member, "amount": 100,
                                         "approver": {"name": "boss", "password": secret}})]
            if isinstance(secret, str):  # a password of any text is one, here unused
                asked = asked[:2]
            for method, path, body in asked:
                status, said = await api.call(method, path, body, token=token)
                assert status in (400, 401), (path, secret, said)
                assert "pin must be" in said["message"] or "password" in said["message"], said
                text = str(said)
                assert "98765" not in text and "\u202e" not in text, (path, said)

    drive(tmp_path, go)
