"""A receipt printer you can watch: a TCP listener that takes what an ESC/POS network
printer would (raw jobs on port 9100) and shows it as text.

The demo starts one for its three branches (reference_app/demo.py) and tests print
to one on a free port: each connection is one job, read to its end; the ESC/POS
commands are taken out (their arguments too, so no control byte reaches the text),
the text decoded as GB18030 (what Chinese printers take after FS &), and the data of
a QR code the printer would draw (GS ( k, functions 80 and 81) kept, and shown as a
line where it is drawn. A
page cut ends a receipt. Nothing here pretends to print: it is what a person sees
on the paper, minus the fonts.

    python -m peer.printer_listener --port 9100 [--out receipts.txt]
"""

from __future__ import annotations

import argparse
import socket
import socketserver
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ESC, GS, FS, DLE = 0x1B, 0x1D, 0x1C, 0x10
READ_TIMEOUT_S = 10.0  # a job that stops sending without closing is over after this
MAX_JOB = 4 * 1024 * 1024  # a receipt is a few KB; an image a few hundred


@dataclass
class Printout:
    """One job as the paper would show it."""

    text: str
    qr: list[str] = field(default_factory=list)
    cuts: int = 0
    raw: bytes = b""
    peer: str = ""
    at: float = 0.0


# Bytes of arguments after ESC x / FS x; the rest of ESC take one.
_ESC_ARGS = {ord("@"): 0, ord("2"): 0, ord("<"): 0, ord("p"): 3, ord("B"): 2,
             ord("("): -1, ord("c"): 2}
_FS_ARGS = {ord("&"): 0, ord("."): 0, ord("p"): 2, ord("q"): -1, ord("S"): 2}
_GS_ARGS = {ord("L"): 2, ord("W"): 2, ord("P"): 2, ord("$"): 2, ord("\\"): 2,
            ord("Q"): 0}


def decode(data: bytes) -> Printout:
    """The text and QR codes of an ESC/POS byte stream."""
    out: list[str] = []
    qr: list[str] = []
    cuts = 0
    text = bytearray()
    i, n = 0, len(data)

    def flush(newline: bool = True) -> None:
        out.append(text.decode("gb18030", errors="replace") + ("\n" if newline else ""))
        text.clear()

    def at(k: int) -> int:
        return data[k] if k < n else 0

    while i < n:
        b = data[i]
        if b == 0x0A:
            flush()
            i += 1
        elif b == ESC:
            c = at(i + 1)
            if c == ord("d"):  # print and feed n lines
                flush()
                out.append("\n" * max(0, at(i + 2) - 1))
                i += 3
            elif c == ord("*"):  # bit image: m nL nH data
                m, k = at(i + 2), at(i + 3) + 256 * at(i + 4)
                i += 5 + k * (3 if m in (32, 33) else 1)
            elif c == ord("(") or _ESC_ARGS.get(c) == -1:
                i += 4 + at(i + 2) + 256 * at(i + 3)
            else:
                i += 2 + _ESC_ARGS.get(c, 1)
        elif b == GS:
            c = at(i + 1)
            if c == ord("("):  # GS ( f pL pH data: 2D codes, graphics, ...
                f, size = at(i + 2), at(i + 3) + 256 * at(i + 4)
                body = data[i + 5:i + 5 + size]
                # GS ( k cn=49 (QR) fn=80 (store the data) m=48, then the data.
                if f == ord("k") and body[:3] == b"1P0":
                    qr.append(body[3:].decode("utf-8", errors="replace"))
                elif f == ord("k") and body[:2] == b"1Q" and qr:  # print it: here
                    if text:
                        flush()
                    out.append(f"[二维码 QR: {qr[-1]}]\n")
                i += 5 + size
            elif c == ord("8") and at(i + 2) == ord("L"):  # GS 8 L p1..p4 data
                size = int.from_bytes(data[i + 3:i + 7], "little")
                i += 7 + size
            elif c == ord("v") and at(i + 2) == ord("0"):  # raster image
                x, y = at(i + 4) + 256 * at(i + 5), at(i + 6) + 256 * at(i + 7)
                i += 8 + x * y
            elif c == ord("V"):  # cut: a receipt ends
                if text:
                    flush()
                cuts += 1
                out.append("\n")
                i += 4 if at(i + 2) in (65, 66, 97, 98, 103, 104) else 3
            elif c == ord("k"):  # barcode: NUL-ended, or with its length
                m = at(i + 2)
                if m <= 6:
                    end = data.find(b"\x00", i + 3)
                    i = n if end < 0 else end + 1
                else:
                    i += 4 + at(i + 3)
            else:
                i += 2 + _GS_ARGS.get(c, 1)
        elif b == FS:
            c = at(i + 1)
            i += (4 + at(i + 2) + 256 * at(i + 3)) if _FS_ARGS.get(c) == -1 \
                else 2 + _FS_ARGS.get(c, 1 if c in (ord("!"), ord("C"), ord("-"),
                                                    ord("W")) else 0)
        elif b == DLE:
            c = at(i + 1)
            i += 5 if c == 0x14 else 3
        elif b < 0x20:
            i += 1  # CR, HT and the like: nothing on paper worth keeping
        else:
            text.append(b)
            i += 1
    if text:
        flush()
    return Printout("".join(out).rstrip("\n") + "\n", qr, cuts, bytes(data))


