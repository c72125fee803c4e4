"""The PC/SC path end to end: the real pcscd with the real vpcd reader driver (Debian's
vsmartcard-vpcd), a virtual card (tests/vcard.py) connecting to vpcd as the card going
onto the reader, and `PcscReader` reading its UID through pyscard.

The tests start their own `pcscd --foreground` (as root, like CI) and stop it afterwards;
stopping and restarting it is part of what they check. A pcscd that some other process
started cannot be stopped by them, and they say so rather than pass without checking.

Their pcscd reads its own copy of vpcd's reader.conf, with vpcd's port moved below the
kernel's ephemeral range: at the installed 35963, one of the thousands of client sockets
the other tests open (or one in TIME_WAIT) can hold the port when vpcd binds, and the
reader never appears (a CI run failed that way).
"""

from __future__ import annotations

import asyncio
import os
import queue
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from app_fixtures import CASHIER, CounterApp
from conftest import free_port
from vcard import GET_UID, VirtualCard

from reference_app.readers import PcscReader, ReaderEvent

PCSCD_SOCKET = Path("/run/pcscd/pcscd.comm")
VPCD_CONF = Path("/etc/reader.conf.d/vpcd")
VPCD_READER = "Virtual PCD 00 00"  # the reader vpcd serves on the port of its conf
UID = bytes.fromhex("04A1B2C3D4E5F6")  # a 7-byte NFC UID, as MIFARE DESFire/NTAG have
HANG_GUARD_S = 20  # every wait ends on an event; this only stops a broken test hanging
PAGE_RETRIES = HANG_GUARD_S * 10  # NiceGUI's should_see looks every 0.1 s

Events = queue.Queue[ReaderEvent]


