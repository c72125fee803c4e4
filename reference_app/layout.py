"""The frame around every page: header, navigation, the cut-off banner, and the gate.

A page is `with frame(title, permission=...): ...`. Nobody logged in: the page sends
the browser to /login. Logged in without the permission: a plain notice instead of
the page. Either way the body still runs but is built into a detached container
that is thrown away before anything reaches the browser, so a page needs no guard
of its own (and the library refuses its writes anyway).
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any
from weakref import WeakKeyDictionary, WeakSet

from nicegui import app, ui
from nicegui.elements.mixins.value_element import ValueElement
from nicegui.storage import request_contextvar

from crdtledger.errors import LedgerError
from reference_app.i18n import LANGS, Lang, lang, set_lang, tr
from reference_app.readers import ReaderEvent
from reference_app.shop import ReaderPages, log_out, operator, page_built_for, shop


@dataclass(frozen=True)
class NavEntry:
    path: str
    zh: str
    en: str
    permission: str | None
    icon: str


_nav: dict[str, NavEntry] = {}
_banner_source: Callable[[], str | None] | None = None
BANNER_REFRESH_S = 2.0
PRIMARY = "#00796b"  # teal, as the header


# The containers `frame` builds a page into when it will not be shown (nobody logged in,
# or no permission), deleted once built.
_HIDDEN: WeakSet[ui.element] = WeakSet()


def shown() -> bool:
    """Whether what is being built now reaches the browser: not inside a page that
    `frame` builds into a container it throws away."""
    here = ui.context.slot.parent
    return not any(el in _HIDDEN for el in here.ancestors(include_self=True))


def follow(registry: set[Callable[..., None]], fn: Callable[..., None]) -> None:
    """Call `fn` with what `registry` reports (Shop.watchers: the store changed) as this
    page, until it goes (`_as_page`); a page never shown (`shown`) follows nothing."""
    if not shown():
        return
    registry.add(as_page := _as_page(fn))
    ui.context.client.on_delete(lambda: registry.discard(as_page))


def follow_reader(pages: ReaderPages, fn: Callable[..., None]) -> Callable[..., None]:
    """`follow` the card reader of this node's machine (Shop.listeners): this page
    takes it as ReaderPages.open says once its browser is connected (a page fetched and
    never shown, a probe's, held the reader), every page then told to look again
    (a status event), and may `claim` it by what this returns. A page built to be
    thrown away (`shown`: / opened logged out) takes nothing: it held the reader, a
    swipe went to a page nobody saw, and its deleted elements were told of every
    status."""
    client = ui.context.client
    if not shown():
        return _as_page(fn)
    peer = client.request.client if client.request is not None else None
    here = peer is not None and peer.host in ("127.0.0.1", "::1", "localhost")
    browser = str(app.storage.browser.get("id", ""))
    as_page = _as_page(fn)

    def connected() -> None:
        pages.open(as_page, browser, here)
        shop().reader_event(ReaderEvent("status", "", "page"))

    client.on_connect(connected)
    client.on_delete(lambda: pages.discard(as_page))
    return as_page


def _as_page(fn: Callable[..., None]) -> Callable[..., None]:
    """`fn` run as this page: its browser session and its client. A swipe on the PC/SC
    reader comes from the reader's thread through the loop, with no request of its own:
    a page that did not take its session had no operator (the check-in page wrote
    nothing), or the session of whichever page ran before it."""
    client = ui.context.client
    request = client.request

    def as_page(*args: Any) -> None:
        request_contextvar.set(request)
        with client:
            fn(*args)

    return as_page


def nav(path: str, zh: str, en: str, permission: str | None, icon: str) -> None:
    """Register a page in the navigation drawer (shown to operators allowed to see it)."""
    _nav[path] = NavEntry(path, zh, en, permission, icon)


def reset() -> None:
    """Forget registrations: `app.build` starts from nothing (tests build many apps)."""
    global _banner_source
    _nav.clear()
    _banner_source = None


def set_banner_source(fn: Callable[[], str | None]) -> None:
    global _banner_source
    _banner_source = fn


def banner_state() -> str | None:
    """The cut-off banner's text, or None when this branch is in touch with the others."""
    return _banner_source() if _banner_source is not None else None


@contextmanager
def frame(title: str, *, permission: str | None = None) -> Iterator[ui.column]:
    op = operator()
    if op is not None:
        page_built_for(op)
    allowed = op is not None and (permission is None
                                  or permission in shop().ledger.permissions(op))
    if op is not None:
        _header(title, op)
    if allowed:
        with ui.column().classes("w-full max-w-screen-2xl mx-auto p-4 gap-4") as body:
            yield body
        return
    if op is None:
        ui.navigate.to("/login")
    else:
        with ui.card().classes("mx-auto mt-16 p-8 items-center"):
            ui.icon("block", size="3rem", color="negative")
            ui.label(tr("您没有打开「{title}」的权限，请找店长。",
                        "You are not allowed to open “{title}”; ask a manager.",
                        title=title)).classes("text-lg")
            ui.button(tr("回到收银台", "Back to the counter"),
                      on_click=lambda: ui.navigate.to("/")).props("flat")
    # Build the page into a container that never reaches the browser.
    with ui.column() as hidden, suppress(LedgerError):
        _HIDDEN.add(hidden)
        yield hidden
    hidden.delete()


# How many times each dialog closed (`once`), by one handler per dialog.
_CLOSES: WeakKeyDictionary[ui.dialog, int] = WeakKeyDictionary()


def _closes_of(dialog: ui.dialog) -> int:
    if dialog not in _CLOSES:
        _CLOSES[dialog] = 0

        def closed(e: Any) -> None:
            if not e.value:
                _CLOSES[dialog] = _CLOSES.get(dialog, 0) + 1

        dialog.on_value_change(closed)
    return _CLOSES[dialog]


def one_approval(password: ui.input, figures: Callable[[], Any],
                 *inputs: ValueElement[Any]) -> None:
    """An approver's password approves the figures it was typed for: it is cleared
    when they change (`figures` read as any of `inputs` changes); callers clear it
    after each attempt too. Kept, a cashier changed the amount after the approver
    had typed it, or used it again after a refusal."""
    last = [figures()]

    def changed(_e: Any) -> None:
        now = figures()
        if now != last[0]:
            last[0] = now
            password.set_value("")

    for el in inputs:
        el.on_value_change(changed)


def once(button: ui.button, action: Callable[[], Awaitable[Any] | Any],
         dialog: ui.dialog | None = None) -> ui.button:
    """Make `button` run `action` once at a time (and never once its dialog has closed);
    returns the button. Every button that writes money,
    rights, stock, approvals or operators goes through this one guard.

    A double click, or an impatient one while the write waits for the node (or for
    another branch's rights, or for an approver's password to be checked), would
    have written twice: a second correction, a second sale, an approval given twice.
    A write takes a few milliseconds, so the second click of a double click often
    comes after the first is done: in a dialog, the first has closed it by then and
    the second does nothing; on a page, the first has cleared its form or redrawn
    its row (a decided approval loses its buttons, and the browser sends no click
    for a button that is gone). A button merely redrawn since the click (a page
    refreshed between the click and this handler) still acts: that click was real."""
    busy = False
    # Closed is for good: the browser can set the dialog's value again (a socket
    # event), and a finished top-up's dialog, its approver's password still in it, ran
    # again for a million with nobody asked. Counted by one handler a dialog (a dialog
    # refilled for each use added one per button, each open slower than the last).
    made_at = _closes_of(dialog) if dialog is not None else 0

    async def run() -> None:
        nonlocal busy
        if busy or (dialog is not None and (not dialog.value
                                            or _CLOSES[dialog] != made_at)):
            return
        busy = True
        button.props("loading")
        try:
            done = action()
            if inspect.isawaitable(done):
                await done
        finally:
            busy = False
            if not button.is_deleted:
                button.props(remove="loading")

    button.on_click(run)
    return button


def _header(title: str, op: str) -> None:
    s = shop()
    ui.colors(primary=PRIMARY)
    drawer = ui.left_drawer(value=False).classes("bg-grey-1")
    with ui.header(elevated=True).classes("items-center gap-3 py-2 px-4 bg-teal-800"):
        ui.button(icon="menu", on_click=drawer.toggle).props("flat round color=white")
        ui.label(s.branch_name(s.node.node_id)).classes("text-lg font-bold")
        ui.label(title).classes("text-lg opacity-80")
        ui.space()
        ui.icon("person").classes("text-xl")
        ui.label(s.operator_name(op)).classes("text-base")
        other: Lang = "en" if lang() == "zh" else "zh"
        ui.button(LANGS[other], icon="translate", on_click=lambda: _switch(other)) \
            .props("flat color=white no-caps").mark("lang")
        ui.button(tr("退出", "Log out"), icon="logout", on_click=_logout) \
            .props("flat color=white no-caps").mark("logout")
    perms = s.ledger.permissions(op)  # `op` is the session's, checked by frame: once
    with drawer:
        for entry in [NavEntry("/", "收银台", "Counter", None, "point_of_sale"),
                      *_nav.values()]:
            if entry.permission is None or entry.permission in perms:
                ui.button(tr(entry.zh, entry.en), icon=entry.icon,
                          on_click=lambda p=entry.path: ui.navigate.to(p)) \
                    .props("flat align=left no-caps").classes("w-full")
    banner = ui.label().classes(
        "w-full text-center text-white bg-red-700 py-2 text-base font-bold")

    def refresh() -> None:
        text = banner_state()
        banner.set_text(text or "")
        banner.set_visibility(bool(text))

    refresh()
    ui.timer(BANNER_REFRESH_S, refresh)


def _switch(value: Lang) -> None:
    set_lang(value)
    ui.navigate.reload()


def _logout() -> None:
    log_out()
    ui.navigate.to("/login")
