"""The counter app under NiceGUI's simulated user, against a real node.

`counter_app` gives a real store in tmp_path (a chain CA, a node certificate), the
node started on the app's event loop by the app's own startup hook (no peers, no
mDNS, ports picked by the OS), the pages built by `reference_app.app.build`, and a
`User` from NiceGUI's testing package that opens pages and clicks in-process. The
store has an owner ("boss") and a cashier ("cashier1") to log in as, and the card
readers are one `ScriptedReader` (a FAKE the test drives).

tests/conftest.py loads this module as a plugin; tests mark themselves
`@pytest.mark.asyncio` (the suite runs pytest-asyncio in strict mode).
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import io
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest_asyncio
from nicegui import core, ui
from nicegui.client import Client
from nicegui.functions.download import download
from nicegui.functions.navigate import Navigate
from nicegui.functions.notify import notify
from nicegui.testing.general import nicegui_reset_globals, prepare_simulation
from nicegui.testing.user import User

from crdtledger.ledger import Ledger, owner_of
from peer.chain import enrol, init_chain
from peer.node import Config
from reference_app.app import build
from reference_app.readers import ScriptedReader
from reference_app.shop import Shop

# NiceGUI's own plugin: a session-wide temporary directory for app.storage.
pytest_plugins = ["nicegui.testing.user_plugin"]

NODE = "SH01"
BRANCH = "南京西路店"
OWNER = ("boss", "boss-secret")
CASHIER = ("cashier1", "cashier-secret")


@dataclass
class CounterApp:
    user: User
    shop: Shop
    reader: ScriptedReader
    data_dir: Path
    owner_id: str
    cashier_id: str

    @property
    def ledger(self) -> Ledger:
        return self.shop.ledger

    @property
    def node_owner(self) -> str:
        """The node's built-in owner, for setting up data without logging in."""
        return owner_of(NODE)

    async def login(self, name: str, password: str) -> None:
        """Log in through the login page, as a person would, and land on the counter."""
        await self.user.open("/login")
        self.user.find(marker="login-name").type(name)
        self.user.find(marker="login-password").type(password)
        self.user.find(marker="login").click()
        # The password check (scrypt) runs in a worker thread, then the page opens:
        # on a busy machine that takes longer than should_see's default 0.3 s.
        await self.user.should_see(marker="search", retries=100)

    async def logout(self) -> None:
        self.user.find(marker="logout").click()
        await self.user.should_see(marker="login")


def make_store(root: Path) -> tuple[Path, str, str]:
    """A node with a certificate, an owner and a cashier, and its branch's name."""
    data = root / NODE.lower()
    chain = root / "chain"
    init_chain(chain, "test")
    Ledger.create(data, NODE, "test")
    # Its owner adds operators (governance); enrolled a week ago, so a test may put
    # the chain's time a few days back (nothing is booked before a branch's enrolment).
    enrol(chain, data, NODE, head_office=True,
          not_before=dt.datetime.now(dt.UTC) - dt.timedelta(days=7))
    with Ledger.open(data) as ledger:
        owner = ledger.add_operator(ledger.owner, *OWNER, roles=["owner"])
        cashier = ledger.add_operator(ledger.owner, *CASHIER, roles=["cashier"])
        ledger.set_rule(ledger.owner, "branches", {NODE: BRANCH, "SH02": "徐家汇店"})
    return data, owner, cashier


@pytest_asyncio.fixture
async def counter_app(tmp_path: Path) -> AsyncIterator[CounterApp]:
    data, owner, cashier = make_store(tmp_path)
    config = Config(data, listen=("127.0.0.1", 0), api=("127.0.0.1", 0), mdns=False)
    reader = ScriptedReader()
    # As nicegui.testing.user_simulation, but with the pages built by the app itself
    # before the app's lifespan (which starts the node) begins.
    with nicegui_reset_globals():
        os.environ["NICEGUI_USER_SIMULATION"] = "true"
        try:
            prepare_simulation()
            shop = build(config, readers=[reader])
            ui.run(storage_secret="test secret")
            async with core.app.router.lifespan_context(core.app), httpx.AsyncClient(
                    transport=httpx.ASGITransport(core.app), base_url="http://test") as client:
                yield CounterApp(User(client), shop, reader, data, owner, cashier)
        finally:
            simulation_over()


def simulation_over() -> None:
    """Undo what a simulated app left in NiceGUI's globals. Its clients are deleted:
    NiceGUI's reset forgets them without deleting them, and a dialog's finalizer
    (nicegui.elements.dialog: a callback on a hidden element of its own page) then
    held every page of every test, so each app test of a worker ran slower than the
    last (6,000 objects a test; 1.1 s a test at the first, 2.5 s eighty tests on)."""
    for client in list(Client.instances.values()):
        with contextlib.suppress(KeyError):  # NiceGUI's own caveat on delete()
            client.delete()
    os.environ.pop("NICEGUI_USER_SIMULATION", None)
    ui.navigate = Navigate()
    ui.notify = notify
    ui.download = download


def parse_csv(data: bytes) -> list[list[str]]:
    assert data.startswith("\ufeff".encode()), "Excel needs the BOM to read UTF-8"
    return list(csv.reader(io.StringIO(data.decode("utf-8-sig"))))


async def downloaded(app: CounterApp, marker: str) -> bytes:
    """What the page hands the browser when the button marked `marker` is clicked."""
    app.user.find(marker=marker).click()
    return (await app.user.download.next()).content
