"""A member's sign-in to the members' pages lasts its two hours on the monotonic
clock, whatever the shop PC's wall clock does: signed in while the clock ran three
days ahead, it lasted three days once the clock was set right. One kept from before
(a wall-clock deadline, or one set before the app restarted) is over. The portal of
tests/test_members_portal.py (a real node, NiceGUI's simulated user)."""

from __future__ import annotations

import importlib
import time
import types

import pytest
from test_members_portal import CARD_A, PIN, PortalApp, portal_app  # noqa: F401

pytestmark = pytest.mark.asyncio


def clocks(wall: float, mono: float) -> types.SimpleNamespace:
    """The portal module's `time`, its clocks moved by these many seconds."""
    return types.SimpleNamespace(time=lambda: time.time() + wall,
                                 monotonic=lambda: time.monotonic() + mono)


async def signed_out(app: PortalApp) -> None:
    await app.user.open("/m")
    await app.user.should_see(marker="send-code")  # the sign-in form again
    await app.user.should_not_see(marker="member-name", retries=1)


async def test_a_sign_in_made_with_the_clock_ahead_ends_after_two_hours(
        portal_app: PortalApp, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    app = portal_app
    module = importlib.import_module("reference_app.members_portal")
    monkeypatch.setattr(module, "time", clocks(3 * 86400, 0))  # the PC 3 days ahead
    await app.card_sign_in(CARD_A, PIN)
    await app.user.should_see(marker="member-name")
    monkeypatch.setattr(module, "time", clocks(3600, 3600))  # set right; an hour on
    await app.user.open("/m")
    await app.user.should_see(marker="member-name")
    monkeypatch.setattr(module, "time", clocks(2 * 3600 + 60, 2 * 3600 + 60))
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
