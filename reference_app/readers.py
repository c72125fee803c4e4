"""Card readers at the counter, behind one small interface.

A reader turns what happens at the desk into `ReaderEvent`s: a card number to look up
("card"), a card taken away ("removed"), a product or other code ("code"), or a change
of the reader's state worth telling the cashier ("status"). Three kinds exist:

- `PcscReader`: contactless/contact readers through PC/SC (pcscd + pyscard). A background
  thread waits on `SCardGetStatusChange` and reads each inserted card's UID with the
  PC/SC pseudo-APDU `FF CA 00 00 00`. Nothing about PC/SC is required: without pyscard,
  without pcscd or without a reader plugged in, `status` says so in a sentence for the
  cashier (who keeps working by manual entry) and the thread quietly retries every few
  seconds, so a reader plugged in or a pcscd started later just starts working.
- `WedgeParser`: keyboard-wedge card readers and barcode/QR scanners type fast and end
  with Enter; the page feeds what was typed, the parser tells cards from product codes.
- `ScriptedReader`: a FAKE for tests, which emits whatever the test tells it to.

Status texts exist in English (`status`, the interface's) and Simplified Chinese
(`status_zh`), because readers run per process while the language is per session.
"""

from __future__ import annotations

import importlib
import logging
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from types import ModuleType
from typing import Literal, Protocol

log = logging.getLogger(__name__)

EventKind = Literal["card", "removed", "code", "status"]


@dataclass(frozen=True)
class ReaderEvent:
    kind: EventKind  # card = a card number/UID to look up; code = a product/other code
    value: str  # card number / UID hex (upper case) / code / status text (English)
    source: str  # "pcsc:<reader name>", "wedge", "manual", "scripted"


Emit = Callable[[ReaderEvent], None]


class Reader(Protocol):
    def start(self, emit: Emit) -> None:
        """Begin reporting; `emit` may be called from a background thread."""

    def stop(self) -> None: ...

    @property
    def status(self) -> str:
        """The reader's state as a sentence for the cashier (English)."""
        ...

    @property
    def status_zh(self) -> str:
        """The same sentence in Simplified Chinese."""
        ...


@dataclass(frozen=True)
class _Status:
    en: str
    zh: str


_SEARCHING = _Status("Looking for card readers…", "正在查找读卡器…")
_NO_PYSCARD = _Status(
    "Card reader support (pyscard) is not installed: type the card number instead",
    "未安装读卡器支持（pyscard），请手动输入卡号")
_NO_PCSCD = _Status(
    "The card reader service (pcscd) is not running: type the card number instead",
    "读卡器服务（pcscd）未运行，请手动输入卡号")
_NO_READER = _Status(
    "No card reader is connected: type the card number instead",
    "没有连接读卡器，请手动输入卡号")
_STOPPED = _Status("Card reader stopped", "读卡器已停止")


def _ready(names: Iterable[str]) -> _Status:
    joined = ", ".join(names)
    return _Status(f"Card reader {joined} ready", f"读卡器 {joined} 已就绪")


def _unreadable(reader: str, why: str) -> _Status:
    return _Status(
        f"The card on {reader} could not be read ({why}): hold it still and try again, "
        "or type the card number",
        f"{reader} 上的卡读取失败（{why}），请放稳重试或手动输入卡号")


# --- PC/SC --------------------------------------------------------------------------

GET_UID = [0xFF, 0xCA, 0x00, 0x00, 0x00]  # PC/SC part 3 "get data": the card's UID
PNP_NOTIFICATION = "\\\\?PnP?\\Notification"  # pseudo reader: changes when readers come/go
RETRY_S = 3.0  # how often to try again while pyscard/pcscd/a reader is missing
WAIT_MS = 2000  # longest blocking wait; also bounds how stale the reader list can get


class _Stated:
    """The `Reader.status` pair, read from the one `_Status` a reader keeps current."""

    _status: _Status

    @property
    def status(self) -> str:
        return self._status.en

    @property
    def status_zh(self) -> str:
        return self._status.zh


