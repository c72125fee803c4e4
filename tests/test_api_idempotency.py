"""The API's Idempotency-Key (peer/api.py IdempotencyKeys, crdtledger.idempotency).

A till that timed out on POST /debit and retries must not sell twice. Each test runs
a real node (its chain certificate, its SQLite store, its API on 127.0.0.1) and talks
to it with a real aiohttp client; the restart test stops the node and starts another
on the same data directory. The waiting duplicate needs a write that takes time: it
runs the real API over a host whose writes wait for the test's word.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest
from helpers import new_ledger, snapshot
from test_api import Api, serving, with_operators
from test_approver_throttle import PW
from test_approver_throttle import make_node as make_branch

from crdtledger import idempotency
from crdtledger.ledger import Ledger
from peer.api import IdempotencyKeys, Standalone, openapi
from peer.node import Config, Node

T = TypeVar("T")
ROLES = {"boss": "owner", "amy": "cashier", "bob": "cashier"}
KEY = "till-3/receipt-000123"
DEBIT = {"amount": 2000}  # 20.00 of a member's stored value


def make_node(tmp_path: Path) -> Path:
    """Node SH01 of chain `test` with operators boss (owner), amy and bob (cashiers)."""
    return make_branch(tmp_path, ROLES)


@contextlib.asynccontextmanager
async def running(data: Path) -> AsyncIterator[tuple[Node, Api]]:
    node = Node(Config(data, listen=("127.0.0.1", 0), api=("127.0.0.1", 0), mdns=False))
    await node.start()
    try:
        async with aiohttp.ClientSession() as http:
            yield node, Api(http, f"http://127.0.0.1:{node.api_port}/api")
    finally:
        await node.stop()


async def topped_up(api: Api, token: str, yuan: str = "100.00") -> str:
    status, body = await api.call("POST", "/members", {"name": "王芳", "phone": "13812345678"},
                                  token=token)
    assert status == 201, body
    mid = str(body["member_id"])
    status, body = await api.call("POST", "/topup", {"member": mid, "yuan": yuan}, token=token)
    assert status == 200, body
    return mid


async def debit(api: Api, token: str, mid: str, key: str | None, **body: Any
                ) -> tuple[int, Any, str | None]:
    """POST /debit; (status, body, the Idempotent-Replayed header)."""
    headers = {"Idempotency-Key": key} if key is not None else {}
    status, answer = await api.call("POST", "/debit", {"member": mid, **DEBIT, **body},
                                    token=token, headers=headers)
    return status, answer, api.last_headers.get("Idempotent-Replayed")


def cash(ledger: Ledger, mid: str) -> int:
    return int(ledger.balance(mid)["cash"])


def debits(ledger: Ledger, mid: str) -> int:
    return sum(1 for e in ledger.history(mid, limit=1000) if e["kind"] == "debit")


def test_a_retried_debit_under_one_key_debits_once(tmp_path: Path) -> None:
    async def go() -> None:
        async with running(make_node(tmp_path)) as (node, api):
            amy = await api.login("amy", PW["amy"])
            mid = await topped_up(api, await api.login("boss", PW["boss"]))
            first = await debit(api, amy, mid, KEY)
            again = await debit(api, amy, mid, KEY)
            assert first[0] == 200 and first[2] is None, first
            assert again == (200, first[1], "true")  # the same answer, marked
            assert cash(node.ledger, mid) == 10000 - 2000
            assert debits(node.ledger, mid) == 1
            # Without a key nothing changes: each request is a sale.
            assert (await debit(api, amy, mid, None))[0] == 200
            assert (await debit(api, amy, mid, None))[0] == 200
            assert cash(node.ledger, mid) == 10000 - 3 * 2000
            assert debits(node.ledger, mid) == 3

    asyncio.run(go())


def test_another_request_under_a_used_key_is_refused_and_changes_nothing(tmp_path: Path
                                                                         ) -> None:
    async def go() -> None:
        async with running(make_node(tmp_path)) as (node, api):
            amy = await api.login("amy", PW["amy"])
            mid = await topped_up(api, await api.login("boss", PW["boss"]))
            first = await debit(api, amy, mid, KEY)
            before = snapshot(node.ledger, [mid])
            status, body, replayed = await debit(api, amy, mid, KEY, amount=3000)
            assert (status, body["error"], replayed) == (422, "idempotency_key_reused", None)
            assert KEY in body["message"] and "nothing was done" in body["message"]
            # Another path under the key is another request too.
            status, body = await api.call("POST", "/topup", {"member": mid, "yuan": "20.00"},
                                          token=amy, headers={"Idempotency-Key": KEY})
            assert (status, body["error"]) == (422, "idempotency_key_reused")
            assert snapshot(node.ledger, [mid]) == before
            assert await debit(api, amy, mid, KEY) == (200, first[1], "true")

    asyncio.run(go())


def test_a_key_survives_a_restart_of_the_node(tmp_path: Path) -> None:
    data = make_node(tmp_path)

    async def go() -> None:
        async with running(data) as (node, api):
            amy = await api.login("amy", PW["amy"])
            mid = await topped_up(api, await api.login("boss", PW["boss"]))
            first = await debit(api, amy, mid, KEY)
            assert first[0] == 200
        # Acknowledged, then the node restarted: tokens are gone, the key is not.
        async with running(data) as (node, api):
            amy = await api.login("amy", PW["amy"])
            assert await debit(api, amy, mid, KEY) == (200, first[1], "true")
            assert cash(node.ledger, mid) == 10000 - 2000
            assert debits(node.ledger, mid) == 1

    asyncio.run(go())


def test_another_operators_same_key_is_another_key(tmp_path: Path) -> None:
    async def go() -> None:
        async with running(make_node(tmp_path)) as (node, api):
            amy = await api.login("amy", PW["amy"])
            bob = await api.login("bob", PW["bob"])
            mid = await topped_up(api, await api.login("boss", PW["boss"]))
            by_amy = await debit(api, amy, mid, KEY)
            by_bob = await debit(api, bob, mid, KEY)
            assert by_amy[0] == by_bob[0] == 200 and by_bob[2] is None
            assert by_amy[1]["id"] != by_bob[1]["id"]  # bob got his own sale, not amy's
            assert debits(node.ledger, mid) == 2
            # A second login of amy (another token) is still amy: her key replays.
            amy2 = await api.login("amy", PW["amy"])
            assert await debit(api, amy2, mid, KEY) == (200, by_amy[1], "true")

    asyncio.run(go())


@pytest.mark.parametrize("key", ["", "k" * 101, "收据-1"])
def test_a_malformed_key_is_a_400_and_changes_nothing(tmp_path: Path, key: str) -> None:
    async def go() -> None:
        async with running(make_node(tmp_path)) as (node, api):
            amy = await api.login("amy", PW["amy"])
            mid = await topped_up(api, await api.login("boss", PW["boss"]))
            await debit(api, amy, mid, "warm-up")  # the key table exists
            before = snapshot(node.ledger, [mid])
            status, body, _ = await debit(api, amy, mid, key)
            assert (status, body["error"]) == (400, "invalid_input"), body
            assert "Idempotency-Key must be 1 to 100 printable ASCII" in body["message"]
            assert snapshot(node.ledger, [mid]) == before
            # 100 characters is the longest a key may be.
            assert (await debit(api, amy, mid, "k" * 100))[0] == 200

    asyncio.run(go())


def test_a_refusal_is_not_remembered_so_the_fixed_sale_goes_through(tmp_path: Path) -> None:
    async def go() -> None:
        async with running(make_node(tmp_path)) as (node, api):
            amy = await api.login("amy", PW["amy"])
            boss = await api.login("boss", PW["boss"])
            mid = await topped_up(api, boss, "10.00")
            await api.call("POST", "/topup", {"member": mid, "yuan": "1.00"}, token=boss,
                           headers={"Idempotency-Key": "warm-up"})  # the key table exists
            before = snapshot(node.ledger, [mid])
            status, body, _ = await debit(api, amy, mid, KEY)
            assert (status, body["error"]) == (409, "insufficient_funds")
            assert snapshot(node.ledger, [mid]) == before, "the key was let go"
            status, body, _ = await debit(api, amy, mid, KEY)  # still short: refused again
            assert (status, body["error"]) == (409, "insufficient_funds")
            # The member tops up; the till retries the very sale under the same key.
            await api.call("POST", "/topup", {"member": mid, "yuan": "50.00"}, token=boss)
            first = await debit(api, amy, mid, KEY)
            assert first[0] == 200 and first[2] is None
            assert await debit(api, amy, mid, KEY) == (200, first[1], "true")
            assert cash(node.ledger, mid) == 6100 - 2000

    asyncio.run(go())


def test_a_key_whose_answer_was_lost_to_a_stop_is_unknown_not_repeated(tmp_path: Path
                                                                       ) -> None:
    """A row begun and never answered is what a node that stopped mid-request leaves
    behind (the row is written before the operation runs): the retry is told the
    outcome is unknown, and the operation is not run again."""
    data = make_node(tmp_path)

    async def go() -> None:
        async with running(data) as (node, api):
            amy = await api.login("amy", PW["amy"])
            mid = await topped_up(api, await api.login("boss", PW["boss"]))
            await debit(api, amy, mid, "warm-up")
            operator = node.ledger.authenticate("amy", PW["amy"])
            request = next(iter(node.ledger.storage.conn.execute(
                "SELECT request FROM idempotency WHERE key = 'warm-up'")))[0]
        with Ledger.open(data) as ledger:  # the node is down
            idempotency.begin(ledger, operator, KEY, request, idempotency_now())
        async with running(data) as (node, api):
            amy = await api.login("amy", PW["amy"])
            before = snapshot(node.ledger, [mid])
            status, body, _ = await debit(api, amy, mid, KEY)
            assert (status, body["error"]) == (409, "idempotency_unknown")
            assert "history" in body["message"]
            assert snapshot(node.ledger, [mid]) == before

    asyncio.run(go())


def idempotency_now() -> int:
    return IdempotencyKeys().now_ms()


class SlowHost(Standalone):
    """The real API over a lone ledger whose writes wait until the test says go: a
    write the node is still fetching rights for, as a till that gave up sees it."""

    def __init__(self, ledger: Ledger) -> None:
        super().__init__(ledger)
        self.go = asyncio.Event()
        self.started = 0

    async def perform(self, op: Callable[[], T], name: str | None = None) -> T:
        self.started += 1
        await self.go.wait()
        return op()


def test_a_duplicate_while_the_first_still_runs_waits_for_its_answer(tmp_path: Path) -> None:
    async def go() -> None:
        ledger = with_operators(new_ledger(tmp_path, "SH01"))
        host = SlowHost(ledger)
        try:
            async with serving(host) as api:
                boss = await api.login("boss", "boss-secret")
                host.go.set()
                mid = await topped_up(api, boss)
                host.go.clear()
                started = host.started
                first = asyncio.create_task(debit(api, boss, mid, KEY))
                while host.started == started:  # the first is inside its write
                    await asyncio.sleep(0.01)
                second = asyncio.create_task(debit(api, boss, mid, KEY))
                other = await debit(api, boss, mid, KEY, amount=1)  # meanwhile, another
                assert (other[0], other[1]["error"]) == (422, "idempotency_key_reused")
                await asyncio.sleep(0.1)
                assert not second.done(), "the duplicate waits for the first"
                host.go.set()
                a, b = await first, await second
                assert a[0] == 200 and a[2] is None
                assert b == (200, a[1], "true")
                assert host.started == started + 1, "the duplicate never ran"
                assert cash(ledger, mid) == 10000 - 2000
        finally:
            ledger.close()

    asyncio.run(go())


def test_keys_expire_after_a_day_and_a_clock_set_right_moves_no_key(tmp_path: Path) -> None:
    """A day of time elapsed ends a key; the PC's clock set right by two days between
    a debit and its retry does not (it made the key look expired: sold twice)."""
    wall, elapsed = [1_800_000_000.0], [0.0]

    async def go() -> None:
        ledger = with_operators(new_ledger(tmp_path, "SH01"))
        try:
            keys = IdempotencyKeys(clock=lambda: wall[0], monotonic=lambda: elapsed[0])
            async with serving(Standalone(ledger), keys=keys) as api:
                boss = await api.login("boss", "boss-secret")
                mid = await topped_up(api, boss)
                assert (await debit(api, boss, mid, KEY))[0] == 200
                wall[0] += 2 * 24 * 3600  # the clock is set right, 5 s later the retry
                elapsed[0] += 5
                assert (await debit(api, boss, mid, KEY))[2] == "true"
                assert cash(ledger, mid) == 10000 - 2000
                elapsed[0] += 24 * 3600 - 6
                assert (await debit(api, boss, mid, KEY))[2] == "true"
                elapsed[0] += 2  # a day and a second later the key is new again
                status, _, replayed = await debit(api, boss, mid, KEY, amount=500)
                assert (status, replayed) == (200, None)
                assert cash(ledger, mid) == 10000 - 2000 - 500
                rows = ledger.storage.conn.execute("SELECT COUNT(*) FROM idempotency")
                assert next(iter(rows))[0] == 1, "the expired key went when one began"
        finally:
            ledger.close()

    asyncio.run(go())


def test_the_openapi_document_offers_the_header_on_writes_only() -> None:
    doc = openapi("/api")

    def takes_key(path: str, method: str) -> bool:
        return any(p["name"] == "Idempotency-Key" and p["in"] == "header"
                   for p in doc["paths"][path][method].get("parameters", []))

    assert takes_key("/debit", "post") and takes_key("/topup", "post")
    assert takes_key("/receipts/{entry}/print", "post")
    assert not takes_key("/members/{member}", "get") and not takes_key("/login", "post")


def test_an_erasure_blanks_the_kept_answers_that_name_the_member(tmp_path: Path) -> None:
    """A kept answer can hold a profile (an edit answers with the member's view):
    erasing the member must not leave it in the keys' table for a day. A retry of the
    edit under its key then gets 410 and a sentence, and changes nothing."""
    async def go() -> None:
        async with running(make_node(tmp_path)) as (node, api):
            boss = await api.login("boss", PW["boss"])
            status, body = await api.call("POST", "/members", {"name": "王芳", "phone":
                                                               "13812345678"}, token=boss)
            mid = str(body["member_id"])
            edit = {"name": "王芳芳"}
            status, first = await api.call("PATCH", f"/members/{mid}", edit, token=boss,
                                           headers={"Idempotency-Key": KEY})
            assert status == 200 and "13812345678" in str(first), first
            status, body = await api.call("POST", f"/members/{mid}/erase", {}, token=boss)
            assert status == 200, body
            kept = node.ledger.storage.conn.execute(
                "SELECT status, body FROM idempotency").fetchall()
            assert kept and not any("13812345678" in str(b) or "王芳" in str(b)
                                    or mid in str(b) for _s, b in kept), kept
            before = snapshot(node.ledger, [mid])
            status, again = await api.call("PATCH", f"/members/{mid}", edit, token=boss,
                                           headers={"Idempotency-Key": KEY})
            assert (status, again["error"]) == (410, "member_erased"), again
            assert api.last_headers.get("Idempotent-Replayed") == "true"
            assert snapshot(node.ledger, [mid]) == before

    asyncio.run(go())


def test_an_erasure_from_another_branch_blanks_them_too(tmp_path: Path) -> None:
    """The erasure written at SH02 reaches SH01 by sync (erasure.after_batch)."""
    sh01, sh02 = new_ledger(tmp_path, "SH01"), new_ledger(tmp_path, "SH02")
    mid = sh01.add_member(sh01.owner, name="李娜", phone="13900000001")
    other = sh01.add_member(sh01.owner, name="赵磊", phone="13900000002")
    answer = {"member_id": mid, "profile": {"name": "李娜", "phone": "13900000001"}}
    for key, body in (("k1", answer), ("k2", {"member_id": other})):
        idempotency.begin(sh01, "boss", key, "fp-" + key, 1_000)
        idempotency.finish(sh01, "boss", key, 201, body)
    sh02.pull(sh01)
    sh02.erase_member(sh02.owner, mid)
    sh01.pull(sh02)
    now = 2_000
    assert idempotency.look(sh01, "boss", "k1", now) == idempotency.Remembered(
        "fp-k1", 410, idempotency.look(sh01, "boss", "k1", now).body)  # type: ignore[union-attr]
    assert "13900000001" not in str(idempotency.look(sh01, "boss", "k1", now))
    assert idempotency.look(sh01, "boss", "k2", now) == idempotency.Remembered(
        "fp-k2", 201, {"member_id": other})
    sh01.close()
    sh02.close()


def test_the_fingerprint_keys_passwords_and_pins_with_the_nodes_secret(
        tmp_path: Path) -> None:
    """The rest of a keyed body is in the entry it wrote, so a plain hash kept for a day
    gave an approver's password (17 guesses) or a card's PIN away to whoever read the
    store. They are keyed in with the node's own secret (beside the store, not in its
    backups): without it the fingerprint cannot be recomputed, and a request with
    another password or PIN is still another request."""
    ledger = new_ledger(tmp_path, "SH01")
    try:
        secret = idempotency.node_secret(ledger)
        assert secret == idempotency.node_secret(ledger) and len(secret) == 32
        assert (ledger.storage.dir / idempotency.SECRET_FILE).stat().st_mode & 0o777 == 0o600
    finally:
        ledger.close()

    def top(key: bytes = secret, **approver: str) -> str:
        return idempotency.fingerprint("POST", "/api/topup", [], {
            "member": "036VPVAM00001.SH01", "amount": 600000,
            "approver": {"name": "mgr", **approver}}, secret=key)

    def pay(pin: str, amount: int = 2000) -> str:
        return idempotency.fingerprint("POST", "/api/debit", [], {
            "card": "C10001", "pin": pin, "amount": amount}, secret=secret)

    assert top(password="mgr-secret") == top(password="mgr-secret")
    assert top(password="mgr-secret") != top(password="guess")
    assert top(password="mgr-secret") != top(b"", password="mgr-secret")  # a guesser's
    assert pay("123456") != pay("000000") and pay("123456") != pay("123456", 2001)


def test_a_key_used_before_a_restore_is_unknown_not_another_request(tmp_path: Path) -> None:
    """A backup leaves the node's secret out (idempotency.SECRET_FILE), so a store
    restored from one makes a new secret: a retry of a request it took before no
    longer matched its fingerprint, and was told "another request under this key ...
    send a new key", which invites the cashier to sell again. It is unknown (409), as
    after a stop."""
    data = make_node(tmp_path)

    async def go() -> None:
        async with running(data) as (node, api):
            amy = await api.login("amy", PW["amy"])
            mid = await topped_up(api, await api.login("boss", PW["boss"]))
            assert (await debit(api, amy, mid, KEY))[0] == 200
        (data / idempotency.SECRET_FILE).unlink()  # as a restored store has none
        idempotency._node_secrets.clear()  # another process, as after a restore
        async with running(data) as (node, api):
            amy = await api.login("amy", PW["amy"])
            status, body, _ = await debit(api, amy, mid, KEY)
            assert status == 409 and body["error"] == "idempotency_unknown", body
            assert "restored" in body["message"]
            assert debits(node.ledger, mid) == 1
            assert (await debit(api, amy, mid, "a-new-key"))[0] == 200  # new keys as ever

    asyncio.run(go())


def test_a_lone_surrogate_in_a_keyed_body_is_refused_as_without_a_key(tmp_path: Path) -> None:
    """JSON may carry "\\ud800": without a key such a body is a 400; with one, the
    fingerprint raised UnicodeEncodeError first, a bare 500."""
    data = make_node(tmp_path)

    async def go() -> None:
        async with running(data) as (node, api):
            amy = await api.login("amy", PW["amy"])
            mid = await topped_up(api, await api.login("boss", PW["boss"]))
            before = snapshot(node.ledger, [mid])
            for body in ('{"member": "' + mid + '", "amount": 100, "pin": "\\ud800"}',
                         '{"member": "\\ud800", "amount": 100}'):
                for headers in ({}, {"Idempotency-Key": KEY}):
                    status, answer = await api.call(
                        "POST", "/debit", data=body, token=amy,
                        headers={"Content-Type": "application/json", **headers})
                    assert status == 400, (headers, answer)
            after = snapshot(node.ledger, [mid])
            after.pop("idempotency", None)  # the keys' own table, made at the first key
            assert after == before

    asyncio.run(go())


@pytest.mark.parametrize("put_back", ["restore", "by hand"])
def test_a_keyed_sale_retried_after_a_restore_from_an_older_backup_is_not_sold_again(
        tmp_path: Path, put_back: str) -> None:
    """The PC dies after a keyed sale its last backup predates; the sale reached SH02.
    Restored from that backup, SH01 fetches the sale back from SH02 but knows nothing
    of the key (keys are local): the till's retry under it was sold again. The entry
    a keyed write makes carries the key's tag (`idem`), and for a day after a restore
    a key the store does not know is looked for among its entries. The same when
    the owner copies last night's store file back by hand (the README's other way):
    that copy was marked restored but its keys were not marked unknown."""
    import shutil

    from helpers import sync

    from crdtledger.backups import restore, write_backup
    from peer.chain import enrol

    data = make_node(tmp_path)
    Ledger.create(tmp_path / "sh02", "SH02", "test")
    enrol(tmp_path / "chain", tmp_path / "sh02", "SH02")
    write_backup(data, tmp_path / "bk")  # last night's
    shutil.copy(data / "ledger.sqlite3", tmp_path / "usb.sqlite3")  # node stopped

    async def sell() -> str:
        async with running(data) as (node, api):
            amy = await api.login("amy", PW["amy"])
            mid = await topped_up(api, await api.login("boss", PW["boss"]))
            status, body, _ = await debit(api, amy, mid, KEY)
            assert status == 200 and body["idem"] == idempotency.tag_of(
                node.ledger.authenticate("amy", PW["amy"]), KEY)
            return mid

    mid = asyncio.run(sell())
    with Ledger.open(data) as sh01, Ledger.open(tmp_path / "sh02") as sh02:
        sync(sh01, sh02)  # the sale reached SH02
    for leftover in data.glob("ledger.sqlite3*"):  # the PC died: a new one, the backup
        leftover.unlink()
    if put_back == "restore":
        restore(tmp_path / "bk", data, chain_dir=tmp_path / "chain")
    else:
        shutil.copy(tmp_path / "usb.sqlite3", data / "ledger.sqlite3")
    with Ledger.open(data) as sh01, Ledger.open(tmp_path / "sh02") as sh02:
        sync(sh01, sh02)  # caught up: the sale is back
        assert debits(sh01, mid) == 1

    async def retry() -> None:
        async with running(data) as (node, api):
            amy = await api.login("amy", PW["amy"])
            status, body, _ = await debit(api, amy, mid, KEY)
            assert status == 409 and body["error"] == "idempotency_unknown", body
            assert "restored" in body["message"]
            assert debits(node.ledger, mid) == 1 and cash(node.ledger, mid) == 10000 - 2000

    asyncio.run(retry())
