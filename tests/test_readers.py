"""Card readers without hardware: what keyboard-wedge readers and scanners type, the
scripted fake, and the PC/SC reader's lifecycle when pyscard itself is missing. The
PC/SC path against a real pcscd and a virtual card is in test_pcsc.py."""

from __future__ import annotations

import queue
import sys

import pytest

from reference_app.readers import PcscReader, ReaderEvent, ScriptedReader, WedgeParser

HANG_GUARD_S = 20  # waits end on an event; this only stops a broken test from hanging


def card(value: str) -> ReaderEvent:
    return ReaderEvent("card", value, "wedge")


def code(value: str) -> ReaderEvent:
    return ReaderEvent("code", value, "wedge")


@pytest.mark.parametrize(("typed", "expected"), [
    (";1234567890123456?", card("1234567890123456")),  # track 2
    (";6217001234567890=2512101?", card("6217001234567890")),  # PAN=expiry+service code
    ("%B6217001234567890^ZHANG/WEI^2512101?;6217001234567890=2512101?",
     card("6217001234567890")),  # both tracks: track 2 wins, same number
    ("%B6217001234567890^ZHANG/WEI^2512101?", card("6217001234567890")),  # track 1 only
    ("MC10001", card("C10001")),  # member QR/barcode with the prefix
    ("Mc10001", card("C10001")),  # card numbers are upper case in the ledger
    ("0012345678", card("0012345678")),  # 10-digit decimal UID of an RFID wedge reader
    ("  0012345678 ", card("0012345678")),
    ("6901234567892", code("6901234567892")),  # EAN-13 product barcode
    ("12345", code("12345")),  # digits of no card length
    ("M", code("M")),  # the prefix alone is not a member
    ("VOUCHER-88", code("VOUCHER-88")),
    (";12AB?", code(";12AB?")),  # not a track 2: letters
    ("１２３４５６７８９０", code("１２３４５６７８９０")),  # full-width digits are not a card
])
def test_a_typed_line_becomes_a_card_or_a_code(typed: str, expected: ReaderEvent) -> None:
    assert WedgeParser().feed(typed + "\n") == expected


def test_keystrokes_add_up_until_enter() -> None:
    parser = WedgeParser()
    assert [parser.feed(ch) for ch in ";0012345678?"] == [None] * 12
    assert parser.feed("\r\n") == card("0012345678")
    assert parser.feed("\n") is None  # an empty line is nothing
    # Two lines in one chunk: the first is returned, the second waits for its Enter...
    assert parser.feed("MC1\nMC2") == card("C1")
    assert parser.feed("\n") == card("C2")


def test_prefix_and_card_lengths_are_configurable() -> None:
    parser = WedgeParser(member_prefix="VIP:", card_lengths=(8, 16))
    assert parser.parse("VIP:c10001") == card("C10001")
    assert parser.parse("MC10001") == code("MC10001")
    assert parser.parse("12345678") == card("12345678")
    assert parser.parse("0012345678") == code("0012345678")
    assert WedgeParser(member_prefix="").parse("MC10001") == code("MC10001")


def test_scripted_reader_emits_what_the_test_feeds() -> None:
    got: list[ReaderEvent] = []
    reader = ScriptedReader("desk")
    with pytest.raises(RuntimeError):
        reader.insert("C10001")  # not started: nobody listens, and the test is wrong
    reader.start(got.append)
    reader.insert("C10001")
    reader.scan("6901234567892")
    reader.remove()
    reader.set_status("Reader unplugged", "读卡器已拔出")
    assert got == [ReaderEvent("card", "C10001", "desk"),
                   ReaderEvent("code", "6901234567892", "desk"),
                   ReaderEvent("removed", "", "desk"),
                   ReaderEvent("status", "Reader unplugged", "desk")]
    assert (reader.status, reader.status_zh) == ("Reader unplugged", "读卡器已拔出")
    reader.stop()


def test_pcsc_reader_without_pyscard_says_so_and_stops_cleanly(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # None in sys.modules makes `import smartcard...` raise ImportError, as on a machine
    # where pyscard is not installed.
    monkeypatch.setitem(sys.modules, "smartcard", None)
    monkeypatch.setitem(sys.modules, "smartcard.scard", None)
    events: queue.Queue[ReaderEvent] = queue.Queue()
    reader = PcscReader(retry_s=0.05)
    reader.start(events.put)  # does not raise
    event = events.get(timeout=HANG_GUARD_S)
    assert event == ReaderEvent("status", reader.status, "pcsc")
    assert "pyscard" in reader.status and "type the card number" in reader.status
    assert "pyscard" in reader.status_zh
    reader.stop()
    assert reader.status == "Card reader stopped"
    with pytest.raises(RuntimeError):  # a reader is started once at a time
        reader.start(events.put)
        reader.start(events.put)
    reader.stop()



def test_several_lines_in_one_chunk_come_out_one_per_call() -> None:
    parser = WedgeParser()
    assert parser.feed("MC1\nMC2\n") == card("C1")
    assert parser.feed("") == card("C2")
    assert parser.feed("") is None