class PcscReader(_Stated):
    """Every PC/SC reader of this machine, watched by one background thread."""

    def __init__(self, *, retry_s: float = RETRY_S) -> None:
        self._retry_s = retry_s
        self._status = _SEARCHING
        self._emit: Emit | None = None
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # guards _context against stop() cancelling it
        self._context: int | None = None
        self._scard: ModuleType | None = None
        self._unreadable = False  # the status tells of a card that could not be read

    def start(self, emit: Emit) -> None:
        if self._thread is not None:
            raise RuntimeError("this reader is already started")
        self._emit = emit
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name="pcsc-reader", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        thread, self._thread = self._thread, None
        deadline = time.monotonic() + WAIT_MS / 1000 + 5
        while thread is not None and thread.is_alive() and time.monotonic() < deadline:
            # Cancelling wakes SCardGetStatusChange at once; a cancel that lands just
            # before the thread enters its wait is lost, so cancel until it has ended.
            with self._lock:
                if self._context is not None and self._scard is not None:
                    self._scard.SCardCancel(self._context)
            thread.join(timeout=0.05)
        self._status = _STOPPED

    # The thread: one PC/SC context per "session"; a session ends when pcscd goes away.

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                self._session()
            except Exception:  # a bug or an unexpected PC/SC error must not kill the thread
                log.exception("PC/SC reader loop failed; retrying")
            self._stopping.wait(self._retry_s)

    def _session(self) -> None:
        scard = self._load()
        if scard is None:
            self._set_status(_NO_PYSCARD)
            return
        result, context = scard.SCardEstablishContext(scard.SCARD_SCOPE_USER)
        if _code(result) != scard.SCARD_S_SUCCESS:
            self._set_status(_NO_PCSCD)
            return
        with self._lock:
            if self._stopping.is_set():
                scard.SCardReleaseContext(context)
                return
            self._context = context
        try:
            self._watch(scard, context)
        finally:
            with self._lock:
                self._context = None
            scard.SCardReleaseContext(context)

    def _load(self) -> ModuleType | None:
        if self._scard is None:
            try:
                self._scard = importlib.import_module("smartcard.scard")
            except ImportError:
                return None
        return self._scard

    def _watch(self, scard: ModuleType, context: int) -> None:
        known: dict[str, int] = {}  # reader name -> its last event state
        try:
            self._follow(scard, context, known)
        finally:
            # pcscd went away (or we stop): a card on a reader we cannot see is no card.
            self._unreadable = False
            for reader, state in known.items():
                if state & scard.SCARD_STATE_PRESENT:
                    self._send(ReaderEvent("removed", "", f"pcsc:{reader}"))

    def _follow(self, scard: ModuleType, context: int, known: dict[str, int]) -> None:
        pnp_state = scard.SCARD_STATE_UNAWARE
        while not self._stopping.is_set():
            result, readers = scard.SCardListReaders(context, [])
            code = _code(result)
            if code == scard.SCARD_E_NO_READERS_AVAILABLE:
                readers = []
            elif code != scard.SCARD_S_SUCCESS:
                self._set_status(_NO_PCSCD)
                return
            for gone in set(known) - set(readers):  # unplugged: its card went with it
                if known.pop(gone) & scard.SCARD_STATE_PRESENT:
                    self._send(ReaderEvent("removed", "", f"pcsc:{gone}"))
            if not readers:
                self._set_status(_NO_READER)
            elif not self._unreadable:  # "could not be read" stays until that card goes
                self._set_status(_ready(readers))
            states = [(r, known.get(r, scard.SCARD_STATE_UNAWARE)) for r in readers]
            states.append((PNP_NOTIFICATION, pnp_state))
            result, changed = scard.SCardGetStatusChange(context, WAIT_MS, states)
            code = _code(result)
            if code in (scard.SCARD_E_TIMEOUT, scard.SCARD_E_CANCELLED,
                        scard.SCARD_E_UNKNOWN_READER):
                continue  # nothing happened / stop() / a reader vanished: look again
            if code != scard.SCARD_S_SUCCESS:
                self._set_status(_NO_PCSCD)  # pcscd stopped under us
                return
            for reader, event, _atr in changed:
                event &= ~scard.SCARD_STATE_CHANGED
                log.debug("%s: state %#x", reader, event)
                if reader == PNP_NOTIFICATION:
                    pnp_state = event
                    continue
                was_present = known.get(reader, 0) & scard.SCARD_STATE_PRESENT
                known[reader] = event
                if event & scard.SCARD_STATE_PRESENT and not was_present:
                    self._read_uid(scard, context, reader)
                elif was_present and not event & scard.SCARD_STATE_PRESENT:
                    self._unreadable = False
                    self._send(ReaderEvent("removed", "", f"pcsc:{reader}"))

    def _read_uid(self, scard: ModuleType, context: int, reader: str) -> None:
        source = f"pcsc:{reader}"
        result, card, protocol = scard.SCardConnect(
            context, reader, scard.SCARD_SHARE_SHARED,
            scard.SCARD_PROTOCOL_T0 | scard.SCARD_PROTOCOL_T1)
        if _code(result) != scard.SCARD_S_SUCCESS:
            self._card_unreadable(reader, scard.SCardGetErrorMessage(result).strip())
            return
        try:
            result, response = scard.SCardTransmit(card, protocol, GET_UID)
        finally:
            scard.SCardDisconnect(card, scard.SCARD_LEAVE_CARD)
        if _code(result) != scard.SCARD_S_SUCCESS:
            self._card_unreadable(reader, scard.SCardGetErrorMessage(result).strip())
            return
        data, sw = bytes(response[:-2]), bytes(response[-2:])
        if sw != b"\x90\x00" or not data:
            self._card_unreadable(reader, f"status {sw.hex().upper() or 'none'}")
            return
        self._unreadable = False
        self._send(ReaderEvent("card", data.hex().upper(), source))

    def _card_unreadable(self, reader: str, why: str) -> None:
        self._unreadable = True
        self._set_status(_unreadable(reader, why))

    def _set_status(self, status: _Status) -> None:
        if status != self._status:
            log.info("%s", status.en)
            self._status = status
            self._send(ReaderEvent("status", status.en, "pcsc"))

    def _send(self, event: ReaderEvent) -> None:
        if self._emit is None or self._stopping.is_set():
            return
        try:
            self._emit(event)
        except Exception:  # the app's handler failing must not stop the reader
            log.exception("handling %s failed", event)