def accepting(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        try:
            s.connect(str(path))
        except OSError:
            return False
    return True


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + HANG_GUARD_S
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting for {what}")
        time.sleep(0.05)


def vpcd_conf(directory: Path, port: int) -> Path:
    """The installed vpcd reader.conf, listening on `port`, as the only file of a
    reader.conf.d directory for `pcscd --config`."""
    lines = []
    for line in VPCD_CONF.read_text().splitlines():
        key = line.split(maxsplit=1)[0] if line.strip() else ""
        if key == "DEVICENAME":
            line = f"DEVICENAME   /dev/null:{port:#06x}"
        elif key == "CHANNELID":
            line = f"CHANNELID    {port:#06x}"
        lines.append(line)
    (directory / "vpcd").write_text("\n".join(lines) + "\n")
    return directory


class Pcscd:
    """The pcscd these tests own: started in the foreground, stopped by its pid."""

    def __init__(self, conf_dir: Path, vpcd_port: int) -> None:
        self.conf_dir = conf_dir
        self.vpcd_port = vpcd_port
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        assert self.process is None
        self.process = subprocess.Popen(
            [shutil.which("pcscd") or "/usr/sbin/pcscd", "--foreground",
             "--config", str(self.conf_dir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        process = self.process

        def up() -> bool:
            if process.poll() is not None:
                err = process.stderr.read().decode(errors="replace") if process.stderr else ""
                pytest.fail(f"pcscd exited with {process.returncode}: {err}")
            return accepting(PCSCD_SOCKET)

        wait_until(up, "pcscd's socket")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=HANG_GUARD_S)
            if self.process.stderr:
                self.process.stderr.close()
            self.process = None


@pytest.fixture(scope="module")
def pcscd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pcscd]:
    if not VPCD_CONF.exists():
        pytest.fail(f"{VPCD_CONF} is missing: install Debian's vsmartcard-vpcd (./run setup)")
    if accepting(PCSCD_SOCKET):
        pytest.fail("a pcscd these tests did not start is running; they must start and stop "
                    "their own: stop it first (systemctl stop pcscd.socket pcscd.service)")
    if os.geteuid() != 0:
        pytest.fail("starting pcscd needs root (it creates /run/pcscd); run as root, as CI does")
    port = free_port()  # below the ephemeral range
    daemon = Pcscd(vpcd_conf(tmp_path_factory.mktemp("reader.conf.d"), port), port)
    daemon.start()
    yield daemon
    daemon.stop()


@pytest.fixture
def reader() -> Iterator[tuple[PcscReader, Events]]:
    events: Events = queue.Queue()
    r = PcscReader(retry_s=0.2)  # retry often so a restarted pcscd is found soon
    r.start(events.put)
    yield r, events
    r.stop()


def next_event(events: Events, kind: str) -> ReaderEvent:
    """The next event of `kind`; status events on the way are the reader settling."""
    while True:
        try:
            event = events.get(timeout=HANG_GUARD_S)
        except queue.Empty:
            pytest.fail(f"no {kind!r} event came")
        if event.kind == kind:
            return event
        assert event.kind == "status", f"unexpected {event} while waiting for {kind!r}"


def wait_status(reader: PcscReader, events: Events, part: str) -> None:
    while part not in reader.status:
        try:
            event = events.get(timeout=HANG_GUARD_S)
        except queue.Empty:
            pytest.fail(f"the reader's status never said {part!r}; it says {reader.status!r}")
        assert event.kind == "status", f"unexpected {event} while waiting for {part!r}"


def insert(pcscd: Pcscd, uid: bytes | None) -> VirtualCard:
    """Put a card on the virtual reader: connect to vpcd once it listens."""
    card = VirtualCard(uid, port=pcscd.vpcd_port)

    def connected() -> bool:
        try:
            card.insert()
        except ConnectionRefusedError:
            return False
        return True

    wait_until(connected, f"vpcd listening on port {pcscd.vpcd_port}")
    return card


def test_inserted_card_gives_its_uid_and_removal_is_reported(
        pcscd: Pcscd, reader: tuple[PcscReader, Events]) -> None:
    r, events = reader
    wait_status(r, events, f"{VPCD_READER}")
    assert "ready" in r.status and "就绪" in r.status_zh

    card = insert(pcscd, UID)
    assert next_event(events, "card") == ReaderEvent("card", UID.hex().upper(),
                                                     f"pcsc:{VPCD_READER}")
    # The UID comes from FF CA 00 00 00 and nothing else (other apps on this machine may
    # read the card too: pcscd shares it).
    assert set(card.apdus) == {GET_UID}
    card.remove()
    assert next_event(events, "removed") == ReaderEvent("removed", "", f"pcsc:{VPCD_READER}")

    # A card that refuses the UID command: the cashier is told, nothing is looked up.
    card = insert(pcscd, None)
    wait_status(r, events, "could not be read")
    assert "6A81" in r.status and "type the card number" in r.status
    card.remove()
    assert next_event(events, "removed").source == f"pcsc:{VPCD_READER}"
    wait_status(r, events, "ready")

    # The same card again is read again: a swipe after a swipe is a new lookup.
    with insert(pcscd, UID):
        assert next_event(events, "card").value == UID.hex().upper()
    assert next_event(events, "removed").value == ""


def test_reader_tells_pcscd_is_down_and_works_again_when_it_is_back(
        pcscd: Pcscd, reader: tuple[PcscReader, Events]) -> None:
    r, events = reader
    wait_status(r, events, "ready")
    card = insert(pcscd, UID)
    next_event(events, "card")

    pcscd.stop()  # with the card on the reader: nobody can vouch for it now
    assert next_event(events, "removed").source == f"pcsc:{VPCD_READER}"
    wait_status(r, events, "pcscd")
    card.remove()
    assert "not running" in r.status and "type the card number" in r.status
    assert "pcscd" in r.status_zh

    # Quietly retrying: once pcscd is back the reader is ready and reads cards again.
    pcscd.start()
    wait_status(r, events, "ready")
    with insert(pcscd, UID):
        assert next_event(events, "card").value == UID.hex().upper()
    next_event(events, "removed")


def test_reader_started_before_pcscd_picks_it_up(pcscd: Pcscd) -> None:
    pcscd.stop()
    events: Events = queue.Queue()
    r = PcscReader(retry_s=0.2)
    try:
        r.start(events.put)  # pcscd missing: start does not raise, status says why
        wait_status(r, events, "not running")
        pcscd.start()
        wait_status(r, events, "ready")
        with insert(pcscd, UID):
            assert next_event(events, "card").value == UID.hex().upper()
    finally:
        r.stop()
    assert r.status == "Card reader stopped"


@pytest.mark.asyncio
async def test_inserting_the_card_shows_the_member_on_the_counter(
        pcscd: Pcscd, counter_app: CounterApp) -> None:
    app = counter_app
    card_no = UID.hex().upper()  # cards read by PC/SC are issued under their UID
    member = app.ledger.add_member(app.node_owner, name="李娜", phone="13900001111")
    app.ledger.issue_card(app.node_owner, member, card_no)
    app.ledger.topup(app.node_owner, member, 12345)
    # The fixture's shop has the scripted FAKE; give it the real PC/SC reader too,
    # started as the shop starts its readers (and stopped by the shop with them). The
    # shop's start runs as a background task: once it has started the fixture's reader,
    # it will not start this one a second time.
    deadline = time.monotonic() + HANG_GUARD_S
    while not app.reader.started:
        assert time.monotonic() < deadline, "the shop never started its readers"
        await asyncio.sleep(0.01)
    pcsc = PcscReader(retry_s=0.2)
    app.shop.readers.append(pcsc)
    pcsc.start(app.shop.reader_event)
    await app.login(*CASHIER)
    await app.user.should_see(marker="search")
    await app.user.should_not_see(marker="member-name")

    with insert(pcscd, UID):
        await app.user.should_see(marker="member-name", retries=PAGE_RETRIES)
        await app.user.should_see("李娜")
        await app.user.should_see("¥123.45")
    await app.user.should_see(f"读卡器 {VPCD_READER}", retries=PAGE_RETRIES)