def show(p: Printout) -> str:
    """A printout as the demo shows it (a QR code as a line with its data, where the
    printer draws it)."""
    return p.text


class PrinterListener:
    """A TCP printer on `host:port` (0: any free port) that decodes each job, keeps
    it in `received`, appends it to `out` (a text file) and hands it to `echo`."""

    def __init__(self, host: str = "127.0.0.1", port: int = 9100, *,
                 out: Path | None = None, echo: Callable[[Printout], None] | None = None
                 ) -> None:
        self.received: list[Printout] = []
        self.out = out
        self.echo = echo
        self._changed = threading.Condition()
        listener = self

        class Job(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                sock: socket.socket = self.request
                sock.settimeout(READ_TIMEOUT_S)
                chunks, size = [], 0
                try:
                    while size < MAX_JOB and (chunk := sock.recv(65536)):
                        chunks.append(chunk)
                        size += len(chunk)
                except OSError:
                    pass  # a job cut short prints what came
                if chunks:
                    listener._take(b"".join(chunks), str(self.client_address[0]))

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

        self._server = Server((host, port), Job)
        bound = self._server.server_address  # the port the OS gave, for port 0
        self.host, self.port = str(bound[0]), int(bound[1])
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> PrinterListener:
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        name=f"printer {self.address}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join()

    def __enter__(self) -> PrinterListener:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _take(self, data: bytes, peer: str) -> None:
        p = decode(data)
        p.peer, p.at = peer, time.time()
        if self.out is not None:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(p.at))
            with open(self.out, "a", encoding="utf-8") as f:
                f.write(f"===== {stamp} from {peer} =====\n{show(p)}\n")
        if self.echo is not None:
            self.echo(p)
        with self._changed:
            self.received.append(p)
            self._changed.notify_all()

    def wait(self, count: int = 1, timeout: float = 30.0) -> list[Printout]:
        """The jobs received once there are `count` of them (or the timeout passed)."""
        with self._changed:
            self._changed.wait_for(lambda: len(self.received) >= count, timeout)
            return list(self.received)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m peer.printer_listener",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9100)
    parser.add_argument("--out", type=Path, help="also append every receipt to this file")
    args = parser.parse_args(argv)

    def echo(p: Printout) -> None:
        print(f"----- a receipt from {p.peer} -----\n{show(p)}", flush=True)

    listener = PrinterListener(args.host, args.port, out=args.out, echo=echo).start()
    print(f"receipt printer listening on {listener.address}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        listener.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