def _code(result: int) -> int:
    """PC/SC results as the unsigned 32-bit codes pyscard's constants use."""
    return result & 0xFFFFFFFF


# --- keyboard wedge and scanners --------------------------------------------------------

_TRACK2 = re.compile(r";([0-9]{1,37})(?:=[0-9]*)?\?")  # ;PAN[=expiry and more]?
_TRACK1 = re.compile(r"%B([0-9]{1,19})\^")  # %BPAN^NAME^...?


class WedgeParser:
    """What a keyboard-wedge reader or scanner typed, turned into an event.

    Wedge devices type their data and finish with Enter. `feed` takes the text as it
    arrives (a keystroke, a chunk, or a whole line) and returns an event once a line is
    complete (one per call: after a chunk of several lines, `feed("")` gives the next);
    `parse` takes one line without its Enter, as from a search box:

    - magnetic stripe: track 2 `;1234567890=2512?` (or only track 1 `%B1234^NAME^...?`)
      → "card" with the account number;
    - text starting with `member_prefix` (default "M", as printed in member QR codes and
      barcodes) → "card" with the rest;
    - digits only, of one of `card_lengths` (default 10: the decimal UID most RFID wedge
      readers type) → "card";
    - anything else (EAN-13 product barcodes, voucher codes...) → "code".
    """

    def __init__(self, *, member_prefix: str = "M",
                 card_lengths: Iterable[int] = (10,)) -> None:
        self.member_prefix = member_prefix
        self.card_lengths = frozenset(card_lengths)
        self._pending = ""

    def feed(self, text: str) -> ReaderEvent | None:
        self._pending += text
        if "\n" not in self._pending and "\r" not in self._pending:
            return None
        line, _, rest = re.split(r"([\r\n]+)", self._pending, maxsplit=1)
        self._pending = rest.lstrip("\r\n")
        return self.parse(line)

    def parse(self, line: str) -> ReaderEvent | None:
        """One complete line (without Enter) → its event; None for an empty line."""
        line = line.strip()
        if not line:
            return None
        if m := _TRACK2.search(line) or _TRACK1.search(line):
            return ReaderEvent("card", m.group(1), "wedge")
        if self.member_prefix and line.startswith(self.member_prefix) \
                and len(line) > len(self.member_prefix):
            return ReaderEvent("card", line[len(self.member_prefix):].upper(), "wedge")
        if line.isascii() and line.isdigit() and len(line) in self.card_lengths:
            return ReaderEvent("card", line, "wedge")
        return ReaderEvent("code", line, "wedge")


# --- the fake ------------------------------------------------------------------------------


class ScriptedReader(_Stated):
    """FAKE reader for tests: emits exactly what the test asks, on the caller's thread."""

    def __init__(self, name: str = "scripted") -> None:
        self.name = name
        self._emit: Emit | None = None
        self._status = _Status(f"Test reader {name} ready", f"测试读卡器 {name} 已就绪")

    def start(self, emit: Emit) -> None:
        self._emit = emit

    def stop(self) -> None:
        self._emit = None

    @property
    def started(self) -> bool:
        """The shop has started it (NiceGUI runs the shop's start as a background task,
        so a test may be on its page before that)."""
        return self._emit is not None

    def emit(self, event: ReaderEvent) -> None:
        if self._emit is None:
            raise RuntimeError("the scripted reader is not started")
        self._emit(event)

    def insert(self, card_no: str) -> None:
        self.emit(ReaderEvent("card", card_no, self.name))

    def remove(self) -> None:
        self.emit(ReaderEvent("removed", "", self.name))

    def scan(self, code: str) -> None:
        self.emit(ReaderEvent("code", code, self.name))

    def set_status(self, en: str, zh: str | None = None) -> None:
        self._status = _Status(en, zh or en)
        self.emit(ReaderEvent("status", en, self.name))


def start_readers(emit: Emit) -> list[Reader]:
    """Start every reader this machine may have; never raises for missing hardware.

    Today that is the PC/SC reader, which reports pyscard/pcscd/reader problems in its
    status and keeps looking. Wedge readers need no starting: they type into the page.
    """
    reader = PcscReader()
    reader.start(emit)  # only starts its thread; everything that can fail happens there
    return [reader]
