"""A member's sign-in to the members' pages lasts its two hours on the boot clock
(which runs on while the PC sleeps), whatever the shop PC's wall clock does: signed in
while the clock ran three days ahead, it lasted three days once the clock was set
right. One kept from before (a wall-clock deadline, or one set before the app
restarted) is over. The portal of tests/test_members_portal.py (a real node, NiceGUI's
simulated user)."""

from __future__ import annotations

import importlib
import time
import types

import pytest
from test_members_portal import CARD_A, PIN, PortalApp, portal_app  # noqa: F401

from crdtledger.hlc import boot_clock_s

pytestmark = pytest.mark.asyncio


def clocks(monkeypatch: pytest.MonkeyPatch, wall: float, boot: float,
           mono: float | None = None) -> None:
    """The portal module's wall, boot and monotonic clocks moved by these many seconds
    (the monotonic one as the boot clock unless told: it stops while the PC sleeps)."""
    module = importlib.import_module("reference_app.members_portal")
    monkeypatch.setattr(module, "time", types.SimpleNamespace(
        time=lambda: time.time() + wall,
        monotonic=lambda: time.monotonic() + (boot if mono is None else mono)))
    monkeypatch.setattr(module, "boot_clock_s", lambda: boot_clock_s() + boot)


async def signed_out(app: PortalApp) -> None:
    await app.user.open("/m")
    await app.user.should_see(marker="send-code")  # the sign-in form again
    await app.user.should_not_see(marker="member-name", retries=1)


async def test_a_sign_in_made_with_the_clock_ahead_ends_after_two_hours(
        portal_app: PortalApp, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    app = portal_app
    clocks(monkeypatch, 3 * 86400, 0)  # the PC 3 days ahead
    await app.card_sign_in(CARD_A, PIN)
    await app.user.should_see(marker="member-name")
    clocks(monkeypatch, 3600, 3600)  # set right; an hour on
    await app.user.open("/m")
    await app.user.should_see(marker="member-name")
    clocks(monkeypatch, 2 * 3600 + 60, 2 * 3600 + 60)
    await signed_out(app)


async def test_a_sign_in_ends_after_two_hours_of_a_pc_asleep(
        portal_app: PortalApp, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    """On the monotonic clock, which stops while the PC is suspended, a sign-in left
    open at closing time was still signed in the next morning."""
    app = portal_app
    await app.card_sign_in(CARD_A, PIN)
    await app.user.should_see(marker="member-name")
    clocks(monkeypatch, 10 * 3600, 10 * 3600, mono=1)  # a night asleep
    await signed_out(app)


async def test_a_sign_in_from_before_is_over(portal_app: PortalApp) -> None:  # noqa: F811
    """A deadline kept in the browser's storage by an earlier process (whose monotonic
    clock started elsewhere) or in wall-clock time (before this rule) is not trusted."""
    app = portal_app
    module = importlib.import_module("reference_app.members_portal")
    await app.card_sign_in(CARD_A, PIN)
    await app.user.should_see(marker="member-name")
    client = app.user.client
    assert client is not None
    with client:
        kept = dict(module.app.storage.user["member"])
    for before in ({**kept, "process": "an earlier one"},
                   {k: v for k, v in kept.items() if k not in ("deadline", "process")}
                   | {"until": time.time() + 3600}):
        with client:
            module.app.storage.user["member"] = before
        await signed_out(app)
