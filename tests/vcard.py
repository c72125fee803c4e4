"""A small virtual contactless card for the vsmartcard `vpcd` reader driver.

pcscd loads vpcd (Debian's `vsmartcard-vpcd`, /etc/reader.conf.d/vpcd), which listens
on TCP port 35963 for "Virtual PCD 00 00". A card is inserted by connecting to that port
and removed by closing the connection. vpcd then speaks a tiny protocol: every message is
a 2-byte big-endian length and a body; a 1-byte body is a control message (0x00 power
off, 0x01 power on, 0x02 reset: no answer; 0x04: answer the ATR); anything longer is a
command APDU, answered with a response APDU. vpcd asks for the ATR every ~400 ms to see
whether the card is still there.

This card answers the PC/SC "get data: UID" pseudo-APDU `FF CA 00 00 00` (which a
contactless reader answers itself in real life) with its UID and 90 00, and everything
else with 6D 00 (instruction not supported). A card built with `uid=None` answers the UID
command with 6A 81 (function not supported), like a card whose reader cannot tell its UID.

    python tests/vcard.py --uid 04A1B2C3 [--port 35963]    # inserts it until Ctrl-C
"""

from __future__ import annotations

import argparse
import contextlib
import socket
import struct
import threading

VPCD_PORT = 35963
GET_UID = bytes.fromhex("FFCA000000")
# The ATR PC/SC part 3 gives a MIFARE Classic 1K on a contactless reader (ACR122U etc.).
MIFARE_ATR = bytes.fromhex("3B8F8001804F0CA000000306030001000000006A")
OK = b"\x90\x00"
NOT_SUPPORTED = b"\x6a\x81"
UNKNOWN_INSTRUCTION = b"\x6d\x00"

CTRL_OFF, CTRL_ON, CTRL_RESET, CTRL_ATR = 0x00, 0x01, 0x02, 0x04


class VirtualCard:
    """One card; `insert()` connects it to vpcd, `remove()` takes it away."""

    def __init__(self, uid: bytes | None, *, port: int = VPCD_PORT, atr: bytes = MIFARE_ATR):
        self.uid = uid
        self.port = port
        self.atr = atr
        self.apdus: list[bytes] = []  # every command APDU received, for tests to inspect
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None

    def answer(self, apdu: bytes) -> bytes:
        if apdu == GET_UID:
            return self.uid + OK if self.uid is not None else NOT_SUPPORTED
        return UNKNOWN_INSTRUCTION

    def insert(self) -> None:
        if self._sock is not None:
            raise RuntimeError("the card is already inserted")
        self._sock = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        self._sock.settimeout(None)  # vpcd may stay quiet for as long as it likes
        self._thread = threading.Thread(target=self._serve, args=(self._sock,),
                                        name="virtual-card", daemon=True)
        self._thread.start()

    def remove(self) -> None:
        sock, thread = self._sock, self._thread
        self._sock = self._thread = None
        if sock is not None:
            # shutdown wakes the serving thread blocked in recv; close alone may not.
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        if thread is not None:
            thread.join(timeout=5)

    def __enter__(self) -> VirtualCard:  # `with card:` keeps it on the reader
        if self._sock is None:
            self.insert()
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def _serve(self, sock: socket.socket) -> None:
        with contextlib.suppress(OSError):  # the connection ends: the card was removed
            while True:
                body = _recv_message(sock)
                if body is None:
                    return
                if len(body) == 1:
                    if body[0] == CTRL_ATR:
                        _send_message(sock, self.atr)
                    continue  # power off / on / reset need no answer
                self.apdus.append(body)
                _send_message(sock, self.answer(body))


def _recv_exactly(sock: socket.socket, n: int) -> bytes | None:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def _recv_message(sock: socket.socket) -> bytes | None:
    head = _recv_exactly(sock, 2)
    if head is None:
        return None
    (length,) = struct.unpack(">H", head)
    return _recv_exactly(sock, length)


def _send_message(sock: socket.socket, body: bytes) -> None:
    sock.sendall(struct.pack(">H", len(body)) + body)


def main() -> None:
    parser = argparse.ArgumentParser(description="insert a virtual card into vpcd")
    parser.add_argument("--uid", required=True, help="the card's UID in hex, e.g. 04A1B2C3")
    parser.add_argument("--port", type=int, default=VPCD_PORT)
    args = parser.parse_args()
    card = VirtualCard(bytes.fromhex(args.uid), port=args.port)
    card.insert()
    print(f"card {args.uid.upper()} inserted into vpcd on port {args.port}; Ctrl-C removes it")
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        card.remove()


if __name__ == "__main__":
    main()
